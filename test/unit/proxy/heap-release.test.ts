// The proxy's one collection after a configuration step (src/proxy/heap.ts): once per burst, only once the event loop
// is quiet, never without --expose-gc.
import { describe, expect, it } from 'vitest';
import { HeapRelease, QUIET_LOOP_UTILIZATION } from '../../../src/proxy/heap.ts';
import type { CollectGarbage, LoopUtilization } from '../../../src/proxy/heap.ts';

const wait = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A loop whose busy share over any interval is what the test sets. */
function loop(share: { busy: number }): LoopUtilization {
  return (since) => ({ idle: 0, active: 0, utilization: since === undefined ? 0 : share.busy });
}

/** Keeps the event loop busy for `ms` (one task). */
function spin(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // busy on purpose: the loop's utilization is what is under test
  }
}

describe('heap release after configuration steps', () => {
  it('collects once, a delay after the last of a burst of steps, releasing memory (last-resort, synchronous)', async () => {
    const calls: Parameters<CollectGarbage>[0][] = [];
    const release = new HeapRelease((options) => calls.push(options), 40, loop({ busy: 0 }));
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

  it('does not stop a proxy carrying traffic: it waits for an interval in which the loop was quiet, then collects once', async () => {
    const share = { busy: 0.12 };
    const calls: unknown[] = [];
    const release = new HeapRelease((options) => calls.push(options), 30, loop(share));
    release.schedule();
    await wait(150);
    expect(calls).toHaveLength(0);
    // Just over the bound is still busy; at it, quiet.
    share.busy = QUIET_LOOP_UTILIZATION + 0.001;
    await wait(90);
    expect(calls).toHaveLength(0);
    share.busy = QUIET_LOOP_UTILIZATION;
    for (let i = 0; i < 60 && calls.length === 0; i++) await wait(30);
    expect(calls).toHaveLength(1);
    await wait(90);
    expect(calls).toHaveLength(1);
    release.stop();
  });

  it("reads Node's own event-loop utilization: a busy loop defers the collection, an idle one gets it", async () => {
    const calls: unknown[] = [];
    // 400 ms: an interval may hold 4 ms of the worker's own wake-ups and still be quiet.
    const release = new HeapRelease((options) => calls.push(options), 400);
    release.schedule();
    // Busy past the delay: the timer runs late, at the end of a fully busy interval, and arms another.
    spin(450);
    await wait(10);
    expect(calls).toHaveLength(0);
    // Idle from here, but for the wake-ups of this wait: the first quiet interval gets it.
    const deadline = performance.now() + 8_000;
    while (calls.length === 0 && performance.now() < deadline) await wait(400);
    expect(calls).toHaveLength(1);
    release.stop();
  }, 15_000);

  it('does nothing when the process was not started with --expose-gc, and nothing after stop, even scheduled again', async () => {
    expect(() => new HeapRelease(undefined, 1).schedule()).not.toThrow();
    const calls: unknown[] = [];
    const release = new HeapRelease((options) => calls.push(options), 20, loop({ busy: 0 }));
    release.schedule();
    release.stop();
    // A configuration step the closing proxy was still finishing.
    release.schedule();
    await wait(80);
    expect(calls).toHaveLength(0);
  });
});
