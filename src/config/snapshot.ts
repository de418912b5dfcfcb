// The validated, indexed, frozen view of one configuration load. Checks across objects happen here (duplicates,
// one IP per workload, at most one MeshConfig); after construction nothing changes: a new load builds a new
// snapshot and the watcher swaps it in whole, so the data path may keep reading the one it holds.
import { createHash } from 'node:crypto';
import { ENFORCE_ANNOTATION } from '../authz/types.ts';
import { checkPath, enforceAnnotationProblem } from '../authz/validate.ts';
import { canonicalIp, formatPath, parseDurationMs } from './fields.ts';
import { destinationRuleTlsModes } from './validate.ts';
import { ConfigError } from './issues.ts';
import type { ConfigIssue } from './issues.ts';
import {
  DEFAULT_CERTIFICATE_TTL, DEFAULT_NODE_CERTIFICATE_TTL, DEFAULT_CLUSTER_ID,
  DEFAULT_PORTS,
  DEFAULT_ROOT_NAMESPACE,
  DEFAULT_TRUST_DOMAIN,
  NODE_ANNOTATION,
  labelOf,
  workloadSpiffeId,
} from './objects.ts';
import type {
  ConfigKind,
  ConfigObject,
  DestinationRuleObject,
  Labels,
  MeshConfigObject,
  MeshSettings,
  ObjectMeta,
  ObjectOfKind,
  ObjectSource,
  PodObject,
  ServiceObject,
  WorkloadEntryObject,
} from './objects.ts';

/** Whether a name given by an operator (a flag, a CLI request) is a workload kind: exactly `Pod` or `WorkloadEntry`. */
export function isWorkloadKind(text: string): text is Workload['kind'] {
  return text === 'Pod' || text === 'WorkloadEntry';
}

/** A Pod or WorkloadEntry the registry places on a node: what the CA authorizes and the proxy serves. */
export interface Workload {
  readonly kind: 'Pod' | 'WorkloadEntry';
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  readonly serviceAccount: string;
  /**
   * The workload's name as Istio's metrics and ztunnel's baggage give it: a Deployment's for its ReplicaSet's pods,
   * a CronJob's for its Jobs', the controller's for other controller-made pods, else the object's own name.
   */
  readonly workloadName: string;
  /** The kind that name belongs to, lower-case (`deployment`, `cronjob`, `daemonset`, `pod`, `workloadentry`, ...). */
  readonly workloadType: string;
  /**
   * Istio's canonical service and revision (`service.istio.io/canonical-name`, then `app.kubernetes.io/name`, then
   * `app`, else the workload name; `service.istio.io/canonical-revision`, `app.kubernetes.io/version`, `version`,
   * else `latest`): the `*_canonical_*`, `*_app` and `*_version` metric labels and the baggage's service.*.
   */
  readonly canonicalService: string;
  readonly canonicalRevision: string;
  /** The MeshConfig's clusterId: every workload of a configuration is in its cluster. */
  readonly cluster: string;
  /**
   * Istio's locality, region/zone[/subzone]: a WorkloadEntry's spec.locality, a Pod's `istio-locality` label (dots
   * for the slashes a label value cannot hold); '' when not given. ztunnel's `*_region` and `*_zone` metric labels.
   */
  readonly region: string;
  readonly zone: string;
  /** Canonical spellings, primary IP first. */
  readonly ips: readonly string[];
  /** A Pod's node addresses (status.hostIP/hostIPs); a WorkloadEntry's own address, the host it runs on. */
  readonly hostIps: readonly string[];
  /** A Pod's metadata.labels; a WorkloadEntry's metadata.labels overlaid with its spec.labels. */
  readonly labels: Labels;
  /** spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT */
  readonly identity: string;
  readonly source: ObjectSource;
  readonly object: PodObject | WorkloadEntryObject;
}

export interface SnapshotOptions {
  /** Absolute configuration directory, kept so relative paths in objects (bundleFile) can be resolved. */
  dir?: string;
  /** Refuse a configuration without a MeshConfig (the CA and the proxy need its trust domain). */
  requireMesh?: boolean;
  /** Problems already found while reading and parsing; reported together with the cross-object ones. */
  issues?: readonly ConfigIssue[];
  /** Names the configuration in the error heading (the directory, usually). */
  where?: string;
}

const EMPTY_WORKLOADS: readonly Workload[] = Object.freeze([]);

