// The candidate index of a workload's rules for each destination port, built when the configuration compiles: for
// the peer's principal, namespace and IP and the request's method, path and host, which rules can match, as
// bitsets. A decision ANDs those masks and checks only the rules left (their `when` conditions), in policy order,
// instead of scanning every rule.
//
// A rule is the OR of its (source × operation) pairs, its `when` conditions holding for each; each pair is a
// "term" with one bit, terms ordered by rule so the lowest set bit is the first rule in policy order. DENY terms
// take the first `denyWords` 32-bit words, ALLOW terms the words after them.
//
// Masks are exact. A string field (principal, namespace, method) has a Vocabulary per configuration: every value
// and every wildcard the policies write, each with an integer id, and for each value the wildcards it matches. A
// list keeps the ids of the values its rules name, sorted, each with its precomputed mask (every pattern of the
// list, `not` lists included, evaluated against it). Any other value starts from the terms that do not constrain
// the field and adds or removes the terms of each wildcard it matches: found by merging id lists when the value
// is in the vocabulary, by startsWith/endsWith only for a value no policy names. An IP is tested against each
// distinct block of the list once. Paths and hosts (on HTTP ports) are tries of the list's exact and prefix
// patterns, and of its suffix patterns reversed, walked once per value. Everything a decision reads of a
// workload's lists is in one Int32Array.
import type { CompiledCondition, CompiledOperation, CompiledRule, CompiledSource, Decision } from './compile.ts';
import type { IpAddress, StringMatcher } from './match.ts';
import { CidrSet, parseIp } from './match.ts';

/**
 * One (source, operation) pair of a rule; null stands for an absent `from` or `to`. A rule with more pairs than
 * indexLimits.maxTermsPerRule has one term per item of its longer side instead, the other side left to `checkSources` or
 * `checkOperations`: checked in full for each candidate, as the masks do not constrain it.
 */
export interface Term {
  readonly rule: CompiledRule;
  readonly source: CompiledSource | null;
  readonly operation: CompiledOperation | null;
  readonly checkSources: readonly CompiledSource[] | null;
  readonly checkOperations: readonly CompiledOperation[] | null;
  /**
   * Its principals hold service accounts or trust domains (tests the masks cannot hold): the masks admit it for any
   * principal (and exclude it by nothing but its plain values), and each decision checks its principals.
   */
  readonly checkPrincipals: boolean;
  /** The same for path templates: the masks admit it for any path, and each request checks its paths. */
  readonly checkPaths: boolean;
}

function hasTestsIn(matcher: StringMatcher | null): boolean {
  return matcher !== null && matcher.tests.length > 0;
}

function termOf(rule: CompiledRule, source: CompiledSource | null, operation: CompiledOperation | null, checkSources: readonly CompiledSource[] | null, checkOperations: readonly CompiledOperation[] | null): Term {
  return {
    rule,
    source,
    operation,
    checkSources,
    checkOperations,
    checkPrincipals: source !== null && (hasTestsIn(source.principals) || hasTestsIn(source.notPrincipals)),
    checkPaths: operation !== null && (hasTestsIn(operation.paths) || hasTestsIn(operation.notPaths)),
  };
}



// Wildcard kinds, as Istio writes them: `*` (any non-empty value; any value at all for a header), `x*`, `*x`.
const PRESENCE = 0;
const PREFIX = 1;
const SUFFIX = 2;
const ANY = 3;

function wildcardMatches(kind: number, text: string, value: string): boolean {
  return kind === PRESENCE ? value.length > 0 : kind === PREFIX ? value.startsWith(text) : kind === SUFFIX ? value.endsWith(text) : true;
}

/** Beyond this many (value, wildcard) pairs the vocabulary does not precompute matches; decisions test strings. */
const MAX_PRECOMPUTED_PAIRS = 4_000_000;

/** The values and wildcards one field's policies write, with integer ids; built once per configuration. */
export class Vocabulary {
  readonly ids = new Map<string, number>();
  readonly #wildIds = new Map<string, number>();
  readonly wildKinds: number[] = [];
  readonly wildTexts: string[] = [];
  /**
   * The ids of the wildcards each value matches, ascending: value id v's are matchedIds[matchedStart[v] ..
   * matchedStart[v + 1]), all in one array so a decision reads one place. null when too many pairs to precompute.
   */
  matchedStart: Int32Array | null = null;
  matchedIds: Int32Array = new Int32Array(0);
  #values: string[] = [];
  #sealed = false;

  add(matcher: StringMatcher | null): void {
    if (matcher === null) return;
    for (const value of matcher.exact) this.valueId(value);
    for (const [kind, text] of wildcardsOf(matcher)) this.wildcardId(kind, text);
  }

