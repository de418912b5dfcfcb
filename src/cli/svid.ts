// `ambit svid`: shows what a certificate file holds (inspect) and verifies an X.509-SVID chain against a
// trust bundle the way a peer would (verify). Reading and judging are pure functions; run() only wires
// files and output to them.
import * as crypto from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { AmbitError, toAmbitError } from '../errors.ts';
// First of the identity modules: it loads @peculiar/x509 the one way that works (polyfill, provider).
import * as x509 from '../identity/x509.ts';
import { decodeBundleText } from '../identity/bundle.ts';
import type { TrustBundle } from '../identity/bundle.ts';
import { validateTrustDomain } from '../identity/spiffe-id.ts';
import { checkLeafRules, fingerprintOf, parseCertificates, spiffeIdOf, verifySvid } from '../identity/svid.ts';
import type { BundleSource, Certificate } from '../identity/svid.ts';
import { formatSpan } from '../identity/timers.ts';
import { parse, requireString } from './args.ts';
import type { Command } from './args.ts';

/**
 * Certificate chains and bundles are kilobytes (a large public-CA bundle is ~250 KB); the bound keeps a
 * wrong path (a disk image, /dev/zero) from being read whole.
 */
const MAX_INPUT_BYTES = 4 * 1024 * 1024;
const READ_CHUNK_BYTES = 64 * 1024;

/**
 * The bundle file is decoded under this name only when no trust domain is known (no --trust-domain and a
 * leaf without a usable SPIFFE ID): decoding still proves the file is a bundle, and verification then fails
 * on the leaf's ID before any bundle is consulted. `.invalid` is reserved (RFC 2606), so it names no one.
 */
const UNNAMED_TRUST_DOMAIN = 'unnamed.invalid';

const help = `usage: ambit svid inspect [--json] FILE
       ambit svid verify --bundle FILE [--trust-domain TD] [--at TIME] CERT

Looks at X.509-SVIDs (SPIFFE X509-SVID) the way a peer sees them.

ambit svid inspect [--json] FILE
  Prints each certificate in FILE (PEM with any number of CERTIFICATE blocks, or one DER certificate):
  SPIFFE ID (or the code saying why it has none), role (leaf, intermediate CA, root CA), subject,
  issuer, serial, validity (notBefore -> notAfter, and how long until or since expiry, from now), key
  type, basic constraints, key usage, extended key usage, every subjectAltName as encoded, and SHA-256
  fingerprint. Then one line judging the first certificate by the leaf SVID rules (X509-SVID §4, §5.2).
  Signatures and trust are not checked: use \`ambit svid verify\` for that.
    --json               print the same as one JSON object
  Exit 0 when FILE holds certificates; 2 when it cannot be read or holds none.

ambit svid verify --bundle FILE [--trust-domain TD] [--at TIME] CERT
  Verifies CERT (the leaf, then any intermediates, PEM or DER) as a peer holding the bundle would:
  the leaf rules, then a signature path to a root of the bundle of the leaf's own trust domain.
    --bundle FILE        trust bundle: PEM CA certificates, or a SPIFFE bundle (JSON JWK set)
    --trust-domain TD    the trust domain the bundle belongs to (a bundle file does not name it).
                         Without it, the bundle is taken to be the bundle of the trust domain in the
                         leaf's SPIFFE ID. With it, a leaf of any other trust domain is rejected as
                         TRUST_DOMAIN_UNKNOWN: there is no bundle for that domain (a leaf's own faults,
                         expiry among them, are checked first and reported instead).
                         Either way, a root whose own SPIFFE ID names another trust domain counts only
                         for that domain: it never vouches for the leaf's (TRUST_DOMAIN_MISMATCH).
    --at TIME            judge validity periods as of TIME instead of now: RFC 3339 with an offset,
                         e.g. 2026-11-23T10:00:00Z or 2026-11-23T12:00:00+02:00
  Prints one JSON line: {"valid":true|false,"spiffeId":ID|null,"error":{"code":...,"message":...}|null}
  (spiffeId is the leaf's ID whenever it parses, even when the SVID is invalid).
  Exit 0 valid, 1 invalid; 2 for bad usage, an unreadable file, a CERT that holds no certificate or a
  bundle file that is not a bundle (then one line on stderr naming the file and the code, no JSON).
`;