/** A Set the holder cannot add to: ReadonlySet is only a type, and Object.freeze does not stop Set#add. */
class FrozenSet<T> implements ReadonlySet<T> {
  readonly #set: Set<T>;

  constructor(values: Iterable<T>) {
    this.#set = new Set(values);
    Object.freeze(this);
  }

  get size(): number {
    return this.#set.size;
  }

  has(value: T): boolean {
    return this.#set.has(value);
  }

  forEach(callback: (value: T, key: T, set: ReadonlySet<T>) => void, thisArg?: unknown): void {
    for (const value of this.#set) callback.call(thisArg, value, value, this);
  }

  entries(): SetIterator<[T, T]> {
    return this.#set.entries();
  }

  keys(): SetIterator<T> {
    return this.#set.keys();
  }

  values(): SetIterator<T> {
    return this.#set.values();
  }

  [Symbol.iterator](): SetIterator<T> {
    return this.#set.values();
  }
}

const EMPTY_IDENTITIES: ReadonlySet<string> = new FrozenSet<string>([]);

/** Validates the objects as a set and indexes them; throws ConfigError listing every problem, never half a snapshot. */
export function buildSnapshot(objects: readonly ConfigObject[], options: SnapshotOptions = {}): ConfigSnapshot {
  const issues: ConfigIssue[] = [...(options.issues ?? [])];
  const unique = withoutDuplicates(objects, issues);
  const meshObject = singleMeshConfig(unique, issues, options.requireMesh ?? false);
  const mesh = meshSettings(meshObject);
  const workloads = buildWorkloads(unique, mesh, issues);
  checkClusterIps(unique, workloads, issues);
  checkEnforceAnnotations(unique, mesh.rootNamespace, issues);
  checkMutualToExternal(unique, issues);
  if (mesh.pathNormalization === 'DECODE_AND_MERGE_SLASHES') checkEscapedSlashPaths(unique, issues);
  if (issues.length > 0) throw new ConfigError(issues, options.where ?? options.dir ?? 'configuration');
  return new ConfigSnapshot(unique, meshObject, mesh, workloads, options.dir);
}

/**
 * A DestinationRule asking ISTIO_MUTUAL for a host a MESH_EXTERNAL ServiceEntry declares: Istio originates its mutual
 * TLS to it (and the connection fails against a server outside the mesh); ambit reaches such hosts by passthrough, as
 * they are, and the traffic the operator meant to protect went out in plaintext. Refused, as SIMPLE and MUTUAL are.
 */
function checkMutualToExternal(objects: readonly ConfigObject[], issues: ConfigIssue[]): void {
  const rules = objects.filter((object): object is DestinationRuleObject => object.kind === 'DestinationRule' && typeof object.spec.host === 'string');
  if (rules.length === 0) return;
  const refused = new Set<ConfigObject>();
  for (const entry of objects) {
    if (entry.kind !== 'ServiceEntry' || entry.spec.location !== 'MESH_EXTERNAL') continue;
    for (const declared of entry.spec.hosts) {
      // The rule Istio applies to the host: the most specific (its exact name, then the longest wildcard, then `*`),
      // so a mesh-wide `*` ISTIO_MUTUAL overridden for the host by its own rule (DISABLE) is not refused.
      const rule = mostSpecificRule(rules, declared.toLowerCase());
      if (rule === undefined || refused.has(rule)) continue;
      const fields = mutualTlsFields(rule.spec);
      if (fields.length > 0) refused.add(rule);
      for (const field of fields) {
        issues.push(issueAt(rule, 'CONFIG_FIELD', field, `ISTIO_MUTUAL: ${declared} is declared outside the mesh (MESH_EXTERNAL) by ${labelOf(entry)} in ${where(entry.source)}, which ambit reaches as it is: this traffic would leave in plaintext; remove it, give the host its own rule with tls.mode DISABLE, or send the client to the host's TLS port itself`));
      }
    }
  }
}

/**
 * Under DECODE_AND_MERGE_SLASHES no request path holds `%2F` or `%5C` (they are decoded to `/` before rules match): a
 * path value with one matches nothing, so a DENY written with it denies nothing. Each path value is judged again as the
 * validator judges it (authz/validate.ts checkPath), under this mode: refused, with the form that matches, when it
 * matches no request now. A `when` on `request.headers[:path]` reads the same path (its query keeps its escapes): its
 * path part is judged the same, when it stood under the default mode.
 */
function checkEscapedSlashPaths(objects: readonly ConfigObject[], issues: ConfigIssue[]): void {
  const mode = 'DECODE_AND_MERGE_SLASHES';
  for (const object of objects) {
    if (object.kind !== 'AuthorizationPolicy') continue;
    object.spec.rules.forEach((rule, ruleIndex) => {
      rule.to?.forEach((operation, toIndex) => {
        for (const key of ['paths', 'notPaths'] as const) {
          operation[key]?.forEach((value, index) => {
            const problem = checkPath(value, mode);
            if (problem !== undefined) issues.push(issueAt(object, 'CONFIG_FIELD', `spec.rules[${ruleIndex}].to[${toIndex}].operation.${key}[${index}]`, problem));
          });
        }
      });
      rule.when?.forEach((condition, whenIndex) => {
        if (condition.parsedKey.kind !== 'request.headers' || condition.parsedKey.header !== ':path') return;
        for (const key of ['values', 'notValues'] as const) {
          condition[key]?.forEach((value, index) => {
            const query = value.indexOf('?');
            const path = query < 0 ? value : value.slice(0, query);
            if (checkPath(path) !== undefined) return;
            const problem = checkPath(path, mode);
            if (problem !== undefined) issues.push(issueAt(object, 'CONFIG_FIELD', `spec.rules[${ruleIndex}].when[${whenIndex}].${key}[${index}]`, problem));
          });
        }
      });
    });
  }
}

/** The DestinationRule whose host covers `host` most closely: equal, else the longest `*.suffix`, else `*`. */
function mostSpecificRule(rules: readonly DestinationRuleObject[], host: string): DestinationRuleObject | undefined {
  let best: DestinationRuleObject | undefined;
  let bestScore = -1;
  for (const rule of rules) {
    const pattern = String(rule.spec.host).toLowerCase();
    const score = pattern === host ? Number.MAX_SAFE_INTEGER : pattern === '*' ? 0 : pattern.startsWith('*.') && host.endsWith(pattern.slice(1)) ? pattern.length : -1;
    if (score > bestScore) {
      best = rule;
      bestScore = score;
    }
  }
  return best;
}

/** Where a DestinationRule's spec asks for ISTIO_MUTUAL: its traffic policy, each port's, each subset's. */
function mutualTlsFields(spec: Readonly<Record<string, unknown>>): string[] {
  return destinationRuleTlsModes(spec).filter(({ mode }) => mode === 'ISTIO_MUTUAL').map(({ path }) => formatPath(path));
}

function issueAt(object: ConfigObject, code: ConfigIssue['code'], field: string | undefined, message: string): ConfigIssue {
  return { code, file: object.source.file, line: object.source.line, object: labelOf(object), field, message };
}

function where(source: ObjectSource): string {
  return source.line === undefined ? source.file : `${source.file}:${source.line}`;
}

function withoutDuplicates(objects: readonly ConfigObject[], issues: ConfigIssue[]): ConfigObject[] {
  const first = new Map<string, ConfigObject>();
  const unique: ConfigObject[] = [];
  for (const object of objects) {
    // Kind, not apiVersion: networking.istio.io/v1 and v1beta1 are two spellings of one resource.
    const key = labelOf(object);
    const earlier = first.get(key);
    if (earlier !== undefined) {
      issues.push(issueAt(object, 'CONFIG_DUPLICATE', undefined, `defined twice: also in ${where(earlier.source)}`));
      continue;
    }
    first.set(key, object);
    unique.push(object);
  }
  return unique;
}

function singleMeshConfig(objects: readonly ConfigObject[], issues: ConfigIssue[], required: boolean): MeshConfigObject | undefined {
  let found: MeshConfigObject | undefined;
  for (const object of objects) {
    if (object.kind !== 'MeshConfig') continue;
    if (found === undefined) found = object;
    else issues.push(issueAt(object, 'CONFIG_CONFLICT', undefined, `a second MeshConfig: ${labelOf(found)} in ${where(found.source)} already sets the mesh (at most one)`));
  }
  // A MeshConfig that was refused for its own problems is there: "no MeshConfig" beside them sent the reader looking
  // for a missing object.
  if (found === undefined && required && !issues.some((issue) => issue.object?.startsWith('MeshConfig ') === true)) {
    issues.push({
      code: 'CONFIG_MESH_MISSING',
      file: undefined,
      line: undefined,
      object: undefined,
      field: undefined,
      message: 'no MeshConfig: add one object of apiVersion ambit.dev/v1alpha1, kind MeshConfig, with spec.trustDomain',
    });
  }
  return found;
}

function meshSettings(meshObject: MeshConfigObject | undefined): MeshSettings {
  const spec = meshObject?.spec ?? {
    trustDomain: DEFAULT_TRUST_DOMAIN,
    rootNamespace: DEFAULT_ROOT_NAMESPACE,
    ports: DEFAULT_PORTS,
    egress: { mode: 'ALLOW_ANY' },
    pathNormalization: 'MERGE_SLASHES',
    federation: [],
    certificateTtl: DEFAULT_CERTIFICATE_TTL,
    nodeCertificateTtl: DEFAULT_NODE_CERTIFICATE_TTL,
    clusterId: DEFAULT_CLUSTER_ID,
  };
  // The validator already refused unparseable durations.
  return { ...spec, certificateTtlMs: parseDurationMs(spec.certificateTtl) as number, nodeCertificateTtlMs: parseDurationMs(spec.nodeCertificateTtl) as number };
}

// Pods whose containers have all terminated give their IP back to the node's pool, so the IP may be reused.
const TERMINAL_PHASES = new Set(['Succeeded', 'Failed']);

function buildWorkloads(objects: readonly ConfigObject[], mesh: MeshSettings, issues: ConfigIssue[]): Workload[] {
  const workloads: Workload[] = [];
  const ipOwner = new Map<string, Workload>();
  const localities = nodeLocalities(objects);
  for (const object of objects) {
    const workload = toWorkload(object, mesh, localities);
    if (workload === undefined) continue;
    let conflict = false;
    for (const ip of workload.ips) {
      const owner = ipOwner.get(ip);
      if (owner === undefined) continue;
      const field = object.kind === 'Pod' ? 'status.podIP' : 'spec.address';
      issues.push(issueAt(object, 'CONFIG_CONFLICT', field, `${ip} is also the IP of ${owner.kind} ${owner.namespace}/${owner.name} in ${where(owner.source)}`));
      conflict = true;
    }
    if (conflict) continue;
    for (const ip of workload.ips) ipOwner.set(ip, workload);
    workloads.push(workload);
  }
  return workloads;
}

/** A Job a CronJob made is named after it with a timestamp suffix (Istio's heuristic). */
const CRON_JOB_NAME = /^(.+)-\d{8,10}$/;

/** Istio's GetDeployMetaFromPod: the workload name and kind of a pod, from its generated name's controller. */
function podWorkloadName(metadata: ObjectMeta): [string, string] {
  const controller = metadata.controller;
  if (controller === undefined || metadata.generated !== true) return [metadata.name, 'pod'];
  const hash = metadata.labels['pod-template-hash'];
  if (controller.kind === 'ReplicaSet' && hash !== undefined && hash !== '' && controller.name.endsWith(`-${hash}`)) {
    return [controller.name.slice(0, controller.name.length - hash.length - 1), 'deployment'];
  }
  if (controller.kind === 'Job') {
    const cron = CRON_JOB_NAME.exec(controller.name);
    if (cron !== null) return [cron[1] as string, 'cronjob'];
  }
  return [controller.name, controller.kind.toLowerCase()];
}

/** Istio's CanonicalService / CanonicalRevision (pkg/model/labels). */
function canonical(labels: Labels, workloadName: string): { canonicalService: string; canonicalRevision: string } {
  return {
    canonicalService: firstSet(labels, 'service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app') ?? workloadName,
    canonicalRevision: firstSet(labels, 'service.istio.io/canonical-revision', 'app.kubernetes.io/version', 'version') ?? 'latest',
  };
}

/** The first of `keys` with a value; an empty one counts as unset (it would be an empty baggage value). */
function firstSet(labels: Labels, ...keys: string[]): string | undefined {
  for (const key of keys) {
    const value = Object.hasOwn(labels, key) ? labels[key] : undefined;
    if (value !== undefined && value !== '') return value;
  }
  return undefined;
}

/** The pod label that overrides a pod's locality (Istio's), `region.zone.subzone`: label values cannot hold slashes. */
const LOCALITY_LABEL = 'istio-locality';
/** A Node's topology labels, which give its pods their locality as istiod gives it to ztunnel (the beta ones before 1.17). */
const REGION_LABELS = ['topology.kubernetes.io/region', 'failure-domain.beta.kubernetes.io/region'];
const ZONE_LABELS = ['topology.kubernetes.io/zone', 'failure-domain.beta.kubernetes.io/zone'];
const SUBZONE_LABEL = 'topology.istio.io/subzone';

/** Each Node's locality by name, from its topology labels; nodes without them are left out. */
function nodeLocalities(objects: readonly ConfigObject[]): Map<string, string> {
  const byNode = new Map<string, string>();
  for (const object of objects) {
    if (object.kind !== 'Node') continue;
    const labels = object.metadata.labels;
    const region = firstSet(labels, ...REGION_LABELS) ?? '';
    const zone = firstSet(labels, ...ZONE_LABELS) ?? '';
    const subzone = firstSet(labels, SUBZONE_LABEL) ?? '';
    if (region !== '' || zone !== '' || subzone !== '') byNode.set(object.metadata.name, `${region}/${zone}/${subzone}`);
  }
  return byNode;
}

/** region/zone/subzone → the region and zone ('' for a part not given). */
function locality(text: string | undefined): { region: string; zone: string } {
  if (text === undefined) return { region: '', zone: '' };
  const [region = '', zone = ''] = text.split('/');
  return { region, zone };
}

function toWorkload(object: ConfigObject, mesh: MeshSettings, localities: ReadonlyMap<string, string>): Workload | undefined {
  const { name, namespace } = object.metadata;
  const trustDomain = mesh.trustDomain;
  if (object.kind === 'Pod') {
    const { nodeName, serviceAccountName, hostNetwork } = object.spec;
    const { podIP, podIPs, phase, hostIPs } = object.status;
    // Not (yet, or any more) a mesh workload: unscheduled, no sandbox IP, host-network, or finished.
    if (nodeName === undefined || podIP === undefined || hostNetwork || (phase !== undefined && TERMINAL_PHASES.has(phase))) return undefined;
    const ips = [podIP];
    for (const { ip } of podIPs) if (!ips.includes(ip)) ips.push(ip);
    const [workloadName, workloadType] = podWorkloadName(object.metadata);
    return {
      kind: 'Pod',
      name,
      namespace,
      node: nodeName,
      serviceAccount: serviceAccountName,
      workloadName,
      workloadType,
      ...canonical(object.metadata.labels, workloadName),
      cluster: mesh.clusterId,
      // An empty label counts as none, as Istio's.
      ...locality(firstSet(object.metadata.labels, LOCALITY_LABEL)?.replaceAll('.', '/') ?? localities.get(nodeName)),
      ips,
      hostIps: hostIPs,
      labels: object.metadata.labels,
      identity: workloadSpiffeId(trustDomain, namespace, serviceAccountName),
      source: object.source,
      object,
    };
  }
  if (object.kind === 'WorkloadEntry') {
    const node = object.metadata.annotations[NODE_ANNOTATION] as string;
    const labels = { ...object.metadata.labels, ...object.spec.labels };
    return {
      kind: 'WorkloadEntry',
      name,
      namespace,
      node,
      serviceAccount: object.spec.serviceAccount,
      workloadName: name,
      workloadType: 'workloadentry',
      ...canonical(labels, name),
      cluster: mesh.clusterId,
      ...locality(object.spec.locality),
      ips: [object.spec.address],
      hostIps: [object.spec.address],
      labels,
      identity: workloadSpiffeId(trustDomain, namespace, object.spec.serviceAccount),
      source: object.source,
      object,
    };
  }
  return undefined;
}

/**
 * A cluster IP is one Service's: not another's, and not a workload's either (routing looks cluster IPs up first, so
 * connections to that workload would silently go to the Service's pods instead).
 */
function checkClusterIps(objects: readonly ConfigObject[], workloads: readonly Workload[], issues: ConfigIssue[]): void {
  const owner = new Map<string, ServiceObject>();
  const workloadByIp = new Map<string, Workload>();
  for (const workload of workloads) for (const ip of workload.ips) workloadByIp.set(ip, workload);
  for (const object of objects) {
    if (object.kind !== 'Service') continue;
    const ips = object.spec.clusterIPs.length > 0 ? object.spec.clusterIPs : object.spec.clusterIP === undefined ? [] : [object.spec.clusterIP];
    for (const ip of ips) {
      if (ip === 'None') continue;
      const workload = workloadByIp.get(ip);
      if (workload !== undefined) issues.push(issueAt(object, 'CONFIG_CONFLICT', 'spec.clusterIP', `${ip} is also the IP of ${labelOf(workload.object)} in ${where(workload.object.source)}`));
      const earlier = owner.get(ip);
      if (earlier !== undefined) {
        issues.push(issueAt(object, 'CONFIG_CONFLICT', 'spec.clusterIP', `${ip} is also the cluster IP of ${labelOf(earlier)} in ${where(earlier.source)}`));
      } else {
        owner.set(ip, object);
      }
    }
  }
}

/** `ambit.dev/enforce` needs the root namespace, which only the whole set knows (the MeshConfig's, or the default). */
function checkEnforceAnnotations(objects: readonly ConfigObject[], rootNamespace: string, issues: ConfigIssue[]): void {
  for (const object of objects) {
    if (object.kind !== 'PeerAuthentication' || object.metadata.annotations[ENFORCE_ANNOTATION] === undefined) continue;
    const problem = enforceAnnotationProblem(object.metadata.namespace, object.spec, rootNamespace);
    if (problem !== undefined) issues.push(issueAt(object, 'CONFIG_FIELD', formatPath(['metadata', 'annotations', ENFORCE_ANNOTATION]), problem));
  }
}

export class ConfigSnapshot {
  /** Content hash of the objects (not of their file layout): equal configurations have equal versions. */
  readonly version: string;
  readonly dir: string | undefined;
  /** The MeshConfig's settings, or the defaults (trust domain cluster.local) when there is none and none was required. */
  readonly mesh: MeshSettings;
  readonly meshObject: MeshConfigObject | undefined;
  /** Every object, in file order then position in file. */
  readonly objects: readonly ConfigObject[];
  readonly workloads: readonly Workload[];
  readonly services: readonly ServiceObject[];
  readonly #workloadsByNode: ReadonlyMap<string, readonly Workload[]>;
  readonly #identitiesByNode: ReadonlyMap<string, ReadonlySet<string>>;
  readonly #workloadByIp: ReadonlyMap<string, Workload>;
  readonly #workloadsByNodeAndName: ReadonlyMap<string, ReadonlyMap<string, readonly Workload[]>>;
  readonly #serviceByHost: ReadonlyMap<string, ServiceObject>;
  readonly #byKind: ReadonlyMap<ConfigKind, readonly ConfigObject[]>;

