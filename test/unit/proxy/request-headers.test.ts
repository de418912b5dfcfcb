// What a `when: request.headers[...]` condition reads of a request the proxy parsed: every value of a repeated
// header, joined with "," as Envoy does, and nothing for a header that was not sent, whatever its name. Real
// HTTP/1.1 and HTTP/2 parsers on loopback: Node's header objects inherit from Object.prototype and keep only the
// first of some repeated headers (user-agent, authorization), which would let a harmless first value hide the one
// a DENY rule looks for.
import http from 'node:http';
import http2 from 'node:http2';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { MutableFacts } from '../../../src/proxy/l7.ts';

const closers: Array<() => void> = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
});

/** What fill() said of the last request the helpers below parsed: null, or why it is malformed. */
let malformed: string | null = null;

const NAMES = ['host', 'cookie', 'user-agent', 'authorization', 'x-tenant', 'x-single', 'constructor', 'tostring', '__proto__', 'x-absent', ':authority', ':method', ':path', ':scheme', ':status', ':protocol'];

type Seen = Record<string, string | undefined>;

function read(facts: MutableFacts): Seen {
  return Object.fromEntries(NAMES.map((name) => [name, facts.header(name)]));
}

/** Sends raw HTTP/1.1 bytes and returns what the facts of that request read. */
async function h1(request: string): Promise<Seen> {
  let seen: Seen = {};
  const server = http.createServer((req, res) => {
    const facts = new MutableFacts();
    malformed = facts.fill(req.method ?? '', req.url ?? '/', req.headers.host ?? '', req.rawHeaders, true, 'MERGE_SLASHES');
    seen = read(facts);
    res.end('ok');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => server.close());
  const socket = connect((server.address() as AddressInfo).port, '127.0.0.1');
  await new Promise<void>((resolve) => {
    socket.on('data', () => {
      socket.destroy();
      resolve();
    });
    socket.write(request);
  });
  return seen;
}

async function h2(headers: http2.OutgoingHttpHeaders): Promise<Seen> {
  let seen: Seen = {};
  const server = http2.createServer();
  server.on('stream', (stream, received, _flags, rawHeaders: string[]) => {
    const facts = new MutableFacts();
    malformed = facts.fill(String(received[':method']), String(received[':path']), String(received[':authority']), rawHeaders, false, 'MERGE_SLASHES');
    seen = read(facts);
    stream.respond({ ':status': 200 });
    stream.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => server.close());
  const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  closers.push(() => client.close());
  const request = client.request({ ':path': '/', ...headers });
  request.resume();
  await new Promise<void>((resolve) => request.on('close', () => resolve()));
  return seen;
}

describe('request headers as authorization conditions read them', () => {
  it('request.headers[host] reads the authority decided on, whichever protocol carried it (h2 sends :authority, not host)', async () => {
    expect((await h1('GET / HTTP/1.1\r\nHost: Admin.Shop\r\nConnection: close\r\n\r\n')).host).toBe('admin.shop');
    const seen = await h2({ ':authority': 'admin.shop' });
    expect(malformed).toBeNull();
    expect(seen.host).toBe('admin.shop');
  });

  it('HTTP/1.1: single-value headers each once (the last of the 32 among them) are not a repetition', async () => {
    await h1('GET / HTTP/1.1\r\nHost: web\r\nUser-Agent: a\r\nAuthorization: b\r\nAccess-Control-Allow-Credentials: true\r\nDNT: 1\r\nConnection: close\r\n\r\n');
    expect(malformed).toBeNull();
  });

  it('HTTP/1.1: every value of a repeated header, joined as Envoy joins them', async () => {
    const seen = await h1('GET / HTTP/1.1\r\nHost: web\r\nX-Tenant: one\r\nx-tenant: two\r\nX-Single: only\r\nConnection: close\r\n\r\n');
    expect(malformed).toBeNull();
    expect(seen['x-tenant']).toBe('one,two');
    expect(seen['x-single']).toBe('only');
  });

  it.each([
    ['User-Agent: harmless\r\nuser-agent: evil-bot', 'user-agent'],
    ['Authorization: Bearer revoked\r\nAUTHORIZATION: x', 'authorization'],
    ['Content-Type: text/plain\r\ncontent-type: application/json', 'content-type'],
    // The last of the 32 names: its bit is the sign bit of the set fill() keeps.
    ['Access-Control-Allow-Credentials: true\r\naccess-control-allow-credentials: false', 'access-control-allow-credentials'],
  ])('HTTP/1.1: a repeated single-value header is malformed (a rule would see both joined, the application the first): %s', async (fields, name) => {
    await h1(`GET / HTTP/1.1\r\nHost: web\r\n${fields}\r\nConnection: close\r\n\r\n`);
    expect(malformed).toBe(`more than one ${name} field`);
  });

  it('HTTP/1.1: a header named like an Object property is absent unless sent', async () => {
    const seen = await h1('GET / HTTP/1.1\r\nHost: web\r\nToString: sent\r\nConnection: close\r\n\r\n');
    expect(malformed).toBeNull();
    expect(seen.constructor).toBeUndefined();
    expect(seen.__proto__).toBeUndefined();
    expect(seen['x-absent']).toBeUndefined();
    expect(seen.tostring).toBe('sent');
  });

  it('HTTP/2: every value of a repeated header, and nothing for names that were not sent', async () => {
    // Node's client refuses to send a repeated user-agent; the server side reads every field the same way.
    const seen = await h2({ 'user-agent': 'client', 'x-tenant': ['one', 'two'], 'x-single': 'only' });
    expect(malformed).toBeNull();
    expect(seen['user-agent']).toBe('client');
    expect(seen['x-tenant']).toBe('one,two');
    expect(seen['x-single']).toBe('only');
    expect(seen.constructor).toBeUndefined();
    expect(seen.__proto__).toBeUndefined();
    expect(seen.authorization).toBeUndefined();
  });
});

describe('cookies as conditions read them', () => {
  // HTTP/2 clients send each cookie as a field of its own (RFC 9113 §8.2.3); Envoy rebuilds the list with "; " and the
  // workload is given it so. Joined with "," a DENY on "*; role=admin" missed a role cookie sent as its own crumb.
  it('HTTP/2: cookie crumbs joined with "; ", other repeated fields with ","', async () => {
    const seen = await h2({ cookie: ['session=1', 'role=admin'], 'x-tenant': ['one', 'two'] });
    expect(malformed).toBeNull();
    expect(seen.cookie).toBe('session=1; role=admin');
    expect(seen['x-tenant']).toBe('one,two');
    expect((await h2({ cookie: 'session=1' })).cookie).toBe('session=1');
  });

  it('HTTP/1.1: one Cookie field as sent, and repeated ones joined with "; " as the application reads them', async () => {
    expect((await h1('GET / HTTP/1.1\r\nHost: web\r\nCookie: session=1; role=admin\r\nConnection: close\r\n\r\n')).cookie).toBe('session=1; role=admin');
    expect((await h1('GET / HTTP/1.1\r\nHost: web\r\nCookie: session=1\r\nCookie: role=admin\r\nConnection: close\r\n\r\n')).cookie).toBe('session=1; role=admin');
  });
});

describe('pseudo-headers as conditions read them (request.headers[:path] and the like, as Envoy has them)', () => {
  // A DENY on request.headers[:path] prefix /admin must see the path rules on paths see, not what the client wrote:
  // an h2c client's raw :path (/public/../admin) is what Node's header list holds.
  it('reads the method, the authority, the normalised path with its query and the scheme, for HTTP/1.1 and HTTP/2 alike', async () => {
    const fromH1 = await h1('POST /public/../admin/x?q=1 HTTP/1.1\r\nHost: Web.Shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    expect(malformed).toBeNull();
    const fromH2 = await h2({ ':method': 'POST', ':path': '/public/../admin/x?q=1', ':authority': 'web.shop' });
    expect(malformed).toBeNull();
    for (const seen of [fromH1, fromH2]) {
      expect(seen[':method']).toBe('POST');
      expect(seen[':authority']).toBe('web.shop');
      expect(seen[':path']).toBe('/admin/x?q=1');
      expect(seen[':scheme']).toBe('http');
      // A response's pseudo-header, or one no request has: absent, never the raw field list's.
      expect(seen[':status']).toBeUndefined();
      expect(seen[':protocol']).toBeUndefined();
    }
  });
});

describe('Host fields that could name another host than the one authorization decided on', () => {
  it('HTTP/1.1: refuses a second Host field, whatever its case, and takes one', async () => {
    await h1('GET / HTTP/1.1\r\nHost: web.shop\r\nhost: admin.shop\r\nConnection: close\r\n\r\n');
    expect(malformed).toBe('more than one Host field');
    await h1('GET / HTTP/1.1\r\nHost: Web.Shop\r\nConnection: close\r\n\r\n');
    expect(malformed).toBeNull();
  });

  it('HTTP/2: refuses a Host field other than :authority, and takes one that names it in another case', async () => {
    await h2({ ':authority': 'web.shop', host: 'admin.shop' });
    expect(malformed).toBe('a Host field other than the authority');
    await h2({ ':authority': 'web.shop', host: 'WEB.shop' });
    expect(malformed).toBeNull();
  });
});

describe('header values looked up per request', () => {
  it('are read afresh for each request of a tunnel: a value one request sent never answers for the next', () => {
    const facts = new MutableFacts();
    expect(facts.fill('GET', '/', 'web', ['Host', 'web', 'X-Tenant', 'a', 'x-tenant', 'b'], true, 'MERGE_SLASHES')).toBeNull();
    expect(facts.header('x-tenant')).toBe('a,b');
    expect(facts.header('x-tenant')).toBe('a,b');
    expect(facts.header('x-absent')).toBeUndefined();
    expect(facts.fill('GET', '/', 'web', ['Host', 'web', 'x-absent', 'now'], true, 'MERGE_SLASHES')).toBeNull();
    expect(facts.header('x-tenant')).toBeUndefined();
    expect(facts.header('x-absent')).toBe('now');
  });
});
