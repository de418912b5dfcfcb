// The HBONE client pool (src/proxy/pool.ts) against a peer that is not ambit: a plain node:http2 server with a
// SPIFFE certificate that answers CONNECT only when the test says so. What must hold: a CONNECT nobody answers
// fails with a clear error after the connect timeout and gives its stream and slot back, as one refused or reset
// does at once; one that was answered lives on however long it lasts.
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSvid } from '../../src/identity/svid.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { HbonePool, TunnelError } from '../../src/proxy/pool.ts';
import { StreamBudget } from '../../src/proxy/window.ts';
import { H2_CONNECTION_WINDOW_BYTES, H2_STREAM_WINDOW_BYTES } from '../../src/proxy/settings.ts';
import type { Endpoint } from '../../src/proxy/routes.ts';
import { IdentityContexts, PeerVerifier } from '../../src/proxy/tls.ts';
import type { Workload } from '../../src/config/snapshot.ts';
import type { BundleSource } from '../../src/identity/svid.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import { EMPTY_SETTINGS, floodPings, freezableRelay, throttledRelay } from '../helpers/hbone.ts';
import { frame } from '../helpers/h2-frames.ts';

const CLIENT_ID = 'spiffe://cluster.local/ns/a/sa/client';
const SERVER_ID = 'spiffe://cluster.local/ns/b/sa/server';

interface Peer {
  readonly server: http2.Http2SecureServer;
  readonly port: number;
  /** How the peer treats a CONNECT: never answer, answer 200 and echo, answer `status` and end, or reset it unanswered. */
  mode: 'silent' | 'echo' | 'refuse' | 'reset' | 'refuse-once' | 'informational';
  status: number;
  resetCode: number;
  /** RST codes of the streams the peer saw closed. */
  readonly closedWith: number[];
}

