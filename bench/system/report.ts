// What a run produced and how it is shown: every figure by scenario and row (the JSON file), one Markdown
// table per scenario with ratios against direct and against the HAProxy pair of the same layer, and the
// issue's targets checked against this run's figures.

export const ROWS = ['direct', 'ambit-l4', 'ambit-l7', 'node-l4', 'haproxy-l4', 'haproxy-l7'] as const;
export type RowId = (typeof ROWS)[number];

export const ROW_LABELS: Record<RowId, string> = {
  'direct': 'direct',
  'ambit-l4': 'ambit L4',
  'ambit-l7': 'ambit L7 (1,000 policies)',
  'node-l4': 'Node floor L4 pair (reference)',
  'haproxy-l4': 'HAProxy L4 pair',
  'haproxy-l7': 'HAProxy L7 pair (1,000 ACL rules)',
};

/** The HAProxy row each row is compared with. */
const PEER: Partial<Record<RowId, RowId>> = { 'ambit-l4': 'haproxy-l4', 'ambit-l7': 'haproxy-l7', 'node-l4': 'haproxy-l4' };

export const SCENARIOS = ['throughput', 'latency', 'churn', 'bulk', 'idle', 'rotation', 'footprint'] as const;
export type ScenarioId = (typeof SCENARIOS)[number];
export const SCENARIO_LETTERS: Record<ScenarioId, string> = { throughput: 'a', latency: 'b', churn: 'c', bulk: 'd', idle: 'e', rotation: 'f', footprint: 'g' };

export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
}

export interface ThroughputFigures {
  requestsPerSecond: number;
  ok: number;
  failed: number;
  /** Requests that failed in the warm-up before the measured seconds (absent in runs before 2026-12-07 night). */
  warmupFailed?: number;
  seconds: number;
  latencyMs: Percentiles | null;
  /** CPU of the row's proxy processes (both of the pair) per request, µs; null for direct. */
  proxyCpuMicrosPerRequest: number | null;
  /** The same of each process, by name, client side first (absent in results written before 2026-12-06 evening). */
  proxyCpuMicrosPerRequestByProcess?: Record<string, number> | null;
  /** How busy the harness (load generator) and the upstream were, in % of one core: is the row the limit? */
  loadgenCpuPercent: number;
  upstreamCpuPercent: number;
  proxyCpuPercent: number | null;
  /** CPU used meanwhile by processes outside the benchmark, and stolen by the hypervisor, % of one core: noise. */
  otherCpuPercent: number;
}

export interface LatencyFigures {
  ratePerSecond: number;
  seconds: number;
  ok: number;
  failed: number;
  /** As ThroughputFigures'. */
  warmupFailed?: number;
  achievedPerSecond: number;
  latencyMs: Percentiles | null;
  proxyCpuMicrosPerRequest: number | null;
  proxyCpuMicrosPerRequestByProcess?: Record<string, number> | null;
  /** VmRSS of each proxy process at the end of the run, bytes. */
  proxyRssBytes: Record<string, number>;
  otherCpuPercent: number;
}

export interface ChurnFigures {
  connectionsPerSecond: number;
  ok: number;
  failed: number;
  seconds: number;
  latencyMs: Percentiles | null;
  proxyCpuMicrosPerConnection: number | null;
  proxyCpuMicrosPerConnectionByProcess?: Record<string, number> | null;
  otherCpuPercent: number;
}

export interface BulkFigures {
  /** Bytes carried down and up (the same in a run by byte count; runs before 2026-12-06 22:40 give only `bytes`). */
  bytes: number;
  upBytes?: number;
  /** A timed transfer's (--side-by-side): how long each way ran. */
  seconds?: number;
  downMiBPerSecond: number;
  upMiBPerSecond: number;
  /** CPU of the pair per MiB carried, µs, and how busy each side was, % of one core. */
  proxyCpuMicrosPerMiB: { down: number | null; up: number | null };
  proxyCpuPercent: { down: number | null; up: number | null };
  loadgenCpuPercent: { down: number; up: number };
  upstreamCpuPercent: { down: number; up: number };
  otherCpuPercent: number;
}

export interface IdleFigures {
  connections: number;
  openFailed: number;
  rssBeforeBytes: Record<string, number>;
  rssAfterBytes: Record<string, number>;
  bytesPerConnection: Record<string, number>;
  /** The larger of the pair's per-connection costs (the target is per proxy). */
  maxBytesPerConnection: number;
  /** ambit only: of that, V8 heap in use and external (Buffer) memory per connection, by proxy. */
  heapBytesPerConnection: Record<string, { heapUsed: number; external: number }>;
}

export interface RotationFigures {
  ratePerSecond: number;
  seconds: number;
  ok: number;
  failed: number;
  latencyMs: Percentiles | null;
  newConnectionsOk: number;
  newConnectionsFailed: number;
  /**
   * Requests that failed in the warm-up before the measured seconds, which runs under the same short certificate lives,
   * and keep-alive connections the proxy closed between requests over both (absent in runs before 2026-12-07 night).
   */
  warmupFailed?: number;
  connectionsClosed?: number;
  /** Certificates obtained by the two proxies during the run (ambit_certificate_rotations_total). */
  rotations: number;
  svidTtl: string;
}

