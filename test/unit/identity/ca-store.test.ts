// The CA state directory (src/identity/ca/store.ts): init, intermediates under a shared root, the
// prepare/activate/withdraw root rotation, and refusal of a damaged directory.
import { copyFile, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x509 from '../../../src/identity/x509.ts';
import { activateAuthority, caStateFile, initCa, loadCa, prepareAuthority, withdrawAuthorities } from '../../../src/identity/ca/store.ts';
import type { CaState } from '../../../src/identity/ca/store.ts';
import { BundleSet, createBundle } from '../../../src/identity/bundle.ts';
import { certificatesToPem, exportPrivateKeyPem, fingerprintOf, generateKeyPair, issueLeaf, spiffeIdOf, verifySvid } from '../../../src/identity/svid.ts';
import type { Certificate } from '../../../src/identity/svid.ts';
import { AmbitError } from '../../../src/errors.ts';
import { craftCertificate, createTestCa } from '../../helpers/certs.ts';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/default/sa/web`;
const HOUR_MS = 3_600_000;

let base: string;
let counter = 0;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'ambit-ca-store-'));
});

afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

/** A fresh, not yet existing CA directory path. */
function caDir(): string {
  counter++;
  return join(base, `ca-${counter}`);
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AmbitError) return error.code;
    throw error;
  }
  throw new Error('expected the call to be refused');
}

async function modeOf(path: string): Promise<number> {
  return (await stat(path)).mode & 0o777;
}

/** A leaf for WEB from the CA's active authority, with the chain a peer would receive. */
async function issueWeb(state: CaState): Promise<Certificate[]> {
  const keys = await generateKeyPair();
  const leaf = await issueLeaf({ spiffeId: WEB, publicKey: keys.publicKey, authority: state.active, ttlMs: HOUR_MS });
  const intermediate = fingerprintOf(state.active.cert) !== fingerprintOf(state.active.root);
  return intermediate ? [leaf, state.active.cert] : [leaf];
}

/** PEM cert and key of a self-signed root held outside any CA directory (an offline shared root). */
async function sharedRoot(trustDomain = TD): Promise<{ certPem: string; keyPem: string; cert: Certificate }> {
  const ca = await createTestCa(trustDomain, { ttlMs: 48 * HOUR_MS });
  return { certPem: certificatesToPem([ca.root.cert]), keyPem: await exportPrivateKeyPem(ca.root.privateKey), cert: ca.root.cert };
}

describe('ambit ca init', () => {
  it('creates a self-signed root that is CA:true with keyCertSign and the trust domain ID as URI SAN', async () => {
    const state = await initCa(caDir(), TD);
    const cert = state.active.cert;
    expect(cert.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(true);
    expect((cert.getExtension(x509.KeyUsagesExtension)?.usages ?? 0) & x509.KeyUsageFlags.keyCertSign).not.toBe(0);
    const id = spiffeIdOf(cert);
    expect(id instanceof AmbitError ? id.code : id.id).toBe(`spiffe://${TD}`);
    expect(fingerprintOf(state.active.root)).toBe(fingerprintOf(cert));
    expect(await cert.verify({ publicKey: cert.publicKey, signatureOnly: true })).toBe(true);
    expect(state.trustDomain).toBe(TD);
    expect(state.sequence).toBe(1n);
    expect(state.bundle.roots.map(fingerprintOf)).toEqual([fingerprintOf(cert)]);
  });

  it('issues leaves that verify against its own bundle', async () => {
    const state = await initCa(caDir(), TD);
    expect(verifySvid(await issueWeb(state), new BundleSet([state.bundle])).valid).toBe(true);
  });

  it('writes private keys 0600 and the CA directory 0700', async () => {
    const dir = caDir();
    const state = await initCa(dir, TD);
    const authority = join(dir, 'authorities', state.active.name);
    expect(await modeOf(dir)).toBe(0o700);
    expect(await modeOf(authority)).toBe(0o700);
    expect(await modeOf(join(authority, 'key.pem'))).toBe(0o600);
    expect(await modeOf(join(authority, 'cert.pem'))).toBe(0o644);
  });

  it('refuses a directory that already holds a CA, and leaves it as it was', async () => {
    const dir = caDir();
    const first = await initCa(dir, TD);
    const stateBefore = await readFile(caStateFile(dir), 'utf8');
    expect(await codeOf(initCa(dir, TD))).toBe('CA_STATE');
    expect(await readFile(caStateFile(dir), 'utf8')).toBe(stateBefore);
    expect(fingerprintOf((await loadCa(dir)).active.cert)).toBe(fingerprintOf(first.active.cert));
  });

  it.each([
    ['uppercase letters', 'Cluster.Local', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['a port', 'cluster.local:8443', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['a scheme', 'spiffe://cluster.local', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['nothing at all', '', 'SPIFFE_ID_EMPTY'],
    ['more than 255 bytes', 'a'.repeat(256), 'SPIFFE_ID_TRUST_DOMAIN_TOO_LONG'],
  ])('refuses a trust domain with %s, creating nothing', async (_case, trustDomain, code) => {
    const dir = caDir();
    expect(await codeOf(initCa(dir, trustDomain))).toBe(code);
    expect(await stat(dir).catch(() => null)).toBeNull();
  });
});

describe('intermediate CAs under a shared root', () => {
  it('creates an intermediate whose leaves verify, with the intermediate in the chain, against the shared root alone', async () => {
    const root = await sharedRoot();
    const state = await initCa(caDir(), TD, { parent: { certPem: root.certPem, keyPem: root.keyPem } });
    expect(fingerprintOf(state.active.root)).toBe(fingerprintOf(root.cert));
    expect(fingerprintOf(state.active.cert)).not.toBe(fingerprintOf(root.cert));
    expect(state.active.cert.issuer).toBe(root.cert.subject);
    // The published bundle holds the shared root, never the intermediate.
    expect(state.bundle.roots.map(fingerprintOf)).toEqual([fingerprintOf(root.cert)]);

    const chain = await issueWeb(state);
    expect(chain).toHaveLength(2);
    const rootOnly = new BundleSet([createBundle(TD, [root.cert])]);
    expect(verifySvid(chain, rootOnly).valid).toBe(true);
  });

  it('refuses a leaf that travels without its intermediate', async () => {
    const root = await sharedRoot();
    const state = await initCa(caDir(), TD, { parent: { certPem: root.certPem, keyPem: root.keyPem } });
    const [leaf] = await issueWeb(state);
    expect(verifySvid([leaf as Certificate], new BundleSet([state.bundle])).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('lets a leaf of cluster 1 verify with the bundle cluster 2 publishes (one trust domain, two CAs, one root)', async () => {
    const root = await sharedRoot();
    const clusterOne = await initCa(caDir(), TD, { parent: { certPem: root.certPem, keyPem: root.keyPem } });
    const clusterTwo = await initCa(caDir(), TD, { parent: { certPem: root.certPem, keyPem: root.keyPem } });
    expect(fingerprintOf(clusterOne.active.cert)).not.toBe(fingerprintOf(clusterTwo.active.cert));
    const clusterTwoBundles = new BundleSet([clusterTwo.bundle]);
    expect(verifySvid(await issueWeb(clusterOne), clusterTwoBundles).valid).toBe(true);
    expect(verifySvid(await issueWeb(clusterTwo), new BundleSet([clusterOne.bundle])).valid).toBe(true);
    // A CA with a root of its own is not part of that relationship.
    const standalone = await initCa(caDir(), TD);
    expect(verifySvid(await issueWeb(standalone), clusterTwoBundles).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('refuses a parent key that does not belong to the parent certificate', async () => {
    const root = await sharedRoot();
    const other = await sharedRoot();
    const dir = caDir();
    expect(await codeOf(initCa(dir, TD, { parent: { certPem: root.certPem, keyPem: other.keyPem } }))).toBe('SVID_KEY_MISMATCH');
    expect(await stat(caStateFile(dir)).catch(() => null)).toBeNull();
  });

  it('refuses a parent under which nothing it signs would verify (pathLenConstraint 0), before anything is written', async () => {
    for (const [pathLength, refused] of [[0, true], [1, false]] as const) {
      const { cert, keys } = await craftCertificate(null, { uris: null, ca: true, keyUsage: x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, pathLength });
      const parent = { certPem: certificatesToPem([cert]), keyPem: await exportPrivateKeyPem(keys.privateKey) };
      const dir = caDir();
      if (!refused) {
        const state = await initCa(dir, TD, { parent });
        expect(verifySvid(await issueWeb(state), new BundleSet([state.bundle])).valid).toBe(true);
        continue;
      }
      await expect(initCa(dir, TD, { parent })).rejects.toMatchObject({ code: 'SVID_CA_INVALID', message: expect.stringContaining('could sign nothing that verifies') });
      expect(await stat(caStateFile(dir)).catch(() => null)).toBeNull();
    }
  });

  it('refuses a parent that is not a PEM certificate and key', async () => {
    const root = await sharedRoot();
    expect(await codeOf(initCa(caDir(), TD, { parent: { certPem: 'not a certificate', keyPem: root.keyPem } }))).toBe('SVID_PARSE');
    expect(await codeOf(initCa(caDir(), TD, { parent: { certPem: root.certPem, keyPem: root.certPem } }))).toBe('SVID_PARSE');
  });
});

describe('root rotation: prepare, activate, withdraw', () => {
  it('prepare publishes a new root without signing with it', async () => {
    const dir = caDir();
    const before = await initCa(dir, TD);
    await prepareAuthority(dir);
    const after = await loadCa(dir);
    expect(after.bundle.roots).toHaveLength(2);
    expect(after.sequence).toBe(before.sequence + 1n);
    expect(after.bundle.sequence).toBe(after.sequence);
    expect(after.active.name).toBe(before.active.name);
    expect(fingerprintOf(after.active.cert)).toBe(fingerprintOf(before.active.cert));
    expect(after.authorities.map((authority) => authority.state)).toEqual(['active', 'prepared']);
  });

  it('refuses a second prepare while one is pending', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    await prepareAuthority(dir);
    const sequence = (await loadCa(dir)).sequence;
    expect(await codeOf(prepareAuthority(dir))).toBe('CA_STATE');
    expect((await loadCa(dir)).sequence).toBe(sequence);
  });

  it('activate signs with the prepared authority and keeps both roots in the bundle', async () => {
    const dir = caDir();
    const first = await initCa(dir, TD);
    const oldChain = await issueWeb(first);
    const prepared = await prepareAuthority(dir);
    const beforeActivate = await loadCa(dir);
    expect(await activateAuthority(dir)).toBe(prepared);
    const after = await loadCa(dir);
    expect(after.active.name).toBe(prepared);
    expect(after.sequence).toBe(beforeActivate.sequence + 1n);
    expect(after.bundle.roots).toHaveLength(2);
    expect(after.authorities.map((authority) => authority.state)).toEqual(['published', 'active']);
    const bundles = new BundleSet([after.bundle]);
    expect(verifySvid(oldChain, bundles).valid).toBe(true);
    expect(verifySvid(await issueWeb(after), bundles).valid).toBe(true);
    // The new leaf is signed by the new root, which the old bundle alone does not hold.
    expect(verifySvid(await issueWeb(after), new BundleSet([first.bundle])).error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('refuses activate with nothing prepared', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    expect(await codeOf(activateAuthority(dir))).toBe('CA_STATE');
    expect((await loadCa(dir)).sequence).toBe(1n);
  });

  it('refuses withdraw until the new authority has signed for the grace period', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    await prepareAuthority(dir);
    const activatedAt = new Date('2026-11-23T12:00:00Z');
    await activateAuthority(dir, activatedAt);
    const sequence = (await loadCa(dir)).sequence;
    expect(await codeOf(withdrawAuthorities(dir, { graceMs: HOUR_MS }, new Date(activatedAt.getTime() + HOUR_MS - 1000)))).toBe('CA_STATE');
    expect((await loadCa(dir)).bundle.roots).toHaveLength(2);
    expect((await loadCa(dir)).sequence).toBe(sequence);
    expect((await withdrawAuthorities(dir, { graceMs: HOUR_MS }, new Date(activatedAt.getTime() + HOUR_MS))).withdrawn).toEqual(['a1']);
    expect((await loadCa(dir)).bundle.roots).toHaveLength(1);
  });

  it('retires an intermediate whose root the authority in force also uses, saying it stays trusted until it expires, and withdraws the other authorities with it', async () => {
    const root = await sharedRoot();
    const parent = { certPem: root.certPem, keyPem: root.keyPem };
    const dir = caDir();
    const own = await initCa(dir, TD); // a root of its own, then intermediates under the shared root
    await prepareAuthority(dir, { parent });
    await activateAuthority(dir);
    const first = await loadCa(dir);
    const underShared = await issueWeb(first);
    await prepareAuthority(dir, { parent });
    await activateAuthority(dir);
    const result = await withdrawAuthorities(dir, { graceMs: 0 });
    expect(result.withdrawn).toEqual([own.active.name, first.active.name]);
    expect(result.stillTrusted).toEqual([{ name: first.active.name, until: first.active.cert.notAfter }]);
    const after = await loadCa(dir);
    expect(after.authorities.map((authority) => authority.state)).toEqual(['retired', 'retired', 'active']);
    // Indeed still trusted (the bundle holds the shared root); the own root's certificates no longer are.
    const bundles = new BundleSet([after.bundle]);
    expect(verifySvid(underShared, bundles).valid).toBe(true);
    expect(verifySvid(await issueWeb(own), bundles).valid).toBe(false);
  });

  it('withdraw with no grace removes the old root and bumps the sequence', async () => {
    const dir = caDir();
    const first = await initCa(dir, TD);
    const oldChain = await issueWeb(first);
    await prepareAuthority(dir);
    await activateAuthority(dir);
    const beforeWithdraw = await loadCa(dir);
    expect(await withdrawAuthorities(dir, { graceMs: 0 })).toEqual({ withdrawn: [first.active.name], stillTrusted: [] });
    const after = await loadCa(dir);
    expect(after.bundle.roots).toHaveLength(1);
    expect(after.sequence).toBe(beforeWithdraw.sequence + 1n);
    expect(fingerprintOf(after.bundle.roots[0] as Certificate)).toBe(fingerprintOf(after.active.root));
    expect(after.authorities.map((authority) => authority.state)).toEqual(['retired', 'active']);
    // Certificates of the withdrawn root are no longer trusted; the new root's still are.
    const bundles = new BundleSet([after.bundle]);
    expect(verifySvid(oldChain, bundles).error?.code).toBe('SVID_CHAIN_INVALID');
    expect(verifySvid(await issueWeb(after), bundles).valid).toBe(true);
  });

  it('refuses withdraw with nothing to withdraw', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    expect(await codeOf(withdrawAuthorities(dir, { graceMs: 0 }))).toBe('CA_STATE');
    // A prepared authority is not withdrawn: it has not yet become the one that signs.
    await prepareAuthority(dir);
    expect(await codeOf(withdrawAuthorities(dir, { graceMs: 0 }))).toBe('CA_STATE');
    expect((await loadCa(dir)).bundle.roots).toHaveLength(2);
    await activateAuthority(dir);
    await withdrawAuthorities(dir, { graceMs: 0 });
    expect(await codeOf(withdrawAuthorities(dir, { graceMs: 0 }))).toBe('CA_STATE');
  });

  it('rotates more than once, each activation keeping exactly one signing authority', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    for (let round = 0; round < 2; round++) {
      await prepareAuthority(dir);
      await activateAuthority(dir);
      await withdrawAuthorities(dir, { graceMs: 0 });
    }
    const state = await loadCa(dir);
    expect(state.active.name).toBe('a3');
    expect(state.authorities.filter((authority) => authority.state === 'active')).toHaveLength(1);
    expect(state.bundle.roots).toHaveLength(1);
    expect(state.sequence).toBe(7n);
  });
});

describe('root commands run at the same time', () => {
  // Each is its own process in practice (ambit ca root ...); here two in one process, their reads and writes
  // interleaved as two processes' can be.
  it('keep both changes: a withdrawal and a preparation together leave the old root withdrawn and the new one published', async () => {
    const dir = caDir();
    const first = await initCa(dir, TD);
    await prepareAuthority(dir);
    await activateAuthority(dir);
    const before = await loadCa(dir);
    const [withdrawal, prepared] = await Promise.all([withdrawAuthorities(dir, { graceMs: 0 }), prepareAuthority(dir)]);
    expect(withdrawal.withdrawn).toEqual([first.active.name]);
    const after = await loadCa(dir);
    expect(after.authorities.map((authority) => [authority.name, authority.state])).toEqual([[first.active.name, 'retired'], ['a2', 'active'], [prepared, 'prepared']]);
    // The withdrawn root is out of the bundle, and each change moved the sequence on.
    expect(after.bundle.roots.map(fingerprintOf)).not.toContain(fingerprintOf(first.active.root));
    expect(after.bundle.roots).toHaveLength(2);
    expect(after.sequence).toBe(before.sequence + 2n);
  });

  it('refuse, after waiting, while another holds ca.json, naming its lock', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    await writeFile(`${caStateFile(dir)}.lock`, 'another holder');
    const refused = await prepareAuthority(dir).catch((error: unknown) => error as AmbitError);
    expect(refused).toBeInstanceOf(AmbitError);
    expect((refused as AmbitError).code).toBe('CA_STATE');
    expect((refused as AmbitError).message).toContain('ca.json.lock: held by another process');
    await unlink(`${caStateFile(dir)}.lock`);
    expect(await prepareAuthority(dir)).toBe('a2');
  }, 15_000);
});

describe('naming a new authority', () => {
  it('never reuses the name of an authority still in use after an older one was removed by hand', async () => {
    const dir = caDir();
    await initCa(dir, TD);
    await prepareAuthority(dir);
    await activateAuthority(dir);
    await withdrawAuthorities(dir, { graceMs: 0 });
    // The operator deletes the retired a1 from disk and from ca.json.
    await rm(join(dir, 'authorities', 'a1'), { recursive: true });
    const state = JSON.parse(await readFile(caStateFile(dir), 'utf8')) as { authorities: Array<{ name: string }> };
    state.authorities = state.authorities.filter((authority) => authority.name !== 'a1');
    await writeFile(caStateFile(dir), JSON.stringify(state));
    const activeKey = await readFile(join(dir, 'authorities', 'a2', 'key.pem'), 'utf8');
    expect(await prepareAuthority(dir)).toBe('a3');
    expect(await readFile(join(dir, 'authorities', 'a2', 'key.pem'), 'utf8')).toBe(activeKey);
    expect((await loadCa(dir)).active.name).toBe('a2');
  });
});

describe('loading a damaged CA directory', () => {
  it('refuses a directory without a CA', async () => {
    expect(await codeOf(loadCa(caDir()))).toBe('CA_STATE');
  });

  it.each([
    ['truncated JSON', '{"version": 1, "trustDo'],
    ['an empty file', ''],
    ['another version', JSON.stringify({ version: 2, trustDomain: TD, sequence: '1', authorities: [] })],
    ['no authorities list', JSON.stringify({ version: 1, trustDomain: TD, sequence: '1' })],
    ['no active authority', JSON.stringify({ version: 1, trustDomain: TD, sequence: '1', refreshHintSeconds: 300, authorities: [] })],
  ])('refuses a ca.json with %s as CA_STATE', async (_case, text) => {
    const dir = caDir();
    await initCa(dir, TD);
    await writeFile(caStateFile(dir), text);
    expect(await codeOf(loadCa(dir))).toBe('CA_STATE');
  });

  it.each(['key.pem', 'cert.pem', 'root.pem'])('refuses an authority whose %s is missing as CA_STATE', async (file) => {
    const dir = caDir();
    const state = await initCa(dir, TD);
    await unlink(join(dir, 'authorities', state.active.name, file));
    expect(await codeOf(loadCa(dir))).toBe('CA_STATE');
  });

  it('refuses a key.pem swapped with another authority\'s as SVID_KEY_MISMATCH', async () => {
    const dir = caDir();
    const other = caDir();
    const state = await initCa(dir, TD);
    const otherState = await initCa(other, TD);
    await copyFile(join(other, 'authorities', otherState.active.name, 'key.pem'), join(dir, 'authorities', state.active.name, 'key.pem'));
    expect(await codeOf(loadCa(dir))).toBe('SVID_KEY_MISMATCH');
  });
});

describe('root withdraw by the audit log: once every certificate of the old roots has expired', () => {
  const issued = (authority: string | undefined, expiresAt: string, spiffeId = WEB, serial = '0a', node = 'n1') =>
    JSON.stringify({ time: '2026-11-23T12:00:00.000Z', event: 'svid_issued', caller: `spiffe://cluster.local/ambit/node/${node}`, node, spiffeId, serial, expiresAt, ...(authority === undefined ? {} : { authority }) });

  async function rotated(): Promise<{ dir: string; log: string; oldName: string; newName: string }> {
    const dir = caDir();
    const first = await initCa(dir, TD);
    await prepareAuthority(dir);
    const newName = await activateAuthority(dir);
    return { dir, log: join(dir, 'audit.log'), oldName: first.active.name, newName };
  }

  it('refuses while a certificate the old root signed is still valid, naming it, and withdraws once it expired', async () => {
    const { dir, log, oldName, newName } = await rotated();
    await writeFile(log, [
      issued(oldName, '2026-11-23T13:00:00.000Z', WEB, '01'),
      issued(oldName, '2026-11-23T14:00:00.000Z', 'spiffe://cluster.local/ambit/node/n1', '02'),
      // The new root's certificates never hold the old one back, however long they live.
      issued(newName, '2026-11-30T00:00:00.000Z', WEB, '03'),
    ].join('\n') + '\n');
    const sequence = (await loadCa(dir)).sequence;
    const refused = await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T13:59:59Z')).catch((error: unknown) => error as AmbitError);
    expect(refused).toBeInstanceOf(AmbitError);
    expect((refused as AmbitError).code).toBe('CA_STATE');
    expect((refused as AmbitError).message).toContain('spiffe://cluster.local/ambit/node/n1');
    expect((refused as AmbitError).message).toContain('serial 02');
    expect((refused as AmbitError).message).toContain('2026-11-23T14:00:00.000Z');
    expect((await loadCa(dir)).sequence).toBe(sequence);
    expect((await loadCa(dir)).bundle.roots).toHaveLength(2);
    expect((await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T14:00:01Z'))).withdrawn).toEqual([oldName]);
    expect((await loadCa(dir)).bundle.roots).toHaveLength(1);
  });

  it('lets a renewal under the new root release the old certificate of that holder only, not of another holder of the identity', async () => {
    const { dir, log, oldName, newName } = await rotated();
    const lines = [
      issued(oldName, '2026-11-23T14:00:00.000Z', WEB, '01', 'n1'),
      issued(oldName, '2026-11-23T13:30:00.000Z', WEB, '02', 'n2'),
      issued(newName, '2026-11-23T15:00:00.000Z', WEB, '03', 'n1'),
    ];
    await writeFile(log, lines.join('\n') + '\n');
    const refused = await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T13:00:00Z')).catch((error: unknown) => error as AmbitError);
    expect((refused as AmbitError).code).toBe('CA_STATE');
    expect((refused as AmbitError).message).toContain('serial 02');
    // n2 renews too: nothing of the old root is in use any more, an hour before its certificates expire.
    await writeFile(log, [...lines, issued(newName, '2026-11-23T15:00:00.000Z', WEB, '04', 'n2')].join('\n') + '\n');
    expect((await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T13:00:00Z'))).withdrawn).toEqual([oldName]);
  });

  it('counts a record that does not name its signer (written by an older CA) as the old root\'s', async () => {
    const { dir, log } = await rotated();
    await writeFile(log, issued(undefined, '2026-11-23T14:00:00.000Z') + '\n');
    expect(await codeOf(withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T13:00:00Z')))).toBe('CA_STATE');
    expect((await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T15:00:00Z'))).withdrawn).toHaveLength(1);
  });

  it('refuses without an audit log, saying what to pass instead', async () => {
    const { dir, log } = await rotated();
    const refused = await withdrawAuthorities(dir, { auditLog: log }).catch((error: unknown) => error as AmbitError);
    expect((refused as AmbitError).code).toBe('CA_STATE');
    expect((refused as AmbitError).message).toContain(log);
    expect((refused as AmbitError).message).toContain('--grace');
    expect((await loadCa(dir)).bundle.roots).toHaveLength(2);
  });

  it("refuses a file that holds no CA's record (another file, the proxy's audit log), withdrawing nothing", async () => {
    const { dir, log, oldName } = await rotated();
    const proxyLog = JSON.stringify({ time: '2026-11-23T12:00:00.000Z', event: 'config_change', version: 'v1' }) + '\n';
    for (const text of ['node-7.example.com\n', '\u0000\u0001garbage', '', '{"hostname":"x"}\n', JSON.stringify({ event: 'svid_issued', expiresAt: '2026-11-23T14:00:00.000Z', authority: oldName }) + '\n', proxyLog]) {
      await writeFile(log, text);
      const refused = await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T15:00:00Z')).catch((error: unknown) => error as AmbitError);
      expect((refused as AmbitError).code, JSON.stringify(text)).toBe('CA_STATE');
      expect((refused as AmbitError).message).toContain('holds no record of a CA');
      expect((await loadCa(dir)).bundle.roots).toHaveLength(2);
    }
    // A CA's log with no issuance since (roots prepared and activated, nothing signed): nothing holds the old root back.
    await writeFile(log, proxyLog + JSON.stringify({ time: '2026-11-23T12:00:00.000Z', event: 'bundle_changed', sequence: '3' }) + '\n');
    expect((await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T15:00:00Z'))).withdrawn).toEqual([oldName]);
  });

  it('reads past damaged and foreign lines without failing', async () => {
    const { dir, log, oldName } = await rotated();
    await writeFile(log, [
      'not json at all "expiresAt"',
      '{"event":"svid_issued","expiresAt":"2026-11-23T14:00:00.000Z","authority":"' + oldName, // cut short by a crash
      '["expiresAt"]',
      JSON.stringify({ event: 'svid_issued', expiresAt: 'tomorrow', authority: oldName }),
      JSON.stringify({ event: 'sign_refused', expiresAt: '2099-01-01T00:00:00.000Z', authority: oldName }),
      JSON.stringify({ event: 'svid_issued', expiresAt: 12345, authority: oldName }),
      JSON.stringify({ event: 'config_change', version: 'v1' }),
      issued(oldName, '2026-11-23T12:30:00.000Z'),
    ].join('\n'));
    expect(await codeOf(withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T12:29:00Z')))).toBe('CA_STATE');
    expect((await withdrawAuthorities(dir, { auditLog: log }, new Date('2026-11-23T12:31:00Z'))).withdrawn).toEqual([oldName]);
  });
});

