// A peer that does not acknowledge our SETTINGS, against the HBONE inbound in-process with real TLS and sockets: the
// stream windows narrow only once a peer acknowledges them (nghttp2 applies a SETTINGS then), so a peer that
// acknowledged the first (4 MiB) and never a narrower window kept 4 MiB on every stream it opened. A session now opens
// at the narrowest window, and one whose peer leaves a SETTINGS unacknowledged is ended with SETTINGS_TIMEOUT at the
// deadline; a peer that acknowledges (Node's own client) opens its many streams as before. The inbound's sessions
// share a stream budget of 8 MiB here (the proxy's is 128 MiB by default): the streams open across them narrow every one.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { once } from 'node:events';
import { Registry } from 'prom-client';
import pino from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { Decision } from '../../src/authz/compile.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import { BundleSet } from '../../src/identity/bundle.ts';
import { certificatesToPem, loadSvid } from '../../src/identity/svid.ts';
import { ProxyMetrics } from '../../src/observe/metrics.ts';
import { HboneInbound } from '../../src/proxy/inbound.ts';
import { H2_SESSION_BUFFER_BYTES, H2_STREAM_WINDOW_BYTES } from '../../src/proxy/settings.ts';
import { StreamBudget } from '../../src/proxy/window.ts';
import { IdentityContexts, PeerVerifier } from '../../src/proxy/tls.ts';
import { createTestCa, issueTestSvid } from '../helpers/certs.ts';
import type { TestSvid } from '../helpers/certs.ts';
import { podYaml, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import { frame, literalHeader } from '../helpers/h2-frames.ts';
import { connectHbone, openTunnel } from '../helpers/hbone.ts';
import type { Tunnel } from '../helpers/hbone.ts';

const ECHO_IP = '127.81.0.10'; // 127.81 is this file's
const HOLD_PORT = 7001; // accepts and never reads: the tunnels stay open
const ECHO_PORT = 7000;
const ECHO_ID = 'spiffe://cluster.local/ns/demo/sa/echo';
const HBONE_PORT = 15008;
const ACK_TIMEOUT_MS = 1_000;
const ALLOW: Decision = Object.freeze({ allow: true, policy: null, rule: null, reason: 'allowed (test)', deferred: false });
const { NGHTTP2_SETTINGS_TIMEOUT } = http2.constants;
const MiB = 1024 * 1024;
/** Every change of the budget's cap, in order, and when (performance.now()). */
const capChanges: Array<{ window: number; open: number; atMs: number }> = [];
const budget = new StreamBudget(8 * MiB, (window, open) => capChanges.push({ window, open, atMs: performance.now() }));

let inbound: HboneInbound;
let registry: Registry;
let client: TestSvid;
let rootsPem: string;
const logLines: Array<Record<string, unknown>> = [];
const servers: net.Server[] = [];
const held: net.Socket[] = [];

beforeAll(async () => {
  const ca = await createTestCa('cluster.local');
  const bundles = new BundleSet([ca.bundle]);
  const server = await issueTestSvid(ca, ECHO_ID);
  client = await issueTestSvid(ca, 'spiffe://cluster.local/ns/demo/sa/tester');
  rootsPem = certificatesToPem(ca.bundle.roots);
  const snapshot = buildSnapshot(parseConfigText(yamlDocuments(
    'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { trustDomain: cluster.local }\n',
    podYaml({ name: 'echo-1', node: 'node-a', serviceAccount: 'echo', ip: ECHO_IP }),
  ), 'workloads.yaml'));
  const contexts = new IdentityContexts();
  contexts.set(loadSvid(server.certPem, server.keyPem));
  const hold = net.createServer({ pauseOnConnect: true }, (socket) => {
    socket.on('error', () => {});
    held.push(socket);
  });
  const echo = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  for (const [listener, port] of [[hold, HOLD_PORT], [echo, ECHO_PORT]] as const) {
    listener.listen(port, ECHO_IP);
    await once(listener, 'listening');
    servers.push(listener);
  }
  registry = new Registry();
  inbound = new HboneInbound({
    nodeName: 'node-a',
    hbonePort: HBONE_PORT,
    snapshot: () => snapshot,
    contexts,
    bundles: () => bundles,
    verifier: new PeerVerifier(),
    logger: pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) }),
    metrics: new ProxyMetrics(registry),
    authorize: () => ALLOW,
    liveMeters: new Set(),
    inspectRequests: null,
    inspector: null,
    settingsAckTimeoutMs: ACK_TIMEOUT_MS,
    streamBudget: budget,
  });
  expect((await inbound.sync(snapshot)).failed).toEqual([]);
});

