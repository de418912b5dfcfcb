// Compiled value matchers: Istio's string match kinds (exact, `prefix*`, `*suffix`, `*` presence), CIDR sets,
// method bitmasks and port sets. Built once per configuration change; matching allocates nothing.
import { isIPv4, isIPv6 } from 'node:net';

/** A test a StringMatcher runs besides its exact, prefix and suffix values: a path template, a service account. */
export interface ValueTest {
  test(value: string): boolean;
}

const NO_TESTS: readonly ValueTest[] = Object.freeze([]);

/**
 * Istio's string matching, compiled: a Set for exact values, short lists for prefixes and suffixes, and the tests
 * of forms that are none of these (the rule index does not read those: a list with one checks its terms one by one).
 */
export class StringMatcher {
  readonly exact: ReadonlySet<string>;
  readonly prefixes: readonly string[];
  readonly suffixes: readonly string[];
  /** `*`: any non-empty value (or, with presenceIncludesEmpty, any value at all). */
  readonly presence: boolean;
  readonly caseInsensitive: boolean;
  /**
   * For header conditions: Istio turns `*` into Envoy's `present_match`, which a header sent with an empty value
   * satisfies (pilot/pkg/networking/util/matcher HeaderMatcher); principals and namespaces keep Istio's `.+`.
   */
  readonly presenceIncludesEmpty: boolean;
  readonly tests: readonly ValueTest[];

  constructor(patterns: readonly string[], caseInsensitive = false, presenceIncludesEmpty = false, tests: readonly ValueTest[] = NO_TESTS) {
    const exact = new Set<string>();
    const prefixes: string[] = [];
    const suffixes: string[] = [];
    let presence = false;
    for (const raw of patterns) {
      const pattern = caseInsensitive ? raw.toLowerCase() : raw;
      if (pattern === '*') presence = true;
      else if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1));
      else if (pattern.startsWith('*')) suffixes.push(pattern.slice(1));
      else exact.add(pattern);
    }
    this.exact = exact;
    this.prefixes = prefixes;
    this.suffixes = suffixes;
    this.presence = presence;
    this.caseInsensitive = caseInsensitive;
    this.presenceIncludesEmpty = presenceIncludesEmpty;
    this.tests = tests;
  }

  /** `value` must already be lower-case when the matcher is case-insensitive (callers normalise once). */
  matches(value: string): boolean {
    if (this.presence && (value.length > 0 || this.presenceIncludesEmpty)) return true;
    if (this.exact.has(value)) return true;
    const prefixes = this.prefixes;
    for (let i = 0; i < prefixes.length; i++) if (value.startsWith(prefixes[i] as string)) return true;
    const suffixes = this.suffixes;
    for (let i = 0; i < suffixes.length; i++) if (value.endsWith(suffixes[i] as string)) return true;
    const tests = this.tests;
    for (let i = 0; i < tests.length; i++) if ((tests[i] as ValueTest).test(value)) return true;
    return false;
  }
}

/** An IP address as numbers: IPv4 in `v4`, IPv6 as four 32-bit words; parsed once per connection. */
export interface IpAddress {
  readonly family: 4 | 6;
  readonly v4: number;
  readonly v6: Uint32Array | null;
}

function parseV4(text: string): number {
  const parts = text.split('.');
  let value = 0;
  for (const part of parts) value = value * 256 + Number(part);
  return value >>> 0;
}

function parseV6(text: string): Uint32Array {
  // Expand `::` and an embedded dotted quad into eight 16-bit groups.
  let head = text;
  let tailV4: number | null = null;
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    tailV4 = parseV4(text.slice(lastColon + 1));
    head = text.slice(0, lastColon + 1) + '0:0';
  }
  const [left, right] = head.includes('::') ? head.split('::') as [string, string] : [head, null];
  const leftGroups = left ? left.split(':') : [];
  const rightGroups = right === null ? [] : right ? right.split(':') : [];
  const groups = new Array<number>(8).fill(0);
  leftGroups.forEach((group, i) => (groups[i] = parseInt(group, 16)));
  rightGroups.forEach((group, i) => (groups[8 - rightGroups.length + i] = parseInt(group, 16)));
  if (tailV4 !== null) {
    groups[6] = tailV4 >>> 16;
    groups[7] = tailV4 & 0xffff;
  }
  const words = new Uint32Array(4);
  for (let i = 0; i < 4; i++) words[i] = (((groups[2 * i] as number) << 16) | (groups[2 * i + 1] as number)) >>> 0;
  return words;
}

