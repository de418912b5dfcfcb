// A node whose attestation answer never arrived presents its spent join token again, with a CSR for the same key:
// the CA answers with the certificate it issued then, and nothing else. Real CA over HTTPS, real CSRs; the lost
// answer is a first request whose response the test does not use.
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { connect } from 'node:tls';
import { pino } from 'pino';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { evictNode } from '../../src/identity/ca/nodes.ts';
import { createCsr, exportPrivateKeyPem, generateKeyPair } from '../../src/identity/svid.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/ambit/node/node-a`;
const WEB = `spiffe://${TD}/ns/default/sa/web`;

let ca: InProcessCa;
const audit: Array<Record<string, unknown>> = [];
/** The CA's log lines (info and up), parsed. */
const logged: Array<Record<string, unknown>> = [];
const agents: Agent[] = [];

beforeAll(async () => {
  const logger = pino({ level: 'info' }, { write: (line: string) => void logged.push(JSON.parse(line) as Record<string, unknown>) });
  ca = await startInProcessCa(TD, { 'node-a': [WEB] }, (record) => void audit.push(record), logger);
});

afterEach(() => {
  audit.length = 0;
  logged.length = 0;
});

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.close()));
  await ca?.close();
});

interface Answer {
  status: number;
  json: Record<string, unknown>;
}

interface Credential {
  certPem: string;
  keyPem: string;
  serial: string;
}

async function post(path: string, body: unknown, as: Credential | null = null): Promise<Answer> {
  // The CA's own serving certificate is not what this test is about: the client does not check it.
  const agent = new Agent({ connect: { rejectUnauthorized: false, ...(as === null ? {} : { cert: as.certPem, key: as.keyPem }) } });
  agents.push(agent);
  const response = await request(`${ca.server.url}${path}`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.statusCode, json: (await response.body.json()) as Record<string, unknown> };
}

async function attestWith(keys: CryptoKeyPair, token: string, node = 'node-a'): Promise<Answer> {
  return post('/v1/attest', { node, token, csr: await createCsr(keys, `spiffe://${TD}/ambit/node/${node}`) });
}

async function credential(answer: Answer, keys: CryptoKeyPair): Promise<Credential> {
  expect(answer.status, JSON.stringify(answer.json)).toBe(200);
  return { certPem: String(answer.json.certChain), keyPem: await exportPrivateKeyPem(keys.privateKey), serial: String(answer.json.serial) };
}

async function signWeb(as: Credential): Promise<Answer> {
  return post('/v1/sign', { spiffeId: WEB, csr: await createCsr(await generateKeyPair(), WEB) }, as);
}

/** A node attested once, whose answer it is taken never to have received. */
async function lostAnswer(): Promise<{ keys: CryptoKeyPair; token: string; lost: Credential }> {
  const keys = await generateKeyPair();
  const token = await ca.joinToken('node-a');
  return { keys, token, lost: await credential(await attestWith(keys, token), keys) };
}

function publicKeyOf(certPem: string): string {
  return new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' }).toString('hex');
}

describe('a spent join token presented again', () => {
  it('with the key that spent it: the certificate issued then, again, as often as asked, and nothing new issued', async () => {
    const { keys, token, lost } = await lostAnswer();
    const again = await credential(await attestWith(keys, token), keys);
    expect(again.serial).toBe(lost.serial);
    expect(again.certPem).toBe(lost.certPem);
    expect(new X509Certificate(again.certPem).subjectAltName).toBe(`URI:${NODE_ID}`);
    expect(publicKeyOf(again.certPem)).toBe(publicKeyOf(lost.certPem));
    expect((await credential(await attestWith(keys, token), keys)).serial).toBe(lost.serial);
    expect((await signWeb(again)).status).toBe(200);
    expect(audit.filter((record) => record.event === 'node_attested').map((record) => record.serial)).toEqual([lost.serial]);
    expect(audit.filter((record) => record.event === 'node_attestation_resent')).toMatchObject([
      { node: 'node-a', spiffeId: NODE_ID, serial: lost.serial },
      { node: 'node-a', spiffeId: NODE_ID, serial: lost.serial },
    ]);
  });

  it('replayed by whoever captured the request: only the public certificate, and the node keeps working', async () => {
    const keys = await generateKeyPair();
    const token = await ca.joinToken('node-a');
    const body = { node: 'node-a', token, csr: await createCsr(keys, NODE_ID) };
    const node = await credential(await post('/v1/attest', body), keys);
    const replayed = await post('/v1/attest', body);
    expect(replayed.status).toBe(200);
    expect(replayed.json.serial).toBe(node.serial);
    expect((await signWeb(node)).status).toBe(200);
  });

  it('with another key: refused as a spent token, audited, and the node keeps the certificate it had', async () => {
    const { token, lost } = await lostAnswer();
    const thief = await generateKeyPair();
    const refused = await attestWith(thief, token);
    expect(refused.status).toBe(403);
    expect(refused.json).toMatchObject({ error: { code: 'JOIN_TOKEN_INVALID' } });
    expect(audit.filter((record) => record.event === 'attest_refused')).toMatchObject([{ node: 'node-a', code: 'JOIN_TOKEN_INVALID' }]);
    expect((await signWeb(lost)).status).toBe(200);
  });

  it('with the same key for another node name: refused', async () => {
    const { keys, token } = await lostAnswer();
    const refused = await attestWith(keys, token, 'node-b');
    expect(refused.status).toBe(403);
    expect(refused.json).toMatchObject({ error: { code: 'JOIN_TOKEN_INVALID' } });
  });

  it('after the node renewed with the certificate it was answered with: refused (it got its answer)', async () => {
    const { keys, token, lost: received } = await lostAnswer();
    const renewal = await post('/v1/sign', { spiffeId: NODE_ID, csr: await createCsr(await generateKeyPair(), NODE_ID) }, received);
    expect(renewal.status).toBe(200);
    const refused = await attestWith(keys, token);
    expect(refused.status).toBe(403);
    expect(audit.find((record) => record.event === 'attest_refused')?.reason).toMatch(/moved on/);
  });

  it('after the operator evicted the node: refused, and the node stays evicted', async () => {
    const { keys, token, lost } = await lostAnswer();
    await evictNode(ca.dir, 'node-a');
    const refused = await attestWith(keys, token);
    expect(refused.status).toBe(403);
    expect(audit.find((record) => record.event === 'attest_refused')?.reason).toMatch(/evicted/);
    expect((await signWeb(lost)).status).toBe(401);
  });

  it('after the node attested with a newer token: refused, and the newer certificate stays the current one', async () => {
    const { keys, token } = await lostAnswer();
    const newerKeys = await generateKeyPair();
    const newer = await credential(await attestWith(newerKeys, await ca.joinToken('node-a')), newerKeys);
    expect((await attestWith(keys, token)).status).toBe(403);
    expect((await signWeb(newer)).status).toBe(200);
  });
});

