// The decision, with Istio's semantics: DENY before ALLOW; no ALLOW policy → allow; ALLOW policies and
// none matching → deny; AUDIT marks and never decides. Pure over (compiled matcher, request context), no
// allocation: every Decision returned was preallocated by the compiler.
//
// Three moments, because HTTP fields exist only per request (hosts, methods, paths, request headers, and the remote
// IP, which Istio reads from the request's X-Forwarded-For and istiod hands ztunnel as L7):
//   'tcp'      a connection on a port that is not HTTP. A rule's HTTP fields can never be known, so an ALLOW
//              rule with HTTP fields matches nothing (as ztunnel) and a DENY rule is applied with its HTTP fields
//              ignored, as Envoy's TCP RBAC filter does (it denies more, never less: fail closed for each action).
//              ztunnel instead drops such a DENY rule's HTTP-only clauses, so the rule may never match there.
//   'connect'  a connection on an HTTP port, before any request. DENY rules with HTTP fields wait for the
//              request; an ALLOW rule with HTTP fields whose L4 part matches lets the connection open
//              (deferred), and every request is then decided in full.
//   'request'  one HTTP request: every field is known.
import type { CompiledCondition, CompiledOperation, CompiledRule, CompiledSource, CompiledValues, Decision, WorkloadPolicies } from './compile.ts';
import { ALLOW_NO_POLICY } from './compile.ts';
import type { Term, Vocabularies, Vocabulary, WorkloadIndex } from './index.ts';
import { HOST_ROW, L_ALL, L_HTTP, L_RECHECK, RECHECK_IP, RECHECK_METHOD, RECHECK_NAMESPACE, RECHECK_PRINCIPAL, L_CHECK_L4, L_CHECK_REQUEST, L_DENY_WORDS, L_HOST, L_IP, L_L4_RULES, L_METHOD, L_NAMESPACE, L_PATH, L_PORTS_RESOLVED, L_PRINCIPAL, L_SLOT_BASE, L_WORDS, METHOD_ROW, NAMESPACE_ROW, PATH_ROW, PRINCIPAL_ROW, SOURCE_ROW, HEADERS_ROW, HEADER_ROW, L_HEADERS, P_FREE, ipMask, listFor, patternMask, scratchFor, stringMask } from './index.ts';
import type { IpAddress, StringMatcher } from './match.ts';
import { parseIp } from './match.ts';

export type DecisionMoment = 'tcp' | 'connect' | 'request';

/**
 * What a decision reads. Made once per connection by `authzContext` (its `request` filled once per HTTP request
 * by the caller).
 */
export interface AuthzContext {
  /** Istio's principal form `trust-domain/ns/NS/sa/SA`; null for a connection without peer identity. */
  readonly sourcePrincipal: string | null;
  readonly sourceNamespace: string | null;
  readonly sourceIp: IpAddress | null;
  readonly destinationIp: IpAddress | null;
  readonly destinationPort: number;
  request: HttpRequestFacts | null;
  /**
   * Kept by decide, never set by callers: the vocabulary ids of the source's principal and namespace (-1: no
   * policy names it), resolved by the connection's first decision for one configuration and reused by the next
   * ones (every request of an HTTP connection). Another configuration's vocabularies resolve them again.
   */
  resolvedFor: Vocabularies | null;
  principalId: number;
  namespaceId: number;
  /**
   * Kept by decide for the requests of an HTTP connection: the terms its source (principal, namespace, IP) admits,
   * for the rule list at `sourceList` of the index `sourceFor`; each request then computes only its own fields.
   */
  sourceFor: Int32Array | null;
  sourceList: number;
  /** The remote IP the kept mask was computed with: a request naming another client address computes it afresh. */
  sourceRemote: IpAddress | null;
  sourceMask: Int32Array | null;
}

