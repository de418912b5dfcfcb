// Which Service and ServiceEntry ports carry HTTP, as Istio reads them (ConvertProtocol, protocol.Parse): both the
// ports the node proxy inspects and the ones it must leave as TCP.
import { describe, expect, it } from 'vitest';
import { isHttpEntryProtocol, isHttpProtocol } from '../../../src/config/http-ports.ts';

describe('a Service port declared HTTP', () => {
  it.each([
    [undefined, 'http'],
    [undefined, 'HTTP-web'],
    [undefined, 'http2'],
    [undefined, 'grpc'],
    [undefined, 'grpc-web'],
    [undefined, 'grpc-web-api'],
    [undefined, 'http_proxy'],
    [undefined, 'h2c'],
    ['http', 'tcp'],
    ['HTTP', undefined],
    ['http-web', undefined],
    ['kubernetes.io/h2c', undefined],
    ['kubernetes.io/ws', 'tcp'],
  ])('appProtocol %s, name %s: HTTP', (appProtocol, name) => {
    expect(isHttpProtocol(appProtocol, name)).toBe(true);
  });

  it.each([
    [undefined, undefined],
    [undefined, 'tcp-http'],
    [undefined, 'https'],
    [undefined, 'web'],
    [undefined, 'httpx'],
    ['tcp', 'http'],
    ['kubernetes.io/wss', 'http'],
    ['https', 'http'],
    ['example.com/http', undefined],
  ])('appProtocol %s, name %s: not HTTP', (appProtocol, name) => {
    expect(isHttpProtocol(appProtocol, name)).toBe(false);
  });
});

describe('a ServiceEntry port declared HTTP', () => {
  it.each(['HTTP', 'HTTP2', 'GRPC', 'GRPC-WEB', 'HTTP_PROXY', 'http'])('%s: HTTP', (protocol) => {
    expect(isHttpEntryProtocol(protocol)).toBe(true);
  });
  it.each([undefined, 'HTTPS', 'TLS', 'TCP', 'MONGO', 'HTTP-WEB', 'UDP'])('%s: not HTTP', (protocol) => {
    expect(isHttpEntryProtocol(protocol)).toBe(false);
  });
});