  valueId(value: string): number {
    let id = this.ids.get(value);
    if (id === undefined) {
      // Contexts keep the ids (and misses) they resolved for a sealed vocabulary: it must never change after.
      if (this.#sealed) throw new Error(`internal: value ${JSON.stringify(value)} added to a sealed vocabulary`);
      this.ids.set(value, (id = this.ids.size));
      this.#values.push(value);
    }
    return id;
  }

  wildcardId(kind: number, text: string): number {
    const key = `${kind}:${text}`;
    let id = this.#wildIds.get(key);
    if (id === undefined) {
      if (this.#sealed) throw new Error(`internal: wildcard ${JSON.stringify(key)} added to a sealed vocabulary`);
      this.#wildIds.set(key, (id = this.wildKinds.length));
      this.wildKinds.push(kind);
      this.wildTexts.push(text);
    }
    return id;
  }

  /** The id of a value, -1 when no policy names it. */
  idOf(value: string): number {
    return this.ids.get(value) ?? -1;
  }

  /** Precomputes each value's wildcards; call once every policy was added. Nothing can be added after. */
  seal(): void {
    this.#sealed = true;
    const values = this.#values;
    if (values.length * this.wildKinds.length > MAX_PRECOMPUTED_PAIRS) return;
    const start = new Int32Array(values.length + 1);
    const hits: number[] = [];
    values.forEach((value, v) => {
      start[v] = hits.length;
      for (let id = 0; id < this.wildKinds.length; id++) if (wildcardMatches(this.wildKinds[id] as number, this.wildTexts[id] as string, value)) hits.push(id);
    });
    start[values.length] = hits.length;
    this.matchedIds = Int32Array.from(hits);
    this.matchedStart = start;
  }
}

export interface Vocabularies {
  readonly principals: Vocabulary;
  readonly namespaces: Vocabulary;
  readonly methods: Vocabulary;
  /** By lower-case header name: the values `when` conditions on request.headers[name] write. */
  readonly headers: ReadonlyMap<string, Vocabulary>;
}

/**
 * The header conditions of a rule, by lower-case name, when every condition of the rule is one on a request header
 * with string values and no header is named twice: then the index settles them (a dimension per header). null
 * otherwise: the rule's conditions are checked per term.
 */
function indexedHeaderConditions(rule: CompiledRule): ReadonlyMap<string, CompiledCondition> | null {
  const when = rule.when;
  if (when === null) return null;
  const byName = new Map<string, CompiledCondition>();
  for (const condition of when) {
    if (condition.key.kind !== 'request.headers' || condition.header === null || byName.has(condition.header)) return null;
    if ((condition.values !== null && condition.values.type !== 'strings') || (condition.notValues !== null && condition.notValues.type !== 'strings')) return null;
    byName.set(condition.header, condition);
  }
  return byName;
}

const headerConditions = new WeakMap<CompiledRule, ReadonlyMap<string, CompiledCondition> | null>();

function headerConditionsOf(rule: CompiledRule): ReadonlyMap<string, CompiledCondition> | null {
  let found = headerConditions.get(rule);
  if (found === undefined) headerConditions.set(rule, (found = indexedHeaderConditions(rule)));
  return found;
}

function conditionMatchers(condition: CompiledCondition | undefined): readonly [StringMatcher | null, StringMatcher | null] {
  if (condition === undefined) return [null, null];
  return [condition.values?.type === 'strings' ? condition.values.matcher : null, condition.notValues?.type === 'strings' ? condition.notValues.matcher : null];
}

export function buildVocabularies(rules: Iterable<CompiledRule>): Vocabularies {
  const principals = new Vocabulary();
  const namespaces = new Vocabulary();
  const methods = new Vocabulary();
  const headers = new Map<string, Vocabulary>();
  for (const rule of rules) {
    for (const [name, condition] of headerConditionsOf(rule) ?? []) {
      let vocabulary = headers.get(name);
      if (vocabulary === undefined) headers.set(name, (vocabulary = new Vocabulary()));
      for (const matcher of conditionMatchers(condition)) vocabulary.add(matcher);
    }
    for (const source of rule.from ?? []) {
      principals.add(source.principals);
      principals.add(source.notPrincipals);
      namespaces.add(source.namespaces);
      namespaces.add(source.notNamespaces);
    }
    for (const operation of rule.to ?? []) {
      methods.add(operation.methods?.patterns ?? null);
      methods.add(operation.notMethods?.patterns ?? null);
    }
  }
  principals.seal();
  namespaces.seal();
  methods.seal();
  for (const vocabulary of headers.values()) vocabulary.seal();
  return { principals, namespaces, methods, headers };
}

// Layout of a string dimension's header in the index data (all offsets into data).
const KEY_IDS = 0; // sorted value ids this list names
const KEY_COUNT = 1;
const KEY_MASKS = 2; // the k-th key's mask at KEY_MASKS + k * words
const NULL_MASK = 3;
const BASE_MASK = 4; // a value no rule of the list names, before wildcards
const WILD_IDS = 5; // sorted wildcard ids of the list
const WILD_COUNT = 6;
const WILD_POS = 7; // per wildcard: offset of the mask of terms it admits, or -1
const WILD_NEG = 8; // per wildcard: offset of the mask of terms it excludes, or -1
const STRING_HEADER = 9;

// Layout of the IP dimension's header. The remote IP blocks are an L7 field: before any request they count as
// matching, so the remote and `not` remote masks are kept apart from the source ones.
const IP_NULL_MASK = 0;
const IP_NULL_NO_REMOTE = 1; // IP_NULL_MASK with the remote IP blocks counted as matching
const IP_NO_BLOCKS = 2; // terms without ipBlocks
const IP_NO_REMOTE = 3; // terms without remoteIpBlocks
const IP_V4 = 4; // v4 blocks, 6 ints each: network, mask, then the masks (offsets or -1): blocks, remote, not, not remote
const IP_V4_COUNT = 5;
const IP_V6 = 6; // v6 blocks, 5 ints each: index in WorkloadIndex.v6, then the four masks
const IP_V6_COUNT = 7;
const IP_HEADER = 8;

// Layout of a pattern dimension's header (paths, hosts): tries of the list's patterns, walked once per value.
const P_BASE = 0; // terms without a positive list
const P_PRESENCE_POS = 1; // terms whose positive / `not` list has `*`, or -1
const P_PRESENCE_NEG = 2;
const P_TRIE = 3; // root of the trie of exact and prefix patterns
const P_SUFFIX_TRIE = 4; // root of the trie of suffix patterns, reversed
export const P_FREE = 5; // terms the dimension does not constrain (no list, no `not` list): a decision may skip it
const PATTERN_HEADER = 6;
// A radix trie: a node stands for the text from the root to it; the edge into it is its key char (in its parent's
// table) and then its label, the chars of a chain of single children merged into one node and kept right after it.
// A node: its number of children, the offset of their table (the children's key chars, ascending, then their node
// offsets: one scan of adjacent ints finds a child), its masks record (or -1: the terms whose positive / `not` lists
// hold the text up to here as an exact pattern, then as a prefix, a suffix in the suffix trie), its label's length,
// then the label's chars (in walk order: from the end of the text in the suffix trie).
const T_COUNT = 0;
const T_TABLE = 1;
const T_MASKS = 2;
const T_LABEL_LENGTH = 3;
const T_LABEL = 4;
const M_EXACT_POS = 0;
const M_EXACT_NEG = 1;
const M_PREFIX_POS = 2;
const M_PREFIX_NEG = 3;

// Layout of one list's header (one destination port, or every port no rule names).
export const L_WORDS = 0; // words per mask
export const L_DENY_WORDS = 1; // DENY terms fill the first words, ALLOW terms the rest
export const L_SLOT_BASE = 2; // bit b of word w is slot L_SLOT_BASE + w * 32 + b of terms and decisions
export const L_L4_RULES = 3; // terms of rules without HTTP fields (DENY at 'connect' and ALLOW at 'tcp' read only these)
// Terms the masks do not settle with HTTP fields ignored (conditions, or ports when not narrowed to one), and per
// request (those, plus hosts and paths); the others match as soon as their bit is set.
export const L_CHECK_L4 = 4;
export const L_CHECK_REQUEST = 5;
export const L_ALL = 6; // every term: the mask of a field no term constrains
export const L_PRINCIPAL = 7; // dimension headers, or -1 when no term constrains the field
export const L_NAMESPACE = 8;
export const L_METHOD = 9;
export const L_IP = 10;
export const L_PORTS_RESOLVED = 11; // 1: narrowed to one port, so every term admits it and ports need no check
export const L_PATH = 12; // pattern dimension headers, built for HTTP ports only; -1 = none (checked per term)
export const L_HOST = 13;
export const L_HTTP = 14; // 1: paths and hosts are settled by the masks (the two above), not checked per term
export const L_RECHECK = 15; // RECHECK_* bits: fields too large to index, checked per term instead
// Request-header dimensions: offset of [count, the mask of terms none of them constrains, then per header its index
// in WorkloadIndex.headerNames and its string dimension header], or -1 when no rule of the list has indexed header
// conditions.
export const L_HEADERS = 16;
const LIST_HEADER = 17;
export const RECHECK_PRINCIPAL = 1;
export const RECHECK_NAMESPACE = 2;
export const RECHECK_METHOD = 4;
export const RECHECK_IP = 8;

/**
 * A workload's rules for every destination port, for decisions. `data` starts with the port table (count, the
 * ports, their lists' header offsets, then the header of the list for any other port), then each list's header,
 * masks and key tables.
 */
export interface WorkloadIndex {
  readonly data: Int32Array;
  /** Per slot, the term; null in padding slots. */
  readonly terms: readonly (Term | null)[];
  /** Per slot, the decision of the term's rule: returned without reading the term when it needs no check. */
  readonly decisions: readonly (Decision | null)[];
  readonly v6: readonly CidrSet[];
  readonly vocabularies: Vocabularies;
  /** Header names the lists' header dimensions read (L_HEADERS tables index these), with their vocabularies. */
  readonly headerNames: readonly string[];
  readonly headerVocabularies: readonly Vocabulary[];
}

/** The header offset of the list for a destination port: a scan of the few ports rules name. */
export function listFor(data: Int32Array, port: number): number {
  const count = data[0] as number;
  let i = 1;
  const end = 1 + count;
  while (i < end && data[i] !== port) i++;
  return data[i + count] as number;
}

const BITS = 32;

/** The index data being laid out: masks (`words` each, for the list being built) and plain ints. */
class Layout {
  words = 1;
  readonly data: number[] = [];
  /** Header names the lists' header dimensions read, with their vocabularies. */
  readonly headerNames: string[] = [];
  readonly headerVocabularies: Vocabulary[] = [];

  mask(): number {
    return this.ints(this.words);
  }

  ints(count: number): number {
    const at = this.data.length;
    for (let i = 0; i < count; i++) this.data.push(0);
    return at;
  }

  setBit(at: number, slot: number): void {
    const index = at + (slot >>> 5);
    this.data[index] = ((this.data[index] as number) | (1 << (slot & 31))) | 0;
  }

  write(at: number, values: readonly number[]): void {
    values.forEach((value, i) => (this.data[at + i] = value));
  }
}

/** Terms of one rule, keeping only operations that admit `port` (null: a port no rule names) when ports resolve. */
function termsOf(rule: CompiledRule, port: number | null, portsResolved: boolean): Term[] {
  const operations: (CompiledOperation | null)[] = [];
  for (const operation of rule.to ?? [null]) {
    if (operation !== null && portsResolved) {
      if (port === null ? operation.ports !== null : (operation.ports !== null && !operation.ports.has(port)) || (operation.notPorts !== null && operation.notPorts.has(port))) continue;
    }
    operations.push(operation);
  }
  const sources = rule.from ?? [null];
  const terms: Term[] = [];
  if (rule.from !== null && rule.from.length > 1 && operations.length > 1 && rule.from.length * operations.length > indexLimits.maxTermsPerRule) {
    const checked = operations as CompiledOperation[]; // `to` present: no null among them
    const alongSources = rule.from.length > checked.length || (rule.from.length === checked.length && indexLimits.termsAlongSourcesOnTie);
    if (alongSources) for (const source of rule.from) terms.push(termOf(rule, source, null, null, checked));
    else for (const operation of checked) terms.push(termOf(rule, null, operation, rule.from, null));
    return terms;
  }
  for (const source of sources) for (const operation of operations) terms.push(termOf(rule, source, operation, null, null));
  return terms;
}

type Patterns = (term: Term) => readonly [StringMatcher | null, StringMatcher | null];

function hasWildcard(matcher: StringMatcher): boolean {
  return matcher.presence || matcher.prefixes.length > 0 || matcher.suffixes.length > 0 || matcher.tests.length > 0;
}

/**
 * The wildcards a list's masks hold for it. A test (a service account, a trust domain) is held as presence when the
 * list is positive, a superset its term's own check narrows (Term.checkPrincipals); a `not` list's tests exclude
 * nothing in the masks. The vocabulary registers that presence for every list with tests.
 */
function wildcardsOf(matcher: StringMatcher, positive = true): [number, string][] {
  const presence = matcher.presence || (positive && matcher.tests.length > 0);
  return [
    ...(presence ? [[matcher.presenceIncludesEmpty ? ANY : PRESENCE, ''] as [number, string]] : []),
    ...matcher.prefixes.map((text): [number, string] => [PREFIX, text]),
    ...matcher.suffixes.map((text): [number, string] => [SUFFIX, text]),
  ];
}

/**
 * Ints of key masks one string dimension of one list may take (4 MiB). An object so the tests can lower them and
 * drive every decision through the per-term fallbacks.
 */
export const indexLimits = {
  maxKeyMaskInts: 1 << 20,
  /**
   * Pairs past which a rule is not expanded into terms. A rule is (any source) AND (any operation): expanded, 2,000
   * sources and 2,000 paths made four million terms, and masks of keys × terms no array holds. This keeps the terms
   * linear in the rule's size.
   */
  maxTermsPerRule: 64,
  /** Which side of a rule split past maxTermsPerRule carries the terms when both are as long (the tests try both). */
  termsAlongSourcesOnTie: true,
};
/** buildStringDimension's answer for a field too large to index: its terms are checked one by one. */
const TOO_LARGE = -2;

/**
 * The header offset, -1 when no term constrains the field (its mask would be every term, for every value), or
 * TOO_LARGE.
 */
function buildStringDimension(terms: readonly (Term | null)[], patterns: Patterns, vocabulary: Vocabulary, layout: Layout): number {
  const keyMasks = new Map<number, number>();
  const wild = new Map<number, { posAt: number; negAt: number }>();
  let constrained = false;
  for (const term of terms) {
    if (term === null) continue;
    for (const matcher of patterns(term)) {
      if (matcher === null) continue;
      constrained = true;
      for (const value of matcher.exact) keyMasks.set(vocabulary.valueId(value), -1);
      for (const [kind, text] of wildcardsOf(matcher)) wild.set(vocabulary.wildcardId(kind, text), { posAt: -1, negAt: -1 });
    }
  }
  if (!constrained) return -1;
  // Masks cost keys × words ints: past the bound (a list with thousands of rules naming thousands of values),
  // the field is left to a per-term check instead, so memory and compile time stay linear in the policies.
  if (keyMasks.size * layout.words > indexLimits.maxKeyMaskInts) return TOO_LARGE;
  const keyIds = [...keyMasks.keys()].sort((a, b) => a - b);
  const wildIds = [...wild.keys()].sort((a, b) => a - b);
  const header = layout.ints(STRING_HEADER);
  const keyIdsAt = layout.ints(keyIds.length);
  const keyMasksAt = layout.ints(keyIds.length * layout.words);
  keyIds.forEach((id, k) => {
    layout.data[keyIdsAt + k] = id;
    keyMasks.set(id, keyMasksAt + k * layout.words);
  });
  // The values this list names, with their masks' offsets, to evaluate each term's lists against.
  const named = new Map<string, number>();
  for (const term of terms) {
    if (term === null) continue;
    for (const matcher of patterns(term)) if (matcher !== null) for (const value of matcher.exact) named.set(value, keyMasks.get(vocabulary.valueId(value)) as number);
  }
  const nullAt = layout.mask();
  const baseAt = layout.mask();
  const entry = (kind: number, text: string) => wild.get(vocabulary.wildcardId(kind, text)) as { posAt: number; negAt: number };
  for (let slot = 0; slot < terms.length; slot++) {
    const term = terms[slot];
    if (term === null || term === undefined) continue;
    const [positive, negative] = patterns(term);
    // An absent value passes only an absent positive list: a `not` list never excludes an absent value.
    if (positive === null) {
      layout.setBit(nullAt, slot);
      layout.setBit(baseAt, slot);
    } else {
      for (const [kind, text] of wildcardsOf(positive)) {
        const found = entry(kind, text);
        if (found.posAt < 0) found.posAt = layout.mask();
        layout.setBit(found.posAt, slot);
      }
    }
    if (negative !== null) {
      for (const [kind, text] of wildcardsOf(negative, false)) {
        const found = entry(kind, text);
        if (found.negAt < 0) found.negAt = layout.mask();
        layout.setBit(found.negAt, slot);
      }
    }
    if (positive !== null && negative === null && !hasWildcard(positive)) {
      // A plain exact list touches only its own keys.
      for (const value of positive.exact) layout.setBit(named.get(value) as number, slot);
    } else {
      for (const [value, at] of named) {
        if ((positive === null || positive.matches(value)) && (negative === null || !negative.matches(value))) layout.setBit(at, slot);
      }
    }
  }
  const wildIdsAt = layout.ints(wildIds.length);
  const wildPosAt = layout.ints(wildIds.length);
  const wildNegAt = layout.ints(wildIds.length);
  wildIds.forEach((id, i) => {
    const found = wild.get(id) as { posAt: number; negAt: number };
    layout.data[wildIdsAt + i] = id;
    layout.data[wildPosAt + i] = found.posAt;
    layout.data[wildNegAt + i] = found.negAt;
  });
  layout.write(header, [keyIdsAt, keyIds.length, keyMasksAt, nullAt, baseAt, wildIdsAt, wildIds.length, wildPosAt, wildNegAt]);
  return header;
}

/** The distinct blocks a list's sources name, each a mask or up to four (blocks, remote, and their `not`s). */
function distinctBlocks(terms: readonly (Term | null)[]): number {
  const blocks = new Set<string>();
  for (const term of terms) {
    const source = term?.source;
    if (!source) continue;
    for (const set of [source.ipBlocks, source.remoteIpBlocks, source.notIpBlocks, source.notRemoteIpBlocks]) for (const block of set?.blocks ?? []) blocks.add(block);
  }
  return blocks.size;
}

function buildIpDimension(terms: readonly (Term | null)[], layout: Layout, v6Sets: CidrSet[]): number {
  interface Entry { readonly block: string; blocksAt: number; remoteAt: number; negAt: number; negRemoteAt: number }
  let constrained = false;
  for (const term of terms) {
    const source = term?.source;
    if (source && (source.ipBlocks !== null || source.notIpBlocks !== null || source.remoteIpBlocks !== null || source.notRemoteIpBlocks !== null)) constrained = true;
  }
  if (!constrained) return -1;
  if (distinctBlocks(terms) * layout.words > indexLimits.maxKeyMaskInts) return TOO_LARGE;
  const entries = new Map<string, Entry>();
  const note = (set: CidrSet | null, slot: number, field: 'blocksAt' | 'remoteAt' | 'negAt' | 'negRemoteAt') => {
    if (set === null) return;
    for (const block of set.blocks) {
      let found = entries.get(block);
      if (found === undefined) entries.set(block, (found = { block, blocksAt: -1, remoteAt: -1, negAt: -1, negRemoteAt: -1 }));
      if (found[field] < 0) found[field] = layout.mask();
      layout.setBit(found[field], slot);
    }
  };
  const header = layout.ints(IP_HEADER);
  const nullAt = layout.mask();
  const nullNoRemoteAt = layout.mask();
  const noBlocksAt = layout.mask();
  const noRemoteAt = layout.mask();
  for (let slot = 0; slot < terms.length; slot++) {
    const term = terms[slot];
    if (term === null || term === undefined) continue;
    const source = term.source;
    if (source === null || source.ipBlocks === null) layout.setBit(noBlocksAt, slot);
    if (source === null || source.remoteIpBlocks === null) layout.setBit(noRemoteAt, slot);
    // Without a source IP, positive lists fail and `not` lists are skipped.
    if (source === null || (source.ipBlocks === null && source.remoteIpBlocks === null)) layout.setBit(nullAt, slot);
    if (source === null || source.ipBlocks === null) layout.setBit(nullNoRemoteAt, slot);
    if (source === null) continue;
    note(source.ipBlocks, slot, 'blocksAt');
    note(source.remoteIpBlocks, slot, 'remoteAt');
    note(source.notIpBlocks, slot, 'negAt');
    note(source.notRemoteIpBlocks, slot, 'negRemoteAt');
  }
  const v4: number[] = [];
  const v6: number[] = [];
  for (const found of entries.values()) {
    const slash = found.block.indexOf('/');
    const address = parseIp(slash < 0 ? found.block : found.block.slice(0, slash)) as IpAddress;
    if (address.family === 4) {
      const prefix = slash < 0 ? 32 : Number(found.block.slice(slash + 1));
      const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) | 0;
      v4.push(address.v4 & mask, mask, found.blocksAt, found.remoteAt, found.negAt, found.negRemoteAt);
    } else {
      v6.push(v6Sets.length, found.blocksAt, found.remoteAt, found.negAt, found.negRemoteAt);
      v6Sets.push(new CidrSet([found.block]));
    }
  }
  const v4At = layout.ints(v4.length);
  layout.write(v4At, v4);
  const v6At = layout.ints(v6.length);
  layout.write(v6At, v6);
  layout.write(header, [nullAt, nullNoRemoteAt, noBlocksAt, noRemoteAt, v4At, v4.length / 6, v6At, v6.length / 5]);
  return header;
}

interface TrieBuild {
  readonly children: Map<number, TrieBuild>;
  masks: [number, number, number, number] | null;
}

function trieNode(): TrieBuild {
  return { children: new Map(), masks: null };
}

/** The masks record of the node for `text` (reversed for the suffix trie), created on the way. */
function trieMasks(root: TrieBuild, text: string, reversed: boolean): [number, number, number, number] {
  let node = root;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(reversed ? text.length - 1 - i : i);
    let child = node.children.get(code);
    if (child === undefined) node.children.set(code, (child = trieNode()));
    node = child;
  }
  node.masks ??= [-1, -1, -1, -1];
  return node.masks;
}

