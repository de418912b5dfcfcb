// Per-connection cost of the Istio TCP metrics (src/observe/metrics.ts): what a tunnel pays at open, on each
// byte flush, and at close, with the series already created (the steady state of a busy node).
import { bench, describe } from 'vitest';
import { Registry } from 'prom-client';
import { ProxyMetrics, workloadLabels } from '../../src/observe/metrics.ts';
import type { TunnelLabels } from '../../src/observe/metrics.ts';

const LABELS: TunnelLabels = {
  reporter: 'source',
  source: workloadLabels({ workload: 'web', namespace: 'shop', canonicalService: 'web', canonicalRevision: 'v1', app: 'web', version: 'v1', cluster: 'Kubernetes', region: '', zone: '' }),
  sourcePrincipal: 'spiffe://cluster.local/ns/shop/sa/web',
  destination: workloadLabels({ workload: 'api', namespace: 'shop', canonicalService: 'api', canonicalRevision: 'latest', app: 'api', version: 'latest', cluster: 'Kubernetes', region: '', zone: '' }),
  destinationPrincipal: 'spiffe://cluster.local/ns/shop/sa/api',
  service: { hostname: 'api.shop.svc.cluster.local', name: 'api', namespace: 'shop' },
  connectionSecurityPolicy: 'mutual_tls',
};

/** 50 destinations, so the label index holds more than one path, as on a real node. */
const DESTINATIONS: TunnelLabels[] = Array.from({ length: 50 }, (_, i) => ({
  ...LABELS,
  destination: workloadLabels({ workload: `api-${i}`, namespace: 'shop', canonicalService: `api-${i}`, canonicalRevision: 'latest', app: `api-${i}`, version: 'latest', cluster: 'Kubernetes', region: '', zone: '' }),
  service: { hostname: `api-${i}.shop.svc.cluster.local`, name: `api-${i}`, namespace: 'shop' },
}));

const metrics = new ProxyMetrics(new Registry());
for (const labels of DESTINATIONS) metrics.open(labels).close(0, 0, '-');

describe('ProxyMetrics', () => {
  let next = 0;
  bench('open + 3 updates + close (one connection)', () => {
    const meter = metrics.open(DESTINATIONS[next++ % DESTINATIONS.length]!);
    meter.update(1_000, 200);
    meter.update(5_000, 400);
    meter.update(9_000, 600);
    meter.close(10_000, 700, '-');
  });

  const meter = metrics.open(LABELS);
  let bytes = 0;
  bench('update (one byte flush of a live tunnel)', () => {
    bytes += 1_460;
    meter.update(bytes, bytes >>> 1);
  });

  bench('failed (a refused connection)', () => {
    metrics.failed(DESTINATIONS[next++ % DESTINATIONS.length]!, 'CONNECT');
  });

  const scraped = new ProxyMetrics(new Registry());
  for (const labels of DESTINATIONS) scraped.open(labels).close(10, 10, '-');
  bench('scrape: registry.metrics() with 50 series', async () => {
    await scraped.registry.metrics();
  });
});
