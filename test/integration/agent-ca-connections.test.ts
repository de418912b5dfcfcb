// How many connections a node's agent holds to its CA. A node starting with a hundred workloads asks for a hundred
// certificates at once; each connection is a TLS handshake at the CA and about 150 KiB in the proxy while it lasts.
// Real CA over HTTPS, real agent, a TCP relay in between that counts the connections.
import * as net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const WORKLOADS = Array.from({ length: 40 }, (_, i) => `spiffe://${TD}/ns/demo/sa/w${i}`);

interface Relay {
  readonly url: string;
  open: number;
  maxOpen: number;
  accepted: number;
  /** From now on: connections are accepted and never answered (a CA that hangs), the open ones cut. */
  hang(): void;
  close(): Promise<void>;
}

/** A TCP relay to the CA: the agent checks the CA's identity, not its address, so it is transparent. */
async function relayTo(target: URL): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  let hanging = false;
  const relay = {
    url: '',
    open: 0,
    maxOpen: 0,
    accepted: 0,
    hang: () => {
      hanging = true;
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {},
  };
  const server = net.createServer((client) => {
    relay.accepted++;
    if (hanging) {
      sockets.add(client);
      client.on('error', () => {});
      return;
    }
    relay.open++;
    relay.maxOpen = Math.max(relay.maxOpen, relay.open);
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.once('close', () => {
      relay.open--;
      end();
    });
    upstream.once('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  relay.url = `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  relay.close = async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  return relay;
}

describe("a node agent's connections to its CA", () => {
  let ca: InProcessCa;
  let relay: Relay;
  let agent: IdentityAgent;
  let stateDir: string;

  beforeAll(async () => {
    ca = await startInProcessCa(TD, { 'node-a': WORKLOADS });
    relay = await relayTo(new URL(ca.server.url));
    stateDir = await mkdtemp(join(tmpdir(), 'ambit-ca-connections-'));
    agent = new IdentityAgent({ caUrl: relay.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), joinToken: await ca.joinToken('node-a'), stateDir, logger: silentLogger() });
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    await relay?.close();
    await ca?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('carries forty certificate requests made at once over at most four connections', async () => {
    const svids = await Promise.all(WORKLOADS.map((id) => agent.ensure(id)));
    expect(svids.map((svid) => svid.id.id)).toEqual(WORKLOADS);
    expect(relay.maxOpen).toBeGreaterThan(0);
    expect(relay.maxOpen).toBeLessThanOrEqual(4);
  });

  it('closes idle connections after 5 s although the CA offers to keep them 30 s (Keep-Alive: timeout=30)', async () => {
    expect(relay.open).toBeGreaterThan(0);
    const deadline = Date.now() + 8_000;
    while (relay.open > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
    expect(relay.open).toBe(0);
  }, 15_000);
});

describe('a node agent whose CA stops answering', () => {
  let ca: InProcessCa;
  let relay: Relay;
  let stateDir: string;

  beforeAll(async () => {
    ca = await startInProcessCa(TD, { 'node-a': WORKLOADS });
    relay = await relayTo(new URL(ca.server.url));
    stateDir = await mkdtemp(join(tmpdir(), 'ambit-ca-hang-'));
  });

  afterAll(async () => {
    await relay?.close();
    await ca?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('fails a request within its deadline, time queued for a connection included, and stops at once with forty requests waiting', async () => {
    const agent = new IdentityAgent({ caUrl: relay.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), joinToken: await ca.joinToken('node-a'), stateDir, logger: silentLogger(), requestDeadlineMs: 1_500 });
    let stopMs: number | undefined;
    let waiting: Promise<Error | null> | undefined;
    try {
      await agent.start();
      relay.hang();
      const started = Date.now();
      const failed = await agent.ensure(WORKLOADS[0] as string, { failFast: true }).then(() => null, (error: unknown) => error as Error);
      expect(failed?.message).toMatch(/CA at https:\/\/127\.0\.0\.1:\d+: no answer within 1\.5 s \(waiting for one of 4 connections included\)/);
      // The connect timeout alone (10 s) would have ended it much later.
      expect(Date.now() - started).toBeLessThan(5_000);
      waiting = agent.ensure(WORKLOADS[1] as string, { failFast: true }).then(() => null, (error: unknown) => error as Error);
      for (const id of WORKLOADS.slice(2)) void agent.ensure(id);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const stopping = Date.now();
      await agent.stop();
      stopMs = Date.now() - stopping;
    } finally {
      await agent.stop();
    }
    expect(stopMs).toBeLessThan(1_000);
    // One who asked to hear of a failure hears of the stop, rather than waiting for ever.
    expect((await waiting)?.message).toMatch(/the agent stopped/);
  }, 20_000);
});
