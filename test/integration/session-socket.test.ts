// The SessionSocket under an HBONE client session (src/proxy/session-socket.ts): its writes complete at once so the
// session always reads (two Node sessions had deadlocked), but not without bound. A server that floods PINGs (each
// answered with an ACK no flow-control window limits) and reads nothing had grown the proxy by hundreds of MiB in
// seconds; past the bound the session stops reading. Real TLS and sockets.
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SessionSocket } from '../../src/proxy/session-socket.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';

let server: tls.Server;
let port = 0;

beforeAll(async () => {
  const ca = await createTestCa('cluster.local');
  const svid = await issueTestSvid(ca, 'spiffe://cluster.local/ns/b/sa/flooder');
  server = tls.createServer({ cert: svid.certPem, key: svid.keyPem, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3' }, (socket) => {
    socket.on('error', () => {});
    // An empty SETTINGS, then PINGs as fast as the socket takes them, and never a byte read.
    socket.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
    socket.pause();
    const ping = Buffer.from([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    const burst = Buffer.concat(Array.from({ length: 200 }, () => ping));
    const timer = setInterval(() => {
      if (socket.writableLength < 4_000_000) socket.write(burst);
    }, 2);
    socket.on('close', () => clearInterval(timer));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as AddressInfo).port;
});

afterAll(() => {
  server?.close();
});

describe('a client session over a SessionSocket, its server flooding PINGs and reading nothing', () => {
  // Past the bound the session stops reading, as Node's does on its own socket: no more PINGs are read, no more ACKs
  // queued (the pool's keepalive then finds it dead and cuts it). Unbounded, 1.4 MiB of 17-byte ACKs were queued in
  // 4 s, and the process grew by 400 MiB in 10.
  it('keeps what it queues for the server bounded', async () => {
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: '' });
    await once(socket, 'secureConnect');
    // A bound of 1 MiB (48 MiB in the proxy, above what a peer's windows let DATA queue), reached in a second here.
    const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => new SessionSocket(socket, { maxQueuedBytes: 1024 * 1024 }) });
    session.on('error', () => {});
    let largestQueue = 0;
    const watch = setInterval(() => (largestQueue = Math.max(largestQueue, socket.writableLength)), 50);
    try {
      await new Promise((resolve) => setTimeout(resolve, 6_000));
    } finally {
      clearInterval(watch);
      session.destroy();
      socket.destroy();
    }
    expect(largestQueue).toBeGreaterThan(0);
    expect(largestQueue).toBeLessThan(1024 * 1024 + 64 * 1024);
  }, 20_000);
});
