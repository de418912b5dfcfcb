// Inbound HBONE (15008): TLS 1.3 + HTTP/2 CONNECT, presenting the destination workload's SVID, verifying
// the peer's SVID against the bundle of the peer's own trust domain, and forwarding only to workloads on
// this node: never an open relay.
//
// Certificate choice without SNI (ztunnel sends none): one HTTP/2 server per local workload, listening
// on that workload's IP where this host has it; a shared listener (a VM's node address) hands each
// connection to the server of the workload whose IP it arrived on, or of the node's only workload.
// Either way the CONNECT authority must name the workload whose certificate the connection saw.
//
// Per stream, in phases (ztunnel's serve_connect): validate the request (400), find the local workload
// and port (503), authorize (401), connect upstream (503), and only then answer 200 and copy bytes.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { canonicalIp } from '../config/fields.ts';
import type * as tls from 'node:tls';
import { countDown } from '../counts.ts';
import { costlyChain, HandshakeGate } from '../handshake-backoff.ts';
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import type { BundleSource, VerifyResult } from '../identity/svid.ts';
import { AMBIGUOUS_NAMESPACE, isInfrastructurePath, namespaceOfPath } from '../identity/spiffe-id.ts';
import type { SpiffeId } from '../identity/spiffe-id.ts';
import type { Logger } from '../observe/log.ts';
import { acceptErrorLogger, LogBudget } from '../observe/log.ts';
import { AmbitError } from '../errors.ts';
import type { Flushable, ProxyMetrics, TunnelLabels, TunnelMeter, WorkloadLabels } from '../observe/metrics.ts';
import { UNKNOWN_WORKLOAD } from '../observe/metrics.ts';
import { labelsOfBaggage, labelsOfNamespace, labelsOfWorkload } from './labels.ts';
import { inboundService, routingTableOf } from './routes.ts';
import { accessLog, accessLogEnabled } from '../observe/access-log.ts';
import { formatAuthority, parseAuthority } from './authority.ts';
import { countStreamBytes } from './stream-bytes.ts';
import type { StreamBytes } from './stream-bytes.ts';
import { Bridge, cancelStream, cutSession, cutSocket } from './copy.ts';
import { StreamBudget, streamAnswered, streamClosed, streamOpened, trackWindows } from './window.ts';
import type { WindowOptions } from './window.ts';
import { EmitterSlot } from './emitter-slot.ts';
import { clientCertElement, peerCertDetails } from './xfcc.ts';
import type { IdentityContexts, PeerVerifier } from './tls.ts';
import { parseBaggage } from './baggage.ts';
import { DENY_ON_ERROR } from '../authz/compile.ts';
import type { Decision } from '../authz/compile.ts';
import { parseIp } from '../authz/match.ts';
import type { HttpRequestFacts } from '../authz/decide.ts';
import type { HttpInspector, RequestDecider } from './l7.ts';
import type { HttpVersion } from '../config/http-ports.ts';
import type { PathNormalization } from '../config/objects.ts';
import type { RequestLogRecord } from '../observe/access-log.ts';
import type { IpAddress } from '../authz/match.ts';
import {
  CONNECT_TIMEOUT_MS,
  H2_CONNECTION_WINDOW_BYTES,
  H2_MAX_FRAME_BYTES,
  H2_MAX_SESSION_MEMORY_MB,
  H2_SERVER_STREAM_RESET_BURST,
  H2_SERVER_STREAM_RESET_RATE,
  H2_SERVER_MAX_HEADER_LIST_BYTES,
  H2_OPENING_STREAM_WINDOW_BYTES,
  H2_SERVER_MAX_HANDSHAKES,
  H2_SERVER_MAX_HANDSHAKES_PER_ADDRESS,
  H2_SERVER_MAX_SESSIONS_PER_PEER,
  H2_SERVER_MAX_STREAMS,
  HBONE_ALPN,
  KEEPALIVE_INTERVAL_MS,
  KEEPALIVE_TIMEOUT_MS,
  SETTINGS_ACK_TIMEOUT_MS,
  TCP_KEEPALIVE_IDLE_MS,
  TLS_CIPHERS,
  TLS_GROUPS,
  TLS_MIN_VERSION,
  UNTRUSTED_REASON,
  illegalUpstreamPorts,
} from './settings.ts';

const { HTTP2_HEADER_METHOD, HTTP2_HEADER_AUTHORITY, HTTP2_HEADER_STATUS, NGHTTP2_CANCEL, NGHTTP2_ENHANCE_YOUR_CALM, NGHTTP2_INADEQUATE_SECURITY, NGHTTP2_REFUSED_STREAM, NGHTTP2_SETTINGS_TIMEOUT } = http2.constants;

/** The address in a `forwarded` header's first `for=` (`for="10.0.0.5:4711"`, `for="[fd00::5]"`, `for=10.0.0.5`), or null. */
export function forwardedForAddress(value: string): string | null {
  const match = /(?:^|[;,\s])for=(?:"([^"]*)"|([^;,\s]*))/i.exec(value);
  if (match === null) return null;
  const node = match[1] ?? match[2] ?? '';
  // RFC 7239's node: an IPv4 address or a bracketed IPv6 one, then an optional `:port`.
  if (node.charCodeAt(0) === 91 /* [ */) {
    const close = node.indexOf(']');
    if (close <= 1 || !isPortSuffix(node, close + 1)) return null;
    const address = node.slice(1, close);
    return net.isIP(address) === 6 ? address : null;
  }
  if (net.isIP(node) !== 0) return node;
  const colon = node.lastIndexOf(':');
  return colon > 0 && isPortSuffix(node, colon) && net.isIP(node.slice(0, colon)) === 4 ? node.slice(0, colon) : null;
}

/**
 * The `host=` of a `forwarded` header (ztunnel's parse_forwarded_host): the Service the client addressed, or null.
 * Only ever looked up among the Services selecting the destination (inboundService), never reported as sent.
 */
export function forwardedHost(value: string): string | null {
  const match = /(?:^|[;\s])host=(?:"([^"]*)"|([^;,\s]*))/i.exec(value);
  const host = match === null ? '' : (match[1] ?? match[2] ?? '');
  return host === '' ? null : host;
}

/** Whether `text` from `at` is nothing, or `:` and one to five digits. */
function isPortSuffix(text: string, at: number): boolean {
  if (at === text.length) return true;
  if (text.charCodeAt(at) !== 58 /* : */ || text.length - at - 1 < 1 || text.length - at - 1 > 5) return false;
  for (let i = at + 1; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 48 || code > 57) return false;
  }
  return true;
}

/**
 * The `forwarded: for=` address of a stream's CONNECT (canonical) when policies are to see it as the source IP, else
 * null (they see the session's own address). Believed only of a workload with the identity the session proved,
 * running on the host the session comes from (forwardedClaimHolds): a host-network proxy dials from the node's
 * address, not the pod's. Any other claim (another identity's address, a pod of this identity on another node, an
 * address outside the registry) is not. Memoised per session and configuration version, with the parsed IP in
 * `claimIp`: a session's streams name the same address.
 */
function believedClaim(peer: PeerInfo, forwarded: string, snapshot: ConfigSnapshot): string | null {
  if (peer.claimText === forwarded && peer.claimVersion === snapshot.version) return peer.claimAddress;
  // The same `for=` with another `;host=` (one session carries connections to several Services): only the host is new.
  const lastFor = peer.claimFor;
  if (peer.claimVersion === snapshot.version && lastFor !== '' && forwarded.length > lastFor.length && forwarded.charCodeAt(lastFor.length) === 59 /* ; */ && forwarded.startsWith(lastFor)) {
    peer.claimText = forwarded;
    peer.claimHost = forwardedHost(forwarded);
    return peer.claimAddress;
  }
  const claimed = forwardedForAddress(forwarded);
  const canonical = claimed === null ? undefined : canonicalIp(claimed);
  const believed = canonical !== undefined && forwardedClaimHolds(snapshot, canonical, peer.id.id, peer.canonicalAddress);
  peer.claimText = forwarded;
  peer.claimHost = forwardedHost(forwarded);
  // ztunnel and ambit write `for=` first, then `;host=`: the part before the first `;` names the address.
  const semicolon = forwarded.indexOf(';');
  peer.claimFor = semicolon > 0 && forwarded.startsWith('for=') ? forwarded.slice(0, semicolon) : '';
  peer.claimVersion = snapshot.version;
  peer.claimAddress = believed ? canonical : null;
  peer.claimIp = believed ? parseIp(canonical) : null;
  return peer.claimAddress;
}

/**
 * Whether a `forwarded: for=` address (canonical) is believed from a session of `identity` coming from
 * `sessionAddress` (canonical): a workload of that identity at that address, running on the session's host.
 */
