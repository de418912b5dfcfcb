// L7 authorization in the node proxy: on ports declared HTTP whose workload has HTTP rules, the tunnel
// is terminated as HTTP/1.1 or cleartext HTTP/2 (gRPC), every request is decided with its method, path,
// host and headers, a denied request gets `403 RBAC: access denied` (gRPC: PERMISSION_DENIED) and the
// connection goes on, and an allowed request is forwarded to the workload over the tunnel's own upstream
// connection, unchanged but for hop-by-hop headers and the x-forwarded-client-cert element the proxy appends (as
// Istio's sidecars do). ztunnel needs a separate Envoy for this.
import { EventEmitter } from 'node:events';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { http } from '../node-http.ts';
import * as http2 from 'node:http2';
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import type { Duplex } from 'node:stream';
import { cancelStream, cutSocket, STREAM_ABORTED } from './copy.ts';
import { Client } from '../undici.ts';
import type { Dispatcher, buildConnector } from 'undici';
import type { Decision } from '../authz/compile.ts';
import type { HttpRequestFacts } from '../authz/decide.ts';
import { clientIpOfForwardedFor } from '../authz/decide.ts';
import type { IpAddress } from '../authz/match.ts';
import { LogBudget } from '../observe/log.ts';
import type { Logger } from '../observe/log.ts';
import { normalizePath } from '../authz/path.ts';
import { XFCC } from './xfcc.ts';
import { hasEmptyLabel, hasNumericPort, hasPercent } from './authority.ts';
import type { HttpVersion } from '../config/http-ports.ts';
import type { PathNormalization } from '../config/objects.ts';
import type { RequestProtocol, TunnelMeter } from '../observe/metrics.ts';
import type { RequestLogRecord } from '../observe/access-log.ts';
import { countStreamBytes } from './stream-bytes.ts';
import type { StreamBytes } from './stream-bytes.ts';

const DENIED_BODY = 'RBAC: access denied';
/** The HTTP/2 connection preface starts with these bytes; anything else is read as HTTP/1.1. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded; nor is any header the Connection header names. */
const HOP_BY_HOP: readonly string[] = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'http2-settings'];

/** The header names a Connection header lists; null for the usual `keep-alive` or `close` alone (no allocation per request). */
function connectionTokens(value: string): ReadonlySet<string> | null {
  const lower = value.trim().toLowerCase();
  if (lower === 'keep-alive' || lower === 'close') return null;
  return new Set(lower.split(',').map((token) => token.trim()).filter(Boolean));
}

/**
 * The headers a proxy passes on: without hop-by-hop headers, without those the Connection header lists
 * (RFC 9110 §7.6.1: `Connection: close, x-secret` makes x-secret hop-by-hop), and with `te: trailers` kept,
 * the one TE value HTTP/2 allows and gRPC servers require (RFC 9113 §8.2.2).
 */
export function forwardableHeaders<T extends string | string[] | number>(headers: Readonly<Record<string, T | undefined>>): Record<string, T> {
  const result: Record<string, T> = {};
  const listed = headers['connection'];
  const named = listed === undefined ? null : connectionTokens(String(listed));
  for (const name in headers) {
    const value = headers[name];
    if (value !== undefined && passesOn(name, value, named)) result[name] = value;
  }
  return result;
}

/** Whether a field goes on: not hop-by-hop in any case (but `te: trailers`), nor named by a Connection field. */
function passesOn(name: string, value: unknown, named: ReadonlySet<string> | null): boolean {
  const hop = hopByHopName(name);
  if (hop !== null) return hop === 'te' && String(value).trim().toLowerCase() === 'trailers';
  return named === null || !named.has(name.toLowerCase());
}

/**
 * The same rules over a request's raw header fields (name, value, name, value, ...; HTTP/1.1 or h2, pseudo-headers
 * included), for forwarding it as the client wrote it: every field of a repeated header, in order, names in their
 * case. Node's header object keeps only the first of a repeated `user-agent` or `authorization`, so the application
 * would not see what authorization judged.
 */
export function forwardableRawHeaders(raw: readonly string[]): string[] {
  let named: ReadonlySet<string> | null = null;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!sameHeaderName(raw[i] as string, 'connection')) continue;
    const tokens = connectionTokens(raw[i + 1] as string);
    if (tokens !== null) named = named === null ? tokens : new Set([...named, ...tokens]);
  }
  const result: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (passesOn(name, value, named)) result.push(name, value);
  }
  return result;
}

/**
 * The fields an upgrade is decided on: Envoy keeps an upgrade's Connection and Upgrade for its filters, so a rule on
 * `request.headers[upgrade]` sees them (a DENY of WebSockets did not match and the upgrade went through). They are
 * still not forwarded: the upstream client writes its own.
 */
function withUpgradeFields(forwarded: readonly string[], raw: readonly string[]): string[] {
  const decided = forwarded.slice();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    if (sameHeaderName(name, 'connection') || sameHeaderName(name, 'upgrade')) decided.push(name, raw[i + 1] as string);
  }
  return decided;
}

/** The hop-by-hop header a raw field name spells, in any case; null for an end-to-end one (no allocation). */
function hopByHopName(name: string): string | null {
  for (const candidate of HOP_BY_HOP) if (sameHeaderName(name, candidate)) return candidate;
  return null;
}

const { HTTP2_HEADER_STATUS, HTTP2_HEADER_METHOD, HTTP2_HEADER_PATH, HTTP2_HEADER_AUTHORITY, HTTP2_HEADER_SCHEME, HTTP2_HEADER_CONTENT_TYPE, NGHTTP2_CANCEL, NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** `again`: a request decided before (at arrival) decided anew under another configuration, not counted or audited twice. */
export type RequestDecider = (facts: HttpRequestFacts, again?: boolean) => Decision;

/** How one tunnel's requests are decided and forwarded. */
export interface TunnelInspection {
  readonly decide: RequestDecider;
  readonly onDenied: (decision: Decision, facts: HttpRequestFacts) => void;
  /**
   * The configuration in force (compared by identity only): a request decided under one and sent on to the workload
   * under another (waiting behind a pipelined request, or for the tunnel's one HTTP/1.1 connection) is decided again
   * as it goes.
   */
  readonly inForce: () => object;
  /** How request paths are normalised under the configuration in force (the mesh's pathNormalization). */
  readonly pathNormalization: () => PathNormalization;
  readonly upstreamVersion: HttpVersion | null;
  /** Writes a request's access line; null (or absent) when those are off. */
  readonly logRequest?: ((record: RequestLogRecord) => void) | null;
}

/** What a request's access line needs of the request, kept from its start to its answer's end (access log on only). */
interface RequestStart {
  readonly method: string;
  readonly path: string;
  readonly authority: string;
  readonly protocol: RequestLogRecord['protocol'];
  readonly startedMs: number;
}
/** Requests being answered, by their ServerResponse or h2c stream: touched only while access lines are on. */
const requestStarts = new WeakMap<object, RequestStart>();
/** When each request being answered arrived (performance.now()), for istio_request_duration_milliseconds. */
const requestStartedAt = new WeakMap<object, number>();

/**
 * Each h2c request's bytes, counted on its stream: its DATA both ways, its header fields (see headerFieldBytes) added.
 * Envoy's (istio_request_bytes) are the stream's frames as they crossed the wire, HPACK-compressed; nghttp2 tells
 * Node's streams nothing of their frames, so the fields count uncompressed, and frame headers not at all.
 */
const h2RequestBytes = new WeakMap<object, StreamBytes>();

/**
 * An HTTP/1.1 request's chunked trailers, as the client wrote them (names lower-cased, as HTTP/2 has them), on the
 * workload's HTTP/2 stream; none: the stream ends as it would have. Hop-by-hop fields and any Node refuses (a
 * pseudo-header, a malformed name) are not sent on; the request ends all the same.
 */
function sendRequestTrailers(stream: http2.ClientHttp2Stream, raw: readonly string[]): void {
  // No prototype: a trailer named `constructor` or `toString` is a field like any other, not an inherited member.
  const fields: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    const value = raw[i + 1] as string;
    const had = fields[name];
    fields[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value];
  }
  endWithTrailers(stream, forwardableHeaders(fields));
}

/**
 * Ends a request on the workload's stream with the client's trailers. Fields Node refuses to send (a header that may
 * appear once, repeated) leave them all out: the request still ends, never held open.
 */
function endWithTrailers(stream: http2.ClientHttp2Stream, trailers: http2.OutgoingHttpHeaders): void {
  if (stream.destroyed || stream.closed) return;
  try {
    stream.sendTrailers(trailers);
    return;
  } catch {
    // A field Node will not send: the request ends without trailers.
  }
  try {
    stream.sendTrailers({});
  } catch {
    // Not even that: cut rather than leave the workload waiting for the request's end.
    cancelStream(stream);
  }
}

/** Adds an h2c request's trailers to its size: one listener for every stream, which finds its count by `this`. */
function countRequestTrailers(this: http2.ServerHttp2Stream, trailers: http2.IncomingHttpHeaders): void {
  const counted = h2RequestBytes.get(this);
  if (counted !== undefined) counted.received += headerFieldBytes(trailers);
}

/**
 * A header block's size as its fields' names and values (each pair of a raw list, or each field of an object): their
 * lengths, as field names and values are latin1 strings, a byte per character, both ways.
 */
function headerFieldBytes(fields: readonly string[] | Readonly<Record<string, unknown>> | undefined): number {
  if (fields === undefined) return 0;
  let bytes = 0;
  if (Array.isArray(fields)) {
    for (const field of fields as readonly string[]) bytes += field.length;
    return bytes;
  }
  for (const name in fields) {
    const value = (fields as Readonly<Record<string, unknown>>)[name];
    if (Array.isArray(value)) for (const each of value) bytes += name.length + String(each).length;
    else if (value !== undefined) bytes += name.length + String(value).length;
  }
  return bytes;
}

/**
 * What an HTTP/1.1 tunnel's client sent since the last request was counted: the size of the request now counted, as
 * Envoy's downstream bytes meter has it (its head and body as they came). Exact for a client that waits for each
 * answer. `atMost` (>= 0): the request's own size, when requests behind it have come too (pipelined); the rest is theirs.
 */
function takeRequestBytes(state: TunnelState, atMost = -1): number {
  const bytes = state.bytes;
  if (bytes === null) return 0;
  let taken = bytes.received - state.answeredReceived;
  if (atMost >= 0 && taken > atMost) taken = atMost;
  state.answeredReceived += taken;
  return taken;
}

/** `HTTP/1.1` or `HTTP/1.0` in a request line. */
const HTTP_VERSION_LENGTH = 8;

/**
 * A pipelined HTTP/1.1 request's size on the wire, from what the parser kept of it: its request line, its fields as
 * `name: value` lines (the parser trims the spaces around a value; one after the colon is how clients write them), the
 * empty line and its Content-Length. -1 for a chunked body, whose framing the parser does not keep: the request then
 * counts everything that came before its answer ended, as an unpipelined one does.
 */
function pipelinedRequestBytes(req: IncomingMessage): number {
  if (req.headers['transfer-encoding'] !== undefined) return -1;
  let bytes = (req.method ?? '').length + 1 + (req.url ?? '').length + 1 + HTTP_VERSION_LENGTH + 2 + 2;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) bytes += (raw[i] as string).length + 2 + (raw[i + 1] as string).length + 2;
  const length = Number(req.headers['content-length'] ?? 0);
  return Number.isSafeInteger(length) && length > 0 ? bytes + length : bytes;
}

/**
 * What went to an HTTP/1.1 tunnel's client since the last answer ended, and `writing` more (an answer about to be
 * written): the answers go out in order, so this is the answer now ended, head and body.
 */
function takeResponseBytes(state: TunnelState, writing: number): number {
  const bytes = state.bytes;
  if (bytes === null) return writing;
  const taken = bytes.sent + writing - state.answeredSent;
  // What is about to be written is counted by the stream once written; the mark stays ahead of it until then.
  state.answeredSent = Math.max(state.answeredSent, bytes.sent + writing);
  return taken > 0 ? taken : 0;
}

/** How long the request `answer` answers took, its start let go; 0 when it was not timed. */
function elapsedFor(answer: object): number {
  const started = requestStartedAt.get(answer);
  if (started === undefined) return 0;
  requestStartedAt.delete(answer);
  return performance.now() - started;
}

