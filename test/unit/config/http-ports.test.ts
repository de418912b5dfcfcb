// Which Service and ServiceEntry ports carry HTTP, as Istio reads them (ConvertProtocol, protocol.Parse): both the
// ports the node proxy inspects and the ones it must leave as TCP.
import { afterEach, describe, expect, it } from 'vitest';
import { entryHttpVersionOf, httpPortSources, httpPortVersionsOf, httpVersionOf, isHttpEntryProtocol, isHttpProtocol } from '../../../src/config/http-ports.ts';
import { loadConfigDir } from '../../../src/config/loader.ts';
import { configDir, meshYaml, podYaml, removeConfigDirs } from './temp-config.ts';

afterEach(removeConfigDirs);

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

describe('a ServiceEntry naming a workload by its address', () => {
  const entry = (namespace: string) => `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db-http, namespace: ${namespace} }
spec:
  hosts: [db.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 80, name: http, protocol: HTTP, targetPort: 8080 }]
  endpoints: [{ address: 10.0.0.7 }]
`;

  it('declares the port HTTP on a workload of its own namespace, and not on one of another namespace', async () => {
    const pod = podYaml({ name: 'db-1', namespace: 'data', node: 'node-a', ip: '10.0.0.7' });
    const same = await loadConfigDir(await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod, 'se.yaml': entry('data') }));
    const sameWorkload = same.workloads.find((w) => w.name === 'db-1');
    expect(sameWorkload && [...httpPortVersionsOf(httpPortSources(same), sameWorkload)]).toEqual([[8080, 'http1']]);
    // Another tenant's entry cannot change how this workload's connections are read.
    const other = await loadConfigDir(await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod, 'se.yaml': entry('tenant-b') }));
    const otherWorkload = other.workloads.find((w) => w.name === 'db-1');
    expect(otherWorkload && [...httpPortVersionsOf(httpPortSources(other), otherWorkload)]).toEqual([]);
  });
});

describe('the HTTP version a declared port speaks to its workload (Istio: HTTP2, GRPC, GRPC-Web are HTTP/2)', () => {
  it.each([
    [undefined, 'http', 'http1'],
    [undefined, 'http-web', 'http1'],
    [undefined, 'http_proxy', 'http1'],
    ['kubernetes.io/ws', undefined, 'http1'],
    [undefined, 'http2', 'http2'],
    [undefined, 'grpc', 'http2'],
    [undefined, 'grpc-web', 'http2'],
    [undefined, 'h2c', 'http2'],
    ['kubernetes.io/h2c', 'http', 'http2'],
    ['http', 'grpc', 'http1'],
    [undefined, 'tcp', null],
  ])('appProtocol %s, name %s: %s', (appProtocol, name, version) => {
    expect(httpVersionOf(appProtocol, name)).toBe(version);
  });

  it.each([['HTTP', 'http1'], ['HTTP_PROXY', 'http1'], ['HTTP2', 'http2'], ['GRPC', 'http2'], ['GRPC-WEB', 'http2'], ['TCP', null], [undefined, null]])('ServiceEntry protocol %s: %s', (protocol, version) => {
    expect(entryHttpVersionOf(protocol)).toBe(version);
  });

  it("is none (the client's is spoken) where two Services declare one target port differently", async () => {
    const service = (name: string, portName: string) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: demo }
spec: { selector: { app: api }, ports: [{ name: ${portName}, port: 80, targetPort: 8080 }, { name: ${portName}-b, port: 81, targetPort: 8081 }] }
`;
    const pod = podYaml({ name: 'api-1', namespace: 'demo', node: 'node-a', ip: '10.0.0.8', labels: { app: 'api' } });
    const mixed = await loadConfigDir(await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod, 'a.yaml': service('api-web', 'http'), 'b.yaml': service('api-grpc', 'grpc') }));
    const workload = mixed.workloads.find((w) => w.name === 'api-1');
    expect(workload && [...httpPortVersionsOf(httpPortSources(mixed), workload)]).toEqual([[8080, null], [8081, null]]);
    const same = await loadConfigDir(await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod, 'a.yaml': service('api-grpc', 'grpc') }));
    const only = same.workloads.find((w) => w.name === 'api-1');
    expect(only && [...httpPortVersionsOf(httpPortSources(same), only)]).toEqual([[8080, 'http2'], [8081, 'http2']]);
  });
});
