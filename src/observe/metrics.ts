// Data-plane metrics: Istio's standard TCP series (istio_tcp_*) with ztunnel's label set, plus ambit's pool,
// listener and reload gauges, registered into a Registry the caller owns (never prom-client's global one).
//
// Counting is decoupled from prom-client: prom-client's `labels(...).inc()` re-hashes the whole label object
// on every call, which would put a string build on every byte update. Instead each label set gets one plain
// TrafficSeries of numbers, found once per connection through a Map-of-Maps keyed by label value; meters
// add to its fields, and the counters copy those numbers out only when scraped (`collect`).
//
// Series semantics follow ztunnel's `ConnectionResult` (src/proxy/metrics.rs): every counter carries the
// whole traffic label set including `response_flags`; opened/sent/received are counted with
// response_flags="-", the close is counted with the connection's final flag, and a final flag other than "-"
// also counts istio_tcp_connections_failed_total. So opened - closed is always the number of open
// connections, and every failure is also a close. Series are never removed (as in ztunnel): Prometheus
// counters must not vanish; the label sets follow workload pairs, not connections, and are capped (maxSeries).
import { readFileSync } from 'node:fs';
import { Counter, Gauge } from 'prom-client';
import { droppedLogLines } from './log.ts';
import type { Registry } from 'prom-client';

export type Reporter = 'source' | 'destination';
/** ztunnel's values: `unknown` for a connection without mTLS (passthrough). */
export type SecurityPolicy = 'mutual_tls' | 'unknown';

/**
 * One side's workload labels (ztunnel's with_source / with_destination), built once per workload or derived source
 * and shared by every connection's labels: finding a series steps over `key`, not over seven values.
 */
export interface WorkloadLabels {
  /** The values below joined: equal keys, equal values. */
  readonly key: string;
  /** Istio's workload name (a Deployment's for its pods). */
  readonly workload: string;
  readonly namespace: string;
  readonly canonicalService: string;
  readonly canonicalRevision: string;
  /** Istio's older label names: as ztunnel, the canonical service and revision (for a source known only by its baggage, its workload name and revision). */
  readonly app: string;
  readonly version: string;
  readonly cluster: string;
  /** Istio's locality of the workload (ztunnel's `*_region`, `*_zone`). */
  readonly region: string;
  readonly zone: string;
}

/** The Service a connection addressed: `destination_service` (the hostname), `_name` and `_namespace`. */
export interface ServiceLabels {
  readonly hostname: string;
  readonly name: string;
  readonly namespace: string;
}

/** Builds a WorkloadLabels; '' reads as 'unknown', as everywhere in Istio's labels. */
export function workloadLabels(values: Omit<WorkloadLabels, 'key'>): WorkloadLabels {
  const labels = {
    workload: known(values.workload),
    namespace: known(values.namespace),
    canonicalService: known(values.canonicalService),
    canonicalRevision: known(values.canonicalRevision),
    app: known(values.app),
    version: known(values.version),
    cluster: known(values.cluster),
    region: known(values.region),
    zone: known(values.zone),
  };
  // NUL appears in no label value that reaches here (Kubernetes names and label values, SPIFFE path segments, baggage tokens).
  const key = [labels.workload, labels.namespace, labels.canonicalService, labels.canonicalRevision, labels.app, labels.version, labels.cluster, labels.region, labels.zone].join('\0');
  return Object.freeze({ key, ...labels });
}

export const UNKNOWN_WORKLOAD: WorkloadLabels = workloadLabels({ workload: '', namespace: '', canonicalService: '', canonicalRevision: '', app: '', version: '', cluster: '', region: '', zone: '' });
export const UNKNOWN_SERVICE: ServiceLabels = Object.freeze({ hostname: 'unknown', name: 'unknown', namespace: 'unknown' });

/** Istio's standard label values; 'unknown' for what is not known (an empty principal is reported as 'unknown'). */
export interface TunnelLabels {
  /** 'source' on the client side (outbound), 'destination' on the server side (inbound). */
  reporter: Reporter;
  source: WorkloadLabels;
  /** The peer's SPIFFE ID as presented in the TLS handshake (`spiffe://td/ns/x/sa/y`), never from configuration. */
  sourcePrincipal: string;
  destination: WorkloadLabels;
  destinationPrincipal: string;
  service: ServiceLabels;
  connectionSecurityPolicy: SecurityPolicy;
}

/** The clean-close value of `response_flags`. */
export const NO_RESPONSE_FLAGS = '-';

