// SIGTERM drains a node proxy, as ztunnel's shutdown does: its listeners close, the connections open go on to their
// end within --drain-timeout, and what is still open then is cut with a reset. Real processes on loopback.
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';

const P = 72;
const CLIENT_IP = nodeIp(P, 0, 20);
const ECHO_IP = nodeIp(P, 1, 10);

const config = yamlDocuments(
  podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: '9007=echo.demo:7' }),
  podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_IP, labels: { app: 'echo' } }),
  serviceYaml({ name: 'echo', selector: { app: 'echo' }, ports: [{ name: 'tcp', port: 7, targetPort: 7000 }] }),
);

let mesh: TestMesh;
let echo: Server;

beforeAll(async () => {
  echo = createServer({ allowHalfOpen: true }, (socket) => socket.on('error', () => {}).pipe(socket));
  await new Promise<void>((resolve) => echo.listen(7000, ECHO_IP, resolve));
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a', 'node-b'], config: { 'workloads.yaml': config } });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  echo?.close();
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
