// A proxy that meets an error nothing handles (a defect of ambit, made here by a module loaded into it on a signal):
// one fatal line in its JSON log with the error, its lease on the state directory given up so that its successor
// serves at once (a restarted container, in a PID namespace of its own, would otherwise wait until the lease is 15 s
// old), and exit code 1, as Node's default.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestMesh } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';
import { LOCK_FILE } from '../../src/identity/state-lock.ts';

const P = 77;
const INJECT = fileURLToPath(new URL('../fixtures/scripts/defect-on-signal.mjs', import.meta.url));

let mesh: TestMesh;

beforeAll(async () => {
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a'], config: {} });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
});

describe('a proxy meeting an error nothing handles', () => {
  for (const kind of ['throw', 'reject'] as const) {
    it(`(${kind === 'throw' ? 'an exception from a callback' : 'a promise rejected with no handler'}) logs one fatal line, gives up its state directory's lease and exits 1`, async () => {
      const node = await mesh.startNode('node-a', [], { NODE_OPTIONS: `--import=${INJECT}`, AMBIT_TEST_DEFECT: kind });
      const lock = join(mesh.dir, 'node-a', LOCK_FILE);
      expect(existsSync(lock)).toBe(true);
      const exited = new Promise<number | null>((resolve) => node.proc.child.once('exit', (code) => resolve(code)));
      node.proc.child.kill('SIGUSR2');
      expect(await exited).toBe(1);
      const fatal = node.proc.lines.filter((line) => line.level === 60);
      expect(fatal).toHaveLength(1);
      expect(fatal[0]).toMatchObject({ origin: kind === 'throw' ? 'uncaughtException' : 'unhandledRejection', err: { message: kind === 'throw' ? 'injected defect' : 'injected rejection' } });
      expect(String(fatal[0]?.msg)).toMatch(/^stopping: an error that nothing handled .*this is a defect of ambit/);
      expect(String((fatal[0]?.err as { stack?: string }).stack)).toContain('defect-on-signal.mjs');
      // Node's own report of the error is not written besides.
      expect(node.proc.stderr).not.toContain('injected');
      expect(existsSync(lock)).toBe(false);
    }, 60_000);
  }
});
