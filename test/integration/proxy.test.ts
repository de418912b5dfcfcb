// Two node proxies on loopback carrying real TCP across HBONE, with real processes and real TLS.
import { createServer, connect } from 'node:net';
import type { Server } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 61;
const CLIENT_IP = nodeIp(P, 0, 20);
const OTHER_CLIENT_IP = nodeIp(P, 0, 21);
const TWIN_VM_IP = nodeIp(P, 0, 22);
const ECHO_IP = nodeIp(P, 1, 10);

// A WorkloadEntry with the client Pod's namespace/name, on the same node and listed first, under another identity:
// the Pod's own listener must present the Pod's identity, and a --outbound owner naming demo/client-1 is ambiguous.
const twinVm = `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: client-1, namespace: demo, annotations: { ambit.dev/node: node-a } }
spec: { address: "${TWIN_VM_IP}", serviceAccount: vm }
`;

const config = yamlDocuments(
  twinVm,
  podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: '9007=echo.demo:7,9009=echo.vm.internal:7' }),
  podYaml({ name: 'client-2', node: 'node-a', serviceAccount: 'client', ip: OTHER_CLIENT_IP }),
  podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_IP, labels: { app: 'echo' } }),
  serviceYaml({ name: 'echo', selector: { app: 'echo' }, ports: [{ name: 'tcp', port: 7, targetPort: 7000 }] }),
  // Istio's VM pattern: a ServiceEntry selecting the workloads behind a name of its own.
  `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: echo-vm, namespace: demo }
spec:
  hosts: [echo.vm.internal]
  ports: [{ number: 7, name: tcp-echo, protocol: TCP, targetPort: 7000 }]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: { labels: { app: echo } }
`,
);

let mesh: TestMesh;
let echo: Server;
let echoConnections = 0;

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (socket) => {
    echoConnections++;
    // A tunnel the proxy cuts reaches the workload as a reset.
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => echo.listen(7000, ECHO_IP, resolve));
  // A stream budget small enough for 20 tunnels to narrow the windows (the default narrows at 32).
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a', 'node-b'], config: { 'workloads.yaml': config }, extraProxyArgs: () => ['--stream-window-budget', '8'] });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  await new Promise((resolve) => echo?.close(resolve));
});

function roundTrip(payload: Buffer, port = 9007, tolerateReset = false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: CLIENT_IP, port });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // A refused connection is destroyed by the proxy: the client may see it as a reset or a broken pipe.
      if (!tolerateReset || (error.code !== 'ECONNRESET' && error.code !== 'EPIPE')) reject(error);
    });
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('connect', () => socket.end(payload));
  });
}

