import * as x509 from '../../../src/identity/x509.ts';
import { beforeAll, describe, expect, it } from 'vitest';
import { BundleSet, createBundle } from '../../../src/identity/bundle.ts';
import {
  createCsr,
  generateKeyPair,
  issueLeaf,
  loadSvid,
  readCsr,
  spiffeIdOf,
  verifySvid,
} from '../../../src/identity/svid.ts';
import { AmbitError } from '../../../src/errors.ts';
import { craftCertificate, createTestCa, HOUR_MS, issueTestSvid } from '../../helpers/certs.ts';
import type { TestCa } from '../../helpers/certs.ts';

const WEB = 'spiffe://cluster.local/ns/default/sa/web';

let caA: TestCa; // cluster.local, root signs leaves
let caB: TestCa; // other.test, with an intermediate
let bundles: BundleSet;

beforeAll(async () => {
  caA = await createTestCa('cluster.local');
  caB = await createTestCa('other.test', { intermediate: true });
  bundles = new BundleSet([caA.bundle, caB.bundle]);
});

describe('issued SVIDs', () => {
  it('have exactly one URI SAN, CA:false, critical digitalSignature and no keyCertSign/cRLSign', async () => {
    const svid = await issueTestSvid(caA, WEB);
    const leaf = svid.chain[0] as x509.X509Certificate;
    const san = leaf.getExtension(x509.SubjectAlternativeNameExtension);
    expect(san?.names.items.filter((n) => n.type === 'url').map((n) => n.value)).toEqual([WEB]);
    expect(leaf.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(false);
    const keyUsage = leaf.getExtension(x509.KeyUsagesExtension);
    expect(keyUsage?.critical).toBe(true);
    expect((keyUsage?.usages ?? 0) & x509.KeyUsageFlags.digitalSignature).not.toBe(0);
    expect((keyUsage?.usages ?? 0) & (x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign)).toBe(0);
  });

  it('signing certificates are CA:true with keyCertSign and a trust-domain ID without path', () => {
    const root = caA.root.cert;
    expect(root.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(true);
    expect((root.getExtension(x509.KeyUsagesExtension)?.usages ?? 0) & x509.KeyUsageFlags.keyCertSign).not.toBe(0);
    const id = spiffeIdOf(root);
    expect(id instanceof AmbitError ? id.code : id.id).toBe('spiffe://cluster.local');
  });

  it('never outlive the certificate that signed them', async () => {
    const shortCa = await createTestCa('short.test', { ttlMs: 60_000 });
    const svid = await issueTestSvid(shortCa, 'spiffe://short.test/ns/a/sa/b', { ttlMs: HOUR_MS });
    expect((svid.chain[0] as x509.X509Certificate).notAfter.getTime()).toBe(shortCa.root.cert.notAfter.getTime());
  });

  it('are backdated 10 s for clock skew', async () => {
    const now = new Date('2026-11-23T12:00:00Z');
    const keys = await generateKeyPair();
    const ca = await createTestCa('cluster.local', { now: new Date('2026-11-23T00:00:00Z'), ttlMs: 48 * HOUR_MS });
    const leaf = await issueLeaf({ spiffeId: WEB, publicKey: keys.publicKey, authority: ca.signer, ttlMs: HOUR_MS, now });
    expect(leaf.notBefore.toISOString()).toBe('2026-11-23T11:59:50.000Z');
  });

  it('refuse to issue a leaf for a trust-domain ID', async () => {
    const keys = await generateKeyPair();
    await expect(issueLeaf({ spiffeId: 'spiffe://cluster.local', publicKey: keys.publicKey, authority: caA.signer, ttlMs: HOUR_MS })).rejects.toMatchObject({ code: 'SVID_NO_PATH' });
  });
});

describe('verifying a peer SVID', () => {
  it('accepts a leaf signed by its trust domain root', async () => {
    const svid = await issueTestSvid(caA, WEB);
    const result = verifySvid(svid.chain, bundles);
    expect(result.error).toBeNull();
    expect(result.valid).toBe(true);
    expect(result.id?.id).toBe(WEB);
  });

  it('accepts a leaf whose chain carries an intermediate up to its root', async () => {
    const svid = await issueTestSvid(caB, 'spiffe://other.test/ns/db/sa/postgres');
    expect(svid.chain).toHaveLength(2);
    expect(verifySvid(svid.chain, bundles).valid).toBe(true);
  });

  it('rejects a leaf whose intermediate is missing from the chain', async () => {
    const svid = await issueTestSvid(caB, 'spiffe://other.test/ns/db/sa/postgres');
    expect(verifySvid(svid.chain.slice(0, 1), bundles).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('rejects a certificate signed by trust domain A that claims an ID in trust domain B', async () => {
    const forged = await issueTestSvid(caA, 'spiffe://other.test/ns/db/sa/postgres');
    const result = verifySvid(forged.chain, bundles);
    expect(result.valid).toBe(false);
    expect(result.error?.code).toBe('TRUST_DOMAIN_MISMATCH');
  });

  it('rejects a cross-domain forgery as untrusted even when the signer is not known at all', async () => {
    const rogue = await createTestCa('rogue.test');
    const forged = await issueTestSvid(rogue, WEB);
    expect(verifySvid(forged.chain, bundles).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('rejects an ID whose trust domain has no bundle', async () => {
    const stranger = await createTestCa('stranger.test');
    const svid = await issueTestSvid(stranger, 'spiffe://stranger.test/ns/a/sa/b');
    expect(verifySvid(svid.chain, bundles).error?.code).toBe('TRUST_DOMAIN_UNKNOWN');
  });

  it('rejects an expired leaf and accepts it when judged at a time inside its validity', async () => {
    const svid = await issueTestSvid(caA, WEB, { ttlMs: 60_000 });
    const later = new Date(Date.now() + 5 * 60_000);
    expect(verifySvid(svid.chain, bundles, { at: later }).error?.code).toBe('SVID_EXPIRED');
    expect(verifySvid(svid.chain, bundles, { at: new Date(Date.now() + 30_000) }).valid).toBe(true);
  });

  it('rejects a leaf that is not yet valid', async () => {
    const svid = await issueTestSvid(caA, WEB);
    const before = new Date(Date.now() - 60_000);
    expect(verifySvid(svid.chain, bundles, { at: before }).error?.code).toBe('SVID_NOT_YET_VALID');
  });

  it('rejects a chain whose root has expired', async () => {
    const oldCa = await createTestCa('cluster.local', { now: new Date(Date.now() - 3 * HOUR_MS), ttlMs: HOUR_MS });
    const svid = await issueTestSvid(oldCa, WEB, { now: new Date(Date.now() - 3 * HOUR_MS + 60_000), ttlMs: 30 * 60_000 });
    const oldBundles = new BundleSet([oldCa.bundle]);
    expect(verifySvid(svid.chain, oldBundles, { at: new Date(Date.now() - 3 * HOUR_MS + 2 * 60_000) }).valid).toBe(true);
    expect(verifySvid(svid.chain, oldBundles).error?.code).toBe('SVID_EXPIRED');
  });

  // A refused HBONE peer is told the code only when it says nothing of this node's trust bundles (inbound.ts).
  it('marks faults of the presented leaf as such, and never a verdict that read the trust bundles', async () => {
    const stranger = await createTestCa('stranger.test');
    const expiredStranger = await issueTestSvid(stranger, 'spiffe://stranger.test/ns/a/sa/b', { now: new Date(Date.now() - 2 * HOUR_MS), ttlMs: 60_000 });
    const expired = verifySvid(expiredStranger.chain, bundles);
    expect([expired.error?.code, expired.valid === false && expired.presentedOnly]).toEqual(['SVID_EXPIRED', true]);
    const unknown = verifySvid((await issueTestSvid(stranger, 'spiffe://stranger.test/ns/a/sa/b')).chain, bundles);
    expect([unknown.error?.code, unknown.valid === false && unknown.presentedOnly]).toEqual(['TRUST_DOMAIN_UNKNOWN', undefined]);
    const untrusted = verifySvid((await issueTestSvid(await createTestCa('cluster.local'), WEB)).chain, bundles);
    expect([untrusted.error?.code, untrusted.valid === false && untrusted.presentedOnly]).toEqual(['SVID_CHAIN_INVALID', undefined]);
    const forged = verifySvid((await issueTestSvid(caA, 'spiffe://other.test/ns/db/sa/postgres')).chain, bundles);
    expect([forged.error?.code, forged.valid === false && forged.presentedOnly]).toEqual(['TRUST_DOMAIN_MISMATCH', undefined]);
  });

  it('rejects an empty chain', () => {
    expect(verifySvid([], bundles).error?.code).toBe('SVID_PARSE');
  });

  const hostile: Array<[string, Parameters<typeof craftCertificate>[1], string]> = [
    ['a leaf without any URI SAN', { uris: null }, 'SVID_NO_URI_SAN'],
    ['a leaf whose SAN has only DNS names', { uris: [], dnsNames: ['web.default.svc'] }, 'SVID_NO_URI_SAN'],
    ['a leaf with two URI SANs', { uris: [WEB, 'spiffe://cluster.local/ns/admin/sa/root'] }, 'SVID_MULTIPLE_URI_SANS'],
    ['a leaf with a SPIFFE URI SAN and an https URI SAN', { uris: [WEB, 'https://example.com/'] }, 'SVID_MULTIPLE_URI_SANS'],
    ['a URI SAN smuggling a second ID after a comma', { uris: [`${WEB}, URI:spiffe://cluster.local/ns/admin/sa/root`] }, 'SPIFFE_ID_PATH_CHARS'],
    ['a URI SAN with a dot segment', { uris: ['spiffe://cluster.local/ns/../sa/web'] }, 'SPIFFE_ID_DOT_SEGMENT'],
    ['a URI SAN with an uppercase trust domain', { uris: ['spiffe://Cluster.local/ns/default/sa/web'] }, 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['a URI SAN that is not spiffe', { uris: ['https://cluster.local/ns/default/sa/web'] }, 'SPIFFE_ID_SCHEME'],
    ['a leaf naming only the trust domain', { uris: ['spiffe://cluster.local'] }, 'SVID_NO_PATH'],
    ['a CA certificate presented as a leaf', { uris: [WEB], ca: true, keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign }, 'SVID_LEAF_IS_CA'],
    ['a leaf without keyUsage', { uris: [WEB], keyUsage: null }, 'SVID_KEY_USAGE'],
    ['a leaf whose keyUsage is not critical', { uris: [WEB], keyUsageCritical: false }, 'SVID_KEY_USAGE'],
    ['a leaf without digitalSignature', { uris: [WEB], keyUsage: x509.KeyUsageFlags.keyEncipherment }, 'SVID_KEY_USAGE'],
    ['a leaf with keyCertSign', { uris: [WEB], keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign }, 'SVID_KEY_USAGE'],
    ['a leaf with cRLSign', { uris: [WEB], keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.cRLSign }, 'SVID_KEY_USAGE'],
    ['a leaf whose extKeyUsage lacks clientAuth', { uris: [WEB], extKeyUsage: [x509.ExtendedKeyUsage.serverAuth] }, 'SVID_EXT_KEY_USAGE'],
  ];
  for (const [name, params, code] of hostile) {
    it(`rejects ${name} (${code})`, async () => {
      const { cert } = await craftCertificate(caA.root, params);
      const result = verifySvid([cert], bundles);
      expect(result.valid).toBe(false);
      expect(result.error?.code).toBe(code);
    });
  }

  it('accepts a crafted leaf that follows every rule, so the table above fails for its reason only', async () => {
    const { cert } = await craftCertificate(caA.root, { uris: [WEB] });
    expect(verifySvid([cert], bundles).valid).toBe(true);
  });

  it('are refused by an authority that has expired (they would be born expired), and capped at its expiry while it lasts', async () => {
    const old = await createTestCa('cluster.local', { ttlMs: HOUR_MS, now: new Date(Date.now() - 2 * HOUR_MS) });
    const keys = await generateKeyPair();
    await expect(issueLeaf({ spiffeId: WEB, publicKey: keys.publicKey, authority: old.signer, ttlMs: HOUR_MS })).rejects.toMatchObject({ code: 'SVID_EXPIRED' });
    const leaf = await issueLeaf({ spiffeId: WEB, publicKey: keys.publicKey, authority: old.signer, ttlMs: 4 * HOUR_MS, now: new Date(Date.now() - 90 * 60_000) });
    expect(leaf.notAfter.getTime()).toBe(old.signer.cert.notAfter.getTime());
  });

  it('accepts a leaf without extKeyUsage (it is optional)', async () => {
    const { cert } = await craftCertificate(caA.root, { uris: [WEB], extKeyUsage: null });
    expect(verifySvid([cert], bundles).valid).toBe(true);
  });

  it('rejects an intermediate that is not a CA', async () => {
    const { cert: fakeIntermediate, keys } = await craftCertificate(caA.root, { uris: [], keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign });
    const { cert: leaf } = await craftCertificate({ cert: fakeIntermediate, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([leaf, fakeIntermediate], bundles).error?.code).toBe('SVID_CA_INVALID');
  });

  // NameConstraints (RFC 5280 §4.2.1.10) permitting URIs of host dev.corp only: SEQUENCE { [0] { SEQUENCE { [6] "dev.corp" } } }.
  const onlyDevCorp = () => new x509.Extension('2.5.29.30', true, Buffer.from([0x30, 0x0e, 0xa0, 0x0c, 0x30, 0x0a, 0x86, 0x08, ...Buffer.from('dev.corp')]));
  // A critical extension nobody here evaluates (a private OID, value NULL).
  const unknownCritical = () => new x509.Extension('1.3.6.1.4.1.55555.1', true, Buffer.from([0x05, 0x00]));

  // The same excluding URIs of host dev.corp ([1]), and one permitting only DNS names under corp.example ([0] { [2] }).
  const notDevCorp = () => new x509.Extension('2.5.29.30', true, Buffer.from([0x30, 0x0e, 0xa1, 0x0c, 0x30, 0x0a, 0x86, 0x08, ...Buffer.from('dev.corp')]));
  const dnsOnly = () => new x509.Extension('2.5.29.30', true, Buffer.from([0x30, 0x12, 0xa0, 0x10, 0x30, 0x0e, 0x82, 0x0c, ...Buffer.from('corp.example')]));
  const garbled = () => new x509.Extension('2.5.29.30', true, Buffer.from([0x30, 0x0e, 0xa0, 0x0c, 0x30]));

  // OpenSSL's issuer check refuses it first: the chain had read as "not signed by a root nor a presented intermediate".
  it('names an intermediate that signed the leaf but lacks keyCertSign for what it lacks', async () => {
    const { cert: intermediate, keys } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.cRLSign });
    const { cert: leaf } = await craftCertificate({ cert: intermediate, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const error = verifySvid([leaf, intermediate], bundles).error;
    expect(error?.code).toBe('SVID_CA_INVALID');
    expect(error?.message).toContain('lacks keyCertSign');
  });

  it('accepts an intermediate whose name constraints are on DNS names only (they leave SPIFFE IDs alone)', async () => {
    const { cert: constrained, keys } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, extraExtensions: [dnsOnly()] });
    const { cert: leaf } = await craftCertificate({ cert: constrained, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([leaf, constrained], bundles).valid).toBe(true);
  });

  it('rejects an intermediate with name constraints on URIs, permitted or excluded, or unreadable (not evaluated, so refused rather than ignored), and one with an unknown critical extension', async () => {
    // Unreadable constraints: OpenSSL will not take the certificate as an issuer at all.
    const { cert: broken, keys: brokenKeys } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, extraExtensions: [garbled()] });
    const { cert: underBroken } = await craftCertificate({ cert: broken, privateKey: brokenKeys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([underBroken, broken], bundles).valid).toBe(false);
    for (const extension of [onlyDevCorp(), notDevCorp(), unknownCritical()]) {
      const { cert: constrained, keys } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, extraExtensions: [extension] });
      const { cert: leaf } = await craftCertificate({ cert: constrained, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
      expect(verifySvid([leaf, constrained], bundles).error?.code, extension.type).toBe('SVID_CRITICAL_EXTENSION');
    }
    // The same intermediate with a non-critical unknown extension is fine: only critical ones must be understood.
    const { cert: plain, keys } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, extraExtensions: [new x509.Extension('1.3.6.1.4.1.55555.1', false, Buffer.from([0x05, 0x00]))] });
    const { cert: leaf } = await craftCertificate({ cert: plain, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([leaf, plain], bundles).valid).toBe(true);
  });

  it('rejects a leaf with an unknown critical extension, and accepts it non-critical', async () => {
    const { cert: critical } = await craftCertificate(caA.root, { uris: [WEB], extraExtensions: [unknownCritical()] });
    expect(verifySvid([critical], bundles).error?.code).toBe('SVID_CRITICAL_EXTENSION');
    const { cert: plain } = await craftCertificate(caA.root, { uris: [WEB], extraExtensions: [new x509.Extension('1.3.6.1.4.1.55555.1', false, Buffer.from([0x05, 0x00]))] });
    expect(verifySvid([plain], bundles).valid).toBe(true);
  });

  it('rejects an intermediate whose SPIFFE ID has a path', async () => {
    const { cert: badCa, keys } = await craftCertificate(caA.root, { uris: ['spiffe://cluster.local/ns/x/sa/y'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: leaf } = await craftCertificate({ cert: badCa, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([leaf, badCa], bundles).error?.code).toBe('SVID_CA_INVALID');
  });

  it("does not let another trust domain's intermediate under a shared root sign this one's identities", async () => {
    // One corporate root (no SPIFFE ID) in both bundles; each trust domain's CA an intermediate under it.
    const { cert: sharedRoot, keys: rootKeys } = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const shared = new BundleSet([createBundle('cluster.local', [sharedRoot]), createBundle('other.test', [sharedRoot])]);
    const rootAuthority = { cert: sharedRoot, privateKey: rootKeys.privateKey, chainAbove: [] };
    const { cert: otherCa, keys: otherKeys } = await craftCertificate(rootAuthority, { uris: ['spiffe://other.test'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: ownCa, keys: ownKeys } = await craftCertificate(rootAuthority, { uris: ['spiffe://cluster.local'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: minted } = await craftCertificate({ cert: otherCa, privateKey: otherKeys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const refused = verifySvid([minted, otherCa], shared);
    expect(refused.valid).toBe(false);
    expect(refused.error?.code).toBe('TRUST_DOMAIN_MISMATCH');
    expect(refused.error?.message).toMatch(/intermediate .* is the CA of trust domain "other.test", not of "cluster.local"/);
    // The accept side: each intermediate signs its own trust domain's identities.
    const { cert: ownLeaf } = await craftCertificate({ cert: ownCa, privateKey: ownKeys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([ownLeaf, ownCa], shared).valid).toBe(true);
    const { cert: otherLeaf } = await craftCertificate({ cert: otherCa, privateKey: otherKeys.privateKey, chainAbove: [] }, { uris: ['spiffe://other.test/ns/a/sa/b'] });
    expect(verifySvid([otherLeaf, otherCa], shared).valid).toBe(true);
  });

  it('under a root that two trust domains share, refuses an intermediate that names no trust domain, and accepts it under a root of one', async () => {
    const { cert: sharedRoot, keys: rootKeys } = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const rootAuthority = { cert: sharedRoot, privateKey: rootKeys.privateKey, chainAbove: [] };
    const { cert: anonymousCa, keys: anonymousKeys } = await craftCertificate(rootAuthority, { uris: null, ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: minted } = await craftCertificate({ cert: anonymousCa, privateKey: anonymousKeys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const shared = new BundleSet([createBundle('cluster.local', [sharedRoot]), createBundle('other.test', [sharedRoot])]);
    // The rule is the verifying node's: its own trust domain's bundle is the one whose roots count as shared.
    const local = { localTrustDomain: 'cluster.local' };
    const refused = verifySvid([minted, anonymousCa], shared, local);
    expect(refused.error?.code).toBe('SVID_CA_INVALID');
    expect(refused.error?.message).toMatch(/names no trust domain .* and its root .* is in the bundles of "cluster.local", "other.test"/);
    // The same chain when only this trust domain's bundle holds the root (Istio's plugged-in CA: intermediates without SPIFFE IDs).
    expect(verifySvid([minted, anonymousCa], new BundleSet([createBundle('cluster.local', [sharedRoot]), caB.bundle]), local).valid).toBe(true);
    // Shared by key, not only by the same certificate: the root re-issued with its key in the other bundle.
    const { cert: reissued } = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, keys: rootKeys, subject: sharedRoot.subject });
    expect(verifySvid([minted, anonymousCa], new BundleSet([createBundle('cluster.local', [sharedRoot]), createBundle('other.test', [reissued])]), local).error?.code).toBe('SVID_CA_INVALID');
    // A leaf the shared root signs itself: each bundle that lists the root trusts it for that trust domain.
    const { cert: direct } = await craftCertificate(rootAuthority, { uris: [WEB] });
    expect(verifySvid([direct], shared, local).valid).toBe(true);
    // An unnamed CA below this trust domain's named CA signs for this trust domain only.
    const { cert: ownCa, keys: ownKeys } = await craftCertificate(rootAuthority, { uris: ['spiffe://cluster.local'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: subCa, keys: subKeys } = await craftCertificate({ cert: ownCa, privateKey: ownKeys.privateKey, chainAbove: [] }, { uris: null, ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const subAuthority = { cert: subCa, privateKey: subKeys.privateKey, chainAbove: [] };
    const { cert: underSub } = await craftCertificate(subAuthority, { uris: [WEB] });
    expect(verifySvid([underSub, subCa, ownCa], shared, local).valid).toBe(true);
    const { cert: foreignUnderSub } = await craftCertificate(subAuthority, { uris: ['spiffe://other.test/ns/a/sa/b'] });
    expect(verifySvid([foreignUnderSub, subCa, ownCa], shared, local).error?.code).toBe('TRUST_DOMAIN_MISMATCH');
    // An unnamed CA at the top cannot make itself a named CA of either domain below it.
    const anonymousAuthority = { cert: anonymousCa, privateKey: anonymousKeys.privateKey, chainAbove: [] };
    for (const domain of ['cluster.local', 'other.test']) {
      const { cert: selfNamed, keys: selfNamedKeys } = await craftCertificate(anonymousAuthority, { uris: [`spiffe://${domain}`], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
      const { cert: mintedLeaf } = await craftCertificate({ cert: selfNamed, privateKey: selfNamedKeys.privateKey, chainAbove: [] }, { uris: [`spiffe://${domain}/ns/a/sa/b`] });
      const verdict = verifySvid([mintedLeaf, selfNamed, anonymousCa], shared, local);
      expect([verdict.error?.code, verdict.error?.message], domain).toEqual(['SVID_CA_INVALID', expect.stringMatching(/intermediate .* names no trust domain .* the CA it signs must name its trust domain/)]);
    }
    // A root that names a trust domain itself but whose key another bundle holds unnamed: its key is what signs.
    const { cert: namedCopy } = await craftCertificate(null, { uris: ['spiffe://cluster.local'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, keys: rootKeys, subject: sharedRoot.subject });
    const namedAndShared = new BundleSet([createBundle('cluster.local', [namedCopy]), createBundle('other.test', [sharedRoot])]);
    expect(verifySvid([minted, anonymousCa], namedAndShared, local).error?.code).toBe('SVID_CA_INVALID');
    const { cert: ownLeaf } = await craftCertificate({ cert: ownCa, privateKey: ownKeys.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([ownLeaf, ownCa], namedAndShared, local).valid).toBe(true);
    // Without the node's own trust domain no root counts as shared (ambit svid verify with one bundle, say).
    expect(verifySvid([minted, anonymousCa], shared).valid).toBe(true);
  });

  it("does not let a federated bundle that lists another peer's root, or the node's own, make the rule refuse that peer", async () => {
    const { cert: peerRoot, keys: peerRootKeys } = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: peerCa, keys: peerCaKeys } = await craftCertificate({ cert: peerRoot, privateKey: peerRootKeys.privateKey, chainAbove: [] }, { uris: null, ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: peerLeaf } = await craftCertificate({ cert: peerCa, privateKey: peerCaKeys.privateKey, chainAbove: [] }, { uris: ['spiffe://other.test/ns/a/sa/b'] });
    // third.test's bundle (a federated peer's own choice) repeats other.test's root: other.test's Istio-style unnamed CA still verifies.
    const bundles = new BundleSet([caA.bundle, createBundle('other.test', [peerRoot]), createBundle('third.test', [peerRoot])]);
    expect(verifySvid([peerLeaf, peerCa], bundles, { localTrustDomain: 'cluster.local' }).valid).toBe(true);
    // A root of the node's own bundle that names another trust domain could never vouch for it, so it is not shared.
    const { cert: namedForOther } = await craftCertificate(null, { uris: ['spiffe://other.test'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, keys: peerRootKeys, subject: peerRoot.subject });
    const mislisted = new BundleSet([createBundle('cluster.local', [caA.root.cert, namedForOther]), createBundle('other.test', [peerRoot])]);
    expect(verifySvid([peerLeaf, peerCa], mislisted, { localTrustDomain: 'cluster.local' }).valid).toBe(true);
  });;

  it('rejects a chain that exceeds an intermediate path length constraint', async () => {
    const { cert: ca1, keys: k1 } = await craftCertificate(caA.root, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, pathLength: 0 });
    const { cert: ca2, keys: k2 } = await craftCertificate({ cert: ca1, privateKey: k1.privateKey, chainAbove: [] }, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: leaf } = await craftCertificate({ cert: ca2, privateKey: k2.privateKey, chainAbove: [] }, { uris: [WEB] });
    expect(verifySvid([leaf, ca2, ca1], bundles).error?.code).toBe('SVID_CA_INVALID');
  });

  it('accepts seven presented intermediates and refuses a chain of ten certificates before checking any signature', async () => {
    const chainOf = async (intermediates: number) => {
      let issuer = caA.root;
      const above: x509.X509Certificate[] = [];
      for (let i = 0; i < intermediates; i++) {
        const { cert, keys } = await craftCertificate(issuer, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
        above.unshift(cert);
        issuer = { cert, privateKey: keys.privateKey, chainAbove: [] };
      }
      const { cert: leaf } = await craftCertificate(issuer, { uris: [WEB] });
      return [leaf, ...above];
    };
    expect(verifySvid(await chainOf(7), bundles).valid).toBe(true);
    const long = verifySvid(await chainOf(9), bundles);
    expect(long.error?.code).toBe('SVID_CHAIN_INVALID');
    expect(long.error?.message).toMatch(/chain of 10 certificates, more than 9/);
  });

  it('tries every root that signed the chain: an expired copy of a re-issued root first in the bundle does not hide the valid one', async () => {
    const keys = await generateKeyPair();
    const root = (notBefore: Date, notAfter: Date) =>
      x509.X509CertificateGenerator.createSelfSigned({
        name: 'O=ambit-test, CN=reissued root',
        notBefore,
        notAfter,
        keys,
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
      });
    const expired = await root(new Date(Date.now() - 3 * HOUR_MS), new Date(Date.now() - 2 * HOUR_MS));
    const current = await root(new Date(Date.now() - 60_000), new Date(Date.now() + 24 * HOUR_MS));
    const leafKeys = await generateKeyPair();
    const leaf = await issueLeaf({ spiffeId: WEB, publicKey: leafKeys.publicKey, authority: { cert: current, privateKey: keys.privateKey, chainAbove: [] }, ttlMs: HOUR_MS });
    expect(verifySvid([leaf], new BundleSet([createBundle('cluster.local', [expired, current])])).valid).toBe(true);
    // The reject side: with only the expired copy, its error is the one reported.
    expect(verifySvid([leaf], new BundleSet([createBundle('cluster.local', [expired])])).error?.code).toBe('SVID_EXPIRED');
  });

  it('checks signatures of presented intermediates with RSA keys up to 4096 bits, and refuses a larger one', async () => {
    const rsa = { name: 'RSASSA-PKCS1-v1_5', publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
    const intermediateWith = async (modulusLength: number) => {
      const keys = (await crypto.subtle.generateKey({ ...rsa, modulusLength }, true, ['sign', 'verify'])) as CryptoKeyPair;
      const cert = await x509.X509CertificateGenerator.create({
        subject: `CN=rsa-${modulusLength}`,
        issuer: caA.root.cert.subjectName,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + HOUR_MS),
        signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
        publicKey: keys.publicKey,
        signingKey: caA.root.privateKey,
        extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
      });
      const leafKeys = await generateKeyPair();
      const leaf = await x509.X509CertificateGenerator.create({
        subject: 'CN=leaf',
        issuer: cert.subjectName,
        notBefore: new Date(Date.now() - 60_000),
        notAfter: new Date(Date.now() + HOUR_MS),
        signingAlgorithm: rsa,
        publicKey: leafKeys.publicKey,
        signingKey: keys.privateKey,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.SubjectAlternativeNameExtension([{ type: 'url', value: WEB }], true),
        ],
      });
      return [leaf, cert];
    };
    expect(verifySvid(await intermediateWith(4096), bundles).valid).toBe(true);
    const large = verifySvid(await intermediateWith(4160), bundles);
    expect(large.error?.code).toBe('SVID_CA_INVALID');
    expect(large.error?.message).toMatch(/4160-bit RSA key; more than 4096 bits is refused/);
  });

  it('does not let a root that names another trust domain vouch for this one, even inside its bundle', async () => {
    const { cert: foreignRoot, keys } = await craftCertificate(null, { uris: ['spiffe://other.test'], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: leaf } = await craftCertificate({ cert: foreignRoot, privateKey: keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const mixed = new BundleSet([createBundle('cluster.local', [caA.root.cert, foreignRoot])]);
    expect(verifySvid([leaf], mixed).valid).toBe(false);
    // The accept side: the same root vouches for its own trust domain.
    const { cert: ownLeaf } = await craftCertificate({ cert: foreignRoot, privateKey: keys.privateKey, chainAbove: [] }, { uris: ['spiffe://other.test/ns/a/sa/b'] });
    expect(verifySvid([ownLeaf], new BundleSet([createBundle('other.test', [foreignRoot])])).valid).toBe(true);
  });

  it('trusts a root only through the bundle: a self-signed leaf naming a trusted ID is rejected', async () => {
    const { cert } = await craftCertificate(null, { uris: [WEB] });
    expect(verifySvid([cert], bundles).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('trusts both roots during a root rotation overlap and only the new one after withdrawal', async () => {
    const next = await createTestCa('cluster.local');
    const oldSvid = await issueTestSvid(caA, WEB);
    const newSvid = await issueTestSvid(next, WEB);
    const overlap = new BundleSet([createBundle('cluster.local', [caA.root.cert, next.root.cert])]);
    expect(verifySvid(oldSvid.chain, overlap).valid).toBe(true);
    expect(verifySvid(newSvid.chain, overlap).valid).toBe(true);
    const withdrawn = new BundleSet([createBundle('cluster.local', [next.root.cert])]);
    expect(verifySvid(oldSvid.chain, withdrawn).error?.code).toBe('SVID_CHAIN_INVALID');
    expect(verifySvid(newSvid.chain, withdrawn).valid).toBe(true);
  });
});

describe('keys and signatures in a peer chain', () => {
  const rsaPair = async (modulusLength: number) =>
    (await crypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;

  it('accepts a leaf with a 2048-bit RSA key and refuses one with a 1024-bit key', async () => {
    const strong = await craftCertificate(caA.root, { uris: [WEB], keys: await rsaPair(2048) });
    expect(verifySvid([strong.cert], bundles).valid).toBe(true);
    const weak = verifySvid([(await craftCertificate(caA.root, { uris: [WEB], keys: await rsaPair(1024) })).cert], bundles);
    expect(weak.error?.code).toBe('SVID_KEY_REFUSED');
    expect(weak.error?.message).toMatch(/the leaf has a 1024-bit RSA key; 2048 to 8192 bits are accepted/);
  });

  it('refuses a leaf its CA signed over SHA-1, and accepts one signed over SHA-384', async () => {
    const sha1 = verifySvid([(await craftCertificate(caA.root, { uris: [WEB], signingAlgorithm: { name: 'ECDSA', hash: 'SHA-1' } as EcdsaParams })).cert], bundles);
    expect(sha1.error?.code).toBe('SVID_KEY_REFUSED');
    expect(sha1.error?.message).toMatch(/is signed with ECDSA over SHA-1/);
    expect(verifySvid([(await craftCertificate(caA.root, { uris: [WEB], signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' } as EcdsaParams })).cert], bundles).valid).toBe(true);
  });

  it('accepts a chain that carries its SHA-1 self-signed root along, and refuses an intermediate signed over SHA-1', async () => {
    const sha1 = { name: 'ECDSA', hash: 'SHA-1' } as EcdsaParams;
    const root = await craftCertificate(null, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, subject: 'CN=legacy root', signingAlgorithm: sha1 });
    const rootAuthority = { cert: root.cert, privateKey: root.keys.privateKey, chainAbove: [] };
    const leaf = await craftCertificate(rootAuthority, { uris: [WEB] });
    const legacy = new BundleSet([createBundle('cluster.local', [root.cert])]);
    expect(verifySvid([leaf.cert, root.cert], legacy).valid).toBe(true);
    const intermediate = await craftCertificate(rootAuthority, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, signingAlgorithm: sha1 });
    const below = await craftCertificate({ cert: intermediate.cert, privateKey: intermediate.keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const refused = verifySvid([below.cert, intermediate.cert], legacy);
    expect(refused.error?.code).toBe('SVID_CA_INVALID');
    expect(refused.error?.message).toMatch(/over SHA-1/);
    // Named like the root, it is no root: its SHA-1 signature is relied on all the same.
    const posing = await craftCertificate(rootAuthority, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, subject: 'CN=legacy root', signingAlgorithm: sha1 });
    const underPosing = await craftCertificate({ cert: posing.cert, privateKey: posing.keys.privateKey, chainAbove: [] }, { uris: [WEB] });
    const forged = verifySvid([underPosing.cert, posing.cert], legacy);
    expect(forged.valid).toBe(false);
    expect(forged.error?.message).toMatch(/over SHA-1/);
  });

  it('refuses, before checking any signature, a presented CA whose RSA public exponent is past 32 bits', async () => {
    // OpenSSL takes any exponent below a 3072-bit modulus; one of ~3070 bits makes each check cost ~13 ms.
    const { publicKey } = await rsaPair(3072);
    const jwk = await crypto.subtle.exportKey('jwk', publicKey);
    const n = Buffer.from(jwk.n as string, 'base64url');
    const e = Buffer.from(n);
    e[0] = (e[0] as number) >> 1; // below n
    e[e.length - 1] = (e[e.length - 1] as number) | 1; // odd
    const huge = await crypto.subtle.importKey('jwk', { kty: 'RSA', n: jwk.n, e: e.toString('base64url'), ext: true }, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify']);
    const holder = await generateKeyPair();
    const intermediate = await craftCertificate(caA.root, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, keys: { publicKey: huge, privateKey: holder.privateKey } });
    const leaf = await craftCertificate({ cert: intermediate.cert, privateKey: holder.privateKey, chainAbove: [] }, { uris: [WEB] });
    const result = verifySvid([leaf.cert, intermediate.cert], bundles);
    expect(result.error?.code).toBe('SVID_CA_INVALID');
    expect(result.error?.message).toMatch(/presented intermediate .* has an RSA key with a 30\d\d-bit public exponent/);
  });

  it('gives up after 32 signature checks: same-named CAs presented in the worst order cannot buy n² of them', async () => {
    // CN=same eight times, each signed by the next, presented so that the issuer path building wants is always last.
    const cas: Array<{ cert: x509.X509Certificate; keys: CryptoKeyPair }> = [];
    let above: { cert: x509.X509Certificate; privateKey: CryptoKey; chainAbove: [] } | null = null;
    for (let i = 0; i < 8; i++) {
      const ca = await craftCertificate(above, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, subject: 'CN=same' });
      cas.unshift(ca);
      above = { cert: ca.cert, privateKey: ca.keys.privateKey, chainAbove: [] };
    }
    const leaf = await craftCertificate(above, { uris: [WEB] });
    const result = verifySvid([leaf.cert, ...cas.map((ca) => ca.cert).reverse()], bundles);
    expect(result.valid).toBe(false);
    expect(result.error?.code).toBe('SVID_CHAIN_INVALID');
    expect(result.error?.message).toMatch(/no path found within 32 signature checks/);
  });

  it('refuses a bundle whose root has a 1024-bit RSA key, naming the root', async () => {
    const keys = await rsaPair(1024);
    const root = await craftCertificate(null, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, keys, subject: 'CN=weak root', signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' } });
    expect(() => createBundle('cluster.local', [root.cert])).toThrow(/root 0 \(CN=weak root\) has a 1024-bit RSA key/);
  });
});

describe('loading an SVID one holds', () => {
  it('accepts a certificate with its own key', async () => {
    const svid = await issueTestSvid(caB, 'spiffe://other.test/ns/a/sa/b');
    const loaded = loadSvid(svid.certPem, svid.keyPem);
    expect(loaded.id.id).toBe('spiffe://other.test/ns/a/sa/b');
    expect(loaded.chain).toHaveLength(2);
  });

  it('rejects a key that belongs to another certificate', async () => {
    const one = await issueTestSvid(caA, WEB);
    const two = await issueTestSvid(caA, WEB);
    expect(() => loadSvid(one.certPem, two.keyPem)).toThrow(expect.objectContaining({ code: 'SVID_KEY_MISMATCH' }));
  });

  it('rejects text that is not a certificate', () => {
    expect(() => loadSvid('hello', 'world')).toThrow(expect.objectContaining({ code: 'SVID_PARSE' }));
  });
});

describe('certificate signing requests', () => {
  it('yield the requester public key when the signature verifies', async () => {
    const keys = await generateKeyPair();
    const csr = await createCsr(keys, WEB);
    const publicKey = await readCsr(csr);
    const spki = new Uint8Array(await crypto.subtle.exportKey('spki', publicKey));
    expect(spki).toEqual(new Uint8Array(await crypto.subtle.exportKey('spki', keys.publicKey)));
  });

  it('are refused when tampered with (no proof of possession)', async () => {
    const keys = await generateKeyPair();
    const other = await generateKeyPair();
    const csr = new x509.Pkcs10CertificateRequest(await createCsr(keys, WEB));
    // Re-sign the same request body with another key: the embedded public key no longer matches the signature.
    const forged = await x509.Pkcs10CertificateRequestGenerator.create({ keys: { publicKey: keys.publicKey, privateKey: other.privateKey }, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } });
    expect(csr.subject).toBeDefined();
    await expect(readCsr(forged.toString('pem'))).rejects.toMatchObject({ code: 'CA_CSR_INVALID' });
  });

  it('are refused for a key other than P-256 before its signature is checked (which costs what the sender chose)', async () => {
    const rsa = await crypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify']);
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({ keys: rsa, signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } });
    // Its signature broken: refused for its key all the same, so the signature was never what decided.
    const bytes = new Uint8Array(csr.rawData);
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
    const broken = x509.PemConverter.encode(bytes.buffer, 'CERTIFICATE REQUEST');
    await expect(readCsr(broken)).rejects.toMatchObject({ code: 'CA_CSR_INVALID', message: 'CSR key must be ECDSA P-256, got rsa' });
    const p384 = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
    const curve = await x509.Pkcs10CertificateRequestGenerator.create({ keys: p384, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' } });
    await expect(readCsr(curve.toString('pem'))).rejects.toMatchObject({ code: 'CA_CSR_INVALID', message: 'CSR key must be ECDSA P-256, got ECDSA secp384r1' });
  });

  it('are refused when signed with SHA-1, a P-256 key and a valid signature notwithstanding; SHA-384 and SHA-512 are taken', async () => {
    const keys = await generateKeyPair();
    const sha1 = await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-1' } });
    expect(await sha1.verify()).toBe(true);
    await expect(readCsr(sha1.toString('pem'))).rejects.toMatchObject({ code: 'CA_CSR_INVALID', message: 'CSR must be signed with ECDSA and SHA-256, SHA-384 or SHA-512, got SHA-1' });
    for (const hash of ['SHA-384', 'SHA-512']) {
      const csr = await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: { name: 'ECDSA', hash } });
      await expect(readCsr(csr.toString('pem'))).resolves.toBeDefined();
    }
  });

  it('are refused when they are not PKCS#10 at all', async () => {
    await expect(readCsr('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----')).rejects.toMatchObject({ code: 'CA_CSR_INVALID' });
  });
});