/** ztunnel's `ResponseFlags` values, for callers choosing one; the metrics accept any string. */
export const RESPONSE_FLAGS = ['-', 'DENY', 'CONNECT', 'TLS_FAILURE', 'H2_HANDSHAKE_FAILURE', 'NETWORK_POLICY', 'IDENTITY_ERROR', 'CERT_REVOKED'] as const;

/** The traffic label names, in ztunnel's order (its `CommonTrafficLabels`, the locality ones last as it encodes them). */
export const TRAFFIC_LABEL_NAMES = [
  'reporter',
  'source_workload',
  'source_canonical_service',
  'source_canonical_revision',
  'source_workload_namespace',
  'source_principal',
  'source_app',
  'source_version',
  'source_cluster',
  'destination_service',
  'destination_service_namespace',
  'destination_service_name',
  'destination_workload',
  'destination_canonical_service',
  'destination_canonical_revision',
  'destination_workload_namespace',
  'destination_principal',
  'destination_app',
  'destination_version',
  'destination_cluster',
  'request_protocol',
  'response_flags',
  'connection_security_policy',
  'source_region',
  'source_zone',
  'destination_region',
  'destination_zone',
] as const;

type TrafficLabelName = (typeof TRAFFIC_LABEL_NAMES)[number];
type TrafficLabelValues = Record<TrafficLabelName, string>;

export interface TunnelMeter {
  /**
   * Cumulative byte counts as read from the sockets; the meter adds only the delta since the last call (a
   * smaller value than before is ignored). Istio's direction, whatever the reporter: `sentBytes` is
   * server→client (what was written to the client-facing socket, its `bytesWritten`), `receivedBytes` is
   * client→server (what was read from it, its `bytesRead`).
   */
  update(sentBytes: number, receivedBytes: number): void;
  /** Final update plus istio_tcp_connections_closed_total{response_flags}; response_flags '-' for a clean close. Idempotent. */
  close(sentBytes: number, receivedBytes: number, responseFlags: string): void;
  /**
   * One HTTP request answered on this (inspected) connection: istio_requests_total with the connection's labels,
   * `request_protocol` `http` or `grpc`, the status, the gRPC status ('' for none) and `responseFlags` ('-', or
   * `DENY` for a request a policy refused); its duration and its sizes (what came from the client for it, what went
   * back) in istio_request_duration_milliseconds, istio_request_bytes and istio_response_bytes.
   */
  request(protocol: RequestProtocol, responseCode: number, grpcStatus: string, responseFlags: string, durationMs: number, requestBytes: number, responseBytes: number): void;
}

/**
 * Envoy's default histogram buckets, which Istio's stats filter keeps for its three request histograms: in ms for
 * istio_request_duration_milliseconds, in bytes for istio_request_bytes and istio_response_bytes.
 */
const ENVOY_DEFAULT_BUCKETS: readonly number[] = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

/** Istio's `request_protocol` of an HTTP request: `grpc` when its content type is gRPC's. */
export type RequestProtocol = 'http' | 'grpc';

/** The label names of istio_requests_total: the traffic labels with the response's. */
export const REQUEST_LABEL_NAMES = [...TRAFFIC_LABEL_NAMES, 'response_code', 'grpc_response_status'] as const;
type RequestLabelName = (typeof REQUEST_LABEL_NAMES)[number];

/** Observations of one histogram in Envoy's buckets: each bucket's own count (the scrape adds them up), and the sum. */
class Distribution {
  /** Past the last bound, +Inf only (the count). */
  readonly buckets = new Float64Array(ENVOY_DEFAULT_BUCKETS.length);
  sum = 0;

  observe(value: number): void {
    // NaN or negative (a clock step) counts in the first bucket, never in no bucket at all.
    const observed = value > 0 ? value : 0;
    this.sum += observed;
    const bounds = ENVOY_DEFAULT_BUCKETS;
    for (let i = 0; i < bounds.length; i++) {
      if (observed <= (bounds[i] as number)) {
        (this.buckets[i] as number)++;
        return;
      }
    }
  }
}

/** Requests counted under one answer (protocol, code, gRPC status, flags); labels built once, when first seen. */
class RequestCount {
  readonly protocol: RequestProtocol;
  readonly grpcStatus: string;
  readonly responseFlags: string;
  readonly labels: Record<RequestLabelName, string>;
  count = 0;
  readonly durations = new Distribution();
  readonly requestSizes = new Distribution();
  readonly responseSizes = new Distribution();

