// The outbound HBONE pool: HTTP/2 sessions over mTLS, keyed by (source identity, source workload IP,
// destination proxy address, expected destination identity), so a new application connection costs one
// stream, not a handshake. Sessions are dialled from the source workload's IP where this host has it, so
// the destination sees the workload's address (policies' ipBlocks, source.ip), as a ztunnel session dialled
// from inside the pod does. One dial per key at a time (concurrent callers wait for it), at most 100 streams per
// session, PING keepalive, idle sessions dropped after 5 minutes, GOAWAY honoured (ztunnel's pool.rs).
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import * as tls from 'node:tls';
import { AmbitError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';
import type { BundleSource } from '../identity/svid.ts';
import { LogBudget } from '../observe/log.ts';
import type { Logger } from '../observe/log.ts';
import type { IdentityContexts } from './tls.ts';
import type { PeerVerifier } from './tls.ts';
import type { Endpoint } from './routes.ts';
import { EmitterSlot } from './emitter-slot.ts';
import { StreamBudget, streamAnswered, streamClosed, streamOpened, trackWindows } from './window.ts';
import type { WindowOptions } from './window.ts';
import { cancelStream, cutSession } from './copy.ts';
import { SessionSocket } from './session-socket.ts';
import {
  CONNECT_ANSWER_TIMEOUT_MS,
  CONNECT_TIMEOUT_MS,
  H2_CLIENT_MAX_HEADER_LIST_BYTES,
  H2_CONNECTION_WINDOW_BYTES,
  H2_MAX_FRAME_BYTES,
  H2_MAX_SESSION_MEMORY_MB,
  H2_OPENING_STREAM_WINDOW_BYTES,
  H2_SERVER_MAX_SESSIONS_PER_PEER,
  HBONE_ALPN,
  KEEPALIVE_INTERVAL_MS,
  KEEPALIVE_TIMEOUT_MS,
  POOL_IDLE_TIMEOUT_MS,
  POOL_MAX_STREAMS_PER_SESSION,
  SETTINGS_ACK_TIMEOUT_MS,
  TCP_KEEPALIVE_IDLE_MS,
  UNTRUSTED_REASON,
} from './settings.ts';

const { HTTP2_HEADER_METHOD, HTTP2_HEADER_AUTHORITY, HTTP2_HEADER_STATUS, NGHTTP2_CANCEL, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_INADEQUATE_SECURITY, NGHTTP2_REFUSED_STREAM, NGHTTP2_SETTINGS_TIMEOUT } = http2.constants;

/** Why opening a tunnel failed: the response flag for metrics and access logs, plus the coded error. */
export class TunnelError extends AmbitError {
  /**
   * ztunnel's response flag: CONNECT (peer or upstream unreachable, or refused), TLS_FAILURE (the handshake failed),
   * H2_HANDSHAKE_FAILURE (no HTTP/2), IDENTITY_ERROR (wrong or bad peer SVID, or none of our own), DENY (401).
   */
  readonly flag: string;
  readonly status: number | undefined;
  /**
   * The peer refused the CONNECT unprocessed (REFUSED_STREAM; ENHANCE_YOUR_CALM, what a Node peer answers, before it
   * takes the stream, when its session holds as many streams or as much memory as it allows; or a stream above its
   * GOAWAY's last): safe to send again.
   */
  readonly unprocessed: boolean;
  /** `code`: the failure's own, e.g. a server certificate's verification code (SVID_EXPIRED, SVID_UNTRUSTED). */
  constructor(code: ErrorCode, flag: string, message: string, status?: number, cause?: unknown, unprocessed = false) {
    super(code, message, { cause });
    this.flag = flag;
    this.status = status;
    this.unprocessed = unprocessed;
  }
}

interface PooledSession {
  readonly session: http2.ClientHttp2Session;
  /** Its TLS connection, and the SessionSocket the session sees it through. */
  readonly tls: tls.TLSSocket;
  readonly transport: SessionSocket;
  readonly bucket: Bucket;
  streams: number;
  maxStreams: number;
  idleSinceMs: number;
  pingSentMs: number;
  /** The TLS socket's input, and the session's output not yet gone (SessionSocket.backlog), when the PING was sent (or its wait last extended). */
  readAtPing: number;
  queuedAtPing: number;
  usable: boolean;
  /** The trust bundles the server was verified against, and when its or our certificate expires: past either, no new streams. */
  readonly bundles: BundleSource;
  readonly validUntilMs: number;
  /** Whether the server's SETTINGS arrived: a TLS 1.3 server that refuses our certificate hangs up before them. */
  settled: boolean;
  /** Why the server refused the session, from its GOAWAY (INADEQUATE_SECURITY and a reason): a CONNECT waiting on it fails with that. */
  refusal: string | undefined;
  /**
   * Why the server ended the session as one of a peer past its limits, from its GOAWAY (ENHANCE_YOUR_CALM, a reason (an
   * ambit peer's TOO_MANY_SESSIONS) and the last stream it took): a CONNECT waiting on it fails saying so, not as a
   * destination unreachable.
   */
  limited: { readonly reason: string; readonly lastStreamId: number } | undefined;
  /** Our pool ended it (close, a missed PONG): a CONNECT it fails is no refusal by the server (sessionRefusal). */
  endedByPool: boolean;
  /** The trust bundles reverify() last judged it under (undefined: never). */
  judgedWith?: BundleSource;
  /** Its CONNECTs still awaiting an answer. */
  readonly awaiting: Set<http2.ClientHttp2Stream>;
}

/** A TLS connection to a peer proxy and the trust bundles its certificate was verified against. */
interface Verified {
  readonly socket: tls.TLSSocket;
  readonly bundles: BundleSource;
  /** The earliest end in the path that verified the server (VerifyResult.notAfterMs). */
  readonly serverUntilMs: number;
}

interface Bucket {
  readonly source: string;
  /** The source workload's IP the sessions are dialled from, or '' for the host's own choice. */
  readonly sourceIp: string;
  readonly peer: string;
  readonly expected: string;
  readonly sessions: PooledSession[];
  dialing: Promise<PooledSession> | null;
}

export interface PoolOptions {
  contexts: IdentityContexts;
  bundles: () => BundleSource;
  verifier: PeerVerifier;
  logger: Logger;
  maxStreamsPerSession?: number;
  idleTimeoutMs?: number;
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  /** TLS connect to a peer (default CONNECT_TIMEOUT_MS). */
  connectTimeoutMs?: number;
  /** The wait for a CONNECT's answer (default CONNECT_ANSWER_TIMEOUT_MS). */
  answerTimeoutMs?: number;
  /** How long a connection waits for its source identity's first certificate (default CONNECT_TIMEOUT_MS). */
  firstCertificateWaitMs?: number;
  /** End a session whose server has not acknowledged our SETTINGS this long after (default SETTINGS_ACK_TIMEOUT_MS). */
  settingsAckTimeoutMs?: number;
  /** The stream windows' budget shared with the proxy's other sessions (window.ts; default: one of its own). */
  streamBudget?: StreamBudget;
}

/** A session stops taking streams this long (at most a tenth of the certificate's life) before our certificate expires. */
const OWN_EXPIRY_MARGIN_MS = 5_000;

const REQUEST_OPTIONS: http2.ClientSessionRequestOptions = Object.freeze({ endStream: false });

const CONNECT_SETTINGS: http2.Settings = {
  // The narrowest: window.ts widens it as streams open, once the server acknowledges.
  initialWindowSize: H2_OPENING_STREAM_WINDOW_BYTES,
  maxFrameSize: H2_MAX_FRAME_BYTES,
  maxHeaderListSize: H2_CLIENT_MAX_HEADER_LIST_BYTES,
  enablePush: false,
};

export class HbonePool {
  // source identity → source IP ('' for none) → "host:port" of the peer proxy → expected server identity → sessions
  readonly #buckets = new Map<string, Map<string, Map<string, Map<string, Bucket>>>>();
  /** Retired sessions (GOAWAY, rotation, a bundle change) whose open streams have not finished yet. */
  readonly #draining = new Set<PooledSession>();
  readonly #options: PoolOptions;
  readonly #logger: Logger;
  /** Servers refused for their certificates: at most 20 warnings per 10 s, the rest counted in the next. */
  readonly #refusalLogBudget = new LogBudget(10_000, 20);
  readonly #maxStreams: number;
  readonly #idleTimeoutMs: number;
  readonly #keepaliveTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #answerTimeoutMs: number;
  readonly #firstCertificateWaitMs: number;
  readonly #sweep: NodeJS.Timeout;
  /** How every session's stream windows are kept (window.ts): one object for all of them. */
  readonly #windows: WindowOptions;
  #closed = false;

  constructor(options: PoolOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'hbone-pool' });
    this.#maxStreams = options.maxStreamsPerSession ?? POOL_MAX_STREAMS_PER_SESSION;
    this.#idleTimeoutMs = options.idleTimeoutMs ?? POOL_IDLE_TIMEOUT_MS;
    this.#keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
    this.#answerTimeoutMs = options.answerTimeoutMs ?? CONNECT_ANSWER_TIMEOUT_MS;
    this.#firstCertificateWaitMs = options.firstCertificateWaitMs ?? CONNECT_TIMEOUT_MS;
    this.#windows = { ackTimeoutMs: options.settingsAckTimeoutMs ?? SETTINGS_ACK_TIMEOUT_MS, budget: options.streamBudget ?? new StreamBudget(), onUnacknowledged: (session, tooMany) => this.#settingsUnacknowledged(session, tooMany) };
    // One low-precision timer for keepalive and idle checks of every session, not timers per session.
    this.#sweep = setInterval(() => this.#sweepSessions(), options.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS);
    this.#sweep.unref();
  }

  /** Pool gauges: open sessions and streams in flight. */
  stats(): { sessions: number; streams: number } {
    let sessions = 0;
    let streams = 0;
    for (const entry of this.#entries()) {
      sessions++;
      streams += entry.streams;
    }
    return { sessions, streams };
  }

  /**
   * Opens a tunnel for `sourceIdentity` (the workload at `sourceIp`, of the endpoint's address family, or null) to
   * `endpoint`: a CONNECT stream that has answered 200. Rejects with a TunnelError carrying the response flag.
   * `forwarded`: the CONNECT's `forwarded` header value (the source workload's address), or null for none.
   */
  async open(sourceIdentity: string, sourceIp: string | null, endpoint: Endpoint, baggage: string, forwarded: string | null = null): Promise<http2.ClientHttp2Stream> {
    if (this.#closed) throw new TunnelError('UPSTREAM_CONNECT', 'CONNECT', 'pool is closed');
    let bucket = this.#bucket(sourceIdentity, sourceIp ?? '', endpoint.hboneAuthority, endpoint.identity);
    // Retiring its last session may have forgotten the bucket: take the one the map holds now.
    if (this.#retireStale(bucket)) bucket = this.#bucket(sourceIdentity, sourceIp ?? '', endpoint.hboneAuthority, endpoint.identity);
    const entry = await this.#acquire(bucket, sourceIdentity, endpoint);
    try {
      return await this.#request(entry, endpoint, baggage, forwarded);
    } catch (error) {
      // RFC 9113 §8.7: a refused stream was not processed, so it is sent once more, on another session (this one
      // refuses: a peer draining, at its stream limit, or finding our certificate expired by its clock). A tunnel a
      // full session refused had reached the application as a reset.
      if (!(error instanceof TunnelError) || !error.unprocessed || this.#closed) throw error;
      this.#retire(entry);
      const again = await this.#acquire(this.#bucket(sourceIdentity, sourceIp ?? '', endpoint.hboneAuthority, endpoint.identity), sourceIdentity, endpoint);
      return this.#request(again, endpoint, baggage, forwarded);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweep);
    const entries = [...this.#entries()];
    // Ours to end: a CONNECT they fail is not a server's refusal (sessionRefusal).
    for (const entry of entries) entry.endedByPool = true;
    this.#buckets.clear();
    this.#draining.clear();
    // Give open tunnels a moment, then cut what is left.
    const closing = Promise.all(entries.map((entry) => new Promise<void>((resolve) => entry.session.close(() => resolve()))));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closing, new Promise<void>((resolve) => (timer = setTimeout(resolve, 1000)))]);
    clearTimeout(timer);
    for (const entry of entries) if (!entry.session.destroyed) entry.session.destroy();
  }

  /**
   * Verifies every session again under the trust bundles in force, when they changed: one whose server they no longer
   * vouch for (its root withdrawn, its trust domain no longer federated) is closed at once with its tunnels, as the
   * destination closes ours; one still verified is left to #retireStale (no new streams, its open ones finish).
   */
  reverify(): void {
    const bundles = this.#options.bundles();
    for (const entry of [...this.#entries()]) {
      if (entry.bundles === bundles || entry.judgedWith === bundles || entry.session.destroyed || entry.tls.destroyed) continue;
      entry.judgedWith = bundles;
      // As of a moment the server's certificate was valid: one that merely expired is #retireStale's (its tunnels finish).
      const result = this.#options.verifier.stillVouched(entry.tls, bundles, entry.bucket.expected);
      if (result.valid) continue;
      this.#logger.warn({ peer: entry.bucket.peer, expected: entry.bucket.expected, code: result.error.code, reason: result.error.message, tunnels: entry.streams }, 'HBONE session no longer verifies under the new trust bundles: closing it and its tunnels');
      this.#retire(entry);
      entry.endedByPool = true;
      cutSession(entry.session, `HBONE session to ${entry.bucket.peer} no longer verifies under the new trust bundles (${result.error.code})`, entry.tls);
      this.#draining.delete(entry);
    }
  }

  /** Sessions in use, then those retired whose streams are still open. */
  *#entries(): Generator<PooledSession> {
    for (const byIp of this.#buckets.values()) for (const byPeer of byIp.values()) for (const byIdentity of byPeer.values()) for (const bucket of byIdentity.values()) yield* bucket.sessions;
    yield* this.#draining;
  }

  #bucket(source: string, sourceIp: string, peer: string, expected: string): Bucket {
    let byIp = this.#buckets.get(source);
    if (!byIp) this.#buckets.set(source, (byIp = new Map()));
    let byPeer = byIp.get(sourceIp);
    if (!byPeer) byIp.set(sourceIp, (byPeer = new Map()));
    let byIdentity = byPeer.get(peer);
    if (!byIdentity) byPeer.set(peer, (byIdentity = new Map()));
    let bucket = byIdentity.get(expected);
    if (!bucket) byIdentity.set(expected, (bucket = { source, sourceIp, peer, expected, sessions: [], dialing: null }));
    return bucket;
  }

  async #acquire(bucket: Bucket, sourceIdentity: string, endpoint: Endpoint): Promise<PooledSession> {
    for (;;) {
      for (const entry of bucket.sessions) {
        if (entry.usable && entry.streams < entry.maxStreams) {
          entry.streams++;
          streamOpened(entry.session);
          return entry;
        }
      }
      if (bucket.dialing === null) {
        bucket.dialing = this.#dial(bucket, sourceIdentity, endpoint).finally(() => {
          bucket.dialing = null;
          if (bucket.sessions.length === 0) this.#forget(bucket);
        });
      }
      // Everyone waits for the one dial, then competes for its streams; a failed dial fails all waiters.
      await bucket.dialing;
      // The bucket may have been forgotten meanwhile (its last session retired): a session dialled into it next would
      // live outside the map, out of the sweep's and every other caller's reach. Take the one the map holds now.
      bucket = this.#bucket(bucket.source, bucket.sourceIp, bucket.peer, bucket.expected);
    }
  }

  async #dial(bucket: Bucket, sourceIdentity: string, endpoint: Endpoint): Promise<PooledSession> {
    // Its first certificate may be on its way (a proxy restarted, a workload just placed): the connection waits for it
    // rather than being reset, as ztunnel's do.
    const identity = this.#options.contexts.get(sourceIdentity) ?? (await this.#options.contexts.whenSet(sourceIdentity, this.#firstCertificateWaitMs));
    if (!identity) throw new TunnelError('SVID_MISSING', 'IDENTITY_ERROR', `no certificate yet for source identity ${sourceIdentity} after waiting ${this.#firstCertificateWaitMs} ms: the CA has not issued it (the proxy's readiness says why)`);
    // Every peer would refuse it in its handshake with a bare TLS alert; say here what is wrong, and whose.
    if (identity.svid.notAfter.getTime() <= Date.now()) {
      throw new TunnelError('SVID_EXPIRED', 'IDENTITY_ERROR', `the certificate of source identity ${sourceIdentity} expired at ${identity.svid.notAfter.toISOString()} and has not been renewed (is the CA reachable? see ambit_certificate_rotation_failures_total)`);
    }
    const { socket, bundles, serverUntilMs } = await this.#connectFrom(bucket.sourceIp, identity.context, endpoint, sourceIdentity);
    // Closed while this dial was under way: a session made now would be in no bucket close() reached, never swept,
    // and kept alive by the peer's PINGs (the process would not exit).
    if (this.#closed) {
      socket.destroy();
      throw new TunnelError('UPSTREAM_CONNECT', 'CONNECT', 'pool is closed');
    }
    // The session is good until either end's certificate expires: the server's, and ours (the peer refuses new
    // streams from a session whose client certificate has expired; rotation dials the next session with the new one).
    // Ours a little early, so that no stream is sent in the last moments and refused on arrival.
    const ownUntilMs = identity.svid.notAfter.getTime() - Math.min(OWN_EXPIRY_MARGIN_MS, (identity.svid.notAfter.getTime() - identity.svid.notBefore.getTime()) / 10);
    const validUntilMs = Math.min(serverUntilMs, ownUntilMs);
    let session: http2.ClientHttp2Session;
    const transport = new SessionSocket(socket);
    try {
      // The authority, bracketed for IPv6 (`https://fd00::1:15008` is no URL: every tunnel to an IPv6 peer failed).
      session = http2.connect(`https://${endpoint.hboneAuthority}`, {
        createConnection: () => transport.forSession(),
        settings: CONNECT_SETTINGS,
        maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
        peerMaxConcurrentStreams: this.#maxStreams,
      });
    } catch (error) {
      // Verified and connected: nothing else would ever close it.
      socket.destroy();
      throw new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `HBONE session to ${endpoint.hboneAuthority}: ${(error as Error).message}`);
    }
    const entry: PooledSession = { session, tls: socket, transport, bucket, streams: 0, maxStreams: this.#maxStreams, idleSinceMs: Date.now(), pingSentMs: 0, readAtPing: 0, queuedAtPing: 0, usable: true, bundles, validUntilMs, settled: false, refusal: undefined, limited: undefined, endedByPool: false, awaiting: new Set() };
    session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES);
    pooled.set(session, entry);
    trackWindows(session, this.#windows);
    session.on('remoteSettings', (settings) => {
      entry.settled = true;
      // Respect the server's stream limit when it is below ours.
      if (settings.maxConcurrentStreams !== undefined) entry.maxStreams = Math.min(this.#maxStreams, settings.maxConcurrentStreams);
      // A server taking no streams (overloaded, or hostile) would otherwise sit in the pool, pinged, until its idle
      // timeout, while every new connection dialled another such session beside it.
      if (entry.maxStreams === 0) {
        this.#retire(entry);
        // CONNECTs made before its settings came may never be sent (nghttp2 holds those past the limit): unprocessed,
        // each goes once more on another session. They waited for the answer timeout (15 s) and failed.
        for (const stream of [...entry.awaiting]) {
          const connect = connects.of(stream);
          const { endpoint } = connect;
          connect.fail(new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `CONNECT ${endpoint.authority}: the server at ${endpoint.hboneAuthority} takes no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)`, undefined, undefined, true));
          // destroy(): a stream nghttp2 holds unsent closes (and gives its slot back) only so.
          cancelStream(stream);
        }
      }
    });
    const retire = () => this.#retire(entry);
    session.on('goaway', (errorCode: number, lastStreamId: number, data?: Buffer) => {
      if (errorCode === NGHTTP2_INADEQUATE_SECURITY) entry.refusal = refusalText(data);
      else if (errorCode === NGHTTP2_ENHANCE_YOUR_CALM) entry.limited = { reason: refusalText(data), lastStreamId };
      retire();
    });
    session.on('close', () => {
      this.#draining.delete(entry);
      retire();
    });
    session.on('error', (error) => {
      this.#logger.debug({ peer: endpoint.hboneAuthority, err: error.message }, 'HBONE session error');
      retire();
    });
    bucket.sessions.push(entry);
    return entry;
  }

  /**
   * Dials from the source workload's IP (the caller passes only addresses this host has). One that went away since
   * (EADDRNOTAVAIL) is dialled from the host's own address, and said: the destination's ipBlocks see that one.
   */
  async #connectFrom(sourceIp: string, context: tls.SecureContext, endpoint: Endpoint, sourceIdentity: string): Promise<Verified> {
    if (sourceIp === '') return this.#connectTls(undefined, context, endpoint, sourceIdentity);
    try {
      return await this.#connectTls(sourceIp, context, endpoint, sourceIdentity);
    } catch (error) {
      if ((error as { cause?: NodeJS.ErrnoException }).cause?.code !== 'EADDRNOTAVAIL') throw error;
      this.#logger.warn({ source: sourceIdentity, sourceIp }, 'the source workload\'s address is gone from this host: HBONE session dialled from the host address, which policies at the destination see as source.ip');
      return this.#connectTls(undefined, context, endpoint, sourceIdentity);
    }
  }

  #connectTls(localAddress: string | undefined, context: tls.SecureContext, endpoint: Endpoint, sourceIdentity: string): Promise<Verified> {
    return new Promise((resolve, reject) => {
      // tls.connect takes socket.connect()'s options too (its documentation), which @types/node leaves out.
      const options: tls.ConnectionOptions & Pick<net.TcpSocketConnectOpts, 'localAddress'> = {
        host: endpoint.hboneHost,
        port: endpoint.hbonePort,
        localAddress,
        secureContext: context,
        ALPNProtocols: HBONE_ALPN,
        rejectUnauthorized: false,
        // No SNI, as ztunnel: the server picks its certificate by the address we dialled.
        servername: '',
      };
      const socket = tls.connect(options);
      // An error once TCP is up is the handshake's (an alert, or a peer that is no TLS server): ztunnel's TLS_FAILURE.
      let connected = false;
      socket.once('connect', () => (connected = true));
      const timeoutMs = this.#connectTimeoutMs;
      // Which step got no answer says where to look: TCP (a firewall or NetworkPolicy dropping HBONE's port, ztunnel's
      // NETWORK_POLICY), or the handshake (something there that is no HBONE server).
      const timer = setTimeout(() => socket.destroy(connected
        ? new TunnelError('TLS_HANDSHAKE', 'TLS_FAILURE', `TLS handshake with ${endpoint.hboneAuthority} got no answer within ${timeoutMs} ms: the port accepts connections but answers no TLS (is it an HBONE server?)`)
        : new TunnelError('UPSTREAM_CONNECT', 'NETWORK_POLICY', `connect to ${endpoint.hboneAuthority} timed out after ${timeoutMs} ms: maybe a NetworkPolicy or firewall drops HBONE port ${endpoint.hbonePort}`)), timeoutMs);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        const bundles = this.#options.bundles();
        const result = this.#options.verifier.verify(socket, bundles, endpoint.identity);
        if (!result.valid) {
          socket.destroy();
          // Its certificate may be the expected one and fail for another reason (expired, untrusted): said as what it is.
          const wrongIdentity = result.id != null && result.id.id !== endpoint.identity;
          // Budgeted: every new connection dials again, and a peer whose certificate expired would be a warning each.
          this.#refusalLogBudget.warn(this.#logger, 'server-refused', { source: sourceIdentity, expected: endpoint.identity, presented: result.id?.id ?? null, code: result.error.code, reason: result.error.message, peer: endpoint.hboneAuthority }, wrongIdentity ? 'refusing HBONE peer: server identity is not the one expected' : 'refusing HBONE peer: its certificate does not verify');
          // IDENTITY_MISMATCH only for a valid SVID of another identity; otherwise the verification's own code.
          reject(new TunnelError(wrongIdentity ? 'IDENTITY_MISMATCH' : result.error.code, 'IDENTITY_ERROR', `server at ${endpoint.hboneAuthority}: [${result.error.code}] ${result.error.message}`, undefined, result.error));
          return;
        }
        if (socket.alpnProtocol !== 'h2') {
          socket.destroy();
          reject(new TunnelError('UPSTREAM_CONNECT', 'H2_HANDSHAKE_FAILURE', `server at ${endpoint.hboneAuthority} did not negotiate h2 (ALPN ${String(socket.alpnProtocol)})`));
          return;
        }
        socket.setKeepAlive(true, TCP_KEEPALIVE_IDLE_MS);
        resolve({ socket, bundles, serverUntilMs: result.notAfterMs });
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        if (error instanceof TunnelError) reject(error);
        else if (connected) reject(new TunnelError('TLS_HANDSHAKE', 'TLS_FAILURE', `TLS handshake with ${endpoint.hboneAuthority} failed: ${error.message}`, undefined, error));
        else reject(new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `connect to ${endpoint.hboneAuthority}: ${error.message}`, undefined, error));
      });
    });
  }

  #request(entry: PooledSession, endpoint: Endpoint, baggage: string, forwarded: string | null): Promise<http2.ClientHttp2Stream> {
    return new Promise((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        // Raw headers (a flat array): an object would be copied into a dictionary-mode null-prototype object first.
        const headers = [HTTP2_HEADER_METHOD, 'CONNECT', HTTP2_HEADER_AUTHORITY, endpoint.authority, 'baggage', baggage];
        if (forwarded !== null) headers.push('forwarded', forwarded);
        stream = entry.session.request(headers, REQUEST_OPTIONS);
      } catch (error) {
        releaseStream(entry);
        reject(new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `cannot open a stream to ${endpoint.authority}: ${(error as Error).message}`, undefined, error));
        return;
      }
      connects.set(stream, new PendingConnect(entry, endpoint, this.#answerTimeoutMs, stream, resolve, reject));
      entry.awaiting.add(stream);
      // Shared listeners, finding their PendingConnect in an EmitterSlot: a tunnel keeps its 'close' and 'error'
      // listeners until it ends, and closures would keep this call's whole scope for as long.
      stream.on('close', onConnectClose);
      stream.on('response', onConnectResponse);
      stream.on('headers', onConnectInformational);
      // Stays after the answer too: an error between the answer and the Bridge's own listener must not throw.
      stream.on('error', onConnectError);
    });
  }

  /**
   * A session stays verified only as long as what verified it: new trust bundles (a root withdrawn, a federation
   * ended) or the server's certificate expiring retire it, its open streams finishing, and the next stream dials and
   * verifies again. Returns whether any was retired.
   */
  #retireStale(bucket: Bucket): boolean {
    if (bucket.sessions.length === 0) return false;
    const bundles = this.#options.bundles();
    const now = Date.now();
    let retired = false;
    for (let i = bucket.sessions.length - 1; i >= 0; i--) {
      const entry = bucket.sessions[i] as PooledSession;
      if (entry.bundles === bundles && now < entry.validUntilMs) continue;
      this.#retire(entry);
      retired = true;
    }
    return retired;
  }

  /**
   * A session that said GOAWAY, closed, failed or went stale takes no new streams; its open streams finish. It is
   * closed (GOAWAY) only once they have: Node sends no PING on a closed session, and the keepalive sweep must go on
   * finding a dead peer by its missed PONG rather than leave its tunnels hanging. (A session the peer's GOAWAY closed
   * cannot be pinged: TCP keepalive finds that peer gone.)
   */
  #retire(entry: PooledSession): void {
    if (!entry.usable) return;
    entry.usable = false;
    const bucket = entry.bucket;
    const index = bucket.sessions.indexOf(entry);
    if (index >= 0) bucket.sessions.splice(index, 1);
    if (entry.streams === 0 && !entry.session.closed) entry.session.close();
    // It stays in the gauges and the keepalive sweep until it closes.
    if (!entry.session.destroyed) this.#draining.add(entry);
    // Forget keys with nothing left, so pod churn does not grow the pool's maps forever.
    if (bucket.sessions.length === 0 && bucket.dialing === null) this.#forget(bucket);
  }

  #forget(bucket: Bucket): void {
    const byIp = this.#buckets.get(bucket.source);
    const byPeer = byIp?.get(bucket.sourceIp);
    const byIdentity = byPeer?.get(bucket.peer);
    if (byIdentity?.get(bucket.expected) !== bucket) return;
    byIdentity.delete(bucket.expected);
    if (byIdentity.size === 0) byPeer?.delete(bucket.peer);
    if (byPeer?.size === 0) byIp?.delete(bucket.sourceIp);
    if (byIp?.size === 0) this.#buckets.delete(bucket.source);
  }

  /**
   * A server that has left our SETTINGS (a narrower stream window) unacknowledged past the deadline, or too many of
   * them: its session and tunnels are ended, GOAWAY SETTINGS_TIMEOUT (RFC 9113 §6.5.3), as one that missed its PONG.
   * Not while our own writes are backed up (the SETTINGS may be queued behind them): it gets another period then.
   */
  #settingsUnacknowledged(session: http2.Http2Session, tooMany: boolean): boolean {
    const entry = pooled.of(session);
    if (entry === undefined || session.destroyed) return true;
    if (!tooMany && (entry.transport.blocked || entry.transport.backlog > 0 || (session.state.outboundQueueSize ?? 0) > 0)) return false;
    this.#refusalLogBudget.warn(this.#logger, 'settings-timeout', { peer: entry.bucket.peer, expected: entry.bucket.expected, code: 'SETTINGS_TIMEOUT', tooMany, tunnels: entry.streams }, 'HBONE server did not acknowledge our SETTINGS; closing the session and its tunnels (SETTINGS_TIMEOUT)');
    this.#retire(entry);
    entry.endedByPool = true;
    cutSession(entry.session, `HBONE session to ${entry.bucket.peer} did not acknowledge our SETTINGS ${tooMany ? '(too many outstanding)' : `within ${this.#windows.ackTimeoutMs} ms`}`, entry.tls, NGHTTP2_SETTINGS_TIMEOUT);
    this.#draining.delete(entry);
    return true;
  }

  #sweepSessions(): void {
    // Trust bundles the agent's event did not reach the pool for (it is the prompt path): judged here at the latest.
    this.reverify();
    const now = Date.now();
    for (const entry of [...this.#entries()]) this.#check(entry, now);
  }

  #check(entry: PooledSession, now: number): void {
    // Destroyed, its 'close' not emitted yet: nothing to check, and ping() would throw.
    if (entry.session.destroyed) {
      this.#draining.delete(entry);
      return;
    }
    if (entry.streams === 0 && now - entry.idleSinceMs >= this.#idleTimeoutMs) {
      this.#retire(entry);
      return;
    }
    if (entry.pingSentMs !== 0 && now - entry.pingSentMs >= this.#keepaliveTimeoutMs) {
      if (movedSincePing(entry)) {
        // Its PONG is late but the peer is alive: wait on, judged again from here.
        this.#logger.debug({ peer: entry.bucket.peer, waitedMs: now - entry.pingSentMs }, 'HBONE session\'s keepalive PONG late behind a backlog, the peer still sending and reading');
        waitForPong(entry, now);
        return;
      }
      this.#logger.warn({ peer: entry.bucket.peer, expected: entry.bucket.expected, tunnels: entry.streams, waitedMs: now - entry.pingSentMs }, 'HBONE session missed its keepalive PONG; closing it and its tunnels');
      this.#retire(entry);
      entry.endedByPool = true;
      cutSession(entry.session, `HBONE session to ${entry.bucket.peer} missed its keepalive PONG for ${now - entry.pingSentMs} ms`, entry.tls);
      return;
    }
    if (entry.pingSentMs === 0) {
      waitForPong(entry, now);
      const sent = entry.session.ping((error) => {
        if (!error) entry.pingSentMs = 0;
      });
      if (!sent) entry.pingSentMs = 0;
    }
  }
}

