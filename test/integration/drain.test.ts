// SIGTERM drains a node proxy, as ztunnel's shutdown does: its listeners close, the connections open go on to their
// end within --drain-timeout, and what is still open then is cut with a reset. Real processes on loopback.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, createServer as createHttpServer, request } from 'node:http';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import * as http2 from 'node:http2';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';

const P = 72;
const CLIENT_IP = nodeIp(P, 0, 20);
const ECHO_IP = nodeIp(P, 1, 10);
const WEB_IP = nodeIp(P, 1, 11);
const H2C_IP = nodeIp(P, 1, 12);

const config = yamlDocuments(
  podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: '9007=echo.demo:7,9080=web.demo:80,9081=h2c.demo:80' }),
  podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_IP, labels: { app: 'echo' } }),
  serviceYaml({ name: 'echo', selector: { app: 'echo' }, ports: [{ name: 'tcp', port: 7, targetPort: 7000 }] }),
  // Declared HTTP and under a policy with HTTP fields: node-b inspects it, and so holds its HTTP/1.1 keep-alive itself.
  podYaml({ name: 'web-1', node: 'node-b', serviceAccount: 'web', ip: WEB_IP, labels: { app: 'web', kind: 'h1' } }),
  serviceYaml({ name: 'web', selector: { kind: 'h1' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
  podYaml({ name: 'h2c-1', node: 'node-b', serviceAccount: 'web', ip: H2C_IP, labels: { app: 'web', kind: 'h2c' } }),
  serviceYaml({ name: 'h2c', selector: { kind: 'h2c' }, ports: [{ name: 'http2', port: 80, targetPort: 8081 }] }),
  `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: web-get, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules:
    - to: [{ operation: { methods: ["GET"] } }]
`,
);

let mesh: TestMesh;
let echo: Server;
let web: HttpServer;
let h2c: http2.Http2Server;

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (socket) => socket.on('error', () => {}).pipe(socket));
  await new Promise<void>((resolve) => echo.listen(7000, ECHO_IP, resolve));
  // Answers after the delay its path names (`/wait/800`), with keep-alive.
  web = createHttpServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    const delay = Number(/^\/wait\/(\d+)$/.exec(req.url ?? '')?.[1] ?? 0);
    setTimeout(() => res.end('ok'), delay);
  });
  await new Promise<void>((resolve) => web.listen(8080, WEB_IP, resolve));
  h2c = http2.createServer((_req, res) => res.end('ok'));
  await new Promise<void>((resolve) => h2c.listen(8081, H2C_IP, resolve));
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a', 'node-b'], config: { 'workloads.yaml': config } });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  echo?.close();
  web?.closeAllConnections();
  web?.close();
  h2c?.close();
});

/** A connection through node-a's listener, with what came back. */
async function open(): Promise<{ socket: Socket; received: () => string; error: () => string | undefined }> {
  const socket = connect({ host: CLIENT_IP, port: 9007 });
  let received = '';
  let error: string | undefined;
  socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
  socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, received: () => received, error: () => error };
}

function exited(node: TestNode): Promise<number | null> {
  return new Promise((resolve) => {
    if (node.proc.child.exitCode !== null) resolve(node.proc.child.exitCode);
    else node.proc.child.once('exit', (code) => resolve(code));
  });
}