/**
 * Depth first: a node, its label, its children's table, then each child's subtree. Returns the root's offset.
 * A node's label is the chars merged into it (a chain of nodes with one child and no masks).
 */
function writeTrie(root: TrieBuild, layout: Layout): number {
  const write = (start: TrieBuild): number => {
    const label: number[] = [];
    let node = start;
    while (node.masks === null && node.children.size === 1 && node !== root) {
      const [code, child] = node.children.entries().next().value as [number, TrieBuild];
      label.push(code);
      node = child;
    }
    const at = layout.ints(T_LABEL + label.length);
    let masks = -1;
    if (node.masks !== null) {
      masks = layout.ints(4);
      layout.write(masks, node.masks);
    }
    const codes = [...node.children.keys()].sort((a, b) => a - b);
    const table = layout.ints(2 * codes.length);
    layout.write(table, codes);
    layout.write(at, [codes.length, table, masks, label.length, ...label]);
    codes.forEach((code, i) => (layout.data[table + codes.length + i] = write(node.children.get(code) as TrieBuild)));
    return at;
  };
  return write(root);
}

/**
 * Paths or hosts: every pattern of the list in a trie (exact and prefix) or a reversed trie (suffix), so one walk
 * over the value finds every pattern it matches. -1 when no term constrains the field.
 */