  constructor(base: TrafficLabelValues, protocol: RequestProtocol, responseCode: string, grpcStatus: string, responseFlags: string) {
    this.protocol = protocol;
    this.grpcStatus = grpcStatus;
    this.responseFlags = responseFlags;
    this.labels = { ...base, request_protocol: protocol, response_flags: responseFlags, response_code: responseCode, grpc_response_status: grpcStatus };
  }

  add(durationMs: number, requestBytes: number, responseBytes: number): void {
    this.count++;
    this.durations.observe(durationMs);
    this.requestSizes.observe(requestBytes);
    this.responseSizes.observe(responseBytes);
  }
}

/** A count under one value of `response_flags`; its label object is built once, when the flag is first seen. */
class FlaggedCount {
  readonly labels: TrafficLabelValues;
  count = 0;

  constructor(labels: TrafficLabelValues) {
    this.labels = labels;
  }
}

/**
 * Request series (one per status code, protocol, gRPC status and flags, each 67 lines of counter and histograms) the
 * whole proxy keeps, and one label set keeps: the codes are the workload's to choose (100 to 999), and one workload
 * answering 1,600 kinds of answer made a 103 MB scrape that held the event loop a second. Past either bound, a
 * label set's new kinds of answer are counted under `response_code="other"` and `grpc_response_status="other"`, one
 * series per protocol and response flags.
 */
export const DEFAULT_MAX_REQUEST_SERIES = 3_000;
const MAX_REQUEST_SERIES_PER_LABEL_SET = 64;
/** Each label set's first kinds of answer are its own, not charged to the shared bound: one noisy workload must not leave every later one's 200s and DENYs under `other`. */
const REQUEST_SERIES_OWN = 8;
/**
 * ...within a bound of their own across the proxy: uncounted, 10,000 label sets' 8 each were 80,000 series, a scrape
 * of ~5 GB that no string holds (every scrape then failed, after seconds with the event loop held). With the shared
 * bound, 5,000 request series at most: a scrape of ~320 MB (each series 67 lines of ~0.9 KB of labels).
 */
export const DEFAULT_MAX_OWN_REQUEST_SERIES = 2_000;
const OTHER_ANSWERS = 'other';
/** The key of `requests` the answers past the bounds are listed under: no status code is negative. */
const OTHER_CODE = -1;

/** The request series the proxy has made, against its bound (shared by every label set). */
interface RequestSeriesBudget {
  used: number;
  readonly max: number;
  /** Label sets' own series (REQUEST_SERIES_OWN each), against a bound of their own. */
  own: number;
  readonly maxOwn: number;
}

/** The numbers behind one traffic label set. */
class TrafficSeries {
  /** The label set with response_flags '-', as opened/sent/received report it. */
  readonly labels: TrafficLabelValues;
  opened = 0;
  sentBytes = 0;
  receivedBytes = 0;
  readonly closed = new Map<string, FlaggedCount>();
  readonly failed = new Map<string, FlaggedCount>();
  /** HTTP requests by status code, then a short list by protocol, gRPC status and flags: no key built per request. */
  readonly requests = new Map<number, RequestCount[]>();
  readonly #budget: RequestSeriesBudget;
  #requestSeries = 0;

  constructor(labels: TrafficLabelValues, budget: RequestSeriesBudget) {
    this.labels = labels;
    this.#budget = budget;
  }

  countRequest(protocol: RequestProtocol, responseCode: number, grpcStatus: string, responseFlags: string, durationMs: number, requestBytes: number, responseBytes: number): void {
    const cells = this.requests.get(responseCode);
    if (cells !== undefined) {
      for (const cell of cells) {
        if (cell.protocol === protocol && cell.grpcStatus === grpcStatus && cell.responseFlags === responseFlags) {
          cell.add(durationMs, requestBytes, responseBytes);
          return;
        }
      }
    }
    const own = this.#requestSeries < REQUEST_SERIES_OWN && this.#budget.own < this.#budget.maxOwn;
    if (this.#requestSeries >= MAX_REQUEST_SERIES_PER_LABEL_SET || (!own && this.#budget.used >= this.#budget.max)) {
      this.#otherCell(protocol, responseFlags).add(durationMs, requestBytes, responseBytes);
      return;
    }
    this.#requestSeries++;
    if (own) this.#budget.own++;
    else this.#budget.used++;
    const cell = new RequestCount(this.labels, protocol, String(responseCode), grpcStatus, responseFlags);
    cell.add(durationMs, requestBytes, responseBytes);
    if (cells === undefined) this.requests.set(responseCode, [cell]);
    else cells.push(cell);
  }

