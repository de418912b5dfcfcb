import { createPublicKey } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { AmbitError } from '../../../src/errors.ts';
import type { ErrorCode } from '../../../src/errors.ts';
import {
  BundleSet,
  bundlesEqual,
  createBundle,
  decodeBundle,
  decodeBundleText,
  decodePemBundle,
  encodeBundle,
  encodePemBundle,
  mergeRoots,
} from '../../../src/identity/bundle.ts';
import type { TrustBundle } from '../../../src/identity/bundle.ts';
import * as x509 from '../../../src/identity/x509.ts';

const TD = 'example.org';
const MAX_INT64 = 2n ** 63n - 1n;

interface Issued {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
}

let serial = 1;

async function selfSigned(options: { rsa?: boolean; ca?: boolean; name?: string } = {}): Promise<Issued> {
  const algorithm = options.rsa
    ? { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }
    : { name: 'ECDSA', namedCurve: 'P-256' };
  const keys = (await crypto.subtle.generateKey(algorithm, true, ['sign', 'verify'])) as CryptoKeyPair;
  const ca = options.ca ?? true;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: (serial++).toString(16).padStart(2, '0'),
    name: `CN=${options.name ?? 'test root'}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: options.rsa ? { name: 'RSASSA-PKCS1-v1_5' } : { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(ca, undefined, true),
      new x509.KeyUsagesExtension(ca ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign : x509.KeyUsageFlags.digitalSignature, true),
    ],
  });
  return { cert, keys };
}

function codeOf(run: () => unknown): ErrorCode | 'no error' {
  try {
    run();
  } catch (error) {
    if (error instanceof AmbitError) return error.code;
    throw error;
  }
  return 'no error';
}

function der64(cert: x509.X509Certificate): string {
  return Buffer.from(cert.rawData).toString('base64');
}

type Jwk = Record<string, unknown>;

/** The JWKS entry encodeBundle writes for `cert`, to tamper with. */
function jwkOf(cert: x509.X509Certificate): Jwk {
  const document = JSON.parse(encodeBundle(createBundle(TD, [cert]))) as { keys: Jwk[] };
  return document.keys[0] as Jwk;
}

/** The EC key params of any certificate (createBundle refuses a leaf, so jwkOf cannot be used for one). */
function ecParams(cert: x509.X509Certificate): { x: string; y: string } {
  const jwk = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' }).export({ format: 'jwk' });
  return { x: jwk.x as string, y: jwk.y as string };
}

function bundleJson(keys: unknown, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ ...extra, keys });
}

function fingerprints(bundle: TrustBundle): string[] {
  return bundle.roots.map(der64).sort();
}

let ecRoot: Issued;
let ecRoot2: Issued;
let rsaRoot: Issued;
let leaf: Issued;

beforeAll(async () => {
  [ecRoot, ecRoot2, rsaRoot, leaf] = await Promise.all([
    selfSigned({ name: 'ec root' }),
    selfSigned({ name: 'ec root 2' }),
    selfSigned({ rsa: true, name: 'rsa root' }),
    selfSigned({ ca: false, name: 'leaf' }),
  ]);
});

describe('encodeBundle and decodeBundle', () => {
  it('round-trips EC and RSA roots, the sequence and the refresh hint', () => {
    const bundle = createBundle(TD, [ecRoot.cert, rsaRoot.cert], { sequence: 7n, refreshHintSeconds: 300 });
    const decoded = decodeBundle(TD, encodeBundle(bundle));
    expect(decoded.trustDomain).toBe(TD);
    expect(fingerprints(decoded)).toEqual(fingerprints(bundle));
    expect(bundlesEqual(decoded, bundle)).toBe(true);
    expect(decoded.sequence).toBe(7n);
    expect(decoded.refreshHintSeconds).toBe(300);
  });

  it.each([
    ['2^63-1', MAX_INT64],
    ['2^64-1', 2n ** 64n - 1n],
    ['2^53+1', 2n ** 53n + 1n],
  ])('writes and reads the sequence %s exactly', (_name, sequence) => {
    const text = encodeBundle(createBundle(TD, [ecRoot.cert], { sequence }));
    expect(text).toContain(`"spiffe_sequence": ${sequence}`);
    expect(decodeBundle(TD, text).sequence).toBe(sequence);
  });

  it('writes one x509-svid key per root with key params, one x5c certificate and no kid', () => {
    const document = JSON.parse(encodeBundle(createBundle(TD, [ecRoot.cert, rsaRoot.cert]))) as { keys: Jwk[]; spiffe_sequence: number };
    expect(document.spiffe_sequence).toBe(0);
    expect(document).not.toHaveProperty('spiffe_refresh_hint');
    const [ec, rsa] = document.keys as [Jwk, Jwk];
    expect(Object.keys(ec).sort()).toEqual(['crv', 'kty', 'use', 'x', 'x5c', 'y']);
    expect(ec).toMatchObject({ use: 'x509-svid', kty: 'EC', crv: 'P-256', x5c: [der64(ecRoot.cert)] });
    expect(Object.keys(rsa).sort()).toEqual(['e', 'kty', 'n', 'use', 'x5c']);
    expect(rsa).toMatchObject({ use: 'x509-svid', kty: 'RSA', e: 'AQAB', x5c: [der64(rsaRoot.cert)] });
  });

  it('writes an empty bundle with keys as an empty array and reads it back', () => {
    const text = encodeBundle(createBundle(TD, []));
    expect(JSON.parse(text)).toEqual({ spiffe_sequence: 0, keys: [] });
    expect(decodeBundle(TD, text).roots).toEqual([]);
  });

  it('reads "keys": [] as a valid bundle that trusts nothing', () => {
    const bundle = decodeBundle(TD, '{"keys": []}');
    expect(bundle.roots).toHaveLength(0);
    expect(bundle.sequence).toBe(0n);
    expect(bundle.refreshHintSeconds).toBeUndefined();
  });

  it('drops a root listed twice', () => {
    const key = jwkOf(ecRoot.cert);
    expect(decodeBundle(TD, bundleJson([key, key])).roots).toHaveLength(1);
  });
});

describe('decodeBundle leniency (keys the spec says to ignore)', () => {
  const cases: Array<[string, (key: Jwk) => Jwk]> = [
    ['a key with an unknown kty', (key) => ({ ...key, kty: 'XYZ' })],
    ['an x509-svid OKP key', (key) => ({ ...key, kty: 'OKP' })],
    ['a key with an unknown use', (key) => ({ ...key, use: 'sig' })],
    ['a key without use', ({ use: _use, ...key }) => key],
    ['a key whose use differs in case', (key) => ({ ...key, use: 'X509-SVID' })],
    ['a jwt-svid key', ({ x5c: _x5c, ...key }) => ({ ...key, use: 'jwt-svid', kid: 'k1' })],
    ['a jwt-svid key carrying garbage x5c', (key) => ({ ...key, use: 'jwt-svid', kid: 'k1', x5c: ['not base64!'] })],
    ['an x509-svid key with an empty x5c', (key) => ({ ...key, x5c: [] })],
    ['an x509-svid key without x5c', ({ x5c: _x5c, ...key }) => key],
  ];

  it.each(cases)('ignores %s and keeps the other roots', (_name, tamper) => {
    const bundle = decodeBundle(TD, bundleJson([tamper(jwkOf(ecRoot.cert)), jwkOf(ecRoot2.cert)]));
    expect(fingerprints(bundle)).toEqual([der64(ecRoot2.cert)]);
  });

  it('uses only x5c[0] and ignores extra entries, even malformed ones', () => {
    const key = { ...jwkOf(ecRoot.cert), x5c: [der64(ecRoot.cert), der64(leaf.cert), 'garbage'] };
    expect(fingerprints(decodeBundle(TD, bundleJson([key])))).toEqual([der64(ecRoot.cert)]);
  });

  it('accepts a kid and unknown parameters on an x509-svid key', () => {
    const key = { ...jwkOf(ecRoot.cert), kid: 'should-not-be-here', alg: 'ES256', extra: { nested: true } };
    expect(decodeBundle(TD, bundleJson([key])).roots).toHaveLength(1);
  });

  it('accepts an RSA modulus written with a leading zero byte', () => {
    const key = jwkOf(rsaRoot.cert);
    const n = Buffer.concat([Buffer.from([0]), Buffer.from(key.n as string, 'base64url')]).toString('base64url');
    expect(decodeBundle(TD, bundleJson([{ ...key, n }])).roots).toHaveLength(1);
  });

  it('reads a null sequence and refresh hint as absent', () => {
    const bundle = decodeBundle(TD, bundleJson([], { spiffe_sequence: null, spiffe_refresh_hint: null }));
    expect(bundle.sequence).toBe(0n);
    expect(bundle.refreshHintSeconds).toBeUndefined();
  });
});

describe('decodeBundle rejections', () => {
  const keyCases: Array<[string, (key: Jwk) => unknown]> = [
    ['x5c[0] that is not base64', (key) => ({ ...key, x5c: ['not base64!'] })],
    ['x5c[0] in base64url', (key) => ({ ...key, x5c: [Buffer.from(ecRoot.cert.rawData).toString('base64url')] })],
    ['x5c[0] with whitespace', (key) => ({ ...key, x5c: [`${der64(ecRoot.cert).slice(0, 20)}\n${der64(ecRoot.cert).slice(20)}`] })],
    ['x5c[0] that is base64 but not a certificate', (key) => ({ ...key, x5c: [Buffer.from('hello world').toString('base64')] })],
    ['x5c[0] with bytes after the certificate', (key) => ({ ...key, x5c: [Buffer.concat([Buffer.from(ecRoot.cert.rawData), Buffer.from([0])]).toString('base64')] })],
    ['x5c[0] holding base64 PEM text', (key) => ({ ...key, x5c: [Buffer.from(ecRoot.cert.toString('pem')).toString('base64')] })],
    ['x5c[0] that is not a string', (key) => ({ ...key, x5c: [42] })],
    ['x5c that is a string, not an array', (key) => ({ ...key, x5c: der64(ecRoot.cert) })],
    ['x5c[0] that is not a CA certificate', () => ({ ...jwkOf(ecRoot.cert), ...ecParams(leaf.cert), x5c: [der64(leaf.cert)] })],
    ['key params of another key', (key) => ({ ...key, x: jwkOf(ecRoot2.cert).x, y: jwkOf(ecRoot2.cert).y })],
    ['a y coordinate of another key', (key) => ({ ...key, y: jwkOf(ecRoot2.cert).y })],
    ['missing key params', ({ x: _x, y: _y, ...key }) => key],
    ['key params that are not base64url', (key) => ({ ...key, x: `${key.x as string}!` })],
    ['a curve other than the certificate’s', (key) => ({ ...key, crv: 'P-384' })],
    ['an RSA kty on an EC certificate', (key) => ({ ...key, kty: 'RSA', n: jwkOf(rsaRoot.cert).n, e: 'AQAB' })],
    ['an RSA key whose modulus differs', () => ({ ...jwkOf(rsaRoot.cert), n: Buffer.alloc(256, 7).toString('base64url') })],
    ['a key that is not an object', () => 'x509-svid'],
    ['a key that is null', () => null],
  ];

  it.each(keyCases)('rejects %s', (_name, tamper) => {
    expect(codeOf(() => decodeBundle(TD, bundleJson([jwkOf(ecRoot.cert), tamper(jwkOf(ecRoot.cert))])))).toBe('BUNDLE_INVALID');
  });

  it('names the index of the bad key in its message', () => {
    try {
      decodeBundle(TD, bundleJson([jwkOf(ecRoot.cert), { ...jwkOf(ecRoot.cert), x5c: ['AAAA'] }]));
      expect.unreachable();
    } catch (error) {
      expect((error as AmbitError).message).toMatch(/key 1\b/);
    }
  });

  const documentCases: Array<[string, string]> = [
    ['text that is not JSON', 'not json'],
    ['JSON with a trailing comma', '{"keys": [],}'],
    ['JSON5-style unquoted keys', '{keys: []}'],
    ['two JSON documents', '{"keys": []}{"keys": []}'],
    ['a JSON array', '[]'],
    ['a JSON string', '"keys"'],
    ['keys missing', '{"spiffe_sequence": 1}'],
    ['keys null', '{"keys": null}'],
    ['keys an object', '{"keys": {}}'],
    ['a negative sequence', '{"keys": [], "spiffe_sequence": -1}'],
    ['a fractional sequence', '{"keys": [], "spiffe_sequence": 1.5}'],
    ['a sequence in exponent form', '{"keys": [], "spiffe_sequence": 1e3}'],
    ['a sequence as a string', '{"keys": [], "spiffe_sequence": "1"}'],
    ['a sequence over 64 bits', '{"keys": [], "spiffe_sequence": 18446744073709551616}'],
    ['a negative refresh hint', '{"keys": [], "spiffe_refresh_hint": -5}'],
    ['a fractional refresh hint', '{"keys": [], "spiffe_refresh_hint": 0.5}'],
    ['a duplicate keys member', '{"keys": [], "keys": []}'],
    ['absurdly deep nesting', `{"keys": [], "x": ${'['.repeat(10_000)}${']'.repeat(10_000)}}`],
  ];

  it.each(documentCases)('rejects %s', (_name, text) => {
    expect(codeOf(() => decodeBundle(TD, text))).toBe('BUNDLE_INVALID');
  });

  it('rejects an invalid trust domain name', () => {
    expect(codeOf(() => decodeBundle('Example.org', '{"keys": []}'))).toBe('SPIFFE_ID_TRUST_DOMAIN_CHARS');
  });
});

describe('PEM bundles', () => {
  it('round-trips through encodePemBundle and decodePemBundle', () => {
    const bundle = createBundle(TD, [ecRoot.cert, rsaRoot.cert]);
    const decoded = decodePemBundle(TD, encodePemBundle(bundle));
    expect(fingerprints(decoded)).toEqual(fingerprints(bundle));
  });

  it('skips blocks of other types and text around the blocks', async () => {
    const keyPem = x509.PemConverter.encode(await crypto.subtle.exportKey('pkcs8', ecRoot.keys.privateKey), 'PRIVATE KEY');
    const legacy = '-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n';
    const text = `# roots of ${TD}\n${keyPem}\n${legacy}${ecRoot.cert.toString('pem')}\r\n\r\n${ecRoot2.cert.toString('pem')}\n`;
    expect(fingerprints(decodePemBundle(TD, text))).toEqual([der64(ecRoot.cert), der64(ecRoot2.cert)].sort());
  });

  it.each([['empty', ''], ['blank', ' \n\t\n']])('reads %s input as an empty bundle', (_name, text) => {
    expect(decodePemBundle(TD, text).roots).toEqual([]);
    expect(encodePemBundle(decodePemBundle(TD, text))).toBe('');
  });

  it.each<[string, () => string]>([
    ['a certificate that is not a CA', () => leaf.cert.toString('pem')],
    ['a CERTIFICATE block with bad base64', () => '-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n'],
    ['a CERTIFICATE block that is not a certificate', () => `-----BEGIN CERTIFICATE-----\n${Buffer.from('hello world!').toString('base64')}\n-----END CERTIFICATE-----\n`],
    ['a block cut short', () => `${ecRoot.cert.toString('pem')}\n${ecRoot2.cert.toString('pem').slice(0, 200)}`],
    ['mismatched BEGIN and END labels', () => ecRoot.cert.toString('pem').replace('END CERTIFICATE', 'END X509 CRL')],
    ['text with no PEM block', () => 'hello'],
  ])('rejects %s', (_name, text) => {
    expect(codeOf(() => decodePemBundle(TD, text()))).toBe('BUNDLE_INVALID');
  });
});

