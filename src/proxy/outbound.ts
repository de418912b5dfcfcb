// Outbound through explicit listeners: `LISTEN → host:port`, owned by a local workload whose identity
// the tunnel carries. Each accepted connection is routed by the snapshot's routing table: HBONE to the
// endpoint's node (checking the server presents the identity the registry expects), plain passthrough
// for destinations outside the mesh, or refusal when egress is locked down. Transparent capture (15001
// with SO_ORIGINAL_DST) will feed the same `forward` with the original destination.
import type * as http2 from 'node:http2';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { canonicalIp } from '../config/fields.ts';
import { isWorkloadKind } from '../config/snapshot.ts';
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import { labelOf } from '../config/objects.ts';
import { AmbitError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { acceptErrorLogger, LogBudget } from '../observe/log.ts';
import { UNKNOWN_SERVICE, UNKNOWN_WORKLOAD } from '../observe/metrics.ts';
import type { Flushable, ProxyMetrics, ServiceLabels, TunnelLabels, TunnelMeter, WorkloadLabels } from '../observe/metrics.ts';
import { labelsOfWorkload } from './labels.ts';
import { accessLog, accessLogEnabled } from '../observe/access-log.ts';
import type { AccessLogRecord } from '../observe/access-log.ts';
import { formatAuthority, parseAuthority } from './authority.ts';
import { buildBaggage } from './baggage.ts';
import { Bridge, cancelStream, cutSocket } from './copy.ts';
import type { BridgeResult } from './copy.ts';
import type { HbonePool } from './pool.ts';
import { TunnelError } from './pool.ts';
import { decideRoute, meshAddressOf, routingTableOf } from './routes.ts';
import type { Endpoint, RoutingTable } from './routes.ts';
import { CONNECT_TIMEOUT_MS, TCP_KEEPALIVE_IDLE_MS, proxyPorts } from './settings.ts';
import { listenOn, normalizeIp, stopListening } from './inbound.ts';
import { isLoopbackAddress } from '../observe/admin.ts';
import { LocalAddresses } from './local-addresses.ts';
import { guardedLookup, passthroughRefusal } from './destinations.ts';
import type { DestinationGuard } from './destinations.ts';

/** Pod or WorkloadEntry annotation: comma-separated `[ADDRESS:]PORT=HOST:PORT`; ADDRESS defaults to the workload's IP. */
export const OUTBOUND_ANNOTATION = 'ambit.dev/outbound';

export interface OutboundListenerSpec {
  readonly listenHost: string;
  readonly listenPort: number;
  readonly targetHost: string;
  readonly targetPort: number;
  /** namespace/name of the workload that owns the listener (its identity is the tunnel's source). */
  readonly owner: string;
  /**
   * The owner's kind when the spec knows it (a workload's own annotation). A `--outbound` owner names only
   * namespace/name, so a Pod and a WorkloadEntry of that name on the node leave it ambiguous, and it is refused.
   */
  readonly ownerKind?: Workload['kind'];
  /** Where the spec came from, for errors: `file: Pod ns/name: metadata.annotations[...]` or `--outbound`. */
  readonly origin: string;
  /** Declared by a workload's annotation, not by the operator's --outbound (which takes precedence). */
  readonly annotation?: boolean;
}

export interface SpecIssue {
  readonly origin: string;
  readonly message: string;
  /** A workload's own annotation, not the operator's flag: that workload's problem, not the node's (readiness). */
  readonly annotation?: boolean;
}

function key(spec: OutboundListenerSpec): string {
  return `${formatAuthority(spec.listenHost, spec.listenPort)}=${formatAuthority(spec.targetHost, spec.targetPort)}@${ownerLabel(spec)}`;
}

/** `Pod demo/web` when the spec knows the owner's kind (a Pod and a WorkloadEntry may share the name), else `demo/web`. */
function ownerLabel(spec: OutboundListenerSpec): string {
  return spec.ownerKind === undefined ? spec.owner : `${spec.ownerKind} ${spec.owner}`;
}

/** Parses one `[ADDRESS:]PORT=HOST:PORT` entry. */
export function parseListenerEntry(entry: string, defaultHost: string | undefined): { listenHost: string; listenPort: number; targetHost: string; targetPort: number } | string {
  const equals = entry.indexOf('=');
  if (equals <= 0) return `"${entry}" is not [ADDRESS:]PORT=HOST:PORT`;
  const left = entry.slice(0, equals).trim();
  const target = parseAuthority(entry.slice(equals + 1).trim());
  if (target === null) return `target "${entry.slice(equals + 1)}" is not HOST:PORT`;
  let listenHost: string | undefined;
  let listenPort: number;
  if (/^\d+$/.test(left)) {
    listenHost = defaultHost;
    listenPort = Number(left);
    if (listenPort < 1 || listenPort > 65_535) return `listen port ${left} is out of range`;
  } else {
    const listen = parseAuthority(left);
    if (listen === null || listen.family === 0) return `listen address "${left}" is not IP:PORT`;
    listenHost = listen.host;
    listenPort = listen.port;
  }
  if (listenHost === undefined) return `"${entry}" gives no listen address and the workload has no IP`;
  return { listenHost, listenPort, targetHost: target.host, targetPort: target.port };
}

/**
 * Why a workload's annotation may not listen on `host`, or undefined. A workload's own configuration may not take
 * another's address (nor a wildcard one): its listener would catch that workload's connections and send them with
 * this one's identity, wherever it points them; a loopback address that is another workload's (a mesh on loopback, as
 * `npm start` runs one) is that workload's.
 */
function listenAddressProblem(snapshot: ConfigSnapshot, workload: Workload, host: string): string | undefined {
  if (workload.ips.includes(host)) return undefined;
  if (!isLoopbackAddress(host)) return `listen address ${host} is not one of the workload's IPs (${workload.ips.join(', ') || 'none'}) nor a loopback address; only an operator's --outbound may use another`;
  const owner = snapshot.workloadByIp(host);
  return owner === undefined || owner === workload ? undefined : `listen address ${host} is workload ${owner.namespace}/${owner.name}'s IP; only an operator's --outbound may use another`;
}

/** Listener specs declared by the annotations of this node's workloads. */
export function annotatedListeners(snapshot: ConfigSnapshot, nodeName: string): { specs: OutboundListenerSpec[]; issues: SpecIssue[] } {
  const specs: OutboundListenerSpec[] = [];
  const issues: SpecIssue[] = [];
  for (const workload of snapshot.workloadsOnNode(nodeName)) {
    const value = workload.object.metadata.annotations[OUTBOUND_ANNOTATION];
    if (value === undefined) continue;
    const origin = `${workload.source.file}: ${labelOf(workload.object)}: metadata.annotations["${OUTBOUND_ANNOTATION}"]`;
    for (const entry of value.split(',')) {
      if (entry.trim() === '') continue;
      const parsed = parseListenerEntry(entry.trim(), workload.ips[0]);
      if (typeof parsed === 'string') {
        issues.push({ origin, message: parsed });
        continue;
      }
      const problem = listenAddressProblem(snapshot, workload, parsed.listenHost);
      if (problem !== undefined) issues.push({ origin, message: problem });
      else specs.push({ ...parsed, owner: `${workload.namespace}/${workload.name}`, ownerKind: workload.kind, origin, annotation: true });
    }
  }
  return { specs, issues };
}

/**
 * One listener per listen address. The operator's --outbound flags come first and win over workloads'
 * annotations. The same listener declared twice is bound once (taking the owner's kind from an annotation that
 * names it). Two different declarations of one address are a conflict: against a flag the annotation is reported;
 * between two workloads' annotations neither is bound (one workload could otherwise take a loopback address
 * another's application uses) and both are reported.
 */
export function planListeners(specs: readonly OutboundListenerSpec[]): { listeners: OutboundListenerSpec[]; conflicts: SpecIssue[] } {
  const byAddress = new Map<string, OutboundListenerSpec>();
  const contested = new Set<string>();
  const conflicts: SpecIssue[] = [];
  const ordered = [...specs.filter((spec) => !spec.annotation), ...specs.filter((spec) => spec.annotation)];
  for (const spec of ordered) {
    const address = formatAuthority(spec.listenHost, spec.listenPort);
    const earlier = byAddress.get(address);
    if (earlier === undefined) {
      if (!contested.has(address)) byAddress.set(address, spec);
      else conflicts.push({ origin: spec.origin, message: `listen address ${address} is declared by more than one workload's annotation: not bound`, annotation: true });
    } else if (sameListener(earlier, spec)) {
      if (earlier.ownerKind === undefined && spec.ownerKind !== undefined) byAddress.set(address, { ...earlier, ownerKind: spec.ownerKind });
    } else {
      conflicts.push({ origin: spec.origin, message: `listen address ${address} is already declared by ${earlier.origin} (to ${formatAuthority(earlier.targetHost, earlier.targetPort)} for ${ownerLabel(earlier)})`, annotation: spec.annotation === true });
      if (earlier.annotation && spec.annotation) {
        byAddress.delete(address);
        contested.add(address);
        conflicts.push({ origin: earlier.origin, message: `listen address ${address} is also declared by ${spec.origin} (for ${ownerLabel(spec)}): not bound`, annotation: true });
      }
    }
  }
  return { listeners: [...byAddress.values()], conflicts };
}

function sameListener(a: OutboundListenerSpec, b: OutboundListenerSpec): boolean {
  return a.targetHost === b.targetHost && a.targetPort === b.targetPort && a.owner === b.owner && (a.ownerKind === b.ownerKind || a.ownerKind === undefined || b.ownerKind === undefined);
}

/** `--outbound LISTEN=HOST:PORT@NAMESPACE/NAME`. */
export function parseOutboundFlag(text: string): OutboundListenerSpec {
  const at = text.lastIndexOf('@');
  if (at < 0) throw new AmbitError('USAGE', `--outbound "${text}": expected LISTEN_IP:PORT=HOST:PORT@[KIND:]NAMESPACE/WORKLOAD`);
  let owner = text.slice(at + 1);
  // A kind names one of a Pod and a WorkloadEntry that share a namespace/name; without one, such a name is refused.
  let ownerKind: Workload['kind'] | undefined;
  // A kind comes before the namespace: a ':' after the '/' is the name's, and the name check refuses it.
  const colon = owner.indexOf(':');
  const slash = owner.indexOf('/');
  if (colon >= 0 && (slash < 0 || colon < slash)) {
    const kind = owner.slice(0, colon);
    if (!isWorkloadKind(kind)) throw new AmbitError('USAGE', `--outbound "${text}": owner kind "${kind}" is neither Pod nor WorkloadEntry`);
    ownerKind = kind;
    owner = owner.slice(colon + 1);
  }
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$/.test(owner)) throw new AmbitError('USAGE', `--outbound "${text}": owner "${owner}" is not NAMESPACE/WORKLOAD`);
  // The annotation's bare PORT listens on the workload's IP; a flag is read before any workload is known.
  if (/^\s*\d+\s*=/.test(text.slice(0, at))) throw new AmbitError('USAGE', `--outbound "${text}": the flag needs the listen address too (LISTEN_IP:PORT, e.g. 127.0.0.1:${text.slice(0, text.indexOf('=')).trim()}); a bare port is the ${OUTBOUND_ANNOTATION} annotation's form, where it means the workload's IP`);
  const parsed = parseListenerEntry(text.slice(0, at), undefined);
  if (typeof parsed === 'string') throw new AmbitError('USAGE', `--outbound "${text}": ${parsed}`);
  return ownerKind === undefined ? { ...parsed, owner, origin: '--outbound' } : { ...parsed, owner, ownerKind, origin: '--outbound' };
}