describe('HBONE between two node proxies', () => {
  it('carries bytes both ways, identical, and half-closes', async () => {
    const payload = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;
    const echoed = await roundTrip(payload);
    expect(echoed.length).toBe(payload.length);
    expect(echoed.equals(payload)).toBe(true);
  });

  it('writes one access line per tunnel on each side, with both identities and the bytes', async () => {
    const a = mesh.nodes.get('node-a')!;
    const b = mesh.nodes.get('node-b')!;
    const [sinceA, sinceB] = [a.proc.lines.length, b.proc.lines.length];
    expect((await roundTrip(Buffer.from('access please'))).toString()).toBe('access please');
    // The earlier test's tunnel may close (and log) after `since`: this tunnel's line is the one with its 13 bytes.
    const line = (node: typeof a, since: number, direction: string) => node.proc.lines.slice(since).find((l) => l.msg === 'access' && l.direction === direction && l.bytes_sent === 13);
    await waitUntil('both access lines', () => line(a, sinceA, 'outbound') !== undefined && line(b, sinceB, 'inbound') !== undefined);
    expect(line(a, sinceA, 'outbound')).toMatchObject({ 'src.identity': 'spiffe://cluster.local/ns/demo/sa/client', 'dst.identity': 'spiffe://cluster.local/ns/demo/sa/echo', bytes_sent: 13, bytes_recv: 13, response_flags: '-' });
    // As ztunnel: dst.addr the HBONE address each side dialled or accepted, dst.hbone_addr the CONNECT's authority.
    expect(line(a, sinceA, 'outbound')).toMatchObject({ 'dst.addr': `${ECHO_IP}:15008`, 'dst.hbone_addr': `${ECHO_IP}:7000` });
    // The cluster of each end (the MeshConfig's clusterId, Kubernetes' default here), as ztunnel's src.cluster / dst.cluster.
    for (const [node, since, direction] of [[a, sinceA, 'outbound'], [b, sinceB, 'inbound']] as const) {
      expect(line(node, since, direction), direction).toMatchObject({ 'src.cluster': 'Kubernetes', 'dst.cluster': 'Kubernetes' });
    }
    expect(line(b, sinceB, 'inbound')).toMatchObject({ 'src.identity': 'spiffe://cluster.local/ns/demo/sa/client', 'dst.identity': 'spiffe://cluster.local/ns/demo/sa/echo', bytes_sent: 13, bytes_recv: 13, 'dst.addr': `${ECHO_IP}:15008`, 'dst.hbone_addr': `${ECHO_IP}:7000` });
  });

  it('records the tunnel with both SPIFFE identities in Istio metrics on both sides', async () => {
    await roundTrip(Buffer.from('metrics please'));
    const a = mesh.nodes.get('node-a')!;
    const b = mesh.nodes.get('node-b')!;
    const labels = { source_principal: 'spiffe://cluster.local/ns/demo/sa/client', destination_principal: 'spiffe://cluster.local/ns/demo/sa/echo' };
    await waitUntil('closed tunnels counted', async () => (await metricSum(a, 'istio_tcp_connections_closed_total', { ...labels, reporter: 'source' })) >= 2 && (await metricSum(b, 'istio_tcp_connections_closed_total', { ...labels, reporter: 'destination' })) >= 2);
    expect(await metricSum(a, 'istio_tcp_received_bytes_total', { ...labels, reporter: 'source' })).toBeGreaterThanOrEqual(3 * 1024 * 1024);
    expect(await metricSum(b, 'istio_tcp_sent_bytes_total', { ...labels, reporter: 'destination', connection_security_policy: 'mutual_tls' })).toBeGreaterThanOrEqual(3 * 1024 * 1024);
    // A few tunnels open: the whole stream window, from the budget the proxy's sessions share.
    await waitUntil('the stream window gauge', async () => (await metricSum(a, 'ambit_hbone_stream_window_bytes')) === 4 * 1024 * 1024);
  });

  it("labels both sides' series with ztunnel's whole label set: canonical service, app, version, cluster and the Service addressed", async () => {
    await roundTrip(Buffer.from('labels please'));
    const a = mesh.nodes.get('node-a')!;
    const b = mesh.nodes.get('node-b')!;
    // client-1 has no app label (its canonical service is its name); echo-1 has app=echo and no version.
    const labels = {
      source_workload: 'client-1',
      source_canonical_service: 'client-1',
      source_canonical_revision: 'latest',
      source_app: 'client-1',
      source_version: 'latest',
      source_cluster: 'Kubernetes',
      destination_workload: 'echo-1',
      destination_canonical_service: 'echo',
      destination_canonical_revision: 'latest',
      destination_app: 'echo',
      destination_version: 'latest',
      destination_cluster: 'Kubernetes',
      // The destination knows the Service from the CONNECT's `forwarded: ...;host=`, as ztunnel.
      destination_service: 'echo.demo.svc.cluster.local',
      destination_service_name: 'echo',
      destination_service_namespace: 'demo',
    };
    await waitUntil('tunnels counted under the whole label set on both sides', async () => (await metricSum(a, 'istio_tcp_connections_closed_total', { ...labels, reporter: 'source' })) >= 1 && (await metricSum(b, 'istio_tcp_connections_closed_total', { ...labels, reporter: 'destination' })) >= 1);
  });

  it('carries a connection to a ServiceEntry host over HBONE to the workloads it selects, labelled with the entry', async () => {
    const payload = Buffer.from('through a ServiceEntry');
    expect((await roundTrip(payload, 9009)).equals(payload)).toBe(true);
    const a = mesh.nodes.get('node-a')!;
    await waitUntil('the tunnel counted under the entry', async () => (await metricSum(a, 'istio_tcp_connections_closed_total', { reporter: 'source', destination_service: 'echo.vm.internal', destination_service_name: 'echo-vm', destination_workload: 'echo-1', destination_principal: 'spiffe://cluster.local/ns/demo/sa/echo' })) >= 1);
    // The destination reports the entry too, from the CONNECT's forwarded host= (the Service echo has the same target port).
    const b = mesh.nodes.get('node-b')!;
    await waitUntil('the destination counting the tunnel under the entry', async () => (await metricSum(b, 'istio_tcp_connections_closed_total', { reporter: 'destination', destination_service: 'echo.vm.internal', destination_service_name: 'echo-vm', destination_workload: 'echo-1' })) >= 1);
  });

  it('reuses one pooled session for many connections (a new connection is a stream, not a handshake)', async () => {
    const since = { a: mesh.nodes.get('node-a')!.proc.lines.length, b: mesh.nodes.get('node-b')!.proc.lines.length };
    await Promise.all(Array.from({ length: 20 }, (_, i) => roundTrip(Buffer.from(`hello ${i}`))));
    const a = mesh.nodes.get('node-a')!;
    const dump = (await (await request(`${a.adminUrl}/config_dump`)).body.json()) as { pool: { sessions: number } };
    expect(dump.pool.sessions).toBe(1);
    // Twenty at once are past --stream-window-budget 8 at 4 MiB, on both sides (the pool's sessions on node-a, the
    // inbound's on node-b): their windows narrowed, and each proxy said so.
    const windowLine = (l: { msg?: unknown }) => l.msg === 'HBONE stream windows set for the tunnels open across sessions';
    for (const [node, from] of [[a, since.a], [mesh.nodes.get('node-b')!, since.b]] as const) {
      await waitUntil(`${node.name}'s stream window line`, () => node.proc.lines.slice(from).some(windowLine), 5_000);
      const narrowed = node.proc.lines.slice(from).find(windowLine);
      expect(narrowed).toMatchObject({ budgetBytes: 8 * 1024 * 1024 });
      expect(narrowed?.streamWindowBytes).toBeLessThan(4 * 1024 * 1024);
    }
  });

  it('listens for HBONE on every local workload\'s IP, a Pod\'s and a WorkloadEntry\'s of one name alike', async () => {
    for (const ip of [CLIENT_IP, OTHER_CLIENT_IP, TWIN_VM_IP]) {
      await new Promise<void>((resolve, reject) => {
        const socket = connect({ host: ip, port: 15008 });
        socket.once('connect', () => {
          socket.destroy();
          resolve();
        });
        socket.once('error', (error) => reject(new Error(`${ip}:15008: ${error.message}`)));
      });
    }
  });

  // Last: it restarts node-a with listeners from --outbound, whose owners nothing checks until a connection comes.
  it('carries a listener\'s connections only under an owner that is one workload on this node, or names its kind', async () => {
    const nodeA = await mesh.startNode('node-a', [
      '--outbound', `${CLIENT_IP}:9101=echo.demo:7@demo/ghost`,
      '--outbound', `${CLIENT_IP}:9102=echo.demo:7@demo/echo-1`,
      '--outbound', `${CLIENT_IP}:9103=echo.demo:7@demo/client-2`,
      '--outbound', `${CLIENT_IP}:9104=echo.demo:7@demo/client-1`,
      '--outbound', `${CLIENT_IP}:9105=echo.demo:7@WorkloadEntry:demo/client-1`,
      '--outbound', `${CLIENT_IP}:9106=echo.demo:7@Pod:demo/client-1`,
    ]);
    const before = echoConnections;
    // No such workload; a workload of another node (whose identity node-a must never borrow).
    expect((await roundTrip(Buffer.from('nobody'), 9101, true)).length).toBe(0);
    expect((await roundTrip(Buffer.from('not mine'), 9102, true)).length).toBe(0);
    const refusals = () => nodeA.proc.lines.filter((line) => line.msg === 'outbound listener owner is not a workload on this node; closing the connection');
    await waitUntil('both refusals logged', () => refusals().length === 2);
    expect(refusals().map((line) => line.owner).sort()).toEqual(['demo/echo-1', 'demo/ghost']);
    // A Pod and a WorkloadEntry of that name: the proxy does not pick one of their identities.
    expect((await roundTrip(Buffer.from('which one?'), 9104, true)).length).toBe(0);
    const ambiguous = await nodeA.proc.waitFor((line) => line.msg === 'outbound listener owner names more than one workload on this node (a Pod and a WorkloadEntry); closing the connection rather than pick an identity');
    expect(ambiguous.kinds).toEqual(['WorkloadEntry', 'Pod']);
    expect(echoConnections).toBe(before);
    // The accept side: this node's own workload; node-b counts its tunnel before the baselines below are read.
    const b = mesh.nodes.get('node-b')!;
    const closedFrom = (sa: string) => metricSum(b, 'istio_tcp_connections_closed_total', { reporter: 'destination', source_principal: `spiffe://cluster.local/ns/demo/sa/${sa}` });
    const clientBefore = await closedFrom('client');
    expect((await roundTrip(Buffer.from('mine'), 9103)).toString()).toBe('mine');
    expect(echoConnections).toBe(before + 1);
    await waitUntil('the owner\'s tunnel counted', async () => (await closedFrom('client')) === clientBefore + 1);
    // The same name with its kind: each listener presents the identity of the one it names.
    const vmBefore = await closedFrom('vm');
    expect((await roundTrip(Buffer.from('as the VM'), 9105)).toString()).toBe('as the VM');
    await waitUntil('the WorkloadEntry\'s tunnel counted under its identity', async () => (await closedFrom('vm')) === vmBefore + 1);
    expect((await roundTrip(Buffer.from('as the Pod'), 9106)).toString()).toBe('as the Pod');
    await waitUntil('the Pod\'s tunnel counted under its identity', async () => (await closedFrom('client')) === clientBefore + 2);
    expect(await closedFrom('vm')).toBe(vmBefore + 1);
  }, 60_000);
});
