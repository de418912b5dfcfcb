// What an HTTP-inspected tunnel decides on is what the application will serve: the request target is read as an
// application reads it. An absolute URI (`GET http://web/admin`) is decided on its path and authority and forwarded
// as a path; a fragment, a target that is not a path and a missing Host are refused with 400; `\` counts as `/` (as
// in Envoy's canonicaliser). Real sockets: an HBONE-like CONNECT stream on loopback carries raw HTTP/1.1 or h2c to
// the proxy's inspector, which forwards what it allows to a real upstream; the decisions come from a compiled DENY
// policy, the shape that failed open before.
import { createHash } from 'node:crypto';
import http from 'node:http';
import http2 from 'node:http2';
import { connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authzContext, decide } from '../../src/authz/decide.ts';
import { compileAuthorization } from '../../src/authz/compile.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import type { PathNormalization } from '../../src/config/objects.ts';
import { silentLogger } from '../../src/observe/log.ts';
import type { RequestLogRecord } from '../../src/observe/access-log.ts';
import { HttpInspector } from '../../src/proxy/l7.ts';
import { countStreamBytes } from '../../src/proxy/stream-bytes.ts';

const POLICY = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: shop }
spec:
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin*", "*.env"] } }]
    - to: [{ operation: { hosts: ["admin.shop"] } }]
    - to: [{ operation: { paths: ["/no-ws/*"] } }]
      when: [{ key: "request.headers[upgrade]", values: ["websocket"] }]
    - to: [{ operation: { paths: ["/no-upgrade/*"] } }]
      when: [{ key: "request.headers[connection]", values: ["*pgrade"] }]
`;

const compiled = (yaml: string) => compileAuthorization(buildSnapshot(parseConfigText(yaml, 'policy.yaml'))).forLabels('shop', {}, new Set([80]));
/** The policies in force, and the configuration they stand for (a new object per change, as a new snapshot is). */
let policies = compiled(POLICY);
let inForce = {};
/** The mesh's pathNormalization the inspector reads per request. */
let normalization: PathNormalization = 'MERGE_SLASHES';

/** Every request that reached the application: method, target and Host as it received them. */
const served: string[] = [];
// Takes heads larger than the proxy does: a refusal of a large one is the proxy's, not the application's.
const upstream = http.createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
  served.push(`${req.method} ${req.url} host=${req.headers.host ?? ''}`);
  // A slow answer: the client's half-close arrives long before it.
  if (req.url === '/slow') setTimeout(() => res.end('served late'), 100);
  else res.end('served');
});
// WebSocket upgrades at the application: /ws switches (RFC 6455's accept key) and echoes, /ws-reset switches and then
// resets its connection (an application that crashes mid-conversation), /ws-gone closes it without an answer; anything
// else is refused.
upstream.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
  served.push(`upgrade ${req.url} host=${req.headers.host ?? ''}`);
  socket.on('error', () => {});
  if (req.url === '/ws-gone') {
    socket.destroy();
    return;
  }
  if (req.url !== '/ws' && req.url !== '/ws/a' && req.url !== '/ws-reset') {
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 18\r\nconnection: close\r\n\r\nno websockets here');
    return;
  }
  const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  if (req.url === '/ws-reset') setTimeout(() => (socket as Socket).resetAndDestroy(), 50);
  else socket.pipe(socket);
});
/** The request access lines the inspector wrote. */
const requestLines: RequestLogRecord[] = [];
const h2Upstream = http2.createServer();
h2Upstream.on('stream', (stream, headers) => {
  served.push(`h2 ${String(headers[':method'])} ${String(headers[':path'])} host=${String(headers[':authority'])}`);
  // An application that resets the stream before answering (RST_STREAM NO_ERROR, so no 'error' at the proxy).
  if (headers[':path'] === '/reset-before') return void stream.close(http2.constants.NGHTTP2_NO_ERROR);
  stream.respond({ ':status': 200 });
  stream.end('served');
});
const inspector = new HttpInspector(silentLogger());
/** One that gives a request's head 400 ms (60 s by default). */
const quickInspector = new HttpInspector(silentLogger(), { headersTimeoutMs: 400 });
const front = http2.createServer();
/** Tunnels the inspector has taken and not yet finished. */
let openTunnels = 0;
let frontPort = 0;

beforeAll(async () => {
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  await new Promise<void>((resolve) => h2Upstream.listen(0, '127.0.0.1', resolve));
  front.on('stream', (stream, headers) => {
    const target = headers[':authority'] === 'h2' ? h2Upstream : upstream;
    const socket = connect((target.address() as AddressInfo).port, '127.0.0.1', () => {
      stream.respond({ ':status': 200 });
      const inspected = (headers[':authority'] === 'h1-quick' ? quickInspector : inspector).inspect(stream, socket, { decide: (facts) => decide(policies, authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 80, request: facts }), 'request'), inForce: () => inForce, pathNormalization: () => normalization, onDenied: () => {}, upstreamVersion: null, logRequest: (record) => requestLines.push(record) }, null, null, countStreamBytes(stream));
      openTunnels++;
      void inspected.then(() => openTunnels--);
    });
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  frontPort = (front.address() as AddressInfo).port;
});

afterAll(async () => {
  front.close();
  upstream.close();
  h2Upstream.close();
  await new Promise((resolve) => setTimeout(resolve, 10));
});

/** A tunnel to the inspector: a CONNECT stream whose bytes it inspects. */
async function tunnel(to: 'h1' | 'h2' | 'h1-quick'): Promise<{ stream: Duplex; close: () => void }> {
  const session = http2.connect(`http://127.0.0.1:${frontPort}`);
  const stream = session.request({ ':method': 'CONNECT', ':authority': to });
  await new Promise((resolve, reject) => {
    stream.once('response', resolve);
    stream.once('error', reject);
  });
  return { stream, close: () => session.destroy() };
}