interface Listener {
  readonly spec: OutboundListenerSpec;
  readonly server: net.Server;
}

export interface OutboundOptions {
  nodeName: string;
  snapshot: () => ConfigSnapshot;
  pool: HbonePool;
  metrics: ProxyMetrics;
  logger: Logger;
  random?: () => number;
  /** Open tunnels whose byte counts are flushed to metrics periodically. */
  liveMeters: Set<Flushable>;
  /** The addresses this host can dial from (default: its interfaces); tests give their own. */
  localAddresses?: LocalAddresses;
  /** Whether one of the proxy's own servers (admin, metrics, readiness, the HBONE listeners) is bound to this port on some address of this host. */
  isServicePort?: (port: number) => boolean;
  /** Connection bounds (connectionLimits() unless given): one workload's share, and all workloads' together. */
  limits?: ConnectionLimits;
}

/** How many application connections the proxy carries at once: per source workload, and for all of them. */
export interface ConnectionLimits {
  readonly perWorkload: number;
  readonly total: number;
}

/**
 * Descriptors left for everything but workloads' connections (HBONE sessions, the inbound side, the admin, metrics and
 * readiness servers, files): one workload holding ~20,000 idle connections took a node's every descriptor, and every
 * other workload's new connections failed, readiness and metrics too.
 */
