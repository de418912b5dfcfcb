// The rotation agent: holds this node's SVID and one SVID per workload identity it serves, renews each
// at half its lifetime (with jitter), backs off while the CA is unreachable, keeps serving a still-valid
// certificate through a CA outage, and refreshes the trust bundles. It emits 'rotated' on every new
// certificate so TLS contexts are swapped in place.
//
// Keys are ECDSA P-256, generated here for every renewal, and never sent anywhere: the CA sees a CSR.
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { lstat, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, request } from '../undici.ts';
import type { Dispatcher } from 'undici';
import { Counter, Gauge, Registry } from 'prom-client';
import { AmbitError, toAmbitError } from '../errors.ts';
import { nodeId, parseSpiffeId } from './spiffe-id.ts';
import { BundleSet, SIGNING_AUTHORITY_HEADER, bundlesEqual, createBundle, decodeBundle, encodeBundle } from './bundle.ts';
import type { TrustBundle } from './bundle.ts';
import { authorityKeyIdOf, createCsr, exportPrivateKeyPem, fingerprintOf, generateKeyPair, importPrivateKeyPem, loadSvid, NOT_BEFORE_CUSHION_MS, verifySvid } from './svid.ts';
import type { Svid, VerifyResult } from './svid.ts';
import { spiffeConnector } from './spiffe-tls.ts';
import { timerDelayMs, WALL_CLOCK_CHECK_MS, WALL_CLOCK_SLACK_MS } from './timers.ts';
import { writeFileAtomic } from './files.ts';
import type { Logger } from '../observe/log.ts';
import { makeDirs } from '../mkdir.ts';

/** SPIRE's rotationutil: renew when between 45 % and 55 % of the lifetime is left, drawn per certificate. */
const RENEW_FRACTION_MIN = 0.45;
const RENEW_FRACTION_MAX = 0.55;
/** A fresh certificate due this much earlier than its receipt says: the host's clock runs ahead of the CA's, said once. */
const CLOCK_SKEW_WARNING_MS = 5_000;
/**
 * How far ahead of this host's clock a certificate from our CA may start and still be taken: as far as the CA's own
 * serving certificate is backdated (a host further behind cannot reach the CA after its restarts anyway).
 */
const MAX_AHEAD_MS = 5 * 60_000;
/** ztunnel's identity manager: first retry after about 1 s, doubling, capped at 150 s, ±20 % jitter. */
export const DEFAULT_BACKOFF_INITIAL_MS = 1000;
export const DEFAULT_BACKOFF_MAX_MS = 150_000;
const BACKOFF_JITTER = 0.2;
/** Retries never come closer together than this, whatever the clamps below compute. */
const MIN_RETRY_MS = 100;
const LAST_CHANCE_BEFORE_EXPIRY_MS = 1000;
/**
 * While an identity has no valid certificate because the CA could not be reached, the CA is asked for its bundles this
 * often: one small request per node, however many identities wait. When it answers, they are asked for at once
 * (spread over WAKE_SPREAD_MS) rather than at the end of a backoff of up to 150 s, with no traffic for them meanwhile.
 */
const DEFAULT_CA_PROBE_MS = 10_000;
const WAKE_SPREAD_MS = 1_000;
/**
 * A new bundle sequence of our own trust domain can mean a new signing root: re-issue every SVID
 * within this window (spread at random, so a node's identities do not hit the CA at once) so that
 * none still depends on a root about to be withdrawn.
 */
const REISSUE_ON_BUNDLE_CHANGE_WINDOW_MS = 5_000;
/** When the CA gives no max-age, poll bundles as SPIFFE's default refresh hint says. */
const DEFAULT_BUNDLE_REFRESH_MS = 300_000;
const REQUEST_TIMEOUT_MS = 10_000;
/** Connections to the CA at most, each carrying one request at a time (HTTP/1.1, no pipelining). */
const CA_CONNECTIONS = 4;
/** The largest answer taken from the CA: a chain and every trust domain's bundle are a few KiB each. */
const MAX_CA_RESPONSE_BYTES = 16 * 1024 * 1024;
/**
 * A request's whole life, waiting for one of those connections included: undici's headers and body timeouts start
 * only once it is on a connection, and a hundred requests queued behind a CA that accepts and never answers would
 * otherwise fail four at a time, one connect timeout after another. The price: a CA slow enough that the last of a
 * burst (a node starting with a hundred workloads) waits longer fails those, and they are retried with the backoff.
 */
const REQUEST_DEADLINE_MS = 30_000;
const BUNDLE_RETRY_MS = 60_000;
/** In --state-dir: the node SVID's key and chain, 0600. */
const NODE_SVID_FILE = 'node-svid.pem';
/**
 * The key of an attestation not yet answered (0600), kept so that an agent restarted meanwhile asks with the same key:
 * the CA binds a spent join token to it and answers it again (a new key would find the token spent). It names the
 * token (its SHA-256), the node SVID's ID and the CA it was for, and is used for nothing else: a new token, another
 * node or CA gets a new key (an old key that leaked must not be certified again). Removed once the node SVID is
 * stored, when a refusal ends the attestation, and when a stored node SVID is used.
 */
const ATTEST_KEY_FILE = 'attest-key.json';
/**
 * Our own trust domain's bundle as the CA last served it. After a root rotation the CA's serving certificate and a
 * renewed node SVID chain to the new root, which the bootstrap bundle given at install time does not hold: without
 * this file a restarted node could neither reach the CA nor load its own stored SVID.
 */
const OWN_BUNDLE_FILE = 'bundle.json';
/** The bootstrap bundle's roots (SHA-256 fingerprints) when bundle.json was written: what the stored bundle supersedes. */
const BOOTSTRAP_SEEN_FILE = 'bootstrap-roots.json';
/** SHA-256 fingerprints of our own roots a bundle from the CA dropped: never taken back, also after a restart. */
const WITHDRAWN_ROOTS_FILE = 'withdrawn-roots.json';
/**
 * The other trust domains' bundles as the CA last served them (a SPIFFE bundle map). Without it a node restarted while
 * the CA is out of reach trusts no federated peer until the CA answers: a restart would end traffic across domains
 * that the running proxy carried.
 */
const FEDERATED_BUNDLES_FILE = 'federated-bundles.json';

/**
 * OpenSSL's words for a peer that answered in something other than TLS (`wrong version number`, with the source file
 * it came from), said as what they mean; undefined for any other failure.
 */
function notTlsReason(error: unknown): string | undefined {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code !== 'ERR_SSL_WRONG_VERSION_NUMBER' && code !== 'ERR_SSL_PACKET_LENGTH_TOO_LONG' && code !== 'ERR_SSL_HTTP_REQUEST') return undefined;
  return `the address answers, but not in TLS (${code}): a plain HTTP port, or another service? --ca names the CA's HTTPS address (ca serve --listen)`;
}

/** The CA answered, with something other than a certificate: its status says whether trying again can help. */
class CaRefusal extends AmbitError {
  readonly status: number;
  /** The CA's Retry-After (a node over its signing budget): no sooner than this is asking again any use. */
  readonly retryAfterMs: number;

