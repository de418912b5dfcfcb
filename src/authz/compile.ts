// The policy compiler: on each configuration change, AuthorizationPolicies and PeerAuthentications become a
// matcher per workload (the policies that apply to it, by scope, split by action, every value matcher
// prebuilt, every possible decision preallocated), so a decision parses nothing and allocates nothing.
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import type { ConfigObject } from '../config/objects.ts';
import { httpPortSources, httpPortVersionsOf, selects } from '../config/http-ports.ts';
import type { HttpVersion } from '../config/http-ports.ts';
import { buildVocabularies, buildWorkloadIndex } from './index.ts';
import type { ListRules, Vocabularies, WorkloadIndex } from './index.ts';
import { AllTest, ServiceAccountTest, TrustDomainTest } from './identity-match.ts';
import { CidrSet, MethodMatcher, StringMatcher } from './match.ts';
import type { ValueTest } from './match.ts';
import { isPathTemplate, PathTemplate } from './path-template.ts';
import type {
  AuthorizationPolicySpec,
  ConditionKey,
  MtlsMode,
  PeerAuthenticationSpec,
  PolicyAction,
  PolicyCondition,
  PolicyOperation,
  PolicyRule,
  PolicySource,
} from './types.ts';
import { ENFORCE_ANNOTATION } from './types.ts';
import { DRY_RUN_ANNOTATION, isDryRun } from './validate.ts';

/** What a decision says, preallocated per rule: returning one is free. */
export interface Decision {
  readonly allow: boolean;
  /** `namespace/name` of the deciding policy, or null when no policy decided (defaults). */
  readonly policy: string | null;
  /** Index of the deciding rule within its policy. */
  readonly rule: number | null;
  readonly reason: string;
  /** Allowed at connection time only because HTTP rules will decide each request. */
  readonly deferred: boolean;
}

export interface CompiledSource {
  readonly principals: StringMatcher | null;
  readonly notPrincipals: StringMatcher | null;
  readonly namespaces: StringMatcher | null;
  readonly notNamespaces: StringMatcher | null;
  readonly ipBlocks: CidrSet | null;
  readonly notIpBlocks: CidrSet | null;
  readonly remoteIpBlocks: CidrSet | null;
  readonly notRemoteIpBlocks: CidrSet | null;
  /**
   * Has remoteIpBlocks or notRemoteIpBlocks. Istio takes the remote IP from the HTTP request (X-Forwarded-For) and
   * istiod hands ztunnel these fields as L7: an HTTP field like the others (see CompiledRule.l7).
   */
  readonly l7: boolean;
}

export interface CompiledOperation {
  readonly hosts: StringMatcher | null;
  readonly notHosts: StringMatcher | null;
  readonly ports: ReadonlySet<number> | null;
  readonly notPorts: ReadonlySet<number> | null;
  readonly methods: MethodMatcher | null;
  readonly notMethods: MethodMatcher | null;
  readonly paths: StringMatcher | null;
  readonly notPaths: StringMatcher | null;
  /** Has hosts, methods or paths (known only per HTTP request). */
  readonly l7: boolean;
}

export type CompiledValues =
  | { readonly type: 'strings'; readonly matcher: StringMatcher }
  | { readonly type: 'cidrs'; readonly set: CidrSet }
  | { readonly type: 'ports'; readonly set: ReadonlySet<number> };

export interface CompiledCondition {
  readonly key: ConditionKey;
  /** Header names are compared lower-case, as HTTP/2 sends them. */
  readonly header: string | null;
  readonly values: CompiledValues | null;
  readonly notValues: CompiledValues | null;
  readonly l7: boolean;
}

export interface CompiledRule {
  readonly policy: CompiledPolicy;
  readonly index: number;
  /** null = absent: the rule does not constrain sources / operations / conditions. */
  readonly from: readonly CompiledSource[] | null;
  readonly to: readonly CompiledOperation[] | null;
  readonly when: readonly CompiledCondition[] | null;
  /** Any L7 field anywhere in the rule: hosts, methods, paths, request headers, the remote IP. */
  readonly l7: boolean;
  /** The decision when this rule decides (deny for DENY, allow for ALLOW). */
  readonly decision: Decision;
  /** For an ALLOW rule with L7 fields whose L4 part matched at connection time. */
  readonly deferredDecision: Decision;
}