export interface FootprintFigures extends IdleCost {
  workloads: number;
  localWorkloads: number;
  readySeconds: number;
  rssBytes: number;
  /** Of RSS: anonymous memory (V8's heap, malloc, stacks) and pages of the node binary and libraries. */
  rssAnonBytes?: number;
  rssFileBytes?: number;
  /** A bare `node` process with the proxies' flags, idle, measured in the same run: what any Node process holds. */
  bareNode?: BareNodeFootprint;
  /** V8 heap in use and reserved (the rest of RSS is the node binary, native state and malloc). */
  heapUsedBytes: number;
  heapTotalBytes: number;
}

/**
 * What an idle process costs while it waits, over the second half of its settling: CPU (% of one core) and how often
 * its main thread is woken (absent in results written before 2026-12-06, late evening).
 */
export interface IdleCost {
  idleCpuPercent?: number;
  idleWakeupsPerSecond?: number;
}

export interface BareNodeFootprint extends IdleCost {
  rssBytes: number;
  rssAnonBytes: number;
  rssFileBytes: number;
}

export interface FiguresByScenario {
  throughput: ThroughputFigures;
  latency: LatencyFigures;
  churn: ChurnFigures;
  bulk: BulkFigures;
  idle: IdleFigures;
  rotation: RotationFigures;
  footprint: FootprintFigures;
}

/** A cell of the result: figures, or why there are none. */
export type Outcome<F> = { status: 'ok'; figures: F } | { status: 'skipped'; reason: string } | { status: 'n/a'; reason: string } | { status: 'failed'; reason: string };

export type ScenarioResults = {
  [S in ScenarioId]?: {
    settings: Record<string, unknown>;
    /** Each row's median round (or its one run, or what went wrong in any round). */
    rows: Partial<Record<RowId, Outcome<FiguresByScenario[S]>>>;
    /** With more than one round: every round's figures, in order; round k of each row ran side by side. */
    rounds?: Partial<Record<RowId, Array<FiguresByScenario[S]>>>;
  };
};

/** The scenarios a row runs by the harness's load (rotation and footprint have runs of their own). */
export type LoadScenario = Exclude<ScenarioId, 'rotation' | 'footprint'>;

/** What orders a scenario's rounds to find the median one (the figure its target reads). */
const ROUND_KEYS: { [S in LoadScenario]: (figures: FiguresByScenario[S]) => number } = {
  throughput: (f) => f.requestsPerSecond,
  latency: (f) => f.proxyCpuMicrosPerRequest ?? f.latencyMs?.p50 ?? 0,
  churn: (f) => f.connectionsPerSecond,
  bulk: (f) => f.downMiBPerSecond + f.upMiBPerSecond,
  idle: (f) => f.maxBytesPerConnection,
};

/** The index of the round to show: the middle one once sorted (of two middles, the lower). */
function medianIndex(values: readonly number[]): number {
  const order = values.map((_, i) => i).sort((a, b) => (values[a] as number) - (values[b] as number));
  return order[Math.floor((order.length - 1) / 2)] as number;
}

/** The median proper: of an even count, the mean of the two middles (favouring neither side of a limit). */
function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/**
 * Records a row's rounds: a failure in any round is the row's outcome (never hidden behind good rounds);
 * otherwise its median round, by the figure the scenario's target reads, with every round kept beside it.
 */
export function recordRounds<S extends LoadScenario>(results: RunResults, scenario: S, row: RowId, outcomes: ReadonlyArray<Outcome<FiguresByScenario[S]>>): void {
  const entry = results.scenarios[scenario] as { rows: Partial<Record<RowId, Outcome<FiguresByScenario[S]>>>; rounds?: Partial<Record<RowId, Array<FiguresByScenario[S]>>> } | undefined;
  if (entry === undefined || outcomes.length === 0) return;
  const bad = outcomes.findIndex((outcome) => outcome.status !== 'ok');
  if (bad >= 0) {
    const outcome = outcomes[bad] as Exclude<Outcome<FiguresByScenario[S]>, { status: 'ok' }>;
    entry.rows[row] = outcomes.length > 1 ? { ...outcome, reason: `round ${bad + 1} of ${outcomes.length}: ${outcome.reason}` } : outcome;
    return;
  }
  const figures = outcomes.map((outcome) => (outcome as { figures: FiguresByScenario[S] }).figures);
  const key = ROUND_KEYS[scenario] as (f: FiguresByScenario[S]) => number;
  const shown = medianIndex(figures.map(key));
  entry.rows[row] = { status: 'ok', figures: figures[shown] as FiguresByScenario[S] };
  if (figures.length > 1) (entry.rounds ??= {})[row] = figures;
  // Failed requests of a round not shown must not vanish from the report.
  figures.forEach((f, i) => {
    const failed = (f as { failed?: unknown }).failed;
    if (i !== shown && typeof failed === 'number' && failed > 0) results.notes.push(`(${SCENARIO_LETTERS[scenario]}) ${ROW_LABELS[row]}: ${failed.toLocaleString('en-US')} failed in round ${i + 1} of ${figures.length} (not the round shown)`);
  });
}

export interface RunResults {
  date: string;
  command: string;
  mode: 'quick' | 'full';
  durationSeconds: number;
  machine: Record<string, unknown>;
  notes: string[];
  skipped: Partial<Record<RowId, string>>;
  scenarios: ScenarioResults;
  /** With --side-by-side: (a)-(d) again with ambit L4 and its reference pairs loaded at the same time. */
  sideBySide?: SideBySideResults;
}

