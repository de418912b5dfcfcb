// The context the proxy fills once per connection (and its request part once per HTTP request), built from a
// request of the mix outside any timed region by the tests' harness; and what the measurement reads of it
// before a batch's clock starts.
import type { AuthzContext } from '../../src/authz/decide.ts';
import { contextOf as harnessContextOf } from '../../test/unit/authz/harness.ts';
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

/** The context the proxy would fill for a request of the mix. */
export function contextOf(request: ReferenceRequest): AuthzContext {
  const http = request.http;
  return harnessContextOf({
    ...request,
    principal: flatOrNull(request.principal),
    namespace: flatOrNull(request.namespace),
    http: http === null ? null : { method: flat(http.method), path: flat(http.path), host: flat(http.host), headers: Object.fromEntries(Object.entries(http.headers).map(([name, value]) => [flat(name), flat(value)])) },
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
