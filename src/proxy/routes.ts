// Routing: compiled once per configuration snapshot into lookup tables, then a pure decision per new
// connection, (table, source, target) → Route, with no parsing and no allocation on the common path
// (ztunnel's build_request, made a table lookup).
import { isIP } from 'node:net';
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import type { ServiceEntryEndpoint, ServiceEntryObject, ServiceEntryPort, ServiceObject } from '../config/objects.ts';
import { entryTargetPort, targetPortOn } from '../config/http-ports.ts';
import { formatAuthority } from './authority.ts';
import { canonicalIp } from '../config/fields.ts';
import { UNKNOWN_SERVICE } from '../observe/metrics.ts';
import type { ServiceLabels } from '../observe/metrics.ts';
import { labelsOfService } from './labels.ts';
import { CidrSet, parseIp } from '../authz/match.ts';

/** One destination workload on one port, with everything the tunnel needs, computed at load. */
export interface Endpoint {
  readonly workload: Workload;
  readonly ip: string;
  readonly port: number;
  /** The CONNECT :authority, `ip:port`. */
  readonly authority: string;
  /** Where the destination node's proxy listens for this workload: `ip:15008`. */
  readonly hboneHost: string;
  readonly hbonePort: number;
  /** `hboneHost:hbonePort`, the pool's key for the peer proxy. */
  readonly hboneAuthority: string;
  /** The SPIFFE ID the server must present. */
  readonly identity: string;
}

export interface HboneRoute {
  readonly kind: 'hbone';
  readonly endpoint: Endpoint;
  /** The Service the connection addressed, when it addressed one. */
  readonly service: ServiceObject | undefined;
  /** Its metric labels (UNKNOWN_SERVICE without one). */
  readonly serviceLabels: ServiceLabels;
}

export interface PassthroughRoute {
  readonly kind: 'passthrough';
  readonly host: string;
  readonly port: number;
  /** The ServiceEntry (namespace/name) whose endpoint this is, or the ExternalName Service (`Service namespace/name`) it points to: configuration chose it, not the operator. */
  readonly entry?: string;
  /** The ServiceEntry's metric labels (its host as destination_service), when one names the destination. */
  readonly serviceLabels?: ServiceLabels;
}

export type DenyReason = 'EGRESS_BLOCKED' | 'NO_HEALTHY_UPSTREAM' | 'SERVICE_PORT_UNKNOWN';

export interface DenyRoute {
  readonly kind: 'deny';
  readonly reason: DenyReason;
  readonly message: string;
}

export type Route = HboneRoute | PassthroughRoute | DenyRoute;

/** An ExternalName Service's name: the name its chain of ExternalNames ends at, or null for a chain that loops. */
export interface ExternalNameAlias {
  readonly target: string | null;
  /** `Service namespace/name`, the first of the chain. */
  readonly service: string;
  /** The chain as written, for messages: `a.x → b.y → c.example.com`. */
  readonly chain: string;
}

/** How many ExternalNames a chain may pass through: more is refused as a loop would be. */
const MAX_EXTERNAL_NAME_HOPS = 8;

/** A Service (or ServiceEntry) port with its ready endpoints, each already wrapped as the route to return. */
interface ServicePortRoutes {
  readonly port: number;
  /** HBONE to mesh workloads; plain TCP (passthrough) to a mesh ServiceEntry's endpoints outside the mesh. */
  readonly routes: readonly (HboneRoute | PassthroughRoute)[];
  /** A ServiceEntry's endpoint weights as running totals (cumulativeWeights), null when all alike (or a Service). */
  readonly weights: Float64Array | null;
  readonly none: DenyRoute;
  /** A ServiceEntry's exportTo: the namespaces whose workloads it routes; null (a Service, or exported to all) every one. */
  readonly visibleTo: ReadonlySet<string> | null;
  /** A ServiceEntry's namespace (its own workloads prefer it, as Istio's); null for a Service. */
  readonly namespace: string | null;
  /** Other ServiceEntries naming the same host or address and port, in configuration order (see chooseVisible). */
  next: ServicePortRoutes | null;
}

export interface RoutingTable {
  readonly snapshot: ConfigSnapshot;
  /** hostname (full and short forms) → service port → routes. */
  readonly byHost: ReadonlyMap<string, ReadonlyMap<number, ServicePortRoutes>>;
  /** cluster IP → service port → routes. */
  readonly byVip: ReadonlyMap<string, ReadonlyMap<number, ServicePortRoutes>>;
  /**
   * Names (normalised) and addresses (canonical: cluster IPs, mesh entries' single addresses) of the mesh's Services and
   * mesh ServiceEntries, with their TCP ports: on a port they do not declare, never sent as plain TCP where a name
   * resolves or to the address.
   */
  readonly serviceNames: ReadonlyMap<string, readonly MeshName[]>;
  /** An ExternalName Service's names → where its chain of CNAMEs ends: an alias of that name, on any port. */
  readonly externalNames: ReadonlyMap<string, ExternalNameAlias>;
  readonly hbonePort: number;
  readonly egressLocked: boolean;
  /** Destinations outside the mesh that ServiceEntries name: what REGISTRY_ONLY lets through (externalEntry). */
  readonly external: ExternalRegistry;
  /** Every mesh ServiceEntry's single addresses, routed ports or not (meshAddressOf). */
  readonly meshEntryAddresses: ReadonlySet<string>;
  /**
   * The Services selecting a destination workload, for its `destination_service` labels (inboundService): found on
   * the first connection to it under this table, as only the node's own workloads are ever asked for.
   */
  readonly servicesOf: Map<Workload, WorkloadServices>;
  /** Routes to workloads dialled by their own IP, made on first use (workloadRoute). */
  readonly byWorkloadIp: WorkloadRoutes;
}