export interface CompiledPolicy {
  /** `namespace/name` */
  readonly name: string;
  readonly namespace: string;
  readonly action: PolicyAction;
  readonly selector: Readonly<Record<string, string>> | undefined;
  readonly rules: readonly CompiledRule[];
  readonly source: string;
  /**
   * The action of a dry-run policy (`istio.io/dry-run: "true"`), which is compiled as AUDIT: it decides nothing, and the
   * requests and connections its rules match are logged with the action it would have taken. undefined otherwise.
   */
  readonly dryRun?: PolicyAction;
}

export interface EffectiveMtls {
  readonly mode: Exclude<MtlsMode, 'UNSET'>;
  /** Port-level overrides after the enforce floor. */
  readonly ports: ReadonlyMap<number, Exclude<MtlsMode, 'UNSET'>>;
  /** The PeerAuthentications that set the workload's mode, most specific first, for explanations. */
  readonly from: readonly string[];
  /** The PeerAuthentication whose mode is in force (the floor when it overrode a weaker one); null for the default. */
  readonly setBy: string | null;
  /** Per port of `ports`: the PeerAuthentication whose mode is in force there. */
  readonly portSetBy: ReadonlyMap<number, string>;
}

/** Rules in policy order, split by action. */
export interface RuleLists {
  readonly deny: readonly CompiledRule[];
  readonly allow: readonly CompiledRule[];
  readonly audit: readonly CompiledRule[];
}

/** The policies that apply to one workload, split by action, with the default decisions preallocated. */
export interface WorkloadPolicies {
  readonly policies: readonly CompiledPolicy[];
  readonly deny: readonly CompiledRule[];
  readonly allow: readonly CompiledRule[];
  readonly audit: readonly CompiledRule[];
  /** ALLOW policies that apply (an ALLOW policy with no rules still counts: it allows nothing). */
  readonly allowPolicyCount: number;
  /**
   * The dry-run ALLOW policies that apply (names): when none of their rules matches, Envoy's shadow engine reports
   * the connection or request as one they would deny, which is what dry-running an ALLOW is for.
   */
  readonly dryRunAllow: readonly string[];
  /**
   * The same rules narrowed to those that can match a destination port (order kept), for explanations and
   * AUDIT matching; decisions read `index`. Ports no rule names share `otherPorts`.
   */
  readonly byPort: ReadonlyMap<number, RuleLists>;
  readonly otherPorts: RuleLists;
  /** The same DENY and ALLOW rules as bitsets by port, source and method: what a decision reads. */
  readonly index: WorkloadIndex;
  /** `index.data`, one object nearer: a decision's first read of a workload (src/authz/decide.ts). */
  readonly indexData: Int32Array;
  /**
   * Whether an ALLOW or DENY rule has HTTP fields: those must see every request, so the proxy inspects the HTTP ports.
   * AUDIT and dry-run rules never make it inspect (they only log; inspection changes what reaches the workload): their
   * HTTP fields are read on requests inspected for the rules in force.
   */
  readonly hasEnforcingL7Rules: boolean;
  /** Target ports of this workload declared HTTP by a Service (appProtocol or port name): evaluated per request. */
  readonly httpPorts: ReadonlySet<number>;
  /** The HTTP version each of those ports' workload speaks (null: declarations disagree, the client's is used). */
  readonly httpVersions: ReadonlyMap<number, HttpVersion | null>;
  readonly mtls: EffectiveMtls;
  readonly noMatch: Decision;
  /** The refusal of a connection without peer identity under STRICT, naming the PeerAuthentication that set it. */
  readonly strictPlaintext: Decision;
  /** The same for ports whose STRICT comes from a port-level mode (or the floor over one). */
  readonly strictPlaintextPorts: ReadonlyMap<number, Decision>;
}

export interface EnforcementViolation {
  /** The PeerAuthentication that tried to weaken the floor. */
  readonly policy: string;
  readonly port: number | null;
  readonly attempted: MtlsMode;
  readonly enforced: MtlsMode;
  readonly floor: string;
}

export interface CompiledAuthorization {
  readonly rootNamespace: string;
  readonly policies: readonly CompiledPolicy[];
  /** Any workload → its matcher (a workload of the snapshot's built on first use and kept; it throws what failed its build). */
  forWorkload(workload: Workload): WorkloadPolicies;
  /** A matcher for a destination given by namespace and labels (dry runs of workloads not in the registry). */
  forLabels(namespace: string, labels: Readonly<Record<string, string>>, httpPorts?: ReadonlySet<number>): WorkloadPolicies;
  /** Weaker PeerAuthentications refused because of an enforced mesh-wide floor. */
  readonly violations: readonly EnforcementViolation[];
}

