// HBONE interop with peers that are not ambit's code: a node:http2 + node:tls client (and, where the machine
// has python3 with the h2 package, a Python one) against node-b's inbound 15008; and ambit's outbound
// against a minimal node:http2 CONNECT server standing in for a foreign node proxy.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import * as http2 from 'node:http2';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificatesToPem } from '../../src/identity/svid.ts';
import { createTestCa, issueMeshSvid, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { connectHbone, echoThrough, openTunnel, startEchoServer } from '../helpers/hbone.ts';
import type { EchoServer } from '../helpers/hbone.ts';
import { metricSum, nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 63;
const CLIENT_IP = nodeIp(P, 0, 20);
const ECHO_IP = nodeIp(P, 1, 10);
// Pods the registry places on node-c, which runs no ambit proxy: foreign HBONE servers answer for them.
// Their IPs sit in node-b's range, where node-b's proxy must not bind them.
const FOREIGN_IP = nodeIp(P, 1, 30);
const IMPOSTOR_IP = nodeIp(P, 1, 31);
const ECHO_PORT = 7000;
const HBONE_PORT = 15008;

const CLIENT_ID = 'spiffe://cluster.local/ns/demo/sa/client';
const ECHO_ID = 'spiffe://cluster.local/ns/demo/sa/echo';
const FOREIGN_ID = 'spiffe://cluster.local/ns/demo/sa/foreign-echo';
// What ztunnel sends: W3C baggage naming the source workload for the destination's metric labels.
const ZTUNNEL_BAGGAGE = 'k8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=interop-client,service.name=interop-client,service.version=v1';

const config = yamlDocuments(
  podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: `9010=foreign-echo.demo:7,9011=${IMPOSTOR_IP}:${ECHO_PORT}` }),
  podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_IP, labels: { app: 'echo' } }),
  podYaml({ name: 'foreign-echo-1', node: 'node-c', serviceAccount: 'foreign-echo', ip: FOREIGN_IP, labels: { app: 'foreign-echo' } }),
  podYaml({ name: 'payments-1', node: 'node-c', serviceAccount: 'payments', ip: IMPOSTOR_IP }),
  serviceYaml({ name: 'foreign-echo', selector: { app: 'foreign-echo' }, ports: [{ name: 'tcp', port: 7, targetPort: ECHO_PORT }] }),
);

interface ForeignServer {
  readonly server: http2.Http2SecureServer;
  readonly requests: Array<{ method: string | undefined; authority: string | undefined; baggage: string | undefined; peer: string | undefined }>;
  close(): Promise<void>;
}

