// The bundle map the CA sends with every certificate it signs is read once per distinct map: parsing its roots is
// X.509 in JavaScript, milliseconds of the proxy's main thread for each answer of a rotation or a start. Real CA over
// HTTPS, real agent; the CA's bundle changed as `ambit ca root prepare` changes it.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { BundleSet } from '../../src/identity/bundle.ts';
import { prepareAuthority } from '../../src/identity/ca/store.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const WORKLOADS = Array.from({ length: 11 }, (_, i) => `spiffe://${TD}/ns/demo/sa/w${i}`);

describe('the bundle map in the CA\'s answers', () => {
  let ca: InProcessCa;
  let agent: IdentityAgent;
  let stateDir: string;

  beforeAll(async () => {
    ca = await startInProcessCa(TD, { 'node-a': WORKLOADS });
    stateDir = await mkdtemp(join(tmpdir(), 'ambit-bundle-parse-'));
    agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), joinToken: await ca.joinToken('node-a'), stateDir, logger: silentLogger() });
    await agent.start();
  });

  afterAll(async () => {
    vi.restoreAllMocks();
    await agent?.stop();
    await ca?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('is not parsed again while it is the one already read: ten certificates, no parse', async () => {
    const parse = vi.spyOn(BundleSet, 'fromMapJson');
    const svids = await Promise.all(WORKLOADS.slice(0, 10).map((id) => agent.ensure(id)));
    expect(svids.map((svid) => svid.id.id)).toEqual(WORKLOADS.slice(0, 10));
    expect(parse).not.toHaveBeenCalled();
    parse.mockRestore();
  });

  it('is parsed and taken once it changes (a root prepared at the CA)', async () => {
    const before = agent.bundles().get(TD);
    // Watched from before the change: a renewal's answer may bring the new map before the request below does.
    const parse = vi.spyOn(BundleSet, 'fromMapJson');
    await prepareAuthority(ca.dir);
    await expect.poll(() => ca.server.ownBundle().sequence, { timeout: 10_000 }).toBeGreaterThan(before?.sequence ?? 0n);
    await agent.ensure(WORKLOADS[10] as string);
    expect(parse).toHaveBeenCalled();
    const now = agent.bundles().get(TD);
    expect(now?.sequence).toBe(ca.server.ownBundle().sequence);
    expect(now?.roots).toHaveLength(2);
    parse.mockRestore();
  });
});
