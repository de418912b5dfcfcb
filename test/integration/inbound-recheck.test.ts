// The HBONE inbound in-process, with real TLS and sockets: a tunnel authorized under one configuration whose
// upstream connects after another came into force (before a policy change's revoke() has run) is decided again
// under the new one before its 200.
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/authz/compile.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import type { ConfigSnapshot } from '../../src/config/snapshot.ts';
import { BundleSet } from '../../src/identity/bundle.ts';
import { loadSvid } from '../../src/identity/svid.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { ProxyMetrics } from '../../src/observe/metrics.ts';
import { HboneInbound } from '../../src/proxy/inbound.ts';
import type { InboundConnection } from '../../src/proxy/inbound.ts';
import { IdentityContexts, PeerVerifier } from '../../src/proxy/tls.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { startEchoServer } from '../helpers/hbone.ts';
import type { EchoServer } from '../helpers/hbone.ts';

const ECHO_IP = '127.69.1.10'; // 127.69 is this file's and inbound-keepalive's (127.68 is readiness.test.ts's)
const ECHO_PORT = 7000;
const HBONE_PORT = 15008;
const ALLOW: Decision = Object.freeze({ allow: true, policy: null, rule: null, reason: 'allowed (test)', deferred: false });

const workloads = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: cluster.local }
---
apiVersion: v1
kind: Pod
metadata: { name: echo-1, namespace: demo }
spec: { nodeName: node-a, serviceAccountName: echo }
status: { podIP: ${ECHO_IP}, phase: Running }
`;

let inbound: HboneInbound;
let echo: EchoServer;
let client: TestSvid;
let bundles: BundleSet;
let before: ConfigSnapshot;
let after: ConfigSnapshot;
let current: ConfigSnapshot;
/** Set: the next read of the configuration (the stream's own) returns `before`, and `after` is in force from then on. */
let changeAfterNextRead = false;
let allowedAfter = false;
const rechecked: Array<{ connection: InboundConnection; snapshot: ConfigSnapshot }> = [];

beforeAll(async () => {
  const ca = await createTestCa('cluster.local');
  bundles = new BundleSet([ca.bundle]);
  const server = await issueTestSvid(ca, 'spiffe://cluster.local/ns/demo/sa/echo');
  client = await issueTestSvid(ca, 'spiffe://cluster.local/ns/demo/sa/tester');
  before = buildSnapshot(parseConfigText(workloads, 'workloads.yaml'));
  after = buildSnapshot(parseConfigText(workloads, 'workloads.yaml'));
  current = before;
  const contexts = new IdentityContexts();
  contexts.set(loadSvid(server.certPem, server.keyPem));
  echo = await startEchoServer(ECHO_IP, ECHO_PORT);
  inbound = new HboneInbound({
    nodeName: 'node-a',
    hbonePort: HBONE_PORT,
    snapshot: () => {
      const read = current;
      if (changeAfterNextRead) {
        changeAfterNextRead = false;
        current = after;
      }
      return read;
    },
    contexts,
    bundles: () => bundles,
    verifier: new PeerVerifier(),
    logger: silentLogger(),
    metrics: new ProxyMetrics(new Registry()),
    authorize: () => ALLOW,
    liveMeters: new Set(),
    inspectRequests: null,
    inspector: null,
    recheck: (connection, _inspected, snapshot) => {
      rechecked.push({ connection, snapshot });
      return allowedAfter;
    },
  });
  const report = await inbound.sync(before);
  expect(report.failed).toEqual([]);
});

afterAll(async () => {
  await inbound?.close();
  await echo?.close();
});

function connectThrough(): Promise<{ status: number | null; echoed: string }> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: ECHO_IP, port: HBONE_PORT, cert: client.certPem, key: client.keyPem, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const session = http2.connect(`https://${ECHO_IP}:${HBONE_PORT}`, { createConnection: () => socket });
    session.on('error', () => {});
    const stream = session.request({ ':method': 'CONNECT', ':authority': `${ECHO_IP}:${ECHO_PORT}` }, { endStream: false });
    stream.on('error', () => {});
    let status: number | null = null;
    let echoed = '';
    stream.on('response', (headers) => {
      status = Number(headers[':status']);
      stream.end('through');
    });
    stream.on('data', (chunk: Buffer) => (echoed += chunk.toString()));
    stream.on('close', () => {
      session.close();
      resolve({ status, echoed });
    });
  });
}

describe('a tunnel whose upstream connects after another configuration came into force', () => {
  it('is refused with 401, its upstream connection closed, when the new configuration does not allow it', async () => {
    const accepted = echo.connections;
    current = before;
    changeAfterNextRead = true;
    allowedAfter = false;
    rechecked.length = 0;
    const outcome = await connectThrough();
    expect(outcome).toEqual({ status: 401, echoed: '' });
    expect(rechecked).toHaveLength(1);
    expect(rechecked[0]?.snapshot).toBe(after);
    expect(rechecked[0]?.connection.destinationPort).toBe(ECHO_PORT);
    // The upstream connect itself happened (it was under way); nothing went through it.
    expect(echo.connections).toBe(accepted + 1);
    expect(inbound.liveTunnels).toBe(0);
  });

  it('opens when the new configuration allows it', async () => {
    current = before;
    changeAfterNextRead = true;
    allowedAfter = true;
    rechecked.length = 0;
    expect(await connectThrough()).toEqual({ status: 200, echoed: 'through' });
    expect(rechecked).toHaveLength(1);
  });

  it('is not decided again when the configuration did not change', async () => {
    current = before;
    changeAfterNextRead = false;
    allowedAfter = false;
    rechecked.length = 0;
    expect(await connectThrough()).toEqual({ status: 200, echoed: 'through' });
    expect(rechecked).toHaveLength(0);
  });
});

