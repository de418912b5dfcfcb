// A node's first attestation waits for its CA: a node started while the CA is down, or while it fails (5xx, the
// token given back), keeps its join token and attests once the CA answers, instead of exiting into a crash loop. A
// refusal of the token itself ends the start at once. Real CA over HTTPS, real agent.
import { createHash, createPublicKey } from 'node:crypto';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AmbitError } from '../../src/errors.ts';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { CaServer } from '../../src/identity/ca/server.ts';
import { normalizeSerial } from '../../src/identity/ca/nodes.ts';
import { exportPrivateKeyPem, generateKeyPair } from '../../src/identity/svid.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/ambit/node/node-a`;

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step().catch(() => {});
});

async function downCa(): Promise<{ ca: InProcessCa; url: string; port: number; token: string }> {
  const ca = await startInProcessCa(TD, {});
  cleanup.push(() => ca.close());
  const url = ca.server.url;
  const token = await ca.joinToken('node-a');
  await ca.server.close();
  return { ca, url, port: Number(new URL(url).port), token };
}

async function agentFor(url: string, ca: InProcessCa, token: string, requestDeadlineMs?: number, sharedStateDir?: string): Promise<IdentityAgent> {
  const stateDir = sharedStateDir ?? (await mkdtemp(join(tmpdir(), 'ambit-attest-')));
  const agent = new IdentityAgent({
    caUrl: url,
    trustDomain: TD,
    nodeName: 'node-a',
    bootstrapBundle: ca.server.ownBundle(),
    joinToken: token,
    stateDir,
    logger: silentLogger(),
    backoffInitialMs: 100,
    backoffMaxMs: 300,
    ...(requestDeadlineMs === undefined ? {} : { requestDeadlineMs }),
  });
  cleanup.push(async () => {
    await agent.stop();
    await rm(stateDir, { recursive: true, force: true });
  });
  return agent;
}

function restart(ca: InProcessCa, port: number, audit: (record: Record<string, unknown>) => void | Promise<void> = () => {}): Promise<CaServer> {
  return CaServer.start({ dir: ca.dir, port, registry: () => ({ identitiesOnNode: () => new Set() }), svidTtlMs: 60_000, logger: silentLogger(), audit });
}