/** Parses an IP literal; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, dual-stack sockets) is read as IPv4. */
export function parseIp(text: string): IpAddress | null {
  if (isIPv4(text)) return { family: 4, v4: parseV4(text), v6: null };
  if (isIPv6(text)) {
    const zone = text.indexOf('%');
    const words = parseV6(zone >= 0 ? text.slice(0, zone) : text);
    if (words[0] === 0 && words[1] === 0 && words[2] === 0xffff) return { family: 4, v4: words[3] as number, v6: null };
    return { family: 6, v4: 0, v6: words };
  }
  return null;
}

interface Cidr4 {
  readonly network: number;
  readonly mask: number;
}

interface Cidr6 {
  readonly network: Uint32Array;
  readonly mask: Uint32Array;
}

function maskWords(prefix: number, words: number): Uint32Array {
  const mask = new Uint32Array(words);
  for (let i = 0; i < words; i++) {
    const bits = Math.max(0, Math.min(32, prefix - 32 * i));
    mask[i] = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  }
  return mask;
}

/** A set of CIDRs (single IPs are /32 or /128), matched by masking: host bits in a block are ignored, as Istio does. */
export class CidrSet {
  /** As written (canonical after validation), for the rule index. */
  readonly blocks: readonly string[];
  readonly #v4: Cidr4[] = [];
  readonly #v6: Cidr6[] = [];

  constructor(blocks: readonly string[]) {
    this.blocks = blocks;
    for (const block of blocks) {
      const slash = block.indexOf('/');
      const ip = parseIp(slash < 0 ? block : block.slice(0, slash));
      if (ip === null) throw new Error(`not an IP block: ${block}`); // validation already refused this
      if (ip.family === 4) {
        const prefix = slash < 0 ? 32 : Number(block.slice(slash + 1));
        const mask = (maskWords(prefix, 1)[0] as number) >>> 0;
        this.#v4.push({ network: (ip.v4 & mask) >>> 0, mask });
      } else {
        const prefix = slash < 0 ? 128 : Number(block.slice(slash + 1));
        const mask = maskWords(prefix, 4);
        const network = new Uint32Array(4);
        for (let i = 0; i < 4; i++) network[i] = ((ip.v6 as Uint32Array)[i] as number) & (mask[i] as number);
        this.#v6.push({ network, mask });
      }
    }
  }

  contains(ip: IpAddress): boolean {
    if (ip.family === 4) {
      const list = this.#v4;
      for (let i = 0; i < list.length; i++) {
        const cidr = list[i] as Cidr4;
        if (((ip.v4 & cidr.mask) >>> 0) === cidr.network) return true;
      }
      return false;
    }
    const words = ip.v6 as Uint32Array;
    const list = this.#v6;
    outer: for (let i = 0; i < list.length; i++) {
      const cidr = list[i] as Cidr6;
      for (let w = 0; w < 4; w++) if ((((words[w] as number) & (cidr.mask[w] as number)) >>> 0) !== cidr.network[w]) continue outer;
      return true;
    }
    return false;
  }
}

const STANDARD_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'];
const METHOD_BITS = new Map<string, number>(STANDARD_METHODS.map((method, i) => [method, 1 << i]));

/**
 * HTTP methods: a bitmask for the standard ones, a Set for extension methods, and Istio's wildcard forms
 * (`*`, `GE*`, `*CH`) through a StringMatcher only when a policy uses them.
 */
export class MethodMatcher {
  /** The same methods as plain string patterns (the same semantics, without the bitmask), for the rule index. */
  readonly patterns: StringMatcher;
  readonly #bits: number;
  readonly #others: ReadonlySet<string>;
  readonly #wildcards: StringMatcher | null;

  constructor(methods: readonly string[]) {
    let bits = 0;
    const others = new Set<string>();
    const wildcards: string[] = [];
    for (const method of methods) {
      if (method.startsWith('*') || method.endsWith('*')) {
        wildcards.push(method);
        continue;
      }
      const bit = METHOD_BITS.get(method);
      if (bit !== undefined) bits |= bit;
      else others.add(method);
    }
    this.#bits = bits;
    this.#others = others;
    this.#wildcards = wildcards.length > 0 ? new StringMatcher(wildcards) : null;
    this.patterns = new StringMatcher(methods);
  }

  matches(method: string): boolean {
    const bit = METHOD_BITS.get(method);
    if (bit !== undefined ? (this.#bits & bit) !== 0 : this.#others.has(method)) return true;
    return this.#wildcards !== null && this.#wildcards.matches(method);
  }
}