/** A PONG is awaited from `now`: what the TLS socket has read and holds then is what movedSincePing compares with. */
function waitForPong(entry: PooledSession, now: number): void {
  entry.pingSentMs = now;
  entry.readAtPing = entry.tls.bytesRead;
  entry.queuedAtPing = entry.transport.backlog;
}

/**
 * Whether a session whose PONG is late has shown since its PING that the peer is there: it sent us bytes, and either it
 * reads what we send or our writes are not held back. A PING leaves behind whatever the session had queued before it,
 * up to its windows of DATA (32 MiB): over a slow path (10 Mbit/s) that took longer than the keepalive's 20 s, and the
 * pool cut a healthy session with every tunnel on it. A peer gone silent sends nothing; one flooding PINGs and reading
 * nothing sends, but holds our writes past the SessionSocket's bound with its queue never shrinking: both are cut.
 */
function movedSincePing(entry: PooledSession): boolean {
  if (entry.tls.bytesRead <= entry.readAtPing) return false;
  return !entry.transport.blocked || entry.transport.backlog < entry.queuedAtPing;
}

function releaseStream(entry: PooledSession): void {
  entry.streams--;
  streamClosed(entry.session);
  if (entry.streams !== 0) return;
  entry.idleSinceMs = Date.now();
  // A retired session kept open for its tunnels (see #retire): the last has ended.
  if (!entry.usable && !entry.session.closed) entry.session.close();
}

