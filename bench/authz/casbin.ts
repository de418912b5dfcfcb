// The casbin peer: one model, one policy line per (rule, source, operation) of the compared subset (a rule's
// from[] and to[] are ORs, so their product is the set of lines), loaded once from an in-memory StringAdapter.
//   request  r = obj, sub, ns, ip, port, act, path, host, hdr, l7
//   policy   p = obj, sub, ns, notns, ip, port, act, path, notpath, host, hdr, rl7, eft
// Scopes are RBAC roles: g(workload, "sel:NS/app=A" | "sel:*/app=A" | "ns:NS" | "mesh"), and a scope some ALLOW
// policy names inherits the role "guarded"; Istio's "no ALLOW policy → allow" is one line matched when the
// workload is not guarded. The effect is casbin's deny-override: some allow and no deny.
// List fields hold space-separated Istio patterns ("-" = absent); custom functions match them, parsing each field
// once and caching it, as a casbin user with 10,000 policies would.
import type { ConfigSnapshot, Workload } from '../../src/config/snapshot.ts';
import type { PolicyOperation, PolicyRule, PolicySource } from '../../src/authz/types.ts';
import type { BenchRequest } from './mix.ts';

/** The part of casbin's API the bench uses (loaded dynamically: a missing peer is reported, not dropped). */
export interface CasbinApi {
  newEnforcer(...params: unknown[]): Promise<CasbinEnforcer>;
  newModelFromString(text: string): unknown;
  StringAdapter: new (policy: string) => unknown;
}

interface CasbinEnforcer {
  enforceSync(...request: unknown[]): boolean;
  addFunction(name: string, fn: (...args: unknown[]) => unknown): Promise<void>;
}

export const CASBIN_MODEL = `
[request_definition]
r = obj, sub, ns, ip, port, act, path, host, hdr, l7

[policy_definition]
p = obj, sub, ns, notns, ip, port, act, path, notpath, host, hdr, rl7, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.obj == "unguarded" && !g(r.obj, "guarded")) || (g(r.obj, p.obj) && anyOf(r.sub, p.sub) && anyOf(r.ns, p.ns) && noneOf(r.ns, p.notns) && inBlocks(r.ip, p.ip) && anyOf(r.port, p.port) && ((r.l7 == "0" && (p.eft == "deny" || p.rl7 == "0")) || (r.l7 == "1" && anyOf(r.act, p.act) && anyOf(r.path, p.path) && noneOf(r.path, p.notpath) && anyOf(r.host, p.host) && headersMatch(r.hdr, p.hdr))))
`;

const ABSENT = '-';
const SAFE = /^[A-Za-z0-9._/:*-]+$/;

function field(values: readonly (string | number)[] | undefined): string {
  if (values === undefined) return ABSENT;
  for (const value of values) if (!SAFE.test(String(value))) throw new Error(`outside the compared subset: value ${JSON.stringify(value)}`);
  return values.join(' ');
}

function unsupported(where: string, object: object, allowed: readonly string[]): void {
  for (const key of Object.keys(object)) if (!allowed.includes(key)) throw new Error(`outside the compared subset: ${where}.${key}`);
}

interface Patterns {
  readonly exact: ReadonlySet<string>;
  readonly prefixes: readonly string[];
  readonly suffixes: readonly string[];
  readonly presence: boolean;
}

function parsePatterns(text: string): Patterns {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  let presence = false;
  for (const pattern of text.split(' ')) {
    if (pattern === '*') presence = true;
    else if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1));
    else if (pattern.startsWith('*')) suffixes.push(pattern.slice(1));
    else exact.add(pattern);
  }
  return { exact, prefixes, suffixes, presence };
}

const patternCache = new Map<string, Patterns>();

function matchesAny(value: string, text: string): boolean {
  let patterns = patternCache.get(text);
  if (!patterns) patternCache.set(text, (patterns = parsePatterns(text)));
  if (patterns.presence && value !== '') return true;
  if (patterns.exact.has(value)) return true;
  for (const prefix of patterns.prefixes) if (value.startsWith(prefix)) return true;
  for (const suffix of patterns.suffixes) if (value.endsWith(suffix)) return true;
  return false;
}

function ipv4(text: string): number {
  const parts = text.split('.');
  return ((Number(parts[0]) << 24) | (Number(parts[1]) << 16) | (Number(parts[2]) << 8) | Number(parts[3])) >>> 0;
}

const blockCache = new Map<string, { network: number; mask: number }[]>();

function inBlocks(ip: string, text: string): boolean {
  if (text === ABSENT) return true;
  let blocks = blockCache.get(text);
  if (!blocks) {
    blocks = text.split(' ').map((block) => {
      const [address, length] = block.split('/');
      const bits = length === undefined ? 32 : Number(length);
      const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
      return { network: (ipv4(address as string) & mask) >>> 0, mask };
    });
    blockCache.set(text, blocks);
  }
  const value = ipv4(ip);
  for (const block of blocks) if (((value & block.mask) >>> 0) === block.network) return true;
  return false;
}

const headerCache = new Map<string, { name: string; values: string }[]>();

function headersMatch(headers: Readonly<Record<string, string>>, text: string): boolean {
  if (text === ABSENT) return true;
  let conditions = headerCache.get(text);
  if (!conditions) {
    conditions = text.split(';').map((condition) => {
      const [name, values] = condition.split('=');
      return { name: name as string, values: (values as string).replaceAll('|', ' ') };
    });
    headerCache.set(text, conditions);
  }
  for (const condition of conditions) {
    const value = headers[condition.name];
    if (value === undefined || !matchesAny(value, condition.values)) return false;
  }
  return true;
}

