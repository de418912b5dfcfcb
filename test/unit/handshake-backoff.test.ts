// The hold-off of a client address whose handshakes present certificate chains we refuse: free at first, then doubling
// to a ceiling, forgotten after a quiet spell, per address, and bounded in the addresses it tracks.
import { once } from 'node:events';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { costlyChain, HandshakeBackoff, HandshakeGate } from '../../src/handshake-backoff.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { craftCertificate } from '../helpers/certs.ts';
import type { Certificate } from '../../src/identity/svid.ts';

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('handshake hold-off', () => {
  it('lets the first refused chains go free, then holds the address off for a time that doubles up to its ceiling', () => {
    const time = clock();
    const backoff = new HandshakeBackoff({ freeFailures: 2, baseMs: 500, maxMs: 30_000, now: time.now });
    expect(backoff.heldOffMs('10.0.0.1')).toBe(0);
    expect(backoff.failed('10.0.0.1')).toBe(0);
    expect(backoff.failed('10.0.0.1')).toBe(0);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(0);
    const holds = [];
    for (let i = 0; i < 10; i++) holds.push(backoff.failed('10.0.0.1'));
    expect(holds).toEqual([500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]);
  });

  it('holds off only until the hold-off ends, and only the address that failed', () => {
    const time = clock();
    const backoff = new HandshakeBackoff({ freeFailures: 0, baseMs: 500, now: time.now });
    expect(backoff.failed('10.0.0.1')).toBe(500);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(500);
    expect(backoff.heldOffMs('10.0.0.2')).toBe(0);
    time.advance(499);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(1);
    time.advance(1);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(0);
    // Its refusals are remembered: the next one holds it off twice as long.
    expect(backoff.failed('10.0.0.1')).toBe(1_000);
  });

  it('forgets an address whose last refusal is older than the quiet spell, and starts its count again', () => {
    const time = clock();
    const backoff = new HandshakeBackoff({ freeFailures: 1, baseMs: 500, forgetMs: 60_000, now: time.now });
    backoff.failed('10.0.0.1');
    expect(backoff.failed('10.0.0.1')).toBe(500);
    expect(backoff.failed('10.0.0.1')).toBe(1_000);
    time.advance(59_999);
    expect(backoff.tracked).toBe(1);
    expect(backoff.failed('10.0.0.1')).toBe(2_000);
    time.advance(60_000);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(0);
    expect(backoff.tracked).toBe(0);
    expect(backoff.failed('10.0.0.1')).toBe(0);
    time.advance(60_000);
    // Forgotten by failed() as well, without a lookup in between.
    expect(backoff.failed('10.0.0.1')).toBe(0);
  });

  it('tracks a bounded number of addresses, making room from one no longer held off, never from one held off', () => {
    const time = clock();
    const backoff = new HandshakeBackoff({ freeFailures: 0, baseMs: 500, maxTracked: 3, now: time.now });
    for (const address of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) {
      backoff.failed(address);
      time.advance(100);
    }
    // All three held off: an attacker's new addresses cannot flush them; the newcomer goes untracked.
    expect(backoff.failed('10.0.0.4')).toBe(0);
    expect(backoff.tracked).toBe(3);
    for (const address of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) expect(backoff.heldOffMs(address)).toBeGreaterThan(0);
    // .1's hold-off (500 ms from t=1,000) is over at t=1,500; .2's and .3's are not: .1 makes room.
    time.advance(200);
    expect(backoff.failed('10.0.0.4')).toBe(500);
    expect(backoff.tracked).toBe(3);
    expect(backoff.heldOffMs('10.0.0.2')).toBeGreaterThan(0);
    expect(backoff.heldOffMs('10.0.0.3')).toBeGreaterThan(0);
    expect(backoff.failed('10.0.0.1')).toBe(0);
  });

  it('keeps its hold-off finite however many refusals an address piles up', () => {
    const time = clock();
    const backoff = new HandshakeBackoff({ freeFailures: 0, baseMs: 500, maxMs: 30_000, now: time.now });
    let hold = 0;
    for (let i = 0; i < 5_000; i++) hold = backoff.failed('10.0.0.1');
    expect(hold).toBe(30_000);
    expect(backoff.heldOffMs('10.0.0.1')).toBe(30_000);
  });
});