  /** Use buildSnapshot (or loadConfigDir): this constructor trusts that the set was already checked. */
  constructor(objects: readonly ConfigObject[], meshObject: MeshConfigObject | undefined, mesh: MeshSettings, workloads: readonly Workload[], dir: string | undefined) {
    this.objects = deepFreeze([...objects]);
    this.meshObject = meshObject;
    this.mesh = deepFreeze(mesh);
    this.workloads = deepFreeze([...workloads]);
    this.dir = dir;
    this.version = contentVersion(this.objects);

    const byKind = new Map<ConfigKind, ConfigObject[]>();
    for (const object of this.objects) {
      const list = byKind.get(object.kind);
      if (list === undefined) byKind.set(object.kind, [object]);
      else list.push(object);
    }
    for (const list of byKind.values()) Object.freeze(list);
    this.#byKind = byKind;
    this.services = (byKind.get('Service') ?? []) as readonly ServiceObject[];

    const byNode = new Map<string, Workload[]>();
    const byIp = new Map<string, Workload>();
    const byNodeAndName = new Map<string, Map<string, Workload[]>>();
    for (const workload of this.workloads) {
      let named = byNodeAndName.get(workload.node);
      if (named === undefined) byNodeAndName.set(workload.node, (named = new Map()));
      // A Pod and a WorkloadEntry may share namespace/name (two kinds, as in Kubernetes): both are kept.
      const key = `${workload.namespace}/${workload.name}`;
      const same = named.get(key);
      if (same === undefined) named.set(key, [workload]);
      else same.push(workload);
      const list = byNode.get(workload.node);
      if (list === undefined) byNode.set(workload.node, [workload]);
      else list.push(workload);
      for (const ip of workload.ips) byIp.set(ip, workload);
    }
    const identities = new Map<string, ReadonlySet<string>>();
    for (const [node, list] of byNode) {
      Object.freeze(list);
      identities.set(node, new FrozenSet(list.map((workload) => workload.identity)));
    }
    this.#workloadsByNode = byNode;
    this.#identitiesByNode = identities;
    this.#workloadByIp = byIp;
    for (const named of byNodeAndName.values()) for (const list of named.values()) Object.freeze(list);
    this.#workloadsByNodeAndName = byNodeAndName;

    const byHost = new Map<string, ServiceObject>();
    for (const service of this.services) byHost.set(service.hostname, service);
    this.#serviceByHost = byHost;
    Object.freeze(this);
  }