const connects = new EmitterSlot<PendingConnect>('ambit.connect');
/** Each session's pool entry, for the window keeper's callback. */
const pooled = new EmitterSlot<PooledSession>('ambit.pooled-session');

/**
 * A CONNECT until its answer, then the tunnel's hold on its session's stream count until the stream closes. No
 * answer within the connect timeout, or a close without one (RST CANCEL/NO_ERROR, a session the keepalive killed),
 * fails the tunnel rather than leave the application connection hanging. The timer is a plain one, cleared and let
 * go on the answer, rather than stream.setTimeout(), which keeps its Timeout and listener on the stream.
 */
class PendingConnect {
  readonly entry: PooledSession;
  readonly endpoint: Endpoint;
  readonly timeoutMs: number;
  #stream: http2.ClientHttp2Stream | null;
  #timer: NodeJS.Timeout | undefined;
  #resolve: ((stream: http2.ClientHttp2Stream) => void) | null;
  #reject: ((error: TunnelError) => void) | null;

  constructor(entry: PooledSession, endpoint: Endpoint, timeoutMs: number, stream: http2.ClientHttp2Stream, resolve: (stream: http2.ClientHttp2Stream) => void, reject: (error: TunnelError) => void) {
    this.entry = entry;
    this.endpoint = endpoint;
    this.timeoutMs = timeoutMs;
    this.#resolve = resolve;
    this.#reject = reject;
    this.#stream = stream;
    this.#timer = setTimeout(onConnectTimeout, timeoutMs, stream);
  }