/** The scenarios --side-by-side runs with the pairs loaded at once (each CPU figure is per request, connection or MiB). */
export const SIDE_BY_SIDE_SCENARIOS = ['throughput', 'latency', 'churn', 'bulk'] as const;
export type SideBySideScenario = (typeof SIDE_BY_SIDE_SCENARIOS)[number];

/** The pairs --side-by-side loads beside ambit L4, those of the run's rows that started. */
export const SIDE_BY_SIDE_PEERS = ['node-l4', 'haproxy-l4'] as const;
export type SideBySidePeer = (typeof SIDE_BY_SIDE_PEERS)[number];

/** One round of a side-by-side scenario: every pair's figures over the same seconds. */
export interface SideBySideRound<S extends SideBySideScenario> {
  ambit: FiguresByScenario[S];
  peers: Partial<Record<SideBySidePeer, FiguresByScenario[S]>>;
}

export type SideBySideResults = {
  [S in SideBySideScenario]?: { rounds: Array<SideBySideRound<S>>; failed?: string };
};

const fmt = (value: number, digits = 0) => value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ms = (value: number | undefined) => (value === undefined ? '—' : value < 10 ? fmt(value, 3) : fmt(value, 1));
const mib = (bytes: number) => fmt(bytes / (1024 * 1024), 1);
const kib = (bytes: number) => fmt(bytes / 1024, 1);
const ratio = (value: number | null | undefined, reference: number | null | undefined) => (value == null || reference == null || reference === 0 || !Number.isFinite(value / reference) ? '—' : `${fmt(value / reference, 2)}×`);

function figuresOf<S extends ScenarioId>(results: RunResults, scenario: S, row: RowId): FiguresByScenario[S] | undefined {
  const outcome = results.scenarios[scenario]?.rows[row];
  return outcome?.status === 'ok' ? (outcome.figures as FiguresByScenario[S]) : undefined;
}

function outcomeText(outcome: Outcome<unknown> | undefined): string {
  if (outcome === undefined) return 'not run';
  if (outcome.status === 'ok') return '';
  return `${outcome.status}: ${outcome.reason}`;
}