describe('decodeBundleText', () => {
  it('reads JSON when the text starts with "{" after whitespace', () => {
    const text = `\n  ${encodeBundle(createBundle(TD, [ecRoot.cert], { sequence: 3n }))}`;
    expect(decodeBundleText(TD, text).sequence).toBe(3n);
  });

  it('reads PEM otherwise', () => {
    expect(decodeBundleText(TD, encodePemBundle(createBundle(TD, [ecRoot.cert]))).roots).toHaveLength(1);
  });
});

describe('createBundle', () => {
  it('refuses a root that is not a CA', () => {
    expect(codeOf(() => createBundle(TD, [leaf.cert]))).toBe('BUNDLE_INVALID');
  });

  it('refuses an invalid trust domain', () => {
    expect(codeOf(() => createBundle('td:443', []))).toBe('SPIFFE_ID_TRUST_DOMAIN_CHARS');
  });

  it.each<[string, { sequence?: bigint; refreshHintSeconds?: number }]>([
    ['a negative sequence', { sequence: -1n }],
    ['a sequence over 64 bits', { sequence: 2n ** 64n }],
    ['a fractional refresh hint', { refreshHintSeconds: 1.5 }],
    ['a negative refresh hint', { refreshHintSeconds: -1 }],
  ])('refuses %s', (_name, options) => {
    expect(codeOf(() => createBundle(TD, [], options))).toBe('BUNDLE_INVALID');
  });

  it('drops duplicate roots and freezes the result', () => {
    const bundle = createBundle(TD, [ecRoot.cert, ecRoot.cert]);
    expect(bundle.roots).toHaveLength(1);
    expect(Object.isFrozen(bundle)).toBe(true);
    expect(Object.isFrozen(bundle.roots)).toBe(true);
  });
});