afterAll(async () => {
  await inbound?.close();
  for (const socket of held) socket.destroy();
  for (const server of servers) server.close();
});

async function refused(reason: string): Promise<number> {
  const values = (await registry.getSingleMetric('ambit_hbone_peers_refused_total')?.get())?.values ?? [];
  return values.filter((v) => v.labels.reason === reason).reduce((sum, v) => sum + v.value, 0);
}

/** A HEADERS frame (END_HEADERS) of a CONNECT, its fields as HPACK literals without indexing. */
function connectHeaders(streamId: number, authority: string): Buffer {
  return frame(1, 0x4, streamId, Buffer.concat([literalHeader(':method', 'CONNECT'), literalHeader(':authority', authority)]));
}

/**
 * An HTTP/2 client written frame by frame (Node's always acknowledges SETTINGS), with a valid client certificate: it
 * acknowledges the server's SETTINGS up to the first for which `last` holds (given its stream window), and none
 * after; it answers PINGs.
 */
class WithholdingPeer {
  readonly socket: tls.TLSSocket;
  /** The server's SETTINGS frames (not acknowledgements) seen, each one's SETTINGS_INITIAL_WINDOW_SIZE if it had one. */
  readonly settings: Array<number | undefined> = [];
  readonly resets = new Map<number, number>();
  readonly answered = new Set<number>();
  goaway: { code: number; atMs: number } | null = null;
  closed = false;
  #buffer = Buffer.alloc(0);
  #nextStreamId = 1;

  readonly last: (window: number | undefined) => boolean;
  #acknowledging = true;

  constructor(last: (window: number | undefined) => boolean) {
    this.last = last;
    this.socket = tls.connect({ host: ECHO_IP, port: HBONE_PORT, cert: client.certPem, key: client.keyPem, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    this.socket.on('error', () => {});
    this.socket.once('close', () => (this.closed = true));
    this.socket.once('secureConnect', () => this.socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0)])));
    this.socket.on('data', (chunk: Buffer) => this.#read(chunk));
  }

  /** Opens `count` CONNECT streams at once; their ids. */
  open(count: number, authority = `${ECHO_IP}:${HOLD_PORT}`): number[] {
    const ids: number[] = [];
    const frames: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      ids.push(this.#nextStreamId);
      frames.push(connectHeaders(this.#nextStreamId, authority));
      this.#nextStreamId += 2;
    }
    this.socket.write(Buffer.concat(frames));
    return ids;
  }

  destroy(): void {
    this.socket.destroy();
  }

  #read(chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    while (this.#buffer.length >= 9) {
      const length = this.#buffer.readUIntBE(0, 3);
      if (this.#buffer.length < 9 + length) return;
      const type = this.#buffer[3] as number;
      const flags = this.#buffer[4] as number;
      const streamId = this.#buffer.readUInt32BE(5) & 0x7fffffff;
      const payload = this.#buffer.subarray(9, 9 + length);
      this.#buffer = this.#buffer.subarray(9 + length);
      if (type === 4 && (flags & 0x1) === 0) {
        let window: number | undefined;
        for (let at = 0; at + 6 <= payload.length; at += 6) if (payload.readUInt16BE(at) === 4) window = payload.readUInt32BE(at + 2);
        this.settings.push(window);
        if (this.#acknowledging) {
          this.socket.write(frame(4, 0x1, 0));
          this.#acknowledging = !this.last(window);
        }
      } else if (type === 6 && (flags & 0x1) === 0) {
        this.socket.write(frame(6, 0x1, 0, payload));
      } else if (type === 1) {
        this.answered.add(streamId);
      } else if (type === 3) {
        this.resets.set(streamId, payload.readUInt32BE(0));
      } else if (type === 7 && this.goaway === null) {
        this.goaway = { code: payload.readUInt32BE(4), atMs: Date.now() };
      }
    }
  }
}