export const command: Command = {
  summary: 'inspect a certificate file, or verify an X.509-SVID against a trust bundle',
  help,
  async run(argv) {
    const [subcommand, ...rest] = argv;
    if (subcommand === 'inspect') return inspectCommand(rest);
    if (subcommand === 'verify') return verifyCommand(rest);
    if (subcommand === undefined) throw new AmbitError('USAGE', 'missing subcommand: inspect or verify');
    throw new AmbitError('USAGE', `unknown subcommand ${JSON.stringify(subcommand)} (subcommands: inspect, verify)`);
  },
};

// ---------------------------------------------------------------------------------------------
// inspect

function inspectCommand(argv: string[]): number {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' } });
  const path = onePositional(positionals, 'inspect', 'FILE');
  const chain = readCertificateFile(path);
  const report = inspectChain(chain, new Date());
  process.stdout.write(values.json === true ? JSON.stringify({ file: path, ...report }) + '\n' : renderInspection(path, report));
  return 0;
}

export type Role = 'leaf' | 'intermediate CA' | 'root CA';

interface CodedError {
  code: string;
  message: string;
}

export interface SubjectAltName {
  /** otherName, email, DNS, x400Address, dirName, ediPartyName, URI, IP, registeredID (RFC 5280 4.2.1.6). */
  type: string;
  value: string;
}

export interface CertificateReport {
  /** Position in the file, from 1. */
  index: number;
  role: Role;
  spiffeId: string | null;
  /** Why spiffeId is null. */
  spiffeIdError: CodedError | null;
  subject: string;
  issuer: string;
  serialNumber: string;
  notBefore: string;
  notAfter: string;
  validity: { status: 'valid' | 'expired' | 'not yet valid'; relative: string };
  keyType: string;
  /** null when the extension is absent. */
  basicConstraints: { ca: boolean; pathLength: number | null; critical: boolean } | null;
  keyUsage: { usages: string[]; critical: boolean } | null;
  extKeyUsage: { usages: string[]; critical: boolean } | null;
  subjectAltNames: SubjectAltName[];
  sha256Fingerprint: string;
}

export interface InspectReport {
  checkedAt: string;
  certificates: CertificateReport[];
  /** The first certificate judged by the leaf SVID rules alone (no bundle, no signatures). */
  leafRules: { ok: boolean; spiffeId: string | null; error: CodedError | null };
}

/** Everything inspect shows, as data: the text and JSON outputs both render this. */
export function inspectChain(chain: readonly Certificate[], now: Date): InspectReport {
  const certificates: CertificateReport[] = [];
  for (let i = 0; i < chain.length; i++) certificates.push(describeCertificate(chain[i] as Certificate, i + 1, now));
  return { checkedAt: now.toISOString(), certificates, leafRules: judgeLeaf(chain[0] as Certificate) };
}

function describeCertificate(cert: Certificate, index: number, now: Date): CertificateReport {
  const id = spiffeIdOf(cert);
  let node: crypto.X509Certificate | null = null;
  try {
    node = new crypto.X509Certificate(Buffer.from(cert.rawData));
  } catch {
    // Node's parser (OpenSSL) is stricter than @peculiar/x509's in places; the fields it feeds say so.
  }
  const basicConstraints = readExtension(() => {
    const ext = cert.getExtension(x509.BasicConstraintsExtension);
    return ext ? { ca: ext.ca, pathLength: ext.pathLength ?? null, critical: ext.critical } : null;
  });
  return {
    index,
    role: roleOf(basicConstraints?.ca === true, node),
    spiffeId: id instanceof AmbitError ? null : id.id,
    spiffeIdError: id instanceof AmbitError ? coded(id) : null,
    subject: cert.subject,
    issuer: cert.issuer,
    serialNumber: cert.serialNumber,
    notBefore: cert.notBefore.toISOString(),
    notAfter: cert.notAfter.toISOString(),
    validity: validityOf(cert.notBefore, cert.notAfter, now),
    keyType: node === null ? 'unreadable by node:crypto' : keyTypeOf(node),
    basicConstraints,
    keyUsage: readExtension(() => {
      const ext = cert.getExtension(x509.KeyUsagesExtension);
      return ext ? { usages: keyUsageNames(ext.usages), critical: ext.critical } : null;
    }),
    extKeyUsage: readExtension(() => {
      const ext = cert.getExtension(x509.ExtendedKeyUsageExtension);
      return ext ? { usages: ext.usages.map((usage) => EKU_NAMES.get(String(usage)) ?? String(usage)), critical: ext.critical } : null;
    }),
    subjectAltNames: subjectAltNamesOf(cert),
    sha256Fingerprint: safely(() => fingerprintOf(cert), node?.fingerprint256 ?? 'unavailable'),
  };
}

