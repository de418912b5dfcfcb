// What a workload or client behind an inspected tunnel sends that HTTP/2 cannot carry, or sends to hold the proxy's
// memory, costs that one request: it never ends the process (every tunnel of the node) nor grows without bound.
// Real sockets: an HBONE-like CONNECT stream on loopback carries h2c to the proxy's inspector, which forwards to a real
// HTTP/1.1 workload or a raw HTTP/2 one that writes frames Node's own server would refuse to.
import http from 'node:http';
import http2 from 'node:http2';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { setFlagsFromString, getHeapStatistics } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authzContext, decide } from '../../src/authz/decide.ts';
import { compileAuthorization } from '../../src/authz/compile.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { HttpInspector } from '../../src/proxy/l7.ts';
import { frame, literalHeader } from '../helpers/h2-frames.ts';

/** The configuration these tunnels are decided under: it never changes here. */
const NO_CHANGE = {};

const POLICY = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin*"] } }]
`;
const policies = compileAuthorization(buildSnapshot(parseConfigText(POLICY, 'policy.yaml'))).forLabels('shop', {}, new Set([80]));

/** Requests the HTTP/1.1 workload has read the head of. */
const served: string[] = [];
const h1Workload = http.createServer((req, res) => {
  served.push(req.url ?? '');
  if (req.url === '/dup-trailers' || req.url === '/one-trailer') {
    res.writeHead(200, { trailer: 'etag' });
    res.write('body');
    // A repeated etag: HTTP/1.1 carries it; Node's HTTP/2 refuses to send a second one.
    res.addTrailers(req.url === '/dup-trailers' ? [['etag', '"a"'], ['etag', '"b"']] : { etag: '"a"' });
    res.end();
    return;
  }
  // Answered once its upload has ended, which the client of the queue test never does.
  req.resume();
  req.on('end', () => res.end(`served ${req.url ?? ''}`));
});

/** A raw HTTP/2 workload: its SETTINGS and acknowledgements, and `answer` for each request's HEADERS. */
function rawH2(answer: (socket: Socket, id: number) => void): Server {
  return createServer((socket) => {
  socket.on('error', () => {});
  let buffered = Buffer.alloc(0);
  let preface = false;
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    if (!preface && buffered.length >= 24) {
      preface = true;
      buffered = buffered.subarray(24);
      socket.write(frame(4, 0, 0, Buffer.alloc(0)));
    }
    while (preface && buffered.length >= 9) {
      const length = buffered.readUIntBE(0, 3);
      if (buffered.length < 9 + length) break;
      const type = buffered[3];
      const flags = buffered[4] as number;
      const id = buffered.readUInt32BE(5) & 0x7fffffff;
      buffered = buffered.subarray(9 + length);
      if (type === 4 && (flags & 1) === 0) socket.write(frame(4, 1, 0, Buffer.alloc(0)));
      if (type === 1) answer(socket, id);
    }
  });
  });
}

/**
 * Answers every request with `:status 600` (an HPACK literal of the static table's `:status`), which nghttp2's client
 * takes and Node's server could not send; END_STREAM and END_HEADERS.
 */
const rawH2Workload = rawH2((socket, id) => socket.write(frame(1, 0x5, id, Buffer.from([0x08, 3, ...Buffer.from('600')]))));

/**
 * Pushes: a PUSH_PROMISE of stream 2 (`GET /pushed`), the request's answer, then the promised stream reset, or the
 * connection. A pushed stream had no listener in the proxy, and its reset ended the process.
 */
function pushingWorkload(then: 'reset-stream' | 'reset-connection'): Server {
  return rawH2((socket, id) => {
    const promised = Buffer.alloc(4);
    promised.writeUInt32BE(2);
    // :method GET (static 2), :scheme http (static 6), then :path and :authority as literals.
    socket.write(frame(5, 0x4, id, Buffer.concat([promised, Buffer.from([0x82, 0x86]), literalHeader(':path', '/pushed'), literalHeader(':authority', 'web.shop')])));
    socket.write(frame(1, 0x5, id, Buffer.from([0x88]))); // :status 200 (static 8)
    setTimeout(() => {
      if (then === 'reset-connection') return void socket.resetAndDestroy();
      const code = Buffer.alloc(4);
      code.writeUInt32BE(http2.constants.NGHTTP2_PROTOCOL_ERROR);
      socket.write(frame(3, 0, 2, code));
    }, 50);
  });
}

/** Answers `200 OK ✓`: a reason phrase Node refuses to write (undici reads the bytes as UTF-8). */
const badReasonWorkload = createServer((socket) => {
  socket.on('error', () => {});
  socket.on('data', () => socket.write(Buffer.concat([Buffer.from('HTTP/1.1 200 '), Buffer.from('OK ✓', 'utf8'), Buffer.from('\r\ncontent-length: 5\r\n\r\nhello')])));
});

const h2Workload = http2.createServer();
h2Workload.on('stream', (stream) => {
  stream.respond({ ':status': 200 });
  stream.end('served h2');
});

const inspector = new HttpInspector(silentLogger());
const front = http2.createServer();
let frontPort = 0;
const targets: Record<string, { server: { address(): AddressInfo | string | null }; version: 'http1' | 'http2' }> = {
  'h1': { server: h1Workload, version: 'http1' },
  'raw-h2': { server: rawH2Workload, version: 'http2' },
  'h2': { server: h2Workload, version: 'http2' },
  'bad-reason': { server: badReasonWorkload, version: 'http1' },
  'push-reset-stream': { server: pushingWorkload('reset-stream'), version: 'http2' },
  'push-reset-connection': { server: pushingWorkload('reset-connection'), version: 'http2' },
};

beforeAll(async () => {
  for (const { server } of Object.values(targets)) await new Promise<void>((resolve) => (server as Server).listen(0, '127.0.0.1', resolve));
  front.on('stream', (stream, headers) => {
    const target = targets[String(headers[':authority'])];
    if (target === undefined) return void stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
    const socket = connect((target.server.address() as AddressInfo).port, '127.0.0.1', () => {
      stream.respond({ ':status': 200 });
      void inspector.inspect(stream, socket, { decide: (facts) => decide(policies, authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 80, request: facts }), 'request'), inForce: () => NO_CHANGE, pathNormalization: () => 'MERGE_SLASHES', onDenied: () => {}, upstreamVersion: target.version, logRequest: null }, null);
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  frontPort = (front.address() as AddressInfo).port;
});

afterAll(() => {
  front.close();
  for (const { server } of Object.values(targets)) (server as Server).close();
});

/** An h2c session inside a tunnel to the named workload. */
async function h2cTo(target: string): Promise<{ session: http2.ClientHttp2Session; close: () => void }> {
  const outer = http2.connect(`http://127.0.0.1:${frontPort}`);
  outer.on('error', () => {});
  const tunnel = outer.request({ ':method': 'CONNECT', ':authority': target });
  await new Promise((resolve, reject) => {
    tunnel.once('response', resolve);
    tunnel.once('error', reject);
  });
  const session = http2.connect('http://web.shop', { createConnection: () => tunnel as Duplex as Socket });
  session.on('error', () => {});
  return { session, close: () => outer.destroy() };
}

