// The CA's signing endpoint decides who may obtain which identity: only a node SVID of its own trust domain may
// call it, and only for the node's own identity or a workload the registry places on that node, with a P-256
// key it proves it holds. Both sides of each rule, over real TLS to a real CaServer on loopback.
import { once } from 'node:events';
import { request } from 'node:https';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initCa } from '../../src/identity/ca/store.ts';
import { CaServer } from '../../src/identity/ca/server.ts';
import { createCsr, generateKeyPair, parseCertificates, spiffeIdOf } from '../../src/identity/svid.ts';
import * as x509 from '../../src/identity/x509.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { createTestCa, issueLongChainSvid, issueMeshSvid, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { abandonHandshakeAfterCertificate } from '../helpers/tls-abandon.ts';
import { evictNode, recordAttested } from '../../src/identity/ca/nodes.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';

const TD = 'sign.test';
const NODE_A = `spiffe://${TD}/ambit/node/node-a`;
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;

interface Answer {
  readonly status: number;
  readonly body: { error?: { code: string; message: string }; certChain?: string; spiffeId?: string };
  /** The refusal's code, if any. */
  readonly code: string | undefined;
}

let dir: string;
let caDir: string;
let server: CaServer;
const audit: Record<string, unknown>[] = [];
/** While set, the CA's issuance records are not yet written: its answers must wait for it. */
let auditGate: Promise<void> | null = null;

/**
 * A node SVID for node-a that the CA takes as the one it uses now, as if the node had just attested: the CA
 * accepts only the node certificate it issued last (ca-node-serials.test.ts), and each test here mints its own.
 */
async function currentNode(): Promise<TestSvid> {
  const svid = await issueMeshSvid(caDir, NODE_A);
  await recordAttested(caDir, 'node-a', (svid.chain[0] as { serialNumber: string }).serialNumber);
  return svid;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-ca-sign-'));
  caDir = join(dir, 'ca');
  await initCa(caDir, TD);
  server = await CaServer.start({
    dir: caDir,
    registry: () => ({ identitiesOnNode: (node) => new Set(node === 'node-a' ? [WEB] : node === 'node-b' ? [DB] : []) }),
    svidTtlMs: 60_000,
    handshakeTimeoutMs: 2_000,
    logger: silentLogger(),
    audit: (record) => {
      audit.push(record as Record<string, unknown>);
      return record.event === 'svid_issued' || record.event === 'node_attested' ? (auditGate ?? undefined) : undefined;
    },
  });
});

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

/**
 * POST /v1/sign (or another path) as `caller` (null: no client certificate) with a raw body, from `from` (a loopback
 * address: a third refused chain from one address holds it off, handshake-backoff.ts).
 */