describe('a node proxy asked to stop', () => {
  it('refuses new connections, lets the open one finish, and exits as soon as it has', async () => {
    const nodeA = await mesh.startNode('node-a', ['--drain-timeout', '10s']);
    const conn = await open();
    conn.socket.write('before\n');
    await waitUntil('the first echo', () => conn.received() === 'before\n', 5_000);
    const exit = exited(nodeA);
    nodeA.proc.child.kill('SIGTERM');
    await nodeA.proc.waitFor((line) => line.msg === 'draining: no new connections; open ones may finish', 5_000);
    // New connections find no listener.
    await expect(open()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    // The open one carries on.
    conn.socket.write('during\n');
    await waitUntil('the echo while draining', () => conn.received() === 'before\nduring\n', 5_000);
    const ending = Date.now();
    conn.socket.end();
    expect(await exit).toBe(0);
    // As soon as its last connection ended: not the 10 s it was given.
    expect(Date.now() - ending).toBeLessThan(3_000);
    expect(conn.error()).toBeUndefined();
  }, 30_000);

  it('asked again while it drains, cuts the open connection at once, says so, and stops in order, its state directory let go', async () => {
    const nodeA = await mesh.startNode('node-a', ['--drain-timeout', '30s']);
    const conn = await open();
    conn.socket.write('held\n');
    await waitUntil('the echo', () => conn.received() === 'held\n', 5_000);
    const exit = exited(nodeA);
    nodeA.proc.child.kill('SIGTERM');
    await nodeA.proc.waitFor((line) => line.msg === 'draining: no new connections; open ones may finish', 5_000);
    const again = Date.now();
    nodeA.proc.child.kill('SIGINT');
    expect(await exit).toBe(0);
    expect(Date.now() - again).toBeLessThan(5_000);
    expect(nodeA.proc.lines.some((line) => line.msg === 'asked again to stop: cutting the drain short' && line.signal === 'SIGINT')).toBe(true);
    expect(nodeA.proc.lines.some((line) => line.msg === 'drain cut short: cutting the connections still open' && line.left === 1)).toBe(true);
    await waitUntil('the connection cut', () => conn.socket.closed, 5_000);
    expect(conn.error()).toBe('ECONNRESET');
    expect(existsSync(join(mesh.dir, 'node-a', 'lock'))).toBe(false);
  }, 30_000);

  it('by SIGHUP (a closed terminal, a reload) says it ignores it, and its open connection goes on', async () => {
    const nodeA = await mesh.startNode('node-a');
    try {
      const conn = await open();
      conn.socket.write('before\n');
      await waitUntil('the first echo', () => conn.received() === 'before\n', 5_000);
      nodeA.proc.child.kill('SIGHUP');
      await nodeA.proc.waitFor((line) => typeof line.msg === 'string' && line.msg.startsWith('SIGHUP ignored'), 5_000);
      conn.socket.write('after\n');
      await waitUntil('the echo after SIGHUP', () => conn.received() === 'before\nafter\n', 5_000);
      expect(nodeA.proc.child.exitCode).toBeNull();
      conn.socket.destroy();
    } finally {
      nodeA.proc.child.kill('SIGTERM');
      await exited(nodeA);
    }
  }, 30_000);

  it('cuts a connection still open when the drain time is over, with a reset, and exits', async () => {
    const nodeA = await mesh.startNode('node-a', ['--drain-timeout', '1s']);
    const conn = await open();
    conn.socket.write('held\n');
    await waitUntil('the echo', () => conn.received() === 'held\n', 5_000);
    const exit = exited(nodeA);
    const stopping = Date.now();
    nodeA.proc.child.kill('SIGTERM');
    expect(await exit).toBe(0);
    expect(Date.now() - stopping).toBeGreaterThanOrEqual(900);
    await waitUntil('the connection cut', () => conn.socket.closed, 5_000);
    expect(conn.error()).toBe('ECONNRESET');
  }, 30_000);
});

describe('a peer node proxy killed with a tunnel open', () => {
  it('reaches the application as a reset, and the access line says the session was lost, not that the peer reset the stream', async () => {
    const nodeB = await mesh.startNode('node-b');
    const nodeA = await mesh.startNode('node-a');
    const conn = await open();
    conn.socket.write('before\n');
    await waitUntil('the echo', () => conn.received() === 'before\n', 5_000);
    const since = nodeA.proc.lines.length;
    nodeB.proc.child.kill('SIGKILL');
    await waitUntil('the connection cut', () => conn.socket.closed, 5_000);
    expect(conn.error()).toBe('ECONNRESET');
    const line = await nodeA.proc.waitFor((l) => l.msg === 'access' && typeof l.error === 'string' && nodeA.proc.lines.indexOf(l) >= since, 5_000);
    expect(line).toMatchObject({ error_code: 'TUNNEL_RESET', error: 'HBONE session to the peer ended (connection lost or closed) before the tunnel finished' });
  }, 30_000);
});

/** A GET on `agent` through node-a's listener to the inspected port, with its answer. */
function get(agent: Agent, path: string): Promise<{ res: IncomingMessage; body: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: CLIENT_IP, port: 9080, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ res, body, socket: req.socket as Socket }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('a node proxy asked to stop while it inspects HTTP/1.1 keep-alive connections', () => {
  it('ends an idle keep-alive connection at once, with a FIN, instead of holding the drain to its deadline', async () => {
    const nodeB = await mesh.startNode('node-b', ['--drain-timeout', '10s']);
    await mesh.startNode('node-a');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await get(agent, '/');
      expect(first.body).toBe('ok');
      expect(first.res.headers.connection).toBe('keep-alive');
      const socket = first.socket;
      let error: string | undefined;
      socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
      const exit = exited(nodeB);
      const stopping = Date.now();
      nodeB.proc.child.kill('SIGTERM');
      expect(await exit).toBe(0);
      // Not the 10 s it was given: the idle tunnel was the only thing open.
      expect(Date.now() - stopping).toBeLessThan(3_000);
      await waitUntil('the idle connection closed', () => socket.destroyed, 5_000);
      expect(error).toBeUndefined();
    } finally {
      agent.destroy();
    }
  }, 30_000);

  it('answers a request in flight with Connection: close, then exits without waiting for the deadline', async () => {
    const nodeB = await mesh.startNode('node-b', ['--drain-timeout', '10s']);
    await mesh.startNode('node-a');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      expect((await get(agent, '/')).res.headers.connection).toBe('keep-alive');
      const slow = get(agent, '/wait/800');
      await new Promise((resolve) => setTimeout(resolve, 200));
      const exit = exited(nodeB);
      const stopping = Date.now();
      nodeB.proc.child.kill('SIGTERM');
      const answer = await slow;
      expect(answer.body).toBe('ok');
      expect(answer.res.headers.connection).toBe('close');
      expect(await exit).toBe(0);
      expect(Date.now() - stopping).toBeLessThan(3_000);
    } finally {
      agent.destroy();
    }
  }, 30_000);
});

describe('a node proxy asked to stop while it inspects h2c', () => {
  it('tells the inner HTTP/2 session GOAWAY, and exits once the client has gone', async () => {
    const nodeB = await mesh.startNode('node-b', ['--drain-timeout', '10s']);
    await mesh.startNode('node-a');
    const session = http2.connect(`http://${CLIENT_IP}:9081`);
    session.on('error', () => {});
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const req = session.request({ ':path': '/' });
        let text = '';
        req.setEncoding('utf8');
        req.on('data', (chunk: string) => (text += chunk));
        req.on('end', () => resolve(text));
        req.on('error', reject);
        req.end();
      });
      expect(body).toBe('ok');
      const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
      const exit = exited(nodeB);
      const stopping = Date.now();
      nodeB.proc.child.kill('SIGTERM');
      expect(await goaway).toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(await exit).toBe(0);
      expect(Date.now() - stopping).toBeLessThan(3_000);
    } finally {
      session.destroy();
    }
  }, 30_000);
});