const RESERVED_DESCRIPTORS = 1_024;

/**
 * The bounds from the process's open-files limit (its soft limit, /proc/self/limits): all workloads' connections leave
 * RESERVED_DESCRIPTORS (or half the limit, if smaller) for the rest; one workload may hold a quarter of the limit, so
 * that one misbehaving workload does not take its neighbours' share (a sidecar's limit is its own pod's).
 * `perWorkload` given (--max-workload-connections) overrides the quarter. Without a readable limit: no bound.
 */
export function connectionLimits(perWorkload?: number, limitsText?: string): ConnectionLimits {
  let soft = Number.POSITIVE_INFINITY;
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limitsText ?? readFileSync('/proc/self/limits', 'utf8'));
    if (match !== null && match[1] !== 'unlimited') soft = Number(match[1]);
  } catch {
    // Not Linux: no bound taken from the limit.
  }
  const total = Number.isFinite(soft) ? Math.max(1, soft - Math.min(RESERVED_DESCRIPTORS, Math.floor(soft / 2))) : Number.POSITIVE_INFINITY;
  return { perWorkload: perWorkload ?? (Number.isFinite(soft) ? Math.max(1, Math.floor(soft / 4)) : Number.POSITIVE_INFINITY), total };
}

/** Where a passthrough connection was asked to go, and the address it reached (canonical, once connected). */
export interface PassthroughTarget {
  readonly host: string;
  readonly port: number;
  reached: string | undefined;
}

/**
 * Why an open passthrough connection may not go on under `table` (closeUnrouted), or null: its destination is refused
 * now, or the address it reached is in the mesh now. Judged by where it went, not where a new one would go: a route
 * drawn at random (an entry's endpoints in and out of the mesh) may differ without anything having changed.
 */
export function passthroughRevoked(table: RoutingTable, target: PassthroughTarget, random: (() => number) | undefined, sourceNamespace: string): { readonly code: ErrorCode; readonly message: string } | null {
  const route = decideRoute(table, target.host, target.port, random, sourceNamespace);
  if (route.kind === 'deny') return { code: route.reason, message: `closed by a configuration change: ${route.message}` };
  const reached = target.reached;
  const mesh = reached === undefined ? null : meshAddressOf(table, reached);
  if (mesh === null) return null;
  return { code: 'POLICY_REVOKED', message: `closed by a configuration change: ${formatAuthority(target.host, target.port)}, reached at ${reached}, is ${mesh} now, reached over HBONE under its policy; this connection went as plain TCP` };
}

export class OutboundListeners {
  readonly #options: OutboundOptions;
  readonly #logger: Logger;
  /**
   * Refusals anyone reaching a listener can cause, and a workload's refused or failed destinations (one per
   * connection, beside its access line): at most 20 warnings per 10 s each, the rest counted in the next.
   */
  readonly #refusalLogBudget = new LogBudget(10_000, 20);
  readonly #listeners = new Map<string, Listener>();
  /** Open application connections, by the workload whose identity they leave with. */
  readonly #live = new Map<net.Socket, Workload>();
  /** How many of them each workload holds (ConnectionLimits.perWorkload), by its primary IP: stable across configuration changes, which make new Workload objects. */
  readonly #perWorkload = new Map<string, number>();
  readonly #limits: ConnectionLimits;
  /** Connections a configuration change closed (closeDeparted, closeUnrouted): their access line says why. */
  readonly #closedFor = new WeakMap<net.Socket, { readonly code: string; readonly message: string }>();
  /** What each passthrough connection asked for (host and port), judged again when the configuration changes. */
  readonly #passthroughTargets = new WeakMap<net.Socket, PassthroughTarget>();
  // One 'close' listener shared by every connection, finding its socket as `this`: a closure per connection would
  // stay for the connection's whole life.
  readonly #forgetLive: (this: net.Socket) => void;
  readonly #baggage = new WeakMap<Workload, string>();
  readonly #localAddresses: LocalAddresses;
  /** Where passthrough may not go: this host's addresses, and the proxy's own ports on them. */
  readonly #guard: DestinationGuard;
  /** Bound listeners' addresses by port: the inbound side and passthrough ask per connection. */
  readonly #hostsByPort = new Map<number, string[]>();

