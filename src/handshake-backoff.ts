// Holding off a client address whose TLS handshakes present certificate chains that cost us far more than a
// handshake, on the servers that take anyone's handshake (HBONE on 15008, the CA).
//
// Why: OpenSSL checks every signature of the chain a TLS client presents before Node hands us the socket (Node's verify
// callback lets it go on past each error so that the application decides, and the application is us), and it takes
// RSA keys whose public exponent is as long as their modulus (up to 3,072 bits): each such signature costs a private-key
// operation, and 60 of them fit OpenSSL's 100 KB certificate list. Measured: 0.3 s of the main thread per handshake,
// every tunnel of the node stalled meanwhile, before any check of ours (ztunnel's webpki and Envoy's BoringSSL refuse
// exponents over 33 bits; Node has no such bound, nor a verify depth or certificate-list size to set). So a handshake
// that presented such a chain (costlyChain: a key no mesh uses, or a chain longer than any mesh's) and did not end in an
// accepted peer (refused, failed, abandoned before its Finished, or without the ALPN the server speaks) counts against
// its address; after FREE_FAILURES of them, the address's next connections are closed on accept for a hold-off that
// doubles with each further one (BASE_MS up to MAX_MS), and forgotten after FORGET_MS without one. Sustained, one
// address then costs a costly check per MAX_MS. A peer refused for anything else (no certificate, an untrusted CA of
// ordinary keys: a trust domain not federated yet, a withdrawn root) is never held off: a node's workloads reach other
// nodes from its one address, and one misconfigured workload must not hold them all off.

import type { Server, Socket } from 'node:net';
import { X509Certificate } from 'node:crypto';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';
import { keyFacts } from './identity/crypto-policy.ts';
import { gateConnections } from './peer-connections.ts';

/** Costly chains from one address before it is held off (an operator trying one out, a test). */
const FREE_FAILURES = 2;
/** The first hold-off; each further refused chain doubles it. */
const BASE_MS = 1_000;
/** The longest hold-off: how long a fixed peer may still wait after its last refusal. */
const MAX_MS = 30_000;
/** Refusals this old are forgotten: the count starts again. */
const FORGET_MS = 5 * 60_000;
/** Addresses tracked at most (each ~100 bytes); past it, room is made only from one no longer held off. */
const MAX_TRACKED = 65_536;

/** Certificates a peer's chain may link before checking it costs more than a handshake: no mesh chain is this long. */
const COSTLY_CHAIN_LENGTH = 10;
/**
 * What a client may have sent before its connection closed with the handshake unfinished for that to count as a costly
 * chain abandoned: a reset after the Certificate leaves nothing to read the chain from (Node has let the TLS state go),
 * but the bytes show a client flight well past a ClientHello (~1.6 KB with a post-quantum key share) and the largest mesh
 * chains (four RSA-4096 certificates, ~6 KB). A costly chain below it (a few certificates of ~6 ms each) goes uncounted.
 */
const ABANDONED_FLIGHT_BYTES = 12 * 1024;
/**
 * Handshakes of one address taken at once; the next wait, unread, for one of them to end. The client flights of those
 * taken may all arrive in one turn of the event loop and be checked there before any can count (a chain is judged after
 * OpenSSL's check, when the loop comes back to us): this bounds that turn to PARALLEL_HANDSHAKES costly checks an
 * address, where the 256 an address may have under way had made it 256. Handshakes are checked one after another on
 * the one thread in any case, so a node opening many sessions at once loses at most a round trip per batch.
 */
const PARALLEL_HANDSHAKES = 8;

/**
 * Why OpenSSL's check of a presented chain cost far more than a handshake, or null when it did not: a certificate
 * whose key ambit's policy refuses (crypto-policy.ts: an RSA exponent over 32 bits or modulus over 8,192 bits, a curve
 * other than P-256, P-384 and P-521, a DSA key...), or more than COSTLY_CHAIN_LENGTH certificates. A mesh chain, however
 * it was refused, is neither. Only a costly chain counts towards a hold-off: a misconfigured peer (a trust domain not
 * federated, a withdrawn root) whose node address all the node's workloads share never holds them off, and a hostile
 * chain of cheap keys costs what any handshake does. Read from the chain as Node links it (getPeerCertificate(true)),
 * which may not be the one OpenSSL checked: Node links an issuer only with keyCertSign, OpenSSL without (a hostile
 * chain of such certificates shows here as its leaf alone; PARALLEL_HANDSHAKES still bounds what one turn can take).
 */