  /** Whether the answer is still awaited. */
  get pending(): boolean {
    return this.#timer !== undefined;
  }

  succeed(stream: http2.ClientHttp2Stream): void {
    const resolve = this.#resolve;
    if (this.#settle() && resolve !== null) resolve(stream);
  }

  /** The first outcome wins: later failures (the close after a refusal, say) are ignored. */
  fail(error: TunnelError): void {
    const reject = this.#reject;
    if (this.#settle() && reject !== null) reject(error);
  }

  #settle(): boolean {
    if (this.#timer === undefined) return false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#resolve = null;
    this.#reject = null;
    if (this.#stream !== null) this.entry.awaiting.delete(this.#stream);
    this.#stream = null;
    return true;
  }
}

function onConnectTimeout(stream: http2.ClientHttp2Stream): void {
  const connect = connects.of(stream);
  const { endpoint } = connect;
  connect.fail(new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `CONNECT ${endpoint.authority} via ${endpoint.hboneAuthority}: no answer within ${connect.timeoutMs} ms`));
  stream.close(NGHTTP2_CANCEL);
}

function onConnectClose(this: http2.ClientHttp2Stream): void {
  const connect = connects.of(this);
  releaseStream(connect.entry);
  if (connect.pending) connect.fail(sessionRefusal(connect, this) ?? new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `CONNECT ${connect.endpoint.authority}: stream closed before an answer (RST ${this.rstCode})`));
}

/**
 * A CONNECT that died with its session because the server refused this node's certificate after the handshake (TLS
 * 1.3 verifies the client's certificate after the client is done): an ambit peer says why in its GOAWAY; a server
 * that hangs up before even its HTTP/2 settings most likely refused it too. ztunnel's TLS_FAILURE either way.
 */
function sessionRefusal(connect: PendingConnect, stream: http2.ClientHttp2Stream, error?: Error): TunnelError | undefined {
  const { entry, endpoint } = connect;
  const server = endpoint.hboneAuthority;
  if (entry.refusal !== undefined) {
    const why = entry.refusal === UNTRUSTED_REASON ? ' (its trust bundles do not vouch for it: a trust domain it is not federated with, a CA it does not trust, a CA that is expired or breaks its rules; its log names which)' : '';
    return new TunnelError('TLS_HANDSHAKE', 'TLS_FAILURE', `server at ${server} refused the certificate of source identity ${entry.bucket.source}: ${entry.refusal}${why}`);
  }
  if (entry.limited !== undefined) {
    // A CONNECT above the GOAWAY's last stream was never taken: sent once more (on another session), as any refused
    // unprocessed (a Node peer out of session memory); a peer that refuses the session itself refuses that one too.
    const unprocessed = stream.id === undefined || stream.id > entry.limited.lastStreamId;
    // An ambit peer says which of its limits; other peers' (and Node's flood limits) say nothing or their own.
    const which = entry.limited.reason === 'TOO_MANY_SESSIONS' ? ` (an ambit peer takes at most ${H2_SERVER_MAX_SESSIONS_PER_PEER} sessions of one identity from one address; its log and ambit_hbone_peers_refused_total say so)` : '';
    return new TunnelError('HBONE_REFUSED', 'CONNECT', `server at ${server} ended the HBONE session of source identity ${entry.bucket.source} as one past its limits (GOAWAY ENHANCE_YOUR_CALM): ${entry.limited.reason}${which}`, undefined, undefined, unprocessed);
  }
  // The server ended it, not our pool (a close, the sweep).
  if (!entry.settled && !entry.endedByPool && entry.session.destroyed) {
    const said = error === undefined ? '' : ` (${error.message})`;
    return new TunnelError('TLS_HANDSHAKE', 'TLS_FAILURE', `server at ${server} closed the connection before its HTTP/2 settings${said}: it most likely refused the certificate of source identity ${entry.bucket.source} (its trust bundle, or its rules for client certificates)`);
  }
  return undefined;
}

/** A GOAWAY's debug data as text for an error message: printable ASCII only, and short (a hostile server writes it). */
function refusalText(data: Buffer | undefined): string {
  if (data === undefined || data.length === 0) return 'no reason given';
  return data.subarray(0, 200).toString('latin1').replace(/[^\x20-\x7e]/g, '?');
}

/** A header list's size as HTTP/2 counts it (RFC 9113 §6.5.2: name, value and 32 octets per field). */
function headerListBytes(headers: http2.IncomingHttpHeaders): number {
  let bytes = 0;
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    if (Array.isArray(value)) for (const item of value) bytes += name.length + item.length + 32;
    else bytes += name.length + String(value).length + 32;
  }
  return bytes;
}