/** A malformed extension is shown as unreadable rather than ending the inspection of everything else. */
function readExtension<T>(read: () => T | null): T | null {
  try {
    return read();
  } catch {
    return null;
  }
}

function safely<T>(read: () => T, fallback: T): T {
  try {
    return read();
  } catch {
    return fallback;
  }
}

function coded(error: AmbitError): CodedError {
  return { code: error.code, message: error.message };
}

function roleOf(isCa: boolean, node: crypto.X509Certificate | null): Role {
  if (!isCa) return 'leaf';
  const selfSigned = node !== null && safely(() => node.checkIssued(node) && node.verify(node.publicKey), false);
  return selfSigned ? 'root CA' : 'intermediate CA';
}

function judgeLeaf(leaf: Certificate): InspectReport['leafRules'] {
  const id = spiffeIdOf(leaf);
  if (id instanceof AmbitError) return { ok: false, spiffeId: null, error: coded(id) };
  let error: AmbitError | null;
  try {
    error = checkLeafRules(leaf, id);
  } catch (thrown) {
    error = toAmbitError(thrown, 'SVID_PARSE');
  }
  return { ok: error === null, spiffeId: id.id, error: error === null ? null : coded(error) };
}

/** Same boundaries as verification: expired strictly after notAfter, not yet valid strictly before notBefore. */
export function validityOf(notBefore: Date, notAfter: Date, now: Date): CertificateReport['validity'] {
  const nowMs = now.getTime();
  if (nowMs > notAfter.getTime()) return { status: 'expired', relative: `EXPIRED ${formatSpan(nowMs - notAfter.getTime())} ago` };
  if (nowMs < notBefore.getTime()) {
    return { status: 'not yet valid', relative: `NOT YET VALID: starts in ${formatSpan(notBefore.getTime() - nowMs)}` };
  }
  return { status: 'valid', relative: `expires in ${formatSpan(notAfter.getTime() - nowMs)}` };
}

const CURVE_NAMES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' };

function keyTypeOf(node: crypto.X509Certificate): string {
  try {
    const key = node.publicKey;
    const details = key.asymmetricKeyDetails ?? {};
    switch (key.asymmetricKeyType) {
      case 'ec':
        return `EC ${CURVE_NAMES[details.namedCurve ?? ''] ?? details.namedCurve ?? 'unknown curve'}`;
      case 'rsa':
        return `RSA ${details.modulusLength ?? '?'} bits`;
      case 'rsa-pss':
        return `RSA-PSS ${details.modulusLength ?? '?'} bits`;
      case 'ed25519':
        return 'Ed25519';
      case 'ed448':
        return 'Ed448';
      default:
        return key.asymmetricKeyType ?? 'unknown';
    }
  } catch (error) {
    return `unreadable (${(error as Error).message})`;
  }
}

const KEY_USAGE_ORDER = [
  'digitalSignature',
  'nonRepudiation',
  'keyEncipherment',
  'dataEncipherment',
  'keyAgreement',
  'keyCertSign',
  'cRLSign',
  'encipherOnly',
  'decipherOnly',
] as const;

function keyUsageNames(usages: number): string[] {
  const names: string[] = [];
  for (const name of KEY_USAGE_ORDER) if ((usages & x509.KeyUsageFlags[name]) !== 0) names.push(name);
  return names;
}

const EKU_NAMES = new Map<string, string>(Object.entries(x509.ExtendedKeyUsage).map(([name, oid]) => [oid, name]));

// ---------------------------------------------------------------------------------------------
// subjectAltName, read straight from the DER
//
// @peculiar/x509 drops GeneralNames it does not model (otherName of an unknown type, x400Address,
// ediPartyName) without a trace, and Node's subjectAltName string is a rendering, not the encoding. An
// inspector must show everything the certificate says, so this walks the extension's GeneralNames itself.