/** What an HTTP/1.1 client in a tunnel to the named workload reads until the tunnel ends or 300 ms pass. */
async function h1To(target: string, request: string): Promise<string> {
  const outer = http2.connect(`http://127.0.0.1:${frontPort}`);
  outer.on('error', () => {});
  const tunnel = outer.request({ ':method': 'CONNECT', ':authority': target });
  tunnel.on('error', () => {});
  await new Promise((resolve) => tunnel.once('response', resolve));
  let read = '';
  tunnel.setEncoding('latin1');
  tunnel.on('data', (chunk: string) => (read += chunk));
  tunnel.write(request);
  await new Promise((resolve) => {
    tunnel.once('close', resolve);
    setTimeout(resolve, 300);
  });
  outer.destroy();
  return read;
}

interface Answer {
  status: number;
  body: string;
  trailers: http2.IncomingHttpHeaders | null;
  /** The stream's reset code, 0 for an orderly end. */
  rstCode: number;
}

function call(session: http2.ClientHttp2Session, path: string): Promise<Answer> {
  return new Promise((resolve) => {
    const stream = session.request({ ':path': path, ':authority': 'web.shop' });
    const answer: Answer = { status: 0, body: '', trailers: null, rstCode: 0 };
    stream.on('response', (headers) => (answer.status = Number(headers[':status'])));
    stream.on('trailers', (trailers) => (answer.trailers = trailers));
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => (answer.body += chunk));
    stream.on('error', () => {});
    stream.on('close', () => resolve({ ...answer, rstCode: stream.rstCode ?? 0 }));
  });
}

