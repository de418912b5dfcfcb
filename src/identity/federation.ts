// SPIFFE federation client: fetches another trust domain's bundle from its bundle endpoint and keeps
// it fresh per its refresh hint (SPIFFE Federation §4–§6).
//
// The three parameters are configured, never inferred (§5.1): the trust domain, the endpoint URL and
// the profile. With https_spiffe the endpoint must present the configured SPIFFE ID; a self-serving
// endpoint is checked first against the operator's bootstrap bundle and then against the latest bundle
// fetched from it, so the foreign domain can rotate its roots without breaking the relationship.
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Agent, request } from '../undici.ts';
import { AmbitError, toAmbitError } from '../errors.ts';
import { parseSpiffeId, validateTrustDomain } from './spiffe-id.ts';
import { BundleSet, bundlesEqual, decodeBundle, encodeBundle } from './bundle.ts';
import { writeFileAtomic } from './files.ts';
import { fingerprintOf } from './svid.ts';
import * as x509 from './x509.ts';
import type { TrustBundle } from './bundle.ts';
import { spiffeConnector } from './spiffe-tls.ts';
import { formatSpan, timerDelayMs } from './timers.ts';
import type { Logger } from '../observe/log.ts';

/** Federation §6.1: poll every 5 minutes when the bundle gives no hint. */
export const DEFAULT_FEDERATION_REFRESH_MS = 300_000;
const MAX_FEDERATION_REFRESH_MS = 24 * 3_600_000;
/**
 * An endpoint unanswered this long has its failures logged as errors: a relationship is re-checked at least daily
 * (MAX_FEDERATION_REFRESH_MS), so past a day the peer may have rotated its roots without us.
 */
const STALE_AFTER_MS = MAX_FEDERATION_REFRESH_MS;
/** Bundles are small; anything larger is not a bundle. */
const MAX_BUNDLE_BYTES = 1 << 20;
/**
 * Roots a federated bundle may hold. A trust domain has a handful (one, two across a rotation); each takes ~2 ms to
 * check, and a peer serving 1,899 of them in its megabyte stalled our CA for 3.5-5 s on every fetch and every node's
 * proxy for 2-3 s on every issuance (each re-reads the whole bundle map).
 */
export const MAX_FEDERATED_ROOTS = 32;
/**
 * A peer's refresh hint below this is not followed: an endpoint answering `spiffe_refresh_hint: 0` (careless or hostile)
 * would have the CA poll it every second, and write its state file as often.
 */
const DEFAULT_MIN_REFRESH_MS = 15_000;
/** A whole fetch (connect, answer and body) must be done within this. */
const FETCH_DEADLINE_MS = 30_000;
/** Redirects a fetch follows (the federation spec: SHOULD follow, MUST NOT remember), and how many in a row. */
const REDIRECTS: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 3;

export interface FederationPeer {
  trustDomain: string;
  bundleEndpoint: string;
  profile: 'https_spiffe' | 'https_web';
  /** https_spiffe: the ID the endpoint presents. */
  endpointSpiffeId?: string;
  /** https_spiffe: the operator-supplied bundle for the endpoint's first fetch. */
  bootstrapBundle?: TrustBundle;
}

export interface FederationClientOptions {
  peer: FederationPeer;
  logger: Logger;
  /** Floor for polling, so a hostile tiny hint cannot turn us into a load generator. */
  minRefreshMs?: number;
  /** When a fetch fails, retry after this long (the next interval, not aggressively). */
  retryMs?: number;
  /**
   * How long the endpoint may go unanswered before its failures are logged as errors (STALE_AFTER_MS unless a test sets
   * a shorter one).
   */
  staleAfterMs?: number;
  /** Bundles of other trust domains, for a non-self-serving https_spiffe endpoint. */
  otherBundles?: () => BundleSet;
  /**
   * Where the last bundle taken and the roots withdrawn since are kept (0600), read back at construction: a restarted
   * CA serves the federated bundle at once instead of dropping the trust domain until its endpoint answers, still
   * refuses a withdrawn root a stale replica serves, and authenticates a self-serving endpoint that rotated its roots
   * since the operator's bootstrap bundle.
   */
  stateFile?: string;
  /** MAX_WITHDRAWN_ROOTS unless a test sets a smaller bound. */
  maxWithdrawnRoots?: number;
}