describe('a node\'s refused signing request', () => {
  it('is logged with its code and reason, besides the audit: an identity of another trust domain, a TTL that is no number', async () => {
    const keys = await generateKeyPair();
    const node = await credential(await attestWith(keys, await ca.joinToken('node-a')), keys);
    const other = 'spiffe://other.example/ns/default/sa/web';
    expect((await post('/v1/sign', { spiffeId: other, csr: await createCsr(await generateKeyPair(), other) }, node)).status).toBe(403);
    expect((await post('/v1/sign', { spiffeId: WEB, csr: await createCsr(await generateKeyPair(), WEB), ttlSeconds: 'soon' }, node)).status).toBe(400);
    const refusals = logged.filter((line) => String(line.msg).startsWith('CSR refused'));
    expect(refusals).toMatchObject([
      { level: 40, requested: other, code: 'CA_NOT_AUTHORIZED', reason: `${other} is not in trust domain ${TD}` },
      { level: 40, code: 'USAGE', reason: 'field "ttlSeconds" must be a positive integer' },
    ]);
  });
});

describe('an attestation refused before its join token is spent', () => {
  it('is audited when the token is one the CA made (someone holds a live secret), and the token stays usable', async () => {
    const token = await ca.joinToken('node-a');
    const refused = await post('/v1/attest', { node: 'node-a', token, csr: 'not a certificate request' });
    expect(refused.status).toBe(400);
    expect(audit.filter((record) => record.event === 'attest_refused')).toMatchObject([{ node: 'node-a', code: 'CA_CSR_INVALID', reason: expect.stringContaining('left unspent') }]);
    // A bad node name too.
    await post('/v1/attest', { node: '../etc', token, csr: 'x' });
    expect(audit.filter((record) => record.event === 'attest_refused')).toMatchObject([{ code: 'CA_CSR_INVALID' }, { node: '../etc', code: 'CONFIG_FIELD' }]);
    const keys = await generateKeyPair();
    await credential(await attestWith(keys, token), keys);
  });

  it('with a good CSR and a token the CA never made, is not audited, and is warned within a budget (anyone can send it)', async () => {
    const keys = await generateKeyPair();
    const answers = await Promise.all(Array.from({ length: 30 }, () => attestWith(keys, 'B'.repeat(43))));
    expect(answers.map((answer) => [answer.status, (answer.json.error as { code?: string }).code])).toEqual(Array(30).fill([403, 'JOIN_TOKEN_INVALID']));
    // 16,000 of these in 20 s grew the audit log 34 MiB, and every issuance waited behind those writes.
    expect(audit.filter((record) => record.event === 'attest_refused')).toEqual([]);
    const warned = logged.filter((line) => line.msg === 'node attestation refused: a join token this CA never made');
    expect(warned).toHaveLength(20);
    expect(warned[0]).toMatchObject({ level: 40, node: 'node-a', code: 'JOIN_TOKEN_INVALID' });
    // A token the CA made and spent is audited still.
    const { token } = await lostAnswer();
    expect((await attestWith(await generateKeyPair(), token)).status).toBe(403);
    expect(audit.filter((record) => record.event === 'attest_refused')).toMatchObject([{ node: 'node-a', code: 'JOIN_TOKEN_INVALID' }]);
  });

  it('cut off in the middle of its body, is no error of the CA\'s: nothing logged at error level', async () => {
    const url = new URL(ca.server.url);
    for (let i = 0; i < 5; i++) {
      const socket = connect({ host: url.hostname, port: Number(url.port), rejectUnauthorized: false });
      await once(socket, 'secureConnect');
      socket.write('POST /v1/attest HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"node":"node-a",');
      await new Promise((resolve) => setTimeout(resolve, 50));
      socket.destroy();
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    // Each was an error line with its stack (12 KB for 20 of them).
    expect(logged.filter((line) => (line.level as number) >= 50)).toEqual([]);
    expect(audit).toEqual([]);
  });

  it('is not audited without a token the CA made: anyone could fill the audit log', async () => {
    const refused = await post('/v1/attest', { node: 'node-a', token: 'A'.repeat(43), csr: 'not a certificate request' });
    expect(refused.status).toBe(400);
    expect(audit.filter((record) => record.event === 'attest_refused')).toEqual([]);
  });
});