function buildPatternDimension(terms: readonly (Term | null)[], patterns: Patterns, layout: Layout): number {
  if (!terms.some((term) => term !== null && patterns(term).some((matcher) => matcher !== null))) return -1;
  // Each distinct pattern is a node with up to four masks: past the bound the field is checked per term instead.
  const distinct = new Set<string>();
  for (const term of terms) {
    if (term === null) continue;
    for (const matcher of patterns(term)) {
      if (matcher === null) continue;
      for (const value of matcher.exact) distinct.add(`=${value}`);
      for (const prefix of matcher.prefixes) distinct.add(`^${prefix}`);
      for (const suffix of matcher.suffixes) distinct.add(`$${suffix}`);
    }
  }
  if (distinct.size * layout.words > indexLimits.maxKeyMaskInts) return TOO_LARGE;
  const header = layout.ints(PATTERN_HEADER);
  const baseAt = layout.mask();
  const freeAt = layout.mask();
  let presencePos = -1;
  let presenceNeg = -1;
  const trie = trieNode();
  const suffixTrie = trieNode();
  const mark = (masks: [number, number, number, number], field: number, slot: number) => {
    if (masks[field] === -1) masks[field] = layout.mask();
    layout.setBit(masks[field] as number, slot);
  };
  for (let slot = 0; slot < terms.length; slot++) {
    const term = terms[slot];
    if (term === null || term === undefined) continue;
    const [positive, negative] = patterns(term);
    if (positive === null) layout.setBit(baseAt, slot);
    if (positive === null && negative === null) layout.setBit(freeAt, slot);
    for (const [matcher, negated] of [[positive, false], [negative, true]] as const) {
      if (matcher === null) continue;
      // A path template is held as presence in a positive list (its term checks it: Term.checkPaths) and as
      // nothing in a `not` list.
      if (matcher.presence || (!negated && matcher.tests.length > 0)) {
        if (negated) {
          if (presenceNeg < 0) presenceNeg = layout.mask();
          layout.setBit(presenceNeg, slot);
        } else {
          if (presencePos < 0) presencePos = layout.mask();
          layout.setBit(presencePos, slot);
        }
      }
      for (const value of matcher.exact) mark(trieMasks(trie, value, false), negated ? M_EXACT_NEG : M_EXACT_POS, slot);
      for (const prefix of matcher.prefixes) mark(trieMasks(trie, prefix, false), negated ? M_PREFIX_NEG : M_PREFIX_POS, slot);
      for (const suffix of matcher.suffixes) mark(trieMasks(suffixTrie, suffix, true), negated ? M_PREFIX_NEG : M_PREFIX_POS, slot);
    }
  }
  const trieAt = writeTrie(trie, layout);
  const suffixAt = writeTrie(suffixTrie, layout);
  layout.write(header, [baseAt, presencePos, presenceNeg, trieAt, suffixAt, freeAt]);
  return header;
}