export function forwardedClaimHolds(snapshot: ConfigSnapshot, claimed: string, identity: string, sessionAddress: string): boolean {
  const workload = snapshot.workloadByIp(claimed);
  return workload !== undefined && workload.identity === identity && (claimed === sessionAddress || workload.hostIps.includes(sessionAddress));
}

/**
 * What a refused peer is told: the code of a fault in the certificates it presented (SVID_EXPIRED, SVID_KEY_USAGE,
 * ...), else SVID_UNTRUSTED. TRUST_DOMAIN_UNKNOWN against SVID_CHAIN_INVALID would tell an unauthenticated prober
 * which trust domains this node trusts, one self-signed certificate at a time; the log and the refusal counter
 * keep the exact code for the operator.
 */
function refusalReason(result: VerifyResult & { valid: false }): string {
  return result.presentedOnly === true ? result.error.code : UNTRUSTED_REASON;
}

/**
 * Ends a session whose peer did not authenticate (or holds too many), telling it why: GOAWAY INADEQUATE_SECURITY (or `code`) with a reason as
 * debug data (refusalReason), so its proxy can say "refused our certificate: SVID_EXPIRED" instead of "connection
 * closed". Destroyed in the same turn: no stream of it is ever served.
 */
function refuseSession(session: http2.ServerHttp2Session, reason: string, code: number = NGHTTP2_INADEQUATE_SECURITY): void {
  session.goaway(code, 0, Buffer.from(reason, 'latin1'));
  session.destroy();
}

/** What authorization sees when a stream opens; the peer facts are computed once per session. */
export interface InboundConnection {
  readonly peer: SpiffeId;
  /** Istio's principal form: the SPIFFE ID without `spiffe://`. */
  readonly principal: string;
  /** The peer's namespace when its ID has the /ns/NS/sa/SA shape. */
  readonly peerNamespace: string | null;
  readonly peerAddress: string;
  /** The source IP policies see: the session's address, or the `forwarded` claim below. */
  readonly peerIp: IpAddress | null;
  /**
   * The `forwarded: for=` address believed as the source (canonical), null when it is the session's own: a later
   * configuration must still believe it (forwardedClaimHolds) for the tunnel to stay open.
   */
  readonly claimedSource: string | null;
  readonly destination: Workload;
  readonly destinationIp: string;
  readonly destinationPort: number;
}

export type InboundDecision = Decision;

export interface InboundOptions {
  nodeName: string;
  hbonePort: number;
  snapshot: () => ConfigSnapshot;
  contexts: IdentityContexts;
  bundles: () => BundleSource;
  verifier: PeerVerifier;
  logger: Logger;
  metrics: ProxyMetrics;
  /** null: no authorization configured (everything a verified peer asks for is allowed). */
  authorize: ((connection: InboundConnection) => InboundDecision) | null;
  /** Optional shared listener, for hosts where workload IPs cannot be bound (a VM's node address). */
  sharedListen?: { host: string; port: number };
  /** Open tunnels whose byte counts are flushed to metrics periodically (long-lived tunnels report while open). */
  liveMeters: Set<Flushable>;
  /** For a connection to a port declared HTTP with HTTP rules: how to decide each request; null = plain bytes. */
  inspectRequests: ((connection: InboundConnection) => RequestInspection | null) | null;
  inspector: HttpInspector | null;
  /** True when ip:port is one of the proxy's own listeners besides the configured ports (an outbound listener). */
  ownListener?: (ip: string, port: number) => boolean;
  /** Whether a connection authorized under an earlier configuration is allowed under `snapshot`. */
  recheck?: (connection: InboundConnection, inspected: boolean, snapshot: ConfigSnapshot) => boolean;
  /** A TLS handshake not finished this long after the connection was accepted is dropped (default CONNECT_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  /** Default MAX_PRINCIPALS_PER_FOREIGN_TRUST_DOMAIN. */
  maxForeignPrincipals?: number;
  /** PING every authenticated session this often (default KEEPALIVE_INTERVAL_MS)... */
  keepaliveIntervalMs?: number;
  /** ...and end one whose PONG has not come this long after (default KEEPALIVE_TIMEOUT_MS). */
  keepaliveTimeoutMs?: number;
  /** End a session whose peer has not acknowledged our SETTINGS this long after (default SETTINGS_ACK_TIMEOUT_MS). */
  settingsAckTimeoutMs?: number;
  /** The stream windows' budget shared with the proxy's other sessions (window.ts; default: one of its own). */
  streamBudget?: StreamBudget;
}

export interface RequestInspection {
  readonly decide: RequestDecider;
  /** The configuration in force, by identity: a request sent on under another than it was decided under is decided again. */
  readonly inForce: () => object;
  /** The mesh's pathNormalization in force, read per request. */
  readonly pathNormalization: () => PathNormalization;
  readonly onDenied: (decision: Decision, facts: HttpRequestFacts) => void;
  /** The HTTP version the workload's port is declared to speak; null: whichever the client speaks. */
  readonly upstreamVersion: HttpVersion | null;
  /** Writes a request's access line; null when those are off. */
  readonly logRequest: ((record: RequestLogRecord) => void) | null;
}

interface PeerInfo {
  readonly id: SpiffeId;
  /**
   * The last `forwarded` value seen on this session, under which configuration, and the address it gave when it
   * was believed (else null: the session's own address is the source).
   */
  claimText: string | undefined;
  /** The `host=` of claimText (forwardedHost). */
  claimHost: string | null;
  /** claimText's leading `for=...` element parameter, when a `;` follows it ('' otherwise): see believedClaim. */
  claimFor: string;
  claimVersion: string | undefined;
  claimAddress: string | null;
  claimIp: IpAddress | null;
  /** The session's remote address, canonical (IPv4-mapped read as IPv4), to compare with workload and host IPs. */
  readonly canonicalAddress: string;
  /** What the peer was verified against, and until when: a stream past either verifies the session again. */
  readonly bundles: BundleSource;
  readonly validUntilMs: number;
  readonly address: string;
  /** Where the session arrived (the workload's IP:15008, or a shared listener): the access line's `dst.addr`. */
  readonly localAddress: string;
  /** The address it arrived on, alone: where a workload this host has no address of is reached (a VM behind NAT). */
  readonly localIp: string | undefined;
  readonly principal: string;
  readonly namespace: string | null;
  readonly ip: IpAddress | null;
  /** The peer certificate's part of x-forwarded-client-cert (peerCertDetails), read when an inspected tunnel first needs it. */
  certDetails: string | undefined;
}

/** One local workload's HBONE server and the listeners bound to its IPs. */
interface WorkloadServer {
  workload: Workload;
  readonly server: http2.Http2SecureServer;
  readonly listeners: Map<string, net.Server>;
  /** Its addresses this host does not have, served by the shared listener (--hbone-listen) instead. */
  readonly sharedOnly: Set<string>;
  identityVersion: unknown;
}

export interface SyncReport {
  readonly bound: string[];
  readonly failed: Array<{ address: string; error: string }>;
  readonly waitingForCertificate: string[];
}

const peers = new WeakMap<http2.Http2Session, PeerInfo>();
/** Each session's TLS socket, for cutting a session whose socket Node would keep (cutSession). */
const sessionSockets = new WeakMap<http2.Http2Session, tls.TLSSocket>();

/** What a session's TLS socket has read (0 before it is known). */
function bytesReadOf(session: http2.Http2Session): number {
  return sessionSockets.get(session)?.bytesRead ?? 0;
}

/** Source label sets a peer's baggage may add to the metrics, per peer identity, and peers tracked. */
const MAX_BAGGAGE_LABELS_PER_PEER = 8;
const MAX_BAGGAGE_PEERS = 4096;
/**
 * Peer identities of each other trust domain given series of their own: a federated CA can mint any number (ours
 * issues only the registry's). Past this a peer of that trust domain is counted with unknown source labels, so one
 * partner cannot use up the node's series and leave every later workload pair unlabelled.
 */
export const MAX_PRINCIPALS_PER_FOREIGN_TRUST_DOMAIN = 1_000;

const knownIdentities = new WeakMap<ConfigSnapshot, ReadonlySet<string>>();

/** The SPIFFE IDs of the registry's workloads, built once per configuration. */
function knownIdentitiesOf(snapshot: ConfigSnapshot): ReadonlySet<string> {
  let known = knownIdentities.get(snapshot);
  if (known === undefined) knownIdentities.set(snapshot, (known = new Set(snapshot.workloads.map((workload) => workload.identity))));
  return known;
}

