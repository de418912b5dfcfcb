// Where a passthrough connection (a destination outside the mesh) may not go. The proxy runs with the host's
// network and privileges, so a destination chosen by a workload (its own annotation; transparent capture later)
// must not reach what only the host can: its loopback services (the proxy's admin among them), its own addresses,
// link-local ones (a cloud's metadata service). An operator's --outbound may, except into the proxy's own ports
// on this host, where the connection would come back to the proxy and loop (ztunnel's "self call").
import { lookup as dnsLookup } from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import { countDown } from '../counts.ts';
import { canonicalIp } from '../config/fields.ts';
import { AmbitError } from '../errors.ts';
import { CidrSet, parseIp } from '../authz/match.ts';
import { formatAuthority } from './authority.ts';
import type { LocalAddresses } from './local-addresses.ts';

/** Addresses that are this host whatever its interfaces: loopback, "this network" (0.0.0.0 connects to the host), unspecified. */
const HOST_ITSELF = new CidrSet(['127.0.0.0/8', '0.0.0.0/8', '::1/128', '::/128']);
/** Link-local: never routed off the link, and where clouds put their metadata service (169.254.169.254). */
const LINK_LOCAL = new CidrSet(['169.254.0.0/16', 'fe80::/10']);
/**
 * Cloud metadata services outside link-local: AWS's over IPv6 (fd00:ec2::254) and EKS Pod Identity's agent
 * (fd00:ec2::23), and Alibaba Cloud's (100.100.100.200).
 * They answer with the node's own credentials, which a workload must not reach through the host-network proxy.
 */
const METADATA = new CidrSet(['fd00:ec2::254/128', 'fd00:ec2::23/128', '100.100.100.200/32']);
/**
 * Azure's WireServer (168.63.129.16): its host agent (80, 32526) hands out node secrets, which AKS blocks pods from
 * but the host-network proxy would reach; its DNS (53) is every Azure VM's resolver, and stays reachable.
 */
const AZURE_WIRESERVER = new CidrSet(['168.63.129.16/32']);

export interface DestinationGuard {
  /** This host's addresses (its interfaces, a loopback prefix whole). */
  readonly local: LocalAddresses;
  /** True for a port the proxy itself listens on (HBONE, admin, metrics, readiness, its outbound listeners). */
  readonly ownPort: (port: number) => boolean;
  /**
   * What a canonical IP is in the mesh (a workload's IP, a Service's or a mesh ServiceEntry's address), or null: it
   * is reached over HBONE, so plain TCP to it would skip the destination's authorization.
   */
  readonly meshAddress: (ip: string) => string | null;
}

/**
 * Why a passthrough connection to ip:port is refused, or null when it may go. `byWorkload`: the destination was
 * chosen by a workload, not by the operator.
 */
