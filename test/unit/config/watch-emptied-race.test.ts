// `kubectl get ... -o yaml > policies.yaml`: the shell empties the file, and kubectl may write it again while the
// reload that read it empty is still parsing the other files. Whether the file was emptied is judged on the bytes
// that load read, so its objects stay in force; judged on the file afterwards, the change dropped them (its DENY
// policies) until the next reload.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type * as Loader from '../../../src/config/loader.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { watchConfigDir } from '../../../src/config/watch.ts';
import type { ConfigWatcher } from '../../../src/config/watch.ts';
import type { AmbitError } from '../../../src/errors.ts';
import { configDir, meshYaml, podYaml, removeConfigDirs, writeFiles } from './temp-config.ts';

/** Runs after each load of the directory, before the watcher looks at what it read. */
const afterLoad: { hook: (() => Promise<void>) | null } = { hook: null };

vi.mock('../../../src/config/loader.ts', async (importOriginal) => {
  const real = await importOriginal<typeof Loader>();
  return {
    ...real,
    loadConfigDir: async (...args: Parameters<typeof real.loadConfigDir>) => {
      const snapshot = await real.loadConfigDir(...args);
      await afterLoad.hook?.();
      return snapshot;
    },
  };
});

let watcher: ConfigWatcher | undefined;
afterEach(async () => {
  afterLoad.hook = null;
  await watcher?.close();
  await removeConfigDirs();
});

const pod = (ip: string) => podYaml({ name: 'web', ip, node: 'node-a' });

describe('a file emptied in place and written again while the reload that read it empty runs', () => {
  it('holds its objects: no change drops them (the load that read it empty is read again, or held as CONFIG_FILE_EMPTIED)', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod('10.0.0.1') });
    const changes: ConfigSnapshot[] = [];
    const errors: AmbitError[] = [];
    watcher = await watchConfigDir(dir, { onChange: (next) => void changes.push(next), onError: (error) => void errors.push(error), debounceMs: 30, requireMesh: true });
    // The writer finishes right after the load read the empty file: the same content again.
    afterLoad.hook = async () => {
      afterLoad.hook = null;
      await writeFile(join(dir, 'pod.yaml'), pod('10.0.0.1'));
    };
    await writeFiles(dir, { 'pod.yaml': '' });
    await expect.poll(() => afterLoad.hook, { timeout: 5_000 }).toBeNull();
    await new Promise((resolve) => setTimeout(resolve, 1_500)); // every reload and poll that follows
    expect(changes.filter((next) => next.workloadsOnNode('node-a').length === 0)).toEqual([]);
    expect(errors.map((error) => error.code).filter((code) => code !== 'CONFIG_FILE_EMPTIED')).toEqual([]);
    expect(watcher.current().workloadsOnNode('node-a').map((workload) => workload.name)).toEqual(['web']);
  });
});