const SAN_OID = '2.5.29.17';
const GENERAL_NAME_TYPES = ['otherName', 'email', 'DNS', 'x400Address', 'dirName', 'ediPartyName', 'URI', 'IP', 'registeredID'] as const;

function subjectAltNamesOf(cert: Certificate): SubjectAltName[] {
  const names: SubjectAltName[] = [];
  for (const extension of cert.extensions) {
    if (extension.type !== SAN_OID) continue;
    const bytes = new Uint8Array(extension.value);
    try {
      names.push(...decodeGeneralNames(bytes));
    } catch (error) {
      names.push({ type: 'unparseable', value: `${(error as Error).message}: ${hex(bytes)}` });
    }
  }
  return names;
}

interface Tlv {
  /** The identifier octet: class, constructed bit and (low) tag number. */
  identifier: number;
  contentStart: number;
  end: number;
}

/** One DER TLV at `offset`, bounded by `limit`; throws on anything that is not definite-length DER. */
function readTlv(bytes: Uint8Array, offset: number, limit: number): Tlv {
  if (offset + 2 > limit) throw new Error('truncated DER');
  const identifier = bytes[offset] as number;
  if ((identifier & 0x1f) === 0x1f) throw new Error('high tag numbers are not used in GeneralNames');
  const first = bytes[offset + 1] as number;
  let length = first;
  let contentStart = offset + 2;
  if (first >= 0x80) {
    const lengthBytes = first & 0x7f;
    if (lengthBytes === 0 || lengthBytes > 4) throw new Error('indefinite or oversized DER length');
    if (contentStart + lengthBytes > limit) throw new Error('truncated DER');
    length = 0;
    for (let i = 0; i < lengthBytes; i++) length = length * 256 + (bytes[contentStart + i] as number);
    contentStart += lengthBytes;
  }
  const end = contentStart + length;
  if (end > limit) throw new Error('truncated DER');
  return { identifier, contentStart, end };
}

export function decodeGeneralNames(bytes: Uint8Array): SubjectAltName[] {
  const outer = readTlv(bytes, 0, bytes.length);
  if (outer.identifier !== 0x30) throw new Error('GeneralNames is not a SEQUENCE');
  const names: SubjectAltName[] = [];
  for (let offset = outer.contentStart; offset < outer.end; ) {
    const tlv = readTlv(bytes, offset, outer.end);
    names.push(decodeGeneralName(bytes, tlv));
    offset = tlv.end;
  }
  return names;
}

function decodeGeneralName(bytes: Uint8Array, tlv: Tlv): SubjectAltName {
  const content = bytes.subarray(tlv.contentStart, tlv.end);
  const tagNumber = tlv.identifier & 0x1f;
  const type = (tlv.identifier & 0xc0) === 0x80 ? GENERAL_NAME_TYPES[tagNumber] : undefined;
  if (type === undefined) return { type: `unknown tag 0x${tlv.identifier.toString(16)}`, value: hex(content) };
  switch (tagNumber) {
    case 1: // rfc822Name, dNSName, uniformResourceIdentifier: IA5String, shown byte for byte
    case 2:
    case 6:
      return { type, value: Buffer.from(content).toString('latin1') };
    case 7:
      return { type, value: formatIpAddress(content) };
    case 8:
      return { type, value: decodeOid(content) };
    case 0:
      return { type, value: decodeOtherName(content) };
    case 4:
      return { type, value: safely(() => new x509.Name(bytesOfTlv(content)).toString(), hex(content)) };
    default:
      return { type, value: hex(content) };
  }
}

/** directoryName is EXPLICIT: its content is one whole Name TLV. */
function bytesOfTlv(content: Uint8Array): Uint8Array {
  const inner = readTlv(content, 0, content.length);
  return content.subarray(0, inner.end);
}

