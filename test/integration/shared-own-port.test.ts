// A workload address this host does not have (a VM's NATed or public one), served by the shared HBONE listener, is
// dialled on the address the session arrived on: the node's, where the proxy's own metrics and readiness servers
// listen. The guard against a CONNECT to one of the proxy's own listeners must ask about that address, not the one
// the CONNECT names: `CONNECT <natIp>:15020` reached the proxy's metrics server. The workload's own ports still work.
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { once } from 'node:events';
import { Registry } from 'prom-client';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/authz/compile.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import { BundleSet } from '../../src/identity/bundle.ts';
import { loadSvid } from '../../src/identity/svid.ts';
import { ProxyMetrics } from '../../src/observe/metrics.ts';
import { HboneInbound } from '../../src/proxy/inbound.ts';
import { IdentityContexts, PeerVerifier } from '../../src/proxy/tls.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { podYaml, yamlDocuments } from '../helpers/mesh.ts';

const NODE_IP = '127.81.2.1'; // 127.81 is settings-ack's and this file's
const NAT_IP = '10.255.81.9'; // the workload's registered address: not on this host
const SHARED_PORT = 15108;
const METRICS_PORT = 15020;
const APP_PORT = 7000;
const ALLOW: Decision = Object.freeze({ allow: true, policy: null, rule: null, reason: 'allowed (test)', deferred: false });

let inbound: HboneInbound;
let client: TestSvid;
const logLines: Array<Record<string, unknown>> = [];
let metricsServer: http.Server;
let app: net.Server;

beforeAll(async () => {
  const ca = await createTestCa('cluster.local');
  const bundles = new BundleSet([ca.bundle]);
  const server = await issueTestSvid(ca, 'spiffe://cluster.local/ns/demo/sa/echo');
  client = await issueTestSvid(ca, 'spiffe://cluster.local/ns/demo/sa/tester');
  const snapshot = buildSnapshot(parseConfigText(yamlDocuments(
    'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { trustDomain: cluster.local }\n',
    podYaml({ name: 'vm-1', node: 'node-a', serviceAccount: 'echo', ip: NAT_IP }),
  ), 'workloads.yaml'));
  const contexts = new IdentityContexts();
  contexts.set(loadSvid(server.certPem, server.keyPem));
  // The proxy's own metrics server (--metrics NODE_IP:15020), and the workload's application on the node address.
  metricsServer = http.createServer((_request, response) => response.end('the proxy\'s own metrics\n'));
  metricsServer.listen(METRICS_PORT, NODE_IP);
  await once(metricsServer, 'listening');
  app = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  app.listen(APP_PORT, NODE_IP);
  await once(app, 'listening');
  inbound = new HboneInbound({
    nodeName: 'node-a',
    hbonePort: 15008,
    snapshot: () => snapshot,
    contexts,
    bundles: () => bundles,
    verifier: new PeerVerifier(),
    logger: pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) }),
    metrics: new ProxyMetrics(new Registry()),
    authorize: () => ALLOW,
    liveMeters: new Set(),
    inspectRequests: null,
    inspector: null,
    sharedListen: { host: NODE_IP, port: SHARED_PORT },
    // As proxy.ts: the metrics server is one of the proxy's own listeners, on the node address.
    ownListener: (ip, port) => port === METRICS_PORT && ip === NODE_IP,
  });
  const report = await inbound.sync(snapshot);
  expect(report.failed).toEqual([]);
  expect(report.bound).toEqual([`${NODE_IP}:${SHARED_PORT} (shared)`]);
});

afterAll(async () => {
  await inbound?.close();
  metricsServer?.close();
  app?.close();
});

/** A CONNECT through the shared listener: its status, and what comes back for `send`. */
async function connect(authority: string, send: string): Promise<{ status: number | undefined; body: string }> {
  const socket = tls.connect({ host: NODE_IP, port: SHARED_PORT, cert: client.certPem, key: client.keyPem, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  const session = http2.connect(`https://${NODE_IP}:${SHARED_PORT}`, { createConnection: () => socket });
  session.on('error', () => {});
  try {
    const stream = session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    stream.on('error', () => {});
    const [headers] = (await once(stream, 'response')) as [http2.IncomingHttpHeaders];
    let body = '';
    const status = Number(headers[':status']);
    if (status === 200) {
      stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
      stream.end(send);
      await once(stream, 'end');
    }
    return { status, body };
  } finally {
    session.destroy();
  }
}

describe('a CONNECT to a NATed workload address through the shared listener', () => {
  it('is refused on a port of the proxy\'s own listener on the address it would be dialled at, and says why', async () => {
    const { status, body } = await connect(`${NAT_IP}:${METRICS_PORT}`, 'GET /metrics HTTP/1.0\r\n\r\n');
    expect(status).toBe(503);
    expect(body).toBe('');
    const line = logLines.find((l) => l.msg === 'HBONE CONNECT refused' && typeof l.reason === 'string' && l.reason.includes(`port ${METRICS_PORT} belongs to the proxy itself`));
    expect(line).toMatchObject({ level: 40, status: 503, peer: 'spiffe://cluster.local/ns/demo/sa/tester' });
    expect(line?.reason).toContain(NODE_IP);
  });

  it('reaches the workload\'s own port, on the address the session arrived on', async () => {
    expect(await connect(`${NAT_IP}:${APP_PORT}`, 'hello')).toEqual({ status: 200, body: 'hello' });
  });
});