describe('HBONE pool: waiting for a CONNECT answer', () => {
  let peer: Peer;
  let contexts: IdentityContexts;
  let bundles: BundleSource;
  let peerCert: { certPem: string; keyPem: string };
  let clientCert: { certPem: string; keyPem: string };

  beforeAll(async () => {
    const ca = await createTestCa('cluster.local');
    const client = await issueTestSvid(ca, CLIENT_ID);
    clientCert = client;
    const server = await issueTestSvid(ca, SERVER_ID);
    peerCert = server;
    contexts = new IdentityContexts();
    contexts.set(loadSvid(client.certPem, client.keyPem));
    bundles = { get: (trustDomain) => (trustDomain === ca.trustDomain ? ca.bundle : undefined) };
    const h2 = http2.createSecureServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
    peer = { server: h2, port: 0, mode: 'silent', status: 200, resetCode: 0, closedWith: [] };
    h2.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.once('close', () => peer.closedWith.push(stream.rstCode));
      if (peer.mode === 'echo') {
        stream.respond({ ':status': 200 });
        stream.pipe(stream);
      } else if (peer.mode === 'refuse') {
        stream.respond({ ':status': peer.status }, { endStream: true });
      } else if (peer.mode === 'reset') {
        stream.close(peer.resetCode);
      } else if (peer.mode === 'informational') {
        // 1xx after 1xx and never an answer: a hostile peer's way to make the client parse for as long as it likes.
        const flood = () => {
          for (let i = 0; i < 200 && !stream.destroyed; i++) stream.additionalHeaders({ ':status': 100 });
          if (!stream.destroyed) setImmediate(flood);
        };
        flood();
      } else if (peer.mode === 'refuse-once') {
        // Not processed (RFC 9113 §8.7), as a peer draining or at its limit answers; the next is echoed.
        peer.mode = 'echo';
        stream.close(peer.resetCode);
      }
    });
    h2.listen(0, '127.0.0.1');
    await once(h2, 'listening');
    (peer as { port: number }).port = (h2.address() as AddressInfo).port;
  });

  afterAll(async () => {
    peer.server.close();
  });

  function endpoint(): Endpoint {
    return {
      workload: { name: 'server', namespace: 'b' } as Workload,
      ip: '127.0.0.1',
      port: 8080,
      authority: '127.0.0.1:8080',
      hboneHost: '127.0.0.1',
      hbonePort: peer.port,
      hboneAuthority: `127.0.0.1:${peer.port}`,
      identity: SERVER_ID,
    };
  }

  /** What opening a tunnel failed with (null if it opened). */
  function openError(hbone: HbonePool): Promise<unknown> {
    return hbone.open(CLIENT_ID, null, endpoint(), '').then(
      () => null,
      (e: unknown) => e,
    );
  }

  /**
   * A TLS server speaking raw HTTP/2 as the peer's certificate: `settings` first thing, then for every frame it reads
   * (after the client's preface) an acknowledgement of SETTINGS, a PONG for a PING, and `onFrame`.
   */
  function rawPeer(settings: Buffer, onFrame: (socket: tls.TLSSocket, type: number, id: number) => void): tls.Server {
    return tls.createServer({ cert: peerCert.certPem, key: peerCert.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] }, (socket) => {
      socket.on('error', () => {});
      socket.write(settings);
      let buffered = Buffer.alloc(0);
      let preface = false;
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        if (!preface) {
          if (buffered.length < 24) return;
          buffered = buffered.subarray(24);
          preface = true;
        }
        while (buffered.length >= 9 && buffered.length >= 9 + buffered.readUIntBE(0, 3)) {
          const length = buffered.readUIntBE(0, 3);
          const [type, flags, id] = [buffered[3] as number, buffered[4] as number, buffered.readUInt32BE(5) & 0x7fffffff];
          const payload = buffered.subarray(9, 9 + length);
          buffered = buffered.subarray(9 + length);
          if (type === 4 && (flags & 1) === 0) socket.write(frame(4, 1, 0));
          else if (type === 6 && (flags & 1) === 0) socket.write(frame(6, 1, 0, payload));
          onFrame(socket, type, id);
        }
      });
    });
  }

  function pool(connectTimeoutMs: number): HbonePool {
    return new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), connectTimeoutMs, answerTimeoutMs: connectTimeoutMs });
  }

  it('fails a CONNECT nobody answers after the connect timeout, resets its stream and frees its slot', async () => {
    peer.mode = 'silent';
    peer.closedWith.length = 0;
    const hbone = pool(300);
    try {
      const started = Date.now();
      const error = await openError(hbone);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('UPSTREAM_CONNECT');
      expect((error as TunnelError).flag).toBe('CONNECT');
      expect((error as TunnelError).message).toContain(`CONNECT 127.0.0.1:8080 via 127.0.0.1:${peer.port}: no answer within 300 ms`);
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      // The peer saw the stream cancelled, and the pool counts no stream in flight.
      await expect.poll(() => peer.closedWith).toEqual([http2.constants.NGHTTP2_CANCEL]);
      await expect.poll(() => hbone.stats().streams).toBe(0);
    } finally {
      await hbone.close();
    }
  });

  it('fails a CONNECT the peer resets or closes before answering, saying so, and frees its slot', async () => {
    peer.mode = 'reset';
    const hbone = pool(5000);
    try {
      // A reset with an error code comes as the stream's 'error' before its 'close'; a plain close only as 'close'.
      for (const [code, message] of [
        [http2.constants.NGHTTP2_REFUSED_STREAM, 'CONNECT 127.0.0.1:8080: Stream closed with error code NGHTTP2_REFUSED_STREAM'],
        [http2.constants.NGHTTP2_NO_ERROR, 'CONNECT 127.0.0.1:8080: stream closed before an answer (RST 0)'],
      ] as const) {
        peer.resetCode = code;
        const error = await openError(hbone);
        expect(error).toBeInstanceOf(TunnelError);
        expect((error as TunnelError).flag).toBe('CONNECT');
        expect((error as TunnelError).message).toBe(message);
      }
      await expect.poll(() => hbone.stats().streams).toBe(0);
    } finally {
      await hbone.close();
    }
  });

  // ENHANCE_YOUR_CALM is what a Node peer answers, before it takes the stream, when its session is full.
  it.each([
    ['REFUSED_STREAM', http2.constants.NGHTTP2_REFUSED_STREAM],
    ['ENHANCE_YOUR_CALM', http2.constants.NGHTTP2_ENHANCE_YOUR_CALM],
  ] as const)('sends a CONNECT the peer refused unprocessed (%s) once more, on a new session, and opens the tunnel', async (_name, code) => {
    peer.mode = 'refuse-once';
    peer.resetCode = code;
    let sessions = 0;
    const onSession = () => sessions++;
    peer.server.on('session', onSession);
    const hbone = pool(2_000);
    try {
      const stream = await hbone.open(CLIENT_ID, null, endpoint(), '');
      expect(sessions).toBe(2);
      stream.end('after a refusal');
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      expect(Buffer.concat(chunks).toString()).toBe('after a refusal');
      await expect.poll(() => hbone.stats()).toEqual({ sessions: 1, streams: 0 });
    } finally {
      peer.server.off('session', onSession);
      await hbone.close();
    }
  });

  it('fails a CONNECT the peer refuses, with its status: 401 is a policy denial, anything else a failed connect', async () => {
    peer.mode = 'refuse';
    const hbone = pool(5000);
    try {
      for (const [status, flag] of [[401, 'DENY'], [503, 'CONNECT'], [400, 'CONNECT']] as const) {
        peer.status = status;
        const error = await openError(hbone);
        expect(error).toBeInstanceOf(TunnelError);
        expect((error as TunnelError).code).toBe('HBONE_REFUSED');
        expect((error as TunnelError).flag).toBe(flag);
        expect((error as TunnelError).status).toBe(status);
        expect((error as TunnelError).message).toBe(`127.0.0.1:8080 via 127.0.0.1:${peer.port} answered ${status}`);
      }
      await expect.poll(() => hbone.stats().streams).toBe(0);
    } finally {
      await hbone.close();
    }
  });

  it('fails a CONNECT answered with 1xx at the first, and resets its stream, rather than parse a flood of them until the timeout', async () => {
    peer.mode = 'informational';
    peer.closedWith.length = 0;
    const hbone = pool(10_000);
    try {
      const started = Date.now();
      const error = await openError(hbone);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('HBONE_REFUSED');
      expect((error as TunnelError).flag).toBe('CONNECT');
      expect((error as TunnelError).message).toBe(`127.0.0.1:8080 via 127.0.0.1:${peer.port} answered 100 (informational) to CONNECT`);
      await expect.poll(() => peer.closedWith).toEqual([http2.constants.NGHTTP2_CANCEL]);
      await expect.poll(() => hbone.stats().streams).toBe(0);
    } finally {
      await hbone.close();
    }
  });

  it('keeps an answered tunnel open past the connect timeout, carrying bytes both ways', async () => {
    peer.mode = 'echo';
    peer.closedWith.length = 0;
    const hbone = pool(200);
    try {
      const stream = await hbone.open(CLIENT_ID, null, endpoint(), '');
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(stream.destroyed).toBe(false);
      expect(peer.closedWith).toEqual([]);
      stream.end('still here');
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(chunk as Buffer);
      expect(Buffer.concat(chunks).toString()).toBe('still here');
      await expect.poll(() => hbone.stats().streams).toBe(0);
      expect(peer.closedWith).toEqual([http2.constants.NGHTTP2_NO_ERROR]);
    } finally {
      await hbone.close();
    }
  });

  it("dials from the source workload's IP, so the destination sees the workload's address, with a session per source IP", async () => {
    peer.mode = 'echo';
    const seen: string[] = [];
    const onSession = (session: http2.ServerHttp2Session) => seen.push(session.socket.remoteAddress ?? '');
    peer.server.on('session', onSession);
    const logged: string[] = [];
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger() });
    try {
      (await hbone.open(CLIENT_ID, '127.0.0.21', endpoint(), '')).close();
      (await hbone.open(CLIENT_ID, '127.0.0.21', endpoint(), '')).close();
      (await hbone.open(CLIENT_ID, '127.0.0.22', endpoint(), '')).close();
      expect(seen).toEqual(['127.0.0.21', '127.0.0.22']);
      expect(hbone.stats().sessions).toBe(2);
    } finally {
      await hbone.close();
    }
    // An address this host no longer has (TEST-NET-1; the caller passes only local ones, but one can go away):
    // dialled from the host's own, and said.
    const single = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: Object.assign(silentLogger(), { child: () => Object.assign(silentLogger(), { warn: (_o: unknown, msg: string) => logged.push(msg) }) }) });
    try {
      seen.length = 0;
      (await single.open(CLIENT_ID, '192.0.2.7', endpoint(), '')).close();
      expect(seen).toEqual(['127.0.0.1']);
      expect(logged.filter((msg) => msg.startsWith("the source workload's address is gone from this host"))).toHaveLength(1);
    } finally {
      peer.server.off('session', onSession);
      await single.close();
    }
  });

  it('takes no new stream on a session verified against trust bundles since replaced: the next tunnel dials and verifies again', async () => {
    peer.mode = 'echo';
    let sessions = 0;
    const onSession = () => sessions++;
    peer.server.on('session', onSession);
    const original = bundles;
    const hbone = pool(2_000);
    try {
      const first = await hbone.open(CLIENT_ID, null, endpoint(), '');
      (await hbone.open(CLIENT_ID, null, endpoint(), '')).close();
      expect(sessions).toBe(1);
      // The same roots in a new set, as the agent installs after the CA serves a changed bundle.
      bundles = { get: (trustDomain) => original.get(trustDomain) };
      const second = await hbone.open(CLIENT_ID, null, endpoint(), '');
      expect(sessions).toBe(2);
      // The retired session still carries a tunnel: it is still counted (and kept alive by PINGs).
      expect(hbone.stats()).toEqual({ sessions: 2, streams: 2 });
      // The stream opened before carries on: the old session only stopped taking new ones.
      first.write('still here');
      const [echoed] = (await once(first, 'data')) as [Buffer];
      expect(echoed.toString()).toBe('still here');
      first.close();
      await once(first, 'close');
      second.close();
      await once(second, 'close');
      // Its last stream gone, the retired session closes and leaves the gauges.
      for (let tries = 0; hbone.stats().sessions > 1 && tries < 100; tries++) await new Promise((resolve) => setTimeout(resolve, 10));
      expect(hbone.stats()).toEqual({ sessions: 1, streams: 0 });
    } finally {
      bundles = original;
      peer.server.off('session', onSession);
      await hbone.close();
    }
  });

  it('closes at once a session, with its tunnels, whose server the new trust bundles no longer vouch for, and keeps one they still do', async () => {
    peer.mode = 'echo';
    const original = bundles;
    const hbone = pool(2_000);
    try {
      const tunnel = await hbone.open(CLIENT_ID, null, endpoint(), '');
      tunnel.on('error', () => {});
      // The same roots in a new set: still vouched for, the tunnel carries on.
      bundles = { get: (trustDomain) => original.get(trustDomain) };
      hbone.reverify();
      tunnel.write('still here');
      const [echoed] = (await once(tunnel, 'data')) as [Buffer];
      expect(echoed.toString()).toBe('still here');
      // The peer's trust domain withdrawn: closed now, not when the tunnel ends.
      bundles = { get: () => undefined };
      hbone.reverify();
      await expect.poll(() => tunnel.destroyed, { timeout: 1_000 }).toBe(true);
      await expect.poll(() => hbone.stats(), { timeout: 1_000 }).toEqual({ sessions: 0, streams: 0 });
    } finally {
      bundles = original;
      await hbone.close();
    }
  });

  it('judges its sessions under new trust bundles on its keepalive sweep too, without being told of them', async () => {
    peer.mode = 'echo';
    const original = bundles;
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), keepaliveIntervalMs: 100 });
    try {
      const tunnel = await hbone.open(CLIENT_ID, null, endpoint(), '');
      tunnel.on('error', () => {});
      bundles = { get: () => undefined };
      await expect.poll(() => tunnel.destroyed, { timeout: 2_000 }).toBe(true);
    } finally {
      bundles = original;
      await hbone.close();
    }
  });

  it('carries a tunnel to a peer proxy at an IPv6 address (its authority bracketed)', async (context) => {
    const v6 = http2.createSecureServer({ cert: peerCert.certPem, key: peerCert.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
    v6.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    });
    const bound = await new Promise<boolean>((resolve) => {
      v6.once('error', () => resolve(false));
      v6.listen(0, '::1', () => resolve(true));
    });
    if (!bound) {
      process.stderr.write('hbone-pool.test.ts: no IPv6 loopback (::1) here, skipping the IPv6 peer test\n');
      context.skip();
    }
    const port = (v6.address() as AddressInfo).port;
    const at: Endpoint = { ...endpoint(), ip: 'fd00::8', authority: '[fd00::8]:8080', hboneHost: '::1', hbonePort: port, hboneAuthority: `[::1]:${port}` };
    const hbone = pool(5000);
    try {
      const stream = await hbone.open(CLIENT_ID, null, at, '');
      stream.end('over IPv6');
      let echoed = '';
      for await (const chunk of stream) echoed += (chunk as Buffer).toString();
      expect(echoed).toBe('over IPv6');
      // And names it bracketed when it cannot be reached (`::1:PORT` reads as one address).
      v6.close();
      await once(v6, 'close');
      const error = await hbone.open(CLIENT_ID, null, at, '').then(() => null, (e: unknown) => e);
      expect((error as TunnelError).message).toContain(`connect to [::1]:${port}:`);
    } finally {
      await hbone.close();
      v6.close();
    }
  });

  it('says the TLS handshake got no answer, not the connect, when the port takes TCP and never answers TLS', async () => {
    const mute = net.createServer((socket) => socket.on('error', () => {}));
    mute.listen(0, '127.0.0.1');
    await once(mute, 'listening');
    const port = (mute.address() as AddressInfo).port;
    const hbone = pool(300);
    try {
      const error = await hbone.open(CLIENT_ID, null, { ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` }, '').then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).flag).toBe('TLS_FAILURE');
      expect((error as TunnelError).message).toBe(`TLS handshake with 127.0.0.1:${port} got no answer within 300 ms: the port accepts connections but answers no TLS (is it an HBONE server?)`);
    } finally {
      await hbone.close();
      mute.close();
    }
  });

  it('leaves no session behind when it is closed while a dial is under way', async () => {
    peer.mode = 'echo';
    // A relay that holds the handshake until told: the pool closes in between.
    const releases: Array<() => void> = [];
    const gate = net.createServer((near) => {
      near.on('error', () => {});
      near.pause();
      releases.push(() => {
        const far = net.connect(peer.port, '127.0.0.1');
        far.on('error', () => {});
        near.pipe(far).pipe(near);
        near.resume();
      });
    });
    gate.listen(0, '127.0.0.1');
    await once(gate, 'listening');
    let open = 0;
    const count = (session: http2.ServerHttp2Session) => {
      open++;
      session.once('close', () => open--);
    };
    peer.server.on('session', count);
    const hbone = pool(5000);
    try {
      const opening = hbone.open(CLIENT_ID, null, { ...endpoint(), hbonePort: (gate.address() as AddressInfo).port }, '').then(() => null, (e: unknown) => e);
      await expect.poll(() => releases.length).toBe(1);
      await hbone.close();
      releases[0]?.();
      const error = await opening;
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).message).toBe('pool is closed');
      await expect.poll(() => open).toBe(0);
      expect(hbone.stats()).toEqual({ sessions: 0, streams: 0 });
    } finally {
      peer.server.off('session', count);
      gate.close();
    }
  });

  it('goes on pinging a session retired with a tunnel still open, and ends that tunnel when the peer stops answering', async () => {
    peer.mode = 'echo';
    // A relay in front of the peer that can stop carrying bytes, as a node that vanished (no FIN, no RST).
    const relay = await freezableRelay('127.0.0.1', peer.port);
    const relayed: Endpoint = { ...endpoint(), hbonePort: relay.port };
    const original = bundles;
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), keepaliveIntervalMs: 100, keepaliveTimeoutMs: 400 });
    try {
      const first = await hbone.open(CLIENT_ID, null, relayed, '');
      first.on('error', () => {});
      // New trust bundles retire the first session; its tunnel goes on, and a second session carries the next.
      bundles = { get: (trustDomain) => original.get(trustDomain) };
      const second = await hbone.open(CLIENT_ID, null, relayed, '');
      second.on('error', () => {});
      expect(hbone.stats()).toEqual({ sessions: 2, streams: 2 });
      // Still pinged while retired: a second later it is alive and well.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(first.destroyed).toBe(false);
      relay.freeze();
      await expect.poll(() => first.destroyed && second.destroyed, { timeout: 3_000 }).toBe(true);
      // Reset, not ended: a clean close would reach the applications as a FIN, a cut download as a whole one.
      expect([first.rstCode, second.rstCode]).toEqual([http2.constants.NGHTTP2_INTERNAL_ERROR, http2.constants.NGHTTP2_INTERNAL_ERROR]);
      await expect.poll(() => hbone.stats(), { timeout: 3_000 }).toEqual({ sessions: 0, streams: 0 });
    } finally {
      bundles = original;
      await hbone.close();
      relay.close();
    }
  });

  /**
   * A destination proxy's HBONE side as Node's server, with the proxy's windows: answers each stream 200, counts what
   * it stores, and says `stored` when the stream ends.
   */
  async function storingSink(): Promise<{ sink: http2.Http2SecureServer; stored: () => number }> {
    const sink = http2.createSecureServer({ cert: peerCert.certPem, key: peerCert.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], settings: { initialWindowSize: H2_STREAM_WINDOW_BYTES } });
    sink.on('session', (session) => session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES));
    let stored = 0;
    sink.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      stream.on('data', (chunk: Buffer) => (stored += chunk.length));
      stream.on('end', () => stream.end('stored'));
    });
    sink.listen(0, '127.0.0.1');
    await once(sink, 'listening');
    return { sink, stored: () => stored };
  }

  // The pool's sessions share the proxy's stream budget with each other (and with the inbound's): a session carrying a
  // few tunnels is narrowed when the proxy's other sessions carry many, what a download over each may make it hold.
  it('narrows the stream window of every pooled session as tunnels open across them, and widens it as they close', async () => {
    const { sink } = await storingSink();
    const sessions: http2.ServerHttp2Session[] = [];
    sink.on('session', (session) => sessions.push(session));
    const budget = new StreamBudget(8 * 1024 * 1024);
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), maxStreamsPerSession: 10, streamBudget: budget });
    const to = { ...endpoint(), hbonePort: (sink.address() as AddressInfo).port, hboneAuthority: `127.0.0.1:${(sink.address() as AddressInfo).port}` };
    const windowOf = (session: http2.ServerHttp2Session | undefined) => session?.remoteSettings.initialWindowSize;
    try {
      const first = await hbone.open(CLIENT_ID, null, to, '');
      await expect.poll(() => windowOf(sessions[0]), { timeout: 10_000 }).toBe(H2_STREAM_WINDOW_BYTES);
      // 30 more: four sessions of at most 10, 31 streams open (32, one stream ahead): 256 KiB each fit 8 MiB. The first
      // session's own ten would have had 2 MiB.
      const more = await Promise.all(Array.from({ length: 30 }, () => hbone.open(CLIENT_ID, null, to, '')));
      expect(hbone.stats()).toEqual({ sessions: 4, streams: 31 });
      await expect.poll(() => sessions.map(windowOf), { timeout: 10_000 }).toEqual(Array(4).fill(256 * 1024));
      for (const tunnel of more) tunnel.destroy();
      await expect.poll(() => budget.open, { timeout: 10_000 }).toBe(1);
      // One tunnel left: its session widens as far as twice the streams open fit (3 × 2 MiB within 8 MiB).
      await expect.poll(() => windowOf(sessions[0]), { timeout: 10_000 }).toBe(2 * 1024 * 1024);
      first.destroy();
    } finally {
      await hbone.close();
      sink.close();
    }
    await expect.poll(() => budget.open, { timeout: 10_000 }).toBe(0);
  });

  // Its PING leaves behind what the session queued before it, up to the peer's windows of DATA: over a slow path the
  // PONG came later than the keepalive's timeout, and the pool cut a healthy session with every tunnel on it. A peer
  // that still sends (its WINDOW_UPDATEs) and reads (our queue moves) is waited for; one gone silent is cut (above).
  it('keeps a session whose keepalive PONG waits behind its own upload over a slow path, the peer still reading and sending', async () => {
    // The destination proxy's windows: 4 MiB of DATA may be ahead of a PING, 2 s at 2 MiB/s, past the timeout here; the
    // server's WINDOW_UPDATEs come every 2 MiB it reads, every second.
    const { sink, stored } = await storingSink();
    const relay = await throttledRelay('127.0.0.1', (sink.address() as AddressInfo).port, 2 * 1024 * 1024);
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), keepaliveIntervalMs: 200, keepaliveTimeoutMs: 1_500 });
    try {
      const tunnel = await hbone.open(CLIENT_ID, null, { ...endpoint(), hbonePort: relay.port, hboneAuthority: `127.0.0.1:${relay.port}` }, '');
      const answer: Buffer[] = [];
      tunnel.on('data', (chunk: Buffer) => answer.push(chunk));
      const closed = new Promise((resolve) => tunnel.once('close', resolve));
      const chunk = Buffer.alloc(64 * 1024, 1);
      // (once() rejects on the tunnel's 'error': a cut session fails the test here.)
      for (let i = 0; i < 8 * 16; i++) if (!tunnel.write(chunk)) await once(tunnel, 'drain');
      tunnel.end();
      await closed;
      expect(stored()).toBe(8 * 1024 * 1024);
      expect(Buffer.concat(answer).toString()).toBe('stored');
      expect(tunnel.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
    } finally {
      await hbone.close();
      relay.close();
      sink.close();
    }
  }, 30_000);

  // The same wait with our writes held past the SessionSocket's bound (tens of thousands of small frames): the queue
  // the PONG waits behind is the SessionSocket's and its TLS socket's together, and it shrinks as the peer reads. Judged
  // by the TLS socket's alone (refilled to 256 KiB at each drain), a session moving at the path's speed had looked stuck.
  it('keeps a session whose PONG waits behind tens of thousands of small frames it holds past its bound, the peer reading them', async () => {
    const { sink, stored } = await storingSink();
    const relay = await throttledRelay('127.0.0.1', (sink.address() as AddressInfo).port, 8 * 1024 * 1024);
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), keepaliveIntervalMs: 200, keepaliveTimeoutMs: 1_500 });
    try {
      const at = { ...endpoint(), hbonePort: relay.port, hboneAuthority: `127.0.0.1:${relay.port}` };
      const piece = Buffer.alloc(256, 1);
      const outcomes = await Promise.all(Array.from({ length: 16 }, async () => {
        const tunnel = await hbone.open(CLIENT_ID, null, at, '');
        tunnel.resume();
        const closed = new Promise((resolve) => tunnel.once('close', resolve));
        // (once() rejects on the tunnel's 'error': a cut session fails the test here.)
        for (let i = 0; i < (2 * 1024 * 1024) / piece.length; i++) if (!tunnel.write(piece)) await once(tunnel, 'drain');
        tunnel.end();
        await closed;
        return tunnel.rstCode;
      }));
      expect(outcomes).toEqual(Array(16).fill(http2.constants.NGHTTP2_NO_ERROR));
      expect(stored()).toBe(16 * 2 * 1024 * 1024);
    } finally {
      await hbone.close();
      relay.close();
      sink.close();
    }
  }, 60_000);

  // The other side of that wait: a server that sends (PINGs, as fast as it can) but reads nothing holds our writes past
  // the SessionSocket's bound with a queue that never shrinks, and is cut when its PONG is late, as a silent one is.
  it('cuts a session whose server floods PINGs and reads nothing, when its keepalive PONG is late', async () => {
    const flooder = tls.createServer({ cert: peerCert.certPem, key: peerCert.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] }, (socket) => floodPings(socket, EMPTY_SETTINGS));
    flooder.listen(0, '127.0.0.1');
    await once(flooder, 'listening');
    const port = (flooder.address() as AddressInfo).port;
    const hbone = new HbonePool({ contexts, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), keepaliveIntervalMs: 200, keepaliveTimeoutMs: 1_000, connectTimeoutMs: 30_000, answerTimeoutMs: 30_000 });
    try {
      const started = Date.now();
      const error = await hbone.open(CLIENT_ID, null, { ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` }, '').then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TunnelError);
      expect(Date.now() - started).toBeLessThan(15_000);
      await expect.poll(() => hbone.stats(), { timeout: 3_000 }).toEqual({ sessions: 0, streams: 0 });
    } finally {
      await hbone.close();
      flooder.close();
    }
  }, 30_000);

  it('keeps no session whose server takes no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0): each refusal leaves nothing behind', async () => {
    const full = http2.createSecureServer({ cert: peerCert.certPem, key: peerCert.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], settings: { maxConcurrentStreams: 0 } });
    let sessions = 0;
    full.on('session', () => sessions++);
    full.listen(0, '127.0.0.1');
    await once(full, 'listening');
    const at: Endpoint = { ...endpoint(), hbonePort: (full.address() as AddressInfo).port };
    const hbone = pool(2_000);
    try {
      for (let attempt = 1; attempt <= 3; attempt++) {
        const error = await hbone.open(CLIENT_ID, null, at, '').then(() => null, (e: unknown) => e);
        expect(error).toBeInstanceOf(TunnelError);
        expect((error as TunnelError).flag).toBe('CONNECT');
        await expect.poll(() => hbone.stats()).toEqual({ sessions: 0, streams: 0 });
      }
      // Each connection's CONNECT refused, unprocessed, goes once more on a new session, refused too: two per connection.
      expect(sessions).toBe(6);
    } finally {
      await hbone.close();
      full.close();
    }
  });

  it('refuses an answer whose header fields pass 16 KiB, on the first stream of a session too (before the peer acknowledged the limit)', async () => {
    // A raw peer: its SETTINGS, an acknowledgement of ours (then our SETTINGS allow frames of the answer's size; the
    // first stream came before it), and 200 with a 60 KiB field to every CONNECT.
    const big = rawPeer(frame(4, 0, 0), (socket, type, id) => {
      if (type !== 1) return;
      // :status 200 (HPACK static index 8), then `x-big` as a literal of 60 KiB (its length a 7-bit prefix integer).
      const valueLength = 60 * 1024;
      const lengthBytes = [0x7f];
      for (let rest = valueLength - 127; ; rest >>= 7) {
        if (rest < 128) {
          lengthBytes.push(rest);
          break;
        }
        lengthBytes.push((rest & 0x7f) | 0x80);
      }
      const block = Buffer.concat([Buffer.from([0x88, 0x00, 5]), Buffer.from('x-big'), Buffer.from(lengthBytes), Buffer.alloc(valueLength, 'a')]);
      socket.write(frame(1, 4, id, block));
    });
    big.listen(0, '127.0.0.1');
    await once(big, 'listening');
    const at: Endpoint = { ...endpoint(), hbonePort: (big.address() as AddressInfo).port };
    const hbone = pool(5_000);
    try {
      const error = await hbone.open(CLIENT_ID, null, at, '').then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('HBONE_REFUSED');
      expect((error as TunnelError).message).toMatch(/answered with 6\d{4} bytes of header fields, more than the 16384 this proxy takes$/);
      await expect.poll(() => hbone.stats().streams).toBe(0);
    } finally {
      await hbone.close();
      big.close();
    }
  });

  it('fails at once, after one more try, CONNECTs held unsent on a session whose server says it takes no streams', async () => {
    // A raw peer: SETTINGS_MAX_CONCURRENT_STREAMS 0 first thing, acknowledgements and PONGs, and REFUSED_STREAM for any
    // CONNECT that reaches it anyway.
    const full = rawPeer(frame(4, 0, 0, Buffer.from([0, 3, 0, 0, 0, 0])), (socket, type, id) => {
      if (type === 1) socket.write(frame(3, 0, id, Buffer.from([0, 0, 0, http2.constants.NGHTTP2_REFUSED_STREAM])));
    });
    full.listen(0, '127.0.0.1');
    await once(full, 'listening');
    const at: Endpoint = { ...endpoint(), hbonePort: (full.address() as AddressInfo).port };
    const hbone = pool(10_000);
    try {
      for (let round = 0; round < 3; round++) {
        const started = Date.now();
        // Connections arriving one after another, as a proxy accepts them: some reach a session whose settings are
        // on their way, and nghttp2 holds those unsent once they say 0.
        const outcomes: Array<Promise<string>> = [];
        for (let i = 0; i < 60; i++) {
          outcomes.push(hbone.open(CLIENT_ID, null, at, '').then(() => 'opened', (e: unknown) => (e instanceof TunnelError ? e.flag : String(e))));
          await new Promise((resolve) => setImmediate(resolve));
        }
        expect(await Promise.all(outcomes)).toEqual(Array(60).fill('CONNECT'));
        expect(Date.now() - started).toBeLessThan(5_000);
        await expect.poll(() => hbone.stats()).toEqual({ sessions: 0, streams: 0 });
      }
    } finally {
      await hbone.close();
      full.close();
    }
  }, 60_000);

  it("takes no new stream on a session whose server certificate has expired: the next tunnel's handshake refuses it", async () => {
    const ca = await createTestCa('cluster.local');
    // Valid for about two more seconds.
    const shortLived = await issueTestSvid(ca, SERVER_ID, { now: new Date(Date.now() - 58_000), ttlMs: 60_000 });
    const client = await issueTestSvid(ca, CLIENT_ID);
    const own = new IdentityContexts();
    own.set(loadSvid(client.certPem, client.keyPem));
    const server = http2.createSecureServer({ cert: shortLived.certPem, key: shortLived.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
    server.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const target: Endpoint = { ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` };
    const hbone = new HbonePool({ contexts: own, bundles: () => ({ get: (trustDomain) => (trustDomain === ca.trustDomain ? ca.bundle : undefined) }), verifier: new PeerVerifier(), logger: silentLogger() });
    try {
      (await hbone.open(CLIENT_ID, null, target, '')).close();
      const expiresMs = Date.parse(new X509Certificate(shortLived.certPem).validTo);
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, expiresMs - Date.now()) + 1_100));
      const error = await hbone.open(CLIENT_ID, null, target, '').then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(TunnelError);
      // Said as what it is: the expected identity, expired (IDENTITY_MISMATCH is for a valid SVID of another identity).
      expect((error as TunnelError).code).toBe('SVID_EXPIRED');
      expect((error as TunnelError).flag).toBe('IDENTITY_ERROR');
    } finally {
      await hbone.close();
      server.close();
    }
  }, 10_000);

  it('refuses a server whose chain it does not trust with the verification\'s own code, and warns of it at most 20 times in 10 s', async () => {
    const ours = await createTestCa('cluster.local');
    const foreign = await createTestCa('cluster.local');
    const impostor = await issueTestSvid(foreign, SERVER_ID);
    const client = await issueTestSvid(ours, CLIENT_ID);
    const own = new IdentityContexts();
    own.set(loadSvid(client.certPem, client.keyPem));
    const server = http2.createSecureServer({ cert: impostor.certPem, key: impostor.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const target: Endpoint = { ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` };
    const lines: Array<{ level: number; msg: string; unlogged?: number }> = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
    const hbone = new HbonePool({ contexts: own, bundles: () => ({ get: (trustDomain) => (trustDomain === ours.trustDomain ? ours.bundle : undefined) }), verifier: new PeerVerifier(), logger });
    try {
      const codes = new Set<string>();
      for (let i = 0; i < 25; i++) {
        const error = await hbone.open(CLIENT_ID, null, target, '').then(() => null, (e: unknown) => e);
        expect(error).toBeInstanceOf(TunnelError);
        expect((error as TunnelError).flag).toBe('IDENTITY_ERROR');
        codes.add((error as TunnelError).code);
      }
      expect([...codes]).toHaveLength(1);
      expect([...codes][0]).not.toBe('IDENTITY_MISMATCH');
      expect([...codes][0]).toMatch(/^SVID_|^BUNDLE_|^TRUST_/);
      const refusals = lines.filter((line) => line.msg === 'refusing HBONE peer: its certificate does not verify');
      expect(refusals).toHaveLength(25);
      // pino's levels: 40 warn, 20 debug.
      expect(refusals.filter((line) => line.level === 40)).toHaveLength(20);
      expect(refusals.filter((line) => line.level === 20)).toHaveLength(5);
    } finally {
      await hbone.close();
      server.close();
    }
  }, 20_000);

  it('opens no session for a source identity it holds no certificate for, and says so (SVID_MISSING, not a peer mismatch)', async () => {
    const hbone = new HbonePool({ contexts: new IdentityContexts(), bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), firstCertificateWaitMs: 200 });
    try {
      const startMs = Date.now();
      const error = await openError(hbone);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('SVID_MISSING');
      expect((error as TunnelError).flag).toBe('IDENTITY_ERROR');
      expect((error as TunnelError).message).toContain(`no certificate yet for source identity ${CLIENT_ID} after waiting 200 ms`);
      expect(Date.now() - startMs).toBeGreaterThanOrEqual(190);
    } finally {
      await hbone.close();
    }
  });

  it("waits for the source identity's first certificate while it is on its way (a proxy just restarted) instead of failing the connection", async () => {
    const arriving = new IdentityContexts();
    const hbone = new HbonePool({ contexts: arriving, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger(), firstCertificateWaitMs: 5_000 });
    const mode = peer.mode;
    peer.mode = 'echo';
    try {
      const opening = hbone.open(CLIENT_ID, null, endpoint(), '');
      // Two connections in the same wait: both go once the certificate comes.
      const second = hbone.open(CLIENT_ID, null, endpoint(), '');
      await new Promise((resolve) => setTimeout(resolve, 300));
      arriving.set(loadSvid(clientCert.certPem, clientCert.keyPem));
      const [tunnel, other] = await Promise.all([opening, second]);
      tunnel.write('over the tunnel');
      const [echoed] = (await once(tunnel, 'data')) as [Buffer];
      expect(echoed.toString()).toBe('over the tunnel');
      tunnel.close();
      other.close();
    } finally {
      peer.mode = mode;
      await hbone.close();
    }
  });

  it('opens no session with a source certificate that has expired, and says whose and since when instead of a TLS alert', async () => {
    const ca = await createTestCa('cluster.local');
    const expired = await issueTestSvid(ca, CLIENT_ID, { now: new Date(Date.now() - 2 * 3_600_000), ttlMs: 3_600_000 });
    const own = new IdentityContexts();
    own.set(loadSvid(expired.certPem, expired.keyPem));
    let handshakes = 0;
    const counting = () => handshakes++;
    peer.server.on('secureConnection', counting);
    const hbone = new HbonePool({ contexts: own, bundles: () => bundles, verifier: new PeerVerifier(), logger: silentLogger() });
    try {
      const error = await openError(hbone);
      expect(error).toBeInstanceOf(TunnelError);
      expect((error as TunnelError).code).toBe('SVID_EXPIRED');
      expect((error as TunnelError).flag).toBe('IDENTITY_ERROR');
      expect((error as TunnelError).message).toContain(`the certificate of source identity ${CLIENT_ID} expired at ${new Date(Date.parse(new X509Certificate(expired.certPem).validTo)).toISOString()}`);
      expect(handshakes).toBe(0);
      // The same pool with a valid certificate opens as usual: the refusal is about the certificate, not the peer.
      peer.mode = 'echo';
      await expect(hbone.open(CLIENT_ID, null, endpoint(), '')).rejects.toThrow(/expired at/);
      const valid = await issueTestSvid(ca, CLIENT_ID);
      own.set(loadSvid(valid.certPem, valid.keyPem));
      (await hbone.open(CLIENT_ID, null, endpoint(), '')).close();
      expect(handshakes).toBe(1);
    } finally {
      peer.server.off('secureConnection', counting);
      await hbone.close();
    }
  });

  it("fails with the server's reason, not as an unreachable destination, when the server ends the session as one past its limits (GOAWAY ENHANCE_YOUR_CALM)", async () => {
    const ca = await createTestCa('cluster.local');
    const server = await issueTestSvid(ca, SERVER_ID);
    // An ambit peer holding 256 sessions of this identity from this address already.
    const full = http2.createSecureServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], requestCert: true, rejectUnauthorized: false });
    let sessions = 0;
    full.on('session', (session) => {
      sessions++;
      session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM, 0, Buffer.from('TOO_MANY_SESSIONS'));
      session.destroy();
    });
    full.listen(0, '127.0.0.1');
    await once(full, 'listening');
    const port = (full.address() as AddressInfo).port;
    const hbone = new HbonePool({ contexts, bundles: () => ({ get: (trustDomain) => (trustDomain === ca.trustDomain ? ca.bundle : undefined) }), verifier: new PeerVerifier(), logger: silentLogger() });
    try {
      const error = await hbone.open(CLIENT_ID, null, { ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` }, '').then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(TunnelError);
      expect([(error as TunnelError).code, (error as TunnelError).flag]).toEqual(['HBONE_REFUSED', 'CONNECT']);
      expect((error as TunnelError).message).toContain(`server at 127.0.0.1:${port} ended the HBONE session of source identity ${CLIENT_ID} as one past its limits (GOAWAY ENHANCE_YOUR_CALM): TOO_MANY_SESSIONS (an ambit peer takes at most 256 sessions`);
      // Refused before it took any stream: the CONNECT went once more, on a session of its own, refused the same way.
      expect(sessions).toBe(2);
    } finally {
      await hbone.close();
      full.close();
    }
  });

  it('fails with TLS_FAILURE, saying so, when the handshake fails or the server refuses our certificate after it', async () => {
    const ca = await createTestCa('cluster.local');
    const server = await issueTestSvid(ca, SERVER_ID);
    // A Node TLS server verifying client certificates against another CA: under TLS 1.3 our handshake completes, then it hangs up.
    const strict = tls.createServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], requestCert: true, rejectUnauthorized: true, ca: (await createTestCa('cluster.local')).bundle.roots.map((root) => root.toString()) });
    strict.on('tlsClientError', () => {});
    // An ambit-like server that says why in its GOAWAY.
    const telling = http2.createSecureServer({ cert: server.certPem, key: server.keyPem, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], requestCert: true, rejectUnauthorized: false });
    telling.on('session', (session) => {
      session.goaway(http2.constants.NGHTTP2_INADEQUATE_SECURITY, 0, Buffer.from('SVID_CHAIN_INVALID\n\u0007'));
      session.destroy();
    });
    const plain = net.createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    const closed = net.createServer();
    for (const listener of [strict, telling, plain, closed]) {
      listener.listen(0, '127.0.0.1');
      await once(listener, 'listening');
    }
    const portOf = (listener: net.Server) => (listener.address() as AddressInfo).port;
    const closedPort = portOf(closed);
    closed.close();
    const at = (port: number): Endpoint => ({ ...endpoint(), hbonePort: port, hboneAuthority: `127.0.0.1:${port}` });
    const hbone = new HbonePool({ contexts, bundles: () => ({ get: (trustDomain) => (trustDomain === ca.trustDomain ? ca.bundle : undefined) }), verifier: new PeerVerifier(), logger: silentLogger() });
    const failure = async (port: number) => {
      const error = await hbone.open(CLIENT_ID, null, at(port), '').then(() => null, (e: unknown) => e);
      expect(error, `port ${port}`).toBeInstanceOf(TunnelError);
      return error as TunnelError;
    };
    try {
      for (const [port, message] of [
        [portOf(strict), `server at 127.0.0.1:${portOf(strict)} closed the connection before its HTTP/2 settings: it most likely refused the certificate of source identity ${CLIENT_ID}`],
        [portOf(telling), `server at 127.0.0.1:${portOf(telling)} refused the certificate of source identity ${CLIENT_ID}: SVID_CHAIN_INVALID??`],
        [portOf(plain), `TLS handshake with 127.0.0.1:${portOf(plain)} failed`],
      ] as const) {
        const error = await failure(port);
        expect([error.code, error.flag], error.message).toEqual(['TLS_HANDSHAKE', 'TLS_FAILURE']);
        expect(error.message).toContain(message);
      }
      // Nothing listening: the connection itself failed, not TLS.
      const refused = await failure(closedPort);
      expect([refused.code, refused.flag]).toEqual(['UPSTREAM_CONNECT', 'CONNECT']);
    } finally {
      await hbone.close();
      strict.close();
      telling.close();
      plain.close();
    }
  });
});
