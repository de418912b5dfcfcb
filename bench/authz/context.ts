// The context the proxy fills once per connection (and its request part once per HTTP request), built from a
// request of the mix outside any timed region by the tests' harness; and what the measurement reads of it
// before a batch's clock starts.
import { authzContext } from '../../src/authz/decide.ts';
import type { AuthzContext } from '../../src/authz/decide.ts';
import { parseIp } from '../../src/authz/match.ts';
import type { IpAddress } from '../../src/authz/match.ts';
import { MutableFacts } from '../../src/proxy/l7.ts';
import type { ReferenceRequest } from '../../test/unit/authz/reference.ts';

/**
 * A string as the proxy gets it from a parser (llhttp, nghttp2, the certificate's SAN): flat. The mix builds its
 * strings by concatenation, which V8 keeps as ropes, slower to compare than anything a proxy decides on.
 */
function flat(text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8');
}

function flatOrNull(text: string | null): string | null {
  return text === null ? null : flat(text);
}

function ipOf(text: string | null): IpAddress | null {
  if (text === null) return null;
  const parsed = parseIp(text);
  if (parsed === null) throw new Error(`the mix has a bad IP: ${text}`);
  return parsed;
}

/**
 * The request facts of the proxy's HTTP inspector (src/proxy/l7.ts), filled as it fills them from a parsed request:
 * header conditions scan the raw header fields, the Host first as an HTTP/1.1 client sends it, names as clients
 * spell them.
 */
function factsOf(http: NonNullable<ReferenceRequest['http']>): MutableFacts {
  const raw = ['Host', flat(http.host)];
  for (const [name, value] of Object.entries(http.headers)) raw.push(flat(name.replace(/(^|-)[a-z]/g, (start) => start.toUpperCase())), flat(value));
  const facts = new MutableFacts();
  const malformed = facts.fill(flat(http.method), flat(http.path), flat(http.host), raw, true, 'MERGE_SLASHES');
  if (malformed !== null) throw new Error(`the mix has a malformed request (${malformed}): ${http.method} ${http.path}`);
  return facts;
}

/** The context the proxy would fill for a request of the mix. */
export function contextOf(request: ReferenceRequest): AuthzContext {
  return authzContext({
    sourcePrincipal: flatOrNull(request.principal),
    sourceNamespace: flatOrNull(request.namespace),
    sourceIp: ipOf(request.sourceIp),
    destinationIp: ipOf(request.destinationIp),
    destinationPort: request.port,
    request: request.http === null ? null : factsOf(request.http),
  });
}

function touchString(text: string | null): number {
  return text === null || text.length === 0 ? 0 : text.charCodeAt(0) + text.charCodeAt(text.length - 1);
}

/**
 * Reads what a decision reads of a context (its strings, addresses and request), as a proxy's fresh context would be
 * in cache. An L4 decision is the first and only one of its connection: its context starts with nothing resolved,
 * so resolving the peer's ids is timed with it. An L7 request is one of the requests of an open connection, whose
 * context the connection's first request resolved (as the proxy keeps one context per tunnel).
 */
export function touchContext(ctx: AuthzContext): number {
  if (ctx.request === null) ctx.resolvedFor = null;
  let sum = touchString(ctx.sourcePrincipal) + touchString(ctx.sourceNamespace) + ctx.destinationPort;
  if (ctx.sourceIp !== null) sum += ctx.sourceIp.v4 & 1;
  if (ctx.destinationIp !== null) sum += ctx.destinationIp.v4 & 1;
  const request = ctx.request;
  if (request !== null) sum += touchString(request.method) + touchString(request.path) + touchString(request.host) + (request.header('x-tenant')?.length ?? 0);
  return sum;
}
