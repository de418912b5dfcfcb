// A client of an inspected tunnel cannot hold the node proxy's memory with request heads its workload has not answered
// yet: pipelined HTTP/1.1 requests and h2c requests queued for an HTTP/1.1 workload count their heads' bytes, per
// tunnel and across the proxy's tunnels; past either bound a tunnel is reset (the one holding the most), and the others
// go on. Real sockets: an HBONE-like CONNECT stream on loopback carries the client's HTTP to the proxy's inspector,
// which forwards to a real HTTP/1.1 workload that never answers `/never`.
import http from 'node:http';
import http2 from 'node:http2';
import { connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observe/log.ts';
import { HttpInspector } from '../../src/proxy/l7.ts';

/** The configuration these tunnels are decided under: it never changes here. */
const NO_CHANGE = {};

const served: string[] = [];
// Heads as large as the proxy takes (60 KiB), not Node's default 16 KiB.
const workload = http.createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => {
  served.push(req.url ?? '');
  if (req.url === '/never') return;
  req.resume();
  req.on('end', () => res.end(`served ${req.url ?? ''}`));
});

// Small bounds, so that a few requests reach them: 100 KB a tunnel, 150 KB in all.
const inspector = new HttpInspector(silentLogger(), { heldHeadBytes: { perTunnel: 100_000, all: 150_000 } });
const front = http2.createServer();
let frontPort = 0;