async function sign(caller: TestSvid | null, body: string, path = '/v1/sign', from?: string): Promise<Answer> {
  const url = new URL(server.url);
  return await new Promise<Answer>((resolve, reject) => {
    const req = request({
      host: url.hostname,
      port: Number(url.port),
      path,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      minVersion: 'TLSv1.3',
      // The CA's own certificate is not what this test is about.
      rejectUnauthorized: false,
      // A fresh connection each time: a kept one would not be held off.
      agent: false,
      ...(from === undefined ? {} : { localAddress: from }),
      ...(caller === null ? {} : { cert: caller.certPem, key: caller.keyPem }),
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: Answer['body'] = {};
        try {
          body = JSON.parse(text) as Answer['body'];
        } catch {
          // not JSON: the status says enough
        }
        resolve({ status: res.statusCode ?? 0, body, code: body.error?.code });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function csrFor(spiffeId: string): Promise<string> {
  return await createCsr(await generateKeyPair(), spiffeId);
}

async function signFor(caller: TestSvid | null, spiffeId: string, csr?: string, from?: string): Promise<Answer> {
  return await sign(caller, JSON.stringify({ spiffeId, csr: csr ?? (await csrFor(spiffeId)) }), '/v1/sign', from);
}

/** Each test that presents refused chains from its own address. */
let nextSource = 100;
const freshSource = () => `127.0.0.${nextSource++}`;

function issuedId(answer: Answer): string | undefined {
  const leaf = parseCertificates(answer.body.certChain ?? '')[0];
  const id = leaf === undefined ? undefined : spiffeIdOf(leaf);
  return id === undefined || id instanceof Error ? undefined : id.id;
}

describe('the CA signing endpoint', () => {
  it('signs a workload the registry places on the calling node, and the node\'s own renewal', async () => {
    const nodeA = await currentNode();
    const workload = await signFor(nodeA, WEB);
    expect(workload.status).toBe(200);
    expect(issuedId(workload)).toBe(WEB);
    const renewal = await signFor(nodeA, NODE_A);
    expect(renewal.status).toBe(200);
    expect(issuedId(renewal)).toBe(NODE_A);
  });

  it('answers an issuance only once its audit record, naming the signing authority, is written', async () => {
    const nodeA = await currentNode();
    let release = () => {};
    auditGate = new Promise<void>((resolve) => (release = resolve));
    let answered = false;
    const pending = signFor(nodeA, WEB).then((answer) => {
      answered = true;
      return answer;
    });
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(answered).toBe(false);
    } finally {
      auditGate = null;
      release();
    }
    const answer = await pending;
    expect(answer.status).toBe(200);
    const record = audit.filter((entry) => entry.event === 'svid_issued').at(-1);
    expect(record?.authority).toBe('a1');
    expect(record?.spiffeId).toBe(WEB);
  });

  it('refuses to hand out a certificate whose issuance cannot be written to the audit log (500 FILE_WRITE)', async () => {
    const nodeA = await currentNode();
    auditGate = Promise.reject(new Error('ENOSPC: no space left on device'));
    auditGate.catch(() => {});
    try {
      const answer = await signFor(nodeA, WEB);
      expect(answer.status).toBe(500);
      expect(answer.code).toBe('FILE_WRITE');
      expect(answer.body.error?.message).toMatch(/not handed out: ENOSPC/);
      expect(answer.body.certChain).toBeUndefined();
    } finally {
      auditGate = null;
    }
    // The accept side: with the log writable again, the same request is answered.
    expect((await signFor(nodeA, WEB)).status).toBe(200);
  });

  it('gives a join token back when the attestation it was spent on cannot be audited, so the node can retry with it', async () => {
    const token = (await createJoinToken(caDir, 'node-c', 60_000)).token;
    const attest = async () => sign(null, JSON.stringify({ node: 'node-c', token, csr: await csrFor(`spiffe://${TD}/ambit/node/node-c`) }), '/v1/attest');
    auditGate = Promise.reject(new Error('EIO: i/o error'));
    auditGate.catch(() => {});
    try {
      const failed = await attest();
      expect(failed.status).toBe(500);
      expect(failed.code).toBe('FILE_WRITE');
    } finally {
      auditGate = null;
    }
    const retried = await attest();
    expect(retried.status).toBe(200);
    expect(issuedId(retried)).toBe(`spiffe://${TD}/ambit/node/node-c`);
    // Spent now: a third attempt is refused.
    expect((await attest()).code).toBe('JOIN_TOKEN_INVALID');
  });

  it('issues with the lifetime in force when asked (certificateTtl reloads apply to the next SVID)', async () => {
    const nodeA = await currentNode();
    const lifetime = (answer: Answer) => {
      const leaf = parseCertificates(answer.body.certChain ?? '')[0];
      return leaf === undefined ? 0 : leaf.notAfter.getTime() - Date.now();
    };
    server.setSvidTtl(600_000);
    const longer = await signFor(nodeA, WEB);
    expect(lifetime(longer)).toBeGreaterThan(500_000);
    server.setSvidTtl(60_000);
    const shorter = await signFor(nodeA, WEB);
    expect(lifetime(shorter)).toBeLessThan(70_000);
  });

  it("renews a node's own SVID with the node lifetime, and its workloads' with theirs", async () => {
    const nodeA = await currentNode();
    const lifetime = (answer: Answer) => {
      const leaf = parseCertificates(answer.body.certChain ?? '')[0];
      return leaf === undefined ? 0 : leaf.notAfter.getTime() - Date.now();
    };
    server.setNodeSvidTtl(24 * 3_600_000);
    try {
      const workload = await signFor(nodeA, WEB);
      expect(lifetime(workload)).toBeLessThan(70_000);
      const node = await signFor(nodeA, NODE_A);
      expect(lifetime(node)).toBeGreaterThan(23 * 3_600_000);
    } finally {
      server.setNodeSvidTtl(60_000);
    }
  });

  it('refuses a workload placed on another node, and audits who asked for what', async () => {
    const nodeA = await currentNode();
    const answer = await signFor(nodeA, DB);
    expect(answer.status).toBe(403);
    expect(answer.code).toBe('CA_NOT_AUTHORIZED');
    expect(audit).toContainEqual(expect.objectContaining({ event: 'sign_refused', caller: NODE_A, requested: DB, code: 'CA_NOT_AUTHORIZED' }));
  });

  it('refuses an identity of another trust domain, even with the same path', async () => {
    const nodeA = await currentNode();
    const answer = await signFor(nodeA, 'spiffe://other.test/ns/shop/sa/web');
    expect(answer.status).toBe(403);
    expect(answer.code).toBe('CA_NOT_AUTHORIZED');
  });

  it('refuses a caller presenting a workload SVID instead of a node SVID', async () => {
    const web = await issueMeshSvid(caDir, WEB);
    const answer = await signFor(web, WEB);
    expect(answer.status).toBe(401);
    expect(answer.code).toBe('CA_UNAUTHENTICATED');
    expect(audit).toContainEqual(expect.objectContaining({ event: 'sign_refused', caller: WEB }));
  });

  it('drops a connection that never finishes its TLS handshake after the handshake timeout, and still serves a node', async () => {
    const url = new URL(server.url);
    const startedMs = Date.now();
    const silent = connect({ host: url.hostname, port: Number(url.port) });
    silent.on('error', () => {});
    await once(silent, 'close');
    expect(Date.now() - startedMs).toBeLessThan(5_000);
    expect((await signFor(await currentNode(), WEB)).status).toBe(200);
  });

  it('refuses a caller without a certificate, and writes no audit line for it (anyone could send those)', async () => {
    const before = audit.length;
    const answer = await signFor(null, WEB);
    expect(answer.status).toBe(401);
    expect(answer.code).toBe('CA_UNAUTHENTICATED');
    expect(audit.slice(before)).toEqual([]);
  });

  it('refuses a node SVID signed by another CA, whether it names this trust domain or its own, and audits neither', async () => {
    const before = audit.length;
    const forger = await createTestCa(TD);
    const forged = await issueTestSvid(forger, NODE_A);
    const from = freshSource();
    expect((await signFor(forged, WEB, undefined, from)).status).toBe(401);
    const foreign = await createTestCa('other.test');
    const foreignNode = await issueTestSvid(foreign, 'spiffe://other.test/ambit/node/node-a');
    const answer = await signFor(foreignNode, WEB, undefined, from);
    expect(answer.status).toBe(401);
    expect(answer.code).toBe('CA_UNAUTHENTICATED');
    // A client looping on these filled the disk with audit lines and held every issuance behind their backlog.
    expect(audit.slice(before)).toEqual([]);
  });

  it('lets one client address hold 256 connections, closing its next at once, while other addresses are served', async () => {
    const url = new URL(server.url);
    const held: TLSSocket[] = [];
    const open = (localAddress: string) => new Promise<TLSSocket | null>((resolve) => {
      const tcp = connect({ host: url.hostname, port: Number(url.port), localAddress });
      tcp.on('error', () => {});
      const socket = tlsConnect({ socket: tcp, minVersion: 'TLSv1.3', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
      socket.on('error', () => {});
      socket.once('secureConnect', () => resolve(socket));
      socket.once('close', () => resolve(null));
    });
    try {
      for (let i = 0; i < 256; i += 32) {
        const batch = await Promise.all(Array.from({ length: 32 }, () => open('127.0.0.3')));
        for (const socket of batch) if (socket !== null) held.push(socket);
      }
      expect(held.length).toBe(256);
      expect(await open('127.0.0.3')).toBeNull();
      // Another address still gets a connection, and a node's request is answered.
      const other = await open('127.0.0.4');
      expect(other).not.toBeNull();
      other?.destroy();
      expect((await signFor(await currentNode(), WEB)).status).toBe(200);
    } finally {
      for (const socket of held) socket.destroy();
    }
  });

  it('holds off a client address after its third chain that costs far more than a handshake to check, whatever it asked: its next connections close before any handshake, other addresses are served, and it is served again once the hold-off ends', async () => {
    const costly = await issueLongChainSvid(TD, NODE_A, 10);
    const held = freshSource();
    // Judged at the handshake, not by the endpoint: a bundle fetch (which needs no certificate) counts as a signing does.
    expect((await sign(costly, '', '/bundle', held)).status).toBe(405);
    expect((await sign(costly, '', '/bundle', held)).status).toBe(405);
    expect((await signFor(costly, WEB, undefined, held)).status).toBe(401);
    const node = await currentNode();
    await expect(signFor(node, WEB, undefined, held), 'a valid node from the held-off address').rejects.toThrow();
    expect((await signFor(node, WEB, undefined, freshSource())).status, 'another address').toBe(200);
    expect((await sign(null, '', '/bundle', freshSource())).status, 'no certificate').toBe(405);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect((await signFor(node, WEB, undefined, held)).status, 'after the hold-off').toBe(200);
  });

  it.each([false, true])('counts a costly chain whose client abandoned the handshake after presenting it (no Finished, then stalled: %s)', async (stall) => {
    // Forty certificates (~20 KB): reset, nothing is left to read the chain from, but a flight past 12 KiB counts;
    // stalled, the chain is judged at the 2 s handshake timeout.
    const costly = await issueLongChainSvid(TD, NODE_A, 40);
    const held = freshSource();
    const url = new URL(server.url);
    for (let i = 0; i < 3; i++) await abandonHandshakeAfterCertificate({ host: url.hostname, port: Number(url.port), localAddress: held, cert: costly.certPem, key: costly.keyPem, alpn: 'http/1.1', stall });
    await expect(signFor(await currentNode(), WEB, undefined, held)).rejects.toThrow();
  }, 20_000);

  it('never holds off an address for chains of ordinary keys, however refused (another CA, out of date, not a node\'s), nor for no certificate at all', async () => {
    const from = freshSource();
    const web = await issueMeshSvid(caDir, WEB);
    const forged = await issueTestSvid(await createTestCa(TD), NODE_A);
    // Expired as certificates do, after the CA issued them.
    const expired = await issueMeshSvid(caDir, NODE_A, { ttlMs: 1_000 });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    for (let i = 0; i < 3; i++) {
      for (const caller of [web, forged, expired, null]) expect((await signFor(caller, WEB, undefined, from)).code).toBe('CA_UNAUTHENTICATED');
    }
    expect((await signFor(await currentNode(), WEB, undefined, from)).status).toBe(200);
  });

  it('refuses a node SVID of a node that never attested with this CA (as one another CA under the same root issued), and serves it once it attests', async () => {
    // node-b has a workload placed on it (DB) but no record: its certificate did not come from an attestation here.
    const unrecorded = await issueMeshSvid(caDir, `spiffe://${TD}/ambit/node/node-b`);
    const refused = await signFor(unrecorded, DB);
    expect(refused.status).toBe(401);
    expect(refused.code).toBe('CA_UNAUTHENTICATED');
    expect(JSON.stringify(refused.body)).toContain('has not attested with this CA');
    await recordAttested(caDir, 'node-b', (unrecorded.chain[0] as { serialNumber: string }).serialNumber);
    expect((await signFor(unrecorded, DB)).status).toBe(200);
  });

  it('refuses an evicted node before consulting the registry: 401 whether or not the identity is placed on it', async () => {
    const nodeB = await issueMeshSvid(caDir, `spiffe://${TD}/ambit/node/node-b`);
    await recordAttested(caDir, 'node-b', (nodeB.chain[0] as { serialNumber: string }).serialNumber);
    expect((await signFor(nodeB, DB)).status).toBe(200);
    await evictNode(caDir, 'node-b');
    for (const id of [DB, WEB]) {
      const answer = await signFor(nodeB, id);
      expect(answer.status, id).toBe(401);
      expect(answer.code).toBe('CA_UNAUTHENTICATED');
    }
    // node-b is needed again: attested anew.
    await recordAttested(caDir, 'node-b', (nodeB.chain[0] as { serialNumber: string }).serialNumber);
  });

  it('audits the malformed requests of a node it authenticated: an ID with a dot segment, a bad TTL, a CSR that does not parse', async () => {
    const nodeA = await currentNode();
    const before = audit.length;
    const answers = [
      await sign(nodeA, JSON.stringify({ spiffeId: `spiffe://${TD}/ns/shop/../sa/web`, csr: await csrFor(WEB) })),
      await sign(nodeA, JSON.stringify({ spiffeId: WEB, csr: await csrFor(WEB), ttlSeconds: -5 })),
      await sign(nodeA, JSON.stringify({ spiffeId: WEB, csr: 'not a CSR' })),
    ];
    for (const answer of answers) expect(answer.status).toBe(400);
    const refused = audit.slice(before).filter((record) => record.event === 'sign_refused');
    expect(refused.map((record) => [record.caller, record.node])).toEqual([[NODE_A, 'node-a'], [NODE_A, 'node-a'], [NODE_A, 'node-a']]);
    expect(refused.map((record) => record.code)).toEqual(answers.map((answer) => answer.code));
  });

  it('refuses an expired node SVID', async () => {
    const expired = await issueMeshSvid(caDir, NODE_A, { ttlMs: 60_000, now: new Date(Date.now() - 3_600_000) });
    const answer = await signFor(expired, WEB, undefined, freshSource());
    expect(answer.status).toBe(401);
  });

  it('refuses a CSR with a key other than P-256, one whose signature does not verify, and one that is not a CSR', async () => {
    const nodeA = await currentNode();
    const p384 = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
    const wrongCurve = (await x509.Pkcs10CertificateRequestGenerator.create({
      keys: p384,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: WEB }], true)],
    })).toString('pem');
    const curve = await signFor(nodeA, WEB, wrongCurve);
    expect(curve.status).toBe(400);
    expect(curve.code).toBe('CA_CSR_INVALID');

    // Another key's CSR with its public key swapped in: no proof of possession.
    const honest = new x509.Pkcs10CertificateRequest(await csrFor(WEB));
    const other = await generateKeyPair();
    const otherCsr = new x509.Pkcs10CertificateRequest(await createCsr(other, WEB));
    const tampered = new Uint8Array(honest.rawData);
    const honestKey = new Uint8Array(honest.publicKey.rawData);
    const otherKey = new Uint8Array(otherCsr.publicKey.rawData);
    const at = Buffer.from(tampered).indexOf(Buffer.from(honestKey));
    expect(at).toBeGreaterThan(0);
    tampered.set(otherKey, at);
    const swapped = await signFor(nodeA, WEB, x509.PemConverter.encode(tampered.buffer, 'CERTIFICATE REQUEST'));
    expect(swapped.status).toBe(400);
    expect(swapped.code).toBe('CA_CSR_INVALID');

    const garbage = await signFor(nodeA, WEB, '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n');
    expect(garbage.status).toBe(400);
    expect(garbage.code).toBe('CA_CSR_INVALID');
  });

  it('refuses a body that is not a JSON object with the fields it needs', async () => {
    const nodeA = await currentNode();
    for (const body of ['not json', '[]', '{}', JSON.stringify({ spiffeId: WEB }), JSON.stringify({ spiffeId: WEB, csr: 'x', ttlSeconds: -1 })]) {
      const answer = await sign(nodeA, body);
      expect(answer.status, body).toBe(400);
    }
  });
});
