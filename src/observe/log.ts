// Structured logs: pino JSON to stdout (or a file), one root logger per process, children per component.
import { pino } from 'pino';
import type { Logger, LevelWithSilent } from 'pino';
import { AmbitError } from '../errors.ts';

export type { Logger };

export interface LoggerOptions {
  name: string;
  level?: LevelWithSilent;
  /** A file path; default stdout. */
  file?: string;
}

/**
 * Log lines buffered for a stdout nobody reads (a stalled pipe, a full log collector) before they are dropped: the
 * data plane writes an access line per connection and must not grow without bound, nor wait, for its logs.
 */
const MAX_BUFFERED_LOG_BYTES = 16 * 1024 * 1024;

/** Log lines this process dropped for a stalled stdout, all loggers together: ambit_log_lines_dropped_total. */
let droppedLines = 0;

export function droppedLogLines(): number {
  return droppedLines;
}

const LEVELS: readonly string[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** AMBIT_LOG_LEVEL, checked: pino would throw its own error from deep inside, which read as a crash. */
export function levelFromEnvironment(value: string | undefined): LevelWithSilent {
  if (value === undefined || value === '') return 'info';
  if (!LEVELS.includes(value)) throw new AmbitError('USAGE', `AMBIT_LOG_LEVEL: ${JSON.stringify(value)} is not a log level (${LEVELS.join(', ')})`);
  return value as LevelWithSilent;
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? levelFromEnvironment(process.env.AMBIT_LOG_LEVEL);
  const destination = options.file ? pino.destination({ dest: options.file, mkdir: true, sync: true }) : pino.destination({ dest: 1, sync: false, maxLength: MAX_BUFFERED_LOG_BYTES });
  let droppedInStall = 0;
  destination.on('drop', () => {
    droppedLines++;
    // Said once per stall, on stderr (stdout is the stalled one), and again with the count once output flows again:
    // a reader that keeps up only in part never lets the buffer drain, so the count also goes to the metric.
    if (droppedInStall++ > 0) return;
    process.stderr.write(`${options.name}: stdout is not being read; dropping log lines beyond ${MAX_BUFFERED_LOG_BYTES} buffered bytes\n`);
    destination.once('drain', () => {
      process.stderr.write(`${options.name}: stdout is read again; ${droppedInStall} log lines were dropped\n`);
      droppedInStall = 0;
    });
  });
  const logger = pino({ name: options.name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
  // After pino's own listener, which on EPIPE (stdout's reader gone: `ambit proxy | head`) makes every later write a
  // no-op, silently: said once on stderr, and each line from then on counted as dropped.
  destination.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') return;
    // stderr may be the same broken pipe (`2>&1 | head`): its own EPIPE, unheard, would end the process.
    if (process.stderr.listenerCount('error') === 0) process.stderr.on('error', () => {});
    process.stderr.write(`${options.name}: stdout was closed by its reader (EPIPE); log lines are dropped from now on (ambit_log_lines_dropped_total)\n`);
    destination.write = (): boolean => {
      droppedLines++;
      return true;
    };
  });
  return logger;
}

/** A logger that drops everything, for tests and library use without output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * A handler for a server's failed accepts (EMFILE when libuv's reserve descriptor is gone too): logged at most once per
 * `intervalMs` with how many were not, since libuv retries on every turn of the loop and would flood the log.
 */
export function acceptErrorLogger(logger: Logger, server: string, intervalMs = 10_000): (error: Error) => void {
  const budget = new LogBudget(intervalMs);
  return (error) => {
    const sinceLast = budget.take('accept');
    if (sinceLast !== null) logger.warn({ server, err: error.message, sinceLast }, 'accepting a connection failed');
  };
}

/**
 * At most `burst` lines per key every intervalMs, for events anyone can cause at any rate (an unauthenticated client,
 * a failing accept): a flood of them must not become a flood of warnings. Keys are few (fixed names).
 */
export class LogBudget {
  readonly #intervalMs: number;
  readonly #burst: number;
  readonly #byKey = new Map<string, { startMs: number; logged: number; unlogged: number }>();

  constructor(intervalMs = 10_000, burst = 1) {
    this.#intervalMs = intervalMs;
    this.#burst = burst;
  }

  /** A warning when the budget allows (saying how many it left out since), else a debug line. */
  warn(logger: Logger, key: string, fields: Record<string, unknown>, message: string): void {
    const unlogged = this.take(key);
    if (unlogged === null) logger.debug(fields, message);
    else logger.warn(unlogged > 0 ? { ...fields, unlogged } : fields, message);
  }

  /** How many were left unlogged before this one, when this one may be logged; else null. */
  take(key: string): number | null {
    const now = Date.now();
    let entry = this.#byKey.get(key);
    if (entry === undefined) this.#byKey.set(key, (entry = { startMs: now, logged: 0, unlogged: 0 }));
    if (now - entry.startMs >= this.#intervalMs) {
      entry.startMs = now;
      entry.logged = 0;
    }
    if (entry.logged >= this.#burst) {
      entry.unlogged++;
      return null;
    }
    entry.logged++;
    const unlogged = entry.unlogged;
    entry.unlogged = 0;
    return unlogged;
  }
}
