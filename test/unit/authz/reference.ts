// A plain reference evaluator of Istio authorization, kept in the tests as the oracle for the compiled matcher
// (src/authz/compile.ts + decide.ts). Straight-line code over the policy objects of src/authz/types.ts: string
// compares, IPs as bit strings, nothing precompiled and no code shared with src/authz. It states the semantics
// the corpus is written from (https://istio.io/latest/docs/reference/config/security/authorization-policy/,
// .../peer_authentication/, and the concepts page https://istio.io/latest/docs/concepts/security/):
//
// - A policy applies to a workload when it is in the root namespace (mesh-wide) or in the workload's namespace,
//   and its selector (matchLabels) is absent or a subset of the workload's labels. Root-namespace policies come
//   first, then the namespace's, each in configuration order: that order names the deciding policy when several match.
// - DENY before ALLOW; no ALLOW policy → allow; ALLOW policies and none matching → deny; an ALLOW policy with no
//   rules allows nothing; AUDIT never decides.
// - A rule matches when any from[].source matches, any to[].operation matches and every when[] holds (absent = any).
//   Within a source or operation every field must hold; a list matches when any value does; a not-list when none does.
// - Match kinds: `*` (presence: any non-empty value), `prefix*`, `*suffix`, exact. Hosts are case-insensitive.
// - HTTP fields: hosts, methods, paths, request headers, and the remote IP (remoteIpBlocks, notRemoteIpBlocks,
//   remote.ip: Istio reads it from X-Forwarded-For, and istiod hands it to ztunnel as L7).
// - Moments (ambit's enforcement points): 'tcp' (not an HTTP port: an ALLOW rule with HTTP fields matches nothing,
//   a DENY rule is applied with its HTTP fields ignored), 'connect' (HTTP port, before any request: DENY rules with
//   HTTP fields wait; an ALLOW rule with HTTP fields whose other fields match lets the connection open, deferred),
//   'request' (every field known).
// - PeerAuthentication: workload (selector, not in the root namespace) → namespace → mesh (root namespace, no
//   selector), UNSET inherits, default PERMISSIVE; portLevelMtls of the workload policy overrides per port. STRICT
//   refuses a connection without a peer principal before any AuthorizationPolicy. A mesh-wide PeerAuthentication
//   annotated ambit.dev/enforce: "true" is a floor nothing below it can lower.
import { isIP } from 'node:net';
import type { AuthorizationPolicySpec, MtlsMode, PeerAuthenticationSpec, PolicyCondition, PolicyOperation, PolicyRule, PolicySource } from '../../../src/authz/types.ts';

export type Moment = 'tcp' | 'connect' | 'request';

export interface ReferencePolicy {
  readonly namespace: string;
  readonly name: string;
  readonly spec: AuthorizationPolicySpec;
}

export interface ReferencePeerAuthentication {
  readonly namespace: string;
  readonly name: string;
  readonly enforce: boolean;
  /** metadata.creationTimestamp in ms, when written. */
  readonly createdMs: number | undefined;
  readonly spec: PeerAuthenticationSpec;
}

export interface ReferenceWorld {
  readonly rootNamespace: string;
  /** In configuration order. */
  readonly policies: readonly ReferencePolicy[];
  readonly peerAuthentications: readonly ReferencePeerAuthentication[];
}

