// SPIFFE IDs: strict byte-by-byte parsing (SPIFFE-ID §2) and building of ambit's workload and node IDs.
//
// No URL library: WHATWG URL normalises `..`, `%2e%2e`, case and userinfo, which would turn an invalid,
// attacker-chosen SAN into a valid-looking identity. IDs are never lowercased or rewritten, so two IDs
// (or trust domains) are the same exactly when their strings are equal. The order of the checks follows
// go-spiffe's `FromString`/`ValidatePath`, so each bad input gets the same error as the reference parser.
import { AmbitError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';

export interface SpiffeId {
  /** The ID exactly as given (valid IDs are never rewritten). */
  readonly id: string;
  readonly trustDomain: string;
  /** '' for a trust domain's own ID (`spiffe://td`); otherwise starts with '/'. */
  readonly path: string;
}

const SCHEME_PREFIX = 'spiffe://';
const SCHEME_LENGTH = SCHEME_PREFIX.length;
/** ambit's node identities live under this path: spiffe://td/ambit/node/NAME. */
const NODE_PATH_PREFIX = '/ambit/node/';

// SPIFFE-ID §2.3 says implementations MUST accept IDs up to 2048 bytes and trust domains up to 255 bytes,
// but go-spiffe and rust-spiffe enforce neither and nothing says longer ones must be rejected. Rejecting
// longer ones is ambit's own, stricter choice: no legitimate identity is that long, and a bound keeps a
// hostile SAN from costing more than it should. Every valid ID is ASCII, so UTF-16 length = byte length
// for any string that could otherwise pass; a longer string with non-ASCII in it fails its charset check.
/** Longest SPIFFE ID ambit accepts, in bytes (SPIFFE-ID §2.3). */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** Longest trust domain name ambit accepts, in bytes (SPIFFE-ID §2.3, from the URI host limit). */
export const MAX_TRUST_DOMAIN_BYTES = 255;

/** How much of an offending input an error message quotes. */
const MAX_QUOTED_CHARS = 80;

const SLASH = 0x2f;
const DOT = 0x2e;

// Lookup tables over ASCII: a code unit ≥ 128 is out of range and so rejected (look-alikes, emoji, UTF-8).
const TRUST_DOMAIN_CHARS = new Uint8Array(128);
const PATH_CHARS = new Uint8Array(128);
for (let code = 0; code < 128; code++) {
  const lower = code >= 0x61 && code <= 0x7a;
  const upper = code >= 0x41 && code <= 0x5a;
  const digit = code >= 0x30 && code <= 0x39;
  const punct = code === DOT || code === 0x2d || code === 0x5f; // . - _
  TRUST_DOMAIN_CHARS[code] = lower || digit || punct ? 1 : 0;
  PATH_CHARS[code] = lower || upper || digit || punct ? 1 : 0;
}

function isTrustDomainChar(code: number): boolean {
  return code < 128 && TRUST_DOMAIN_CHARS[code] === 1;
}

function isPathChar(code: number): boolean {
  return code < 128 && PATH_CHARS[code] === 1;
}

// Where the last scan failed, for the error message only. Scans are synchronous, so one slot is enough,
// and returning a bare code keeps the hot path free of allocation until a message is actually wanted.
let failedAt = -1;

function fail(code: ErrorCode, at: number): ErrorCode {
  failedAt = at;
  return code;
}

/** The whole parse, one pass over char codes: a SpiffeId, or the code of the first rule broken. */
function scan(text: string): SpiffeId | ErrorCode {
  const length = text.length;
  if (length === 0) return fail('SPIFFE_ID_EMPTY', 0);
  if (!text.startsWith(SCHEME_PREFIX)) return fail('SPIFFE_ID_SCHEME', 0);
  // Checked before the scan so a huge hostile string is refused without walking it.
  if (length > MAX_SPIFFE_ID_BYTES) return fail('SPIFFE_ID_TOO_LONG', MAX_SPIFFE_ID_BYTES);

  let index = SCHEME_LENGTH;
  for (; index < length; index++) {
    const code = text.charCodeAt(index);
    if (code === SLASH) break;
    if (!isTrustDomainChar(code)) return fail('SPIFFE_ID_TRUST_DOMAIN_CHARS', index);
  }
  const pathStart = index;
  if (pathStart === SCHEME_LENGTH) return fail('SPIFFE_ID_TRUST_DOMAIN_MISSING', index);
  if (pathStart - SCHEME_LENGTH > MAX_TRUST_DOMAIN_BYTES) return fail('SPIFFE_ID_TRUST_DOMAIN_TOO_LONG', pathStart);

  // Path: each '/' closes the segment before it; the final segment is checked after the loop.
  let segmentStart = pathStart; // index of the '/' opening the current segment
  for (index = pathStart + 1; index < length; index++) {
    const code = text.charCodeAt(index);
    if (code === SLASH) {
      const broken = checkSegment(text, segmentStart, index);
      if (broken !== null) return fail(broken, segmentStart);
      segmentStart = index;
    } else if (!isPathChar(code)) {
      return fail('SPIFFE_ID_PATH_CHARS', index);
    }
  }
  if (pathStart < length) {
    if (segmentStart === length - 1) return fail('SPIFFE_ID_TRAILING_SLASH', segmentStart);
    const broken = checkSegment(text, segmentStart, length);
    if (broken !== null) return fail(broken, segmentStart);
  }

  return { id: text, trustDomain: text.slice(SCHEME_LENGTH, pathStart), path: text.slice(pathStart) };
}

/** Checks the segment text[slash+1 .. end) for emptiness and dot segments (its bytes are already checked). */
function checkSegment(text: string, slash: number, end: number): ErrorCode | null {
  const segmentLength = end - slash - 1;
  if (segmentLength === 0) return 'SPIFFE_ID_EMPTY_SEGMENT';
  if (text.charCodeAt(slash + 1) === DOT && (segmentLength === 1 || (segmentLength === 2 && text.charCodeAt(slash + 2) === DOT))) {
    return 'SPIFFE_ID_DOT_SEGMENT';
  }
  return null;
}

const RULES: Partial<Record<ErrorCode, string>> = {
  SPIFFE_ID_EMPTY: 'cannot be empty',
  SPIFFE_ID_SCHEME: 'scheme is missing or invalid: it must start with exactly "spiffe://"',
  SPIFFE_ID_TOO_LONG: `is longer than ${MAX_SPIFFE_ID_BYTES} bytes`,
  SPIFFE_ID_TRUST_DOMAIN_CHARS: 'trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores',
  SPIFFE_ID_TRUST_DOMAIN_MISSING: 'trust domain is missing',
  SPIFFE_ID_TRUST_DOMAIN_TOO_LONG: `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`,
  SPIFFE_ID_EMPTY_SEGMENT: 'path cannot contain empty segments',
  SPIFFE_ID_DOT_SEGMENT: 'path cannot contain dot segments',
  SPIFFE_ID_PATH_CHARS: 'path segment characters are limited to letters, numbers, dots, dashes, and underscores',
  SPIFFE_ID_TRAILING_SLASH: 'path cannot have a trailing slash',
  SPIFFE_ID_NOT_WORKLOAD: 'is not a workload ID of the form spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT',
};

/** JSON-quotes the input (so NUL, control and look-alike characters are visible), cut to a readable length. */
function quote(text: string): string {
  return text.length <= MAX_QUOTED_CHARS ? JSON.stringify(text) : `${JSON.stringify(text.slice(0, MAX_QUOTED_CHARS))}… (${text.length} chars)`;
}

function describe(what: string, text: string, code: ErrorCode, at: number): string {
  const where = at > 0 && at < text.length ? ` (at offset ${at})` : '';
  return `invalid ${what} ${quote(text)}: ${RULES[code] ?? code}${where}`;
}

/** An AmbitError without a stack trace: rejected IDs are expected on handshake paths, and stacks are not free. */
function stacklessError(code: ErrorCode, message: string): AmbitError {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new AmbitError(code, message);
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** Parses a SPIFFE ID exactly as SPIFFE-ID §2 defines it; throws AmbitError with a SPIFFE_ID_* code. */
export function parseSpiffeId(text: string): SpiffeId {
  const result = scan(text);
  if (typeof result === 'string') throw new AmbitError(result, describe('SPIFFE ID', text, result, failedAt));
  return result;
}

/** Like parseSpiffeId but returns the error instead of throwing (and skips its stack): for hot paths. */
export function tryParseSpiffeId(text: string): SpiffeId | AmbitError {
  const result = scan(text);
  if (typeof result === 'string') return stacklessError(result, describe('SPIFFE ID', text, result, failedAt));
  return result;
}

/** Checks a bare trust domain name (no scheme, no path) and returns it unchanged. */
export function validateTrustDomain(name: string): string {
  if (name.length === 0) throw new AmbitError('SPIFFE_ID_EMPTY', 'invalid trust domain "": cannot be empty');
  for (let index = 0; index < name.length; index++) {
    if (!isTrustDomainChar(name.charCodeAt(index))) {
      throw new AmbitError('SPIFFE_ID_TRUST_DOMAIN_CHARS', describe('trust domain', name, 'SPIFFE_ID_TRUST_DOMAIN_CHARS', index));
    }
  }
  if (name.length > MAX_TRUST_DOMAIN_BYTES) {
    throw new AmbitError('SPIFFE_ID_TRUST_DOMAIN_TOO_LONG', describe('trust domain', name, 'SPIFFE_ID_TRUST_DOMAIN_TOO_LONG', 0));
  }
  return name;
}

/** Checks one path segment given on its own (a namespace, a service account, a node name). */
function validateSegment(what: string, segment: string): string {
  let code: ErrorCode | null = null;
  let at = 0;
  if (segment.length === 0) code = 'SPIFFE_ID_EMPTY_SEGMENT';
  else if (segment === '.' || segment === '..') code = 'SPIFFE_ID_DOT_SEGMENT';
  else {
    for (let index = 0; index < segment.length; index++) {
      if (!isPathChar(segment.charCodeAt(index))) {
        code = 'SPIFFE_ID_PATH_CHARS';
        at = index;
        break;
      }
    }
  }
  if (code !== null) throw new AmbitError(code, describe(what, segment, code, at));
  return segment;
}

/** `spiffe://td`: the trust domain's own ID (never a valid leaf SVID ID). */
export function trustDomainId(trustDomain: string): string {
  return SCHEME_PREFIX + validateTrustDomain(trustDomain);
}

/** `spiffe://td/ns/NS/sa/SA`, the Istio-compatible workload identity (SPIFFE-ID §2.2's example shape). */
export function workloadId(trustDomain: string, namespace: string, serviceAccount: string): string {
  validateTrustDomain(trustDomain);
  validateSegment('namespace', namespace);
  validateSegment('service account', serviceAccount);
  return parseSpiffeId(`${SCHEME_PREFIX}${trustDomain}/ns/${namespace}/sa/${serviceAccount}`).id;
}

/** `spiffe://td/ambit/node/NAME`, the identity of a node's proxy. */
export function nodeId(trustDomain: string, nodeName: string): string {
  validateTrustDomain(trustDomain);
  validateSegment('node name', nodeName);
  return parseSpiffeId(`${SCHEME_PREFIX}${trustDomain}${NODE_PATH_PREFIX}${nodeName}`).id;
}


/** Where `/sa/` starts in a workload path, exactly `/ns/X/sa/Y` with X and Y non-empty and without `/`; else -1. */
function workloadSaMarker(path: string): number {
  if (!path.startsWith('/ns/')) return -1;
  const saMarker = path.indexOf('/', 4);
  return saMarker > 4 && path.startsWith('/sa/', saMarker) && path.length > saMarker + 4 && path.indexOf('/', saMarker + 4) === -1 ? saMarker : -1;
}

/** Splits a workload ID; SPIFFE_ID_NOT_WORKLOAD unless the path is exactly /ns/X/sa/Y. */
export function parseWorkloadId(text: string): { trustDomain: string; namespace: string; serviceAccount: string } {
  const { trustDomain, path } = parseSpiffeId(text);
  const saMarker = workloadSaMarker(path);
  if (saMarker >= 0) return { trustDomain, namespace: path.slice(4, saMarker), serviceAccount: path.slice(saMarker + 4) };
  throw new AmbitError('SPIFFE_ID_NOT_WORKLOAD', describe('workload ID', text, 'SPIFFE_ID_NOT_WORKLOAD', 0));
}

/**
 * Splits a node ID (`spiffe://td/ambit/node/NAME`); null for a valid SPIFFE ID of another shape.
 * An invalid SPIFFE ID still throws its SPIFFE_ID_* error: malformed input is an error, not a kind of ID.
 */
export function parseNodeId(text: string): { trustDomain: string; nodeName: string } | null {
  const { trustDomain, path } = parseSpiffeId(text);
  if (!path.startsWith(NODE_PATH_PREFIX) || path.indexOf('/', NODE_PATH_PREFIX.length) !== -1) return null;
  // parseSpiffeId already refused an empty final segment ('/ambit/node/' is a trailing slash).
  return { trustDomain, nodeName: path.slice(NODE_PATH_PREFIX.length) };
}

/**
 * Whether a path is in ambit's own space (`/ambit/...`: node proxies and the CA), in any trust domain. Such an
 * identity is never a workload's: a node's certificate is for the CA, and a proxy presents workloads' certificates.
 */
export function isInfrastructurePath(path: string): boolean {
  return path === '/ambit' || path.startsWith('/ambit/');
}

/** What namespaceOfPath returns for an ID with two different `/ns/NAME/`. */
export const AMBIGUOUS_NAMESPACE = Symbol('more than one namespace');

/**
 * The namespace of a SPIFFE ID's path, as policies see it. A workload ID (`/ns/NS/sa/SA`) is in NS, as ztunnel
 * parses it (Istio's `.*\/ns/NS/.*` would also put `/ns/ns/sa/x` in `sa`, an accident of the regex). Any other
 * path is read as that regex reads it: the name after a `/ns/` anywhere, not only first (a federated
 * `/tenant/ns/prod/sa/x` is in `prod`); null when there is none, AMBIGUOUS_NAMESPACE when there are two.
 */
export function namespaceOfPath(path: string): string | null | typeof AMBIGUOUS_NAMESPACE {
  const saMarker = workloadSaMarker(path);
  if (saMarker >= 0) return path.slice(4, saMarker);
  let found: string | null = null;
  // Every `/ns/NAME/`, overlapping ones too (`/x/ns/ns/y/` is in `ns` and in `y` for that regex).
  for (let at = path.indexOf('/ns/'); at >= 0; at = path.indexOf('/ns/', at + 1)) {
    const start = at + 4;
    const end = path.indexOf('/', start);
    // The regex needs a "/" after the name: a trailing `/ns/NAME` names no namespace.
    if (end <= start) continue;
    const name = path.slice(start, end);
    if (found !== null && found !== name) return AMBIGUOUS_NAMESPACE;
    found = name;
  }
  return found;
}
