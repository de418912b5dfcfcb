// The authorization corpus: Istio's documented semantics written down as cases, one per behaviour, each a set of
// YAML policies, one request at one moment, and the expected decision with the deciding policy and rule.
// Sources: https://istio.io/latest/docs/reference/config/security/authorization-policy/ (fields, match kinds,
// DENY before ALLOW, empty rules), https://istio.io/latest/docs/concepts/security/#authorization (scopes, implicit
// enablement), https://istio.io/latest/docs/reference/config/security/peer_authentication/ (modes, precedence,
// portLevelMtls), and ambit's additions from issue 5 (moments, the ambit.dev/enforce floor).
// Each case is also run through the reference evaluator (reference.ts), which must agree.
import { describe, expect, it } from 'vitest';
import { explain } from '../../../src/authz/explain.ts';
import { compiledDecision, contextOf, loadYaml, matcherFor } from './harness.ts';
import { enforcementViolations, referenceDecide } from './reference.ts';
import type { Moment, ReferenceDestination, ReferenceHttp, ReferenceRequest } from './reference.ts';

// ---- vocabulary ----

const CLIENT = 'cluster.local/ns/front/sa/client';
const ADMIN = 'cluster.local/ns/ops/sa/admin';
const FOREIGN = 'other.example/ns/front/sa/client';
const MESH = 'istio-system/default';

function doc(kind: string, ref: string, spec: string, annotations?: Record<string, string>): string {
  const [namespace, name] = ref.split('/') as [string, string];
  const lines = ['apiVersion: security.istio.io/v1', `kind: ${kind}`, 'metadata:', `  name: ${name}`, `  namespace: ${namespace}`];
  if (annotations !== undefined) {
    lines.push('  annotations:');
    for (const [key, value] of Object.entries(annotations)) lines.push(`    ${key}: "${value}"`);
  }
  lines.push(`spec: ${spec}`);
  return lines.join('\n');
}

/** An AuthorizationPolicy `namespace/name` whose spec is written in YAML flow style. */
const ap = (ref: string, spec: string) => doc('AuthorizationPolicy', ref, spec);
/** A PeerAuthentication. */
const pa = (ref: string, spec: string, annotations?: Record<string, string>) => doc('PeerAuthentication', ref, spec, annotations);
const ENFORCE = { 'ambit.dev/enforce': 'true' };
/** The same document with metadata.creationTimestamp. */
const created = (document: string, timestamp: string) => document.replace(/^( {2}namespace: .*)$/m, `$1\n  creationTimestamp: "${timestamp}"`);
const strictMesh = pa(MESH, '{mtls: {mode: STRICT}}');
const enforcedStrictMesh = pa(MESH, '{mtls: {mode: STRICT}}', ENFORCE);

interface RequestSpec {
  principal?: string | null;
  namespace?: string | null;
  sourceIp?: string | null;
  destinationIp?: string | null;
  port?: number;
  http?: Partial<ReferenceHttp>;
}

interface Violation {
  policy: string;
  port: number | null;
  attempted: string;
  enforced: string;
  floor: string;
}

interface Case {
  name: string;
  policies: string[];
  /** MeshConfig rootNamespace; istio-system when absent. */
  root?: string;
  /** Default: namespace shop, labels {app: web}. */
  destination?: ReferenceDestination;
  request?: RequestSpec;
  /** Default: 'request' when the request has HTTP facts, else 'tcp'. */
  moment?: Moment;
  expect: 'ALLOW' | 'DENY';
  /** The deciding policy `ns/name` (a PeerAuthentication for a STRICT refusal); null = a default decided. */
  by?: string | null;
  rule?: number | null;
  deferred?: boolean;
  /** compileAuthorization(...).violations, in any order. */
  violations?: Violation[];
}

const PLAINTEXT: RequestSpec = { principal: null };
const GET = (path = '/', extra: Partial<ReferenceHttp> = {}): RequestSpec => ({ http: { method: 'GET', path, ...extra } });
const as = (principal: string | null, more: RequestSpec = {}): RequestSpec => ({ principal, ...more });

