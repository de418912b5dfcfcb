// The benchmark's own upstream, run as a child process (pinned with the load generator): the TCP bulk
// source/sink, the holder of idle connections, and, when nginx is not installed, the HTTP server that
// answers every request with the same 1 KiB body nginx would.
//
// Bulk protocol, one transfer per connection: the client sends `down N\n` (we write N bytes, then FIN) or
// `up N\n` followed by N bytes and FIN (we answer `ok COUNT\n`, then FIN).
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';

export interface UpstreamConfig {
  /** host:port pairs for the HTTP fallback; empty when nginx serves HTTP. */
  http: Array<{ host: string; port: number }>;
  bulk: { host: string; port: number };
  hold: { host: string; port: number };
  bodyBytes: number;
}

export type UpstreamRequest = { type: 'count' };
export type UpstreamMessage = { type: 'ready' } | { type: 'count'; hold: number; holdAccepted: number } | { type: 'error'; message: string };

/** Written in pieces this size: large enough that a 1 GiB transfer costs few write calls. */
const BULK_CHUNK_BYTES = 1024 * 1024;
const BULK_CHUNK = Buffer.alloc(BULK_CHUNK_BYTES, 0x61);
/** A bulk request line longer than this is not one. */
const MAX_COMMAND_BYTES = 64;

function send(message: UpstreamMessage): void {
  process.send?.(message);
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, backlog: 4096, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function writeBulk(socket: Socket, total: number): void {
  let remaining = total;
  const pump = () => {
    while (remaining > 0) {
      const size = Math.min(remaining, BULK_CHUNK_BYTES);
      remaining -= size;
      const more = socket.write(size === BULK_CHUNK_BYTES ? BULK_CHUNK : BULK_CHUNK.subarray(0, size));
      if (!more) {
        socket.once('drain', pump);
        return;
      }
    }
    socket.end();
  };
  pump();
}

function onBulk(socket: Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  let head = Buffer.alloc(0);
  let mode: 'up' | null = null;
  let received = 0;
  socket.on('data', (chunk: Buffer) => {
    if (mode === 'up') {
      received += chunk.length;
      return;
    }
    head = Buffer.concat([head, chunk]);
    const newline = head.indexOf(10);
    if (newline < 0) {
      if (head.length > MAX_COMMAND_BYTES) socket.destroy();
      return;
    }
    const [verb, count] = head.subarray(0, newline).toString().split(' ');
    const bytes = Number(count);
    if (verb === 'down' && bytes >= 0) {
      writeBulk(socket, bytes);
    } else if (verb === 'up') {
      mode = 'up';
      received = head.length - newline - 1;
    } else {
      socket.destroy();
    }
  });
  socket.on('end', () => {
    if (mode === 'up') socket.end(`ok ${received}\n`);
  });
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? '{}') as UpstreamConfig;
  const body = Buffer.alloc(config.bodyBytes, 'x');
  for (const address of config.http) {
    const server = createHttpServer({ keepAliveTimeout: 300_000, requestTimeout: 0, headersTimeout: 300_000 }, (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
      res.end(body);
    });
    await listen(server as unknown as Server, address.host, address.port);
  }
  const bulk = createServer({ allowHalfOpen: true, noDelay: true }, onBulk);
  await listen(bulk, config.bulk.host, config.bulk.port);
  let hold = 0;
  let holdAccepted = 0;
  const holder = createServer({ allowHalfOpen: false }, (socket) => {
    hold++;
    holdAccepted++;
    socket.on('error', () => socket.destroy());
    socket.once('close', () => hold--);
  });
  holder.maxConnections = 1 << 20;
  await listen(holder, config.hold.host, config.hold.port);
  process.on('message', (message: UpstreamRequest) => {
    if (message.type === 'count') send({ type: 'count', hold, holdAccepted });
  });
  // The harness going away (even by SIGKILL) closes the IPC channel: leave with it.
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0));
  send({ type: 'ready' });
}

main().catch((error: unknown) => {
  send({ type: 'error', message: error instanceof Error ? error.message : String(error) });
  process.exit(1);
});