// ---------------------------------------------------------------------------------------------

const ALLOW_NO_POLICY: Decision = Object.freeze({ allow: true, policy: null, rule: null, reason: 'no ALLOW policy applies to the workload', deferred: false });
export const DENY_ON_ERROR: Decision = Object.freeze({ allow: false, policy: null, rule: null, reason: 'authorization failed while deciding: denied (fail closed)', deferred: false });

function strings(list: readonly string[] | undefined, caseInsensitive = false): StringMatcher | null {
  return list === undefined || list.length === 0 ? null : new StringMatcher(list, caseInsensitive);
}

function cidrs(list: readonly string[] | undefined): CidrSet | null {
  return list === undefined || list.length === 0 ? null : new CidrSet(list);
}

function ports(list: readonly number[] | undefined): ReadonlySet<number> | null {
  return list === undefined || list.length === 0 ? null : new Set(list);
}

function methods(list: readonly string[] | undefined): MethodMatcher | null {
  return list === undefined || list.length === 0 ? null : new MethodMatcher(list);
}

/** The trust domain Istio's policies use for "the local one", whatever the mesh's trust domain (constants.DefaultClusterLocalDomain). */
const DEFAULT_POLICY_TRUST_DOMAIN = 'cluster.local';

/**
 * Istio reads the trust domain `cluster.local` in a policy's principal as "this mesh's trust domain"
 * (trustdomain.Bundle.ReplaceTrustDomainAliases): `cluster.local/ns/a/sa/b` names `TD/ns/a/sa/b` when the mesh's
 * trust domain is TD. Only a five-segment principal that does not start with `*` is rewritten, as there.
 */
function localPrincipals(list: readonly string[] | undefined, trustDomain: string): readonly string[] | undefined {
  if (list === undefined || trustDomain === DEFAULT_POLICY_TRUST_DOMAIN) return list;
  return list.map((principal) => {
    if (principal.startsWith('*') || !principal.startsWith(`${DEFAULT_POLICY_TRUST_DOMAIN}/`) || principal.split('/').length !== 5) return principal;
    return trustDomain + principal.slice(DEFAULT_POLICY_TRUST_DOMAIN.length);
  });
}

function serviceAccounts(list: readonly string[] | undefined, policyNamespace: string): readonly ValueTest[] {
  return (list ?? []).map((account) => new ServiceAccountTest(account, policyNamespace));
}

function trustDomains(list: readonly string[] | undefined): readonly ValueTest[] {
  return (list ?? []).map((domain) => new TrustDomainTest(domain));
}

/**
 * What a source asks of the peer's principal, in one matcher: its principals, its service accounts (never beside
 * principals, as Istio's validation has it: held to both all the same) and its trust domains, all of which must hold.
 */
function principalMatcher(source: PolicySource, trustDomain: string, policyNamespace: string): StringMatcher | null {
  const lists: StringMatcher[] = [];
  if (source.principals !== undefined) lists.push(new StringMatcher(localPrincipals(source.principals, trustDomain) ?? []));
  if (source.serviceAccounts !== undefined) lists.push(new StringMatcher([], false, false, serviceAccounts(source.serviceAccounts, policyNamespace)));
  if (source.trustDomains !== undefined) lists.push(new StringMatcher([], false, false, trustDomains(source.trustDomains)));
  if (lists.length <= 1) return lists[0] ?? null;
  return new StringMatcher([], false, false, [new AllTest(lists)]);
}

/** The principals a source excludes: any of notPrincipals, notServiceAccounts or notTrustDomains. */
function notPrincipalMatcher(source: PolicySource, trustDomain: string, policyNamespace: string): StringMatcher | null {
  const tests = [...serviceAccounts(source.notServiceAccounts, policyNamespace), ...trustDomains(source.notTrustDomains)];
  if (tests.length === 0) return strings(localPrincipals(source.notPrincipals, trustDomain));
  return new StringMatcher(localPrincipals(source.notPrincipals, trustDomain) ?? [], false, false, tests);
}

