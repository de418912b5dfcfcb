// An in-process CA (the real CaServer on loopback) for tests of the agent and of TLS rotation.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initCa } from '../../src/identity/ca/store.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { CaServer } from '../../src/identity/ca/server.ts';
import { silentLogger } from '../../src/observe/log.ts';
import type { Logger } from '../../src/observe/log.ts';

export interface InProcessCa {
  readonly server: CaServer;
  /** The CA's state directory. */
  readonly dir: string;
  /** A single-use join token for `node`. */
  joinToken(node: string): Promise<string>;
  close(): Promise<void>;
}

/** A CA for `trustDomain` whose registry places `identitiesByNode[node]` on each node; `audit` sees its audit records. */
export async function startInProcessCa(trustDomain: string, identitiesByNode: Record<string, string[]>, audit: (record: Record<string, unknown>) => void | Promise<void> = () => {}, logger: Logger = silentLogger()): Promise<InProcessCa> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-ca-'));
  const caDir = join(dir, 'ca');
  await initCa(caDir, trustDomain);
  const server = await CaServer.start({
    dir: caDir,
    registry: () => ({ identitiesOnNode: (node) => new Set(identitiesByNode[node] ?? []) }),
    svidTtlMs: 60_000,
    logger,
    audit,
  });
  let closed = false;
  return {
    server,
    dir: caDir,
    joinToken: async (node) => (await createJoinToken(caDir, node, 60_000)).token,
    async close() {
      if (closed) return;
      closed = true;
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