interface TunnelState {
  readonly upstream: Socket;
  readonly decide: RequestDecider;
  readonly inForce: () => object;
  readonly pathNormalization: () => PathNormalization;
  readonly onDenied: (decision: Decision, facts: HttpRequestFacts) => void;
  /** What the workload's port speaks, as declared (null: whatever the client speaks): requests are converted to it. */
  readonly upstreamVersion: HttpVersion | null;
  /** The x-forwarded-client-cert element appended to every request (clientCertElement); null: the field is removed. */
  readonly clientCert: string | null;
  /** One reusable facts object per tunnel: a request fills it, the decision reads it. */
  readonly facts: MutableFacts;
  h1Client: Client | null;
  h2Upstream: http2.ClientHttp2Session | null;
  /** The client's h2c session on this tunnel, when it speaks h2c. */
  h2Downstream: http2.Http2Session | null;
  /**
   * h2c requests to an HTTP/1.1 workload waiting for the tunnel's one upstream connection, sent one at a time: one
   * whose client gave up before its turn is never sent, and all are refused unprocessed if that connection ends.
   */
  readonly h1Queue: H1Job[];
  /**
   * HTTP/1.1 requests pipelined behind one the workload is answering, allowed as they arrived: sent one at a time as
   * the one before is answered, each decided again if the configuration changed meanwhile (undici's own queue sends
   * them without asking, and aborting one there ends the connection).
   */
  readonly h1Waiting: WaitingH1[];
  /** A request is with the workload on the tunnel's one HTTP/1.1 connection (h2c's queue or h1Waiting's). */
  h1Busy: boolean;
  requests: number;
  denied: number;
  /** HTTP/1.1 requests forwarded whose responses have not finished (pipelining). */
  inFlight: number;
  /** The HBONE stream the tunnel's HTTP is read from: reset when it holds too much (heldBytes). */
  readonly tunnel: Duplex;
  /** Bytes of request heads held unanswered (MAX_HELD_HEAD_BYTES_PER_TUNNEL). */
  heldBytes: number;
  /** The sizes of the HTTP/1.1 heads pipelined behind the one being answered, in order: each is held until its turn. */
  readonly pipelinedHeads: number[];
  /** The inspector's count of them across its tunnels (MAX_HELD_HEAD_BYTES). */
  readonly held: HeldHeads;
  /** Reset for what the client sent (a malformed request behind one in flight): answers cut by it are Envoy's DPE. */
  cutForProtocolError: boolean;
  /** The idle time the workload's last answer allowed (its Keep-Alive hint, less a margin); null until one said. */
  keepAliveS: number | null;
  /** One listener per tunnel for its responses' 'close', not a closure per request. */
  readonly onResponseClose: (this: ServerResponse) => void;
  /** The same for its h2c streams: each answered request counted. */
  readonly onH2StreamClose: (this: http2.ServerHttp2Stream) => void;
  /** Writes a request's access line; null when those are off. */
  readonly logRequest: ((record: RequestLogRecord) => void) | null;
  /** The tunnel's series, for requests answered outside a ServerResponse or stream (upgrades, parse errors). */
  readonly meter: TunnelMeter | null;
  /** What crossed the tunnel's stream so far (null: not counted); an HTTP/1.1 request's size is its share of it. */
  readonly bytes: StreamBytes | null;
  /** The tunnel's bytes from and to the client as counted when its last HTTP/1.1 answer ended. */
  answeredReceived: number;
  answeredSent: number;
  /**
   * The sizes of the HTTP/1.1 request whose answer has just finished, until its 'close' counts it; -1 for none (the
   * request's, also while its body has not all come: an answer given before the upload was read, a refusal).
   */
  finishedRequestBytes: number;
  finishedResponseBytes: number;
  /**
   * Takes an HTTP/1.1 request's sizes as its answer finishes: before the server hands the tunnel to the next answer
   * (pipelined, held until now), whose bytes would otherwise count with this one by its 'close'.
   */
  readonly onResponseFinish: (this: ServerResponse) => void;
  /**
   * Since when (performance.now()) the tunnel has been waiting for its next request: opened, or its last HTTP/1.1
   * answer ended. A request answered outside a ServerResponse (a head refused, or never finished: 408) is timed from it.
   */
  waitingSince: number;
}

/**
 * A request answered without a ServerResponse or an h2c stream of its own (a WebSocket upgrade refused, a request
 * head Node's parser refused, a CONNECT): counted and logged as the others are.
 */
function answeredOutside(state: TunnelState, method: string, path: string, authority: string, responseCode: number, responseFlags: string, answerBytes: number): void {
  const durationMs = performance.now() - state.waitingSince;
  const requestBytes = takeRequestBytes(state);
  const responseBytes = takeResponseBytes(state, answerBytes);
  state.meter?.request('http', responseCode, '', responseFlags, durationMs, requestBytes, responseBytes);
  state.logRequest?.({ method, path, authority, protocol: 'HTTP/1.1', responseCode, responseFlags, durationMs: Math.round(durationMs), requestBytes, responseBytes });
}

/** Ends a tunnel with an answer the proxy writes itself (a refusal, a head it could not read), counted as its size. */
function endWithAnswer(state: TunnelState | undefined, socket: Duplex, answer: string, method: string, path: string, authority: string, responseCode: number, responseFlags: string): void {
  if (state !== undefined) answeredOutside(state, method, path, authority, responseCode, responseFlags, Buffer.byteLength(answer));
  socket.end(answer);
}

/** An HTTP/1.1 request answered by its ServerResponse, counted and logged once its sizes are known. */
function reportH1Request(state: TunnelState, answer: ServerResponse, protocol: RequestProtocol, code: number, flags: string, durationMs: number, requestBytes: number, responseBytes: number): void {
  state.meter?.request(protocol, code, '', flags, durationMs, requestBytes, responseBytes);
  if (state.logRequest !== null) logRequestEnd(state.logRequest, answer, code, flags, requestBytes, responseBytes);
}

/** A request's access line, once its answer has ended: what it asked for (kept at its start), what it got. */
function logRequestEnd(log: (record: RequestLogRecord) => void, answer: object, responseCode: number, responseFlags: string, requestBytes: number, responseBytes: number): void {
  const start = requestStarts.get(answer);
  if (start === undefined) return;
  requestStarts.delete(answer);
  log({ method: start.method, path: start.path, authority: start.authority, protocol: start.protocol, responseCode, responseFlags, durationMs: Date.now() - start.startedMs, requestBytes, responseBytes });
}

/** Answers a policy refused (HTTP/1.1 responses, h2c streams): counted with response_flags DENY. Touched only on denial. */
const deniedAnswers = new WeakSet<object>();
/**
 * Answers the workload failed (no answer, 502, or one cut short by its reset or close): counted with response_flags
 * UC (Envoy's upstream connection termination), not DC, which would blame the client. Touched only on failure.
 */
const upstreamFailed = new WeakSet<object>();
/** Requests refused as malformed before any policy (400, 501): counted DPE, Envoy's downstream protocol error. */
const protocolErrors = new WeakSet<object>();

/** response_flags of an answer as it ends: DENY, UC (the workload failed it), DPE (refused as malformed), DC (the client left first) or '-'. */
function answerFlags(answer: object, complete: boolean): string {
  if (deniedAnswers.has(answer)) return 'DENY';
  if (upstreamFailed.has(answer)) return 'UC';
  if (protocolErrors.has(answer)) return 'DPE';
  return complete ? '-' : 'DC';
}

/**
 * The `grpc_response_status` label of a gRPC status as the workload sent it: '' for none, its code for one of gRPC's
 * seventeen (0-16), and `-1` for anything else, as Envoy reads a status it cannot parse (`InvalidCode`). The value
 * comes from the workload: taken as sent, each distinct one would be a new series the proxy keeps forever.
 */
export function grpcStatusLabel(value: unknown): string {
  if (value === undefined) return '';
  const text = String(value);
  if (text.length === 1 && text >= '0' && text <= '9') return text;
  // Read as a number, as Envoy does (`07` is 7); bounded, so that no value builds a string per request.
  if (text.length > 10 || !/^\d+$/.test(text)) return '-1';
  const code = Number(text);
  return code <= 16 ? GRPC_CODES[code] as string : '-1';
}
const GRPC_CODES: readonly string[] = Array.from({ length: 17 }, (_, code) => String(code));

/** `request_protocol` from an answer's content type, as Istio reports a gRPC call. */
function requestProtocolOf(contentType: unknown): RequestProtocol {
  return typeof contentType === 'string' && contentType.startsWith('application/grpc') ? 'grpc' : 'http';
}

/**
 * Pipelined HTTP/1.1 requests a tunnel may have forwarded and not yet answered. Node's parser reads every request
 * of a chunk (DATA frames are up to 1 MiB: some 36,000 short requests) and undici queues them all, so a peer could
 * fill the node proxy's memory from one tunnel; past this the tunnel is reset. Clients rarely pipeline at all.
 */
const MAX_PIPELINED_REQUESTS = 64;
/** `upgrade` among a Connection field's options: what makes Node's parser read a request as an upgrade. */
const UPGRADE_TOKEN = /(?:^|[\s,])upgrade(?:$|[\s,])/i;
/**
 * Bytes of request heads a tunnel may hold unanswered behind the one being answered (pipelined HTTP/1.1 requests, h2c
 * requests queued for an HTTP/1.1 workload), and all tunnels of the proxy together. MAX_PIPELINED_REQUESTS counts
 * requests, not their size: 63 heads of 60 KiB behind one a workload never answered held 4-6 MiB a tunnel, and one
 * peer's 1,081 such tunnels ended the proxy out of memory. Past the first bound (Envoy's per-connection buffer limit,
 * 1 MiB: an h2c client's 100 streams with 10 KiB of headers each fit) the tunnel is reset; past the second, the tunnel
 * holding the most.
 */
const MAX_HELD_HEAD_BYTES_PER_TUNNEL = 1024 * 1024;
const MAX_HELD_HEAD_BYTES = 64 * 1024 * 1024;

/** A request head's size as held: its request line (or path) and fields, name and value. */
function heldHeadBytes(target: string, rawHeaders: readonly string[]): number {
  let bytes = target.length + 16;
  for (let i = 0; i < rawHeaders.length; i++) bytes += (rawHeaders[i] as string).length + 2;
  return bytes;
}

/**
 * How long a tunnel whose workload closed, its answer sent, waits for the client to end its side before asking it to
 * stop sending (RST_STREAM NO_ERROR, which lets what the client's proxy still holds of the answer reach it).
 */
const UPSTREAM_CLOSED_GRACE_MS = 5_000;
/**
 * Until then, how long the rest of the answer may sit without the client taking any of it (about what Linux gives a
 * closed socket's unread data, tcp_orphan_retries): a slow reader gets its whole answer, a vanished one is let go.
 */
const UPSTREAM_CLOSED_STALL_MS = 60_000;
/** The largest request head taken (request line and fields): Envoy's default, max_request_headers_kb 60. */
export const MAX_REQUEST_HEADER_BYTES = 60 * 1024;
/** The largest answer head taken from a workload: Envoy's default, max_response_headers_kb 60. */
const MAX_RESPONSE_HEADER_BYTES = 60 * 1024;
const TOO_LARGE_ANSWER = 'HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n';
const WS_TO_H2_BODY = 'WebSocket upgrade to an HTTP/2 workload not forwarded';
const UPGRADE_FAILED_ANSWER = 'HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nconnection: close\r\n\r\nupstream connect error\n';
const CONNECT_REFUSED_ANSWER = 'HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\nconnection: close\r\ncontent-length: 0\r\n\r\n';
/** How long the tunnel's own HTTP server keeps an idle client connection: no hint may promise longer. */
const TUNNEL_KEEP_ALIVE_S = 60;
/** A request's head must arrive within this (Node's default): a peer sending `GET / HTTP/1.1\r\n` and no more is cut off. */
const HEADERS_TIMEOUT_MS = 60_000;

/** Whether `text` has a character from `low` to `high` (char codes): a few characters, no regular expression per request. */
function hasCharBetween(text: string, low: number, high: number): boolean {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code >= low && code <= high) return true;
  }
  return false;
}

function hasLowerCase(text: string): boolean {
  return hasCharBetween(text, 97 /* a */, 122 /* z */);
}

function hasUpper(text: string): boolean {
  return hasCharBetween(text, 65 /* A */, 90 /* Z */);
}

/** An answer whose rest will never leave: ended with CANCEL (its END_STREAM, queued behind that rest, never goes). */
function cutAnswer(stream: http2.ServerHttp2Stream): void {
  if (!stream.destroyed) stream.close(NGHTTP2_CANCEL);
}

/**
 * Ends an inspected tunnel as failed: RST_STREAM CANCEL, which the client's proxy passes on as a reset. A bare
 * destroy() of the HBONE stream sends NO_ERROR, which reads as a clean end: a cut answer would pass for a whole one.
 */
function resetTunnel(socket: Duplex): void {
  // close(CANCEL) would end our side first (END_STREAM), and a client reading that before the reset sees a clean
  // end; destroy() with an AbortError resets at once, with CANCEL (Node's code for it).
  socket.destroy(STREAM_ABORTED);
}

/**
 * The workload closed: nothing more can be forwarded on this tunnel. Ended, not reset: the answer it finished with
 * the close (a close-delimited body) may still be queued, here or in the client's proxy, for a slow client, and
 * CANCEL would drop it (Node discards a reset stream's unread data). Once it has all left, a client that keeps its
 * side open is asked to stop sending; an answer that stops moving altogether is cut off.
 */
function endAfterWorkloadClosed(stream: http2.ServerHttp2Stream): void {
  if (stream.destroyed) return;
  stream.end();
  if (stream.writableFinished) {
    awaitClientEnd(stream);
    return;
  }
  let unsent = stream.writableLength;
  const stall = setInterval(() => {
    if (!stream.destroyed && stream.writableLength < unsent) {
      unsent = stream.writableLength;
      return;
    }
    clearInterval(stall);
    cutAnswer(stream);
  }, UPSTREAM_CLOSED_STALL_MS).unref();
  stream.once('finish', () => {
    clearInterval(stall);
    awaitClientEnd(stream);
  });
  stream.once('close', () => clearInterval(stall));
}

/** How often tunnels waiting for their client's end are looked at: a closed one is let go of within this. */
const CLIENT_END_CHECK_MS = 50;
/** Tunnels whose answer has all left, waiting for the client to end its side (awaitClientEnd). */
const awaitingClientEnd = new Set<http2.ServerHttp2Stream>();
let clientEndCheck: NodeJS.Timeout | undefined;

/**
 * Our answer has all left: the tunnel ends when the client ends its side, or is asked to stop sending after the grace.
 * The client's END_STREAM closes the stream, but Node lets a stream go only once its unread rest is read, and the rest
 * of an upload answered early is what Node's HTTP server keeps paused; Node signals the close itself to nobody. Each
 * such tunnel had held its place among the session's concurrent streams for the whole grace: under 50 clients answered
 * early the destination refused 4 new tunnels in 10 (ENHANCE_YOUR_CALM), then closed the session for refusing too many.
 */
function awaitClientEnd(stream: http2.ServerHttp2Stream): void {
  if (stream.destroyed) return;
  if (stream.closed) {
    stream.destroy();
    return;
  }
  const grace = setTimeout(stopUpload, UPSTREAM_CLOSED_GRACE_MS, stream).unref();
  awaitingClientEnd.add(stream);
  stream.once('close', () => {
    clearTimeout(grace);
    awaitingClientEnd.delete(stream);
  });
  clientEndCheck ??= setInterval(letClosedTunnelsGo, CLIENT_END_CHECK_MS).unref();
}

function letClosedTunnelsGo(): void {
  for (const stream of awaitingClientEnd) {
    if (!stream.closed && !stream.destroyed) continue;
    awaitingClientEnd.delete(stream);
    // Both ends have sent END_STREAM: what is left unread is the rest of an upload nobody takes.
    stream.destroy();
  }
  if (awaitingClientEnd.size === 0) {
    clearInterval(clientEndCheck);
    clientEndCheck = undefined;
  }
}

