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
  return pino({ name: options.name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
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
  let lastMs = -Infinity;
  let unlogged = 0;
  return (error) => {
    const now = Date.now();
    if (now - lastMs < intervalMs) {
      unlogged++;
      return;
    }
    logger.warn({ server, err: error.message, sinceLast: unlogged }, 'accepting a connection failed');
    lastMs = now;
    unlogged = 0;
  };
}
