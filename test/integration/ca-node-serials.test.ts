// The CA accepts only the node certificate it issued last (and a renewal's new one until the node first uses it):
// a copy of an older node SVID, or an evicted node's, is refused, over real HTTPS with real client certificates.
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evictNode, normalizeSerial } from '../../src/identity/ca/nodes.ts';
import { createCsr, exportPrivateKeyPem, generateKeyPair } from '../../src/identity/svid.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/ambit/node/node-a`;
const WEB = `spiffe://${TD}/ns/default/sa/web`;

let ca: InProcessCa;
const agents: Agent[] = [];

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [WEB] });
});

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.close()));
  await ca?.close();
});

interface Credential {
  certPem: string;
  keyPem: string;
  serial: string;
}

/** POSTs to the CA, presenting `as` (or no certificate); returns the status and the JSON answer. */
async function post(path: string, body: unknown, as: Credential | null): Promise<{ status: number; json: Record<string, unknown> }> {
  // The CA's own serving certificate is not what this test is about: the client does not check it.
  const agent = new Agent({ connect: { rejectUnauthorized: false, ...(as === null ? {} : { cert: as.certPem, key: as.keyPem }) } });
  agents.push(agent);
  const response = await request(`${ca.server.url}${path}`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.statusCode, json: (await response.body.json()) as Record<string, unknown> };
}

async function obtain(path: string, spiffeId: string, extra: Record<string, string>, as: Credential | null): Promise<Credential> {
  const keys = await generateKeyPair();
  const { status, json } = await post(path, { ...extra, csr: await createCsr(keys, spiffeId) }, as);
  expect(status, JSON.stringify(json)).toBe(200);
  return { certPem: String(json.certChain), keyPem: await exportPrivateKeyPem(keys.privateKey), serial: String(json.serial) };
}

const attest = async () => obtain('/v1/attest', NODE_ID, { node: 'node-a', token: await ca.joinToken('node-a') }, null);
const sign = (spiffeId: string, as: Credential) => obtain('/v1/sign', spiffeId, { spiffeId }, as);
async function refusal(spiffeId: string, as: Credential): Promise<{ status: number; message: string }> {
  const keys = await generateKeyPair();
  const { status, json } = await post('/v1/sign', { spiffeId, csr: await createCsr(keys, spiffeId) }, as);
  return { status, message: JSON.stringify(json) };
}

describe("the CA and a node's certificates", () => {
  it('accepts the current one and a renewal until its first use, then only the new one', async () => {
    const first = await attest();
    const renewed = await sign(NODE_ID, first);
    expect(normalizeSerial(renewed.serial)).not.toBe(normalizeSerial(first.serial));
    // The renewal's answer may have been lost: the node may still come with the old one.
    await sign(WEB, first);
    // Its first use of the new one retires the old one.
    await sign(WEB, renewed);
    const copied = await refusal(WEB, first);
    expect(copied.status).toBe(401);
    expect(copied.message).toMatch(/CA_UNAUTHENTICATED.*replaced by a later renewal or attestation/);
    // Not even its own renewal: a copy cannot keep itself alive.
    expect((await refusal(NODE_ID, first)).status).toBe(401);
    await sign(WEB, renewed);
  });

  it('refuses an evicted node until it attests again with a new join token', async () => {
    const current = await attest();
    await sign(WEB, current);
    await evictNode(ca.dir, 'node-a');
    const evicted = await refusal(WEB, current);
    expect(evicted.status).toBe(401);
    expect(evicted.message).toMatch(/evicted/);
    expect((await refusal(NODE_ID, current)).status).toBe(401);
    const again = await attest();
    await sign(WEB, again);
    // Attesting again retired the certificate from before.
    expect((await refusal(WEB, current)).status).toBe(401);
  });
});