function table(header: string[], rows: string[][]): string {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

/** One row of a scenario's table: figures, or the reason spanning the figure columns. */
function rowCells<S extends ScenarioId>(results: RunResults, scenario: S, row: RowId, columns: number, cells: (figures: FiguresByScenario[S]) => string[]): string[] {
  const outcome = results.scenarios[scenario]?.rows[row];
  if (outcome?.status === 'ok') return [ROW_LABELS[row], ...cells(outcome.figures as FiguresByScenario[S])];
  return [ROW_LABELS[row], outcomeText(outcome), ...Array.from({ length: columns - 1 }, () => '')];
}

function peerOf(row: RowId): RowId | undefined {
  return PEER[row];
}

/** The pair's CPU per request or connection, and each side's in brackets when each was measured: which side costs what. */
export function cpuCell(total: number | null, byProcess: Record<string, number> | null | undefined): string {
  if (total === null) return '—';
  const sides = byProcess === null || byProcess === undefined ? [] : Object.values(byProcess);
  return sides.length > 1 ? `${fmt(total, 1)} (${sides.map((micros) => fmt(micros, 1)).join(' + ')})` : fmt(total, 1);
}

export function renderMarkdown(results: RunResults): string {
  const out: string[] = [];
  const roundsOf = (scenario: ScenarioId) => {
    const rounds = Number(results.scenarios[scenario]?.settings.rounds ?? 1);
    return rounds > 1 ? `, each row's median of ${rounds} rounds` : '';
  };
  const rowsOf = (scenario: ScenarioId) => ROWS.filter((row) => results.scenarios[scenario]?.rows[row] !== undefined);
  const settings = (scenario: ScenarioId) => results.scenarios[scenario]?.settings ?? {};

  if (results.scenarios.throughput) {
    const s = settings('throughput');
    const direct = figuresOf(results, 'throughput', 'direct');
    out.push(`### (a) max throughput — ${s.connections} keep-alive connections, 1 KiB responses, ${s.seconds} s${roundsOf('throughput')}`, '');
    out.push(table(['configuration', 'req/s', 'p50 ms', 'p99 ms', 'failed', 'proxy CPU µs/req (client + server side)', 'CPU % proxies / load / upstream', 'vs direct', 'vs HAProxy'], rowsOf('throughput').map((row) => rowCells(results, 'throughput', row, 8, (f) => {
      const peer = peerOf(row);
      const busy = `${f.proxyCpuPercent ?? '—'} / ${f.loadgenCpuPercent} / ${f.upstreamCpuPercent}`;
      return [fmt(f.requestsPerSecond), ms(f.latencyMs?.p50), ms(f.latencyMs?.p99), fmt(f.failed), cpuCell(f.proxyCpuMicrosPerRequest, f.proxyCpuMicrosPerRequestByProcess), busy, row === 'direct' ? '' : ratio(f.requestsPerSecond, direct?.requestsPerSecond), peer ? ratio(f.requestsPerSecond, figuresOf(results, 'throughput', peer)?.requestsPerSecond) : ''];
    }))), '');
  }
  if (results.scenarios.latency) {
    const s = settings('latency');
    const direct = figuresOf(results, 'latency', 'direct');
    out.push(`### (b) fixed rate — ${fmt(Number(s.ratePerSecond))} req/s for ${s.seconds} s over ${s.connections} keep-alive connections${roundsOf('latency')}`, '');
    out.push(table(['configuration', 'achieved req/s', 'p50 ms', 'p99 ms', 'failed', 'proxy CPU µs/req (client + server side)', 'proxy RSS MiB', 'p50 vs direct', 'CPU/req vs HAProxy'], rowsOf('latency').map((row) => rowCells(results, 'latency', row, 8, (f) => {
      const peer = peerOf(row);
      const rss = Object.entries(f.proxyRssBytes).map(([, bytes]) => mib(bytes)).join(' + ');
      return [fmt(f.achievedPerSecond), ms(f.latencyMs?.p50), ms(f.latencyMs?.p99), fmt(f.failed), cpuCell(f.proxyCpuMicrosPerRequest, f.proxyCpuMicrosPerRequestByProcess), rss || '—', row === 'direct' ? '' : ratio(f.latencyMs?.p50, direct?.latencyMs?.p50), peer ? ratio(f.proxyCpuMicrosPerRequest, figuresOf(results, 'latency', peer)?.proxyCpuMicrosPerRequest) : ''];
    }))), '');
  }
  if (results.scenarios.churn) {
    const s = settings('churn');
    const direct = figuresOf(results, 'churn', 'direct');
    out.push(`### (c) connection churn — a new TCP connection per request, ${s.concurrency} at a time, ${s.seconds} s${roundsOf('churn')}`, '');
    out.push(table(['configuration', 'connections/s', 'p50 ms', 'p99 ms', 'failed', 'proxy CPU µs/conn (client + server side)', 'vs direct', 'vs HAProxy'], rowsOf('churn').map((row) => rowCells(results, 'churn', row, 7, (f) => {
      const peer = peerOf(row);
      return [fmt(f.connectionsPerSecond), ms(f.latencyMs?.p50), ms(f.latencyMs?.p99), fmt(f.failed), cpuCell(f.proxyCpuMicrosPerConnection, f.proxyCpuMicrosPerConnectionByProcess), row === 'direct' ? '' : ratio(f.connectionsPerSecond, direct?.connectionsPerSecond), peer ? ratio(f.connectionsPerSecond, figuresOf(results, 'churn', peer)?.connectionsPerSecond) : ''];
    }))), '');
  }
  if (results.scenarios.bulk) {
    const s = settings('bulk');
    const direct = figuresOf(results, 'bulk', 'direct');
    out.push(`### (d) bulk — ${mib(Number(s.bytes))} MiB through one connection, each way${roundsOf('bulk')}`, '');
    out.push(table(['configuration', 'down MiB/s', 'up MiB/s', 'down vs direct', 'up vs direct', 'down vs HAProxy', 'up vs HAProxy'], rowsOf('bulk').map((row) => rowCells(results, 'bulk', row, 6, (f) => {
      const peer = peerOf(row);
      const p = peer ? figuresOf(results, 'bulk', peer) : undefined;
      return [fmt(f.downMiBPerSecond), fmt(f.upMiBPerSecond), row === 'direct' ? '' : ratio(f.downMiBPerSecond, direct?.downMiBPerSecond), row === 'direct' ? '' : ratio(f.upMiBPerSecond, direct?.upMiBPerSecond), peer ? ratio(f.downMiBPerSecond, p?.downMiBPerSecond) : '', peer ? ratio(f.upMiBPerSecond, p?.upMiBPerSecond) : ''];
    }))), '');
  }
  if (results.scenarios.idle) {
    const s = settings('idle');
    // HAProxy's pairs may hold fewer under an open-files limit (two descriptors per connection, bench/system/load.ts).
    const paired = s.haproxyConnections === undefined ? Number(s.connections) : Number(s.haproxyConnections);
    const through = paired === Number(s.connections) ? 'through the pair' : `through each pair (HAProxy's: ${fmt(paired)}, see the notes)`;
    out.push(`### (e) idle connections — ${fmt(Number(s.connections))} concurrent idle connections ${through}`, '');
    out.push(table(['configuration', 'client-side proxy KiB/conn', 'server-side proxy KiB/conn', 'of which V8 heap (client / server)', 'RSS idle → loaded, MiB (client + server)', 'open failures', 'vs HAProxy (worse side)'], rowsOf('idle').map((row) => rowCells(results, 'idle', row, 6, (f) => {
      const peer = peerOf(row);
      const [client, server] = Object.values(f.bytesPerConnection);
      const heap = Object.values(f.heapBytesPerConnection ?? {});
      const rss = `${Object.values(f.rssBeforeBytes).map(mib).join(' + ')} → ${Object.values(f.rssAfterBytes).map(mib).join(' + ')}`;
      return [client === undefined ? '—' : kib(client), server === undefined ? '—' : kib(server), heap.length ? heap.map((h) => kib(h.heapUsed)).join(' / ') : '—', rss, fmt(f.openFailed), peer ? ratio(f.maxBytesPerConnection, figuresOf(results, 'idle', peer)?.maxBytesPerConnection) : ''];
    }))), '');
  }
  if (results.scenarios.rotation) {
    const s = settings('rotation');
    out.push(`### (f) rotation under load — ${fmt(Number(s.ratePerSecond))} req/s for ${s.seconds} s plus ${s.newConnectionsPerSecond} new connections/s, proxies with --svid-ttl ${s.svidTtl}`, '');
    out.push(table(['configuration', 'certificates rotated', 'failed requests (in the warm-up)', 'failed new connections', 'keep-alive connections closed by the proxy', 'ok requests', 'p50 ms', 'p99 ms'], rowsOf('rotation').map((row) => rowCells(results, 'rotation', row, 7, (f) => [fmt(f.rotations), `${fmt(f.failed)}${f.warmupFailed === undefined ? '' : ` (${fmt(f.warmupFailed)})`}`, fmt(f.newConnectionsFailed), f.connectionsClosed === undefined ? '—' : fmt(f.connectionsClosed), fmt(f.ok), ms(f.latencyMs?.p50), ms(f.latencyMs?.p99)]))), '');
  }
  if (results.scenarios.footprint) {
    out.push('### (g) idle footprint — one proxy, 1,000 workloads configured, 100 on its node with their certificates', '');
    const split = (rss: number, anon: number | undefined, file: number | undefined) => [mib(rss), anon === undefined ? '—' : mib(anon), file === undefined ? '—' : mib(file)];
    const idle = (cpuPercent: number | undefined, wakeups: number | undefined) => [cpuPercent === undefined ? '—' : fmt(cpuPercent, 1), wakeups === undefined ? '—' : fmt(wakeups)];
    out.push(table(['configuration', 'RSS MiB', 'of which anonymous MiB', 'of which node binary and libraries MiB', 'V8 heap used / reserved MiB', 'ready after s', 'idle CPU, % of a core', 'main thread woken, /s'], rowsOf('footprint').flatMap((row) => {
      const cells = rowCells(results, 'footprint', row, 7, (f) => [...split(f.rssBytes, f.rssAnonBytes, f.rssFileBytes), `${mib(f.heapUsedBytes)} / ${mib(f.heapTotalBytes)}`, fmt(f.readySeconds, 1), ...idle(f.idleCpuPercent, f.idleWakeupsPerSecond)]);
      cells[0] = 'ambit proxy (node-c), idle';
      const bare = figuresOf(results, 'footprint', row)?.bareNode;
      return bare ? [cells, ['bare `node`, the same flags, idle (reference)', ...split(bare.rssBytes, bare.rssAnonBytes, bare.rssFileBytes), '—', '—', ...idle(bare.idleCpuPercent, bare.idleWakeupsPerSecond)]] : [cells];
    })), '');
  }
  const targets = checkTargets(results);
  if (targets.length > 0) {
    out.push('### targets (issue 6)', '');
    out.push(table(['target', 'measured', 'met'], targets.map((t) => [t.target, t.measured, t.met === null ? '—' : t.met ? 'yes' : `**no** (${t.shortfall})`])), '');
  }
  const floor = compareToFloor(results);
  if (floor.length > 0) {
    out.push('### the Node floor pair (a reference, not a target)', '');
    out.push(table(['figure', `${ROW_LABELS['node-l4']} vs ${ROW_LABELS['haproxy-l4']}`, `${ROW_LABELS['ambit-l4']} vs the Node floor pair`], floor.map((c) => [c.figure, c.floorVsHaproxy, c.ambitVsFloor])), '');
  }
  const sideBySide = compareSideBySide(results);
  if (sideBySide.length > 0) {
    out.push('### ambit L4 and its reference pairs loaded at the same time (--side-by-side)', '');
    out.push('The pairs on the proxy core at once, each under its own load from the one load generator: the machine\'s speed moves them alike, so their ratios hold where rows measured in turn drift apart. Throughput is shared, so only the CPU per request, connection or MiB compares them. Bulk runs for the same seconds in each pair (each way in turn), not for a byte count.', '');
    out.push(table(['figure', 'ambit L4 (median)', 'Node floor (median)', 'ambit / floor', 'HAProxy L4 (median)', 'ambit / HAProxy'], sideBySide.map((c) => [c.figure, c.ambit, c.floor.value, c.floor.ratio, c.haproxy.value, c.haproxy.ratio])), '');
  }
  return out.join('\n');
}

export interface SideBySideComparison {
  figure: string;
  /** ambit's median over the rounds, or why there is none ("—", or the failure). */
  ambit: string;
  /** Each reference pair's median, and the median of the rounds' ratios ambit / pair (with every round's); "—" when not loaded. */
  floor: { value: string; ratio: string };
  haproxy: { value: string; ratio: string };
}

/** ambit L4 against each reference pair loaded with it, figure by figure, from --side-by-side's rounds; empty when it did not run. */
export function compareSideBySide(results: RunResults): SideBySideComparison[] {
  const comparisons: SideBySideComparison[] = [];
  const none = { value: '—', ratio: '—' };
  const add = <S extends SideBySideScenario>(figure: string, scenario: S, pick: (figures: FiguresByScenario[S]) => number | null | undefined, unit: (value: number) => string) => {
    const entry = results.sideBySide?.[scenario] as { rounds: Array<SideBySideRound<S>>; failed?: string } | undefined;
    if (entry === undefined) return;
    if (entry.failed !== undefined) {
      comparisons.push({ figure, ambit: `failed: ${entry.failed}`, floor: { value: '', ratio: '' }, haproxy: { value: '', ratio: '' } });
      return;
    }
    const ambit: number[] = [];
    for (const round of entry.rounds) {
      const a = pick(round.ambit);
      if (a != null) ambit.push(a);
    }
    const against = (peer: SideBySidePeer): { value: string; ratio: string } => {
      const values: number[] = [];
      const ratios: number[] = [];
      for (const round of entry.rounds) {
        const a = pick(round.ambit);
        const figures = round.peers[peer];
        const p = figures === undefined ? undefined : pick(figures);
        if (a == null || p == null || p === 0) continue;
        values.push(p);
        ratios.push(a / p);
      }
      if (ratios.length === 0) return none;
      const each = ratios.length > 1 ? ` (rounds ${ratios.map((r) => `${fmt(r, 2)}×`).join(', ')})` : '';
      return { value: unit(median(values)), ratio: `${fmt(median(ratios), 2)}×${each}` };
    };
    comparisons.push({ figure, ambit: ambit.length === 0 ? '—' : unit(median(ambit)), floor: against('node-l4'), haproxy: against('haproxy-l4') });
  };
  const micros = (value: number) => `${fmt(value, 1)} µs`;
  add('(a) proxy CPU per request, both at full load', 'throughput', (f) => f.proxyCpuMicrosPerRequest, micros);
  add('(a) requests/s, sharing the proxy core', 'throughput', (f) => f.requestsPerSecond, (v) => fmt(v));
  add('(b) proxy CPU per request, both at the fixed rate', 'latency', (f) => f.proxyCpuMicrosPerRequest, micros);
  add('(b) p50 latency, ms', 'latency', (f) => f.latencyMs?.p50, ms);
  add('(c) proxy CPU per churned connection', 'churn', (f) => f.proxyCpuMicrosPerConnection, micros);
  add('(c) connections/s, sharing the proxy core', 'churn', (f) => f.connectionsPerSecond, (v) => fmt(v));
  add('(d) proxy CPU per MiB down, both carrying bytes', 'bulk', (f) => f.proxyCpuMicrosPerMiB.down, micros);
  add('(d) proxy CPU per MiB up, both carrying bytes', 'bulk', (f) => f.proxyCpuMicrosPerMiB.up, micros);
  add('(d) MiB/s down, sharing the proxy core', 'bulk', (f) => f.downMiBPerSecond, (v) => fmt(v));
  add('(d) MiB/s up, sharing the proxy core', 'bulk', (f) => f.upMiBPerSecond, (v) => fmt(v));
  return comparisons;
}

export interface FloorComparison {
  figure: string;
  /** The Node floor pair's figure over HAProxy's L4 pair's, and ambit L4's over the floor's: "—" when not measured. */
  floorVsHaproxy: string;
  ambitVsFloor: string;
}

/**
 * Where ambit trails HAProxy, how much of the gap a minimal Node pair has too: the floor against HAProxy and ambit
 * against the floor, each by the median of the rounds' paired ratios (or the one ratio without rounds). Empty when
 * the floor pair did not run.
 */
export function compareToFloor(results: RunResults): FloorComparison[] {
  const comparisons: FloorComparison[] = [];
  const ratio = <S extends ScenarioId>(scenario: S, row: RowId, peer: RowId, pick: (figures: FiguresByScenario[S]) => number | null | undefined): string => {
    const mine = figuresOf(results, scenario, row);
    const theirs = figuresOf(results, scenario, peer);
    const value = mine === undefined ? undefined : pick(mine);
    const reference = theirs === undefined ? undefined : pick(theirs);
    if (value == null || reference == null || reference === 0) return '—';
    const ratios = pairedRatios(results, scenario, row, peer, pick);
    return ratios === undefined ? `${fmt(value / reference, 2)}×` : `${fmt(median(ratios), 2)}× (rounds ${ratios.map((x) => `${fmt(x, 2)}×`).join(', ')})`;
  };
  const add = <S extends ScenarioId>(figure: string, scenario: S, pick: (figures: FiguresByScenario[S]) => number | null | undefined) => {
    if (results.scenarios[scenario]?.rows['node-l4'] === undefined) return;
    comparisons.push({ figure, floorVsHaproxy: ratio(scenario, 'node-l4', 'haproxy-l4', pick), ambitVsFloor: ratio(scenario, 'ambit-l4', 'node-l4', pick) });
  };
  add('(a) max throughput, req/s', 'throughput', (f) => f.requestsPerSecond);
  add('(b) proxy CPU per request at the fixed rate', 'latency', (f) => f.proxyCpuMicrosPerRequest);
  add('(c) churn, connections/s', 'churn', (f) => f.connectionsPerSecond);
  add('(c) proxy CPU per churned connection', 'churn', (f) => f.proxyCpuMicrosPerConnection);
  add('(d) bulk down, MiB/s', 'bulk', (f) => f.downMiBPerSecond);
  add('(d) bulk up, MiB/s', 'bulk', (f) => f.upMiBPerSecond);
  add('(e) RSS per idle connection, worse side', 'idle', (f) => f.maxBytesPerConnection);
  return comparisons;
}

export interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | null;
  shortfall: string;
}

