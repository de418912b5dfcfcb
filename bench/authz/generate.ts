// The benchmark's world: a seeded, deterministic configuration (Pods with labels across namespaces, a Service per
// app, a MeshConfig and AuthorizationPolicies) written as the YAML users write, so it goes through the real loader.
// The policies use only the Istio subset every compared engine expresses naturally (FEATURES below); the Cedar
// and casbin translators refuse anything outside it, so the subset cannot drift silently.

export interface Scale {
  readonly namespaces: number;
  readonly appsPerNamespace: number;
  readonly replicas: number;
  /** AuthorizationPolicies in all, the root namespace's included. */
  readonly policies: number;
  /** Mesh-wide policies in the root namespace. */
  readonly rootPolicies: number;
}

/**
 * The issue's figure: 10,000 policies over 1,000 workloads (50 namespaces × 20 apps, one pod each), so a policy
 * selecting one app selects one workload and each workload is selected by ~10 policies of its app, plus its
 * namespace's namespace-wide ones and the mesh-wide ones.
 */
export const FULL_SCALE: Scale = { namespaces: 50, appsPerNamespace: 20, replicas: 1, policies: 10_000, rootPolicies: 20 };
/** The same density per workload at a tenth of the size: 1,000 policies over 100 workloads. */
export const QUICK_SCALE: Scale = { namespaces: 5, appsPerNamespace: 20, replicas: 1, policies: 1_000, rootPolicies: 2 };

export const ROOT_NAMESPACE = 'istio-system';
export const TRUST_DOMAIN = 'cluster.local';
/** Ports of every generated workload: HTTP (declared by its Service), gRPC, and a plain TCP port. */
export const HTTP_PORT = 8080;
export const GRPC_PORT = 9090;
export const TCP_PORT = 7070;

/** What the comparison covers; printed with the table. */
export const FEATURES = [
  'actions ALLOW and DENY (DENY before ALLOW; no ALLOW policy → allow; ALLOW policies, none matching → deny; an ALLOW policy without rules allows nothing)',
  'scopes: namespace-wide, selector matchLabels {app}, mesh-wide in the root namespace with and without a selector',
  'from.source: principals (exact, prefix `x*`, suffix `*x`), namespaces, notNamespaces, ipBlocks (IPv4 CIDR)',
  'to.operation: ports, methods, paths (exact and prefix), notPaths, hosts (lower-case, exact)',
  'when: request.headers[NAME] values (exact)',
  'rules with several from / to entries (OR) and several fields (AND)',
  'L4 connections at moment tcp: an ALLOW rule with HTTP fields matches nothing, a DENY rule applies with its HTTP fields ignored',
];

/** mulberry32: small, fast, and the same sequence on every machine for a seed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Picker {
  readonly random: () => number;

  constructor(seed: number) {
    this.random = seededRandom(seed);
  }

  int(below: number): number {
    return Math.floor(this.random() * below);
  }

  chance(probability: number): boolean {
    return this.random() < probability;
  }

  one<T>(list: readonly T[]): T {
    if (list.length === 0) throw new Error('pick from an empty list');
    return list[this.int(list.length)] as T;
  }

  /** Between min and max distinct elements (fewer when the list is shorter). */
  some<T>(list: readonly T[], min: number, max: number): T[] {
    const count = Math.min(list.length, min + this.int(max - min + 1));
    const copy = [...list];
    this.shuffle(copy);
    return copy.slice(0, count);
  }

  shuffle<T>(list: T[]): T[] {
    for (let i = list.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [list[i], list[j]] = [list[j] as T, list[i] as T];
    }
    return list;
  }
}

const TEAMS = [
  'payments', 'orders', 'catalog', 'checkout', 'search', 'billing', 'identity', 'inventory', 'shipping', 'reviews',
  'pricing', 'ledger', 'fraud', 'notify', 'media', 'profile', 'ads', 'analytics', 'support', 'partner',
  'loyalty', 'tax', 'returns', 'warehouse', 'booking',
];
const ENVIRONMENTS = ['prod', 'stage'];
const APPS = [
  'web', 'api', 'worker', 'db', 'cache', 'auth', 'gateway', 'ledger', 'search', 'queue', 'reports', 'admin', 'cron', 'export',
  'import', 'stream', 'render', 'ingest', 'scheduler', 'mailer', 'thumbnails', 'webhooks', 'graphql', 'sync',
];
export const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'];
export const RESOURCES = ['orders', 'items', 'users', 'carts', 'payments', 'reports', 'invoices', 'sessions', 'accounts', 'events'];
export const TENANTS = ['tenant-a', 'tenant-b', 'tenant-c', 'tenant-d', 'tenant-e', 'tenant-f'];

