// The CA's signing authority running out: said before it happens (its end caps every certificate, and once it has
// passed every node must be onboarded again), and an expired one fails requests as the CA's own fault (503, which
// nodes retry), not as the node's (a 400 told them their request was wrong). The real CaServer and agent on loopback.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CaServer } from '../../src/identity/ca/server.ts';
import { initCa } from '../../src/identity/ca/store.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { request } from 'node:https';
import { createCsr, generateKeyPair } from '../../src/identity/svid.ts';

const TD = 'cluster.local';
const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startCa(authorityTtlMs: number): Promise<{ server: CaServer; caDir: string; lines: Array<Record<string, unknown>> }> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-ca-life-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const caDir = join(dir, 'ca');
  await initCa(caDir, TD, { ttlMs: authorityTtlMs });
  const lines: Array<Record<string, unknown>> = [];
  const server = await CaServer.start({
    dir: caDir,
    registry: () => ({ identitiesOnNode: () => new Set<string>() }),
    svidTtlMs: 60_000,
    logger: pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) }),
    audit: () => {},
  });
  cleanups.push(() => server.close());
  return { server, caDir, lines };
}

describe("the CA's signing authority running out", () => {
  it('is said at start when it has less than 30 days left, with what to do', async () => {
    const { lines } = await startCa(20 * 86_400_000);
    const warning = lines.find((line) => line.msg === 'the signing authority expires within 30 days');
    expect(warning).toMatchObject({ level: 40, daysLeft: 19, hint: expect.stringContaining('ambit ca root prepare') });
  });

  it('says nothing of one with a year left', async () => {
    const { lines } = await startCa(365 * 86_400_000);
    expect(lines.filter((line) => typeof line.msg === 'string' && line.msg.includes('signing authority'))).toEqual([]);
  });

  it("once expired, fails an attestation as the CA's fault (503, which nodes retry), not the node's (400)", async () => {
    const { server, caDir, lines } = await startCa(3_000);
    expect(lines.some((line) => line.msg === 'the signing authority expires before a node SVID would: every certificate is cut short at its end')).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 3_500));
    // Its own serving certificate ended with it: a client that does not check it is what can still ask.
    const keys = await generateKeyPair();
    const body = JSON.stringify({ node: 'node-a', token: (await createJoinToken(caDir, 'node-a', 60_000)).token, csr: await createCsr(keys, `spiffe://${TD}/ambit/node/node-a`) });
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(`${server.url}/v1/attest`, { method: 'POST', rejectUnauthorized: false, headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end(body);
    });
    expect(answer.status).toBe(503);
    expect(JSON.parse(answer.text)).toMatchObject({ error: { code: 'CA_STATE', message: expect.stringMatching(/^the signing authority .* expired at/) } });
  });
});