  /** The flags are kept (a fixed set: `-`, DENY, UC, DC), so that an alert on DENY still sees every denial. */
  #otherCell(protocol: RequestProtocol, responseFlags: string): RequestCount {
    // Answers past the bounds are listed in `requests` under code -1, by protocol and flags.
    let listed = this.requests.get(OTHER_CODE);
    if (listed === undefined) this.requests.set(OTHER_CODE, (listed = []));
    for (const cell of listed) if (cell.protocol === protocol && cell.responseFlags === responseFlags) return cell;
    const cell = new RequestCount(this.labels, protocol, OTHER_ANSWERS, OTHER_ANSWERS, responseFlags);
    listed.push(cell);
    return cell;
  }

  countClosed(responseFlags: string): void {
    const cell = this.closed.get(responseFlags) ?? this.#newCell(this.closed, responseFlags);
    cell.count++;
    if (responseFlags !== NO_RESPONSE_FLAGS) {
      const failedCell = this.failed.get(responseFlags) ?? this.#newCell(this.failed, responseFlags);
      failedCell.count++;
    }
  }

  #newCell(cells: Map<string, FlaggedCount>, responseFlags: string): FlaggedCount {
    const cell = new FlaggedCount({ ...this.labels, response_flags: responseFlags });
    cells.set(responseFlags, cell);
    return cell;
  }
}

class ConnectionMeter implements TunnelMeter {
  readonly #series: TrafficSeries;
  #sentBytes = 0;
  #receivedBytes = 0;
  #closed = false;

  constructor(series: TrafficSeries) {
    this.#series = series;
  }

  update(sentBytes: number, receivedBytes: number): void {
    if (this.#closed) return;
    this.#add(sentBytes, receivedBytes);
  }

  close(sentBytes: number, receivedBytes: number, responseFlags: string): void {
    if (this.#closed) return;
    this.#add(sentBytes, receivedBytes);
    this.#closed = true;
    this.#series.countClosed(responseFlags);
  }

  request(protocol: RequestProtocol, responseCode: number, grpcStatus: string, responseFlags: string, durationMs: number, requestBytes: number, responseBytes: number): void {
    this.#series.countRequest(protocol, responseCode, grpcStatus, responseFlags, durationMs, requestBytes, responseBytes);
  }

  // `>` is false for NaN and for a count that went backwards, so neither can make a counter decrease.
  #add(sentBytes: number, receivedBytes: number): void {
    if (sentBytes > this.#sentBytes) {
      this.#series.sentBytes += sentBytes - this.#sentBytes;
      this.#sentBytes = sentBytes;
    }
    if (receivedBytes > this.#receivedBytes) {
      this.#series.receivedBytes += receivedBytes - this.#receivedBytes;
      this.#receivedBytes = receivedBytes;
    }
  }
}

/**
 * One value as prom-client's registry writes it. Its label set goes in `sharedLabels`, the series' own object: the
 * registry formats such an object once and keeps the text (flattenSharedLabels' WeakMap), where labels given as
 * `labels` are escaped value by value at every scrape. With ~30 labels a series, that took 660 ms of the event loop
 * per scrape of 10,000 series, every tunnel of the node waiting.
 */
interface ScrapedValue {
  value: number;
  labels: Readonly<Record<string, string | number>>;
  sharedLabels: Readonly<Record<string, string>>;
  metricName?: string;
}

const NO_LABELS: Readonly<Record<string, string>> = Object.freeze({});
const BUCKET_LABELS: readonly Readonly<Record<string, number | string>>[] = [...ENVOY_DEFAULT_BUCKETS, '+Inf'].map((le) => Object.freeze({ le }));

/**
 * A metric read from the series at scrape time, shaped as prom-client's own are (name, help, type, get) so the
 * registry writes it: counting never touches prom-client, whose label-keyed tables the data path must not pay for.
 */
abstract class ScrapedMetric {
  readonly aggregator = 'sum';
  abstract readonly type: 'counter' | 'histogram';
  readonly name: string;
  readonly help: string;

  constructor(name: string, help: string) {
    this.name = name;
    this.help = help;
  }

  protected abstract collect(values: ScrapedValue[]): void;

