// Istio TCP metrics (src/observe/metrics.ts): names and labels as Istio's, byte deltas, idempotent close,
// failure counting as ztunnel does it, the ambit gauges, and the periodic byte flush.
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Registry } from 'prom-client';
import { ProxyMetrics, UNKNOWN_WORKLOAD, startByteFlush, workloadLabels } from '../../../src/observe/metrics.ts';
import type { TunnelLabels } from '../../../src/observe/metrics.ts';

const OUTBOUND: TunnelLabels = {
  reporter: 'source',
  source: workloadLabels({ workload: 'web', namespace: 'shop', canonicalService: 'web', canonicalRevision: 'v1', app: 'web', version: 'v1', cluster: 'Kubernetes', region: 'us-east1', zone: 'us-east1-b' }),
  sourcePrincipal: 'spiffe://cluster.local/ns/shop/sa/web',
  destination: workloadLabels({ workload: 'api', namespace: 'shop', canonicalService: 'api', canonicalRevision: 'latest', app: 'api', version: 'latest', cluster: 'Kubernetes', region: '', zone: '' }),
  destinationPrincipal: 'spiffe://cluster.local/ns/shop/sa/api',
  service: { hostname: 'api.shop.svc.cluster.local', name: 'api', namespace: 'shop' },
  connectionSecurityPolicy: 'mutual_tls',
};

const INBOUND: TunnelLabels = { ...OUTBOUND, reporter: 'destination' };

type Labels = Record<string, string | number>;

/** The values of one metric whose labels include `match`, summed. */
async function valueOf(registry: Registry, name: string, match: Labels = {}): Promise<number> {
  // A histogram's series (NAME_bucket, NAME_sum, NAME_count) are registered under NAME.
  const histogram = /^(.*)_(bucket|sum|count)$/.exec(name);
  const metric = registry.getSingleMetric(name) ?? (histogram === null ? undefined : registry.getSingleMetric(histogram[1] as string));
  if (!metric) throw new Error(`${name} is not registered`);
  const { values } = await metric.get();
  let sum = 0;
  for (const value of values) {
    const labels = value.labels as Labels;
    const named = (value as { metricName?: string }).metricName ?? name;
    if (named === name && Object.entries(match).every(([key, expected]) => labels[key] === expected)) sum += value.value;
  }
  return sum;
}

async function seriesCount(registry: Registry, name: string): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`${name} is not registered`);
  return (await metric.get()).values.length;
}

