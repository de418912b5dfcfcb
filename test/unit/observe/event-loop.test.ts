// The event loop's lateness gauges (src/observe/event-loop.ts) read how late the sampling timer fired, not the time
// between two firings: an idle process reads about 0, a loop held reads the time it was held.
import { monitorEventLoopDelay } from 'node:perf_hooks';
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

  it('read what Node\'s own histogram of the same period reads, less the period (about nothing for a loop that waits)', async () => {
    await lateness(registry);
    // Node's histogram beside it, as prom-client reads it: the time between two firings.
    const raw = monitorEventLoopDelay({ resolution: 100 });
    raw.enable();
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const read = await lateness(registry);
    raw.disable();
    expect(Object.keys(read).sort()).toEqual(['max', 'mean', 'min', 'p50', 'p90', 'p99', 'stddev'].map((name) => `nodejs_eventloop_lag_${name}_seconds`).concat('nodejs_eventloop_lag_seconds').sort());
    const seconds = (ns: number) => ns / 1e9;
    // Two timers of one loop: within a few hundredths of each other, where the period is a tenth of a second.
    for (const [name, value] of [['min', raw.min], ['mean', raw.mean], ['p50', raw.percentile(50)]] as const) {
      expect(read[`nodejs_eventloop_lag_${name}_seconds`], name).toBeCloseTo(Math.max(0, seconds(value) - 0.1), 1);
    }
    // The tail of two timers can differ by up to a period after a stall (their phases): judged as below the raw one.
    for (const [name, value] of [['max', raw.max], ['p90', raw.percentile(90)], ['p99', raw.percentile(99)]] as const) {
      expect(read[`nodejs_eventloop_lag_${name}_seconds`], name).toBeLessThan(seconds(value) - 0.05);
    }
    expect(read.nodejs_eventloop_lag_stddev_seconds).toBeCloseTo(seconds(raw.stddev), 1);
    expect(read.nodejs_eventloop_lag_min_seconds).toBeLessThan(0.05);
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
