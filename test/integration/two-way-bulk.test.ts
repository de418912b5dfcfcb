// Bulk both ways at once on several tunnels between two ambit proxies: every byte echoed back, none stalled. Node's
// HTTP/2 session stops reading its socket while one of its own writes is pending; two such sessions each writing
// more than the kernel's buffers hold, and neither reading, had deadlocked their connection (every tunnel on it
// stalled until the keepalive cut them all). Real processes, real TLS, an echo workload.
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeIp, podYaml, startTestMesh, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 75;
const CLIENT_IP = nodeIp(P, 0, 10);
const ECHO_IP = nodeIp(P, 1, 10);
const ECHO_PORT = 7007;
const LISTEN_PORT = 9007;

let mesh: TestMesh;
let echo: net.Server;

beforeAll(async () => {
  echo = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  echo.listen(ECHO_PORT, ECHO_IP);
  await once(echo, 'listening');
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a', 'node-b'],
    config: {
      'workloads.yaml': yamlDocuments(
        podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: `${LISTEN_PORT}=${ECHO_IP}:${ECHO_PORT}` }),
        podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_IP }),
      ),
    },
  });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  echo?.close();
});

/** Writes `bytes` through the listener while reading the echo; resolves with the digests of what went and came back. */
function echoThrough(bytes: number): Promise<{ sent: string; received: string; receivedBytes: number }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: CLIENT_IP, port: LISTEN_PORT });
    const sent = createHash('sha256');
    const received = createHash('sha256');
    let receivedBytes = 0;
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      received.update(chunk);
      receivedBytes += chunk.length;
      if (receivedBytes === bytes) socket.end();
    });
    socket.on('close', () => resolve({ sent: sent.digest('hex'), received: received.digest('hex'), receivedBytes }));
    let written = 0;
    const chunk = Buffer.alloc(64 * 1024);
    const writeMore = () => {
      while (written < bytes) {
        chunk.fill(written % 251);
        sent.update(chunk);
        written += chunk.length;
        if (!socket.write(Buffer.from(chunk))) return void socket.once('drain', writeMore);
      }
    };
    socket.once('connect', writeMore);
  });
}

describe('two ambit proxies carrying bulk both ways on several tunnels', () => {
  it('echo every byte back on every tunnel, none stalled', async () => {
    const bytes = 8 * 1024 * 1024;
    const results = await Promise.all(Array.from({ length: 6 }, () => echoThrough(bytes)));
    for (const result of results) {
      expect(result.receivedBytes).toBe(bytes);
      expect(result.received).toBe(result.sent);
    }
  }, 30_000);
});
