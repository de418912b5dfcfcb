// Holding off a client address whose TLS handshakes present certificate chains we refuse, on the servers that take
// anyone's handshake (HBONE on 15008, the CA).
//
// Why: OpenSSL checks every signature of the chain a client presents before Node hands us the socket (Node's verify
// callback lets it go on past each error so that the application decides, and the application is us), and it takes
// RSA keys whose public exponent is as long as their modulus (up to 3,072 bits): each such signature costs a private-key
// operation, and 60 of them fit OpenSSL's 100 KB certificate list. Measured: 0.3 s of the main thread per handshake,
// every tunnel of the node stalled meanwhile, before any check of ours (ztunnel's webpki and Envoy's BoringSSL refuse
// exponents over 33 bits; Node has no such bound, nor a verify depth or certificate-list size to set). A certificate
// chain that our verifier refuses is the one signal that a handshake was the expensive kind, so after FREE_FAILURES
// such refusals from one address, its next connections are closed on accept for a hold-off that doubles with each
// further refusal (BASE_MS up to MAX_MS), and forgotten after FORGET_MS without one. Sustained, one address then costs
// a handshake per MAX_MS. A client that presents no certificate, or a valid one, is never held off.

import type { Server, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { gateConnections } from './peer-connections.ts';

/** Refused chains from one address before it is held off: an operator's test, a peer's one stale certificate. */
const FREE_FAILURES = 2;
/** The first hold-off; each further refused chain doubles it. */
const BASE_MS = 1_000;
/** The longest hold-off: how long a fixed peer may still wait after its last refusal. */
const MAX_MS = 30_000;
/** Refusals this old are forgotten: the count starts again. */
const FORGET_MS = 5 * 60_000;
/** Addresses tracked at most (each ~100 bytes); past it the oldest are dropped. */
const MAX_TRACKED = 65_536;

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
   * A handshake from `address` presented a certificate chain that was refused: the hold-off it is under from now
   * (0 while its refusals are still free).
   */
  failed(address: string): number {
    const now = this.#now();
    let record = this.#records.get(address);
    if (record !== undefined && now - record.lastFailureMs >= this.#forgetMs) record = undefined;
    // Re-inserted, so that the Map's order is the order of last refusal and the oldest go first when full.
    this.#records.delete(address);
    if (record === undefined) {
      if (this.#records.size >= this.#maxTracked) this.#dropOldest();
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

  /** Addresses with refusals not yet forgotten (for tests and the metrics). */
  get tracked(): number {
    return this.#records.size;
  }

  /** The Map is in order of last refusal: its first is the oldest (and the first forgotten). */
  #dropOldest(): void {
    const oldest = this.#records.keys().next();
    if (oldest.done !== true) this.#records.delete(oldest.value);
  }
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
  #total = 0;
  readonly #onHeldOff: (address: string, heldOffMs: number) => void;

  constructor(options: { backoff?: HandshakeBackoff | undefined; onHeldOff: (address: string, heldOffMs: number) => void }) {
    this.backoff = options.backoff ?? new HandshakeBackoff();
    this.#onHeldOff = options.onHeldOff;
  }

  /**
   * For a server that takes its connections itself (the CA): each one admitted on accept, before the server's own
   * listener begins its handshake, and settled once it is done.
   */
  guard(server: Server): void {
    gateConnections(server, (socket) => {
      if (!this.admit(socket)) return false;
      this.track(socket);
      return true;
    });
    server.on('secureConnection', (socket: TLSSocket) => this.settle(socket));
  }

  /** False, the connection closed and `onHeldOff` told, when its address is held off. */
  admit(socket: Socket): boolean {
    const address = socket.remoteAddress ?? '';
    const heldOffMs = this.backoff.heldOffMs(address);
    if (heldOffMs === 0) return true;
    socket.destroy();
    this.#onHeldOff(address, heldOffMs);
    return false;
  }

  /** Handshakes under way from `address`. */
  underWay(address: string): number {
    return this.#underWay.get(address)?.size ?? 0;
  }

  /** Handshakes under way from every address. */
  get total(): number {
    return this.#total;
  }

  /** The connection's handshake is under way until settle(), or its close. */
  track(socket: Socket): void {
    const address = socket.remoteAddress ?? '';
    const key = connectionKey(socket);
    let pending = this.#underWay.get(address);
    if (pending === undefined) this.#underWay.set(address, (pending = new Map()));
    if (!pending.has(key)) this.#total++;
    pending.set(key, socket);
    socket.once('close', () => this.#settled(address, key, socket));
  }

  /** Its handshake is done: the TLS socket over a tracked connection (same 4-tuple), or the connection itself. */
  settle(socket: Socket): void {
    this.#settled(socket.remoteAddress ?? '', connectionKey(socket), undefined);
  }

  /** A client's presented chain was refused: the hold-off its address is under now, and how many handshakes were cut. */
  refused(socket: Socket): { holdMs: number; cut: number } {
    const address = socket.remoteAddress ?? '';
    const holdMs = this.backoff.failed(address);
    if (holdMs === 0) return { holdMs, cut: 0 };
    const own = connectionKey(socket);
    let cut = 0;
    for (const [key, pending] of [...(this.#underWay.get(address) ?? [])]) {
      if (key === own) continue;
      pending.destroy();
      cut++;
    }
    return { holdMs, cut };
  }

  /** Counted once, whichever comes first; a close settles only its own connection (a later one may reuse the 4-tuple). */
  #settled(address: string, key: string, socket: Socket | undefined): void {
    const pending = this.#underWay.get(address);
    const held = pending?.get(key);
    if (pending === undefined || held === undefined || (socket !== undefined && held !== socket)) return;
    pending.delete(key);
    this.#total--;
    if (pending.size === 0) this.#underWay.delete(address);
  }
}