/** At most this many routes to workloads by IP are kept per table: a workload dialling every port of every pod grows it no further. */
const WORKLOAD_ROUTES_KEPT = 4_096;

/** Canonical IP → port → the route there, for connections addressed to a workload's IP rather than a Service. */
class WorkloadRoutes {
  readonly #byIp = new Map<string, Map<number, HboneRoute | DenyRoute>>();
  #size = 0;

  get(ip: string, port: number): HboneRoute | DenyRoute | undefined {
    return this.#byIp.get(ip)?.get(port);
  }

  keep(ip: string, port: number, route: HboneRoute | DenyRoute): HboneRoute | DenyRoute {
    if (this.#size >= WORKLOAD_ROUTES_KEPT) return route;
    let ports = this.#byIp.get(ip);
    if (ports === undefined) this.#byIp.set(ip, (ports = new Map()));
    ports.set(port, route);
    this.#size++;
    return route;
  }
}

/** The Services that select one workload: by hostname, and by the target port they reach on it (the first wins). */
export interface WorkloadServices {
  readonly byHost: ReadonlyMap<string, ServiceLabels>;
  /** ServiceEntry hosts, believed from a peer of a namespace the entry is exported to (null: every namespace). */
  readonly byEntryHost: ReadonlyMap<string, { readonly labels: ServiceLabels; readonly visibleTo: ReadonlySet<string> | null }>;
  readonly byPort: ReadonlyMap<number, ServiceLabels>;
}

/** Whether a workload dialled by its own address can take a connection: a pod that is Running (or says no phase). */
function isRunning(workload: Workload): boolean {
  if (workload.object.kind !== 'Pod') return true;
  const phase = workload.object.status.phase;
  return phase === undefined || phase === 'Running';
}

/**
 * Whether a Service sends new connections to a workload: running, not marked not-ready by its readiness probe, and not
 * terminating, as Kubernetes' endpoints (and so Istio's healthy workloads) count it. Its own address still reaches it.
 */
function isReady(workload: Workload): boolean {
  if (!isRunning(workload)) return false;
  if (workload.object.kind !== 'Pod') return true;
  const { ready, terminating } = workload.object.status;
  return ready !== false && !terminating;
}

/** A Service selects workloads only with a selector (one without names its endpoints elsewhere). */
function selects(selector: Readonly<Record<string, string>> | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (selector === undefined) return false;
  for (const key in selector) if (labels[key] !== selector[key]) return false;
  return true;
}

export function makeEndpoint(workload: Workload, ip: string, port: number, hbonePort: number): Endpoint {
  return { workload, ip, port, authority: formatAuthority(ip, port), hboneHost: ip, hbonePort, hboneAuthority: formatAuthority(ip, hbonePort), identity: workload.identity };
}

function addTo(index: Map<string, Map<number, ServicePortRoutes>>, key: string, entry: ServicePortRoutes): void {
  let ports = index.get(key);
  if (!ports) index.set(key, (ports = new Map()));
  ports.set(entry.port, entry);
}

/**
 * Adds what a ServiceEntry routes. A Service's own name or VIP stays the Service's (visible to all, it is always
 * chosen); entries naming the same key are all kept, in configuration order, and the choice is made per source
 * namespace (chooseVisible), so an entry exported to one namespace cannot hide another's from the rest.
 */
function addEntryCandidate(index: Map<string, Map<number, ServicePortRoutes>>, key: string, entry: ServicePortRoutes): void {
  const existing = index.get(key)?.get(entry.port);
  if (existing === undefined) {
    addTo(index, key, { ...entry, next: null });
    return;
  }
  if (existing.namespace === null) return; // a Service's
  let last = existing;
  while (last.next !== null) last = last.next;
  last.next = { ...entry, next: null };
}

/** An address, or a /32 or /128 block, as a single canonical IP; undefined for a wider block. */
function singleAddress(block: string): string | undefined {
  const slash = block.indexOf('/');
  if (slash < 0) return canonicalIp(block);
  const bits = block.slice(slash + 1);
  const address = canonicalIp(block.slice(0, slash));
  if (address === undefined) return undefined;
  return bits === (address.includes(':') ? '128' : '32') ? address : undefined;
}

/**
 * Whether a ServiceEntry names mesh workloads (a workloadSelector, or an endpoint at a workload IP): it is routed
 * over HBONE, with NO_HEALTHY_UPSTREAM when none is ready, and never passed through to plain TCP by the egress rules.
 */
function isMeshEntry(snapshot: ConfigSnapshot, object: ServiceEntryObject): boolean {
  return object.spec.workloadSelector !== undefined || object.spec.endpoints.some((endpoint) => snapshot.workloadByIp(endpoint.address) !== undefined);
}

interface EntryMember {
  readonly workload: Workload;
  /** Port names to numbers: a selected WorkloadEntry's `ports`, or the endpoint's. */
  readonly ports: Readonly<Record<string, number>>;
  /** A selected WorkloadEntry's or the endpoint's `weight`. */
  readonly weight: number | undefined;
}

/** The mesh workloads a ServiceEntry names, ready or not: by its workloadSelector (in its namespace), else its endpoints. */
function entryMembers(snapshot: ConfigSnapshot, object: ServiceEntryObject): EntryMember[] {
  const { spec, metadata } = object;
  if (spec.workloadSelector !== undefined) {
    const selector = spec.workloadSelector.labels;
    return snapshot.workloads
      .filter((w) => w.namespace === metadata.namespace && selects(selector, w.labels))
      .map((workload) => (workload.object.kind === 'WorkloadEntry' ? { workload, ports: workload.object.spec.ports, weight: workload.object.spec.weight } : { workload, ports: {}, weight: undefined }));
  }
  const members: EntryMember[] = [];
  for (const endpoint of spec.endpoints) {
    const workload = snapshot.workloadByIp(endpoint.address);
    if (workload !== undefined) members.push({ workload, ports: endpoint.ports, weight: endpoint.weight });
  }
  return members;
}


const byEntry = new WeakMap<ServiceEntryObject, ServiceLabels>();

/** A ServiceEntry's `destination_service*` labels: its first host that is not a wildcard, its name and namespace. */
function labelsOfEntry(object: ServiceEntryObject): ServiceLabels {
  let labels = byEntry.get(object);
  if (labels === undefined) {
    const { name, namespace } = object.metadata;
    const host = object.spec.hosts.find((candidate) => !candidate.startsWith('*')) ?? object.spec.hosts[0] ?? name;
    labels = Object.freeze({ hostname: host, name, namespace });
    byEntry.set(object, labels);
  }
  return labels;
}

function exportedTo(namespace: string, exportTo: readonly string[]): ReadonlySet<string> | null {
  return exportTo.length === 0 || exportTo.includes('*') ? null : new Set(exportTo.map((value) => (value === '.' ? namespace : value)));
}

/**
 * A name of the mesh: what it is (`Service web.shop.svc.cluster.local`, `ServiceEntry shop/db`), its TCP ports, and
 * the namespaces that see it (null: all; a Service is seen by all).
 */
interface MeshName {
  readonly what: string;
  readonly ports: readonly number[];
  readonly visibleTo: ReadonlySet<string> | null;
  /** A Kubernetes Service's name (true), or a mesh ServiceEntry's host (false). */
  readonly service: boolean;
}

/**
 * A ServiceEntry that names mesh workloads (Istio's VM pattern: WorkloadEntries behind a ServiceEntry's
 * workloadSelector, or endpoints at workload IPs) routes its hosts and addresses over HBONE as a Service does. A
 * selected WorkloadEntry takes the port its `ports` map gives under the entry port's name; otherwise the entry port's
 * targetPort, else its number. Its other endpoints (resolution STATIC or DNS), outside the mesh, are drawn alongside
 * and reached as plain TCP, as ztunnel reaches a workload without HBONE; never one at a Service's cluster IP.
 */
function addServiceEntryRoutes(snapshot: ConfigSnapshot, hbonePort: number, byHost: Map<string, Map<number, ServicePortRoutes>>, byVip: Map<string, Map<number, ServicePortRoutes>>, serviceNames: Map<string, MeshName[]>): ReadonlySet<string> {
  const meshEntries = snapshot.objectsOfKind('ServiceEntry').filter((object) => isMeshEntry(snapshot, object));
  // Every mesh entry's own addresses, whatever their order: an endpoint at one is never reached as plain TCP.
  const entryAddresses = new Set<string>();
  for (const object of meshEntries) {
    for (const address of object.spec.addresses) {
      const single = singleAddress(address);
      if (single !== undefined) entryAddresses.add(single);
    }
  }
  const mesh = { snapshot, byVip, meshEntryAddresses: entryAddresses };
  for (const object of meshEntries) {
    const { namespace, name } = object.metadata;
    const spec = object.spec;
    const members = entryMembers(snapshot, object).filter(({ workload }) => isReady(workload));
    const outside = spec.workloadSelector !== undefined || spec.resolution === 'NONE' ? [] : spec.endpoints.filter((endpoint) => meshAddressOf(mesh, endpoint.address) === null);
    const serviceLabels = labelsOfEntry(object);
    const visibleTo = exportedTo(namespace, spec.exportTo);
    // Its hosts on a port it does not declare go nowhere, as a Service's, for the namespaces that see it: where the
    // name resolves is its workloads, reached as plain TCP past their policy.
    const named: MeshName = { what: `ServiceEntry ${namespace}/${name}`, ports: spec.ports.filter((port) => port.protocol !== 'UDP').map((port) => port.number), visibleTo, service: false };
    for (const host of spec.hosts) if (!host.startsWith('*')) addName(serviceNames, normalHost(host), named);
    // Its single addresses but a workload's own IP, which is that workload's on every port (ztunnel looks workloads up
    // first): an entry cannot take it over.
    const addresses: string[] = [];
    for (const address of spec.addresses) {
      const single = singleAddress(address);
      if (single !== undefined && snapshot.workloadByIp(single) === undefined) addresses.push(single);
    }
    for (const address of addresses) addName(serviceNames, address, named);
    for (const port of spec.ports) {
      if (port.protocol === 'UDP') continue;
      const routes: (HboneRoute | PassthroughRoute)[] = [];
      const weights: (number | undefined)[] = [];
      for (const { workload, ports, weight } of members) {
        const target = entryTargetPort(port, ports);
        const ip = workload.ips[0];
        if (ip === undefined) continue;
        routes.push(Object.freeze({ kind: 'hbone' as const, endpoint: Object.freeze(makeEndpoint(workload, ip, target, hbonePort)), service: undefined, serviceLabels }));
        weights.push(weight);
      }
      for (const endpoint of outside) {
        routes.push(Object.freeze({ kind: 'passthrough' as const, host: endpoint.address, port: entryTargetPort(port, endpoint.ports), entry: `${namespace}/${name}`, serviceLabels }));
        weights.push(endpoint.weight);
      }
      const entry: ServicePortRoutes = {
        port: port.number,
        routes: Object.freeze(routes),
        weights: cumulativeWeights(weights),
        none: Object.freeze({ kind: 'deny' as const, reason: 'NO_HEALTHY_UPSTREAM' as const, message: `ServiceEntry ${namespace}/${name} port ${port.number} has no ready endpoint` }),
        visibleTo,
        namespace,
        next: null,
      };
      for (const candidate of spec.hosts) if (!candidate.startsWith('*')) addEntryCandidate(byHost, normalHost(candidate), entry);
      for (const address of addresses) addEntryCandidate(byVip, address, entry);
    }
  }
  return entryAddresses;
}

/** One ServiceEntry as the egress check reads it. */
interface ExternalEntry {
  /** namespace/name, for logs. */
  readonly name: string;
  readonly namespace: string;
  /** Its TCP ports by number (an entry without ports admits none). */
  readonly ports: ReadonlyMap<number, ServiceEntryPort>;
  /** Namespaces whose workloads see it; null: every namespace (exportTo "*", or none given). */
  readonly visibleTo: ReadonlySet<string> | null;
  /** The endpoints' running weight totals (a missing or zero weight is 1, as Istio), when their weights differ. */
  readonly cumulativeWeights: Float64Array | null;
  /**
   * resolution STATIC, DNS or DNS_ROUND_ROBIN with endpoints: per entry port, the route to each endpoint (built once,
   * not per connection), where its connections go instead of the address or name dialled (a DNS entry's endpoints are
   * names, resolved as they are dialled); null otherwise. Without the endpoints at a Service's cluster IP or a mesh
   * entry's address, which are reached over HBONE, never as plain TCP.
   */
  readonly routesByPort: ReadonlyMap<number, readonly PassthroughRoute[]> | null;
  /** Its metric labels: its host is the destination_service of the connections it admits. */
  readonly serviceLabels: ServiceLabels;
  /** Of an entry naming several hosts, each one's labels (Istio makes a service per host); null for one host. */
  readonly labelsByHost: ReadonlyMap<string, ServiceLabels> | null;
  /** With endpoints but none outside the mesh: the answer. */
  readonly none: DenyRoute;
}

interface ExternalRegistry {
  /** Lower-case host without a trailing dot → entries naming it. */
  readonly byHost: ReadonlyMap<string, readonly ExternalEntry[]>;
  /** `*.example.com` keyed `.example.com` (any subdomain, not the apex): a name looks up each of its suffixes. */
  readonly wildcards: ReadonlyMap<string, readonly ExternalEntry[]>;
  /** spec.addresses that are one address (canonical) → entries naming it. */
  readonly byAddress: ReadonlyMap<string, readonly ExternalEntry[]>;
  /** spec.addresses wider than one address, per entry. */
  readonly blocks: readonly { readonly cidrs: CidrSet; readonly entry: ExternalEntry }[];
  /** Whether any entry routes to endpoints (only then are names looked up without REGISTRY_ONLY). */
  readonly anyEndpoints: boolean;
}

function normalHost(host: string): string {
  const lower = host.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

function appendTo<K, T>(map: Map<K, T[]>, key: K, value: T): void {
  const list = map.get(key);
  if (list === undefined) map.set(key, [value]);
  else list.push(value);
}

/**
 * The ServiceEntries' hosts and addresses, with their ports and visibility (exportTo: "." is the entry's own
 * namespace, "*" or none every namespace). Entries of either location count: Istio's registry holds both.
 * Indexed here so that a connection looks up its name's suffixes and its address, not every entry.
 */
function buildExternal(snapshot: ConfigSnapshot, mesh: MeshAddresses): ExternalRegistry {
  const byHost = new Map<string, ExternalEntry[]>();
  const wildcards = new Map<string, ExternalEntry[]>();
  const byAddress = new Map<string, ExternalEntry[]>();
  const blocks: { cidrs: CidrSet; entry: ExternalEntry }[] = [];
  let anyEndpoints = false;
  for (const object of snapshot.objectsOfKind('ServiceEntry')) {
    // Mesh workloads are reached over HBONE only (addServiceEntryRoutes), never as plain TCP to what a name resolves to.
    if (isMeshEntry(snapshot, object)) continue;
    const namespace = object.metadata.namespace;
    const exportTo = object.spec.exportTo;
    const visibleTo = exportedTo(namespace, exportTo);
    // A DNS entry with addresses and no endpoints: its host is the endpoint (Istio: "the host field will be used as the
    // DNS name of the endpoint to route traffic to"), so a connection to one of its addresses (a virtual IP) goes to
    // the host. It had gone to the address, which nothing answers.
    const dnsHost = (object.spec.resolution === 'DNS' || object.spec.resolution === 'DNS_ROUND_ROBIN') && object.spec.endpoints.length === 0 && object.spec.addresses.length > 0
      ? object.spec.hosts.find((host) => !host.startsWith('*'))
      : undefined;
    const routed = (object.spec.resolution !== 'NONE' && object.spec.endpoints.length > 0) || dnsHost !== undefined;
    const declared: readonly ServiceEntryEndpoint[] = dnsHost === undefined ? object.spec.endpoints : [{ address: dnsHost, ports: {}, labels: {}, network: undefined, locality: undefined, weight: undefined, serviceAccount: undefined }];
    const endpoints = routed ? declared.filter((endpoint) => meshAddressOf(mesh, endpoint.address) === null) : null;
    const name = `${namespace}/${object.metadata.name}`;
    const ports = new Map(object.spec.ports.filter((port) => port.protocol !== 'UDP').map((port) => [port.number, port]));
    const serviceLabels = labelsOfEntry(object);
    const named = object.spec.hosts.filter((host) => !host.startsWith('*'));
    const labelsByHost = named.length < 2 ? null : new Map(named.map((host) => [normalHost(host), Object.freeze({ hostname: host, name: object.metadata.name, namespace })]));
    const entry: ExternalEntry = {
      name,
      namespace,
      serviceLabels,
      labelsByHost,
      ports,
      visibleTo,
      cumulativeWeights: endpoints === null ? null : cumulativeWeights(endpoints.map((endpoint) => endpoint.weight)),
      routesByPort: endpoints === null ? null : new Map([...ports].map(([number, port]) => [number, Object.freeze(endpoints.map((endpoint) => Object.freeze({ kind: 'passthrough' as const, host: endpoint.address, port: entryTargetPort(port, endpoint.ports), entry: name, serviceLabels })))])),
      none: Object.freeze({ kind: 'deny' as const, reason: 'NO_HEALTHY_UPSTREAM' as const, message: `ServiceEntry ${name} has no endpoint outside the mesh (one at a Service's cluster IP is reached over HBONE, never as plain TCP)` }),
    };
    anyEndpoints ||= entry.routesByPort !== null;
    for (const host of object.spec.hosts) {
      if (host.startsWith('*.')) appendTo(wildcards, normalHost(host.slice(1)), entry);
      else appendTo(byHost, normalHost(host), entry);
    }
    const ranges: string[] = [];
    for (const address of object.spec.addresses) {
      const single = singleAddress(address);
      if (single !== undefined) appendTo(byAddress, single, entry);
      else ranges.push(address);
    }
    if (ranges.length > 0) blocks.push({ cidrs: new CidrSet(ranges), entry });
  }
  return { byHost, wildcards, byAddress, blocks, anyEndpoints };
}

function admits(entry: ExternalEntry, port: number, sourceNamespace: string): boolean {
  return entry.ports.has(port) && (entry.visibleTo === null || entry.visibleTo.has(sourceNamespace));
}

/** Of the entries naming one host or address, as Istio: one of the source's own namespace, else the first exported to it. */
function firstAdmitting(entries: readonly ExternalEntry[] | undefined, port: number, sourceNamespace: string): ExternalEntry | undefined {
  if (entries === undefined) return undefined;
  let first: ExternalEntry | undefined;
  for (const entry of entries) {
    if (!admits(entry, port, sourceNamespace)) continue;
    if (entry.namespace === sourceNamespace) return entry;
    first ??= entry;
  }
  return first;
}

/**
 * The ServiceEntry that puts host:port in the registry for a workload of `sourceNamespace`, or undefined: under
 * REGISTRY_ONLY only these destinations outside the mesh are reached. A name matches a host exactly, else the most
 * specific `*.` wildcard (any subdomain, not the apex); an address one of spec.addresses, else a block among them;
 * the port must be one of spec.ports (an entry without ports admits none), and the entry must be exported to the
 * source's namespace.
 */
export function externalEntry(table: RoutingTable, host: string, port: number, sourceNamespace: string): string | undefined {
  return findExternal(table, host, port, sourceNamespace)?.name;
}

function findExternal(table: RoutingTable, host: string, port: number, sourceNamespace: string): ExternalEntry | undefined {
  const external = table.external;
  if (isIP(host) !== 0) {
    // A zone (fe80::1%eth0) does not change the address an entry names.
    const zone = host.indexOf('%');
    const address = zone < 0 ? host : host.slice(0, zone);
    const exact = firstAdmitting(external.byAddress.get(address) ?? external.byAddress.get(canonicalIp(address) ?? address), port, sourceNamespace);
    if (exact !== undefined || external.blocks.length === 0) return exact;
    const ip = parseIp(host);
    if (ip === null) return undefined;
    let first: ExternalEntry | undefined;
    for (const { cidrs, entry } of external.blocks) {
      if (!admits(entry, port, sourceNamespace) || !cidrs.contains(ip)) continue;
      if (entry.namespace === sourceNamespace) return entry;
      first ??= entry;
    }
    return first;
  }
  const name = normalHost(host);
  const exact = firstAdmitting(external.byHost.get(name), port, sourceNamespace);
  if (exact !== undefined || external.wildcards.size === 0) return exact;
  // `.b.example.com`, then `.example.com`, then `.com`: never the whole name (a wildcard does not match its apex).
  for (let dot = name.indexOf('.', 1); dot > 0; dot = name.indexOf('.', dot + 1)) {
    const found = firstAdmitting(external.wildcards.get(name.slice(dot)), port, sourceNamespace);
    if (found !== undefined) return found;
  }
  return undefined;
}

export function buildRoutingTable(snapshot: ConfigSnapshot): RoutingTable {
  const hbonePort = snapshot.mesh.ports.hbone;
  const byHost = new Map<string, Map<number, ServicePortRoutes>>();
  const byVip = new Map<string, Map<number, ServicePortRoutes>>();
  const serviceNames = new Map<string, MeshName[]>();
  const pointers = new Map<string, { target: string; service: string }>();
  for (const service of snapshot.services) {
    // Short forms a client may dial without a resolver: name.ns, name.ns.svc, and the full hostname.
    const names = [service.hostname, `${service.metadata.name}.${service.metadata.namespace}`, `${service.metadata.name}.${service.metadata.namespace}.svc`];
    // An ExternalName Service's name is a CNAME: as Istio (since 1.21) and Kubernetes' DNS, an alias of where it points,
    // on any port, resolved below once every Service is known.
    if (service.spec.type === 'ExternalName') {
      const target = service.spec.externalName;
      const pointed = target === undefined ? undefined : { target: normalHost(target), service: `Service ${service.metadata.namespace}/${service.metadata.name}` };
      if (pointed !== undefined) for (const host of names) pointers.set(host, pointed);
      continue;
    }
    const named: MeshName = { what: `Service ${service.hostname}`, ports: service.spec.ports.filter((port) => port.protocol === 'TCP').map((port) => port.port), visibleTo: null, service: true };
    for (const host of names) addName(serviceNames, host, named);
    const vips = service.spec.clusterIPs.length > 0 ? service.spec.clusterIPs : service.spec.clusterIP && service.spec.clusterIP !== 'None' ? [service.spec.clusterIP] : [];
    for (const vip of vips) addName(serviceNames, canonicalIp(vip) ?? vip, named);
    const namespace = service.metadata.namespace;
    const serviceLabels = labelsOfService(service);
    // publishNotReadyAddresses: every running pod is an endpoint, ready or not, as Kubernetes publishes them.
    const admits = service.spec.publishNotReadyAddresses ? isRunning : isReady;
    const members = snapshot.workloads.filter((w) => w.namespace === namespace && admits(w) && selects(service.spec.selector, w.labels));
    for (const port of service.spec.ports) {
      if (port.protocol !== 'TCP') continue;
      const routes: HboneRoute[] = [];
      for (const workload of members) {
        const target = targetPortOn(workload, port);
        const ip = workload.ips[0];
        if (target === undefined || ip === undefined) continue;
        routes.push(Object.freeze({ kind: 'hbone' as const, endpoint: Object.freeze(makeEndpoint(workload, ip, target, hbonePort)), service, serviceLabels }));
      }
      const entry: ServicePortRoutes = Object.freeze({
        port: port.port,
        routes: Object.freeze(routes),
        weights: null,
        none: Object.freeze({ kind: 'deny' as const, reason: 'NO_HEALTHY_UPSTREAM' as const, message: `service ${service.hostname}:${port.port} has no ready endpoint` }),
        visibleTo: null,
        namespace: null,
        next: null,
      });
      for (const host of names) addTo(byHost, host, entry);
      for (const vip of vips) addTo(byVip, vip, entry);
    }
  }
  const meshEntryAddresses = addServiceEntryRoutes(snapshot, hbonePort, byHost, byVip, serviceNames);
  const externalNames = resolveExternalNames(pointers);
  return { snapshot, byHost, byVip, serviceNames, externalNames, hbonePort, egressLocked: snapshot.mesh.egress.mode === 'REGISTRY_ONLY', external: buildExternal(snapshot, { snapshot, byVip, meshEntryAddresses }), meshEntryAddresses, servicesOf: new Map(), byWorkloadIp: new WorkloadRoutes() };
}

/** Each ExternalName Service's name → where its chain of ExternalNames ends (null: it loops or is too long). */
function resolveExternalNames(pointers: ReadonlyMap<string, { target: string; service: string }>): Map<string, ExternalNameAlias> {
  const aliases = new Map<string, ExternalNameAlias>();
  for (const [host, first] of pointers) {
    const chain = [host, first.target];
    let target: string | null = first.target;
    for (let next = pointers.get(first.target); next !== undefined; next = pointers.get(next.target)) {
      const looped = chain.includes(next.target);
      chain.push(next.target);
      if (looped || chain.length > MAX_EXTERNAL_NAME_HOPS + 1) {
        target = null;
        break;
      }
      target = next.target;
    }
    aliases.set(host, Object.freeze({ target, service: first.service, chain: chain.join(' → ') }));
  }
  return aliases;
}

/**
 * Where an ExternalName Service's name goes: where its target does, from the same source on the same port (a
 * Service, a ServiceEntry, or the name outside the mesh, which REGISTRY_ONLY refuses unless an entry admits it:
 * the alias is no entry of the registry). A passthrough keeps the Service as the configuration that chose it.
 */
function aliasRoute(table: RoutingTable, host: string, alias: ExternalNameAlias, port: number, random: () => number, sourceNamespace: string | undefined): Route {
  if (alias.target === null) {
    return { kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM', message: `${host} is ${alias.service}, whose chain of ExternalNames loops or passes more than ${MAX_EXTERNAL_NAME_HOPS}: ${alias.chain}` };
  }
  const route = decideRoute(table, alias.target, port, random, sourceNamespace);
  if (route.kind === 'passthrough') return route.entry === undefined ? { ...route, entry: alias.service } : route;
  if (route.kind === 'deny') return { kind: 'deny', reason: route.reason, message: `${host} is ${alias.service}, an alias of ${alias.target}: ${route.message}` };
  return route;
}

/** The Services of `snapshot` selecting `workload`, ready or not: by hostname, and by the target port each reaches. */
function servicesSelecting(snapshot: ConfigSnapshot, workload: Workload): WorkloadServices {
  const byHost = new Map<string, ServiceLabels>();
  const byPort = new Map<number, ServiceLabels>();
  for (const service of snapshot.services) {
    if (service.metadata.namespace !== workload.namespace || !selects(service.spec.selector, workload.labels)) continue;
    const labels = labelsOfService(service);
    byHost.set(service.hostname, labels);
    for (const port of service.spec.ports) {
      const target = port.protocol === 'TCP' ? targetPortOn(workload, port) : undefined;
      if (target !== undefined && !byPort.has(target)) byPort.set(target, labels);
    }
  }
  // ServiceEntries of its namespace naming the workload are services of the registry too (ztunnel's), after the Services.
  const byEntryHost = new Map<string, { labels: ServiceLabels; visibleTo: ReadonlySet<string> | null }>();
  for (const { object, ports } of entriesNaming(snapshot).get(workload) ?? []) {
    const labels = labelsOfEntry(object);
    if (!byHost.has(labels.hostname) && !byEntryHost.has(labels.hostname)) byEntryHost.set(labels.hostname, { labels, visibleTo: exportedTo(object.metadata.namespace, object.spec.exportTo) });
    for (const port of object.spec.ports) {
      const target = port.protocol === 'UDP' ? undefined : entryTargetPort(port, ports);
      if (target !== undefined && !byPort.has(target)) byPort.set(target, labels);
    }
  }
  return { byHost, byEntryHost, byPort };
}

const entriesNamingCache = new WeakMap<ConfigSnapshot, ReadonlyMap<Workload, readonly { object: ServiceEntryObject; ports: Readonly<Record<string, number>> }[]>>();

/**
 * For each workload, the mesh ServiceEntries of its own namespace that name it (an entry elsewhere listing its IP as
 * an endpoint does not make it that entry's), built once per snapshot: the inbound side asks per local workload.
 */
function entriesNaming(snapshot: ConfigSnapshot): ReadonlyMap<Workload, readonly { object: ServiceEntryObject; ports: Readonly<Record<string, number>> }[]> {
  let index = entriesNamingCache.get(snapshot);
  if (index !== undefined) return index;
  const built = new Map<Workload, { object: ServiceEntryObject; ports: Readonly<Record<string, number>> }[]>();
  for (const object of snapshot.objectsOfKind('ServiceEntry')) {
    if (!isMeshEntry(snapshot, object)) continue;
    for (const { workload, ports } of entryMembers(snapshot, object)) {
      if (workload.namespace === object.metadata.namespace) appendTo(built, workload, { object, ports });
    }
  }
  entriesNamingCache.set(snapshot, (index = built));
  return index;
}

/**
 * ztunnel's guess_inbound_service: among the Services selecting the destination workload, then the ServiceEntries of
 * its namespace naming it and exported to the peer's namespace, the one the client's `forwarded: host=` names, else
 * the first whose target port is the one dialled. Only a service of the registry that names the workload is ever
 * reported, so a peer cannot add label values of its own.
 */
export function inboundService(table: RoutingTable, destination: Workload, forwardedHost: string | null, port: number, peerNamespace: string | null = null): ServiceLabels {
  let services = table.servicesOf.get(destination);
  if (services === undefined) table.servicesOf.set(destination, (services = servicesSelecting(table.snapshot, destination)));
  if (forwardedHost !== null) {
    const service = services.byHost.get(forwardedHost);
    if (service !== undefined) return service;
    // An entry not exported to the peer's namespace is not one its workloads could have addressed.
    const entry = services.byEntryHost.get(forwardedHost);
    if (entry !== undefined && (entry.visibleTo === null || (peerNamespace !== null && entry.visibleTo.has(peerNamespace)))) return entry.labels;
  }
  return services.byPort.get(port) ?? UNKNOWN_SERVICE;
}

/** What the table knows of addresses in the mesh (a RoutingTable, or the parts of one being built). */
type MeshAddresses = Pick<RoutingTable, 'snapshot' | 'byVip' | 'meshEntryAddresses'>;

/**
 * What a canonical IP is in the mesh: a workload's IP, a Service's or mesh ServiceEntry's address; else null (a name
 * too). Reached over HBONE, never as plain TCP: the passthrough guard and the tables' endpoint filters both ask.
 */
export function meshAddressOf(table: MeshAddresses, ip: string): string | null {
  const workload = table.snapshot.workloadByIp(ip);
  if (workload !== undefined) return `the IP of ${workload.kind} ${workload.namespace}/${workload.name}`;
  return table.byVip.has(ip) || table.meshEntryAddresses.has(ip) ? 'a Service address in the mesh' : null;
}

const tables = new WeakMap<ConfigSnapshot, RoutingTable>();

/** The routing table of a snapshot, built on first use and kept as long as the snapshot lives. */
export function routingTableOf(snapshot: ConfigSnapshot): RoutingTable {
  let table = tables.get(snapshot);
  if (!table) tables.set(snapshot, (table = buildRoutingTable(snapshot)));
  return table;
}

/** A ServiceEntry exported to some namespaces routes only their workloads' connections (and none of an unknown source). */
function visible(entry: ServicePortRoutes, sourceNamespace: string | undefined): boolean {
  return entry.visibleTo === null || (sourceNamespace !== undefined && entry.visibleTo.has(sourceNamespace));
}

/**
 * Of the Service or ServiceEntries naming one host or address and port, the one a source namespace uses: a Service
 * (always visible, always first); else, as Istio, an entry of the source's own namespace, else the first visible.
 */
function chooseVisible(first: ServicePortRoutes, sourceNamespace: string | undefined): ServicePortRoutes | undefined {
  if (first.next === null) return visible(first, sourceNamespace) ? first : undefined;
  if (first.namespace === null) return first;
  let fallback: ServicePortRoutes | undefined;
  for (let entry: ServicePortRoutes | null = first; entry !== null; entry = entry.next) {
    if (!visible(entry, sourceNamespace)) continue;
    if (entry.namespace === sourceNamespace) return entry;
    fallback ??= entry;
  }
  return fallback;
}

/** One of `routes`: by weight when there are running totals, else uniformly; `none` when there is no route. */
function draw(routes: readonly Route[], weights: Float64Array | null, none: DenyRoute, random: () => number): Route {
  if (routes.length === 0) return none;
  if (routes.length === 1) return routes[0] as Route;
  return routes[weights === null ? Math.floor(random() * routes.length) : weightedIndex(weights, random())] as Route;
}

/**
 * Where a connection from `source` to host:port goes. A Service (by hostname or cluster IP) → a random
 * ready endpoint; a workload IP → that workload; anything else is outside the mesh → passthrough, or
 * refused when egress is locked down.
 */
export function decideRoute(table: RoutingTable, host: string, port: number, random: () => number = Math.random, sourceNamespace?: string): Route {
  const family = isIP(host);
  if (family === 0) {
    // Names are keyed lower-case without a trailing dot; another spelling is normalised only on a miss (once, for the
    // lookups below too).
    let name = host;
    let service = table.byHost.get(host)?.get(port);
    if (service === undefined) {
      name = normalHost(host);
      if (name !== host) service = table.byHost.get(name)?.get(port);
    }
    const chosen = service === undefined ? undefined : chooseVisible(service, sourceNamespace);
    if (chosen !== undefined) return draw(chosen.routes, chosen.weights, chosen.none, random);
    const alias = table.externalNames.get(name);
    if (alias !== undefined) return aliasRoute(table, name, alias, port, random, sourceNamespace);
    // A Service's own name on a port it does not have (its port changed, or the listener names the wrong one).
    const undeclared = undeclaredPort(table, name, host, port, sourceNamespace, table.external.byHost.get(name));
    if (undeclared !== undefined) return undeclared;
  } else {
    // Exact spelling first (the common case, no work); other spellings (IPv4-mapped, upper-case IPv6)
    // are canonicalised only when that misses, so the CONNECT names the address the peer knows.
    let service = table.byVip.get(host)?.get(port);
    const canonical = service === undefined ? (canonicalIp(host) ?? host) : host;
    if (service === undefined && canonical !== host) service = table.byVip.get(canonical)?.get(port);
    const chosen = service === undefined ? undefined : chooseVisible(service, sourceNamespace);
    if (chosen !== undefined) return draw(chosen.routes, chosen.weights, chosen.none, random);
    const known = table.byWorkloadIp.get(canonical, port);
    if (known !== undefined) return known;
    const workload = table.snapshot.workloadByIp(canonical);
    if (workload) return table.byWorkloadIp.keep(canonical, port, workloadRoute(workload, canonical, port, table.hbonePort));
    // A Service's cluster IP (or a mesh entry's address) on a port it does not have, as its name is: sent to the
    // address as plain TCP, it would reach the Service's workloads past the mesh.
    const undeclared = undeclaredPort(table, canonical, host, port, sourceNamespace, table.external.byAddress.get(canonical));
    if (undeclared !== undefined) return undeclared;
  }
  // Looked up under REGISTRY_ONLY (it admits the connection) and where an entry has endpoints (they are where it goes,
  // as Istio sends an entry's host and addresses to its endpoints, not to what the name resolves to).
  const entry = sourceNamespace === undefined || (!table.egressLocked && !table.external.anyEndpoints) ? undefined : findExternal(table, host, port, sourceNamespace);
  if (table.egressLocked && entry === undefined) {
    return { kind: 'deny', reason: 'EGRESS_BLOCKED', message: `${formatAuthority(host, port)} is not in the mesh registry (no Service, workload, or ServiceEntry with that host or address and port${sourceNamespace === undefined ? '' : ` exported to namespace ${sourceNamespace}`}) and egress is REGISTRY_ONLY` };
  }
  if (entry?.routesByPort != null) return staticEndpoint(entry, entry.routesByPort, port, random);
  // An entry without endpoints: where the name resolves, labelled with the entry (a connect costs far more than this object).
  return entry === undefined ? { kind: 'passthrough', host, port } : { kind: 'passthrough', host, port, serviceLabels: entry.labelsByHost?.get(normalHost(host)) ?? entry.serviceLabels };
}

/**
 * The refusal of a mesh name or address (`key`: normalised name, canonical IP) dialled on a port it does not declare,
 * if the source sees one: where the name resolves, or the address itself, is not the mesh, and sending it there would
 * carry the mesh's traffic in plain text. A mesh entry's host or address that the source's own namespace sends outside
 * the mesh on this port, by an entry naming it exactly (`external`), is that namespace's; a Service's never is (an
 * entry elsewhere, or a wildcard, would send the mesh's name out). Seen by the source: an entry private to another
 * namespace must not take its host from this one.
 */
function undeclaredPort(table: RoutingTable, key: string, host: string, port: number, sourceNamespace: string | undefined, external: readonly ExternalEntry[] | undefined): DenyRoute | undefined {
  const named = table.serviceNames.get(key)?.find((candidate) => candidate.visibleTo === null || (sourceNamespace !== undefined && candidate.visibleTo.has(sourceNamespace)));
  if (named === undefined) return undefined;
  if (!named.service && sourceNamespace !== undefined && firstAdmitting(external, port, sourceNamespace)?.namespace === sourceNamespace) return undefined;
  const what = isIP(key) === 0 ? named.what : `an address of ${named.what}`;
  return { kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN', message: `${host} is ${what}, which has no TCP port ${port} (${named.ports.length === 0 ? 'it has none' : `its ports: ${named.ports.join(', ')}`}): not sent outside the mesh` };
}

function addName(names: Map<string, MeshName[]>, host: string, named: MeshName): void {
  const list = names.get(host);
  if (list === undefined) names.set(host, [named]);
  else list.push(named);
}

/** The route to a workload dialled by its IP (on any port: the workload's own policy decides at its node). */
function workloadRoute(workload: Workload, ip: string, port: number, hbonePort: number): HboneRoute | DenyRoute {
  if (!isRunning(workload)) return Object.freeze({ kind: 'deny' as const, reason: 'NO_HEALTHY_UPSTREAM' as const, message: `workload ${workload.namespace}/${workload.name} is not running` });
  return Object.freeze({ kind: 'hbone' as const, endpoint: Object.freeze(makeEndpoint(workload, ip, port, hbonePort)), service: undefined, serviceLabels: UNKNOWN_SERVICE });
}

/** Running totals of endpoints' weights (missing or 0 is 1, as Istio), or null when all are alike (a uniform draw does). */
function cumulativeWeights(weights: readonly (number | undefined)[]): Float64Array | null {
  const weightOf = (weight: number | undefined) => (weight === undefined || weight === 0 ? 1 : weight);
  const first = weightOf(weights[0]);
  if (weights.every((weight) => weightOf(weight) === first)) return null;
  const totals = new Float64Array(weights.length);
  let total = 0;
  weights.forEach((weight, index) => (totals[index] = total += weightOf(weight)));
  return totals;
}

/** The index whose weight band `draw` (in [0, 1)) falls in: the first running total above draw × the sum. */
function weightedIndex(totals: Float64Array, draw: number): number {
  const target = draw * (totals[totals.length - 1] as number);
  let low = 0;
  let high = totals.length - 1;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((totals[middle] as number) > target) high = middle;
    else low = middle + 1;
  }
  return low;
}

/** One of an entry's endpoints (by weight), on its port named like the entry's port, else the targetPort, else the port. */
function staticEndpoint(entry: ExternalEntry, routesByPort: ReadonlyMap<number, readonly PassthroughRoute[]>, port: number, random: () => number): Route {
  // The entry admitted this port (findExternal), so it has its routes.
  return draw(routesByPort.get(port) as readonly PassthroughRoute[], entry.cumulativeWeights, entry.none, random);
}
