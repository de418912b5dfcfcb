// The event loop's lateness gauges (src/observe/event-loop.ts) read how late the sampling timer fired, not the time
// between two firings: an idle process reads about 0, a loop held reads the time it was held.
import { collectDefaultMetrics, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { UNUSED_SAMPLE_MS, eventLoopLatenessMetrics } from '../../../src/observe/event-loop.ts';

/** The registry's value of each nodejs_eventloop_lag_* gauge, by name. */
async function lateness(registry: Registry): Promise<Record<string, number>> {
  const values: Record<string, number> = {};
  for (const line of (await registry.metrics()).split('\n')) {
    const match = /^(nodejs_eventloop_lag_\w+) (\S+)$/.exec(line);
    if (match !== null) values[match[1] as string] = Number(match[2]);
  }
  return values;
}

describe('the event loop lateness gauges', () => {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: UNUSED_SAMPLE_MS });
  eventLoopLatenessMetrics(registry, 100);

  it('read about nothing for a loop that waits, where the histogram itself reads its 100 ms period', async () => {
    await lateness(registry);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const idle = await lateness(registry);
    expect(Object.keys(idle).sort()).toEqual(['max', 'mean', 'min', 'p50', 'p90', 'p99', 'stddev'].map((name) => `nodejs_eventloop_lag_${name}_seconds`).concat('nodejs_eventloop_lag_seconds').sort());
    // prom-client's own read at least the period (0.1) in every one.
    expect(idle.nodejs_eventloop_lag_min_seconds).toBeLessThan(0.05);
    expect(idle.nodejs_eventloop_lag_p50_seconds).toBeLessThan(0.09);
  });

  it('read a loop held for 300 ms as that late, about', async () => {
    await lateness(registry);
    await new Promise((resolve) => setTimeout(resolve, 150));
    const until = Date.now() + 300;
    while (Date.now() < until) {
      // held
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
    const held = await lateness(registry);
    expect(held.nodejs_eventloop_lag_max_seconds).toBeGreaterThan(0.15);
    expect(held.nodejs_eventloop_lag_max_seconds).toBeLessThan(0.6);
  });
});
