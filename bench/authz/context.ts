// The context the proxy fills once per connection (and its request part once per HTTP request), built from a
// request of the mix outside any timed region by the tests' harness; and what the measurement reads of it
// before a batch's clock starts.
import type { AuthzContext } from '../../src/authz/decide.ts';

export { contextOf } from '../../test/unit/authz/harness.ts';

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