export class HboneInbound {
  readonly #options: InboundOptions;
  readonly #logger: Logger;
  /** Refused peers: 20 warnings every 10 s at most, then debug until the next 10 s. */
  readonly #refusalLogBudget = new LogBudget(10_000, 20);
  // By kind/namespace/name: a Pod and a WorkloadEntry may share namespace/name, and each needs its server.
  readonly #servers = new Map<string, WorkloadServer>();
  readonly #byIp = new Map<string, WorkloadServer>();
  // Open tunnels, bridged or inspected: each dial knows its connection, so a policy change can judge it.
  readonly #live = new Set<UpstreamDial>();
  /** The trust bundles each open session was last judged under by reverify(). */
  readonly #judgedWith = new WeakMap<http2.ServerHttp2Session, BundleSource>();
  #illegalPorts: ReadonlySet<number>;
  #shared: net.Server | undefined;
  /** Authenticated sessions → when their unanswered PING went out (0: none out). */
  readonly #sessions = new Map<http2.ServerHttp2Session, number>();
  /** What each session's TLS socket had read when its PING was sent (or its wait last extended). */
  readonly #readAtPing = new WeakMap<http2.ServerHttp2Session, number>();
  readonly #keepalive: NodeJS.Timeout;
  readonly #keepaliveTimeoutMs: number;
  /** How every authenticated session's stream windows are kept (window.ts): one object for all of them. */
  readonly #windows: WindowOptions;
  /** Shutting down (stopAccepting): a session that finishes its handshake now is told GOAWAY at once. */
  #draining = false;
  /** Handshakes under way or waiting per client address, and the addresses held off for costly chains (handshake-backoff.ts). */
  readonly #gate: HandshakeGate;
  /** Authenticated sessions per peer identity and address (H2_SERVER_MAX_SESSIONS_PER_PEER). */
  readonly #sessionsByPeer = new Map<string, number>();
  /** The session Node has just created for a TLS connection, until its 'secureConnection' pairs them. */
  #justCreated: http2.ServerHttp2Session | undefined;
  /** Source labels taken from baggage, by peer identity (see #sourceLabels). */
  readonly #baggageLabels = new Map<string, Map<string, WorkloadLabels>>();
  /** Other trust domains' peer identities that have series of their own (see #labels). */
  readonly #foreignPrincipals = new Map<string, Set<string>>();

