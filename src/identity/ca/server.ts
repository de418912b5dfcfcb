// The CA's HTTPS API (TLS 1.3): join-token attestation, node-authorized CSR signing, the SPIFFE bundle
// endpoint and the bundle set (own plus federated) that proxies trust.
//
//   POST /v1/attest   {node, token, csr}             → node SVID (no client certificate needed)
//   POST /v1/sign     {spiffeId, csr, ttlSeconds?}   → SVID; caller authenticates with its node SVID
//   GET  /bundle                                     → this trust domain's SPIFFE bundle (federation endpoint)
//   GET  /v1/bundles                                 → {"trust_domains": {...}} own and federated bundles
//
// A node may obtain only its own node identity and the identities of workloads the registry places on
// it (Istio's NodeAuthorizer rule); every decision is written to the audit log with who asked for what.
import * as https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { watchFile, unwatchFile } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { AmbitError, toAmbitError } from '../../errors.ts';
import type { ErrorCode } from '../../errors.ts';
import { nodeId, parseNodeId, parseSpiffeId } from '../spiffe-id.ts';
import type { SpiffeId } from '../spiffe-id.ts';
import { BundleSet, SIGNING_AUTHORITY_HEADER, bundlesEqual, encodeBundle } from '../bundle.ts';
import type { TrustBundle } from '../bundle.ts';
import { certificatesToPem, crossCertify, exportPrivateKeyPem, generateKeyPair, issueLeaf, loadSvid, publicKeyDigest, readCsr, subjectKeyIdOf } from '../svid.ts';
import type { Certificate, Svid } from '../svid.ts';
import { serverTlsOptions, verifyPeer, verifyPeerCertificate } from '../spiffe-tls.ts';
import { FederationClient } from '../federation.ts';
import { timerDelayMs, WALL_CLOCK_CHECK_MS, WALL_CLOCK_SLACK_MS } from '../timers.ts';
import type { FederationPeer } from '../federation.ts';
import { caStateFile, loadCa } from './store.ts';
import type { CaState, LoadedAuthority } from './store.ts';
import { consumeJoinToken, joinTokenKnown, recordTokenAnswer, restoreJoinToken } from './tokens.ts';
import type { JoinTokenClaim, TokenAnswer } from './tokens.ts';
import { admitNodeCertificate, answerStands, nodeCertificateRefusal, recordAttested, recordRenewal } from './nodes.ts';
import { acceptErrorLogger, LogBudget } from '../../observe/log.ts';
import { DEFAULT_SIGN_BUDGET, SignBudget } from './sign-budget.ts';
import type { SignBudgetLimits } from './sign-budget.ts';
import type { Logger } from '../../observe/log.ts';
import { makeDirsSync } from '../../mkdir.ts';
import { limitConnectionsPerPeer } from '../../peer-connections.ts';
import { costlyChain, HandshakeGate } from '../../handshake-backoff.ts';

/** Requests are a CSR and a few fields; refuse anything larger before reading it. */
const MAX_BODY_BYTES = 64 * 1024;
const CA_SERVER_PATH = '/ambit/ca';
/** DIR/federation/TD.json: each federated trust domain's last bundle and withdrawn roots (FederationClient stateFile). */
const FEDERATION_DIR = 'federation';

/** The CA's own serving certificate: short enough to roll with authority rotation, long enough to be quiet. */
const SERVER_CERT_TTL_MS = 24 * 3_600_000;
/** A node name in a log line of an unauthenticated request: Kubernetes' longest, the rest cut. */
const MAX_LOGGED_NODE_NAME = 253;
/**
 * Backdated further than workload certificates (10 s, SPIRE's cushion): every node checks this one by its own clock,
 * and a node a little behind the CA's refused a CA just started or just renewed, and could renew nothing meanwhile.
 */
const SERVER_CERT_NOT_BEFORE_CUSHION_MS = 5 * 60_000;

/** What the CA needs from the registry: which workload identities are placed on a node. */
export interface NodeRegistry {
  identitiesOnNode(node: string): ReadonlySet<string>;
}

export interface CaServerOptions {
  dir: string;
  host?: string;
  port?: number;
  /** Read on every request, so a configuration reload applies at once. */
  registry: () => NodeRegistry;
  /** Lifetime of issued SVIDs when the caller asks for none; also the maximum a caller may ask for (see setSvidTtl). */
  svidTtlMs: number;
  /** The same for node SVIDs (attestation, a node's renewal of its own); svidTtlMs when absent (see setNodeSvidTtl). */
  nodeSvidTtlMs?: number;
  federation?: readonly FederationPeer[];
  logger: Logger;
  /**
   * Audit records (issued, refused): one JSON object per decision. An issuance is answered only once its record's
   * promise resolves, and refused (500) when it rejects, so `ca root withdraw` never misses a certificate its holder
   * already has.
   */
  audit: (record: Record<string, unknown>) => void | Promise<void>;
  /** How often the state file is checked for root-rotation changes made by `ambit ca root`. */
  statePollMs?: number;
  federationMinRefreshMs?: number;
  /** A TLS handshake not finished this long after the connection was accepted is dropped (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Signing requests per node: DEFAULT_SIGN_BUDGET (256 at once, 256 more per minute) when absent. */
  signBudget?: SignBudgetLimits;
}

/** Connections the CA holds at once: far above what its nodes' agents open (at most 4 each), below the process's descriptors. */
const MAX_CONNECTIONS = 8_192;
/**
 * Connections one client address may hold: 64 nodes' agents behind one NAT. One client holding all 8,192 (a request
 * every 20 s keeps each open) locked every node out of attestation and renewal.
 */