/** What stateFile holds. */
interface StoredFederation {
  readonly trustDomain: string;
  /** The peer's settings it was fetched under (peerSettings): other settings start afresh, from the bootstrap bundle. */
  readonly settings: string;
  readonly bundleEndpoint: string;
  /** The SPIFFE bundle as fetched (encodeBundle). */
  readonly bundle: string;
  /** Withdrawn roots not expired yet: SHA-256 fingerprint and notAfter (ms). */
  readonly withdrawnRoots?: readonly { readonly fingerprint: string; readonly notAfterMs: number }[];
  /** The same as each root's DER in hex, as files written before 2026-12-07 hold them: read, never written. */
  readonly withdrawn?: readonly string[];
}

/**
 * Withdrawn roots kept: far more than a peer rotates in the life of its roots. A peer serving new throwaway roots on
 * every poll grew the list by 31 KB a fetch (178 MB a day at the 15 s floor, all of it rewritten each time); past this
 * many unexpired ones its bundles are refused.
 */
export const MAX_WITHDRAWN_ROOTS = 1_024;

export interface FederationClientEvents {
  update: [TrustBundle];
  error: [AmbitError];
}

/** A peer's settings as one string: the endpoint, profile, endpoint ID and the bootstrap bundle's roots. */
function peerSettings(peer: FederationPeer): string {
  return JSON.stringify([peer.bundleEndpoint, peer.profile, peer.endpointSpiffeId ?? '', (peer.bootstrapBundle?.roots ?? []).map((root) => fingerprintOf(root))]);
}

/** Keeps one foreign trust domain's bundle; emits 'update' when it changes. */

/** The withdrawn roots of a state file, in either form; null when malformed. */
function storedWithdrawn(stored: Partial<StoredFederation>): { fingerprint: string; notAfterMs: number }[] | null {
  if (Array.isArray(stored.withdrawnRoots)) {
    const valid = stored.withdrawnRoots.every((entry: unknown) => typeof entry === 'object' && entry !== null
      && typeof (entry as { fingerprint?: unknown }).fingerprint === 'string' && Number.isFinite((entry as { notAfterMs?: unknown }).notAfterMs));
    return valid ? stored.withdrawnRoots.map(({ fingerprint, notAfterMs }) => ({ fingerprint, notAfterMs })) : null;
  }
  if (!Array.isArray(stored.withdrawn)) return null;
  const roots: { fingerprint: string; notAfterMs: number }[] = [];
  for (const key of stored.withdrawn as unknown[]) {
    if (typeof key !== 'string' || !/^(?:[0-9a-f]{2})+$/.test(key)) return null;
    try {
      const root = new x509.X509Certificate(Buffer.from(key, 'hex'));
      roots.push({ fingerprint: fingerprintOf(root), notAfterMs: root.notAfter.getTime() });
    } catch {
      return null;
    }
  }
  return roots;
}

export class FederationClient extends EventEmitter<FederationClientEvents> {
  readonly peer: FederationPeer;
  #bundle: TrustBundle | undefined;
  /**
   * Roots a newer bundle dropped (withdrawn): an older sequence that brings one back is a stale one, never taken. By
   * fingerprint, with each root's notAfter: an expired root vouches for nothing, and is forgotten.
   */
  readonly #withdrawn = new Map<string, number>();
  readonly #maxWithdrawn: number;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #failures = 0;
  /** When the endpoint last served a valid bundle (or, before it has, when this client started). */
  #confirmedMs = Date.now();
  readonly #staleAfterMs: number;
  /** The last body fetched and what it decoded to: an unchanged bundle is not checked again at every refresh. */
  #lastFetched: { text: string; bundle: TrustBundle } | undefined;
  #dispatcher: Agent;
  readonly #logger: Logger;
  readonly #minRefreshMs: number;
  readonly #retryMs: number;
  readonly #stateFile: string | undefined;
  #saving: Promise<void> = Promise.resolve();

