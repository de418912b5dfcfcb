// The Cedar peer: each Istio rule of the compared subset becomes one Cedar policy (ALLOW → permit, DENY → forbid,
// which Cedar already orders as Istio does: any forbid wins), over an entity model
//   principal  Identity::"td/ns/NS/sa/SA"          attributes name, namespace
//   action     Action::"connect" (L4) or Action::"<HTTP method>"
//   resource   Workload::"NS/NAME"                 parents Selector::"NS/app=A", Selector::"*/app=A",
//                                                  Namespace::"NS", Mesh::"mesh" (the policy scopes)
//   context    port, sourceIp (ipaddr), l7, path, host, headers
// Istio's "no ALLOW policy applies → allow" is one permit `unless { resource in Guarded::"allow" }`, where every
// scope entity some ALLOW policy names has Guarded::"allow" as parent: data derived from the policies alone.
// The policy set is parsed once (preparsePolicySet); each decision is one statefulIsAuthorized call, which is
// isAuthorized without re-parsing 10,000 policies per call.
import type { Workload } from '../../src/config/snapshot.ts';
import type { ConfigSnapshot } from '../../src/config/snapshot.ts';
import type { PolicyCondition, PolicyOperation, PolicyRule, PolicySource } from '../../src/authz/types.ts';
import type { BenchRequest } from './mix.ts';

/** The subset of the cedar-wasm API the bench uses (the module is loaded dynamically: a missing peer is reported). */
export interface CedarApi {
  preparsePolicySet(id: string, policies: { staticPolicies: string }): { type: 'success' } | { type: 'failure'; errors: unknown[] };
  statefulIsAuthorized(call: unknown): CedarAnswer;
  getCedarVersion(): string;
}

type CedarAnswer =
  | { type: 'success'; response: { decision: 'allow' | 'deny'; diagnostics: { reason: string[]; errors: unknown[] } } }
  | { type: 'failure'; errors: unknown[] };