export interface GeneratedWorkload {
  readonly name: string;
  readonly namespace: string;
  readonly app: string;
  /** Istio principal form, `cluster.local/ns/NS/sa/SA`. */
  readonly principal: string;
  readonly ip: string;
}

export interface GeneratedConfig {
  readonly yaml: string;
  readonly namespaces: readonly string[];
  readonly workloads: readonly GeneratedWorkload[];
  readonly policyCount: number;
}

function namespaceName(index: number): string {
  return `${TEAMS[index % TEAMS.length]}-${ENVIRONMENTS[Math.floor(index / TEAMS.length) % ENVIRONMENTS.length]}${index >= TEAMS.length * ENVIRONMENTS.length ? `-${index}` : ''}`;
}

/** YAML flow sequence of quoted strings (ports quoted too, as Istio's examples write them). */
function list(values: readonly (string | number)[]): string {
  return `[${values.map((value) => JSON.stringify(String(value))).join(', ')}]`;
}

interface SourceSpec {
  principals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  ipBlocks?: string[];
}

interface OperationSpec {
  ports?: number[];
  methods?: string[];
  paths?: string[];
  notPaths?: string[];
  hosts?: string[];
}

interface ConditionSpec {
  header: string;
  values: string[];
}

interface RuleSpec {
  from?: SourceSpec[];
  to?: OperationSpec[];
  when?: ConditionSpec[];
}

function ruleYaml(rule: RuleSpec): string {
  const lines: string[] = [];
  const field = (indent: string, name: string, values: readonly (string | number)[] | undefined) => {
    if (values !== undefined) lines.push(`${indent}${name}: ${list(values)}`);
  };
  let first = true;
  const item = () => {
    const prefix = first ? '    - ' : '      ';
    first = false;
    return prefix;
  };
  if (rule.from) {
    lines.push(`${item()}from:`);
    for (const source of rule.from) {
      lines.push('        - source:');
      field('            ', 'principals', source.principals);
      field('            ', 'namespaces', source.namespaces);
      field('            ', 'notNamespaces', source.notNamespaces);
      field('            ', 'ipBlocks', source.ipBlocks);
    }
  }
  if (rule.to) {
    lines.push(`${item()}to:`);
    for (const operation of rule.to) {
      lines.push('        - operation:');
      field('            ', 'ports', operation.ports);
      field('            ', 'methods', operation.methods);
      field('            ', 'paths', operation.paths);
      field('            ', 'notPaths', operation.notPaths);
      field('            ', 'hosts', operation.hosts);
    }
  }
  if (rule.when) {
    lines.push(`${item()}when:`);
    for (const condition of rule.when) {
      lines.push(`        - key: request.headers[${condition.header}]`);
      field('          ', 'values', condition.values);
    }
  }
  if (first) lines.push('    - {}');
  return lines.join('\n');
}

function policyYaml(namespace: string, name: string, action: 'ALLOW' | 'DENY', app: string | undefined, rules: readonly RuleSpec[]): string {
  const selector = app === undefined ? '' : `  selector:\n    matchLabels:\n      app: ${app}\n`;
  const body = rules.length === 0 ? '  {}\n' : `  action: ${action}\n  rules:\n${rules.map(ruleYaml).join('\n')}\n`;
  // An ALLOW policy without rules is written as Istio's documented allow-nothing: a spec with only a selector.
  const spec = rules.length === 0 ? (selector === '' ? body : selector) : `${selector}${body}`;
  return `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ${name}\n  namespace: ${namespace}\nspec:\n${spec}`;
}

