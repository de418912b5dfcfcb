// Structured logs: pino JSON to stdout (or a file), one root logger per process, children per component.
import { pino } from 'pino';
import type { Logger, LevelWithSilent } from 'pino';

export type { Logger };

export interface LoggerOptions {
  name: string;
  level?: LevelWithSilent;
  /** A file path; default stdout. */
  file?: string;
}

export function createLogger(options: LoggerOptions): Logger {
  const level = options.level ?? (process.env.AMBIT_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info';
  const destination = options.file ? pino.destination({ dest: options.file, mkdir: true, sync: true }) : pino.destination({ dest: 1, sync: false });
  return pino({ name: options.name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

/** A logger that drops everything, for tests and library use without output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