const MAX_CONNECTIONS_PER_ADDRESS = 256;
/** A connection idle this long (no request under way) is closed. */
const SOCKET_IDLE_TIMEOUT_MS = 60_000;

/** The active authority's end is said this long before, and again every AUTHORITY_WARNING_INTERVAL_MS. */
const AUTHORITY_WARNING_BEFORE_MS = 30 * 86_400_000;
const AUTHORITY_WARNING_INTERVAL_MS = 86_400_000;

class HttpError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  readonly headers: Record<string, string> | undefined;
  constructor(status: number, code: ErrorCode, message: string, headers?: Record<string, string>) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/** Path → the one method it serves. */
const ROUTES: Readonly<Record<string, string>> = { '/': 'GET', '/bundle': 'GET', '/v1/bundles': 'GET', '/v1/attest': 'POST', '/v1/sign': 'POST' };

/** Which HTTP status each refusal carries. */
function statusFor(code: ErrorCode): number {
  switch (code) {
    case 'CA_UNAUTHENTICATED':
      return 401;
    case 'CA_NOT_AUTHORIZED':
    case 'JOIN_TOKEN_INVALID':
    case 'JOIN_TOKEN_EXPIRED':
    case 'JOIN_TOKEN_WRONG_NODE':
      return 403;
    // The CA's own state or files failed it, not the request: a 5xx, which a node's first attestation retries.
    case 'CA_STATE':
    case 'FILE_READ':
    case 'FILE_WRITE':
      return 500;
    // The same node's retry overtook the issuance it retries: it asks again after its backoff.
    case 'JOIN_TOKEN_BUSY':
      return 503;
    default:
      return 400;
  }
}

export class CaServer {
  readonly #options: CaServerOptions;
  readonly #logger: Logger;
  #state: CaState;
  /** Attestations with a token the CA never made: 20 warnings per 10 s, the rest at debug with their count. */
  readonly #unknownTokenLog = new LogBudget(10_000, 20);
  /** Client addresses held off for presenting costly chains no bundle of ours vouches for (handshake-backoff.ts). */
  readonly #gate: HandshakeGate;
  /** Its warnings: 20 per 10 s, the rest at debug with their count. */
  readonly #holdOffLog = new LogBudget(10_000, 20);
  #serverSvid: Svid;
  #federated = new Map<string, FederationClient>();
  #svidTtlMs = 0;
  /** When the authority's coming end was last said (once a day). */
  #lifeWarnedAtMs = -Infinity;
  #nodeSvidTtlMs: number | undefined;
  #server: https.Server;
  #stateListener: (() => void) | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #renewDueAtMs = Infinity;
  #wallClock: NodeJS.Timeout | undefined;
  #reloading: Promise<void> = Promise.resolve();
  /** Per node, the last of its record updates: they run one after another. */
  readonly #nodeQueue = new Map<string, Promise<void>>();
  readonly #signBudget: SignBudget;
  readonly #signBudgetLimits: SignBudgetLimits;

