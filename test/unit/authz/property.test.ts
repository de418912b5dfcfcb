// Property tests with an oracle (STYLE rule 16): for random policies, PeerAuthentications, destinations and requests
// at random moments, the compiled matcher (compileAuthorization + decide) and the plain reference evaluator
// (reference.ts) agree on allow/deny, the deciding policy and rule, and deferral; the value matchers agree with
// plain string and bit compares; and policies written out as YAML load back as the same typed spec.
// Vocabularies are small on purpose, so that matches, misses, defaults and STRICT refusals all happen often.
import fc from 'fast-check';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { explain } from '../../../src/authz/explain.ts';
import { indexLimits } from '../../../src/authz/index.ts';
import { CidrSet, MethodMatcher, StringMatcher, parseIp } from '../../../src/authz/match.ts';
import type { IpAddress } from '../../../src/authz/match.ts';
import type { AuthorizationPolicySpec, ConditionKey, MtlsMode, PeerAuthenticationSpec, PolicyAction, PolicyCondition, PolicyOperation, PolicyRule, PolicySource } from '../../../src/authz/types.ts';
import { canonicalIpBlock } from '../../../src/config/fields.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import type { ConfigObject } from '../../../src/config/objects.ts';
import { compiledDecision, contextOf, loadObjects, matcherFor } from './harness.ts';
import { addressBits, applicablePolicies, blockContains, enforcementViolations, matchesPattern, referenceDecide } from './reference.ts';
import type { Moment, ReferenceDestination, ReferenceHttp, ReferenceRequest } from './reference.ts';

// ---- vocabularies ----

const ROOT = 'istio-system';
const NAMESPACES = [ROOT, 'shop', 'front'];
const PRINCIPALS = ['cluster.local/ns/front/sa/client', 'cluster.local/ns/shop/sa/web', 'cluster.local/ns/ops/sa/admin', 'other.example/ns/front/sa/client'];
/** Principals no pattern names exactly: only wildcards and `not` lists can say anything about them. */
const UNNAMED_PRINCIPALS = ['cluster.local/ns/front/sa/other', 'far.example/ns/zz/sa/admin', 'cluster.local/tenant/ns/front/x/sa/client/k'];
const PRINCIPAL_PATTERNS = [...PRINCIPALS, '*', 'cluster.local/*', '*/sa/client', 'cluster.local/ns/front/*', '*/ns/ops/sa/admin'];
const NAMESPACE_PATTERNS = ['front', 'shop', 'ops', '*', 'fr*', '*op', 'o*'];
const SERVICE_ACCOUNTS = ['front/client', 'client', 'ops/admin', 'web', 'zz/admin'];
const TRUST_DOMAIN_PATTERNS = ['cluster.local', 'other.example', '*', '*.example', 'cluster.*', 'far.example'];
const SOURCE_IPS = ['10.0.0.5', '10.0.1.7', '192.168.1.1', '2001:db8::7', '2001:db9::1'];
const IP_BLOCKS = ['10.0.0.0/8', '10.0.0.0/24', '10.0.1.7', '192.168.0.0/16', '2001:db8::/32', '0.0.0.0/0', '::/0'];
const DESTINATION_IPS = ['10.1.0.7', '10.2.0.7', 'fd00::7'];
const DESTINATION_BLOCKS = ['10.1.0.0/16', '10.2.0.7', 'fd00::/8', '10.0.0.0/8'];
const PORTS = [80, 8080, 9090];
const HOSTS = ['web.shop', 'api.example.com', 'admin.example.com', 'web.shop:80', 'api.example.com:8443', '[fd00::1]:80', '[fd00::1]', 'web.shop:', 'web.shop:80x'];
const HOST_PATTERNS = ['web.shop', 'WEB.Shop', '*.example.com', 'api.*', '*', 'admin.EXAMPLE.com', 'web.shop:*', 'web.shop:80', '[fd00::1]'];
const METHODS = ['GET', 'POST', 'DELETE', 'PATCH', 'PURGE'];
const METHOD_PATTERNS = ['GET', 'POST', 'DELETE', 'P*', '*ETE', '*', 'PURGE', 'get'];
const PATHS = ['/', '/api/v1', '/admin', '/img/a.png', '/api', '/api/v1/items', '/api/a*b/items', '/api/'];
const PATH_PATTERNS = ['/', '/api/*', '*.png', '/admin', '*', '/api', '/api/{*}', '/api/{*}/items', '/{**}/items', '/api/{**}'];
const HEADER_PATTERNS = ['alice', 'bob', 'al*', '*ob', '*', 'prod', 'dev'];
const SELECTORS: Readonly<Record<string, string>>[] = [{ app: 'web' }, { app: 'db' }, { app: 'web', version: 'v1' }];
const LABELS: Readonly<Record<string, string>>[] = [{ app: 'web' }, { app: 'db' }, { app: 'web', version: 'v1' }, { app: 'web', version: 'v2' }, {}];
const MODES: MtlsMode[] = ['STRICT', 'PERMISSIVE', 'DISABLE', 'UNSET'];