/** The facts of a connection a decision reads; see AuthzContext. */
export type ConnectionFacts = Pick<AuthzContext, 'sourcePrincipal' | 'sourceNamespace' | 'sourceIp' | 'destinationIp' | 'destinationPort' | 'request'>;

/** A connection's decision context, with nothing resolved yet. */
export function authzContext(facts: ConnectionFacts): AuthzContext {
  return { ...facts, resolvedFor: null, principalId: -1, namespaceId: -1, sourceFor: null, sourceList: -1, sourceRemote: null, sourceMask: null };
}

export interface HttpRequestFacts {
  method: string;
  /** The path without its query string, normalised (see normalizePath in src/authz/path.ts). */
  path: string;
  /** The Host (or :authority) as sent, lower-case, with its port if it had one. */
  host: string;
  /** A header value by lower-case name; undefined when absent. */
  header(name: string): string | undefined;
  /**
   * The client address the request's `X-Forwarded-For` ends with (clientIpOfForwardedFor), which Istio's remote IP
   * is; null when it has none, and the source address stands.
   */
  readonly remoteIp: IpAddress | null;
}

/**
 * The client address an `X-Forwarded-For` value names last, as Envoy reads it for Istio's remote IP (remoteIpBlocks,
 * remote.ip) with no trusted proxy hops: the rightmost element, when it is an IP address; null otherwise. Set by the
 * client or by the proxies on its way (an ingress gateway appends the address it saw), so, as in Istio, it is what
 * those say: a rule on it is only as good as the gateway in front.
 */
export function clientIpOfForwardedFor(value: string | undefined): IpAddress | null {
  if (value === undefined) return null;
  const comma = value.lastIndexOf(',');
  const last = (comma < 0 ? value : value.slice(comma + 1)).trim();
  return last === '' ? null : parseIp(last);
}

function sourcePrincipalMatches(source: CompiledSource, principal: string | null): boolean {
  if (source.principals !== null && (principal === null || !source.principals.matches(principal))) return false;
  return source.notPrincipals === null || principal === null || !source.notPrincipals.matches(principal);
}

function sourceNamespaceMatches(source: CompiledSource, namespace: string | null): boolean {
  if (source.namespaces !== null && (namespace === null || !source.namespaces.matches(namespace))) return false;
  return source.notNamespaces === null || namespace === null || !source.notNamespaces.matches(namespace);
}

function sourceMatches(source: CompiledSource, ctx: AuthzContext, ignoreL7: boolean): boolean {
  return sourcePrincipalMatches(source, ctx.sourcePrincipal) && sourceNamespaceMatches(source, ctx.sourceNamespace) && sourceIpMatches(source, ctx, ignoreL7);
}

/** `ignoreL7`: the remote IP blocks, an L7 field, count as matching. */
function sourceIpMatches(source: CompiledSource, ctx: AuthzContext, ignoreL7: boolean): boolean {
  const ip = ctx.sourceIp;
  if (source.ipBlocks !== null && (ip === null || !source.ipBlocks.contains(ip))) return false;
  if (source.notIpBlocks !== null && ip !== null && source.notIpBlocks.contains(ip)) return false;
  if (ignoreL7) return true;
  // Per request: the client address X-Forwarded-For ends with, else the source's (Envoy's remote address with no
  // trusted hops, as Istio's sidecars read it).
  const remote = ctx.request?.remoteIp ?? ip;
  if (source.remoteIpBlocks !== null && (remote === null || !source.remoteIpBlocks.contains(remote))) return false;
  if (source.notRemoteIpBlocks !== null && remote !== null && source.notRemoteIpBlocks.contains(remote)) return false;
  return true;
}

/**
 * The length of the Host without its `:port` (digits after the last colon, not an IPv6 literal's, none at all for
 * an empty port: RFC 3986 reads `web.shop:` as the default port) and without a trailing dot (`evil.shop.` is the
 * same DNS name as `evil.shop`, and an application or its server may read it as that), or 0 when it has neither.
 */