/**
 * A row's figure against its peer's, round by round: rounds ran the rows side by side, so each round's ratio
 * compares the two under the same machine speed. undefined without rounds (or when a round lacks the figure).
 */
function pairedRatios<S extends ScenarioId>(results: RunResults, scenario: S, row: RowId, peer: RowId, pick: (figures: FiguresByScenario[S]) => number | null | undefined): number[] | undefined {
  const rounds = results.scenarios[scenario]?.rounds as Partial<Record<RowId, Array<FiguresByScenario[S]>>> | undefined;
  const mine = rounds?.[row];
  const theirs = rounds?.[peer];
  if (mine === undefined || theirs === undefined || mine.length !== theirs.length) return undefined;
  const ratios: number[] = [];
  for (let i = 0; i < mine.length; i++) {
    const value = pick(mine[i] as FiguresByScenario[S]);
    const reference = pick(theirs[i] as FiguresByScenario[S]);
    if (value == null || reference == null || reference === 0) return undefined;
    ratios.push(value / reference);
  }
  return ratios;
}

/** A row's figures in every round of a scenario, or its one run's. */
function figuresOfRounds<S extends ScenarioId>(results: RunResults, scenario: S, row: RowId): Array<FiguresByScenario[S]> {
  const entry = results.scenarios[scenario];
  const rounds = (entry?.rounds as Partial<Record<RowId, Array<FiguresByScenario[S]>>> | undefined)?.[row];
  const outcome = entry?.rows[row];
  return rounds ?? (outcome?.status === 'ok' ? [outcome.figures as FiguresByScenario[S]] : []);
}

