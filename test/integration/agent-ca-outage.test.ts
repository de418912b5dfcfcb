// An agent whose identities lost their certificates to a CA outage: when the CA answers again they are asked for at
// once, not at the end of a backoff of up to 150 s (a node with no valid certificate carries no traffic meanwhile).
// Real CA over HTTPS, real agent, a TCP relay in between that can refuse connections (the outage).
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { createLogger, silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/demo/sa/web`;
const DB = `spiffe://${TD}/ns/demo/sa/db`;

let ca: InProcessCa;
let down = false;
const open = new Set<net.Socket>();
/** The CA out of reach: open connections cut, new ones reset as they arrive. */
function goDown(): void {
  down = true;
  for (const socket of open) socket.resetAndDestroy();
}
let relay: net.Server;
let relayUrl = '';
const agents: IdentityAgent[] = [];

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [WEB] });
  const target = new URL(ca.server.url);
  relay = net.createServer((client) => {
    client.on('error', () => {});
    // The outage: every connection reset as it arrives.
    if (down) return void client.resetAndDestroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    upstream.on('error', () => client.destroy());
    open.add(client);
    client.once('close', () => open.delete(client));
    client.pipe(upstream).pipe(client);
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  relayUrl = `https://127.0.0.1:${(relay.address() as net.AddressInfo).port}`;
});

afterAll(async () => {
  await Promise.all(agents.map((agent) => agent.stop()));
  relay?.close();
  await ca?.close();
});

/** An agent for node-a through the relay; its first retry a minute away (only the probe brings it back sooner). */
async function agentThroughRelay(options: { caProbeMs: number; ttlSeconds?: number }): Promise<IdentityAgent> {
  const agent = new IdentityAgent({
    caUrl: relayUrl,
    trustDomain: TD,
    nodeName: 'node-a',
    bootstrapBundle: ca.server.ownBundle(),
    joinToken: await ca.joinToken('node-a'),
    logger: process.env.DBG ? createLogger({ name: 'agent', level: 'debug' }) : silentLogger(),
    backoffInitialMs: 60_000,
    random: () => 0.5,
    ...options,
  });
  agents.push(agent);
  return agent;
}

describe('an identity without a certificate for want of the CA', () => {
  it('is asked for as soon as a probe finds the CA back, long before its backoff ends', async () => {
    const agent = await agentThroughRelay({ caProbeMs: 500 });
    await agent.start();
    goDown();
    const failed = new Promise<void>((resolve) => agent.once('failed', () => resolve()));
    const issued = agent.ensure(WEB);
    await failed;
    expect(agent.current(WEB)).toBeUndefined();
    const back = Date.now();
    down = false;
    const svid = await issued;
    expect(svid.id.id).toBe(WEB);
    // The probe's half second and the spread of one second, not the minute of the backoff.
    expect(Date.now() - back).toBeLessThan(5_000);
  });

  it('is asked for as soon as the CA is back when its certificate expired during the outage, its retries still backing off', async () => {
    down = false;
    // Certificates of 4 s: renewed at half their life, then a last try just before they end, while still valid.
    const agent = await agentThroughRelay({ caProbeMs: 300, ttlSeconds: 4 });
    await agent.start();
    const first = await agent.ensure(WEB);
    goDown();
    // Past its end: it expired during the outage.
    await expect.poll(() => first.notAfter.getTime() < Date.now(), { timeout: 10_000, interval: 100 }).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const renewed = new Promise<void>((resolve) => agent.on('rotated', (svid: { id: { id: string } }) => svid.id.id === WEB && resolve()));
    const back = Date.now();
    down = false;
    await renewed;
    expect(Date.now() - back).toBeLessThan(5_000);
  });

  it('is not asked for again early when the CA refused it (it answers, and a refusal keeps its backoff)', async () => {
    const agent = await agentThroughRelay({ caProbeMs: 200 });
    await agent.start();
    let failures = 0;
    agent.on('failed', ({ spiffeId }: { spiffeId: string }) => {
      if (spiffeId === DB) failures++;
    });
    // DB is placed on no node: refused (CA_NOT_AUTHORIZED), with the CA reachable throughout.
    void agent.ensure(DB).catch(() => {});
    await expect.poll(() => failures, { timeout: 5_000 }).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(failures).toBe(1);
  });
});