function hostWithoutPort(host: string): number {
  // From the end: most Hosts end in a letter and are settled by their last char.
  let i = host.length - 1;
  while (i > 0) {
    const code = host.charCodeAt(i);
    if (code < 48 || code > 57) break;
    i--;
  }
  let end = i > 0 && host.charCodeAt(i) === 58 /* : */ ? i : host.length;
  if (end > 1 && host.charCodeAt(end - 1) === 46 /* . */) end--;
  return end < host.length ? end : 0;
}

/**
 * Istio matches a host pattern against the Host exactly as sent: `web.shop` does not match `web.shop:8080`, which
 * is why its docs tell you to write `web.shop:*` too. A DENY rule written without the port would then miss a request
 * that adds one, so each action reads the Host the way that lets fewer requests through: `withoutPort` (a DENY's
 * `hosts`, an ALLOW's `notHosts`) also matches the Host with its port cut, only when the first comparison failed.
 */
function hostMatches(matcher: StringMatcher, host: string, withoutPort: boolean): boolean {
  if (matcher.matches(host)) return true;
  if (!withoutPort) return false;
  const length = hostWithoutPort(host);
  return length > 0 && matcher.matches(host.slice(0, length));
}

function portMatches(operation: CompiledOperation, port: number): boolean {
  return (operation.ports === null || operation.ports.has(port)) && (operation.notPorts === null || !operation.notPorts.has(port));
}

/** The HTTP fields of an operation but its methods (the index settles those); false without a request. */
function operationHostPathMatches(operation: CompiledOperation, request: HttpRequestFacts | null, deny: boolean): boolean {
  if (request === null) return false;
  if (operation.hosts !== null && !hostMatches(operation.hosts, request.host, deny)) return false;
  if (operation.notHosts !== null && hostMatches(operation.notHosts, request.host, !deny)) return false;
  return operationPathMatches(operation, request);
}

function operationPathMatches(operation: CompiledOperation, request: HttpRequestFacts | null): boolean {
  if (request === null) return false;
  if (operation.paths !== null && !operation.paths.matches(request.path)) return false;
  return operation.notPaths === null || !operation.notPaths.matches(request.path);
}

function operationMethodMatches(operation: CompiledOperation, request: HttpRequestFacts | null): boolean {
  if (request === null) return false;
  if (operation.methods !== null && !operation.methods.matches(request.method)) return false;
  return operation.notMethods === null || !operation.notMethods.matches(request.method);
}

/** The HTTP fields of an operation (hosts, methods, paths); false without a request. */
function operationL7Matches(operation: CompiledOperation, request: HttpRequestFacts | null, deny: boolean): boolean {
  return operationMethodMatches(operation, request) && operationHostPathMatches(operation, request, deny);
}

/** `ignoreL7`: treat HTTP fields as matching (DENY at 'tcp', ALLOW's L4 part at 'connect'). */
function operationMatches(operation: CompiledOperation, ctx: AuthzContext, ignoreL7: boolean, deny: boolean): boolean {
  if (!portMatches(operation, ctx.destinationPort)) return false;
  return !operation.l7 || ignoreL7 || operationL7Matches(operation, ctx.request, deny);
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
    case 'remote.ip':
      if (ignoreL7) return true;
      ip = ctx.request?.remoteIp ?? ctx.sourceIp;
      break;
    case 'source.ip':
      ip = ctx.sourceIp;
      break;
    case 'destination.ip':
      ip = ctx.destinationIp;
      break;
    case 'source.namespace':
      text = ctx.sourceNamespace;
      break;
    case 'source.principal':
    case 'source.serviceAccount':
    case 'source.trustDomain':
      text = ctx.sourcePrincipal;
      break;
    case 'destination.port':
      break;
  }
  if (condition.values !== null && !valuesContain(condition.values, text, ip, ctx.destinationPort)) return false;
  if (condition.notValues !== null && (text !== null || ip !== null || condition.key.kind === 'destination.port') && valuesContain(condition.notValues, text, ip, ctx.destinationPort)) return false;
  return true;
}