export interface ReferenceDestination {
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface ReferenceHttp {
  readonly method: string;
  readonly path: string;
  /** Lower-case, with its port when the request sent one. */
  readonly host: string;
  /** By lower-case name. */
  readonly headers: Readonly<Record<string, string>>;
}

export interface ReferenceRequest {
  readonly principal: string | null;
  readonly namespace: string | null;
  readonly sourceIp: string | null;
  readonly destinationIp: string | null;
  readonly port: number;
  readonly http: ReferenceHttp | null;
}

export interface ReferenceDecision {
  readonly allow: boolean;
  readonly policy: string | null;
  readonly rule: number | null;
  readonly deferred: boolean;
}

// ---- values ----

export function matchesPattern(pattern: string, value: string): boolean {
  if (pattern === '*') return value !== '';
  if (pattern.endsWith('*')) return value.startsWith(pattern.slice(0, pattern.length - 1));
  if (pattern.startsWith('*')) return value.endsWith(pattern.slice(1));
  return value === pattern;
}

/**
 * Istio's path templates as Envoy's uri_template matches them, segment by segment: `{*}` one non-empty segment,
 * `{**}` one or more segments joined (possibly one empty: "/{**}/a" matches "//a"), each character an RFC 3986
 * segment character but `*` (Envoy's kLiteral); `wide`: any character (but "/" within `{*}`), ambit's reading where
 * matching more lets fewer requests through.
 */
function matchesTemplate(template: string, path: string, wide: boolean): boolean {
  if (!path.startsWith('/')) return false;
  const parts = template.slice(1).split('/');
  const segments = path.slice(1).split('/');
  const allowed = (text: string) => wide || /^[A-Za-z0-9\-._~%!$&'()+,;:@=]*$/.test(text);
  const from = (part: number, segment: number): boolean => {
    if (part === parts.length) return segment === segments.length;
    if (segment >= segments.length) return false;
    const written = parts[part] as string;
    if (written === '{**}') {
      for (let end = segment + 1; end <= segments.length; end++) {
        if (segments.slice(segment, end).every(allowed) && from(part + 1, end)) return true;
      }
      return false;
    }
    const actual = segments[segment] as string;
    if (written === '{*}') return actual !== '' && allowed(actual) && from(part + 1, segment + 1);
    return actual === written && from(part + 1, segment + 1);
  };
  return from(0, 0);
}

function anyPath(patterns: readonly string[], path: string, wide: boolean): boolean {
  for (const pattern of patterns) {
    if (pattern.includes('{') ? matchesTemplate(pattern, path, wide) : matchesPattern(pattern, path)) return true;
  }
  return false;
}

function anyPattern(patterns: readonly string[], value: string): boolean {
  for (const pattern of patterns) if (matchesPattern(pattern, value)) return true;
  return false;
}

function anyPatternIgnoringCase(patterns: readonly string[], value: string): boolean {
  for (const pattern of patterns) if (matchesPattern(pattern.toLowerCase(), value.toLowerCase())) return true;
  return false;
}

function bitsOfByte(byte: number, width: number): string {
  let text = byte.toString(2);
  while (text.length < width) text = '0' + text;
  return text;
}

/** An address as a string of 32 or 128 '0'/'1'; an IPv4-mapped IPv6 address is its IPv4 address. */
export function addressBits(text: string): string | null {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(text)) {
    let bits = '';
    for (const part of text.split('.')) {
      const byte = Number(part);
      if (byte > 255) return null;
      bits += bitsOfByte(byte, 8);
    }
    return bits;
  }
  if (!text.includes(':')) return null;
  let address = text;
  const zone = address.indexOf('%');
  if (zone >= 0) address = address.slice(0, zone);
  let tail = '';
  const lastColon = address.lastIndexOf(':');
  if (address.slice(lastColon + 1).includes('.')) {
    const v4 = addressBits(address.slice(lastColon + 1));
    if (v4 === null) return null;
    tail = v4;
    address = address.slice(0, lastColon + 1) + 'x';
  }
  const halves = address.split('::');
  if (halves.length > 2) return null;
  const left = halves[0] === '' ? [] : (halves[0] as string).split(':');
  const right = halves.length === 1 || halves[1] === '' ? [] : (halves[1] as string).split(':');
  const groupCount = tail === '' ? 8 : 7; // the dotted quad takes two groups, its placeholder one
  const groups = halves.length === 2 ? [...left, ...Array<string>(groupCount - left.length - right.length).fill('0'), ...right] : left;
  if (groups.length !== groupCount) return null;
  let bits = '';
  for (const group of groups) {
    if (group === 'x') continue;
    if (!/^[0-9a-fA-F]{1,4}$/.test(group)) return null;
    bits += bitsOfByte(parseInt(group, 16), 16);
  }
  bits += tail;
  if (bits.length !== 128) return null;
  if (bits.startsWith('0'.repeat(80) + '1'.repeat(16))) return bits.slice(96);
  return bits;
}

/** `a.b.c.d`, `a.b.c.d/n`, `v6`, `v6/n`: the address's first n bits must equal the block's. */
export function blockContains(block: string, address: string): boolean {
  const slash = block.indexOf('/');
  const network = addressBits(slash < 0 ? block : block.slice(0, slash));
  const candidate = addressBits(address);
  if (network === null || candidate === null || network.length !== candidate.length) return false;
  const length = slash < 0 ? network.length : Number(block.slice(slash + 1));
  return network.slice(0, length) === candidate.slice(0, length);
}

function anyBlock(blocks: readonly string[], address: string): boolean {
  for (const block of blocks) if (blockContains(block, address)) return true;
  return false;
}

// ---- rules ----

/** 'full': every field is evaluated; 'ignoreHttp': HTTP fields count as matching. */
type Mode = 'full' | 'ignoreHttp';

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * istiod's regex for a service account (`NS/SA`, or `SA` in the policy's namespace), full-matched against the peer's
 * SPIFFE ID as Envoy does: `spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?`.
 */
