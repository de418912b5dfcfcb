// SPIFFE trust bundles: one trust domain's X.509 authorities, their JWKS and PEM encodings, and the
// immutable set of bundles (one per trust domain) that verification reads (Trust Domain and Bundle §3–§6).
//
// Lenient on input, as the spec says, and strict on output:
// * decoding ignores JWKs with an unknown `kty`, a missing or unknown `use`, `jwt-svid` keys (ambit has
//   no JWT-SVIDs yet) and `x509-svid` entries with a missing or empty `x5c`; it uses only `x5c[0]`. A key
//   that is there to be used but is malformed (bad DER, not a CA, key params that disagree with the
//   certificate) fails the whole bundle: half a bundle would be a silent change of trust.
// * encoding writes one certificate per `x509-svid` entry, key params matching it, no `kid`, `keys`
//   always an array, and `spiffe_sequence` as an exact 64-bit integer.
// A bundle does not name its trust domain (§3): the pairing is kept here, in TrustBundle and BundleSet,
// and bundles of different trust domains are never pooled.
import { createHash, createPublicKey } from 'node:crypto';
import type { JsonWebKey } from 'node:crypto';
import { BasicConstraintsExtension, X509Certificate } from './x509.ts';
import { AmbitError } from '../errors.ts';
import { validateTrustDomain } from './spiffe-id.ts';
import { keyFacts } from './crypto-policy.ts';

/**
 * The header of the CA's GET /v1/bundles naming the key identifier (subjectKeyIdentifier, hex) of the authority that
 * signs now: agents re-issue only what another authority signed.
 */
export const SIGNING_AUTHORITY_HEADER = 'ambit-signing-authority';

export interface TrustBundle {
  readonly trustDomain: string;
  /** The trust domain's X.509-SVID authorities, without duplicates. */
  readonly roots: readonly X509Certificate[];
  /** `spiffe_sequence`: grows with every change of content (0n when absent). */
  readonly sequence: bigint;
  /** `spiffe_refresh_hint`: how often to poll a federated bundle endpoint, in seconds. */
  readonly refreshHintSeconds: number | undefined;
}

/** Trust Domain and Bundle §4.1.1: the sequence is an unsigned 64-bit integer (as go-spiffe reads it). */
const MAX_SEQUENCE = (1n << 64n) - 1n;
/** A bundle map nests five levels deep; anything much deeper is hostile, and recursion has a limit. */
const MAX_JSON_DEPTH = 32;

const X509_SVID_USE = 'x509-svid';

// ---------------------------------------------------------------------------------------------
// Building and comparing

/** A bundle of CA certificates (each must have basicConstraints cA and an EC or RSA key); duplicates dropped. */
export function createBundle(trustDomain: string, roots: readonly X509Certificate[], options: { sequence?: bigint; refreshHintSeconds?: number } = {}): TrustBundle {
  validateTrustDomain(trustDomain);
  const sequence = options.sequence ?? 0n;
  if (sequence < 0n || sequence > MAX_SEQUENCE) {
    throw new AmbitError('BUNDLE_INVALID', `bundle for "${trustDomain}": sequence ${sequence} is not an unsigned 64-bit integer`);
  }
  const refreshHintSeconds = options.refreshHintSeconds;
  if (refreshHintSeconds !== undefined && !(Number.isSafeInteger(refreshHintSeconds) && refreshHintSeconds >= 0)) {
    throw new AmbitError('BUNDLE_INVALID', `bundle for "${trustDomain}": refresh hint ${refreshHintSeconds} is not a whole number of seconds`);
  }
  const unique: X509Certificate[] = [];
  const seen = new Set<string>();
  roots.forEach((root, index) => {
    const fingerprint = fingerprintOf(root);
    if (seen.has(fingerprint)) return;
    seen.add(fingerprint);
    const why = caProblem(root) ?? (keyJwkOf(root) === null ? 'its key is neither EC nor RSA' : null) ?? keyFacts(createPublicKey({ key: Buffer.from(root.publicKey.rawData), format: 'der', type: 'spki' })).problem ?? null;
    if (why !== null) throw new AmbitError('BUNDLE_INVALID', `bundle for "${trustDomain}": root ${index} (${root.subject}) ${why}`);
    unique.push(root);
  });
  return Object.freeze({ trustDomain, roots: Object.freeze(unique), sequence, refreshHintSeconds });
}

