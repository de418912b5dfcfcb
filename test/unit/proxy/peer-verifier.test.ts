// The proxy's peer verification caches verdicts by leaf fingerprint; a cached accept must never outlive the trust
// that made it (a bundle set without the root, an expired leaf) nor stand in for the identity check.
// Real TLS handshakes on loopback: the verifier reads the peer certificate from the server-side socket.
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { BundleSet, createBundle } from '../../../src/identity/bundle.ts';
import { PeerVerifier } from '../../../src/proxy/tls.ts';
import { craftCertificate, createTestCa, issueTestSvid } from '../../helpers/certs.ts';
import * as x509 from '../../../src/identity/x509.ts';
import { certificatesToPem, exportPrivateKeyPem } from '../../../src/identity/svid.ts';
import type { TestSvid } from '../../helpers/certs.ts';

const TD = 'verify.test';
const CLIENT_ID = `spiffe://${TD}/ns/demo/sa/client`;
const sockets: tls.TLSSocket[] = [];

afterAll(() => {
  for (const socket of sockets) socket.destroy();
});

/** The server side of a TLS 1.3 connection from a client presenting `client`. */
async function acceptedFrom(server: TestSvid, client: TestSvid): Promise<tls.TLSSocket> {
  const listener = tls.createServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: false });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = once(listener, 'secureConnection') as Promise<[tls.TLSSocket]>;
  const socket = tls.connect({ host: '127.0.0.1', port: (listener.address() as AddressInfo).port, cert: client.certPem, key: client.keyPem, minVersion: 'TLSv1.3', rejectUnauthorized: false });
  socket.on('error', () => {});
  const [serverSide] = await accepted;
  sockets.push(socket, serverSide);
  listener.close();
  return serverSide;
}

describe('peer verification with a verdict cache', () => {
  it('accepts a peer the bundle vouches for, and refuses it once the bundle set no longer holds its root', async () => {
    const ca = await createTestCa(TD);
    const other = await createTestCa('other.test');
    const verifier = new PeerVerifier();
    const socket = await acceptedFrom(await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`), await issueTestSvid(ca, CLIENT_ID));
    expect(verifier.verify(socket, new BundleSet([ca.bundle]), CLIENT_ID).valid).toBe(true);
    // A withdrawn root arrives as a new bundle set: the cached accept is not reused with it.
    const rotated = new BundleSet([(await createTestCa(TD)).bundle, other.bundle]);
    const refused = verifier.verify(socket, rotated, CLIENT_ID);
    expect(refused.valid).toBe(false);
  });

  it('checks the expected identity on every call, cached verdict or not', async () => {
    const ca = await createTestCa(TD);
    const verifier = new PeerVerifier();
    const bundles = new BundleSet([ca.bundle]);
    const socket = await acceptedFrom(await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`), await issueTestSvid(ca, CLIENT_ID));
    expect(verifier.verify(socket, bundles, CLIENT_ID).valid).toBe(true);
    const wrong = verifier.verify(socket, bundles, `spiffe://${TD}/ns/demo/sa/admin`);
    expect(wrong.valid).toBe(false);
    expect(verifier.verify(socket, bundles, (id) => id.path.startsWith('/ns/demo/')).valid).toBe(true);
  });

  it('does not keep accepting a leaf after it expires', async () => {
    const ca = await createTestCa(TD);
    const verifier = new PeerVerifier();
    const bundles = new BundleSet([ca.bundle]);
    // X.509 times have one-second granularity: a 2 s leaf is valid for 1–2 s.
    const socket = await acceptedFrom(await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`), await issueTestSvid(ca, CLIENT_ID, { ttlMs: 2000 }));
    expect(verifier.verify(socket, bundles, CLIENT_ID).valid).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 2600));
    const expired = verifier.verify(socket, bundles, CLIENT_ID);
    expect(expired.valid).toBe(false);
    expect(expired.error?.code).toBe('SVID_EXPIRED');
  });

  it('accepts a leaf that was not yet valid as soon as it is (a peer whose CA clock runs ahead), not a minute later', async () => {
    const ca = await createTestCa(TD);
    const verifier = new PeerVerifier();
    const bundles = new BundleSet([ca.bundle]);
    // Issued by a CA 12 s ahead: it starts 2 s from now (X.509 times have one-second granularity).
    const socket = await acceptedFrom(await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`), await issueTestSvid(ca, CLIENT_ID, { now: new Date(Date.now() + 12_000) }));
    const early = verifier.verify(socket, bundles, CLIENT_ID);
    expect(early.valid).toBe(false);
    expect(early.error?.code).toBe('SVID_NOT_YET_VALID');
    await new Promise((resolve) => setTimeout(resolve, 3_200));
    expect(verifier.verify(socket, bundles, CLIENT_ID).valid).toBe(true);
  });

  it('judges each chain a leaf comes with: refused with an expired intermediate, accepted with its valid one at once', async () => {
    const ca = await createTestCa(TD);
    const now = Date.now();
    // Two issues of one intermediate (same subject and key), the first expired: an overlap of intermediates.
    const keys = await craftCertificate(null, { ca: true, uris: null });
    const issue = (notBefore: number, notAfter: number) => craftCertificate(ca.root, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, keys: keys.keys, subject: 'O=ambit-test, CN=overlap', notBefore: new Date(notBefore), notAfter: new Date(notAfter) });
    const expired = await issue(now - 10 * 3_600_000, now - 3_600_000);
    const valid = await issue(now - 3_600_000, now + 10 * 3_600_000);
    const leaf = await craftCertificate({ cert: valid.cert, privateKey: keys.keys.privateKey, chainAbove: [] }, { uris: [CLIENT_ID] });
    const presenting = async (intermediate: x509.X509Certificate) => ({ chain: [leaf.cert, intermediate], certPem: certificatesToPem([leaf.cert, intermediate]), keyPem: await exportPrivateKeyPem(leaf.keys.privateKey), keys: leaf.keys });
    const server = await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`);
    const verifier = new PeerVerifier();
    const bundles = new BundleSet([ca.bundle]);
    expect(verifier.verify(await acceptedFrom(server, await presenting(expired.cert)), bundles, CLIENT_ID).error?.code).toBe('SVID_EXPIRED');
    expect(verifier.verify(await acceptedFrom(server, await presenting(valid.cert)), bundles, CLIENT_ID).valid).toBe(true);
    // And the other way round: the accept of one chain does not stand in for the other.
    expect(verifier.verify(await acceptedFrom(server, await presenting(expired.cert)), bundles, CLIENT_ID).valid).toBe(false);
  });

  it('refuses a peer without a certificate', async () => {
    const ca = await createTestCa(TD);
    const server = await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`);
    const listener = tls.createServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: false });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const accepted = once(listener, 'secureConnection') as Promise<[tls.TLSSocket]>;
    const client = tls.connect({ host: '127.0.0.1', port: (listener.address() as AddressInfo).port, minVersion: 'TLSv1.3', rejectUnauthorized: false });
    client.on('error', () => {});
    const [serverSide] = await accepted;
    sockets.push(client, serverSide);
    listener.close();
    expect(new PeerVerifier().verify(serverSide, new BundleSet([ca.bundle]), CLIENT_ID).valid).toBe(false);
  });
});

