// The agent's own trust bundle never goes back: a CA restored from a backup (or a stale replica) that serves an older
// bundle, one that still carries a root withdrawn since, is refused, while running and after a restart. Real CA over
// HTTPS, real agent, the CA's state files as `ambit ca root` writes them.
import { copyFile, mkdtemp, readdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { BundleSet, createBundle } from '../../src/identity/bundle.ts';
import type { TrustBundle } from '../../src/identity/bundle.ts';
import { activateAuthority, loadCa, prepareAuthority, withdrawAuthorities } from '../../src/identity/ca/store.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { fingerprintOf, verifySvid } from '../../src/identity/svid.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import { createTestCa } from '../helpers/certs.ts';

const TD = 'cluster.local';

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step().catch(() => {});
});

/**
 * An agent of node-a on `stateDir`, trusting `bootstrap` first, stopped after the test; with a join token for its
 * first start. `caUrl` is read once: a test may close the CA and start the agent again against it, unreachable.
 */
function agentOf(caUrl: string, bootstrap: TrustBundle, stateDir: string, joinToken?: string): IdentityAgent {
  const agent = new IdentityAgent({ caUrl, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: bootstrap, stateDir, logger: silentLogger(), ...(joinToken === undefined ? {} : { joinToken }) });
  cleanup.push(() => agent.stop());
  return agent;
}