/** The union of two bundles' roots (by DER), for the overlap of a root rotation; the sequence moves past both. */
export function mergeRoots(a: TrustBundle, b: TrustBundle): TrustBundle {
  if (a.trustDomain !== b.trustDomain) {
    throw new AmbitError('TRUST_DOMAIN_MISMATCH', `cannot merge the bundle of "${a.trustDomain}" with the bundle of "${b.trustDomain}"`, {
      hint: 'bundles of different trust domains are never pooled',
    });
  }
  const sequence = (a.sequence > b.sequence ? a.sequence : b.sequence) + 1n;
  // The more frequent poll wins: during a rotation, peers should see the new roots sooner.
  const hints = [a.refreshHintSeconds, b.refreshHintSeconds].filter((hint) => hint !== undefined);
  const refreshHintSeconds = hints.length === 0 ? undefined : Math.min(...hints);
  return createBundle(a.trustDomain, [...a.roots, ...b.roots], { sequence: sequence > MAX_SEQUENCE ? MAX_SEQUENCE : sequence, refreshHintSeconds });
}

/**
 * Same trust domain and same set of roots (by DER). Sequence and refresh hint are not compared: they
 * describe the publication, not what is trusted. The trust domain is, since a bundle means nothing without it.
 */
export function bundlesEqual(a: TrustBundle, b: TrustBundle): boolean {
  if (a.trustDomain !== b.trustDomain || a.roots.length !== b.roots.length) return false;
  const fingerprints = new Set(a.roots.map(fingerprintOf));
  return b.roots.every((root) => fingerprints.has(fingerprintOf(root)));
}

const fingerprints = new WeakMap<X509Certificate, string>();

/** SHA-256 of the certificate's DER, hex. */
function fingerprintOf(cert: X509Certificate): string {
  let fingerprint = fingerprints.get(cert);
  if (fingerprint === undefined) {
    fingerprint = createHash('sha256').update(new Uint8Array(cert.rawData)).digest('hex');
    fingerprints.set(cert, fingerprint);
  }
  return fingerprint;
}

function caProblem(cert: X509Certificate): string | null {
  let constraints: BasicConstraintsExtension | null;
  try {
    constraints = cert.getExtension(BasicConstraintsExtension);
  } catch {
    return 'has an unreadable basicConstraints extension';
  }
  return constraints?.ca === true ? null : 'is not a CA certificate (basicConstraints cA is not true)';
}

/** The certificate's public key as JWK params (EC: crv/x/y, RSA: n/e), or null for other key types. */
function keyJwkOf(cert: X509Certificate): JsonWebKey | null {
  let jwk: JsonWebKey;
  try {
    jwk = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' }).export({ format: 'jwk' });
  } catch {
    return null;
  }
  if (jwk.kty === 'EC' && typeof jwk.crv === 'string' && typeof jwk.x === 'string' && typeof jwk.y === 'string') return jwk;
  if (jwk.kty === 'RSA' && typeof jwk.n === 'string' && typeof jwk.e === 'string') return jwk;
  return null;
}

// ---------------------------------------------------------------------------------------------
// JWKS encoding

/** The SPIFFE bundle (JWKS) document: every root as one `x509-svid` key. */
export function encodeBundle(bundle: TrustBundle): string {
  return writeJson(bundleDocument(bundle, true), '');
}

function bundleDocument(bundle: TrustBundle, withRefreshHint: boolean): JsonOut {
  const document: Record<string, JsonOut> = { spiffe_sequence: bundle.sequence };
  if (withRefreshHint && bundle.refreshHintSeconds !== undefined) document.spiffe_refresh_hint = bundle.refreshHintSeconds;
  document.keys = bundle.roots.map((root) => {
    const jwk = keyJwkOf(root);
    if (jwk === null) throw new AmbitError('BUNDLE_INVALID', `bundle for "${bundle.trustDomain}": root ${root.subject} has neither an EC nor an RSA key`);
    const key: Record<string, JsonOut> = { use: X509_SVID_USE, kty: jwk.kty as string };
    if (jwk.kty === 'EC') Object.assign(key, { crv: jwk.crv as string, x: jwk.x as string, y: jwk.y as string });
    else Object.assign(key, { n: jwk.n as string, e: jwk.e as string });
    key.x5c = [Buffer.from(root.rawData).toString('base64')];
    return key;
  });
  return document;
}

type JsonOut = string | number | bigint | boolean | null | readonly JsonOut[] | { readonly [key: string]: JsonOut };

