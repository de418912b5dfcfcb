// TLS for HBONE: secure contexts per workload identity, built once per certificate rotation and reused by
// every dial and accept, and peer verification against the bundle of the peer's own trust domain.
import * as tls from 'node:tls';
import type { Svid, BundleSource } from '../identity/svid.ts';
import { MAX_CHAIN_DEPTH } from '../identity/svid.ts';
import { chainOf, matchExpected, verifyPeerCertificate } from '../identity/spiffe-tls.ts';
import type { ExpectedPeer } from '../identity/spiffe-tls.ts';
import type { VerifyResult } from '../identity/svid.ts';
import { TLS_CIPHERS, TLS_GROUPS, TLS_MIN_VERSION } from './settings.ts';

/**
 * One certificate of an identity this proxy serves. Its client context is built on the first dial from the identity, not
 * when the certificate arrives: an OpenSSL context holds ~45 KiB, and a workload that only accepts needs none (its HBONE
 * server builds its own from `options`); 100 idle local workloads held 4–5 MiB of contexts no dial used.
 */
export class IdentityContext {
  readonly svid: Svid;
  /** The same material as plain options, for servers that take options (setSecureContext). */
  readonly options: tls.SecureContextOptions;
  #context: tls.SecureContext | undefined;

  constructor(svid: Svid) {
    this.svid = svid;
    this.options = contextOptions(svid);
  }

  get context(): tls.SecureContext {
    return (this.#context ??= tls.createSecureContext(this.options));
  }
}

export function contextOptions(svid: Svid): tls.SecureContextOptions {
  return {
    cert: svid.certPem,
    key: svid.privateKeyPem,
    minVersion: TLS_MIN_VERSION,
    ciphers: TLS_CIPHERS,
    ecdhCurve: TLS_GROUPS,
  };
}

/** The current certificate of every identity this proxy serves; replaced whole on rotation. */
export class IdentityContexts {
  readonly #byIdentity = new Map<string, IdentityContext>();
  /** Who waits for an identity's first certificate (whenSet). */
  readonly #waiting = new Map<string, Set<(entry: IdentityContext | undefined) => void>>();

  set(svid: Svid): IdentityContext {
    const entry = new IdentityContext(svid);
    this.#byIdentity.set(svid.id.id, entry);
    const waiters = this.#waiting.get(svid.id.id);
    if (waiters !== undefined) {
      this.#waiting.delete(svid.id.id);
      for (const resolve of [...waiters]) resolve(entry);
    }
    return entry;
  }

  /**
   * The identity's context once it is set, or undefined after timeoutMs: a connection made while the identity's first
   * certificate is on its way (the proxy just started, the workload just placed) waits for it, as ztunnel's do.
   */
  whenSet(identity: string, timeoutMs: number): Promise<IdentityContext | undefined> {
    const present = this.#byIdentity.get(identity);
    if (present !== undefined || timeoutMs <= 0) return Promise.resolve(present);
    let waiters = this.#waiting.get(identity);
    if (waiters === undefined) this.#waiting.set(identity, (waiters = new Set()));
    const all = waiters;
    return new Promise((resolve) => {
      const done = (entry: IdentityContext | undefined): void => {
        clearTimeout(timer);
        all.delete(done);
        if (all.size === 0 && this.#waiting.get(identity) === all) this.#waiting.delete(identity);
        resolve(entry);
      };
      const timer = setTimeout(done, timeoutMs, undefined);
      // A proxy stopping does not wait for a certificate nobody will use.
      timer.unref();
      all.add(done);
    });
  }

  get(identity: string): IdentityContext | undefined {
    return this.#byIdentity.get(identity);
  }

  delete(identity: string): void {
    this.#byIdentity.delete(identity);
  }
}

interface CachedVerdict {
  readonly result: VerifyResult;
  readonly bundles: BundleSource;
  readonly validUntilMs: number;
}

/**
 * The fingerprints of the chain as presented, leaf first: a verdict holds for the certificates it judged. Keyed by the
 * leaf alone, a leaf presented once with an expired intermediate (an overlap of two) was refused for a minute with its
 * valid one. Links only, nothing parsed; chainOf bounds the length when it is judged.
 */
function chainKey(leaf: tls.DetailedPeerCertificate): string {
  let key = leaf.fingerprint256;
  let current = leaf.issuerCertificate as tls.DetailedPeerCertificate | undefined;
  for (let depth = 0; depth <= MAX_CHAIN_DEPTH && current?.raw && !key.includes(current.fingerprint256); depth++) {
    key += `/${current.fingerprint256}`;
    current = current.issuerCertificate;
  }
  return key;
}

/**
 * Verifies peers with a small cache keyed by the chain's DER fingerprints: pooled sessions make full
 * handshakes rare, but a churn of new sessions from the same peer should not re-parse its chain each
 * time. A verdict is reused only with the same bundle set and only until the leaf expires.
 */
export class PeerVerifier {
  readonly #cache = new Map<string, CachedVerdict>();
  readonly #maxEntries: number;
  readonly #options: { localTrustDomain?: string };