  private constructor(options: CaServerOptions, state: CaState, serverSvid: Svid) {
    this.#options = options;
    this.#logger = options.logger.child({ component: 'ca', trustDomain: state.trustDomain });
    this.#state = state;
    this.#serverSvid = serverSvid;
    this.#signBudgetLimits = options.signBudget ?? DEFAULT_SIGN_BUDGET;
    this.#signBudget = new SignBudget(this.#signBudgetLimits);
    // The one server that takes connections from anyone on the network before they are authenticated: a client that
    // never finishes its handshake is dropped after 10 s (Node's default holds it 120 s), and the connections are capped.
    this.#server = https.createServer({ ...serverTlsOptions(serverSvid, ['http/1.1']), handshakeTimeout: options.handshakeTimeoutMs ?? 10_000 }, (req, res) => void this.#handle(req, res));
    this.#server.maxConnections = MAX_CONNECTIONS;
    limitConnectionsPerPeer(this.#server, MAX_CONNECTIONS_PER_ADDRESS);
    this.#gate = new HandshakeGate({
      onHeldOff: (remote, heldOffMs) => this.#holdOffLog.warn(this.#logger, 'held-off', { remote, heldOffMs: Math.ceil(heldOffMs) }, 'holding off a client address whose certificate chains cost far more than a handshake to check; closing the new connection'),
      onAbandoned: (remote, bytes, holdMs, cut) => {
        if (holdMs > 0) this.#holdOffLog.warn(this.#logger, 'held-off', { remote, bytes, holdMs, cut }, 'holding off a client address that abandons its handshakes after sending a certificate chain');
      },
    });
    this.#gate.guard(this.#server);
    this.#server.on('secureConnection', (socket: TLSSocket) => this.#judgeChain(socket, true));
    // A client may present its chain and fail or abandon the handshake after (no Finished, a reset): checked all the same.
    this.#server.on('tlsClientError', (_error: Error, socket: TLSSocket) => {
      this.#judgeChain(socket, false);
      socket.destroy();
    });
    this.#server.timeout = SOCKET_IDLE_TIMEOUT_MS;
    this.#server.keepAliveTimeout = 30_000;
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
  }

  static async start(options: CaServerOptions): Promise<CaServer> {
    const state = await loadCa(options.dir);
    const server = new CaServer(options, state, await issueServerSvid(state));
    server.#svidTtlMs = options.svidTtlMs;
    server.#nodeSvidTtlMs = options.nodeSvidTtlMs;
    for (const peer of options.federation ?? []) server.#federated.set(peer.trustDomain, server.#federationClient(peer));
    const host = options.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      // One line naming the address (the CLI printed a stack trace for a port in use).
      const refused = (error: Error) =>
        reject(new AmbitError('PROXY_BIND', `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${options.port ?? 0} for the CA: ${error.message}`, { cause: error, hint: "another process holds the port, or the address is not one of this host's" }));
      server.#server.once('error', refused);
      server.#server.listen(options.port ?? 0, host, () => {
        server.#server.off('error', refused);
        resolve();
      });
    });
    // Once bound, an 'error' is an accept that failed (EMFILE): the server goes on; unheard, it would end the CA.
    server.#server.on('error', acceptErrorLogger(server.#logger, 'ca'));
    // Federation starts after we listen: two CAs federating with each other must both be up to succeed.
    for (const client of server.#federated.values()) void client.start();
    const pollMs = options.statePollMs ?? 1000;
    server.#stateListener = () => {
      server.#reloading = server.#reloading.then(() => server.#reloadState()).catch((error: unknown) => {
        server.#logger.error({ err: toAmbitError(error, 'CA_STATE').toJSON() }, 'applying a CA state change failed');
      });
    };
    watchFile(caStateFile(options.dir), { interval: pollMs, persistent: false }, server.#stateListener);
    server.#scheduleServerRenewal();
    server.#wallClock = setInterval(() => {
      server.#catchUpServerRenewal();
      server.#checkAuthorityLife();
      server.#signBudget.sweep();
    }, WALL_CLOCK_CHECK_MS).unref();
    server.#checkAuthorityLife();
    server.#logger.info({ url: server.url, sequence: state.sequence.toString(), authority: state.active.name, nodeSignBudget: server.#signBudgetLimits }, 'CA listening');
    return server;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  get url(): string {
    const address = this.#server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return `https://${host}:${address.port}`;
  }

  get trustDomain(): string {
    return this.#state.trustDomain;
  }

  /** The SPIFFE ID this CA's server certificate carries (for https_spiffe federation peers). */
  get serverId(): string {
    return this.#serverSvid.id.id;
  }

  ownBundle(): TrustBundle {
    return this.#state.bundle;
  }

  /**
   * `ambit-signing-authority`: the key identifier of the authority that signs now. An agent re-issues only the
   * certificates another authority signed: a root being prepared or withdrawn changes the bundle (and its sequence)
   * but not whose signature a renewal gets, and re-issuing every certificate of every node then is a CSR storm.
   */
  #signingHeader(): Record<string, string> | undefined {
    const keyId = subjectKeyIdOf(this.#state.active.cert);
    return keyId === undefined ? undefined : { [SIGNING_AUTHORITY_HEADER]: keyId };
  }

  /** Own bundle plus every federated bundle fetched so far. */
  bundleSet(): BundleSet {
    let set = new BundleSet([this.#state.bundle]);
    for (const client of this.#federated.values()) {
      const bundle = client.current();
      if (bundle) set = set.with(bundle);
    }
    return set;
  }

  federationClients(): ReadonlyMap<string, FederationClient> {
    return this.#federated;
  }

  /**
   * Applies a changed federation list (a configuration reload): new peers start fetching, removed ones stop and
   * their bundle is no longer served or trusted, and a peer whose endpoint, profile, endpoint ID or bootstrap
   * bundle changed starts over with the new settings. Throws, changing nothing, if a peer is refused.
   */
  async setFederation(peers: readonly FederationPeer[]): Promise<void> {
    const next = new Map<string, FederationPeer>(peers.map((peer) => [peer.trustDomain, peer]));
    const added: FederationClient[] = [];
    try {
      for (const peer of next.values()) {
        const current = this.#federated.get(peer.trustDomain);
        if (current === undefined || !samePeer(current.peer, peer)) added.push(this.#federationClient(peer));
      }
    } catch (error) {
      await Promise.all(added.map((client) => client.stop()));
      throw error;
    }
    const removed = [...this.#federated.values()].filter((client) => !next.has(client.peer.trustDomain) || added.some((fresh) => fresh.peer.trustDomain === client.peer.trustDomain));
    for (const client of removed) {
      this.#federated.delete(client.peer.trustDomain);
      this.#logger.info({ trustDomain: client.peer.trustDomain }, next.has(client.peer.trustDomain) ? 'federation peer changed; fetching with the new settings' : 'federation peer removed; its bundle is no longer trusted');
    }
    for (const client of added) this.#federated.set(client.peer.trustDomain, client);
    // A changed peer's successor keeps the state file; a removed one's goes with it.
    await Promise.all(removed.map((client) => (next.has(client.peer.trustDomain) ? client.stop() : client.forget())));
    for (const client of added) void client.start();
  }

  /** The lifetime of SVIDs issued from now on (a configuration reload of certificateTtl). */
  setSvidTtl(ttlMs: number): void {
    this.#svidTtlMs = ttlMs;
  }

  /** The lifetime of node SVIDs issued from now on (a configuration reload of nodeCertificateTtl). */
  setNodeSvidTtl(ttlMs: number): void {
    this.#nodeSvidTtlMs = ttlMs;
  }

  get #nodeTtlMs(): number {
    return this.#nodeSvidTtlMs ?? this.#svidTtlMs;
  }

  #federationClient(peer: FederationPeer): FederationClient {
    if (peer.trustDomain === this.#state.trustDomain) throw new AmbitError('FEDERATION_FETCH', `cannot federate with our own trust domain ${peer.trustDomain}`);
    makeDirsSync(join(this.#options.dir, FEDERATION_DIR), 0o700);
    // A non-self-serving https_spiffe endpoint is authenticated with bundles we already hold (ours, or another federated one).
    return new FederationClient({
      peer,
      logger: this.#options.logger,
      minRefreshMs: this.#options.federationMinRefreshMs,
      otherBundles: () => this.bundleSet(),
      stateFile: join(this.#options.dir, FEDERATION_DIR, `${peer.trustDomain}.json`),
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.#renewTimer);
    clearInterval(this.#wallClock);
    if (this.#stateListener) unwatchFile(caStateFile(this.#options.dir), this.#stateListener);
    await Promise.all([...this.#federated.values()].map((client) => client.stop()));
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  /** The CA's own serving certificate is short-lived too: renew it at half its lifetime, swapping it in place. */
  #scheduleServerRenewal(): void {
    clearTimeout(this.#renewTimer);
    const svid = this.#serverSvid;
    const delayMs = Math.max(1000, (svid.notAfter.getTime() - Date.now()) / 2);
    this.#renewDueAtMs = Date.now() + delayMs;
    this.#renewTimer = setTimeout(() => this.#renewServerNow(), timerDelayMs(delayMs));
    this.#renewTimer.unref();
  }

  #renewServerNow(): void {
    clearTimeout(this.#renewTimer);
    this.#renewDueAtMs = Infinity;
    this.#reloading = this.#reloading.then(() => this.#renewServerSvid()).catch((error: unknown) => {
      this.#logger.error({ err: toAmbitError(error, 'CA_STATE').toJSON() }, 'renewing the CA serving certificate failed; retrying in a minute');
      clearTimeout(this.#renewTimer);
      this.#renewTimer = setTimeout(() => this.#scheduleServerRenewal(), 60_000);
      this.#renewTimer.unref();
    });
  }

  /**
   * Timers stand still while the host is suspended (a paused VM): after a day asleep the serving certificate had
   * expired with its renewal still hours away, and every node was refused without a word in the CA's log. The wall
   * clock says what is due, checked every few seconds as the agent checks its own.
   */
  /**
   * Says, before it happens, that the active signing authority is running out: every certificate is capped at its end,
   * so lifetimes shrink and renewals crowd in as it nears, and once it has expired every node must be onboarded again.
   * A warning a day from 30 days before its end; an error a day once the node SVIDs it signs are cut short.
   */
  #checkAuthorityLife(): void {
    const now = Date.now();
    if (now - this.#lifeWarnedAtMs < AUTHORITY_WARNING_INTERVAL_MS) return;
    const authority = this.#state.active;
    const leftMs = authority.cert.notAfter.getTime() - now;
    if (leftMs > AUTHORITY_WARNING_BEFORE_MS) return;
    this.#lifeWarnedAtMs = now;
    const fields = { authority: authority.name, notAfter: authority.cert.notAfter.toISOString(), daysLeft: Math.max(0, Math.floor(leftMs / 86_400_000)), hint: 'prepare and activate a new signing authority: ambit ca root prepare, then ambit ca root activate' };
    if (leftMs <= this.#nodeTtlMs) this.#logger.error(fields, leftMs <= 0 ? 'the signing authority has expired: nothing can be issued' : 'the signing authority expires before a node SVID would: every certificate is cut short at its end');
    else this.#logger.warn(fields, 'the signing authority expires within 30 days');
  }

  #catchUpServerRenewal(): void {
    if (Date.now() >= this.#renewDueAtMs + WALL_CLOCK_SLACK_MS) this.#renewServerNow();
  }

  async #renewServerSvid(): Promise<void> {
    this.#serverSvid = await issueServerSvid(this.#state);
    this.#server.setSecureContext(serverTlsOptions(this.#serverSvid, ['http/1.1']));
    this.#scheduleServerRenewal();
  }

  /** Picks up root-rotation changes written by `ambit ca root prepare|activate|withdraw`. */
  async #reloadState(): Promise<void> {
    let next: CaState;
    try {
      next = await loadCa(this.#options.dir);
    } catch (error) {
      this.#logger.error({ err: toAmbitError(error, 'CA_STATE').toJSON() }, 'CA state reload failed; keeping the current authorities');
      return;
    }
    const previous = this.#state;
    this.#state = next;
    if (next.active.name !== previous.active.name) {
      // Another authority: its end is judged afresh, not a day after what was said of the last one.
      this.#lifeWarnedAtMs = -Infinity;
      this.#checkAuthorityLife();
    }
    // Another signer, or an outgoing root withdrawn: the serving chain's cross-certificates follow (issueServerSvid).
    const outgoing = (state: CaState) => outgoingRoots(state).map((authority) => authority.name).join();
    if (next.active.name !== previous.active.name || outgoing(next) !== outgoing(previous)) await this.#renewServerSvid();
    if (next.sequence !== previous.sequence) {
      this.#logger.info({ sequence: next.sequence.toString(), authority: next.active.name, roots: next.bundle.roots.length }, 'trust bundle changed');
      this.#note({ event: 'bundle_changed', sequence: next.sequence.toString(), activeAuthority: next.active.name, roots: next.bundle.roots.length });
    }
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const rawUrl = req.url ?? '/';
    const query = rawUrl.indexOf('?');
    const path = query < 0 ? rawUrl : rawUrl.slice(0, query);
    try {
      const allowed = ROUTES[path];
      if (allowed === undefined) throw new HttpError(404, 'USAGE', `${path} is not served here`);
      if (req.method !== allowed) {
        res.setHeader('allow', allowed);
        throw new HttpError(405, 'USAGE', `${req.method} ${path}: only ${allowed} is allowed`);
      }
      if (path === '/bundle' || path === '/') return send(res, 200, encodeBundle(this.#state.bundle), this.#state.refreshHintSeconds);
      if (path === '/v1/bundles') return send(res, 200, this.bundleSet().toMapJson(), this.#state.refreshHintSeconds, this.#signingHeader());
      if (path === '/v1/attest') return send(res, 200, JSON.stringify(await this.#attest(req)));
      return send(res, 200, JSON.stringify(await this.#sign(req)));
    } catch (error) {
      if (error instanceof HttpError) return sendError(res, error.status, error.code, error.message, error.headers);
      const wrapped = toAmbitError(error, 'CA_CSR_INVALID');
      if (!(error instanceof AmbitError)) {
        this.#logger.error({ err: error }, 'unexpected error handling CA request');
        return sendError(res, 500, wrapped.code, wrapped.message);
      }
      return sendError(res, statusFor(wrapped.code), wrapped.code, wrapped.message);
    }
  }

  /** Join-token attestation: a new node proves itself once and receives its node SVID. */
  async #attest(req: IncomingMessage): Promise<IssueResponse> {
    const body = await readJson(req);
    const node = stringField(body, 'node');
    const token = stringField(body, 'token');
    const csr = stringField(body, 'csr');
    const remote = req.socket.remoteAddress;
    let spiffeId: string;
    let publicKey: CryptoKey;
    let key: string;
    try {
      try {
        spiffeId = nodeId(this.#state.trustDomain, node);
      } catch (error) {
        throw new HttpError(400, 'CONFIG_FIELD', `node name "${node}" is not usable in a SPIFFE ID: ${(error as Error).message}`);
      }
      // Check the CSR before spending the token, so a client bug does not burn a single-use secret.
      publicKey = await readCsr(csr);
      key = await publicKeyDigest(publicKey);
    } catch (error) {
      // With a token this CA made, a refused request is someone holding a live secret (a stolen token's holder trying
      // keys): audited, as every other refusal is. Without one it is anyone's noise, which must not fill the audit log.
      if (await joinTokenKnown(this.#options.dir, token)) {
        const wrapped = error instanceof HttpError ? { code: error.code, message: error.message } : toAmbitError(error, 'CA_CSR_INVALID');
        this.#note({ event: 'attest_refused', node, remote, code: wrapped.code, reason: `${wrapped.message} (the token is left unspent)` });
        this.#logger.warn({ node, remote, code: wrapped.code }, 'node attestation refused');
      }
      throw error;
    }
    let claim: JoinTokenClaim;
    try {
      claim = await consumeJoinToken(this.#options.dir, token, node, key);
    } catch (error) {
      const wrapped = toAmbitError(error, 'JOIN_TOKEN_INVALID');
      if (wrapped.code === 'JOIN_TOKEN_BUSY') {
        // The node's own retry, or another holder of its token racing it: the CA cannot tell which, so both are told.
        this.#note({ event: 'attest_refused', node, remote, code: wrapped.code, reason: wrapped.message });
        this.#logger.warn({ node, remote, code: wrapped.code }, 'join token presented again while its first attestation is being answered (the node retrying, or another holder of the token)');
        throw wrapped;
      }
      // The CA's own files failed (500, the token given back): no refusal of the node's to audit.
      if (wrapped.code === 'CA_STATE') throw wrapped;
      // A token this CA never made is anyone's guess, at any rate: audited and warned one by one, 16,000 such
      // requests in 20 s grew the audit log 34 MiB and held every node's issuance behind its writes. Said within a
      // budget, with how many were left out; a token the CA made (spent, expired, another node's) is audited.
      if (!(await joinTokenKnown(this.#options.dir, token))) {
        this.#unknownTokenLog.warn(this.#logger, 'unknown-token', { node: node.length > MAX_LOGGED_NODE_NAME ? `${node.slice(0, MAX_LOGGED_NODE_NAME)}…` : node, remote, code: wrapped.code }, 'node attestation refused: a join token this CA never made');
        throw wrapped;
      }
      this.#note({ event: 'attest_refused', node, remote, code: wrapped.code, reason: wrapped.message });
      this.#logger.warn({ node, remote, code: wrapped.code }, 'node attestation refused');
      throw wrapped;
    }
    if (claim.retry) return this.#answerAgain(node, spiffeId, claim.answer, remote);
    let response: IssueResponse;
    try {
      const issued = await this.#issue(spiffeId, publicKey, this.#nodeTtlMs);
      response = issued.response;
      // Audited before the record makes it the node's certificate: a certificate never handed out must not be current.
      await this.#recordIssuance({ event: 'node_attested', node, spiffeId, remote, serial: response.serial, expiresAt: response.expiresAt, authority: issued.authority });
      await this.#forNode(node, async () => {
        await recordAttested(this.#options.dir, node, response.serial);
        await recordTokenAnswer(this.#options.dir, token, { serial: response.serial, certChain: response.certChain, expiresAt: response.expiresAt });
      });
    } catch (error) {
      // Nothing was handed out (the audit log or the node record could not be written): the token is the node's to
      // present again, not spent on the CA's failure.
      await restoreJoinToken(this.#options.dir, token).catch(() => {});
      throw error;
    }
    this.#logger.info({ node, spiffeId, remote }, 'node attested with join token');
    return response;
  }

  /**
   * The node presents its spent join token again with a CSR for the key that spent it: the answer to its attestation
   * was lost, and it gets that certificate again, unless the node has moved on since (renewed with it, attested with a
   * newer token, evicted). Nothing is issued and nothing recorded.
   */
  async #answerAgain(node: string, spiffeId: string, answer: TokenAnswer, remote: string | undefined): Promise<IssueResponse> {
    const moved = await answerStands(this.#options.dir, node, answer.serial);
    if (moved !== null) {
      const refusal = new AmbitError('JOIN_TOKEN_INVALID', 'join token does not exist or was already used');
      this.#note({ event: 'attest_refused', node, remote, code: refusal.code, reason: `${refusal.message}: presented again with the key that spent it, but ${moved}` });
      this.#logger.warn({ node, remote, code: refusal.code, reason: moved }, 'node attestation refused');
      throw refusal;
    }
    this.#note({ event: 'node_attestation_resent', node, spiffeId, remote, serial: answer.serial });
    this.#logger.info({ node, spiffeId, remote, serial: answer.serial }, 'node asked again with its join token: its attestation answered again');
    return { spiffeId, certChain: answer.certChain, bundles: this.bundleSet().toMapJson(), serial: answer.serial, expiresAt: answer.expiresAt };
  }

  /**
   * A costly chain (one OpenSSL took far more than a handshake to check: handshake-backoff.ts) counts its address
   * towards a hold-off, whatever the request that follows (a bundle fetch needs no certificate, but OpenSSL has checked
   * whatever was presented), unless a bundle the CA holds vouches for it. Signing judges the caller again, as a node.
   */
  #judgeChain(socket: TLSSocket, handshakeDone: boolean): void {
    // A socket already reset has no address to count against: its connection's close counts its bytes instead.
    if (socket.remoteAddress === undefined) return;
    const leaf = socket.getPeerCertificate(true);
    const costly = costlyChain(leaf);
    if (costly === null) return;
    const result = handshakeDone ? verifyPeerCertificate(leaf, this.bundleSet(), null) : null;
    if (result?.valid === true) return;
    const { holdMs, cut } = this.#gate.refused(socket);
    if (holdMs > 0) this.#holdOffLog.warn(this.#logger, 'held-off', { remote: socket.remoteAddress, code: result?.error.code ?? 'TLS_HANDSHAKE', costly, holdMs, cut }, 'holding off a client address whose certificate chains cost far more than a handshake to check');
  }

  /** CSR signing for a node: its own identity (renewal) or a workload the registry places on it. */
  async #sign(req: IncomingMessage): Promise<IssueResponse> {
    const socket = req.socket as TLSSocket;
    const ownBundles = new BundleSet([this.#state.bundle]);
    const caller = verifyPeer(socket, ownBundles, (id) => parseNodeId(id.id)?.trustDomain === this.#state.trustDomain);
    const remote = socket.remoteAddress;
    if (!caller.valid) {
      // Audited when the caller holds a valid SVID of this trust domain that is not a node's (a workload's key in the
      // wrong hands). A certificate missing, self-signed, expired or another CA's is anyone's noise, as a request
      // without a token of ours is at attestation: audited, one line each, a client looping on them filled the disk
      // and held every issuance behind the backlog of its lines (4 KB each for a long URI SAN). Logged at debug.
      if (caller.error.code === 'IDENTITY_MISMATCH') this.#note({ event: 'sign_refused', caller: caller.id?.id ?? null, remote, code: caller.error.code, reason: caller.error.message });
      else this.#logger.debug({ remote, code: caller.error.code }, 'sign request from an unauthenticated caller refused');
      throw new HttpError(401, 'CA_UNAUTHENTICATED', `caller must present a valid node SVID of ${this.#state.trustDomain}: [${caller.error.code}] ${caller.error.message}`);
    }
    const callerNode = parseNodeId(caller.id.id)?.nodeName as string;
    const callerSerial = socket.getPeerCertificate().serialNumber;
    // Before the body and the registry: a node evicted, without a record, or presenting a copied old certificate is
    // refused as such, and cannot learn from 403s and 401s which identities the registry places on the node.
    const early = await nodeCertificateRefusal(this.#options.dir, callerNode, callerSerial);
    if (early !== null) this.#refuseNodeCertificate(caller.id.id, callerNode, callerSerial, remote, early);
    this.#chargeSignBudget(caller.id.id, callerNode, remote);
    let requestedId: SpiffeId;
    let csr: string;
    let ttlMs: number;
    try {
      const body = await readJson(req);
      csr = stringField(body, 'csr');
      requestedId = parseSpiffeId(stringField(body, 'spiffeId'));
      ttlMs = optionalTtl(body, requestedId.id === caller.id.id ? this.#nodeTtlMs : this.#svidTtlMs);
    } catch (error) {
      // An authenticated node's malformed request (an ID with dot segments, a bad TTL, a body too large) is audited.
      this.#refusedRequest(caller.id.id, callerNode, undefined, remote, error);
    }
    let allowed = false;
    if (requestedId.trustDomain === this.#state.trustDomain) {
      allowed = requestedId.id === caller.id.id || this.#options.registry().identitiesOnNode(callerNode).has(requestedId.id);
    }
    if (!allowed) {
      const reason = requestedId.trustDomain !== this.#state.trustDomain
        ? `${requestedId.id} is not in trust domain ${this.#state.trustDomain}`
        : `the registry places no workload with identity ${requestedId.id} on node ${callerNode}`;
      this.#note({ event: 'sign_refused', caller: caller.id.id, node: callerNode, requested: requestedId.id, remote, code: 'CA_NOT_AUTHORIZED', reason });
      this.#logger.warn({ caller: caller.id.id, requested: requestedId.id, remote, code: 'CA_NOT_AUTHORIZED', reason }, 'CSR refused: the caller\'s node may not obtain that identity');
      throw new HttpError(403, 'CA_NOT_AUTHORIZED', `node ${callerNode} may not obtain ${requestedId.id}: ${reason}`);
    }
    let publicKey: CryptoKey;
    try {
      publicKey = await readCsr(csr);
    } catch (error) {
      this.#refusedRequest(caller.id.id, callerNode, requestedId.id, remote, error);
    }
    // Only the node certificate the CA issued last (or a renewal's new one, until first used): a copied older one is
    // refused, an evicted node outright. Judged, issued and recorded in one step of the node's queue, after the body
    // has arrived: a renewal kept open across an eviction must not come back with a certificate.
    const { response, authority } = await this.#forNode(callerNode, async () => {
      const refusal = await admitNodeCertificate(this.#options.dir, callerNode, callerSerial);
      if (refusal !== null) this.#refuseNodeCertificate(caller.id.id, callerNode, callerSerial, remote, refusal);
      const issued = await this.#issue(requestedId.id, publicKey, ttlMs);
      if (requestedId.id === caller.id.id) await recordRenewal(this.#options.dir, callerNode, callerSerial, issued.response.serial);
      return issued;
    });
    await this.#recordIssuance({ event: 'svid_issued', caller: caller.id.id, node: callerNode, spiffeId: requestedId.id, remote, serial: response.serial, expiresAt: response.expiresAt, authority });
    this.#logger.debug({ caller: caller.id.id, spiffeId: requestedId.id }, 'SVID issued');
    return response;
  }

  /**
   * One request off the node's signing budget, or 429 with Retry-After. A spell of refusals is audited and warned once
   * at its start, and its count logged when the node next gets a request through: one line per request would be the
   * flood the budget holds back.
   */
  #chargeSignBudget(caller: string, node: string, remote: string | undefined): void {
    const answer = this.#signBudget.take(node);
    if (answer.allowed) {
      if (answer.refusedBefore > 0) this.#logger.info({ caller, node, refused: answer.refusedBefore }, 'node back within its signing budget');
      return;
    }
    if (answer.first) {
      this.#note({ event: 'sign_rate_limited', caller, node, remote, retryAfterSeconds: answer.retryAfterSeconds });
      this.#logger.warn({ caller, node, remote, retryAfterSeconds: answer.retryAfterSeconds }, 'node over its signing budget: its requests are refused (429) until it has waited');
    }
    throw new HttpError(429, 'CA_RATE_LIMITED', `node ${node} asked for more certificates than its budget allows; ask again in ${answer.retryAfterSeconds} s`, { 'retry-after': String(answer.retryAfterSeconds) });
  }

  /** Audits what an authenticated node sent that could not be read (body, ID, TTL, CSR), then throws it on. */
  #refusedRequest(caller: string, node: string, requested: string | undefined, remote: string | undefined, error: unknown): never {
    const code = error instanceof HttpError ? error.code : toAmbitError(error, 'CA_CSR_INVALID').code;
    const reason = (error as Error).message.slice(0, 300);
    this.#note({ event: 'sign_refused', caller, node, ...(requested === undefined ? {} : { requested }), remote, code, reason });
    // An authenticated node's own mistake (its agent's defect, or a tampered one): the operator reading the CA's log
    // sees it there too, not only in the audit log.
    this.#logger.warn({ caller, ...(requested === undefined ? {} : { requested }), remote, code, reason }, 'CSR refused: the request could not be read');
    throw error;
  }

  #refuseNodeCertificate(caller: string, node: string, serial: string, remote: string | undefined, refusal: string): never {
    this.#note({ event: 'sign_refused', caller, node, remote, code: 'CA_UNAUTHENTICATED', reason: refusal });
    this.#logger.warn({ caller, serial, remote, reason: refusal }, 'CSR refused: node certificate not current');
    throw new HttpError(401, 'CA_UNAUTHENTICATED', refusal);
  }

  /**
   * An issuance's audit record, written before the certificate is handed out: one that cannot be written fails the
   * request (500), or `ca root withdraw --audit-log` could withdraw a root while a certificate it signed is in use.
   */
  async #recordIssuance(record: Record<string, unknown>): Promise<void> {
    try {
      await this.#options.audit(record);
    } catch (error) {
      throw new HttpError(500, 'FILE_WRITE', `the issuance could not be written to the audit log, so the certificate is not handed out: ${(error as Error).message}`);
    }
  }

  /** A refusal's or a change's audit record: its failure is logged by the writer and never fails the request. */
  #note(record: Record<string, unknown>): void {
    void (async () => this.#options.audit(record))().catch(() => {});
  }

  /** Runs a node record's read-modify-write after the node's previous one: its agent may send requests at once. */
  #forNode<T>(node: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#nodeQueue.get(node) ?? Promise.resolve();
    const next = previous.then(work, work);
    const settled = next.then(() => undefined, () => undefined);
    this.#nodeQueue.set(node, settled);
    void settled.then(() => {
      if (this.#nodeQueue.get(node) === settled) this.#nodeQueue.delete(node);
    });
    return next;
  }

  /** Signs with the active authority, and names it: the audit log keeps which root each certificate chains to. */
  async #issue(spiffeId: string, publicKey: CryptoKey, ttlMs: number): Promise<{ response: IssueResponse; authority: string }> {
    const authority = this.#state.active;
    let leaf: Awaited<ReturnType<typeof issueLeaf>>;
    try {
      leaf = await issueLeaf({ spiffeId, publicKey, authority, ttlMs });
    } catch (error) {
      // The authority expired: the CA's own state fails the request, not the node's (a 5xx, which nodes retry; a 400
      // told them their request was wrong, for good).
      if (error instanceof AmbitError && error.code === 'SVID_EXPIRED') throw new HttpError(503, 'CA_STATE', error.message);
      throw error;
    }
    const response: IssueResponse = {
      spiffeId,
      certChain: certificatesToPem(chainFor(leaf, authority)),
      bundles: this.bundleSet().toMapJson(),
      serial: leaf.serialNumber,
      expiresAt: leaf.notAfter.toISOString(),
    };
    return { response, authority: authority.name };
  }
}

export interface IssueResponse {
  spiffeId: string;
  /** PEM: leaf, then the intermediates up to (not including) the root. */
  certChain: string;
  /** SPIFFE bundle map document of every trust domain the CA knows, as text (spiffe_sequence is 64-bit; JSON numbers are not). */
  bundles: string;
  serial: string;
  expiresAt: string;
}

function samePeer(a: FederationPeer, b: FederationPeer): boolean {
  const bundles = a.bootstrapBundle === undefined || b.bootstrapBundle === undefined ? a.bootstrapBundle === b.bootstrapBundle : bundlesEqual(a.bootstrapBundle, b.bootstrapBundle);
  return a.bundleEndpoint === b.bundleEndpoint && a.profile === b.profile && a.endpointSpiffeId === b.endpointSpiffeId && bundles;
}

function chainFor(leaf: Certificate, authority: LoadedAuthority): Certificate[] {
  // A root-signed leaf travels alone; an intermediate travels with the leaf so peers can build the path.
  return isRoot(authority) ? [leaf] : [leaf, authority.cert];
}

/** Whether an authority is its own root (self-signed), not an intermediate under one (`--root-cert`). */
function isRoot(authority: LoadedAuthority): boolean {
  return authority.cert === authority.root || authority.cert.serialNumber === authority.root.serialNumber;
}

/**
 * The roots a rotation is leaving (activated away from, not yet withdrawn) that still vouch for the active one: each
 * authority still in the bundle but not signing, older than the active one (`prepared` is the incoming one).
 */
function outgoingRoots(state: CaState): LoadedAuthority[] {
  if (!isRoot(state.active)) return [];
  return state.authorities.filter((authority) => authority.state === 'published' && isRoot(authority) && authority.cert.notAfter.getTime() > Date.now());
}

/**
 * The CA's serving certificate, signed by the active authority, followed during a root rotation by the active root
 * cross-certified by each outgoing one: an agent that missed the bundle with the new root (offline from before
 * `prepare` until after `activate`) still reaches the CA, and takes that bundle. Without it, the agent could never
 * reach the CA again: its node SVID expired and the node needed a new join token.
 */
async function issueServerSvid(state: CaState): Promise<Svid> {
  const authority = state.active;
  const keys = await generateKeyPair();
  const spiffeId = `spiffe://${state.trustDomain}${CA_SERVER_PATH}`;
  const leaf = await issueLeaf({ spiffeId, publicKey: keys.publicKey, authority, ttlMs: SERVER_CERT_TTL_MS, dnsNames: ['localhost'], notBeforeCushionMs: SERVER_CERT_NOT_BEFORE_CUSHION_MS });
  const chain = chainFor(leaf, authority);
  // Each no longer than the serving certificate: withdrawn, the old root stops vouching for the new one within a day.
  for (const outgoing of outgoingRoots(state)) chain.push(await crossCertify(authority.cert, outgoing, state.trustDomain, leaf.notAfter));
  return loadSvid(certificatesToPem(chain), await exportPrivateKeyPem(keys.privateKey));
}

function send(res: ServerResponse, status: number, body: string, maxAgeSeconds?: number, extra?: Record<string, string>): void {
  const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extra };
  if (maxAgeSeconds !== undefined) headers['cache-control'] = `max-age=${maxAgeSeconds}`;
  res.writeHead(status, headers);
  res.end(body);
}

function sendError(res: ServerResponse, status: number, code: ErrorCode, message: string, headers?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  send(res, status, JSON.stringify({ error: { code, message } }), undefined, headers);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) throw new HttpError(413, 'USAGE', `request body of ${declared} bytes exceeds ${MAX_BODY_BYTES}`);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > MAX_BODY_BYTES) throw new HttpError(413, 'USAGE', `request body exceeds ${MAX_BODY_BYTES} bytes`);
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    if (error instanceof HttpError) throw error;
    // The client left before its body ended (Node's ECONNRESET "aborted"): its doing, not the CA's, and no answer
    // reaches it. Logged as an unexpected error with its stack, anyone could fill the CA's log with them.
    throw new HttpError(400, 'USAGE', `request body not received whole: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'USAGE', 'request body is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new HttpError(400, 'USAGE', 'request body must be a JSON object');
  return parsed as Record<string, unknown>;
}

function stringField(body: Record<string, unknown>, name: string): string {
  const value = body[name];
  if (typeof value !== 'string' || value.length === 0) throw new HttpError(400, 'USAGE', `field "${name}" must be a non-empty string`);
  return value;
}

function optionalTtl(body: Record<string, unknown>, maxMs: number): number {
  const value = body.ttlSeconds;
  if (value === undefined) return maxMs;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new HttpError(400, 'USAGE', 'field "ttlSeconds" must be a positive integer');
  return Math.min(value * 1000, maxMs);
}