/** A request the workload's connection closed before answering: Envoy's body for its 502 (UC). */
const UPSTREAM_RESET_BODY = 'upstream connect error or disconnect/reset before headers. reset reason: connection termination\n';

/** Concurrent streams of an h2c connection inside one tunnel, as on HBONE sessions (Node's default is unbounded). */
const MAX_INNER_H2_STREAMS = 100;

/**
 * Request headers a message carries at most once (RFC 9110 gives them one value; Node's header object keeps the
 * first and refuses to send two on h2). Repeated, a rule would see the values joined (`Bearer revoked,x`) while
 * the application reads the first: refused with 400, on both protocols.
 */
const SINGLE_VALUE_REQUEST_HEADERS: readonly string[] = [
  'authorization', 'proxy-authorization', 'content-type', 'content-encoding', 'content-language', 'content-location', 'content-md5', 'content-range',
  'user-agent', 'referer', 'from', 'max-forwards', 'if-modified-since', 'if-unmodified-since', 'if-match', 'if-none-match', 'if-range', 'range',
  'date', 'dnt', 'upgrade-insecure-requests', 'age', 'etag', 'expires', 'last-modified', 'location', 'retry-after', 'tk', 'x-content-type-options',
  'access-control-request-method', 'access-control-max-age', 'access-control-allow-credentials',
];
/** Their indexes by name length, so most names are settled by one comparison of lengths. */
const SINGLE_VALUE_BY_LENGTH: ReadonlyMap<number, readonly number[]> = (() => {
  // One bit each in a request's 32-bit set of those seen (fill): no allocation per request.
  if (SINGLE_VALUE_REQUEST_HEADERS.length > 32) throw new Error('more single-value headers than bits in an int32');
  const byLength = new Map<number, number[]>();
  SINGLE_VALUE_REQUEST_HEADERS.forEach((name, index) => {
    const list = byLength.get(name.length);
    if (list === undefined) byLength.set(name.length, [index]);
    else list.push(index);
  });
  return byLength;
})();

/** The index in SINGLE_VALUE_REQUEST_HEADERS of the header a raw name spells (in any case), or -1. */
function singleValueIndex(raw: string): number {
  const candidates = SINGLE_VALUE_BY_LENGTH.get(raw.length);
  if (candidates === undefined) return -1;
  for (const index of candidates) if (sameHeaderName(raw, SINGLE_VALUE_REQUEST_HEADERS[index] as string)) return index;
  return -1;
}

/** Whether a raw header name equals a lower-case one, ignoring ASCII case (HTTP/1 keeps the sender's case). */
function sameHeaderName(raw: string, lower: string): boolean {
  if (raw.length !== lower.length) return false;
  for (let i = 0; i < raw.length; i++) {
    const code = raw.charCodeAt(i);
    if ((code >= 65 && code <= 90 ? code + 32 : code) !== lower.charCodeAt(i)) return false;
  }
  return true;
}

export class MutableFacts implements HttpRequestFacts {
  method = '';
  path = '';
  host = '';
  /** What the application receives: the normalised path and the original query. */
  forwardPath = '';
  /**
   * The header fields as received, name then value: not Node's header object, which inherits from
   * Object.prototype (`constructor` would read as present) and keeps only the first of a repeated `user-agent`,
   * `authorization` and the like (a harmless first one would hide the one a DENY rule looks for).
   */
  #raw: readonly string[] = [];
  /** Header values looked up for this request (one map per tunnel, cleared per request). */
  readonly #headers = new Map<string, string | undefined>();
  /** The request's remote IP, read from X-Forwarded-For when first asked for; undefined until then. */
  #remoteIp: IpAddress | null | undefined;

  /**
   * Fills the facts of one request; returns null, or what makes it malformed (it is refused with 400): a bad
   * percent-escape or a fragment in the path, a target that is not a path, or Host fields that could name another
   * host than the one decided on (`host`: the HTTP/1.1 Host, or h2's :authority). The request is forwarded with all
   * its fields, so a second Host (RFC 9112 §3.2 refuses it too) or an h2 Host other than :authority could send the
   * application elsewhere. `http1`: an HTTP/1.x request, which must carry one Host field and may use an absolute
   * URI as its target (decided, as Envoy does, on its path and authority, and forwarded as a path). `normalization`:
   * the mesh's pathNormalization, read per request so that a change applies to the next one.
   */
  fill(method: string, rawTarget: string, host: string, rawHeaders: readonly string[], http1: boolean, normalization: PathNormalization): string | null {
    this.method = method;
    // Methods are case-sensitive, so a DENY on DELETE does not match `delete`, which routers such as Express's read
    // as DELETE. Node's HTTP/1 parser refuses it; an h2 :method had been forwarded as sent.
    if (hasLowerCase(method)) return 'a method with lower-case letters';
    let rawPath = rawTarget;
    if (rawTarget.charCodeAt(0) !== 47 /* / */) {
      // The upstream clients cannot send `OPTIONS *` on (undici refuses the path): refused plainly, not answered 502.
      if (rawTarget === '*') return method === 'OPTIONS' ? 'OPTIONS * is not forwarded on an inspected port' : 'an asterisk-form target (*) is for OPTIONS only';
      // Absolute-form (`GET http://web/admin`): an application reads the path out of it, so rules must too.
      const absolute = http1 ? splitAbsoluteForm(rawTarget) : null;
      if (absolute === null) return 'a request target that is not a path';
      host = absolute.authority;
      rawPath = absolute.path;
    }
    if (host === '') return http1 ? 'no Host field' : 'no :authority';
    // nghttp2 checks an h2 :authority; Node's HTTP/1 parser lets any visible character through, and a host a
    // rule never matched (`admin.shop\x`) can still be read by the application as the one it names.
    if (http1 && !isValidAuthority(host)) return 'a Host that is not a valid authority';
    // Its port must be digits (RFC 3986 §3.2.3): `evil.shop:abc` is no authority, and a DENY on evil.shop's hosts,
    // which also reads the Host without its port, could not cut a port it cannot read.
    if (!hasNumericPort(host)) return http1 ? 'a Host whose port is not a number' : 'an :authority whose port is not a number';
    if (hasEmptyLabel(host)) return http1 ? 'a Host with an empty label (..)' : 'an :authority with an empty label (..)';
    if (hasPercent(host)) return http1 ? 'a Host with a percent-encoded character' : 'an :authority with a percent-encoded character';
    const query = rawPath.indexOf('?');
    const path = query < 0 ? rawPath : rawPath.slice(0, query);
    const normalized = normalizePath(path, normalization);
    if (normalized === null) return path.indexOf('#') >= 0 ? 'a fragment (#) in the request target' : 'malformed request path';
    this.path = normalized;
    this.forwardPath = normalized === path ? rawPath : query < 0 ? normalized : normalized + rawPath.slice(query);
    this.host = hasUpper(host) ? host.toLowerCase() : host;
    this.#raw = rawHeaders;
    this.#headers.clear();
    this.#remoteIp = undefined;
    let hosts = 0;
    let singles = 0;
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      const name = rawHeaders[i] as string;
      if (!sameHeaderName(name, 'host')) {
        const index = singleValueIndex(name);
        if (index < 0) continue;
        const bit = 1 << index;
        if ((singles & bit) !== 0) return `more than one ${SINGLE_VALUE_REQUEST_HEADERS[index] as string} field`;
        singles |= bit;
        continue;
      }
      if (++hosts > 1) return 'more than one Host field';
      const value = rawHeaders[i + 1] as string;
      if ((hasUpper(value) ? value.toLowerCase() : value) !== this.host) return 'a Host field other than the authority';
    }
    // Forwarded without one, the upstream client would make up a Host the decision never saw.
    if (http1 && hosts === 0) return 'no Host field';
    return null;
  }

  #pseudoHeader(name: string): string | undefined {
    switch (name) {
      case ':authority':
        return this.host === '' ? undefined : this.host;
      case ':method':
        return this.method;
      case ':path':
        return this.forwardPath;
      case ':scheme':
        return 'http';
      default:
        return undefined;
    }
  }

  /** Only rules on the remote IP ask: most requests never parse their X-Forwarded-For. */
  get remoteIp(): IpAddress | null {
    if (this.#remoteIp === undefined) this.#remoteIp = clientIpOfForwardedFor(this.header('x-forwarded-for'));
    return this.#remoteIp;
  }

  /** Every value of a header, joined with `,` as Envoy does; undefined when the request has none. */
  header(name: string): string | undefined {
    // The authority decided on, whichever protocol carried it (an h2 request has :authority and usually no host).
    if (name === 'host') return this.host === '' ? undefined : this.host;
    // Pseudo-headers, as Envoy has them for either protocol: the path normalised as decided, with its query (never an
    // h2c client's raw :path, which rules on paths did not see); the scheme inside the tunnel is plain HTTP.
    if (name.charCodeAt(0) === 58 /* : */) return this.#pseudoHeader(name);
    // Once per name and request: every rule with a condition on the header asks again, and a request of thousands
    // of fields made each of hundreds of rules rescan and rejoin them (7.7 ms per request with 200 rules, now 0.9).
    const seen = this.#headers;
    if (seen.has(name)) return seen.get(name);
    const raw = this.#raw;
    // Cookies split into fields of their own (HTTP/2's crumbs, RFC 9113 §8.2.3) are one list joined with "; ", as
    // Envoy rebuilds them and as the workload is given them; a rule on "*; role=admin" missed "role" after a ",".
    const separator = name === 'cookie' ? '; ' : ',';
    let found: string | undefined;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      if (sameHeaderName(raw[i] as string, name)) found = found === undefined ? (raw[i + 1] as string) : `${found}${separator}${raw[i + 1] as string}`;
    }
    seen.set(name, found);
    return found;
  }
}

/**
 * The authority and path (with query) of an absolute-form target, `http[s]://authority[/path][?query]`; null when
 * it is not one, or names userinfo (RFC 9110 §4.2.4) or no authority.
 */
function splitAbsoluteForm(target: string): { authority: string; path: string } | null {
  const scheme = /^https?:\/\//i.exec(target);
  if (scheme === null) return null;
  const start = scheme[0].length;
  let end = start;
  while (end < target.length) {
    const code = target.charCodeAt(end);
    if (code === 47 /* / */ || code === 63 /* ? */ || code === 35 /* # */) break;
    end++;
  }
  const authority = target.slice(start, end);
  if (authority === '' || authority.indexOf('@') >= 0) return null;
  const rest = target.slice(end);
  return { authority, path: rest.charCodeAt(0) === 47 ? rest : `/${rest}` };
}

/** The characters nghttp2 allows in :authority (nghttp2_check_authority), the same check for HTTP/1.1's Host. */
const AUTHORITY_CHARS = new Uint8Array(128);
for (const c of "!$&'()*+,-.0123456789:;=ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~%") AUTHORITY_CHARS[c.charCodeAt(0)] = 1;

function isValidAuthority(host: string): boolean {
  for (let i = 0; i < host.length; i++) {
    const code = host.charCodeAt(i);
    if (code >= 128 || AUTHORITY_CHARS[code] === 0) return false;
  }
  return true;
}

export interface HttpTunnelResult {
  readonly requests: number;
  readonly denied: number;
}

/** Terminates HTTP on HBONE streams for one proxy: shared HTTP/1.1 and h2c servers, state per tunnel. */
export class HttpInspector {
  readonly #logger: Logger;
  readonly #h1: Server;
  readonly #h2 = http2.createServer({ settings: { enablePush: false, maxConcurrentStreams: MAX_INNER_H2_STREAMS } });
  readonly #tunnels = new WeakMap<object, TunnelState>();
  #pending: TunnelState | null = null;
  /** Open HTTP/1.1 tunnels and h2c sessions, for a drain to close when idle. */
  readonly #h1Open = new Set<http2.ServerHttp2Stream>();
  readonly #h2Sessions = new Set<http2.Http2Session>();
  /** Shutting down (drain): every answer closes its tunnel, and idle tunnels are ended. */
  #draining = false;
  /** Request heads held unanswered by all tunnels (MAX_HELD_HEAD_BYTES), and the tunnels holding any. */
  readonly #held: HeldHeads = { bytes: 0, tunnels: new Set<TunnelState>() };
  readonly #heldLog = new LogBudget(10_000, 5);
  /** WebSockets forwarded (their tunnels), with the request that opened each: decided again on a configuration change. */
  readonly #upgrades = new Map<Duplex, Upgrade>();

  /** MAX_HELD_HEAD_BYTES_PER_TUNNEL and MAX_HELD_HEAD_BYTES unless a test sets smaller ones. */
  readonly #heldLimits: { readonly perTunnel: number; readonly all: number };

