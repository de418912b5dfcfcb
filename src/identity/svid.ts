// X.509-SVIDs: key generation, CSRs, issuing leaf and CA certificates, and strict verification
// against the bundle of the trust domain the leaf names (SPIFFE X509-SVID §4–§5).
//
// Verification is synchronous: extensions are read with @peculiar/x509 (exact DER, never Node's
// rendered subjectAltName string), signatures are checked with node:crypto, so a TLS callback can call
// it without awaiting. Parsed node:crypto views are cached per certificate object.
import * as crypto from 'node:crypto';
import * as x509 from './x509.ts';
import { AmbitError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';
import { tryParseSpiffeId, parseSpiffeId, trustDomainId } from './spiffe-id.ts';
import { keyFacts, signatureProblemOf } from './crypto-policy.ts';
import type { SpiffeId } from './spiffe-id.ts';
import type { TrustBundle } from './bundle.ts';


export type Certificate = x509.X509Certificate;

/** SPIRE's NotBeforeCushion: backdate so peers with a slightly slow clock accept a fresh certificate. */
export const NOT_BEFORE_CUSHION_MS = 10_000;
/**
 * A CA certificate is backdated an hour: every node judges a new root (`ca init`, a root rotation) by its own clock,
 * and a node behind the CA's refused every chain through it until its clock caught up.
 */
const CA_NOT_BEFORE_CUSHION_MS = 3_600_000;
/** A chain longer than this is refused outright: real meshes use root → intermediate → leaf. */
export const MAX_CHAIN_DEPTH = 8;
/**
 * The largest RSA modulus a presented intermediate may have. Path building checks a presented CA's signature
 * against each candidate before anything is trusted: an unauthenticated peer must not make each check cost
 * milliseconds with RSA-16384 keys.
 */
const MAX_CA_RSA_BITS = 4096;
/**
 * Signature checks one verification may make while building paths. A real chain needs one per certificate (a few
 * more with several roots); a peer presenting same-named CAs in the worst order would otherwise buy about n²/2 of
 * them, again for every other trust domain's bundle when the message names the domain that signed it.
 */
const MAX_SIGNATURE_CHECKS = 32;
const SIGNING_ALGORITHM: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const KEY_ALGORITHM: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };

// ---------------------------------------------------------------------------------------------
// Keys and encodings

