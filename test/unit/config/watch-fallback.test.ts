// fs.watch is mocked in this file only: it either throws (no recursive watch on this platform) or fails later.
import { EventEmitter } from 'node:events';
import type * as fs from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { watchConfigDir } from '../../../src/config/watch.ts';
import type { ConfigWatcher, WatchErrorKind } from '../../../src/config/watch.ts';
import { configDir, meshYaml, podYaml, removeConfigDirs, replaceFiles } from './temp-config.ts';

const fsWatch = vi.hoisted(() => ({ behaviour: 'throw' as 'throw' | 'fail-later', emitter: undefined as (EventEmitter & { close(): void }) | undefined }));

vi.mock('node:fs', async (importOriginal) => {
  const original = await importOriginal<typeof fs>();
  return {
    ...original,
    watch: () => {
      if (fsWatch.behaviour === 'throw') throw Object.assign(new Error('recursive watch unavailable'), { code: 'ERR_FEATURE_UNAVAILABLE_ON_PLATFORM' });
      const emitter = Object.assign(new EventEmitter(), { close: () => undefined });
      fsWatch.emitter = emitter;
      return emitter;
    },
  };
});

const watchers: ConfigWatcher[] = [];
afterEach(async () => {
  await Promise.all(watchers.splice(0).map((watcher) => watcher.close()));
  await removeConfigDirs();
});

function nextChange(changes: ConfigSnapshot[], count: number): Promise<void> {
  return vi.waitFor(() => expect(changes.length).toBeGreaterThanOrEqual(count), { timeout: 5000, interval: 20 });
}

const pod = (ip: string) => podYaml({ name: 'web', node: 'node-a', ip });

describe('watchConfigDir without a working fs.watch', () => {
  it('polls file modification times when fs.watch throws', async () => {
    fsWatch.behaviour = 'throw';
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod('10.0.0.1') });
    const changes: ConfigSnapshot[] = [];
    const watcher = await watchConfigDir(dir, { onChange: (next) => changes.push(next), onError: () => undefined, debounceMs: 10, pollIntervalMs: 40 });
    watchers.push(watcher);
    await replaceFiles(dir, { 'pod.yaml': pod('10.0.0.2') });
    await nextChange(changes, 1);
    expect(watcher.current().workloadByIp('10.0.0.2')?.name).toBe('web');
  });

  it('reports a watcher that fails later and carries on by polling', async () => {
    fsWatch.behaviour = 'fail-later';
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': pod('10.0.0.1') });
    const changes: ConfigSnapshot[] = [];
    const errors: Array<[string, WatchErrorKind]> = [];
    const watcher = await watchConfigDir(dir, { onChange: (next) => changes.push(next), onError: (error, kind) => errors.push([error.code, kind]), debounceMs: 10, pollIntervalMs: 40 });
    watchers.push(watcher);
    fsWatch.emitter?.emit('error', new Error('inotify watch limit reached'));
    // Not a rejected change: nothing was refused, the directory is polled instead.
    expect(errors).toEqual([['FILE_READ', 'watch']]);
    await replaceFiles(dir, { 'pod.yaml': pod('10.0.0.3') });
    await nextChange(changes, 1);
    expect(watcher.current().workloadByIp('10.0.0.3')?.name).toBe('web');
  });
});