describe("a node's first attestation", () => {
  it('waits for a CA that is down when the node starts, and attests with the same join token once it is up', async () => {
    const { ca, url, port, token } = await downCa();
    const agent = await agentFor(url, ca, token);
    let settled = false;
    const started = agent.start().finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect(settled, 'the start gave up while the CA was down').toBe(false);
    const server = await restart(ca, port);
    cleanup.push(() => server.close());
    await started;
    expect(agent.nodeSvid()?.id.id).toBe(NODE_ID);
  });

  it('tries again after the CA failed the attestation (500: the token is given back), and succeeds', async () => {
    const { ca, url, port, token } = await downCa();
    let audits = 0;
    const server = await restart(ca, port, () => {
      audits++;
      if (audits === 1) throw new Error('disk full');
    });
    cleanup.push(() => server.close());
    const agent = await agentFor(url, ca, token);
    await agent.start();
    expect(audits).toBe(2);
    expect(agent.nodeSvid()?.id.id).toBe(NODE_ID);
  });

  /** A CA whose node certificates take 1.5 s to be audited: an agent with a 500 ms deadline loses the first answer. */
  async function slowToAnswer(): Promise<{ ca: InProcessCa; url: string; token: string; audited: Array<Record<string, unknown>> }> {
    const { ca, url, port, token } = await downCa();
    const audited: Array<Record<string, unknown>> = [];
    const server = await restart(ca, port, async (record) => {
      audited.push(record);
      // The issuance outlasts the agent's deadline: its answer goes nowhere, the token is spent meanwhile.
      if (record.event === 'node_attested') await new Promise((resolve) => setTimeout(resolve, 1_500));
    });
    cleanup.push(() => server.close());
    return { ca, url, token, audited };
  }

  /** One certificate was issued, and the agent holds it: its retry got the answer it had lost. */
  function expectHoldsTheOneIssued(agent: IdentityAgent, audited: Array<Record<string, unknown>>): void {
    const svid = agent.nodeSvid();
    expect(svid?.id.id).toBe(NODE_ID);
    const attested = audited.filter((record) => record.event === 'node_attested');
    expect(attested).toHaveLength(1);
    expect(normalizeSerial(svid?.chain[0]?.serialNumber ?? '')).toBe(normalizeSerial(String(attested[0]?.serial)));
    expect(audited.filter((record) => record.event === 'node_attestation_resent')).toHaveLength(1);
  }

  it('attests when the answer to its first attempt was lost (the CA took longer than its deadline), with the same token', async () => {
    const { ca, url, token, audited } = await slowToAnswer();
    const agent = await agentFor(url, ca, token, 500);
    await agent.start();
    expectHoldsTheOneIssued(agent, audited);
  });

  it('attests after a restart when the first answer was lost, asking with the key it kept, which it then removes', async () => {
    const { ca, url, token, audited } = await slowToAnswer();
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-attest-restart-'));
    // The first agent's attempt outlives its deadline; it is stopped (a crash, a restart) before the CA answers.
    const first = await agentFor(url, ca, token, 500, stateDir);
    const outcome = first.start().then(() => null, (e: unknown) => e);
    await new Promise((resolve) => setTimeout(resolve, 700));
    await first.stop();
    expect(await outcome).toBeInstanceOf(AmbitError);
    expect((await stat(join(stateDir, 'attest-key.json'))).mode & 0o777).toBe(0o600);
    const second = await agentFor(url, ca, token, 500, stateDir);
    await second.start();
    expectHoldsTheOneIssued(second, audited);
    await expect(stat(join(stateDir, 'attest-key.json'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(join(stateDir, 'node-svid.pem'))).resolves.toBeDefined();
  });

  it("uses a kept key only for the token, node and CA it was kept for, and only when no one else can read it", async () => {
    const { ca, url, port, token } = await downCa();
    const server = await restart(ca, port);
    cleanup.push(() => server.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-attest-kept-'));
    const file = join(stateDir, 'attest-key.json');
    const leaked = await exportPrivateKeyPem((await generateKeyPair()).privateKey);
    const leakedPublic = createPublicKey(leaked).export({ type: 'spki', format: 'der' }).toString('hex');
    const tokenHash = createHash('sha256').update(token).digest('hex');
    const kept = (binding: Record<string, string>, mode = 0o600) => writeFile(file, JSON.stringify({ token: tokenHash, node: NODE_ID, ca: url, key: leaked, ...binding }), { mode }).then(() => chmod(file, mode));
    const keyOfAnswer = (agent: IdentityAgent) => createPublicKey(agent.nodeSvid()?.privateKeyPem ?? '').export({ type: 'spki', format: 'der' }).toString('hex');
    // Kept for another token (an older onboarding, a key since evicted), another node, another CA, or readable by others:
    // the attestation asks with a new key, and the new token is answered.
    for (const [binding, mode] of [[{ token: 'f'.repeat(64) }, 0o600], [{ node: `spiffe://${TD}/ambit/node/node-b` }, 0o600], [{ ca: 'https://127.0.0.1:1' }, 0o600], [{}, 0o644]] as const) {
      await kept(binding, mode);
      const agent = await agentFor(url, ca, await ca.joinToken('node-a'), undefined, stateDir);
      await agent.start();
      expect(keyOfAnswer(agent), JSON.stringify({ binding, mode })).not.toBe(leakedPublic);
      await agent.stop();
      await rm(join(stateDir, 'node-svid.pem'), { force: true });
    }
    // Kept for this token, node and CA: used.
    await kept({});
    const agent = await agentFor(url, ca, token, undefined, stateDir);
    await agent.start();
    expect(keyOfAnswer(agent)).toBe(leakedPublic);
    await expect(stat(file)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('removes a kept key when it starts with a stored node SVID, and when the CA refuses the token', async () => {
    const { ca, url, port, token } = await downCa();
    const server = await restart(ca, port);
    cleanup.push(() => server.close());
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-attest-left-'));
    const file = join(stateDir, 'attest-key.json');
    const first = await agentFor(url, ca, token, undefined, stateDir);
    await first.start();
    await first.stop();
    await writeFile(file, '{"left": "over"}', { mode: 0o600 });
    const restarted = await agentFor(url, ca, token, undefined, stateDir);
    await restarted.start();
    await expect(stat(file)).rejects.toMatchObject({ code: 'ENOENT' });
    await restarted.stop();
    const refusedDir = await mkdtemp(join(tmpdir(), 'ambit-attest-refused-'));
    const refused = await agentFor(url, ca, 'A'.repeat(43), undefined, refusedDir);
    expect(await refused.start().then(() => null, (e: unknown) => (e as AmbitError).code)).toBe('CA_REJECTED');
    await expect(stat(join(refusedDir, 'attest-key.json'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('gives up at once on a join token the CA refuses', async () => {
    const { ca, url, port } = await downCa();
    const server = await restart(ca, port);
    cleanup.push(() => server.close());
    const agent = await agentFor(url, ca, 'not-a-token');
    const started = Date.now();
    const error = await agent.start().then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(AmbitError);
    expect((error as AmbitError).code).toBe('CA_REJECTED');
    expect((error as AmbitError).message).toMatch(/\(40\d JOIN_TOKEN_INVALID\)/);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('ends the wait when the agent is stopped, saying it stopped while the CA was unreachable', async () => {
    const { ca, url, token } = await downCa();
    const agent = await agentFor(url, ca, token);
    const outcome = agent.start().then(() => null, (e: unknown) => e);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await agent.stop();
    const error = await outcome;
    expect(error).toBeInstanceOf(AmbitError);
    expect((error as AmbitError).code).toBe('CA_UNREACHABLE');
    expect((error as AmbitError).message).toContain('stopped while waiting to attest');
  });
});