describe('a peer that does not acknowledge our SETTINGS', () => {
  it('has its session ended with SETTINGS_TIMEOUT once a narrower window goes unacknowledged past the deadline', async () => {
    const before = await refused('SETTINGS_TIMEOUT');
    const peer = new WithholdingPeer(() => true);
    try {
      await waitUntil('the first SETTINGS', () => peer.settings.length >= 1, 5_000);
      // The first stream makes the server ask for another stream window, which this peer never acknowledges.
      const sentMs = Date.now();
      peer.open(1);
      await waitUntil('a GOAWAY', () => peer.goaway !== null, ACK_TIMEOUT_MS + 4_000);
      expect(peer.goaway?.code).toBe(NGHTTP2_SETTINGS_TIMEOUT);
      expect((peer.goaway?.atMs ?? 0) - sentMs).toBeLessThan(ACK_TIMEOUT_MS + 2_000);
      await waitUntil('its connection closed', () => peer.closed, 5_000);
      expect(await refused('SETTINGS_TIMEOUT')).toBe(before + 1);
      expect(logLines.find((line) => line.code === 'SETTINGS_TIMEOUT')).toMatchObject({ level: 40, presented: 'spiffe://cluster.local/ns/demo/sa/tester' });
      await waitUntil('its tunnel closed', () => inbound.liveTunnels === 0, 5_000);
    } finally {
      peer.destroy();
    }
  });

  it('holds no more than the session budget on the many streams it opens having acknowledged only the first SETTINGS', async () => {
    // The reviewer's peer: acknowledges the first SETTINGS, then opens 64 tunnels at once and fills every stream window
    // it was given; the narrower windows asked for as they open never apply. The first SETTINGS said 4 MiB: 256 MiB.
    const peer = new WithholdingPeer(() => true);
    try {
      await waitUntil('the first SETTINGS', () => peer.settings.length >= 1, 5_000);
      const acknowledged = peer.settings[0] ?? 65_535;
      const ids = peer.open(64);
      await waitUntil('every stream answered', () => ids.every((id) => peer.answered.has(id) || peer.resets.has(id)), 5_000);
      expect(inbound.liveTunnels).toBe(64);
      // What the 64 streams may make the proxy hold, at the only window the peer acknowledged, is within the budget.
      expect(inbound.liveTunnels * acknowledged).toBeLessThanOrEqual(H2_SESSION_BUFFER_BYTES);
    } finally {
      peer.destroy();
    }
    await waitUntil('its tunnels closed', () => inbound.liveTunnels === 0, 5_000);
  });
});

/** A session of Node's own client (which acknowledges every SETTINGS), the inbound verified as the echo workload. */
const nodeSession = (): Promise<http2.ClientHttp2Session> => connectHbone(ECHO_IP, HBONE_PORT, client, rootsPem, ECHO_ID);

/** A CONNECT on `session` to the workload's `port`. */
const connect = (session: http2.ClientHttp2Session, port = ECHO_PORT): Promise<Tunnel> => openTunnel(session, `${ECHO_IP}:${port}`);

/** The stream window the inbound last asked `session` for, once the session has acknowledged it. */
const windowOf = (session: http2.ClientHttp2Session): number | undefined => session.remoteSettings.initialWindowSize;