export async function generateKeyPair(): Promise<CryptoKeyPair> {
  return (await globalThis.crypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = await globalThis.crypto.subtle.exportKey('pkcs8', key);
  // Ending in a newline: `cat key.pem cert.pem` and the node SVID's one file must not run two armour lines together,
  // which OpenSSL (and curl, HAProxy, nginx) cannot read.
  return x509.PemConverter.encode(der, 'PRIVATE KEY') + '\n';
}

/** Imports a PKCS#8 P-256 private key (PEM) for signing, and derives its public key. */
export async function importPrivateKeyPem(pem: string, what = 'private key'): Promise<CryptoKeyPair> {
  let keyObject: crypto.KeyObject;
  try {
    keyObject = crypto.createPrivateKey(pem);
  } catch (error) {
    throw new AmbitError('SVID_PARSE', `${what}: not a PEM private key (${(error as Error).message})`, { cause: error });
  }
  if (keyObject.asymmetricKeyType !== 'ec' || keyObject.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new AmbitError('SVID_PARSE', `${what}: ambit keys are ECDSA P-256, got ${keyObject.asymmetricKeyType ?? 'unknown'}`);
  }
  const pkcs8 = keyObject.export({ format: 'der', type: 'pkcs8' });
  const spki = crypto.createPublicKey(keyObject).export({ format: 'der', type: 'spki' });
  const subtle = globalThis.crypto.subtle;
  const privateKey = await subtle.importKey('pkcs8', pkcs8, KEY_ALGORITHM, true, ['sign']);
  const publicKey = await subtle.importKey('spki', spki, KEY_ALGORITHM, true, ['verify']);
  return { privateKey, publicKey };
}

/** Parses one or more certificates from PEM (any number of CERTIFICATE blocks) or a single DER. */
export function parseCertificates(input: string | Uint8Array, what = 'certificate'): Certificate[] {
  try {
    if (typeof input === 'string') {
      const blocks = x509.PemConverter.decodeWithHeaders(input).filter((block) => block.type === 'CERTIFICATE');
      if (blocks.length === 0) throw new Error('no CERTIFICATE PEM block found');
      return blocks.map((block) => new x509.X509Certificate(block.rawData));
    }
    return [new x509.X509Certificate(input)];
  } catch (error) {
    if (error instanceof AmbitError) throw error;
    throw new AmbitError('SVID_PARSE', `${what}: ${(error as Error).message}`, { cause: error });
  }
}

export function certificatesToPem(certs: readonly Certificate[]): string {
  return certs.map((cert) => cert.toString('pem')).join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Reading certificates

/** The SPIFFE ID in a certificate's URI SAN, or the reason there is none usable. */
export function spiffeIdOf(cert: Certificate): SpiffeId | AmbitError {
  const uris = uriSans(cert);
  if (uris instanceof AmbitError) return uris;
  if (uris.length === 0) return new AmbitError('SVID_NO_URI_SAN', `certificate ${describe(cert)} has no URI SAN`);
  if (uris.length > 1) {
    return new AmbitError('SVID_MULTIPLE_URI_SANS', `certificate ${describe(cert)} has ${uris.length} URI SANs (${uris.map((u) => JSON.stringify(u)).join(', ')}); an SVID has exactly one`);
  }
  return tryParseSpiffeId(uris[0] as string);
}

function uriSans(cert: Certificate): string[] | AmbitError {
  let extensions: x509.SubjectAlternativeNameExtension[];
  try {
    extensions = cert.getExtensions(x509.SubjectAlternativeNameExtension);
  } catch (error) {
    return new AmbitError('SVID_PARSE', `certificate ${describe(cert)}: unreadable subjectAltName (${(error as Error).message})`);
  }
  const uris: string[] = [];
  for (const extension of extensions) {
    for (const name of extension.names.items) if (name.type === 'url') uris.push(name.value);
  }
  return uris;
}

/** The DNS names among a certificate's subjectAltNames, from its DER (never Node's rendered string); [] when unreadable. */
export function dnsSansOf(cert: Certificate): string[] {
  const names: string[] = [];
  try {
    for (const extension of cert.getExtensions(x509.SubjectAlternativeNameExtension)) {
      for (const name of extension.names.items) if (name.type === 'dns') names.push(name.value);
    }
  } catch {
    // A verified SVID's extension is readable; an unreadable one names nothing here.
  }
  return names;
}

function describe(cert: Certificate): string {
  return `serial ${cert.serialNumber} (subject "${cert.subject}")`;
}

interface CertFacts {
  readonly node: crypto.X509Certificate;
  readonly isCa: boolean;
  readonly pathLength: number | undefined;
  /** undefined = no keyUsage extension. */
  readonly keyUsage: { usages: number; critical: boolean } | undefined;
  readonly extKeyUsage: readonly string[] | undefined;
  readonly fingerprint: string;
  /** The trust domain of the certificate's single SPIFFE URI SAN, or null when it carries none. */
  readonly spiffeTrustDomain: string | null;
  /** The first critical extension not evaluated here (OID), which RFC 5280 §4.2 says to refuse; undefined for none. */
  readonly unhandledCritical: string | undefined;
  /** Whether it carries name constraints on URIs (or unreadable ones), which are not evaluated: a CA with them is refused. */
  readonly nameConstraints: boolean;
  /** Why its public key is refused (type, curve, size, exponent), for a key at most MAX_ROOT_RSA_BITS; undefined when accepted. */
  readonly keyProblem: string | undefined;
  /** RSA modulus bits, 0 for other keys. */
  readonly rsaBits: number;
  /** Why the signature on it is refused (a broken hash), undefined when accepted; roots' self-signatures are not checked. */
  readonly signatureProblem: string | undefined;
  /** SHA-256 of its SubjectPublicKeyInfo (hex), computed when first asked (roots only). */
  publicKeyId?: string;
}

const NAME_CONSTRAINTS_OID = '2.5.29.30';

/**
 * Whether a NameConstraints value (RFC 5280 §4.2.1.10) constrains URIs: a permitted or excluded subtree whose base is
 * a uniformResourceIdentifier ([6]). Those would decide which SPIFFE IDs the CA may sign, and are not evaluated, so a
 * CA with them is refused; constraints on DNS names, addresses or mailboxes leave SPIFFE IDs alone (a corporate root
 * limited to its DNS domains). Unreadable DER counts as constraining.
 */
function constrainsUris(der: Uint8Array): boolean {
  // SEQUENCE { [0] GeneralSubtrees OPTIONAL, [1] GeneralSubtrees OPTIONAL }; GeneralSubtree ::= SEQUENCE { base, ... }.
  const outer = derChildren(der, 0, der.length);
  if (outer === null || outer.length !== 1 || der[0] !== 0x30) return true;
  const subtreeLists = derChildren(der, (outer[0] as DerItem).start, (outer[0] as DerItem).end);
  if (subtreeLists === null) return true;
  for (const list of subtreeLists) {
    if (list.tag !== 0xa0 && list.tag !== 0xa1) return true;
    const subtrees = derChildren(der, list.start, list.end);
    if (subtrees === null) return true;
    for (const subtree of subtrees) {
      if (subtree.tag !== 0x30) return true;
      const parts = derChildren(der, subtree.start, subtree.end);
      if (parts === null || parts.length === 0) return true;
      // [6] IMPLICIT IA5String (primitive), or the same tag constructed.
      if (((parts[0] as DerItem).tag & 0x1f) === 6 && ((parts[0] as DerItem).tag & 0xc0) === 0x80) return true;
    }
  }
  return false;
}

interface DerItem {
  readonly tag: number;
  /** Where its value starts and ends in the buffer. */
  readonly start: number;
  readonly end: number;
}

/** The TLVs that exactly fill der[start, end) (single-byte tags, definite lengths), or null when they do not. */
function derChildren(der: Uint8Array, start: number, end: number): DerItem[] | null {
  const items: DerItem[] = [];
  let at = start;
  while (at < end) {
    if (at + 2 > end) return null;
    const tag = der[at] as number;
    if ((tag & 0x1f) === 0x1f) return null;
    let length = der[at + 1] as number;
    at += 2;
    if (length & 0x80) {
      const bytes = length & 0x7f;
      if (bytes === 0 || bytes > 3 || at + bytes > end) return null;
      length = 0;
      for (let i = 0; i < bytes; i++) length = length * 256 + (der[at + i] as number);
      at += bytes;
    }
    if (at + length > end) return null;
    items.push({ tag, start: at, end: at + length });
    at += length;
  }
  return items;
}

/**
 * Critical extensions a certificate may carry here: those evaluated (basic constraints, key usage, extended key usage,
 * subject alternative name), the policy ones, which restrict policies SPIFFE does not use, and name constraints, of
 * which those on URIs refuse the CA (constrainsUris). Anything else critical fails the chain, as RFC 5280 §4.2
 * requires, rather than be ignored as if it were not there.
 */
const HANDLED_CRITICAL_OIDS: ReadonlySet<string> = new Set(['2.5.29.19', '2.5.29.15', '2.5.29.37', '2.5.29.17', '2.5.29.32', '2.5.29.33', '2.5.29.36', '2.5.29.54', NAME_CONSTRAINTS_OID]);

// Certificates are immutable, so what we derive from one is computed once per object.
const factsCache = new WeakMap<Certificate, CertFacts>();

function facts(cert: Certificate): CertFacts {
  let found = factsCache.get(cert);
  if (found) return found;
  const basic = cert.getExtension(x509.BasicConstraintsExtension);
  const keyUsage = cert.getExtension(x509.KeyUsagesExtension);
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  const node = new crypto.X509Certificate(Buffer.from(cert.rawData));
  let unhandledCritical: string | undefined;
  let nameConstraints = false;
  for (const extension of cert.extensions) {
    if (extension.type === NAME_CONSTRAINTS_OID) {
      nameConstraints ||= constrainsUris(new Uint8Array(extension.value));
      continue;
    }
    if (extension.critical && !HANDLED_CRITICAL_OIDS.has(extension.type)) unhandledCritical ??= extension.type;
  }
  const key = keyFacts(node.publicKey);
  found = {
    unhandledCritical,
    nameConstraints,
    keyProblem: key.problem,
    rsaBits: key.rsaBits,
    signatureProblem: signatureProblemOf(cert),
    node,
    isCa: basic?.ca === true,
    pathLength: basic?.pathLength,
    keyUsage: keyUsage ? { usages: keyUsage.usages, critical: keyUsage.critical } : undefined,
    extKeyUsage: eku ? eku.usages.map(String) : undefined,
    fingerprint: node.fingerprint256,
    spiffeTrustDomain: trustDomainOfSan(cert),
  };
  factsCache.set(cert, found);
  return found;
}

function trustDomainOfSan(cert: Certificate): string | null {
  const uris = uriSans(cert);
  if (uris instanceof AmbitError || uris.length !== 1) return null;
  const id = tryParseSpiffeId(uris[0] as string);
  return id instanceof AmbitError ? null : id.trustDomain;
}

export function fingerprintOf(cert: Certificate): string {
  return facts(cert).fingerprint;
}

/** The key identifier a CA certificate names itself by (subjectKeyIdentifier, hex), or undefined. */
export function subjectKeyIdOf(cert: Certificate): string | undefined {
  return cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId.toLowerCase();
}

/** The key identifier of the CA that signed a certificate (authorityKeyIdentifier, hex), or undefined. */
export function authorityKeyIdOf(cert: Certificate): string | undefined {
  return cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId?.toLowerCase();
}

// ---------------------------------------------------------------------------------------------
// Verification

/** Where verification finds the bundle for a trust domain; BundleSet satisfies it. */
export interface BundleSource {
  get(trustDomain: string): TrustBundle | undefined;
  [Symbol.iterator]?(): Iterator<TrustBundle>;
}

export interface VerifyOptions {
  /** Judge validity periods as of this time (default now). */
  at?: Date;
  /**
   * The verifying node's own trust domain: a root of its bundle that another trust domain's bundle holds too vouches
   * only through CAs that name their trust domain (checkSharedRoot). Without it, no root counts as shared.
   */
  localTrustDomain?: string;
}

export type VerifyResult =
  | {
      readonly valid: true;
      readonly id: SpiffeId;
      readonly error: null;
      /**
       * The earliest end among the certificates of the path that verified it, the bundle's root included: a session
       * or a cached verdict must not outlive it (a root-signed leaf arrives alone, and its root may end first).
       */
      readonly notAfterMs: number;
    }
  | {
      readonly valid: false;
      readonly id: SpiffeId | null;
      readonly error: AmbitError;
      /**
       * Decided from the presented certificates alone, before any trust bundle was read (unreadable, no single
       * SPIFFE ID, a leaf's usages or validity): telling the peer reveals nothing of what this node trusts.
       */
      readonly presentedOnly?: true;
    };

function fail(code: ErrorCode, message: string, id: SpiffeId | null): VerifyResult {
  return { valid: false, id, error: new AmbitError(code, message) };
}

/** A refusal decided from the presented certificates alone (VerifyResult.presentedOnly). */
export function failPresented(error: AmbitError, id: SpiffeId | null): VerifyResult {
  return { valid: false, id, error, presentedOnly: true };
}

/**
 * Verifies a peer's X.509-SVID chain (leaf first, then intermediates) per X509-SVID §5: the leaf's
 * rules, then a signature path to a root of the bundle of the leaf's own trust domain, and only that
 * bundle (a CA of trust domain A can never vouch for an ID in trust domain B). Never throws.
 */
export function verifySvid(chain: readonly Certificate[], bundles: BundleSource, options: VerifyOptions = {}): VerifyResult {
  const leaf = chain[0];
  if (leaf === undefined) return failPresented(new AmbitError('SVID_PARSE', 'empty certificate chain'), null);
  let claimed: SpiffeId | null = null;
  try {
    const parsedId = spiffeIdOf(leaf);
    if (parsedId instanceof AmbitError) return failPresented(parsedId, null);
    const id = parsedId;
    claimed = id;
    const at = options.at ?? new Date();
    // The leaf's validity before its trust domain's bundle: an expired leaf of any trust domain says so, and
    // what it says never depends on which trust domains this node knows.
    const leafError = checkLeafRules(leaf, id) ?? checkValidity(leaf, at, 'leaf', id);
    if (leafError) return failPresented(leafError, id);
    const bundle = bundles.get(id.trustDomain);
    if (bundle === undefined) {
      return fail('TRUST_DOMAIN_UNKNOWN', `${id.id}: no trust bundle for trust domain "${id.trustDomain}"`, id);
    }
    const checks = new SignatureChecks();
    const path = validatePath(chain, bundle, at, id, sharedRootKeys(bundles, options.localTrustDomain), checks);
    if (!(path instanceof AmbitError)) return { valid: true, id, error: null, notAfterMs: path.notAfterMs };
    const pathError = path;
    if (pathError.code === 'SVID_CHAIN_INVALID') {
      const signer = findForeignSigner(chain, bundles, id.trustDomain, at, checks);
      if (signer !== null) {
        return fail('TRUST_DOMAIN_MISMATCH', `${id.id} claims trust domain "${id.trustDomain}" but is signed by a CA of trust domain "${signer}"`, id);
      }
    }
    return { valid: false, id, error: pathError };
  } catch (error) {
    if (error instanceof SignatureBudgetSpent) return fail('SVID_CHAIN_INVALID', `${claimed?.id ?? 'chain'}: no path found within ${MAX_SIGNATURE_CHECKS} signature checks`, claimed);
    // Malformed extensions surface as parse errors from deep inside the ASN.1 reader: a deny, never a crash.
    return fail('SVID_PARSE', `certificate chain unreadable: ${(error as Error).message}`, null);
  }
}

/** Why the key of a certificate the peer presented is refused: the policy's, or larger than a peer may make us check. */
function presentedKeyProblem(presented: CertFacts): string | undefined {
  return presented.keyProblem ?? (presented.rsaBits > MAX_CA_RSA_BITS ? `has a ${presented.rsaBits}-bit RSA key; more than ${MAX_CA_RSA_BITS} bits is refused` : undefined);
}

class SignatureBudgetSpent extends Error {}

/** The signature checks of one verification: each pair checked once, at most MAX_SIGNATURE_CHECKS in all. */
class SignatureChecks {
  #left = MAX_SIGNATURE_CHECKS;
  readonly #done = new Map<Certificate, Map<Certificate, boolean>>();

  /** Whether issuer's name is subject's issuer and issuer's key signed subject. */
  issued(issuer: Certificate, subject: Certificate): boolean {
    const issuerNode = facts(issuer).node;
    const subjectNode = facts(subject).node;
    if (!subjectNode.checkIssued(issuerNode)) return false;
    let bySubject = this.#done.get(issuer);
    const known = bySubject?.get(subject);
    if (known !== undefined) return known;
    if (this.#left-- <= 0) throw new SignatureBudgetSpent();
    const result = subjectNode.verify(issuerNode.publicKey);
    if (bySubject === undefined) this.#done.set(issuer, (bySubject = new Map()));
    bySubject.set(subject, result);
    return result;
  }
}

/** The leaf rules of X509-SVID §4 and §5.2, stricter than go-spiffe's Verify (which skips the path and digitalSignature checks). */
export function checkLeafRules(leaf: Certificate, id: SpiffeId): AmbitError | null {
  if (id.path === '') return new AmbitError('SVID_NO_PATH', `${id.id} is a trust-domain ID; a leaf SVID names a workload`);
  const leafFacts = facts(leaf);
  if (leafFacts.isCa) return new AmbitError('SVID_LEAF_IS_CA', `${id.id}: the leaf is a CA certificate (basicConstraints cA=true)`);
  if (leafFacts.unhandledCritical !== undefined) return new AmbitError('SVID_CRITICAL_EXTENSION', `${id.id}: the leaf carries critical extension ${leafFacts.unhandledCritical}, which is not evaluated`);
  const cryptoProblem = presentedKeyProblem(leafFacts) ?? leafFacts.signatureProblem;
  if (cryptoProblem !== undefined) return new AmbitError('SVID_KEY_REFUSED', `${id.id}: the leaf ${cryptoProblem}`);
  const keyUsage = leafFacts.keyUsage;
  if (keyUsage === undefined) return new AmbitError('SVID_KEY_USAGE', `${id.id}: leaf has no keyUsage extension`);
  if (!keyUsage.critical) return new AmbitError('SVID_KEY_USAGE', `${id.id}: leaf keyUsage is not critical`);
  if ((keyUsage.usages & x509.KeyUsageFlags.digitalSignature) === 0) {
    return new AmbitError('SVID_KEY_USAGE', `${id.id}: leaf keyUsage lacks digitalSignature`);
  }
  if ((keyUsage.usages & x509.KeyUsageFlags.keyCertSign) !== 0) return new AmbitError('SVID_KEY_USAGE', `${id.id}: leaf keyUsage has keyCertSign`);
  if ((keyUsage.usages & x509.KeyUsageFlags.cRLSign) !== 0) return new AmbitError('SVID_KEY_USAGE', `${id.id}: leaf keyUsage has cRLSign`);
  const eku = leafFacts.extKeyUsage;
  if (eku !== undefined && !(eku.includes(x509.ExtendedKeyUsage.serverAuth) && eku.includes(x509.ExtendedKeyUsage.clientAuth))) {
    return new AmbitError('SVID_EXT_KEY_USAGE', `${id.id}: leaf extKeyUsage must include serverAuth and clientAuth (has ${eku.join(', ') || 'none'})`);
  }
  return null;
}

function checkValidity(cert: Certificate, at: Date, role: string, id: SpiffeId): AmbitError | null {
  if (at.getTime() > cert.notAfter.getTime()) {
    return new AmbitError('SVID_EXPIRED', `${id.id}: ${role} expired at ${cert.notAfter.toISOString()} (checked at ${at.toISOString()})`);
  }
  if (at.getTime() < cert.notBefore.getTime()) {
    return new AmbitError('SVID_NOT_YET_VALID', `${id.id}: ${role} is not valid before ${cert.notBefore.toISOString()} (checked at ${at.toISOString()})`);
  }
  return null;
}

function checkSigningCert(ca: Certificate, role: string, id: SpiffeId, belowCount: number): AmbitError | null {
  const caFacts = facts(ca);
  if (!caFacts.isCa) return new AmbitError('SVID_CA_INVALID', `${id.id}: ${role} ${describe(ca)} is not a CA (basicConstraints cA=false)`);
  if (caFacts.nameConstraints) return new AmbitError('SVID_CRITICAL_EXTENSION', `${id.id}: ${role} ${describe(ca)} carries name constraints on URIs, which are not evaluated: refused rather than ignored`);
  if (caFacts.unhandledCritical !== undefined) return new AmbitError('SVID_CRITICAL_EXTENSION', `${id.id}: ${role} ${describe(ca)} carries critical extension ${caFacts.unhandledCritical}, which is not evaluated`);
  if (caFacts.keyUsage !== undefined && (caFacts.keyUsage.usages & x509.KeyUsageFlags.keyCertSign) === 0) {
    return new AmbitError('SVID_CA_INVALID', `${id.id}: ${role} ${describe(ca)} lacks keyCertSign`);
  }
  if (caFacts.pathLength !== undefined && belowCount > caFacts.pathLength) {
    return new AmbitError('SVID_CA_INVALID', `${id.id}: ${role} ${describe(ca)} allows ${caFacts.pathLength} CAs below it, chain has ${belowCount}`);
  }
  const uris = uriSans(ca);
  if (uris instanceof AmbitError) return uris;
  for (const uri of uris) {
    const caId = tryParseSpiffeId(uri);
    // X509-SVID §3.2: a signing certificate's SPIFFE ID, if it carries one, has no path.
    if (!(caId instanceof AmbitError) && caId.path !== '') {
      return new AmbitError('SVID_CA_INVALID', `${id.id}: ${role} ${describe(ca)} carries ${caId.id}; a CA's SPIFFE ID has no path`);
    }
    // A CA that names a trust domain signs for that one only: under a root shared by several trust domains (one
    // corporate root, each cluster's CA an intermediate), B's intermediate must not mint A's identities.
    if (!(caId instanceof AmbitError) && caId.trustDomain !== id.trustDomain) {
      return new AmbitError('TRUST_DOMAIN_MISMATCH', `${id.id}: ${role} ${describe(ca)} is the CA of trust domain "${caId.trustDomain}", not of "${id.trustDomain}"`);
    }
  }
  return null;
}

/**
 * RFC 5280 path building restricted to one bundle's roots; intermediates come from the presented chain. The leaf's
 * own rules and validity are verifySvid's, checked before this.
 */
function validatePath(chain: readonly Certificate[], bundle: TrustBundle, at: Date, id: SpiffeId, shared: ReadonlyMap<string, readonly string[]>, checks: SignatureChecks): AmbitError | { readonly notAfterMs: number } {
  let current = chain[0] as Certificate;
  if (chain.length > MAX_CHAIN_DEPTH + 1) return new AmbitError('SVID_CHAIN_INVALID', `${id.id}: chain of ${chain.length} certificates, more than ${MAX_CHAIN_DEPTH + 1}`);
  // Before any signature is checked: a presented CA's key and signature cost what its sender chose.
  for (let i = 1; i < chain.length; i++) {
    const cert = chain[i] as Certificate;
    const presented = facts(cert);
    // Its signature is judged where a path relies on it (below): a root sent along (corporate CAs send theirs) is
    // never relied on for its self-signature, which many long-lived roots make over SHA-1.
    const problem = presentedKeyProblem(presented);
    if (problem !== undefined) return new AmbitError('SVID_CA_INVALID', `${id.id}: presented intermediate ${describe(cert)} ${problem}`);
  }
  const used = new Set<Certificate>([current]);
  for (let depth = 0; depth < MAX_CHAIN_DEPTH; depth++) {
    // The path relies on this certificate's signature from here on (the leaf's was judged with the leaf's rules).
    const weakSignature = depth > 0 ? facts(current).signatureProblem : undefined;
    if (weakSignature !== undefined) return new AmbitError('SVID_CA_INVALID', `${id.id}: presented intermediate ${describe(current)} ${weakSignature}`);
    // Every root that signed it is tried: a root re-issued with the same key and name may sit in the bundle beside
    // its expired copy. The first one's error is reported when none will do.
    let signerError: AmbitError | null = null;
    for (const root of bundle.roots) {
      // A root naming another trust domain vouches only for that one (Federation §4.2), even when
      // someone put it in this domain's bundle.
      const rootDomain = facts(root).spiffeTrustDomain;
      if (rootDomain !== null && rootDomain !== id.trustDomain) continue;
      if (!checks.issued(root, current)) {
        signerError ??= namedButRefused(root, current, 'root', id, depth);
        continue;
      }
      const rootError = checkSigningCert(root, 'root', id, depth) ?? checkValidity(root, at, 'root CA', id) ?? (depth > 0 ? checkSharedRoot(root, current, id, shared) : null);
      if (rootError === null) {
        // `used` is the path: the leaf, then each intermediate taken (there is no going back).
        let notAfterMs = root.notAfter.getTime();
        for (const cert of used) notAfterMs = Math.min(notAfterMs, cert.notAfter.getTime());
        return { notAfterMs };
      }
      signerError ??= rootError;
    }
    let next: Certificate | undefined;
    for (let i = 1; i < chain.length; i++) {
      const candidate = chain[i] as Certificate;
      if (used.has(candidate)) continue;
      if (!checks.issued(candidate, current)) {
        signerError ??= namedButRefused(candidate, current, 'intermediate', id, depth);
        continue;
      }
      const candidateError = checkSigningCert(candidate, 'intermediate', id, depth) ?? checkValidity(candidate, at, 'intermediate CA', id);
      if (candidateError === null) {
        next = candidate;
        break;
      }
      signerError ??= candidateError;
    }
    if (next === undefined) {
      return signerError ?? new AmbitError('SVID_CHAIN_INVALID', `${id.id}: ${depth === 0 ? 'leaf' : `intermediate ${describe(current)}`} is not signed by a root of trust domain "${id.trustDomain}" nor by a presented intermediate`);
    }
    used.add(next);
    current = next;
  }
  return new AmbitError('SVID_CHAIN_INVALID', `${id.id}: chain longer than ${MAX_CHAIN_DEPTH} certificates`);
}

/**
 * Only for the error message: OpenSSL's issuer check (checkIssued) also refuses a CA whose key usage lacks keyCertSign,
 * so such a CA, named as the certificate's issuer, read as "not signed by a root nor a presented intermediate". Its
 * own fault is named instead (null when it has none of checkSigningCert's).
 */
function namedButRefused(ca: Certificate, subject: Certificate, role: string, id: SpiffeId, depth: number): AmbitError | null {
  if (facts(ca).node.subject !== facts(subject).node.issuer) return null;
  return checkSigningCert(ca, role, id, depth);
}

/** Only for the error message: which other trust domain's CA did sign this chain, if any. */
function findForeignSigner(chain: readonly Certificate[], bundles: BundleSource, claimed: string, at: Date, checks: SignatureChecks): string | null {
  if (bundles[Symbol.iterator] === undefined) return null;
  for (const bundle of bundles as Iterable<TrustBundle>) {
    if (bundle.trustDomain === claimed) continue;
    const probeId = { id: '', trustDomain: bundle.trustDomain, path: '/' };
    try {
      if (!(validatePath(chain, bundle, at, probeId, NO_SHARED_ROOTS, checks) instanceof AmbitError)) return bundle.trustDomain;
    } catch (error) {
      // Out of checks: the chain is refused all the same, with the error its own trust domain gave.
      if (error instanceof SignatureBudgetSpent) return null;
      throw error;
    }
  }
  return null;
}

const NO_SHARED_ROOTS: ReadonlyMap<string, readonly string[]> = new Map();
const sharedRootsCache = new WeakMap<BundleSource, Map<string, ReadonlyMap<string, readonly string[]>>>();

/** Whether a root may vouch for a trust domain at all: it names none, or that one (validatePath skips the others). */
function mayVouchFor(root: Certificate, trustDomain: string): boolean {
  const named = facts(root).spiffeTrustDomain;
  return named === null || named === trustDomain;
}

/**
 * The public keys (SPKI SHA-256, hex) of roots of the local trust domain's bundle that another trust domain's bundle
 * holds too, each root able to vouch for the domain of the bundle it is in, with those trust domains. Only sharing
 * with the local bundle counts: the local bundle is the operator's, so a federated peer that lists another peer's
 * root cannot make the rule refuse that peer's identities. Computed once per bundle set (sets are replaced, never
 * changed).
 */
function sharedRootKeys(bundles: BundleSource, local: string | undefined): ReadonlyMap<string, readonly string[]> {
  if (local === undefined || bundles[Symbol.iterator] === undefined) return NO_SHARED_ROOTS;
  let byLocal = sharedRootsCache.get(bundles);
  const cached = byLocal?.get(local);
  if (cached !== undefined) return cached;
  const localBundle = bundles.get(local);
  const domainsByKey = new Map<string, string[]>();
  for (const root of localBundle?.roots ?? []) if (mayVouchFor(root, local)) domainsByKey.set(publicKeyIdOf(root), [local]);
  if (domainsByKey.size > 0) {
    for (const bundle of bundles as Iterable<TrustBundle>) {
      if (bundle.trustDomain === local) continue;
      for (const root of bundle.roots) {
        const domains = domainsByKey.get(publicKeyIdOf(root));
        if (domains !== undefined && mayVouchFor(root, bundle.trustDomain) && !domains.includes(bundle.trustDomain)) domains.push(bundle.trustDomain);
      }
    }
  }
  const shared: ReadonlyMap<string, readonly string[]> = new Map([...domainsByKey].filter(([, domains]) => domains.length > 1));
  if (byLocal === undefined) sharedRootsCache.set(bundles, (byLocal = new Map()));
  byLocal.set(local, shared);
  return shared;
}

function publicKeyIdOf(cert: Certificate): string {
  const found = facts(cert);
  found.publicKeyId ??= spkiDigest(found.node.publicKey.export({ type: 'spki', format: 'der' }));
  return found.publicKeyId;
}

/** SHA-256 of a SubjectPublicKeyInfo (DER), hex: one key's name, whichever object holds it. */
function spkiDigest(spki: Buffer): string {
  return crypto.createHash('sha256').update(spki).digest('hex');
}

/**
 * A root that several trust domains' bundles hold (one corporate root over each domain's CA) vouches for each of
 * them only through a CA that says which one it signs for: the CA it signed itself, at the top of the presented
 * path, must carry this trust domain's SPIFFE ID. checkSigningCert then binds every CA below it to that domain. An
 * unnamed CA at the top could mint identities of every domain that trusts the root, or a CA named for any of them.
 * This holds whether or not the root names a domain itself, as its key is what signs. A leaf the shared root signs
 * directly is trusted for each domain whose bundle lists the root, as the bundles say. Sharing is seen between
 * roots only: a bundle that lists another domain's intermediate as a root is not detected.
 */
function checkSharedRoot(root: Certificate, top: Certificate, id: SpiffeId, shared: ReadonlyMap<string, readonly string[]>): AmbitError | null {
  if (shared.size === 0) return null;
  const domains = shared.get(publicKeyIdOf(root));
  if (domains === undefined || facts(top).spiffeTrustDomain === id.trustDomain) return null;
  return new AmbitError(
    'SVID_CA_INVALID',
    `${id.id}: intermediate ${describe(top)} names no trust domain (a CA of trust domain "${id.trustDomain}" carries spiffe://${id.trustDomain}), and its root ${describe(root)} is in the bundles of ${domains.map((domain) => `"${domain}"`).join(', ')}: under a root those trust domains share, the CA it signs must name its trust domain`,
  );
}

// ---------------------------------------------------------------------------------------------
// Own SVIDs (certificate + key the proxy presents)

export interface Svid {
  readonly id: SpiffeId;
  /** Leaf first, then intermediates (never the root). */
  readonly chain: readonly Certificate[];
  readonly privateKeyPem: string;
  readonly certPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Loads an SVID one holds: checks the leaf rules and that the key belongs to the leaf (go-spiffe's Parse, plus signatures of our own chain). */
export function loadSvid(certPem: string, keyPem: string): Svid {
  const chain = parseCertificates(certPem, 'SVID certificate');
  const leaf = chain[0] as Certificate;
  const id = spiffeIdOf(leaf);
  if (id instanceof AmbitError) throw id;
  const leafError = checkLeafRules(leaf, id);
  if (leafError) throw leafError;
  for (let i = 1; i < chain.length; i++) {
    const caError = checkSigningCert(chain[i] as Certificate, 'intermediate', id, i - 1);
    if (caError) throw caError;
  }
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey(keyPem);
  } catch (error) {
    throw new AmbitError('SVID_PARSE', `SVID private key for ${id.id}: ${(error as Error).message}`, { cause: error });
  }
  const derivedPublic = crypto.createPublicKey(privateKey).export({ format: 'der', type: 'spki' });
  const leafPublic = facts(leaf).node.publicKey.export({ format: 'der', type: 'spki' });
  if (!derivedPublic.equals(leafPublic)) throw new AmbitError('SVID_KEY_MISMATCH', `private key does not belong to the certificate for ${id.id}`);
  return { id, chain, privateKeyPem: keyPem, certPem: certificatesToPem(chain), notBefore: leaf.notBefore, notAfter: leaf.notAfter };
}

// ---------------------------------------------------------------------------------------------
// Issuing

/** A CA that signs: its certificate, its signing key, and the chain above it (intermediates, not the root). */
export interface SigningAuthority {
  readonly cert: Certificate;
  readonly privateKey: CryptoKey;
  /** Certificates between this CA and its root, to append to issued chains (empty for a root). */
  readonly chainAbove: readonly Certificate[];
}

function randomSerial(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0] = (bytes[0] as number) & 0x7f; // positive INTEGER
  if (bytes[0] === 0) bytes[0] = 1;
  return bytes.toString('hex');
}

function lifetime(now: Date, ttlMs: number, issuer: Certificate | undefined, cushionMs = NOT_BEFORE_CUSHION_MS): { notBefore: Date; notAfter: Date } {
  const notBefore = new Date(now.getTime() - cushionMs);
  let notAfter = new Date(now.getTime() + ttlMs);
  // An expired authority would sign certificates already expired, which every peer then refuses: say so here.
  if (issuer && issuer.notAfter.getTime() <= now.getTime()) {
    throw new AmbitError('SVID_EXPIRED', `the signing authority ${issuer.subject} expired at ${issuer.notAfter.toISOString()}: it cannot issue (rotate the CA: ambit ca root prepare / activate)`);
  }
  // A certificate never outlives its issuer (SPIRE caps notAfter the same way).
  if (issuer && notAfter.getTime() > issuer.notAfter.getTime()) notAfter = issuer.notAfter;
  return { notBefore, notAfter };
}

export interface IssueLeafParams {
  spiffeId: string;
  publicKey: CryptoKey;
  authority: SigningAuthority;
  ttlMs: number;
  now?: Date;
  dnsNames?: readonly string[];
  /** How far notBefore is backdated (NOT_BEFORE_CUSHION_MS unless said). */
  notBeforeCushionMs?: number;
}

/** Issues a workload or node leaf: one URI SAN, CA:false, critical digitalSignature (+keyEncipherment, keyAgreement), EKU serverAuth+clientAuth. */
export async function issueLeaf(params: IssueLeafParams): Promise<Certificate> {
  const id = parseSpiffeId(params.spiffeId);
  if (id.path === '') throw new AmbitError('SVID_NO_PATH', `cannot issue a leaf for trust-domain ID ${id.id}`);
  const { notBefore, notAfter } = lifetime(params.now ?? new Date(), params.ttlMs, params.authority.cert, params.notBeforeCushionMs);
  const sans: x509.JsonGeneralName[] = [{ type: 'url', value: id.id }];
  for (const dns of params.dnsNames ?? []) sans.push({ type: 'dns', value: dns });
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: 'O=ambit',
    issuer: params.authority.cert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING_ALGORITHM,
    publicKey: params.publicKey,
    signingKey: params.authority.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment | x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false),
      new x509.SubjectAlternativeNameExtension(sans, true),
      await x509.SubjectKeyIdentifierExtension.create(params.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(params.authority.cert),
    ],
  });
}