const pathsOf: Patterns = (term) => (term.operation === null ? [null, null] : [term.operation.paths, term.operation.notPaths]);
const hostsOf: Patterns = (term) => (term.operation === null ? [null, null] : [term.operation.hosts, term.operation.notHosts]);

const principalsOf: Patterns = (term) => (term.source === null ? [null, null] : [term.source.principals, term.source.notPrincipals]);
const namespacesOf: Patterns = (term) => (term.source === null ? [null, null] : [term.source.namespaces, term.source.notNamespaces]);
const methodsOf: Patterns = (term) => (term.operation === null ? [null, null] : [term.operation.methods?.patterns ?? null, term.operation.notMethods?.patterns ?? null]);

/** One list to index: the rules that can match a destination port (null: any port no rule names). */
export interface ListRules {
  readonly port: number | null;
  readonly deny: readonly CompiledRule[];
  readonly allow: readonly CompiledRule[];
  /** false when the lists were not narrowed by port (too many ports): decisions then check ports. */
  readonly portsResolved: boolean;
  /** HTTP requests are decided on this list: index paths and hosts too (otherwise checked per term). */
  readonly http: boolean;
}

function buildList(list: ListRules, layout: Layout, slots: (Term | null)[], v6Sets: CidrSet[], vocabularies: Vocabularies): number {
  const denyTerms = list.deny.flatMap((rule) => termsOf(rule, list.port, list.portsResolved));
  const allowTerms = list.allow.flatMap((rule) => termsOf(rule, list.port, list.portsResolved));
  const denyWords = Math.ceil(denyTerms.length / BITS);
  const words = Math.max(1, denyWords + Math.ceil(allowTerms.length / BITS));
  const terms = new Array<Term | null>(words * BITS).fill(null);
  denyTerms.forEach((term, i) => (terms[i] = term));
  allowTerms.forEach((term, i) => (terms[denyWords * BITS + i] = term));
  const slotBase = slots.length;
  for (const term of terms) slots.push(term);

  layout.words = words;
  const header = layout.ints(LIST_HEADER);
  const allAt = layout.mask();
  const l4RulesAt = layout.mask();
  const checkL4At = layout.mask();
  const checkRequestAt = layout.mask();
  for (let slot = 0; slot < terms.length; slot++) {
    const term = terms[slot];
    if (term === null || term === undefined) continue;
    layout.setBit(allAt, slot);
    if (!term.rule.l7) layout.setBit(l4RulesAt, slot);
    const operation = term.operation;
    // Conditions on request headers only are settled by the header dimensions (and pass when HTTP fields are ignored).
    const checkL4 = (term.rule.when !== null && headerConditionsOf(term.rule) === null) || (!list.portsResolved && operation !== null && (operation.ports !== null || operation.notPorts !== null)) || term.checkSources !== null || term.checkOperations !== null || term.checkPrincipals;
    if (checkL4) layout.setBit(checkL4At, slot);
    if (checkL4 || term.checkPaths) layout.setBit(checkRequestAt, slot);
  }
  let recheck = 0;
  const dimension = (patterns: Patterns, vocabulary: Vocabulary, flag: number, perRequest: boolean): number => {
    const built = buildStringDimension(terms, patterns, vocabulary, layout);
    if (built !== TOO_LARGE) return built;
    recheck |= flag;
    for (let slot = 0; slot < terms.length; slot++) {
      const term = terms[slot];
      if (term === null || term === undefined || patterns(term).every((matcher) => matcher === null)) continue;
      if (!perRequest) layout.setBit(checkL4At, slot);
      layout.setBit(checkRequestAt, slot);
    }
    return -1;
  };
  const principal = dimension(principalsOf, vocabularies.principals, RECHECK_PRINCIPAL, false);
  const namespace = dimension(namespacesOf, vocabularies.namespaces, RECHECK_NAMESPACE, false);
  // Methods count only per request: with HTTP fields ignored, a term's methods never decide.
  const method = dimension(methodsOf, vocabularies.methods, RECHECK_METHOD, true);
  let ip = buildIpDimension(terms, layout, v6Sets);
  if (ip === TOO_LARGE) {
    ip = -1;
    recheck |= RECHECK_IP;
    terms.forEach((term, slot) => {
      const source = term?.source;
      if (!source || (source.ipBlocks === null && source.notIpBlocks === null && source.remoteIpBlocks === null && source.notRemoteIpBlocks === null)) return;
      layout.setBit(checkL4At, slot);
      layout.setBit(checkRequestAt, slot);
    });
  }
  const headers = buildHeaderDimensions(terms, layout, vocabularies, checkRequestAt);
  let path = list.http ? buildPatternDimension(terms, pathsOf, layout) : -1;
  let host = list.http ? buildPatternDimension(terms, hostsOf, layout) : -1;
  // Hosts and paths not settled by the masks (a port whose requests are not read, or a dimension too large to index)
  // are checked per term.
  const settled = list.http && path !== TOO_LARGE && host !== TOO_LARGE;
  if (path === TOO_LARGE) path = -1;
  if (host === TOO_LARGE) host = -1;
  if (!settled) {
    terms.forEach((term, slot) => {
      const operation = term?.operation;
      if (operation && (operation.hosts !== null || operation.notHosts !== null || operation.paths !== null || operation.notPaths !== null)) layout.setBit(checkRequestAt, slot);
    });
  }
  layout.write(header, [words, denyWords, slotBase, l4RulesAt, checkL4At, checkRequestAt, allAt, principal, namespace, method, ip, list.portsResolved ? 1 : 0, path, host, settled ? 1 : 0, recheck, headers]);
  return header;
}