describe('ProxyMetrics', () => {
  it('exposes Istio metric names and label names with SPIFFE principals after open, update and close', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    const meter = metrics.open(OUTBOUND);
    meter.update(100, 40);
    meter.close(120, 50, '-');
    const text = await registry.metrics();

    for (const name of ['istio_tcp_connections_opened_total', 'istio_tcp_connections_closed_total', 'istio_tcp_sent_bytes_total', 'istio_tcp_received_bytes_total', 'istio_tcp_connections_failed_total']) {
      expect(text).toContain(`# TYPE ${name} counter`);
    }
    const labelText = [
      'reporter="source"',
      'source_workload="web"',
      'source_canonical_service="web"',
      'source_canonical_revision="v1"',
      'source_workload_namespace="shop"',
      'source_principal="spiffe://cluster.local/ns/shop/sa/web"',
      'source_app="web"',
      'source_version="v1"',
      'source_cluster="Kubernetes"',
      'destination_service="api.shop.svc.cluster.local"',
      'destination_service_namespace="shop"',
      'destination_service_name="api"',
      'destination_workload="api"',
      'destination_canonical_service="api"',
      'destination_canonical_revision="latest"',
      'destination_workload_namespace="shop"',
      'destination_principal="spiffe://cluster.local/ns/shop/sa/api"',
      'destination_app="api"',
      'destination_version="latest"',
      'destination_cluster="Kubernetes"',
      'request_protocol="tcp"',
      'response_flags="-"',
      'connection_security_policy="mutual_tls"',
      'source_region="us-east1"',
      'source_zone="us-east1-b"',
      'destination_region="unknown"',
      'destination_zone="unknown"',
    ].join(',');
    expect(text).toContain(`istio_tcp_connections_opened_total{${labelText}} 1`);
    expect(text).toContain(`istio_tcp_connections_closed_total{${labelText}} 1`);
    expect(text).toContain(`istio_tcp_sent_bytes_total{${labelText}} 120`);
    expect(text).toContain(`istio_tcp_received_bytes_total{${labelText}} 50`);
    // A clean close is not a failure.
    expect(text).not.toMatch(/^istio_tcp_connections_failed_total\{/m);
  });

  it('adds only the delta of cumulative byte counts, never counting bytes twice', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    meter.update(10, 5);
    meter.update(30, 5);
    meter.close(30, 7, '-');
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(30);
    expect(await valueOf(registry, 'istio_tcp_received_bytes_total')).toBe(7);
  });

  it('shows bytes while the connection is still open, so long tunnels are visible before they close', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    meter.update(2048, 512);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(2048);
    expect(await valueOf(registry, 'istio_tcp_received_bytes_total')).toBe(512);
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total')).toBe(0);
  });

  it('ignores byte counts that go backwards or are not numbers', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    meter.update(50, 50);
    meter.update(20, Number.NaN);
    meter.close(60, 50, '-');
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(60);
    expect(await valueOf(registry, 'istio_tcp_received_bytes_total')).toBe(50);
  });

  it('counts a close once however often it is called, and ignores updates after it', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    meter.close(10, 10, '-');
    meter.close(99, 99, 'CONNECT');
    meter.update(500, 500);
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total')).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total', { response_flags: 'CONNECT' })).toBe(0);
    expect(await valueOf(registry, 'istio_tcp_connections_failed_total')).toBe(0);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(10);
  });

  it('shares one series among connections with the same labels and keeps reporters apart', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    for (let i = 0; i < 3; i++) metrics.open(OUTBOUND).close(1, 1, '-');
    metrics.open(INBOUND).close(1, 1, '-');
    expect(await seriesCount(registry, 'istio_tcp_connections_opened_total')).toBe(2);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { reporter: 'source' })).toBe(3);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { reporter: 'destination' })).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total', { reporter: 'source' })).toBe(3);
  });

  it('keeps apart ServiceEntries of two namespaces (or names) that name the same host', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    const entry = (namespace: string, name: string): TunnelLabels => ({ ...OUTBOUND, service: { hostname: 'api.partner.example', name, namespace } });
    metrics.open(entry('billing', 'partner-api')).close(1, 1, '-');
    metrics.open(entry('shop', 'partner-api')).close(1, 1, '-');
    metrics.open(entry('shop', 'partner-api-v2')).close(1, 1, '-');
    metrics.open(entry('shop', 'partner-api')).close(1, 1, '-');
    expect(await seriesCount(registry, 'istio_tcp_connections_opened_total')).toBe(3);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { destination_service_namespace: 'billing', destination_service_name: 'partner-api' })).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { destination_service_namespace: 'shop', destination_service_name: 'partner-api' })).toBe(2);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { destination_service_namespace: 'shop', destination_service_name: 'partner-api-v2' })).toBe(1);
  });

  it('reports an empty label value as unknown', async () => {
    const registry = new Registry();
    const source = workloadLabels({ workload: '', namespace: 'shop', canonicalService: '', canonicalRevision: '', app: '', version: '', cluster: '', region: '', zone: '' });
    new ProxyMetrics(registry).open({ ...OUTBOUND, source, sourcePrincipal: '', service: { hostname: '', name: '', namespace: '' } });
    expect(
      await valueOf(registry, 'istio_tcp_connections_opened_total', {
        source_workload: 'unknown',
        source_workload_namespace: 'shop',
        source_canonical_service: 'unknown',
        source_app: 'unknown',
        source_cluster: 'unknown',
        source_principal: 'unknown',
        destination_service: 'unknown',
        destination_service_name: 'unknown',
      }),
    ).toBe(1);
  });

  it('counts a close with a response flag as closed and failed under that flag', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(INBOUND);
    meter.close(0, 12, 'DENY');
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total', { response_flags: 'DENY' })).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_connections_failed_total', { response_flags: 'DENY' })).toBe(1);
    // Opened and bytes carry response_flags "-", as ztunnel records them at open.
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { response_flags: '-' })).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_received_bytes_total', { response_flags: '-' })).toBe(12);
  });

  it('counts a connection that failed before it was established as opened, closed and failed with its flag', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    metrics.failed(OUTBOUND, 'CONNECT');
    metrics.failed(OUTBOUND, 'CONNECT');
    metrics.failed(OUTBOUND, 'TLS_FAILURE');
    expect(await valueOf(registry, 'istio_tcp_connections_failed_total', { response_flags: 'CONNECT' })).toBe(2);
    expect(await valueOf(registry, 'istio_tcp_connections_failed_total', { response_flags: 'TLS_FAILURE' })).toBe(1);
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total', { response_flags: 'CONNECT' })).toBe(2);
    // opened - closed stays the number of open connections.
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total')).toBe(3);
    expect(await valueOf(registry, 'istio_tcp_connections_closed_total')).toBe(3);
  });

  it('counts label sets beyond the series limit under unknown labels instead of growing without bound', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry, { maxSeries: 2 });
    metrics.open(OUTBOUND).close(1, 1, '-');
    metrics.open(INBOUND).close(1, 1, '-');
    for (let port = 1; port <= 100; port++) metrics.failed({ ...OUTBOUND, destination: UNKNOWN_WORKLOAD, service: { hostname: `203.0.113.7:${port}`, name: 'x', namespace: 'y' } }, 'CONNECT');
    // Label sets already known keep their own series after the limit is reached.
    metrics.open(OUTBOUND).close(1, 1, '-');
    expect(await seriesCount(registry, 'istio_tcp_connections_opened_total')).toBe(3);
    expect(await valueOf(registry, 'istio_tcp_connections_failed_total', { reporter: 'source', source_workload: 'unknown', destination_service: 'unknown' })).toBe(100);
    expect(await valueOf(registry, 'istio_tcp_connections_opened_total', { source_workload: 'web', reporter: 'source' })).toBe(2);
  });

  it('keeps counters monotonic across scrapes', async () => {
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    meter.update(10, 0);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(10);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(10);
    meter.update(15, 0);
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(15);
  });

  it('writes the text exposition with label values escaped and each scrape reading the values of the moment', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    // A value from a peer's baggage could hold anything: quotes, backslashes and newlines must not break the format.
    const hostile = workloadLabels({ workload: 'a"b\\c\nd', namespace: 'shop', canonicalService: 'x', canonicalRevision: 'v1', app: 'x', version: 'v1', cluster: 'c', region: '', zone: '' });
    const meter = metrics.open({ ...INBOUND, source: hostile });
    meter.update(7, 0);
    const line = (text: string, name: string) => text.split('\n').find((l) => l.startsWith(`${name}{`)) ?? '';
    const first = await registry.metrics();
    expect(line(first, 'istio_tcp_sent_bytes_total')).toContain('source_workload="a\\"b\\\\c\\nd"');
    expect(line(first, 'istio_tcp_sent_bytes_total').endsWith('} 7')).toBe(true);
    expect(first.split('\n').every((l) => l === '' || l.startsWith('#') || /^[a-z_]+(\{.*\})? [-+0-9.e]+$|^[a-z_]+(\{.*\})? (NaN|[+-]Inf)$/i.test(l))).toBe(true);
    meter.update(9, 0);
    meter.request('http', 200, '', '-', 3, 10, 20);
    meter.close(9, 0, 'CONNECT');
    const second = await registry.metrics();
    expect(line(second, 'istio_tcp_sent_bytes_total').endsWith('} 9')).toBe(true);
    expect(line(second, 'istio_tcp_connections_failed_total')).toContain('response_flags="CONNECT"');
    expect(line(second, 'istio_request_duration_milliseconds_bucket')).toMatch(/^istio_request_duration_milliseconds_bucket\{le="0\.5",reporter="destination",.*response_code="200".*\} 0$/);
    expect(second).toContain('istio_request_duration_milliseconds_sum{reporter="destination"');
  });

  it('sets the pool, stream window and workload gauges and counts config reloads by result', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    metrics.setPool(3, 17);
    metrics.setStreamWindow(256 * 1024);
    metrics.setWorkloads(5, 2, 4);
    metrics.configReload('accepted');
    metrics.configReload('accepted');
    expect(await valueOf(registry, 'ambit_hbone_pool_sessions')).toBe(3);
    expect(await valueOf(registry, 'ambit_hbone_pool_streams')).toBe(17);
    expect(await valueOf(registry, 'ambit_hbone_stream_window_bytes')).toBe(256 * 1024);
    expect(await valueOf(registry, 'ambit_local_workloads')).toBe(5);
    expect(await valueOf(registry, 'ambit_hbone_listeners')).toBe(2);
    // Outbound listeners apart: the HBONE gauge had counted them too (5 on a node with one inbound listener).
    expect(await valueOf(registry, 'ambit_outbound_listeners')).toBe(4);
    expect(await valueOf(registry, 'ambit_config_reloads_total', { result: 'accepted' })).toBe(2);
    // Present at zero before any rejection, so alerts on it work from the start.
    expect(await registry.metrics()).toContain('ambit_config_reloads_total{result="rejected"} 0');
  });

  it('reports its build as ztunnel does, with ambit as the component and the package version as the tag', async () => {
    const registry = new Registry();
    new ProxyMetrics(registry);
    const version = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
    expect(version).toMatch(/^\d+\.\d+\.\d+/);
    expect(await registry.metrics()).toContain(`istio_build{component="ambit",tag="${version}"} 1`);
  });

  it('keeps at most 64 kinds of answer per label set, and a bound across all: the rest under response_code "other", flags kept (a workload chooses its codes)', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry, { maxRequestSeries: 100 });
    const meter = metrics.open(INBOUND);
    // 1,600 kinds of answer from one workload made a 103 MB scrape.
    for (let code = 200; code < 1000; code++) for (const protocol of ['http', 'grpc'] as const) meter.request(protocol, code, protocol === 'grpc' ? '2' : '', '-', 1, 10, 10);
    expect(await seriesCount(registry, 'istio_requests_total')).toBe(64 + 2);
    expect(await valueOf(registry, 'istio_requests_total')).toBe(1600);
    expect(await valueOf(registry, 'istio_requests_total', { response_code: 'other', request_protocol: 'http', grpc_response_status: 'other', response_flags: '-' })).toBe(800 - 32);
    expect(await valueOf(registry, 'istio_request_duration_milliseconds_count', { response_code: 'other' })).toBe(1600 - 64);
    // A kind already kept is counted under its own code still; a denial past the bound keeps its flag.
    meter.request('http', 200, '', '-', 1, 10, 10);
    meter.request('http', 403, '', 'DENY', 1, 10, 10);
    expect(await valueOf(registry, 'istio_requests_total', { response_code: '200', request_protocol: 'http' })).toBe(2);
    expect(await valueOf(registry, 'istio_requests_total', { response_code: 'other', response_flags: 'DENY' })).toBe(1);
    // The bound across label sets: its first 8 kinds are each label set's own; of the shared 100, 56 were taken.
    const other = metrics.open(OUTBOUND);
    for (let code = 200; code < 300; code++) other.request('http', code, '', '-', 1, 10, 10);
    expect(await valueOf(registry, 'istio_requests_total', { reporter: 'source', response_code: 'other' })).toBe(100 - 8 - 44);
    // A later label set's answers keep their own codes, the budget spent or not.
    const late = metrics.open({ ...OUTBOUND, sourcePrincipal: 'spiffe://cluster.local/ns/shop/sa/late' });
    late.request('http', 200, '', '-', 1, 10, 10);
    late.request('http', 403, '', 'DENY', 1, 10, 10);
    expect(await valueOf(registry, 'istio_requests_total', { source_principal: 'spiffe://cluster.local/ns/shop/sa/late', response_code: '403', response_flags: 'DENY' })).toBe(1);
  });

  it('bounds the label sets\' own request series across the proxy too: past it, new label sets share the common bound, then "other"', async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry, { maxRequestSeries: 4, maxOwnRequestSeries: 16 });
    // 10 label sets answering 8 kinds each: 16 own (two label sets' worth), then the 4 shared, then "other".
    for (let set = 0; set < 10; set++) {
      const meter = metrics.open({ ...OUTBOUND, sourcePrincipal: `spiffe://cluster.local/ns/shop/sa/s${set}` });
      for (let code = 200; code < 208; code++) meter.request('http', code, '', '-', 1, 10, 10);
    }
    const kept = (await registry.metrics()).split('\n').filter((line) => line.startsWith('istio_requests_total{') && !line.includes('response_code="other"')).length;
    expect(kept).toBe(16 + 4);
    expect(await valueOf(registry, 'istio_requests_total')).toBe(80);
    expect(await valueOf(registry, 'istio_requests_total', { response_code: 'other' })).toBe(80 - 20);
  });

  it("reports each request's duration, request size and answer size as Istio's histograms, in Envoy's buckets, under the request's labels", async () => {
    const registry = new Registry();
    const metrics = new ProxyMetrics(registry);
    const meter = metrics.open(INBOUND);
    meter.request('http', 200, '', '-', 3, 10_000, 10_001);
    meter.request('http', 200, '', '-', 700, 0, 4_000_000);
    // A clock step or a count gone wrong lands in the first bucket, never in none.
    meter.request('http', 200, '', '-', -5, Number.NaN, -1);
    meter.request('grpc', 200, '7', 'DENY', 1, 120, 90);
    const ok = { reporter: 'destination', response_code: '200', request_protocol: 'http', response_flags: '-', grpc_response_status: '' };
    const bucket = (name: string, le: number | string, match: Labels = ok) => valueOf(registry, `${name}_bucket`, { ...match, le });
    expect(await valueOf(registry, 'istio_requests_total', ok)).toBe(3);
    for (const name of ['istio_request_duration_milliseconds', 'istio_request_bytes', 'istio_response_bytes']) {
      expect(await registry.metrics()).toContain(`# TYPE ${name} histogram`);
      expect(await valueOf(registry, `${name}_count`, ok)).toBe(3);
      expect(await bucket(name, '+Inf')).toBe(3);
    }
    expect(await valueOf(registry, 'istio_request_bytes_sum', ok)).toBe(10_000);
    // A bound is inclusive: 10,000 bytes are in le=10000, 10,001 are not.
    expect(await bucket('istio_request_bytes', 0.5)).toBe(2);
    expect(await bucket('istio_request_bytes', 10_000)).toBe(3);
    expect(await valueOf(registry, 'istio_response_bytes_sum', ok)).toBe(4_010_001);
    expect(await bucket('istio_response_bytes', 0.5)).toBe(1);
    expect(await bucket('istio_response_bytes', 10_000)).toBe(1);
    expect(await bucket('istio_response_bytes', 30_000)).toBe(2);
    // Past the last bound (3,600,000): only in +Inf.
    expect(await bucket('istio_response_bytes', 3_600_000)).toBe(2);
    expect(await valueOf(registry, 'istio_request_duration_milliseconds_sum', ok)).toBe(703);
    expect(await bucket('istio_request_duration_milliseconds', 5)).toBe(2);
    expect(await bucket('istio_request_duration_milliseconds', 1000)).toBe(3);
    const denied = { request_protocol: 'grpc', grpc_response_status: '7', response_flags: 'DENY' };
    expect(await valueOf(registry, 'istio_request_bytes_sum', denied)).toBe(120);
    expect(await valueOf(registry, 'istio_response_bytes_sum', denied)).toBe(90);
    expect(await bucket('istio_request_bytes', 100, denied)).toBe(0);
    expect(await bucket('istio_request_bytes', 250, denied)).toBe(1);
  });

  it('registers only into the registry it is given', async () => {
    const { register: globalRegistry } = await import('prom-client');
    new ProxyMetrics(new Registry());
    expect(globalRegistry.getSingleMetric('istio_tcp_connections_opened_total')).toBeUndefined();
  });
});

