// Access log: one pino line per connection at close, with ztunnel's field names (`src.addr`, `dst.identity`,
// `bytes_sent`, `duration: "12ms"`, ...) as flat keys, so tooling written for ztunnel's JSON logs reads ours.
import type { Logger } from './log.ts';

export interface AccessLogRecord {
  direction: 'inbound' | 'outbound';
  src: { addr: string; workload?: string; namespace?: string; identity?: string };
  /** `addr` is the L4 address dialled or accepted (e.g. podIP:15008); `hbone_addr` the CONNECT :authority. */
  dst: { addr: string; hbone_addr?: string; workload?: string; namespace?: string; identity?: string; service?: string };
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
 * Marks a logger made by tunnelLogger. Pino does not de-duplicate a field that is both bound and logged
 * (it writes the key twice), so accessLog leaves the identities out when the logger already carries them.
 * A symbol, because the state hangs on an object we do not own; pino children inherit it (Object.create).
 */
const CARRIES_IDENTITIES = Symbol('ambit.accessLog.carriesIdentities');

type MarkedLogger = Logger & { [CARRIES_IDENTITIES]?: true };

/**
 * The logger for one tunnel: a pino child carrying both identities as `src.identity` / `dst.identity`,
 * serialised once here rather than on every line (STYLE rule 10). An identity that is not known (no mTLS)
 * is left out, as ztunnel does.
 */
export function tunnelLogger(base: Logger, srcIdentity: string | undefined, dstIdentity: string | undefined): Logger {
  const bindings: Record<string, string> = {};
  if (srcIdentity !== undefined) bindings['src.identity'] = srcIdentity;
  if (dstIdentity !== undefined) bindings['dst.identity'] = dstIdentity;
  const child = base.child(bindings) as MarkedLogger;
  child[CARRIES_IDENTITIES] = true;
  return child;
}

/** Writes the connection's access line: warn when it ended with an error, info otherwise; msg 'access'. */
export function accessLog(logger: Logger, record: AccessLogRecord): void {
  const level = record.error === undefined ? 'info' : 'warn';
  // Disabled levels cost one comparison: the line's object is not even built (STYLE rule 11).
  if (!logger.isLevelEnabled(level)) return;
  const carriesIdentities = (logger as MarkedLogger)[CARRIES_IDENTITIES] === true;
  const { src, dst, error } = record;
  // Undefined fields are dropped by pino's serialiser, so optional fields need no branches here.
  logger[level](
    {
      'src.addr': src.addr,
      'src.workload': src.workload,
      'src.namespace': src.namespace,
      'src.identity': carriesIdentities ? undefined : src.identity,
      'dst.addr': dst.addr,
      'dst.hbone_addr': dst.hbone_addr,
      'dst.service': dst.service,
      'dst.workload': dst.workload,
      'dst.namespace': dst.namespace,
      'dst.identity': carriesIdentities ? undefined : dst.identity,
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