export interface IssueCaParams {
  trustDomain: string;
  keys: CryptoKeyPair;
  ttlMs: number;
  /** Absent: a self-signed root. Present: an intermediate signed by this authority. */
  authority?: SigningAuthority;
  commonName?: string;
  now?: Date;
}

/** Issues a signing certificate: CA:true, keyCertSign|cRLSign, URI SAN = the trust domain's ID (no path). */
export async function issueCa(params: IssueCaParams): Promise<Certificate> {
  const tdId = trustDomainId(params.trustDomain);
  const times = lifetime(params.now ?? new Date(), params.ttlMs, params.authority?.cert, CA_NOT_BEFORE_CUSHION_MS);
  const notAfter = times.notAfter;
  // Never before its issuer's start: a path's validity stays nested, as verifiers other than ours may expect.
  const notBefore = params.authority && params.authority.cert.notBefore > times.notBefore ? params.authority.cert.notBefore : times.notBefore;
  // A random suffix keeps subjects of successive roots distinct, which keeps issuer matching and humans unconfused.
  const subject = `O=ambit, OU=${params.trustDomain}, CN=${params.commonName ?? 'ambit CA'} ${randomSerial().slice(0, 8)}`;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    new x509.SubjectAlternativeNameExtension([{ type: 'url', value: tdId }], false),
    await x509.SubjectKeyIdentifierExtension.create(params.keys.publicKey),
  ];
  if (params.authority) extensions.push(await x509.AuthorityKeyIdentifierExtension.create(params.authority.cert));
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: params.authority ? params.authority.cert.subjectName : subject,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING_ALGORITHM,
    publicKey: params.keys.publicKey,
    signingKey: params.authority ? params.authority.privateKey : params.keys.privateKey,
    extensions,
  });
}

