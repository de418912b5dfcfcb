// Shared command-line parsing: node:util parseArgs with errors turned into USAGE, and --help handling.
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { AmbitError, fileFailure, toAmbitError } from '../errors.ts';
import { decodeBundleText } from '../identity/bundle.ts';
import type { TrustBundle } from '../identity/bundle.ts';
import { parseDurationMs as parseConfigDuration } from '../config/fields.ts';

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
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (error) {
    // Node's three lines for a value that starts with a dash (`--ttl -1s`): one, naming the flag and the value.
    const ambiguous = /^Option '(--[\w-]+)'(?: \(-\w\))? argument is ambiguous/.exec((error as Error).message);
    if (ambiguous !== null) {
      const flag = ambiguous[1] as string;
      // The occurrence Node complained of: the flag followed by something that starts with a dash.
      let at = argv.indexOf(flag);
      while (at >= 0 && !(argv[at + 1] ?? '').startsWith('-')) at = argv.indexOf(flag, at + 1);
      const value = at >= 0 ? (argv[at + 1] as string) : '';
      if (value.startsWith('--')) throw new AmbitError('USAGE', `${flag} is missing its value (the next argument, ${value}, is an option)`);
      throw new AmbitError('USAGE', `${flag} ${value}: a value starting with "-" is taken for an option (negative values are never valid here; a value that must start with "-" is written ${flag}=${value})`);
    }
    throw new AmbitError('USAGE', (error as Error).message.replaceAll('\n', ' '));
  }
  // `--svid-ttl ""` (an unset shell variable) was read as no flag at all, and `--audit-log ""` as a file named ''.
  for (const [name, value] of Object.entries(parsed.values)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one === '') throw new AmbitError('USAGE', `--${name} "": an empty value (give one, or leave the option out)`);
    }
  }
  return parsed;
}

export function requireString(value: string | boolean | undefined, flag: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new AmbitError('USAGE', `missing required option --${flag}`);
  return value;
}

/** No lifetime, timeout or interval here means more: a certificate or token valid past the year 2100 is a typo. */
const MAX_DURATION_MS = 100 * 365 * 86_400_000;

/** Zero in any unit: 0, 0s, 0d, 0h0m. */
const ZERO_DURATION = /^(0+|(0+(ms|s|m|h|d))+)$/;

/** A count a flag gives: a whole number of at least 1. */
export function parsePositiveCount(text: string, flag: string): number {
  if (!/^\d{1,9}$/.test(text) || Number(text) < 1) throw new AmbitError('USAGE', `--${flag}: "${text}" is not a whole number of at least 1`);
  return Number(text);
}

/** Parses durations such as 90s, 10m, 1h, 2h30m, 1d (the configuration's syntax); on the command line a plain number is seconds. */
export function parseDurationMs(text: string, flag: string): number {
  if (text.length === 0) throw new AmbitError('USAGE', `--${flag}: empty duration`);
  const ms = /^\d+$/.test(text) ? Number(text) * 1000 : parseConfigDuration(text);
  // Well formed but past what a number holds exactly (99999999999999h): too long, not malformed. Zero (0s, 0d) is
  // well formed too, and not positive.
  if ((ms !== undefined && ms > MAX_DURATION_MS) || (ms === undefined && /^(\d+(ms|s|m|h|d))+$/.test(text) && !ZERO_DURATION.test(text))) throw new AmbitError('USAGE', `--${flag}: "${text}" is longer than 100 years`);
  if (ms === undefined && text.includes('.') && /^(\d*\.?\d+(ms|s|m|h|d)?)+$/.test(text)) throw new AmbitError('USAGE', `--${flag}: "${text}": a duration is written in whole numbers of each unit (1h30m, 500ms, not 1.5h or 0.5s)`);
  if (ms === undefined || ms <= 0 || !Number.isSafeInteger(ms)) throw new AmbitError('USAGE', `--${flag}: "${text}" is not a positive duration (examples: 30s, 10m, 1h, 2h30m)`);
  return ms;
}