  constructor(logger: Logger, options: { headersTimeoutMs?: number; heldHeadBytes?: { perTunnel: number; all: number } } = {}) {
    this.#logger = logger.child({ component: 'l7' });
    this.#heldLimits = options.heldHeadBytes ?? { perTunnel: MAX_HELD_HEAD_BYTES_PER_TUNNEL, all: MAX_HELD_HEAD_BYTES };
    const headersTimeout = options.headersTimeoutMs ?? HEADERS_TIMEOUT_MS;
    this.#h1 = http.createServer({
      // Envoy's default (max_request_headers_kb 60), which Istio keeps: Node's 16 KiB refused requests Istio passes.
      maxHeaderSize: MAX_REQUEST_HEADER_BYTES,
      // An HTTP/1.1 request without Host is refused by ambit's own check (400, logged and counted like any request):
      // Node's would answer it before 'request', so that no line and no metric said it happened.
      requireHostHeader: false,
      keepAliveTimeout: TUNNEL_KEEP_ALIVE_S * 1000,
      requestTimeout: 0,
      headersTimeout,
      connectionsCheckingInterval: Math.max(1, Math.floor(Math.min(15_000, headersTimeout / 4))),
      // WebSocket upgrades come to 'upgrade'; any other (an h2c upgrade, which would carry HTTP/2 past inspection) is
      // an ordinary request, forwarded without its Upgrade field.
      shouldUpgradeCallback: isWebSocketUpgrade,
    });
    // Node checks headersTimeout only on connections of a server that has emitted 'listening' (it starts its checks
    // then): this one never listens, it is handed tunnels, and without this a slow head held its tunnel forever.
    this.#h1.emit('listening');
    // A client may half-close after its last request (an HTTP/1.0 client, a script, an application's
    // shutdown(SHUT_WR) carried as END_STREAM). Node's HTTP server would abort the requests in flight and end the
    // tunnel; half-open, it answers them and ends the tunnel after the last answer. (A Server property since Node's
    // first HTTP server, not in its options.)
    (this.#h1 as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    this.#h1.on('request', (req, res) => this.#onH1Request(req, res, false));
    // `Expect: 100-continue`: decided before the client sends its body, which it then sends only when allowed
    // (Node would otherwise answer 100 itself, and undici refuses to forward the header: every such upload got 502).
    this.#h1.on('checkContinue', (req, res) => this.#onH1Request(req, res, true));
    this.#h1.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#onWebSocketUpgrade(req, socket, head));
    // CONNECT inside an inspected tunnel would carry bytes past inspection: refused with an answer (Node's server,
    // with no listener, closed the tunnel saying nothing), as an h2c CONNECT is.
    this.#h1.on('connect', (req: IncomingMessage, socket: Duplex) => {
      socket.on('error', ignore);
      const state = this.#tunnels.get(socket);
      this.#logger.debug({ target: req.url }, 'CONNECT on an inspected tunnel refused');
      endWithAnswer(state, socket, CONNECT_REFUSED_ANSWER, 'CONNECT', req.url ?? '', req.headers.host ?? '', 405, 'DPE');
      socket.resume();
    });
    this.#h1.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      const timedOut = error.code === 'ERR_HTTP_REQUEST_TIMEOUT';
      const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
      this.#logger.debug({ err: error.message }, timedOut ? 'request head not received in time on an inspected tunnel' : tooLarge ? `request head over ${MAX_REQUEST_HEADER_BYTES} bytes on an inspected tunnel` : 'malformed HTTP/1.1 on an inspected tunnel');
      // Answered already: the parser reports the rest of the refused head (a 70 KB one arrives in several chunks) as
      // errors again, and each was counted and logged as another request.
      if (socket.destroyed || socket.writableEnded) return;
      const erring = this.#tunnels.get(socket);
      const answering = erring !== undefined && erring.inFlight > 0;
      // Bytes after a request that said `Connection: close`: ignored, as Envoy, nginx and Go do. Its answer finishes
      // and ends the tunnel; the reset below had dropped that answer, the allowed request's, with the bytes.
      if (error.code === 'HPE_CLOSED_CONNECTION' && answering) return;
      // Behind a pipelined request still being answered, a 400 written now would land inside that response.
      if (answering) {
        erring.cutForProtocolError = true;
        resetTunnel(socket);
      } else {
        const refusal = timedOut ? 'HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n' : tooLarge ? TOO_LARGE_ANSWER : 'HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n';
        // Envoy's DPE (downstream protocol error): what the head said is unknown, so only the answer is logged.
        endWithAnswer(erring, socket, refusal, '', '', '', timedOut ? 408 : tooLarge ? 431 : 400, 'DPE');
      }
    });
    this.#h2.on('session', (session) => {
      if (this.#pending) {
        this.#tunnels.set(session, this.#pending);
        this.#pending.h2Downstream = session;
      }
      if (this.#draining) session.close();
      this.#h2Sessions.add(session);
      session.once('close', () => this.#h2Sessions.delete(session));
    });
    this.#h2.on('stream', (stream, headers, _flags, rawHeaders: string[]) => this.#onH2Stream(stream, headers, rawHeaders));
    this.#h2.on('sessionError', (error) => this.#logger.debug({ err: error.message }, 'h2c session error on an inspected tunnel'));
  }

  /**
   * Takes over an accepted tunnel: `stream` carries the client's HTTP, `upstream` is the connected
   * workload socket. Resolves when the tunnel is finished.
   */
  inspect(stream: http2.ServerHttp2Stream, upstream: Socket, inspection: TunnelInspection, clientCert: string | null, meter: TunnelMeter | null = null, bytes: StreamBytes | null = null): Promise<HttpTunnelResult> {
    // Strings are made Buffers before they are queued on the stream. Node's HTTP server writes each answer's head as a
    // latin1 string, and Node 24 can corrupt a string chunk written to an Http2Stream over TLS in a writev with others:
    // under load the status line of a pipelined answer after a 403 arrived overwritten by 16 other bytes (an AES-GCM
    // tag's size), in 3 of 4 runs of the test that sends them; with Buffers, in none.
    (stream as unknown as { _writableState: { decodeStrings: boolean } })._writableState.decodeStrings = true;
    const draining = () => this.#draining;
    const logRequest = inspection.logRequest ?? null;
    const state: TunnelState = {
      upstream, decide: inspection.decide, inForce: inspection.inForce, pathNormalization: inspection.pathNormalization, onDenied: inspection.onDenied, upstreamVersion: inspection.upstreamVersion, clientCert, facts: new MutableFacts(), h1Client: null, h2Upstream: null, h2Downstream: null, h1Queue: [], h1Waiting: [], h1Busy: false, requests: 0, denied: 0, inFlight: 0, tunnel: stream, heldBytes: 0, pipelinedHeads: [], held: this.#held, cutForProtocolError: false, keepAliveS: null,
      onResponseClose(this: ServerResponse) {
        state.inFlight--;
        // Answers end in order: the next pipelined request is the one being answered now, no longer held behind.
        if (state.pipelinedHeads.length > 0) release(state, state.pipelinedHeads.shift() as number);
        state.waitingSince = performance.now();
        // istio_requests_total: an answer never begun (the client left first) is Envoy's response code 0, flag DC.
        if (meter !== null || logRequest !== null) {
          const answered = this.headersSent;
          const code = answered ? this.statusCode : 0;
          const complete = answered && this.writableFinished;
          // Not the client leaving (DC): the proxy cut the tunnel for what the client sent.
          const flags = !complete && state.cutForProtocolError ? 'DPE' : answerFlags(this, complete);
          const responseBytes = state.finishedResponseBytes >= 0 ? state.finishedResponseBytes : takeResponseBytes(state, 0);
          const requestBytes = state.finishedRequestBytes;
          state.finishedRequestBytes = state.finishedResponseBytes = -1;
          const protocol = requestProtocolOf(this.getHeader('content-type'));
          const durationMs = elapsedFor(this);
          const req = this.req;
          if (requestBytes >= 0 || req.complete || req.destroyed) {
            reportH1Request(state, this, protocol, code, flags, durationMs, requestBytes >= 0 ? requestBytes : takeRequestBytes(state), responseBytes);
          } else {
            // The rest of its body is still coming (Node reads it to its end before the next request): it is this request's.
            req.once('close', () => reportH1Request(state, this, protocol, code, flags, durationMs, takeRequestBytes(state), responseBytes));
          }
        }
        // An answer whose head went out before the drain began said keep-alive: the tunnel, idle now, is ended.
        if (draining() && state.inFlight === 0 && !stream.writableEnded) stream.end();
      },
      onH2StreamClose(this: http2.ServerHttp2Stream) {
        if (meter === null && logRequest === null) return;
        const head = this.sentHeaders as http2.OutgoingHttpHeaders | undefined;
        const status = head === undefined ? 0 : Number(head[HTTP2_HEADER_STATUS] ?? 0);
        const trailers = this.sentTrailers as http2.OutgoingHttpHeaders | undefined;
        const grpcStatus = trailers?.['grpc-status'] ?? head?.['grpc-status'];
        const flags = answerFlags(this, status !== 0 && this.rstCode === NGHTTP2_NO_ERROR);
        const counted = h2RequestBytes.get(this);
        h2RequestBytes.delete(this);
        const requestBytes = counted === undefined ? 0 : counted.received;
        const responseBytes = counted === undefined ? 0 : counted.sent + headerFieldBytes(head) + headerFieldBytes(trailers);
        meter?.request(requestProtocolOf(head?.[HTTP2_HEADER_CONTENT_TYPE]), status, grpcStatusLabel(grpcStatus), flags, elapsedFor(this), requestBytes, responseBytes);
        if (logRequest !== null) logRequestEnd(logRequest, this, status, flags, requestBytes, responseBytes);
      },
      logRequest,
      meter,
      bytes,
      answeredReceived: 0,
      answeredSent: 0,
      finishedRequestBytes: -1,
      finishedResponseBytes: -1,
      onResponseFinish(this: ServerResponse) {
        state.finishedResponseBytes = takeResponseBytes(state, 0);
        const req = this.req;
        // Requests pipelined behind this one have come too (their bytes among what came): this one's own size only.
        state.finishedRequestBytes = req.complete ? takeRequestBytes(state, state.inFlight > 1 ? pipelinedRequestBytes(req) : -1) : -1;
      },
      waitingSince: performance.now(),
    };
    return new Promise((resolve) => {
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        // Whatever its requests' own ends gave back or not (a reset tunnel's queued answers): the tunnel holds nothing now.
        release(state, state.heldBytes);
        this.#h1Open.delete(stream);
        void state.h1Client?.destroy();
        state.h2Upstream?.destroy();
        upstream.destroy();
        resolve({ requests: state.requests, denied: state.denied });
      };
      stream.once('close', finish);
      // Until a request is forwarded no HTTP client listens on the upstream socket: a workload's reset (ECONNRESET)
      // with no listener was thrown and ended the node proxy. Its 'close' follows and ends the tunnel.
      upstream.on('error', ignore);
      // After the HTTP clients have had their turn: the answer they give for what was in flight (502) goes out first.
      upstream.once('close', () => {
        const downstream = state.h2Downstream;
        if (downstream === null || downstream.closed || downstream.destroyed) {
          setImmediate(endAfterWorkloadClosed, stream);
          return;
        }
        // An h2c client: its requests not yet sent are refused unprocessed and the session told GOAWAY, and the
        // tunnel ends once those frames are out and the session has closed (ending it at once cut them off: the
        // client got CANCEL for requests it could have sent again).
        refuseQueued(state);
        downstream.close();
        const end = () => setImmediate(endAfterWorkloadClosed, stream);
        downstream.once('close', end);
        setTimeout(() => {
          if (!downstream.destroyed) downstream.destroy();
        }, UPSTREAM_CLOSED_GRACE_MS).unref();
      });
      const onFirst = () => {
        const first = stream.read() as Buffer | null;
        if (first === null) {
          stream.once('readable', onFirst);
          return;
        }
        stream.unshift(first);
        if (first.length >= 3 && first.subarray(0, Math.min(first.length, H2_PREFACE.length)).equals(H2_PREFACE.subarray(0, Math.min(first.length, H2_PREFACE.length)))) {
          this.#pending = state;
          this.#h2.emit('connection', stream);
          this.#pending = null;
        } else {
          this.#tunnels.set(stream, state);
          this.#h1Open.add(stream);
          this.#h1.emit('connection', stream);
        }
      };
      stream.once('readable', onFirst);
      stream.once('end', () => {
        // An HTTP/1.1 tunnel is ended by the HTTP server once it has answered what it read (httpAllowHalfOpen).
        if (this.#tunnels.has(stream)) return;
        if (stream.readableLength === 0) finish();
      });
    });
  }

  /**
   * Shutting down with a drain: HTTP/1.1 tunnels are told `Connection: close` on their next answers (those in flight
   * too) and idle ones are ended (a FIN to the client, who opens its next connection to another node); h2c sessions
   * are told GOAWAY. Node's server would only drop idle connections, with a reset. WebSocket tunnels go on until the
   * drain's deadline.
   */
  drain(): void {
    this.#draining = true;
    for (const stream of this.#h1Open) {
      const state = this.#tunnels.get(stream);
      if (state !== undefined && state.inFlight === 0 && !stream.writableEnded) stream.end();
    }
    for (const session of this.#h2Sessions) if (!session.closed) session.close();
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** The bytes of a request head a tunnel now holds; false when that reset the tunnel. */
  #hold(state: TunnelState, bytes: number): boolean {
    state.heldBytes += bytes;
    this.#held.bytes += bytes;
    this.#held.tunnels.add(state);
    if (state.heldBytes > this.#heldLimits.perTunnel) {
      this.#heldLog.warn(this.#logger, 'tunnel', { held: state.heldBytes, limit: this.#heldLimits.perTunnel }, 'inspected tunnel holds more request heads unanswered than it may: resetting it');
      resetTunnel(state.tunnel);
      return false;
    }
    if (this.#held.bytes <= this.#heldLimits.all) return true;
    let largest = state;
    for (const holder of this.#held.tunnels) if (holder.heldBytes > largest.heldBytes && !holder.tunnel.destroyed) largest = holder;
    this.#heldLog.warn(this.#logger, 'all', { held: this.#held.bytes, limit: this.#heldLimits.all, largest: largest.heldBytes }, 'inspected tunnels hold more request heads unanswered than the proxy may: resetting the tunnel that holds the most');
    resetTunnel(largest.tunnel);
    return largest !== state;
  }

  async close(): Promise<void> {
    this.#h1.closeAllConnections();
    this.#h1.close();
    this.#h2.close();
  }

  #onH1Request(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): void {
    // The rest of a chunk after the tunnel was reset, or a head completed after its 408 (its tunnel is ending): nothing
    // to answer, nothing to forward.
    if (req.socket.destroyed || req.socket.writableEnded) {
      req.resume();
      return;
    }
    const state = this.#tunnels.get(req.socket);
    if (!state) {
      res.writeHead(500).end();
      return;
    }
    if (state.inFlight >= MAX_PIPELINED_REQUESTS) {
      this.#logger.warn({ inFlight: state.inFlight, limit: MAX_PIPELINED_REQUESTS }, 'inspected tunnel pipelined more HTTP/1.1 requests than it may have unanswered: resetting it');
      resetTunnel(req.socket);
      return;
    }
    state.inFlight++;
    res.on('close', state.onResponseClose);
    // Held only behind another: a long poll alone holds nothing here.
    if (state.inFlight > 1) {
      const bytes = heldHeadBytes(req.url ?? '', req.rawHeaders);
      state.pipelinedHeads.push(bytes);
      if (!this.#hold(state, bytes)) return;
    }
    if (state.meter !== null || state.logRequest !== null) res.prependListener('finish', state.onResponseFinish);
    if (state.meter !== null) requestStartedAt.set(res, performance.now());
    if (state.logRequest !== null) {
      requestStarts.set(res, { method: req.method ?? '', path: req.url ?? '', authority: req.headers.host ?? '', protocol: req.httpVersion === '1.0' ? 'HTTP/1.0' : 'HTTP/1.1', startedMs: Date.now() });
    }
    if (this.#draining) res.shouldKeepAlive = false;
    // An upgrade the proxy does not make (h2c, a WebSocket asked for by POST): Node's parser reads nothing after its
    // head, so a request pipelined behind it would never be answered, its client waiting until the tunnel idled out.
    // Answered, and the tunnel closed: the client sends what it had pipelined again on a new connection.
    if (req.headers.upgrade !== undefined && UPGRADE_TOKEN.test(req.headers.connection ?? '')) res.shouldKeepAlive = false;
    // A transfer coding besides chunked (`gzip, chunked`): Node undoes the chunking only, and the body would reach the
    // application still coded with nothing saying so. Refused as Envoy refuses it.
    const coding = req.headers['transfer-encoding'];
    if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
      req.resume();
      res.shouldKeepAlive = false;
      protocolErrors.add(res);
      res.writeHead(501, { 'content-type': 'text/plain', 'content-length': 27 }).end('transfer coding not chunked');
      return;
    }
    const headers = forwardableRawHeaders(req.rawHeaders);
    appendClientCert(headers, state.clientCert);
    const refusal = judge(state, req, headers);
    if (refusal !== null) {
      if (refusal.status === 403) deniedAnswers.add(res);
      else protocolErrors.add(res);
      req.resume();
      // A client waiting for 100 sends no body after a final answer: the connection cannot be reused.
      if (expectsContinue) res.shouldKeepAlive = false;
      writeRefusal(state, res, refusal.status, refusal.body);
      return;
    }
    const facts = state.facts;
    const decidedWith = state.inForce();
    // Decided again, if it waits, on the fields it was decided on: Expect among them (rare), not forwarded.
    const decidedOn = req.headers.expect === undefined ? headers : headers.slice();
    if (expectsContinue) res.writeContinue();
    // Answered at this hop (HTTP/1.1), or to be ignored (an HTTP/1.0 request's, RFC 9110 §10.1.1): the upstream client
    // would refuse to send it on, and every such request got 502.
    removeField(headers, 'expect');
    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    if (state.upstreamVersion === 'http2') {
      this.#forwardH1ToH2(req, res, state, headers, hasBody);
      return;
    }
    // reset: false: undici closes the connection after a HEAD, or a body on a GET, by default, and this tunnel has
    // only the one upstream connection; the client's next request on it got 502, or no answer at all.
    state.h1Waiting.push({ res, headers: decidedOn, decidedWith, options: { method: req.method as Dispatcher.HttpMethod, path: facts.forwardPath, headers, body: hasBody ? req : null, reset: false } });
    this.#sendH1(state);
  }

  /** Sends the next pipelined HTTP/1.1 request to the workload once the one before has been answered. */
  #sendH1(state: TunnelState): void {
    while (!state.h1Busy && state.h1Waiting.length > 0) {
      const waiting = state.h1Waiting.shift() as WaitingH1;
      const res = waiting.res;
      const req = res.req;
      // The client gone (its tunnel reset) while it waited: never sent.
      if (res.destroyed || res.writableEnded) {
        req.resume();
        continue;
      }
      // Decided when it arrived: a change while it waited (a DENY added) decides it again before it is sent.
      const path = allowedStill(state, waiting.decidedWith, req.method ?? '', req.url ?? '/', waiting.options.path, req.headers.host ?? '', waiting.headers, true);
      if (path === null) {
        deniedAnswers.add(res);
        req.resume();
        writeRefusal(state, res, 403, DENIED_BODY);
        continue;
      }
      waiting.options.path = path;
      state.h1Busy = true;
      state.h1Client ??= upstreamClient(state.upstream);
      let answered = false;
      state.h1Client.dispatch(waiting.options, forwardResponse(res, state, this.#logger, this, () => {
        if (answered) return;
        answered = true;
        state.h1Busy = false;
        this.#sendH1(state);
      }));
    }
  }

  /**
   * A WebSocket upgrade (Node's server has let go of the tunnel): decided as any request, then forwarded; once the
   * workload answers 101 the tunnel carries the WebSocket's bytes both ways, uninspected, as Envoy does. Any other
   * answer is relayed and the tunnel ends, as the client expects after an upgrade it was refused.
   */
  #onWebSocketUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // The server's listeners are gone, its 'error' one too.
    socket.on('error', ignore);
    const state = this.#tunnels.get(socket);
    // Behind pipelined requests not yet answered, its answer could not be put in order.
    if (state === undefined || state.inFlight > 0) {
      resetTunnel(socket);
      return;
    }
    const headers = forwardableRawHeaders(req.rawHeaders);
    appendClientCert(headers, state.clientCert);
    const refusal = judge(state, req, withUpgradeFields(headers, req.rawHeaders));
    if (refusal !== null) {
      const refused = `HTTP/1.1 ${refusal.status} ${http.STATUS_CODES[refusal.status] ?? ''}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(refusal.body)}\r\nconnection: close\r\n\r\n${refusal.body}`;
      endWithAnswer(state, socket, refused, req.method ?? '', req.url ?? '', req.headers.host ?? '', refusal.status, refusal.status === 403 ? 'DENY' : 'DPE');
      // Nothing reads the tunnel any more: unread input would keep its stream from ever closing (and the tunnel open).
      socket.resume();
      return;
    }
    if (state.upstreamVersion === 'http2') {
      // The workload speaks HTTP/2 only: a WebSocket would need its extended CONNECT (RFC 8441), not forwarded here.
      const refused = `HTTP/1.1 501 Not Implemented\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(WS_TO_H2_BODY)}\r\nconnection: close\r\n\r\n${WS_TO_H2_BODY}`;
      endWithAnswer(state, socket, refused, req.method ?? '', req.url ?? '', req.headers.host ?? '', 501, '-');
      socket.resume();
      return;
    }
    state.h1Client ??= upstreamClient(state.upstream);
    // undici writes `connection: upgrade` and `upgrade: websocket` itself (they are hop-by-hop, not forwarded).
    // Counted and logged when answered (101, or the workload's refusal), as the requests the server answers are.
    const method = req.method ?? '';
    const path = req.url ?? '';
    const authority = req.headers.host ?? '';
    this.#upgrades.set(socket, { state, decidedWith: state.inForce(), path, forwardedPath: state.facts.forwardPath, normalization: state.pathNormalization(), authority, headers: withUpgradeFields(headers, req.rawHeaders) });
    socket.once('close', () => this.#upgrades.delete(socket));
    const counted = (status: number, flags: string) => answeredOutside(state, method, path, authority, status, flags, 0);
    state.h1Client.dispatch({ method: 'GET', path: state.facts.forwardPath, headers, body: null, upgrade: 'websocket' }, new UpgradeForwarder(socket, head, this.#logger, counted));
  }

  /**
   * After a configuration change: each WebSocket forwarded is decided again on the request that opened it, and cut
   * (reset) if it is denied now (a DENY of its path, its ALLOW withdrawn), as any open connection the change no longer
   * allows; its bytes are never inspected, so this is its only check. Returns how many were cut.
   */
  recheckUpgrades(): number {
    let cut = 0;
    for (const [socket, upgrade] of this.#upgrades) {
      // Closed already (the change revoked its connection): not decided, nor counted, twice.
      if (socket.destroyed) {
        this.#upgrades.delete(socket);
        continue;
      }
      const decidedWith = upgrade.decidedWith;
      const state = upgrade.state;
      upgrade.decidedWith = state.inForce();
      // Decided on its path normalised as a request arriving now would be and, when the pathNormalization has changed
      // since, as the workload received it too: a DENY of either form cuts it.
      const allowed = allowedStill(state, decidedWith, 'GET', upgrade.path, upgrade.forwardedPath, upgrade.authority, upgrade.headers, true) !== null;
      const sameForm = upgrade.normalization === state.pathNormalization();
      if (allowed && (sameForm || allowedStill(state, decidedWith, 'GET', upgrade.forwardedPath, upgrade.forwardedPath, upgrade.authority, upgrade.headers, true, upgrade.normalization) !== null)) continue;
      this.#upgrades.delete(socket);
      resetTunnel(socket);
      cut++;
    }
    return cut;
  }

  #onH2Stream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, rawHeaders: readonly string[]): void {
    // First: a client may reset its stream at any moment, even in the bytes that opened it (the stream is destroyed,
    // its session gone and its 'error' queued before this runs), and an 'error' with no listener ends the proxy.
    stream.on('error', ignore);
    const state = this.#tunnels.get(stream.session as http2.Http2Session);
    if (!state) {
      stream.close(NGHTTP2_CANCEL);
      return;
    }
    state.requests++;
    // on, not once: once wraps the listener in a new closure per request; a stream closes once anyway.
    stream.on('close', state.onH2StreamClose);
    if (state.meter !== null) requestStartedAt.set(stream, performance.now());
    if (state.meter !== null || state.logRequest !== null) {
      const counted = countStreamBytes(stream);
      counted.received += headerFieldBytes(rawHeaders);
      h2RequestBytes.set(stream, counted);
      stream.on('trailers', countRequestTrailers);
    }
    if (state.logRequest !== null) {
      requestStarts.set(stream, { method: String(headers[HTTP2_HEADER_METHOD] ?? ''), path: String(headers[HTTP2_HEADER_PATH] ?? ''), authority: String(headers[HTTP2_HEADER_AUTHORITY] ?? headers.host ?? ''), protocol: 'HTTP/2', startedMs: Date.now() });
    }
    const facts = state.facts;
    const method = String(headers[HTTP2_HEADER_METHOD] ?? '');
    // CONNECT has no :path and cannot be forwarded as a request: refuse it rather than guess one.
    if (method === 'CONNECT') {
      protocolErrors.add(stream);
      answer(stream, 405);
      return;
    }
    // The fields as received (Node's header object keeps only the first of a repeated user-agent), decided on as
    // they will be forwarded.
    const forwarded = forwardableRawHeaders(rawHeaders);
    appendClientCert(forwarded, state.clientCert);
    const path = String(headers[HTTP2_HEADER_PATH] ?? '/');
    const authority = String(headers[HTTP2_HEADER_AUTHORITY] ?? headers.host ?? '');
    const malformed = facts.fill(method, path, authority, forwarded, false, state.pathNormalization());
    if (malformed !== null) {
      this.#logger.debug({ reason: malformed }, 'malformed h2c request on an inspected tunnel');
      protocolErrors.add(stream);
      answer(stream, 400);
      return;
    }
    const decidedWith = state.inForce();
    const decision = state.decide(facts);
    if (!decision.allow) {
      state.denied++;
      state.onDenied(decision, facts);
      answerDenied(stream, String(headers[HTTP2_HEADER_CONTENT_TYPE] ?? ''));
      return;
    }
    // Reset by the client already, even in the bytes that opened it (RST_STREAM NO_ERROR leaves it closed, not
    // destroyed, and answering a closed stream throws): nothing to forward, nothing to answer.
    if (stream.destroyed || stream.closed) return;
    // A client speaking HTTP/2 to a workload declared HTTP/1.1 (a port named `http`): converted, as Envoy converts.
    if (state.upstreamVersion === 'http1') {
      if (String(headers.expect ?? '').toLowerCase() === '100-continue' && !stream.endAfterHeaders) stream.additionalHeaders({ [HTTP2_HEADER_STATUS]: 100 });
      this.#forwardH2ToH1(stream, state, forwarded, { decidedWith, method, path, authority, forwarded });
      return;
    }
    const session = this.#h2UpstreamOf(state, stream.session);
    if (session === null) {
      answer(stream, 503);
      stream.session?.close();
      return;
    }
    // The path normalised; the authority decided on when the client sent only Host (Node would make one up).
    let hasAuthority = false;
    for (let i = 0; i < forwarded.length; i += 2) {
      if (forwarded[i] === HTTP2_HEADER_PATH) forwarded[i + 1] = facts.forwardPath;
      else if (forwarded[i] === HTTP2_HEADER_AUTHORITY) hasAuthority = true;
    }
    if (!hasAuthority) forwarded.unshift(HTTP2_HEADER_AUTHORITY, facts.host);
    // A client waiting for 100 before its body is answered here, as in HTTP/1.1: the workload's 100 would not be
    // relayed, and the client would wait out its own timeout.
    // endAfterHeaders, not readableEnded: nothing has read the stream yet, so it never reads as ended here.
    if (String(headers.expect ?? '').toLowerCase() === '100-continue' && !stream.endAfterHeaders) stream.additionalHeaders({ [HTTP2_HEADER_STATUS]: 100 });
    removeField(forwarded, 'expect');
    let upstreamStream: http2.ClientHttp2Stream;
    try {
      // With a body, the request's end waits for its trailers (none: an empty END_STREAM, as it would have ended).
      upstreamStream = session.request(forwarded, { endStream: stream.endAfterHeaders, waitForTrailers: !stream.endAfterHeaders });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Node cannot send a second user-agent, authorization, content-type... (RFC 9110 §5.3 allows one): the
      // client's message is malformed, not the upstream's fault.
      this.#logger.debug({ err: (error as Error).message }, 'forwarding an inspected h2c request failed');
      answer(stream, code === 'ERR_HTTP2_HEADER_SINGLE_VALUE' ? 400 : 502);
      return;
    }
    if (!stream.endAfterHeaders) {
      // The client's trailers go on after its body, as Envoy forwards them (they arrive before its end, which ends the
      // workload's stream through the pipe).
      let requestTrailers: http2.OutgoingHttpHeaders = {};
      stream.once('trailers', (received: http2.IncomingHttpHeaders) => (requestTrailers = forwardableHeaders(received)));
      upstreamStream.once('wantTrailers', () => endWithTrailers(upstreamStream, requestTrailers));
    }
    let trailers: http2.OutgoingHttpHeaders | null = null;
    let trailersSent = false;
    let upstreamClosed = false;
    /** Answered 502 here: the workload never answered (its answer needs no trailers before the upload is stopped). */
    let answeredHere = false;
    const answerBadGateway = () => {
      if (stream.headersSent) return;
      upstreamFailed.add(stream);
      // REFUSED_STREAM: the workload did not process it (RFC 9113 §8.7), so the client may send it again, and gRPC
      // clients do so by themselves; a 502 would fail the call.
      if (upstreamStream.rstCode === NGHTTP2_REFUSED_STREAM) {
        if (!stream.destroyed && !stream.closed) stream.close(NGHTTP2_REFUSED_STREAM);
        return;
      }
      answer(stream, 502);
      answeredHere = true;
    };
    upstreamStream.on('response', (responseHeaders) => {
      if (stream.destroyed || stream.closed || stream.headersSent) return;
      try {
        stream.respond(forwardableHeaders(responseHeaders), { waitForTrailers: true });
      } catch (error) {
        // A status HTTP/2's clients cannot be given (nghttp2 takes any three digits from 100, Node sends 200-599): the
        // workload's answer is a bad one, answered 502 as an HTTP/1.1 workload's is. Thrown in this listener, it ended
        // the process: every tunnel of the node.
        this.#logger.warn({ status: responseHeaders[HTTP2_HEADER_STATUS], err: (error as Error).message }, 'inspected h2c request: the workload answered what HTTP/2 cannot carry; answering 502');
        answerBadGateway();
        cancelStream(upstreamStream);
        return;
      }
      upstreamStream.pipe(stream);
    });
    upstreamStream.on('trailers', (received) => (trailers = forwardableHeaders(received)));
    stream.on('wantTrailers', () => {
      // Without trailers, an empty DATA frame with END_STREAM: close() would end the response with RST_STREAM, which
      // clients other than Node's (Go's, hyper's) report as an error.
      sendTrailersOrCut(stream, trailers ?? {}, this.#logger);
      trailersSent = true;
      if (upstreamClosed) finishUpload(stream, upstreamStream);
    });
    // The workload's stream takes no more of the request: answered 502 if it never answered, and once the answer is
    // out (trailers included) the client is asked to stop sending.
    const workloadDone = () => {
      if (upstreamClosed) return;
      upstreamClosed = true;
      answerBadGateway();
      if (answeredHere || trailersSent) finishUpload(stream, upstreamStream);
    };
    upstreamStream.on('aborted', () => {
      // Reset with the client still sending (NO_ERROR: its answer may be complete). Another write would fail the
      // stream and throw away the answer's unread end, so the upload stops here; and Node emits no 'close' for it
      // until that end is read and the writes finish, which they never do. Its answer's head, read in the same
      // bytes, is emitted first.
      stream.unpipe(upstreamStream);
      // Unpiped, the client's stream is paused with upload unread: it could never end, nor be let go.
      stream.resume();
      setImmediate(workloadDone);
    });
    upstreamStream.on('error', () => {
      if (!stream.headersSent) answerBadGateway();
      // The client's upload written after the workload closed its stream cleanly (NO_ERROR) fails here: no failure of
      // the answer, which goes on; 'close' then asks the client to stop sending.
      else if (upstreamStream.rstCode !== NGHTTP2_NO_ERROR) {
        upstreamFailed.add(stream);
        stream.close(NGHTTP2_CANCEL);
      }
    });
    // A reset from the workload before its answer carries no 'error' when its code is NO_ERROR: unanswered, the
    // client would wait forever. (One after the answer began ends the response as Node's client reads it: ended.)
    upstreamStream.on('close', workloadDone);
    stream.on('close', () => {
      // Reset at once: close(CANCEL) would send END_STREAM first, and the workload would take a cut upload for a whole one.
      if (!upstreamStream.closed) cancelStream(upstreamStream);
      // One the workload reset, whose writes never finish, is let go here (it would stay until the session ends).
      else if (!upstreamStream.destroyed) upstreamStream.destroy();
    });
    stream.pipe(upstreamStream);
  }

  /**
   * The tunnel's HTTP/2 session to the workload, opened on its one upstream socket at the first request; null when
   * there can be none (the workload left, or ended the session with GOAWAY: the socket cannot carry a second one, and
   * the client must reconnect). `downstream`: an h2c client's session, told GOAWAY when the workload's is.
   */
  #h2UpstreamOf(state: TunnelState, downstream: http2.Http2Session | undefined): http2.ClientHttp2Session | null {
    if (state.h2Upstream !== null) return state.h2Upstream.closed || state.h2Upstream.destroyed ? null : state.h2Upstream;
    const socket = state.upstream;
    if (socket.readableEnded || socket.destroyed) return null;
    // The workload's FIN (its process exited) ends the session's socket: Node's HTTP/2 session does nothing on a
    // half-closed one, and the calls in flight would wait for answers forever. (Half-open stays for HTTP/1.1 and
    // WebSocket tunnels, which need it.)
    socket.once('end', () => socket.end());
    // Push off, as on the HBONE sessions: a pushed stream has no listener here, and one the workload then reset threw
    // its error out of the process (every tunnel of the node with it). Off, nghttp2 treats a push as a protocol error.
    const session = http2.connect('http://upstream.invalid', { createConnection: () => socket, settings: { enablePush: false } });
    session.on('error', (error) => this.#logger.debug({ err: error.message }, 'h2c upstream session error'));
    // The workload going away (a graceful restart, a gRPC server's max connection age) is told to the client at
    // once, so it opens its next calls on a new connection; those already open finish.
    session.once('goaway', () => {
      if (downstream !== undefined && !downstream.closed && !downstream.destroyed) downstream.close();
    });
    state.h2Upstream = session;
    return session;
  }

  /**
   * An HTTP/1.1 request to a workload declared HTTP/2 (`grpc`, `http2`): sent on the tunnel's HTTP/2 session as its
   * own stream, the answer relayed as HTTP/1.1 (trailers too, on a chunked answer), as Envoy converts.
   */
  #forwardH1ToH2(req: IncomingMessage, res: ServerResponse, state: TunnelState, headers: readonly string[], hasBody: boolean): void {
    const session = this.#h2UpstreamOf(state, undefined);
    if (session === null) {
      req.resume();
      res.shouldKeepAlive = false;
      res.writeHead(503, { 'content-type': 'text/plain', 'content-length': 0 }).end();
      return;
    }
    const facts = state.facts;
    const h2Headers: string[] = [HTTP2_HEADER_METHOD, facts.method, HTTP2_HEADER_PATH, facts.forwardPath, HTTP2_HEADER_SCHEME, 'http', HTTP2_HEADER_AUTHORITY, facts.host];
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = headers[i] as string;
      if (!sameHeaderName(name, 'host')) h2Headers.push(name.toLowerCase(), headers[i + 1] as string);
    }
    let upstreamStream: http2.ClientHttp2Stream;
    try {
      upstreamStream = session.request(h2Headers, { endStream: !hasBody, waitForTrailers: hasBody });
    } catch (error) {
      req.resume();
      this.#logger.debug({ err: (error as Error).message }, 'forwarding an inspected HTTP/1.1 request over HTTP/2 failed');
      const status = (error as NodeJS.ErrnoException).code === 'ERR_HTTP2_HEADER_SINGLE_VALUE' ? 400 : 502;
      res.writeHead(status, { 'content-type': 'text/plain', 'content-length': 0 }).end();
      return;
    }
    upstreamStream.on('error', ignore);
    // A chunked body's trailers go on after it (the parser has them by the body's end, which ends this stream's writes).
    if (hasBody) upstreamStream.once('wantTrailers', () => sendRequestTrailers(upstreamStream, req.rawTrailers));
    let trailers: Record<string, string | string[]> | null = null;
    upstreamStream.on('response', (received) => {
      if (res.headersSent || res.destroyed) return;
      const status = Number(received[HTTP2_HEADER_STATUS]);
      // An answer before the whole request (an early refusal of an upload) ends the connection after it, as Envoy
      // does: what is left of the upload would otherwise be read as the next request, or be waited for.
      if (this.#draining || session.closed || !req.complete) res.shouldKeepAlive = false;
      try {
        res.writeHead(status, withoutPseudoHeaders(forwardableHeaders(received as Record<string, string | string[] | undefined>)));
      } catch (error) {
        // Nothing found reaches this (nghttp2 checks what it takes), but a throw in this listener would end the process:
        // the answer HTTP/1.1 cannot carry ends this client's connection instead.
        this.#logger.warn({ status: received[HTTP2_HEADER_STATUS], err: (error as Error).message }, 'inspected HTTP/1.1 request: the HTTP/2 workload answered what HTTP/1.1 cannot carry; closing the connection');
        cancelStream(upstreamStream);
        res.destroy();
        return;
      }
      res.flushHeaders();
      upstreamStream.on('data', (chunk: Buffer) => {
        if (!res.write(chunk)) upstreamStream.pause();
      });
      res.on('drain', () => upstreamStream.resume());
    });
    upstreamStream.on('trailers', (received) => (trailers = withoutPseudoHeaders(forwardableHeaders(received as Record<string, string | string[] | undefined>))));
    upstreamStream.on('end', () => {
      if (!res.headersSent) return;
      if (trailers !== null) {
        try {
          res.addTrailers(trailers);
        } catch (error) {
          this.#logger.debug({ err: (error as Error).message }, 'trailers of an inspected answer not forwarded');
        }
      }
      res.end();
    });
    upstreamStream.on('close', () => {
      // The workload is done with the request before all its body came (it answered early): the rest is read and
      // dropped, or the client's upload would stall and Node's server never read its next request.
      if (!req.complete) {
        req.unpipe(upstreamStream);
        req.resume();
      }
      if (res.writableEnded || res.destroyed) return;
      // Reset by the workload, or its session gone, before the answer was whole: 502 if none had begun, else the
      // answer is cut (the tunnel reset) so the client cannot take a part for the whole.
      upstreamFailed.add(res);
      if (!res.headersSent) {
        res.shouldKeepAlive = false;
        res.writeHead(502, { 'content-type': 'text/plain', 'content-length': 0 }).end();
      } else if (!upstreamStream.readableEnded) {
        resetTunnel(req.socket);
      }
    });
    // The client gone (its tunnel reset) with the request still going: the workload's stream is reset with it.
    res.on('close', () => {
      if (!upstreamStream.closed) cancelStream(upstreamStream);
    });
    if (hasBody) req.pipe(upstreamStream);
    else req.resume();
  }

  /**
   * An HTTP/2 request to a workload declared HTTP/1.1 (a port named `http`): sent on the tunnel's one HTTP/1.1
   * connection (requests of concurrent streams wait their turn), the answer relayed on the client's stream.
   */
  #forwardH2ToH1(stream: http2.ServerHttp2Stream, state: TunnelState, forwarded: string[], decided: DecidedRequest): void {
    const facts = state.facts;
    const method = decided.method;
    const headers: string[] = [];
    let host = false;
    let cookie: string | null = null;
    for (let i = 0; i + 1 < forwarded.length; i += 2) {
      const name = forwarded[i] as string;
      if (name.charCodeAt(0) === 58 /* : */) continue;
      // `te: trailers` is HTTP/2's; an HTTP/1.1 workload has no use for it.
      if (name === 'te' || name === 'expect') continue;
      // HTTP/2 may split cookies into fields of their own; HTTP/1.1 takes one, joined with "; " (RFC 9113 §8.2.3).
      if (name === 'cookie') {
        cookie = cookie === null ? (forwarded[i + 1] as string) : `${cookie}; ${forwarded[i + 1] as string}`;
        continue;
      }
      if (name === 'host') host = true;
      headers.push(name, forwarded[i + 1] as string);
    }
    if (cookie !== null) headers.push('cookie', cookie);
    if (!host) headers.unshift('host', facts.host);
    // The body through a stream of its own: undici destroys the body it has read, and destroying the client's stream
    // itself would reset it, answer and all.
    let body: PassThrough | null = null;
    if (!stream.endAfterHeaders) {
      const piped = new PassThrough();
      body = piped;
      // Failed while it waits its turn, nothing else listens: without this the error would end the process.
      piped.on('error', ignore);
      stream.pipe(piped, { end: false });
      // Node emits 'end' for a stream its client reset too: no END_STREAM, and ending the body there sent the workload
      // a whole request (a chunked body's last chunk) with its upload cut short. Failed instead: undici stops the
      // request, and the workload's connection is reset (H2AnswerFromH1).
      stream.once('end', () => {
        if (stream.closed && stream.rstCode !== NGHTTP2_NO_ERROR) piped.destroy(STREAM_ABORTED);
        else piped.end();
      });
    }
    const job: H1Job = { stream, options: { method: method as Dispatcher.HttpMethod, path: facts.forwardPath, headers, body, reset: false }, heldBytes: heldHeadBytes(facts.forwardPath, headers), decided };
    if (!this.#hold(state, job.heldBytes)) {
      body?.destroy();
      return;
    }
    state.h1Queue.push(job);
    this.#pumpH1(state);
    // Still waiting its turn: reset by its client, it is let go of at once, not when the request before it is answered.
    // A client that held the connection with an upload never finished and reset stream after stream grew the queue,
    // and the headers each held, without bound (its reset budget refills).
    if (state.h1Queue.includes(job)) stream.once('close', () => dropQueued(state, job));
  }

  /** Sends the next queued h2c request to the HTTP/1.1 workload once the one before has been answered. */
  #pumpH1(state: TunnelState): void {
    while (!state.h1Busy && state.h1Queue.length > 0) {
      const job = state.h1Queue.shift() as H1Job;
      release(state, job.heldBytes);
      // Reset by its client while it waited: never sent (Envoy drops a request not yet given an upstream connection).
      if (job.stream.closed || job.stream.destroyed) {
        job.options.body?.destroy();
        continue;
      }
      if (state.upstream.destroyed) {
        refuseStream(job.stream, job.options.body);
        continue;
      }
      // Decided when it arrived: a change while it waited (a DENY added) decides it again before it is sent.
      const decided = job.decided;
      const path = allowedStill(state, decided.decidedWith, decided.method, decided.path, job.options.path, decided.authority, decided.forwarded, false);
      if (path === null) {
        job.options.body?.destroy();
        answerDenied(job.stream, fieldValue(decided.forwarded, HTTP2_HEADER_CONTENT_TYPE) ?? '');
        continue;
      }
      job.options.path = path;
      state.h1Busy = true;
      state.h1Client ??= upstreamClient(state.upstream);
      state.h1Client.dispatch(job.options, new H2AnswerFromH1(job.stream, state.upstream, this.#logger, () => {
        state.h1Busy = false;
        this.#pumpH1(state);
      }));
    }
  }
}