  /** localTrustDomain: the proxy's own trust domain (VerifyOptions, for roots it shares with another domain). */
  constructor(options: { maxEntries?: number; localTrustDomain?: string } = {}) {
    this.#maxEntries = options.maxEntries ?? 4096;
    this.#options = options.localTrustDomain === undefined ? {} : { localTrustDomain: options.localTrustDomain };
  }

  verify(socket: tls.TLSSocket, bundles: BundleSource, expected: ExpectedPeer): VerifyResult {
    // One read of the peer certificate (see peerChain in spiffe-tls.ts for why never getPeerX509Certificate).
    const leaf = socket.getPeerCertificate(true);
    if (!leaf || !leaf.raw) return verifyPeerCertificate(null, bundles, expected);
    const key = chainKey(leaf);
    const now = Date.now();
    const cached = this.#cache.get(key);
    let result: VerifyResult;
    if (cached && cached.bundles === bundles && now < cached.validUntilMs) {
      result = cached.result;
    } else {
      result = verifyPeerCertificate(leaf, bundles, null, this.#options);
      if (this.#cache.size >= this.#maxEntries) this.#cache.clear();
      // A refusal that time will undo (a peer whose CA clock runs ahead) is kept a second, not a minute past the moment.
      const keepMs = !result.valid && result.error.code === 'SVID_NOT_YET_VALID' ? 1_000 : 60_000;
      this.#cache.set(key, { result, bundles, validUntilMs: Math.min(result.valid ? result.notAfterMs : Infinity, now + keepMs) });
    }
    if (!result.valid || expected === null) return result;
    return matchExpected(result, expected);
  }

  /**
   * Whether trust bundles vouch for an established peer's chain, judged as of a moment its certificates were valid
   * (the last of the leaf's life, or now): a session whose peer certificate merely expired since it was verified is
   * not what a change of bundles must end (its open tunnels may finish), only one they no longer trust. Not cached.
   */
  stillVouched(socket: tls.TLSSocket, bundles: BundleSource, expected: ExpectedPeer): VerifyResult {
    const leaf = socket.getPeerCertificate(true);
    if (!leaf || !leaf.raw) return verifyPeerCertificate(null, bundles, expected);
    // The earliest expiry of the presented chain: an intermediate may end before the leaf under a CA that does not cap.
    let expiryMs = Infinity;
    try {
      for (const cert of chainOf(leaf)) expiryMs = Math.min(expiryMs, cert.notAfter.getTime());
    } catch {
      // An unreadable chain: verifyPeerCertificate says so.
    }
    return verifyPeerCertificate(leaf, bundles, expected, { ...this.#options, at: new Date(Math.min(Date.now(), expiryMs - 1_000)) });
  }
}