const cases: Case[] = [
  // ---- actions and defaults ----
  { name: 'allows when no policy applies to the workload', policies: [], expect: 'ALLOW' },
  { name: 'allows when the only policy is a DENY that does not match', policies: [ap('shop/deny-admin', `{action: DENY, rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'ALLOW' },
  { name: 'denies when a DENY rule matches, naming the policy and rule', policies: [ap('shop/deny-client', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], expect: 'DENY', by: 'shop/deny-client', rule: 0 },
  { name: 'denies everything with a DENY policy whose rule is empty ({})', policies: [ap('shop/deny-all', '{action: DENY, rules: [{}]}')], expect: 'DENY', by: 'shop/deny-all', rule: 0 },
  { name: 'allows everything with an ALLOW policy whose rule is empty ({})', policies: [ap('shop/allow-all', '{action: ALLOW, rules: [{}]}')], expect: 'ALLOW', by: 'shop/allow-all', rule: 0 },
  { name: 'denies everything with an ALLOW policy that has no rules (it allows nothing)', policies: [ap('shop/allow-nothing', '{}')], expect: 'DENY' },
  { name: 'denies with an ALLOW policy whose spec is absent altogether', policies: ['apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: shop}'], expect: 'DENY' },
  { name: 'treats an absent action as ALLOW', policies: [ap('shop/implicit', '{rules: [{}]}')], expect: 'ALLOW', by: 'shop/implicit', rule: 0 },
  { name: 'denies when ALLOW policies apply and none matches', policies: [ap('shop/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'DENY' },
  {
    name: 'allows by whichever ALLOW policy matches among several',
    policies: [ap('shop/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`), ap('shop/allow-client', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)],
    expect: 'ALLOW', by: 'shop/allow-client', rule: 0,
  },
  {
    name: 'reports the index of the matching rule within its policy',
    policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}, {from: [{source: {namespaces: [ops]}}]}, {from: [{source: {principals: [${CLIENT}]}}]}]}`)],
    expect: 'ALLOW', by: 'shop/allow', rule: 2,
  },
  { name: 'lets a matching DENY win over a matching ALLOW', policies: [ap('shop/allow-all', '{rules: [{}]}'), ap('shop/deny-client', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], expect: 'DENY', by: 'shop/deny-client', rule: 0 },
  { name: 'lets a namespace DENY win over a mesh-wide ALLOW', policies: [ap('istio-system/allow-all', '{rules: [{}]}'), ap('shop/deny-all', '{action: DENY, rules: [{}]}')], expect: 'DENY', by: 'shop/deny-all', rule: 0 },
  { name: 'allows by a matching ALLOW when the DENY beside it does not match', policies: [ap('shop/allow-all', '{rules: [{}]}'), ap('shop/deny-admin', `{action: DENY, rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'ALLOW', by: 'shop/allow-all', rule: 0 },
  { name: 'never decides with AUDIT: a matching AUDIT policy alone allows by default', policies: [ap('shop/audit-all', '{action: AUDIT, rules: [{}]}')], expect: 'ALLOW' },
  { name: 'never decides with AUDIT: an ALLOW policy beside it must still match', policies: [ap('shop/audit-all', '{action: AUDIT, rules: [{}]}'), ap('shop/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'DENY' },
  { name: 'does not count an AUDIT policy as an ALLOW policy', policies: [ap('shop/audit-admin', `{action: AUDIT, rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'ALLOW' },
  {
    name: 'counts an ALLOW policy without rules as present: another ALLOW must match, and does',
    policies: [ap('shop/allow-nothing', '{}'), ap('shop/allow-client', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)],
    expect: 'ALLOW', by: 'shop/allow-client', rule: 0,
  },
  { name: 'counts an ALLOW policy without rules as present: nothing else matching, it denies', policies: [ap('shop/allow-nothing', '{}'), ap('shop/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'DENY' },
  { name: 'names the first matching DENY rule when several match', policies: [ap('shop/deny', `{action: DENY, rules: [{to: [{operation: {ports: ["9090"]}}]}, {from: [{source: {namespaces: [front]}}]}, {}]}`)], expect: 'DENY', by: 'shop/deny', rule: 1 },

  // ---- scopes ----
  { name: 'applies a root-namespace policy without selector to a workload of any namespace', policies: [ap('istio-system/deny-all', '{action: DENY, rules: [{}]}')], expect: 'DENY', by: 'istio-system/deny-all', rule: 0 },
  { name: 'applies a root-namespace policy without selector to a workload of another namespace too', policies: [ap('istio-system/deny-all', '{action: DENY, rules: [{}]}')], destination: { namespace: 'front', labels: { app: 'api' } }, expect: 'DENY', by: 'istio-system/deny-all', rule: 0 },
  { name: 'applies a root-namespace policy with a selector to the workloads it selects in any namespace', policies: [ap('istio-system/deny-web', '{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}')], expect: 'DENY', by: 'istio-system/deny-web', rule: 0 },
  { name: 'does not apply a root-namespace policy with a selector to workloads it does not select', policies: [ap('istio-system/deny-web', '{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'db' } }, expect: 'ALLOW' },
  { name: 'applies a namespace policy without selector to every workload of its namespace', policies: [ap('shop/deny-all', '{action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'db' } }, expect: 'DENY', by: 'shop/deny-all', rule: 0 },
  { name: 'applies a selector policy to the workload it selects', policies: [ap('shop/deny-web', '{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}')], expect: 'DENY', by: 'shop/deny-web', rule: 0 },
  { name: 'ignores a selector policy for a workload it does not select', policies: [ap('shop/deny-web', '{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'db' } }, expect: 'ALLOW' },
  { name: 'needs every label of a selector: one differing label and it does not apply', policies: [ap('shop/deny-v2', '{selector: {matchLabels: {app: web, version: v2}}, action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'web', version: 'v1' } }, expect: 'ALLOW' },
  { name: 'applies a selector whose labels are a subset of the workload labels', policies: [ap('shop/deny-v2', '{selector: {matchLabels: {app: web, version: v2}}, action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'web', version: 'v2', team: 'a' } }, expect: 'DENY', by: 'shop/deny-v2', rule: 0 },
  { name: 'never applies a policy of another namespace, even when its selector matches', policies: [ap('front/deny-web', '{selector: {matchLabels: {app: web}}, action: DENY, rules: [{}]}')], expect: 'ALLOW' },
  { name: 'an ALLOW policy of another namespace does not make ALLOW policies present here', policies: [ap('front/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'ALLOW' },
  { name: 'a mesh-wide ALLOW makes ALLOW policies present for every workload', policies: [ap('istio-system/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`)], expect: 'DENY' },
  {
    name: 'either a mesh-wide or a namespace ALLOW may allow',
    policies: [ap('istio-system/allow-admin', `{rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`), ap('shop/allow-client', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)],
    expect: 'ALLOW', by: 'shop/allow-client', rule: 0,
  },
  { name: 'applies root-namespace policies to workloads of the root namespace itself', policies: [ap('istio-system/deny-all', '{action: DENY, rules: [{}]}')], destination: { namespace: 'istio-system', labels: { app: 'gateway' } }, expect: 'DENY', by: 'istio-system/deny-all', rule: 0 },
  { name: 'uses the root namespace the MeshConfig names', root: 'mesh-root', policies: [ap('mesh-root/deny-all', '{action: DENY, rules: [{}]}')], expect: 'DENY', by: 'mesh-root/deny-all', rule: 0 },
  { name: 'treats istio-system as an ordinary namespace when the MeshConfig names another root', root: 'mesh-root', policies: [ap('istio-system/deny-all', '{action: DENY, rules: [{}]}')], expect: 'ALLOW' },
  { name: 'reads an empty selector (matchLabels: {}) as every workload of the namespace', policies: [ap('shop/deny-all', '{selector: {matchLabels: {}}, action: DENY, rules: [{}]}')], destination: { namespace: 'shop', labels: { app: 'db' } }, expect: 'DENY', by: 'shop/deny-all', rule: 0 },
  {
    name: 'applies a selector policy and a namespace-wide policy together',
    policies: [ap('shop/allow-web-admin', `{selector: {matchLabels: {app: web}}, rules: [{from: [{source: {principals: [${ADMIN}]}}]}]}`), ap('shop/allow-client', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)],
    expect: 'ALLOW', by: 'shop/allow-client', rule: 0,
  },
  { name: 'names the mesh-wide DENY first when mesh-wide and namespace DENYs both match', policies: [ap('shop/deny-all', '{action: DENY, rules: [{}]}'), ap('istio-system/deny-all', '{action: DENY, rules: [{}]}')], expect: 'DENY', by: 'istio-system/deny-all', rule: 0 },

  // ---- from.source.principals / notPrincipals ----
  { name: 'principals: matches the exact principal', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'principals: does not match a different principal', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], request: as(ADMIN), expect: 'DENY' },
  { name: 'principals: matches by prefix (cluster.local/ns/front/*)', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["cluster.local/ns/front/*"]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'principals: a prefix the principal does not start with does not match', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["cluster.local/ns/ops/*"]}}]}]}')], expect: 'DENY' },
  { name: 'principals: matches by suffix (*/sa/client)', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["*/sa/client"]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'principals: a suffix naming another service account does not match', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["*/sa/admin"]}}]}]}')], expect: 'DENY' },
  { name: 'principals: "*" matches any authenticated peer', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["*"]}}]}]}')], request: as(FOREIGN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'principals: "*" never matches a plaintext connection', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["*"]}}]}]}')], request: PLAINTEXT, expect: 'DENY' },
  { name: 'principals: an exact principal never matches a plaintext connection', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], request: PLAINTEXT, expect: 'DENY' },
  { name: 'principals: matches when any listed principal matches', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${ADMIN}, ${CLIENT}]}}]}]}`)], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'principals: the trust domain is part of the principal', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], request: as(FOREIGN), expect: 'DENY' },
  { name: 'notPrincipals: excludes the listed principal', policies: [ap('shop/allow', `{rules: [{from: [{source: {notPrincipals: [${CLIENT}]}}]}]}`)], expect: 'DENY' },
  { name: 'notPrincipals: matches every other principal', policies: [ap('shop/allow', `{rules: [{from: [{source: {notPrincipals: [${CLIENT}]}}]}]}`)], request: as(ADMIN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'notPrincipals ["*"] in a DENY denies a plaintext connection', policies: [ap('shop/deny-plaintext', '{action: DENY, rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/deny-plaintext', rule: 0 },
  { name: 'notPrincipals ["*"] in a DENY lets an authenticated peer through', policies: [ap('shop/deny-plaintext', '{action: DENY, rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}')], expect: 'ALLOW' },
  { name: 'notPrincipals ["*"] in an ALLOW allows a plaintext connection', policies: [ap('shop/allow-plaintext', '{rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}')], request: PLAINTEXT, expect: 'ALLOW', by: 'shop/allow-plaintext', rule: 0 },
  { name: 'notPrincipals ["*"] in an ALLOW does not allow an authenticated peer', policies: [ap('shop/allow-plaintext', '{rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}')], expect: 'DENY' },
  { name: 'notPrincipals with a prefix: a DENY of every other trust domain denies a foreign peer', policies: [ap('shop/deny-foreign', '{action: DENY, rules: [{from: [{source: {notPrincipals: ["cluster.local/*"]}}]}]}')], request: as(FOREIGN), expect: 'DENY', by: 'shop/deny-foreign', rule: 0 },
  { name: 'notPrincipals with a prefix: a DENY of every other trust domain lets a local peer through', policies: [ap('shop/deny-foreign', '{action: DENY, rules: [{from: [{source: {notPrincipals: ["cluster.local/*"]}}]}]}')], expect: 'ALLOW' },
  { name: 'notPrincipals with a suffix excludes every principal ending so', policies: [ap('shop/allow', '{rules: [{from: [{source: {notPrincipals: ["*/sa/client"]}}]}]}')], request: as(FOREIGN), expect: 'DENY' },

  // ---- from.source.namespaces / notNamespaces ----
  { name: 'namespaces: matches the peer namespace exactly', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: [front]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'namespaces: does not match another namespace', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: [ops]}}]}]}')], expect: 'DENY' },
  { name: 'namespaces: matches by prefix (fro*)', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: ["fro*"]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'namespaces: matches by suffix (*nt)', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: ["*nt"]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'namespaces: a prefix the namespace does not start with does not match', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: ["op*"]}}]}]}')], expect: 'DENY' },
  { name: 'namespaces: "*" matches any authenticated peer', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: ["*"]}}]}]}')], request: as(ADMIN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'namespaces: never match a plaintext connection, which has no namespace', policies: [ap('shop/allow', '{rules: [{from: [{source: {namespaces: ["*"]}}]}]}')], request: PLAINTEXT, expect: 'DENY' },
  { name: 'notNamespaces: a DENY excluding front lets front through', policies: [ap('shop/deny-others', '{action: DENY, rules: [{from: [{source: {notNamespaces: [front]}}]}]}')], expect: 'ALLOW' },
  { name: 'notNamespaces: a DENY excluding front denies ops', policies: [ap('shop/deny-others', '{action: DENY, rules: [{from: [{source: {notNamespaces: [front]}}]}]}')], request: as(ADMIN), expect: 'DENY', by: 'shop/deny-others', rule: 0 },
  { name: 'notNamespaces: a DENY excluding front denies plaintext, which has no namespace', policies: [ap('shop/deny-others', '{action: DENY, rules: [{from: [{source: {notNamespaces: [front]}}]}]}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/deny-others', rule: 0 },

  // ---- from.source.ipBlocks / remoteIpBlocks and their not variants ----
  { name: 'ipBlocks: matches a source address inside the CIDR', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.0/16]}}]}]}')], request: { sourceIp: '10.0.3.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ipBlocks: does not match a source address outside the CIDR', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.0/16]}}]}]}')], request: { sourceIp: '10.9.0.5' }, expect: 'DENY' },
  { name: 'ipBlocks: matches a single address', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.5]}}]}]}')], request: { sourceIp: '10.0.0.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ipBlocks: a single address does not match its neighbour', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.5]}}]}]}')], request: { sourceIp: '10.0.0.6' }, expect: 'DENY' },
  { name: 'ipBlocks: matches an IPv6 source inside an IPv6 CIDR', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: ["2001:db8::/32"]}}]}]}')], request: { sourceIp: '2001:db8:7::7' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ipBlocks: an IPv4 block never matches an IPv6 source', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [0.0.0.0/0]}}]}]}')], request: { sourceIp: '2001:db8::7' }, expect: 'DENY' },
  { name: 'ipBlocks: reads an IPv4-mapped IPv6 source as its IPv4 address', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}')], request: { sourceIp: '::ffff:10.0.0.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ipBlocks: a block written with host bits set matches as its network', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [10.0.0.1/24]}}]}]}')], request: { sourceIp: '10.0.0.200' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ipBlocks: never match a connection whose source address is unknown', policies: [ap('shop/allow', '{rules: [{from: [{source: {ipBlocks: [0.0.0.0/0]}}]}]}')], request: { sourceIp: null }, expect: 'DENY' },
  { name: 'notIpBlocks: a DENY outside 10/8 lets 10.0.0.5 through', policies: [ap('shop/deny-outside', '{action: DENY, rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]}')], request: { sourceIp: '10.0.0.5' }, expect: 'ALLOW' },
  { name: 'notIpBlocks: a DENY outside 10/8 denies 192.168.1.1', policies: [ap('shop/deny-outside', '{action: DENY, rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]}')], request: { sourceIp: '192.168.1.1' }, expect: 'DENY', by: 'shop/deny-outside', rule: 0 },
  { name: 'remoteIpBlocks: per request, matches the client address (the source address: nothing proxies in front)', policies: [ap('shop/allow', '{rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5', ...GET() }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'remoteIpBlocks: per request, does not match a client outside the block', policies: [ap('shop/allow', '{rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.1.5', ...GET() }, expect: 'DENY' },
  { name: 'notRemoteIpBlocks: per request, a DENY outside the block denies a client outside it', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.1.5', ...GET() }, expect: 'DENY', by: 'shop/deny-remote', rule: 0 },
  { name: 'notRemoteIpBlocks: per request, a DENY outside the block lets a client inside it through', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5', ...GET() }, expect: 'ALLOW' },
  // The remote IP is an HTTP field (Istio reads it from X-Forwarded-For; istiod hands it to ztunnel as L7).
  { name: 'remoteIpBlocks: at tcp, an ALLOW rule with them matches nothing, even for a client inside the block', policies: [ap('shop/allow', '{rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'DENY' },
  { name: 'remoteIpBlocks: at tcp, a DENY rule is applied with them ignored (a client outside the block is denied too)', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {remoteIpBlocks: [10.9.0.0/16]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'DENY', by: 'shop/deny-remote', rule: 0 },
  { name: 'notRemoteIpBlocks: at tcp, a DENY rule is applied with them ignored (a client inside the block is denied too)', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'DENY', by: 'shop/deny-remote', rule: 0 },
  { name: 'remoteIpBlocks: at tcp, the L4 part of a DENY rule with them must still match', policies: [ap('shop/deny-remote', `{action: DENY, rules: [{from: [{source: {principals: [${ADMIN}], remoteIpBlocks: [10.9.0.0/16]}}]}]}`)], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'ALLOW' },
  { name: 'remoteIpBlocks: at tcp, ipBlocks beside them still decide a DENY', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {ipBlocks: [10.9.0.0/16], notRemoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'ALLOW' },
  { name: 'remoteIpBlocks: at connect, an ALLOW rule with them opens the connection, deferred to each request', policies: [ap('shop/allow', '{rules: [{from: [{source: {remoteIpBlocks: [10.9.0.0/16]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'connect', expect: 'ALLOW', by: 'shop/allow', rule: 0, deferred: true },
  { name: 'remoteIpBlocks: at connect, a DENY rule with them waits for the request', policies: [ap('shop/deny-remote', '{action: DENY, rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/24]}}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'connect', expect: 'ALLOW' },

  // ---- to.operation.ports / notPorts ----
  { name: 'ports: matches the destination port on a plain TCP connection', policies: [ap('shop/allow', '{rules: [{to: [{operation: {ports: ["8080"]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ports: does not match another port', policies: [ap('shop/allow', '{rules: [{to: [{operation: {ports: ["8080"]}}]}]}')], request: { port: 9090 }, expect: 'DENY' },
  { name: 'ports: accepts ports written as YAML numbers', policies: [ap('shop/allow', '{rules: [{to: [{operation: {ports: [8080, 9090]}}]}]}')], request: { port: 9090 }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'notPorts: excludes the listed port', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notPorts: ["8080"]}}]}]}')], expect: 'DENY' },
  { name: 'notPorts: matches every other port', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notPorts: ["8080"]}}]}]}')], request: { port: 9090 }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'ports: a DENY on one port lets the others through', policies: [ap('shop/deny-debug', '{action: DENY, rules: [{to: [{operation: {ports: ["9090"]}}]}]}')], expect: 'ALLOW' },

  // ---- to.operation.hosts / notHosts ----
  { name: 'hosts: matches the request host exactly', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  // Istio compares the Host exactly as sent: `web.shop` misses `web.shop:8080` (its docs: write `web.shop:*` too).
  // Where that would let a request through, ambit also reads the Host without its port: a DENY's hosts, an ALLOW's notHosts.
  { name: 'hosts: an ALLOW does not match a Host that adds a port (web.shop, web.shop:8080), as Istio', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop:8080' }), expect: 'DENY' },
  { name: 'hosts: an ALLOW written with a port wildcard matches a Host with a port (web.shop:*, web.shop:8080)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [web.shop, "web.shop:*"]}}]}]}')], request: GET('/', { host: 'web.shop:8080' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'hosts: a DENY also matches a Host that adds a port (web.shop, web.shop:8080): no bypass by naming the port', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop:8080' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'hosts: a DENY does not match another host with a port (web.shop, api.shop:8080)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'api.shop:8080' }), expect: 'ALLOW' },
  { name: 'hosts: a DENY also matches a Host with an empty port, the default one (web.shop, web.shop:)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop:' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'hosts: an ALLOW does not match a Host with an empty port (web.shop, web.shop:), as Istio', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop:' }), expect: 'DENY' },
  { name: 'notHosts: an ALLOW excludes the host with an empty port too (admin.shop, admin.shop:)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notHosts: [admin.shop]}}]}]}')], request: GET('/', { host: 'admin.shop:' }), expect: 'DENY' },
  { name: 'hosts: a DENY also matches a Host with a trailing dot, the same DNS name (web.shop, web.shop.)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop.' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'hosts: a DENY also matches a Host with a trailing dot and a port (web.shop, web.shop.:8080)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop.:8080' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'hosts: an ALLOW does not match a Host with a trailing dot (web.shop, web.shop.), as Istio', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop.' }), expect: 'DENY' },
  { name: 'notHosts: an ALLOW excludes the host with a trailing dot too (admin.shop, admin.shop.)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notHosts: [admin.shop]}}]}]}')], request: GET('/', { host: 'admin.shop.' }), expect: 'DENY' },
  { name: 'hosts: a DENY reads a port only as digits (web.shop, web.shop:80x)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: [web.shop]}}]}]}')], request: GET('/', { host: 'web.shop:80x' }), expect: 'ALLOW' },
  { name: 'hosts: a DENY on an IPv6 literal matches it with a port ([::1], [::1]:8080)', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {hosts: ["[::1]"]}}]}]}')], request: GET('/', { host: '[::1]:8080' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'notHosts: an ALLOW excludes the host with a port too (admin.shop, admin.shop:8080)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notHosts: [admin.shop]}}]}]}')], request: GET('/', { host: 'admin.shop:8080' }), expect: 'DENY' },
  { name: 'notHosts: a DENY spares only the Host exactly as written (public.shop, public.shop:8080), as Istio', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {notHosts: [public.shop]}}]}]}')], request: GET('/', { host: 'public.shop:8080' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'notHosts: a DENY spares the Host written', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {notHosts: [public.shop]}}]}]}')], request: GET('/', { host: 'public.shop' }), expect: 'ALLOW' },
  { name: 'hosts: a pattern with a port matches only that port (web.shop:8080, web.shop:9090)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["web.shop:8080"]}}]}]}')], request: GET('/', { host: 'web.shop:9090' }), expect: 'DENY' },
  { name: 'hosts: matches case-insensitively', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [WEB.Shop]}}]}]}')], request: GET('/', { host: 'web.shop' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'hosts: does not match another host', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: [api.shop]}}]}]}')], request: GET('/', { host: 'web.shop' }), expect: 'DENY' },
  { name: 'hosts: matches by suffix (*.example.com)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}]}')], request: GET('/', { host: 'api.example.com' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'hosts: the suffix *.example.com does not match example.com itself', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}]}')], request: GET('/', { host: 'example.com' }), expect: 'DENY' },
  { name: 'hosts: a suffix does not match a host that differs inside it (*.example.com, api.exemple.com)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}]}')], request: GET('/', { host: 'api.exemple.com' }), expect: 'DENY' },
  { name: 'hosts: one suffix matches while a longer one sharing its end does not (*.com, *.example.com, api.exemple.com)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*.example.com"]}}]}, {to: [{operation: {hosts: ["*.com"]}}]}]}')], request: GET('/', { host: 'api.exemple.com' }), expect: 'ALLOW', by: 'shop/allow', rule: 1 },
  { name: 'hosts: matches by prefix (api.*)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["api.*"]}}]}]}')], request: GET('/', { host: 'api.example.com' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'hosts: a suffix matches case-insensitively too', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*.EXAMPLE.com"]}}]}]}')], request: GET('/', { host: 'api.example.com' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'hosts: "*" matches any host', policies: [ap('shop/allow', '{rules: [{to: [{operation: {hosts: ["*"]}}]}]}')], request: GET('/', { host: 'anything.internal' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'notHosts: excludes the listed host, case-insensitively', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notHosts: [ADMIN.example.com]}}]}]}')], request: GET('/', { host: 'admin.example.com' }), expect: 'DENY' },
  { name: 'notHosts: matches every other host', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notHosts: [admin.example.com]}}]}]}')], request: GET('/', { host: 'api.example.com' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },

  // ---- to.operation.methods / notMethods ----
  { name: 'methods: matches the request method', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [GET]}}]}]}')], request: GET(), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'methods: does not match another method', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [GET]}}]}]}')], request: { http: { method: 'POST' } }, expect: 'DENY' },
  { name: 'methods: are case-sensitive', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [get]}}]}]}')], request: GET(), expect: 'DENY' },
  { name: 'methods: matches when any listed method matches', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [GET, POST]}}]}]}')], request: { http: { method: 'POST' } }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'methods: matches an extension method', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [PURGE]}}]}]}')], request: { http: { method: 'PURGE' } }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'methods: matches by prefix (P*)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: ["P*"]}}]}]}')], request: { http: { method: 'PATCH' } }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'methods: matches by suffix (*ETE)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: ["*ETE"]}}]}]}')], request: { http: { method: 'DELETE' } }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'methods: "*" matches any method', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: ["*"]}}]}]}')], request: { http: { method: 'OPTIONS' } }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'notMethods: a DENY of all but GET and HEAD denies POST', policies: [ap('shop/read-only', '{action: DENY, rules: [{to: [{operation: {notMethods: [GET, HEAD]}}]}]}')], request: { http: { method: 'POST' } }, expect: 'DENY', by: 'shop/read-only', rule: 0 },
  { name: 'notMethods: a DENY of all but GET and HEAD lets HEAD through', policies: [ap('shop/read-only', '{action: DENY, rules: [{to: [{operation: {notMethods: [GET, HEAD]}}]}]}')], request: { http: { method: 'HEAD' } }, expect: 'ALLOW' },

  // ---- from.source.serviceAccounts / trustDomains (Istio 1.24+), as istiod's generators have Envoy match them ----
  { name: 'serviceAccounts: NS/SA matches that service account', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'serviceAccounts: matches in any trust domain', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], request: as(FOREIGN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'serviceAccounts: does not match another service account', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], request: as(ADMIN), expect: 'DENY' },
  { name: 'serviceAccounts: does not match a name it is the start of', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], request: as('cluster.local/ns/front/sa/client-admin'), expect: 'DENY' },
  { name: 'serviceAccounts: a bare name is in the policy\'s namespace', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [client]}}]}]}')], request: as('cluster.local/ns/shop/sa/client'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'serviceAccounts: a bare name does not match another namespace\'s', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [client]}}]}]}')], expect: 'DENY' },
  { name: 'serviceAccounts: match an ID with other segments around them, as istiod\'s regex does', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], request: as('cluster.local/tenant/ns/front/x/sa/client/k'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'serviceAccounts: need a peer identity', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client]}}]}]}')], request: PLAINTEXT, expect: 'DENY' },
  { name: 'notServiceAccounts: a DENY of every other service account denies another', policies: [ap('shop/deny', '{action: DENY, rules: [{from: [{source: {notServiceAccounts: [front/client]}}]}]}')], request: as(ADMIN), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'notServiceAccounts: a DENY of every other service account lets that one through', policies: [ap('shop/deny', '{action: DENY, rules: [{from: [{source: {notServiceAccounts: [front/client]}}]}]}')], expect: 'ALLOW' },
  { name: 'trustDomains: an exact trust domain matches its peers', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'trustDomains: an exact trust domain does not match another', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]}')], request: as(FOREIGN), expect: 'DENY' },
  { name: 'trustDomains: a suffix matches the end of the trust domain', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: ["*.example"]}}]}]}')], request: as(FOREIGN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'trustDomains: a suffix does not match text of the ID past the trust domain', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: ["*client"]}}]}]}')], expect: 'DENY' },
  { name: 'trustDomains: "*" matches any peer with an identity', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: ["*"]}}]}]}')], request: as(FOREIGN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'trustDomains: "*" does not match a peer without one', policies: [ap('shop/allow', '{rules: [{from: [{source: {trustDomains: ["*"]}}]}]}')], request: PLAINTEXT, expect: 'DENY' },
  { name: 'notTrustDomains: a DENY of every other trust domain denies a foreign peer', policies: [ap('shop/deny', '{action: DENY, rules: [{from: [{source: {notTrustDomains: [cluster.local]}}]}]}')], request: as(FOREIGN), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'trustDomains and serviceAccounts in one source must both hold', policies: [ap('shop/allow', '{rules: [{from: [{source: {serviceAccounts: [front/client], trustDomains: [cluster.local]}}]}]}')], request: as(FOREIGN), expect: 'DENY' },
  { name: 'trustDomains and principals in one source hold together', policies: [ap('shop/allow', '{rules: [{from: [{source: {principals: ["*/ns/front/sa/client"], trustDomains: [other.example]}}]}]}')], request: as(FOREIGN), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when source.serviceAccount: a DENY names the service account', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: source.serviceAccount, values: [ops/admin]}]}]}')], request: as(ADMIN), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when source.trustDomain: notValues keeps a foreign peer out of an ALLOW', policies: [ap('shop/allow', '{rules: [{when: [{key: source.trustDomain, notValues: [other.example]}]}]}')], request: as(FOREIGN), expect: 'DENY' },
  { name: 'when source.trustDomain: notValues admits the others', policies: [ap('shop/allow', '{rules: [{when: [{key: source.trustDomain, notValues: [other.example]}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },

  // ---- to.operation.paths / notPaths ----
  { name: 'paths: matches the exact path', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: [/api/v1]}}]}]}')], request: GET('/api/v1'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: an exact path does not match a longer path', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: [/api/v1]}}]}]}')], request: GET('/api/v1/users'), expect: 'DENY' },
  { name: 'paths: matches by prefix (/api/*)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/*"]}}]}]}')], request: GET('/api/v1/users'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: the prefix /api/* does not match /api', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/*"]}}]}]}')], request: GET('/api'), expect: 'DENY' },
  { name: 'paths: a suffix does not match a path that differs inside it (*.png, /img/logo.pmg)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["*.png"]}}]}]}')], request: GET('/img/logo.pmg'), expect: 'DENY' },
  { name: 'paths: a prefix does not match a path that differs inside it (/api/v1/*, /api/x1/users)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/v1/*"]}}]}]}')], request: GET('/api/x1/users'), expect: 'DENY' },
  { name: 'paths: an exact path does not match a longer or shorter one (/api/v1)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/v1"]}}]}]}')], request: GET('/api/v'), expect: 'DENY' },
  { name: 'paths: matches by suffix (*.png)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["*.png"]}}]}]}')], request: GET('/img/logo.png'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: are case-sensitive', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: [/admin]}}]}]}')], request: GET('/Admin'), expect: 'DENY' },
  // Path templates (Istio 1.23+), as Envoy's uri_template matches them: {*} one segment, {**} the rest.
  { name: 'paths: {*} matches one whole segment', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/{*}/items"]}}]}]}')], request: GET('/api/v2/items'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: {*} does not match two segments', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/{*}/items"]}}]}]}')], request: GET('/api/v2/x/items'), expect: 'DENY' },
  { name: 'paths: {*} does not match an empty segment', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/{*}"]}}]}]}')], request: GET('/api/'), expect: 'DENY' },
  { name: 'paths: {**} matches the rest of the path, any number of segments', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/static/{**}"]}}]}]}')], request: GET('/static/css/site/main.css'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: {**} followed by literal segments matches them at the end', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/{**}/edit"]}}]}]}')], request: GET('/docs/7/edit'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: {**} followed by literal segments does not match another ending', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/{**}/edit"]}}]}]}')], request: GET('/docs/7/edit/x'), expect: 'DENY' },
  { name: 'paths: a template ALLOW does not match a segment with a character Envoy\'s template refuses (*)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["/api/{*}/items"]}}]}]}')], request: GET('/api/a*b/items'), expect: 'DENY' },
  { name: 'paths: a template DENY also matches such a segment, so "*" is no way past it', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {paths: ["/admin/{*}"]}}]}]}')], request: GET('/admin/a*b'), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'paths: a template DENY lets a path it does not match through', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {paths: ["/admin/{*}"]}}]}]}')], request: GET('/admin/users/7'), expect: 'ALLOW' },
  { name: 'notPaths: a template ALLOW excludes a segment with [ ] too', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notPaths: ["/admin/{**}"]}}]}]}')], request: GET('/admin/a[1]'), expect: 'DENY' },
  { name: 'notPaths: a template ALLOW admits what it does not exclude', policies: [ap('shop/allow', '{rules: [{to: [{operation: {notPaths: ["/admin/{**}"]}}]}]}')], request: GET('/public/a[1]'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'paths: "*" matches any path', policies: [ap('shop/allow', '{rules: [{to: [{operation: {paths: ["*"]}}]}]}')], request: GET('/x/y'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'notPaths: a DENY of all but /healthz denies /admin', policies: [ap('shop/deny-but-health', '{action: DENY, rules: [{to: [{operation: {notPaths: [/healthz]}}]}]}')], request: GET('/admin'), expect: 'DENY', by: 'shop/deny-but-health', rule: 0 },
  { name: 'notPaths: a DENY of all but /healthz lets /healthz through', policies: [ap('shop/deny-but-health', '{action: DENY, rules: [{to: [{operation: {notPaths: [/healthz]}}]}]}')], request: GET('/healthz'), expect: 'ALLOW' },

  // ---- when ----
  { name: 'when request.headers: matches an exact header value', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]}')], request: GET('/', { headers: { 'x-user': 'alice' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  // Conditions on the authority and pseudo-headers (Envoy keeps them among the fields); the authority is read in lower
  // case, and so are the values of a condition on it.
  { name: 'when request.headers[host]: a DENY written in capitals denies the host in any case', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: "request.headers[Host]", values: [Admin.Shop]}]}]}')], request: GET('/', { host: 'admin.shop' }), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when request.headers[host]: a DENY does not deny another host', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: "request.headers[Host]", values: [Admin.Shop]}]}]}')], request: GET('/', { host: 'web.shop' }), expect: 'ALLOW' },
  { name: 'when request.headers[:authority]: an ALLOW matches the authority', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[:authority]", values: ["*.shop"]}]}]}')], request: GET('/', { host: 'web.shop' }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers[:authority]: an ALLOW does not match another authority', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[:authority]", values: ["*.shop"]}]}]}')], request: GET('/', { host: 'web.example' }), expect: 'DENY' },
  { name: 'when request.headers[:path]: a DENY on a path prefix denies it, its query included', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: "request.headers[:path]", values: ["/admin*"]}]}]}')], request: GET('/admin/users?all=1'), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when request.headers[:path]: a DENY on a path prefix does not deny another path', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: "request.headers[:path]", values: ["/admin*"]}]}]}')], request: GET('/public/admin'), expect: 'ALLOW' },
  { name: 'when request.headers[:method]: an ALLOW on GET does not match POST', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[:method]", values: [GET]}]}]}')], request: { http: { method: 'POST', path: '/' } }, expect: 'DENY' },
  { name: 'when request.headers[:scheme]: inside the tunnel the scheme is http', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[:scheme]", values: [http]}]}]}')], request: GET(), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: does not match another value', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]}')], request: GET('/', { headers: { 'x-user': 'bob' } }), expect: 'DENY' },
  { name: 'when request.headers: an absent header never matches values', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"]}]}]}')], request: GET(), expect: 'DENY' },
  { name: 'when request.headers: "*" matches a present header', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"]}]}]}')], request: GET('/', { headers: { 'x-user': 'anyone' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: "*" matches a header sent with an empty value (Envoy present_match)', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"]}]}]}')], request: GET('/', { headers: { 'x-user': '' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: a DENY on the presence of a header is not dodged by an empty value', policies: [ap('shop/deny-debug', '{action: DENY, rules: [{when: [{key: "request.headers[x-debug]", values: ["*"]}]}]}')], request: GET('/', { headers: { 'x-debug': '' } }), expect: 'DENY', by: 'shop/deny-debug', rule: 0 },
  { name: 'when request.headers notValues ["*"]: a DENY of requests without the header lets an empty one through', policies: [ap('shop/deny-anonymous', '{action: DENY, rules: [{when: [{key: "request.headers[x-user]", notValues: ["*"]}]}]}')], request: GET('/', { headers: { 'x-user': '' } }), expect: 'ALLOW' },
  { name: 'when request.headers notValues ["*"]: a DENY of requests without the header denies one without it', policies: [ap('shop/deny-anonymous', '{action: DENY, rules: [{when: [{key: "request.headers[x-user]", notValues: ["*"]}]}]}')], request: GET(), expect: 'DENY', by: 'shop/deny-anonymous', rule: 0 },
  { name: 'when request.headers: matches by prefix (al*)', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["al*"]}]}]}')], request: GET('/', { headers: { 'x-user': 'alice' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: matches by suffix (*ice)', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*ice"]}]}]}')], request: GET('/', { headers: { 'x-user': 'alice' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: header names are case-insensitive', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[X-User]", values: [alice]}]}]}')], request: GET('/', { headers: { 'x-user': 'alice' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when request.headers: header values are case-sensitive', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]}')], request: GET('/', { headers: { 'x-user': 'Alice' } }), expect: 'DENY' },
  { name: 'when request.headers notValues: a DENY outside prod denies dev', policies: [ap('shop/deny-nonprod', '{action: DENY, rules: [{when: [{key: "request.headers[x-env]", notValues: [prod]}]}]}')], request: GET('/', { headers: { 'x-env': 'dev' } }), expect: 'DENY', by: 'shop/deny-nonprod', rule: 0 },
  { name: 'when request.headers notValues: a DENY outside prod lets prod through', policies: [ap('shop/deny-nonprod', '{action: DENY, rules: [{when: [{key: "request.headers[x-env]", notValues: [prod]}]}]}')], request: GET('/', { headers: { 'x-env': 'prod' } }), expect: 'ALLOW' },
  { name: 'when request.headers notValues: holds for an absent header', policies: [ap('shop/deny-nonprod', '{action: DENY, rules: [{when: [{key: "request.headers[x-env]", notValues: [prod]}]}]}')], request: GET(), expect: 'DENY', by: 'shop/deny-nonprod', rule: 0 },
  { name: 'when source.ip: matches a CIDR', policies: [ap('shop/allow', '{rules: [{when: [{key: source.ip, values: [10.0.0.0/24]}]}]}')], request: { sourceIp: '10.0.0.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when source.ip: does not match outside the CIDR', policies: [ap('shop/allow', '{rules: [{when: [{key: source.ip, values: [10.0.0.0/24]}]}]}')], request: { sourceIp: '10.0.1.5' }, expect: 'DENY' },
  { name: 'when source.ip notValues: a DENY outside the CIDR denies an outside address', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: source.ip, notValues: [10.0.0.0/24]}]}]}')], request: { sourceIp: '10.0.1.5' }, expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when remote.ip: per request, matches the client address', policies: [ap('shop/allow', '{rules: [{when: [{key: remote.ip, values: [10.0.0.5]}]}]}')], request: { sourceIp: '10.0.0.5', ...GET() }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when remote.ip: per request, does not match another client', policies: [ap('shop/allow', '{rules: [{when: [{key: remote.ip, values: [10.0.0.5]}]}]}')], request: { sourceIp: '10.0.0.6', ...GET() }, expect: 'DENY' },
  { name: 'when remote.ip: at tcp, an ALLOW rule on it matches nothing', policies: [ap('shop/allow', '{rules: [{when: [{key: remote.ip, values: [10.0.0.5]}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'DENY' },
  { name: 'when remote.ip: at tcp, a DENY rule on it is applied with it ignored', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: remote.ip, notValues: [10.0.0.0/24]}]}]}')], request: { sourceIp: '10.0.0.5' }, moment: 'tcp', expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when source.namespace: matches the peer namespace', policies: [ap('shop/allow', '{rules: [{when: [{key: source.namespace, values: [front]}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when source.namespace: matches by prefix', policies: [ap('shop/allow', '{rules: [{when: [{key: source.namespace, values: ["fr*"]}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when source.namespace: never matches a plaintext connection', policies: [ap('shop/allow', '{rules: [{when: [{key: source.namespace, values: ["*"]}]}]}')], request: PLAINTEXT, expect: 'DENY' },
  { name: 'when source.principal: matches the peer principal', policies: [ap('shop/allow', `{rules: [{when: [{key: source.principal, values: [${CLIENT}]}]}]}`)], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when source.principal notValues: a DENY of all but the client denies admin', policies: [ap('shop/deny', `{action: DENY, rules: [{when: [{key: source.principal, notValues: [${CLIENT}]}]}]}`)], request: as(ADMIN), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when source.principal notValues: a DENY of all but the client lets the client through', policies: [ap('shop/deny', `{action: DENY, rules: [{when: [{key: source.principal, notValues: [${CLIENT}]}]}]}`)], expect: 'ALLOW' },
  { name: 'when destination.ip: matches the address the connection was made to', policies: [ap('shop/allow', '{rules: [{when: [{key: destination.ip, values: [10.1.0.0/16]}]}]}')], request: { destinationIp: '10.1.0.7' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when destination.ip: does not match another address', policies: [ap('shop/allow', '{rules: [{when: [{key: destination.ip, values: [10.1.0.0/16]}]}]}')], request: { destinationIp: '10.2.0.7' }, expect: 'DENY' },
  { name: 'when destination.port: matches the port', policies: [ap('shop/allow', '{rules: [{when: [{key: destination.port, values: ["8080"]}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when destination.port: does not match another port', policies: [ap('shop/allow', '{rules: [{when: [{key: destination.port, values: ["8080"]}]}]}')], request: { port: 9090 }, expect: 'DENY' },
  { name: 'when destination.port notValues: a DENY of all but 9090 denies 8080', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: destination.port, notValues: ["9090"]}]}]}')], expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'when destination.port notValues: a DENY of all but 9090 lets 9090 through', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: destination.port, notValues: ["9090"]}]}]}')], request: { port: 9090 }, expect: 'ALLOW' },
  { name: 'when: conditions are ANDed, one failing and the rule does not match', policies: [ap('shop/allow', '{rules: [{when: [{key: source.namespace, values: [front]}, {key: destination.port, values: ["9090"]}]}]}')], expect: 'DENY' },
  { name: 'when: conditions are ANDed, all holding and the rule matches', policies: [ap('shop/allow', '{rules: [{when: [{key: source.namespace, values: [front]}, {key: destination.port, values: ["8080"]}]}]}')], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when: a condition holds when any of its values matches', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: [alice, bob]}]}]}')], request: GET('/', { headers: { 'x-user': 'bob' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when: values and notValues in one condition both apply (allowed value)', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"], notValues: [mallory]}]}]}')], request: GET('/', { headers: { 'x-user': 'alice' } }), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'when: values and notValues in one condition both apply (excluded value)', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"], notValues: [mallory]}]}]}')], request: GET('/', { headers: { 'x-user': 'mallory' } }), expect: 'DENY' },

  // ---- combination rules ----
  { name: 'fields of one source are ANDed: principal matching but namespace not', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}], namespaces: [ops]}}]}]}`)], expect: 'DENY' },
  { name: 'fields of one source are ANDed: principal and namespace matching', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}], namespaces: [front]}}]}]}`)], expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'from entries are ORed: the second source matches', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${ADMIN}]}}, {source: {ipBlocks: [10.0.0.0/8]}}]}]}`)], request: { sourceIp: '10.0.0.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'fields of one operation are ANDed: method matching but path not', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [GET], paths: [/admin]}}]}]}')], request: GET('/api'), expect: 'DENY' },
  { name: 'fields of one operation are ANDed: port and method matching', policies: [ap('shop/allow', '{rules: [{to: [{operation: {ports: ["8080"], methods: [GET]}}]}]}')], request: GET('/api'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'to entries are ORed: the second operation matches', policies: [ap('shop/allow', '{rules: [{to: [{operation: {methods: [POST]}}, {operation: {paths: ["/api/*"]}}]}]}')], request: GET('/api/x'), expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'from, to and when are ANDed: source matching, operation not', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {ports: ["9090"]}}]}]}`)], expect: 'DENY' },
  { name: 'from, to and when are ANDed: all three matching', policies: [ap('shop/allow', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {ports: ["8080"]}}], when: [{key: source.ip, values: [10.0.0.0/8]}]}]}`)], request: { sourceIp: '10.0.0.5' }, expect: 'ALLOW', by: 'shop/allow', rule: 0 },
  { name: 'rules are ORed: a later rule allows what an earlier one does not', policies: [ap('shop/allow', `{rules: [{to: [{operation: {ports: ["9090"]}}]}, {from: [{source: {principals: [${CLIENT}]}}]}]}`)], expect: 'ALLOW', by: 'shop/allow', rule: 1 },
  { name: 'a DENY of one source on one path denies that source there', policies: [ap('shop/deny', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {paths: [/admin]}}]}]}`)], request: GET('/admin'), expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'a DENY of one source on one path lets that source elsewhere', policies: [ap('shop/deny', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {paths: [/admin]}}]}]}`)], request: GET('/api'), expect: 'ALLOW' },
  { name: 'a DENY of one source on one path lets another source there', policies: [ap('shop/deny', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {paths: [/admin]}}]}]}`)], request: as(ADMIN, GET('/admin')), expect: 'ALLOW' },
  { name: 'a source and its not-field combine: namespace front but not the client', policies: [ap('shop/allow', `{rules: [{from: [{source: {namespaces: [front], notPrincipals: [${CLIENT}]}}]}]}`)], expect: 'DENY' },

  // ---- moments ----
  { name: 'at tcp, an ALLOW rule with methods matches nothing', policies: [ap('shop/allow-get', '{rules: [{to: [{operation: {methods: [GET]}}]}]}')], moment: 'tcp', expect: 'DENY' },
  { name: 'at tcp, an ALLOW rule with a header condition matches nothing', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: ["*"]}]}]}')], moment: 'tcp', expect: 'DENY' },
  { name: 'at tcp, an ALLOW rule mixing HTTP and L4 operations matches nothing (the whole rule is HTTP)', policies: [ap('shop/allow', '{rules: [{to: [{operation: {ports: ["8080"]}}, {operation: {paths: [/api]}}]}]}')], moment: 'tcp', expect: 'DENY' },
  { name: 'at tcp, an L4-only ALLOW rule beside an HTTP rule still allows', policies: [ap('shop/allow', `{rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {principals: [${CLIENT}]}}]}]}`)], moment: 'tcp', expect: 'ALLOW', by: 'shop/allow', rule: 1 },
  { name: 'at tcp, a DENY rule with methods is applied with its methods ignored', policies: [ap('shop/deny-delete', '{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}')], moment: 'tcp', expect: 'DENY', by: 'shop/deny-delete', rule: 0 },
  { name: 'at tcp, a DENY of one source on one path denies that source entirely', policies: [ap('shop/deny', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {paths: [/admin]}}]}]}`)], moment: 'tcp', expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'at tcp, a DENY of one source on one path still lets other sources through', policies: [ap('shop/deny', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {paths: [/admin]}}]}]}`)], request: as(ADMIN), moment: 'tcp', expect: 'ALLOW' },
  { name: 'at tcp, a DENY with a header condition is applied with it ignored', policies: [ap('shop/deny', '{action: DENY, rules: [{when: [{key: "request.headers[x-user]", values: [mallory]}]}]}')], moment: 'tcp', expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'at tcp, a DENY with notPaths is applied with it ignored', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {notPaths: [/healthz]}}]}]}')], moment: 'tcp', expect: 'DENY', by: 'shop/deny', rule: 0 },
  { name: 'at tcp, the L4 part of a DENY HTTP rule must still match', policies: [ap('shop/deny', '{action: DENY, rules: [{to: [{operation: {ports: ["9090"], methods: [GET]}}]}]}')], moment: 'tcp', expect: 'ALLOW' },
  { name: 'at tcp, an AUDIT rule with HTTP fields does not decide', policies: [ap('shop/audit', '{action: AUDIT, rules: [{to: [{operation: {methods: [GET]}}]}]}')], moment: 'tcp', expect: 'ALLOW' },
  { name: 'at connect, an ALLOW HTTP rule whose L4 part matches lets the connection open, deferred', policies: [ap('shop/allow-get', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {methods: [GET]}}]}]}`)], moment: 'connect', expect: 'ALLOW', by: 'shop/allow-get', rule: 0, deferred: true },
  { name: 'at connect, an ALLOW HTTP rule whose L4 part does not match denies', policies: [ap('shop/allow-get', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {methods: [GET]}}]}]}`)], request: as(ADMIN), moment: 'connect', expect: 'DENY' },
  { name: 'at connect, an ALLOW with only a header condition defers', policies: [ap('shop/allow', '{rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]}')], moment: 'connect', expect: 'ALLOW', by: 'shop/allow', rule: 0, deferred: true },
  { name: 'at connect, a matching L4 ALLOW rule wins over a deferred HTTP rule', policies: [ap('shop/allow', `{rules: [{to: [{operation: {methods: [GET]}}]}, {from: [{source: {principals: [${CLIENT}]}}]}]}`)], moment: 'connect', expect: 'ALLOW', by: 'shop/allow', rule: 1 },
  { name: 'at connect, DENY rules with HTTP fields wait for the request', policies: [ap('shop/deny-delete', '{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}')], moment: 'connect', expect: 'ALLOW' },
  { name: 'at connect, an L4-only DENY rule applies', policies: [ap('shop/deny-client', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], moment: 'connect', expect: 'DENY', by: 'shop/deny-client', rule: 0 },
  { name: 'at connect, a waiting HTTP DENY does not stop a deferred ALLOW', policies: [ap('shop/deny-delete', '{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}'), ap('shop/allow-get', '{rules: [{to: [{operation: {methods: [GET]}}]}]}')], moment: 'connect', expect: 'ALLOW', by: 'shop/allow-get', rule: 0, deferred: true },
  { name: 'on a request, the deferred ALLOW rule decides in full: GET is allowed', policies: [ap('shop/allow-get', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {methods: [GET]}}]}]}`)], request: GET(), expect: 'ALLOW', by: 'shop/allow-get', rule: 0 },
  { name: 'on a request, the deferred ALLOW rule decides in full: DELETE is denied', policies: [ap('shop/allow-get', `{rules: [{from: [{source: {principals: [${CLIENT}]}}], to: [{operation: {methods: [GET]}}]}]}`)], request: { http: { method: 'DELETE' } }, expect: 'DENY' },
  { name: 'on a request, an HTTP DENY rule denies the request it matches', policies: [ap('shop/deny-delete', '{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}')], request: { http: { method: 'DELETE' } }, expect: 'DENY', by: 'shop/deny-delete', rule: 0 },
  { name: 'on a request, an HTTP DENY rule lets other requests through', policies: [ap('shop/deny-delete', '{action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}')], request: GET(), expect: 'ALLOW' },
  { name: 'on a request, an L4-only DENY applies to every request', policies: [ap('shop/deny-client', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], request: GET(), expect: 'DENY', by: 'shop/deny-client', rule: 0 },

  // ---- PeerAuthentication ----
  { name: 'PERMISSIVE by default: a plaintext connection is accepted', policies: [], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'mesh-wide STRICT refuses a plaintext connection, naming the PeerAuthentication', policies: [strictMesh], request: PLAINTEXT, expect: 'DENY', by: MESH },
  { name: 'mesh-wide STRICT accepts an authenticated connection', policies: [strictMesh], expect: 'ALLOW' },
  { name: 'STRICT refuses plaintext before any ALLOW policy is consulted', policies: [strictMesh, ap('shop/allow-all', '{rules: [{}]}')], request: PLAINTEXT, expect: 'DENY', by: MESH },
  { name: 'STRICT refuses plaintext at connect on an HTTP port', policies: [strictMesh], request: PLAINTEXT, moment: 'connect', expect: 'DENY', by: MESH },
  { name: 'STRICT refuses a plaintext request too', policies: [strictMesh], request: as(null, GET()), expect: 'DENY', by: MESH },
  { name: 'STRICT leaves an authenticated connection to the DENY policies', policies: [strictMesh, ap('shop/deny-client', `{action: DENY, rules: [{from: [{source: {principals: [${CLIENT}]}}]}]}`)], expect: 'DENY', by: 'shop/deny-client', rule: 0 },
  { name: 'a namespace PERMISSIVE overrides a mesh-wide STRICT', policies: [strictMesh, pa('shop/permissive', '{mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a namespace STRICT overrides a mesh-wide PERMISSIVE', policies: [pa(MESH, '{mtls: {mode: PERMISSIVE}}'), pa('shop/strict', '{mtls: {mode: STRICT}}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/strict' },
  { name: 'a namespace DISABLE accepts plaintext under a mesh-wide STRICT', policies: [strictMesh, pa('shop/disable', '{mtls: {mode: DISABLE}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a mesh-wide DISABLE accepts plaintext', policies: [pa(MESH, '{mtls: {mode: DISABLE}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a workload PERMISSIVE overrides a namespace STRICT for the workloads it selects', policies: [pa('shop/strict', '{mtls: {mode: STRICT}}'), pa('shop/web-permissive', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a workload PeerAuthentication leaves the workloads it does not select to the namespace', policies: [pa('shop/strict', '{mtls: {mode: STRICT}}'), pa('shop/web-permissive', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}')], destination: { namespace: 'shop', labels: { app: 'db' } }, request: PLAINTEXT, expect: 'DENY', by: 'shop/strict' },
  { name: 'a workload PeerAuthentication with mode UNSET inherits the namespace STRICT, which is named', policies: [pa('shop/strict', '{mtls: {mode: STRICT}}'), pa('shop/web-unset', '{selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/strict' },
  { name: 'a namespace PeerAuthentication without mtls inherits the mesh-wide STRICT, which is named', policies: [strictMesh, pa('shop/unset', '{}')], request: PLAINTEXT, expect: 'DENY', by: MESH },
  { name: 'portLevelMtls PERMISSIVE on a port overrides the workload STRICT there', policies: [pa('shop/web', '{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}')], request: as(null, { port: 8080 }), expect: 'ALLOW' },
  { name: 'portLevelMtls leaves the other ports at the workload STRICT', policies: [pa('shop/web', '{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}')], request: as(null, { port: 9090 }), expect: 'DENY', by: 'shop/web' },
  { name: 'portLevelMtls STRICT on one port of a PERMISSIVE workload refuses plaintext there', policies: [pa('shop/web', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9090: {mode: STRICT}}}')], request: as(null, { port: 9090 }), expect: 'DENY', by: 'shop/web' },
  { name: 'portLevelMtls STRICT on one port leaves the other ports PERMISSIVE', policies: [pa('shop/web', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {9090: {mode: STRICT}}}')], request: as(null, { port: 8080 }), expect: 'ALLOW' },
  { name: 'portLevelMtls on a workload without its own mode: other ports keep the namespace STRICT, named', policies: [pa('shop/strict', '{mtls: {mode: STRICT}}'), pa('shop/web', '{selector: {matchLabels: {app: web}}, portLevelMtls: {9090: {mode: DISABLE}}}')], request: as(null, { port: 8080 }), expect: 'DENY', by: 'shop/strict' },
  // ---- several at one level: the oldest, as Istio ----
  { name: 'of two namespace-wide PeerAuthentications the oldest applies, whatever their names', policies: [created(pa('shop/a-new', '{mtls: {mode: DISABLE}}'), '2025-01-01T00:00:00Z'), created(pa('shop/z-old', '{mtls: {mode: STRICT}}'), '2020-01-01T00:00:00Z')], request: PLAINTEXT, expect: 'DENY', by: 'shop/z-old' },
  { name: 'of two mesh-wide PeerAuthentications the oldest applies', policies: [created(pa('istio-system/a-new', '{mtls: {mode: PERMISSIVE}}'), '2025-06-01T10:00:00.5+02:00'), created(pa('istio-system/z-old', '{mtls: {mode: STRICT}}'), '2025-06-01T08:00:00Z')], request: PLAINTEXT, expect: 'DENY', by: 'istio-system/z-old' },
  { name: 'a PeerAuthentication without creationTimestamp is older than one with it (Go\'s zero time)', policies: [created(pa('shop/a-dated', '{mtls: {mode: STRICT}}'), '2020-01-01T00:00:00Z'), pa('shop/b-undated', '{mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'of two workload PeerAuthentications of the same age the first by name applies', policies: [created(pa('shop/b', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}'), '2020-01-01T00:00:00Z'), created(pa('shop/a', '{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}'), '2020-01-01T00:00:00Z')], request: PLAINTEXT, expect: 'DENY', by: 'shop/a' },
  { name: 'a PeerAuthentication of another namespace does not apply', policies: [pa('front/strict', '{mtls: {mode: STRICT}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a PeerAuthentication with a selector in the root namespace applies to no workload elsewhere', policies: [pa('istio-system/web-strict', '{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}')], request: PLAINTEXT, expect: 'ALLOW' },
  { name: 'a PeerAuthentication with a selector in the root namespace applies to no workload there either', policies: [pa('istio-system/web-strict', '{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}')], destination: { namespace: 'istio-system', labels: { app: 'web' } }, request: PLAINTEXT, expect: 'ALLOW' },

  // ---- the enforce lock ----
  {
    name: 'an enforced mesh-wide STRICT is not weakened by a namespace PERMISSIVE, which is reported',
    policies: [enforcedStrictMesh, pa('shop/permissive', '{mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'DENY', by: MESH,
    violations: [{ policy: 'shop/permissive', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'an enforced mesh-wide STRICT is not weakened by a namespace DISABLE, which is reported',
    policies: [enforcedStrictMesh, pa('shop/disable', '{mtls: {mode: DISABLE}}')], request: PLAINTEXT, expect: 'DENY', by: MESH,
    violations: [{ policy: 'shop/disable', port: null, attempted: 'DISABLE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'an enforced mesh-wide STRICT is not weakened by a workload PERMISSIVE, which is reported',
    policies: [enforcedStrictMesh, pa('shop/web', '{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'DENY', by: MESH,
    violations: [{ policy: 'shop/web', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'an enforced mesh-wide STRICT is not weakened on a port by portLevelMtls, which is reported with the port',
    policies: [enforcedStrictMesh, pa('shop/web', '{selector: {matchLabels: {app: web}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}')], request: as(null, { port: 8080 }), expect: 'DENY', by: MESH,
    violations: [{ policy: 'shop/web', port: 8080, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'an enforced mesh-wide STRICT still accepts authenticated connections where a weaker mode was refused',
    policies: [enforcedStrictMesh, pa('shop/permissive', '{mtls: {mode: PERMISSIVE}}')], expect: 'ALLOW',
    violations: [{ policy: 'shop/permissive', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'an enforced mesh-wide STRICT holds in every namespace',
    policies: [enforcedStrictMesh, pa('front/permissive', '{mtls: {mode: PERMISSIVE}}')], destination: { namespace: 'front', labels: { app: 'api' } }, request: PLAINTEXT, expect: 'DENY', by: MESH,
    violations: [{ policy: 'front/permissive', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: MESH }],
  },
  {
    name: 'a weakening PeerAuthentication is reported even when it selects no workload',
    policies: [enforcedStrictMesh, pa('shop/legacy', '{selector: {matchLabels: {app: legacy}}, mtls: {mode: DISABLE}}')], request: PLAINTEXT, expect: 'DENY', by: MESH,
    violations: [{ policy: 'shop/legacy', port: null, attempted: 'DISABLE', enforced: 'STRICT', floor: MESH }],
  },
  { name: 'without the annotation, a namespace PERMISSIVE weakens a mesh-wide STRICT and nothing is reported', policies: [strictMesh, pa('shop/permissive', '{mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'ALLOW', violations: [] },
  { name: 'ambit.dev/enforce: "false" is no floor', policies: [pa(MESH, '{mtls: {mode: STRICT}}', { 'ambit.dev/enforce': 'false' }), pa('shop/permissive', '{mtls: {mode: PERMISSIVE}}')], request: PLAINTEXT, expect: 'ALLOW', violations: [] },
  {
    name: 'an enforced mesh-wide PERMISSIVE refuses a namespace DISABLE (reported) and still accepts plaintext',
    policies: [pa(MESH, '{mtls: {mode: PERMISSIVE}}', ENFORCE), pa('shop/disable', '{mtls: {mode: DISABLE}}')], request: PLAINTEXT, expect: 'ALLOW',
    violations: [{ policy: 'shop/disable', port: null, attempted: 'DISABLE', enforced: 'PERMISSIVE', floor: MESH }],
  },
  { name: 'an enforced mesh-wide PERMISSIVE lets a namespace strengthen to STRICT', policies: [pa(MESH, '{mtls: {mode: PERMISSIVE}}', ENFORCE), pa('shop/strict', '{mtls: {mode: STRICT}}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/strict', violations: [] },
  {
    name: 'an enforced mesh-wide STRICT holds beside an older mesh-wide PeerAuthentication without the annotation, which is reported',
    policies: [pa('istio-system/default', '{mtls: {mode: PERMISSIVE}}'), pa('istio-system/strict-floor', '{mtls: {mode: STRICT}}', ENFORCE), pa('shop/legacy', '{mtls: {mode: DISABLE}}')],
    request: PLAINTEXT, expect: 'DENY', by: 'istio-system/strict-floor',
    violations: [
      { policy: 'istio-system/default', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: 'istio-system/strict-floor' },
      { policy: 'shop/legacy', port: null, attempted: 'DISABLE', enforced: 'STRICT', floor: 'istio-system/strict-floor' },
    ],
  },
  {
    name: 'of two enforced mesh-wide PeerAuthentications the stronger is the floor',
    policies: [pa('istio-system/a-permissive', '{mtls: {mode: PERMISSIVE}}', ENFORCE), pa('istio-system/b-strict', '{mtls: {mode: STRICT}}', ENFORCE)],
    request: PLAINTEXT, expect: 'DENY', by: 'istio-system/b-strict',
    violations: [{ policy: 'istio-system/a-permissive', port: null, attempted: 'PERMISSIVE', enforced: 'STRICT', floor: 'istio-system/b-strict' }],
  },
  { name: 'an enforced mesh-wide STRICT accepts a namespace that repeats STRICT', policies: [enforcedStrictMesh, pa('shop/strict', '{mtls: {mode: STRICT}}')], request: PLAINTEXT, expect: 'DENY', by: 'shop/strict', violations: [] },
];

// ---- running a case ----

const DEFAULT_DESTINATION: ReferenceDestination = { namespace: 'shop', labels: { app: 'web' } };

function requestOf(spec: RequestSpec = {}): ReferenceRequest {
  const principal = spec.principal === undefined ? CLIENT : spec.principal;
  const namespace = spec.namespace !== undefined ? spec.namespace : principal === null ? null : (/\/ns\/([^/]+)\//.exec(principal)?.[1] ?? null);
  return {
    principal,
    namespace,
    sourceIp: spec.sourceIp === undefined ? '10.0.0.5' : spec.sourceIp,
    destinationIp: spec.destinationIp === undefined ? '10.1.0.7' : spec.destinationIp,
    port: spec.port ?? 8080,
    http: spec.http === undefined ? null : { method: 'GET', path: '/', host: 'web.shop', headers: {}, ...spec.http },
  };
}

function byPolicyAndPort(a: Violation, b: Violation): number {
  return a.policy === b.policy ? (a.port ?? 0) - (b.port ?? 0) : a.policy < b.policy ? -1 : 1;
}

describe('authorization corpus (Istio semantics)', () => {
  it('has at least 150 cases, each named once', () => {
    expect(cases.length).toBeGreaterThanOrEqual(150);
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  for (const c of cases) {
    it(c.name, () => {
      const loaded = loadYaml(c.policies.join('\n---\n'), c.root);
      const destination = c.destination ?? DEFAULT_DESTINATION;
      const request = requestOf(c.request);
      const moment: Moment = c.moment ?? (request.http === null ? 'tcp' : 'request');
      if (moment === 'request') expect(request.http, 'a request-moment case needs HTTP facts').not.toBeNull();

      const decision = compiledDecision(loaded, destination, request, moment);
      const expected = { allow: c.expect === 'ALLOW', policy: c.by ?? null, rule: c.rule ?? null, deferred: c.deferred ?? false };
      expect({ allow: decision.allow, policy: decision.policy, rule: decision.rule, deferred: decision.deferred }).toEqual(expected);
      expect(referenceDecide(loaded.world, destination, request, moment)).toEqual(expected);

      // --explain names the deciding rule as matched (a deferred rule is only matched at connection level).
      if (decision.policy !== null && decision.rule !== null && !decision.deferred) {
        const explanation = explain(matcherFor(loaded, destination), contextOf(request), moment).find((entry) => entry.policy === decision.policy);
        expect(explanation?.rules[decision.rule]?.matched).toBe(true);
      }

      if (c.violations !== undefined) {
        const violations = loaded.compiled.violations.map((v) => ({ policy: v.policy, port: v.port, attempted: v.attempted, enforced: v.enforced, floor: v.floor }));
        expect(violations.sort(byPolicyAndPort)).toEqual([...c.violations].sort(byPolicyAndPort));
        expect(enforcementViolations(loaded.world).sort(byPolicyAndPort)).toEqual([...c.violations].sort(byPolicyAndPort));
      }
    });
  }
});