function serviceAccountMatches(written: string, policyNamespace: string, principal: string): boolean {
  const [namespace, account] = written.includes('/') ? (written.split('/') as [string, string]) : [policyNamespace, written];
  return new RegExp(`^spiffe://.+/ns/${escapeRegExp(namespace)}/(.+/|)sa/${escapeRegExp(account)}(/.+)?$`).test(`spiffe://${principal}`);
}

/** istiod's trust-domain matcher: `*` any ID, exact `spiffe://TD/` as a prefix, else the regex `spiffe://P[^/]*S/.*`. */
function trustDomainMatches(written: string, principal: string): boolean {
  const id = `spiffe://${principal}`;
  if (written === '*') return true;
  if (!written.includes('*')) return id.startsWith(`spiffe://${written}/`);
  const [start, end] = written.split('*') as [string, string];
  return new RegExp(`^spiffe://${escapeRegExp(start)}[^/]*${escapeRegExp(end)}/.*$`, 's').test(id);
}

function anyAccount(list: readonly string[], policyNamespace: string, principal: string): boolean {
  return list.some((written) => serviceAccountMatches(written, policyNamespace, principal));
}

function anyDomain(list: readonly string[], principal: string): boolean {
  return list.some((written) => trustDomainMatches(written, principal));
}

function sourceMatches(source: PolicySource, request: ReferenceRequest, mode: Mode, policyNamespace: string): boolean {
  const principal = request.principal;
  const namespace = request.namespace;
  const ip = request.sourceIp;
  if (source.principals !== undefined && (principal === null || !anyPattern(source.principals, principal))) return false;
  if (source.notPrincipals !== undefined && principal !== null && anyPattern(source.notPrincipals, principal)) return false;
  if (source.serviceAccounts !== undefined && (principal === null || !anyAccount(source.serviceAccounts, policyNamespace, principal))) return false;
  if (source.notServiceAccounts !== undefined && principal !== null && anyAccount(source.notServiceAccounts, policyNamespace, principal)) return false;
  if (source.trustDomains !== undefined && (principal === null || !anyDomain(source.trustDomains, principal))) return false;
  if (source.notTrustDomains !== undefined && principal !== null && anyDomain(source.notTrustDomains, principal)) return false;
  if (source.namespaces !== undefined && (namespace === null || !anyPattern(source.namespaces, namespace))) return false;
  if (source.notNamespaces !== undefined && namespace !== null && anyPattern(source.notNamespaces, namespace)) return false;
  if (source.ipBlocks !== undefined && (ip === null || !anyBlock(source.ipBlocks, ip))) return false;
  if (source.notIpBlocks !== undefined && ip !== null && anyBlock(source.notIpBlocks, ip)) return false;
  // The remote IP is an HTTP field (Istio reads it from X-Forwarded-For; istiod hands it to ztunnel as L7).
  if (mode === 'ignoreHttp') return true;
  const remote = remoteIpOf(request);
  if (source.remoteIpBlocks !== undefined && (remote === null || !anyBlock(source.remoteIpBlocks, remote))) return false;
  if (source.notRemoteIpBlocks !== undefined && remote !== null && anyBlock(source.notRemoteIpBlocks, remote)) return false;
  return true;
}