describe('handshake gate of a TLS server', () => {
  let server: tls.Server | undefined;
  const clients: net.Socket[] = [];
  let serverSvid: TestSvid;
  let clientSvid: TestSvid;
  beforeAll(async () => {
    const ca = await createTestCa('gate.test');
    serverSvid = await issueTestSvid(ca, 'spiffe://gate.test/server');
    clientSvid = await issueTestSvid(ca, 'spiffe://gate.test/client');
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) client.destroy();
    if (server !== undefined) await new Promise((resolve) => server?.close(resolve));
    server = undefined;
  });

  /** A server that refuses every presented chain (as the CA does one no bundle vouches for), and what the gate said. */
  async function gated(): Promise<{ port: number; gate: HandshakeGate; heldOff: Array<[string, number]> }> {
    const heldOff: Array<[string, number]> = [];
    server = tls.createServer({ cert: serverSvid.certPem, key: serverSvid.keyPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const gate = new HandshakeGate({ backoff: new HandshakeBackoff({ freeFailures: 1, baseMs: 60_000 }), onHeldOff: (address, ms) => heldOff.push([address, ms]), onAbandoned: () => {} });
    gate.guard(server);
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      socket.on('error', () => {});
      if (socket.getPeerCertificate().raw !== undefined) gate.refused(socket);
      socket.end('judged');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return { port: (server.address() as net.AddressInfo).port, gate, heldOff };
  }

  /** Whether a TLS client from `from` (with a certificate or none) finishes its handshake. */
  async function handshakes(port: number, from: string, withCertificate: boolean): Promise<boolean> {
    const raw = net.connect({ host: '127.0.0.1', port, localAddress: from }).on('error', () => {});
    const socket = tls.connect({ socket: raw, rejectUnauthorized: false, minVersion: 'TLSv1.3', ...(withCertificate ? { cert: clientSvid.certPem, key: clientSvid.keyPem } : {}) });
    clients.push(raw, socket);
    socket.on('error', () => {});
    // TLS 1.3: the client is done before the server has read its certificate; the server's answer says it was judged.
    return await new Promise<boolean>((resolve) => {
      socket.once('data', () => resolve(true));
      socket.once('close', () => resolve(false));
    });
  }

  it('closes the connections of a held-off address on accept, and only its', async () => {
    const { port, gate, heldOff } = await gated();
    expect(await handshakes(port, '127.0.0.21', true)).toBe(true);
    expect(await handshakes(port, '127.0.0.21', true)).toBe(true);
    expect(gate.backoff.heldOffMs('127.0.0.21')).toBeGreaterThan(0);
    expect(await handshakes(port, '127.0.0.21', false)).toBe(false);
    expect(heldOff.map(([address]) => address)).toEqual(['127.0.0.21']);
    expect(await handshakes(port, '127.0.0.22', true)).toBe(true);
  });

  it('never holds off a client that presents no certificate', async () => {
    const { port, gate } = await gated();
    for (let i = 0; i < 4; i++) expect(await handshakes(port, '127.0.0.23', false)).toBe(true);
    expect(gate.backoff.tracked).toBe(0);
  });

  it("cuts the address's handshakes under way as it is held off, and no other address's", async () => {
    const { port } = await gated();
    const silent = (from: string) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress: from }).on('error', () => {});
      clients.push(socket);
      return socket;
    };
    const same = [silent('127.0.0.24'), silent('127.0.0.24')];
    const other = silent('127.0.0.25');
    await Promise.all([...same, other].map((socket) => once(socket, 'connect')));
    await handshakes(port, '127.0.0.24', true);
    await handshakes(port, '127.0.0.24', true);
    await Promise.all(same.map((socket) => (socket.closed ? undefined : once(socket, 'close'))));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(other.closed).toBe(false);
  });
});