  constructor(options: InboundOptions) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'hbone-inbound' });
    this.#illegalPorts = illegalUpstreamPorts(options.snapshot().mesh.ports, options.hbonePort, options.sharedListen?.port);
    this.#keepaliveTimeoutMs = options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS;
    this.#gate = new HandshakeGate({
      onHeldOff: (peer, heldOffMs) => {
        this.#options.metrics.peerRefused('HANDSHAKE_BACKOFF');
        this.#refusalLogBudget.warn(this.#logger, 'handshake-backoff', { peer, heldOffMs: Math.ceil(heldOffMs) }, 'holding off a client address whose certificate chains cost far more than a handshake to check on 15008; closing the new connection');
      },
      onAbandoned: (peer, bytes, holdMs, cut) => {
        if (holdMs > 0) this.#refusalLogBudget.warn(this.#logger, 'handshake-backoff', { peer, bytes, holdMs, cut }, 'holding off a client address that abandons its handshakes on 15008 after sending a certificate chain');
      },
    });
    this.#windows = { ackTimeoutMs: options.settingsAckTimeoutMs ?? SETTINGS_ACK_TIMEOUT_MS, budget: options.streamBudget ?? new StreamBudget(), onUnacknowledged: (session, tooMany) => this.#settingsUnacknowledged(session as http2.ServerHttp2Session, tooMany) };
    // One timer for every session, as the pool's.
    this.#keepalive = setInterval(() => this.#pingSessions(), options.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS);
    this.#keepalive.unref();
  }

  /**
   * ztunnel's server side of its PING keepalive: a client node that vanished (no FIN, no RST) would otherwise leave
   * its tunnels here, and their upstream connections to our workloads, open for as long as those stay quiet.
   */
  #pingSessions(): void {
    const now = Date.now();
    // Trust bundles the agent's event did not reach us for (it is the prompt path), and peers whose certificate expired.
    this.reverify();
    for (const [session, sentMs] of this.#sessions) {
      const peer = peers.get(session);
      if (peer !== undefined && now >= peer.validUntilMs && !session.destroyed && !session.socket.destroyed) this.#currentPeer(session, peer); // GOAWAY: its tunnels finish
      if (session.destroyed) {
        this.#sessions.delete(session);
      } else if (sentMs !== 0) {
        if (now - sentMs < this.#keepaliveTimeoutMs) continue;
        // The PING left behind whatever the session had written before it, up to the client's windows of DATA: over a
        // slow path its PONG came after the timeout and a healthy session was cut with every tunnel. A client that has
        // sent anything since (its WINDOW_UPDATEs as it reads) is there: waited for, judged again from now. A silent one
        // is cut. (One flooding PINGs and reading nothing is cut by nghttp2 once Node, its ACKs waiting, stops reading.)
        if (bytesReadOf(session) > (this.#readAtPing.get(session) ?? Number.MAX_SAFE_INTEGER)) {
          this.#waitForPong(session, now);
          continue;
        }
        this.#sessions.delete(session);
        const presented = peers.get(session)?.id.id ?? null;
        this.#logger.warn({ peer: session.socket.remoteAddress, presented, waitedMs: now - sentMs }, 'HBONE session missed its keepalive PONG; closing it and its tunnels');
        cutSession(session, `HBONE session from ${presented ?? session.socket.remoteAddress ?? 'a peer'} missed its keepalive PONG for ${now - sentMs} ms`, sessionSockets.get(session));
      } else if (!session.closed) {
        // Node sends no PING on a closed session (one draining after our GOAWAY): TCP keepalive watches that one.
        this.#waitForPong(session, now);
        const sent = session.ping((error) => {
          if (error === null && this.#sessions.has(session)) this.#sessions.set(session, 0);
        });
        if (!sent) this.#sessions.set(session, 0);
      }
    }
  }

  /** A PONG is awaited from `now`: what the session's socket has read then is what a late one is judged against. */
  #waitForPong(session: http2.ServerHttp2Session, now: number): void {
    this.#sessions.set(session, now);
    this.#readAtPing.set(session, bytesReadOf(session));
  }

  /**
   * Verifies every open session again under the trust bundles in force, when they changed: a peer they no longer
   * vouch for (its root withdrawn, its trust domain no longer federated, every key revoked) has its session and its
   * tunnels ended at once, as ztunnel aborts its connections on a revocation. Waiting for its next stream would
   * leave its open tunnels, and the requests of its inspected ones, running on a trust the node has withdrawn.
   */
  reverify(): void {
    const bundles = this.#options.bundles();
    for (const session of this.#sessions.keys()) {
      // Sessions told GOAWAY (their peer expired) are judged too: their open tunnels finish only while trusted.
      if (session.destroyed || session.socket.destroyed || this.#judgedWith.get(session) === bundles) continue;
      this.#judgedWith.set(session, bundles);
      const socket = session.socket as tls.TLSSocket;
      const peer = peers.get(session);
      const result = this.#options.verifier.stillVouched(socket, bundles, null);
      if (result.valid && (peer === undefined || result.id.id === peer.id.id)) continue;
      const code = result.valid ? 'IDENTITY_MISMATCH' : result.error.code;
      this.#options.metrics.peerRefused(code);
      let tunnels = 0;
      for (const dial of this.#live) if (dial.stream.session === session) tunnels++;
      this.#logger.warn({ peer: socket.remoteAddress, presented: result.id?.id ?? null, code, reason: result.valid ? 'identity changed' : result.error.message, tunnels }, 'HBONE session no longer verifies under the new trust bundles: closing it and its tunnels');
      peers.delete(session);
      this.#sessions.delete(session);
      cutSession(session, `HBONE session from ${result.id?.id ?? socket.remoteAddress ?? 'a peer'} no longer verifies under the new trust bundles (${code})`, sessionSockets.get(session));
    }
  }

  /** Open inbound tunnels, for readiness and shutdown. */
  get liveTunnels(): number {
    return this.#live.size;
  }

  listenerCount(): number {
    let count = this.#shared ? 1 : 0;
    for (const entry of this.#servers.values()) count += entry.listeners.size;
    return count;
  }

  /** Brings servers and listeners in line with the local workloads of a snapshot and their certificates. */
  async sync(snapshot: ConfigSnapshot): Promise<SyncReport> {
    this.#illegalPorts = illegalUpstreamPorts(snapshot.mesh.ports, this.#options.hbonePort, this.#options.sharedListen?.port);
    const report: SyncReport = { bound: [], failed: [], waitingForCertificate: [] };
    const wanted = new Map<string, Workload>();
    for (const workload of snapshot.workloadsOnNode(this.#options.nodeName)) wanted.set(`${workload.kind}/${workload.namespace}/${workload.name}`, workload);
    for (const [key, entry] of this.#servers) {
      const next = wanted.get(key);
      // The same addresses in another order are the same listeners: rebinding would reset the connections queued on them.
      if (!next || next.identity !== entry.workload.identity || !sameAddresses(next.ips, entry.workload.ips)) await this.#remove(key, entry);
    }
    for (const [key, workload] of wanted) {
      let entry = this.#servers.get(key);
      const identity = this.#options.contexts.get(workload.identity);
      if (!identity) {
        report.waitingForCertificate.push(workload.identity);
        continue;
      }
      if (!entry) {
        entry = this.#create(workload, identity.options);
        this.#servers.set(key, entry);
        for (const ip of workload.ips) this.#byIp.set(ip, entry);
      } else {
        entry.workload = workload;
        this.refreshCertificate(workload.identity);
      }
      for (const ip of workload.ips) {
        if (entry.listeners.has(ip) || entry.sharedOnly.has(ip)) continue;
        try {
          entry.listeners.set(ip, await this.#listen(entry, ip));
          report.bound.push(`${ip}:${this.#options.hbonePort}`);
        } catch (error) {
          // An address this host does not have (a VM's NATed or public address) is what the shared listener is for:
          // served there, not a failure that would keep the proxy unready and retrying for good.
          if (this.#options.sharedListen !== undefined && ((error as { cause?: NodeJS.ErrnoException }).cause?.code === 'EADDRNOTAVAIL')) {
            entry.sharedOnly.add(ip);
            this.#logger.info({ workload: `${workload.namespace}/${workload.name}`, ip }, 'workload address is not on this host: its HBONE connections come through the shared listener');
            continue;
          }
          report.failed.push({ address: `${ip}:${this.#options.hbonePort}`, error: (error as Error).message });
        }
      }
    }
    if (this.#options.sharedListen && !this.#shared) {
      const { host, port } = this.#options.sharedListen;
      const shared = net.createServer({ allowHalfOpen: false, pauseOnConnect: true }, (socket) => this.#dispatchShared(socket));
      try {
        await listenOn(shared, host, port, acceptErrorLogger(this.#logger, `shared HBONE ${formatAuthority(host, port)}`));
        this.#shared = shared;
        report.bound.push(`${host}:${port} (shared)`);
      } catch (error) {
        // Reported, and tried again by the next sync: kept, the failed server would count as bound for good.
        report.failed.push({ address: `${host}:${port} (shared)`, error: (error as Error).message });
      }
    }
    return report;
  }

  /** Swaps a workload's server certificate in place after rotation: open connections keep theirs. */
  refreshCertificate(identity: string): void {
    const context = this.#options.contexts.get(identity);
    if (!context) return;
    for (const entry of this.#servers.values()) {
      if (entry.workload.identity !== identity || entry.identityVersion === context) continue;
      entry.identityVersion = context;
      entry.server.setSecureContext(serverTlsOptions(context.options));
    }
  }

  /** Closes every tunnel whose connection `keep` no longer accepts (policy change). Returns how many closed. */
  revoke(keep: (connection: InboundConnection, inspected: boolean) => boolean): number {
    let closed = 0;
    for (const dial of this.#live) {
      // A tunnel still connecting is judged on its connection alone: it is inspected or bridged by the
      // configuration in force when it opens.
      if (!keep(dial.connection, dial.inspected || dial.connecting)) {
        // It leaves the live set at once, so a second change in quick succession neither judges nor counts it again.
        this.#live.delete(dial);
        closed++;
        if (dial.connecting) {
          // Not a tunnel yet: refused as a CONNECT the new configuration denies (401, DENY, its access line), as when
          // the change lands just as the upstream connects. Its connect phase ends here: no timer left to report later.
          HboneInbound.#stopDial(dial);
          this.#deniedWhileConnecting(dial);
          continue;
        }
        dial.revoked = true;
        dial.abort();
      }
    }
    return closed;
  }

  /**
   * Draining (shutdown): no new connections, and every session told GOAWAY NO_ERROR, which lets its open tunnels
   * finish and sends its new ones to another session (or to a refused connect, and so the peer's own error).
   */
  stopAccepting(): void {
    this.#draining = true;
    if (this.#shared) stopListening(this.#shared);
    for (const entry of this.#servers.values()) for (const listener of entry.listeners.values()) stopListening(listener);
    for (const session of this.#sessions.keys()) if (!session.closed && !session.destroyed) session.close();
  }

  /** Tunnels carrying bytes now (their upstream connected or connecting). */
  get openTunnels(): number {
    return this.#live.size;
  }

  async close(): Promise<void> {
    clearInterval(this.#keepalive);
    for (const dial of this.#live) dial.abort();
    if (this.#shared) stopListening(this.#shared);
    for (const [key, entry] of this.#servers) await this.#remove(key, entry);
  }

  #create(workload: Workload, options: tls.SecureContextOptions): WorkloadServer {
    const server = http2.createSecureServer({
      ...serverTlsOptions(options),
      requestCert: true,
      rejectUnauthorized: false,
      ALPNProtocols: HBONE_ALPN,
      allowHTTP1: false,
      // Node's default is 120 s: a client that opens connections and never finishes a handshake would hold a
      // descriptor each for two minutes, unauthenticated. A peer gives its own TLS connect this long.
      handshakeTimeout: this.#options.handshakeTimeoutMs ?? CONNECT_TIMEOUT_MS,
      maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
      streamResetBurst: H2_SERVER_STREAM_RESET_BURST,
      streamResetRate: H2_SERVER_STREAM_RESET_RATE,
      settings: {
        // The narrowest: window.ts widens it as streams open, once the peer acknowledges.
        initialWindowSize: H2_OPENING_STREAM_WINDOW_BYTES,
        maxFrameSize: H2_MAX_FRAME_BYTES,
        maxConcurrentStreams: H2_SERVER_MAX_STREAMS,
        maxHeaderListSize: H2_SERVER_MAX_HEADER_LIST_BYTES,
        enablePush: false,
      },
    });
    const entry: WorkloadServer = { workload, server, listeners: new Map(), sharedOnly: new Set(), identityVersion: this.#options.contexts.get(workload.identity) };
    server.on('session', (session) => {
      this.#justCreated = session;
      this.#onSession(session);
    });
    // On the TLS socket itself: a session's socket proxy refuses setKeepAlive (and destroy). Node's own listener of
    // this event, added first, has just created the session for it and emitted 'session': the pair is kept.
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      this.#gate.settle(socket);
      socket.setKeepAlive(true, TCP_KEEPALIVE_IDLE_MS);
      const session = this.#justCreated;
      this.#justCreated = undefined;
      if (session !== undefined) sessionSockets.set(session, socket);
    });
    server.on('stream', (stream, headers) => this.#onStream(entry, stream, headers));
    // Plaintext or garbage on 15008, an unsupported TLS version, no client certificate: dropped here.
    server.on('tlsClientError', (error, socket) => {
      // Counted, logged at debug: port scanners would flood a warn log, and the counter says when to look.
      this.#options.metrics.peerRefused('TLS_HANDSHAKE');
      this.#logger.debug({ peer: socket.remoteAddress, err: error.message }, 'TLS handshake failed on 15008');
      // A client may present its chain and fail or abandon the handshake after (no Finished, a reset): checked all the same.
      this.#judgeChain(socket, 'TLS_HANDSHAKE');
      socket.destroy();
    });
    // A TLS client that offered no ALPN (a scanner, `openssl s_client`, a health check): no HTTP/2 session will own
    // its socket. Without this listener Node answers it in HTTP/1.0, naming itself, holds it 10 s, and leaves the
    // socket without an 'error' listener (nodejs/node#54998 reports the crash that can follow).
    server.on('unknownProtocol', (socket: tls.TLSSocket) => {
      socket.on('error', ignoreStreamError);
      this.#options.metrics.peerRefused('TLS_NO_ALPN');
      // Its handshake is over (settled before the socket is destroyed, which makes its address unreadable), and its
      // chain was checked before the session was refused for its protocol.
      this.#gate.settle(socket);
      this.#judgeChain(socket, 'TLS_NO_ALPN');
      this.#logger.debug({ peer: socket.remoteAddress }, 'TLS client without HBONE ALPN (h2) on 15008');
      socket.destroy();
    });
    server.on('sessionError', (error: NodeJS.ErrnoException, session: http2.ServerHttp2Session) => this.#onSessionError(error, session));
    return entry;
  }

  /**
   * A session Node ended for a protocol error: a flood it refused (rapid resets, CONTINUATION, SETTINGS, PING), invalid
   * frames. Said at warn with the peer it came from, budgeted as refusals are (a peer reconnects and starts again),
   * and counted; a connection merely reset (ECONNRESET) stays at debug.
   */
  #onSessionError(error: NodeJS.ErrnoException, session: http2.ServerHttp2Session): void {
    const peer = peers.get(session);
    const fields = { peer: peer?.address ?? session.socket?.remoteAddress, presented: peer?.id.id ?? null, code: error.code, err: error.message };
    if (error.code?.startsWith('ERR_HTTP2') !== true) {
      this.#logger.debug(fields, 'HBONE session error');
      return;
    }
    this.#options.metrics.peerRefused('H2_PROTOCOL_ERROR');
    this.#refusalLogBudget.warn(this.#logger, 'session-error', fields, 'HBONE session closed for a protocol error');
  }

  #onSession(session: http2.ServerHttp2Session): void {
    const socket = session.socket as tls.TLSSocket;
    const bundles = this.#options.bundles();
    const result = this.#options.verifier.verify(socket, bundles, null);
    if (!result.valid) {
      // Early deny: no HTTP at all for a peer we cannot authenticate (ztunnel drops the connection).
      this.#options.metrics.peerRefused(result.error.code);
      this.#judgeChain(socket, result.error.code);
      // Anyone can cause this as fast as handshakes go (a client without a certificate): warnings are budgeted, the
      // rest go to debug, and the counter has them all.
      this.#refusalLogBudget.warn(this.#logger, 'refused', { peer: socket.remoteAddress, presented: result.id?.id ?? null, code: result.error.code, reason: result.error.message }, 'refusing HBONE peer');
      refuseSession(session, refusalReason(result));
      return;
    }
    if (isInfrastructurePath(result.id.path)) {
      // A node's or the CA's certificate, valid but no workload's: a node holding its own could otherwise reach any
      // workload under an identity no policy can name (principals must be TD/ns/NS/sa/SA), past every DENY.
      this.#options.metrics.peerRefused('NOT_A_WORKLOAD');
      this.#refusalLogBudget.warn(this.#logger, 'refused', { peer: socket.remoteAddress, presented: result.id.id, code: 'NOT_A_WORKLOAD', reason: 'a node or CA identity, not a workload' }, 'refusing HBONE peer');
      refuseSession(session, 'NOT_A_WORKLOAD');
      return;
    }
    const address = socket.remoteAddress ?? 'unknown';
    const namespace = namespaceOfPath(result.id.path);
    if (namespace === AMBIGUOUS_NAMESPACE) {
      // Istio matches `namespaces` as `.*/ns/NS/.*` on the principal, so such an ID is in two namespaces at once;
      // one namespace per peer cannot hold that, and a DENY on the other would not fire.
      this.#options.metrics.peerRefused('AMBIGUOUS_NAMESPACE');
      this.#logger.warn({ peer: socket.remoteAddress, presented: result.id.id }, 'refusing HBONE peer: its SPIFFE ID names more than one namespace (/ns/NAME/ twice)');
      refuseSession(session, 'SPIFFE ID names more than one namespace');
      return;
    }
    const peerKey = `${result.id.id} ${address}`;
    const held = this.#sessionsByPeer.get(peerKey) ?? 0;
    if (held >= H2_SERVER_MAX_SESSIONS_PER_PEER) {
      this.#options.metrics.peerRefused('TOO_MANY_SESSIONS');
      this.#refusalLogBudget.warn(this.#logger, 'too-many-sessions', { peer: address, presented: result.id.id, sessions: held }, `refusing HBONE peer: it holds ${held} sessions from this address already`);
      refuseSession(session, 'TOO_MANY_SESSIONS', NGHTTP2_ENHANCE_YOUR_CALM);
      return;
    }
    this.#sessionsByPeer.set(peerKey, held + 1);
    session.once('close', () => countDown(this.#sessionsByPeer, peerKey));
    peers.set(session, {
      id: result.id, bundles, validUntilMs: result.notAfterMs, address, canonicalAddress: canonicalIp(address) ?? address,
      localAddress: socket.localAddress === undefined ? 'unknown' : formatAuthority(socket.localAddress, socket.localPort ?? 0),
      localIp: socket.localAddress === undefined ? undefined : normalizeIp(socket.localAddress),
      principal: result.id.id.slice('spiffe://'.length), namespace, ip: parseIp(address), claimText: undefined, claimHost: null, claimFor: '', claimVersion: undefined, claimAddress: null, claimIp: null, certDetails: undefined,
    });
    session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES);
    trackWindows(session, this.#windows);
    this.#judgedWith.set(session, bundles);
    this.#sessions.set(session, 0);
    session.once('close', () => this.#sessions.delete(session));
    // Its handshake began before the listeners closed: told to go elsewhere, as the others were.
    if (this.#draining) session.close();
  }

  /**
   * A peer that has left our SETTINGS (a narrower stream window) unacknowledged past the deadline, or too many of them:
   * its session and tunnels are ended, GOAWAY SETTINGS_TIMEOUT (RFC 9113 §6.5.3). Not while our own writes are backed
   * up (the SETTINGS may still be queued behind them, or in nghttp2's queue): it gets another period then.
   */
  #settingsUnacknowledged(session: http2.ServerHttp2Session, tooMany: boolean): boolean {
    if (session.destroyed) return true;
    const socket = sessionSockets.get(session);
    if (!tooMany && (session.state.outboundQueueSize ?? 0) > 0) return false;
    const peer = peers.get(session);
    this.#options.metrics.peerRefused('SETTINGS_TIMEOUT');
    const presented = peer?.id.id ?? null;
    this.#refusalLogBudget.warn(this.#logger, 'settings-timeout', { peer: peer?.address ?? session.socket?.remoteAddress, presented, code: 'SETTINGS_TIMEOUT', tooMany }, 'HBONE session did not acknowledge our SETTINGS; closing it and its tunnels (SETTINGS_TIMEOUT)');
    this.#sessions.delete(session);
    cutSession(session, `HBONE session from ${presented ?? session.socket?.remoteAddress ?? 'a peer'} did not acknowledge our SETTINGS ${tooMany ? '(too many outstanding)' : `within ${this.#windows.ackTimeoutMs} ms`}`, socket, NGHTTP2_SETTINGS_TIMEOUT);
    return true;
  }

  /**
   * The peer of a session whose verification still holds: a session kept busy never ends by itself, so one whose
   * client certificate has expired, or that was verified against trust bundles since replaced (a root withdrawn,
   * a federation ended), is verified again before it opens another tunnel; one that no longer verifies is told
   * GOAWAY (its open tunnels finish) and gets undefined.
   */
  #currentPeer(session: http2.ServerHttp2Session, peer: PeerInfo): PeerInfo | undefined {
    const bundles = this.#options.bundles();
    if (peer.bundles === bundles && Date.now() < peer.validUntilMs) return peer;
    const socket = session.socket as tls.TLSSocket;
    const result = this.#options.verifier.verify(socket, bundles, null);
    if (!result.valid || result.id.id !== peer.id.id) {
      this.#options.metrics.peerRefused(result.valid ? 'IDENTITY_MISMATCH' : result.error.code);
      this.#logger.warn({ peer: peer.address, presented: peer.id.id, code: result.valid ? 'IDENTITY_MISMATCH' : result.error.code, reason: result.valid ? 'identity changed' : result.error.message }, 'HBONE session no longer verifies: refusing its new streams (GOAWAY)');
      peers.delete(session);
      if (!session.closed) session.close();
      return undefined;
    }
    const current: PeerInfo = { ...peer, bundles, validUntilMs: result.notAfterMs };
    peers.set(session, current);
    return current;
  }

  #onStream(entry: WorkloadServer, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    // Before any phase: the peer may reset the stream (or its session may fail) while we still decide or
    // connect upstream, and an 'error' with no listener would throw and take the whole proxy down.
    stream.on('error', ignoreStreamError);
    // Node emits 'stream' a tick after the HEADERS: a stream reset or a session destroyed meanwhile has no session
    // left, and taking it for one threw out of the event (the proxy exited; review R, under clients' resets).
    const session = stream.session as http2.ServerHttp2Session | undefined;
    if (session === undefined || stream.destroyed) return;
    streamOpened(session);
    stream.once('close', () => streamClosed(session));
    const known = peers.get(session);
    const peer = known === undefined ? undefined : this.#currentPeer(session, known);
    if (peer === undefined) {
      stream.close(known === undefined ? NGHTTP2_CANCEL : NGHTTP2_REFUSED_STREAM);
      return;
    }
    // Phase 1: the request itself.
    if (headers[HTTP2_HEADER_METHOD] !== 'CONNECT') return this.#refuse(stream, 400, peer, entry.workload, 'not a CONNECT request');
    const authorityText = headers[HTTP2_HEADER_AUTHORITY];
    const authority = typeof authorityText === 'string' ? parseAuthority(authorityText) : null;
    if (authority === null || authority.family === 0) return this.#refuse(stream, 400, peer, entry.workload, `malformed authority ${JSON.stringify(authorityText ?? null)}`);
    if (!entry.workload.ips.includes(authority.host)) {
      return this.#refuse(stream, 400, peer, entry.workload, `authority ${authorityText as string} is not the workload this connection reached (${entry.workload.namespace}/${entry.workload.name})`);
    }
    // Phase 2: the local workload, as the configuration has it now.
    const snapshot = this.#options.snapshot();
    const destination = snapshot.workloadByIp(authority.host);
    if (destination === undefined || destination.node !== this.#options.nodeName) return this.#refuse(stream, 503, peer, entry.workload, `no workload ${authority.host} on node ${this.#options.nodeName}`);
    // The address went to a workload of another identity (a pod IP reused) before the reconcile closed this server:
    // the peer authenticated the certificate of the one before, so the tunnel must not reach the new one.
    if (destination.identity !== entry.workload.identity) return this.#refuse(stream, 503, peer, entry.workload, `${authority.host} is now ${destination.namespace}/${destination.name} (${destination.identity}), not the identity this connection saw`);
    // Where the upstream is dialled. A workload address this host does not have (a VM's NATed or public one, served by
    // the shared listener) is not dialled: the connection would leave the host for it. Its application is on the
    // address the session arrived on, as ztunnel always dials the local address a connection arrived on.
    const dialHost = entry.sharedOnly.size > 0 && entry.sharedOnly.has(authority.host) && peer.localIp !== undefined ? peer.localIp : authority.host;
    // One of the proxy's own listeners: 15001/15006/15008 on any address (ztunnel's set), or one bound to the address
    // dialled (an outbound listener, the admin or metrics server): the CONNECT would loop, or lend the workload's
    // outbound identity to the peer. Asked of the address dialled, not the one named: a NATed address is dialled on
    // the node's, where the metrics and readiness servers listen.
    if (this.#illegalPorts.has(authority.port) || this.#ownListener(authority.host, authority.port) || (dialHost !== authority.host && this.#ownListener(dialHost, authority.port))) {
      return this.#refuse(stream, 503, peer, destination, dialHost === authority.host ? `port ${authority.port} belongs to the proxy itself` : `port ${authority.port} belongs to the proxy itself (${authority.host} is dialled at ${dialHost}, this host's address)`);
    }
    const forwarded = headers.forwarded;
    const claimed = typeof forwarded === 'string' ? believedClaim(peer, forwarded, snapshot) : null;
    const connection: InboundConnection = {
      peer: peer.id,
      principal: peer.principal,
      peerNamespace: peer.namespace,
      peerAddress: peer.address,
      peerIp: claimed === null ? peer.ip : peer.claimIp,
      claimedSource: claimed,
      destination,
      destinationIp: authority.host,
      destinationPort: authority.port,
    };
    // Phase 3: authorization.
    const authorize = this.#options.authorize;
    if (authorize !== null) {
      let decision: InboundDecision;
      try {
        decision = authorize(connection);
      } catch {
        decision = DENY_ON_ERROR; // fail closed
      }
      if (!decision.allow) {
        const labels = this.#labels(peer, destination, headers, snapshot, claimed, authority.port);
        this.#options.metrics.failed(labels, 'DENY');
        this.#failedAccess(peer, destination, `${authority.host}:${authority.port}`, 0, 'POLICY_DENIED', decision.reason, 'DENY', labels);
        return this.#refuse(stream, 401, peer, destination, decision.reason);
      }
    }
    // Phase 4: upstream (at dialHost), and only then 200. One UpstreamDial per tunnel, found by shared listeners in an
    // EmitterSlot on the stream and the socket: closures here would keep this whole scope, the request's headers among
    // it, for the tunnel's life.
    const upstream = net.connect({ host: dialHost, port: authority.port, allowHalfOpen: true, noDelay: true });
    const dial = new UpstreamDial(this, stream, upstream, peer, connection, this.#labels(peer, destination, headers, snapshot, claimed, authority.port), snapshot);
    dials.set(upstream, dial);
    dials.set(stream, dial);
    // Live from now: a policy change while the upstream connects must reach this tunnel too (revoke), or it would
    // open on a decision the new configuration no longer makes.
    this.#live.add(dial);
    dial.timer = setTimeout(HboneInbound.#onDialTimeout, CONNECT_TIMEOUT_MS, dial);
    // The connect phase ends in one of three ways (connected, failed, abandoned by the peer); each stops the others.
    upstream.on('error', HboneInbound.#onDialError);
    upstream.on('connect', HboneInbound.#onDialConnect);
    // A peer that resets its stream while we are still connecting must not leave the connect pending, nor its
    // timer: destroy() without an error emits neither 'error' nor 'connect', and the timer would later count and
    // log a refusal for a tunnel that no longer exists.
    stream.on('close', HboneInbound.#onDialAbandoned);
  }

  /** Ends the connect phase: its timer and its three listeners go. */
  static #stopDial(dial: UpstreamDial): void {
    clearTimeout(dial.timer);
    dial.timer = undefined;
    dial.upstream.off('error', HboneInbound.#onDialError);
    dial.upstream.off('connect', HboneInbound.#onDialConnect);
    dial.stream.off('close', HboneInbound.#onDialAbandoned);
  }

  static #onDialError(this: net.Socket, error: Error): void {
    const dial = dials.of(this);
    dial.inbound.#dialFailed(dial, error);
  }

  static #onDialTimeout(dial: UpstreamDial): void {
    dial.inbound.#dialFailed(dial, new AmbitError('UPSTREAM_CONNECT', `connect timed out after ${CONNECT_TIMEOUT_MS} ms`));
  }

  static #onDialAbandoned(this: http2.ServerHttp2Stream): void {
    const dial = dials.of(this);
    HboneInbound.#stopDial(dial);
    dial.inbound.#abandoned(dial);
  }

  /**
   * The peer reset its CONNECT while the upstream connected: the workload saw a connection come and go, so it is
   * counted as a failed one and given its access line, as the source side counts its own (a peer cancelling CONNECTs
   * in the same write had them reach the workload with no trace here).
   */
  #abandoned(dial: UpstreamDial): void {
    this.#live.delete(dial);
    dial.upstream.destroy();
    this.#options.metrics.failed(dial.labels, 'CONNECT');
    const { destination, destinationIp, destinationPort } = dial.connection;
    this.#failedAccess(dial.peer, destination, `${destinationIp}:${destinationPort}`, dial.startedMs, 'DOWNSTREAM_RESET', 'the peer reset the CONNECT while its upstream connection was being made', 'CONNECT', dial.labels);
  }

  static #onDialConnect(this: net.Socket): void {
    const dial = dials.of(this);
    HboneInbound.#stopDial(dial);
    const { stream } = dial;
    if (stream.destroyed || stream.closed) {
      dial.inbound.#abandoned(dial);
      return;
    }
    // Another configuration came into force while the upstream connected, before a policy change's revoke() ran
    // (it waits for the previous reconcile): decide again under it, before the 200. The tunnel will be inspected
    // if that configuration has HTTP rules for the port (#open asks it), so that side is taken as covered here.
    const inbound = dial.inbound;
    const now = inbound.#options.snapshot();
    const decidedWith = dial.decidedWith;
    dial.decidedWith = null;
    if (now !== decidedWith && inbound.#options.recheck !== undefined && !inbound.#options.recheck(dial.connection, true, now)) {
      inbound.#live.delete(dial);
      inbound.#deniedWhileConnecting(dial);
      return;
    }
    // A wider stream window, if the streams now open allow it: asked for before the 200, so the peer has it first.
    if (stream.session !== undefined) streamAnswered(stream.session);
    // Raw headers, a new array each time (Node appends `date` to it): an object would be copied first.
    stream.respond([HTTP2_HEADER_STATUS, '200']);
    inbound.#open(dial);
  }

  /** A CONNECT whose upstream was connecting when a configuration that denies it came into force: 401, as a denial. */
  #deniedWhileConnecting(dial: UpstreamDial): void {
    dial.upstream.destroy();
    const { destination, destinationIp, destinationPort } = dial.connection;
    const reason = 'the configuration that came into force while the upstream connected does not allow it';
    this.#options.metrics.failed(dial.labels, 'DENY');
    this.#failedAccess(dial.peer, destination, `${destinationIp}:${destinationPort}`, dial.startedMs, 'POLICY_DENIED', reason, 'DENY', dial.labels);
    this.#refuse(dial.stream, 401, dial.peer, destination, reason);
  }

  #dialFailed(dial: UpstreamDial, error: Error): void {
    HboneInbound.#stopDial(dial);
    this.#live.delete(dial);
    dial.upstream.destroy();
    this.#options.metrics.failed(dial.labels, 'CONNECT');
    const { destination, destinationIp, destinationPort } = dial.connection;
    const reason = `upstream ${destinationIp}:${destinationPort}: ${error.message}`;
    this.#failedAccess(dial.peer, destination, `${destinationIp}:${destinationPort}`, dial.startedMs, 'UPSTREAM_CONNECT', reason, 'CONNECT', dial.labels);
    this.#refuse(dial.stream, 503, dial.peer, destination, reason);
  }

  /**
   * The access line of a CONNECT that never became a tunnel (a policy denied it, or its upstream could not be
   * reached): one line per connection, failures included, as ztunnel's "connection complete" with its error.
   */
  #failedAccess(peer: PeerInfo, destination: Workload, address: string, startedMs: number, code: 'POLICY_DENIED' | 'UPSTREAM_CONNECT' | 'DOWNSTREAM_RESET', message: string, flags: 'DENY' | 'CONNECT', labels: TunnelLabels): void {
    if (!accessLogEnabled(this.#logger, true)) return;
    accessLog(this.#logger, {
      direction: 'inbound',
      src: { addr: peer.address, identity: peer.id.id, workload: labels.source.workload, namespace: labels.source.namespace, cluster: labels.source.cluster },
      dst: { addr: peer.localAddress, hbone_addr: address, workload: destination.name, namespace: destination.namespace, identity: destination.identity, service: labels.service.hostname, cluster: destination.cluster },
      bytesSent: 0,
      bytesRecv: 0,
      durationMs: startedMs === 0 ? 0 : Date.now() - startedMs,
      error: { code, message },
      responseFlags: flags,
    });
  }

  /** The upstream answered and the peer has its 200: count the tunnel, then carry bytes (or inspect requests). */
  #open(dial: UpstreamDial): void {
    dial.meter = this.#options.metrics.open(dial.labels);
    this.#options.liveMeters.add(dial);
    dial.connecting = false;
    const { stream, upstream } = dial;
    // Ports declared HTTP whose workload has HTTP rules: every request is decided; other tunnels are bytes. Asked
    // now, of the configuration in force now: a change while the upstream connected was judged before the 200.
    const decider = this.#options.inspectRequests?.(dial.connection) ?? null;
    if (decider !== null && this.#options.inspector !== null) {
      dial.inspected = true;
      dial.streamBytes = countStreamBytes(stream);
      const clientCert = clientCertElement(dial.connection.destination.identity, HboneInbound.#certDetails(dial));
      void this.#options.inspector.inspect(stream, upstream, decider, clientCert, dial.meter, dial.streamBytes).then(() => this.#finish(dial, undefined, undefined));
      return;
    }
    new Bridge(upstream, stream, (result) => this.#finish(dial, result.error, result.failedSide));
  }

  /** The peer certificate's part of x-forwarded-client-cert: read once per session, and only by inspected tunnels. */
  static #certDetails(dial: UpstreamDial): string {
    const peer = dial.peer;
    if (peer.certDetails === undefined) {
      const leaf = (dial.stream.session?.socket as tls.TLSSocket | undefined)?.getPeerCertificate(true);
      peer.certDetails = peerCertDetails(leaf?.raw ?? null, peer.id.id);
    }
    return peer.certDetails;
  }

  #finish(dial: UpstreamDial, error: Error | undefined, side: 'socket' | 'stream' | undefined): void {
    this.#live.delete(dial);
    this.#options.liveMeters.delete(dial);
    const { upstream, peer, labels } = dial;
    const { destination, destinationIp, destinationPort } = dial.connection;
    // Established, so whatever ends it is not a connection failure: `-`, as ztunnel records a tunnel that ends in an
    // error (its response flags name why a connection could not be made). The access line says what broke. A tunnel
    // a policy change closed is a denial, late (ztunnel's AuthorizationPolicyLateRejection): DENY.
    const flags = dial.revoked ? 'DENY' : '-';
    const sent = dial.streamBytes === null ? upstream.bytesRead : dial.streamBytes.sent;
    const received = dial.streamBytes === null ? upstream.bytesWritten : dial.streamBytes.received;
    dial.meter?.close(sent, received, flags);
    const failure = dial.revoked
      ? { code: 'POLICY_REVOKED', message: 'closed: the configuration that came into force no longer allows this connection' }
      : error ? { code: side === 'socket' ? 'UPSTREAM_RESET' : 'TUNNEL_RESET', message: error.message } : undefined;
    if (!accessLogEnabled(this.#logger, failure !== undefined)) return;
    accessLog(this.#logger, {
      direction: 'inbound',
      src: { addr: peer.address, identity: peer.id.id, workload: labels.source.workload, namespace: labels.source.namespace, cluster: labels.source.cluster },
      // As ztunnel: the L4 address the session arrived on, and the CONNECT's authority.
      dst: { addr: peer.localAddress, hbone_addr: formatAuthority(destinationIp, destinationPort), workload: destination.name, namespace: destination.namespace, identity: destination.identity, service: labels.service.hostname, cluster: destination.cluster },
      bytesSent: sent,
      bytesRecv: received,
      durationMs: Date.now() - dial.startedMs,
      error: failure,
      responseFlags: flags,
    });
  }

  #labels(peer: PeerInfo, destination: Workload, headers: http2.IncomingHttpHeaders, snapshot: ConfigSnapshot, claimed: string | null, port: number): TunnelLabels {
    // believedClaim has read this stream's `forwarded` into the session's memo, its `host=` with it.
    const host = typeof headers.forwarded === 'string' ? peer.claimHost : null;
    // The registry's identities are few and known; any other (a sibling CA under a shared root can mint identities of
    // our own trust domain too) counts against its trust domain's cap, as a federated one's does.
    const labelled = (peer.id.trustDomain === snapshot.mesh.trustDomain && knownIdentitiesOf(snapshot).has(peer.id.id)) || this.#foreignLabelled(peer.id);
    return {
      reporter: 'destination',
      // The namespace and baggage a foreign peer's labels come from are its own to choose too.
      source: labelled ? this.#sourceLabels(peer, headers, snapshot, claimed) : UNKNOWN_WORKLOAD,
      sourcePrincipal: labelled ? peer.id.id : 'unknown',
      destination: labelsOfWorkload(destination),
      destinationPrincipal: destination.identity,
      service: inboundService(routingTableOf(snapshot), destination, host, port, peer.namespace),
      connectionSecurityPolicy: 'mutual_tls',
    };
  }

  /** Whether a peer identity the registry does not name is among the first MAX_PRINCIPALS_PER_FOREIGN_TRUST_DOMAIN seen of its trust domain. */
  #foreignLabelled(id: SpiffeId): boolean {
    let seen = this.#foreignPrincipals.get(id.trustDomain);
    if (seen === undefined) this.#foreignPrincipals.set(id.trustDomain, (seen = new Set()));
    if (seen.has(id.id)) return true;
    if (seen.size >= (this.#options.maxForeignPrincipals ?? MAX_PRINCIPALS_PER_FOREIGN_TRUST_DOMAIN)) return false;
    seen.add(id.id);
    return true;
  }

  /**
   * The source's metric labels: the registry's, for the workload at the believed source address with the session's
   * identity (as ztunnel's registry-derived source). Otherwise what the peer's baggage says (a ztunnel peer from a
   * cluster this registry does not list: ztunnel's derived source), only in the peer's own namespace and at most
   * MAX_BAGGAGE_LABELS_PER_PEER label sets per peer identity: each is a series kept for the proxy's life, and a peer
   * writing a new one on every CONNECT would fill the series store for the whole node. Else only the namespace of
   * the peer's identity.
   */
  #sourceLabels(peer: PeerInfo, headers: http2.IncomingHttpHeaders, snapshot: ConfigSnapshot, claimed: string | null): WorkloadLabels {
    const known = snapshot.workloadByIp(claimed ?? peer.canonicalAddress);
    if (known !== undefined && known.identity === peer.id.id) return labelsOfWorkload(known);
    const fallback = labelsOfNamespace(peer.namespace);
    if (peer.namespace === null) return fallback;
    const baggage = parseBaggage(headers.baggage);
    if (baggage === null || baggage.workload === undefined || (baggage.namespace !== undefined && baggage.namespace !== peer.namespace)) return fallback;
    const derived = labelsOfBaggage(baggage, peer.namespace);
    let seen = this.#baggageLabels.get(peer.id.id);
    if (seen === undefined) {
      // Full: start over rather than freeze out the peers that come later (the label sets stay bounded per peer,
      // and the series store has its own bound).
      if (this.#baggageLabels.size >= MAX_BAGGAGE_PEERS) this.#baggageLabels.clear();
      this.#baggageLabels.set(peer.id.id, (seen = new Map()));
    }
    const taken = seen.get(derived.key);
    if (taken !== undefined) return taken;
    if (seen.size >= MAX_BAGGAGE_LABELS_PER_PEER) return fallback;
    seen.set(derived.key, derived);
    return derived;
  }

  /** Whether ip:port is one of the proxy's own listeners besides the configured ports. */
  #ownListener(ip: string, port: number): boolean {
    return this.#options.ownListener?.(ip, port) === true;
  }

  /** Answers a CONNECT with an error status and logs it (a denial's metrics and access line are its caller's). */
  #refuse(stream: http2.ServerHttp2Stream, status: number, peer: PeerInfo, workload: Workload, reason: string): void {
    const fields = { status, peer: peer.id.id, peerAddress: peer.address, workload: `${workload.namespace}/${workload.name}`, reason };
    // One per stream, which a peer opens at will (200 a session): a policy's refusal is logged by the authorizer
    // already, the others within the refusals' budget.
    if (status === 401) this.#logger.debug(fields, 'HBONE CONNECT refused');
    else this.#refusalLogBudget.warn(this.#logger, 'connect-refused', fields, 'HBONE CONNECT refused');
    if (stream.destroyed || stream.closed || stream.headersSent) return;
    stream.respond({ [HTTP2_HEADER_STATUS]: status }, { endStream: true });
  }

  #listen(entry: WorkloadServer, ip: string): Promise<net.Server> {
    // The secure server does the TLS; a plain listener per IP hands it the sockets, so one server can
    // take connections from several addresses (its IPs, and the shared listener).
    const listener = net.createServer({ pauseOnConnect: false }, (socket) => {
      this.#admitHandshake(socket, entry);
    });
    return listenOn(listener, ip, this.#options.hbonePort, acceptErrorLogger(this.#logger, `HBONE ${formatAuthority(ip, this.#options.hbonePort)}`)).then(() => listener);
  }

  /**
   * A new connection begins its TLS handshake on the workload's server, now or once one of its address's handshakes
   * under way ends (handshake-backoff.ts, PARALLEL_HANDSHAKES): at most H2_SERVER_MAX_HANDSHAKES_PER_ADDRESS under way
   * or waiting from one client address, H2_SERVER_MAX_HANDSHAKES in all. One over, or from a held-off address, is
   * closed at once, counted, never parsed.
   */
  #admitHandshake(socket: net.Socket, entry: WorkloadServer): void {
    if (!this.#gate.admit(socket)) return;
    const pending = this.#gate.underWay(socket);
    if (pending >= H2_SERVER_MAX_HANDSHAKES_PER_ADDRESS || this.#gate.total >= H2_SERVER_MAX_HANDSHAKES) {
      this.#options.metrics.peerRefused('HANDSHAKE_LIMIT');
      this.#refusalLogBudget.warn(this.#logger, 'handshake-limit', { peer: socket.remoteAddress, pending, total: this.#gate.total }, 'too many TLS handshakes under way on 15008; closing the new connection');
      socket.destroy();
      return;
    }
    this.#gate.begin(socket, () => entry.server.emit('connection', socket));
  }

  /**
   * A handshake that did not end in an accepted peer: a costly chain it presented (one OpenSSL took far more than a
   * handshake to check) counts its address towards a hold-off (handshake-backoff.ts).
   */
  #judgeChain(socket: tls.TLSSocket, code: string): void {
    // A socket already reset has no address to count against: its connection's close counts its bytes instead.
    if (socket.remoteAddress === undefined) return;
    const costly = costlyChain(socket.getPeerCertificate(true));
    if (costly === null) return;
    const { holdMs, cut } = this.#gate.refused(socket);
    if (holdMs > 0) this.#refusalLogBudget.warn(this.#logger, 'handshake-backoff', { peer: socket.remoteAddress, code, costly, holdMs, cut }, 'holding off a client address whose certificate chains cost far more than a handshake to check on 15008');
  }

  #dispatchShared(socket: net.Socket): void {
    const local = socket.localAddress ? normalizeIp(socket.localAddress) : undefined;
    let entry = local ? this.#byIp.get(local) : undefined;
    // The node's only workload, when it is the only one configured: one waiting for its certificate has no server
    // yet, and its connections must not be handed the other's.
    if (!entry && this.#servers.size === 1 && this.#options.snapshot().workloadsOnNode(this.#options.nodeName).length === 1) entry = this.#servers.values().next().value;
    if (!entry) {
      // Counted, and at debug: a port scan of the node address must not flood the log.
      this.#options.metrics.peerRefused('UNATTRIBUTED');
      this.#logger.debug({ peer: socket.remoteAddress, local }, 'shared HBONE listener: cannot tell which workload the connection is for; closing it');
      socket.destroy();
      return;
    }
    socket.resume();
    this.#admitHandshake(socket, entry);
  }

  async #remove(key: string, entry: WorkloadServer): Promise<void> {
    this.#servers.delete(key);
    for (const ip of entry.workload.ips) if (this.#byIp.get(ip) === entry) this.#byIp.delete(ip);
    for (const listener of entry.listeners.values()) stopListening(listener);
    entry.server.close();
  }
}

const dials = new EmitterSlot<UpstreamDial>('ambit.upstream-dial');

/**
 * An authorized CONNECT from its upstream connect to its close: what the connect phase's listeners, the byte flush
 * (Flushable), a policy revocation (its connection, and whether its requests are inspected) and the access line need. The connect timer
 * is a plain one, cleared and let go on the answer: upstream.setTimeout() would keep its Timeout and 'timeout'
 * listener on the socket for the tunnel's whole life, and ten thousand idle tunnels keep all of them.
 */
class UpstreamDial implements Flushable {
  readonly inbound: HboneInbound;
  readonly stream: http2.ServerHttp2Stream;
  readonly upstream: net.Socket;
  readonly peer: PeerInfo;
  /** The destination workload, its IP and port: what the peer asked for and was authorized to reach. */
  readonly connection: InboundConnection;
  readonly labels: TunnelLabels;
  readonly startedMs = Date.now();
  meter: TunnelMeter | null = null;
  /** Its requests are decided one by one (an HTTP port with HTTP rules) rather than its bytes bridged. */
  inspected = false;
  /** An inspected tunnel's bytes, counted on its stream (a bridged one's are its upstream socket's, byte for byte). */
  streamBytes: StreamBytes | null = null;
  /** Still connecting upstream: whether it will be inspected or bridged is decided when it opens. */
  connecting = true;
  /** Closed by a policy change (revoke): its access line and close are a late DENY. */
  revoked = false;
  /** The connect timer, set and stopped by HboneInbound's dial handlers. */
  timer: NodeJS.Timeout | undefined = undefined;
  /** The configuration the stream was authorized by, until it opens (then let go: a tunnel may outlive many). */
  decidedWith: ConfigSnapshot | null;

  constructor(inbound: HboneInbound, stream: http2.ServerHttp2Stream, upstream: net.Socket, peer: PeerInfo, connection: InboundConnection, labels: TunnelLabels, decidedWith: ConfigSnapshot) {
    this.inbound = inbound;
    this.decidedWith = decidedWith;
    this.stream = stream;
    this.upstream = upstream;
    this.peer = peer;
    this.connection = connection;
    this.labels = labels;
  }

  /** Reporter is the destination: "sent" is what went back to the peer, "received" what came from it. */
  flush(): void {
    const counted = this.streamBytes;
    if (counted === null) this.meter?.update(this.upstream.bytesRead, this.upstream.bytesWritten);
    else this.meter?.update(counted.sent, counted.received);
  }

  /** Closes both sides now (a policy change revoked the tunnel, or shutdown), bridged or inspected alike. */
  abort(): void {
    cancelStream(this.stream);
    cutSocket(this.upstream);
  }
}

/** Errors of a stream not yet bridged end it, and nothing else: its refusal or its Bridge reports the outcome. */
function ignoreStreamError(): void {}

/** Node retries accepting on its own; the failure shows in the connection counts, not as a crash. */
function ignoreListenerError(): void {}

function serverTlsOptions(options: tls.SecureContextOptions): tls.SecureContextOptions {
  return { ...options, minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS, ecdhCurve: TLS_GROUPS };
}

function sameAddresses(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((ip) => b.includes(ip));
}

/** An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, a dual-stack socket's view) as the IPv4 address it is. */
export function normalizeIp(address: string): string {
  return address.startsWith('::ffff:') && net.isIPv4(address.slice(7)) ? address.slice(7) : address;
}

export function listenOn(server: net.Server, host: string, port: number, onAcceptError: (error: Error) => void = ignoreListenerError): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => reject(new AmbitError('PROXY_BIND', `cannot listen on ${formatAuthority(host, port)}: ${error.code ?? error.message}`, { cause: error }));
    server.once('error', onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', onError);
      // A bound listener can still fail to accept (EMFILE under a connection flood): never an unhandled 'error', and
      // said (rate-limited) where a logger is given.
      server.on('error', onAcceptError);
      resolve();
    });
  });
}

/**
 * Stops accepting at once and frees the address; connections already accepted are left to their owners
 * (Node's close callback waits for them, which would stall a reconfiguration behind one open tunnel).
 */
export function stopListening(server: net.Server): void {
  if (server.listening) server.close();
}