/**
 * One string dimension per request header the list's indexed conditions name; the table's offset, or -1. A header
 * too large to index leaves its terms to the per-term check, per request.
 */
function buildHeaderDimensions(terms: readonly (Term | null)[], layout: Layout, vocabularies: Vocabularies, checkRequestAt: number): number {
  const names = new Set<string>();
  for (const term of terms) if (term !== null) for (const name of headerConditionsOf(term.rule)?.keys() ?? []) names.add(name);
  const entries: number[] = [];
  const indexed = new Set<string>();
  for (const name of names) {
    const vocabulary = vocabularies.headers.get(name) as Vocabulary;
    const patterns: Patterns = (term) => conditionMatchers(headerConditionsOf(term.rule)?.get(name));
    const built = buildStringDimension(terms, patterns, vocabulary, layout);
    if (built === TOO_LARGE) {
      terms.forEach((term, slot) => {
        if (term !== null && headerConditionsOf(term.rule)?.has(name) === true) layout.setBit(checkRequestAt, slot);
      });
      continue;
    }
    if (built < 0) continue;
    layout.headerNames.push(name);
    layout.headerVocabularies.push(vocabulary);
    entries.push(layout.headerNames.length - 1, built);
    indexed.add(name);
  }
  if (entries.length === 0) return -1;
  // The terms no header dimension constrains: when every candidate left is one of them, a decision skips the scans.
  const freeAt = layout.mask();
  terms.forEach((term, slot) => {
    if (term === null) return;
    const conditions = headerConditionsOf(term.rule);
    if (conditions === null || ![...conditions.keys()].some((name) => indexed.has(name))) layout.setBit(freeAt, slot);
  });
  const table = layout.ints(2 + entries.length);
  layout.write(table, [entries.length / 2, freeAt, ...entries]);
  return table;
}

/** `lists`: one per port rules name, and last the list for any other port. `vocabularies` must have seen every rule. */
export function buildWorkloadIndex(lists: readonly ListRules[], vocabularies: Vocabularies): WorkloadIndex {
  const layout = new Layout();
  const named = lists.slice(0, -1);
  const table = layout.ints(2 + 2 * named.length);
  const slots: (Term | null)[] = [];
  const v6: CidrSet[] = [];
  const headers = lists.map((list) => buildList(list, layout, slots, v6, vocabularies));
  layout.write(table, [named.length, ...named.map((list) => list.port as number), ...headers]);
  return { data: Int32Array.from(layout.data), terms: slots, decisions: slots.map((term) => term?.rule.decision ?? null), v6, vocabularies, headerNames: layout.headerNames, headerVocabularies: layout.headerVocabularies };
}

// ---- per decision ----