describe('a chain that costs far more than a handshake to check', () => {
  /** A chain as getPeerCertificate(true) links it, leaf first, the last one its own issuer. */
  function linked(certs: Certificate[]): tls.DetailedPeerCertificate {
    const nodes = certs.map((cert, i) => ({ raw: Buffer.from(cert.rawData), fingerprint256: `fp${i}` }) as tls.DetailedPeerCertificate);
    nodes.forEach((node, i) => (node.issuerCertificate = nodes[i + 1] ?? node));
    return nodes[0] as tls.DetailedPeerCertificate;
  }
  const rsaPair = async () => (await crypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2_048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
  /** A certificate for an RSA key whose public exponent is nearly as long as its modulus (WebCrypto makes none). */
  const hugeExponent = async (): Promise<Certificate> => {
    const jwk = await crypto.subtle.exportKey('jwk', (await rsaPair()).publicKey);
    const e = Buffer.from(jwk.n as string, 'base64url');
    e[0] = (e[0] as number) >> 1;
    e[e.length - 1] = (e[e.length - 1] as number) | 1;
    const publicKey = await crypto.subtle.importKey('jwk', { kty: 'RSA', n: jwk.n, e: e.toString('base64url'), ext: true }, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify']);
    const ca = await createTestCa('costly.test');
    return (await craftCertificate(ca.root, { keys: { publicKey, privateKey: (await rsaPair()).privateKey } })).cert;
  };
  let p256: Certificate;
  beforeAll(async () => {
    p256 = (await craftCertificate(null)).cert;
  });

  it('is none of the mesh\'s: P-256 and RSA keys of usual exponent, EdDSA, a few certificates, or no certificate', async () => {
    const ed25519 = (await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const edCert = (await craftCertificate(null, { keys: ed25519, signingAlgorithm: { name: 'Ed25519' } })).cert;
    expect(costlyChain(linked([p256, p256, p256]))).toBeNull();
    expect(costlyChain(linked([p256, (await craftCertificate(null, { keys: await rsaPair(), signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' } })).cert]))).toBeNull();
    expect(costlyChain(linked([edCert, p256]))).toBeNull();
    expect(costlyChain(linked(Array.from({ length: 10 }, () => p256)))).toBeNull();
    expect(costlyChain(null)).toBeNull();
    expect(costlyChain({} as tls.DetailedPeerCertificate)).toBeNull();
  });

  it('is one with a key ambit\'s policy refuses (an RSA exponent over 32 bits), an unreadable one, or over 10 certificates', async () => {
    expect(costlyChain(linked([p256, await hugeExponent()]))).toMatch(/^a certificate that has an RSA key with a 20\d\d-bit public exponent/);
    expect(costlyChain(linked(Array.from({ length: 11 }, () => p256)))).toBe('a chain of more than 10 certificates');
    expect(costlyChain(linked([p256, { rawData: new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]).buffer } as Certificate]))).toBe('a certificate that cannot be read');
  });
});

describe('client addresses of the hold-off', () => {
  it('are one for an IPv4 client whether it reached a v4 socket or a dual-stack one (::ffff:a.b.c.d)', () => {
    const gate = new HandshakeGate({ backoff: new HandshakeBackoff({ freeFailures: 0 }), onHeldOff: () => {}, onAbandoned: () => {} });
    const socket = (remoteAddress: string) => ({ remoteAddress, remotePort: 1, localAddress: '::', localPort: 15008, destroy() {}, once() {} }) as unknown as net.Socket;
    gate.refused(socket('::ffff:10.1.2.3'));
    expect(gate.admit(socket('10.1.2.3'))).toBe(false);
    expect(gate.admit(socket('::ffff:10.1.2.4'))).toBe(true);
    gate.refused(socket('10.1.2.4'));
    expect(gate.admit(socket('::ffff:10.1.2.4'))).toBe(false);
    // An IPv6 address that merely ends like one stays itself.
    expect(gate.admit(socket('fd00::ffff:10.1.2.3'))).toBe(true);
  });
});

/** A TCP server whose connections begin their (stand-in) handshakes through `gate`: what it accepted, what began. */
async function gatedServer(gate: HandshakeGate): Promise<{ server: net.Server; port: number; started: net.Socket[]; accepted: net.Socket[] }> {
  const started: net.Socket[] = [];
  const accepted: net.Socket[] = [];
  const server = net.createServer((socket) => {
    accepted.push(socket);
    gate.begin(socket, () => started.push(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port, started, accepted };
}

describe('handshakes begun per address', () => {
  it('begin eight at a time from one address, the rest in order as each ends, and leave nothing counted once all have closed', async () => {
    const gate = new HandshakeGate({ onHeldOff: () => {}, onAbandoned: () => {} });
    const { server, port, started, accepted } = await gatedServer(gate);
    const clients = [
      ...Array.from({ length: 10 }, () => net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.31' })),
      net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.32' }),
    ];
    try {
      for (const client of clients) client.on('error', () => {});
      await Promise.all(clients.map((client) => once(client, 'connect')));
      while (accepted.length < 11) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(started.length).toBe(9);
      expect(gate.underWay(accepted[0] as net.Socket)).toBe(10);
      expect(gate.total).toBe(11);
      const first = started[0] as net.Socket;
      const ninthOfAddress = accepted.filter((socket) => socket.remoteAddress === '127.0.0.31')[8] as net.Socket;
      first.destroy();
      await once(first, 'close');
      expect(started).toContain(ninthOfAddress);
      // Ended by settle() too, as a handshake done.
      gate.settle(started[1] as net.Socket);
      expect(started.length).toBe(11);
      const closed = accepted.filter((socket) => socket !== first).map((socket) => once(socket, 'close'));
      for (const socket of accepted) socket.destroy();
      await Promise.all(closed);
      expect(gate.total).toBe(0);
    } finally {
      for (const client of clients) client.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('cut by a hold-off, the waiting are not begun first and are counted out once: nothing is left counted', async () => {
    const gate = new HandshakeGate({ backoff: new HandshakeBackoff({ freeFailures: 0 }), onHeldOff: () => {}, onAbandoned: () => {} });
    const { server, port, started, accepted } = await gatedServer(gate);
    const clients = Array.from({ length: 10 }, () => net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.33' }).on('error', () => {}));
    try {
      await Promise.all(clients.map((client) => once(client, 'connect')));
      while (accepted.length < 10) await new Promise((resolve) => setTimeout(resolve, 10));
      expect([started.length, gate.total]).toEqual([8, 10]);
      const closed = accepted.map((socket) => once(socket, 'close'));
      const { holdMs, cut } = gate.refused(started[0] as net.Socket);
      expect([holdMs > 0, cut]).toEqual([true, 9]);
      expect(started.length).toBe(8);
      (started[0] as net.Socket).destroy();
      await Promise.all(closed);
      expect(gate.total).toBe(0);
    } finally {
      for (const client of clients) client.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