/** Builds the configuration for a scale; the same seed gives the same text, byte for byte. */
export function generateConfig(scale: Scale, seed: number): GeneratedConfig {
  const pick = new Picker(seed);
  const documents: string[] = [];
  documents.push(`apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  trustDomain: ${TRUST_DOMAIN}\n  rootNamespace: ${ROOT_NAMESPACE}\n`);

  const namespaces: string[] = [];
  const appsOf = new Map<string, string[]>();
  const workloads: GeneratedWorkload[] = [];
  for (let n = 0; n < scale.namespaces; n++) {
    const namespace = namespaceName(n);
    namespaces.push(namespace);
    const apps = pick.some(APPS, scale.appsPerNamespace, scale.appsPerNamespace);
    appsOf.set(namespace, apps);
    apps.forEach((app, a) => {
      documents.push(`apiVersion: v1\nkind: Service\nmetadata:\n  name: ${app}\n  namespace: ${namespace}\nspec:\n  selector:\n    app: ${app}\n  clusterIP: 10.96.${n}.${a + 1}\n  ports:\n    - name: http\n      port: 80\n      targetPort: ${HTTP_PORT}\n    - name: grpc\n      port: ${GRPC_PORT}\n    - name: tcp-data\n      port: ${TCP_PORT}\n`);
      for (let r = 0; r < scale.replicas; r++) {
        const name = `${app}-${r}`;
        const ip = `10.${n + 1}.${a}.${10 + r}`;
        workloads.push({ name, namespace, app, principal: `${TRUST_DOMAIN}/ns/${namespace}/sa/${app}`, ip });
        documents.push(`apiVersion: v1\nkind: Pod\nmetadata:\n  name: ${name}\n  namespace: ${namespace}\n  labels:\n    app: ${app}\n    version: v${1 + (r % 2)}\nspec:\n  nodeName: node-${workloads.length % 16}\n  serviceAccountName: ${app}\n  containers:\n    - name: ${app}\n      image: registry.example/${app}:1\n      ports:\n        - containerPort: ${HTTP_PORT}\n          name: http\n        - containerPort: ${GRPC_PORT}\n          name: grpc\n        - containerPort: ${TCP_PORT}\n          name: tcp-data\nstatus:\n  phase: Running\n  podIP: ${ip}\n`);
      }
    });
  }

  const principals = [...new Set(workloads.map((workload) => workload.principal))];
  const subnetOf = (namespace: string) => `10.${namespaces.indexOf(namespace) + 1}.0.0/16`;
  const localPrincipal = (namespace: string) => `${TRUST_DOMAIN}/ns/${namespace}/sa/${pick.one(appsOf.get(namespace) as string[])}`;
  // Callers come mostly from the same namespace and a few neighbours, as real call graphs do.
  const callerNamespaces = (namespace: string, min: number, max: number) => {
    const neighbours = [namespace, ...pick.some(namespaces, 2, 4)];
    return [...new Set(pick.some(neighbours, min, max))];
  };
  const callerPrincipals = (namespace: string, min: number, max: number) => {
    const result = new Set<string>();
    const count = min + pick.int(max - min + 1);
    while (result.size < count) result.add(pick.chance(0.6) ? localPrincipal(namespace) : pick.one(principals));
    return [...result];
  };
  const host = (app: string, namespace: string) => [`${app}.${namespace}.svc.cluster.local`, `${app}.${namespace}`];
  const apiPaths = () => {
    const resources = pick.some(RESOURCES, 1, 3);
    return resources.map((resource) => (pick.chance(0.5) ? `/api/v1/${resource}` : `/api/v2/${resource}/*`));
  };

  const allowRule = (namespace: string, app: string | undefined): RuleSpec => {
    const kind = pick.int(7);
    switch (kind) {
      case 0: // L4: named callers to the TCP port
        return { from: [{ principals: callerPrincipals(namespace, 1, 3) }], to: [{ ports: [TCP_PORT] }] };
      case 1: // L4: whole namespaces to the TCP and gRPC ports
        return { from: [{ namespaces: callerNamespaces(namespace, 1, 2) }], to: [{ ports: [TCP_PORT, GRPC_PORT] }] };
      case 2: // L4: a subnet, with a namespace exclusion
        return { from: [{ ipBlocks: [subnetOf(pick.one(namespaces))], notNamespaces: [pick.one(namespaces)] }], to: [{ ports: [TCP_PORT] }] };
      case 3: { // L7: an API for some namespaces
        const operation: OperationSpec = { ports: [HTTP_PORT], methods: pick.some(METHODS.slice(0, 5), 1, 3), paths: apiPaths() };
        if (app !== undefined && pick.chance(0.5)) operation.hosts = host(app, namespace);
        return { from: [{ namespaces: callerNamespaces(namespace, 1, 3) }], to: [operation] };
      }
      case 4: // L7: a namespace prefix of principals, tenant header
        return {
          from: [{ principals: [`${TRUST_DOMAIN}/ns/${pick.one(callerNamespaces(namespace, 1, 1))}/*`] }],
          to: [{ methods: ['GET', 'POST'], paths: apiPaths(), notPaths: ['/api/v1/internal'] }],
          when: [{ header: 'x-tenant', values: pick.some(TENANTS, 1, 3) }],
        };
      case 5: // several sources and operations: L4 for some, L7 for others
        return {
          from: [{ principals: callerPrincipals(namespace, 1, 2) }, { namespaces: callerNamespaces(namespace, 1, 1) }],
          to: [{ ports: [GRPC_PORT] }, { ports: [HTTP_PORT], methods: ['GET'], paths: apiPaths() }],
        };
      default: // a service-account suffix across the mesh, read-only
        return { from: [{ principals: [`*/sa/${pick.one(APPS)}`] }], to: [{ methods: ['GET', 'HEAD'] }] };
    }
  };

  const denyRule = (namespace: string): RuleSpec => {
    const kind = pick.int(5);
    switch (kind) {
      case 0: // a quarantined caller, every port
        return { from: [{ principals: [pick.one(principals)] }] };
      case 1: // admin paths from outside the namespace (HTTP port only, so plain TCP is not affected)
        return { from: [{ notNamespaces: [namespace, ROOT_NAMESPACE] }], to: [{ ports: [HTTP_PORT], paths: ['/admin/*', '/debug/*'] }] };
      case 2: // deletes with a debug header
        return { to: [{ ports: [HTTP_PORT], methods: ['DELETE'] }], when: [{ header: 'x-debug', values: ['1'] }] };
      case 3: // a subnet on the TCP port
        return { from: [{ ipBlocks: [`${subnetOf(pick.one(namespaces))}`] }], to: [{ ports: [TCP_PORT] }] };
      default: // writes from one namespace
        return { from: [{ namespaces: [pick.one(namespaces)] }], to: [{ ports: [HTTP_PORT], methods: ['PUT', 'PATCH', 'DELETE'] }] };
    }
  };

  let policyCount = 0;
  const emit = (namespace: string, name: string, action: 'ALLOW' | 'DENY', app: string | undefined, rules: readonly RuleSpec[]) => {
    documents.push(policyYaml(namespace, name, action, app, rules));
    policyCount++;
  };

  // Mesh-wide: deny the outside world and a quarantine namespace everywhere; per-app debug and monitoring rules.
  for (let i = 0; i < scale.rootPolicies; i++) {
    const app = pick.one(APPS);
    switch (i % 10 === 0 ? 0 : i % 10 === 5 ? 1 : 2 + (i % 2)) {
      case 0:
        emit(ROOT_NAMESPACE, `deny-external-${i}`, 'DENY', undefined, [{ from: [{ ipBlocks: ['192.168.0.0/16', `172.${16 + (i % 16)}.0.0/16`] }] }]);
        break;
      case 1:
        emit(ROOT_NAMESPACE, `deny-quarantine-${i}`, 'DENY', undefined, [{ from: [{ principals: [`${TRUST_DOMAIN}/ns/quarantine-${i}/*`] }] }]);
        break;
      case 2:
        emit(ROOT_NAMESPACE, `deny-debug-${app}-${i}`, 'DENY', app, [{ to: [{ ports: [HTTP_PORT], paths: ['/debug/*'], notPaths: ['/debug/health'] }] }]);
        break;
      default:
        emit(ROOT_NAMESPACE, `allow-monitoring-${app}-${i}`, 'ALLOW', app, [{ from: [{ namespaces: [pick.one(namespaces)] }], to: [{ ports: [GRPC_PORT] }] }]);
    }
  }

  const perNamespace = scale.policies - scale.rootPolicies;
  namespaces.forEach((namespace, n) => {
    const count = Math.floor(perNamespace / namespaces.length) + (n < perNamespace % namespaces.length ? 1 : 0);
    const apps = appsOf.get(namespace) as string[];
    for (let i = 0; i < count; i++) {
      // ~1 % namespace-wide (two or so per namespace); the rest select one app, as almost every real policy does.
      const app = pick.chance(0.01) ? undefined : pick.one(apps);
      const deny = pick.chance(0.3);
      const target = app ?? 'all';
      if (!deny && pick.chance(0.005)) {
        emit(namespace, `allow-nothing-${target}-${i}`, 'ALLOW', app, []);
        continue;
      }
      const ruleCount = 1 + pick.int(3);
      const rules: RuleSpec[] = [];
      for (let r = 0; r < ruleCount; r++) rules.push(deny ? denyRule(namespace) : allowRule(namespace, app));
      emit(namespace, `${deny ? 'deny' : 'allow'}-${target}-${i}`, deny ? 'DENY' : 'ALLOW', app, rules);
    }
  });

  return { yaml: documents.join('---\n'), namespaces, workloads, policyCount };
}