/** JSON.stringify with two-space indentation that also writes bigints as exact integers. */
function writeJson(value: JsonOut, indent: string): string {
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    const items = value as readonly JsonOut[];
    if (items.length === 0) return '[]';
    return `[\n${items.map((item) => inner + writeJson(item, inner)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(value as { readonly [key: string]: JsonOut });
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([key, item]) => `${inner}${JSON.stringify(key)}: ${writeJson(item, inner)}`).join(',\n')}\n${indent}}`;
}

// ---------------------------------------------------------------------------------------------
// JWKS decoding

/** Reads a SPIFFE bundle (JWKS) for `trustDomain`, leniently as the spec asks (see the module comment). */
export function decodeBundle(trustDomain: string, json: string): TrustBundle {
  validateTrustDomain(trustDomain);
  const document = readJson(json, `bundle for "${trustDomain}"`);
  return bundleFromDocument(trustDomain, document, `bundle for "${trustDomain}"`, true);
}

function bundleFromDocument(trustDomain: string, document: JsonValue, where: string, useRefreshHint: boolean): TrustBundle {
  if (!isJsonObject(document)) throw invalid(where, 'is not a JSON object');
  const sequence = readSequence(document.spiffe_sequence, where);
  const refreshHintSeconds = useRefreshHint ? readRefreshHint(document.spiffe_refresh_hint, where) : undefined;
  const keys = document.keys;
  // Trust Domain and Bundle §4.1.3: `keys` MUST be present; `[]` (everything revoked) is fine.
  if (!Array.isArray(keys)) throw invalid(where, keys === undefined ? 'has no "keys" member' : 'has a "keys" member that is not an array');

  const roots: X509Certificate[] = [];
  keys.forEach((key, index) => {
    const root = rootFromJwk(key, `${where}: key ${index}`);
    if (root !== null) roots.push(root);
  });
  return createBundle(trustDomain, roots, { sequence, refreshHintSeconds });
}

/** The CA certificate of an `x509-svid` JWK, null for a key the spec says to ignore; throws if malformed. */
function rootFromJwk(key: JsonValue, where: string): X509Certificate | null {
  if (!isJsonObject(key)) throw invalid(where, 'is not a JSON object');
  // §4.2.1/§4.2.2: a missing or unknown `use`, or an unknown `kty`, MUST be ignored. `use` is case-sensitive.
  // ambit reads X.509 authorities only; jwt-svid (and wit-svid) keys are ignored until it verifies JWTs.
  if (key.use !== X509_SVID_USE) return null;
  // EC and RSA are the key types ambit can check a certificate against; others (OKP, oct, unknown) are ignored,
  // which leaves their certificates untrusted: closed, not open.
  if (key.kty !== 'EC' && key.kty !== 'RSA') return null;
  // X509-SVID §6: a consumer ignores an entry with a missing or empty x5c and uses only x5c[0].
  const x5c = key.x5c;
  if (x5c === undefined || (Array.isArray(x5c) && x5c.length === 0)) return null;
  if (!Array.isArray(x5c)) throw invalid(where, 'has an "x5c" that is not an array');
  const first = x5c[0];
  if (typeof first !== 'string') throw invalid(where, 'has an x5c[0] that is not a string');

  const der = decodeStdBase64(first);
  if (der === null) throw invalid(where, 'has an x5c[0] that is not standard base64');
  const cert = parseDerCertificate(der);
  if (cert === null) throw invalid(where, 'has an x5c[0] that is not a DER X.509 certificate');
  const notCa = caProblem(cert);
  if (notCa !== null) throw invalid(where, `has an x5c[0] (${cert.subject}) that ${notCa}`);
  const mismatch = keyMismatch(key, cert);
  if (mismatch !== null) throw invalid(where, `has key params that do not match its x5c[0] (${cert.subject}): ${mismatch}`);
  return cert;
}

