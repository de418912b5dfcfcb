// Stopping the identity agent: a node that goes offline and then exits stops its agent twice.
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

describe('identity agent shutdown', () => {
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
});