describe('mergeRoots and bundlesEqual', () => {
  it('unites the roots of two bundles and moves the sequence past both', () => {
    const merged = mergeRoots(createBundle(TD, [ecRoot.cert], { sequence: 4n, refreshHintSeconds: 600 }), createBundle(TD, [ecRoot.cert, ecRoot2.cert], { sequence: 9n, refreshHintSeconds: 60 }));
    expect(fingerprints(merged)).toEqual([der64(ecRoot.cert), der64(ecRoot2.cert)].sort());
    expect(merged.sequence).toBe(10n);
    expect(merged.refreshHintSeconds).toBe(60);
  });

  it('refuses to merge bundles of different trust domains', () => {
    expect(codeOf(() => mergeRoots(createBundle(TD, [ecRoot.cert]), createBundle('other.org', [ecRoot2.cert])))).toBe('TRUST_DOMAIN_MISMATCH');
  });

  it('treats the same roots in another order as equal, whatever the sequence', () => {
    expect(bundlesEqual(createBundle(TD, [ecRoot.cert, rsaRoot.cert], { sequence: 1n }), createBundle(TD, [rsaRoot.cert, ecRoot.cert], { sequence: 2n }))).toBe(true);
  });

  it.each<[string, () => [TrustBundle, TrustBundle]]>([
    ['different roots', () => [createBundle(TD, [ecRoot.cert]), createBundle(TD, [ecRoot2.cert])]],
    ['a root fewer', () => [createBundle(TD, [ecRoot.cert, ecRoot2.cert]), createBundle(TD, [ecRoot.cert])]],
    ['the same roots in another trust domain', () => [createBundle(TD, [ecRoot.cert]), createBundle('other.org', [ecRoot.cert])]],
  ])('tells bundles with %s apart', (_name, pair) => {
    const [a, b] = pair();
    expect(bundlesEqual(a, b)).toBe(false);
  });
});