/** Envoy's remote address with no trusted hops: the last X-Forwarded-For element when it is an address, else the source's. */
function remoteIpOf(request: ReferenceRequest): string | null {
  const forwarded = request.http?.headers['x-forwarded-for'];
  if (forwarded !== undefined) {
    const last = (forwarded.split(',').pop() ?? '').trim();
    if (isIP(last) !== 0) return last;
  }
  return request.sourceIp;
}

export function operationHasHttp(operation: PolicyOperation): boolean {
  return operation.hosts !== undefined || operation.notHosts !== undefined || operation.methods !== undefined
    || operation.notMethods !== undefined || operation.paths !== undefined || operation.notPaths !== undefined;
}

/**
 * Istio matches a host pattern against the Host exactly as sent (`web.shop` misses `web.shop:8080`). ambit reads the
 * Host the way that lets fewer requests through for each action: a DENY's hosts and an ALLOW's notHosts also match
 * the Host with its port and a trailing dot cut (`withoutPort`).
 */
function hostMatches(patterns: readonly string[], host: string, withoutPort: boolean): boolean {
  if (anyPatternIgnoringCase(patterns, host)) return true;
  if (!withoutPort) return false;
  // An empty port (`web.shop:`) is the default port (RFC 3986 §3.2.3): cut too. So is a trailing dot (`web.shop.`,
  // the same DNS name).
  const match = /^(.*):\d*$/.exec(host);
  let name = match !== null && !host.endsWith(']') ? (match[1] as string) : host;
  if (name.length > 1 && name.endsWith('.')) name = name.slice(0, -1);
  return name !== host && anyPatternIgnoringCase(patterns, name);
}

function operationMatches(operation: PolicyOperation, request: ReferenceRequest, mode: Mode, deny: boolean): boolean {
  if (operation.ports !== undefined && !operation.ports.includes(request.port)) return false;
  if (operation.notPorts !== undefined && operation.notPorts.includes(request.port)) return false;
  if (!operationHasHttp(operation) || mode === 'ignoreHttp') return true;
  const http = request.http;
  if (http === null) return false;
  if (operation.hosts !== undefined && !hostMatches(operation.hosts, http.host, deny)) return false;
  if (operation.notHosts !== undefined && hostMatches(operation.notHosts, http.host, !deny)) return false;
  if (operation.methods !== undefined && !anyPattern(operation.methods, http.method)) return false;
  if (operation.notMethods !== undefined && anyPattern(operation.notMethods, http.method)) return false;
  // Templates, as hosts: a DENY's paths and the others' notPaths read the wide way.
  if (operation.paths !== undefined && !anyPath(operation.paths, http.path, deny)) return false;
  if (operation.notPaths !== undefined && anyPath(operation.notPaths, http.path, !deny)) return false;
  return true;
}