/** Why the JWK's key params differ from the certificate's key, or null when they agree. */
function keyMismatch(key: JsonObject, cert: X509Certificate): string | null {
  const actual = keyJwkOf(cert);
  if (actual === null) return 'the certificate key is neither EC nor RSA';
  if (actual.kty !== key.kty) return `kty is ${String(key.kty)} but the certificate has an ${actual.kty} key`;
  if (actual.kty === 'EC') {
    if (key.crv !== actual.crv) return `crv is ${JSON.stringify(key.crv ?? null)} but the certificate's curve is ${actual.crv}`;
    // EC coordinates are fixed-length (RFC 7518 §6.2.1.2), so the bytes must agree exactly.
    return paramProblem('x', key.x, actual.x as string, false) ?? paramProblem('y', key.y, actual.y as string, false);
  }
  // RSA params are unsigned big-endian integers (RFC 7518 §6.3.1): compare values, not leading zeros.
  return paramProblem('n', key.n, actual.n as string, true) ?? paramProblem('e', key.e, actual.e as string, true);
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

function paramProblem(name: string, given: JsonValue | undefined, expected: string, asInteger: boolean): string | null {
  if (given === undefined) return `"${name}" is missing`;
  if (typeof given !== 'string' || !BASE64URL.test(given) || given.length % 4 === 1) return `"${name}" is not base64url`;
  let a: Uint8Array = Buffer.from(given, 'base64url');
  let b: Uint8Array = Buffer.from(expected, 'base64url');
  if (asInteger) {
    a = stripLeadingZeros(a);
    b = stripLeadingZeros(b);
  }
  return Buffer.compare(a, b) === 0 ? null : `"${name}" differs from the certificate's key`;
}

function stripLeadingZeros(bytes: Uint8Array): Uint8Array {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  return bytes.subarray(start);
}

function readSequence(value: JsonValue | undefined, where: string): bigint {
  if (value === undefined || value === null) return 0n;
  if (typeof value !== 'bigint' || value < 0n || value > MAX_SEQUENCE) throw invalid(where, 'has a "spiffe_sequence" that is not an unsigned 64-bit integer');
  return value;
}

function readRefreshHint(value: JsonValue | undefined, where: string): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'bigint' || value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalid(where, 'has a "spiffe_refresh_hint" that is not a whole number of seconds');
  }
  return Number(value);
}

function invalid(where: string, why: string): AmbitError {
  return new AmbitError('BUNDLE_INVALID', `${where} ${why}`);
}

// ---------------------------------------------------------------------------------------------
// PEM

/** A bundle from a list of PEM CA certificates; other PEM blocks are skipped, and blank input is an empty bundle. */
export function decodePemBundle(trustDomain: string, pem: string): TrustBundle {
  validateTrustDomain(trustDomain);
  const where = `PEM bundle for "${trustDomain}"`;
  const roots: X509Certificate[] = [];
  let blocks = 0;
  for (const match of pem.matchAll(PEM_BLOCK)) {
    blocks++;
    const [, label, body, endLabel] = match as unknown as [string, string, string, string];
    if (label !== endLabel) throw invalid(where, `block ${blocks} begins as ${label} but ends as ${endLabel}`);
    if (label !== 'CERTIFICATE') continue;
    const der = decodeStdBase64(body.replace(/\s+/g, ''));
    const cert = der === null ? null : parseDerCertificate(der);
    if (cert === null) throw invalid(where, `block ${blocks} is not a DER X.509 certificate`);
    const notCa = caProblem(cert);
    if (notCa !== null) throw invalid(where, `certificate in block ${blocks} (${cert.subject}) ${notCa}`);
    roots.push(cert);
  }
  // A block cut short (a truncated file) must not pass as a smaller bundle.
  const begins = pem.split('-----BEGIN ').length - 1;
  if (begins !== blocks) throw invalid(where, 'has a PEM block without its END line');
  if (blocks === 0 && pem.trim() !== '') throw invalid(where, 'has no PEM blocks (nor is it a JSON bundle)');
  return createBundle(trustDomain, roots);
}

const PEM_BLOCK = /-----BEGIN ([^\r\n-]*)-----([\s\S]*?)-----END ([^\r\n-]*)-----/g;

/** The bundle's roots as concatenated PEM certificates ('' for an empty bundle). */
export function encodePemBundle(bundle: TrustBundle): string {
  return bundle.roots.map((root) => `${root.toString('pem')}\n`).join('');
}

/** A JSON (JWKS) bundle when the text starts with '{', else a PEM list. */
export function decodeBundleText(trustDomain: string, text: string): TrustBundle {
  return text.trimStart().startsWith('{') ? decodeBundle(trustDomain, text) : decodePemBundle(trustDomain, text);
}

// ---------------------------------------------------------------------------------------------
// Certificates from bytes

const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict RFC 4648 §4 base64 (padding required, no whitespace, canonical), or null. */
function decodeStdBase64(text: string): Buffer | null {
  if (!STD_BASE64.test(text)) return null;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? bytes : null;
}

/**
 * The certificate if `der` is exactly one DER SEQUENCE, else null. @peculiar/x509 accepts trailing bytes
 * and, for input not starting with a SEQUENCE tag, guesses PEM, hex or base64 text; neither belongs here.
 */