/** otherName ::= SEQUENCE { type-id OID, value [0] EXPLICIT ANY }, shown as OID=value. */
function decodeOtherName(content: Uint8Array): string {
  try {
    const oid = readTlv(content, 0, content.length);
    if (oid.identifier !== 0x06) throw new Error('no type-id');
    const wrapper = readTlv(content, oid.end, content.length);
    const value = readTlv(content, wrapper.contentStart, wrapper.end);
    const valueBytes = content.subarray(value.contentStart, value.end);
    // UTF8String, PrintableString, IA5String, VisibleString: show the text; anything else as hex.
    const text = value.identifier === 0x0c ? Buffer.from(valueBytes).toString('utf8') : [0x13, 0x16, 0x1a].includes(value.identifier) ? Buffer.from(valueBytes).toString('latin1') : null;
    return `${decodeOid(content.subarray(oid.contentStart, oid.end))}=${text === null ? hex(content.subarray(wrapper.contentStart, wrapper.end)) : JSON.stringify(text)}`;
  } catch {
    return hex(content);
  }
}

export function decodeOid(content: Uint8Array): string {
  const arcs: bigint[] = [];
  let value = 0n;
  for (const byte of content) {
    value = (value << 7n) | BigInt(byte & 0x7f);
    if ((byte & 0x80) === 0) {
      arcs.push(value);
      value = 0n;
    }
  }
  if (arcs.length === 0 || (content.length > 0 && ((content[content.length - 1] as number) & 0x80) !== 0)) return `malformed OID ${hex(content)}`;
  const first = arcs[0] as bigint;
  const head = first < 40n ? [0n, first] : first < 80n ? [1n, first - 40n] : [2n, first - 80n];
  return [...head, ...arcs.slice(1)].join('.');
}

/** IPv4 dotted, IPv6 in RFC 5952 form; other lengths (address/mask pairs belong in name constraints) as hex. */
export function formatIpAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return Array.from(bytes).join('.');
  if (bytes.length !== 16) return hex(bytes);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] as number) << 8) | (bytes[i + 1] as number));
  // RFC 5952 §4.2: the longest run of two or more zero groups (the first if tied) becomes "::".
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const text = groups.map((group) => group.toString(16));
  if (bestStart < 0) return text.join(':');
  return `${text.slice(0, bestStart).join(':')}::${text.slice(bestStart + bestLength).join(':')}`;
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

// ---------------------------------------------------------------------------------------------
// inspect's text rendering

/**
 * Certificate fields are attacker-chosen text: control, format and line-separator characters are shown
 * escaped, so a SAN or subject cannot forge extra output lines or move the terminal cursor.
 */
export function printable(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\u2028\u2029]/gu, (char) => `\\u{${(char.codePointAt(0) as number).toString(16)}}`);
}

function renderInspection(path: string, report: InspectReport): string {
  const count = report.certificates.length;
  const lines = [`${printable(path)}: ${count} certificate${count === 1 ? '' : 's'} (times relative to ${report.checkedAt})`];
  for (const cert of report.certificates) {
    lines.push('', `#${cert.index} ${cert.role}`);
    const field = (name: string, value: string) => lines.push(`  ${`${name}:`.padEnd(16)}${value}`);
    field('SPIFFE ID', cert.spiffeId !== null ? cert.spiffeId : `none [${cert.spiffeIdError?.code}] ${printable(cert.spiffeIdError?.message ?? '')}`);
    field('subject', printable(cert.subject) || '(empty)');
    field('issuer', printable(cert.issuer) || '(empty)');
    field('serial', cert.serialNumber);
    field('validity', `${cert.notBefore} -> ${cert.notAfter} (${cert.validity.relative})`);
    field('key', cert.keyType);
    const basic = cert.basicConstraints;
    field('constraints', basic === null ? 'none (extension absent)' : `cA=${basic.ca}${basic.pathLength === null ? '' : `, pathLen ${basic.pathLength}`}${basic.critical ? ' (critical)' : ''}`);
    field('key usage', usageText(cert.keyUsage));
    field('ext key usage', usageText(cert.extKeyUsage));
    if (cert.subjectAltNames.length === 0) field('SANs', 'none');
    for (const san of cert.subjectAltNames) field('SAN', `${san.type}:${printable(san.value)}`);
    field('SHA-256', cert.sha256Fingerprint);
  }
  const rules = report.leafRules;
  lines.push(
    '',
    rules.ok
      ? `leaf SVID rules: ok for ${rules.spiffeId} (signatures and trust not checked: use \`ambit svid verify --bundle\`)`
      : `leaf SVID rules: FAILED [${rules.error?.code}] ${printable(rules.error?.message ?? '')}`,
  );
  return lines.join('\n') + '\n';
}

