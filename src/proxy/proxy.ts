// The node proxy: wires configuration, identities, the HBONE inbound and outbound paths, and the
// observability servers, and keeps them in line with each new configuration snapshot.
import { Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { AmbitError, fileFailure, toAmbitError } from '../errors.ts';
import { UNUSED_SAMPLE_MS, eventLoopLatenessMetrics } from '../observe/event-loop.ts';
import { appendFile } from 'node:fs/promises';
import { join } from 'node:path';
import { WATCH_ERROR_MESSAGES, watchConfigDir } from '../config/watch.ts';
import { AuditLog } from '../config/audit.ts';
import type { ConfigWatcher } from '../config/watch.ts';
import type { ConfigSnapshot } from '../config/snapshot.ts';
import { IdentityAgent, requireNodeCredential } from '../identity/agent.ts';
import type { TrustBundle } from '../identity/bundle.ts';
import type { Svid } from '../identity/svid.ts';
import { LogBudget } from '../observe/log.ts';
import type { Logger } from '../observe/log.ts';
import { ProxyMetrics, startByteFlush } from '../observe/metrics.ts';
import type { Flushable } from '../observe/metrics.ts';
import { startObservability } from '../observe/admin.ts';
import type { Observability } from '../observe/admin.ts';
import { HboneInbound } from './inbound.ts';
import type { InboundConnection, InboundDecision } from './inbound.ts';
import { HbonePool } from './pool.ts';
import { IdentityContexts, PeerVerifier } from './tls.ts';
import { OutboundListeners, annotatedListeners, connectionLimits } from './outbound.ts';
import type { OutboundListenerSpec } from './outbound.ts';
import { routingTableOf } from './routes.ts';
import { destinationStays, InboundAuthorizer } from './authorize.ts';
import { HttpInspector } from './l7.ts';
import { HeapRelease } from './heap.ts';
import { H2_PROXY_BUFFER_BYTES } from './settings.ts';
import { StreamBudget } from './window.ts';
import { authorizationOf } from '../authz/compile.ts';
import type { CompiledAuthorization } from '../authz/compile.ts';
import { StateDirLock } from '../identity/state-lock.ts';

/** Long-lived tunnels report their bytes this often, as Istio's proxies do between open and close. */
const BYTE_FLUSH_INTERVAL_MS = 5_000;
/**
 * The nodejs_eventloop_lag_* gauges sample how late a timer of this period fires. prom-client's default, 10 ms, woke an
 * idle proxy 100 times a second: 1.2 % of a core doing nothing (a bare node: 0; `npm run bench -- --scenario
 * footprint`, 2026-12-06), and about 3 % of the L4 pair's CPU per request at 2,000 req/s (1.18× / 1.20× the Node
 * floor's side by side against 1.16× / 1.15× with 100 ms, alternated `--scenario b --rows ambit-l4,node-l4
 * --side-by-side` runs). At 100 ms the gauges read lateness with a tenth of the samples (~150 per 15 s scrape); a stall
 * longer than 100 ms is always seen. (They read lateness, not lateness and period: src/observe/event-loop.ts.)
 */
const EVENT_LOOP_SAMPLE_MS = 100;
/** Listeners that failed to bind are tried again after 1 s, then twice as long each time, up to 30 s. */
const BIND_RETRY_FIRST_MS = 1_000;
const BIND_RETRY_MAX_MS = 30_000;

export interface Address {
  host: string;
  port: number;
}

export interface NodeProxyOptions {
  /** Aborted (SIGTERM during start): the start stops, whatever it waits for, and lets go of what it took. */
  signal?: AbortSignal;
  nodeName: string;
  configDir: string;
  caUrl: string;
  /** Our trust domain's roots, to authenticate the CA the first time. */
  caBundle: TrustBundle;
  stateDir: string;
  joinToken?: string;
  /** Explicit listeners from the command line, in addition to those the configuration declares. */
  outbound?: readonly OutboundListenerSpec[];
  metricsListen?: Address;
  readinessListen?: Address;
  adminListen?: Address;
  sharedHboneListen?: Address;
  /** Override the mesh's HBONE port (tests run several meshes on one host). */
  hbonePort?: number;
  certificateTtlSeconds?: number;
  /** Where accepted configuration changes are recorded; default STATE_DIR/audit.log. */
  auditLogFile?: string;
  /** One workload's outbound connections at once (connectionLimits: a quarter of the open-files limit by default). */
  maxWorkloadConnections?: number;
  /** What the stream windows of every HBONE session together may let tunnels make the proxy hold (default H2_PROXY_BUFFER_BYTES). */
  streamWindowBudgetBytes?: number;
  logger: Logger;
  /** Authorization hook for inbound connections (the authorization layer plugs in here). */
  authorize?: ((connection: InboundConnection) => InboundDecision) | null;
}

export class NodeProxy {
  readonly #options: NodeProxyOptions;
  readonly #logger: Logger;
  readonly registry = new Registry();
  readonly metrics: ProxyMetrics;
  readonly contexts = new IdentityContexts();
  readonly verifier: PeerVerifier;
  #config!: ConfigWatcher;
  #agent!: IdentityAgent;
  #inbound!: HboneInbound;
  #outbound!: OutboundListeners;
  #pool!: HbonePool;
  #observability: Observability | undefined;
  /** Where the admin, metrics and readiness servers are bound: neither passthrough nor a CONNECT reaches them. */
  #serviceEndpoints: ReadonlyArray<{ readonly host: string; readonly port: number }> = [];
  #reconciling: Promise<void> = Promise.resolve();
  #pending = new Set<string>(['configuration', 'node identity', 'certificates', 'listeners']);
  /** Local workloads whose first certificate has not come yet (readiness names them). */
  #waitingCertificates: readonly string[] = [];
  /** The node's listeners that could not be bound, as the readiness answer names them. */
  #unboundListeners: readonly string[] = [];
  /** Identities the CA refused (CA_REJECTED): a registry problem of that workload, not of the node. */
  readonly #refusedIdentities = new Set<string>();
  /** Ready once: from then on a new workload waiting for its first certificate does not take the node out of service. */
  #everReady = false;
  #lastProblems: string[] = [];
  /** A listener that could not be bound (its port held, its address not yet on the host) is tried again after this. */
  #bindRetryMs = BIND_RETRY_FIRST_MS;
  #bindRetry: NodeJS.Timeout | undefined;
  #authorizer!: InboundAuthorizer;
  #inspector: HttpInspector | null = null;
  #appliedVersion: string | undefined;
  readonly #violationsGauge = new Gauge({ name: 'ambit_peer_authentication_violations', help: 'PeerAuthentications not applied because they would weaken an enforced mesh-wide mode', registers: [this.registry] });
  #closed = false;
  /** The state directory's lease (StateDirLock), held from start to close. */
  #stateLock: StateDirLock | undefined;
  /** Aborted by close(): ends a start's wait for the state directory. */
  readonly #starting = new AbortController();
  /** Shutting down: listeners closed, open connections finishing (close's drainMs). */
  #draining = false;
  #drainCut = false;
  /** The last rejected change while the directory still holds it: shown by /config_dump, cleared once it is gone. */
  #configRejected: { since: string; error: ReturnType<AmbitError['toJSON']> } | null = null;
  readonly #heapRelease = new HeapRelease();
  readonly #liveMeters = new Set<Flushable>();
  #stopFlush: (() => void) | undefined;

  private constructor(options: NodeProxyOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ node: options.nodeName });
    this.metrics = new ProxyMetrics(this.registry);
    this.verifier = new PeerVerifier({ localTrustDomain: options.caBundle.trustDomain });
  }

  static async start(options: NodeProxyOptions): Promise<NodeProxy> {
    const proxy = new NodeProxy(options);
    // Stopping the agent ends a wait for the CA; aborting #starting, one for the state directory.
    const abort = () => void proxy.close().catch(() => {});
    options.signal?.addEventListener('abort', abort, { once: true });
    try {
      await proxy.#start();
    } catch (error) {
      await proxy.close().catch(() => {});
      throw error;
    } finally {
      options.signal?.removeEventListener('abort', abort);
    }
    return proxy;
  }

  /** Settles if another process takes the state directory's lease (this one was stopped or stalled): it must stop. */
  get stateLockLost(): Promise<AmbitError> {
    return this.#stateLock?.lost ?? new Promise(() => {});
  }

  get snapshot(): ConfigSnapshot {
    return this.#config.current();
  }

  get agent(): IdentityAgent {
    return this.#agent;
  }

  get observability(): Observability | undefined {
    return this.#observability;
  }

  /** Ends a drain in progress now (a second stop signal): what is still open is cut, and the proxy stops. */
  cutDrainShort(): void {
    this.#drainCut = true;
  }

  async #drain(drainMs: number): Promise<void> {
    this.#draining = true;
    // No reconcile may bind listeners again meanwhile.
    clearTimeout(this.#bindRetry);
    await this.#reconciling.catch(() => {});
    this.#outbound?.stopAccepting();
    this.#inbound?.stopAccepting();
    this.#inspector?.drain();
    const open = () => (this.#outbound?.openConnections ?? 0) + (this.#inbound?.openTunnels ?? 0);
    const deadline = Date.now() + drainMs;
    this.#logger.info({ open: open(), drainMs }, 'draining: no new connections; open ones may finish');
    while (open() > 0 && Date.now() < deadline && !this.#drainCut) await new Promise((resolve) => setTimeout(resolve, 50));
    const left = open();
    if (left > 0) this.#logger.warn({ left, drainMs }, this.#drainCut ? 'drain cut short: cutting the connections still open' : 'drain time over: cutting the connections still open');
    else this.#logger.info('drained: every connection finished');
  }

  /**
   * Ready once the configuration is loaded, every local workload has its certificate and every listener is bound,
   * and while no certificate the proxy holds has expired: an expired one (the CA unreachable for half its life and
   * more) fails every handshake that presents it, which the probe must say, with whose it is.
   */
  readiness(): { ready: boolean; pending: string[] } {
    const pending: string[] = [];
    for (const item of this.#pending) pending.push(item === 'certificates' ? certificatesPending(this.#waitingCertificates) : item === 'listeners' ? namedPending('listeners', this.#unboundListeners) : item);
    if (this.#draining) pending.push('shutting down');
    const agent = this.#agent as IdentityAgent | undefined;
    const nodeRefusal = agent?.nodeRefusal();
    if (nodeRefusal !== undefined) pending.push(`node identity refused by the CA (${nodeRefusal}): attest again with a new join token`);
    const now = Date.now();
    for (const identity of agent?.identities() ?? []) {
      const svid = agent?.current(identity);
      if (svid !== undefined && svid.notAfter.getTime() <= now) pending.push(`expired certificate ${identity} (since ${svid.notAfter.toISOString()})`);
    }
    if (pending.length === 0) this.#everReady = true;
    return { ready: pending.length === 0, pending };
  }

  async #start(): Promise<void> {
    const options = this.#options;
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: UNUSED_SAMPLE_MS });
    eventLoopLatenessMetrics(this.registry, EVENT_LOOP_SAMPLE_MS);
    await requireNodeCredential(options.stateDir, options.joinToken);
    // Made, and held, before the node SVID there is read or renewed: a second proxy on it waits for the first to stop.
    this.#stateLock = await StateDirLock.acquire(options.stateDir, this.#logger, { signal: this.#starting.signal });
    const auditFile = options.auditLogFile ?? join(options.stateDir, 'audit.log');
    // Judged before anything starts, as the CA judges its own: one that cannot be written (a directory, a read-only
    // mount) had the proxy run with every configuration change unrecorded, a warning each.
    try {
      await appendFile(auditFile, '', { mode: 0o600 });
    } catch (error) {
      throw new AmbitError('FILE_WRITE', `${options.auditLogFile === undefined ? 'audit log' : '--audit-log'} ${auditFile}: cannot append (${fileFailure(error)})`, { cause: error });
    }
    this.#config = await watchConfigDir(options.configDir, {
      requireMesh: true,
      // Every accepted change, with its diff and files, goes to the audit log (one JSON line each).
      auditLog: new AuditLog(auditFile),
      onChange: (next) => {
        this.metrics.configReload('accepted');
        this.#logger.info({ version: next.version }, 'configuration accepted');
        this.#scheduleReconcile();
      },
      onError: (error, kind) => {
        if (kind === 'rejected') {
          this.metrics.configReload('rejected');
          this.#configRejected = { since: new Date().toISOString(), error: error.toJSON() };
          this.#logger.error({ err: error.toJSON() }, WATCH_ERROR_MESSAGES[kind]);
        } else {
          this.#logger.warn({ err: error.toJSON() }, WATCH_ERROR_MESSAGES[kind]);
        }
      },
      onSettled: () => {
        this.#configRejected = null;
        this.#logger.info('the configuration directory holds what is in force again: the rejected change is gone');
      },
      // Every identity derives from the trust domain, and the HBONE servers listen on the port taken at start: changed
      // under a running mesh, the first would leave the node without certificates the CA will renew, the second send
      // every peer to a port nobody listens on.
      accept: (next, prev) => {
        if (next.mesh.trustDomain !== prev.mesh.trustDomain) return `MeshConfig spec.trustDomain changed from "${prev.mesh.trustDomain}" to "${next.mesh.trustDomain}" (restart to change it)`;
        if (options.hbonePort === undefined && next.mesh.ports.hbone !== prev.mesh.ports.hbone) return `MeshConfig spec.ports.hbone changed from ${prev.mesh.ports.hbone} to ${next.mesh.ports.hbone}, where this proxy does not listen (restart to change it)`;
        // Compiled here (once: authorizationOf keeps it, and the node's workloads' matchers), so a change the matchers
        // cannot be built from is refused and the last good policies keep deciding, instead of every decision of the
        // node denying until the next change.
        try {
          compiledForNode(next, options.nodeName);
        } catch (error) {
          return `the authorization policies could not be compiled (${(error as Error).message})`;
        }
        return undefined;
      },
    });
    this.#pending.delete('configuration');
    const snapshot = this.#config.current();
    if (snapshot.mesh.trustDomain !== options.caBundle.trustDomain) {
      // The CA bundle is read as the --trust-domain flag's (a bundle file does not name its trust domain): the two that
      // disagree are the flag and the MeshConfig.
      throw new AmbitError('CONFIG_FIELD', `${options.configDir}: MeshConfig spec.trustDomain is "${snapshot.mesh.trustDomain}" but --trust-domain is "${options.caBundle.trustDomain}"`);
    }
    // Up before attestation, which waits for the CA: the probe says what is pending and the metrics show the agent's
    // attempts, instead of a refused connection.
    this.#observability = await startObservability({
      metrics: options.metricsListen,
      readiness: options.readinessListen,
      admin: options.adminListen,
      registry: this.registry,
      sources: { configDump: () => this.configDump(), readiness: () => this.readiness(), logger: options.logger },
    });
    this.#serviceEndpoints = [this.#observability.metricsUrl, this.#observability.readinessUrl, this.#observability.adminUrl].flatMap((url) => {
      if (url === undefined) return [];
      const parsed = new URL(url);
      return [{ host: parsed.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(parsed.port) }];
    });
    this.#agent = new IdentityAgent({
      caUrl: options.caUrl,
      trustDomain: snapshot.mesh.trustDomain,
      nodeName: options.nodeName,
      bootstrapBundle: options.caBundle,
      stateDir: options.stateDir,
      joinToken: options.joinToken,
      ttlSeconds: options.certificateTtlSeconds,
      logger: this.#logger,
      metrics: this.registry,
    });
    this.#agent.on('rotated', (svid) => this.#onRotated(svid));
    // A refusal of the node's own certificate (CA_NODE_REFUSED) is not the workload's problem: readiness waits for it.
    this.#agent.on('failed', ({ spiffeId, error }) => {
      if (error.code !== 'CA_REJECTED' || this.#refusedIdentities.has(spiffeId)) return;
      this.#refusedIdentities.add(spiffeId);
      this.#scheduleReconcile();
    });
    // A withdrawn root or an ended federation reaches the open sessions at once, not at their next stream.
    this.#agent.on('bundles', () => {
      this.#inbound?.reverify();
      this.#pool?.reverify();
    });
    await this.#agent.start();
    this.#pending.delete('node identity');
    this.#authorizer = new InboundAuthorizer(() => this.#config.current(), this.registry, this.#logger);
    this.#inspector = new HttpInspector(this.#logger);
    // One budget for the stream windows of every HBONE session, both ways (window.ts). Its cap moves a step per halving
    // or doubling of the tunnels open, and widens at most once a second; a peer opening and closing tunnels around a
    // step could still move it each second, so the lines are budgeted.
    const windowLog = new LogBudget(60_000, 6);
    const budgetBytes = options.streamWindowBudgetBytes ?? H2_PROXY_BUFFER_BYTES;
    const streamBudget = new StreamBudget(budgetBytes, (window, open) => {
      this.metrics.setStreamWindow(window);
      const unlogged = windowLog.take('stream-window');
      if (unlogged !== null) this.#logger.info({ streamWindowBytes: window, tunnels: open, budgetBytes, ...(unlogged > 0 ? { unlogged } : {}) }, 'HBONE stream windows set for the tunnels open across sessions');
    });
    this.metrics.setStreamWindow(streamBudget.window);
    this.#pool = new HbonePool({ contexts: this.contexts, bundles: () => this.#agent.bundles(), verifier: this.verifier, logger: this.#logger, streamBudget });
    const hbonePort = options.hbonePort ?? snapshot.mesh.ports.hbone;
    this.#inbound = new HboneInbound({
      nodeName: options.nodeName,
      hbonePort,
      snapshot: () => this.#config.current(),
      contexts: this.contexts,
      bundles: () => this.#agent.bundles(),
      verifier: this.verifier,
      logger: this.#logger,
      metrics: this.metrics,
      authorize: options.authorize === undefined ? (connection) => this.#authorizer.authorize(connection) : options.authorize,
      sharedListen: options.sharedHboneListen,
      liveMeters: this.#liveMeters,
      inspectRequests: options.authorize === undefined ? (connection) => this.#authorizer.requestInspection(connection, this.#options.nodeName) : null,
      recheck: options.authorize === undefined ? (connection, inspected, snapshot) => this.#authorizer.stillAllowed(connection, inspected, snapshot, options.nodeName) : undefined,
      ownListener: (ip, port) => this.#isServiceEndpoint(ip, port) || this.#outbound.isListening(ip, port),
      inspector: this.#inspector,
      streamBudget,
    });
    this.#outbound = new OutboundListeners({ limits: connectionLimits(options.maxWorkloadConnections), nodeName: options.nodeName, snapshot: () => this.#config.current(), pool: this.#pool, metrics: this.metrics, logger: this.#logger, liveMeters: this.#liveMeters, isServicePort: (port) => port === hbonePort || port === options.sharedHboneListen?.port || this.#serviceEndpoints.some((endpoint) => endpoint.port === port) });
    // The pool gauges ride on the same timer as the byte flush.
    this.#liveMeters.add({ flush: () => {
      const stats = this.#pool.stats();
      this.metrics.setPool(stats.sessions, stats.streams);
    } });
    this.#stopFlush = startByteFlush(BYTE_FLUSH_INTERVAL_MS, this.#liveMeters);
    this.#scheduleReconcile();
    await this.#reconciling;
  }

  /** Whether the admin, metrics or readiness server is bound to ip:port (its own address, or a wildcard one). */
  #isServiceEndpoint(ip: string, port: number): boolean {
    for (const endpoint of this.#serviceEndpoints) {
      if (endpoint.port === port && (endpoint.host === ip || endpoint.host === '0.0.0.0' || endpoint.host === '::')) return true;
    }
    return false;
  }

  #onRotated(svid: Svid): void {
    if (svid.id.id === this.#agent.nodeId) return;
    this.#refusedIdentities.delete(svid.id.id);
    const first = this.contexts.get(svid.id.id) === undefined;
    this.contexts.set(svid);
    // A new identity may unblock a listener; a rotation only swaps the server certificate in place.
    if (first) this.#scheduleReconcile();
    else this.#inbound?.refreshCertificate(svid.id.id);
  }

  #scheduleReconcile(): void {
    // While draining too: a policy change must still close the open connections it withdraws (listeners stay closed).
    if (this.#closed) return;
    this.#reconciling = this.#reconciling.then(() => this.#reconcile()).catch((error: unknown) => {
      this.#logger.error({ err: toAmbitError(error, 'PROXY_BIND').toJSON() }, 'applying configuration failed');
    });
  }

  /** Brings identities, inbound servers and outbound listeners in line with the current snapshot. */
  async #reconcile(): Promise<void> {
    if (this.#closed) return;
    const snapshot = this.#config.current();
    // Compile once, before the first connection needs it.
    routingTableOf(snapshot);
    let authorization: CompiledAuthorization | null = null;
    try {
      authorization = compiledForNode(snapshot, this.#options.nodeName);
    } catch (error) {
      // Every decision on this snapshot denies; the re-check below closes what is open.
      this.#logger.error({ err: (error as Error).message, version: snapshot.version }, 'authorization policies failed to compile: open connections are closed and new ones denied until the configuration changes (fail closed)');
    }
    this.#violationsGauge.set(authorization?.violations.length ?? 0);
    for (const violation of authorization?.violations ?? []) {
      this.#logger.warn({ policy: violation.policy, port: violation.port, attempted: violation.attempted, enforced: violation.enforced, floor: violation.floor }, 'PeerAuthentication would weaken the enforced mesh-wide mode; not applied');
    }
    // A policy change applies to open connections too: those no longer allowed are closed.
    if (this.#appliedVersion !== undefined && this.#appliedVersion !== snapshot.version && this.#options.authorize === undefined) {
      // Counted apart: a workload that left (deleted, moved, another identity) is no denial, and the line must not read as one.
      let departed = 0;
      const closed = this.#inbound.revoke((connection, inspected) => {
        if (this.#authorizer.stillAllowed(connection, inspected, snapshot, this.#options.nodeName)) return true;
        if (destinationStays(connection, snapshot, this.#options.nodeName) === undefined) departed++;
        return false;
      });
      if (closed > 0) this.#logger.warn({ closed, workloadLeft: departed, notAllowed: closed - departed, version: snapshot.version }, 'closed open connections the new configuration no longer allows');
      // A WebSocket's connection may still be allowed while the request that opened it is not.
      const upgrades = this.#inspector?.recheckUpgrades() ?? 0;
      if (upgrades > 0) this.#logger.warn({ closed: upgrades, version: snapshot.version }, 'closed WebSockets whose opening request the new configuration denies');
    }
    if (this.#appliedVersion !== undefined && this.#appliedVersion !== snapshot.version) {
      const departed = this.#outbound.closeDeparted(snapshot);
      if (departed > 0) this.#logger.warn({ closed: departed, version: snapshot.version }, 'closed outbound connections of workloads no longer on this node');
      const unrouted = this.#outbound.closeUnrouted(snapshot);
      if (unrouted > 0) this.#logger.warn({ closed: unrouted, version: snapshot.version }, 'closed passthrough connections the new configuration no longer lets out as plain TCP');
    }
    this.#appliedVersion = snapshot.version;
    const local = snapshot.workloadsOnNode(this.#options.nodeName);
    const wanted = new Set(local.map((workload) => workload.identity));
    for (const identity of this.#agent.identities()) {
      if (identity !== this.#agent.nodeId && !wanted.has(identity)) {
        this.#agent.forget(identity);
        this.contexts.delete(identity);
      }
    }
    for (const identity of wanted) {
      if (this.contexts.get(identity)) continue;
      const current = this.#agent.current(identity);
      if (current) this.contexts.set(current);
      else void this.#agent.ensure(identity); // 'rotated' schedules the next reconcile
    }
    await this.#syncListeners(snapshot);
    const stats = this.#pool.stats();
    this.metrics.setPool(stats.sessions, stats.streams);
    // What loading and compiling left behind, given back once the steps of a start or a change are done.
    this.#heapRelease.schedule();
  }

  /**
   * Binds and closes listeners to match `snapshot`, says once what could not be applied, and keeps readiness in line.
   * A bind that failed (its port held, its address not yet on the host) is tried again after 1 s, then twice as long
   * each time up to 30 s, listeners only: not only on the next configuration change. Conflicting declarations wait
   * for one.
   */
  async #syncListeners(snapshot: ConfigSnapshot): Promise<void> {
    if (this.#closed || this.#draining) return;
    const inbound = await this.#inbound.sync(snapshot);
    const annotated = annotatedListeners(snapshot, this.#options.nodeName);
    const outbound = await this.#outbound.sync([...annotated.specs, ...(this.#options.outbound ?? [])]);
    const problems = [
      ...annotated.issues.map((issue) => `${issue.origin}: ${issue.message} [CONFIG_FIELD]`),
      ...inbound.failed.map((failure) => `HBONE listener ${failure.address}: ${failure.error}`),
      ...outbound.failed.map((failure) => `${failure.origin}: ${failure.message}`),
    ];
    for (const problem of problems) if (!this.#lastProblems.includes(problem)) this.#logger.error({ problem }, 'listener not applied');
    this.#lastProblems = problems;
    // Ready once every local workload has its certificate (but those the CA refused, which are that workload's problem:
    // a node would otherwise stay out of service for one misplaced pod) and its listeners are bound. Once ready, a
    // workload scheduled later and waiting for its first certificate does not take the node out of service, as
    // ztunnel's readiness does not wait for certificates: only its own connections fail until the certificate comes.
    this.#waitingCertificates = inbound.waitingForCertificate.filter((identity) => !this.#refusedIdentities.has(identity));
    if (this.#waitingCertificates.length === 0 || this.#everReady) this.#pending.delete('certificates');
    else this.#pending.add('certificates');
    // An annotation's listener that cannot be bound is that workload's problem, as a refused certificate is (it is in
    // /config_dump's problems and the log); the HBONE listeners and the operator's --outbound are the node's.
    this.#unboundListeners = [...inbound.failed.map((failure) => `HBONE ${failure.address} (${failure.error})`), ...outbound.failed.filter((failure) => failure.annotation !== true).map((failure) => `${failure.origin} (${failure.message})`)];
    if (this.#unboundListeners.length === 0) this.#pending.delete('listeners');
    else this.#pending.add('listeners');
    if (inbound.failed.length === 0 && outbound.bindFailures === 0) {
      this.#bindRetryMs = BIND_RETRY_FIRST_MS;
    } else if (this.#bindRetry === undefined && !this.#closed) {
      this.#bindRetry = setTimeout(() => {
        this.#bindRetry = undefined;
        this.#reconciling = this.#reconciling.then(() => this.#syncListeners(this.#config.current())).catch((error: unknown) => {
          this.#logger.error({ err: toAmbitError(error, 'PROXY_BIND').toJSON() }, 'binding listeners failed');
        });
      }, this.#bindRetryMs);
      this.#bindRetry.unref();
      this.#bindRetryMs = Math.min(this.#bindRetryMs * 2, BIND_RETRY_MAX_MS);
    }
    if (inbound.bound.length > 0 || outbound.bound.length > 0) this.#logger.info({ inbound: inbound.bound, outbound: outbound.bound }, 'listeners bound');
    this.metrics.setWorkloads(snapshot.workloadsOnNode(this.#options.nodeName).length, this.#inbound.listenerCount(), this.#outbound.size);
  }

  configDump(): unknown {
    const snapshot = this.#config.current();
    const stats = this.#pool?.stats();
    return {
      node: this.#options.nodeName,
      version: snapshot.version,
      mesh: snapshot.mesh,
      workloads: snapshot.workloads.map((w) => ({ kind: w.kind, name: w.name, namespace: w.namespace, node: w.node, serviceAccount: w.serviceAccount, workloadIps: w.ips, identity: w.identity, labels: w.labels, source: w.source.file, local: w.node === this.#options.nodeName })),
      services: snapshot.services.map((s) => ({ name: s.metadata.name, namespace: s.metadata.namespace, hostname: s.hostname, vips: s.spec.clusterIPs, ports: s.spec.ports, selector: s.spec.selector })),
      policies: snapshot.objects.filter((o) => o.kind === 'AuthorizationPolicy' || o.kind === 'PeerAuthentication').map((o) => ({ kind: o.kind, name: o.metadata.name, namespace: o.metadata.namespace, spec: o.kind === 'PeerAuthentication' ? { ...o.spec, portLevelMtls: Object.fromEntries(o.spec.portLevelMtls) } : (o as { spec?: unknown }).spec, source: o.source.file })),
      certificates: (this.#agent?.identities() ?? []).map((identity) => {
        const svid = this.#agent.current(identity);
        return svid
          ? { identity, state: 'Available', serialNumber: svid.chain[0]?.serialNumber, validFrom: svid.notBefore.toISOString(), expirationTime: svid.notAfter.toISOString(), certChain: svid.chain.map((cert) => cert.toString('pem')) }
          : { identity, state: 'Initializing' };
      }),
      trustBundles: (this.#agent ? [...this.#agent.bundles()] : []).map((bundle) => ({ trustDomain: bundle.trustDomain, sequence: bundle.sequence.toString(), roots: bundle.roots.length })),
      pool: stats,
      problems: this.#lastProblems,
      // The directory holds a change that was refused: what is in force is the last good configuration, not the files.
      configurationRejected: this.#configRejected,
      peerAuthentication: {
        violations: authorizationOf(snapshot).violations,
        workloads: snapshot.workloadsOnNode(this.#options.nodeName).map((w) => {
          const mtls = authorizationOf(snapshot).forWorkload(w).mtls;
          return { workload: `${w.namespace}/${w.name}`, mode: mtls.mode, ports: Object.fromEntries(mtls.ports), from: mtls.from };
        }),
      },
    };
  }

  /**
   * Stops: with drainMs, first as ztunnel drains (no new connections, GOAWAY to every HBONE session, readiness 503),
   * waiting up to drainMs for the open connections to finish by themselves; then whatever is left is cut (a reset,
   * which its application sees as one). Without, at once.
   */
  async close(options: { drainMs?: number } = {}): Promise<void> {
    // A start still waiting for the state directory stops waiting.
    this.#starting.abort();
    const drainMs = options.drainMs ?? 0;
    if (drainMs > 0 && !this.#closed && !this.#draining) await this.#drain(drainMs);
    this.#closed = true;
    clearTimeout(this.#bindRetry);
    this.#heapRelease.stop();
    this.#stopFlush?.();
    await this.#reconciling.catch(() => {});
    await this.#outbound?.close();
    await this.#inbound?.close();
    await this.#inspector?.close();
    await this.#pool?.close();
    await this.#agent?.stop();
    await this.#observability?.close();
    await this.#config?.close();
    await this.#stateLock?.release();
  }
}

/** The pending item for workloads waiting for their first certificate: which ones (the first few), not just that some are. */
function certificatesPending(waiting: readonly string[]): string {
  if (waiting.length === 0) return 'certificates';
  return `certificates of ${firstNamed(waiting)}`;
}

/** A pending item with what it waits for, the first three named: `listeners: HBONE 192.0.2.55:15008 (...)`. */
function namedPending(item: string, waiting: readonly string[]): string {
  return waiting.length === 0 ? item : `${item}: ${firstNamed(waiting)}`;
}

function firstNamed(list: readonly string[]): string {
  return `${list.slice(0, 3).join(', ')}${list.length > 3 ? ` and ${list.length - 3} more` : ''}`;
}

/**
 * A snapshot's compiled policies with the matchers of this node's workloads built: the only ones its decisions ask
 * for, built before the first connection needs one. Throws what fails to compile.
 */
function compiledForNode(snapshot: ConfigSnapshot, nodeName: string): CompiledAuthorization {
  const authorization = authorizationOf(snapshot);
  for (const workload of snapshot.workloadsOnNode(nodeName)) authorization.forWorkload(workload);
  return authorization;
}