function parseDerCertificate(der: Uint8Array): X509Certificate | null {
  if (der.length < 2 || der[0] !== 0x30) return null;
  const first = der[1] as number;
  let length = first;
  let header = 2;
  if (first & 0x80) {
    const lengthBytes = first & 0x7f;
    if (lengthBytes === 0 || lengthBytes > 4 || der.length < 2 + lengthBytes) return null;
    length = 0;
    for (let index = 0; index < lengthBytes; index++) length = length * 256 + (der[2 + index] as number);
    header = 2 + lengthBytes;
  }
  if (header + length !== der.length) return null;
  try {
    return new X509Certificate(der);
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Bundle sets

/** Trust domain → bundle. Immutable: a change builds a new set, and readers swap to it whole. */
export class BundleSet {
  readonly #bundles: ReadonlyMap<string, TrustBundle>;

  constructor(bundles: Iterable<TrustBundle> = []) {
    const map = new Map<string, TrustBundle>();
    for (const bundle of bundles) {
      if (map.has(bundle.trustDomain)) {
        throw new AmbitError('BUNDLE_DUPLICATE_TRUST_DOMAIN', `two bundles for trust domain "${bundle.trustDomain}"`);
      }
      map.set(bundle.trustDomain, bundle);
    }
    this.#bundles = map;
  }

  get(trustDomain: string): TrustBundle | undefined {
    return this.#bundles.get(trustDomain);
  }

  has(trustDomain: string): boolean {
    return this.#bundles.has(trustDomain);
  }

  /** A new set with `bundle` added, or replacing the bundle of its trust domain. */
  with(bundle: TrustBundle): BundleSet {
    const next = new Map(this.#bundles);
    next.set(bundle.trustDomain, bundle);
    return new BundleSet(next.values());
  }

  /** A new set without the bundle of `trustDomain`. */
  without(trustDomain: string): BundleSet {
    const next = new Map(this.#bundles);
    next.delete(trustDomain);
    return new BundleSet(next.values());
  }

  /** The trust domains, sorted. */
  trustDomains(): string[] {
    return [...this.#bundles.keys()].sort();
  }

  *[Symbol.iterator](): Iterator<TrustBundle> {
    for (const trustDomain of this.trustDomains()) yield this.#bundles.get(trustDomain) as TrustBundle;
  }

  /** The SPIFFE bundle map (Trust Domain and Bundle §5); inner bundles omit their refresh hints (§5.1.2). */
  toMapJson(): string {
    // Without a prototype, a trust domain named "__proto__" (valid: only a-z and '_') is just a key.
    const trustDomains = Object.create(null) as Record<string, JsonOut>;
    for (const bundle of this) trustDomains[bundle.trustDomain] = bundleDocument(bundle, false);
    return writeJson({ trust_domains: trustDomains }, '');
  }

  /** Reads a bundle map, rejecting a duplicate trust domain (§5.1.1, §6.3) and ignoring inner refresh hints. */
  static fromMapJson(text: string): BundleSet {
    const where = 'bundle map';
    const document = readJson(text, where, ['trust_domains']);
    if (!isJsonObject(document)) throw invalid(where, 'is not a JSON object');
    const trustDomains = document.trust_domains;
    if (!isJsonObject(trustDomains)) throw invalid(where, trustDomains === undefined ? 'has no "trust_domains" member' : 'has a "trust_domains" member that is not an object');
    const bundles: TrustBundle[] = [];
    for (const [trustDomain, value] of Object.entries(trustDomains)) {
      try {
        validateTrustDomain(trustDomain);
      } catch (error) {
        throw new AmbitError('BUNDLE_INVALID', `${where}: ${JSON.stringify(trustDomain)} is not a valid trust domain name`, { cause: error });
      }
      bundles.push(bundleFromDocument(trustDomain, value, `${where}: bundle for "${trustDomain}"`, false));
    }
    return new BundleSet(bundles);
  }
}

// ---------------------------------------------------------------------------------------------
// Exact JSON reading
//
// JSON.parse loses integers above 2^53 (spiffe_sequence is 64-bit) and silently keeps the last of two
// duplicate keys (a bundle map MUST reject a duplicate trust domain). So JSON.parse only checks the
// syntax, and this reader, run on text known to be valid JSON, builds the values: integers as bigint,
// objects without a prototype (so a "__proto__" key is just a key), duplicate keys refused.

type JsonValue = null | boolean | number | bigint | string | JsonValue[] | JsonObject;
interface JsonObject {
  [key: string]: JsonValue;
}

function isJsonObject(value: JsonValue | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

class DuplicateKeyError extends Error {
  readonly path: readonly string[];
  readonly key: string;
  constructor(path: readonly string[], key: string) {
    super(`duplicate key ${JSON.stringify(key)}`);
    this.path = path;
    this.key = key;
  }
}

/**
 * Parses `text` exactly. A duplicate key directly under `duplicateTrustDomainPath` is a
 * BUNDLE_DUPLICATE_TRUST_DOMAIN; any other duplicate, invalid JSON or absurd nesting is BUNDLE_INVALID.
 */
function readJson(text: string, where: string, duplicateTrustDomainPath?: readonly string[]): JsonValue {
  try {
    JSON.parse(text);
  } catch (error) {
    throw new AmbitError('BUNDLE_INVALID', `${where} is not JSON: ${(error as Error).message}`, { cause: error });
  }
  try {
    return new ExactJsonReader(text).read();
  } catch (error) {
    if (error instanceof DuplicateKeyError) {
      const path = error.path.join('.');
      if (duplicateTrustDomainPath !== undefined && path === duplicateTrustDomainPath.join('.')) {
        throw new AmbitError('BUNDLE_DUPLICATE_TRUST_DOMAIN', `${where} names trust domain ${JSON.stringify(error.key)} twice`);
      }
      throw new AmbitError('BUNDLE_INVALID', `${where} has the key ${JSON.stringify(error.key)} twice${path === '' ? '' : ` in ${path}`}`);
    }
    throw new AmbitError('BUNDLE_INVALID', `${where} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

const INTEGER = /^-?(?:0|[1-9][0-9]*)$/;

class ExactJsonReader {
  readonly #text: string;
  #at = 0;

  constructor(text: string) {
    this.#text = text;
  }

  read(): JsonValue {
    return this.#value([]);
  }

  #skipWhitespace(): void {
    const text = this.#text;
    let at = this.#at;
    while (at < text.length) {
      const code = text.charCodeAt(at);
      if (code !== 0x20 && code !== 0x0a && code !== 0x0d && code !== 0x09) break;
      at++;
    }
    this.#at = at;
  }

  #value(path: string[]): JsonValue {
    if (path.length > MAX_JSON_DEPTH) throw new Error(`nested deeper than ${MAX_JSON_DEPTH} levels`);
    this.#skipWhitespace();
    const text = this.#text;
    const char = text[this.#at];
    if (char === '{') return this.#object(path);
    if (char === '[') return this.#array(path);
    if (char === '"') return this.#string();
    if (char === 't') return this.#literal('true', true);
    if (char === 'f') return this.#literal('false', false);
    if (char === 'n') return this.#literal('null', null);
    return this.#number();
  }

  #object(path: string[]): JsonObject {
    const result = Object.create(null) as JsonObject;
    this.#at++; // {
    this.#skipWhitespace();
    if (this.#text[this.#at] === '}') {
      this.#at++;
      return result;
    }
    while (true) {
      this.#skipWhitespace();
      const key = this.#string();
      if (Object.hasOwn(result, key)) throw new DuplicateKeyError(path, key);
      this.#skipWhitespace();
      this.#at++; // :
      result[key] = this.#value([...path, key]);
      this.#skipWhitespace();
      if (this.#text[this.#at++] === '}') return result; // else ','
    }
  }

  #array(path: string[]): JsonValue[] {
    const result: JsonValue[] = [];
    this.#at++; // [
    this.#skipWhitespace();
    if (this.#text[this.#at] === ']') {
      this.#at++;
      return result;
    }
    while (true) {
      result.push(this.#value([...path, String(result.length)]));
      this.#skipWhitespace();
      if (this.#text[this.#at++] === ']') return result; // else ','
    }
  }

  #string(): string {
    const text = this.#text;
    const start = this.#at;
    let at = start + 1;
    while (text.charCodeAt(at) !== 0x22) at += text.charCodeAt(at) === 0x5c ? 2 : 1;
    this.#at = at + 1;
    return JSON.parse(text.slice(start, at + 1)) as string; // JSON's own unescaping, exactly
  }

  #literal<T>(word: string, value: T): T {
    this.#at += word.length;
    return value;
  }

  #number(): number | bigint {
    const text = this.#text;
    const start = this.#at;
    let at = start;
    while (at < text.length && '+-.eE0123456789'.includes(text[at] as string)) at++;
    this.#at = at;
    const token = text.slice(start, at);
    return INTEGER.test(token) ? BigInt(token) : Number(token);
  }
}