  workloadsOnNode(node: string): readonly Workload[] {
    return this.#workloadsByNode.get(node) ?? EMPTY_WORKLOADS;
  }

  /**
   * The CA's question, "may node N obtain identity X?", is `identitiesOnNode(N).has(X)`: yes iff the registry
   * places a workload with identity X on N (as Istio's NodeAuthorizer requires).
   */
  identitiesOnNode(node: string): ReadonlySet<string> {
    return this.#identitiesByNode.get(node) ?? EMPTY_IDENTITIES;
  }

  /**
   * The workloads of node N named `namespace/name`, in file order: one, or a Pod and a WorkloadEntry that share
   * the name (an outbound listener's owner, looked up per connection).
   */
  workloadsOnNodeByName(node: string, key: string): readonly Workload[] {
    return this.#workloadsByNodeAndName.get(node)?.get(key) ?? EMPTY_WORKLOADS;
  }

  /** Accepts any spelling of the address, including `::ffff:10.0.0.1` as a dual-stack socket reports IPv4 peers. */
  workloadByIp(ip: string): Workload | undefined {
    const found = this.#workloadByIp.get(ip);
    if (found !== undefined) return found;
    const canonical = canonicalIp(ip);
    return canonical === undefined || canonical === ip ? undefined : this.#workloadByIp.get(canonical);
  }

