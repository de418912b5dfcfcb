// Shared command-line parsing: node:util parseArgs with errors turned into USAGE, and --help handling.
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { AmbitError } from '../errors.ts';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  /** One line shown in `ambit --help`. */
  summary: string;
  /** Full text shown by `ambit <command> --help`. */
  help: string;
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>;
}

export function parse<T extends OptionSpec>(argv: string[], options: T, allowPositionals = true) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (error) {
    throw new AmbitError('USAGE', (error as Error).message);
  }
}

export function requireString(value: string | boolean | undefined, flag: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new AmbitError('USAGE', `missing required option --${flag}`);
  return value;
}

/** Parses durations such as 90s, 10m, 1h, 2h30m, 1d; plain numbers are seconds. */
export function parseDurationMs(text: string, flag: string): number {
  const plain = /^\d+$/.exec(text);
  if (plain) {
    if (Number(text) <= 0) throw new AmbitError('USAGE', `--${flag}: duration must be positive`);
    return Number(text) * 1000;
  }
  const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  let total = 0;
  let rest = text;
  const part = /^(\d+)(ms|s|m|h|d)/;
  if (rest.length === 0) throw new AmbitError('USAGE', `--${flag}: empty duration`);
  while (rest.length > 0) {
    const match = part.exec(rest);
    if (!match) throw new AmbitError('USAGE', `--${flag}: "${text}" is not a duration (examples: 30s, 10m, 1h, 2h30m)`);
    total += Number(match[1]) * (units[match[2] as string] as number);
    rest = rest.slice(match[0].length);
  }
  if (total <= 0) throw new AmbitError('USAGE', `--${flag}: duration must be positive`);
  return total;
}

/** A certificate lifetime flag: whole seconds, at least one. */
export function parseTtlSeconds(text: string, flag: string): number {
  const ms = parseDurationMs(text, flag);
  if (ms < 1000) throw new AmbitError('USAGE', `--${flag} ${text}: certificates are issued in whole seconds; use at least 1s`);
  return Math.round(ms / 1000);
}
