// The decision, with Istio's semantics: DENY before ALLOW; no ALLOW policy → allow; ALLOW policies and
// none matching → deny; AUDIT marks and never decides. Pure over (compiled matcher, request context), no
// allocation: every Decision returned was preallocated by the compiler.
//
// Three moments, because HTTP fields exist only per request:
//   'tcp'      a connection on a port that is not HTTP. A rule's HTTP fields can never be known, so, as
//              ztunnel does, an ALLOW rule with HTTP fields matches nothing and a DENY rule is applied
//              with its HTTP fields ignored (it denies more, never less: fail closed for each action).
//   'connect'  a connection on an HTTP port, before any request. DENY rules with HTTP fields wait for the
//              request; an ALLOW rule with HTTP fields whose L4 part matches lets the connection open
//              (deferred), and every request is then decided in full.
//   'request'  one HTTP request: every field is known.
import type { CompiledCondition, CompiledOperation, CompiledRule, CompiledSource, CompiledValues, Decision, WorkloadPolicies } from './compile.ts';
import { ALLOW_NO_POLICY } from './compile.ts';
import type { IpAddress, StringMatcher } from './match.ts';

export type DecisionMoment = 'tcp' | 'connect' | 'request';

/** What a decision reads. Filled once per connection (and its `request` once per HTTP request) by the caller. */
export interface AuthzContext {
  /** Istio's principal form `trust-domain/ns/NS/sa/SA`; null for a connection without peer identity. */
  sourcePrincipal: string | null;
  sourceNamespace: string | null;
  sourceIp: IpAddress | null;
  destinationIp: IpAddress | null;
  destinationPort: number;
  request: HttpRequestFacts | null;
}

export interface HttpRequestFacts {
  method: string;
  /** The path without its query string, normalised (see normalizePath in src/authz/path.ts). */
  path: string;
  /** The Host (or :authority) as sent, lower-case, with its port if it had one. */
  host: string;
  /** A header value by lower-case name; undefined when absent. */
  header(name: string): string | undefined;
}

// Field-match outcomes for one clause.
const YES = 1;
const NO = 0;

function sourceMatches(source: CompiledSource, ctx: AuthzContext): boolean {
  const principal = ctx.sourcePrincipal;
  if (source.principals !== null && (principal === null || !source.principals.matches(principal))) return false;
  if (source.notPrincipals !== null && principal !== null && source.notPrincipals.matches(principal)) return false;
  const namespace = ctx.sourceNamespace;
  if (source.namespaces !== null && (namespace === null || !source.namespaces.matches(namespace))) return false;
  if (source.notNamespaces !== null && namespace !== null && source.notNamespaces.matches(namespace)) return false;
  const ip = ctx.sourceIp;
  if (source.ipBlocks !== null && (ip === null || !source.ipBlocks.contains(ip))) return false;
  if (source.notIpBlocks !== null && ip !== null && source.notIpBlocks.contains(ip)) return false;
  // No proxy in front of the mesh rewrites the client address here, so the remote IP is the source IP.
  if (source.remoteIpBlocks !== null && (ip === null || !source.remoteIpBlocks.contains(ip))) return false;
  if (source.notRemoteIpBlocks !== null && ip !== null && source.notRemoteIpBlocks.contains(ip)) return false;
  return true;
}

/**
 * Istio matches a host pattern against the Host as sent and, when it carries a port, also without it
 * (`web.shop` matches `web.shop:80`; `api:8080` matches only with that port). The port-less form is cut
 * only when the first comparison failed.
 */
function hostMatches(matcher: StringMatcher, host: string): boolean {
  if (matcher.matches(host)) return true;
  const colon = host.lastIndexOf(':');
  if (colon <= 0 || host.charCodeAt(host.length - 1) === 93 /* ] */) return false;
  for (let i = colon + 1; i < host.length; i++) {
    const code = host.charCodeAt(i);
    if (code < 48 || code > 57) return false;
  }
  return colon + 1 < host.length && matcher.matches(host.slice(0, colon));
}

/** `ignoreL7`: treat HTTP fields as matching (DENY at 'tcp', ALLOW's L4 part at 'connect'). */
function operationMatches(operation: CompiledOperation, ctx: AuthzContext, ignoreL7: boolean): boolean {
  const port = ctx.destinationPort;
  if (operation.ports !== null && !operation.ports.has(port)) return false;
  if (operation.notPorts !== null && operation.notPorts.has(port)) return false;
  if (!operation.l7 || ignoreL7) return true;
  const request = ctx.request;
  if (request === null) return false;
  if (operation.hosts !== null && !hostMatches(operation.hosts, request.host)) return false;
  if (operation.notHosts !== null && hostMatches(operation.notHosts, request.host)) return false;
  if (operation.methods !== null && !operation.methods.matches(request.method)) return false;
  if (operation.notMethods !== null && operation.notMethods.matches(request.method)) return false;
  if (operation.paths !== null && !operation.paths.matches(request.path)) return false;
  if (operation.notPaths !== null && operation.notPaths.matches(request.path)) return false;
  return true;
}