function anySourceMatches(sources: readonly CompiledSource[], ctx: AuthzContext, ignoreL7: boolean): boolean {
  for (let i = 0; i < sources.length; i++) if (sourceMatches(sources[i] as CompiledSource, ctx, ignoreL7)) return true;
  return false;
}

function anyOperationMatches(operations: readonly CompiledOperation[], ctx: AuthzContext, ignoreL7: boolean, deny: boolean): boolean {
  for (let i = 0; i < operations.length; i++) if (operationMatches(operations[i] as CompiledOperation, ctx, ignoreL7, deny)) return true;
  return false;
}

function conditionsHold(when: readonly CompiledCondition[] | null, ctx: AuthzContext, ignoreL7: boolean): boolean {
  if (when === null) return true;
  for (let i = 0; i < when.length; i++) if (!conditionMatches(when[i] as CompiledCondition, ctx, ignoreL7)) return false;
  return true;
}

/** A rule matches when any source matches, any operation matches, and every condition holds. */
export function ruleMatches(rule: CompiledRule, ctx: AuthzContext, ignoreL7: boolean): boolean {
  if (rule.from !== null && !anySourceMatches(rule.from, ctx, ignoreL7)) return false;
  // A dry-run DENY reads hosts (and its compiled paths) as the enforced DENY would, or its log would miss what enforcing it denies.
  if (rule.to !== null && !anyOperationMatches(rule.to, ctx, ignoreL7, (rule.policy.dryRun ?? rule.policy.action) === 'DENY')) return false;
  return conditionsHold(rule.when, ctx, ignoreL7);
}

/** The mTLS mode in force for a destination port. */
export function mtlsModeFor(policies: WorkloadPolicies, port: number): 'STRICT' | 'PERMISSIVE' | 'DISABLE' {
  return policies.mtls.ports.get(port) ?? policies.mtls.mode;
}

/**
 * Whether a term picked by the masks matches: the masks settled its source (principal, namespace, IP) and, per
 * request, its methods; what is left is the port when the list was not narrowed to one, the hosts and paths, and
 * the rule's conditions.
 */
function termMatches(term: Term, ctx: AuthzContext, ignoreL7: boolean, portsResolved: boolean, hostsAndPathsSettled: boolean, recheck: number): boolean {
  const source = term.source;
  if (recheck !== 0 && source !== null) {
    if ((recheck & RECHECK_PRINCIPAL) !== 0 && !sourcePrincipalMatches(source, ctx.sourcePrincipal)) return false;
    if ((recheck & RECHECK_NAMESPACE) !== 0 && !sourceNamespaceMatches(source, ctx.sourceNamespace)) return false;
    if ((recheck & RECHECK_IP) !== 0 && !sourceIpMatches(source, ctx, ignoreL7)) return false;
  }
  // Service accounts, trust domains: held in the masks as a superset, judged here.
  if (term.checkPrincipals && (recheck & RECHECK_PRINCIPAL) === 0 && source !== null && !sourcePrincipalMatches(source, ctx.sourcePrincipal)) return false;
  // A rule too large to expand: the side its terms do not carry, in full.
  if (term.checkSources !== null && !anySourceMatches(term.checkSources, ctx, ignoreL7)) return false;
  if (term.checkOperations !== null && !anyOperationMatches(term.checkOperations, ctx, ignoreL7, term.rule.policy.action === 'DENY')) return false;
  const operation = term.operation;
  if (operation !== null) {
    if (!portsResolved && !portMatches(operation, ctx.destinationPort)) return false;
    if ((recheck & RECHECK_METHOD) !== 0 && operation.l7 && !ignoreL7 && !operationMethodMatches(operation, ctx.request)) return false;
    if (operation.l7 && !ignoreL7 && !hostsAndPathsSettled && !operationHostPathMatches(operation, ctx.request, term.rule.policy.action === 'DENY')) return false;
    // Path templates: held in the masks as a superset, judged here.
    if (term.checkPaths && !ignoreL7 && hostsAndPathsSettled && !operationPathMatches(operation, ctx.request)) return false;
  }
  return conditionsHold(term.rule.when, ctx, ignoreL7);
}