// Rows of the scratch space.
export const PRINCIPAL_ROW = 0;
export const NAMESPACE_ROW = 1;
export const METHOD_ROW = 2;
const IP_ROW = 3;
const IP_REMOTE_ROW = 4;
const IP_NEG_ROW = 5;
export const PATH_ROW = 6;
export const HOST_ROW = 7;
const PATTERN_NEG_ROW = 8;
const STRING_NEG_ROW = 9;
export const SOURCE_ROW = 10; // principal & namespace & IP
export const HEADERS_ROW = 11; // every header dimension ANDed
export const HEADER_ROW = 12; // one header's mask
const PATTERN_ALT_ROW = 13; // a Host without its port: the terms it admits
const PATTERN_ALT_NEG_ROW = 14; // and those it excludes
const ROWS = 15;

/**
 * Work space for the masks computed per decision (values no rule of the list names, IPs): grown when a
 * configuration needs more, never per decision. Decisions are synchronous, so one is enough.
 */
let scratch = new Int32Array(8 * ROWS);

export function scratchFor(words: number): Int32Array {
  if (scratch.length < words * ROWS) scratch = new Int32Array(words * ROWS);
  return scratch;
}

function orInto(work: Int32Array, at: number, data: Int32Array, from: number, words: number): void {
  for (let w = 0; w < words; w++) work[at + w] = (work[at + w] as number) | (data[from + w] as number);
}

function andNotInto(work: Int32Array, at: number, data: Int32Array, from: number, words: number): void {
  for (let w = 0; w < words; w++) work[at + w] = (work[at + w] as number) & ~(data[from + w] as number);
}

/** Index of `id` among `count` ascending ints at `at`, or -1. */
function search(data: Int32Array, at: number, count: number, id: number): number {
  let low = 0;
  let high = count - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const found = data[at + middle] as number;
    if (found === id) return middle;
    if (found < id) low = middle + 1;
    else high = middle - 1;
  }
  return -1;
}

/**
 * The mask of a string value: its offset in `data` when precomputed (a value the list names, or none), else
 * computed into scratch row `row` and returned as `~(offset in scratch)` (negative). `id` is the value's id in
 * `vocabulary`, -1 when it has none (resolved by the caller, once per connection for the source's fields).
 */
export function stringMask(data: Int32Array, words: number, header: number, vocabulary: Vocabulary, value: string | null, id: number, work: Int32Array, row: number): number {
  if (value === null) return data[header + NULL_MASK] as number;
  if (id >= 0) {
    const k = search(data, data[header + KEY_IDS] as number, data[header + KEY_COUNT] as number, id);
    if (k >= 0) return (data[header + KEY_MASKS] as number) + k * words;
  }
  const at = row * words;
  const base = data[header + BASE_MASK] as number;
  for (let w = 0; w < words; w++) work[at + w] = data[base + w] as number;
  const wildIds = data[header + WILD_IDS] as number;
  const wildCount = data[header + WILD_COUNT] as number;
  if (wildCount === 0) return ~at;
  const posAt = data[header + WILD_POS] as number;
  const negAt = data[header + WILD_NEG] as number;
  // A term is admitted by any of its positive patterns and excluded by any of its `not` ones: the positives are
  // OR'd into the row, the negatives into a second row taken away at the end.
  const negRow = STRING_NEG_ROW * words;
  let negated = false;
  const start = id < 0 ? null : vocabulary.matchedStart;
  if (start !== null) {
    // Merge the value's wildcards with the list's: both ascending ids.
    const hits = vocabulary.matchedIds;
    let i = start[id] as number;
    const end = start[id + 1] as number;
    let j = 0;
    while (i < end && j < wildCount) {
      const hit = hits[i] as number;
      const mine = data[wildIds + j] as number;
      if (hit < mine) i++;
      else if (hit > mine) j++;
      else {
        negated = addWildcard(work, at, negRow, data, data[posAt + j] as number, data[negAt + j] as number, words, negated);
        i++;
        j++;
      }
    }
  } else {
    // A value no policy names (or a vocabulary too large to precompute): test the list's wildcards on it.
    const kinds = vocabulary.wildKinds;
    const texts = vocabulary.wildTexts;
    for (let j = 0; j < wildCount; j++) {
      const wid = data[wildIds + j] as number;
      if (wildcardMatches(kinds[wid] as number, texts[wid] as string, value)) negated = addWildcard(work, at, negRow, data, data[posAt + j] as number, data[negAt + j] as number, words, negated);
    }
  }
  if (negated) andNotInto(work, at, work, negRow, words);
  return ~at;
}

/** One matching wildcard: its admitted terms into the row, its excluded ones into the `not` row. */
function addWildcard(work: Int32Array, at: number, negRow: number, data: Int32Array, pos: number, neg: number, words: number, negated: boolean): boolean {
  if (pos >= 0) orInto(work, at, data, pos, words);
  if (neg < 0) return negated;
  if (!negated) for (let w = 0; w < words; w++) work[negRow + w] = 0;
  orInto(work, negRow, data, neg, words);
  return true;
}

/**
 * The terms a source IP admits, as `~offset` in `work` (or an offset in `data` for no IP). `remote` false: the
 * remote IP blocks and their `not` lists count as matching (before any request, where they are unknown); true: they
 * are judged on `remoteIp` (the request's client address, the source's when it names none).
 */
export function ipMask(data: Int32Array, words: number, header: number, v6Sets: readonly CidrSet[], ip: IpAddress | null, work: Int32Array, remote: boolean, remoteIp: IpAddress | null): number {
  const remoteKnown = remote && remoteIp !== null;
  if (ip === null && !remoteKnown) return data[header + (remote ? IP_NULL_MASK : IP_NULL_NO_REMOTE)] as number;
  const blocksAt = IP_ROW * words;
  const remoteAt = IP_REMOTE_ROW * words;
  const negAt = IP_NEG_ROW * words;
  const noBlocks = data[header + IP_NO_BLOCKS] as number;
  const noRemote = data[header + IP_NO_REMOTE] as number;
  for (let w = 0; w < words; w++) {
    work[blocksAt + w] = data[noBlocks + w] as number;
    work[remoteAt + w] = remote ? (data[noRemote + w] as number) : -1;
    work[negAt + w] = 0;
  }
  // Without a source IP its positive lists fail and its `not` lists are skipped, as for no IP at all. One pass when
  // the remote IP is the source's; else each by its own address.
  if (ip !== null && (!remote || remoteIp === ip)) markBlocks(data, words, header, v6Sets, ip, work, true, remote);
  else {
    if (ip !== null) markBlocks(data, words, header, v6Sets, ip, work, true, false);
    if (remoteKnown) markBlocks(data, words, header, v6Sets, remoteIp as IpAddress, work, false, true);
  }
  // Admitted by ipBlocks (or none), by remoteIpBlocks (or none), and by no `not` block.
  for (let w = 0; w < words; w++) work[blocksAt + w] = (work[blocksAt + w] as number) & (work[remoteAt + w] as number) & ~(work[negAt + w] as number);
  return ~blocksAt;
}