describe('an inspected h2c tunnel whose workload answers what HTTP/2 cannot carry', () => {
  it("relays an HTTP/1.1 workload's trailers, and resets the answer whose trailers repeat a field HTTP/2 sends once, the proxy going on", async () => {
    const { session, close } = await h2cTo('h1');
    try {
      const one = await call(session, '/one-trailer');
      expect(one).toMatchObject({ status: 200, body: 'body', rstCode: 0 });
      expect(one.trailers?.etag).toBe('"a"');
      const repeated = await call(session, '/dup-trailers');
      expect(repeated.status).toBe(200);
      expect(repeated.trailers).toBeNull();
      expect(repeated.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      // The same tunnel, and the process, go on.
      expect(await call(session, '/after')).toMatchObject({ status: 200, body: 'served /after', rstCode: 0 });
    } finally {
      close();
    }
  });

  it("answers 502 for an HTTP/2 workload's :status 600, and relays an ordinary answer", async () => {
    const raw = await h2cTo('raw-h2');
    try {
      expect(await call(raw.session, '/x')).toMatchObject({ status: 502, rstCode: 0 });
      expect(await call(raw.session, '/y')).toMatchObject({ status: 502, rstCode: 0 });
    } finally {
      raw.close();
    }
    const ordinary = await h2cTo('h2');
    try {
      expect(await call(ordinary.session, '/x')).toMatchObject({ status: 200, body: 'served h2', rstCode: 0 });
    } finally {
      ordinary.close();
    }
  });
});

describe('an inspected tunnel to an HTTP/1.1 workload whose reason phrase cannot be written', () => {
  it("answers with the status code's own phrase, to an HTTP/1.1 client and to an h2c one", async () => {
    const read = await h1To('bad-reason', 'GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n');
    expect(read.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
    expect(read.endsWith('\r\n\r\nhello')).toBe(true);
    const { session, close } = await h2cTo('bad-reason');
    try {
      expect(await call(session, '/')).toMatchObject({ status: 200, body: 'hello', rstCode: 0 });
    } finally {
      close();
    }
  });
});

describe('an inspected tunnel to an HTTP/2 workload that pushes', () => {
  for (const then of ['reset-stream', 'reset-connection'] as const) {
    it(`refuses the push, ends what it cannot answer, and goes on, when the workload then does ${then}`, async () => {
      const pushing = await h2cTo(`push-${then}`);
      try {
        // The push is a protocol error of the workload's session: the request is answered 502, as one it reset.
        expect(await call(pushing.session, '/x')).toMatchObject({ status: 502, rstCode: 0 });
        // An HTTP/1.1 client of the same kind of workload (its requests share the tunnel's HTTP/2 session).
        const h1 = await h1To(`push-${then}`, 'GET /y HTTP/1.1\r\nHost: web.shop\r\n\r\n');
        expect(h1.split('\r\n')[0]).toBe('HTTP/1.1 502 Bad Gateway');
      } finally {
        pushing.close();
      }
      // Waits out the workload's reset, then: the process and other tunnels go on.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const ordinary = await h2cTo('h2');
      try {
        expect(await call(ordinary.session, '/after')).toMatchObject({ status: 200, body: 'served h2', rstCode: 0 });
      } finally {
        ordinary.close();
      }
    });
  }
});

describe('an inspected h2c tunnel to an HTTP/1.1 workload, its connection held by an upload never finished', () => {
  it('lets go at once of each request its client resets while it waits its turn, headers and all', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    // V8's heap and what it holds outside it: header values from nghttp2 are external strings.
    const heapInUse = (): number => {
      gc();
      gc();
      return getHeapStatistics().used_heap_size + process.memoryUsage().external;
    };
    const { session, close } = await h2cTo('h1');
    try {
      const held = session.request({ ':method': 'POST', ':path': '/held', ':authority': 'web.shop' }, { endStream: false });
      held.on('error', () => {});
      held.write('the start of an upload that never ends');
      while (!served.includes('/held')) await new Promise((resolve) => setTimeout(resolve, 10));
      const before = heapInUse();
      // 300 requests of 16 KB of headers each (4.8 MB), reset while they wait: without letting go of them they stayed
      // queued, with their headers, for as long as the upload was held.
      const pad = 'p'.repeat(16_000);
      for (let round = 0; round < 6; round++) {
        const streams = Array.from({ length: 50 }, () => {
          const stream = session.request({ ':path': '/queued', ':authority': 'web.shop', 'x-pad': pad });
          stream.on('error', () => {});
          return stream;
        });
        // Each reached the proxy (its answer pending) before it is reset.
        await new Promise((resolve) => setTimeout(resolve, 50));
        await Promise.all(streams.map((stream) => new Promise((resolve) => {
          stream.once('close', resolve);
          stream.close(http2.constants.NGHTTP2_CANCEL);
        })));
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
      const grown = heapInUse() - before;
      expect(grown).toBeLessThan(2 * 1024 * 1024);
      expect(served).not.toContain('/queued');
      // The held upload, once finished, is answered; the connection goes on.
      const answered = new Promise<string>((resolve) => {
        let body = '';
        held.setEncoding('utf8');
        held.on('data', (chunk: string) => (body += chunk));
        held.on('end', () => resolve(body));
      });
      held.end();
      expect(await answered).toBe('served /held');
      expect(await call(session, '/after-held')).toMatchObject({ status: 200, body: 'served /after-held' });
    } finally {
      close();
    }
  });
});