describe("the agent's own trust bundle", () => {
  it('is stored in the state directory even when the bootstrap bundle was already the one the CA serves', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-bundle-stored-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    // `ambit ca bundle`'s SPIFFE JSON: the very bundle the CA serves, sequence and all.
    const agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), stateDir, logger: silentLogger(), joinToken: await ca.joinToken('node-a') });
    cleanup.push(() => agent.stop());
    await agent.start();
    await agent.stop();
    const stored = await readdir(stateDir);
    expect(stored).toEqual(expect.arrayContaining(['node-svid.pem', 'bundle.json', 'bootstrap-roots.json', 'withdrawn-roots.json']));
    const roots = JSON.parse(await readFile(join(stateDir, 'bootstrap-roots.json'), 'utf8')) as string[];
    expect(roots).toEqual(ca.server.ownBundle().roots.map(fingerprintOf));
  });

  it('refuses an older bundle that brings back a withdrawn root, while running and after a restart', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    // Root one, then root two prepared and activated: both published (the bundle a backup taken now holds).
    await prepareAuthority(ca.dir);
    await activateAuthority(ca.dir);
    await copyFile(join(ca.dir, 'ca.json'), join(ca.dir, 'ca.json.backup'));
    const bootstrap = (await loadCa(ca.dir)).bundle;
    // Root one withdrawn (say it leaked): the CA reads its state again and serves root two alone.
    await withdrawAuthorities(ca.dir, { graceMs: 0 });
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-rollback-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const agentFor = (joinToken?: string) => agentOf(ca.server.url, bootstrap, stateDir, joinToken);
    const current = (await loadCa(ca.dir)).bundle;
    expect(current.roots).toHaveLength(1);
    await expect.poll(() => ca.server.ownBundle().sequence, { timeout: 10_000 }).toBe(current.sequence);
    const agent = agentFor(await ca.joinToken('node-a'));
    await agent.start();
    await agent.refreshBundles();
    expect(agent.bundles().get(TD)?.sequence).toBe(current.sequence);

    // The operator restores the backup: the CA serves the older bundle, root one back in it.
    await copyFile(join(ca.dir, 'ca.json.backup'), join(ca.dir, 'ca.json'));
    await expect.poll(() => ca.server.ownBundle().sequence, { timeout: 10_000 }).toBeLessThan(current.sequence);
    await agent.refreshBundles();
    expect(agent.bundles().get(TD)?.sequence).toBe(current.sequence);
    expect(agent.bundles().get(TD)?.roots.map((root) => root.serialNumber)).toEqual(current.roots.map((root) => root.serialNumber));
    await agent.stop();

    // Restarted, it remembers the sequence it held (stored with the bundle) and refuses the older one again.
    const restarted = agentFor();
    await restarted.start();
    await restarted.refreshBundles();
    expect(restarted.bundles().get(TD)?.sequence).toBe(current.sequence);
    expect(restarted.bundles().get(TD)?.roots.map((root) => root.serialNumber)).toEqual(current.roots.map((root) => root.serialNumber));
  });

  it('never trusts a withdrawn root the bootstrap bundle still offers again, however the other state files were lost, while the CA is out of reach', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    // The DaemonSet's mounted --bundle file: root one, which is then withdrawn (say it leaked).
    const bootstrap = ca.server.ownBundle();
    const rootOne = bootstrap.roots[0];
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-withdrawn-bootstrap-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const caUrl = ca.server.url;
    const agentFor = (joinToken?: string) => agentOf(caUrl, bootstrap, stateDir, joinToken);
    const first = agentFor(await ca.joinToken('node-a'));
    await first.start();
    // A certificate root one signed: what anyone holding its leaked key could make.
    const signedByRootOne = first.nodeSvid()?.chain ?? [];
    await prepareAuthority(ca.dir);
    await activateAuthority(ca.dir);
    await withdrawAuthorities(ca.dir, { graceMs: 0 });
    const sequence = (await loadCa(ca.dir)).bundle.sequence;
    for (let i = 0; i < 100 && first.bundles().get(TD)?.sequence !== sequence; i++) {
      await first.refreshBundles().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await first.stop();
    expect(JSON.parse(await readFile(join(stateDir, 'withdrawn-roots.json'), 'utf8'))).toContain(fingerprintOf(rootOne!));
    await ca.close();
    const trusted = async () => {
      const agent = agentFor();
      await agent.start().catch(() => {});
      const result = { rootOne: agent.bundles().get(TD)?.roots.some((root) => root.equal(rootOne!)), verifies: verifySvid(signedByRootOne, agent.bundles(), {}).valid };
      await agent.stop();
      return result;
    };
    expect(await trusted(), 'state intact').toEqual({ rootOne: false, verifies: false });
    // A state directory from before bootstrap-roots.json was written, or one whose copy was cut short.
    await unlink(join(stateDir, 'bootstrap-roots.json'));
    expect(await trusted(), 'bootstrap-roots.json missing').toEqual({ rootOne: false, verifies: false });
    await writeFile(join(stateDir, 'bootstrap-roots.json'), '[\n');
    expect(await trusted(), 'bootstrap-roots.json truncated').toEqual({ rootOne: false, verifies: false });
    await unlink(join(stateDir, 'bundle.json'));
    expect(await trusted(), 'bundle.json missing').toEqual({ rootOne: false, verifies: false });
  });

  it('refuses a restored CA\'s bundle that brings back a withdrawn root after bundle.json was lost, keeping the roots it trusts', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    // Roots one and two published, a backup taken, then root one withdrawn.
    await prepareAuthority(ca.dir);
    await activateAuthority(ca.dir);
    await copyFile(join(ca.dir, 'ca.json'), join(ca.dir, 'ca.json.backup'));
    const bootstrap = (await loadCa(ca.dir)).bundle;
    // The CA signs with root two before the node attests: its node certificate outlives root one's withdrawal.
    for (let i = 0; i < 100 && ca.server.ownBundle().sequence !== bootstrap.sequence; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-restored-ca-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const caUrl = ca.server.url;
    const agentFor = (joinToken?: string) => agentOf(caUrl, bootstrap, stateDir, joinToken);
    const first = agentFor(await ca.joinToken('node-a'));
    await first.start();
    await withdrawAuthorities(ca.dir, { graceMs: 0 });
    const afterWithdrawal = (await loadCa(ca.dir)).bundle;
    const withdrawnAt = afterWithdrawal.sequence;
    const rootOne = bootstrap.roots.find((root) => !afterWithdrawal.roots.some((kept) => kept.equal(root)));
    for (let i = 0; i < 100 && first.bundles().get(TD)?.sequence !== withdrawnAt; i++) {
      await first.refreshBundles().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await first.stop();
    // The CA restored from the backup (serving root one again), and the node's bundle.json lost.
    await copyFile(join(ca.dir, 'ca.json.backup'), join(ca.dir, 'ca.json'));
    for (let i = 0; i < 100 && ca.server.ownBundle().sequence >= withdrawnAt; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    await unlink(join(stateDir, 'bundle.json'));
    const restarted = agentFor();
    await restarted.start();
    await expect(restarted.refreshBundles()).rejects.toMatchObject({ code: 'BUNDLE_INVALID', message: expect.stringContaining('bringing back a root a later bundle withdrew') });
    expect(restarted.bundles().get(TD)?.roots.some((root) => root.equal(rootOne!))).toBe(false);
  });

  it('records a root a later bundle withdrew, with the bundle, so that no bundle brings it back after a restart', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-rollback-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), stateDir, joinToken: await ca.joinToken('node-a'), logger: silentLogger() });
    cleanup.push(() => agent.stop());
    await agent.start();
    const first = agent.bundles().get(TD)!.roots[0]!;
    await prepareAuthority(ca.dir);
    await activateAuthority(ca.dir);
    await withdrawAuthorities(ca.dir, { graceMs: 0 });
    const withdrawnSequence = (await loadCa(ca.dir)).bundle.sequence;
    // The first root dropped by the bundle the agent takes next: recorded as withdrawn, beside the stored bundle.
    await expect.poll(async () => {
      await agent.refreshBundles();
      return agent.bundles().get(TD)?.sequence;
    }, { timeout: 10_000 }).toBe(withdrawnSequence);
    await expect.poll(async () => JSON.parse(await readFile(join(stateDir, 'withdrawn-roots.json'), 'utf8').catch(() => '[]')) as string[], { timeout: 5_000 }).toContain(fingerprintOf(first));
  });

  it('refuses an older bundle that is a part of ours (a root being rotated in, missing), and so never withdraws the newer root', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    await copyFile(join(ca.dir, 'ca.json'), join(ca.dir, 'ca.json.backup'));
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-rollback-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), stateDir, joinToken: await ca.joinToken('node-a'), logger: silentLogger() });
    cleanup.push(() => agent.stop());
    await agent.start();
    await prepareAuthority(ca.dir);
    const both = (await loadCa(ca.dir)).bundle;
    await expect.poll(async () => {
      await agent.refreshBundles();
      return agent.bundles().get(TD)?.roots.length;
    }, { timeout: 10_000 }).toBe(2);
    // A stale replica serves the bundle from before the prepare: the first root alone.
    await copyFile(join(ca.dir, 'ca.json.backup'), join(ca.dir, 'ca.json'));
    await expect.poll(() => ca.server.ownBundle().roots.length, { timeout: 10_000 }).toBe(1);
    await agent.refreshBundles();
    expect(agent.bundles().get(TD)?.sequence).toBe(both.sequence);
    expect(agent.bundles().get(TD)?.roots).toHaveLength(2);
    const withdrawn = JSON.parse(await readFile(join(stateDir, 'withdrawn-roots.json'), 'utf8').catch(() => '[]')) as string[];
    expect(withdrawn).toEqual([]);
  });

  it('is never taken from the stored federated bundles, which are read only for other trust domains and ignored when unreadable', async () => {
    const ca = await startInProcessCa(TD, {});
    cleanup.push(() => ca.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-federated-stored-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    const caUrl = ca.server.url;
    const bootstrap = ca.server.ownBundle();
    const first = agentOf(caUrl, bootstrap, stateDir, await ca.joinToken('node-a'));
    await first.start();
    await first.stop();
    await ca.close();
    // The file written by someone else (or damaged): a root of its own for our trust domain, and one for other.test.
    const rogue = (await createTestCa(TD)).root.cert;
    const other = (await createTestCa('other.test')).root.cert;
    await writeFile(join(stateDir, 'federated-bundles.json'), new BundleSet([createBundle(TD, [rogue]), createBundle('other.test', [other])]).toMapJson());
    const trusted = async () => {
      const agent = agentOf(caUrl, bootstrap, stateDir);
      await agent.start();
      const result = Object.fromEntries([...agent.bundles()].map((bundle) => [bundle.trustDomain, bundle.roots.map((root) => root.serialNumber)]));
      await agent.stop();
      return result;
    };
    expect(await trusted()).toEqual({ [TD]: bootstrap.roots.map((root) => root.serialNumber), 'other.test': [other.serialNumber] });
    for (const damaged of ['{"trust_domains": {"other.test": {"keys": [{"use": "x509-svid"}]}}}', 'not json', '']) {
      await writeFile(join(stateDir, 'federated-bundles.json'), damaged);
      expect(await trusted(), damaged).toEqual({ [TD]: bootstrap.roots.map((root) => root.serialNumber) });
    }
  });
});