beforeAll(async () => {
  await new Promise<void>((resolve) => workload.listen(0, '127.0.0.1', resolve));
  front.on('stream', (stream) => {
    const socket = connect((workload.address() as AddressInfo).port, '127.0.0.1', () => {
      stream.respond({ ':status': 200 });
      void inspector.inspect(stream, socket, { decide: () => ({ allow: true, policy: null, rule: null, reason: 'test', deferred: false }), inForce: () => NO_CHANGE, pathNormalization: () => 'MERGE_SLASHES', onDenied: () => {}, upstreamVersion: 'http1', logRequest: null }, null);
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  frontPort = (front.address() as AddressInfo).port;
});

afterAll(() => {
  front.close();
  workload.close();
});

interface Tunnel {
  readonly stream: http2.ClientHttp2Stream;
  /** Resolves with the tunnel's reset code (0: an orderly end) once it closes. */
  readonly closed: Promise<number>;
  read(): string;
  close(): void;
}

async function tunnel(): Promise<Tunnel> {
  const outer = http2.connect(`http://127.0.0.1:${frontPort}`);
  outer.on('error', () => {});
  const stream = outer.request({ ':method': 'CONNECT', ':authority': 'web.shop' });
  stream.on('error', () => {});
  await new Promise((resolve) => stream.once('response', resolve));
  let read = '';
  stream.setEncoding('latin1');
  stream.on('data', (chunk: string) => (read += chunk));
  const closed = new Promise<number>((resolve) => stream.once('close', () => resolve(stream.rstCode ?? 0)));
  return { stream, closed, read: () => read, close: () => outer.destroy() };
}

const pad = (bytes: number) => 'p'.repeat(bytes);
const settled = (promise: Promise<unknown>, ms: number) => Promise.race([promise.then(() => true), new Promise<boolean>((resolve) => setTimeout(resolve, ms, false))]);

async function waitServed(path: string): Promise<void> {
  while (!served.includes(path)) await new Promise((resolve) => setTimeout(resolve, 10));
}

describe('request heads held unanswered by an inspected tunnel', () => {
  it('reset an HTTP/1.1 tunnel that pipelines more of them than it may hold behind an answer not given, and a new tunnel is served', async () => {
    const held = await tunnel();
    try {
      held.stream.write('GET /never HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      await waitServed('/never');
      // Two heads of 40 KB fit (under 100 KB with the first); a third does not.
      for (let i = 0; i < 2; i++) held.stream.write(`GET /pad-${i} HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(40_000)}\r\n\r\n`);
      expect(await settled(held.closed, 300), 'reset with two heads held').toBe(false);
      held.stream.write(`GET /pad-2 HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(40_000)}\r\n\r\n`);
      expect(await held.closed).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(served.filter((path) => path.startsWith('/pad'))).toEqual([]);
    } finally {
      held.close();
    }
    const next = await tunnel();
    try {
      next.stream.end('GET /after HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n');
      await next.closed;
      expect(next.read()).toContain('served /after');
    } finally {
      next.close();
    }
  });

  it('reset an h2c tunnel whose requests queued for the HTTP/1.1 workload hold more of them than it may', async () => {
    const carrier = await tunnel();
    const session = http2.connect('http://web.shop', { createConnection: () => carrier.stream as Duplex as Socket });
    session.on('error', () => {});
    try {
      const first = session.request({ ':path': '/never', ':authority': 'web.shop' });
      first.on('error', () => {});
      await waitServed('/never');
      const queued = Array.from({ length: 3 }, (_, i) => {
        const stream = session.request({ ':path': `/queued-${i}`, ':authority': 'web.shop', 'x-pad': pad(40_000) });
        stream.on('error', () => {});
        return stream;
      });
      expect(await carrier.closed).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(queued.every((stream) => stream.destroyed || stream.closed)).toBe(true);
      expect(served.filter((path) => path.startsWith('/queued'))).toEqual([]);
    } finally {
      session.destroy();
      carrier.close();
    }
  });

  it('are only those behind the one being answered: tunnels each waiting on one long request hold nothing', async () => {
    const waiting = await Promise.all([tunnel(), tunnel(), tunnel(), tunnel()]);
    const nevers = () => served.filter((path) => path === '/never').length;
    const before = nevers();
    try {
      // 4 × 45 KB of heads, more than both bounds, none of them pipelined.
      for (const client of waiting) client.stream.write(`GET /never HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(45_000)}\r\n\r\n`);
      while (nevers() < before + 4) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(await settled(Promise.race(waiting.map((client) => client.closed)), 300), 'a tunnel reset').toBe(false);
    } finally {
      for (const client of waiting) client.close();
    }
  });

  it('past the bound of all tunnels together, reset the tunnel holding the most, and let the others go on', async () => {
    const big = await tunnel();
    const small = await tunnel();
    const nevers = () => served.filter((path) => path === '/never').length;
    const before = nevers();
    try {
      big.stream.write('GET /never HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      small.stream.write('GET /never HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      while (nevers() < before + 2) await new Promise((resolve) => setTimeout(resolve, 10));
      big.stream.write(`GET /big-0 HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(45_000)}\r\n\r\nGET /big-1 HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(45_000)}\r\n\r\n`);
      expect(await settled(big.closed, 300), 'big reset within its own bound').toBe(false);
      // 90 KB held by the big tunnel, 60 KB more by the small one: past 150 KB in all, the big one goes.
      small.stream.write(`GET /small-0 HTTP/1.1\r\nHost: web.shop\r\nX-Pad: ${pad(60_000)}\r\n\r\n`);
      expect(await big.closed).toBe(http2.constants.NGHTTP2_CANCEL);
      expect(await settled(small.closed, 300), 'small reset').toBe(false);
    } finally {
      big.close();
      small.close();
    }
  });
});

describe('a request asking for an upgrade the proxy does not make', () => {
  it('is answered and its tunnel ended, so that a request pipelined behind it is not left waiting unanswered', async () => {
    const client = await tunnel();
    try {
      // The proxy's end of the tunnel ends (END_STREAM: the client's proxy passes it on as a FIN).
      const ended = new Promise((resolve) => client.stream.once('end', resolve));
      client.stream.write('GET /up HTTP/1.1\r\nHost: web.shop\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /behind HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      expect(await settled(ended, 3_000), 'the tunnel ended').toBe(true);
      expect(client.read()).toContain('served /up');
      expect(client.read().toLowerCase()).toContain('connection: close');
      expect(served).not.toContain('/behind');
    } finally {
      client.close();
    }
  });
});