function conditionMatches(condition: PolicyCondition, request: ReferenceRequest, mode: Mode, policyNamespace: string): boolean {
  const key = condition.parsedKey;
  const values = condition.values;
  const notValues = condition.notValues;
  if (key.kind === 'destination.port') {
    const port = String(request.port);
    if (values !== undefined && !values.includes(port)) return false;
    if (notValues !== undefined && notValues.includes(port)) return false;
    return true;
  }
  if (key.kind === 'remote.ip' && mode === 'ignoreHttp') return true;
  if (key.kind === 'source.ip' || key.kind === 'remote.ip' || key.kind === 'destination.ip') {
    const ip = key.kind === 'destination.ip' ? request.destinationIp : key.kind === 'remote.ip' ? remoteIpOf(request) : request.sourceIp;
    if (values !== undefined && (ip === null || !anyBlock(values, ip))) return false;
    if (notValues !== undefined && ip !== null && anyBlock(notValues, ip)) return false;
    return true;
  }
  let text: string | null;
  if (key.kind === 'request.headers') {
    if (mode === 'ignoreHttp') return true;
    if (request.http === null) return false;
    text = headerValue(request.http, key.header.toLowerCase());
    // Istio writes a header's `*` as Envoy's present_match: any value, even an empty one, as long as it was sent.
    if (values !== undefined && (text === null || !(values.includes('*') || anyPattern(values, text)))) return false;
    if (notValues !== undefined && text !== null && (notValues.includes('*') || anyPattern(notValues, text))) return false;
    return true;
  } else if (key.kind === 'source.namespace') {
    text = request.namespace;
  } else if (key.kind === 'source.serviceAccount' || key.kind === 'source.trustDomain') {
    const principal = request.principal;
    const matches = (list: readonly string[]) => principal !== null && (key.kind === 'source.serviceAccount' ? anyAccount(list, policyNamespace, principal) : anyDomain(list, principal));
    if (values !== undefined && !matches(values)) return false;
    if (notValues !== undefined && principal !== null && matches(notValues)) return false;
    return true;
  } else {
    text = request.principal;
  }
  if (values !== undefined && (text === null || !anyPattern(values, text))) return false;
  if (notValues !== undefined && text !== null && anyPattern(notValues, text)) return false;
  return true;
}

export function ruleHasHttp(rule: PolicyRule): boolean {
  for (const source of rule.from ?? []) if (source.remoteIpBlocks !== undefined || source.notRemoteIpBlocks !== undefined) return true;
  for (const operation of rule.to ?? []) if (operationHasHttp(operation)) return true;
  for (const condition of rule.when ?? []) if (condition.parsedKey.kind === 'request.headers' || condition.parsedKey.kind === 'remote.ip') return true;
  return false;
}

/** `deny`: the rule is a DENY policy's (see hostMatches). */
export function ruleMatches(rule: PolicyRule, request: ReferenceRequest, mode: Mode, deny: boolean, policyNamespace: string): boolean {
  if (rule.from !== undefined && rule.from.length > 0) {
    let any = false;
    for (const source of rule.from) if (sourceMatches(source, request, mode, policyNamespace)) any = true;
    if (!any) return false;
  }
  if (rule.to !== undefined && rule.to.length > 0) {
    let any = false;
    for (const operation of rule.to) if (operationMatches(operation, request, mode, deny)) any = true;
    if (!any) return false;
  }
  for (const condition of rule.when ?? []) if (!conditionMatches(condition, request, mode, policyNamespace)) return false;
  return true;
}

// ---- scope ----

function selectorSelects(selector: Readonly<Record<string, string>> | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (selector === undefined) return true;
  for (const key of Object.keys(selector)) if (labels[key] !== selector[key]) return false;
  return true;
}

export function applicablePolicies(world: ReferenceWorld, destination: ReferenceDestination): ReferencePolicy[] {
  const result: ReferencePolicy[] = [];
  for (const policy of world.policies) {
    if (policy.namespace === world.rootNamespace && selectorSelects(policy.spec.selector, destination.labels)) result.push(policy);
  }
  if (destination.namespace !== world.rootNamespace) {
    for (const policy of world.policies) {
      if (policy.namespace === destination.namespace && selectorSelects(policy.spec.selector, destination.labels)) result.push(policy);
    }
  }
  return result;
}

