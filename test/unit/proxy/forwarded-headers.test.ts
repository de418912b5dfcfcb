// What the L7 path passes on to the workload (and back): end-to-end headers only (RFC 9110 §7.6.1).
import { describe, expect, it } from 'vitest';
import { forwardableHeaders, forwardableRawHeaders } from '../../../src/proxy/l7.ts';

describe('headers forwarded by the HTTP inspector', () => {
  it('drops hop-by-hop headers and keeps end-to-end ones, values untouched', () => {
    const forwarded = forwardableHeaders({
      host: 'web.shop', 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'],
      connection: 'keep-alive', 'keep-alive': 'timeout=5', 'proxy-connection': 'keep-alive', 'transfer-encoding': 'chunked',
      upgrade: 'websocket', trailer: 'x-checksum', 'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA', absent: undefined,
    });
    expect(forwarded).toEqual({ host: 'web.shop', 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] });
  });

  it('drops the headers the Connection header names, whatever their case and spacing', () => {
    const forwarded = forwardableHeaders({ connection: 'close, X-Internal-Token ,x-debug', 'x-internal-token': 'secret', 'x-debug': '1', 'x-user': 'alice' });
    expect(forwarded).toEqual({ 'x-user': 'alice' });
  });

  it('keeps `te: trailers` (gRPC needs it) and drops any other TE', () => {
    expect(forwardableHeaders({ ':method': 'POST', te: 'trailers', 'content-type': 'application/grpc' })).toEqual({ ':method': 'POST', te: 'trailers', 'content-type': 'application/grpc' });
    expect(forwardableHeaders({ te: 'gzip, trailers' })).toEqual({});
    expect(forwardableHeaders({ te: 'deflate' })).toEqual({});
  });

  it('passes raw HTTP/1.1 fields on in order and in their case, every field of a repeated header', () => {
    expect(forwardableRawHeaders(['Host', 'web.shop', 'User-Agent', 'one', 'user-agent', 'two', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2'])).toEqual(
      ['Host', 'web.shop', 'User-Agent', 'one', 'user-agent', 'two', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2'],
    );
  });

  it('drops raw hop-by-hop fields whatever their case, and those any Connection field names', () => {
    const raw = [
      'CONNECTION', 'keep-alive', 'Keep-Alive', 'timeout=5', 'Transfer-Encoding', 'chunked', 'Upgrade', 'h2c', 'HTTP2-Settings', 'AAMA',
      'Connection', 'X-Internal-Token , x-debug', 'x-internal-token', 'secret', 'X-Debug', '1', 'X-User', 'alice', 'TE', 'trailers', 'Te', 'gzip',
    ];
    expect(forwardableRawHeaders(raw)).toEqual(['X-User', 'alice', 'TE', 'trailers']);
  });

  it('keeps a header whose name only looks like a hop-by-hop one', () => {
    expect(forwardableRawHeaders(['Connections', '2', 'X-Connection', 'close', 'tee', 'x'])).toEqual(['Connections', '2', 'X-Connection', 'close', 'tee', 'x']);
  });
});