  /** A Kubernetes Service by its cluster hostname, NAME.NAMESPACE.svc.cluster.local. */
  serviceByHost(host: string): ServiceObject | undefined {
    return this.#serviceByHost.get(host) ?? this.#serviceByHost.get(host.toLowerCase().replace(/\.$/, ''));
  }

  objectsOfKind<K extends ConfigKind>(kind: K): readonly ObjectOfKind<K>[] {
    return (this.#byKind.get(kind) ?? []) as readonly ObjectOfKind<K>[];
  }
}

function deepFreeze<T>(value: T): T {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value;
  if (value instanceof Map) lockMap(value);
  Object.freeze(value);
  for (const child of Object.values(value)) deepFreeze(child);
  return value;
}

function refuseMapChange(): never {
  throw new TypeError('a configuration snapshot is immutable');
}

/**
 * Object.freeze does not stop Map#set (a PeerAuthentication's portLevelMtls is a Map). Shadowing the mutators on
 * the instance, not enumerable, keeps it a plain Map to its readers and to equality checks.
 */
function lockMap(map: Map<unknown, unknown>): void {
  for (const method of ['set', 'delete', 'clear']) Object.defineProperty(map, method, { value: refuseMapChange, enumerable: false });
  for (const child of map.values()) deepFreeze(child);
}

/**
 * Each object's canonical JSON, kept as long as the object: a reload reuses the objects of every file it did not parse
 * again (ParsedFiles), and their text need not be made again (5,000 pods: 150 ms per reload).
 */
const canonicalText = new WeakMap<ConfigObject, string>();

function contentVersion(objects: readonly ConfigObject[]): string {
  const entries = objects.map((object) => {
    let json = canonicalText.get(object);
    if (json === undefined) {
      const { source: _source, ...content } = object;
      canonicalText.set(object, (json = canonicalJson(content)));
    }
    return [labelOf(object), json] as const;
  });
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const hash = createHash('sha256');
  for (const [, json] of entries) hash.update(json).update('\n');
  return hash.digest('hex').slice(0, 16);
}

/** JSON with sorted keys and undefined members dropped, so equal content always hashes the same. */
function canonicalJson(value: unknown): string {
  if (value instanceof Map) return canonicalJson(Object.fromEntries(value));
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item ?? null)).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const keys = Object.keys(value).filter((key) => (value as Record<string, unknown>)[key] !== undefined).sort();
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}