/** A duration flag that may also be zero (0, 0s, 0d): to turn off what it times. */
export function parseDurationMsAllowZero(text: string, flag: string): number {
  return ZERO_DURATION.test(text) ? 0 : parseDurationMs(text, flag);
}

/** A flag counted in whole seconds (a certificate lifetime, a bundle's refresh hint): at least one, no fraction. */
export function parseWholeSeconds(text: string, flag: string, why = 'certificates are issued in whole seconds'): number {
  const ms = parseDurationMs(text, flag);
  if (ms < 1000) throw new AmbitError('USAGE', `--${flag} ${text}: ${why}; use at least 1s`);
  if (ms % 1000 !== 0) throw new AmbitError('USAGE', `--${flag} ${text}: ${why}; use whole seconds (not ${ms} ms)`);
  return ms / 1000;
}

/** A certificate lifetime flag: whole seconds, at least one. */
export function parseTtlSeconds(text: string, flag: string): number {
  return parseWholeSeconds(text, flag);
}

/** A file's text; `what` names where it was given (`--root-cert`), so the error says which flag to fix. */
export async function readText(file: string, what?: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw new AmbitError('FILE_READ', `${what === undefined ? '' : `${what} `}${file}: cannot be read (${fileFailure(error)})`, { cause: error });
  }
}

/** A trust bundle file named by a flag (`--ca-bundle`): an error says which flag and file, not only the trust domain. */
export async function readBundleFlag(file: string, trustDomain: string, flag: string): Promise<TrustBundle> {
  const text = await readText(file, `--${flag}`);
  let bundle: TrustBundle;
  try {
    bundle = decodeBundleText(trustDomain, text);
  } catch (error) {
    const coded = toAmbitError(error, 'BUNDLE_INVALID');
    throw new AmbitError(coded.code, `--${flag} ${file}: ${coded.message}`, { cause: error });
  }
  // PEM with only other blocks (a key) or blank text reads as an empty bundle: with it no CA could ever be trusted, and
  // the agent retried an authentication that cannot succeed, saying only that the CA failed it.
  if (bundle.roots.length === 0) {
    throw new AmbitError('BUNDLE_INVALID', `--${flag} ${file}: holds no root certificate (no CERTIFICATE block: a key, or an empty file?); give the CA's bundle (\`ambit ca bundle --dir DIR\`)`);
  }
  return bundle;
}

/**
 * The join token from `--join-token TOKEN` or `--join-token-file FILE` (one of them, or neither). A file keeps the
 * secret out of the process list: any local user can read /proc/PID/cmdline, and redeem a token the first
 * attestation did not spend (the CA was unreachable).
 */
export async function joinTokenOption(token: string | undefined, file: string | undefined): Promise<string | undefined> {
  if (token !== undefined && file !== undefined) throw new AmbitError('USAGE', '--join-token and --join-token-file: give one of them');
  if (file === undefined) return token;
  const text = (await readText(file, '--join-token-file')).trim();
  if (text === '' || /\s/.test(text)) throw new AmbitError('USAGE', `--join-token-file ${file}: expected one token on one line`);
  return text;
}

/** --ca: `https://HOST[:PORT]`, checked here (a bad one read later as the CA out of reach, retried for ever). */
export function parseCaUrl(value: string | boolean | undefined): string {
  const caUrl = requireString(value, 'ca').replace(/\/+$/, '');
  if (!caUrl.startsWith('https://')) throw new AmbitError('USAGE', `--ca must be an https:// URL, got "${caUrl}"`);
  let url: URL;
  try {
    url = new URL(caUrl);
  } catch {
    throw new AmbitError('USAGE', `--ca "${caUrl}" is not a URL of the form https://HOST:PORT`);
  }
  // An empty `?` or `#` reads as none: the test is on the text.
  if (url.hostname === '' || url.pathname !== '/' || /[?#]/.test(caUrl) || url.username !== '' || url.password !== '') {
    throw new AmbitError('USAGE', `--ca "${caUrl}": give the CA as https://HOST:PORT, with no path, query, fragment or user`);
  }
  // The URL as parsed (scheme and host lower-cased, a default port dropped), to which request paths are appended.
  return url.origin;
}