function resolveSource(ctx: AuthzContext, vocabularies: Vocabularies): void {
  ctx.principalId = ctx.sourcePrincipal === null ? -1 : vocabularies.principals.idOf(ctx.sourcePrincipal);
  ctx.namespaceId = ctx.sourceNamespace === null ? -1 : vocabularies.namespaces.idOf(ctx.sourceNamespace);
  ctx.resolvedFor = vocabularies;
}

/**
 * Writes into `into` at `at` the terms of the list at `list` that the context's source admits; `remote` false: with
 * the remote IP blocks (L7) counted as matching.
 */
function sourceMask(ctx: AuthzContext, index: WorkloadIndex, list: number, words: number, work: Int32Array, into: Int32Array, at: number, remote: boolean): void {
  const bits = index.data;
  const vocabularies = index.vocabularies;
  if (ctx.resolvedFor !== vocabularies) resolveSource(ctx, vocabularies);
  const allAt = bits[list + L_ALL] as number;
  const principalHeader = bits[list + L_PRINCIPAL] as number;
  const namespaceHeader = bits[list + L_NAMESPACE] as number;
  const ipHeader = bits[list + L_IP] as number;
  // A mask offset >= 0 is in `bits`; a negative one, ~offset, in `work`.
  const principalAt = principalHeader < 0 ? allAt : stringMask(bits, words, principalHeader, vocabularies.principals, ctx.sourcePrincipal, ctx.principalId, work, PRINCIPAL_ROW);
  const namespaceAt = namespaceHeader < 0 ? allAt : stringMask(bits, words, namespaceHeader, vocabularies.namespaces, ctx.sourceNamespace, ctx.namespaceId, work, NAMESPACE_ROW);
  const ipAt = ipHeader < 0 ? allAt : ipMask(bits, words, ipHeader, index.v6, ctx.sourceIp, work, remote, remote ? (ctx.request?.remoteIp ?? ctx.sourceIp) : null);
  const principalBits = principalAt >= 0 ? bits : work;
  const principalOffset = principalAt >= 0 ? principalAt : ~principalAt;
  const namespaceBits = namespaceAt >= 0 ? bits : work;
  const namespaceOffset = namespaceAt >= 0 ? namespaceAt : ~namespaceAt;
  const ipBits = ipAt >= 0 ? bits : work;
  const ipOffset = ipAt >= 0 ? ipAt : ~ipAt;
  for (let w = 0; w < words; w++) into[at + w] = (principalBits[principalOffset + w] as number) & (namespaceBits[namespaceOffset + w] as number) & (ipBits[ipOffset + w] as number);
}

/** The terms whose header conditions the request's headers pass: every header dimension of the list ANDed, as `~offset` in `work`. */
function headersMask(index: WorkloadIndex, table: number, words: number, request: HttpRequestFacts, work: Int32Array, allAt: number): number {
  const bits = index.data;
  const at = HEADERS_ROW * words;
  for (let w = 0; w < words; w++) work[at + w] = bits[allAt + w] as number;
  const count = bits[table] as number;
  for (let i = 0; i < count; i++) {
    const name = bits[table + 2 + 2 * i] as number;
    const vocabulary = index.headerVocabularies[name] as Vocabulary;
    const value = request.header(index.headerNames[name] as string) ?? null;
    const mask = stringMask(bits, words, bits[table + 3 + 2 * i] as number, vocabulary, value, value === null ? -1 : vocabulary.idOf(value), work, HEADER_ROW);
    const from = mask >= 0 ? bits : work;
    const offset = mask >= 0 ? mask : ~mask;
    for (let w = 0; w < words; w++) work[at + w] = (work[at + w] as number) & (from[offset + w] as number);
  }
  return ~at;
}