// ---- arbitraries: policies ----

function valuesOf<T>(vocabulary: readonly T[]): fc.Arbitrary<T[]> {
  return fc.uniqueArray(fc.constantFrom(...vocabulary), { minLength: 1, maxLength: 2 });
}

/** A record with one to `most` of the given fields, so that sources and operations stay small enough to match. */
function someFields<T>(fields: Record<string, fc.Arbitrary<unknown>>, most: number): fc.Arbitrary<T> {
  return fc.subarray(Object.keys(fields), { minLength: 1, maxLength: most }).chain((chosen) => {
    const model: Record<string, fc.Arbitrary<unknown>> = {};
    for (const key of chosen) model[key] = fields[key] as fc.Arbitrary<unknown>;
    return fc.record(model) as unknown as fc.Arbitrary<T>;
  });
}

const sourceArb: fc.Arbitrary<PolicySource> = someFields<PolicySource>({
  principals: valuesOf(PRINCIPAL_PATTERNS),
  notPrincipals: valuesOf(PRINCIPAL_PATTERNS),
  namespaces: valuesOf(NAMESPACE_PATTERNS),
  notNamespaces: valuesOf(NAMESPACE_PATTERNS),
  ipBlocks: valuesOf(IP_BLOCKS),
  notIpBlocks: valuesOf(IP_BLOCKS),
  remoteIpBlocks: valuesOf(IP_BLOCKS),
  notRemoteIpBlocks: valuesOf(IP_BLOCKS),
  serviceAccounts: valuesOf(SERVICE_ACCOUNTS),
  notServiceAccounts: valuesOf(SERVICE_ACCOUNTS),
  trustDomains: valuesOf(TRUST_DOMAIN_PATTERNS),
  notTrustDomains: valuesOf(TRUST_DOMAIN_PATTERNS),
}, 2).filter((source) => {
  // Istio's validation (and ambit's) refuses service accounts beside principals or namespaces.
  const accounts = source.serviceAccounts !== undefined || source.notServiceAccounts !== undefined;
  return !accounts || (source.principals === undefined && source.notPrincipals === undefined && source.namespaces === undefined && source.notNamespaces === undefined);
});

const operationArb: fc.Arbitrary<PolicyOperation> = someFields<PolicyOperation>({
  hosts: valuesOf(HOST_PATTERNS),
  notHosts: valuesOf(HOST_PATTERNS),
  ports: valuesOf(PORTS),
  notPorts: valuesOf(PORTS),
  methods: valuesOf(METHOD_PATTERNS),
  notMethods: valuesOf(METHOD_PATTERNS),
  paths: valuesOf(PATH_PATTERNS),
  notPaths: valuesOf(PATH_PATTERNS),
}, 2);

function conditionArb(key: string, parsedKey: ConditionKey, vocabulary: readonly string[]): fc.Arbitrary<PolicyCondition> {
  return someFields<{ values?: string[]; notValues?: string[] }>({ values: valuesOf(vocabulary), notValues: valuesOf(vocabulary) }, 2)
    .map((lists) => ({ key, parsedKey, ...lists }));
}