function ruleHasHttp(rule: PolicyRule): boolean {
  return (rule.to ?? []).some((operation) => operation.methods !== undefined || operation.paths !== undefined || operation.notPaths !== undefined || operation.hosts !== undefined)
    || (rule.when ?? []).length > 0;
}

function selectorApp(selector: Readonly<Record<string, string>> | undefined): string | undefined {
  if (selector === undefined) return undefined;
  const keys = Object.keys(selector);
  if (keys.length !== 1 || keys[0] !== 'app') throw new Error(`outside the compared subset: selector ${JSON.stringify(selector)}`);
  return selector.app;
}

function workloadRole(workload: Workload): string {
  return `w:${workload.namespace}/${workload.name}`;
}

export interface CasbinModel {
  readonly policyText: string;
  readonly lines: number;
}

/** Translates the snapshot's policies and scopes into casbin policy lines (p and g); throws outside the subset. */
export function translateToCasbin(snapshot: ConfigSnapshot): CasbinModel {
  const root = snapshot.mesh.rootNamespace;
  const lines: string[] = [];
  const guarded = new Set<string>();
  for (const object of snapshot.objects) {
    if (object.kind !== 'AuthorizationPolicy') continue;
    const { namespace } = object.metadata;
    const spec = object.spec;
    if (spec.action === 'AUDIT') throw new Error('outside the compared subset: AUDIT');
    const app = selectorApp(spec.selector);
    const scope = namespace === root ? (app === undefined ? 'mesh' : `sel:*/app=${app}`) : (app === undefined ? `ns:${namespace}` : `sel:${namespace}/app=${app}`);
    if (spec.action === 'ALLOW') guarded.add(scope);
    const effect = spec.action === 'DENY' ? 'deny' : 'allow';
    for (const rule of spec.rules) {
      unsupported('rule', rule, ['from', 'to', 'when']);
      const headers: string[] = [];
      for (const condition of rule.when ?? []) {
        if (condition.parsedKey.kind !== 'request.headers' || condition.values === undefined || condition.notValues !== undefined) throw new Error(`outside the compared subset: when ${condition.key}`);
        headers.push(`${condition.parsedKey.header.toLowerCase()}=${field(condition.values).replaceAll(' ', '|')}`);
      }
      const sources: PolicySource[] = rule.from && rule.from.length > 0 ? [...rule.from] : [{}];
      const operations: PolicyOperation[] = rule.to && rule.to.length > 0 ? [...rule.to] : [{}];
      for (const source of sources) {
        unsupported('source', source, ['principals', 'namespaces', 'notNamespaces', 'ipBlocks']);
        for (const operation of operations) {
          unsupported('operation', operation, ['ports', 'methods', 'paths', 'notPaths', 'hosts']);
          if (operation.methods?.some((method) => method.includes('*'))) throw new Error('outside the compared subset: method wildcards');
          lines.push(['p', scope, field(source.principals), field(source.namespaces), field(source.notNamespaces), field(source.ipBlocks), field(operation.ports), field(operation.methods), field(operation.paths), field(operation.notPaths), field(operation.hosts?.map((host) => host.toLowerCase())), headers.length === 0 ? ABSENT : headers.join(';'), ruleHasHttp(rule) ? '1' : '0', effect].join(', '));
        }
      }
    }
  }
  lines.push(['p', 'unguarded', ...Array<string>(11).fill(ABSENT), '0', 'allow'].join(', '));
  const policyLines = lines.length;
  for (const scope of guarded) lines.push(`g, ${scope}, guarded`);
  for (const workload of snapshot.workloads) {
    const app = workload.labels.app ?? '';
    const role = workloadRole(workload);
    for (const scope of [`sel:${workload.namespace}/app=${app}`, `sel:*/app=${app}`, `ns:${workload.namespace}`, 'mesh']) lines.push(`g, ${role}, ${scope}`);
  }
  return { policyText: lines.join('\n'), lines: policyLines };
}

export interface CasbinEngine {
  readonly policyLines: number;
  readonly translateMs: number;
  readonly loadMs: number;
  decide(index: number): boolean;
}

export async function buildCasbinEngine(casbin: CasbinApi, snapshot: ConfigSnapshot, mix: readonly BenchRequest[]): Promise<CasbinEngine> {
  let started = performance.now();
  const model = translateToCasbin(snapshot);
  const translateMs = performance.now() - started;
  started = performance.now();
  const enforcer = await casbin.newEnforcer(casbin.newModelFromString(CASBIN_MODEL), new casbin.StringAdapter(model.policyText));
  const loadMs = performance.now() - started;
  // A field "-" means absent: it matches everything for anyOf and excludes nothing for noneOf.
  await enforcer.addFunction('anyOf', (value, text) => text === ABSENT || matchesAny(String(value), text as string));
  await enforcer.addFunction('noneOf', (value, text) => text === ABSENT || !matchesAny(String(value), text as string));
  await enforcer.addFunction('inBlocks', (ip, text) => inBlocks(ip as string, text as string));
  await enforcer.addFunction('headersMatch', (headers, text) => headersMatch(headers as Record<string, string>, text as string));

  const requests = mix.map((item) => {
    const request = item.request;
    const http = request.http;
    return [workloadRole(item.destination), request.principal, request.namespace, request.sourceIp, String(request.port), http?.method ?? '', http?.path ?? '', http?.host ?? '', http?.headers ?? {}, http === null ? '0' : '1'];
  });
  return {
    policyLines: model.lines,
    translateMs,
    loadMs,
    decide(index) {
      return enforcer.enforceSync(...(requests[index] as unknown[]));
    },
  };
}