describe('BundleSet', () => {
  it('returns a new set from with and without, leaving the original unchanged', () => {
    const a = createBundle('a.org', [ecRoot.cert]);
    const b = createBundle('b.org', [ecRoot2.cert]);
    const empty = new BundleSet();
    const one = empty.with(a);
    const two = one.with(b);
    const back = two.without('a.org');
    expect(empty.trustDomains()).toEqual([]);
    expect(one.trustDomains()).toEqual(['a.org']);
    expect(two.trustDomains()).toEqual(['a.org', 'b.org']);
    expect(back.trustDomains()).toEqual(['b.org']);
    expect(two.get('a.org')).toBe(a);
    expect(back.has('a.org')).toBe(false);
    expect(back.get('a.org')).toBeUndefined();
  });

  it('replaces the bundle of a trust domain with a new one', () => {
    const old = createBundle(TD, [ecRoot.cert]);
    const next = createBundle(TD, [ecRoot2.cert], { sequence: 2n });
    const set = new BundleSet([old]);
    expect(set.with(next).get(TD)).toBe(next);
    expect(set.get(TD)).toBe(old);
  });

  it('iterates its bundles in trust domain order', () => {
    const set = new BundleSet([createBundle('z.org', []), createBundle('a.org', [])]);
    expect([...set].map((bundle) => bundle.trustDomain)).toEqual(['a.org', 'z.org']);
  });

  it('refuses two bundles of one trust domain', () => {
    expect(codeOf(() => new BundleSet([createBundle(TD, [ecRoot.cert]), createBundle(TD, [ecRoot2.cert])]))).toBe('BUNDLE_DUPLICATE_TRUST_DOMAIN');
  });

  it('round-trips a bundle map, keeping sequences and dropping refresh hints', () => {
    const set = new BundleSet([
      createBundle(TD, [ecRoot.cert, rsaRoot.cert], { sequence: MAX_INT64, refreshHintSeconds: 300 }),
      createBundle('other.org', [ecRoot2.cert], { sequence: 5n }),
      createBundle('__proto__', []),
    ]);
    const text = set.toMapJson();
    expect(text).not.toContain('spiffe_refresh_hint');
    const read = BundleSet.fromMapJson(text);
    expect(read.trustDomains()).toEqual(['__proto__', 'example.org', 'other.org']);
    for (const bundle of set) {
      const other = read.get(bundle.trustDomain) as TrustBundle;
      expect(bundlesEqual(other, bundle)).toBe(true);
      expect(other.sequence).toBe(bundle.sequence);
      expect(other.refreshHintSeconds).toBeUndefined();
    }
  });

  it('ignores refresh hints inside a bundle map', () => {
    const read = BundleSet.fromMapJson(JSON.stringify({ trust_domains: { [TD]: { keys: [], spiffe_refresh_hint: 10 } } }));
    expect(read.get(TD)?.refreshHintSeconds).toBeUndefined();
  });

  it('reads an empty bundle map', () => {
    expect(BundleSet.fromMapJson('{"trust_domains": {}}').trustDomains()).toEqual([]);
  });

  it.each<[string, () => string, ErrorCode]>([
    ['a trust domain named twice', () => `{"trust_domains": {"${TD}": {"keys": []}, "b.org": {"keys": []}, "${TD}": {"keys": []}}}`, 'BUNDLE_DUPLICATE_TRUST_DOMAIN'],
    ['a trust_domains member given twice', () => '{"trust_domains": {"a.org": {"keys": []}}, "trust_domains": {"b.org": {"keys": []}}}', 'BUNDLE_INVALID'],
    ['an uppercase trust domain name', () => '{"trust_domains": {"Example.org": {"keys": []}}}', 'BUNDLE_INVALID'],
    ['a trust domain written as an ID', () => '{"trust_domains": {"spiffe://example.org": {"keys": []}}}', 'BUNDLE_INVALID'],
    ['an empty trust domain name', () => '{"trust_domains": {"": {"keys": []}}}', 'BUNDLE_INVALID'],
    ['no trust_domains member', () => '{}', 'BUNDLE_INVALID'],
    ['trust_domains that is not an object', () => '{"trust_domains": []}', 'BUNDLE_INVALID'],
    ['an inner bundle without keys', () => `{"trust_domains": {"${TD}": {}}}`, 'BUNDLE_INVALID'],
    ['an inner bundle with a non-CA root', () => JSON.stringify({ trust_domains: { [TD]: { keys: [{ ...jwkOf(ecRoot.cert), ...ecParams(leaf.cert), x5c: [der64(leaf.cert)] }] } } }), 'BUNDLE_INVALID'],
    ['text that is not JSON', () => 'trust_domains:\n  a.org: {}', 'BUNDLE_INVALID'],
  ])('rejects a bundle map with %s', (_name, text, code) => {
    expect(codeOf(() => BundleSet.fromMapJson(text()))).toBe(code);
  });
});