function onConnectResponse(this: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  const connect = connects.of(this);
  if (!connect.pending) return;
  // Node enforces our SETTINGS_MAX_HEADER_LIST_SIZE only once the peer has acknowledged it: the first CONNECTs of a
  // session took answers of megabytes (and, reset by our side on a later stream, one was sent again on a new session,
  // first there). The limit holds for every answer.
  const size = headerListBytes(headers);
  if (size > H2_CLIENT_MAX_HEADER_LIST_BYTES) {
    const { endpoint } = connect;
    connect.fail(new TunnelError('HBONE_REFUSED', 'CONNECT', `${endpoint.authority} via ${endpoint.hboneAuthority} answered with ${size} bytes of header fields, more than the ${H2_CLIENT_MAX_HEADER_LIST_BYTES} this proxy takes`));
    this.close(NGHTTP2_CANCEL);
    return;
  }
  const status = Number(headers[HTTP2_HEADER_STATUS]);
  if (status === 200) {
    // A wider stream window, if the streams now open allow it.
    streamAnswered(connect.entry.session);
    connect.succeed(this);
    return;
  }
  const { endpoint } = connect;
  connect.fail(new TunnelError('HBONE_REFUSED', status === 401 ? 'DENY' : 'CONNECT', `${endpoint.authority} via ${endpoint.hboneAuthority} answered ${status}`, status));
  this.close(NGHTTP2_CANCEL);
}