/** Whether a term admitted by the three masks is outside `free` (constrained by the dimension `free` belongs to). */
function constrains(a: Int32Array, aAt: number, b: Int32Array, bAt: number, c: Int32Array, cAt: number, bits: Int32Array, freeAt: number, words: number): boolean {
  for (let w = 0; w < words; w++) {
    if (((a[aAt + w] as number) & (b[bAt + w] as number) & (c[cAt + w] as number) & ~(bits[freeAt + w] as number)) !== 0) return true;
  }
  return false;
}

export function decide(policies: WorkloadPolicies, ctx: AuthzContext, asked: DecisionMoment): Decision {
  // A request decision without the request's facts cannot know its HTTP fields: decided as a connection to a plain
  // port, where ALLOW rules with HTTP fields match nothing and DENY rules apply with them ignored (fail closed).
  const moment = asked === 'request' && ctx.request === null ? 'tcp' : asked;
  // PeerAuthentication STRICT: a connection without a peer identity never gets as far as the policies; a request
  // on such a connection (a dry run can ask) is refused the same way.
  if (ctx.sourcePrincipal === null && mtlsModeFor(policies, ctx.destinationPort) === 'STRICT') return policies.strictPlaintextPorts.get(ctx.destinationPort) ?? policies.strictPlaintext;
  // Only the rules that can match this destination port, and of those only the terms the source and the method
  // admit (src/authz/index.ts), tried in policy order.
  const bits = policies.indexData;
  const index = policies.index;
  const list = listFor(bits, ctx.destinationPort);
  const words = bits[list + L_WORDS] as number;
  const work = scratchFor(words);
  const vocabularies = index.vocabularies;
  const allAt = bits[list + L_ALL] as number;
  const methodHeader = bits[list + L_METHOD] as number;
  const request = ctx.request;
  const perRequest = moment === 'request' && request !== null;
  // The terms the source admits: the same for every request of a connection, so kept on its context then.
  let sourceBits = work;
  let sourceAt = SOURCE_ROW * words;
  if (perRequest) {
    // The remote IP is the request's (X-Forwarded-For), or the source's: the same object for every request that
    // names none, a new one for each that does (one tunnel from a gateway carries many clients). Read only when the
    // list has IP blocks at all: most requests never look at their X-Forwarded-For.
    const remoteIp = (bits[list + L_IP] as number) < 0 ? ctx.sourceIp : (request.remoteIp ?? ctx.sourceIp);
    if (ctx.sourceFor !== bits || ctx.sourceList !== list || ctx.sourceRemote !== remoteIp) {
      // Forgotten first: a mask half-computed when something throws must never be reused.
      ctx.sourceFor = null;
      if (ctx.sourceMask === null || ctx.sourceMask.length < words) ctx.sourceMask = new Int32Array(words);
      sourceMask(ctx, index, list, words, work, ctx.sourceMask, 0, true);
      ctx.sourceFor = bits;
      ctx.sourceList = list;
      ctx.sourceRemote = remoteIp;
    }
    sourceBits = ctx.sourceMask as Int32Array;
    sourceAt = 0;
  } else {
    // Before any request the remote IP is an L7 field: ignored, as the other HTTP fields are (DENY at 'tcp', the L4
    // part of an ALLOW at 'connect'); the rules that must not match on it are left out by the L4 rules mask.
    sourceMask(ctx, index, list, words, work, work, sourceAt, false);
  }
  // A mask offset >= 0 is in `bits`; a negative one, ~offset, in `work`.
  const methodAt = methodHeader < 0 || !perRequest ? allAt : stringMask(bits, words, methodHeader, vocabularies.methods, request.method, vocabularies.methods.idOf(request.method), work, METHOD_ROW);
  const pathHeader = bits[list + L_PATH] as number;
  const hostHeader = bits[list + L_HOST] as number;
  const pathAt = pathHeader < 0 || !perRequest ? allAt : patternMask(bits, words, pathHeader, request.path, 0, 0, work, PATH_ROW);
  const methodBits = methodAt >= 0 ? bits : work;
  const methodOffset = methodAt >= 0 ? methodAt : ~methodAt;
  const pathBits = pathAt >= 0 ? bits : work;
  const pathOffset = pathAt >= 0 ? pathAt : ~pathAt;
  // The host and the headers cost the most (a walk of the Host, a scan of the header fields each). When no term left
  // after source, method and path is constrained by one of them, it cannot remove any: skipped (exact).
  const hostAt = hostHeader < 0 || !perRequest || !constrains(sourceBits, sourceAt, methodBits, methodOffset, pathBits, pathOffset, bits, bits[hostHeader + P_FREE] as number, words)
    ? allAt
    : patternMask(bits, words, hostHeader, request.host, hostWithoutPort(request.host), bits[list + L_DENY_WORDS] as number, work, HOST_ROW);
  const headersTable = bits[list + L_HEADERS] as number;
  const headersAt = headersTable < 0 || !perRequest || !constrains(sourceBits, sourceAt, methodBits, methodOffset, pathBits, pathOffset, bits, bits[headersTable + 1] as number, words)
    ? allAt
    : headersMask(index, headersTable, words, request, work, allAt);
  const hostBits = hostAt >= 0 ? bits : work;
  const hostOffset = hostAt >= 0 ? hostAt : ~hostAt;
  const headersBits = headersAt >= 0 ? bits : work;
  const headersOffset = headersAt >= 0 ? headersAt : ~headersAt;
  const l4RulesAt = bits[list + L_L4_RULES] as number;
  // A candidate outside the check mask matches by its bit alone.
  const checkAt = bits[list + (moment === 'request' ? L_CHECK_REQUEST : L_CHECK_L4)] as number;
  const slotBase = bits[list + L_SLOT_BASE] as number;
  const portsResolved = bits[list + L_PORTS_RESOLVED] === 1;
  const settled = perRequest && bits[list + L_HTTP] === 1;
  const recheck = bits[list + L_RECHECK] as number;
  const terms = index.terms;
  const decisions = index.decisions;

  // DENY: at 'connect' rules with HTTP fields wait for the request; at 'tcp' they apply with those fields ignored.
  const denyWords = bits[list + L_DENY_WORDS] as number;
  const denyIgnoresL7 = moment !== 'request';
  for (let w = 0; w < denyWords; w++) {
    let word = (sourceBits[sourceAt + w] as number) & (methodBits[methodOffset + w] as number) & (pathBits[pathOffset + w] as number) & (hostBits[hostOffset + w] as number) & (headersBits[headersOffset + w] as number);
    if (moment === 'connect') word &= bits[l4RulesAt + w] as number;
    while (word !== 0) {
      const low = word & -word;
      word ^= low;
      const slot = slotBase + w * 32 + 31 - Math.clz32(low);
      if ((low & (bits[checkAt + w] as number)) === 0) return decisions[slot] as Decision;
      const term = terms[slot] as Term;
      if (termMatches(term, ctx, denyIgnoresL7, portsResolved, settled, recheck)) return term.rule.decision;
    }
  }
  if (policies.allowPolicyCount === 0) return ALLOW_NO_POLICY;

  // ALLOW: at 'tcp' a rule with HTTP fields never matches; at 'connect' its L4 part lets the connection open, deferred.
  let deferred: Decision | null = null;
  for (let w = denyWords; w < words; w++) {
    let word = (sourceBits[sourceAt + w] as number) & (methodBits[methodOffset + w] as number) & (pathBits[pathOffset + w] as number) & (hostBits[hostOffset + w] as number) & (headersBits[headersOffset + w] as number);
    if (moment === 'tcp') word &= bits[l4RulesAt + w] as number;
    while (word !== 0) {
      const low = word & -word;
      word ^= low;
      const slot = slotBase + w * 32 + 31 - Math.clz32(low);
      if (moment !== 'connect' || (low & (bits[l4RulesAt + w] as number)) !== 0) {
        // The rule decides now.
        if ((low & (bits[checkAt + w] as number)) === 0) return decisions[slot] as Decision;
        const term = terms[slot] as Term;
        if (termMatches(term, ctx, false, portsResolved, settled, recheck)) return term.rule.decision;
      } else if (deferred === null) {
        const term = terms[slot] as Term;
        if (termMatches(term, ctx, true, portsResolved, settled, recheck)) deferred = term.rule.deferredDecision;
      }
    }
  }
  return deferred ?? policies.noMatch;
}

