// The benchmark's fixed-rate load generator against a real HTTP server on loopback: the warm-up's keep-alive
// connections carry the measured run, and a connection the far side closes between requests is counted, not hidden
// by the reconnect that follows (a proxy cutting applications' connections at a rotation must show).
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { keepAliveConnections, openAll, paced } from '../../bench/system/load.ts';

let server: Server | undefined;

afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** An HTTP server answering 200; `closeAfter` requests on a connection, it closes that connection once answered. */
async function listen(closeAfter = Infinity): Promise<{ port: number; connections: () => number }> {
  let connections = 0;
  const served = new WeakMap<object, number>();
  server = createServer((request, response) => {
    const count = (served.get(request.socket) ?? 0) + 1;
    served.set(request.socket, count);
    response.end('ok', () => {
      // After the answer has left, with no request in flight: the client sees a close between requests.
      if (count >= closeAfter) request.socket.destroy();
    });
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, connections: () => connections };
}

describe('the fixed-rate load generator', () => {
  it('carries the measured run on the warm-up\'s connections, opening none of its own', async () => {
    const { port, connections } = await listen();
    const target = { host: '127.0.0.1', port };
    const open = keepAliveConnections(target, 4);
    try {
      // All four opened before the warm-up, which at a steady rate would have needed only one or two.
      await openAll(open);
      const warm = await paced(target, 200, 0.5, open);
      expect(warm.ok).toBe(100);
      expect(connections()).toBe(4);
      const measured = await paced(target, 200, 0.5, open);
      expect(measured).toMatchObject({ ok: 100, failed: 0, connectionsClosed: 0 });
      expect(connections()).toBe(4);
    } finally {
      for (const connection of open) connection.close();
    }
    // Without connections given, a run opens its own.
    const before = connections();
    await paced(target, 200, 0.25, 2);
    expect(connections()).toBeGreaterThan(before);
  });

  it('counts each connection the far side closed between requests, and goes on over a new one', async () => {
    const { port, connections } = await listen(5);
    // One request every 20 ms on one connection: each close lands well before the next request.
    const result = await paced({ host: '127.0.0.1', port }, 50, 1, 1);
    expect(result.ok + result.failed).toBe(50);
    // 50 requests, five per connection: the server closed each of the first 9 between requests (the 10th's close
    // may land after the run). On a stalled machine a request may go out on a connection as it closes: failed, then.
    expect(result.connectionsClosed + result.failed).toBeGreaterThanOrEqual(9);
    expect(result.connectionsClosed).toBeGreaterThanOrEqual(5);
    expect(result.connectionsClosed).toBeLessThanOrEqual(10);
    // A request after a close went out on a new connection, as a client's would.
    expect(connections()).toBeGreaterThanOrEqual(result.connectionsClosed);
  });
});

describe('a keep-alive connection that could not be opened', () => {
  it('is no connection cut: a refused connect is not counted as one the far side closed', async () => {
    // A port nothing listens on: bound, then let go.
    const { port } = await listen();
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    server = undefined;
    const [connection] = keepAliveConnections({ host: '127.0.0.1', port }, 1);
    await connection?.open();
    expect(connection?.closedBetweenRequests).toBe(0);
    connection?.close();
  });
});

describe('the timed bulk transfer up', () => {
  it('counts what reached the upstream, not what the kernel and the path still held when the clock ran out', async () => {
    // A sink behind a slow path: it reads what its socket holds (up to 64 KiB) every 10 ms, so megabytes wait in
    // socket buffers when the clock runs out.
    const { createServer: createTcpServer } = await import('node:net');
    let counted = -1;
    let answeredAt = 0;
    const sink = createTcpServer({ allowHalfOpen: true }, (socket) => {
      let received = 0;
      let head = true;
      const tick = setInterval(() => {
        const chunk = socket.read() as Buffer | null;
        if (chunk === null) return;
        if (!head) received += chunk.length;
        else {
          const newline = chunk.indexOf(10);
          head = newline < 0;
          if (!head) received += chunk.length - newline - 1;
        }
      }, 10);
      // Emitted once everything before the FIN has been read, at the sink's pace.
      socket.on('end', () => {
        clearInterval(tick);
        counted = received;
        answeredAt = performance.now();
        socket.end(`ok ${received}\n`);
      });
    });
    await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
    try {
      const { bulkFor } = await import('../../bench/system/load.ts');
      const port = (sink.address() as AddressInfo).port;
      const started = performance.now();
      const result = await bulkFor({ host: '127.0.0.1', port }, 'up', 500, 10_000);
      expect(result.bytes).toBe(counted);
      expect(result.bytes).toBeGreaterThan(0);
      // The time until the count came, the drain of what was held included (the clock started at the connect).
      expect(answeredAt - started).toBeGreaterThan(600);
      expect(result.seconds * 1000).toBeGreaterThanOrEqual(answeredAt - started - 100);
    } finally {
      sink.close();
    }
  });
});