/**
 * A 1xx answer to CONNECT, which no HBONE server sends: the CONNECT is failed and its stream reset at the first. A peer
 * answering with 1xx after 1xx had the session parse and emit each (one CONNECT: +240 MiB and a core for as long as
 * it went on), until the answer timeout.
 */
function onConnectInformational(this: http2.ClientHttp2Stream, headers: http2.IncomingHttpHeaders): void {
  const connect = connects.of(this);
  if (!connect.pending) return;
  const { endpoint } = connect;
  connect.fail(new TunnelError('HBONE_REFUSED', 'CONNECT', `${endpoint.authority} via ${endpoint.hboneAuthority} answered ${String(headers[HTTP2_HEADER_STATUS])} (informational) to CONNECT`, Number(headers[HTTP2_HEADER_STATUS])));
  this.close(NGHTTP2_CANCEL);
}

function onConnectError(this: http2.ClientHttp2Stream, error: Error): void {
  const connect = connects.of(this);
  if (connect.pending) connect.fail(sessionRefusal(connect, this, error) ?? new TunnelError('UPSTREAM_CONNECT', 'CONNECT', `CONNECT ${connect.endpoint.authority}: ${error.message}`, undefined, error, this.rstCode === NGHTTP2_REFUSED_STREAM || this.rstCode === NGHTTP2_ENHANCE_YOUR_CALM));
}