/** Sends one raw HTTP/1.x request through a tunnel; the status line and body of the answer. */
async function h1(request: string): Promise<{ status: number; body: string }> {
  const { stream, close } = await tunnel('h1');
  try {
    let received = '';
    stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
    stream.write(request);
    const deadline = Date.now() + 3000;
    while (!/\r\n\r\n/.test(received) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    const length = /content-length: (\d+)/i.exec(received);
    while (length && received.length < received.indexOf('\r\n\r\n') + 4 + Number(length[1]) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    const status = /^HTTP\/1\.1 (\d{3})/.exec(received);
    return { status: status ? Number(status[1]) : 0, body: received.slice(received.indexOf('\r\n\r\n') + 4) };
  } finally {
    close();
  }
}

/** Sends one h2c request with this :path through a tunnel; its :status, or the code of the stream's reset. */
async function h2(path: string, authority = 'web.shop'): Promise<number | string> {
  const { stream, close } = await tunnel('h2');
  const session = http2.connect('http://web.shop', { createConnection: () => stream as Socket });
  try {
    const request = session.request({ ':path': path, ':authority': authority });
    request.resume();
    return await new Promise<number | string>((resolve) => {
      request.once('response', (headers) => resolve(Number(headers[':status'])));
      request.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    });
  } finally {
    session.destroy();
    close();
  }
}

describe('a client that half-closes its side of an inspected tunnel', () => {
  /** Sends `request` and FIN at once; what came back before the tunnel ended (or null if it never did). */
  async function sendAndHalfClose(request: string): Promise<string | null> {
    const { stream, close } = await tunnel('h1');
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      const ended = new Promise<boolean>((resolve) => {
        stream.once('end', () => resolve(true));
        stream.once('close', () => resolve(true));
      });
      stream.end(request);
      const done = await Promise.race([ended, new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3000))]);
      return done ? received : null;
    } finally {
      close();
    }
  }

  it('still gets the answer to the request it sent before its FIN, then the tunnel ends (HTTP/1.1 and HTTP/1.0)', async () => {
    for (const version of ['1.1', '1.0']) {
      const received = await sendAndHalfClose(`GET /slow HTTP/${version}\r\nHost: web.shop\r\n\r\n`);
      expect(received, `HTTP/${version}: the tunnel ended`).not.toBeNull();
      expect(received, `HTTP/${version}`).toMatch(/^HTTP\/1\.1 200 /);
      expect(received?.endsWith('served late'), `HTTP/${version}`).toBe(true);
    }
  });

  it('gets every pipelined answer, the denied one included, in order', async () => {
    const received = await sendAndHalfClose('GET /slow HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /admin HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /public HTTP/1.1\r\nHost: web.shop\r\n\r\n');
    expect(received).not.toBeNull();
    expect([...(received ?? '').matchAll(/HTTP\/1\.1 (\d{3})/g)].map((match) => match[1])).toEqual(['200', '403', '200']);
    expect(received).toContain('served late');
  });
});