  constructor(status: number, message: string, code: 'CA_REJECTED' | 'CA_NODE_REFUSED' | 'CA_RATE_LIMITED' = 'CA_REJECTED', retryAfterMs = 0) {
    super(code, message);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Retry-After in seconds (RFC 9110 §10.2.3; the CA sends no date form), capped at the longest backoff; 0 when absent or unreadable. */
function retryAfterMs(value: string | string[] | undefined, capMs: number): number {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || !/^\d{1,9}$/.test(text.trim())) return 0;
  return Math.min(Number(text.trim()) * 1000, capMs);
}

export interface IdentityAgentOptions {
  caUrl: string;
  trustDomain: string;
  nodeName: string;
  /** Trusted roots of our own trust domain for the first contact with the CA. */
  bootstrapBundle: TrustBundle;
  /** Where the node SVID is kept (0600), so a restart does not need a new join token. */
  stateDir?: string;
  /** Single-use token for the first attestation when no valid node SVID is stored. */
  joinToken?: string;
  logger: Logger;
  metrics?: Registry;
  /** Ask the CA for this lifetime (it caps it at its own maximum). */
  ttlSeconds?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** How often the CA is probed while an identity has no valid certificate for want of it (default 10 s). */
  caProbeMs?: number;
  /** A request's whole life, queueing for a connection included (default 30 s). */
  requestDeadlineMs?: number;
  /** Floor for bundle polling, whatever the CA advertises. */
  minBundleRefreshMs?: number;
  random?: () => number;
}

export interface AgentEvents {
  rotated: [Svid];
  bundles: [BundleSet];
  failed: [{ spiffeId: string; error: AmbitError }];
  /** The CA refuses the node SVID (see nodeRefusal()); 'node-accepted' once a new attestation is answered. */
  'node-refused': [AmbitError];
  'node-accepted': [];
}

interface Entry {
  readonly spiffeId: string;
  svid: Svid | undefined;
  failures: number;
  /** The last failure was the CA out of reach (not a refusal): what a probe that reaches it retries at once. */
  unreachable: boolean;
  timer: NodeJS.Timeout | undefined;
  /** When `timer` is meant to fire, by the wall clock (Infinity with none): see #catchUp. */
  dueAtMs: number;
  inFlight: Promise<void> | undefined;
  /** The signing authority changed while a renewal was in flight: what it brings back may be the old one's. */
  reissue: boolean;
  /** The key identifier of the authority that signed `svid` (its leaf's authorityKeyIdentifier). */
  issuerKeyId: string | undefined;
  waiters: Array<{ resolve: (svid: Svid) => void; reject: ((error: AmbitError) => void) | null }>;
}

interface AgentMetrics {
  expiry: Gauge;
  rotations: Counter;
  failures: Counter;
  bundleSequence: Gauge;
}

function createMetrics(registry: Registry): AgentMetrics {
  return {
    expiry: new Gauge({ name: 'ambit_certificate_expiry_timestamp_seconds', help: 'notAfter of the current certificate, per identity', labelNames: ['identity'], registers: [registry] }),
    rotations: new Counter({ name: 'ambit_certificate_rotations_total', help: 'Certificates obtained from the CA, per identity', labelNames: ['identity'], registers: [registry] }),
    failures: new Counter({ name: 'ambit_certificate_rotation_failures_total', help: 'Failed attempts to obtain a certificate, per identity and error code', labelNames: ['identity', 'code'], registers: [registry] }),
    bundleSequence: new Gauge({ name: 'ambit_trust_bundle_sequence', help: 'spiffe_sequence of the trust bundle in force, per trust domain', labelNames: ['trust_domain'], registers: [registry] }),
  };
}

function noNodeCredential(where: string, problem: string): AmbitError {
  return new AmbitError('JOIN_TOKEN_INVALID', `no valid node SVID in ${where} (${problem}) and no join token given`, { hint: 'create one with `ambit ca token create --node NAME` and pass it with --join-token' });
}

/**
 * Refuses a start that cannot obtain the node SVID (no join token, and no node SVID kept in the state directory) before
 * anything is made on disk: the agent and the proxy made their directories first and left them empty behind them. A
 * file there that turns out unusable is judged by start().
 */
export async function requireNodeCredential(stateDir: string, joinToken: string | undefined): Promise<void> {
  if (joinToken !== undefined && joinToken !== '') return;
  try {
    await lstat(join(stateDir, NODE_SVID_FILE));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw noNodeCredential(stateDir, 'none stored');
  }
}

export class IdentityAgent extends EventEmitter<AgentEvents> {
  readonly #options: IdentityAgentOptions;
  readonly #logger: Logger;
  readonly #metrics: AgentMetrics;
  readonly #random: () => number;
  readonly #nodeId: string;
  readonly #caServerId: string;
  readonly #entries = new Map<string, Entry>();
  #bundles: BundleSet;
  #dispatcher: Agent;
  #bundleTimer: NodeJS.Timeout | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  /** Our trust domain's bundle from the CA is in the state directory (loaded from it, or written to it). */
  #ownStored = false;
  /** The other trust domains' bundles as stored (FEDERATED_BUNDLES_FILE), or as last written: unchanged, not written again. */
  #federatedStored: BundleSet = new BundleSet();
  #ownSequenceFromCa: bigint | undefined;
  /** Our trust domain's bundle as the CA last served it (or as stored from that, after a restart): what a rollback is judged against. */
  #ownFromCa: TrustBundle | undefined;
  /** The last bundle map the CA served and the set it parsed to (immutable): every renewal's answer repeats it. */
  #served: { text: string; bundles: BundleSet } | undefined;
  /** Fingerprints of roots a bundle from the CA dropped: one that brings them back is stale, whatever its sequence. */
  readonly #withdrawnRoots = new Set<string>();
  /** Fingerprints of bootstrap roots the stored bundle was not stored with: the operator's newer word (a CA re-initialised). */
  readonly #newBootstrapRoots = new Set<string>();
  #lastRefreshMs: number | undefined;
  #persisting: Promise<void> = Promise.resolve();
  #stopped = false;
  #skewWarned = false;
  #wallClock: NodeJS.Timeout | undefined;
  readonly #abort = new AbortController();
  /** Dispatchers replaced by a new node SVID's, closing once their requests are done. */
  readonly #retiring = new Set<Agent>();
  /** The key identifier of the authority the CA signs with now, as it last said (SIGNING_AUTHORITY_HEADER). */
  #signingAuthority: string | undefined;
  #refreshing: Promise<void> | undefined;
  /** The wait between attestation attempts, cut short by stop(). */
  #attestWait: { timer: NodeJS.Timeout; resolve: () => void } | undefined;
  /** Why the CA refuses the node SVID (evicted, replaced, expired), until it accepts the node again. */
  #nodeRefusal: AmbitError | undefined;
  /** The join token given has been tried against such a refusal (once per process: a spent one stays spent). */
  #tokenTriedOnRefusal = false;
  #reattesting = false;
  #stopping: Promise<void> | null = null;

  constructor(options: IdentityAgentOptions) {
    super();
    if (options.bootstrapBundle.trustDomain !== options.trustDomain) {
      throw new AmbitError('BUNDLE_INVALID', `bootstrap bundle is for ${options.bootstrapBundle.trustDomain}, agent is in ${options.trustDomain}`);
    }
    this.#options = options;
    this.#nodeId = nodeId(options.trustDomain, options.nodeName);
    this.#caServerId = `spiffe://${options.trustDomain}/ambit/ca`;
    // A proxy's logger names the node already: a second `node` key is a duplicate field, which some log stores refuse.
    this.#logger = options.logger.child('node' in options.logger.bindings() ? { component: 'identity-agent' } : { component: 'identity-agent', node: options.nodeName });
    this.#metrics = createMetrics(options.metrics ?? new Registry());
    this.#random = options.random ?? Math.random;
    this.#bundles = new BundleSet([options.bootstrapBundle]);
    this.#dispatcher = this.#newDispatcher(undefined);
  }

  get nodeId(): string {
    return this.#nodeId;
  }

  /** The current SVID for an identity, if one has been obtained (a plain map read: callers may use it per connection). */
  current(spiffeId: string): Svid | undefined {
    return this.#entries.get(spiffeId)?.svid;
  }