export function costlyChain(leaf: DetailedPeerCertificate | null | undefined): string | null {
  const seen = new Set<string>();
  let current: DetailedPeerCertificate | undefined = leaf ?? undefined;
  while (current?.raw !== undefined && !seen.has(current.fingerprint256)) {
    seen.add(current.fingerprint256);
    if (seen.size > COSTLY_CHAIN_LENGTH) return `a chain of more than ${COSTLY_CHAIN_LENGTH} certificates`;
    let problem: string | undefined;
    try {
      problem = keyFacts(new X509Certificate(current.raw).publicKey).problem;
    } catch {
      problem = 'cannot be read';
    }
    if (problem !== undefined) return `a certificate that ${problem}`;
    current = current.issuerCertificate;
  }
  return null;
}

export interface HandshakeBackoffOptions {
  readonly freeFailures?: number;
  readonly baseMs?: number;
  readonly maxMs?: number;
  readonly forgetMs?: number;
  readonly maxTracked?: number;
  /** Monotonic milliseconds (tests move it). */
  readonly now?: () => number;
}

interface Refusals {
  failures: number;
  lastFailureMs: number;
  untilMs: number;
}

export class HandshakeBackoff {
  readonly #records = new Map<string, Refusals>();
  readonly #freeFailures: number;
  readonly #baseMs: number;
  readonly #maxMs: number;
  readonly #forgetMs: number;
  readonly #maxTracked: number;
  readonly #now: () => number;

  constructor(options: HandshakeBackoffOptions = {}) {
    this.#freeFailures = options.freeFailures ?? FREE_FAILURES;
    this.#baseMs = options.baseMs ?? BASE_MS;
    this.#maxMs = options.maxMs ?? MAX_MS;
    this.#forgetMs = options.forgetMs ?? FORGET_MS;
    this.#maxTracked = options.maxTracked ?? MAX_TRACKED;
    this.#now = options.now ?? (() => performance.now());
  }

  /** How long `address` must still wait before its next handshake is taken; 0 when it may go on. */
  heldOffMs(address: string): number {
    const record = this.#records.get(address);
    if (record === undefined) return 0;
    const now = this.#now();
    if (now - record.lastFailureMs >= this.#forgetMs) {
      this.#records.delete(address);
      return 0;
    }
    return record.untilMs > now ? record.untilMs - now : 0;
  }

