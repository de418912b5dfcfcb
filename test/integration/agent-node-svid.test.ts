// The agent's renewed node SVID reaches the CA only once it is stored: its first use makes it the node's current
// certificate at the CA and retires the previous one, so a node that could not store it (a full disk) and then
// restarted with the previous one on disk would be refused for good. Real CA over HTTPS, real agent, real files.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityAgent } from '../../src/identity/agent.ts';
import type { Svid } from '../../src/identity/svid.ts';
import { normalizeSerial } from '../../src/identity/ca/nodes.ts';
import { silentLogger } from '../../src/observe/log.ts';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

const TD = 'cluster.local';
const NODE_ID = `spiffe://${TD}/ambit/node/node-a`;
const WEB = `spiffe://${TD}/ns/default/sa/web`;
const API = `spiffe://${TD}/ns/default/sa/api`;

let ca: InProcessCa;
let stateDir: string;

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [WEB, API] });
  // Node SVIDs of 8 s (attestation issues the CA's lifetime), renewed at about half their life.
  ca.server.setSvidTtl(8_000);
  stateDir = await mkdtemp(join(tmpdir(), 'ambit-agent-'));
});

afterAll(async () => {
  await ca?.close();
  await rm(stateDir, { recursive: true, force: true });
});

async function currentSerialAtCa(): Promise<string> {
  const record = JSON.parse(await readFile(join(ca.dir, 'nodes', 'node-a.json'), 'utf8')) as { current: string };
  return normalizeSerial(record.current);
}

describe("the agent's node SVID", () => {
  it('is never presented to the CA after a renewal it could not store, not even on a new connection', async () => {
    const agent = new IdentityAgent({
      caUrl: ca.server.url,
      trustDomain: TD,
      nodeName: 'node-a',
      bootstrapBundle: ca.server.ownBundle(),
      joinToken: await ca.joinToken('node-a'),
      stateDir,
      ttlSeconds: 8,
      logger: silentLogger(),
    });
    try {
      await agent.start();
      const first = agent.nodeSvid() as Svid;
      const firstSerial = normalizeSerial(first.chain[0]?.serialNumber ?? '');
      expect(await currentSerialAtCa()).toBe(firstSerial);
      // The next store fails: its rename meets a directory that is not empty (once the attestation's own store is done).
      const file = join(stateDir, 'node-svid.pem');
      for (let tries = 0; !(await readFile(file, 'utf8').catch(() => '')).includes(first.certPem.trim().split('\n')[1] ?? '-'); tries++) {
        if (tries > 100) throw new Error('the attested node SVID was never stored');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await rm(file, { force: true });
      await mkdir(file);
      await writeFile(join(file, 'keep'), '');
      const renewed = await new Promise<Svid>((resolve) => {
        const onRotated = (svid: Svid) => {
          if (svid.id.id !== NODE_ID || svid === first) return;
          agent.off('rotated', onRotated);
          resolve(svid);
        };
        agent.on('rotated', onRotated);
      });
      expect(normalizeSerial(renewed.chain[0]?.serialNumber ?? '')).not.toBe(firstSerial);
      // Two signing requests at once: at least one of them on a new connection to the CA.
      await Promise.all([agent.ensure(WEB), agent.ensure(API)]);
      expect(await currentSerialAtCa(), 'the CA still has the stored certificate as current').toBe(firstSerial);
    } finally {
      await agent.stop();
    }
  }, 20_000);
});

describe('a start without a join token', () => {
  it('says which file held no usable node SVID, and why, without quoting it (it holds the private key)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-agent-truncated-'));
    try {
      const file = join(dir, 'node-svid.pem');
      await writeFile(file, '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n', { mode: 0o600 });
      const agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), stateDir: dir, logger: silentLogger() });
      const failed = await agent.start().then(() => null, (error: unknown) => error as Error & { code: string });
      await agent.stop();
      expect(failed?.code).toBe('JOIN_TOKEN_INVALID');
      expect(failed?.message).toContain(`(${file} is unreadable (`);
      expect(failed?.message).not.toContain('MIGHAgEA');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