function compileSource(source: PolicySource, trustDomain: string, policyNamespace: string): CompiledSource {
  const remoteIpBlocks = cidrs(source.remoteIpBlocks);
  const notRemoteIpBlocks = cidrs(source.notRemoteIpBlocks);
  return {
    principals: principalMatcher(source, trustDomain, policyNamespace),
    notPrincipals: notPrincipalMatcher(source, trustDomain, policyNamespace),
    namespaces: strings(source.namespaces),
    notNamespaces: strings(source.notNamespaces),
    ipBlocks: cidrs(source.ipBlocks),
    notIpBlocks: cidrs(source.notIpBlocks),
    remoteIpBlocks,
    notRemoteIpBlocks,
    l7: remoteIpBlocks !== null || notRemoteIpBlocks !== null,
  };
}

/**
 * Paths: exact, prefix and suffix values, and templates. `wide`: the templates also match the characters Envoy's
 * do not (path-template.ts), for the lists where matching more lets fewer requests through.
 */
function pathMatcher(list: readonly string[] | undefined, wide: boolean): StringMatcher | null {
  if (list === undefined || list.length === 0) return null;
  if (!list.some(isPathTemplate)) return new StringMatcher(list);
  const templates = list.filter(isPathTemplate).map((template) => new PathTemplate(template, wide));
  return new StringMatcher(list.filter((path) => !isPathTemplate(path)), false, false, templates);
}

function compileOperation(operation: PolicyOperation, action: PolicyAction): CompiledOperation {
  const hosts = strings(operation.hosts, true);
  const notHosts = strings(operation.notHosts, true);
  const methodMatcher = methods(operation.methods);
  const notMethodMatcher = methods(operation.notMethods);
  // A DENY's paths and the others' notPaths match more where they can, as hosts do (decide.ts, hostMatches).
  const paths = pathMatcher(operation.paths, action === 'DENY');
  const notPaths = pathMatcher(operation.notPaths, action !== 'DENY');
  return {
    hosts,
    notHosts,
    ports: ports(operation.ports),
    notPorts: ports(operation.notPorts),
    methods: methodMatcher,
    notMethods: notMethodMatcher,
    paths,
    notPaths,
    l7: hosts !== null || notHosts !== null || methodMatcher !== null || notMethodMatcher !== null || paths !== null || notPaths !== null,
  };
}

function compileValues(key: ConditionKey, list: readonly string[] | undefined, policyNamespace: string): CompiledValues | null {
  if (list === undefined || list.length === 0) return null;
  switch (key.kind) {
    case 'source.serviceAccount':
      return { type: 'strings', matcher: new StringMatcher([], false, false, serviceAccounts(list, policyNamespace)) };
    case 'source.trustDomain':
      return { type: 'strings', matcher: new StringMatcher([], false, false, trustDomains(list)) };
    case 'source.ip':
    case 'remote.ip':
    case 'destination.ip':
      return { type: 'cidrs', set: new CidrSet(list) };
    case 'destination.port':
      return { type: 'ports', set: new Set(list.map(Number)) };
    case 'request.headers':
      return { type: 'strings', matcher: new StringMatcher(list, false, true) };
    default:
      return { type: 'strings', matcher: new StringMatcher(list) };
  }
}

function compileCondition(condition: PolicyCondition, trustDomain: string, policyNamespace: string): CompiledCondition {
  const key = condition.parsedKey;
  const principal = key.kind === 'source.principal';
  return {
    key,
    header: key.kind === 'request.headers' ? key.header.toLowerCase() : null,
    values: compileValues(key, principal ? localPrincipals(condition.values, trustDomain) : condition.values, policyNamespace),
    notValues: compileValues(key, principal ? localPrincipals(condition.notValues, trustDomain) : condition.notValues, policyNamespace),
    // remote.ip is L7 for the reason CompiledSource.l7 gives.
    l7: key.kind === 'request.headers' || key.kind === 'remote.ip',
  };
}