function valuesContain(values: CompiledValues, text: string | null, ip: IpAddress | null, port: number): boolean {
  switch (values.type) {
    case 'strings':
      return text !== null && values.matcher.matches(text);
    case 'cidrs':
      return ip !== null && values.set.contains(ip);
    case 'ports':
      return values.set.has(port);
  }
}

function conditionMatches(condition: CompiledCondition, ctx: AuthzContext, ignoreL7: boolean): boolean {
  let text: string | null = null;
  let ip: IpAddress | null = null;
  switch (condition.key.kind) {
    case 'request.headers': {
      if (ignoreL7) return true;
      const request = ctx.request;
      if (request === null) return false;
      text = request.header(condition.header as string) ?? null;
      break;
    }
    case 'source.ip':
    case 'remote.ip':
      ip = ctx.sourceIp;
      break;
    case 'destination.ip':
      ip = ctx.destinationIp;
      break;
    case 'source.namespace':
      text = ctx.sourceNamespace;
      break;
    case 'source.principal':
      text = ctx.sourcePrincipal;
      break;
    case 'destination.port':
      break;
  }
  if (condition.values !== null && !valuesContain(condition.values, text, ip, ctx.destinationPort)) return false;
  if (condition.notValues !== null && (text !== null || ip !== null || condition.key.kind === 'destination.port') && valuesContain(condition.notValues, text, ip, ctx.destinationPort)) return false;
  return true;
}

/** A rule matches when any source matches, any operation matches, and every condition holds. */
export function ruleMatches(rule: CompiledRule, ctx: AuthzContext, ignoreL7: boolean): boolean {
  const from = rule.from;
  if (from !== null) {
    let any = NO;
    for (let i = 0; i < from.length; i++) if (sourceMatches(from[i] as CompiledSource, ctx)) { any = YES; break; }
    if (any === NO) return false;
  }
  const to = rule.to;
  if (to !== null) {
    let any = NO;
    for (let i = 0; i < to.length; i++) if (operationMatches(to[i] as CompiledOperation, ctx, ignoreL7)) { any = YES; break; }
    if (any === NO) return false;
  }
  const when = rule.when;
  if (when !== null) {
    for (let i = 0; i < when.length; i++) if (!conditionMatches(when[i] as CompiledCondition, ctx, ignoreL7)) return false;
  }
  return true;
}

/** The mTLS mode in force for a destination port. */
export function mtlsModeFor(policies: WorkloadPolicies, port: number): 'STRICT' | 'PERMISSIVE' | 'DISABLE' {
  return policies.mtls.ports.get(port) ?? policies.mtls.mode;
}

export function decide(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment): Decision {
  // PeerAuthentication STRICT: a connection without a peer identity never gets as far as the policies; a request
  // on such a connection (a dry run can ask) is refused the same way.
  if (ctx.sourcePrincipal === null && mtlsModeFor(policies, ctx.destinationPort) === 'STRICT') return policies.strictPlaintextPorts.get(ctx.destinationPort) ?? policies.strictPlaintext;
  // Only the rules that can match this destination port, in policy order.
  const lists = policies.byPort.get(ctx.destinationPort) ?? policies.otherPorts;
  const deny = lists.deny;
  for (let i = 0; i < deny.length; i++) {
    const rule = deny[i] as CompiledRule;
    if (rule.l7) {
      if (moment === 'connect') continue; // decided per request
      if (moment === 'tcp' ? ruleMatches(rule, ctx, true) : ruleMatches(rule, ctx, false)) return rule.decision;
    } else if (ruleMatches(rule, ctx, false)) {
      return rule.decision;
    }
  }
  if (policies.allowPolicyCount === 0) return ALLOW_NO_POLICY;
  const allow = lists.allow;
  let deferred: Decision | null = null;
  for (let i = 0; i < allow.length; i++) {
    const rule = allow[i] as CompiledRule;
    if (!rule.l7 || moment === 'request') {
      if (ruleMatches(rule, ctx, false)) return rule.decision;
    } else if (moment === 'connect' && deferred === null && ruleMatches(rule, ctx, true)) {
      deferred = rule.deferredDecision;
    }
    // moment 'tcp' and an HTTP rule: it can never match here.
  }
  return deferred ?? policies.noMatch;
}

/** The first AUDIT rule that matches, for logging; null when none (or none apply). */
export function auditMatch(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment): CompiledRule | null {
  const audit = (policies.byPort.get(ctx.destinationPort) ?? policies.otherPorts).audit;
  for (let i = 0; i < audit.length; i++) {
    const rule = audit[i] as CompiledRule;
    if (rule.l7 && moment !== 'request') continue;
    if (ruleMatches(rule, ctx, false)) return rule;
  }
  return null;
}

/** Decides without ever throwing: any failure while deciding is a deny. */
export function decideSafely(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment, onError: Decision): Decision {
  try {
    return decide(policies, ctx, moment);
  } catch {
    return onError;
  }
}