export function passthroughRefusal(ip: string, port: number, byWorkload: boolean, guard: DestinationGuard): string | null {
  const canonical = canonicalIp(ip);
  const parsed = canonical === undefined ? null : parseIp(canonical);
  // Not an IP literal: nothing here can vouch for it (the caller resolves names first).
  if (canonical === undefined || parsed === null) return `${ip} is not an IP address`;
  const onHost = HOST_ITSELF.contains(parsed) || guard.local.has(canonical);
  if (onHost && guard.ownPort(port)) return `${formatAuthority(canonical, port)} is the proxy's own port on this host: the connection would loop through the proxy`;
  if (!byWorkload) return null;
  if (onHost) return `${formatAuthority(canonical, port)} is this host: a workload's listener may not reach the host's own services through the proxy (an operator's --outbound may)`;
  if (LINK_LOCAL.contains(parsed)) return `${formatAuthority(canonical, port)} is link-local: a workload's listener may not reach it through the proxy (an operator's --outbound may)`;
  if (METADATA.contains(parsed) || (AZURE_WIRESERVER.contains(parsed) && port !== 53)) return `${formatAuthority(canonical, port)} is a cloud's metadata service: a workload's listener may not reach it through the proxy (an operator's --outbound may)`;
  // A name (or a ServiceEntry's endpoint) that leads into the mesh: its address or Service name goes over HBONE.
  const mesh = guard.meshAddress(canonical);
  if (mesh !== null) return `${formatAuthority(canonical, port)} is ${mesh}: reached over HBONE when dialled by its address or Service name, never as plain TCP`;
  return null;
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;
type LookupAllCallback = (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void;
/** dns.lookup's shape with `all: true`, which the limiter is given (a test's resolver, or Node's). */
export type LookupAll = (hostname: string, options: LookupOptions & { all: true }, callback: LookupAllCallback) => void;

interface LookupJob {
  readonly key: string;
  readonly owner: string;
  readonly hostname: string;
  readonly options: LookupOptions & { all: true };
  readonly waiters: LookupAllCallback[];
  /** Fails the job if it is still queued when it runs out (cleared once it runs). */
  expiry: NodeJS.Timeout | undefined;
}

/**
 * Name lookups of passthrough destinations, bounded. getaddrinfo runs on libuv's threadpool (4 threads, which file
 * reads and crypto share), cannot be cancelled, and a resolver that never answers holds a thread for its whole timeout
 * (10 s by default): one workload connecting 40 times to such a name held all four for ~100 s, and every other
 * workload's lookups (`localhost`, from /etc/hosts) waited past their connect timeout. So at most `running` lookups
 * run at once and `perOwner` of one source identity, which may queue `queuedPerOwner` more; a name asked while its
 * lookup runs waits for that one (while it is only queued, only its owner's connections join it: another identity's
 * must not wait on this one's turn); a queued lookup fails after `maxWaitMs`.
 */
export class NameLookups {
  readonly #lookup: LookupAll;
  readonly #running: number;
  readonly #perOwner: number;
  readonly #queuedPerOwner: number;
  readonly #maxWaitMs: number;
  /** Running lookups, by name; queued ones, by owner and name, in order. */
  readonly #runningJobs = new Map<string, LookupJob>();
  readonly #queued = new Map<string, LookupJob>();
  readonly #runningByOwner = new Map<string, number>();
  readonly #queuedByOwner = new Map<string, number>();

  constructor(lookup: LookupAll, limits: { running: number; perOwner: number; queuedPerOwner: number; maxWaitMs: number }) {
    this.#lookup = lookup;
    this.#running = limits.running;
    this.#perOwner = limits.perOwner;
    this.#queuedPerOwner = limits.queuedPerOwner;
    this.#maxWaitMs = limits.maxWaitMs;
  }

  lookup(owner: string, hostname: string, options: LookupOptions, callback: LookupAllCallback): void {
    const all = { family: options.family, hints: options.hints, all: true } as LookupOptions & { all: true };
    const key = `${String(all.family ?? 0)}\0${String(all.hints ?? 0)}\0${hostname}`;
    const joined = this.#runningJobs.get(key) ?? this.#queued.get(`${owner}\0${key}`);
    if (joined !== undefined) {
      joined.waiters.push(callback);
      return;
    }
    const queued = this.#queuedByOwner.get(owner) ?? 0;
    if (queued >= this.#queuedPerOwner) {
      callback(new AmbitError('DNS_LOOKUP', `${hostname}: ${owner} already has ${queued} name lookup${queued === 1 ? '' : 's'} waiting for the resolver`) as AmbitError & NodeJS.ErrnoException, []);
      return;
    }
    const job: LookupJob = { key, owner, hostname, options: all, waiters: [callback], expiry: undefined };
    job.expiry = setTimeout(() => this.#expire(job), this.#maxWaitMs);
    job.expiry.unref();
    this.#queued.set(`${owner}\0${key}`, job);
    this.#queuedByOwner.set(owner, queued + 1);
    this.#pump();
  }

  #dequeue(job: LookupJob): void {
    this.#queued.delete(`${job.owner}\0${job.key}`);
    countDown(this.#queuedByOwner, job.owner);
    clearTimeout(job.expiry);
  }

  #expire(job: LookupJob): void {
    if (this.#queued.get(`${job.owner}\0${job.key}`) !== job) return;
    this.#dequeue(job);
    const error = new AmbitError('DNS_LOOKUP', `${job.hostname}: waited more than ${this.#maxWaitMs} ms for the resolver (its lookups all busy, or ${job.owner}'s)`) as AmbitError & NodeJS.ErrnoException;
    for (const waiter of job.waiters) waiter(error, []);
  }

  #pump(): void {
    // In the order they were asked (a Map keeps it), skipping owners at their limit.
    for (const job of this.#queued.values()) {
      if (this.#runningJobs.size >= this.#running) return;
      if ((this.#runningByOwner.get(job.owner) ?? 0) >= this.#perOwner) continue;
      this.#dequeue(job);
      // Another identity's lookup of the name started meanwhile: this one's connections wait for it.
      const started = this.#runningJobs.get(job.key);
      if (started !== undefined) {
        for (const waiter of job.waiters) started.waiters.push(waiter);
        continue;
      }
      this.#runningJobs.set(job.key, job);
      this.#runningByOwner.set(job.owner, (this.#runningByOwner.get(job.owner) ?? 0) + 1);
      this.#lookup(job.hostname, job.options, (error, addresses) => {
        this.#runningJobs.delete(job.key);
        countDown(this.#runningByOwner, job.owner);
        for (const waiter of job.waiters) waiter(error, addresses);
        this.#pump();
      });
    }
  }
}

/**
 * Every passthrough's lookups: three of the threadpool's four at once (file reads and crypto keep one), one source
 * identity's two, with 64 more queued; a queued one gives up at the connect timeout, as its connection has.
 */
export const nameLookups = new NameLookups(dnsLookup as LookupAll, { running: 3, perOwner: 2, queuedPerOwner: 64, maxWaitMs: 10_000 });

/**
 * A `lookup` for net.connect that keeps only the addresses a name may be connected to, so a name that resolves to
 * a refused address (`localhost`, a DNS entry pointing at 169.254.169.254) is refused before any connection. `owner`:
 * the source identity whose lookups are bounded together.
 */
export function guardedLookup(port: number, byWorkload: boolean, guard: DestinationGuard, owner: string, lookups: NameLookups = nameLookups): (hostname: string, options: LookupOptions, callback: LookupCallback) => void {
  return (hostname, options, callback) => {
    lookups.lookup(owner, hostname, options, (error, addresses) => {
      if (error !== null) return callback(error, []);
      let refusal: string | null = null;
      const allowed = addresses.filter((entry) => {
        const why = passthroughRefusal(entry.address, port, byWorkload, guard);
        refusal ??= why;
        return why === null;
      });
      if (allowed.length === 0) {
        const refused = new AmbitError('DESTINATION_REFUSED', `${hostname} resolves only to refused addresses: ${refusal ?? 'no address'}`) as AmbitError & NodeJS.ErrnoException;
        return callback(refused, []);
      }
      if (options.all === true) return callback(null, allowed);
      const first = allowed[0] as LookupAddress;
      callback(null, first.address, first.family);
    });
  };
}