describe('a peer that acknowledges our SETTINGS (Node\'s own client)', () => {
  it('opens many tunnels at once on one session, every one answered 200 and carrying bytes, past the deadline', async () => {
    const before = await refused('SETTINGS_TIMEOUT');
    const session = await nodeSession();
    try {
      const open = () => connect(session);
      const tunnels = await Promise.all(Array.from({ length: 150 }, open));
      expect(tunnels.map((t) => t.status)).toEqual(Array(150).fill(200));
      // 150 open: the narrowed window, acknowledged.
      await waitUntil('the narrowed window', () => (session.remoteSettings.initialWindowSize ?? 0) <= 256 * 1024, 5_000);
      // Past the deadline, still open, and each tunnel carries bytes.
      await new Promise((resolve) => setTimeout(resolve, ACK_TIMEOUT_MS + 500));
      expect(session.destroyed).toBe(false);
      const echoed = await Promise.all(tunnels.map(async ({ stream }, i) => {
        stream.write(`tunnel ${i}`);
        const [data] = (await once(stream, 'data')) as [Buffer];
        return data.toString();
      }));
      expect(echoed).toEqual(tunnels.map((_, i) => `tunnel ${i}`));
      for (const { stream } of tunnels) stream.close();
      // All closed: a later tunnel gets the whole window again, and that too is acknowledged.
      await waitUntil('the window widened again', () => session.remoteSettings.initialWindowSize === H2_STREAM_WINDOW_BYTES, 5_000);
      expect((await open()).status).toBe(200);
      expect(await refused('SETTINGS_TIMEOUT')).toBe(before);
    } finally {
      session.destroy();
    }
  });
});