const whenArb: fc.Arbitrary<PolicyCondition> = fc.oneof(
  conditionArb('request.headers[x-user]', { kind: 'request.headers', header: 'x-user' }, HEADER_PATTERNS),
  conditionArb('request.headers[X-Env]', { kind: 'request.headers', header: 'x-env' }, HEADER_PATTERNS),
  conditionArb('source.ip', { kind: 'source.ip' }, IP_BLOCKS),
  conditionArb('remote.ip', { kind: 'remote.ip' }, IP_BLOCKS),
  conditionArb('source.namespace', { kind: 'source.namespace' }, NAMESPACE_PATTERNS),
  conditionArb('source.principal', { kind: 'source.principal' }, PRINCIPAL_PATTERNS),
  conditionArb('source.serviceAccount', { kind: 'source.serviceAccount' }, SERVICE_ACCOUNTS),
  conditionArb('source.trustDomain', { kind: 'source.trustDomain' }, TRUST_DOMAIN_PATTERNS),
  conditionArb('destination.ip', { kind: 'destination.ip' }, DESTINATION_BLOCKS),
  conditionArb('destination.port', { kind: 'destination.port' }, PORTS.map(String)),
);

const ruleArb: fc.Arbitrary<PolicyRule> = fc.record({
  from: fc.array(sourceArb, { minLength: 1, maxLength: 2 }),
  to: fc.array(operationArb, { minLength: 1, maxLength: 2 }),
  when: fc.array(whenArb, { minLength: 1, maxLength: 2 }),
}, { requiredKeys: [] });

interface GeneratedPolicy {
  readonly namespace: string;
  readonly spec: AuthorizationPolicySpec;
}

const policyArb: fc.Arbitrary<GeneratedPolicy> = fc.record({
  namespace: fc.constantFrom(ROOT, 'shop', 'shop', 'front'),
  selector: fc.option(fc.constantFrom(...SELECTORS), { nil: undefined, freq: 2 }),
  action: fc.constantFrom<PolicyAction>('ALLOW', 'ALLOW', 'DENY', 'DENY', 'AUDIT'),
  rules: fc.array(ruleArb, { minLength: 0, maxLength: 3 }),
}).map(({ namespace, selector, action, rules }) => {
  // Istio (and ambit's validation) refuse a DENY without rules; give it the rule that denies everything.
  const effectiveRules = action === 'DENY' && rules.length === 0 ? [{}] : rules;
  const spec: AuthorizationPolicySpec = selector === undefined ? { action, rules: effectiveRules } : { selector, action, rules: effectiveRules };
  return { namespace, spec };
});

interface GeneratedPeerAuthentication {
  readonly namespace: string;
  readonly enforce: boolean;
  /** A few distinct ages and none, so that age and name orders disagree. */
  readonly createdMs: number | undefined;
  readonly spec: PeerAuthenticationSpec;
}

const peerAuthenticationArb: fc.Arbitrary<GeneratedPeerAuthentication> = fc.record({
  namespace: fc.constantFrom(...NAMESPACES),
  selector: fc.option(fc.constantFrom(...SELECTORS), { nil: undefined, freq: 2 }),
  mtls: fc.constantFrom(...MODES),
  ports: fc.uniqueArray(fc.tuple(fc.constantFrom(...PORTS), fc.constantFrom(...MODES)), { maxLength: 2, selector: ([port]) => port }),
  enforce: fc.boolean(),
  createdMs: fc.constantFrom(undefined, 1_700_000_000_000, 1_700_000_001_000, 1_600_000_000_000),
}).map(({ namespace, selector, mtls, ports, enforce, createdMs }) => {
  // portLevelMtls needs a selector, and the enforce annotation stands only on the mesh-wide one (both refused at load).
  const portLevelMtls = new Map<number, MtlsMode>(selector === undefined ? [] : ports);
  const spec: PeerAuthenticationSpec = selector === undefined ? { mtls, portLevelMtls } : { selector, mtls, portLevelMtls };
  return { namespace, enforce: enforce && namespace === ROOT && selector === undefined, createdMs, spec };
});

