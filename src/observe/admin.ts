// The three small HTTP servers beside the data plane, as ztunnel has them (15020 metrics, 15021 readiness,
// 15000 admin): Prometheus metrics, the readiness probe, and a loopback-only admin API (config dump and the
// log level). Each binds exactly where the caller says; nothing here defaults to a wildcard address.
import { once } from 'node:events';
import { BlockList, isIP } from 'node:net';
import { http } from '../node-http.ts';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { AmbitError } from '../errors.ts';
import { acceptErrorLogger } from './log.ts';
import { limitConnectionsPerPeer } from '../peer-connections.ts';
import type { Logger } from './log.ts';

export interface AdminSources {
  /** A JSON-able object (ztunnel's /config_dump shape). */
  configDump(): unknown;
  readiness(): { ready: boolean; pending: string[] };
  /** The root pino logger whose level /logging reads and changes; children created without their own level follow it. */
  logger: Logger;
}

export interface ListenAddress {
  host: string;
  port: number;
}

export interface ObservabilityOptions {
  metrics?: ListenAddress;
  readiness?: ListenAddress;
  /** Loopback only: /logging changes the process's behaviour, so it is never offered to the network. */
  admin?: ListenAddress;
  registry: Registry;
  sources: AdminSources;
}

export interface Observability {
  metricsUrl?: string;
  readinessUrl?: string;
  adminUrl?: string;
  /** Stops all servers and destroys their connections, idle keep-alive ones and in-flight ones alike. */
  close(): Promise<void>;
}

/** The whole request (headers and body) must arrive within this; a scrape or probe request is a few hundred bytes. */
const REQUEST_TIMEOUT_MS = 10_000;
/** Headers alone; below REQUEST_TIMEOUT_MS so slow-header clients are cut first. */
const HEADERS_TIMEOUT_MS = 5_000;
/** Idle keep-alive connections are dropped after this: Prometheus scrapes every 15 s or so and reconnects cheaply. */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** How often Node enforces the two timeouts above; its 30 s default would let a stalled client stay that long past them. */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
/** A socket with no activity at all (e.g. a reader that stopped reading a large /metrics answer) is destroyed. */
const SOCKET_IDLE_TIMEOUT_MS = 30_000;
/**
 * A scraper, the kubelet's probes and an operator need a handful each; more from one address is a misbehaving
 * client, held off without starving the others (a shared cap let one client that kept 64 idle connections open
 * fail every scrape and probe).
 */
const MAX_CONNECTIONS_PER_PEER = 16;
/** All together: a bound on memory, far above what the legitimate clients of one node ever hold. */
const MAX_CONNECTIONS = 1_024;
/** Beyond MAX_CONNECTIONS, for clients on this host only (the kubelet's probes of a proxy on the host's network, an operator's curl). */
const LOCAL_RESERVE = 64;
/** Admin answers are small and requests carry nothing useful in headers beyond the path. */
const MAX_HEADER_BYTES = 8 * 1024;

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** True for an IP literal in 127.0.0.0/8 or ::1 (including its IPv4-mapped and long forms); host names are not resolved. */
export function isLoopbackAddress(host: string): boolean {
  const family = isIP(host);
  // isIP takes IPv4 in dotted decimal only (no leading zeros, no short forms): its first octet is what precedes the
  // first dot. The outbound listeners ask for every connection, and BlockList.check cost more than the rest of it.
  if (family === 4) return host.startsWith('127.');
  if (family === 0) return false;
  return LOOPBACK.check(host, 'ipv6');
}

type Handler = (req: IncomingMessage, res: ServerResponse, path: string, query: string) => void | Promise<void>;

interface Started {
  server: Server;
  url: string;
}

