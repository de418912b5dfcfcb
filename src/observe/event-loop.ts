// nodejs_eventloop_lag_{min,max,mean,stddev,p50,p90,p99}_seconds as how late the event loop's sampling timer fired.
// prom-client reads them straight from Node's event-loop delay histogram (perf_hooks monitorEventLoopDelay), whose
// samples are the whole time between two firings of a timer of the sampling period, lateness and period together: at
// the proxy's 100 ms period an idle proxy read 0.1 s in every one of them, which says "lagging" where nothing is (and
// prom-client's 10 ms default reads 0.01 s idle). Here each statistic but the spread is the histogram's less the period,
// never below 0. nodejs_eventloop_lag_seconds (prom-client's, a setImmediate timed at each scrape) is left as it is.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { ELDHistogram } from 'node:perf_hooks';
import { Gauge } from 'prom-client';
import type { Registry } from 'prom-client';

/**
 * The period to give prom-client's own histogram (collectDefaultMetrics' eventLoopMonitoringPrecision), whose gauges
 * eventLoopLatenessMetrics replaces: its timer wakes the process once in 24.8 days.
 */
export const UNUSED_SAMPLE_MS = 2 ** 31 - 1;

type Statistic = (histogram: ELDHistogram) => number;

const STATISTICS: ReadonlyArray<readonly [name: string, help: string, read: Statistic, lessPeriod: boolean]> = [
  ['min', 'The least lateness of the event loop\'s sampling timer since the last scrape', (h) => h.min, true],
  ['max', 'The greatest lateness of the event loop\'s sampling timer since the last scrape', (h) => h.max, true],
  ['mean', 'The mean lateness of the event loop\'s sampling timer since the last scrape', (h) => h.mean, true],
  ['stddev', 'The standard deviation of the event loop sampling timer\'s lateness since the last scrape', (h) => h.stddev, false],
  ['p50', 'The median lateness of the event loop\'s sampling timer since the last scrape', (h) => h.percentile(50), true],
  ['p90', 'The 90th percentile of the event loop sampling timer\'s lateness since the last scrape', (h) => h.percentile(90), true],
  ['p99', 'The 99th percentile of the event loop sampling timer\'s lateness since the last scrape', (h) => h.percentile(99), true],
];

/**
 * Puts these gauges in `registry` in place of prom-client's of the same names (collectDefaultMetrics must have run,
 * with UNUSED_SAMPLE_MS as its eventLoopMonitoringPrecision), sampled every `periodMs`.
 */
export function eventLoopLatenessMetrics(registry: Registry, periodMs: number): void {
  const histogram = monitorEventLoopDelay({ resolution: periodMs });
  histogram.enable();
  const periodNs = periodMs * 1e6;
  const gauges: Gauge[] = [];
  const collect = (): void => {
    // No firing since the last scrape (scraped again within a period): the last figures stand, the samples go on.
    if (histogram.count === 0) return;
    STATISTICS.forEach(([, , read, lessPeriod], index) => {
      const ns = read(histogram);
      (gauges[index] as Gauge).set(Math.max(0, lessPeriod ? ns - periodNs : ns) / 1e9);
    });
    histogram.reset();
  };
  STATISTICS.forEach(([name, help], index) => {
    const fullName = `nodejs_eventloop_lag_${name}_seconds`;
    registry.removeSingleMetric(fullName);
    // The first gauge's collect sets them all, as prom-client's does.
    gauges.push(new Gauge({ name: fullName, help, registers: [registry], ...(index === 0 ? { collect } : {}) }));
  });
}