function objectsOf(policies: readonly GeneratedPolicy[], peerAuthentications: readonly GeneratedPeerAuthentication[]): ConfigObject[] {
  const objects: ConfigObject[] = [];
  const meta = (name: string, namespace: string, annotations: Record<string, string>) => ({ name, namespace, labels: {}, annotations });
  policies.forEach((policy, index) => objects.push({
    apiVersion: 'security.istio.io/v1',
    kind: 'AuthorizationPolicy',
    metadata: meta(`policy-${index}`, policy.namespace, {}),
    source: { file: 'generated.yaml', line: index + 1 },
    spec: policy.spec,
  }));
  peerAuthentications.forEach((peerAuthentication, index) => objects.push({
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    metadata: { ...meta(`peer-${index}`, peerAuthentication.namespace, peerAuthentication.enforce ? { 'ambit.dev/enforce': 'true' } : {}), ...(peerAuthentication.createdMs === undefined ? {} : { createdMs: peerAuthentication.createdMs }) },
    source: { file: 'generated.yaml', line: 100 + index },
    spec: peerAuthentication.spec,
  }));
  return objects;
}

// ---- arbitraries: requests ----

interface Probe {
  readonly destination: ReferenceDestination;
  readonly request: ReferenceRequest;
  readonly moment: Moment;
}

const httpArb: fc.Arbitrary<ReferenceHttp> = fc.record({
  method: fc.constantFrom(...METHODS),
  path: fc.constantFrom(...PATHS),
  host: fc.constantFrom(...HOSTS),
  user: fc.option(fc.constantFrom('alice', 'bob', 'mallory', ''), { nil: undefined }),
  env: fc.option(fc.constantFrom('prod', 'dev'), { nil: undefined }),
  // The remote IP (Istio's, Envoy's with no trusted hops): the last element when it is an address, else the source's.
  forwardedFor: fc.option(fc.constantFrom(...SOURCE_IPS, '203.0.113.9, 10.0.1.7', '10.0.0.5, not-an-address', ' 2001:db8::7 ', ''), { nil: undefined }),
}).map(({ method, path, host, user, env, forwardedFor }) => {
  const headers: Record<string, string> = {};
  if (user !== undefined) headers['x-user'] = user;
  if (env !== undefined) headers['x-env'] = env;
  if (forwardedFor !== undefined) headers['x-forwarded-for'] = forwardedFor;
  return { method, path, host, headers };
});

