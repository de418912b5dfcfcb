// Test CA and certificate crafting: cheap identities for tests, including deliberately broken ones.
import * as x509 from '../../src/identity/x509.ts';
import { createBundle } from '../../src/identity/bundle.ts';
import type { TrustBundle } from '../../src/identity/bundle.ts';
import { exportPrivateKeyPem, generateKeyPair, issueCa, issueLeaf, certificatesToPem } from '../../src/identity/svid.ts';
import { loadCa } from '../../src/identity/ca/store.ts';
import type { Certificate, SigningAuthority } from '../../src/identity/svid.ts';


export const HOUR_MS = 3_600_000;

export interface TestCa {
  trustDomain: string;
  root: SigningAuthority;
  /** The authority that signs leaves: the root itself, or an intermediate when asked for. */
  signer: SigningAuthority;
  bundle: TrustBundle;
}

export async function createTestCa(trustDomain: string, options: { intermediate?: boolean; ttlMs?: number; now?: Date } = {}): Promise<TestCa> {
  const rootKeys = await generateKeyPair();
  const now = options.now ?? new Date();
  const rootCert = await issueCa({ trustDomain, keys: rootKeys, ttlMs: options.ttlMs ?? 24 * HOUR_MS, commonName: `${trustDomain} root`, now });
  const root: SigningAuthority = { cert: rootCert, privateKey: rootKeys.privateKey, chainAbove: [] };
  let signer = root;
  if (options.intermediate) {
    const keys = await generateKeyPair();
    const cert = await issueCa({ trustDomain, keys, ttlMs: options.ttlMs ?? 24 * HOUR_MS, authority: root, commonName: `${trustDomain} intermediate`, now });
    signer = { cert, privateKey: keys.privateKey, chainAbove: [] };
  }
  return { trustDomain, root, signer, bundle: createBundle(trustDomain, [rootCert]) };
}

export interface TestSvid {
  chain: Certificate[];
  certPem: string;
  keyPem: string;
  keys: CryptoKeyPair;
}

/** A well-formed SVID for `spiffeId`, signed by the CA's signer (intermediate included in the chain). */
export async function issueTestSvid(ca: TestCa, spiffeId: string, options: { ttlMs?: number; now?: Date } = {}): Promise<TestSvid> {
  const keys = await generateKeyPair();
  const leaf = await issueLeaf({ spiffeId, publicKey: keys.publicKey, authority: ca.signer, ttlMs: options.ttlMs ?? HOUR_MS, now: options.now });
  const chain = ca.signer === ca.root ? [leaf] : [leaf, ca.signer.cert];
  return { chain, certPem: certificatesToPem(chain), keyPem: await exportPrivateKeyPem(keys.privateKey), keys };
}

export interface CraftParams {
  /** URI SANs to put in the certificate; [] = a SAN extension without URIs; null = no SAN extension. */
  uris?: string[] | null;
  dnsNames?: string[];
  ca?: boolean;
  /** null = no keyUsage extension. */
  keyUsage?: number | null;
  keyUsageCritical?: boolean;
  extKeyUsage?: string[] | null;
  notBefore?: Date;
  notAfter?: Date;
  pathLength?: number;
  /** The certificate's key pair (a new one when absent): a root re-issued with its key. */
  keys?: CryptoKeyPair;
  /** The subject (a unique crafted name when absent). */
  subject?: string;
  /** More extensions, as given (name constraints, an unknown critical one). */
  extraExtensions?: x509.Extension[];
  /** How the issuer signs it (ECDSA over SHA-256 when absent): a weak hash, or the issuer's RSA key. */
  signingAlgorithm?: Algorithm | EcdsaParams;
}

/** A certificate with exactly the extensions asked for, signed by `issuer` (or self-signed), for hostile-input tests. */
export async function craftCertificate(issuer: SigningAuthority | null, params: CraftParams = {}): Promise<{ cert: Certificate; keys: CryptoKeyPair }> {
  const keys = params.keys ?? (await generateKeyPair());
  const extensions: x509.Extension[] = [new x509.BasicConstraintsExtension(params.ca ?? false, params.pathLength, true)];
  const keyUsage = params.keyUsage === undefined ? x509.KeyUsageFlags.digitalSignature : params.keyUsage;
  if (keyUsage !== null) extensions.push(new x509.KeyUsagesExtension(keyUsage, params.keyUsageCritical ?? true));
  if (params.extKeyUsage !== null) {
    extensions.push(new x509.ExtendedKeyUsageExtension(params.extKeyUsage ?? [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]));
  }
  if (params.uris !== null) {
    const names: x509.JsonGeneralName[] = (params.uris ?? []).map((value) => ({ type: 'url', value }));
    for (const dns of params.dnsNames ?? []) names.push({ type: 'dns', value: dns });
    extensions.push(new x509.SubjectAlternativeNameExtension(names, true));
  }
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  extensions.push(...(params.extraExtensions ?? []));
  const subject = params.subject ?? `O=ambit-test, CN=crafted ${Math.random().toString(36).slice(2)}`;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    subject,
    issuer: issuer ? issuer.cert.subjectName : subject,
    notBefore: params.notBefore ?? new Date(now - 60_000),
    notAfter: params.notAfter ?? new Date(now + HOUR_MS),
    signingAlgorithm: params.signingAlgorithm ?? { name: 'ECDSA', hash: 'SHA-256' },
    publicKey: keys.publicKey,
    signingKey: issuer ? issuer.privateKey : keys.privateKey,
    extensions,
  });
  return { cert, keys };
}

/**
 * An SVID signed by the active authority of a real CA directory (`ambit ca init`), bypassing the
 * registry check of `ambit ca serve`: a genuine mesh certificate for any identity, or an expired one
 * (`now` in the past with a short ttlMs).
 */
export async function issueMeshSvid(caDir: string, spiffeId: string, options: { ttlMs?: number; now?: Date } = {}): Promise<TestSvid> {
  const authority = (await loadCa(caDir)).active;
  const keys = await generateKeyPair();
  const leaf = await issueLeaf({ spiffeId, publicKey: keys.publicKey, authority, ttlMs: options.ttlMs ?? HOUR_MS, now: options.now });
  const chain = [leaf, ...authority.chainAbove];
  return { chain, certPem: certificatesToPem(chain), keyPem: await exportPrivateKeyPem(keys.privateKey), keys };
}

/**
 * An SVID under a chain of `intermediates` CAs of a root no one trusts: past 10 certificates, a chain a server's
 * OpenSSL takes far more than a handshake to check (handshake-backoff.ts counts it as costly).
 */
export async function issueLongChainSvid(trustDomain: string, spiffeId: string, intermediates: number): Promise<TestSvid> {
  const ca = await createTestCa(trustDomain);
  let authority = ca.root;
  const above: Certificate[] = [];
  for (let i = 0; i < intermediates; i++) {
    const keys = await generateKeyPair();
    const cert = await issueCa({ trustDomain, keys, ttlMs: HOUR_MS, authority, commonName: `long ${i}` });
    above.unshift(cert);
    authority = { cert, privateKey: keys.privateKey, chainAbove: [] };
  }
  const keys = await generateKeyPair();
  const leaf = await issueLeaf({ spiffeId, publicKey: keys.publicKey, authority, ttlMs: HOUR_MS });
  const chain = [leaf, ...above];
  return { chain, certPem: certificatesToPem(chain), keyPem: await exportPrivateKeyPem(keys.privateKey), keys };
}