function compileRule(policy: CompiledPolicy, rule: PolicyRule, index: number, trustDomain: string): CompiledRule {
  const from = rule.from && rule.from.length > 0 ? rule.from.map((source) => compileSource(source, trustDomain, policy.namespace)) : null;
  // A dry-run policy's paths as the enforced one's: its log shows what enforcing it would do.
  const to = rule.to && rule.to.length > 0 ? rule.to.map((operation) => compileOperation(operation, policy.dryRun ?? policy.action)) : null;
  const when = rule.when && rule.when.length > 0 ? rule.when.map((condition) => compileCondition(condition, trustDomain, policy.namespace)) : null;
  const l7 = (from?.some((source) => source.l7) ?? false) || (to?.some((operation) => operation.l7) ?? false) || (when?.some((condition) => condition.l7) ?? false);
  const verb = policy.action === 'DENY' ? 'denied' : policy.action === 'ALLOW' ? 'allowed' : 'audited';
  return {
    policy,
    index,
    from,
    to,
    when,
    l7,
    decision: Object.freeze({ allow: policy.action !== 'DENY', policy: policy.name, rule: index, reason: `${verb} by ${policy.action} policy ${policy.name}, rule ${index}`, deferred: false }),
    deferredDecision: Object.freeze({ allow: true, policy: policy.name, rule: index, reason: `connection allowed: HTTP rule ${index} of ${policy.action} policy ${policy.name} decides each request`, deferred: true }),
  };
}

/**
 * Each policy object's compiled form, kept as long as the object: a reload reuses the objects of the files it did not
 * parse again (ParsedFiles), and their policies need not be compiled again. A policy's compiled form depends on the
 * object and the trust domain only.
 */
const compiledPolicies = new WeakMap<ConfigObject, { readonly trustDomain: string; readonly policy: CompiledPolicy }>();

function compiledPolicy(object: ConfigObject & { kind: 'AuthorizationPolicy' }, trustDomain: string): CompiledPolicy {
  const kept = compiledPolicies.get(object);
  if (kept !== undefined && kept.trustDomain === trustDomain) return kept.policy;
  const policy = compilePolicy(object, trustDomain);
  compiledPolicies.set(object, { trustDomain, policy });
  return policy;
}

function compilePolicy(object: ConfigObject & { kind: 'AuthorizationPolicy' }, trustDomain: string): CompiledPolicy {
  const spec: AuthorizationPolicySpec = object.spec;
  const rules: CompiledRule[] = [];
  const dryRun = isDryRun(object.metadata.annotations[DRY_RUN_ANNOTATION]) === true;
  const policy: CompiledPolicy = {
    name: `${object.metadata.namespace}/${object.metadata.name}`,
    namespace: object.metadata.namespace,
    // Dry run, as Envoy's shadow rules: evaluated and logged, never enforced (ztunnel ignores such a policy).
    action: dryRun ? 'AUDIT' : spec.action,
    selector: spec.selector,
    rules,
    source: object.source.file,
    ...(dryRun ? { dryRun: spec.action } : {}),
  };
  (spec.rules ?? []).forEach((rule, index) => rules.push(compileRule(policy, rule, index, trustDomain)));
  Object.freeze(rules);
  return policy;
}

function strictRefusal(policy: string | null): Decision {
  return Object.freeze({ allow: false, policy, rule: null, reason: `mTLS is STRICT for this workload${policy === null ? '' : ` (${policy})`}: a connection without a peer identity is refused`, deferred: false });
}

/** Beyond this many distinct ports in one workload's rules the lists would cost more than they save. */
const MAX_INDEXED_PORTS = 256;

/** Whether a rule can match some destination port at all (its `to`, if any, allows the port). */
function ruleCanMatchPort(rule: CompiledRule, port: number | null): boolean {
  if (rule.to === null) return true;
  for (const operation of rule.to) {
    if (port === null) {
      // A port no rule names: only an operation without a `ports` list can match it.
      if (operation.ports === null) return true;
    } else if ((operation.ports === null || operation.ports.has(port)) && (operation.notPorts === null || !operation.notPorts.has(port))) {
      return true;
    }
  }
  return false;
}

function indexByPort(all: RuleLists, vocabularies: Vocabularies, httpPorts: ReadonlySet<number>): { byPort: Map<number, RuleLists>; otherPorts: RuleLists; index: WorkloadIndex } {
  const named = new Set<number>();
  for (const list of [all.deny, all.allow, all.audit]) {
    for (const rule of list) {
      for (const operation of rule.to ?? []) {
        for (const port of operation.ports ?? []) named.add(port);
        for (const port of operation.notPorts ?? []) named.add(port);
      }
    }
  }
  const byPort = new Map<number, RuleLists>();
  // No rule names a port: every operation admits every port, as the port-less narrowing says. Too many: not narrowed.
  if (named.size === 0 || named.size > MAX_INDEXED_PORTS) {
    return { byPort, otherPorts: all, index: buildWorkloadIndex([{ port: null, deny: all.deny, allow: all.allow, portsResolved: named.size === 0, http: httpPorts.size > 0 }], vocabularies) };
  }
  const narrow = (port: number | null): RuleLists => ({
    deny: all.deny.filter((rule) => ruleCanMatchPort(rule, port)),
    allow: all.allow.filter((rule) => ruleCanMatchPort(rule, port)),
    audit: all.audit.filter((rule) => ruleCanMatchPort(rule, port)),
  });
  for (const port of named) byPort.set(port, narrow(port));
  const otherPorts = narrow(null);
  const lists: ListRules[] = [...byPort].map(([port, rules]) => ({ port, deny: rules.deny, allow: rules.allow, portsResolved: true, http: httpPorts.has(port) }));
  lists.push({ port: null, deny: otherPorts.deny, allow: otherPorts.allow, portsResolved: true, http: [...httpPorts].some((port) => !named.has(port)) });
  return { byPort, otherPorts, index: buildWorkloadIndex(lists, vocabularies) };
}

