// A root rotation must not lock out an agent that missed it: offline from before `ambit ca root prepare` until after
// `activate`, its bundle holds the old root alone. Until that root is withdrawn, the CA's serving chain carries the
// new root cross-certified by it, so the agent, restarted from its state directory, still reaches the CA and takes
// the new bundle (it was refused for good: its node SVID expired and the node needed a new join token). Real CA over
// HTTPS, real agent, the CA's state files as `ambit ca root` writes them.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { activateAuthority, loadCa, prepareAuthority, withdrawAuthorities } from '../../src/identity/ca/store.ts';
import { pino } from 'pino';
import { silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step().catch(() => {});
});

/** The agent's start, or what refused it, within `ms` (a refused CA is retried for ever). */
async function startWithin(agent: IdentityAgent, ms: number): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((resolve) => (timer = setTimeout(() => resolve('not started'), ms)));
  try {
    return await Promise.race([agent.start().then(() => 'started', (error: Error) => `failed: ${error.message}`), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('an agent offline over a root rotation', () => {
  it('reaches the CA after activate with the old root alone, takes the new bundle, and after withdraw keeps reaching it', async () => {
    const ca = await startInProcessCa(TD, { 'node-a': ['spiffe://cluster.local/ns/shop/sa/web'] });
    cleanup.push(() => ca.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-rotation-offline-'));
    cleanup.push(() => rm(stateDir, { recursive: true, force: true }));
    // The bundle the node was installed with (`ambit ca bundle` then): the old root alone.
    const bootstrap = ca.server.ownBundle();
    const agentFor = (joinToken?: string) => {
      const agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: bootstrap, stateDir, logger: silentLogger(), ...(joinToken ? { joinToken } : {}) });
      cleanup.push(() => agent.stop());
      return agent;
    };
    const first = agentFor(await ca.joinToken('node-a'));
    expect(await startWithin(first, 10_000)).toBe('started');
    expect(first.bundles().get(TD)?.roots).toHaveLength(1);
    await first.stop();

    // Prepared and activated while the node is away: the agent never saw the bundle with the new root.
    await prepareAuthority(ca.dir);
    await activateAuthority(ca.dir);
    const rotated = await loadCa(ca.dir);
    await expect.poll(() => ca.server.ownBundle().sequence, { timeout: 10_000 }).toBe(rotated.sequence);

    const back = agentFor();
    expect(await startWithin(back, 10_000)).toBe('started');
    await back.refreshBundles();
    expect(back.bundles().get(TD)?.sequence).toBe(rotated.sequence);
    expect(back.bundles().get(TD)?.roots).toHaveLength(2);

    // Withdrawn: the CA serves under the new root, which the agent now holds.
    await withdrawAuthorities(ca.dir, { graceMs: 0 });
    const withdrawn = await loadCa(ca.dir);
    await expect.poll(() => ca.server.ownBundle().sequence, { timeout: 10_000 }).toBe(withdrawn.sequence);
    await back.refreshBundles();
    expect(back.bundles().get(TD)?.sequence).toBe(withdrawn.sequence);
    expect(back.bundles().get(TD)?.roots).toHaveLength(1);

    // And the withdrawn root vouches for nothing any more: an agent holding it alone no longer reaches the CA.
    const staleDir = await mkdtemp(join(tmpdir(), 'ambit-rotation-stale-'));
    cleanup.push(() => rm(staleDir, { recursive: true, force: true }));
    const said: Array<Record<string, unknown>> = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void said.push(JSON.parse(line) as Record<string, unknown>) });
    const stale = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: bootstrap, stateDir: staleDir, logger, joinToken: await ca.joinToken('node-a') });
    cleanup.push(() => stale.stop());
    expect(await startWithin(stale, 3_000)).not.toBe('started');
    // Refused for the CA's certificate, not merely slow.
    expect(said.some((line) => String((line.err as { message?: string } | undefined)?.message).includes('failed authentication: [SVID_CHAIN_INVALID] spiffe://cluster.local/ambit/ca'))).toBe(true);
  }, 60_000);
});