/** Marks the masks of every block `ip` is in: the source ones (`source`), the remote ones (`remote`), or both. */
function markBlocks(data: Int32Array, words: number, header: number, v6Sets: readonly CidrSet[], ip: IpAddress, work: Int32Array, source: boolean, remote: boolean): void {
  if (ip.family === 4) {
    const address = ip.v4 | 0;
    const v4 = data[header + IP_V4] as number;
    const end = v4 + 6 * (data[header + IP_V4_COUNT] as number);
    for (let at = v4; at < end; at += 6) {
      if ((address & (data[at + 1] as number)) !== data[at]) continue;
      markHit(work, data, words, at + 2, source, remote);
    }
  } else {
    const v6 = data[header + IP_V6] as number;
    const end = v6 + 5 * (data[header + IP_V6_COUNT] as number);
    for (let at = v6; at < end; at += 5) {
      if (!(v6Sets[data[at] as number] as CidrSet).contains(ip)) continue;
      markHit(work, data, words, at + 1, source, remote);
    }
  }
}

/** A block the IP is in: the terms its four masks (at `masks`: blocks, remote, not, not remote) admit or exclude. */
function markHit(work: Int32Array, data: Int32Array, words: number, masks: number, source: boolean, remote: boolean): void {
  if (source) {
    const blocksFrom = data[masks] as number;
    const negFrom = data[masks + 2] as number;
    if (blocksFrom >= 0) orInto(work, IP_ROW * words, data, blocksFrom, words);
    if (negFrom >= 0) orInto(work, IP_NEG_ROW * words, data, negFrom, words);
  }
  if (!remote) return;
  const remoteFrom = data[masks + 1] as number;
  const negRemoteFrom = data[masks + 3] as number;
  if (remoteFrom >= 0) orInto(work, IP_REMOTE_ROW * words, data, remoteFrom, words);
  if (negRemoteFrom >= 0) orInto(work, IP_NEG_ROW * words, data, negRemoteFrom, words);
}

function applyMasks(work: Int32Array, posAt: number, negAt: number, data: Int32Array, record: number, exact: boolean, words: number): void {
  const pos = data[record + (exact ? M_EXACT_POS : M_PREFIX_POS)] as number;
  const neg = data[record + (exact ? M_EXACT_NEG : M_PREFIX_NEG)] as number;
  if (pos >= 0) orInto(work, posAt, data, pos, words);
  if (neg >= 0) orInto(work, negAt, data, neg, words);
}

/** The trie node's child for a char, or -1. */
function childOf(data: Int32Array, node: number, code: number): number {
  const count = data[node + T_COUNT] as number;
  const table = data[node + T_TABLE] as number;
  for (let i = 0; i < count; i++) {
    const found = data[table + i] as number;
    if (found === code) return data[table + count + i] as number;
    if (found > code) return -1;
  }
  return -1;
}

/** Adds the terms value[0, length) admits (into `posAt`) and excludes (into `negAt`) by one walk of each trie. */
function walkPatterns(data: Int32Array, words: number, header: number, value: string, length: number, work: Int32Array, posAt: number, negAt: number): void {
  if (length > 0) {
    const presencePos = data[header + P_PRESENCE_POS] as number;
    const presenceNeg = data[header + P_PRESENCE_NEG] as number;
    if (presencePos >= 0) orInto(work, posAt, data, presencePos, words);
    if (presenceNeg >= 0) orInto(work, negAt, data, presenceNeg, words);
  }
  // Exact and prefix patterns: every node on the way is a prefix of the value; the last one, if reached, the value.
  // The walk stops where the value leaves the trie or ends inside a label: no pattern ends there.
  let node = data[header + P_TRIE] as number;
  let i = 0;
  while (i < length) {
    const child = childOf(data, node, value.charCodeAt(i));
    if (child < 0) break;
    const labelLength = data[child + T_LABEL_LENGTH] as number;
    if (i + 1 + labelLength > length) break;
    let k = 0;
    while (k < labelLength && data[child + T_LABEL + k] === value.charCodeAt(i + 1 + k)) k++;
    if (k < labelLength) break;
    i += 1 + labelLength;
    node = child;
    const record = data[node + T_MASKS] as number;
    if (record >= 0) applyMasks(work, posAt, negAt, data, record, false, words);
  }
  if (i === length) {
    const record = data[node + T_MASKS] as number;
    if (record >= 0) applyMasks(work, posAt, negAt, data, record, true, words);
  }
  // Suffix patterns, from the end (the suffix trie holds them reversed, labels too).
  node = data[header + P_SUFFIX_TRIE] as number;
  let j = length - 1;
  while (j >= 0) {
    const child = childOf(data, node, value.charCodeAt(j));
    if (child < 0) break;
    const labelLength = data[child + T_LABEL_LENGTH] as number;
    if (j - labelLength < 0) break;
    let k = 0;
    while (k < labelLength && data[child + T_LABEL + k] === value.charCodeAt(j - 1 - k)) k++;
    if (k < labelLength) break;
    j -= 1 + labelLength;
    node = child;
    const record = data[node + T_MASKS] as number;
    if (record >= 0) applyMasks(work, posAt, negAt, data, record, false, words);
  }
}

/**
 * The mask of a path or host, computed into scratch row `row` and returned as `~offset`. `alternative` > 0: the
 * value's first `alternative` chars are a second form (a Host without its port) that counts where it lets fewer
 * requests through (see hostMatches in src/authz/decide.ts): for the DENY terms (the first `denyWords` words) it is
 * admitted by a positive list, for the ALLOW terms it is excluded by a `not` list.
 */
export function patternMask(data: Int32Array, words: number, header: number, value: string, alternative: number, denyWords: number, work: Int32Array, row: number): number {
  const at = row * words;
  const negAt = PATTERN_NEG_ROW * words;
  const base = data[header + P_BASE] as number;
  for (let w = 0; w < words; w++) {
    work[at + w] = data[base + w] as number;
    work[negAt + w] = 0;
  }
  walkPatterns(data, words, header, value, value.length, work, at, negAt);
  if (alternative > 0) {
    const altAt = PATTERN_ALT_ROW * words;
    const altNegAt = PATTERN_ALT_NEG_ROW * words;
    for (let w = 0; w < words; w++) {
      work[altAt + w] = 0;
      work[altNegAt + w] = 0;
    }
    walkPatterns(data, words, header, value, alternative, work, altAt, altNegAt);
    for (let w = 0; w < denyWords; w++) work[at + w] = (work[at + w] as number) | (work[altAt + w] as number);
    for (let w = denyWords; w < words; w++) work[negAt + w] = (work[negAt + w] as number) | (work[altNegAt + w] as number);
  }
  andNotInto(work, at, work, negAt, words);
  return ~at;
}
