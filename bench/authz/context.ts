// The context the proxy fills once per connection (and its request part once per HTTP request), built from a
// request of the mix outside any timed region.
import type { AuthzContext, HttpRequestFacts } from '../../src/authz/decide.ts';
import { parseIp } from '../../src/authz/match.ts';
import type { IpAddress } from '../../src/authz/match.ts';
import type { ReferenceRequest } from '../../test/unit/authz/reference.ts';

/** Header lookup for one request, with a method shared by all (no closure per request). */
class RequestFacts implements HttpRequestFacts {
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly #headers: ReadonlyMap<string, string>;

  constructor(method: string, path: string, host: string, headers: Readonly<Record<string, string>>) {
    this.method = method;
    this.path = path;
    this.host = host;
    this.#headers = new Map(Object.entries(headers));
  }

  header(name: string): string | undefined {
    return this.#headers.get(name);
  }
}

function ip(text: string | null): IpAddress | null {
  if (text === null) return null;
  const parsed = parseIp(text);
  if (parsed === null) throw new Error(`bad IP in the mix: ${text}`);
  return parsed;
}

/** The context the proxy fills once per connection (and its request part once per HTTP request). */
export function contextOf(request: ReferenceRequest): AuthzContext {
  const http = request.http;
  return {
    sourcePrincipal: request.principal,
    sourceNamespace: request.namespace,
    sourceIp: ip(request.sourceIp),
    destinationIp: ip(request.destinationIp),
    destinationPort: request.port,
    request: http === null ? null : new RequestFacts(http.method, http.path, http.host, http.headers),
  };
}


function touchString(text: string | null): number {
  return text === null || text.length === 0 ? 0 : text.charCodeAt(0) + text.charCodeAt(text.length - 1);
}

/** Reads what a decision reads of a context (its strings, addresses and request), as a proxy's fresh context would be in cache. */
export function touchContext(ctx: AuthzContext): number {
  let sum = touchString(ctx.sourcePrincipal) + touchString(ctx.sourceNamespace) + ctx.destinationPort;
  if (ctx.sourceIp !== null) sum += ctx.sourceIp.v4 & 1;
  if (ctx.destinationIp !== null) sum += ctx.destinationIp.v4 & 1;
  const request = ctx.request;
  if (request !== null) sum += touchString(request.method) + touchString(request.path) + touchString(request.host) + (request.header('x-tenant')?.length ?? 0);
  return sum;
}
