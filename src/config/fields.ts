// Field-level checks shared by every kind's validator: shapes, names, IPs, ports, durations, and the
// issue list they report into. Pure functions over plain values parsed from YAML; no I/O.
import { isIPv4, isIPv6 } from 'node:net';
import type { ErrorCode } from '../errors.ts';
import { tryParseSpiffeId, validateTrustDomain } from '../identity/spiffe-id.ts';

/** Where a value sits inside an object: keys and list indexes from the object's root. */
export type FieldPath = readonly (string | number)[];

export interface FieldIssue {
  readonly code: ErrorCode;
  readonly path: FieldPath;
  readonly message: string;
}

/** Collects the issues of one object; validators keep going after a problem so one load reports them all. */
export class FieldIssues {
  readonly list: FieldIssue[] = [];

  add(path: FieldPath, message: string, code: ErrorCode = 'CONFIG_FIELD'): void {
    this.list.push({ code, path, message });
  }
}

/** `spec.ports[1].port`, `metadata.annotations["ambit.dev/node"]`: the way kubectl and Istio print field paths. */
export function formatPath(path: FieldPath): string {
  let text = '';
  for (const segment of path) {
    if (typeof segment === 'number') text += `[${segment}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(segment)) text += text.length === 0 ? segment : `.${segment}`;
    else text += `[${JSON.stringify(segment)}]`;
  }
  return text;
}

export type Mapping = Record<string, unknown>;

/**
 * A plain YAML mapping. Not a Map, Set, Date or Uint8Array, which YAML tags (`!!omap`, `!!set`, `!!timestamp`,
 * `!!binary`) make: read as mappings they had no keys, so `labels: !!omap [...]` silently emptied the labels that
 * policies select by.
 */
export function isMapping(value: unknown): value is Mapping {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (isMapping(value)) return 'a mapping';
  if (typeof value === 'object') return `a YAML-tagged ${(value as object).constructor.name} (tags such as !!omap, !!set, !!binary, !!timestamp are not Kubernetes YAML)`;
  if (typeof value === 'string') return `the string ${JSON.stringify(value)}`;
  return `${typeof value} ${String(value)}`;
}

/** YAML `key:` with no value parses as null; Kubernetes treats an explicit null like an absent field. */
export function hasValue(object: Mapping, key: string): boolean {
  return Object.hasOwn(object, key) && object[key] !== null && object[key] !== undefined;
}

export function mappingAt(issues: FieldIssues, value: unknown, path: FieldPath): Mapping | undefined {
  if (isMapping(value)) return value;
  issues.add(path, `must be a mapping, got ${describe(value)}`);
  return undefined;
}

/** Optional mapping field: undefined when absent, reported when present but not a mapping. */
export function mappingField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, required = false): Mapping | undefined {
  if (!hasValue(object, key)) {
    if (required) issues.add([...path, key], 'required');
    return undefined;
  }
  return mappingAt(issues, object[key], [...path, key]);
}

/**
 * Rejects fields that are neither modelled (`known`) nor knowingly ignored (`tolerated`), so a typo such as
 * `serviceAcountName` is an error rather than a silently defaulted field.
 */
export function checkFields(
  issues: FieldIssues,
  object: Mapping,
  path: FieldPath,
  known: readonly string[],
  tolerated: readonly string[] = [],
): void {
  for (const key of Object.keys(object)) {
    if (known.includes(key) || tolerated.includes(key)) continue;
    const suggestion = closest(key, known);
    issues.add([...path, key], suggestion === undefined ? 'unknown field' : `unknown field (did you mean ${suggestion}?)`);
  }
}

function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 4)) + 1;
  for (const candidate of candidates) {
    const distance = candidate.toLowerCase() === word.toLowerCase() ? 0 : editDistance(word, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] as number) + 1, (current[j - 1] as number) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] as number;
}

export interface StringCheck {
  required?: boolean;
  /** Returns a problem description, or undefined when the value is fine. */
  check?: (value: string) => string | undefined;
}

export function stringField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, options: StringCheck = {}): string | undefined {
  if (!hasValue(object, key)) {
    if (options.required) issues.add([...path, key], 'required');
    return undefined;
  }
  return stringAt(issues, object[key], [...path, key], options);
}

export function stringAt(issues: FieldIssues, value: unknown, path: FieldPath, options: StringCheck = {}): string | undefined {
  if (typeof value !== 'string') {
    issues.add(path, `must be a string, got ${describe(value)}`);
    return undefined;
  }
  if (options.required && value.length === 0) {
    issues.add(path, 'must not be empty');
    return undefined;
  }
  const problem = options.check?.(value);
  if (problem !== undefined) {
    issues.add(path, problem);
    return undefined;
  }
  return value;
}

export function booleanField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath): boolean | undefined {
  if (!hasValue(object, key)) return undefined;
  const value = object[key];
  if (typeof value === 'boolean') return value;
  issues.add([...path, key], `must be true or false, got ${describe(value)}`);
  return undefined;
}

export function integerAt(issues: FieldIssues, value: unknown, path: FieldPath, min: number, max: number): number | undefined {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    issues.add(path, `must be an integer, got ${describe(value)}`);
    return undefined;
  }
  if (value < min || value > max) {
    issues.add(path, `${value} is out of range (${min}-${max})`);
    return undefined;
  }
  return value;
}

export function integerField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, min: number, max: number, required = false): number | undefined {
  if (!hasValue(object, key)) {
    if (required) issues.add([...path, key], 'required');
    return undefined;
  }
  return integerAt(issues, object[key], [...path, key], min, max);
}

export const MAX_PORT = 65_535;

export function portAt(issues: FieldIssues, value: unknown, path: FieldPath): number | undefined {
  if (typeof value === 'number' && Number.isInteger(value) && (value < 1 || value > MAX_PORT)) {
    issues.add(path, `${value} is not a port number (1-${MAX_PORT})`);
    return undefined;
  }
  return integerAt(issues, value, path, 1, MAX_PORT);
}

export function portField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, required = false): number | undefined {
  if (!hasValue(object, key)) {
    if (required) issues.add([...path, key], 'required');
    return undefined;
  }
  return portAt(issues, object[key], [...path, key]);
}

export function enumField<T extends string>(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, values: readonly T[], required = false): T | undefined {
  const text = stringField(issues, object, key, path, { required });
  if (text === undefined) return undefined;
  if ((values as readonly string[]).includes(text)) return text as T;
  issues.add([...path, key], `${JSON.stringify(text)} is not one of ${values.join(', ')}`);
  return undefined;
}

/** A list field: [] when absent, undefined (reported) when present but not a list. */
export function listField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath): readonly unknown[] | undefined {
  if (!hasValue(object, key)) return [];
  const value = object[key];
  if (Array.isArray(value)) return value;
  issues.add([...path, key], `must be a list, got ${describe(value)}`);
  return undefined;
}

export function stringListField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath, options: StringCheck = {}): string[] {
  const items = listField(issues, object, key, path) ?? [];
  const result: string[] = [];
  items.forEach((item, index) => {
    const text = stringAt(issues, item, [...path, key, index], { required: true, ...options });
    if (text !== undefined) result.push(text);
  });
  return result;
}

/** A string-to-string map such as labels, with per-key and per-value checks; {} when absent. */
export function stringMapField(
  issues: FieldIssues,
  object: Mapping,
  key: string,
  path: FieldPath,
  checkKey: (key: string) => string | undefined,
  checkValue: (value: string) => string | undefined,
): Record<string, string> {
  const map = mappingField(issues, object, key, path);
  const result: Record<string, string> = {};
  if (map === undefined) return result;
  for (const [entryKey, entryValue] of Object.entries(map)) {
    const entryPath = [...path, key, entryKey];
    const keyProblem = checkKey(entryKey);
    if (keyProblem !== undefined) {
      issues.add(entryPath, keyProblem);
      continue;
    }
    if (typeof entryValue !== 'string') {
      issues.add(entryPath, `must be a string, got ${describe(entryValue)} (quote it)`);
      continue;
    }
    const valueProblem = checkValue(entryValue);
    if (valueProblem !== undefined) {
      issues.add(entryPath, valueProblem);
      continue;
    }
    result[entryKey] = entryValue;
  }
  return result;
}

// Kubernetes name rules (k8s.io/apimachinery/pkg/util/validation). Their character sets are a subset of the
// SPIFFE path-segment set and cannot spell "." or "..", so names checked here are valid SPIFFE path segments.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const IANA_SVC_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

export function checkDns1123Label(value: string): string | undefined {
  if (value.length <= 63 && DNS1123_LABEL.test(value)) return undefined;
  return `${JSON.stringify(value)} is not a DNS-1123 label (at most 63 of a-z, 0-9 and "-", starting and ending alphanumeric)`;
}

export function checkDns1123Subdomain(value: string): string | undefined {
  if (value.length <= 253 && DNS1123_SUBDOMAIN.test(value)) return undefined;
  return `${JSON.stringify(value)} is not a DNS-1123 name (at most 253 of a-z, 0-9, "-" and ".", starting and ending alphanumeric)`;
}

export function checkDns1035Label(value: string): string | undefined {
  if (value.length <= 63 && DNS1035_LABEL.test(value)) return undefined;
  return `${JSON.stringify(value)} is not a DNS-1035 label (at most 63 of a-z, 0-9 and "-", starting with a letter)`;
}

/** Port names (`containerPort.name`, named `targetPort`): IANA service names, as Kubernetes requires. */
export function checkPortName(value: string): string | undefined {
  if (value.length <= 15 && IANA_SVC_NAME.test(value) && /[a-z]/.test(value) && !value.includes('--')) return undefined;
  return `${JSON.stringify(value)} is not a port name (at most 15 of a-z, 0-9 and "-", with a letter, no "--")`;
}

/** Label and annotation keys: `[prefix/]name`, the prefix a DNS-1123 subdomain, the name at most 63 characters. */
export function checkQualifiedName(value: string): string | undefined {
  const slash = value.indexOf('/');
  const prefix = slash === -1 ? undefined : value.slice(0, slash);
  const name = slash === -1 ? value : value.slice(slash + 1);
  const prefixOk = prefix === undefined || (prefix.length <= 253 && DNS1123_SUBDOMAIN.test(prefix));
  if (prefixOk && name.length <= 63 && QUALIFIED_NAME.test(name)) return undefined;
  return `${JSON.stringify(value)} is not a valid key ([prefix/]name, name at most 63 of A-Z, a-z, 0-9, "-", "_", "." starting and ending alphanumeric)`;
}

export function checkLabelValue(value: string): string | undefined {
  if (value.length === 0 || (value.length <= 63 && QUALIFIED_NAME.test(value))) return undefined;
  return `${JSON.stringify(value)} is not a valid label value (at most 63 of A-Z, a-z, 0-9, "-", "_", "." starting and ending alphanumeric)`;
}

export function anyValue(): undefined {
  return undefined;
}

const MAPPED_IPV4_DOTTED = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;
const MAPPED_IPV4_HEX = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/;

/** An IPv6 address (valid, no zone) in RFC 5952's form, as the WHATWG URL parser writes it: lower case, zeros compressed. */
export function ipv6Text(text: string): string {
  return new URL(`http://[${text}]`).hostname.slice(1, -1);
}

/**
 * The one spelling of an IP address used as an index key: IPv4 dotted quad, IPv6 compressed lowercase, and an
 * IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, how a dual-stack socket reports an IPv4 peer) as its IPv4 address.
 * Returns undefined for anything that is not an IP address, including IPv6 with a zone (`fe80::1%eth0`).
 */
export function canonicalIp(text: string): string | undefined {
  if (isIPv4(text)) return text;
  if (!isIPv6(text) || text.includes('%')) return undefined;
  const dotted = MAPPED_IPV4_DOTTED.exec(text);
  if (dotted !== null && isIPv4(dotted[1] as string)) return dotted[1];
  const compressed = ipv6Text(text);
  const hex = MAPPED_IPV4_HEX.exec(compressed);
  if (hex !== null) {
    const high = Number.parseInt(hex[1] as string, 16);
    const low = Number.parseInt(hex[2] as string, 16);
    return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`;
  }
  return compressed;
}

const LOCALITY_PART = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

/**
 * Istio's locality, region/zone/subzone (parts after the third are ignored, as Istio does): it becomes metric label
 * values and baggage, so each part is a token.
 */
export function checkLocality(value: string): string | undefined {
  if (!value.split('/').every((part) => LOCALITY_PART.test(part))) {
    return `must be region/zone/subzone, each part at most 63 letters, digits, '-', '_' or '.' (got ${JSON.stringify(value)})`;
  }
  return undefined;
}

export function checkIp(value: string): string | undefined {
  return canonicalIp(value) === undefined ? `${JSON.stringify(value)} is not an IPv4 or IPv6 address` : undefined;
}

// IP blocks as Istio reads them (netip.ParsePrefix): ipBlocks, the IP `when` keys, WorkloadEntry and ServiceEntry addresses.
interface ParsedBlock {
  readonly family: 4 | 6;
  readonly address: string;
  /** undefined for a single address */
  readonly bits: number | undefined;
}

/** Undefined for anything but an IP address or a CIDR block (Go's netip.ParsePrefix rules: no leading zeros in the length). */
function parseIpBlock(value: string): ParsedBlock | string {
  const invalid = `${JSON.stringify(value)} is not an IP address or CIDR block`;
  const slash = value.indexOf('/');
  const address = canonicalIp(slash === -1 ? value : value.slice(0, slash));
  if (address === undefined) return invalid;
  const family = address.includes(':') ? 6 : 4;
  if (slash === -1) return { family, address, bits: undefined };
  const bitsText = value.slice(slash + 1);
  if (!/^(?:0|[1-9]\d{0,2})$/.test(bitsText)) return invalid;
  let bits = Number(bitsText);
  // canonicalIp writes an IPv4-mapped IPv6 address as IPv4 (how a dual-stack socket's peer is looked up), so its
  // block is the IPv4 block of the low 32 bits; shorter than /96 it would also cover plain IPv6 addresses.
  if (family === 4 && value.slice(0, slash).includes(':')) {
    if (bits < 96 || bits > 128) return `${JSON.stringify(value)}: an IPv4-mapped block needs a length of /96 to /128; write the IPv4 block instead`;
    bits -= 96;
  }
  if (bits > (family === 4 ? 32 : 128)) return `${JSON.stringify(value)}: /${bitsText} is longer than an IPv${family} address`;
  return { family, address, bits };
}

export function checkIpBlock(value: string): string | undefined {
  const parsed = parseIpBlock(value);
  return typeof parsed === 'string' ? parsed : undefined;
}

/**
 * An IP block of an AuthorizationPolicy. An IPv4-mapped one is refused: Envoy and ztunnel keep it an IPv6 block, which
 * no IPv4 peer (peers are canonical) ever falls in, so in Istio `notIpBlocks: ["::ffff:10.0.0.0/104"]` holds for
 * 10.1.2.3 and `ipBlocks: ["::ffff:10.0.0.5"]` allows nobody. Read as the IPv4 block, it would mean the opposite.
 */
export function checkPolicyIpBlock(value: string): string | undefined {
  const parsed = parseIpBlock(value);
  if (typeof parsed === 'string') return parsed;
  const slash = value.indexOf('/');
  if (parsed.family === 4 && (slash === -1 ? value : value.slice(0, slash)).includes(':')) {
    return `${JSON.stringify(value)} is an IPv4-mapped IPv6 block: Istio matches it against no IPv4 peer, so it would never match; write the IPv4 block (${canonicalIpBlock(value)})`;
  }
  return undefined;
}

/**
 * The canonical spelling of a validated block. Istio (netip.ParsePrefix) accepts a block with host bits set, such as
 * 10.0.0.1/24, and Envoy matches it as its network; so ambit accepts it too and writes it as the network, 10.0.0.0/24.
 */
export function canonicalIpBlock(value: string): string {
  const parsed = parseIpBlock(value);
  if (typeof parsed === 'string') throw new TypeError(parsed);
  if (parsed.bits === undefined) return parsed.address;
  const bytes = ipBytes(parsed.address, parsed.family);
  for (let index = 0; index < bytes.length; index++) {
    const keep = Math.min(8, Math.max(0, parsed.bits - index * 8));
    bytes[index] = (bytes[index] as number) & ((0xff << (8 - keep)) & 0xff);
  }
  return `${ipText(bytes, parsed.family)}/${parsed.bits}`;
}

function ipBytes(address: string, family: 4 | 6): number[] {
  if (family === 4) return address.split('.').map(Number);
  const [head = '', tail] = address.split('::') as [string, string | undefined];
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  return groups.flatMap((group) => {
    const number = Number.parseInt(group, 16);
    return [number >> 8, number & 0xff];
  });
}

function ipText(bytes: readonly number[], family: 4 | 6): string {
  if (family === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let index = 0; index < 16; index += 2) groups.push((((bytes[index] as number) << 8) | (bytes[index + 1] as number)).toString(16));
  // A masked non-mapped address never becomes mapped.
  return ipv6Text(groups.join(':'));
}

const HOSTNAME = /^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$/;

/** A DNS name as Istio hosts take them: optionally a leading `*.` wildcard, or `*` alone. */
export function checkHost(value: string): string | undefined {
  if (value === '*') return undefined;
  const name = value.startsWith('*.') ? value.slice(2) : value;
  if (name.length <= 253 && HOSTNAME.test(name)) return undefined;
  return `${JSON.stringify(value)} is not a host name (DNS name, optionally with a leading "*.")`;
}

/** SPIFFE-ID §2.1 and §2.3, by the identity layer's own parser. */
export function checkTrustDomain(value: string): string | undefined {
  try {
    validateTrustDomain(value);
    return undefined;
  } catch (error) {
    return `${JSON.stringify(value)} is not a SPIFFE trust domain: ${(error as Error).message}`;
  }
}

/** A SPIFFE ID with a path (an endpoint's workload ID), by the identity layer's own parser. */
export function checkWorkloadSpiffeId(value: string): string | undefined {
  const id = tryParseSpiffeId(value);
  if (id instanceof Error) return `${JSON.stringify(value)} is not a SPIFFE ID: ${id.message}`;
  if (id.path === '') return `${JSON.stringify(value)} is a trust domain's ID; a workload ID has a path (spiffe://TRUST_DOMAIN/PATH)`;
  return undefined;
}

/** A bundle endpoint: an https URL without userinfo (SPIFFE Federation §5.2). */
export function checkHttpsUrl(value: string): string | undefined {
  if (!URL.canParse(value)) return `${JSON.stringify(value)} is not a URL`;
  const url = new URL(value);
  if (url.protocol !== 'https:') return `${JSON.stringify(value)} must be an https:// URL`;
  if (url.username !== '' || url.password !== '') return `${JSON.stringify(value)} must not carry userinfo`;
  return undefined;
}

const DURATION_UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION = /^(\d+(?:ms|s|m|h|d))+$/;
const DURATION_PART = /(\d+)(ms|s|m|h|d)/g;

/** Parses `1h`, `30m`, `2h30m`, `90s`; undefined for anything else or zero. Bare numbers are refused: no unit, no guess. */
export function parseDurationMs(text: string): number | undefined {
  if (!DURATION.test(text)) return undefined;
  let total = 0;
  for (const match of text.matchAll(DURATION_PART)) total += Number(match[1]) * (DURATION_UNIT_MS[match[2] as string] as number);
  return total > 0 && Number.isSafeInteger(total) ? total : undefined;
}