function validateAddress(what: string, address: ListenAddress): void {
  if (typeof address.host !== 'string' || address.host === '') {
    throw new AmbitError('USAGE', `the ${what} server needs an explicit host to listen on`);
  }
  if (!Number.isInteger(address.port) || address.port < 0 || address.port > 65535) {
    throw new AmbitError('USAGE', `the ${what} server port must be an integer from 0 to 65535, got ${address.port}`);
  }
}

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function sendText(res: ServerResponse, status: number, body: string): void {
  send(res, status, 'text/plain; charset=utf-8', body);
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(value, null, 2)}\n`);
}

function methodNotAllowed(res: ServerResponse, allowed: string): void {
  res.setHeader('allow', allowed);
  sendText(res, 405, `method not allowed; use ${allowed}\n`);
}

function notFound(res: ServerResponse, path: string): void {
  sendText(res, 404, `no endpoint at ${path}\n`);
}

function isRead(method: string | undefined): boolean {
  return method === 'GET' || method === 'HEAD';
}

/** Sockets with an answer under way: a request that arrives on one is pipelined. */
const answering = new WeakSet<Socket>();
/** Sockets that pipelined: closed once the answer under way has gone. */
const pipelined = new WeakSet<Socket>();

function dispatch(handler: Handler, req: IncomingMessage, res: ServerResponse): void {
  // Pipelined requests are not run, and the connection ends after the answer under way: Node parses a whole read at
  // once and runs every request in it before the first is answered, so one connection's 1,500 pipelined scrapes
  // rendered the metrics 1,500 times (the event loop held 1.2 s, and 7 s from six connections) and queued every copy.
  // Prometheus, the kubelet and curl send one request at a time.
  const socket = req.socket;
  if (answering.has(socket)) {
    // Not run: the answer under way is the connection's last.
    pipelined.add(socket);
    return;
  }
  answering.add(socket);
  const answered = () => {
    answering.delete(socket);
    if (pipelined.has(socket)) socket.end();
  };
  res.once('finish', answered);
  res.once('close', answered);
  const target = req.url ?? '/';
  const queryAt = target.indexOf('?');
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  const query = queryAt === -1 ? '' : target.slice(queryAt + 1);
  let result: void | Promise<void>;
  try {
    result = handler(req, res, path, query);
  } catch (error) {
    failed(res, error);
    return;
  }
  if (result instanceof Promise) result.catch((error: unknown) => failed(res, error));
}

function failed(res: ServerResponse, error: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendText(res, 500, `internal error: ${error instanceof Error ? error.message : String(error)}\n`);
}

async function listen(what: string, address: ListenAddress, handler: Handler, logger: Logger): Promise<Started> {
  const server = http.createServer(
    {
      requestTimeout: REQUEST_TIMEOUT_MS,
      headersTimeout: HEADERS_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
      maxHeaderSize: MAX_HEADER_BYTES,
      connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
    },
    (req, res) => dispatch(handler, req, res),
  );
  server.timeout = SOCKET_IDLE_TIMEOUT_MS;
  limitConnectionsPerPeer(server, { perPeer: MAX_CONNECTIONS_PER_PEER, total: MAX_CONNECTIONS, localReserve: LOCAL_RESERVE });
  server.listen({ host: address.host, port: address.port, exclusive: true });
  try {
    await once(server, 'listening');
  } catch (error) {
    throw new AmbitError('PROXY_BIND', `cannot listen on ${address.host}:${address.port} for ${what}: ${error instanceof Error ? error.message : String(error)}`, {
      cause: error,
      hint: 'another process holds the port, or the address is not one of this host\'s',
    });
  }
  // Once bound, an 'error' is an accept that failed (EMFILE when libuv's reserve descriptor is gone too): the server
  // goes on accepting; without a listener it would have ended the process.
  server.on('error', acceptErrorLogger(logger, what));
  const bound = server.address() as AddressInfo;
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return { server, url: `http://${host}:${bound.port}` };
}

async function closeServer(server: Server): Promise<void> {
  if (!server.listening) return;
  const closed = once(server, 'close');
  server.close();
  // close() only stops accepting; keep-alive and half-sent requests would hold it open until their timeouts.
  server.closeAllConnections();
  await closed;
}

function metricsHandler(registry: Registry): Handler {
  // Scrapes that arrive while one renders (several scrapers, connections from one client) share its text.
  let rendering: Promise<string> | null = null;
  const render = (): Promise<string> => {
    if (rendering === null) rendering = registry.metrics().finally(() => (rendering = null));
    return rendering;
  };
  return async (req, res, path) => {
    if (path !== '/metrics' && path !== '/stats/prometheus') return notFound(res, path);
    if (!isRead(req.method)) return methodNotAllowed(res, 'GET, HEAD');
    const text = await render();
    send(res, 200, registry.contentType, text);
  };
}

function readinessHandler(sources: AdminSources): Handler {
  return (req, res, path) => {
    if (path !== '/healthz/ready') return notFound(res, path);
    if (!isRead(req.method)) return methodNotAllowed(res, 'GET, HEAD');
    let state: { ready: boolean; pending: string[] };
    try {
      state = sources.readiness();
    } catch (error) {
      // Not knowing whether we are ready is not being ready.
      return sendText(res, 503, `not ready: ${error instanceof Error ? error.message : String(error)}\n`);
    }
    if (state.ready) return sendText(res, 200, 'ready\n');
    // ztunnel answers 500 here; 503 is the status Kubernetes probes, load balancers and humans read as
    // "not ready yet, try later" rather than "broken", and any non-2xx fails the probe either way.
    sendText(res, 503, `not ready, pending: ${[...state.pending].sort().join(', ')}\n`);
  };
}

const ADMIN_INDEX = `ambit admin
  GET  /                       this list
  GET  /config_dump            workloads, services, policies, certificates and settings in force (JSON)
  GET  /logging                the current log level (JSON)
  POST /logging?level=LEVEL    change the log level
  POST /logging?reset          back to the level the process started with
`;