  constructor(options: OutboundOptions) {
    this.#options = options;
    this.#localAddresses = options.localAddresses ?? new LocalAddresses();
    this.#guard = { local: this.#localAddresses, ownPort: (port) => this.#isOwnPort(port), meshAddress: (ip) => meshAddressOf(routingTableOf(options.snapshot()), ip) };
    const live = this.#live;
    const perWorkload = this.#perWorkload;
    this.#limits = options.limits ?? connectionLimits();
    this.#forgetLive = function (this: net.Socket) {
      const source = live.get(this);
      if (source === undefined) return;
      live.delete(this);
      const key = workloadKey(source);
      const held = (perWorkload.get(key) ?? 1) - 1;
      if (held > 0) perWorkload.set(key, held);
      else perWorkload.delete(key);
    };
    this.#logger = options.logger.child({ component: 'outbound' });
  }

  get size(): number {
    return this.#listeners.size;
  }

  /**
   * Closes the open connections of workloads `snapshot` no longer runs on this node (deleted, moved, or with another
   * identity now): they would go on carrying bytes under a certificate for a workload that is gone, as ztunnel
   * drains a removed pod's connections. Returns how many closed.
   */
  closeDeparted(snapshot: ConfigSnapshot): number {
    let closed = 0;
    for (const [socket, source] of this.#live) {
      // The snapshot's own index of the node's workloads by name, as a listener finds its owner.
      const now = ownerOf(snapshot.workloadsOnNodeByName(this.#options.nodeName, `${source.namespace}/${source.name}`), source.kind);
      if (now?.identity === source.identity) continue;
      this.#forgetLive.call(socket);
      this.#closedFor.set(socket, DEPARTED);
      // A reset: destroy() sends FIN when nothing is left unread, and an application still running (a VM whose
      // WorkloadEntry was removed) took the cut tunnel for a complete one.
      cutSocket(socket);
      closed++;
    }
    return closed;
  }

  /**
   * Closes the open passthrough connections `snapshot` no longer lets out as plain TCP (egress made REGISTRY_ONLY, the
   * ServiceEntry that admitted a host removed; or the destination now in the mesh, a workload's or a Service's address,
   * reached over HBONE and past its policy): new ones are refused or go over HBONE, and these had gone on carrying
   * bytes for good (Istio's sidecars drain a changed listener's connections). Returns how many closed.
   */
  closeUnrouted(snapshot: ConfigSnapshot): number {
    const table = routingTableOf(snapshot);
    let closed = 0;
    for (const [socket, source] of this.#live) {
      const target = this.#passthroughTargets.get(socket);
      if (target === undefined) continue;
      const revoked = passthroughRevoked(table, target, this.#options.random, source.namespace);
      if (revoked === null) continue;
      this.#forgetLive.call(socket);
      this.#closedFor.set(socket, revoked);
      cutSocket(socket);
      closed++;
    }
    return closed;
  }

  /** True when one of these listeners is bound to ip:port (its own address, or a wildcard one). */
  isListening(ip: string, port: number): boolean {
    const hosts = this.#hostsByPort.get(port);
    if (hosts === undefined) return false;
    for (const host of hosts) if (host === ip || host === '0.0.0.0' || host === '::') return true;
    return false;
  }

  #isOwnPort(port: number): boolean {
    if (proxyPorts(this.#options.snapshot().mesh.ports).has(port)) return true;
    return this.#hostsByPort.has(port) || this.#options.isServicePort?.(port) === true;
  }

  #indexPorts(): void {
    this.#hostsByPort.clear();
    for (const { spec } of this.#listeners.values()) {
      const hosts = this.#hostsByPort.get(spec.listenPort);
      if (hosts === undefined) this.#hostsByPort.set(spec.listenPort, [spec.listenHost]);
      else hosts.push(spec.listenHost);
    }
  }

  /** Binds listeners that are new, closes those that are gone; returns what failed. */
  async sync(specs: readonly OutboundListenerSpec[]): Promise<{ bound: string[]; failed: SpecIssue[]; bindFailures: number }> {
    const plan = planListeners(specs);
    const wanted = new Map<string, OutboundListenerSpec>();
    for (const spec of plan.listeners) wanted.set(key(spec), spec);
    for (const [name, listener] of this.#listeners) {
      if (!wanted.has(name)) {
        this.#listeners.delete(name);
        stopListening(listener.server);
      }
    }
    const bound: string[] = [];
    const failed: SpecIssue[] = [...plan.conflicts];
    let bindFailures = 0;
    for (const [name, spec] of wanted) {
      if (this.#listeners.has(name)) continue;
      const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => this.#accept(spec, socket));
      try {
        // Failed accepts (out of descriptors) said, rate-limited, as on the inbound listeners: they went unheard.
        await listenOn(server, spec.listenHost, spec.listenPort, acceptErrorLogger(this.#logger, `outbound ${formatAuthority(spec.listenHost, spec.listenPort)}`));
        this.#listeners.set(name, { spec, server });
        bound.push(name);
      } catch (error) {
        // Out of descriptors is the node's problem whoever asked for the listener.
        const code = ((error as { cause?: NodeJS.ErrnoException }).cause ?? (error as NodeJS.ErrnoException)).code;
        failed.push({ origin: spec.origin, message: (error as Error).message, annotation: spec.annotation === true && code !== 'EMFILE' && code !== 'ENFILE' });
        bindFailures++;
      }
    }
    this.#indexPorts();
    // Conflicts between declarations stay until the configuration changes; a bind may succeed when tried again.
    return { bound, failed, bindFailures };
  }

  /** Draining (shutdown): no new application connections; those open go on. */
  stopAccepting(): void {
    for (const listener of this.#listeners.values()) stopListening(listener.server);
  }

  /** Application connections open now. */
  get openConnections(): number {
    return this.#live.size;
  }

  async close(): Promise<void> {
    for (const socket of this.#live.keys()) cutSocket(socket);
    for (const listener of this.#listeners.values()) stopListening(listener.server);
    this.#listeners.clear();
    this.#hostsByPort.clear();
  }

  #accept(spec: OutboundListenerSpec, socket: net.Socket): void {
    // The owner's identity is the tunnel's source: only a workload this node runs may lend it, and never a guess.
    const named = this.#options.snapshot().workloadsOnNodeByName(this.#options.nodeName, spec.owner);
    const source = ownerOf(named, spec.ownerKind);
    if (source === undefined) {
      if (named.length > 1) {
        this.#logger.warn({ listener: key(spec), owner: spec.owner, kinds: named.map((workload) => workload.kind) }, 'outbound listener owner names more than one workload on this node (a Pod and a WorkloadEntry); closing the connection rather than pick an identity');
      } else {
        this.#logger.warn({ listener: key(spec), owner: spec.owner, kind: spec.ownerKind }, 'outbound listener owner is not a workload on this node; closing the connection');
      }
      cutSocket(socket);
      return;
    }
    // The owner's identity is lent only to the owner's own connections: a listener on an address other hosts can
    // reach (a VM's IP, a wildcard) must not send their connections with it.
    const from = socket.remoteAddress;
    // No address: the client reset the connection before it was taken (getpeername fails); nothing to refuse or say.
    if (from === undefined) {
      socket.destroy();
      return;
    }
    if (!isLoopbackAddress(from) && !source.ips.includes(normalizeIp(from))) {
      // Budgeted: anyone who reaches the listener can cause it at any rate.
      this.#refusalLogBudget.warn(this.#logger, 'foreign-source', { listener: key(spec), owner: spec.owner, peer: from }, "outbound connection refused: it comes from neither the listener owner's IPs nor this host's loopback");
      cutSocket(socket);
      return;
    }
    // Nor to another workload's, loopback or not (workloads at 127/8 addresses, as a loopback mesh runs them): it
    // would leave with the owner's certificate.
    const other = this.#options.snapshot().workloadByIp(normalizeIp(from));
    if (other !== undefined && other !== source) {
      this.#refusalLogBudget.warn(this.#logger, 'other-workload', { listener: key(spec), owner: spec.owner, peer: from, peerWorkload: `${other.namespace}/${other.name}` }, "outbound connection refused: it comes from another workload's IP, and would leave with the listener owner's identity");
      cutSocket(socket);
      return;
    }
    void this.forward(socket, source, spec.targetHost, spec.targetPort, spec.annotation === true);
  }

  /**
   * Carries one application connection from `source` to host:port (also the entry point for capture).
   * `byWorkload`: a workload chose the destination (its annotation, or its own connection once captured), so a
   * passthrough may not reach this host or link-local addresses; the operator's --outbound may.
   */
  async forward(socket: net.Socket, source: Workload, host: string, port: number, byWorkload: boolean): Promise<void> {
    const startedMs = Date.now();
    const remoteAddress = socket.remoteAddress;
    const srcAddr = `${remoteAddress}:${socket.remotePort}`;
    socket.on('error', noop); // reported through the bridge or the refusal below
    const held = this.#perWorkload.get(workloadKey(source)) ?? 0;
    if (held >= this.#limits.perWorkload || this.#live.size >= this.#limits.total) {
      const mine = held >= this.#limits.perWorkload;
      const message = mine
        ? `${source.namespace}/${source.name} holds ${held} connections, its limit (--max-workload-connections; a quarter of the open-files limit by default)`
        : `the proxy carries ${this.#live.size} connections, all its open-files limit allows beside what it keeps for its sessions and servers`;
      this.#options.metrics.failed(sourceLabels(source, UNKNOWN_WORKLOAD, 'unknown', UNKNOWN_SERVICE, 'unknown'), 'CONNECT');
      this.#refusalLogBudget.warn(this.#logger, 'connection-limit', { source: source.identity, target: formatAuthority(host, port), code: 'CONNECTION_LIMIT', reason: message }, 'outbound connection refused');
      this.#failedAccess(source, srcAddr, formatAuthority(host, port), startedMs, 'CONNECTION_LIMIT', message, 'CONNECT');
      cutSocket(socket);
      return;
    }
    this.#live.set(socket, source);
    this.#perWorkload.set(workloadKey(source), held + 1);
    socket.on('close', this.#forgetLive);
    const route = decideRoute(routingTableOf(this.#options.snapshot()), host, port, this.#options.random, source.namespace);
    if (route.kind === 'deny') {
      this.#options.metrics.failed(sourceLabels(source, UNKNOWN_WORKLOAD, 'unknown', UNKNOWN_SERVICE, 'unknown'), route.reason === 'EGRESS_BLOCKED' ? 'DENY' : 'CONNECT');
      this.#refusalLogBudget.warn(this.#logger, 'refused', { source: source.identity, target: formatAuthority(host, port), code: route.reason, reason: route.message }, 'outbound connection refused');
      this.#failedAccess(source, srcAddr, formatAuthority(host, port), startedMs, route.reason, route.message, route.reason === 'EGRESS_BLOCKED' ? 'DENY' : 'CONNECT');
      cutSocket(socket);
      return;
    }
    if (route.kind === 'passthrough') {
      this.#passthroughTargets.set(socket, { host, port, reached: undefined });
      // route.host:port, which a ServiceEntry may have pointed at one of its endpoints. Configuration chose that
      // address, not the operator: it is judged as a workload's choice (not this host, not link-local, not into the mesh).
      this.#passthrough(socket, source, route.host, route.port, byWorkload || route.entry !== undefined, startedMs, srcAddr, route.serviceLabels ?? UNKNOWN_SERVICE);
      return;
    }
    const endpoint = route.endpoint;
    const service = route.serviceLabels.hostname;
    const labels = sourceLabels(source, labelsOfWorkload(endpoint.workload), endpoint.identity, route.serviceLabels, 'mutual_tls');
    let baggage = this.#baggage.get(source);
    if (baggage === undefined) this.#baggage.set(source, (baggage = buildBaggage(source)));
    let stream;
    try {
      const workloadIp = this.#workloadIp(source, remoteAddress, endpoint.hboneHost);
      const dialIp = workloadIp !== null && this.#localAddresses.has(workloadIp, startedMs) ? workloadIp : null;
      stream = await this.#options.pool.open(source.identity, dialIp, endpoint, baggage, workloadIp === null ? null : forwardedFor(workloadIp, route.serviceLabels === UNKNOWN_SERVICE ? undefined : route.serviceLabels.hostname));
    } catch (error) {
      // Let go meanwhile by the proxy (its workload left the node): that is why it went, not what the open met after.
      if (this.#closedFor.has(socket)) {
        this.#abandoned(socket, labels, source, srcAddr, endpoint.authority, startedMs);
        return;
      }
      const flag = error instanceof TunnelError ? error.flag : 'CONNECT';
      this.#options.metrics.failed(labels, flag);
      const coded = error instanceof AmbitError ? error : new AmbitError('UPSTREAM_CONNECT', (error as Error).message);
      accessLog(this.#logger, {
        direction: 'outbound',
        ...hboneEnds(source, srcAddr, endpoint, service),
        bytesSent: 0,
        bytesRecv: 0,
        durationMs: Date.now() - startedMs,
        error: { code: coded.code, message: coded.message },
        responseFlags: flag,
      });
      // Reset, as every refusal here: an orderly end would tell a client that had sent its bytes and closed that
      // they were taken (destroy() sent one whenever nothing was left unread).
      cutSocket(socket);
      return;
    }
    if (socket.destroyed) {
      // Let go while its tunnel opened (its workload left the node, or shutdown): CANCEL, so the destination resets its
      // upstream rather than end it as a complete connection; counted and logged as one that never got through.
      cancelStream(stream);
      this.#abandoned(socket, labels, source, srcAddr, endpoint.authority, startedMs);
      return;
    }
    // One object per tunnel, and a sync method for the rest: closures here would keep this async call's whole scope
    // for the tunnel's life.
    this.#carry(new OutboundTunnel(socket, this.#options.metrics.open(labels), source, srcAddr, endpoint, service, startedMs), stream);
  }

  /**
   * The access line of a connection that never reached its destination (a route or passthrough refusal, a
   * passthrough connect that failed): one per connection, failures included, as ztunnel's. HBONE's own failures write
   * theirs where they are caught.
   */
  #failedAccess(source: Workload, srcAddr: string, target: string, startedMs: number, code: string, message: string, flags: 'DENY' | 'CONNECT'): void {
    if (!accessLogEnabled(this.#logger, true)) return;
    accessLog(this.#logger, {
      direction: 'outbound',
      src: { addr: srcAddr, workload: source.name, namespace: source.namespace, identity: source.identity, cluster: source.cluster },
      dst: { addr: target },
      bytesSent: 0,
      bytesRecv: 0,
      durationMs: Date.now() - startedMs,
      error: { code, message },
      responseFlags: flags,
    });
  }

  /** A connection its application (or the proxy: departure, shutdown) closed while its destination was being reached. */
  #abandoned(socket: net.Socket, labels: TunnelLabels, source: Workload, srcAddr: string, target: string, startedMs: number): void {
    this.#options.metrics.failed(labels, 'CONNECT');
    const { code, message } = this.#closedFor.get(socket) ?? { code: 'DOWNSTREAM_RESET', message: 'the connection closed while its destination was being reached' };
    this.#failedAccess(source, srcAddr, target, startedMs, code, message, 'CONNECT');
  }

  #carry(tunnel: OutboundTunnel, stream: http2.ClientHttp2Stream): void {
    this.#options.liveMeters.add(tunnel);
    tunnel.socket.resume();
    new Bridge(tunnel.socket, stream, (result) => this.#finish(tunnel, result));
  }

  #finish(tunnel: OutboundTunnel, result: BridgeResult): void {
    this.#options.liveMeters.delete(tunnel);
    const { socket } = tunnel;
    // Established, so whatever ends it is not a connection failure (see inbound's #finish): the access line says what.
    const flags = '-';
    tunnel.meter.close(socket.bytesWritten, socket.bytesRead, flags);
    const error = this.#closedFor.get(socket) ?? (result.error ? { code: result.failedSide === 'stream' ? 'TUNNEL_RESET' : 'DOWNSTREAM_RESET', message: result.error.message } : undefined);
    if (!accessLogEnabled(this.#logger, error !== undefined)) return;
    accessLog(this.#logger, {
      direction: 'outbound',
      ...hboneEnds(tunnel.source, tunnel.srcAddr, tunnel.endpoint, tunnel.service),
      bytesSent: socket.bytesRead,
      bytesRecv: socket.bytesWritten,
      durationMs: Date.now() - tunnel.startedMs,
      error,
      responseFlags: flags,
    });
  }

  /**
   * The source workload's address, as the destination's policies should see it: the workload IP the application
   * connected from when it is one of the source's, else the source's first of the peer's address family (IPv6
   * addresses have a ":"), or null. The session leaves from it when this host has it (a loopback mesh, a VM);
   * either way each CONNECT names it (`forwarded: for=`), which the destination believes only of a workload with
   * the identity the session proved (a pod IP the host-network proxy cannot dial from).
   */
  #workloadIp(source: Workload, remoteAddress: string | undefined, hboneHost: string): string | null {
    const v6 = hboneHost.indexOf(':') >= 0;
    let chosen: string | null = null;
    if (remoteAddress !== undefined) {
      const plain = normalizeIp(remoteAddress);
      if ((plain.indexOf(':') >= 0) === v6 && source.ips.includes(plain)) chosen = plain;
    }
    if (chosen === null) {
      for (const ip of source.ips) {
        if ((ip.indexOf(':') >= 0) === v6) {
          chosen = ip;
          break;
        }
      }
    }
    return chosen;
  }

  /** Plain TCP to a destination outside the mesh. */
  #passthrough(socket: net.Socket, source: Workload, host: string, port: number, byWorkload: boolean, startedMs: number, srcAddr: string, service: ServiceLabels): void {
    // No TLS: no principal either, as ztunnel's source_principal comes only from a handshake. The ServiceEntry that
    // names the destination, if one does, is its destination_service (a managed database told apart from the rest).
    const labels: TunnelLabels = { ...sourceLabels(source, UNKNOWN_WORKLOAD, 'unknown', service, 'unknown'), sourcePrincipal: 'unknown' };
    // An address is judged before connecting; a name as it resolves (guardedLookup), so no connection is ever made
    // to a refused address.
    const literal = net.isIP(host) !== 0;
    if (literal) {
      const refusal = passthroughRefusal(host, port, byWorkload, this.#guard);
      if (refusal !== null) {
        this.#options.metrics.failed(labels, 'DENY');
        this.#refusalLogBudget.warn(this.#logger, 'refused', { source: source.identity, target: formatAuthority(host, port), code: 'DESTINATION_REFUSED', reason: refusal }, 'outbound connection refused');
        this.#failedAccess(source, srcAddr, formatAuthority(host, port), startedMs, 'DESTINATION_REFUSED', refusal, 'DENY');
        cutSocket(socket);
        return;
      }
    }
    // Whether the name was resolved by the time the connect timed out: the line says which wait it was.
    let resolved = literal;
    const guarded = literal ? undefined : guardedLookup(port, byWorkload, this.#guard, source.identity);
    const lookup: typeof guarded = guarded && ((hostname, options, callback) => guarded(hostname, options, (error, address, family) => {
      resolved = true;
      callback(error, address, family);
    }));
    const upstream = net.connect({ host, port, allowHalfOpen: true, noDelay: true, lookup });
    upstream.setTimeout(CONNECT_TIMEOUT_MS);
    // The application may leave while we connect: then the upstream connection must not outlive it, and the
    // connection is counted and logged as one that never got through (it had no trace at all).
    const abandon = () => {
      upstream.destroy();
      this.#abandoned(socket, labels, source, srcAddr, formatAuthority(host, port), startedMs);
    };
    socket.once('close', abandon);
    const fail = (error: Error) => {
      // Its own failure, counted below: not also an abandoned one.
      socket.off('close', abandon);
      upstream.destroy();
      cutSocket(socket);
      if (error instanceof AmbitError && error.code === 'DESTINATION_REFUSED') {
        this.#options.metrics.failed(labels, 'DENY');
        this.#refusalLogBudget.warn(this.#logger, 'refused', { source: source.identity, target: formatAuthority(host, port), code: error.code, reason: error.message }, 'outbound connection refused');
        this.#failedAccess(source, srcAddr, formatAuthority(host, port), startedMs, 'DESTINATION_REFUSED', error.message, 'DENY');
        return;
      }
      this.#options.metrics.failed(labels, 'CONNECT');
      const code = error instanceof AmbitError && error.code === 'DNS_LOOKUP' ? 'DNS_LOOKUP' : 'UPSTREAM_CONNECT';
      this.#refusalLogBudget.warn(this.#logger, 'passthrough-failed', { source: source.identity, target: formatAuthority(host, port), code, err: error.message }, 'passthrough connect failed');
      this.#failedAccess(source, srcAddr, formatAuthority(host, port), startedMs, code, error.message, 'CONNECT');
    };
    upstream.once('timeout', () => fail(resolved ? new Error(`connect timed out after ${CONNECT_TIMEOUT_MS} ms`) : new AmbitError('DNS_LOOKUP', `${host}: no answer from the resolver within ${CONNECT_TIMEOUT_MS} ms`)));
    upstream.once('error', fail);
    upstream.once('connect', () => {
      upstream.off('error', fail);
      upstream.setTimeout(0);
      // Off the node, through NATs and firewalls that drop idle flows: found dead rather than waited on forever (ztunnel's 180 s).
      upstream.setKeepAlive(true, TCP_KEEPALIVE_IDLE_MS);
      socket.off('close', abandon);
      if (socket.destroyed) {
        upstream.destroy();
        this.#abandoned(socket, labels, source, srcAddr, formatAuthority(host, port), startedMs);
        return;
      }
      // The address a name resolved to and was reached on (of several, the one that answered): Envoy's upstream_host.
      const upstreamHost = literal || upstream.remoteAddress === undefined ? undefined : formatAuthority(upstream.remoteAddress, upstream.remotePort ?? port);
      const target = this.#passthroughTargets.get(socket);
      if (target !== undefined && upstream.remoteAddress !== undefined) target.reached = canonicalIp(upstream.remoteAddress) ?? upstream.remoteAddress;
      const meter = this.#options.metrics.open(labels);
      const flushable: Flushable = { flush: () => meter.update(socket.bytesWritten, socket.bytesRead) };
      this.#options.liveMeters.add(flushable);
      let error: { readonly code: string; readonly message: string } | undefined;
      // The first error names the side that broke; either ends both.
      const failedOn = (code: 'DOWNSTREAM_RESET' | 'UPSTREAM_RESET') => (e: Error) => {
        error ??= { code, message: e.message };
        cutSocket(socket);
        cutSocket(upstream);
      };
      socket.on('error', failedOn('DOWNSTREAM_RESET'));
      upstream.on('error', failedOn('UPSTREAM_RESET'));
      let closed = 0;
      const onClose = () => {
        if (++closed < 2) {
          // One side closed before both directions were done (abruptly, or destroyed after its FIN while the other
          // still sent): the other must not wait forever.
          if (socket.destroyed && !(socket.readableEnded && upstream.readableEnded)) cutSocket(upstream);
          if (upstream.destroyed && !(upstream.readableEnded && socket.readableEnded)) cutSocket(socket);
          return;
        }
        this.#options.liveMeters.delete(flushable);
        // Established: `-` whatever ended it (see inbound's #finish).
        meter.close(socket.bytesWritten, socket.bytesRead, '-');
        error = this.#closedFor.get(socket) ?? error;
        if (!accessLogEnabled(this.#logger, error !== undefined)) return;
        accessLog(this.#logger, {
          direction: 'outbound',
          src: { addr: srcAddr, workload: source.name, namespace: source.namespace, identity: source.identity, cluster: source.cluster },
          dst: service === UNKNOWN_SERVICE ? { addr: formatAuthority(host, port) } : { addr: formatAuthority(host, port), service: service.hostname },
          upstreamHost,
          bytesSent: socket.bytesRead,
          bytesRecv: socket.bytesWritten,
          durationMs: Date.now() - startedMs,
          error,
          responseFlags: '-',
        });
      };
      socket.once('close', onClose);
      upstream.once('close', onClose);
      socket.pipe(upstream);
      upstream.pipe(socket);
      socket.resume();
    });
  }
}

function noop(): void {}

/** An HBONE tunnel from an application connection: what its byte flush and its access line need. */
class OutboundTunnel implements Flushable {
  readonly socket: net.Socket;
  readonly meter: TunnelMeter;
  readonly source: Workload;
  readonly srcAddr: string;
  readonly endpoint: Endpoint;
  readonly service: string;
  readonly startedMs: number;

  constructor(socket: net.Socket, meter: TunnelMeter, source: Workload, srcAddr: string, endpoint: Endpoint, service: string, startedMs: number) {
    this.socket = socket;
    this.meter = meter;
    this.source = source;
    this.srcAddr = srcAddr;
    this.endpoint = endpoint;
    this.service = service;
    this.startedMs = startedMs;
  }

  /** Reporter is the source: "sent" went to the app (server → client), "received" came from it. */
  flush(): void {
    this.meter.update(this.socket.bytesWritten, this.socket.bytesRead);
  }
}

/** The listener's owner among the node's workloads of its name: the one of its kind, or the only one. */
export function ownerOf(named: readonly Workload[], kind: Workload['kind'] | undefined): Workload | undefined {
  if (kind === undefined) return named.length === 1 ? named[0] : undefined;
  for (const workload of named) if (workload.kind === kind) return workload;
  return undefined;
}

/** The two ends of an HBONE connection's access line: built when the line is written, not held per connection. */
function hboneEnds(source: Workload, srcAddr: string, endpoint: Endpoint, service: string): Pick<AccessLogRecord, 'src' | 'dst'> {
  return {
    src: { addr: srcAddr, workload: source.name, namespace: source.namespace, identity: source.identity, cluster: source.cluster },
    dst: { addr: endpoint.hboneAuthority, hbone_addr: endpoint.authority, workload: endpoint.workload.name, namespace: endpoint.workload.namespace, identity: endpoint.identity, service, cluster: endpoint.workload.cluster },
  };
}

/**
 * `forwarded: for="IP"` (RFC 7239, IPv6 bracketed) naming the source workload, and `;host=` the Service it addressed
 * (as ztunnel: the destination reports that Service), built once per address and Service.
 */
const FORWARDED_FOR = new Map<string, Map<string, string>>();
function forwardedFor(ip: string, serviceHost: string | undefined): string {
  const host = serviceHost ?? '';
  let byIp = FORWARDED_FOR.get(host);
  if (byIp === undefined) {
    // Workload addresses and Services come and go with the registry: a bounded memo, not a leak.
    if (FORWARDED_FOR.size >= 1024) FORWARDED_FOR.clear();
    FORWARDED_FOR.set(host, (byIp = new Map()));
  }
  let value = byIp.get(ip);
  if (value === undefined) {
    value = ip.indexOf(':') >= 0 ? `for="[${ip}]"` : `for="${ip}"`;
    if (host !== '') value += `;host=${host}`;
    if (byIp.size >= 4096) byIp.clear();
    byIp.set(ip, value);
  }
  return value;
}

/** A workload's key among this node's: its primary IP (one pod's, one entry's), else its name. */
function workloadKey(workload: Workload): string {
  return workload.ips[0] ?? `${workload.namespace}/${workload.name}`;
}

const DEPARTED = Object.freeze({ code: 'SOURCE_DEPARTED', message: 'closed: its source workload left this node (deleted, moved, or another identity)' });

function sourceLabels(source: Workload, destination: WorkloadLabels, destinationPrincipal: string, service: ServiceLabels, policy: TunnelLabels['connectionSecurityPolicy']): TunnelLabels {
  return {
    reporter: 'source',
    // The workload's name (a Deployment's), as Istio's labels have it: a pod's would add series at every rollout.
    source: labelsOfWorkload(source),
    sourcePrincipal: source.identity,
    destination,
    destinationPrincipal,
    service,
    connectionSecurityPolicy: policy,
  };
}