function usageText(usage: { usages: string[]; critical: boolean } | null): string {
  if (usage === null) return 'none (extension absent)';
  return `${usage.usages.length === 0 ? '(empty)' : usage.usages.join(', ')}${usage.critical ? ' (critical)' : ''}`;
}

// ---------------------------------------------------------------------------------------------
// verify

function verifyCommand(argv: string[]): number {
  // Phase 1: the whole command line, before touching a file.
  const { values, positionals } = parse(argv, {
    bundle: { type: 'string' },
    'trust-domain': { type: 'string' },
    at: { type: 'string' },
  });
  const certPath = onePositional(positionals, 'verify', 'CERT');
  const bundlePath = requireString(values.bundle, 'bundle');
  const at = values.at === undefined ? undefined : parseRfc3339(values.at, 'at');
  const givenTrustDomain = values['trust-domain'] === undefined ? null : checkTrustDomainFlag(values['trust-domain']);

  // Phase 2: inputs. Anything unreadable here is bad input (exit 2), not an invalid SVID.
  const chain = readCertificateFile(certPath);
  const leafId = spiffeIdOf(chain[0] as Certificate);
  const bundleTrustDomain = givenTrustDomain ?? (leafId instanceof AmbitError ? null : leafId.trustDomain);
  const bundle = readBundleFile(bundlePath, bundleTrustDomain ?? UNNAMED_TRUST_DOMAIN);

  // Phase 3: the decision, and one JSON line.
  const source: BundleSource = bundleTrustDomain === null ? NO_BUNDLES : bundleSourceFor(bundle, bundleTrustDomain);
  const result = verifySvid(chain, source, at === undefined ? {} : { at });
  const spiffeId = result.id?.id ?? (leafId instanceof AmbitError ? null : leafId.id);
  const error = result.error === null ? null : { code: result.error.code, message: result.error.message };
  process.stdout.write(JSON.stringify({ valid: result.valid, spiffeId, error }) + '\n');
  return result.valid ? 0 : 1;
}

const NO_BUNDLES: BundleSource = { get: () => undefined };

/**
 * The bundles verification may use, from one bundle file taken to be `trustDomain`'s. A root whose own
 * SPIFFE ID names another trust domain (X509-SVID §3.2: a CA's ID is its trust domain's) belongs to that
 * domain: otherwise a file of B's roots, read as A's bundle, would let B's CA vouch for spiffe://A/...,
 * exactly the pooling Federation §4.2 forbids. Such roots are offered to verifySvid only through
 * iteration, which it uses to name the foreign signer (TRUST_DOMAIN_MISMATCH); `get` never returns them.
 */
export function bundleSourceFor(bundle: TrustBundle, trustDomain: string): BundleSource {
  const own: Certificate[] = [];
  const foreign = new Map<string, Certificate[]>();
  for (const root of bundle.roots) {
    const id = spiffeIdOf(root);
    const rootDomain = id instanceof AmbitError || id.path !== '' ? trustDomain : id.trustDomain;
    if (rootDomain === trustDomain) {
      own.push(root);
      continue;
    }
    const list = foreign.get(rootDomain);
    if (list) list.push(root);
    else foreign.set(rootDomain, [root]);
  }
  const ownBundle: TrustBundle = { ...bundle, trustDomain, roots: own };
  const all: TrustBundle[] = [ownBundle];
  for (const [domain, roots] of foreign) all.push({ ...bundle, trustDomain: domain, roots });
  return {
    get: (name: string) => (name === trustDomain ? ownBundle : undefined),
    [Symbol.iterator]: () => all[Symbol.iterator](),
  };
}