// ---- mTLS ----

type Mode3 = Exclude<MtlsMode, 'UNSET'>;

function strength(mode: Mode3): number {
  return mode === 'STRICT' ? 2 : mode === 'PERMISSIVE' ? 1 : 0;
}

/**
 * Among several candidates for one level, the oldest, as Istio: by creationTimestamp (none is Go's zero time, the
 * oldest of all), then name, then namespace.
 */
function oldest(candidates: ReferencePeerAuthentication[]): ReferencePeerAuthentication | undefined {
  let best: ReferencePeerAuthentication | undefined;
  const age = (pa: ReferencePeerAuthentication) => pa.createdMs ?? -Infinity;
  for (const candidate of candidates) {
    if (best === undefined) best = candidate;
    else if (age(candidate) !== age(best)) {
      if (age(candidate) < age(best)) best = candidate;
    } else if (candidate.name !== best.name) {
      if (candidate.name < best.name) best = candidate;
    } else if (candidate.namespace < best.namespace) best = candidate;
  }
  return best;
}

/** ambit's floor: the strongest mode of the mesh-wide PeerAuthentications annotated enforce (of equals the oldest). */
function enforcedFloor(world: ReferenceWorld): ReferencePeerAuthentication | undefined {
  const enforced = world.peerAuthentications.filter((pa) => pa.namespace === world.rootNamespace && pa.spec.selector === undefined && pa.enforce && pa.spec.mtls !== 'UNSET');
  const strongest = Math.max(...enforced.map((pa) => strength(pa.spec.mtls as Mode3)));
  return oldest(enforced.filter((pa) => strength(pa.spec.mtls as Mode3) === strongest));
}

export function meshWidePeerAuthentication(world: ReferenceWorld): ReferencePeerAuthentication | undefined {
  return oldest(world.peerAuthentications.filter((pa) => pa.namespace === world.rootNamespace && pa.spec.selector === undefined));
}

/** The mode in force on a port and the PeerAuthentication that set it (null: the PERMISSIVE default). */
export function effectiveMtls(world: ReferenceWorld, destination: ReferenceDestination, port: number): { mode: Mode3; setBy: string | null } {
  const mesh = meshWidePeerAuthentication(world);
  const namespacePa = destination.namespace === world.rootNamespace
    ? undefined
    : oldest(world.peerAuthentications.filter((pa) => pa.namespace === destination.namespace && pa.spec.selector === undefined));
  const workloadPa = destination.namespace === world.rootNamespace
    ? undefined
    : oldest(world.peerAuthentications.filter((pa) => pa.namespace === destination.namespace && pa.spec.selector !== undefined && selectorSelects(pa.spec.selector, destination.labels)));

  let mode: Mode3 = 'PERMISSIVE';
  let setBy: string | null = null;
  for (const pa of [mesh, namespacePa, workloadPa]) {
    if (pa !== undefined && pa.spec.mtls !== 'UNSET') {
      mode = pa.spec.mtls;
      setBy = `${pa.namespace}/${pa.name}`;
    }
  }
  const portMode = workloadPa?.spec.portLevelMtls.get(port);
  if (workloadPa !== undefined && portMode !== undefined && portMode !== 'UNSET') {
    mode = portMode;
    setBy = `${workloadPa.namespace}/${workloadPa.name}`;
  }
  const floor = enforcedFloor(world);
  if (floor !== undefined && strength(mode) < strength(floor.spec.mtls as Mode3)) {
    mode = floor.spec.mtls as Mode3;
    setBy = `${floor.namespace}/${floor.name}`;
  }
  return { mode, setBy };
}