describe("the proxy's verifier and roots its trust domain shares", () => {
  it("refuses, as the node of the trust domain, a peer whose unnamed CA sits under a root another domain's bundle holds too", async () => {
    const { cert: root, keys: rootKeys } = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: unnamedCa, keys: caKeys } = await craftCertificate({ cert: root, privateKey: rootKeys.privateKey, chainAbove: [] }, { uris: null, ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign });
    const { cert: leaf, keys: leafKeys } = await craftCertificate({ cert: unnamedCa, privateKey: caKeys.privateKey, chainAbove: [] }, { uris: [CLIENT_ID] });
    const client: TestSvid = { chain: [leaf, unnamedCa], certPem: certificatesToPem([leaf, unnamedCa]), keyPem: await exportPrivateKeyPem(leafKeys.privateKey), keys: leafKeys };
    const socket = await acceptedFrom(await issueTestSvid(await createTestCa(TD), `spiffe://${TD}/ns/demo/sa/server`), client);
    const bundles = new BundleSet([createBundle(TD, [root]), createBundle('other.test', [root])]);
    expect(new PeerVerifier({ localTrustDomain: TD }).verify(socket, bundles, null).error?.code).toBe('SVID_CA_INVALID');
    expect(new PeerVerifier({ localTrustDomain: 'elsewhere.test' }).verify(socket, bundles, null).valid).toBe(true);
  });
});

describe('the end of a verified path', () => {
  it('is its earliest certificate: an intermediate that ends before the leaf ends the verdict and the session with it', async () => {
    const ca = await createTestCa(TD);
    const now = Date.now();
    const intermediate = await craftCertificate(ca.root, { ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, uris: null, extKeyUsage: null, notAfter: new Date(now + 10 * 60_000) });
    const leaf = await craftCertificate({ cert: intermediate.cert, privateKey: intermediate.keys.privateKey, chainAbove: [] }, { uris: [CLIENT_ID], notAfter: new Date(now + 60 * 60_000) });
    const client: TestSvid = { ...(await issueTestSvid(ca, CLIENT_ID)), certPem: certificatesToPem([leaf.cert, intermediate.cert]), keyPem: await exportPrivateKeyPem(leaf.keys.privateKey) };
    const socket = await acceptedFrom(await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`), client);
    // Until then the chain is accepted; the inbound server and the pool end the session's new streams at that time.
    const result = new PeerVerifier().verify(socket, new BundleSet([ca.bundle]), CLIENT_ID);
    expect(result.valid).toBe(true);
    // Whole seconds: a certificate's times have no milliseconds.
    expect(result.valid && result.notAfterMs).toBe(intermediate.cert.notAfter.getTime());
    expect(result.valid && result.notAfterMs).toBeLessThan(leaf.cert.notAfter.getTime());
  });

  it('is the root\'s end when the root ends first, though a root-signed leaf arrives alone (a CA that does not cap its leaves)', async () => {
    const now = Date.now();
    const root = await craftCertificate(null, { uris: [], ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign, notAfter: new Date(now + 10 * 60_000) });
    const leaf = await craftCertificate({ cert: root.cert, privateKey: root.keys.privateKey, chainAbove: [] }, { uris: [CLIENT_ID], notAfter: new Date(now + 60 * 60_000) });
    const client: TestSvid = { chain: [leaf.cert], certPem: certificatesToPem([leaf.cert]), keyPem: await exportPrivateKeyPem(leaf.keys.privateKey), keys: leaf.keys };
    const socket = await acceptedFrom(await issueTestSvid(await createTestCa(TD), `spiffe://${TD}/ns/demo/sa/server`), client);
    const result = new PeerVerifier().verify(socket, new BundleSet([createBundle(TD, [root.cert])]), CLIENT_ID);
    expect(result.valid).toBe(true);
    expect(result.valid && result.notAfterMs).toBe(root.cert.notAfter.getTime());
  });
});