describe('startByteFlush', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('flushes every live tunnel each interval until stopped, and keeps going past a tunnel that throws', () => {
    vi.useFakeTimers();
    const flushed: string[] = [];
    const errors: unknown[] = [];
    const live = new Set([
      { flush: () => void flushed.push('a') },
      {
        flush: () => {
          throw new Error('socket gone');
        },
      },
      { flush: () => void flushed.push('c') },
    ]);
    const stop = startByteFlush(5_000, live, (error) => errors.push(error));
    vi.advanceTimersByTime(4_999);
    expect(flushed).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(flushed).toEqual(['a', 'c']);
    expect(errors).toHaveLength(1);
    vi.advanceTimersByTime(5_000);
    expect(flushed).toEqual(['a', 'c', 'a', 'c']);
    stop();
    vi.advanceTimersByTime(20_000);
    expect(flushed).toHaveLength(4);
  });

  it('reports bytes of a long-lived tunnel through its meter while it runs', async () => {
    vi.useFakeTimers();
    const registry = new Registry();
    const meter = new ProxyMetrics(registry).open(OUTBOUND);
    const socket = { bytesWritten: 0, bytesRead: 0 };
    const live = new Set([{ flush: () => meter.update(socket.bytesWritten, socket.bytesRead) }]);
    const stop = startByteFlush(1_000, live);
    socket.bytesWritten = 4096;
    socket.bytesRead = 1024;
    vi.advanceTimersByTime(1_000);
    stop();
    expect(await valueOf(registry, 'istio_tcp_sent_bytes_total')).toBe(4096);
    expect(await valueOf(registry, 'istio_tcp_received_bytes_total')).toBe(1024);
  });

  it('does not keep the process alive', () => {
    const stop = startByteFlush(60_000, new Set());
    // The timer is unref'd; stop() must still be safe to call.
    stop();
    stop();
  });

  it('rejects an interval that is not a positive number', () => {
    expect(() => startByteFlush(0, new Set())).toThrow(RangeError);
    expect(() => startByteFlush(Number.NaN, new Set())).toThrow(RangeError);
  });
});