/** Requests (or connections) a row failed in a scenario, its warm-ups' included: over all its rounds, or its one run. */
function failedOf(results: RunResults, scenario: ScenarioId, row: RowId): number {
  let failed = 0;
  for (const figures of figuresOfRounds(results, scenario, row) as Array<{ failed?: unknown; warmupFailed?: unknown }>) {
    if (typeof figures.failed === 'number') failed += figures.failed;
    if (typeof figures.warmupFailed === 'number') failed += figures.warmupFailed;
  }
  return failed;
}

/**
 * Why a comparison of `row` against `peer` in `scenario` cannot be read as the ratio: a target is missed when ambit's
 * row failed, failed requests or did not keep the fixed rate (its figure then is not the one the target asks for), and
 * not measured when the peer did (a peer's failures flatter ambit). Null when both rows are sound.
 */
function unsound(results: RunResults, scenario: ScenarioId, row: RowId, peer: RowId | null): { met: false | null; measured: string } | null {
  const rows = results.scenarios[scenario]?.rows ?? {};
  const check = (which: RowId): string | null => {
    const outcome = rows[which];
    if (outcome === undefined) return 'not run';
    if (outcome.status !== 'ok') return `${outcome.status}: ${outcome.reason}`;
    const failed = failedOf(results, scenario, which);
    if (failed > 0) return `${fmt(failed)} failed`;
    if (scenario === 'latency') {
      // Every round's: each one's CPU enters the median ratio.
      const rounds = figuresOfRounds(results, 'latency', which);
      const slow = rounds.findIndex((f) => f.achievedPerSecond < f.ratePerSecond * 0.95);
      const f = rounds[slow];
      if (f !== undefined) return `reached ${fmt(f.achievedPerSecond)} of ${fmt(f.ratePerSecond)} req/s${rounds.length > 1 ? ` in round ${slow + 1} of ${rounds.length}` : ''}`;
    }
    return null;
  };
  const mine = check(row);
  if (mine !== null) return { met: rows[row] === undefined || rows[row]?.status === 'skipped' || rows[row]?.status === 'n/a' ? null : false, measured: `${ROW_LABELS[row]}: ${mine}` };
  const theirs = peer === null ? null : check(peer);
  if (peer !== null && theirs !== null) return { met: null, measured: `not measured: ${ROW_LABELS[peer]}: ${theirs}` };
  return null;
}