/**
 * `subject`, a self-signed root, certified by another root's authority until `until` at the latest: the same name and
 * key, so a certificate the subject signed verifies up to either root. During a root rotation the CA presents one
 * after its serving certificate, which the new root signs: an agent whose bundle still holds the old root alone
 * (offline since before the new one was prepared) reaches it through this, and one that holds the new root (or only
 * it, the old withdrawn) needs none.
 */
export async function crossCertify(subject: Certificate, issuer: SigningAuthority, trustDomain: string, until: Date): Promise<Certificate> {
  const publicKey = await subject.publicKey.export();
  const notBefore = subject.notBefore > issuer.cert.notBefore ? subject.notBefore : issuer.cert.notBefore;
  let notAfter = subject.notAfter < issuer.cert.notAfter ? subject.notAfter : issuer.cert.notAfter;
  if (until < notAfter) notAfter = until;
  return x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: subject.subjectName,
    issuer: issuer.cert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGNING_ALGORITHM,
    publicKey,
    signingKey: issuer.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: trustDomainId(trustDomain) }], false),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.cert),
    ],
  });
}

// ---------------------------------------------------------------------------------------------
// CSRs

/** A CSR proves possession of the key; the CA decides the identity, so the CSR carries the requested ID only as a hint. */
export async function createCsr(keys: CryptoKeyPair, spiffeId: string): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }], true)],
  });
  return csr.toString('pem');
}