  nodeSvid(): Svid | undefined {
    return this.current(this.#nodeId);
  }

  bundles(): BundleSet {
    return this.#bundles;
  }

  identities(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * Obtains the node SVID (stored one, else join-token attestation) and the bundles; then keeps both fresh. With
   * failFast an attestation the CA cannot answer now fails at once (its key is kept for the next start) instead of
   * being retried.
   */
  async start(options: { failFast?: boolean } = {}): Promise<void> {
    this.#wallClock = setInterval(() => this.#catchUp(), WALL_CLOCK_CHECK_MS);
    this.#wallClock.unref();
    await this.#loadStoredBundle();
    await this.#loadStoredFederatedBundles();
    const entry = this.#entry(this.#nodeId);
    const stored = await this.#loadStoredNodeSvid();
    if (stored) {
      await this.#forgetAttestationKey();
      this.#accept(entry, stored, false);
      this.#logger.info({ spiffeId: this.#nodeId, expiresAt: stored.notAfter.toISOString() }, 'using stored node SVID');
      this.#schedule(entry);
    } else {
      if (!this.#options.joinToken) {
        throw noNodeCredential(this.#options.stateDir ?? '(no state dir)', this.#options.stateDir === undefined ? 'none kept' : this.#storedNodeSvidProblem);
      }
      await this.#attestPatiently(entry, this.#options.joinToken, options.failFast === true);
    }
    await this.refreshBundles().catch((error: unknown) => {
      this.#logger.warn({ err: toAmbitError(error, 'CA_UNREACHABLE').toJSON() }, 'bundle refresh failed; using the bundle we have');
    });
  }

  /**
   * Starts managing an identity (idempotent); resolves with its first SVID. With failFast the promise
   * rejects on the first failed attempt; renewal goes on in the background either way.
   */
  ensure(spiffeId: string, options: { failFast?: boolean } = {}): Promise<Svid> {
    parseSpiffeId(spiffeId);
    const entry = this.#entry(spiffeId);
    if (entry.svid) return Promise.resolve(entry.svid);
    const ready = new Promise<Svid>((resolve, reject) => entry.waiters.push({ resolve, reject: options.failFast ? reject : null }));
    if (!entry.inFlight && !entry.timer) this.#renewSoon(entry, 0);
    return ready;
  }

  /** Stops renewing an identity that is no longer on this node. */
  forget(spiffeId: string): void {
    if (spiffeId === this.#nodeId) return;
    const entry = this.#entries.get(spiffeId);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.#entries.delete(spiffeId);
    this.#metrics.expiry.remove({ identity: spiffeId });
  }

  /** Stops renewing and closes the connections to the CA; a second call waits for the first. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.#stopped = true;
    // Requests under way or queued for a connection end now: stop() must not wait out a CA that does not answer.
    const stopError = new AmbitError('CA_UNREACHABLE', `CA at ${this.#options.caUrl}: the agent stopped`);
    this.#abort.abort(stopError);
    // Those who asked to hear of a failure hear of this one: nothing will be asked for them any more.
    for (const entry of this.#entries.values()) {
      const waiters = entry.waiters;
      entry.waiters = waiters.filter((waiter) => waiter.reject === null);
      for (const waiter of waiters) waiter.reject?.(stopError);
    }
    if (this.#attestWait !== undefined) {
      clearTimeout(this.#attestWait.timer);
      this.#attestWait.resolve();
    }
    clearTimeout(this.#bundleTimer);
    clearTimeout(this.#probeTimer);
    clearInterval(this.#wallClock);
    for (const entry of this.#entries.values()) clearTimeout(entry.timer);
    await Promise.allSettled([...this.#entries.values()].map((entry) => entry.inFlight));
    await this.#persisting;
    // Requests still waiting for a connection were aborted above; destroy ends them and their connects now, on the
    // dispatchers being retired too.
    await Promise.all([this.#dispatcher, ...this.#retiring].map((dispatcher) => dispatcher.destroy()));
  }

  /** Fetches the bundle set (own and federated trust domains) now; a fetch already under way is joined, not doubled. */
  refreshBundles(): Promise<void> {
    this.#refreshing ??= this.#refreshBundles().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  /**
   * BundleSet.fromMapJson of a bundle map the CA served, parsed once per distinct text. Each SVID the CA signs comes
   * with the bundles, and reading their roots (X.509 in JavaScript) took ~5 ms of the main thread per answer: 0.5 s
   * for a start with 100 local workloads, and a stall in every rotation.
   */
  #parseServed(text: string): BundleSet {
    const served = this.#served;
    if (served !== undefined && served.text === text) return served.bundles;
    const bundles = BundleSet.fromMapJson(text);
    this.#served = { text, bundles };
    return bundles;
  }

  async #refreshBundles(): Promise<void> {
    clearTimeout(this.#bundleTimer);
    // After a failure, try again within a minute (or the last hint, if shorter), not after the default 5 minutes.
    let nextMs = Math.min(BUNDLE_RETRY_MS, this.#lastRefreshMs ?? BUNDLE_RETRY_MS);
    try {
      const response = await this.#exchange('/v1/bundles', 'GET');
      const text = response.text;
      if (response.statusCode !== 200) throw new AmbitError('CA_REJECTED', `GET /v1/bundles answered ${response.statusCode}: ${text.slice(0, 200)}`);
      const maxAge = /max-age=(\d+)/.exec(String(response.headers['cache-control'] ?? ''));
      const header = response.headers[SIGNING_AUTHORITY_HEADER];
      const signing = typeof header === 'string' && /^[0-9a-f]{2,128}$/i.test(header) ? header.toLowerCase() : undefined;
      // A CA that stopped naming it (rolled back to a version without the header): back to the sequence rule.
      if (signing === undefined) this.#signingAuthority = undefined;
      this.#applyBundles(this.#parseServed(text), signing !== undefined);
      if (signing !== undefined) this.#onSigningAuthority(signing);
      nextMs = maxAge ? Number(maxAge[1]) * 1000 : DEFAULT_BUNDLE_REFRESH_MS;
      this.#lastRefreshMs = nextMs;
    } finally {
      if (!this.#stopped) {
        this.#bundleTimer = setTimeout(() => void this.refreshBundles().catch((error: unknown) => {
          if (!this.#stopped) this.#logger.warn({ err: toAmbitError(error, 'CA_UNREACHABLE').toJSON() }, 'bundle refresh failed; keeping the bundles we have');
        }), timerDelayMs(Math.max(this.#options.minBundleRefreshMs ?? 1000, nextMs)));
        this.#bundleTimer.unref();
      }
    }
  }

  /** `namesSigning`: the answer named the signing authority, which decides what to re-issue (#onSigningAuthority). */
  #applyBundles(served: BundleSet, namesSigning = false): void {
    let next = served;
    let own = next.get(this.#options.trustDomain);
    // A bundle set without our own trust domain would lock us out of our own mesh: refuse it.
    if (!own || own.roots.length === 0) {
      throw new AmbitError('BUNDLE_INVALID', `CA served no roots for our own trust domain ${this.#options.trustDomain}`);
    }
    const held = this.#ownFromCa;
    // With no bundle of the CA's held (bundle.json lost), the withdrawn roots still say what is stale: refused as the
    // rollback below refuses it, the bundle trusted now (the bootstrap roots, less those withdrawn) kept.
    if (held === undefined && own.roots.some((root) => this.#withdrawnRoots.has(fingerprintOf(root)))) {
      throw new AmbitError('BUNDLE_INVALID', `CA served the bundle of ${this.#options.trustDomain} at sequence ${own.sequence}, bringing back a root a later bundle withdrew (${WITHDRAWN_ROOTS_FILE}): refused, ours kept (a CA restored from a backup, or a stale replica)`);
    }
    const rollback = held === undefined ? null : this.#rollback(own, held);
    if (rollback !== null && held !== undefined) {
      // Ours is kept; the other trust domains' bundles in the answer are taken all the same.
      this.#logger.error({ trustDomain: this.#options.trustDomain, sequence: own.sequence.toString(), held: held.sequence.toString() }, `${rollback}: refused, ours kept (a CA restored from a backup, or a stale replica; after re-initialising the CA on purpose, remove ${OWN_BUNDLE_FILE} and ${WITHDRAWN_ROOTS_FILE} from each node's state directory)`);
      own = held;
      next = new BundleSet([held, ...[...served].filter((bundle) => bundle.trustDomain !== this.#options.trustDomain)]);
    } else if (held !== undefined && own.sequence > held.sequence) {
      // Only a newer bundle withdraws: an older one taken (a CA re-initialised) says nothing of what the last withdrew.
      for (const root of held.roots) if (!own.roots.some((kept) => kept.equal(root))) this.#withdrawnRoots.add(fingerprintOf(root));
      for (const root of own.roots) this.#withdrawnRoots.delete(fingerprintOf(root));
    }
    this.#ownFromCa = own;
    const previous = this.#bundles;
    let changed = previous.trustDomains().length !== next.trustDomains().length;
    for (const bundle of next) {
      const before = previous.get(bundle.trustDomain);
      this.#metrics.bundleSequence.set({ trust_domain: bundle.trustDomain }, Number(bundle.sequence));
      if (!before || before.sequence !== bundle.sequence || !bundlesEqual(before, bundle)) changed = true;
    }
    // The bootstrap bundle's sequence means nothing (a PEM file has none); only a change between two
    // bundles served by the CA can signal a new signing root.
    // A new sequence of our own bundle may mean a new signing authority. An answer that names it lets
    // #onSigningAuthority decide; a signing answer carries bundles but not the name, so a CA known to give it is asked
    // now; a CA that never gives it: any change may be a new signing root.
    if (!namesSigning && this.#ownSequenceFromCa !== undefined && this.#ownSequenceFromCa !== own.sequence) {
      if (this.#signingAuthority !== undefined) void this.refreshBundles().catch(() => {});
      else this.#reissue(() => true);
    }
    this.#ownSequenceFromCa = own.sequence;
    if (!changed) {
      // What the bootstrap bundle already held (a --bundle in SPIFFE JSON, as the CA serves it): unchanged, but the
      // state directory has it from the CA only once stored, with the bootstrap roots it was judged against.
      if (!this.#ownStored) this.#persistOwnBundle(own);
      return;
    }
    this.#bundles = next;
    this.#persistOwnBundle(own);
    this.#persistFederatedBundles(next);
    this.#logger.info({ trustDomains: next.trustDomains(), ownSequence: own.sequence.toString(), ownRoots: own.roots.length }, 'trust bundles updated');
    this.emit('bundles', next);
  }

  /**
   * Why a bundle the CA served for our own trust domain is a rollback, or null. One that brings back a root a later
   * bundle withdrew (perhaps compromised) is stale whatever its sequence. An older one (a CA restored from a backup, a
   * stale replica) is too, unless it holds our very roots (a CA re-initialised under the same root) or only roots the
   * operator has given us since (a bootstrap bundle with roots the stored bundle was not stored with: re-initialised
   * afresh).
   */
  #rollback(own: TrustBundle, held: TrustBundle): string | null {
    if (own.roots.some((root) => this.#withdrawnRoots.has(fingerprintOf(root)))) {
      return `CA served the bundle of ${this.#options.trustDomain} at sequence ${own.sequence}, bringing back a root a later bundle withdrew`;
    }
    if (own.sequence >= held.sequence || bundlesEqual(own, held)) return null;
    if (own.roots.every((root) => this.#newBootstrapRoots.has(fingerprintOf(root)))) return null;
    return `CA served the bundle of ${this.#options.trustDomain} at sequence ${own.sequence}, older than sequence ${held.sequence}, which we hold, with other roots`;
  }

  /** Re-issues, spread over a few seconds, the certificates `stale` picks. */
  #reissue(stale: (entry: Entry) => boolean): void {
    for (const entry of this.#entries.values()) {
      // A request in flight (a first certificate too) may be signed by the authority before the switch: judged
      // again when it lands, once.
      if (entry.inFlight) entry.reissue = true;
      else if (entry.svid !== undefined && stale(entry)) this.#renewSoon(entry, this.#random() * REISSUE_ON_BUNDLE_CHANGE_WINDOW_MS);
    }
  }

  /** The CA named the authority that signs now: what another one signed is re-issued, the rest renews as usual. */
  #onSigningAuthority(keyId: string): void {
    if (keyId === this.#signingAuthority) return;
    this.#signingAuthority = keyId;
    this.#reissue((entry) => entry.issuerKeyId !== keyId);
  }

  #entry(spiffeId: string): Entry {
    let entry = this.#entries.get(spiffeId);
    if (!entry) {
      entry = { spiffeId, svid: undefined, failures: 0, unreachable: false, timer: undefined, dueAtMs: Infinity, inFlight: undefined, reissue: false, issuerKeyId: undefined, waiters: [] };
      this.#entries.set(spiffeId, entry);
    }
    return entry;
  }

  /**
   * Connections to the CA presenting `svid` (none before attestation). Fixed per dispatcher, never read from the
   * entry: a renewed node SVID must not reach the CA on any connection before it is stored (see #accept).
   */
  #newDispatcher(svid: Svid | undefined): Agent {
    return new Agent({
      connect: spiffeConnector({
        clientSvid: () => svid,
        bundles: () => this.#bundles,
        expectedServer: this.#caServerId,
        connectTimeoutMs: REQUEST_TIMEOUT_MS,
      }),
      // Connections carry the node SVID they were opened with; keep them short-lived so a renewed SVID is used soon.
      // The CA's `Keep-Alive: timeout=30` hint would otherwise hold each one open for 28 s (undici follows a server's
      // hint up to keepAliveMaxTimeout), and each idle TLS connection costs this process about 150 KiB.
      keepAliveTimeout: 5_000,
      keepAliveMaxTimeout: 5_000,
      // A node starting with 100 workloads asks for 100 certificates at once: a few connections carry them in turn
      // instead of 100 TLS handshakes at the CA (and as many connections held here) per starting node.
      connections: CA_CONNECTIONS,
      // A certificate chain and the trust bundles: far below this. A larger answer is cut off, not held in memory.
      maxResponseSize: MAX_CA_RESPONSE_BYTES,
    });
  }

  /**
   * Attestation, retried with the renewals' backoff while the CA cannot be reached or fails (5xx: the CA gives the
   * token back then): a node starting while its CA restarts must not exit and wait out a crash loop. A refusal
   * (an unknown, spent or expired token, another node's) is final and ends the start at once.
   */
  async #attestPatiently(entry: Entry, token: string, failFast: boolean): Promise<void> {
    // One key for every attempt, across restarts too: the CA binds the token to the key that spent it, and answers the
    // same key again when the answer to that attempt was lost (a deadline passed while the CA signed, a connection
    // cut, the agent restarted). A new key would find the token spent.
    const keys = await this.#attestationKeys(token);
    for (let attempt = 1; ; attempt++) {
      try {
        // Once the node SVID holding this key is stored, the pending key is done with; not before, or a restart would
        // find neither.
        if (await this.#attest(entry, token, keys)) await this.#forgetAttestationKey();
        return;
      } catch (error) {
        const failure = toAmbitError(error, 'CA_UNREACHABLE');
        const transient = failure.code === 'CA_UNREACHABLE' || (failure instanceof CaRefusal && failure.status >= 500);
        if (this.#stopped) throw this.#stoppedAttesting(failure);
        if (!transient) {
          // The token will not be answered: its key has no use left.
          await this.#forgetAttestationKey();
          throw failure;
        }
        // Kept: the CA may have spent the token on this key, and answers it again on the next start.
        if (failFast) throw failure;
        const delayMs = Math.max(MIN_RETRY_MS, this.#backoffMs(attempt));
        this.#metrics.failures.inc({ identity: this.#nodeId, code: failure.code });
        this.#logger.warn({ spiffeId: this.#nodeId, err: failure.toJSON(), attempt, retryInMs: Math.round(delayMs) }, 'node attestation failed; retrying with the same join token');
        await new Promise<void>((resolve) => {
          this.#attestWait = { timer: setTimeout(resolve, delayMs), resolve };
        });
        this.#attestWait = undefined;
        if (this.#stopped) throw this.#stoppedAttesting(failure);
      }
    }
  }

  /**
   * The pending attestation's key from the state directory when it was kept for this token, node and CA (and only its
   * owner can read it), else a new one stored there first (0600).
   */
  async #attestationKeys(token: string): Promise<CryptoKeyPair> {
    const dir = this.#options.stateDir;
    if (!dir) return generateKeyPair();
    const file = join(dir, ATTEST_KEY_FILE);
    const binding = { token: createHash('sha256').update(token).digest('hex'), node: this.#nodeId, ca: this.#options.caUrl };
    try {
      const info = await stat(file);
      if ((info.mode & 0o077) !== 0) throw new AmbitError('FILE_READ', `${file} is readable by others (mode ${(info.mode & 0o777).toString(8)}): not used`);
      const kept = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
      if (kept.token === binding.token && kept.node === binding.node && kept.ca === binding.ca && typeof kept.key === 'string') {
        const keys = await importPrivateKeyPem(kept.key, file);
        this.#logger.info({ file }, 'attesting with the key of an attestation not answered before a restart');
        return keys;
      }
    } catch (error) {
      // ENOTDIR: the state directory is a file, which the write below reports.
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') this.#logger.warn({ err: toAmbitError(error, 'SVID_PARSE').toJSON(), file }, 'pending attestation key is not usable; attesting with a new key');
    }
    const keys = await generateKeyPair();
    try {
      await makeDirs(dir, 0o700);
      await writeFileAtomic(file, `${JSON.stringify({ ...binding, key: await exportPrivateKeyPem(keys.privateKey) })}\n`, 0o600);
    } catch (error) {
      // Before the CA is asked: attesting would spend the token with nowhere to keep the node SVID, and the next start
      // would need a new token (the operator's typo costs a token, not just a restart).
      const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new AmbitError('FILE_WRITE', `state directory ${dir} cannot be written (${reason === 'ENOTDIR' || reason === 'EEXIST' ? 'a file is in the way' : reason}): not attesting, so the join token is not spent with nowhere to keep the node SVID`, { cause: error, hint: 'give --state-dir a directory this user can write (it is created 0700 when missing)' });
    }
    return keys;
  }

  async #forgetAttestationKey(): Promise<void> {
    const dir = this.#options.stateDir;
    if (!dir) return;
    await unlink(join(dir, ATTEST_KEY_FILE)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') this.#logger.warn({ err: error.message, file: join(dir, ATTEST_KEY_FILE) }, 'cannot remove the pending attestation key');
    });
  }

  #stoppedAttesting(failure: AmbitError): AmbitError {
    return new AmbitError('CA_UNREACHABLE', `stopped while waiting to attest to the CA at ${this.#options.caUrl}: ${failure.message}`, { cause: failure });
  }

  /** Resolves true once the node SVID is stored (or there is no state directory), false when storing it failed. */
  async #attest(entry: Entry, token: string, keys: CryptoKeyPair): Promise<boolean> {
    const csr = await createCsr(keys, this.#nodeId);
    const svid = await this.#post('/v1/attest', { node: this.#options.nodeName, token, csr }, keys);
    // As for a renewal: a certificate for another identity (a faulty CA) would be stored as the node's, and the
    // next start would throw it away with the token already spent.
    if (svid.id.id !== this.#nodeId) throw new AmbitError('CA_REJECTED', `CA returned ${svid.id.id} for the attestation of ${this.#nodeId}`);
    const stored = this.#accept(entry, svid, true);
    this.#logger.info({ spiffeId: svid.id.id, expiresAt: svid.notAfter.toISOString() }, 'node attested with join token');
    this.#schedule(entry, true);
    return (await stored) === true;
  }

  async #renew(entry: Entry): Promise<void> {
    const keys = await generateKeyPair();
    const csr = await createCsr(keys, entry.spiffeId);
    const body: Record<string, unknown> = { spiffeId: entry.spiffeId, csr };
    // The node SVID's lifetime is the CA's node one (longer than workloads', to ride out CA outages).
    if (this.#options.ttlSeconds !== undefined && entry.spiffeId !== this.#nodeId) body.ttlSeconds = this.#options.ttlSeconds;
    const svid = await this.#post('/v1/sign', body, keys);
    if (svid.id.id !== entry.spiffeId) throw new AmbitError('CA_REJECTED', `CA returned ${svid.id.id} for a request for ${entry.spiffeId}`);
    this.#accept(entry, svid, true);
  }

  /**
   * One request to the CA and its whole answer, under one deadline that counts the time queued for a connection
   * (REQUEST_DEADLINE_MS), and ended at once by stop(). Every failure is CA_UNREACHABLE naming the CA.
   */
  async #exchange(path: string, method: 'GET' | 'POST', body?: string): Promise<{ statusCode: number; headers: Dispatcher.ResponseData['headers']; text: string }> {
    const caUrl = this.#options.caUrl;
    const stopped = this.#abort.signal;
    if (stopped.aborted) throw stopped.reason;
    const deadlineMs = this.#options.requestDeadlineMs ?? REQUEST_DEADLINE_MS;
    // One controller per request, its listener and timer gone when it ends: the agent's own signal lives as long as
    // the agent, and AbortSignal.any would tie a dependent signal to it per request.
    const controller = new AbortController();
    const onStop = () => controller.abort(stopped.reason);
    stopped.addEventListener('abort', onStop, { once: true });
    const timer = setTimeout(() => controller.abort(new AmbitError('CA_UNREACHABLE', `CA at ${caUrl}: no answer within ${deadlineMs / 1000} s (waiting for one of ${CA_CONNECTIONS} connections included)`)), deadlineMs);
    try {
      const response = await request(`${caUrl}${path}`, {
        dispatcher: this.#dispatcher,
        method,
        signal: controller.signal,
        ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body }),
        headersTimeout: REQUEST_TIMEOUT_MS,
        bodyTimeout: REQUEST_TIMEOUT_MS,
      });
      return { statusCode: response.statusCode, headers: response.headers, text: await response.body.text() };
    } catch (error) {
      if (controller.signal.aborted) throw controller.signal.reason;
      const wrapped = toAmbitError(error, 'CA_UNREACHABLE');
      throw wrapped.code === 'IDENTITY_MISMATCH' || wrapped.code.startsWith('SVID_') || wrapped.code.startsWith('TRUST_DOMAIN')
        ? new AmbitError('CA_UNREACHABLE', `CA at ${caUrl} failed authentication: [${wrapped.code}] ${wrapped.message}`, {
            cause: wrapped,
            // Reached, but not trusted: retrying will not help until the node holds the CA's current roots.
            hint: `the CA answered with a certificate this node's trust bundle does not vouch for (the --bundle/--ca-bundle roots, or ${this.#options.stateDir === undefined ? 'the bundle last stored' : join(this.#options.stateDir, OWN_BUNDLE_FILE)} once stored): a CA re-initialised, or one whose roots the node saw withdrawn, needs its new bundle given to the node`,
          })
        : new AmbitError('CA_UNREACHABLE', `CA at ${caUrl}: ${notTlsReason(error) ?? wrapped.message}`, { cause: wrapped });
    } finally {
      clearTimeout(timer);
      stopped.removeEventListener('abort', onStop);
    }
  }

  async #post(path: string, body: Record<string, unknown>, keys: CryptoKeyPair): Promise<Svid> {
    const response = await this.#exchange(path, 'POST', JSON.stringify(body));
    const text = response.text;
    let parsed: { certChain?: unknown; bundles?: unknown; error?: { code?: string; message?: string } };
    try {
      parsed = JSON.parse(text) as typeof parsed;
    } catch {
      throw new AmbitError('CA_REJECTED', `CA answered ${response.statusCode} with a non-JSON body`);
    }
    if (response.statusCode !== 200 || typeof parsed.certChain !== 'string') {
      const code = parsed.error?.code ?? 'unknown';
      // 401 to a request made with the node SVID: the CA no longer takes that certificate, whatever was asked for.
      const nodeRefused = response.statusCode === 401 && path === '/v1/sign';
      const message = `CA refused ${path} (${response.statusCode} ${code}): ${parsed.error?.message ?? text.slice(0, 200)}`;
      if (response.statusCode === 429) {
        throw new CaRefusal(429, message, 'CA_RATE_LIMITED', retryAfterMs(response.headers['retry-after'], this.#options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS));
      }
      throw new CaRefusal(response.statusCode, message, nodeRefused ? 'CA_NODE_REFUSED' : 'CA_REJECTED');
    }
    const svid = loadSvid(parsed.certChain, await exportPrivateKeyPem(keys.privateKey));
    if (typeof parsed.bundles === 'string') {
      try {
        this.#applyBundles(this.#parseServed(parsed.bundles));
      } catch (error) {
        this.#logger.warn({ err: toAmbitError(error, 'BUNDLE_INVALID').toJSON() }, 'ignoring bundles in CA response');
      }
    }
    // Never install a certificate our own trust bundle does not accept: peers would refuse it anyway.
    const check = this.#verifyOwn(svid);
    if (!check.valid) throw new AmbitError('CA_REJECTED', `CA issued a certificate that does not verify: [${check.error.code}] ${check.error.message}`);
    return svid;
  }

  /** Installs an SVID; for a fresh node SVID, resolves once it is stored (true) or could not be (false), else null. */
  #accept(entry: Entry, svid: Svid, fresh: boolean): Promise<boolean> | null {
    // Forgotten while its renewal was in flight (the workload left the node): installing it would bring back its
    // expiry gauge and have the proxy hold a key for an identity it no longer serves.
    if (this.#entries.get(entry.spiffeId) !== entry) return null;
    const renewal = entry.svid !== undefined;
    entry.svid = svid;
    entry.issuerKeyId = svid.chain[0] === undefined ? undefined : authorityKeyIdOf(svid.chain[0]);
    entry.failures = 0;
    this.#metrics.expiry.set({ identity: entry.spiffeId }, svid.notAfter.getTime() / 1000);
    if (fresh) {
      // The CA answers: the others waiting for it need not wait out their backoff.
      this.#wakeWaiting();
      this.#metrics.rotations.inc({ identity: entry.spiffeId });
      this.#logger.info({ spiffeId: entry.spiffeId, serial: svid.chain[0]?.serialNumber, expiresAt: svid.notAfter.toISOString() }, 'certificate rotated');
    }
    let stored: Promise<boolean> | null = null;
    if (entry.spiffeId === this.#nodeId) {
      // New connections to the CA present the new node SVID. A renewed one only once it is stored: its first use
      // retires the old one at the CA, and a restart that found only the old one on disk would be refused. The first
      // one (attestation) at once: the connection that attested presented none. One loaded from disk at once.
      const switchDispatcher = () => {
        if (this.#stopped) return;
        const old = this.#dispatcher;
        this.#dispatcher = this.#newDispatcher(svid);
        this.#retiring.add(old);
        void old.close().finally(() => this.#retiring.delete(old));
      };
      if (!fresh || !renewal) switchDispatcher();
      stored = fresh ? this.#persistNodeSvid(svid) : null;
      if (stored !== null && renewal) void stored.then((ok) => ok && switchDispatcher());
    }
    const waiters = entry.waiters;
    entry.waiters = [];
    for (const waiter of waiters) waiter.resolve(svid);
    this.emit('rotated', svid);
    return stored;
  }

  /**
   * Next renewal of a healthy entry: when 45–55 % of its lifetime is left, per SPIRE. The lifetime is
   * counted from issuance, not from notBefore: notBefore is backdated for clock skew, and counting the
   * backdating would make short-lived certificates renew at once, in a loop.
   */
  #schedule(entry: Entry, fresh = false): void {
    const svid = entry.svid;
    if (!svid) return;
    const now = Date.now();
    const validity = svid.notAfter.getTime() - svid.notBefore.getTime();
    const lifetime = validity > NOT_BEFORE_CUSHION_MS ? validity - NOT_BEFORE_CUSHION_MS : validity;
    const fraction = RENEW_FRACTION_MIN + (RENEW_FRACTION_MAX - RENEW_FRACTION_MIN) * this.#random();
    const renewAt = svid.notAfter.getTime() - lifetime * fraction;
    // A certificate just issued is never due at once: with this host's clock ahead of the CA's by half a certificate's
    // life it would be, and the agent would ask the CA again and again in a loop. It waits at least a quarter of its
    // renewal time from receipt (not the whole: a slow answer on a busy node must not push a short certificate's
    // renewal past its expiry).
    const fromReceipt = lifetime * (1 - fraction);
    if (fresh && renewAt - now < fromReceipt - CLOCK_SKEW_WARNING_MS && !this.#skewWarned) {
      this.#skewWarned = true;
      this.#logger.warn({ spiffeId: entry.spiffeId, aheadSeconds: Math.round((fromReceipt - (renewAt - now)) / 1000) }, "this host's clock is ahead of the CA's: renewals wait at least a quarter of their time from each certificate's receipt; fix its time (NTP), since peers judge certificates by their own clocks");
    }
    // Nor later than its renewal time from receipt: with this host's clock behind the CA's, the wall clock would put
    // the renewal that much late, past the certificate's end when the clock is behind by more than its renewal time.
    this.#renewSoon(entry, fresh ? Math.min(Math.max(renewAt - now, fromReceipt / 4), fromReceipt) : Math.max(0, renewAt - now));
  }

  #renewSoon(entry: Entry, delayMs: number): void {
    if (this.#stopped) return;
    clearTimeout(entry.timer);
    entry.dueAtMs = Date.now() + delayMs;
    entry.timer = setTimeout(() => this.#runRenewal(entry), timerDelayMs(delayMs));
    entry.timer.unref();
  }

  /**
   * Timers run on a monotonic clock that stands still while the host is suspended (a laptop, a paused VM): after an
   * hour asleep a renewal due in 20 minutes still waits 20 minutes, its certificate long expired. The wall clock says
   * what is due; checked every few seconds, as SPIRE's agent does.
   */
  #catchUp(): void {
    const now = Date.now();
    for (const entry of this.#entries.values()) {
      if (entry.timer === undefined || entry.inFlight !== undefined || now < entry.dueAtMs + WALL_CLOCK_SLACK_MS) continue;
      clearTimeout(entry.timer);
      this.#runRenewal(entry);
    }
  }

  #runRenewal(entry: Entry): void {
    entry.timer = undefined;
    entry.dueAtMs = Infinity;
    if (this.#stopped || this.#entries.get(entry.spiffeId) !== entry || entry.inFlight) return;
    // The node SVID this request is made with: a refusal of it that arrives after it was replaced is not news.
    const sentWith = this.#entries.get(this.#nodeId)?.svid;
    entry.inFlight = this.#renew(entry).then(
      () => {
        entry.inFlight = undefined;
        // The CA took a request made with the node SVID: it accepts the node (again: an eviction undone, say).
        if (this.#nodeRefusal !== undefined && !this.#reattesting) {
          this.#nodeRefusal = undefined;
          if (this.listenerCount('node-accepted') > 0) this.emit('node-accepted');
        }
        const stale = entry.reissue && (this.#signingAuthority === undefined || entry.issuerKeyId !== this.#signingAuthority);
        entry.reissue = false;
        if (stale) {
          this.#renewSoon(entry, this.#random() * REISSUE_ON_BUNDLE_CHANGE_WINDOW_MS);
        } else {
          this.#schedule(entry, true);
        }
      },
      (error: unknown) => {
        entry.inFlight = undefined;
        // Ended by stop(): not a failure to count, report or retry.
        if (this.#stopped) return;
        // The retry asks the CA again, which signs with whatever root is active then.
        entry.reissue = false;
        const failure = toAmbitError(error, 'CA_UNREACHABLE');
        // Refused for a node SVID replaced since it was sent (a new attestation answered meanwhile): asked again soon
        // with the new one, and no refusal said of a node the CA has just accepted.
        if (failure.code === 'CA_NODE_REFUSED' && this.#entries.get(this.#nodeId)?.svid !== sentWith) {
          this.#renewSoon(entry, this.#random() * WAKE_SPREAD_MS);
          return;
        }
        this.#onFailure(entry, failure);
      },
    );
  }

  /** ztunnel's backoff for the n-th failure in a row (from 1): initial × 2^(n-1), capped, ±20 % jitter. */
  #backoffMs(failures: number): number {
    const base = Math.min(this.#options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS, (this.#options.backoffInitialMs ?? DEFAULT_BACKOFF_INITIAL_MS) * 2 ** (failures - 1));
    return base * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * this.#random());
  }

  #onFailure(entry: Entry, error: AmbitError): void {
    // Attesting again with the join token given: its waiters hear of the outcome, not of this refusal.
    const reattesting = error.code === 'CA_NODE_REFUSED' && this.#onNodeRefused(error);
    entry.failures++;
    entry.unreachable = error.code === 'CA_UNREACHABLE';
    let delayMs = this.#backoffMs(entry.failures);
    // Over the node's signing budget: asking before the CA said is refused again (and spends the budget back).
    if (error instanceof CaRefusal && error.retryAfterMs > delayMs) delayMs = error.retryAfterMs * (1 + BACKOFF_JITTER * this.#random());
    const svid = entry.svid;
    const stillValid = svid !== undefined && svid.notAfter.getTime() > Date.now();
    // A still-valid certificate keeps serving; make sure one attempt lands shortly before it expires.
    const lastChanceMs = stillValid ? svid.notAfter.getTime() - Date.now() - LAST_CHANCE_BEFORE_EXPIRY_MS : 0;
    if (lastChanceMs > 0) delayMs = Math.min(delayMs, lastChanceMs);
    delayMs = Math.max(MIN_RETRY_MS, delayMs);
    this.#metrics.failures.inc({ identity: entry.spiffeId, code: error.code });
    this.#logger.warn(
      { spiffeId: entry.spiffeId, err: error.toJSON(), attempt: entry.failures, retryInMs: Math.round(delayMs), serving: stillValid ? svid?.notAfter.toISOString() : null },
      stillValid ? 'certificate renewal failed; the current certificate keeps serving' : 'certificate request failed; no valid certificate for this identity',
    );
    if (this.listenerCount('failed') > 0) this.emit('failed', { spiffeId: entry.spiffeId, error });
    // Over the node's signing budget is no failure of this identity's: it is asked for again after the CA's Retry-After.
    if (!stillValid && !reattesting && error.code !== 'CA_RATE_LIMITED') IdentityAgent.#rejectFailFast(entry, error);
    this.#renewSoon(entry, delayMs);
    // Also while the certificate is still valid: it may expire before its next retry, up to 150 s away.
    if (entry.unreachable) this.#probeLater();
  }

  /** Those waiting for an identity's first certificate who asked to hear of a failure hear of this one. */
  static #rejectFailFast(entry: Entry, error: AmbitError): void {
    if (!entry.waiters.some((waiter) => waiter.reject !== null)) return;
    const waiters = entry.waiters;
    entry.waiters = waiters.filter((waiter) => waiter.reject === null);
    for (const waiter of waiters) waiter.reject?.(error);
  }

  /** Why the CA refuses this node's certificate, while it does (readiness says so); undefined once it accepts it. */
  nodeRefusal(): string | undefined {
    return this.#nodeRefusal?.message;
  }

  /**
   * The CA refused the node SVID itself (the node evicted, its certificate replaced or expired): no identity of this
   * node can be renewed with it. A join token given is used to attest again, once (SPIRE's agent re-attests when
   * told to); without one, or with one the CA refuses, the operator is told what to do. The stored node SVID is
   * replaced by the new attestation's.
   */
  #onNodeRefused(error: AmbitError): boolean {
    const first = this.#nodeRefusal === undefined;
    this.#nodeRefusal = error;
    if (first && this.listenerCount('node-refused') > 0) this.emit('node-refused', error);
    if (this.#reattesting) return true;
    if (this.#stopped) return false;
    const token = this.#options.joinToken;
    const file = this.#options.stateDir === undefined ? 'the node SVID' : join(this.#options.stateDir, NODE_SVID_FILE);
    if (token === undefined || this.#tokenTriedOnRefusal) {
      if (first) {
        this.#logger.error({ spiffeId: this.#nodeId, err: error.toJSON(), hint: `create a join token (ambit ca token create --node ${this.#options.nodeName}) and restart with it (--join-token-file): ${file} is then replaced by the new attestation's` }, token === undefined ? 'the CA no longer accepts this node\'s certificate and no join token was given: no certificate of this node can be renewed' : 'the CA no longer accepts this node\'s certificate and refused the join token given: no certificate of this node can be renewed');
      }
      return false;
    }
    this.#tokenTriedOnRefusal = true;
    this.#reattesting = true;
    this.#logger.warn({ spiffeId: this.#nodeId, err: error.toJSON() }, 'the CA no longer accepts this node\'s certificate: attesting again with the join token given');
    const node = this.#entry(this.#nodeId);
    clearTimeout(node.timer);
    node.timer = undefined;
    this.#attestPatiently(node, token, false).then(
      () => {
        this.#reattesting = false;
        this.#nodeRefusal = undefined;
        if (this.listenerCount('node-accepted') > 0) this.emit('node-accepted');
        // Every identity the refusal held back is asked for now, spread over a second, not at its backoff's end.
        for (const entry of this.#entries.values()) {
          if (entry !== node && entry.failures > 0 && entry.inFlight === undefined) this.#renewSoon(entry, this.#random() * WAKE_SPREAD_MS);
        }
      },
      (failure: unknown) => {
        this.#reattesting = false;
        if (this.#stopped) return;
        const refused = toAmbitError(failure, 'CA_REJECTED');
        this.#logger.error({ spiffeId: this.#nodeId, err: refused.toJSON(), hint: `create a new join token (ambit ca token create --node ${this.#options.nodeName}) and restart with it (--join-token-file)` }, 'the CA no longer accepts this node\'s certificate and refused the join token given: no certificate of this node can be renewed');
        const now = Date.now();
        for (const entry of this.#entries.values()) {
          if (entry.svid === undefined || entry.svid.notAfter.getTime() <= now) IdentityAgent.#rejectFailFast(entry, refused);
        }
        // Its renewals go on with their backoff, in case the CA takes the node back (an eviction undone from a backup).
        this.#renewSoon(node, this.#backoffMs(Math.max(1, node.failures)));
      },
    );
    return true;
  }

  /** Whether an identity waits, without a valid certificate, for a CA it could not reach. */
  static #waitsForCa(entry: Entry, now: number): boolean {
    return entry.unreachable && entry.failures > 0 && (entry.svid === undefined || entry.svid.notAfter.getTime() <= now);
  }

  #probeLater(): void {
    if (this.#stopped || this.#probeTimer !== undefined) return;
    this.#probeTimer = setTimeout(() => {
      this.#probeTimer = undefined;
      const now = Date.now();
      const entries = [...this.#entries.values()];
      // The outage is over for every identity (each asked the CA since): nothing to watch.
      if (!entries.some((entry) => entry.unreachable && entry.failures > 0)) return;
      // Their certificates still valid: looked at again later, the CA left alone.
      if (!entries.some((entry) => IdentityAgent.#waitsForCa(entry, now))) return void this.#probeLater();
      // Its failure needs no line of its own: each waiting identity's retries say why.
      this.refreshBundles().then(() => this.#wakeWaiting(), () => this.#probeLater());
    }, this.#options.caProbeMs ?? DEFAULT_CA_PROBE_MS);
    this.#probeTimer.unref();
  }

  /** The CA answered: identities waiting for it without a valid certificate are asked for now, not at their backoff's end. */
  #wakeWaiting(): void {
    if (this.#stopped) return;
    const now = Date.now();
    let woken = 0;
    for (const entry of this.#entries.values()) {
      if (!IdentityAgent.#waitsForCa(entry, now) || entry.inFlight !== undefined || entry.timer === undefined || entry.dueAtMs - now <= WAKE_SPREAD_MS) continue;
      this.#renewSoon(entry, this.#random() * WAKE_SPREAD_MS);
      woken++;
    }
    if (woken > 0) this.#logger.info({ identities: woken }, 'the CA answers again: identities without a valid certificate are asked for now');
  }

  /**
   * Verifies one of our own SVIDs (the CA's answer, or the node SVID stored from one) as of its chain's start when that
   * is a little ahead of this host's clock: the CA backdates only 10 s, and a host further behind refused every
   * certificate for ever (its first attestation lost the join token). Peers judge validity by their own clocks; the
   * skew is logged once. Beyond MAX_AHEAD_MS the chain is judged as of now and refused: a CA whose clock jumped hours
   * ahead must not have every node swap its valid certificate for one its peers refuse.
   */
  #verifyOwn(svid: Svid): VerifyResult {
    const now = Date.now();
    let start = now;
    for (const cert of svid.chain) start = Math.max(start, cert.notBefore.getTime());
    if (start - now > MAX_AHEAD_MS) start = now;
    const check = verifySvid(svid.chain, this.#bundles, { at: new Date(start) });
    if (check.valid && start > now && !this.#skewWarned) {
      this.#skewWarned = true;
      this.#logger.warn({ spiffeId: svid.id.id, notBefore: new Date(start).toISOString(), behindSeconds: Math.round((start - now + NOT_BEFORE_CUSHION_MS) / 1000) }, "this host's clock is behind the CA's: the certificate the CA issued starts later than this host's now; it is used, and renewals are timed from its receipt, but peers whose clocks agree with this host's refuse it until then; fix its time (NTP)");
    }
    return check;
  }

  /** Why the stored node SVID was not used ('none stored' when there is none), for the error of a start without a token. */
  #storedNodeSvidProblem = 'none stored';

  async #loadStoredNodeSvid(): Promise<Svid | undefined> {
    const dir = this.#options.stateDir;
    if (!dir) return undefined;
    const file = join(dir, NODE_SVID_FILE);
    let pem: string;
    try {
      pem = await readFile(file, 'utf8');
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') {
        this.#storedNodeSvidProblem = `${file} cannot be read (${code ?? (error as Error).message})`;
        this.#logger.warn({ file, err: code ?? (error as Error).message }, 'stored node SVID cannot be read; attesting again');
      }
      return undefined;
    }
    try {
      // One file holds the key block, then the chain; parseCertificates skips the key block.
      const keyBlock = /-----BEGIN PRIVATE KEY-----[\s\S]+?-----END PRIVATE KEY-----\n?/.exec(pem)?.[0] ?? '';
      const svid = loadSvid(pem, keyBlock);
      // Judged as the CA's answer was: a node SVID saved while this host's clock was behind must not be thrown away on
      // a restart within the skew (attesting again, with a spent token, locked the node out).
      const check = this.#verifyOwn(svid);
      if (svid.id.id !== this.#nodeId || !check.valid) {
        const reason = check.error?.code ?? 'IDENTITY_MISMATCH';
        this.#storedNodeSvidProblem = `${file} holds ${svid.id.id}, not usable (${reason})`;
        this.#logger.warn({ file, stored: svid.id.id, reason }, 'stored node SVID is not usable; attesting again');
        return undefined;
      }
      return svid;
    } catch (error) {
      // The code only: a parse error may quote the file, and the file holds the node's private key.
      const code = toAmbitError(error, 'SVID_PARSE').code;
      this.#storedNodeSvidProblem = `${file} is unreadable (${code})`;
      this.#logger.warn({ file, err: code }, 'stored node SVID is unreadable; attesting again');
      return undefined;
    }
  }

  /**
   * The bundle the CA last served for our trust domain, trusted together with the bootstrap bundle: it came over
   * the CA's authenticated connection, so it carries that trust across a restart (a root rotated since install).
   */
  async #loadStoredBundle(): Promise<void> {
    const dir = this.#options.stateDir;
    if (!dir) return;
    // Withdrawn roots first, whatever else is stored: a DaemonSet's mounted --bundle file keeps offering a root the CA
    // withdrew (a compromised one, perhaps), and it must never be trusted again, also when the other files are gone.
    for (const fingerprint of (await this.#readFingerprints(join(dir, WITHDRAWN_ROOTS_FILE))) ?? []) this.#withdrawnRoots.add(fingerprint);
    const bootstrap = this.#options.bootstrapBundle.roots.filter((root) => !this.#withdrawnRoots.has(fingerprintOf(root)));
    if (bootstrap.length < this.#options.bootstrapBundle.roots.length) {
      this.#logger.warn({ file: join(dir, WITHDRAWN_ROOTS_FILE), withdrawn: this.#options.bootstrapBundle.roots.length - bootstrap.length }, 'the bootstrap bundle holds roots the CA withdrew: not trusted (remove them from the --bundle file)');
      this.#bundles = new BundleSet([createBundle(this.#options.trustDomain, bootstrap)]);
    }
    const file = join(dir, OWN_BUNDLE_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.#logger.warn({ file, err: (error as NodeJS.ErrnoException).code ?? String(error) }, 'stored trust bundle cannot be read; using the bootstrap bundle');
      return;
    }
    // The bootstrap roots known when it was stored; none recorded (a state directory from before): all are new.
    const seen = new Set<string>((await this.#readFingerprints(join(dir, BOOTSTRAP_SEEN_FILE))) ?? []);
    try {
      const stored = decodeBundle(this.#options.trustDomain, text);
      this.#ownFromCa = stored;
      this.#ownStored = true;
      for (const root of bootstrap) if (!seen.has(fingerprintOf(root))) this.#newBootstrapRoots.add(fingerprintOf(root));
      // The stored bundle is what the CA served last: it drops the roots withdrawn since (a compromised one among
      // them), so it supersedes the bootstrap roots it was stored with, which a DaemonSet's mounted file keeps
      // offering. A bootstrap root it was not stored with (the operator's new root, a re-initialised CA) is newer
      // knowledge: added, unless withdrawn. Judged by content: a mounted file's time changes with every pod.
      const roots = [...stored.roots];
      for (const root of bootstrap) {
        if (!seen.has(fingerprintOf(root)) && !roots.some((known) => known.equal(root))) roots.push(root);
      }
      this.#bundles = new BundleSet([createBundle(this.#options.trustDomain, roots)]);
    } catch (error) {
      // Parse errors quote the text: not the stored file's (a symlink could put a secret there), only the file and why.
      this.#logger.warn({ err: toAmbitError(error, 'BUNDLE_INVALID').code, file }, 'stored trust bundle is unreadable; using the bootstrap bundle');
    }
  }

  /**
   * The other trust domains' bundles the CA served last, trusted until it answers again: they came over its
   * authenticated connection, as our own did, and a restart must not change whom the node trusts.
   */
  async #loadStoredFederatedBundles(): Promise<void> {
    const dir = this.#options.stateDir;
    if (!dir) return;
    const file = join(dir, FEDERATED_BUNDLES_FILE);
    let stored: BundleSet;
    try {
      stored = BundleSet.fromMapJson(await readFile(file, 'utf8'));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Parse errors quote the text: not the stored file's (a symlink could put a secret there), only the file and why.
      if (code !== 'ENOENT') this.#logger.warn({ file, err: code ?? String(error) }, 'stored federated trust bundles cannot be read: no other trust domain is trusted until the CA answers');
      return;
    }
    // Our own trust domain's bundle is bundle.json's alone (with its rollback and withdrawal rules), never this file's.
    const others = [...stored].filter((bundle) => bundle.trustDomain !== this.#options.trustDomain && bundle.roots.length > 0);
    this.#federatedStored = new BundleSet(others);
    if (others.length === 0) return;
    this.#bundles = new BundleSet([...this.#bundles, ...others]);
    this.#logger.info({ file, trustDomains: others.map((bundle) => bundle.trustDomain) }, 'federated trust bundles loaded from the state directory, until the CA serves them');
  }

  /** Stores the other trust domains' bundles of `served` when they differ from what is stored. */
  #persistFederatedBundles(served: BundleSet): void {
    const dir = this.#options.stateDir;
    if (!dir) return;
    const others = new BundleSet([...served].filter((bundle) => bundle.trustDomain !== this.#options.trustDomain));
    const stored = this.#federatedStored;
    if (others.trustDomains().join() === stored.trustDomains().join() && [...others].every((bundle) => bundlesEqual(bundle, stored.get(bundle.trustDomain) as TrustBundle))) return;
    this.#federatedStored = others;
    this.#persisting = this.#persisting.then(async () => {
      try {
        await makeDirs(dir, 0o700);
        await writeFileAtomic(join(dir, FEDERATED_BUNDLES_FILE), others.toMapJson(), 0o644);
      } catch (error) {
        this.#logger.error({ err: toAmbitError(error, 'FILE_WRITE').toJSON(), dir }, 'cannot store the federated trust bundles: a restart while the CA is out of reach would trust no other trust domain');
      }
    });
  }

  /** A JSON list of fingerprints the agent stored; null when absent, and when unreadable too, saying so. */
  async #readFingerprints(file: string): Promise<string[] | null> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.#logger.warn({ file, err: (error as NodeJS.ErrnoException).code ?? String(error) }, 'a state file cannot be read: ignored');
      return null;
    }
    try {
      const list: unknown = JSON.parse(text);
      if (!Array.isArray(list) || !list.every((item) => typeof item === 'string')) throw new Error('not a list of strings');
      return list as string[];
    } catch {
      this.#logger.warn({ file }, 'a state file is not the list of root fingerprints the agent writes: ignored');
      return null;
    }
  }

  #persistOwnBundle(own: TrustBundle): void {
    const dir = this.#options.stateDir;
    if (!dir) return;
    this.#persisting = this.#persisting.then(async () => {
      try {
        await makeDirs(dir, 0o700);
        // The bundle first: a crash between the two then leaves the bootstrap roots unrecorded, so the next start adds
        // them again (the operator's choice), rather than recorded as seen beside a bundle that never got them.
        // The withdrawals first: a crash before the bundle then leaves one too many, never a withdrawal forgotten.
        await writeFileAtomic(join(dir, WITHDRAWN_ROOTS_FILE), `${JSON.stringify([...this.#withdrawnRoots])}\n`, 0o644);
        await writeFileAtomic(join(dir, OWN_BUNDLE_FILE), encodeBundle(own), 0o644);
        await writeFileAtomic(join(dir, BOOTSTRAP_SEEN_FILE), `${JSON.stringify(this.#options.bootstrapBundle.roots.map(fingerprintOf))}\n`, 0o644);
        this.#ownStored = true;
      } catch (error) {
        this.#logger.error({ err: toAmbitError(error, 'FILE_WRITE').toJSON(), dir }, 'cannot store the trust bundle');
      }
    });
  }

  /**
   * Key and chain in one file with one rename: a crash can never leave a key that does not match its certificate.
   * Resolves true once stored (or when there is no state directory), false when the write failed.
   */
  #persistNodeSvid(svid: Svid): Promise<boolean> {
    const dir = this.#options.stateDir;
    if (!dir) return Promise.resolve(true);
    const stored = this.#persisting.then(async () => {
      try {
        await makeDirs(dir, 0o700);
        await writeFileAtomic(join(dir, NODE_SVID_FILE), svid.privateKeyPem + svid.certPem, 0o600);
        return true;
      } catch (error) {
        this.#logger.error({ err: toAmbitError(error, 'FILE_WRITE').toJSON(), dir }, 'cannot store node SVID: the CA keeps being asked with the previous one');
        return false;
      }
    });
    this.#persisting = stored.then(() => undefined);
    return stored;
  }
}