  /** What the registry's text format reads (it prefers this to get()). */
  getForPromString(): Promise<{ name: string; help: string; type: string; aggregator: string; values: ScrapedValue[] }> {
    const values: ScrapedValue[] = [];
    this.collect(values);
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }

  /** Each value with its labels whole, as prom-client's get() gives them (JSON, tests). */
  async get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: Array<{ value: number; labels: Record<string, string | number>; metricName?: string }> }> {
    const data = await this.getForPromString();
    return { ...data, values: data.values.map(({ value, labels, sharedLabels, metricName }) => ({ value, labels: { ...sharedLabels, ...labels }, ...(metricName === undefined ? {} : { metricName }) })) };
  }

  reset(): void {}
}

/** Hands one value of a scraped metric over, with its label object. */
type AddValue = (labels: Readonly<Record<string, string>>, value: number) => void;

/** A counter of the traffic series (or their request cells): `read` gives each of its values with its label object. */
class TrafficCounter extends ScrapedMetric {
  readonly type = 'counter';
  readonly #all: readonly TrafficSeries[];
  readonly #read: (series: TrafficSeries, add: AddValue) => void;

  constructor(name: string, help: string, all: readonly TrafficSeries[], read: (series: TrafficSeries, add: AddValue) => void) {
    super(name, help);
    this.#all = all;
    this.#read = read;
  }

  protected collect(values: ScrapedValue[]): void {
    const add = (sharedLabels: Readonly<Record<string, string>>, value: number) => void values.push({ value, labels: NO_LABELS, sharedLabels });
    for (const series of this.#all) this.#read(series, add);
  }
}

/**
 * A request histogram (istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes), read at scrape
 * time from the request cells as the counters are: prom-client's Histogram keeps its own label-keyed table per
 * observation, which the request path must not pay for.
 */
class RequestHistogram extends ScrapedMetric {
  readonly type = 'histogram';
  readonly #all: readonly TrafficSeries[];
  readonly #of: (cell: RequestCount) => Distribution;

  constructor(name: string, help: string, all: readonly TrafficSeries[], of: (cell: RequestCount) => Distribution) {
    super(name, help);
    this.#all = all;
    this.#of = of;
  }

  protected collect(values: ScrapedValue[]): void {
    const bucket = `${this.name}_bucket`;
    const sum = `${this.name}_sum`;
    const count = `${this.name}_count`;
    for (const series of this.#all) {
      for (const cells of series.requests.values()) {
        for (const cell of cells) {
          const distribution = this.#of(cell);
          let cumulative = 0;
          for (let i = 0; i < ENVOY_DEFAULT_BUCKETS.length; i++) {
            cumulative += distribution.buckets[i] as number;
            values.push({ value: cumulative, labels: BUCKET_LABELS[i] as Readonly<Record<string, number>>, sharedLabels: cell.labels, metricName: bucket });
          }
          values.push({ value: cell.count, labels: BUCKET_LABELS[ENVOY_DEFAULT_BUCKETS.length] as Readonly<Record<string, string>>, sharedLabels: cell.labels, metricName: bucket });
          values.push({ value: distribution.sum, labels: NO_LABELS, sharedLabels: cell.labels, metricName: sum });
          values.push({ value: cell.count, labels: NO_LABELS, sharedLabels: cell.labels, metricName: count });
        }
      }
    }
  }
}

/** One level of the label-value index: a Map per label, so finding a series builds no key string. */
class LabelIndex {
  readonly next = new Map<string, LabelIndex>();
  series: TrafficSeries | null = null;
}

function descend(node: LabelIndex, value: string): LabelIndex {
  let child = node.next.get(value);
  if (child === undefined) {
    child = new LabelIndex();
    node.next.set(value, child);
  }
  return child;
}

function peek(node: LabelIndex, value: string): LabelIndex | null {
  return node.next.get(value) ?? null;
}

function known(value: string): string {
  return value === '' ? 'unknown' : value;
}

function labelValues(labels: TunnelLabels): TrafficLabelValues {
  const { source, destination, service } = labels;
  return {
    reporter: labels.reporter,
    source_workload: source.workload,
    source_canonical_service: source.canonicalService,
    source_canonical_revision: source.canonicalRevision,
    source_workload_namespace: source.namespace,
    source_principal: known(labels.sourcePrincipal),
    source_app: source.app,
    source_version: source.version,
    source_cluster: source.cluster,
    destination_service: known(service.hostname),
    destination_service_namespace: known(service.namespace),
    destination_service_name: known(service.name),
    destination_workload: destination.workload,
    destination_canonical_service: destination.canonicalService,
    destination_canonical_revision: destination.canonicalRevision,
    destination_workload_namespace: destination.namespace,
    destination_principal: known(labels.destinationPrincipal),
    destination_app: destination.app,
    destination_version: destination.version,
    destination_cluster: destination.cluster,
    // ztunnel reports every L4 connection as tcp; kept so Istio's queries that group by it still match.
    request_protocol: 'tcp',
    response_flags: NO_RESPONSE_FLAGS,
    connection_security_policy: labels.connectionSecurityPolicy,
    source_region: source.region,
    source_zone: source.zone,
    destination_region: destination.region,
    destination_zone: destination.zone,
  };
}

function readFlagged(cells: Map<string, FlaggedCount>, add: AddValue): void {
  for (const cell of cells.values()) add(cell.labels, cell.count);
}

/**
 * Enough for every pair among ~70 workloads in both directions; up to ~2 KiB each (measured), and once scraped the
 * text of each label object, ~0.65 KiB (one per series, and one per response flag and per request answer it counted).
 * A scrape of 10,000 opened and closed takes ~80 ms of the event loop.
 */
export const DEFAULT_MAX_SERIES = 10_000;

export interface ProxyMetricsOptions {
  /** Distinct traffic label sets kept; DEFAULT_MAX_SERIES unless given. */
  maxSeries?: number;
  /** Request series kept across every label set; DEFAULT_MAX_REQUEST_SERIES unless given. */
  maxRequestSeries?: number;
  /** Label sets' own first request series, across all; DEFAULT_MAX_OWN_REQUEST_SERIES unless given. */
  maxOwnRequestSeries?: number;
}

/** ambit's version, from its package.json (two levels up from src/observe/ and from dist/observe/ alike). */
export const AMBIT_VERSION: string = readVersion();

function readVersion(): string {
  try {
    const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown }).version;
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    // Copied without its package.json: the gauge says so rather than the proxy failing to start.
    return 'unknown';
  }
}

