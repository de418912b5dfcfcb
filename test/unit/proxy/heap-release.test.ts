// The proxy's one collection after a configuration step (src/proxy/heap.ts): once per burst, never without --expose-gc.
import { describe, expect, it } from 'vitest';
import { HeapRelease } from '../../../src/proxy/heap.ts';
import type { CollectGarbage } from '../../../src/proxy/heap.ts';

const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('heap release after configuration steps', () => {
  it('collects once, a delay after the last of a burst of steps, releasing memory (last-resort, synchronous)', async () => {
    const calls: Parameters<CollectGarbage>[0][] = [];
    const release = new HeapRelease((options) => calls.push(options), 40);
    release.schedule();
    await wait(20);
    release.schedule();
    await wait(20);
    release.schedule();
    expect(calls).toHaveLength(0);
    await wait(80);
    expect(calls).toEqual([{ type: 'major', execution: 'sync', flavor: 'last-resort' }]);
    release.schedule();
    await wait(80);
    expect(calls).toHaveLength(2);
  });

  it('does nothing when the process was not started with --expose-gc, and nothing after stop', async () => {
    expect(() => new HeapRelease(undefined, 1).schedule()).not.toThrow();
    const calls: unknown[] = [];
    const release = new HeapRelease((options) => calls.push(options), 20);
    release.schedule();
    release.stop();
    await wait(60);
    expect(calls).toHaveLength(0);
  });
});