/** Relays an HTTP/1.1 workload's answer (undici's) on the client's HTTP/2 stream: status, fields, body, trailers. */
class H2AnswerFromH1 implements Dispatcher.DispatchHandler {
  readonly #stream: http2.ServerHttp2Stream;
  /** The tunnel's connection to the workload, reset when the client resets a request being sent on it. */
  readonly #upstream: Socket;
  readonly #logger: Logger;
  /** Called once, when the workload's answer has ended or failed: the next queued request may go. */
  readonly #settled: () => void;
  #trailers: http2.OutgoingHttpHeaders = {};
  #done = false;
  /** Written to the workload (undici calls onRequestStart as it writes a request): before that, it was never sent. */
  #started = false;

  constructor(stream: http2.ServerHttp2Stream, upstream: Socket, logger: Logger, settled: () => void) {
    this.#stream = stream;
    this.#upstream = upstream;
    this.#logger = logger;
    this.#settled = settled;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#started = true;
    // The client reset its stream: the workload's request is stopped too. HTTP/1.1 has no other way than closing the
    // connection (undici does), which also ends the requests of the client's other streams not yet sent: those are
    // refused unprocessed (REFUSED_STREAM), which its client sends again on a new connection.
    const stop = () => {
      if (this.#done) return;
      // Reset, before undici closes it: a workload reading a body without a length would take a FIN for its end.
      cutSocket(this.#upstream);
      controller.abort(STREAM_ABORTED);
    };
    // Closed between its turn and this write ('close' will not come again): stopped now.
    if (this.#stream.closed || this.#stream.destroyed) {
      stop();
      return;
    }
    this.#stream.once('close', stop);
    this.#stream.on('wantTrailers', () => sendTrailersOrCut(this.#stream, this.#trailers, this.#logger));
    this.#stream.on('drain', () => controller.resume());
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>): void {
    const stream = this.#stream;
    if (stream.destroyed || stream.closed || stream.headersSent) return;
    if (statusCode < 200) {
      if (statusCode === 103) stream.additionalHeaders({ ...forwardableHeaders(headers), [HTTP2_HEADER_STATUS]: 103 });
      return;
    }
    stream.respond({ ...forwardableHeaders(headers), [HTTP2_HEADER_STATUS]: statusCode }, { waitForTrailers: true });
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#stream.destroyed && !this.#stream.write(chunk)) controller.pause();
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: Record<string, string | string[] | undefined>): void {
    this.#done = true;
    this.#trailers = forwardableHeaders(trailers);
    if (!this.#stream.destroyed) this.#stream.end();
    this.#settled();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#done = true;
    this.#logger.debug({ err: error.message }, 'forwarding an inspected HTTP/2 request over HTTP/1.1 failed');
    this.#settled();
    const stream = this.#stream;
    if (stream.destroyed || stream.closed) return;
    upstreamFailed.add(stream);
    if (!this.#started) refuseStream(stream, null);
    else if (!stream.headersSent) answer(stream, 502);
    else cutAnswer(stream);
  }
}

/** A WebSocket the inspector forwarded, and the request that opened it (HttpInspector.recheckUpgrades). */
interface Upgrade {
  readonly state: TunnelState;
  decidedWith: object;
  /** Its target as received. */
  readonly path: string;
  /** Its path as forwarded, normalised under `normalization`: what the workload has. */
  readonly forwardedPath: string;
  readonly normalization: PathNormalization;
  readonly authority: string;
  /** Its fields as decided on, the upgrade's own among them. */
  readonly headers: readonly string[];
}

/** An HTTP/1.1 request waiting for the tunnel's one upstream connection (TunnelState.h1Waiting). */
interface WaitingH1 {
  readonly res: ServerResponse;
  /** Its fields as forwarded, what it was decided on. */
  readonly headers: readonly string[];
  readonly decidedWith: object;
  /** Its `path` is the request's as it is to be forwarded: normalised anew when it is decided again (allowedStill). */
  readonly options: Dispatcher.DispatchOptions;
}

/** An h2c request converted for the HTTP/1.1 workload, waiting for its turn on the tunnel's upstream connection. */
interface H1Job {
  readonly stream: http2.ServerHttp2Stream;
  readonly options: Dispatcher.DispatchOptions & { body: PassThrough | null };
  /** Its head's size, held while it waits (MAX_HELD_HEAD_BYTES_PER_TUNNEL). */
  readonly heldBytes: number;
  /** What it was decided on, and under which configuration: decided again if that changed before its turn. */
  readonly decided: DecidedRequest;
}

/** An h2c request as it was decided (TunnelInspection.inForce). */
interface DecidedRequest {
  readonly decidedWith: object;
  readonly method: string;
  /** As received: decided again (allowedStill), it is normalised anew. */
  readonly path: string;
  readonly authority: string;
  /** Its fields as received (forwardableRawHeaders), what it was decided on. */
  readonly forwarded: readonly string[];
}

/** A request the policy denies, answered on its h2c stream: 403, or for gRPC a trailers-only PERMISSION_DENIED. */
function answerDenied(stream: http2.ServerHttp2Stream, contentType: string): void {
  deniedAnswers.add(stream);
  stream.resume();
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  if (contentType.startsWith('application/grpc')) {
    // gRPC reads status from grpc-status: a trailers-only response with PERMISSION_DENIED (7).
    stream.respond({ [HTTP2_HEADER_STATUS]: 200, [HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc', 'grpc-status': '7', 'grpc-message': DENIED_BODY }, { endStream: true });
  } else {
    stream.respond({ [HTTP2_HEADER_STATUS]: 403, [HTTP2_HEADER_CONTENT_TYPE]: 'text/plain', 'content-length': String(DENIED_BODY.length) });
    stream.end(DENIED_BODY);
  }
}

/**
 * A request never written to the workload (its connection ended first): refused unprocessed (REFUSED_STREAM, RFC 9113
 * §8.7), so its client sends it again on a new connection, and the session told GOAWAY: it can carry no more.
 */
function refuseStream(stream: http2.ServerHttp2Stream, body: PassThrough | null): void {
  body?.destroy();
  if (stream.destroyed || stream.closed) return;
  upstreamFailed.add(stream);
  stream.close(NGHTTP2_REFUSED_STREAM);
  const session = stream.session;
  if (session !== undefined && !session.closed) session.close();
}

/** Request heads held unanswered by an inspector's tunnels, and the tunnels holding any. */
interface HeldHeads {
  bytes: number;
  readonly tunnels: Set<TunnelState>;
}

/** Gives back what a tunnel held of a request head, never more than it holds (its end gives back the rest at once). */
function release(state: TunnelState, bytes: number): void {
  const given = Math.min(bytes, state.heldBytes);
  if (given <= 0) return;
  state.heldBytes -= given;
  state.held.bytes -= given;
  if (state.heldBytes === 0) state.held.tunnels.delete(state);
}

/** A queued request whose client reset it: out of the queue, its body let go. */
function dropQueued(state: TunnelState, job: H1Job): void {
  const at = state.h1Queue.indexOf(job);
  if (at === -1) return;
  state.h1Queue.splice(at, 1);
  release(state, job.heldBytes);
  job.options.body?.destroy();
}

/** Every request still waiting for the tunnel's upstream connection, which has ended: refused unprocessed. */
function refuseQueued(state: TunnelState): void {
  const queued = state.h1Queue.splice(0);
  for (const job of queued) {
    release(state, job.heldBytes);
    refuseStream(job.stream, job.options.body);
  }
}

/** Fields without HTTP/2's pseudo-headers (`:status`), which an HTTP/1.1 message cannot carry. */
function withoutPseudoHeaders<T>(headers: Record<string, T>): Record<string, T> {
  for (const name in headers) if (name.charCodeAt(0) === 58 /* : */) delete headers[name];
  return headers;
}

function ignore(): void {}

/**
 * Envoy's APPEND_FORWARD, which Istio's sidecars apply to what they let in: the client's x-forwarded-client-cert
 * fields (joined with `,`, as Envoy joins a repeated one) go on with this hop's element last, the one an application
 * can believe. Before the decision, as Envoy does it before its filters: a rule on the field sees what the
 * application will.
 */
function appendClientCert(raw: string[], element: string | null): void {
  let received: string | null = null;
  for (let i = raw.length - 2; i >= 0; i -= 2) {
    if (!sameHeaderName(raw[i] as string, XFCC)) continue;
    const value = (raw[i + 1] as string).trim();
    // One with an unclosed quote or a trailing backslash would make a parser read this hop's element as part of it.
    if (value !== '' && balancedXfcc(value)) received = received === null ? value : `${value},${received}`;
    raw.splice(i, 2);
  }
  if (element !== null) raw.push(XFCC, received === null ? element : `${received},${element}`);
}

/** Whether a received x-forwarded-client-cert value closes every quote it opens and ends no escape. */
function balancedXfcc(value: string): boolean {
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code === 92 /* \\ */) {
      if (++i >= value.length) return false;
    } else if (code === 34 /* " */) {
      quoted = !quoted;
    }
  }
  return !quoted;
}

/** The first value of a field (lower-case name) in raw headers. */
function fieldValue(raw: readonly string[], lower: string): string | undefined {
  for (let i = 0; i + 1 < raw.length; i += 2) if (sameHeaderName(raw[i] as string, lower)) return raw[i + 1];
  return undefined;
}

/** Removes every field of one name (lower-case) from raw headers. */
function removeField(raw: string[], lower: string): void {
  for (let i = raw.length - 2; i >= 0; i -= 2) if (sameHeaderName(raw[i] as string, lower)) raw.splice(i, 2);
}

/** Whether a request asks for a WebSocket (`Upgrade: websocket`, in any case, alone): only these are upgraded. */
function isWebSocketUpgrade(req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade;
  return req.method === 'GET' && upgrade !== undefined && upgrade.trim().toLowerCase() === 'websocket';
}

/** Fills the tunnel's facts from a request and decides it: null when allowed, else the answer to refuse it with. */
function judge(state: TunnelState, req: IncomingMessage, headers: readonly string[]): { status: 400 | 403; body: string } | null {
  state.requests++;
  const facts = state.facts;
  // Decided on what the application will receive: a field the Connection header names is not forwarded, so
  // neither a rule nor the Host check may see it (`Connection: host` would have sent the upstream no Host).
  const malformed = facts.fill(req.method ?? '', req.url ?? '/', req.headers.host ?? '', headers, true, state.pathNormalization());
  if (malformed !== null) return { status: 400, body: malformed };
  const decision = state.decide(facts);
  if (decision.allow) return null;
  state.denied++;
  state.onDenied(decision, facts);
  return { status: 403, body: DENIED_BODY };
}

/** The proxy's own refusal of an HTTP/1.1 request (400, 403), with a keep-alive no longer than the workload's. */
function writeRefusal(state: TunnelState, res: ServerResponse, status: number, body: string): void {
  // Promising no longer than the workload's connection, which this tunnel ends with, has said it stays idle.
  // (With its own Connection field, or Node adds its own Keep-Alive of the server's 60 s.)
  if (state.keepAliveS !== null && res.shouldKeepAlive) {
    res.setHeader('connection', 'keep-alive');
    res.setHeader('keep-alive', `timeout=${state.keepAliveS}`);
  }
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body);
}

/**
 * The path with which a request allowed under the configuration `decidedWith` goes to the workload, or null when it
 * may not go: `forwarded` (its target as normalised when it was decided) while that configuration is in force; else it
 * is decided again under the one in force now as a request arriving now would be, its `target` as received normalised
 * under `normalization` (the pathNormalization in force, unless given), and goes with that form. A denial is counted and
 * logged as any. (Not counted as a request again: it was when it arrived.)
 */
function allowedStill(state: TunnelState, decidedWith: object, method: string, target: string, forwarded: string, authority: string, headers: readonly string[], http1: boolean, normalization = state.pathNormalization()): string | null {
  if (state.inForce() === decidedWith) return forwarded;
  const facts = state.facts;
  // It was read whole before: malformed now can only be a bug, and is no reason to send it.
  if (facts.fill(method, target, authority, headers, http1, normalization) !== null) return null;
  const decision = state.decide(facts, true);
  if (decision.allow) return facts.forwardPath;
  state.denied++;
  state.onDenied(decision, facts);
  return null;
}

/** The tunnel's HTTP/1.1 client to the workload, on the tunnel's one upstream connection. */
function upstreamClient(upstream: Socket): Client {
  // The head of an answer may be as large as a request's (undici's default of 16 KiB made a 30 KiB one a 502).
  const client = new Client('http://upstream.invalid', { connect: reuseSocket(upstream), pipelining: 1, keepAliveTimeout: 60_000, maxHeaderSize: MAX_RESPONSE_HEADER_BYTES });
  // undici re-emits a handler's throw as 'error': without a listener, one outside its parser's try ends the process.
  EventEmitter.prototype.on.call(client, 'error', ignore); // not in undici's typed events
  return client;
}

/** Node's check of a reason phrase (and a header value): what it refuses to write, throwing ERR_INVALID_CHAR. */
const INVALID_REASON = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The workload's reason phrase when it can be written on, else the status code's own (Envoy always writes its own):
 * `200 OK ✓` (undici decodes it as UTF-8) made Node throw, and the client was left without an answer, not even a 502.
 */
function reasonPhrase(statusCode: number, statusMessage: string | undefined): string {
  return statusMessage !== undefined && !INVALID_REASON.test(statusMessage) ? statusMessage : (http.STATUS_CODES[statusCode] ?? '');
}

/** The head of a response as raw HTTP/1.1, from undici's header object (names lower-case, repeats as arrays). */
function responseHead(statusCode: number, statusMessage: string, headers: Readonly<Record<string, string | string[] | undefined>>): string {
  let head = `HTTP/1.1 ${statusCode} ${statusMessage}\r\n`;
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined) continue;
    for (const one of Array.isArray(value) ? value : [value]) head += `${name}: ${one}\r\n`;
  }
  return `${head}\r\n`;
}

/**
 * The workload's answer to a forwarded WebSocket upgrade, written on the tunnel the HTTP server let go of: a 101 and
 * its fields as they came, then both directions spliced; any other answer relayed (without a length, its end is the
 * tunnel's) and the tunnel ended.
 */
class UpgradeForwarder implements Dispatcher.DispatchHandler {
  readonly #socket: Duplex;
  readonly #head: Buffer;
  readonly #logger: Logger;
  /** Whether an answer's head has gone to the client. */
  #answered = false;
  /** The workload's side failed (no answer, a refusal cut short, an upgraded connection reset): counted UC. */
  #workloadFailed = false;
  /** Counts and logs the request; called once its tunnel has closed, what crossed it by then being its size. */
  readonly #counted: (status: number, responseFlags: string) => void;

  constructor(socket: Duplex, head: Buffer, logger: Logger, counted: (status: number, responseFlags: string) => void) {
    this.#socket = socket;
    this.#head = head;
    this.#logger = logger;
    this.#counted = counted;
  }

  onRequestStart(): void {}

  onRequestUpgrade(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>, upgraded: Duplex): void {
    const socket = this.#socket;
    // The bytes are spliced as on a byte tunnel, and a reset is carried as one (RST_STREAM CANCEL), as L4 tunnels carry
    // it: ended instead, the workload's reset had reached the client as a clean close.
    upgraded.on('error', () => {
      this.#workloadFailed = true;
      if (!socket.destroyed) resetTunnel(socket);
    });
    if (socket.destroyed) {
      upgraded.destroy();
      return;
    }
    this.#answered = true;
    // Counted once the upgraded connection has ended, as Envoy counts an upgraded stream: its whole duration, and the
    // bytes both ways (the 101's head among them); UC when the workload's side failed.
    this.#countAtClose(statusCode);
    // undici's header values are latin1 (bytes as received): written back as bytes.
    socket.write(responseHead(statusCode, 'Switching Protocols', headers), 'latin1');
    if (this.#head.length > 0) upgraded.write(this.#head);
    // Each side's end ends the other's (half-close carried); the upgraded socket is the tunnel's upstream connection,
    // whose close and the tunnel's own are handled by inspect(), as for any tunnel.
    socket.pipe(upgraded);
    upgraded.pipe(socket);
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[] | undefined>, statusMessage?: string): void {
    // An interim answer (102, 103) before the upgrade's: not the one the client waits for.
    if (statusCode < 200) return;
    const forwarded = forwardableHeaders(headers);
    forwarded['connection'] = 'close';
    this.#answered = true;
    // The refusal ends the tunnel: counted once it has, its body with it.
    this.#countAtClose(statusCode);
    this.#socket.write(responseHead(statusCode, reasonPhrase(statusCode, statusMessage), forwarded), 'latin1');
    this.#socket.on('drain', () => controller.resume());
    // Refused: the client's input goes nowhere, and unread it would keep the tunnel from closing.
    this.#socket.resume();
  }

  /** Counts the request once the tunnel has closed: what crossed it by then is the request's and its answer's. */
  #countAtClose(statusCode: number): void {
    const count = () => this.#counted(statusCode, this.#workloadFailed ? 'UC' : '-');
    if (this.#socket.closed) count();
    else this.#socket.once('close', count);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (!this.#socket.write(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    this.#socket.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#logger.debug({ err: error.message }, 'forwarding an inspected WebSocket upgrade failed');
    this.#socket.resume();
    this.#workloadFailed = true;
    if (this.#answered) {
      this.#socket.destroy(error);
      return;
    }
    this.#answered = true;
    this.#countAtClose(502);
    if (this.#socket.destroyed) return;
    this.#socket.end(UPGRADE_FAILED_ANSWER);
  }
}

/**
 * The workload takes no more of a request (its stream closed, reset or finished before the request ended): nothing
 * reads the client's stream any more, so a client still uploading would fill its window and wait forever. RST_STREAM
 * NO_ERROR after the complete answer asks it to stop (RFC 9113 §8.1), as the workload asked us and as Envoy does.
 */
function stopUpload(stream: http2.ServerHttp2Stream): void {
  awaitingClientEnd.delete(stream);
  if (stream.destroyed || stream.readableEnded) return;
  // Closed already (the client's END_STREAM or reset came, our answer has left): nothing more can arrive, and what is
  // buffered unread is the rest of an upload nobody will take (an answer given before the body had all come), which
  // Node's HTTP server keeps paused. Node lets a stream go only once it has ended: it had kept the tunnel, and the
  // upload in memory, for ever.
  if (stream.closed) {
    stream.destroy();
    return;
  }
  stream.close(NGHTTP2_NO_ERROR);
  // What the client sent meanwhile is read and dropped.
  stream.resume();
  // Unless Node's HTTP server holds the stream for the body of a request answered early: it pauses it again, and Node
  // keeps a closed stream until its input is read. Each had held its place among the session's streams for the
  // session's life (299 after a busy minute, and every new tunnel refused). Let go once the RST is with nghttp2.
  if (stream.writableFinished) setImmediate(letGo, stream);
  else stream.once('finish', () => setImmediate(letGo, stream));
}

function letGo(stream: http2.ServerHttp2Stream): void {
  if (!stream.destroyed) stream.destroy();
}

/**
 * An inner h2c stream whose workload is done and whose answer, trailers included, is queued: what the client still
 * sends is read and dropped, and one that keeps sending is asked to stop after the grace. RST_STREAM at once made
 * nghttp2 drop the trailers still queued (a gRPC client read a status-less end as INTERNAL), and RFC 9113 §8.1 allows
 * it only after the complete response; a gRPC client ends or cancels its side itself once it has the status.
 */
function finishUpload(stream: http2.ServerHttp2Stream, upstreamStream: http2.ClientHttp2Stream): void {
  if (stream.destroyed) return;
  stream.unpipe(upstreamStream);
  stream.resume();
  const grace = setTimeout(stopUpload, UPSTREAM_CLOSED_GRACE_MS, stream).unref();
  stream.once('close', () => clearTimeout(grace));
}

/**
 * The workload's trailers, or a reset when Node will not send them: an HTTP/1.1 workload may repeat a field HTTP/2
 * clients get once (two `etag`s; Node refuses it). The answer cannot go on whole, so its client is told it was cut
 * rather than given a complete one; thrown in a 'wantTrailers' listener, it ended the process.
 */
function sendTrailersOrCut(stream: http2.ServerHttp2Stream, trailers: http2.OutgoingHttpHeaders, logger: Logger): void {
  if (stream.destroyed || stream.closed) return;
  try {
    stream.sendTrailers(trailers);
  } catch (error) {
    logger.warn({ err: (error as Error).message }, "inspected h2c request: the workload's trailers cannot be sent over HTTP/2; resetting its answer");
    cutAnswer(stream);
  }
}

/** A bodiless answer, only if the stream can still take one. */
function answer(stream: http2.ServerHttp2Stream, status: number): void {
  if (stream.destroyed || stream.closed || stream.headersSent) return;
  stream.respond({ [HTTP2_HEADER_STATUS]: status }, { endStream: true });
}


/** An undici connector that hands out the tunnel's already-connected upstream socket once. */
function reuseSocket(socket: Socket): buildConnector.connector {
  let used = false;
  return (_options, callback) => {
    if (used || socket.destroyed) {
      callback(new Error('the upstream connection of this tunnel is closed'), null);
      return;
    }
    used = true;
    // undici expects the connection to complete later, as a real connect does.
    process.nextTick(callback, null, socket);
  };
}

/** undici's default: a workload's keep-alive hint this close to expiring closes the connection after the answer. */
const KEEP_ALIVE_THRESHOLD_S = 2;

/**
 * How long the client may keep the tunnel after this answer, by what the workload said: 0 when the workload closes the
 * connection (`Connection: close`, or a `Keep-Alive` timeout undici does not wait out), its timeout less undici's
 * margin and a second's (at most the tunnel's own), or null when it said nothing (the tunnel's own keep-alive then
 * holds on both sides).
 */
function upstreamKeepAlive(headers: Readonly<Record<string, string | string[] | undefined>>): number | null {
  const connection = headers['connection'];
  if (connection !== undefined && /(?:^|,)\s*close\s*(?:,|$)/i.test(String(connection))) return 0;
  const hint = headers['keep-alive'];
  if (hint === undefined) return null;
  const timeout = /(?:^|[\s,;])timeout\s*=\s*(\d+)/i.exec(String(hint));
  if (timeout === null) return null;
  const seconds = Math.min(Number(timeout[1]) - KEEP_ALIVE_THRESHOLD_S - 1, TUNNEL_KEEP_ALIVE_S);
  return seconds > 0 ? seconds : 0;
}

/** undici's mark on a socket it will not send another request on (`kReset`), found on the first socket it connected. */
let undiciResetMark: symbol | null = null;

/**
 * Whether undici will close the upstream connection after the answer it is reading now: its parser marks the socket
 * when the answer does not keep the connection (an HTTP/1.0 answer without `Connection: keep-alive`, `Connection:
 * close`, a keep-alive hint too short to wait out). llhttp's verdict reaches no public API (the answer's HTTP version
 * neither), and a tunnel that announced keep-alive lost the client's next request into the closing tunnel. Null when
 * the mark is not found (another undici): the headers alone then decide.
 */
function undiciWillClose(socket: Socket): boolean | null {
  undiciResetMark ??= Object.getOwnPropertySymbols(socket).find((symbol) => symbol.description === 'reset') ?? null;
  return undiciResetMark === null ? null : (socket as unknown as Record<symbol, unknown>)[undiciResetMark] === true;
}

/** Streams an undici response back on a ServerResponse. */
function forwardResponse(res: ServerResponse, state: TunnelState, logger: Logger, inspector: HttpInspector, settled: () => void): Dispatcher.DispatchHandler {
  const upstream = state.upstream;
  return {
    onRequestStart() {},
    onResponseStart(controller, statusCode, headers, statusMessage) {
      // undici hands interim answers here too: written as the final head, the real one threw and the tunnel was reset.
      // 103 Early Hints goes on (Node writes those with a Link); 102 and the like stop here.
      if (statusCode < 200) {
        // writeInformation, not writeEarlyHints, whose strict Link check throws on common forms (`</a.css>; rel=preload,
        // </b.js>; rel=preload`), and a throw here made undici abort and close the tunnel's one upstream connection.
        if (statusCode === 103) {
          try {
            res.writeInformation(103, forwardableHeaders(headers as Record<string, string | string[] | undefined>));
          } catch {
            // A hint Node will not write is dropped; the answer follows.
          }
        }
        return;
      }
      // The tunnel's one upstream connection ends when the workload says it will (undici closes it), so the client must
      // not be told to reuse the tunnel for longer: its next request would find it ending, and be lost.
      const keepAlive = upstreamKeepAlive(headers as Record<string, string | string[] | undefined>);
      if (keepAlive !== null && keepAlive > 0) state.keepAliveS = keepAlive;
      // An answer before the whole request came (an upload refused early): undici ends that upstream connection, so
      // the client is told to close too, as Envoy does, not promised a keep-alive the tunnel cannot keep.
      if (keepAlive === 0 || inspector.draining || !res.req.complete || undiciWillClose(upstream) === true) res.shouldKeepAlive = false;
      // Not when the client asked to close (`Connection: close`, HTTP/1.0): a Connection field set here overrides
      // Node's own verdict, and the tunnel stayed open while the client waited for its end.
      else if (keepAlive !== null && res.shouldKeepAlive) {
        res.setHeader('connection', 'keep-alive');
        res.setHeader('keep-alive', `timeout=${keepAlive}`);
      }
      res.writeHead(statusCode, reasonPhrase(statusCode, statusMessage), forwardableHeaders(headers as Record<string, string | string[] | undefined>));
      // Send the head on its own: in Node 24.21 a corked write of the latin1 head string together with a
      // Buffer body chunk onto an Http2Stream corrupts the head's first bytes (seen here); alone it is fine.
      res.flushHeaders();
      res.on('drain', () => controller.resume());
    },
    onResponseData(controller, chunk) {
      if (!res.write(chunk)) controller.pause();
    },
    onResponseEnd(_controller, trailers) {
      // A chunked answer's trailers (a checksum, a status after a streamed body) go on as the workload sent them; Node
      // writes them only on a chunked answer, as the client's would be.
      for (const _ in trailers) {
        try {
          res.addTrailers(forwardableHeaders(trailers as Record<string, string | string[] | undefined>));
        } catch (error) {
          logger.debug({ err: (error as Error).message }, 'trailers of an inspected answer not forwarded');
        }
        break;
      }
      res.end();
      settled();
    },
    onResponseError(_controller, error) {
      settled();
      logger.debug({ err: error.message }, 'forwarding an inspected request failed');
      upstreamFailed.add(res);
      if (res.headersSent) {
        res.destroy(error);
        return;
      }
      // The workload's connection, the tunnel's only one, is gone: the tunnel ends after this answer, which must not
      // promise keep-alive (a pooled client would send its next request into the close). Envoy's words for it.
      res.shouldKeepAlive = false;
      // Its own reason: a phrase the answer's writeHead refused stays on `res`, and would be refused again.
      res.writeHead(502, 'Bad Gateway', { 'content-type': 'text/plain', 'content-length': UPSTREAM_RESET_BODY.length }).end(UPSTREAM_RESET_BODY);
    },
  };
}
