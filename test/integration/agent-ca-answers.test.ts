// What the agent takes from its CA is checked before it is used, even from a CA that authenticated as the trust
// domain's CA: a node certificate for another identity than the node's is refused at attestation, as a renewal for
// another identity is, and an answer larger than any real one is cut off. A CA server of the test's own (real TLS on
// loopback, the CA's SPIFFE ID) answers as a faulty or compromised CA would.
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:https';
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { BundleSet } from '../../src/identity/bundle.ts';
import { certificatesToPem, issueLeaf } from '../../src/identity/svid.ts';
import * as x509 from '../../src/identity/x509.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import type { TestCa } from '../helpers/certs.ts';

const TD = 'answers.test';
const NODE_ID = `spiffe://${TD}/ambit/node/node-a`;

let ca: TestCa;
const servers: Server[] = [];
const agents: IdentityAgent[] = [];

beforeAll(async () => {
  ca = await createTestCa(TD);
});

afterEach(async () => {
  await Promise.all(agents.splice(0).map((agent) => agent.stop()));
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

/** A CA at 127.0.0.1 presenting the CA's SPIFFE ID, answering /v1/attest with a certificate for `issuedId` on the CSR's key. */
async function faultyCa(issuedId: string, padding = 0): Promise<string> {
  const svid = await issueTestSvid(ca, `spiffe://${TD}/ambit/ca`);
  const server = createServer({ cert: svid.certPem, key: svid.keyPem, minVersion: 'TLSv1.3' }, (req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      void (async () => {
        if (req.url === '/v1/bundles') return res.writeHead(200, { 'content-type': 'application/json' }).end(new BundleSet([ca.bundle]).toMapJson());
        const csr = new x509.Pkcs10CertificateRequest((JSON.parse(body) as { csr: string }).csr);
        const leaf = await issueLeaf({ spiffeId: issuedId, publicKey: await csr.publicKey.export(), authority: ca.signer, ttlMs: 3_600_000 });
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ certChain: certificatesToPem([leaf]), padding: 'x'.repeat(padding) }));
      })();
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Messages of the agent's warnings and their errors' messages. */
const warned: string[] = [];

function agentOf(caUrl: string): IdentityAgent {
  const logger = silentLogger();
  const capture = Object.assign(logger, { warn: (fields: { err?: { message?: string } }, message: string) => void warned.push(`${message}: ${fields.err?.message ?? ''}`) });
  const agent = new IdentityAgent({ caUrl, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.bundle, joinToken: 'a'.repeat(64), logger: Object.assign(capture, { child: () => capture }) });
  agents.push(agent);
  return agent;
}

describe("the agent, given its CA's answers", () => {
  it('installs the node certificate its attestation asked for', async () => {
    const agent = agentOf(await faultyCa(NODE_ID));
    await agent.start();
    expect(agent.nodeSvid()?.id.id).toBe(NODE_ID);
  });

  it('refuses a node certificate for another identity than the node it attested as', async () => {
    const agent = agentOf(await faultyCa(`spiffe://${TD}/ambit/node/node-b`));
    await expect(agent.start()).rejects.toMatchObject({ code: 'CA_REJECTED', message: expect.stringContaining(`spiffe://${TD}/ambit/node/node-b`) });
    expect(agent.nodeSvid()).toBeUndefined();
  });

  it('says that a CA whose certificate its trust bundle does not vouch for answered, naming the bundle to give it', async () => {
    const other = await createTestCa(TD);
    const agent = new IdentityAgent({ caUrl: await faultyCa(NODE_ID), trustDomain: TD, nodeName: 'node-a', bootstrapBundle: other.bundle, joinToken: 'a'.repeat(64), logger: silentLogger() });
    agents.push(agent);
    const refused = await agent.start({ failFast: true }).then(() => null, (error: unknown) => error as { code: string; message: string; hint?: string });
    expect(refused).toMatchObject({ code: 'CA_UNREACHABLE', message: expect.stringContaining('failed authentication') });
    expect(refused?.hint).toContain('trust bundle does not vouch for');
  });

  it('says that the CA address answers, but not in TLS (a plain HTTP port given as --ca)', async () => {
    const plain = createHttpServer((_req, res) => res.end('not a CA'));
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    try {
      const agent = new IdentityAgent({ caUrl: `https://127.0.0.1:${(plain.address() as AddressInfo).port}`, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.bundle, joinToken: 'a'.repeat(64), logger: silentLogger() });
      agents.push(agent);
      const refused = await agent.start({ failFast: true }).then(() => null, (error: unknown) => error as { code: string; message: string });
      expect(refused).toMatchObject({ code: 'CA_UNREACHABLE', message: expect.stringContaining('the address answers, but not in TLS') });
      expect(refused?.message).not.toContain('openssl');
    } finally {
      plain.closeAllConnections();
      await new Promise((resolve) => plain.close(resolve));
    }
  });

  it('cuts off an answer larger than any real one (16 MiB), as a failed attempt it retries', async () => {
    warned.length = 0;
    const agent = agentOf(await faultyCa(NODE_ID, 17 * 1024 * 1024));
    void agent.start().catch(() => {});
    await expect.poll(() => warned.find((line) => line.startsWith('node attestation failed')), { timeout: 10_000 }).toMatch(/exceeded max size/i);
    expect(agent.nodeSvid()).toBeUndefined();
  });
});
