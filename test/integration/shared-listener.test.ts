// The shared HBONE listener (--hbone-listen), for hosts that cannot bind their workloads' IPs (a VM's node
// address): a connection gets the certificate of the workload whose IP it arrived on, or of the node's only
// workload; one the proxy cannot attribute is closed before any handshake; and a CONNECT must name the
// workload whose certificate the connection saw. Real proxies, real TLS, on loopback.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { AmbitProcess } from '../helpers/process.ts';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueMeshSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { connectHbone, echoThrough, openTunnel, startEchoServer } from '../helpers/hbone.ts';
import type { EchoServer } from '../helpers/hbone.ts';
import { metricSum, nodeIp, podYaml, probe, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 66;
const VM_IP = nodeIp(P, 0, 10); // vm-1: the only workload of node-a
const DB_IP = nodeIp(P, 1, 10); // db-1 and cache-1 on node-b
const CACHE_IP = nodeIp(P, 1, 11);
const NODE_A_SHARED = nodeIp(P, 0, 200); // an address of node-a that no workload has
const NODE_B_SHARED = nodeIp(P, 1, 200);
const SHARED_PORT = 15108;
const ANY_ADDRESS_PORT = 15109; // node-b's second shared listener, on every address
const APP_PORT = 7000;
const TD = 'cluster.local';
const VM_ID = `spiffe://${TD}/ns/demo/sa/vm`;
const DB_ID = `spiffe://${TD}/ns/demo/sa/db`;
const CACHE_ID = `spiffe://${TD}/ns/demo/sa/cache`;

let mesh: TestMesh;
let tester: TestSvid;
let roots: string;
const echoes: EchoServer[] = [];

beforeAll(async () => {
  for (const ip of [VM_IP, DB_IP, CACHE_IP]) echoes.push(await startEchoServer(ip, APP_PORT));
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a', 'node-b'],
    config: {
      'workloads.yaml': yamlDocuments(
        podYaml({ name: 'vm-1', node: 'node-a', serviceAccount: 'vm', ip: VM_IP }),
        podYaml({ name: 'db-1', node: 'node-b', serviceAccount: 'db', ip: DB_IP }),
        podYaml({ name: 'cache-1', node: 'node-b', serviceAccount: 'cache', ip: CACHE_IP }),
      ),
    },
    extraProxyArgs: (node) => (node === 'node-a'
      ? ['--hbone-listen', `${NODE_A_SHARED}:${SHARED_PORT}`]
      : ['--hbone-listen', `${NODE_B_SHARED}:${SHARED_PORT}`]),
  });
  tester = await issueMeshSvid(mesh.caDir, `spiffe://${TD}/ns/demo/sa/tester`);
  roots = await readFile(mesh.bundleFile, 'utf8');
}, 90_000);

afterAll(async () => {
  await mesh?.stop();
  await Promise.all(echoes.map((echo) => echo.close()));
});