const probeArb: fc.Arbitrary<Probe> = fc.record({
  namespace: fc.constantFrom(ROOT, 'shop', 'shop', 'front'),
  labels: fc.constantFrom(...LABELS),
  principal: fc.option(fc.constantFrom(...PRINCIPALS), { nil: null, freq: 4 }),
  sourceIp: fc.option(fc.constantFrom(...SOURCE_IPS), { nil: null, freq: 8 }),
  destinationIp: fc.option(fc.constantFrom(...DESTINATION_IPS), { nil: null, freq: 8 }),
  port: fc.constantFrom(...PORTS),
  moment: fc.constantFrom<Moment>('tcp', 'connect', 'request'),
  http: httpArb,
}).map((p) => ({
  destination: { namespace: p.namespace, labels: p.labels },
  moment: p.moment,
  request: {
    principal: p.principal,
    // The proxy reads the peer namespace from its principal; plaintext has none.
    namespace: p.principal === null ? null : (/\/ns\/([^/]+)\//.exec(p.principal)?.[1] ?? null),
    sourceIp: p.sourceIp,
    destinationIp: p.destinationIp,
    port: p.port,
    http: p.moment === 'request' ? p.http : null,
  },
}));

const worldArb = fc.record({
  policies: fc.array(policyArb, { maxLength: 5 }),
  peerAuthentications: fc.array(peerAuthenticationArb, { maxLength: 3 }),
  probes: fc.array(probeArb, { minLength: 1, maxLength: 8 }),
});

/**
 * Probes the rule index's harder paths: principals no policy names, a namespace that does not follow from the
 * principal (a dry run may say anything), and enough policies that a workload's terms fill several 32-bit words.
 */
const unnamedProbeArb: fc.Arbitrary<Probe> = fc.record({
  probe: probeArb,
  principal: fc.option(fc.constantFrom(...UNNAMED_PRINCIPALS, ...PRINCIPALS), { nil: null, freq: 6 }),
  namespace: fc.option(fc.constantFrom('front', 'shop', 'ops', 'zz', ''), { nil: null, freq: 6 }),
}).map(({ probe, principal, namespace }) => ({ ...probe, request: { ...probe.request, principal, namespace } }));

const crowdedWorldArb = fc.record({
  policies: fc.array(policyArb, { minLength: 30, maxLength: 60 }),
  peerAuthentications: fc.array(peerAuthenticationArb, { maxLength: 2 }),
  probes: fc.array(unnamedProbeArb, { minLength: 4, maxLength: 12 }),
});

// ---- the properties ----

type Outcome = 'allow-default' | 'allow-rule' | 'allow-deferred' | 'deny-rule' | 'deny-no-match' | 'deny-strict';

function outcomeOf(decision: { allow: boolean; policy: string | null; rule: number | null; deferred: boolean }): Outcome {
  if (decision.allow) return decision.deferred ? 'allow-deferred' : decision.policy === null ? 'allow-default' : 'allow-rule';
  if (decision.rule !== null) return 'deny-rule';
  return decision.policy === null ? 'deny-no-match' : 'deny-strict';
}

function sortViolations<T extends { policy: string; port: number | null }>(list: readonly T[]): T[] {
  return [...list].sort((a, b) => (a.policy === b.policy ? (a.port ?? 0) - (b.port ?? 0) : a.policy < b.policy ? -1 : 1));
}

/** Decides one probe both ways, expects the same answer, and counts the reference's outcome. */
function expectAgreement(loaded: ReturnType<typeof loadObjects>, { destination, request, moment }: Probe, outcomes: Map<Outcome, number>): void {
  const compiled = compiledDecision(loaded, destination, request, moment);
  const reference = referenceDecide(loaded.world, destination, request, moment);
  expect({ allow: compiled.allow, policy: compiled.policy, rule: compiled.rule, deferred: compiled.deferred }, JSON.stringify({ destination, request, moment })).toEqual(reference);
  outcomes.set(outcomeOf(reference), (outcomes.get(outcomeOf(reference)) ?? 0) + 1);
}

describe('the compiled matcher and the reference evaluator', () => {
  it('agree on the decision, the deciding policy and rule, and deferral, for random policies and requests', () => {
    const outcomes = new Map<Outcome, number>();
    let probes = 0;
    fc.assert(
      fc.property(worldArb, ({ policies, peerAuthentications, probes: generated }) => {
        const loaded = loadObjects(objectsOf(policies, peerAuthentications));
        for (const probe of generated) {
          expectAgreement(loaded, probe, outcomes);
          probes++;
        }
      }),
      { numRuns: 6000 },
    );
    // The property says something only if every kind of outcome actually happened.
    for (const outcome of ['allow-default', 'allow-rule', 'allow-deferred', 'deny-rule', 'deny-no-match', 'deny-strict'] as const) {
      expect(outcomes.get(outcome) ?? 0, `${outcome} of ${probes} probes`).toBeGreaterThan(probes / 200);
    }
  });

  it('agree with many policies per workload, and for principals and namespaces no policy names', () => {
    const outcomes = new Map<Outcome, number>();
    let probes = 0;
    let wide = 0;
    fc.assert(
      fc.property(crowdedWorldArb, ({ policies, peerAuthentications, probes: generated }) => {
        const loaded = loadObjects(objectsOf(policies, peerAuthentications));
        for (const probe of generated) {
          expectAgreement(loaded, probe, outcomes);
          probes++;
          const matcher = matcherFor(loaded, probe.destination);
          if (matcher.deny.length + matcher.allow.length > 32) wide++;
        }
      }),
      { numRuns: 400 },
    );
    for (const outcome of ['allow-rule', 'allow-deferred', 'deny-rule', 'deny-no-match'] as const) {
      expect(outcomes.get(outcome) ?? 0, `${outcome} of ${probes} probes`).toBeGreaterThan(probes / 200);
    }
    // Lists longer than one mask word were exercised.
    expect(wide, `of ${probes} probes`).toBeGreaterThan(probes / 40);
  });

  it('agree when principals, namespaces, methods, IP blocks, paths and hosts are too many to index and are checked rule by rule', () => {
    const outcomes = new Map<Outcome, number>();
    const saved = indexLimits.maxKeyMaskInts;
    indexLimits.maxKeyMaskInts = 0;
    try {
      fc.assert(
        fc.property(crowdedWorldArb, ({ policies, peerAuthentications, probes: generated }) => {
          const loaded = loadObjects(objectsOf(policies, peerAuthentications));
          for (const probe of generated) expectAgreement(loaded, probe, outcomes);
        }),
        { numRuns: 300 },
      );
    } finally {
      indexLimits.maxKeyMaskInts = saved;
    }
    for (const outcome of ['allow-rule', 'allow-deferred', 'deny-rule', 'deny-no-match'] as const) expect(outcomes.get(outcome) ?? 0, outcome).toBeGreaterThan(0);
  });

  // Rules here have at most two sources and two operations: on a tie, each run splits along the side it is told.
  for (const alongSources of [true, false]) {
    it(`agree when rules have too many (source, operation) pairs to expand and the ${alongSources ? 'operations are' : 'sources are'} checked in full`, () => {
      const outcomes = new Map<Outcome, number>();
      const saved = { ...indexLimits };
      indexLimits.maxTermsPerRule = 1;
      indexLimits.termsAlongSourcesOnTie = alongSources;
      try {
        fc.assert(
          fc.property(worldArb, ({ policies, peerAuthentications, probes: generated }) => {
            const loaded = loadObjects(objectsOf(policies, peerAuthentications));
            for (const probe of generated) expectAgreement(loaded, probe, outcomes);
          }),
          { numRuns: 300 },
        );
      } finally {
        Object.assign(indexLimits, saved);
      }
      for (const outcome of ['allow-rule', 'allow-deferred', 'deny-rule', 'deny-no-match'] as const) expect(outcomes.get(outcome) ?? 0, outcome).toBeGreaterThan(0);
    });
  }

  it('agree on which policies apply to a workload (scope), and explain names the deciding rule as matched', () => {
    fc.assert(
      fc.property(worldArb, ({ policies, peerAuthentications, probes: generated }) => {
        const loaded = loadObjects(objectsOf(policies, peerAuthentications));
        for (const { destination, request, moment } of generated) {
          const explanation = explain(matcherFor(loaded, destination), contextOf(request), moment);
          expect(explanation.map((entry) => entry.policy)).toEqual(applicablePolicies(loaded.world, destination).map((policy) => `${policy.namespace}/${policy.name}`));
          const decision = compiledDecision(loaded, destination, request, moment);
          if (decision.policy !== null && decision.rule !== null && !decision.deferred) {
            expect(explanation.find((entry) => entry.policy === decision.policy)?.rules[decision.rule]?.matched).toBe(true);
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it('agree on the PeerAuthentications reported for trying to lower an enforced mesh-wide mode', () => {
    const enforcedWorld = fc.record({
      floor: fc.constantFrom<MtlsMode>('STRICT', 'PERMISSIVE'),
      others: fc.array(peerAuthenticationArb, { maxLength: 4 }),
    }).map(({ floor, others }) => [{ namespace: ROOT, enforce: true, createdMs: undefined, spec: { mtls: floor, portLevelMtls: new Map() } }, ...others]);
    let reported = 0;
    fc.assert(
      fc.property(enforcedWorld, (peerAuthentications) => {
        const loaded = loadObjects(objectsOf([], peerAuthentications));
        const expected = sortViolations(enforcementViolations(loaded.world));
        reported += expected.length;
        expect(sortViolations(loaded.compiled.violations.map((v) => ({ ...v })))).toEqual(expected);
      }),
      { numRuns: 500 },
    );
    expect(reported).toBeGreaterThan(50);
  });
});

// ---- value matchers against plain compares ----

const SHORT = (alphabet: string) => fc.string({ unit: fc.constantFrom(...alphabet.split('')), minLength: 0, maxLength: 4 });
const patternArb = (alphabet: string) => fc.oneof(
  SHORT(alphabet).filter((text) => text.length > 0),
  SHORT(alphabet).map((text) => `${text}*`),
  SHORT(alphabet).filter((text) => text.length > 0).map((text) => `*${text}`),
  fc.constant('*'),
);

function bitsOf(ip: IpAddress): string {
  if (ip.family === 4) return ip.v4.toString(2).padStart(32, '0');
  let bits = '';
  for (const word of ip.v6 as Uint32Array) bits += word.toString(2).padStart(32, '0');
  return bits;
}

describe('value matchers', () => {
  it('StringMatcher agrees with a plain compare for exact, prefix, suffix and presence patterns', () => {
    fc.assert(
      fc.property(fc.array(patternArb('ab/'), { minLength: 1, maxLength: 4 }), SHORT('ab/'), (patterns, value) => {
        expect(new StringMatcher(patterns).matches(value)).toBe(patterns.some((pattern) => matchesPattern(pattern, value)));
      }),
      { numRuns: 2000 },
    );
  });

  it('a case-insensitive StringMatcher (hosts) agrees with a compare of lower-cased strings', () => {
    fc.assert(
      fc.property(fc.array(patternArb('aAbB.'), { minLength: 1, maxLength: 3 }), SHORT('aAbB.'), (patterns, value) => {
        // Callers give the matcher a lower-cased value (HttpRequestFacts.host is lower-case).
        expect(new StringMatcher(patterns, true).matches(value.toLowerCase())).toBe(patterns.some((pattern) => matchesPattern(pattern.toLowerCase(), value.toLowerCase())));
      }),
      { numRuns: 1000 },
    );
  });

  it('MethodMatcher agrees with a plain compare, standard and extension methods alike', () => {
    const method = fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'PURGE', 'get', 'PROPFIND');
    const methodPattern = fc.oneof(method, fc.constantFrom('P*', '*T', 'G*', '*ND', '*', 'PRO*'));
    fc.assert(
      fc.property(fc.array(methodPattern, { minLength: 1, maxLength: 4 }), method, (patterns, value) => {
        expect(new MethodMatcher(patterns).matches(value)).toBe(patterns.some((pattern) => matchesPattern(pattern, value)));
      }),
      { numRuns: 1000 },
    );
  });

  it('parseIp reads every IPv4 and IPv6 spelling as the same bits as a plain parser', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (address) => {
        const parsed = parseIp(address);
        expect(parsed).not.toBeNull();
        expect(bitsOf(parsed as IpAddress)).toBe(addressBits(address));
      }),
      { numRuns: 2000 },
    );
  });

  it('CidrSet contains exactly the addresses whose first prefix bits equal the block\'s', () => {
    // An address one flipped bit away from the block's network: inside exactly when the bit is past the prefix.
    const v4 = fc.record({ bytes: fc.array(fc.nat(255), { minLength: 4, maxLength: 4 }), prefix: fc.integer({ min: 0, max: 32 }), flip: fc.option(fc.integer({ min: 0, max: 31 }), { nil: undefined }) })
      .map(({ bytes, prefix, flip }) => {
        const address = [...bytes];
        if (flip !== undefined) address[flip >> 3] = (address[flip >> 3] as number) ^ (0x80 >> (flip & 7));
        return { block: `${bytes.join('.')}/${prefix}`, address: address.join('.') };
      });
    const v6 = fc.record({ groups: fc.array(fc.nat(0xffff), { minLength: 8, maxLength: 8 }), prefix: fc.integer({ min: 0, max: 128 }), flip: fc.option(fc.integer({ min: 0, max: 127 }), { nil: undefined }) })
      .map(({ groups, prefix, flip }) => {
        const address = [...groups];
        if (flip !== undefined) address[flip >> 4] = (address[flip >> 4] as number) ^ (0x8000 >> (flip & 15));
        const text = (words: number[]) => new URL(`http://[${words.map((word) => word.toString(16)).join(':')}]`).hostname.slice(1, -1);
        return { block: `${text(groups)}/${prefix}`, address: text(address) };
      });
    fc.assert(
      fc.property(fc.oneof(v4, v6), ({ block, address }) => {
        let canonical: string;
        try {
          canonical = canonicalIpBlock(block);
        } catch {
          return; // an IPv4-mapped block shorter than /96: refused at load
        }
        expect(new CidrSet([canonical]).contains(parseIp(address) as IpAddress)).toBe(blockContains(canonical, address));
        expect(blockContains(canonical, address)).toBe(blockContains(block, address));
      }),
      { numRuns: 3000 },
    );
  });
});

// ---- parse/format round trips ----

function policyDocument(name: string, policy: GeneratedPolicy): unknown {
  const rules = policy.spec.rules.map((rule) => ({
    from: rule.from?.map((source) => ({ source })),
    to: rule.to?.map((operation) => ({ operation: { ...operation, ports: operation.ports?.map(String), notPorts: operation.notPorts?.map(String) } })),
    when: rule.when?.map((condition) => ({ key: condition.key, values: condition.values, notValues: condition.notValues })),
  }));
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace: policy.namespace },
    spec: { selector: policy.spec.selector === undefined ? undefined : { matchLabels: policy.spec.selector }, action: policy.spec.action, rules },
  };
}

function peerAuthenticationDocument(name: string, peerAuthentication: GeneratedPeerAuthentication): unknown {
  const { selector, mtls, portLevelMtls } = peerAuthentication.spec;
  return {
    apiVersion: 'security.istio.io/v1',
    kind: 'PeerAuthentication',
    metadata: {
      name,
      namespace: peerAuthentication.namespace,
      annotations: peerAuthentication.enforce ? { 'ambit.dev/enforce': 'true' } : undefined,
      creationTimestamp: peerAuthentication.createdMs === undefined ? undefined : new Date(peerAuthentication.createdMs).toISOString(),
    },
    spec: {
      selector: selector === undefined ? undefined : { matchLabels: selector },
      mtls: { mode: mtls },
      portLevelMtls: portLevelMtls.size === 0 ? undefined : Object.fromEntries([...portLevelMtls].map(([port, mode]) => [String(port), { mode }])),
    },
  };
}

describe('policies written as YAML', () => {
  it('load back as the same AuthorizationPolicy spec', () => {
    fc.assert(
      fc.property(policyArb, (policy) => {
        const [object] = parseConfigText(stringify(policyDocument('generated', policy)), 'generated.yaml');
        expect(object?.kind).toBe('AuthorizationPolicy');
        expect(object?.spec).toEqual(policy.spec);
      }),
      { numRuns: 1000 },
    );
  });

  it('load back as the same PeerAuthentication spec', () => {
    fc.assert(
      fc.property(peerAuthenticationArb, (peerAuthentication) => {
        const [object] = parseConfigText(stringify(peerAuthenticationDocument('generated', peerAuthentication)), 'generated.yaml');
        expect(object?.kind).toBe('PeerAuthentication');
        expect(object?.spec).toEqual(peerAuthentication.spec);
      }),
      { numRuns: 500 },
    );
  });

  it('canonicalIpBlock is idempotent and keeps the set of addresses a block holds', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4().map((ip) => ({ ip, max: 32 })), fc.ipV6().map((ip) => ({ ip, max: 128 }))).chain(({ ip, max }) => fc.tuple(fc.constant(ip), fc.integer({ min: 0, max }))), ([ip, prefix]) => {
        let canonical: string;
        try {
          canonical = canonicalIpBlock(`${ip}/${prefix}`);
        } catch {
          return;
        }
        expect(canonicalIpBlock(canonical)).toBe(canonical);
        expect(blockContains(canonical, ip)).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });
});