const POLICY_SET_ID = 'ambit-bench';
const SAFE = /^[A-Za-z0-9._/:#=*-]*$/;

function literal(value: string): string {
  if (!SAFE.test(value)) throw new Error(`outside the compared subset: value ${JSON.stringify(value)} needs escaping`);
  return `"${value}"`;
}

/** Istio's match kinds as Cedar: exact → ==/contains, `x*` / `*x` → like, `*` → non-empty. */
function anyOf(expression: string, patterns: readonly string[]): string {
  const exact: string[] = [];
  const parts: string[] = [];
  for (const pattern of patterns) {
    if (pattern === '*') parts.push(`${expression} != ""`);
    else if (pattern.endsWith('*') || pattern.startsWith('*')) {
      literal(pattern.replaceAll('*', ''));
      parts.push(`${expression} like "${pattern}"`);
    } else exact.push(pattern);
  }
  if (exact.length === 1) parts.unshift(`${expression} == ${literal(exact[0] as string)}`);
  else if (exact.length > 1) parts.unshift(`[${exact.map(literal).join(', ')}].contains(${expression})`);
  return parts.length === 1 ? (parts[0] as string) : `(${parts.join(' || ')})`;
}

function all(parts: readonly string[]): string {
  return parts.length === 0 ? 'true' : parts.length === 1 ? (parts[0] as string) : `(${parts.join(' && ')})`;
}

function any(parts: readonly string[]): string {
  return parts.length === 1 ? (parts[0] as string) : `(${parts.join(' || ')})`;
}

function unsupported(where: string, object: object, allowed: readonly string[]): void {
  for (const key of Object.keys(object)) if (!allowed.includes(key)) throw new Error(`outside the compared subset: ${where}.${key}`);
}

function sourceExpression(source: PolicySource): string {
  unsupported('source', source, ['principals', 'namespaces', 'notNamespaces', 'ipBlocks']);
  const parts: string[] = [];
  if (source.principals) parts.push(anyOf('principal.name', source.principals));
  if (source.namespaces) parts.push(anyOf('principal.namespace', source.namespaces));
  if (source.notNamespaces) parts.push(`!(${anyOf('principal.namespace', source.notNamespaces)})`);
  if (source.ipBlocks) parts.push(any(source.ipBlocks.map((block) => `context.sourceIp.isInRange(ip(${literal(block)}))`)));
  return all(parts);
}

function operationExpression(operation: PolicyOperation, deny: boolean): string {
  unsupported('operation', operation, ['ports', 'methods', 'paths', 'notPaths', 'hosts']);
  const l4: string[] = [];
  const l7: string[] = [];
  if (operation.ports) l4.push(`[${operation.ports.join(', ')}].contains(context.port)`);
  if (operation.methods) {
    for (const method of operation.methods) if (method.includes('*')) throw new Error('outside the compared subset: method wildcards');
    l7.push(`action in [${operation.methods.map((method) => `Action::${literal(method)}`).join(', ')}]`);
  }
  if (operation.paths) l7.push(anyOf('context.path', operation.paths));
  if (operation.notPaths) l7.push(`!(${anyOf('context.path', operation.notPaths)})`);
  if (operation.hosts) l7.push(anyOf('context.host', operation.hosts.map((host) => host.toLowerCase())));
  // ambit's 'tcp' moment: a DENY rule's HTTP fields are ignored on a connection (it denies more, never less).
  if (l7.length > 0) l4.push(deny ? `(!context.l7 || ${all(l7)})` : all(l7));
  return all(l4);
}

function conditionExpression(condition: PolicyCondition, deny: boolean): string {
  const key = condition.parsedKey;
  if (key.kind !== 'request.headers' || condition.notValues !== undefined || condition.values === undefined) throw new Error(`outside the compared subset: when ${condition.key}`);
  const header = key.header.toLowerCase();
  const test = `(context.headers has ${literal(header)} && ${anyOf(`context.headers[${literal(header)}]`, condition.values)})`;
  return deny ? `(!context.l7 || ${test})` : test;
}

function ruleHasHttp(rule: PolicyRule): boolean {
  return (rule.to ?? []).some((operation) => operation.methods !== undefined || operation.paths !== undefined || operation.notPaths !== undefined || operation.hosts !== undefined)
    || (rule.when ?? []).length > 0;
}

function ruleCondition(rule: PolicyRule, deny: boolean): string {
  unsupported('rule', rule, ['from', 'to', 'when']);
  const parts: string[] = [];
  // An ALLOW rule with HTTP fields matches nothing on a plain connection.
  if (!deny && ruleHasHttp(rule)) parts.push('context.l7');
  if (rule.from && rule.from.length > 0) parts.push(any(rule.from.map(sourceExpression)));
  if (rule.to && rule.to.length > 0) parts.push(any(rule.to.map((operation) => operationExpression(operation, deny))));
  for (const condition of rule.when ?? []) parts.push(conditionExpression(condition, deny));
  return parts.length === 0 ? 'true' : parts.join(' && ');
}

function selectorApp(selector: Readonly<Record<string, string>> | undefined): string | undefined {
  if (selector === undefined) return undefined;
  const keys = Object.keys(selector);
  if (keys.length !== 1 || keys[0] !== 'app') throw new Error(`outside the compared subset: selector ${JSON.stringify(selector)}`);
  return selector.app;
}

interface EntityUid {
  readonly type: string;
  readonly id: string;
}

interface Entity {
  readonly uid: EntityUid;
  readonly attrs: Record<string, unknown>;
  readonly parents: readonly EntityUid[];
}

const GUARDED: EntityUid = { type: 'Guarded', id: 'allow' };

export interface CedarModel {
  readonly policyText: string;
  readonly policyCount: number;
  /** Scope entity ids (type::id) that some ALLOW policy names. */
  readonly guarded: ReadonlySet<string>;
  readonly rootNamespace: string;
}

/** Translates every AuthorizationPolicy of the snapshot; throws on anything outside the compared subset. */
export function translateToCedar(snapshot: ConfigSnapshot): CedarModel {
  const root = snapshot.mesh.rootNamespace;
  const texts: string[] = [];
  const guarded = new Set<string>();
  for (const object of snapshot.objects) {
    if (object.kind !== 'AuthorizationPolicy') continue;
    const { namespace, name } = object.metadata;
    const spec = object.spec;
    if (spec.action === 'AUDIT') throw new Error('outside the compared subset: AUDIT');
    const app = selectorApp(spec.selector);
    const scope: EntityUid | null = namespace === root
      ? (app === undefined ? { type: 'Mesh', id: 'mesh' } : { type: 'Selector', id: `*/app=${app}` })
      : (app === undefined ? { type: 'Namespace', id: namespace } : { type: 'Selector', id: `${namespace}/app=${app}` });
    if (spec.action === 'ALLOW') guarded.add(`${scope.type}::${scope.id}`);
    const deny = spec.action === 'DENY';
    spec.rules.forEach((rule, index) => {
      texts.push(`@id(${literal(`${namespace}/${name}#${index}`)})\n${deny ? 'forbid' : 'permit'} (principal, action, resource in ${scope.type}::${literal(scope.id)})\nwhen { ${ruleCondition(rule, deny)} };`);
    });
  }
  texts.push('@id("no-allow-policy")\npermit (principal, action, resource) unless { resource in Guarded::"allow" };');
  return { policyText: texts.join('\n'), policyCount: texts.length, guarded, rootNamespace: root };
}

function scopeEntity(uid: EntityUid, guarded: ReadonlySet<string>): Entity {
  return { uid, attrs: {}, parents: guarded.has(`${uid.type}::${uid.id}`) ? [GUARDED] : [] };
}

/** The resource entity and its ancestors, built once per workload. */
function workloadEntities(workload: Workload, model: CedarModel): Entity[] {
  const app = workload.labels.app ?? '';
  const scopes: EntityUid[] = [{ type: 'Selector', id: `${workload.namespace}/app=${app}` }, { type: 'Selector', id: `*/app=${app}` }, { type: 'Namespace', id: workload.namespace }, { type: 'Mesh', id: 'mesh' }];
  return [
    { uid: { type: 'Workload', id: `${workload.namespace}/${workload.name}` }, attrs: { namespace: workload.namespace }, parents: scopes },
    ...scopes.map((uid) => scopeEntity(uid, model.guarded)),
    { uid: GUARDED, attrs: {}, parents: [] },
  ];
}

export interface CedarEngine {
  readonly version: string;
  readonly policyCount: number;
  readonly translateMs: number;
  readonly loadMs: number;
  /** Decides request `index` of the prepared mix; throws when any policy failed to evaluate. */
  decide(index: number): boolean;
}

export function buildCedarEngine(cedar: CedarApi, snapshot: ConfigSnapshot, mix: readonly BenchRequest[]): CedarEngine {
  let started = performance.now();
  const model = translateToCedar(snapshot);
  const translateMs = performance.now() - started;
  started = performance.now();
  const parsed = cedar.preparsePolicySet(POLICY_SET_ID, { staticPolicies: model.policyText });
  const loadMs = performance.now() - started;
  if (parsed.type !== 'success') throw new Error(`Cedar refused the translated policies: ${JSON.stringify(parsed.errors).slice(0, 2000)}`);

  const entitiesOf = new Map<Workload, Entity[]>();
  const calls = mix.map((item) => {
    let resourceEntities = entitiesOf.get(item.destination);
    if (!resourceEntities) entitiesOf.set(item.destination, (resourceEntities = workloadEntities(item.destination, model)));
    const request = item.request;
    const principal: EntityUid = { type: 'Identity', id: request.principal as string };
    const http = request.http;
    return {
      principal,
      action: { type: 'Action', id: http === null ? 'connect' : http.method },
      resource: resourceEntities[0]?.uid,
      context: {
        port: request.port,
        sourceIp: { __extn: { fn: 'ip', arg: request.sourceIp } },
        l7: http !== null,
        path: http?.path ?? '',
        host: http?.host ?? '',
        headers: http?.headers ?? {},
      },
      preparsedPolicySetId: POLICY_SET_ID,
      entities: [{ uid: principal, attrs: { name: request.principal, namespace: request.namespace }, parents: [] }, ...resourceEntities],
    };
  });

  return {
    version: cedar.getCedarVersion(),
    policyCount: model.policyCount,
    translateMs,
    loadMs,
    decide(index) {
      const result = cedar.statefulIsAuthorized(calls[index]);
      // A policy that fails to evaluate is skipped by Cedar: that would make the comparison wrong, not slower.
      if (result.type !== 'success' || result.response.diagnostics.errors.length > 0) {
        throw new Error(`Cedar could not evaluate request ${index}: ${JSON.stringify(result.type === 'success' ? result.response.diagnostics.errors : result.errors).slice(0, 1000)}`);
      }
      return result.response.decision === 'allow';
    },
  };
}