describe('the shared HBONE listener', () => {
  it('presents the node\'s only workload\'s certificate and carries a CONNECT to it', async () => {
    const session = await connectHbone(NODE_A_SHARED, SHARED_PORT, tester, roots, VM_ID);
    try {
      const tunnel = await openTunnel(session, `${VM_IP}:${APP_PORT}`);
      expect(tunnel.status).toBe(200);
      const payload = randomBytes(64 * 1024);
      expect((await echoThrough(tunnel.stream, payload)).equals(payload)).toBe(true);
    } finally {
      session.destroy();
    }
  });

  it('refuses a CONNECT naming another workload than the one whose certificate the connection saw', async () => {
    const session = await connectHbone(NODE_A_SHARED, SHARED_PORT, tester, roots, VM_ID);
    try {
      // db-1 lives on node-b: node-a's listener, which presented vm-1's certificate, must not carry it.
      const tunnel = await openTunnel(session, `${DB_IP}:${APP_PORT}`);
      expect(tunnel.status).toBeGreaterThanOrEqual(400);
      tunnel.stream.destroy();
    } finally {
      session.destroy();
    }
  });

  it('closes, before any handshake, a connection it cannot attribute to one workload', async () => {
    // node-b has two workloads and its shared address is neither's.
    const socket = tls.connect({ host: NODE_B_SHARED, port: SHARED_PORT, cert: tester.certPem, key: tester.keyPem, ca: roots, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], servername: '', checkServerIdentity: () => undefined });
    const outcome = await new Promise<string>((resolve) => {
      socket.once('secureConnect', () => resolve('handshake'));
      socket.once('error', (error: NodeJS.ErrnoException) => resolve(`error ${error.code ?? error.message}`));
      socket.once('close', () => resolve('closed'));
    });
    socket.destroy();
    expect(outcome).not.toBe('handshake');
    // Counted (and logged at debug only: a port scan of the node address must not flood the log).
    await waitUntil('the refusal counted', async () => (await metricSum(mesh.nodes.get('node-b')!, 'ambit_hbone_peers_refused_total', { reason: 'UNATTRIBUTED' })) > 0);
  });

  it('presents the certificate of the workload whose address the connection arrived on', async () => {
    const nodeB = await mesh.startNode('node-b', ['--hbone-listen', `0.0.0.0:${ANY_ADDRESS_PORT}`]);
    expect(nodeB.proc.child.exitCode).toBeNull();
    for (const [ip, id] of [[DB_IP, DB_ID], [CACHE_IP, CACHE_ID]] as const) {
      const session = await connectHbone(ip, ANY_ADDRESS_PORT, tester, roots, id);
      try {
        const tunnel = await openTunnel(session, `${ip}:${APP_PORT}`);
        expect(tunnel.status, ip).toBe(200);
        const payload = randomBytes(4096);
        expect((await echoThrough(tunnel.stream, payload)).equals(payload)).toBe(true);
        // The shared listener's own port on the workload's address: the proxy itself, never an upstream (a second
        // HBONE session would run inside the tunnel, its peer address the workload's).
        const nested = await openTunnel(session, `${ip}:${ANY_ADDRESS_PORT}`);
        expect(nested.status, `${ip}:${ANY_ADDRESS_PORT}`).toBe(503);
        nested.stream.destroy();
      } finally {
        session.destroy();
      }
    }
    // A connection to an address of no workload on that listener is closed as well.
    const stray = net.connect({ host: nodeIp(P, 1, 201), port: ANY_ADDRESS_PORT });
    stray.on('error', () => {});
    await once(stray, 'close');
  });

  it('binds a shared listener whose port was taken when the proxy started, once it is free, without a configuration change', async () => {
    const old = mesh.nodes.get('node-a')?.proc;
    await old?.stop();
    const blocker = net.createServer();
    blocker.listen(SHARED_PORT, NODE_A_SHARED);
    await once(blocker, 'listening');
    // startNode waits for readiness: reached only once the listener is bound, after the port is released, which
    // happens once the new proxy has said it could not bind it (however long its start takes).
    const starting = mesh.startNode('node-a');
    starting.catch(() => {}); // awaited below; a failure while we wait for the line must not be unhandled
    const refused = (line: Record<string, unknown>) => line.msg === 'listener not applied' && String(line.problem).includes(`${NODE_A_SHARED}:${SHARED_PORT} (shared)`);
    await waitUntil('node-a saying the shared port is taken', () => {
      const proc = mesh.nodes.get('node-a')?.proc;
      return proc !== undefined && proc !== old && proc.lines.some(refused);
    }, 30_000);
    // The probe names the listener it waits for (it said "listeners" alone).
    const probed = await probe(mesh.nodes.get('node-a')!.readinessUrl);
    expect(probed.status).toBe(503);
    expect(probed.body).toContain(`listeners: HBONE ${NODE_A_SHARED}:${SHARED_PORT} (shared) (`);
    await new Promise<void>((resolve) => blocker.close(() => resolve()));
    await starting;
    const session = await connectHbone(NODE_A_SHARED, SHARED_PORT, tester, roots, VM_ID);
    try {
      const tunnel = await openTunnel(session, `${VM_IP}:${APP_PORT}`);
      expect(tunnel.status).toBe(200);
    } finally {
      session.destroy();
    }
  }, 40_000);

  it("becomes ready with a workload whose address this host does not have (a VM's NATed address), serving it on the shared listener", async () => {
    // An address on no interface here (ip_nonlocal_bind is off): binding its own 15008 fails with EADDRNOTAVAIL.
    const natIp = '10.255.66.9';
    const natId = `spiffe://${TD}/ns/demo/sa/nat`;
    const address = nodeIp(P, 2, 1);
    const shared = nodeIp(P, 2, 200);
    await mesh.writeConfig('nat.yaml', podYaml({ name: 'nat-1', node: 'node-c', serviceAccount: 'nat', ip: natIp }));
    const token = await createJoinToken(mesh.caDir, 'node-c', 600_000);
    const tokenFile = join(mesh.dir, 'node-c.join-token');
    await writeFile(tokenFile, `${token.token}\n`, { mode: 0o600 });
    const proc = AmbitProcess.start([
      'proxy', '--node', 'node-c', '--config', mesh.configDir, '--ca', mesh.caUrl, '--ca-bundle', mesh.bundleFile, '--trust-domain', mesh.trustDomain,
      '--state-dir', join(mesh.dir, 'node-c'), '--join-token-file', tokenFile,
      '--metrics', `${address}:15020`, '--readiness', `${address}:15021`, '--admin', `${address}:15000`,
      '--hbone-listen', `${shared}:${SHARED_PORT}`, '--drain-timeout', '0',
    ]);
    try {
      await waitUntil('node-c ready', async () => (await fetch(`http://${address}:15021/healthz/ready`)).status === 200, 30_000);
      // Its application listens on the host's address: a tunnel reaches it there, not the NATed address (which
      // would leave the host).
      const app = await startEchoServer(shared, APP_PORT + 1);
      const session = await connectHbone(shared, SHARED_PORT, tester, roots, natId);
      try {
        const tunnel = await openTunnel(session, `${natIp}:${APP_PORT + 1}`);
        expect(tunnel.status).toBe(200);
        expect((await echoThrough(tunnel.stream, Buffer.from('through NAT'))).toString()).toBe('through NAT');
        expect(app.connections).toBe(1);
      } finally {
        session.destroy();
        await app.close();
      }
      expect(proc.lines.some((line) => line.msg === 'listener not applied')).toBe(false);
    } finally {
      await proc.stop();
    }
  }, 60_000);
});
