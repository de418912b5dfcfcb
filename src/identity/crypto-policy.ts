// What keys and signature algorithms a certificate in a verified chain, or a bundle's root, may use: nothing breakable
// (RSA below 2048 bits, MD5 or SHA-1 signatures), and nothing that lets whoever presents it make each signature check
// cost milliseconds (RSA moduli past the limits, public exponents past 32 bits).
import type * as crypto from 'node:crypto';
import type { X509Certificate } from './x509.ts';

/** Roots come from bundles, not from the peer: a legacy 8192-bit root is slow but not a weapon. */
const MAX_ROOT_RSA_BITS = 8192;
/** Below this an RSA key is breakable (NIST SP 800-57); OpenSSL's default security level refuses it too. */
const MIN_RSA_BITS = 2048;
/**
 * RSA public exponents above 32 bits are refused, as BoringSSL and Go refuse them: OpenSSL accepts any exponent below a
 * 3072-bit modulus, and a ~3070-bit one makes each signature check cost ~13 ms instead of ~0.05.
 */
const MAX_RSA_EXPONENT = 0xffff_ffffn;
const ACCEPTED_CURVES: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
/** Hashes a signature in a verified chain may use: MD5 and SHA-1 signatures can be forged. */
const ACCEPTED_SIGNATURE_HASHES: ReadonlySet<string> = new Set(['SHA-256', 'SHA-384', 'SHA-512']);

/** Why a public key is refused (undefined when accepted), and its RSA modulus bits (0 for other keys). */
export function keyFacts(key: crypto.KeyObject): { problem: string | undefined; rsaBits: number } {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return { problem: ACCEPTED_CURVES.has(details.namedCurve ?? '') ? undefined : `has an EC key on curve ${details.namedCurve ?? 'unknown'}; P-256, P-384 and P-521 are accepted`, rsaBits: 0 };
    case 'rsa':
    case 'rsa-pss': {
      const bits = details.modulusLength ?? 0;
      const exponent = details.publicExponent ?? 0n;
      if (bits < MIN_RSA_BITS || bits > MAX_ROOT_RSA_BITS) return { problem: `has a ${bits}-bit RSA key; ${MIN_RSA_BITS} to ${MAX_ROOT_RSA_BITS} bits are accepted`, rsaBits: bits };
      if (exponent < 3n || exponent > MAX_RSA_EXPONENT || exponent % 2n === 0n) {
        return { problem: `has an RSA key with a ${exponent.toString(2).length}-bit public exponent; an odd exponent of at most 32 bits is accepted`, rsaBits: bits };
      }
      return { problem: undefined, rsaBits: bits };
    }
    case 'ed25519':
    case 'ed448':
      return { problem: undefined, rsaBits: 0 };
    default:
      return { problem: `has a ${key.asymmetricKeyType ?? 'unknown'} key; EC, RSA and EdDSA keys are accepted`, rsaBits: 0 };
  }
}

/** Why the signature on a certificate is refused (undefined when accepted): a broken or unreadable algorithm. */
export function signatureProblemOf(cert: X509Certificate): string | undefined {
  let algorithm: { name?: string; hash?: { name?: string } };
  try {
    algorithm = cert.signatureAlgorithm as { name?: string; hash?: { name?: string } };
  } catch {
    return 'is signed with an algorithm that cannot be read';
  }
  const name = algorithm.name ?? 'unknown';
  if (name === 'Ed25519' || name === 'Ed448' || name === 'EdDSA') return undefined;
  const hash = algorithm.hash?.name;
  if (hash !== undefined && ACCEPTED_SIGNATURE_HASHES.has(hash)) return undefined;
  return `is signed with ${hash === undefined ? name : `${name} over ${hash}`}; signatures over SHA-256, SHA-384 or SHA-512 (or EdDSA) are accepted`;
}
