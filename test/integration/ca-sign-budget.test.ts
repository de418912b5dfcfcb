// Each node has a signing budget at the CA: a node that asks for far more certificates than its workloads need (a
// compromised or looping agent) is answered 429 with Retry-After, once audited, without slowing the other nodes;
// and the agent waits what the CA said before asking again. Real CA over HTTPS, real agent.
import { request } from 'node:https';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AmbitError } from '../../src/errors.ts';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { recordAttested } from '../../src/identity/ca/nodes.ts';
import { CaServer } from '../../src/identity/ca/server.ts';
import type { SignBudgetLimits } from '../../src/identity/ca/sign-budget.ts';
import { initCa } from '../../src/identity/ca/store.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { createCsr, generateKeyPair } from '../../src/identity/svid.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { issueMeshSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';

const TD = 'budget.test';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const API = `spiffe://${TD}/ns/shop/sa/api`;

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step().catch(() => {});
});

async function budgetedCa(signBudget: SignBudgetLimits): Promise<{ server: CaServer; caDir: string; audit: Record<string, unknown>[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-ca-budget-'));
  const caDir = join(dir, 'ca');
  await initCa(caDir, TD);
  const audit: Record<string, unknown>[] = [];
  const server = await CaServer.start({
    dir: caDir,
    registry: () => ({ identitiesOnNode: (node) => new Set(node === 'node-a' ? [WEB, DB, API] : node === 'node-b' ? [DB] : []) }),
    svidTtlMs: 60_000,
    logger: silentLogger(),
    audit: (record) => void audit.push(record),
    signBudget,
  });
  cleanup.push(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { server, caDir, audit };
}

async function currentNode(caDir: string, node: string): Promise<TestSvid> {
  const svid = await issueMeshSvid(caDir, `spiffe://${TD}/ambit/node/${node}`);
  await recordAttested(caDir, node, (svid.chain[0] as { serialNumber: string }).serialNumber);
  return svid;
}

interface Answer {
  readonly status: number;
  readonly retryAfter: string | undefined;
  readonly code: string | undefined;
}

async function signFor(server: CaServer, caller: TestSvid, spiffeId: string): Promise<Answer> {
  const body = JSON.stringify({ spiffeId, csr: await createCsr(await generateKeyPair(), spiffeId) });
  const url = new URL(server.url);
  return await new Promise<Answer>((resolve, reject) => {
    const req = request({ host: url.hostname, port: Number(url.port), path: '/v1/sign', method: 'POST', headers: { 'content-type': 'application/json' }, minVersion: 'TLSv1.3', rejectUnauthorized: false, cert: caller.certPem, key: caller.keyPem }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => (text += chunk.toString()));
      res.on('end', () => {
        const retryAfter = res.headers['retry-after'];
        let code: string | undefined;
        try {
          code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
        } catch {
          code = undefined;
        }
        resolve({ status: res.statusCode ?? 0, retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined, code });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe("a node's signing budget at the CA", () => {
  it('answers a node past its budget 429 with Retry-After, audits the spell once, leaves other nodes alone, and signs again once the node has waited', async () => {
    const { server, caDir, audit } = await budgetedCa({ burst: 2, perMinute: 60 });
    const nodeA = await currentNode(caDir, 'node-a');
    const nodeB = await currentNode(caDir, 'node-b');
    expect((await signFor(server, nodeA, WEB)).status).toBe(200);
    expect((await signFor(server, nodeA, DB)).status).toBe(200);
    const refused = await signFor(server, nodeA, API);
    expect(refused).toEqual({ status: 429, retryAfter: '1', code: 'CA_RATE_LIMITED' });
    expect((await signFor(server, nodeA, API)).status).toBe(429);
    expect(audit.filter((record) => record.event === 'sign_rate_limited')).toEqual([expect.objectContaining({ node: 'node-a', caller: `spiffe://${TD}/ambit/node/node-a`, retryAfterSeconds: 1 })]);
    // Nothing was signed for the refused requests.
    expect(audit.filter((record) => record.event === 'svid_issued' && record.spiffeId === API)).toHaveLength(0);
    expect((await signFor(server, nodeB, DB)).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect((await signFor(server, nodeA, API)).status).toBe(200);
  });

  it('is waited out by the agent for as long as the CA says, not retried at its shorter backoff', async () => {
    const { server, caDir } = await budgetedCa({ burst: 2, perMinute: 60 });
    const stateDir = await mkdtemp(join(tmpdir(), 'ambit-agent-budget-'));
    const agent = new IdentityAgent({
      caUrl: server.url,
      trustDomain: TD,
      nodeName: 'node-a',
      bootstrapBundle: server.ownBundle(),
      joinToken: (await createJoinToken(caDir, 'node-a', 60_000)).token,
      stateDir,
      logger: silentLogger(),
      backoffInitialMs: 100,
      backoffMaxMs: 5_000,
    });
    cleanup.push(async () => {
      await agent.stop();
      await rm(stateDir, { recursive: true, force: true });
    });
    const failures: string[] = [];
    agent.on('failed', ({ error }: { error: AmbitError }) => failures.push(error.code));
    await agent.start();
    await Promise.all([agent.ensure(WEB), agent.ensure(DB)]);
    const started = Date.now();
    // Asked to hear of a failure (`ambit agent --once`): a 429 is not one, the certificate comes after the wait.
    const api = await agent.ensure(API, { failFast: true });
    expect(api.id.id).toBe(API);
    // Refused once, then asked again after the CA's second: at the agent's own backoff (100 ms, doubling) it would
    // have been refused four or five times meanwhile.
    expect(failures).toEqual(['CA_RATE_LIMITED']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  });
});
