// A node's first attestation waits for its CA: a node started while the CA is down, or while it fails (5xx, the
// token given back), keeps its join token and attests once the CA answers, instead of exiting into a crash loop. A
// refusal of the token itself ends the start at once. Real CA over HTTPS, real agent.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AmbitError } from '../../src/errors.ts';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { CaServer } from '../../src/identity/ca/server.ts';
import { normalizeSerial } from '../../src/identity/ca/nodes.ts';
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
    expect((await stat(join(stateDir, 'attest-key.pem'))).mode & 0o777).toBe(0o600);
    const second = await agentFor(url, ca, token, 500, stateDir);
    await second.start();
    expectHoldsTheOneIssued(second, audited);
    await expect(stat(join(stateDir, 'attest-key.pem'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(join(stateDir, 'node-svid.pem'))).resolves.toBeDefined();
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