function allowedLevels(logger: Logger): string[] {
  const values = logger.levels.values;
  return [...Object.keys(values).sort((a, b) => (values[b] ?? 0) - (values[a] ?? 0)), 'silent'];
}

/**
 * Why a request must not reach the admin API, or null. It is bound to loopback, which every local process reaches,
 * a browser on the host included: a cross-site page can POST a level change (it sends Origin), and DNS rebinding can
 * read the config dump through a name that resolves to 127.0.0.1 (its Host is that name). curl and scripts send
 * neither.
 */
function browserOrRebound(req: IncomingMessage): string | null {
  if (req.headers.origin !== undefined) return 'requests carrying an Origin header (a web page) are refused';
  const host = req.headers.host ?? '';
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d*$/, '');
  if (name !== 'localhost' && isIP(name) === 0) return `Host "${host}" is neither an IP address nor localhost (DNS rebinding is refused)`;
  return null;
}

function adminHandler(sources: AdminSources): Handler {
  const { logger } = sources;
  const startLevel = logger.level;
  return (req, res, path, query) => {
    const refused = browserOrRebound(req);
    if (refused !== null) return sendJson(res, 403, { error: refused });
    switch (path) {
      case '/':
        if (!isRead(req.method)) return methodNotAllowed(res, 'GET, HEAD');
        return sendText(res, 200, ADMIN_INDEX);
      case '/config_dump':
        if (!isRead(req.method)) return methodNotAllowed(res, 'GET, HEAD');
        return sendJson(res, 200, sources.configDump());
      case '/logging': {
        if (isRead(req.method)) return sendJson(res, 200, { level: logger.level });
        if (req.method !== 'POST') return methodNotAllowed(res, 'GET, HEAD, POST');
        const params = new URLSearchParams(query);
        const requested = params.get('level') ?? (params.has('reset') ? startLevel : null);
        if (requested === null) return sendJson(res, 200, { level: logger.level });
        const allowed = allowedLevels(logger);
        if (!allowed.includes(requested)) {
          return sendJson(res, 400, { error: `invalid log level "${requested}"; allowed levels: ${allowed.join(', ')}`, allowed });
        }
        const previous = logger.level;
        // Logged before the change, at warn, so the change itself is on record at any level but error and silent.
        logger.warn({ from: previous, to: requested, client: `${req.socket.remoteAddress}:${req.socket.remotePort}` }, 'log level changed through the admin API');
        logger.level = requested;
        return sendJson(res, 200, { level: logger.level, previous });
      }
      default:
        return notFound(res, path);
    }
  };
}

/**
 * Starts the servers that have an address. Throws AmbitError('USAGE') for an admin address that is not
 * loopback, a missing host or bad port, or a port that cannot be bound; servers already started are closed
 * first.
 */
/**
 * Only /metrics, on the same hardened server as the proxy's (timeouts, connections per client and in all): the agent's
 * `--metrics`, whose plain HTTP server had let idle connections take the descriptors its file writes needed.
 */
export async function startMetricsServer(address: ListenAddress, registry: Registry, logger: Logger): Promise<{ url: string; close(): Promise<void> }> {
  validateAddress('metrics', address);
  const { server, url } = await listen('metrics', address, metricsHandler(registry), logger);
  return { url, close: () => closeServer(server) };
}

export async function startObservability(options: ObservabilityOptions): Promise<Observability> {
  const { metrics, readiness, admin, registry, sources } = options;
  if (metrics) validateAddress('metrics', metrics);
  if (readiness) validateAddress('readiness', readiness);
  if (admin) {
    validateAddress('admin', admin);
    if (!isLoopbackAddress(admin.host)) {
      throw new AmbitError('USAGE', `the admin server may only listen on a loopback address (127.0.0.0/8 or ::1), not "${admin.host}": its /logging endpoint changes the proxy's behaviour`, {
        hint: 'use 127.0.0.1 or ::1; reach it remotely through kubectl port-forward or ssh',
      });
    }
  }

  const started: Server[] = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(started.map(closeServer));
  };
  const result: Observability = { close: closeAll };
  try {
    if (metrics) {
      const { server, url } = await listen('metrics', metrics, metricsHandler(registry), sources.logger);
      started.push(server);
      result.metricsUrl = url;
    }
    if (readiness) {
      const { server, url } = await listen('readiness', readiness, readinessHandler(sources), sources.logger);
      started.push(server);
      result.readinessUrl = url;
    }
    if (admin) {
      const { server, url } = await listen('admin', admin, adminHandler(sources), sources.logger);
      started.push(server);
      result.adminUrl = url;
    }
  } catch (error) {
    await closeAll();
    throw error;
  }
  return result;
}