function checkTrustDomainFlag(name: string): string {
  try {
    return validateTrustDomain(name);
  } catch (error) {
    const coded = toAmbitError(error, 'USAGE');
    throw new AmbitError(coded.code, `--trust-domain: ${coded.message}`, { cause: error });
  }
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * RFC 3339 §5.6 date-time, which always carries its offset: a time without one would silently mean the
 * machine's zone. Fields are range-checked here because Date would roll 2026-02-30 over to March.
 * A leap second (:60) is refused: Date cannot represent it.
 */
export function parseRfc3339(text: string, flag: string): Date {
  const match = RFC3339.exec(text);
  const bad = () => new AmbitError('USAGE', `--${flag}: ${JSON.stringify(text)} is not an RFC 3339 time with offset (example: 2026-11-23T10:00:00Z)`);
  if (!match) throw bad();
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const fraction = match[7] ?? '';
  const sign = match[8] === '-' ? -1 : 1;
  const offsetHours = Number(match[9] ?? 0);
  const offsetMinutes = Number(match[10] ?? 0);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month) || hour > 23 || minute > 59 || second > 59 || offsetHours > 23 || offsetMinutes > 59) {
    throw bad();
  }
  const date = new Date(0);
  // setUTCFullYear, not Date.UTC: Date.UTC maps years 0–99 to 1900–1999.
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, Number(fraction.slice(0, 3).padEnd(3, '0')));
  return new Date(date.getTime() - sign * (offsetHours * 60 + offsetMinutes) * 60_000);
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

// ---------------------------------------------------------------------------------------------
// Files

function onePositional(positionals: string[], subcommand: string, name: string): string {
  if (positionals.length === 0) throw new AmbitError('USAGE', `${subcommand}: missing ${name}`);
  if (positionals.length > 1) throw new AmbitError('USAGE', `${subcommand}: one ${name} expected, got ${positionals.length} (${positionals.join(' ')})`);
  return positionals[0] as string;
}

function readBounded(path: string, what: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    throw readError(path, what, error);
  }
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    while (true) {
      const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
      const read = readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) break;
      total += read;
      if (total > MAX_INPUT_BYTES) throw new AmbitError('FILE_READ', `${what} ${path} is larger than ${MAX_INPUT_BYTES} bytes: not a certificate or bundle file`);
      chunks.push(chunk.subarray(0, read));
    }
    return Buffer.concat(chunks, total);
  } catch (error) {
    if (error instanceof AmbitError) throw error;
    throw readError(path, what, error);
  } finally {
    closeSync(fd);
  }
}

function readError(path: string, what: string, error: unknown): AmbitError {
  // Node's message repeats the path ("ENOENT: no such file or directory, open 'x'"); keep the reason.
  const reason = (error as Error).message.replace(/, \w+ '.*'$/s, '');
  return new AmbitError('FILE_READ', `cannot read ${what} ${path}: ${reason}`, { cause: error });
}

/** PEM when the file has a PEM header anywhere, else exactly one DER certificate. */
function readCertificateFile(path: string): Certificate[] {
  const bytes = readBounded(path, 'certificate file');
  if (bytes.includes('-----BEGIN ')) return parseCertificates(bytes.toString('utf8'), `certificate file ${path}`);
  // @peculiar/x509 would take bytes that are not one DER SEQUENCE for hex or base64 text, or ignore what
  // follows the certificate; a file is a certificate only if it is one, exactly.
  const der = new Uint8Array(bytes);
  const whole = der[0] === 0x30 ? safely(() => readTlv(der, 0, der.length).end === der.length, false) : false;
  if (!whole) throw new AmbitError('SVID_PARSE', `certificate file ${path}: neither PEM (no "-----BEGIN" line) nor one DER certificate`);
  return parseCertificates(der, `certificate file ${path}`);
}

function readBundleFile(path: string, trustDomain: string): TrustBundle {
  const text = readBounded(path, 'bundle file').toString('utf8');
  let bundle: TrustBundle;
  try {
    bundle = decodeBundleText(trustDomain, text);
  } catch (error) {
    const coded = toAmbitError(error, 'BUNDLE_INVALID');
    throw new AmbitError(coded.code, `bundle file ${path}: ${coded.message}`, { cause: error });
  }
  // decodePemBundle reads blank text, or PEM with only other blocks (a key), as an empty bundle. Named on a
  // command line, such a file is a mistake (the key instead of the CA), not a revocation of every root;
  // a JSON bundle with "keys": [] says so explicitly and is taken at its word.
  if (bundle.roots.length === 0 && !text.trimStart().startsWith('{')) {
    throw new AmbitError('BUNDLE_INVALID', `bundle file ${path} holds no CERTIFICATE block`);
  }
  return bundle;
}