describe('the stream windows of every session of one proxy', () => {
  // Each starts with the cap whole and nothing open: the tests before may have left streams closing and a widening due.
  beforeEach(async () => {
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 10_000);
    await waitUntil('the whole window', () => budget.window === H2_STREAM_WINDOW_BYTES, 10_000);
  });

  it('narrows a session carrying one tunnel while another session opens many, so that together they stay within the budget, and widens it again as they close', async () => {
    const changes = capChanges.length;
    const quiet = await nodeSession();
    const busy = await nodeSession();
    try {
      const one = await connect(quiet);
      expect(one.status).toBe(200);
      await waitUntil('the one tunnel given the whole window', () => windowOf(quiet) === H2_STREAM_WINDOW_BYTES, 5_000);
      const many = await Promise.all(Array.from({ length: 40 }, () => connect(busy, HOLD_PORT)));
      expect(many.map((t) => t.status)).toEqual(Array(40).fill(200));
      // 41 open across the two sessions (42, one stream ahead): 8 MiB holds them at 128 KiB each, where the quiet
      // session's own budget would have kept the whole 4 MiB for its one tunnel.
      await waitUntil('the quiet session narrowed', () => windowOf(quiet) === 128 * 1024, 5_000);
      expect(windowOf(busy)).toBe(128 * 1024);
      expect(capChanges.slice(changes).map((c) => c.window)).toEqual([2 * MiB, MiB, 512 * 1024, 256 * 1024, 128 * 1024]);
      // Narrowed, it still carries its bytes.
      one.stream.write('still here');
      expect(((await once(one.stream, 'data')) as [Buffer])[0].toString()).toBe('still here');
      for (const { stream } of many) stream.close();
      // One tunnel left: the cap widens as far as twice the streams open fit (3 × 2 MiB within 8 MiB).
      await waitUntil('the quiet session widened again', () => windowOf(quiet) === 2 * MiB, 5_000);
      expect(budget.open).toBe(1);
    } finally {
      quiet.destroy();
      busy.destroy();
    }
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 5_000);
    await waitUntil('the whole window again', () => budget.window === H2_STREAM_WINDOW_BYTES, 5_000);
  });

  it('keeps a session whose burst of tunnels crosses more narrowings than a peer may leave unacknowledged at once, and asks for the narrowest once it acknowledges', async () => {
    const before = await refused('SETTINGS_TIMEOUT');
    const session = await nodeSession();
    try {
      const first = await connect(session);
      await waitUntil('the whole window', () => windowOf(session) === H2_STREAM_WINDOW_BYTES, 5_000);
      // 199 more at once, read by the inbound in one go: 4 MiB down to 32 KiB (200 open, 8 MiB) is seven SETTINGS, one
      // more than H2_MAX_UNACKNOWLEDGED_SETTINGS; the last waits for an acknowledgement instead of ending the session.
      const burst = await Promise.all(Array.from({ length: 199 }, () => connect(session, HOLD_PORT)));
      expect(burst.map((t) => t.status)).toEqual(Array(199).fill(200));
      await waitUntil('the narrowest window', () => windowOf(session) === 32 * 1024, 5_000);
      expect(session.destroyed).toBe(false);
      first.stream.write('after the burst');
      expect(((await once(first.stream, 'data')) as [Buffer])[0].toString()).toBe('after the burst');
      expect(await refused('SETTINGS_TIMEOUT')).toBe(before);
    } finally {
      session.destroy();
    }
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 5_000);
  });

  it('narrows a session whose peer has said GOAWAY while its tunnels go on, as any other', async () => {
    const leaving = await nodeSession();
    const busy = await nodeSession();
    try {
      const one = await connect(leaving, HOLD_PORT);
      await waitUntil('the whole window', () => windowOf(leaving) === H2_STREAM_WINDOW_BYTES, 5_000);
      // GOAWAY NO_ERROR: Node's server side closes its session, whose open tunnel goes on.
      leaving.close();
      await new Promise((resolve) => setTimeout(resolve, 200));
      const many = await Promise.all(Array.from({ length: 40 }, () => connect(busy, HOLD_PORT)));
      expect(many.every((t) => t.status === 200)).toBe(true);
      await waitUntil('the leaving session narrowed', () => windowOf(leaving) === 128 * 1024, 5_000);
      expect(one.stream.closed).toBe(false);
    } finally {
      leaving.destroy();
      busy.destroy();
    }
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 5_000);
  });

  it('asks a session that starts while the proxy is past its budget for the narrow window before any tunnel', async () => {
    const busy = await nodeSession();
    try {
      const many = await Promise.all(Array.from({ length: 199 }, () => connect(busy, HOLD_PORT)));
      expect(many.every((t) => t.status === 200)).toBe(true);
      await waitUntil('the cap narrowed', () => budget.window === 32 * 1024, 5_000);
      const late = await nodeSession();
      try {
        // Its first SETTINGS says the opening 128 KiB; the second, before it opens anything, the cap.
        await waitUntil('the late session narrowed', () => windowOf(late) === 32 * 1024, 5_000);
      } finally {
        late.destroy();
      }
    } finally {
      busy.destroy();
    }
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 5_000);
  });

  it("widens the cap at most once a second, so that a peer moving it back and forth sends other peers' sessions a few SETTINGS, not one each time", async () => {
    const others = await Promise.all(Array.from({ length: 10 }, () => nodeSession()));
    const hostile = await nodeSession();
    try {
      // Each of the others has carried a tunnel (answered, its window the whole 4 MiB) and is idle.
      for (const session of others) (await connect(session)).stream.close();
      await waitUntil('the others idle', () => budget.open === 0, 5_000);
      const seen = others.map(() => 0);
      others.forEach((session, i) => session.on('remoteSettings', () => seen[i]!++));
      const changes = capChanges.length;
      // Three open take the 8 MiB cap to 2 MiB (one stream ahead); none open would widen it again.
      for (let cycle = 0; cycle < 40; cycle++) {
        const three = await Promise.all(Array.from({ length: 3 }, () => connect(hostile, HOLD_PORT)));
        for (const { stream } of three) stream.close();
        await waitUntil('the three closed', () => budget.open === 0, 5_000);
      }
      await waitUntil('the whole window again', () => budget.window === H2_STREAM_WINDOW_BYTES, 5_000);
      const moves = capChanges.slice(changes);
      const widenings = moves.filter((move) => move.window === H2_STREAM_WINDOW_BYTES).map((move) => move.atMs);
      // Each of the 40 cycles had narrowed and widened the cap, and every session with it.
      expect(moves.length).toBeLessThan(40);
      for (let i = 1; i < widenings.length; i++) expect(widenings[i]! - widenings[i - 1]!).toBeGreaterThanOrEqual(999);
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const count of seen) expect(count).toBeLessThanOrEqual(moves.length);
      expect(Math.max(...seen)).toBeGreaterThan(0);
    } finally {
      hostile.destroy();
      for (const session of others) session.destroy();
    }
    await waitUntil('every stream taken off the budget', () => budget.open === 0, 5_000);
  });
});