describe('the request target an inspected tunnel decides on', () => {
  it('serves an allowed origin-form request and denies a denied path (both sides of the policy)', async () => {
    served.length = 0;
    expect((await h1('GET /public HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect((await h1('GET /admin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
    expect(served).toEqual(['GET /public host=web.shop']);
  });

  it('decides an absolute URI on its path and forwards it as a path, so `GET http://web/admin` is denied', async () => {
    served.length = 0;
    expect((await h1('GET http://web.shop/admin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
    expect((await h1('GET HTTP://WEB.shop/%61dmin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
    expect((await h1('GET http://web.shop/public?q=1 HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect((await h1('GET http://web.shop?q=2 HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect(served).toEqual(['GET /public?q=1 host=web.shop', 'GET /?q=2 host=web.shop']);
  });

  it('under the mesh\'s DECODE_AND_MERGE_SLASHES, decides on escaped slashes decoded and forwards them so (by default kept escaped)', async () => {
    served.length = 0;
    // By default (Istio's too) `%2F` stays escaped: `/%2Fadmin` is not under `/admin*`, and reaches the application as sent.
    expect((await h1('GET /%2Fadmin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect(await h2('/%2fadmin')).toBe(200);
    normalization = 'DECODE_AND_MERGE_SLASHES';
    try {
      expect((await h1('GET /%2Fadmin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
      expect((await h1('GET /public/..%5Cadmin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
      expect(await h2('/%2fadmin')).toBe(403);
      // Allowed, the application receives the path decided on: decoded, slashes merged.
      expect((await h1('GET /public%2F%2Fitems?q=%2F HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
      expect(await h2('/public%2fitems')).toBe(200);
    } finally {
      normalization = 'MERGE_SLASHES';
    }
    expect(served).toEqual(['GET /%2Fadmin host=web.shop', 'h2 GET /%2Fadmin host=web.shop', 'GET /public/items?q=%2F host=web.shop', 'h2 GET /public/items host=web.shop']);
  });

  it('decides a pipelined request again with escaped slashes decoded when the mesh turns that on while it waits', async () => {
    const { stream, close } = await tunnel('h1');
    try {
      served.length = 0;
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.write('GET /slow HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /%2Fadmin HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      await expect.poll(() => served.length).toBe(1);
      normalization = 'DECODE_AND_MERGE_SLASHES';
      inForce = {};
      await expect.poll(() => [...received.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((match) => match[1])).toEqual(['200', '403']);
      expect(served).toEqual(['GET /slow host=web.shop']);
    } finally {
      normalization = 'MERGE_SLASHES';
      inForce = {};
      close();
    }
  });

  it('sends a pipelined request waiting when the mesh turns decoding off with its path as a request arriving now has it, decided on that', async () => {
    const { stream, close } = await tunnel('h1');
    normalization = 'DECODE_AND_MERGE_SLASHES';
    try {
      served.length = 0;
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.write('GET /slow HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /public%2Fx HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /files%2Fy HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      await expect.poll(() => served.length).toBe(1);
      // Allowed as `/public/x` and `/files/y`; now `/public%2Fx`, which the DENY added meanwhile matches, and `/files%2Fy`.
      normalization = 'MERGE_SLASHES';
      policies = compiled(`${POLICY}    - to: [{ operation: { paths: ["/public%2F*"] } }]\n`);
      inForce = {};
      await expect.poll(() => [...received.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((match) => match[1])).toEqual(['200', '403', '200']);
      expect(served).toEqual(['GET /slow host=web.shop', 'GET /files%2Fy host=web.shop']);
    } finally {
      normalization = 'MERGE_SLASHES';
      policies = compiled(POLICY);
      inForce = {};
      close();
    }
  });

  it("decides an absolute URI's host on its authority, and refuses one whose Host names another", async () => {
    served.length = 0;
    expect((await h1('GET http://admin.shop/ HTTP/1.1\r\nHost: admin.shop\r\n\r\n')).status).toBe(403);
    const mismatch = await h1('GET http://admin.shop/ HTTP/1.1\r\nHost: web.shop\r\n\r\n');
    expect(mismatch).toEqual({ status: 400, body: 'a Host field other than the authority' });
    expect((await h1('GET http://user@web.shop/public HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(400);
    expect((await h1('GET http:///public HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(400);
    expect(served).toEqual([]);
  });

  it('refuses a fragment rather than decide on a path the application would read shorter', async () => {
    served.length = 0;
    expect(await h1('GET /admin#x HTTP/1.1\r\nHost: web.shop\r\n\r\n')).toEqual({ status: 400, body: 'a fragment (#) in the request target' });
    expect((await h1('GET /.env#x HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(400);
    expect((await h1('GET /public?a#b HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect(served).toEqual(['GET /public?a#b host=web.shop']);
  });

  it('reads a backslash as a slash, as Envoy does, and forwards the normalised path', async () => {
    served.length = 0;
    expect((await h1('GET /public\\..\\admin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(403);
    expect((await h1('GET \\admin HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(400);
    expect((await h1('GET /public\\x HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(200);
    expect(served).toEqual(['GET /public/x host=web.shop']);
  });

  it('refuses a request without a Host, and a target that is neither a path nor an absolute URI', async () => {
    served.length = 0;
    expect(await h1('GET /public HTTP/1.0\r\n\r\n')).toEqual({ status: 400, body: 'no Host field' });
    expect((await h1('GET * HTTP/1.1\r\nHost: web.shop\r\n\r\n')).status).toBe(400);
    // OPTIONS * is valid HTTP, but the upstream client cannot send it on: a plain 400 that says so, not a 502.
    expect(await h1('OPTIONS * HTTP/1.1\r\nHost: web.shop\r\n\r\n')).toEqual({ status: 400, body: 'OPTIONS * is not forwarded on an inspected port' });
    expect(served).toEqual([]);
  });

  it('takes a request head of up to 60 KiB, as Envoy does, and answers a larger one 431 (not a bare 400)', async () => {
    served.length = 0;
    expect((await h1(`GET /public HTTP/1.1\r\nHost: web.shop\r\nCookie: s=${'a'.repeat(20_000)}\r\n\r\n`)).status).toBe(200);
    expect((await h1(`GET /public HTTP/1.1\r\nHost: web.shop\r\nCookie: s=${'a'.repeat(70_000)}\r\n\r\n`)).status).toBe(431);
    expect(served).toEqual(['GET /public host=web.shop']);
  });

  it('logs a head refused as too large once, however many chunks of it still arrive', async () => {
    requestLines.length = 0;
    const { stream, close } = await tunnel('h1');
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.on('error', () => {});
      stream.write(`GET /public HTTP/1.1\r\nHost: web.shop\r\nCookie: ${'a'.repeat(70_000)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
      // More of the refused head, after the 431 went out.
      stream.write(`${'b'.repeat(30_000)}\r\n\r\n`);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(received).toMatch(/^HTTP\/1\.1 431 /);
      expect(requestLines.map((line) => line.responseCode)).toEqual([431]);
    } finally {
      close();
    }
  });

  it('answers a CONNECT inside an inspected tunnel 405, forwarding nothing', async () => {
    served.length = 0;
    expect((await h1('CONNECT web.shop:80 HTTP/1.1\r\nHost: web.shop:80\r\n\r\n')).status).toBe(405);
    expect(served).toEqual([]);
  });

  it('refuses a Host an authority cannot be (as nghttp2 does for h2), so a DENY on hosts cannot be dodged with one', async () => {
    served.length = 0;
    expect(await h1('GET / HTTP/1.1\r\nHost: admin.shop\\x\r\n\r\n')).toEqual({ status: 400, body: 'a Host that is not a valid authority' });
    expect((await h1('GET http://admin.shop\\x/ HTTP/1.1\r\nHost: admin.shop\\x\r\n\r\n')).status).toBe(400);
    expect((await h1('GET / HTTP/1.1\r\nHost: admin.shop\r\n\r\n')).status).toBe(403);
    // A port that is no number is no authority either; a trailing dot names the same host, and is denied as it.
    expect(await h1('GET / HTTP/1.1\r\nHost: admin.shop:abc\r\n\r\n')).toEqual({ status: 400, body: 'a Host whose port is not a number' });
    expect((await h1('GET / HTTP/1.1\r\nHost: admin.shop.\r\n\r\n')).status).toBe(403);
    expect((await h1('GET / HTTP/1.1\r\nHost: admin.shop.:80\r\n\r\n')).status).toBe(403);
    // Empty labels are no host name a rule can read: an application may route `admin.shop..` as admin.shop.
    expect(await h1('GET / HTTP/1.1\r\nHost: admin.shop..\r\n\r\n')).toEqual({ status: 400, body: 'a Host with an empty label (..)' });
    expect((await h1('GET / HTTP/1.1\r\nHost: .admin.shop:80\r\n\r\n')).status).toBe(400);
    expect((await h1('GET / HTTP/1.1\r\nHost: admin..shop\r\n\r\n')).status).toBe(400);
    // Percent-encoded characters: a URL parser in the application decodes `admin%2eshop` to admin.shop.
    expect(await h1('GET / HTTP/1.1\r\nHost: admin%2eshop\r\n\r\n')).toEqual({ status: 400, body: 'a Host with a percent-encoded character' });
    expect((await h1('GET / HTTP/1.1\r\nHost: %61dmin.shop:80\r\n\r\n')).status).toBe(400);
    expect((await h1('GET http://admin%2eshop/ HTTP/1.1\r\nHost: admin%2eshop\r\n\r\n')).status).toBe(400);
    expect((await h1('GET /public HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n')).status).toBe(200);
    expect(served).toEqual(['GET /public host=[::1]:8080']);
  });

  it('h2c: refuses a :path that is not a path or carries a fragment, and reads a backslash as a slash', async () => {
    served.length = 0;
    expect(await h2('/public')).toBe(200);
    // nghttp2 itself resets a :path that does not start with "/" (RFC 9113 §8.3.1) before the inspector sees it.
    expect(await h2('admin')).toBe('ERR_HTTP2_STREAM_ERROR');
    expect(await h2('/admin#x')).toBe(400);
    expect(await h2('/x\\..\\admin')).toBe(403);
    expect(await h2('/public', 'web.shop..')).toBe(400);
    expect(await h2('/public', 'admin%2eshop')).toBe(400);
    expect(await h2('/public\\x')).toBe(200);
    expect(served).toEqual(['h2 GET /public host=web.shop', 'h2 GET /public/x host=web.shop']);
  });
});

describe('how an inspected tunnel ends what it forwards, and what it does not wait for', () => {
  /** The HTTP/2 frames the inspector sent on a tunnel: [type, flags, stream id] each, read off the raw bytes. */
  function frameLog(stream: Duplex): Array<[number, number, number]> {
    const frames: Array<[number, number, number]> = [];
    let pending = Buffer.alloc(0);
    stream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 9) {
        const length = pending.readUIntBE(0, 3);
        if (pending.length < 9 + length) break;
        frames.push([pending[3] as number, pending[4] as number, pending.readUInt32BE(5) & 0x7fffffff]);
        pending = pending.subarray(9 + length);
      }
    });
    return frames;
  }

  it('h2c: ends a response without trailers with END_STREAM, not RST_STREAM (which Go and hyper clients report as an error)', async () => {
    const { stream, close } = await tunnel('h2');
    const frames = frameLog(stream);
    const session = http2.connect('http://web.shop', { createConnection: () => stream as Socket });
    try {
      const request = session.request({ ':path': '/ok', ':authority': 'web.shop' });
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      await new Promise((resolve) => request.once('close', resolve));
      expect(body).toBe('served');
      const RST_STREAM = 0x3;
      const END_STREAM = 0x1;
      expect(frames.filter(([type, , id]) => type === RST_STREAM && id === 1)).toEqual([]);
      expect(frames.some(([type, flags, id]) => (type === 0x0 || type === 0x1) && (flags & END_STREAM) !== 0 && id === 1)).toBe(true);
    } finally {
      session.destroy();
      close();
    }
  });

  it('h2c: answers 502 when the application resets a request (RST_STREAM NO_ERROR) before answering it, rather than leave it waiting', async () => {
    expect(await h2('/reset-before')).toBe(502);
  });

  it('HTTP/1.0: ignores an Expect: 100-continue (RFC 9110 §10.1.1) and serves the request, which got 502 before', async () => {
    expect(await h1('POST /upload HTTP/1.0\r\nHost: web.shop\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody')).toEqual({ status: 200, body: 'served' });
  });

  it('h2c: answers a client waiting for 100-continue once the request is allowed, then serves it', async () => {
    const { stream, close } = await tunnel('h2');
    const session = http2.connect('http://web.shop', { createConnection: () => stream as Socket });
    try {
      const request = session.request({ ':method': 'POST', ':path': '/upload', ':authority': 'web.shop', expect: '100-continue' }, { endStream: false });
      request.resume();
      const continued = await Promise.race([new Promise<boolean>((resolve) => request.once('continue', () => resolve(true))), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3_000))]);
      expect(continued).toBe(true);
      request.end('body');
      const status = await new Promise<number>((resolve) => request.once('response', (headers) => resolve(Number(headers[':status']))));
      expect(status).toBe(200);
    } finally {
      session.destroy();
      close();
    }
  });

  it('HTTP/1.1: forwards nothing of a request whose head completes after its 408', async () => {
    served.length = 0;
    const { stream, close } = await tunnel('h1-quick');
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.write('POST /late HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 0\r\n');
      await expect.poll(() => received, { timeout: 3_000 }).toMatch(/^HTTP\/1\.1 408 /);
      stream.write('\r\n');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(served).toEqual([]);
    } finally {
      close();
    }
  });

  it('HTTP/1.1: answers 408 and ends the tunnel when a request head does not arrive in time, and serves one that does', async () => {
    const { stream, close } = await tunnel('h1-quick');
    requestLines.length = 0;
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      const ended = new Promise<boolean>((resolve) => stream.once('end', () => resolve(true)));
      stream.write('GET / HTTP/1.1\r\nHost: web.shop\r\n');
      expect(await Promise.race([ended, new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 3_000))])).toBe(true);
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
      // Timed from when the tunnel began waiting for the request, not 0: the client waited out the head's 400 ms.
      expect(requestLines.map((line) => line.responseCode)).toEqual([408]);
      expect(requestLines[0]?.durationMs).toBeGreaterThanOrEqual(350);
    } finally {
      close();
    }
    const { stream: prompt, close: closePrompt } = await tunnel('h1-quick');
    try {
      let received = '';
      prompt.on('data', (chunk: Buffer) => (received += chunk.toString()));
      prompt.write('GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      await expect.poll(() => received).toMatch(/^HTTP\/1\.1 200 /);
      // Kept open between requests (keep-alive), past the head's deadline: that deadline is per request.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      prompt.write('GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n');
      await expect.poll(() => received.match(/HTTP\/1\.1 200 /g)?.length).toBe(2);
    } finally {
      closePrompt();
    }
  });
});

describe('WebSocket upgrades on an inspected tunnel', () => {
  const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
  const upgradeRequest = (path: string) => `GET ${path} HTTP/1.1\r\nHost: web.shop\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

  /** Sends `request` on a fresh tunnel; what came back, and whether the tunnel then ended, within 3 s. */
  async function exchange(request: string, after?: (stream: Duplex, received: () => string) => Promise<void>): Promise<{ received: string; ended: boolean }> {
    const { stream, close } = await tunnel('h1');
    try {
      let received = '';
      let ended = false;
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.once('end', () => (ended = true));
      stream.write(request);
      await expect.poll(() => received.includes('\r\n\r\n'), { timeout: 3_000 }).toBe(true);
      if (after !== undefined) await after(stream, () => received);
      else await expect.poll(() => ended, { timeout: 3_000 }).toBe(true);
      return { received, ended };
    } finally {
      close();
    }
  }

  it('forwards an allowed upgrade with its fields, relays the 101, then carries the bytes both ways', async () => {
    served.length = 0;
    requestLines.length = 0;
    const { received } = await exchange(upgradeRequest('/ws'), async (stream, sofar) => {
      stream.write('a websocket frame, as bytes');
      await expect.poll(() => sofar().endsWith('a websocket frame, as bytes')).toBe(true);
    });
    expect(received).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(received.toLowerCase()).toContain('sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=');
    expect(served).toEqual(['upgrade /ws host=web.shop']);
    // Counted and logged as the request it is, answered 101, once the upgraded connection has ended (as Envoy counts
    // an upgraded stream): its bytes both ways, the request's and the 101's heads among them.
    await expect.poll(() => requestLines.length).toBe(1);
    const frame = 'a websocket frame, as bytes';
    expect(requestLines).toMatchObject([{ method: 'GET', path: '/ws', responseCode: 101, responseFlags: '-', requestBytes: upgradeRequest('/ws').length + frame.length, responseBytes: received.length }]);
  });

  it('cuts a WebSocket whose opening request a configuration change denies, and keeps one it still allows', async () => {
    const { stream, close } = await tunnel('h1');
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      const reset = new Promise<number | undefined>((resolve) => stream.once('close', () => resolve((stream as http2.ClientHttp2Stream).rstCode)));
      stream.on('error', () => {});
      stream.write(upgradeRequest('/ws'));
      await expect.poll(() => received.includes('101 Switching Protocols')).toBe(true);
      // A change that still allows it: carried on.
      policies = compiled(`${POLICY}    - to: [{ operation: { paths: ["/other"] } }]\n`);
      inForce = {};
      expect(inspector.recheckUpgrades()).toBe(0);
      stream.write('still here');
      await expect.poll(() => received.endsWith('still here')).toBe(true);
      // Unchanged since: not decided again.
      expect(inspector.recheckUpgrades()).toBe(0);
      // A DENY of its path: cut, with a reset.
      policies = compiled(`${POLICY}    - to: [{ operation: { paths: ["/ws"] } }]\n`);
      inForce = {};
      expect(inspector.recheckUpgrades()).toBe(1);
      expect(await reset).toBe(http2.constants.NGHTTP2_CANCEL);
    } finally {
      policies = compiled(POLICY);
      inForce = {};
      close();
    }
  });

  it('cuts a WebSocket when a change of pathNormalization and a DENY of the path as the workload received it come together', async () => {
    const { stream, close } = await tunnel('h1');
    normalization = 'DECODE_AND_MERGE_SLASHES';
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      const reset = new Promise<number | undefined>((resolve) => stream.once('close', () => resolve((stream as http2.ClientHttp2Stream).rstCode)));
      stream.on('error', () => {});
      // Opened under decoding: the workload has `/ws/a`.
      stream.write(upgradeRequest('/ws%2Fa'));
      await expect.poll(() => received.includes('101 Switching Protocols')).toBe(true);
      // Decoding off: as a request arriving now, `/ws%2Fa`, which no rule denies; what the workload has is denied now.
      normalization = 'MERGE_SLASHES';
      policies = compiled(`${POLICY}    - to: [{ operation: { paths: ["/ws/a"] } }]\n`);
      inForce = {};
      expect(inspector.recheckUpgrades()).toBe(1);
      expect(await reset).toBe(http2.constants.NGHTTP2_CANCEL);
    } finally {
      normalization = 'MERGE_SLASHES';
      policies = compiled(POLICY);
      inForce = {};
      close();
    }
  });

  it('passes on the reset of an upgraded connection the application reset, as a reset, not a clean end', async () => {
    const { stream, close } = await tunnel('h1');
    try {
      stream.on('data', () => {});
      stream.on('error', () => {});
      requestLines.length = 0;
      stream.write(upgradeRequest('/ws-reset'));
      await new Promise((resolve) => stream.once('close', resolve));
      expect((stream as http2.ClientHttp2Stream).rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      // Counted as the workload's failure (UC), once the tunnel has closed.
      await expect.poll(() => requestLines.length).toBe(1);
      expect(requestLines).toMatchObject([{ path: '/ws-reset', responseCode: 101, responseFlags: 'UC' }]);
    } finally {
      close();
    }
  });

  it('answers 502 to an upgrade the application drops unanswered, counted UC with its size once the tunnel ends', async () => {
    requestLines.length = 0;
    const { received, ended } = await exchange(upgradeRequest('/ws-gone'));
    expect(received).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/);
    expect(ended).toBe(true);
    await expect.poll(() => requestLines.length).toBe(1);
    expect(requestLines).toMatchObject([{ path: '/ws-gone', responseCode: 502, responseFlags: 'UC', requestBytes: upgradeRequest('/ws-gone').length, responseBytes: received.length }]);
  });

  it('refuses an upgrade the policy denies with 403, ends the tunnel, and the application never sees it', async () => {
    served.length = 0;
    const { received, ended } = await exchange(upgradeRequest('/admin/ws'));
    expect(received).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(received).toContain('RBAC: access denied');
    expect(ended).toBe(true);
    expect(served).toEqual([]);
  });

  it('decides an upgrade on its Upgrade and Connection fields, as Envoy keeps them for its filters (a DENY of WebSockets)', async () => {
    served.length = 0;
    for (const path of ['/no-ws/chat', '/no-upgrade/chat']) {
      const { received, ended } = await exchange(upgradeRequest(path));
      expect(received, path).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
      expect(ended).toBe(true);
    }
    expect(served).toEqual([]);
    // The same paths without an upgrade: nothing to match.
    expect(await h1('GET /no-ws/chat HTTP/1.1\r\nHost: web.shop\r\n\r\n')).toEqual({ status: 200, body: 'served' });
    expect(await h1('GET /no-upgrade/chat HTTP/1.1\r\nHost: web.shop\r\nConnection: keep-alive\r\n\r\n')).toEqual({ status: 200, body: 'served' });
    expect(served).toEqual(['GET /no-ws/chat host=web.shop', 'GET /no-upgrade/chat host=web.shop']);
  });

  it('finishes the tunnel of a refused upgrade whose client sends more (past what a stream buffers) before its END_STREAM', async () => {
    const before = openTunnels;
    const { stream, close } = await tunnel('h1');
    try {
      let received = '';
      stream.on('data', (chunk: Buffer) => (received += chunk.toString()));
      stream.write(upgradeRequest('/admin/ws'));
      await expect.poll(() => received).toContain('RBAC: access denied');
      stream.end(Buffer.alloc(100_000, 0x61));
      await expect.poll(() => openTunnels, { timeout: 3_000 }).toBe(before);
    } finally {
      close();
    }
  });

  it("relays the application's own refusal of an upgrade, body included, and ends the tunnel", async () => {
    const { received, ended } = await exchange(upgradeRequest('/ws-refused'));
    expect(received).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(received).toMatch(/\r\n\r\nno websockets here$/);
    expect(ended).toBe(true);
    // Counted and logged once the tunnel has closed, the refusal's body with it.
    await expect.poll(() => requestLines.at(-1), { timeout: 5_000 }).toMatchObject({ path: '/ws-refused', responseCode: 403, responseFlags: '-' });
  });

  it('serves any other upgrade (h2c, which would take HTTP/2 past inspection) as an ordinary request, without its Upgrade', async () => {
    served.length = 0;
    const answer = await h1('GET /plain HTTP/1.1\r\nHost: web.shop\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n');
    expect(answer).toEqual({ status: 200, body: 'served' });
    expect(served).toEqual(['GET /plain host=web.shop']);
  });
});
