// Stopping the identity agent: a node that goes offline and then exits stops its agent twice.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcessCa } from '../../helpers/ca.ts';
import type { InProcessCa } from '../../helpers/ca.ts';
import { IdentityAgent } from '../../../src/identity/agent.ts';
import { silentLogger } from '../../../src/observe/log.ts';

const TD = 'cluster.local';
let ca: InProcessCa;

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [] });
});

afterAll(async () => {
  await ca?.close();
});

describe('identity agent shutdown and logs', () => {
  it('can be stopped twice, at once or one after the other', async () => {
    const agent = new IdentityAgent({
      caUrl: ca.server.url,
      trustDomain: TD,
      nodeName: 'node-a',
      bootstrapBundle: ca.server.ownBundle(),
      joinToken: await ca.joinToken('node-a'),
      logger: silentLogger(),
    });
    await agent.start();
    await expect(Promise.all([agent.stop(), agent.stop()])).resolves.toEqual([undefined, undefined]);
    await expect(agent.stop()).resolves.toBeUndefined();
  });

  it("names the node once in its log lines, whether or not its caller's logger names it already", async () => {
    for (const parent of [{ node: 'node-a' }, {}]) {
      const lines: string[] = [];
      const sink = new Writable({ write: (chunk: Buffer, _encoding, done) => void (lines.push(chunk.toString()), done()) });
      const agent = new IdentityAgent({
        caUrl: ca.server.url,
        trustDomain: TD,
        nodeName: 'node-a',
        bootstrapBundle: ca.server.ownBundle(),
        joinToken: await ca.joinToken('node-a'),
        logger: pino({ level: 'info' }, sink).child(parent),
      });
      await agent.start();
      await agent.stop();
      expect(lines.length).toBeGreaterThan(0);
      for (const line of lines) expect(line.match(/"node":/g), line).toHaveLength(1);
    }
  });
});