export interface ReferenceViolation {
  readonly policy: string;
  readonly port: number | null;
  readonly attempted: MtlsMode;
  readonly enforced: MtlsMode;
  readonly floor: string;
}

/** Every PeerAuthentication whose mode (or a port's mode) is weaker than an enforced mesh-wide one. */
export function enforcementViolations(world: ReferenceWorld): ReferenceViolation[] {
  const mesh = enforcedFloor(world);
  if (mesh === undefined || mesh.spec.mtls === 'UNSET') return [];
  const floorMode = mesh.spec.mtls;
  const floor = `${mesh.namespace}/${mesh.name}`;
  const result: ReferenceViolation[] = [];
  for (const pa of world.peerAuthentications) {
    const name = `${pa.namespace}/${pa.name}`;
    if (name === floor) continue;
    if (pa.spec.mtls !== 'UNSET' && strength(pa.spec.mtls) < strength(floorMode)) result.push({ policy: name, port: null, attempted: pa.spec.mtls, enforced: floorMode, floor });
    for (const [port, mode] of pa.spec.portLevelMtls) {
      if (mode !== 'UNSET' && strength(mode) < strength(floorMode)) result.push({ policy: name, port, attempted: mode, enforced: floorMode, floor });
    }
  }
  return result;
}

// ---- the decision ----

export function referenceDecide(world: ReferenceWorld, destination: ReferenceDestination, request: ReferenceRequest, moment: Moment): ReferenceDecision {
  const mtls = effectiveMtls(world, destination, request.port);
  if (request.principal === null && mtls.mode === 'STRICT') return { allow: false, policy: mtls.setBy, rule: null, deferred: false };

  const policies = applicablePolicies(world, destination);
  for (const policy of policies) {
    if (policy.spec.action !== 'DENY') continue;
    for (let index = 0; index < policy.spec.rules.length; index++) {
      const rule = policy.spec.rules[index] as PolicyRule;
      const http = ruleHasHttp(rule);
      if (http && moment === 'connect') continue;
      const mode: Mode = http && moment === 'tcp' ? 'ignoreHttp' : 'full';
      if (ruleMatches(rule, request, mode, true, policy.namespace)) return { allow: false, policy: `${policy.namespace}/${policy.name}`, rule: index, deferred: false };
    }
  }

  const allowPolicies = policies.filter((policy) => policy.spec.action === 'ALLOW');
  if (allowPolicies.length === 0) return { allow: true, policy: null, rule: null, deferred: false };
  for (const policy of allowPolicies) {
    for (let index = 0; index < policy.spec.rules.length; index++) {
      const rule = policy.spec.rules[index] as PolicyRule;
      if (ruleHasHttp(rule) && moment !== 'request') continue;
      if (ruleMatches(rule, request, 'full', false, policy.namespace)) return { allow: true, policy: `${policy.namespace}/${policy.name}`, rule: index, deferred: false };
    }
  }
  if (moment === 'connect') {
    for (const policy of allowPolicies) {
      for (let index = 0; index < policy.spec.rules.length; index++) {
        const rule = policy.spec.rules[index] as PolicyRule;
        if (ruleHasHttp(rule) && ruleMatches(rule, request, 'ignoreHttp', false, policy.namespace)) return { allow: true, policy: `${policy.namespace}/${policy.name}`, rule: index, deferred: true };
      }
    }
  }
  return { allow: false, policy: null, rule: null, deferred: false };
}

/** A header as Envoy reads it for a condition: the Host as the request's authority, pseudo-headers from the request line. */
function headerValue(http: ReferenceHttp, name: string): string | null {
  if (name === 'host' || name === ':authority') return http.host === '' ? null : http.host;
  if (name === ':method') return http.method;
  if (name === ':path') return http.path;
  if (name === ':scheme') return 'http';
  if (name.startsWith(':')) return null;
  return http.headers[name] ?? null;
}
