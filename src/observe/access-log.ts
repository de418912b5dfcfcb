// Access log: one pino line per connection at close, with ztunnel's field names (`src.addr`, `dst.identity`,
// `bytes_sent`, `duration: "12ms"`, ...) as flat keys, so tooling written for ztunnel's JSON logs reads ours.
import type { Logger } from './log.ts';

export interface AccessLogRecord {
  direction: 'inbound' | 'outbound';
  /** `cluster`: the workload's cluster (Istio's CLUSTER_ID), where it is known. */
  src: { addr: string; workload?: string; namespace?: string; identity?: string; cluster?: string };
  /** `addr` is the L4 address dialled or accepted (e.g. podIP:15008); `hbone_addr` the CONNECT :authority. */
  dst: { addr: string; hbone_addr?: string; workload?: string; namespace?: string; identity?: string; service?: string; cluster?: string };
  /** A passthrough to a name: the address it resolved to and was reached on (Envoy's upstream_host). */
  upstreamHost?: string;
  /**
   * From the reporting proxy's point of view, as ztunnel logs them (it flips Istio's metric direction back,
   * istio/istio#32399): outbound bytes_sent is client→server, inbound bytes_sent is server→client; in both
   * cases, what this proxy wrote into the tunnel.
   */
  bytesSent: number;
  bytesRecv: number;
  durationMs: number;
  error?: { code: string; message: string };
  responseFlags: string;
}

/**
 * Whether a connection's access line would be written (warn for a failed one, info otherwise). Call sites ask first,
 * so the record is not even built when the level is off: the data path's default (STYLE rule 11).
 */
export function accessLogEnabled(logger: Logger, failed: boolean): boolean {
  return logger.isLevelEnabled(failed ? 'warn' : 'info');
}

/** Writes the connection's access line: warn when it ended with an error, info otherwise; msg 'access'. */
export function accessLog(logger: Logger, record: AccessLogRecord): void {
  const level = record.error === undefined ? 'info' : 'warn';
  // Disabled levels cost one comparison: the line's object is not even built (STYLE rule 11).
  if (!logger.isLevelEnabled(level)) return;
  const { src, dst, error } = record;
  // Undefined fields are dropped by pino's serialiser, so optional fields need no branches here.
  logger[level](
    {
      'src.addr': src.addr,
      'src.workload': src.workload,
      'src.namespace': src.namespace,
      'src.identity': src.identity,
      'src.cluster': src.cluster,
      'dst.addr': dst.addr,
      'dst.hbone_addr': dst.hbone_addr,
      'dst.service': dst.service,
      'dst.workload': dst.workload,
      'dst.namespace': dst.namespace,
      'dst.identity': dst.identity,
      'dst.cluster': dst.cluster,
      upstream_host: record.upstreamHost,
      direction: record.direction,
      bytes_sent: record.bytesSent,
      bytes_recv: record.bytesRecv,
      // ztunnel writes whole milliseconds (Rust's as_millis truncates).
      duration: `${Math.trunc(record.durationMs)}ms`,
      response_flags: record.responseFlags,
      error: error?.message,
      error_code: error?.code,
    },
    'access',
  );
}

/** One HTTP request on an inspected connection, as its response ends (or the client leaves first). */
export interface RequestLogRecord {
  method: string;
  /** The request target as the client sent it (Envoy's `%REQ(:PATH)%`). */
  path: string;
  authority: string;
  protocol: 'HTTP/1.1' | 'HTTP/1.0' | 'HTTP/2';
  responseCode: number;
  responseFlags: string;
  durationMs: number;
  /** The request's size as it came from the client, and its answer's as it went back (head and body; see l7.ts). */
  requestBytes: number;
  responseBytes: number;
}

/**
 * Writes a request's access line (msg 'request', info): the connection's identities and addresses (`connection`,
 * built once per tunnel) with Envoy's request fields, so a request can be found by path and status as in a
 * sidecar's access log. Only written where the connection lines are (log level info, the default; the bench's `--access-log`).
 */
export function requestLog(logger: Logger, connection: Readonly<Record<string, string | undefined>>, record: RequestLogRecord): void {
  logger.info(
    {
      ...connection,
      method: record.method,
      path: record.path,
      authority: record.authority,
      protocol: record.protocol,
      response_code: record.responseCode,
      response_flags: record.responseFlags,
      duration: `${Math.trunc(record.durationMs)}ms`,
      bytes_recv: record.requestBytes,
      bytes_sent: record.responseBytes,
    },
    'request',
  );
}