  constructor(options: FederationClientOptions) {
    super();
    const peer = options.peer;
    validateTrustDomain(peer.trustDomain);
    const url = new URL(peer.bundleEndpoint);
    if (url.protocol !== 'https:' || url.username || url.password) {
      throw new AmbitError('FEDERATION_FETCH', `${peer.trustDomain}: bundle endpoint must be an https URL without userinfo, got ${peer.bundleEndpoint}`);
    }
    this.peer = peer;
    this.#logger = options.logger.child({ component: 'federation', trustDomain: peer.trustDomain });
    this.#minRefreshMs = options.minRefreshMs ?? DEFAULT_MIN_REFRESH_MS;
    this.#retryMs = options.retryMs ?? 60_000;
    this.#staleAfterMs = options.staleAfterMs ?? STALE_AFTER_MS;
    this.#stateFile = options.stateFile;
    this.#maxWithdrawn = options.maxWithdrawnRoots ?? MAX_WITHDRAWN_ROOTS;
    this.#load();
    if (peer.profile === 'https_spiffe') {
      if (!peer.endpointSpiffeId) throw new AmbitError('FEDERATION_FETCH', `${peer.trustDomain}: https_spiffe needs the endpoint's SPIFFE ID`);
      const endpointId = parseSpiffeId(peer.endpointSpiffeId);
      const selfServing = endpointId.trustDomain === peer.trustDomain;
      if (selfServing && !peer.bootstrapBundle) {
        throw new AmbitError('FEDERATION_FETCH', `${peer.trustDomain}: a self-serving https_spiffe endpoint needs a bootstrap bundle for its first fetch`);
      }
      this.#dispatcher = new Agent({
        maxResponseSize: MAX_BUNDLE_BYTES,
        connect: spiffeConnector({
          clientSvid: () => undefined,
          bundles: () => {
            if (!selfServing) return options.otherBundles?.() ?? new BundleSet();
            const current = this.#bundle ?? peer.bootstrapBundle;
            return new BundleSet(current ? [current] : []);
          },
          expectedServer: endpointId.id,
        }),
      });
    } else {
      // Limits the body whatever the server claims (a chunked response has no Content-Length).
      this.#dispatcher = new Agent({ maxResponseSize: MAX_BUNDLE_BYTES });
    }
  }

  current(): TrustBundle | undefined {
    return this.#bundle;
  }

  /** Takes back what stateFile holds for this trust domain and endpoint; anything else there is ignored, and said. */
  #load(): void {
    const file = this.#stateFile;
    if (file === undefined) return;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      return; // never fetched, or removed with the peer
    }
    try {
      const stored = JSON.parse(text) as Partial<StoredFederation>;
      if (stored.trustDomain !== this.peer.trustDomain || stored.settings !== peerSettings(this.peer)) {
        this.#logger.warn({ file, storedEndpoint: stored.bundleEndpoint }, 'stored federated bundle was fetched under other settings (endpoint, profile, endpoint ID or bootstrap bundle); fetching afresh');
        return;
      }
      const withdrawn = storedWithdrawn(stored);
      if (typeof stored.bundle !== 'string' || withdrawn === null) throw new AmbitError('BUNDLE_INVALID', 'missing or malformed fields');
      this.#bundle = decodeBundle(this.peer.trustDomain, stored.bundle);
      for (const { fingerprint, notAfterMs } of withdrawn) this.#withdrawn.set(fingerprint, notAfterMs);
      this.#forgetExpired();
      this.#logger.info({ sequence: this.#bundle.sequence.toString(), roots: this.#bundle.roots.length, withdrawn: this.#withdrawn.size }, 'federated bundle taken back from the state directory');
    } catch (error) {
      this.#logger.warn({ file, err: toAmbitError(error, 'BUNDLE_INVALID').toJSON() }, 'stored federated bundle is unreadable; fetching afresh');
    }
  }

  #forgetExpired(): void {
    const now = Date.now();
    for (const [fingerprint, notAfterMs] of this.#withdrawn) if (notAfterMs < now) this.#withdrawn.delete(fingerprint);
  }

  #save(): void {
    const file = this.#stateFile;
    const bundle = this.#bundle;
    // Stopped: a fetch that lands after stop() or forget() must not write (forget() removed the file for good).
    if (file === undefined || bundle === undefined || this.#stopped) return;
    const withdrawnRoots = [...this.#withdrawn].map(([fingerprint, notAfterMs]) => ({ fingerprint, notAfterMs }));
    const stored: StoredFederation = { trustDomain: this.peer.trustDomain, settings: peerSettings(this.peer), bundleEndpoint: this.peer.bundleEndpoint, bundle: encodeBundle(bundle), withdrawnRoots };
    this.#saving = this.#saving
      .then(() => writeFileAtomic(file, `${JSON.stringify(stored)}\n`, 0o600))
      .catch((error: unknown) => this.#logger.warn({ file, err: toAmbitError(error, 'FILE_WRITE').toJSON() }, 'cannot keep the federated bundle; a restart will wait for the endpoint'));
  }

  /** The peer is no longer federated: what was kept of it goes too, so adding it again starts from its bootstrap. */
  async forget(): Promise<void> {
    await this.stop(); // waits for a save under way
    if (this.#stateFile !== undefined) await rm(this.#stateFile, { force: true });
  }

  /** Fetches now, then keeps refreshing until stop(). Resolves after the first attempt. */
  async start(): Promise<void> {
    await this.#tick();
  }

  async stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      clearTimeout(this.#timer);
      // destroy, not close: close waits for a fetch under way, and a configuration reload would wait with it.
      await this.#dispatcher.destroy();
    }
    await this.#saving;
  }

  /** One fetch; resolves to the bundle or throws FEDERATION_FETCH. */
  async fetchOnce(): Promise<TrustBundle> {
    const endpoint = this.peer.bundleEndpoint;
    let text: string;
    try {
      // A deadline for the whole fetch: bodyTimeout restarts with every chunk, and an endpoint trickling a byte every few
      // seconds would hold it (and every refresh after it) for months.
      const deadline = AbortSignal.timeout(FETCH_DEADLINE_MS);
      const get = (url: string) => request(url, { dispatcher: this.#dispatcher, method: 'GET', headersTimeout: 10_000, bodyTimeout: 10_000, signal: deadline });
      let url = endpoint;
      let response = await get(url);
      // The federation spec's redirects, followed and not remembered: each hop to an https URL, dialled through the same
      // dispatcher (the same TLS checks and, under https_spiffe, the same endpoint SPIFFE ID), three at most.
      for (let hops = 0; REDIRECTS.has(response.statusCode); hops++) {
        await response.body.dump();
        const location = response.headers.location;
        const next = typeof location === 'string' && URL.canParse(location, url) ? new URL(location, url) : null;
        if (next === null) throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${url} answered ${response.statusCode} without a Location to follow`);
        if (next.protocol !== 'https:' || next.username !== '' || next.password !== '') throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${url} redirects to ${next.href}, which is not an https URL without userinfo`);
        if (hops === MAX_REDIRECTS) throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${endpoint} redirected more than ${MAX_REDIRECTS} times`);
        url = next.href;
        response = await get(url);
      }
      // go-spiffe parses whatever comes back; a 404 page is not a bundle, so demand 200.
      if (response.statusCode !== 200) {
        await response.body.dump();
        throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${endpoint} answered ${response.statusCode}`);
      }
      const length = Number(response.headers['content-length'] ?? 0);
      if (length > MAX_BUNDLE_BYTES) {
        await response.body.dump();
        throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: bundle of ${length} bytes exceeds ${MAX_BUNDLE_BYTES}`);
      }
      text = await response.body.text();
    } catch (error) {
      // Ours above already say which endpoint; the HTTP client's own (too large, too slow, refused) are told with it.
      if (error instanceof AmbitError && error.code === 'FEDERATION_FETCH') throw error;
      throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${endpoint}: ${fetchFailure(error)}`, { cause: error });
    }
    if (this.#lastFetched?.text === text) return this.#lastFetched.bundle;
    try {
      const keys = (JSON.parse(text) as { keys?: unknown } | null)?.keys;
      if (Array.isArray(keys) && keys.length > MAX_FEDERATED_ROOTS) {
        throw new AmbitError('BUNDLE_INVALID', `it holds ${keys.length} keys; a trust domain's bundle is taken with at most ${MAX_FEDERATED_ROOTS}`);
      }
      const bundle = decodeBundle(this.peer.trustDomain, text);
      this.#lastFetched = { text, bundle };
      return bundle;
    } catch (error) {
      const wrapped = toAmbitError(error, 'BUNDLE_INVALID');
      throw new AmbitError('FEDERATION_FETCH', `${this.peer.trustDomain}: ${endpoint} served an invalid bundle: ${wrapped.message}`, { cause: wrapped });
    }
  }

  async #tick(): Promise<void> {
    if (this.#stopped) return;
    let nextMs: number;
    try {
      const fetched = await this.fetchOnce();
      if (this.#stopped) return;
      const previous = this.#bundle;
      // A bundle bringing back a root a later one withdrew is a stale response (a lagging replica, a cache), whatever its
      // sequence: a re-initialisation restarts the count, so a stale one can carry the higher number. An older sequence
      // sharing a root with ours is stale too (a rotation half-seen). An older one with only other roots is what the
      // authenticated endpoint serves now, as when the peer re-initialised its CA after a compromise (sequence back to
      // 1): holding on would keep trusting the compromised roots (SPIRE, too, follows the endpoint's content). Said loudly.
      this.#forgetExpired();
      const older = previous !== undefined && fetched.sequence < previous.sequence;
      const bringsBack = fetched.roots.some((root) => this.#withdrawn.has(fingerprintOf(root)));
      const sharesRoot = previous !== undefined && fetched.roots.some((root) => previous.roots.some((kept) => kept.equal(root)));
      const dropped = previous === undefined ? [] : previous.roots.filter((root) => !fetched.roots.some((kept) => kept.equal(root)));
      if (fetched.roots.length === 0) {
        // Trusting nothing of the peer's would also leave nothing to authenticate a self-serving endpoint by: one such
        // answer would end the relationship until an operator removed the state file.
        this.#logger.error({ sequence: fetched.sequence.toString(), current: previous?.sequence.toString() ?? null }, 'federated bundle endpoint served a bundle with no X.509 root; keeping ours');
      } else if (bringsBack || (older && sharesRoot)) {
        this.#logger.warn({ sequence: fetched.sequence.toString(), current: previous?.sequence.toString() ?? null, withdrawnRoot: bringsBack }, bringsBack
          ? 'federated bundle endpoint served a root withdrawn since; keeping ours (remove the federation state file to start this relationship afresh)'
          : 'federated bundle endpoint served an older sequence with roots we hold; keeping ours');
      } else if (this.#withdrawn.size + dropped.length > this.#maxWithdrawn) {
        this.#logger.error({ sequence: fetched.sequence.toString(), withdrawn: this.#withdrawn.size, dropping: dropped.length }, `federated bundle endpoint withdrew more than ${this.#maxWithdrawn} roots not yet expired (a peer rotating its roots on every poll): keeping ours`);
      } else {
        for (const root of dropped) this.#withdrawn.set(fingerprintOf(root), root.notAfter.getTime());
        if (previous && fetched.sequence < previous.sequence) {
          this.#logger.warn({ sequence: fetched.sequence.toString(), current: previous.sequence.toString(), roots: fetched.roots.length }, 'federated bundle sequence went back with other roots (the peer CA re-initialised?): taking the roots its endpoint serves now');
        }
        this.#bundle = fetched;
        if (!previous || !bundlesEqual(previous, fetched) || previous.sequence !== fetched.sequence) {
          this.#save();
          this.#logger.info({ sequence: fetched.sequence.toString(), roots: fetched.roots.length, endpoint: this.peer.bundleEndpoint }, 'federated bundle updated');
          this.emit('update', fetched);
        }
      }
      this.#failures = 0;
      this.#confirmedMs = Date.now();
      // The hint of the bundle in force: a stale one refused above (its hint a day, say) must not hold off the next look.
      const hintMs = ((this.#bundle ?? fetched).refreshHintSeconds ?? DEFAULT_FEDERATION_REFRESH_MS / 1000) * 1000;
      // A peer's hint is capped at a day (SPIRE warns at 24 h): a relationship is re-checked at least daily.
      nextMs = Math.max(this.#minRefreshMs, Math.min(hintMs, MAX_FEDERATION_REFRESH_MS));
    } catch (error) {
      // Stopped meanwhile: the fetch was cut off on purpose.
      if (this.#stopped) return;
      const wrapped = toAmbitError(error, 'FEDERATION_FETCH');
      // How long the bundle in force has gone unconfirmed is what an operator needs to judge an outage by: roots the peer
      // rotated in meanwhile are not trusted, and its workloads' certificates under them are refused.
      const unconfirmedMs = Date.now() - this.#confirmedMs;
      const fields = { err: wrapped.toJSON(), unconfirmedForS: Math.round(unconfirmedMs / 1000) };
      if (unconfirmedMs >= this.#staleAfterMs) {
        this.#logger.error(fields, `federated bundle endpoint has not answered for ${formatSpan(unconfirmedMs)}: roots the peer has rotated in since are not trusted (its workloads' certificates under them are refused); keeping the last good bundle`);
      } else {
        this.#logger.warn(fields, 'federated bundle fetch failed; keeping the last good bundle');
      }
      if (this.listenerCount('error') > 0) this.emit('error', wrapped);
      // Retry with a doubling delay from 1 s (peers often start together, and a refused first fetch should not cost
      // the whole floor), up to the hint or retryMs, but never held under the floor: an endpoint that once hinted 0
      // and then fails would otherwise be polled every second for good.
      this.#failures++;
      const ceilingMs = Math.max(this.#minRefreshMs, Math.min(this.#retryMs, (this.#bundle?.refreshHintSeconds ?? this.#retryMs / 1000) * 1000));
      nextMs = Math.max(Math.min(this.#minRefreshMs, 1000), Math.min(ceilingMs, 1000 * 2 ** (this.#failures - 1)));
    }
    if (!this.#stopped) {
      this.#timer = setTimeout(() => void this.#tick(), timerDelayMs(nextMs));
      this.#timer.unref();
    }
  }
}

/** What went wrong with a bundle fetch, in words: the limit it broke, or the HTTP client's own error with its code. */
function fetchFailure(error: unknown): string {
  if ((error as { code?: unknown } | null)?.code === 'UND_ERR_RES_EXCEEDED_MAX_SIZE') return `its answer exceeds ${MAX_BUNDLE_BYTES} bytes`;
  if ((error as Error | null)?.name === 'TimeoutError') return `no complete answer within ${FETCH_DEADLINE_MS / 1000} s`;
  const wrapped = toAmbitError(error, 'FEDERATION_FETCH');
  return wrapped.code === 'FEDERATION_FETCH' ? wrapped.message : `[${wrapped.code}] ${wrapped.message}`;
}