/** What workloads selected by the same policies (and with the same HTTP ports) share. */
type SharedRules = Pick<WorkloadPolicies, 'deny' | 'allow' | 'audit' | 'allowPolicyCount' | 'dryRunAllow' | 'byPort' | 'otherPorts' | 'index' | 'hasEnforcingL7Rules'>;

const STRENGTH: Record<Exclude<MtlsMode, 'UNSET'>, number> = { DISABLE: 0, PERMISSIVE: 1, STRICT: 2 };

interface PeerAuthEntry {
  readonly name: string;
  readonly namespace: string;
  readonly spec: PeerAuthenticationSpec;
  readonly enforce: boolean;
  /** metadata.creationTimestamp in ms; -Infinity without one (Go's zero time, the oldest). */
  readonly createdMs: number;
  readonly objectName: string;
}

/** Builds the matchers of a snapshot. Pure: same snapshot, same result. */
export function compileAuthorization(snapshot: ConfigSnapshot): CompiledAuthorization {
  const rootNamespace = snapshot.mesh.rootNamespace;
  const policies: CompiledPolicy[] = [];
  const byNamespace = new Map<string, CompiledPolicy[]>();
  const peerAuths: PeerAuthEntry[] = [];
  for (const object of snapshot.objects) {
    if (object.kind === 'AuthorizationPolicy') {
      const policy = compiledPolicy(object, snapshot.mesh.trustDomain);
      policies.push(policy);
      let list = byNamespace.get(policy.namespace);
      if (!list) byNamespace.set(policy.namespace, (list = []));
      list.push(policy);
    } else if (object.kind === 'PeerAuthentication') {
      peerAuths.push({
        name: `${object.metadata.namespace}/${object.metadata.name}`,
        namespace: object.metadata.namespace,
        spec: object.spec,
        enforce: object.metadata.annotations[ENFORCE_ANNOTATION] === 'true',
        createdMs: object.metadata.createdMs ?? Number.NEGATIVE_INFINITY,
        objectName: object.metadata.name,
      });
    }
  }
  // Of several at one level the oldest applies, as Istio's ComposePeerAuthentication over configs sorted by creation
  // time, then name, then namespace. Code-point order: localeCompare follows ICU's collation (which weighs '-' last)
  // and loads its data into every proxy.
  const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  peerAuths.sort((a, b) => (a.createdMs !== b.createdMs ? (a.createdMs < b.createdMs ? -1 : 1) : byCodePoint(a.objectName, b.objectName) || byCodePoint(a.namespace, b.namespace)));
  // Every value and wildcard the policies write, with integer ids, shared by the indexes of all workloads.
  const vocabularies = buildVocabularies(policies.flatMap((policy) => policy.rules));
  const meshWideAll = peerAuths.filter((entry) => entry.namespace === rootNamespace && entry.spec.selector === undefined);
  const meshWide = meshWideAll[0];
  // The floor is ambit's own: every mesh-wide PeerAuthentication annotated enforce holds, whichever of them Istio's
  // rule picks for the mode (an older `default` must not switch an enforced STRICT off); the strongest, if they differ.
  let floor: { mode: Exclude<MtlsMode, 'UNSET'>; policy: string } | null = null;
  for (const entry of meshWideAll) {
    if (!entry.enforce || entry.spec.mtls === 'UNSET') continue;
    if (floor === null || STRENGTH[entry.spec.mtls] > STRENGTH[floor.mode]) floor = { mode: entry.spec.mtls, policy: entry.name };
  }
  const violations: EnforcementViolation[] = [];
  // Reported from the PeerAuthentications themselves, at compile time: whether or not a workload is selected yet,
  // and never growing later (forLabels used to append to this list after the fact).
  if (floor !== null) {
    for (const entry of peerAuths) {
      if (entry.name === floor.policy) continue;
      if (entry.spec.mtls !== 'UNSET' && STRENGTH[entry.spec.mtls] < STRENGTH[floor.mode]) {
        violations.push({ policy: entry.name, port: null, attempted: entry.spec.mtls, enforced: floor.mode, floor: floor.policy });
      }
      for (const [port, portMode] of entry.spec.portLevelMtls) {
        if (portMode !== 'UNSET' && STRENGTH[portMode] < STRENGTH[floor.mode]) violations.push({ policy: entry.name, port, attempted: portMode, enforced: floor.mode, floor: floor.policy });
      }
    }
  }

  /** The mode after the enforce floor, and who set it. */
  const applyFloor = (mode: Exclude<MtlsMode, 'UNSET'>, setter: string | null): [Exclude<MtlsMode, 'UNSET'>, string | null] => {
    if (floor === null || STRENGTH[mode] >= STRENGTH[floor.mode]) return [mode, setter];
    return [floor.mode, floor.policy];
  };

  const mtlsFor = (namespace: string, labels: Readonly<Record<string, string>>): EffectiveMtls => {
    // Istio's ComposePeerAuthentication: a PeerAuthentication with a selector in the root namespace is neither
    // mesh-wide nor workload-level ("the one with selector and not in root namespace"), so it applies to nothing.
    const workloadPa = namespace === rootNamespace ? undefined : peerAuths.find((entry) => entry.namespace === namespace && entry.spec.selector !== undefined && selects(entry.spec.selector, labels));
    const namespacePa = namespace === rootNamespace ? undefined : peerAuths.find((entry) => entry.namespace === namespace && entry.spec.selector === undefined);
    const chain = [workloadPa, namespacePa, meshWide].filter((entry): entry is PeerAuthEntry => entry !== undefined);
    let written: Exclude<MtlsMode, 'UNSET'> = 'PERMISSIVE';
    let writer: string | null = null;
    for (const entry of chain) {
      if (entry.spec.mtls !== 'UNSET') {
        written = entry.spec.mtls;
        writer = entry.name;
        break;
      }
    }
    const [mode, setBy] = applyFloor(written, writer);
    const portModes = new Map<number, Exclude<MtlsMode, 'UNSET'>>();
    const portSetBy = new Map<number, string>();
    if (workloadPa) {
      for (const [port, portMode] of workloadPa.spec.portLevelMtls) {
        if (portMode === 'UNSET') continue;
        const [enforced, by] = applyFloor(portMode, workloadPa.name);
        portModes.set(port, enforced);
        portSetBy.set(port, by ?? workloadPa.name);
      }
    }
    return { mode, ports: portModes, from: chain.map((entry) => entry.name), setBy, portSetBy };
  };

  // Workloads selected by the same policies, with the same HTTP ports (a Deployment's replicas, most often), share
  // one set of rule lists and one index: built once, kept once. Only the snapshot's own workloads add entries.
  const shared = new Map<string, SharedRules>();
  let sharing = false;
  const rulesFor = (applicable: readonly CompiledPolicy[], httpPorts: ReadonlySet<number>): SharedRules => {
    const key = `${applicable.map((policy) => policy.name).join('\n')}\n|${[...httpPorts].sort((a, b) => a - b).join(',')}`;
    const found = shared.get(key);
    if (found !== undefined) return found;
    const deny: CompiledRule[] = [];
    const allow: CompiledRule[] = [];
    const audit: CompiledRule[] = [];
    let allowPolicyCount = 0;
    for (const policy of applicable) {
      // One push per rule: spreading a policy's rules as arguments overflows the stack past ~100,000 of them.
      const into = policy.action === 'DENY' ? deny : policy.action === 'AUDIT' ? audit : allow;
      if (into === allow) allowPolicyCount++;
      for (const rule of policy.rules) into.push(rule);
    }
    const { byPort, otherPorts, index } = indexByPort({ deny, allow, audit }, vocabularies, httpPorts);
    const hasEnforcingL7Rules = [...deny, ...allow].some((rule) => rule.l7);
    const dryRunAllow = applicable.filter((policy) => policy.dryRun === 'ALLOW').map((policy) => policy.name);
    const rules: SharedRules = { deny, allow, audit, allowPolicyCount, dryRunAllow, byPort, otherPorts, index, hasEnforcingL7Rules };
    if (sharing) shared.set(key, rules);
    return rules;
  };

  const build = (namespace: string, labels: Readonly<Record<string, string>>, httpPorts: ReadonlySet<number>, httpVersions: ReadonlyMap<number, HttpVersion | null> = NO_VERSIONS): WorkloadPolicies => {
    const applicable: CompiledPolicy[] = [];
    // Mesh-wide policies live in the root namespace; a selector there selects workloads in every namespace.
    for (const policy of byNamespace.get(rootNamespace) ?? []) if (selects(policy.selector, labels)) applicable.push(policy);
    if (namespace !== rootNamespace) for (const policy of byNamespace.get(namespace) ?? []) if (selects(policy.selector, labels)) applicable.push(policy);
    const rules = rulesFor(applicable, httpPorts);
    const { deny, allow, audit, allowPolicyCount, dryRunAllow, byPort, otherPorts, index, hasEnforcingL7Rules } = rules;
    const mtls = mtlsFor(namespace, labels);
    const strictPlaintextPorts = new Map<number, Decision>();
    for (const [port, portMode] of mtls.ports) if (portMode === 'STRICT') strictPlaintextPorts.set(port, strictRefusal(mtls.portSetBy.get(port) ?? null));
    return {
      policies: applicable,
      deny,
      allow,
      audit,
      allowPolicyCount,
      dryRunAllow,
      byPort,
      otherPorts,
      index,
      indexData: index.data,
      hasEnforcingL7Rules,
      httpPorts,
      httpVersions,
      mtls,
      noMatch: Object.freeze({ allow: false, policy: null, rule: null, reason: `${allowPolicyCount} ALLOW ${allowPolicyCount === 1 ? 'policy applies' : 'policies apply'} and none matched`, deferred: false }),
      strictPlaintext: strictRefusal(mtls.setBy),
      strictPlaintextPorts,
    };
  };

  // Built on first use: a node proxy asks for its own workloads only (a few of the mesh's thousands), and building every
  // workload's matcher was most of a compile (5,000 workloads: 300-450 ms of each reload on every proxy). A build that
  // fails is kept as its error: that workload's decisions deny without building again.
  const byWorkload = new Map<Workload, WorkloadPolicies | Error>();
  const own = new Set(snapshot.workloads);
  const sources = httpPortSources(snapshot);
  const forWorkload = (workload: Workload) => {
    const versions = httpPortVersionsOf(sources, workload);
    return build(workload.namespace, workload.labels, new Set(versions.keys()), versions);
  };

  return {
    rootNamespace,
    policies,
    violations,
    forWorkload(workload) {
      let found = byWorkload.get(workload);
      if (found === undefined) {
        // A workload of another snapshot is built for this one call and not kept, nor are its rules shared: keeping
        // them would pin old objects and grow without bound. Only this snapshot's own workloads add entries.
        if (!own.has(workload)) return forWorkload(workload);
        sharing = true;
        try {
          found = forWorkload(workload);
        } catch (error) {
          found = error instanceof Error ? error : new Error(String(error));
        } finally {
          sharing = false;
        }
        byWorkload.set(workload, found);
      }
      if (found instanceof Error) throw found;
      return found;
    },
    forLabels(namespace, labels, httpPorts = new Set()) {
      return build(namespace, labels, httpPorts);
    },
  };
}

/** forLabels' workloads (dry runs): no versions, the client's is used. */
const NO_VERSIONS: ReadonlyMap<number, HttpVersion | null> = new Map();

const compiled = new WeakMap<ConfigSnapshot, CompiledAuthorization | Error>();

/**
 * The compiled policies of a snapshot, built once. A snapshot that fails to compile throws its error on every call,
 * without compiling again: each connection is denied on it, and must not pay for a compile of its own.
 */
export function authorizationOf(snapshot: ConfigSnapshot): CompiledAuthorization {
  let result = compiled.get(snapshot);
  if (result === undefined) {
    try {
      result = compileAuthorization(snapshot);
    } catch (error) {
      result = error instanceof Error ? error : new Error(String(error));
    }
    compiled.set(snapshot, result);
  }
  if (result instanceof Error) throw result;
  return result;
}

export { ALLOW_NO_POLICY };
