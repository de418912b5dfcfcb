// How long one scrape of the traffic metrics holds the proxy's event loop (src/observe/metrics.ts): every tunnel of
// the node waits that long. N label sets, each opened and closed once (a clean close and, for every other one, a
// failed one: two cells with their own labels), then `registry.metrics()` three times (the first also formats each
// label object once), and a fourth timed by a 1 ms interval timer, whose largest gap is the stall.
//
//   node bench/observe/scrape-stall.ts            # 1,000 and 10,000 series
//   node bench/observe/scrape-stall.ts 2000 50000
import { Registry } from 'prom-client';
import { ProxyMetrics, UNKNOWN_SERVICE, workloadLabels } from '../../src/observe/metrics.ts';

async function measure(series: number): Promise<void> {
  const registry = new Registry();
  const metrics = new ProxyMetrics(registry, { maxSeries: series + 1 });
  for (let i = 0; i < series; i++) {
    const workload = workloadLabels({ workload: `w${i}`, namespace: `ns${i % 50}`, canonicalService: `svc${i}`, canonicalRevision: 'v1', app: `svc${i}`, version: 'v1', cluster: 'Kubernetes', region: '', zone: '' });
    const meter = metrics.open({ reporter: 'destination', source: workload, sourcePrincipal: `spiffe://cluster.local/ns/ns${i % 50}/sa/sa${i}`, destination: workload, destinationPrincipal: 'spiffe://cluster.local/ns/a/sa/b', service: UNKNOWN_SERVICE, connectionSecurityPolicy: 'mutual_tls' });
    meter.close(100, 100, i % 2 === 1 ? '-' : 'CONNECT');
  }
  const times: number[] = [];
  let bytes = 0;
  for (let round = 0; round < 3; round++) {
    const started = performance.now();
    bytes = (await registry.metrics()).length;
    times.push(performance.now() - started);
  }
  let last = performance.now();
  let stall = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    stall = Math.max(stall, now - last);
    last = now;
  }, 1);
  await new Promise((resolve) => setTimeout(resolve, 50));
  stall = 0;
  last = performance.now();
  await registry.metrics();
  await new Promise((resolve) => setTimeout(resolve, 20));
  clearInterval(timer);
  const heap = process.memoryUsage().heapUsed / 1_048_576;
  console.log(`${series} series: scrapes ${times.map((ms) => ms.toFixed(0)).join(' / ')} ms, ${(bytes / 1_048_576).toFixed(1)} MiB of text; the event loop held ${stall.toFixed(0)} ms; heap ${heap.toFixed(1)} MiB`);
}

const counts = process.argv.slice(2).map(Number);
for (const count of counts.length > 0 ? counts : [1_000, 10_000]) {
  if (!Number.isInteger(count) || count <= 0) throw new Error(`not a number of series: ${count}`);
  await measure(count);
}