export class ProxyMetrics {
  readonly registry: Registry;
  readonly #index = new LabelIndex();
  /** Every series ever created, in creation order, for scraping. */
  readonly #series: TrafficSeries[] = [];
  readonly #poolSessions: Gauge;
  readonly #poolStreams: Gauge;
  readonly #streamWindow: Gauge;
  readonly #localWorkloads: Gauge;
  readonly #listeners: Gauge;
  readonly #outboundListeners: Gauge;
  readonly #configReloads: Counter<'result'>;
  readonly #peersRefused: Counter<'reason'>;
  readonly #maxSeries: number;
  readonly #requestBudget: RequestSeriesBudget;
  /** Where connections go once #maxSeries label sets exist: one all-'unknown' series per reporter. */
  readonly #overflow = new Map<Reporter, TrafficSeries>();

  /**
   * Registers the metrics into `registry`; a second ProxyMetrics on the same registry throws (duplicate
   * names). Series are never dropped, so their number is bounded: past `maxSeries` label sets, new ones are
   * counted under labels that are all 'unknown' but the reporter (a growing `source_workload="unknown"`
   * series is the sign). A workload dialling many distinct destinations must not grow the proxy without end.
   */
  constructor(registry: Registry, options: ProxyMetricsOptions = {}) {
    this.registry = registry;
    this.#maxSeries = options.maxSeries ?? DEFAULT_MAX_SERIES;
    this.#requestBudget = { used: 0, max: options.maxRequestSeries ?? DEFAULT_MAX_REQUEST_SERIES, own: 0, maxOwn: options.maxOwnRequestSeries ?? DEFAULT_MAX_OWN_REQUEST_SERIES };
    const all = this.#series;
    const scraped: ScrapedMetric[] = [
      new TrafficCounter('istio_tcp_connections_opened_total', 'The total number of TCP connections opened', all, (series, add) => add(series.labels, series.opened)),
      new TrafficCounter('istio_tcp_connections_closed_total', 'The total number of TCP connections closed', all, (series, add) => readFlagged(series.closed, add)),
      new TrafficCounter('istio_tcp_connections_failed_total', 'The total number of TCP connections that failed to establish or ended with a failure flag', all, (series, add) => readFlagged(series.failed, add)),
      new TrafficCounter('istio_tcp_received_bytes_total', 'The size of total bytes received during request in case of a TCP connection (client to server)', all, (series, add) => add(series.labels, series.receivedBytes)),
      new TrafficCounter('istio_tcp_sent_bytes_total', 'The size of total bytes sent during response in case of a TCP connection (server to client)', all, (series, add) => add(series.labels, series.sentBytes)),
      // Istio's request series, as a waypoint or sidecar reports them: ambit terminates HTTP where policies inspect it.
      new TrafficCounter('istio_requests_total', 'Total number of requests handled by an inspected (HTTP) connection', all, (series, add) => {
        for (const cells of series.requests.values()) for (const cell of cells) add(cell.labels, cell.count);
      }),
      new RequestHistogram('istio_request_duration_milliseconds', 'Time from a request arriving at the proxy to its answer ending, on inspected (HTTP) connections', all, (cell) => cell.durations),
      // Istio's are Envoy's downstream wire bytes of the request: its head and body as they came (see src/proxy/l7.ts).
      new RequestHistogram('istio_request_bytes', 'Size of each request as it came from the client (head and body), on inspected (HTTP) connections', all, (cell) => cell.requestSizes),
      new RequestHistogram('istio_response_bytes', 'Size of each answer as it went to the client (head and body), on inspected (HTTP) connections', all, (cell) => cell.responseSizes),
    ];
    for (const metric of scraped) registry.registerMetric(metric as unknown as Counter);
    this.#poolSessions = new Gauge({ name: 'ambit_hbone_pool_sessions', help: 'HTTP/2 sessions held by the outbound HBONE pool', registers: [registry] });
    this.#poolStreams = new Gauge({ name: 'ambit_hbone_pool_streams', help: 'CONNECT streams open on the outbound HBONE pool sessions', registers: [registry] });
    this.#streamWindow = new Gauge({ name: 'ambit_hbone_stream_window_bytes', help: 'The widest HTTP/2 stream window a tunnel is granted now: narrower while the tunnels open across every HBONE session, both ways, would hold more than the proxy\'s budget for them', registers: [registry] });
    let droppedSeen = 0;
    new Counter({
      name: 'ambit_log_lines_dropped_total',
      help: 'Log lines dropped because stdout was not read fast enough (16 MiB buffered)',
      registers: [registry],
      collect(this: Counter) {
        const dropped = droppedLogLines();
        this.inc(dropped - droppedSeen);
        droppedSeen = dropped;
      },
    });
    // ztunnel's build gauge, so dashboards that count versions per component see ambit's.
    new Gauge({ name: 'istio_build', help: 'Istio component build info', labelNames: ['component', 'tag'], registers: [registry] }).set({ component: 'ambit', tag: AMBIT_VERSION }, 1);
    this.#localWorkloads = new Gauge({ name: 'ambit_local_workloads', help: 'Workloads on this node that the proxy serves', registers: [registry] });
    this.#listeners = new Gauge({ name: 'ambit_hbone_listeners', help: 'Inbound HBONE listeners open on this node', registers: [registry] });
    this.#outboundListeners = new Gauge({ name: 'ambit_outbound_listeners', help: 'Explicit outbound listeners open on this node', registers: [registry] });
    this.#configReloads = new Counter({ name: 'ambit_config_reloads_total', help: 'Configuration changes seen, by whether the new snapshot was accepted or the last good one kept', labelNames: ['result'], registers: [registry] });
    // Both results exist from the start so `increase(...{result="rejected"}[5m]) > 0` alerts work before the first rejection.
    this.#configReloads.inc({ result: 'accepted' }, 0);
    this.#configReloads.inc({ result: 'rejected' }, 0);
    this.#peersRefused = new Counter({
      name: 'ambit_hbone_peers_refused_total',
      help: 'Connections to the HBONE port refused before any CONNECT: a failed TLS handshake (TLS_HANDSHAKE), a TLS client without the h2 ALPN (TLS_NO_ALPN), or a client SVID that does not verify (its error code)',
      labelNames: ['reason'],
      registers: [registry],
    });
    this.#peersRefused.inc({ reason: 'TLS_HANDSHAKE' }, 0);
  }

  /** One call per connection: counts istio_tcp_connections_opened_total and returns a meter holding the series (no label lookup afterwards). */
  open(labels: TunnelLabels): TunnelMeter {
    const series = this.#find(labels);
    series.opened++;
    return new ConnectionMeter(series);
  }

  /**
   * A connection that failed before it was established: counted as ztunnel counts it, opened and closed with
   * `responseFlags` and failed with `responseFlags` (so opened - closed stays the open count). Call it
   * instead of open/close, never as well; a connection already opened ends with `meter.close(..., flag)`,
   * which counts the failure itself.
   */
  failed(labels: TunnelLabels, responseFlags: string): void {
    const series = this.#find(labels);
    series.opened++;
    series.countClosed(responseFlags);
  }

  setPool(sessions: number, streams: number): void {
    this.#poolSessions.set(sessions);
    this.#poolStreams.set(streams);
  }

  /** The proxy's stream window cap (window.ts StreamBudget). */
  setStreamWindow(bytes: number): void {
    this.#streamWindow.set(bytes);
  }

  /** Local workloads, and the listeners open: HBONE inbound (ambit_hbone_listeners, as its help says) and outbound apart. */
  setWorkloads(local: number, hboneListeners: number, outboundListeners: number): void {
    this.#localWorkloads.set(local);
    this.#listeners.set(hboneListeners);
    this.#outboundListeners.set(outboundListeners);
  }

  configReload(result: 'accepted' | 'rejected'): void {
    this.#configReloads.inc({ result });
  }

  /** A peer refused before any stream; `reason` is an error code (a fixed set), so the series stay few. */
  peerRefused(reason: string): void {
    this.#peersRefused.inc({ reason });
  }

  #find(labels: TunnelLabels): TrafficSeries {
    const existing = walk(this.#index, labels, false);
    if (existing !== null && existing.series !== null) return existing.series;
    if (this.#series.length >= this.#maxSeries) return this.#overflowSeries(labels.reporter);
    const node = walk(this.#index, labels, true)!;
    node.series = new TrafficSeries(labelValues(labels), this.#requestBudget);
    this.#series.push(node.series);
    return node.series;
  }

  #overflowSeries(reporter: Reporter): TrafficSeries {
    let series = this.#overflow.get(reporter);
    if (series === undefined) {
      series = new TrafficSeries(labelValues(overflowLabels(reporter)), this.#requestBudget);
      this.#overflow.set(reporter, series);
      this.#series.push(series);
    }
    return series;
  }
}

function overflowLabels(reporter: Reporter): TunnelLabels {
  return {
    reporter,
    source: UNKNOWN_WORKLOAD,
    sourcePrincipal: 'unknown',
    destination: UNKNOWN_WORKLOAD,
    destinationPrincipal: 'unknown',
    service: UNKNOWN_SERVICE,
    connectionSecurityPolicy: 'unknown',
  };
}

/** Finds the index node of a label set; with `create`, adds the missing levels, otherwise stops at the first miss. */
function walk(root: LabelIndex, labels: TunnelLabels, create: boolean): LabelIndex | null {
  const step = create ? descend : peek;
  let node: LabelIndex | null = step(root, labels.reporter);
  if (node !== null) node = step(node, labels.source.key);
  if (node !== null) node = step(node, labels.sourcePrincipal);
  if (node !== null) node = step(node, labels.destination.key);
  if (node !== null) node = step(node, labels.destinationPrincipal);
  // A Service's hostname names it (NAME.NAMESPACE.svc...), a ServiceEntry's does not: entries of several namespaces
  // may name one host, each its own series.
  if (node !== null) node = step(node, labels.service.hostname);
  if (node !== null) node = step(node, labels.service.namespace);
  if (node !== null) node = step(node, labels.service.name);
  if (node !== null) node = step(node, labels.connectionSecurityPolicy);
  return node;
}

/** Something holding a meter that can report its sockets' current byte counts (it calls `meter.update`). */
export interface Flushable {
  flush(): void;
}

function flushAll(live: Set<Flushable>, onError: ((error: unknown) => void) | undefined): void {
  for (const tunnel of live) {
    try {
      tunnel.flush();
    } catch (error) {
      // One broken tunnel must not stop the others' bytes from being reported, nor crash the node proxy.
      onError?.(error);
    }
  }
}

/**
 * Calls `flush()` on every live tunnel every `intervalMs`, so long-lived tunnels report bytes while they
 * run rather than only at close (ztunnel counts per read/write). The timer is unref'd: it never keeps the
 * process alive. Returns the function that stops it.
 */
export function startByteFlush(intervalMs: number, live: Set<Flushable>, onError?: (error: unknown) => void): () => void {
  if (!Number.isFinite(intervalMs) || intervalMs <= 0) throw new RangeError(`byte flush interval must be a positive number of milliseconds, got ${intervalMs}`);
  const timer = setInterval(flushAll, intervalMs, live, onError);
  timer.unref();
  return () => clearInterval(timer);
}