/** Parses a CSR and checks its self-signature; returns the public key to certify. */
export async function readCsr(pem: string): Promise<CryptoKey> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch (error) {
    throw new AmbitError('CA_CSR_INVALID', `CSR is not a PKCS#10 request: ${(error as Error).message}`, { cause: error });
  }
  // The key's type first: its signature costs what the sender chose (an RSA key with a 3,070-bit exponent: 8 ms of
  // the CA's thread, on a path no certificate guards), and any key but P-256 is refused whatever it signed.
  let keyType: string;
  try {
    const key = crypto.createPublicKey({ key: Buffer.from(csr.publicKey.rawData), format: 'der', type: 'spki' });
    keyType = key.asymmetricKeyType === 'ec' ? `ECDSA ${key.asymmetricKeyDetails?.namedCurve ?? ''}` : String(key.asymmetricKeyType);
  } catch (error) {
    throw new AmbitError('CA_CSR_INVALID', `CSR public key cannot be read: ${(error as Error).message}`, { cause: error });
  }
  if (keyType !== 'ECDSA prime256v1') throw new AmbitError('CA_CSR_INVALID', `CSR key must be ECDSA P-256, got ${keyType.replace(/ $/, '')}`);
  // A SHA-1 signature proves possession of nothing a collision could not forge (CA/Browser Forum baseline requirements
  // refuse it since 2016); ambit's agents sign with SHA-256.
  const hash = (csr.signatureAlgorithm as { hash?: { name?: string } }).hash?.name;
  if (hash !== 'SHA-256' && hash !== 'SHA-384' && hash !== 'SHA-512') {
    throw new AmbitError('CA_CSR_INVALID', `CSR must be signed with ECDSA and SHA-256, SHA-384 or SHA-512, got ${hash ?? 'an unknown hash'}`);
  }
  let signatureOk: boolean;
  let publicKey: CryptoKey;
  try {
    signatureOk = await csr.verify();
    publicKey = await csr.publicKey.export();
  } catch (error) {
    throw new AmbitError('CA_CSR_INVALID', `CSR cannot be verified: ${(error as Error).message}`, { cause: error });
  }
  if (!signatureOk) throw new AmbitError('CA_CSR_INVALID', 'CSR signature does not verify (no proof of key possession)');
  const algorithm = publicKey.algorithm as EcKeyAlgorithm;
  if (algorithm.name !== 'ECDSA' || algorithm.namedCurve !== 'P-256') {
    throw new AmbitError('CA_CSR_INVALID', `CSR key must be ECDSA P-256, got ${algorithm.name} ${algorithm.namedCurve ?? ''}`.trim());
  }
  return publicKey;
}

/** SHA-256 of a public key's SubjectPublicKeyInfo, hex: what a spent join token is bound to. */
export async function publicKeyDigest(key: CryptoKey): Promise<string> {
  return spkiDigest(Buffer.from(await crypto.webcrypto.subtle.exportKey('spki', key)));
}