/**
 * The issue's targets against this run; `met: null` when a figure it needs is missing, `false` when ambit's row failed
 * (a proxy gone, failed requests, the fixed rate not kept) whatever its figure reads.
 */
export function checkTargets(results: RunResults): TargetCheck[] {
  const checks: TargetCheck[] = [];
  /** Pushes the verdict `unsound` gives, if any: the comparison is then not made. */
  const refused = (target: string, scenario: ScenarioId, row: RowId, peer: RowId | null): boolean => {
    const why = unsound(results, scenario, row, peer);
    if (why === null) return false;
    checks.push({ target, measured: why.measured, met: why.met, shortfall: why.met === false ? why.measured : '' });
    return true;
  };
  /** With rounds, the median of the paired ratios decides; the figures shown are each row's median round. */
  const ratioText = (r: number, ratios: number[] | undefined) => (ratios === undefined ? `${fmt(r, 2)}×` : `${fmt(r, 2)}× (median of ${ratios.length} rounds side by side: ${ratios.map((x) => `${fmt(x, 2)}×`).join(', ')})`);
  /**
   * `row`'s figure (`pick`) against `peer`'s, once both ran cleanly: by the median paired ratio when the rows ran in
   * rounds, else by the one ratio.
   */
  const versus = <S extends ScenarioId>(target: string, scenario: S, row: RowId, peer: RowId, pick: (figures: FiguresByScenario[S]) => number | null | undefined, unit: (v: number) => string, meets: (r: number) => boolean, shortfall: (r: number) => string) => {
    if (refused(target, scenario, row, peer)) return;
    const mine = figuresOf(results, scenario, row);
    const theirs = figuresOf(results, scenario, peer);
    const value = mine === undefined ? undefined : (pick(mine) ?? undefined);
    const reference = theirs === undefined ? undefined : (pick(theirs) ?? undefined);
    if (value === undefined || reference === undefined || reference === 0) {
      checks.push({ target, measured: 'not measured', met: null, shortfall: '' });
      return;
    }
    const ratios = pairedRatios(results, scenario, row, peer, pick);
    // A figure of no CPU, requests or bytes is a measurement that went wrong (a process not read), never a result.
    if (!(value > 0) || !(reference > 0) || (ratios !== undefined && !ratios.every((x) => x > 0))) {
      checks.push({ target, measured: `not measured: a figure that is not positive (${fmt(value, 1)} against ${fmt(reference, 1)})`, met: null, shortfall: '' });
      return;
    }
    const r = ratios === undefined ? value / reference : median(ratios);
    checks.push({ target, measured: `${ratioText(r, ratios)}; ${ratios === undefined ? '' : 'median rounds '}${unit(value)} vs ${unit(reference)}`, met: meets(r), shortfall: shortfall(r) });
  };
  /** At least `factor` times the peer's figure. */
  const atLeast = <S extends ScenarioId>(target: string, scenario: S, row: RowId, peer: RowId, pick: (figures: FiguresByScenario[S]) => number | null | undefined, factor: number) =>
    versus(target, scenario, row, peer, pick, (v) => fmt(v, 1), (r) => r >= factor, (r) => `${fmt((1 - r / factor) * 100, 0)} % short`);
  /** No larger than the peer's figure: met when the (median) ratio is at most 1. */
  const notAbove = <S extends ScenarioId>(target: string, scenario: S, row: RowId, peer: RowId, pick: (figures: FiguresByScenario[S]) => number | null | undefined, unit: (v: number) => string) =>
    versus(target, scenario, row, peer, pick, unit, (r) => r <= 1, (r) => `${fmt((r - 1) * 100, 0)} % over`);
  /** ambit L4's figure within a fixed limit. */
  const atMost = <S extends ScenarioId>(target: string, scenario: S, pick: (figures: FiguresByScenario[S]) => number, limit: number, unit: (v: number) => string) => {
    if (refused(target, scenario, 'ambit-l4', null)) return;
    const figures = figuresOf(results, scenario, 'ambit-l4');
    const value = figures === undefined ? undefined : pick(figures);
    if (value === undefined) {
      checks.push({ target, measured: 'not measured', met: null, shortfall: '' });
      return;
    }
    // Memory that shrank, or none read, is a measurement gone wrong, never a result under the limit.
    if (!(value > 0)) {
      checks.push({ target, measured: `not measured: a figure that is not positive (${unit(value)})`, met: null, shortfall: '' });
      return;
    }
    checks.push({ target, measured: `${unit(value)} (limit ${unit(limit)})`, met: value <= limit, shortfall: `${fmt((value / limit - 1) * 100, 0)} % over` });
  };
  if (results.scenarios.throughput) {
    const rps = (f: ThroughputFigures) => f.requestsPerSecond;
    atLeast('ambit L4 max throughput ≥ 1.3× HAProxy L4 pair', 'throughput', 'ambit-l4', 'haproxy-l4', rps, 1.3);
    atLeast('ambit L7 (1,000 policies) throughput ≥ 1.0× HAProxy L7 pair', 'throughput', 'ambit-l7', 'haproxy-l7', rps, 1.0);
  }
  if (results.scenarios.latency) notAbove('ambit L4 CPU per request ≤ HAProxy L4 pair (at 2,000 req/s)', 'latency', 'ambit-l4', 'haproxy-l4', (f) => f.proxyCpuMicrosPerRequest, (v) => `${fmt(v, 1)} µs`);
  if (results.scenarios.churn) atLeast('churn ≥ 4× HAProxy L4 pair', 'churn', 'ambit-l4', 'haproxy-l4', (f) => f.connectionsPerSecond, 4);
  if (results.scenarios.bulk) {
    atLeast('bulk ≥ 0.9× HAProxy L4 pair (down)', 'bulk', 'ambit-l4', 'haproxy-l4', (f) => f.downMiBPerSecond, 0.9);
    atLeast('bulk ≥ 0.9× HAProxy L4 pair (up)', 'bulk', 'ambit-l4', 'haproxy-l4', (f) => f.upMiBPerSecond, 0.9);
  }
  if (results.scenarios.idle) atMost('idle: ≤ 10 KiB RSS per proxied connection per proxy', 'idle', (f) => f.maxBytesPerConnection, 10 * 1024, (v) => `${kib(v)} KiB`);
  if (results.scenarios.footprint) atMost('idle proxy, 1,000 workloads (100 local) ≤ 64 MiB RSS', 'footprint', (f) => f.rssBytes, 64 * 1024 * 1024, (v) => `${mib(v)} MiB`);
  if (results.scenarios.rotation) {
    for (const row of ['ambit-l4', 'ambit-l7'] as const) {
      const target = `rotation under load, ${ROW_LABELS[row]}: zero failed requests`;
      // A rotation run that failed (a proxy gone, the load not finished) is a miss, not an absence.
      if (refused(target, 'rotation', row, null)) continue;
      const f = figuresOf(results, 'rotation', row) as RotationFigures;
      const failed = f.failed + f.newConnectionsFailed + (f.warmupFailed ?? 0);
      const closed = f.connectionsClosed ?? 0;
      const cut = closed === 0 ? '' : `, ${fmt(closed)} connections closed by the proxy`;
      const shortfall = f.rotations === 0 ? 'no rotation happened' : [failed > 0 ? `${fmt(failed)} failed` : null, closed > 0 ? `${fmt(closed)} connections closed` : null].filter((x) => x !== null).join(', ');
      checks.push({ target, measured: `${fmt(failed)} failed${f.warmupFailed ? ` (${fmt(f.warmupFailed)} in the warm-up)` : ''}, ${fmt(f.ok + f.failed + f.newConnectionsOk + f.newConnectionsFailed)} in the measured run${cut}, ${fmt(f.rotations)} certificates rotated`, met: failed === 0 && closed === 0 && f.rotations > 0, shortfall });
    }
  }
  return checks;
}