  /**
   * A handshake from `address` presented a costly chain and did not end in an accepted peer: the hold-off the address
   * is under from now (0 while its first ones are still free).
   */
  failed(address: string): number {
    const now = this.#now();
    let record = this.#records.get(address);
    if (record !== undefined && now - record.lastFailureMs >= this.#forgetMs) record = undefined;
    // Re-inserted, so that the Map's order is the order of last refusal and the oldest go first when full.
    this.#records.delete(address);
    if (record === undefined) {
      // Full: room is made from a record no longer holding its address off; an attacker spraying addresses must not
      // flush the ones held off (with none to spare, the new address goes untracked, its refusals free).
      if (this.#records.size >= this.#maxTracked && !this.#dropOneNotHeldOff(now)) return 0;
      record = { failures: 0, lastFailureMs: now, untilMs: now };
    }
    record.failures++;
    record.lastFailureMs = now;
    const over = record.failures - this.#freeFailures;
    // 2 ** over stays exact far past MAX_MS / BASE_MS; the exponent is capped so that it never reaches Infinity.
    const holdMs = over <= 0 ? 0 : Math.min(this.#maxMs, this.#baseMs * 2 ** Math.min(over - 1, 40));
    record.untilMs = now + holdMs;
    this.#records.set(address, record);
    return holdMs;
  }

  /** Addresses with refusals not yet forgotten (for tests). */
  get tracked(): number {
    return this.#records.size;
  }

  /** The Map is in order of last refusal: the oldest first, looked at only so far (the first are the likeliest done). */
  #dropOneNotHeldOff(now: number): boolean {
    let looked = 0;
    for (const [address, record] of this.#records) {
      if (record.untilMs <= now) {
        this.#records.delete(address);
        return true;
      }
      if (++looked >= 64) return false;
    }
    return false;
  }
}

/** A client's address as the hold-off keys it: an IPv4 client reaching a dual-stack socket (::ffff:a.b.c.d) is a.b.c.d. */
function clientAddress(socket: Socket): string {
  const address = socket.remoteAddress ?? '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/**
 * A connection's TCP 4-tuple, the same read from its raw socket and from the TLS socket over it (one client port may
 * reach two of a host's addresses at once).
 */
function connectionKey(socket: Socket): string {
  return `${socket.remoteAddress ?? ''} ${String(socket.remotePort)} ${socket.localAddress ?? ''} ${String(socket.localPort)}`;
}

/**
 * The TLS handshakes under way on a server, per client address, and the hold-off at its door: a connection from a
 * held-off address is closed on accept, before any handshake begins, and `refused()` (a presented chain judged and
 * refused) counts the address and, once it is held off, cuts its handshakes under way before OpenSSL reads their
 * chains (they would cost as much, and be refused too).
 */
export class HandshakeGate {
  readonly backoff: HandshakeBackoff;
  /** Raw connections whose handshake is under way, per client address, by 4-tuple. */
  readonly #underWay = new Map<string, Map<string, Socket>>();
  /** Connections waiting for one of their address's PARALLEL_HANDSHAKES, in order, with what starts each. */
  readonly #waiting = new Map<string, Array<{ readonly socket: Socket; readonly start: () => void }>>();
  /** Under way and waiting, in all. */
  #total = 0;
  readonly #onHeldOff: (address: string, heldOffMs: number) => void;
  readonly #onAbandoned: (address: string, bytes: number, holdMs: number, cut: number) => void;

  constructor(options: {
    backoff?: HandshakeBackoff | undefined;
    /** A connection from a held-off address was closed on accept. */
    onHeldOff: (address: string, heldOffMs: number) => void;
    /** A connection closed with its handshake unfinished after sending ABANDONED_FLIGHT_BYTES or more (counted). */
    onAbandoned: (address: string, bytes: number, holdMs: number, cut: number) => void;
  }) {
    this.backoff = options.backoff ?? new HandshakeBackoff();
    this.#onHeldOff = options.onHeldOff;
    this.#onAbandoned = options.onAbandoned;
  }

  /**
   * For a server that takes its connections itself (the CA): each one admitted on accept, before the server's own
   * listener begins its handshake, and settled once it is done.
   */
  guard(server: Server): void {
    gateConnections(server, (socket) => {
      if (!this.admit(socket)) return false;
      this.#track(clientAddress(socket), socket);
      return true;
    });
    server.on('secureConnection', (socket: TLSSocket) => this.settle(socket));
  }

  /** False, the connection closed and `onHeldOff` told, when its address is held off. */
  admit(socket: Socket): boolean {
    const address = clientAddress(socket);
    const heldOffMs = this.backoff.heldOffMs(address);
    if (heldOffMs === 0) return true;
    socket.destroy();
    this.#onHeldOff(address, heldOffMs);
    return false;
  }

  /** Handshakes under way or waiting from the address `socket` comes from. */
  underWay(socket: Socket): number {
    const address = clientAddress(socket);
    return (this.#underWay.get(address)?.size ?? 0) + (this.#waiting.get(address)?.length ?? 0);
  }

  /** Handshakes under way or waiting from every address. */
  get total(): number {
    return this.#total;
  }

  /**
   * Begins the connection's handshake (`start`) now if fewer than PARALLEL_HANDSHAKES of its address's are under way,
   * else once one of them ends; it is under way until settle(), or its close.
   */
  begin(socket: Socket, start: () => void): void {
    const address = clientAddress(socket);
    if ((this.#underWay.get(address)?.size ?? 0) < PARALLEL_HANDSHAKES) {
      this.#track(address, socket);
      start();
      return;
    }
    let queue = this.#waiting.get(address);
    if (queue === undefined) this.#waiting.set(address, (queue = []));
    const entry = { socket, start };
    queue.push(entry);
    this.#total++;
    // What it sends meanwhile waits in its socket's buffer (16 KiB, then in the kernel), handed to TLS when it begins.
    socket.once('close', () => {
      const index = queue.indexOf(entry);
      if (index < 0) return;
      queue.splice(index, 1);
      this.#total--;
      if (queue.length === 0 && this.#waiting.get(address) === queue) this.#waiting.delete(address);
    });
  }

  #track(address: string, socket: Socket): void {
    const key = connectionKey(socket);
    let pending = this.#underWay.get(address);
    if (pending === undefined) this.#underWay.set(address, (pending = new Map()));
    if (!pending.has(key)) this.#total++;
    pending.set(key, socket);
    socket.once('close', () => this.#settled(address, key, socket));
  }

  /** One of the address's handshakes has ended: the next waiting one begins. */
  #next(address: string): void {
    const queue = this.#waiting.get(address);
    if (queue === undefined) return;
    let entry = queue.shift();
    // One closed, its 'close' not yet emitted, is passed over.
    while (entry !== undefined && entry.socket.destroyed) {
      this.#total--;
      entry = queue.shift();
    }
    if (queue.length === 0) this.#waiting.delete(address);
    if (entry === undefined) return;
    this.#total--;
    this.#track(address, entry.socket);
    entry.start();
  }

  /** Its handshake is done: the TLS socket over a tracked connection (same 4-tuple), or the connection itself. */
  settle(socket: Socket): void {
    this.#settled(clientAddress(socket), connectionKey(socket), undefined);
  }

  /**
   * A client presented a costly chain (costlyChain) and is not an accepted peer: the hold-off its address is under now,
   * and how many handshakes were cut.
   */
  refused(socket: Socket): { holdMs: number; cut: number } {
    const address = clientAddress(socket);
    const key = connectionKey(socket);
    // Counted (and the address's others cut) before it is settled, which would begin the next waiting one; settled here,
    // its close does not count it a second time as abandoned.
    const counted = this.#count(address, key);
    this.#settled(address, key, undefined);
    return counted;
  }

  #count(address: string, own: string): { holdMs: number; cut: number } {
    const holdMs = this.backoff.failed(address);
    if (holdMs === 0) return { holdMs, cut: 0 };
    let cut = 0;
    const queue = this.#waiting.get(address);
    if (queue !== undefined) {
      this.#waiting.delete(address);
      // Emptied: each one's close finds itself gone from it and leaves the total alone.
      const waiting = queue.splice(0);
      this.#total -= waiting.length;
      for (const entry of waiting) entry.socket.destroy();
      cut += waiting.length;
    }
    for (const [key, pending] of [...(this.#underWay.get(address) ?? [])]) {
      if (key === own) continue;
      // Forgotten before it is cut: its close is not one more abandoned handshake of the address (nor begins another).
      this.#forget(address, key);
      pending.destroy();
      cut++;
    }
    return { holdMs, cut };
  }

  /** Under way no more (its next waiting one is begun by the caller). */
  #forget(address: string, key: string): void {
    const pending = this.#underWay.get(address);
    if (pending?.delete(key) !== true) return;
    this.#total--;
    if (pending.size === 0) this.#underWay.delete(address);
  }

  /** Counted once, whichever comes first; a close settles only its own connection (a later one may reuse the 4-tuple). */
  #settled(address: string, key: string, socket: Socket | undefined): void {
    const held = this.#underWay.get(address)?.get(key);
    if (held === undefined || (socket !== undefined && held !== socket)) return;
    this.#forget(address, key);
    // Closed unfinished (a reset, the handshake timeout, cut) after a flight only a chain makes this large: counted,
    // and the address's others cut if it is held off now, before the next waiting one would begin.
    if (socket !== undefined && socket.bytesRead >= ABANDONED_FLIGHT_BYTES) {
      const { holdMs, cut } = this.#count(address, key);
      this.#onAbandoned(address, socket.bytesRead, holdMs, cut);
    }
    this.#next(address);
  }
}