/** A minimal HBONE server: TLS 1.3 with a mesh SVID, client certificates required, 200 to CONNECT, then echo. */
async function startForeignServer(host: string, svid: TestSvid): Promise<ForeignServer> {
  const server = http2.createSecureServer({ cert: svid.certPem, key: svid.keyPem, ca: rootsPem, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], allowHTTP1: false });
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });
  const foreign: ForeignServer = {
    server,
    requests: [],
    close: () => {
      for (const session of sessions) session.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  server.on('stream', (stream, headers) => {
    const socket = stream.session?.socket as TLSSocket | undefined;
    foreign.requests.push({ method: headers[':method'], authority: headers[':authority'], baggage: headers.baggage as string | undefined, peer: socket?.getPeerCertificate().subjectaltname });
    if (headers[':method'] !== 'CONNECT') {
      stream.respond({ ':status': 405 }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  server.on('sessionError', () => {});
  server.listen(HBONE_PORT, host);
  await once(server, 'listening');
  return foreign;
}

/** Sends payload through an outbound listener of client-1 and resolves with what came back before the close (reset or not). */
function roundTrip(port: number, payload: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const socket = connect({ host: CLIENT_IP, port });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {}); // a refused tunnel is a reset: the close below still reports what arrived
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('connect', () => socket.end(payload));
  });
}

let mesh: TestMesh;
let echo: EchoServer;
let clientSvid: TestSvid;
/** The mesh's trust bundle roots, PEM: what our own TLS options verify the other side with. */
let rootsPem: string;
let foreign: ForeignServer;
let impostor: ForeignServer;

beforeAll(async () => {
  echo = await startEchoServer(ECHO_IP, ECHO_PORT);
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a', 'node-b'], config: { 'workloads.yaml': config } });
  rootsPem = certificatesToPem(mesh.bundle.roots);
  clientSvid = await issueMeshSvid(mesh.caDir, CLIENT_ID);
  foreign = await startForeignServer(FOREIGN_IP, await issueMeshSvid(mesh.caDir, FOREIGN_ID));
  // A valid mesh SVID, but not the identity the registry expects at IMPOSTOR_IP (sa/payments).
  impostor = await startForeignServer(IMPOSTOR_IP, await issueMeshSvid(mesh.caDir, FOREIGN_ID));
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  await Promise.all([echo?.close(), foreign?.close(), impostor?.close()]);
});

describe('a plain node:http2 client against ambit\'s inbound', () => {
  it('gets 200 to CONNECT and reads back exactly the 1 MiB it sent, after half-closing', async () => {
    const session = await connectHbone(ECHO_IP, HBONE_PORT, clientSvid, rootsPem, ECHO_ID);
    try {
      const tunnel = await openTunnel(session, `${ECHO_IP}:${ECHO_PORT}`, { baggage: ZTUNNEL_BAGGAGE });
      expect(tunnel.status).toBe(200);
      const payload = randomBytes(1024 * 1024);
      const echoed = await echoThrough(tunnel.stream, payload);
      expect(echoed.length).toBe(payload.length);
      expect(echoed.equals(payload)).toBe(true);
    } finally {
      session.close();
    }
  });

  it('carries two concurrent streams on one session, each getting its own bytes back', async () => {
    const session = await connectHbone(ECHO_IP, HBONE_PORT, clientSvid, rootsPem, ECHO_ID);
    try {
      const [first, second] = await Promise.all([openTunnel(session, `${ECHO_IP}:${ECHO_PORT}`), openTunnel(session, `${ECHO_IP}:${ECHO_PORT}`)]);
      expect([first?.status, second?.status]).toEqual([200, 200]);
      const payloads = [randomBytes(512 * 1024), randomBytes(300 * 1024 + 7)] as const;
      const echoed = await Promise.all([echoThrough(first!.stream, payloads[0]), echoThrough(second!.stream, payloads[1])]);
      expect(echoed[0].equals(payloads[0])).toBe(true);
      expect(echoed[1].equals(payloads[1])).toBe(true);
    } finally {
      session.close();
    }
  });

  it('labels the destination\'s metrics with the source workload, canonical service, revision and cluster named in ztunnel\'s baggage', async () => {
    const b = mesh.nodes.get('node-b')!;
    const derived = { source_workload: 'interop-client', source_workload_namespace: 'demo', source_canonical_service: 'interop-client', source_canonical_revision: 'v1', source_version: 'v1', source_cluster: 'Kubernetes' };
    await waitUntil('inbound tunnel from the interop client counted', async () => (await metricSum(b, 'istio_tcp_connections_closed_total', { reporter: 'destination', source_principal: CLIENT_ID, ...derived })) >= 1, 10_000);
  });

  it('refuses a client whose certificate is from another CA of the same trust domain, before any CONNECT', async () => {
    const otherCa = await createTestCa('cluster.local');
    const stranger = await issueTestSvid(otherCa, 'spiffe://cluster.local/ns/demo/sa/stranger');
    const before = echo.connections;
    const session = await connectHbone(ECHO_IP, HBONE_PORT, stranger, rootsPem, ECHO_ID);
    try {
      await expect(openTunnel(session, `${ECHO_IP}:${ECHO_PORT}`)).rejects.toThrow();
    } finally {
      session.destroy();
    }
    expect(echo.connections).toBe(before);
    const b = mesh.nodes.get('node-b')!;
    const refusal = await b.proc.waitFor((line) => line.msg === 'refusing HBONE peer' && line.presented === 'spiffe://cluster.local/ns/demo/sa/stranger', 5_000);
    expect(refusal.code).toBe('SVID_CHAIN_INVALID');
  });
});

// python3 with the `h2` package (Debian: python3-h2); the image's default python3 may lack it, so try both.
const PYTHON = ['python3', '/usr/bin/python3'].find((python) => spawnSync(python, ['-c', 'import h2'], { stdio: 'ignore' }).status === 0);

const PYTHON_CLIENT = String.raw`
import json, select, socket, ssl, sys, time
import h2.config, h2.connection, h2.events

host, port, authority, cert, key, ca, expected_id, payload_file, out_file = sys.argv[1:]
payload = open(payload_file, 'rb').read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN, checked below
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(['h2'])
sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
assert sock.selected_alpn_protocol() == 'h2', sock.selected_alpn_protocol()
uris = [value for (kind, value) in sock.getpeercert().get('subjectAltName', ()) if kind == 'URI']
if uris != [expected_id]:
    sys.exit('server presented %r, expected %s' % (uris, expected_id))
sock.setblocking(False)

# h2 4.x insists on :scheme and :path in every request; RFC 9113 §8.5 CONNECT has neither, so the
# outbound check is off (the server's nghttp2 still validates what we send).
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding='utf-8', validate_outbound_headers=False))
conn.initiate_connection()
stream_id = conn.get_next_available_stream_id()
conn.send_headers(stream_id, [(':method', 'CONNECT'), (':authority', authority), ('baggage', 'k8s.namespace.name=demo,k8s.deployment.name=python-client')])
status, sent, half_closed, ended, received = None, 0, False, False, bytearray()
deadline = time.time() + 20

def flush():
    data = conn.data_to_send()
    while data:
        try:
            n = sock.send(data)
            data = data[n:]
        except (ssl.SSLWantWriteError, BlockingIOError):
            select.select([], [sock], [], 1)

while not ended:
    if time.time() > deadline:
        sys.exit('timed out: status=%r sent=%d received=%d' % (status, sent, len(received)))
    if status == 200 and not half_closed:
        room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(payload) - sent)
        if room > 0:
            conn.send_data(stream_id, payload[sent:sent + room])
            sent += room
        if sent == len(payload):
            conn.end_stream(stream_id)  # half-close: END_STREAM, the upstream gets FIN
            half_closed = True
    flush()
    can_send = status == 200 and not half_closed and conn.local_flow_control_window(stream_id) > 0
    if not sock.pending():
        select.select([sock], [], [], 0 if can_send else 1)
    try:
        data = sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        continue
    if not data:
        sys.exit('connection closed: status=%r received=%d' % (status, len(received)))
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            status = int(dict(event.headers)[':status'])
            if status != 200:
                sys.exit('CONNECT answered %d' % status)
        elif isinstance(event, h2.events.DataReceived):
            received += event.data
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            ended = True
        elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
            sys.exit('peer ended the tunnel: %r' % event)

open(out_file, 'wb').write(received)
print(json.dumps({'status': status, 'sent': sent, 'received': len(received)}))
`;

describe('a Python h2 client against ambit\'s inbound', () => {
  it.skipIf(PYTHON === undefined)('tunnels 1 MiB through CONNECT and reads the same bytes back (runs only where python3 has the h2 package: Debian python3-h2)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-interop-py-'));
    try {
      const payload = randomBytes(1024 * 1024);
      const files = { script: join(dir, 'client.py'), cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem'), ca: join(dir, 'ca.pem'), payload: join(dir, 'payload.bin'), out: join(dir, 'echoed.bin') };
      await Promise.all([
        writeFile(files.script, PYTHON_CLIENT),
        writeFile(files.cert, clientSvid.certPem),
        writeFile(files.key, clientSvid.keyPem),
        writeFile(files.ca, rootsPem),
        writeFile(files.payload, payload),
      ]);
      const child = spawn(PYTHON as string, [files.script, ECHO_IP, String(HBONE_PORT), `${ECHO_IP}:${ECHO_PORT}`, files.cert, files.key, files.ca, ECHO_ID, files.payload, files.out], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [code] = (await once(child, 'close')) as [number | null];
      expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
      expect(JSON.parse(stdout)).toEqual({ status: 200, sent: payload.length, received: payload.length });
      expect((await readFile(files.out)).equals(payload)).toBe(true);
      const b = mesh.nodes.get('node-b')!;
      await waitUntil('the Python client\'s tunnel counted under its baggage name', async () => (await metricSum(b, 'istio_tcp_connections_closed_total', { reporter: 'destination', source_principal: CLIENT_ID, source_workload: 'python-client' })) >= 1, 10_000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('ambit\'s outbound against a foreign HBONE server', () => {
  it('tunnels through a node:http2 CONNECT server presenting the expected identity, and the bytes come back', async () => {
    const payload = randomBytes(256 * 1024);
    const echoed = await roundTrip(9010, payload);
    expect(echoed.length).toBe(payload.length);
    expect(echoed.equals(payload)).toBe(true);
    const request = foreign.requests.at(-1);
    expect(request).toMatchObject({ method: 'CONNECT', authority: `${FOREIGN_IP}:${ECHO_PORT}`, peer: `URI:${CLIENT_ID}` });
    expect(request?.baggage).toContain('k8s.namespace.name=demo');
    expect(request?.baggage).toContain('k8s.pod.name=client-1');
  });

  it('does not send CONNECT to a server presenting another identity than the registry expects', async () => {
    const echoed = await roundTrip(9011, Buffer.from('for payments only'));
    expect(echoed.length).toBe(0);
    expect(impostor.requests).toEqual([]);
    const a = mesh.nodes.get('node-a')!;
    const refusal = await a.proc.waitFor((line) => line.msg === 'refusing HBONE peer: server identity is not the one expected', 5_000);
    expect(refusal).toMatchObject({ code: 'IDENTITY_MISMATCH', expected: 'spiffe://cluster.local/ns/demo/sa/payments', presented: FOREIGN_ID });
  });

  it('leaves node-c\'s pod IPs to node-c: node-b\'s proxy binds only its own workloads', async () => {
    const b = mesh.nodes.get('node-b')!;
    const bound = b.proc.lines.filter((line) => line.msg === 'listeners bound').flatMap((line) => (line.inbound as string[] | undefined) ?? []);
    expect(bound).toContain(`${ECHO_IP}:${HBONE_PORT}`);
    expect(bound.some((address) => address.startsWith(`${FOREIGN_IP}:`) || address.startsWith(`${IMPOSTOR_IP}:`))).toBe(false);
  });
});