/** What auditMatches found, for logging: the first AUDIT rule and the first dry-run rule that match (null: none). */
export interface AuditMatches {
  audit: CompiledRule | null;
  /** The first dry-run DENY rule that matches, and the first dry-run ALLOW one: each its own line (each its own shadow engine in Envoy). */
  dryRunDeny: CompiledRule | null;
  dryRunAllow: CompiledRule | null;
  /**
   * At 'connect', on a port whose requests are not read: a dry-run ALLOW rule with HTTP fields whose L4 part matches.
   * It cannot say whether it would deny the requests, and says so rather than nothing.
   */
  dryRunUnjudged: CompiledRule | null;
}

/**
 * One pass over the audit rules (AUDIT policies' and dry-run policies'), filling `out` (the caller's, reused): each
 * kind is logged on its own, so no policy's line hides another's; whether a dry-run ALLOW rule matched, whose absence
 * is what a dry-run ALLOW reports.
 */
export function auditMatches(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment, out: AuditMatches): AuditMatches {
  out.audit = null;
  out.dryRunDeny = null;
  out.dryRunAllow = null;
  out.dryRunUnjudged = null;
  const audit = (policies.byPort.get(ctx.destinationPort) ?? policies.otherPorts).audit;
  for (let i = 0; i < audit.length; i++) {
    const rule = audit[i] as CompiledRule;
    const shadow = rule.policy.dryRun;
    if (shadow === undefined ? out.audit !== null : shadow === 'DENY' ? out.dryRunDeny !== null : out.dryRunAllow !== null) continue;
    let matched: boolean;
    if (rule.l7 && moment !== 'request') {
      // A dry-run DENY on a port that is not HTTP is shown as it would be enforced: its HTTP fields ignored. A dry-run
      // ALLOW's at 'connect' (requests not read) can judge no request: said, when its L4 part matches.
      if (shadow === 'ALLOW' && moment === 'connect' && out.dryRunUnjudged === null && ruleMatches(rule, ctx, true)) out.dryRunUnjudged = rule;
      matched = moment === 'tcp' && shadow === 'DENY' && ruleMatches(rule, ctx, true);
    } else {
      matched = ruleMatches(rule, ctx, false);
    }
    if (!matched) continue;
    if (shadow === undefined) out.audit = rule;
    else if (shadow === 'DENY') out.dryRunDeny = rule;
    else out.dryRunAllow = rule;
  }
  return out;
}

/** The first AUDIT rule that matches, else the first dry-run one; null when none (explanations and tests). */
export function auditMatch(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment): CompiledRule | null {
  const found = auditMatches(policies, ctx, moment, { audit: null, dryRunDeny: null, dryRunAllow: null, dryRunUnjudged: null });
  return found.audit ?? found.dryRunDeny ?? found.dryRunAllow;
}

export function decideSafely(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment, onError: Decision): Decision {
  try {
    return decide(policies, ctx, moment);
  } catch {
    return onError;
  }
}
