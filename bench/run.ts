// `npm run bench`: the system benchmark. Brings up on loopback an upstream (nginx, or a Node stand-in),
// ambit (CA + two node proxies), and two HAProxy pairs, runs every scenario against every configuration
// side by side in one run, prints one Markdown table per scenario with ratios against direct and against
// HAProxy, writes every figure to bench/results/, and tears everything down, on failure and Ctrl-C too.
// What each scenario measures: bench/README.md.
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { Socket } from 'node:net';
import { initCa } from '../src/identity/ca/store.ts';
import { LONG_RUNNING_NODE_FLAGS, longRunningEnv } from '../src/cli/node-flags.ts';
import { buildIsStale, ensureBuilt } from './system/build.ts';
import { benchConfig, footprintConfig, httpText, metricTotal, startAmbit } from './system/ambit.ts';
import type { AmbitMesh } from './system/ambit.ts';
import { haproxyOpenssl, haproxyVersion, issueCertificates, startHaproxyPair } from './system/haproxy.ts';
import type { HaproxyCertificates, HaproxyPair } from './system/haproxy.ts';
import { AMBIT, CHURN_SOURCES, FOOTPRINT, HAPROXY, NODE_FLOOR, TRUST_DOMAIN, UPSTREAM } from './system/layout.ts';
import { startNodeFloorPair } from './system/node-floor.ts';
import type { NodeFloorPair } from './system/node-floor.ts';
import type { HostPort } from './system/layout.ts';
import { bulk, bulkFor, churn, idleConnectionCounts, keepAliveConnections, openAll, openIdle, paced, throughput, trickle } from './system/load.ts';
import type { BulkResult } from './system/load.ts';
import { machineInfo } from './system/machine.ts';
import { Processes, cpuMicros, hasCommand, idleCost, isListening, machineCpuMicros, openFilesLimit, pinSelf, rssBytes, rssParts, sleep, treeCpuMicros } from './system/processes.ts';
import { Progress } from './system/progress.ts';
import { ROWS, ROW_LABELS, SCENARIOS, SCENARIO_LETTERS, SIDE_BY_SIDE_PEERS, SIDE_BY_SIDE_SCENARIOS, checkTargets, compareSideBySide, compareToFloor, recordRounds, renderMarkdown } from './system/report.ts';
import type { BareNodeFootprint, FiguresByScenario, LoadScenario, Outcome, RowId, RunResults, ScenarioId, SideBySidePeer, SideBySideRound, SideBySideScenario } from './system/report.ts';
import { nginxVersion, startUpstream } from './system/upstream.ts';
import type { Upstream } from './system/upstream.ts';

const HERE = fileURLToPath(new URL('.', import.meta.url));

const HELP = `usage: npm run bench -- [options]

Runs every configuration side by side on loopback (127.70.x.y): direct, ambit L4, ambit L7 (1,000
AuthorizationPolicies), HAProxy L4 pair, HAProxy L7 pair; prints Markdown tables with ratios against
direct and HAProxy, and writes every figure to bench/results/DATE-MODE.json.

  --quick                every scenario briefly (1,000 idle connections, 64 MiB bulk): under 2 minutes
  --scenario LIST        a,b,c,d,e,f,g or throughput,latency,churn,bulk,idle,rotation,footprint (default all)
  --rows LIST            direct,ambit-l4,ambit-l7,node-l4,haproxy-l4,haproxy-l7 (default all; node-l4 is the
                         Node floor pair: a minimal Node HBONE proxy pair, for reference)
  --duration S           seconds of load per row for (a), (b), (c) and (f)
  --connections N        keep-alive connections for (a) and (b), concurrent clients for (c) (default 32)
  --rate N               requests per second for (b) and (f) (default 2000)
  --idle N               idle connections for (e) (default 10000, --quick 1000)
  --bulk-mib N           MiB each way for (d) (default 1024, --quick 64)
  --rounds N             run (a)-(d) N times, the rows taking turns each round, and report each row's median
                         round and each target's median ratio of rows measured side by side (default 3, --quick 1)
  --without LIST         leave peers out: haproxy, nginx (their rows are reported skipped)
  --results-dir DIR      where the JSON goes (default bench/results)
  --access-log           run ambit at log level info (one access-log line per connection) and give
                         HAProxy the same (a log line per connection); default: neither logs
  --side-by-side         after each of (a)-(d), run it again with ambit L4, the Node floor pair and the
                         HAProxy L4 pair (those of --rows) loaded at the same time (--rounds times): their
                         CPU per request, connection or MiB compared under the same machine speed ((d) then
                         runs each way for --duration seconds, not for --bulk-mib)
  --cpu-prof             profile the ambit proxies (node --cpu-prof) into DIR/profiles-DATE, the Node floor
                         pair's into DIR/profiles-DATE/node-floor
  --no-pin               do not pin (default: load generator and upstream on CPU 0, the proxy pair on CPU 1)
  --no-setup             do not run bench/setup.sh when haproxy or nginx is missing
  --keep                 keep the working directory (configurations, certificates, every process's log)
`;

interface Plan {
  mode: 'quick' | 'full';
  scenarios: ScenarioId[];
  rows: RowId[];
  seconds: { throughput: number; latency: number; churn: number; rotation: number; warmup: number };
  connections: number;
  churnConcurrency: number;
  ratePerSecond: number;
  newConnectionsPerSecond: number;
  svidTtl: string;
  bulkBytes: number;
  /** Rounds of (a)-(d): the VM's speed drifts over minutes, so rows take turns and each round pairs them in time. */
  rounds: number;
  /** (a)-(c) again with ambit L4 and the Node floor pair loaded at once: a ratio the VM's drift cannot move. */
  sideBySide: boolean;
  idleRequested: number;
  /** (e)'s connections for a pair whose processes hold one descriptor per connection (ambit, the Node floor). */
  idleConnections: number;
  /** The same for HAProxy's pairs, whose processes hold two per connection (an accepted one and their own). */
  idleConnectionsPaired: number;
  without: Set<string>;
  resultsDir: string;
  accessLog: boolean;
  cpuProf: boolean;
  pin: boolean;
  setup: boolean;
  keep: boolean;
}

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

function parsePlan(argv: string[]): Plan {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean' }, scenario: { type: 'string' }, rows: { type: 'string' }, duration: { type: 'string' },
      connections: { type: 'string' }, rate: { type: 'string' }, idle: { type: 'string' }, 'bulk-mib': { type: 'string' }, rounds: { type: 'string' },
      without: { type: 'string' }, 'results-dir': { type: 'string' }, 'access-log': { type: 'boolean' }, 'cpu-prof': { type: 'boolean' },
      'side-by-side': { type: 'boolean' }, 'no-pin': { type: 'boolean' }, 'no-setup': { type: 'boolean' }, keep: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const quick = values.quick === true;
  const number = (text: string | undefined, name: string, fallback: number) => {
    if (text === undefined) return fallback;
    const value = Number(text);
    if (!Number.isFinite(value) || value <= 0) fail(`--${name} must be a positive number, got "${text}"`);
    return value;
  };
  const scenarios: ScenarioId[] = values.scenario === undefined ? [...SCENARIOS] : values.scenario.split(',').map((name) => {
    const found = SCENARIOS.find((id) => id === name.trim() || SCENARIO_LETTERS[id] === name.trim());
    return found ?? fail(`unknown scenario "${name}" (${SCENARIOS.map((id) => `${SCENARIO_LETTERS[id]}|${id}`).join(', ')})`);
  });
  const rows: RowId[] = values.rows === undefined ? [...ROWS] : values.rows.split(',').map((name) => (ROWS as readonly string[]).includes(name.trim()) ? (name.trim() as RowId) : fail(`unknown row "${name}" (${ROWS.join(', ')})`));
  const duration = values.duration === undefined ? undefined : number(values.duration, 'duration', 10);
  const connections = Math.round(number(values.connections, 'connections', 32));
  const idleRequested = Math.round(number(values.idle, 'idle', quick ? 1000 : 10_000));
  const rounds = number(values.rounds, 'rounds', quick ? 1 : 3);
  if (!Number.isInteger(rounds)) fail(`--rounds must be a whole number, got "${values.rounds}"`);
  const sideBySide = values['side-by-side'] === true;
  if (sideBySide && !(rows.includes('ambit-l4') && rows.some((row) => (SIDE_BY_SIDE_PEERS as readonly string[]).includes(row)))) fail(`--side-by-side loads ambit-l4 at once with node-l4 and/or haproxy-l4: --rows must include ambit-l4 and one of them (got ${rows.join(',')})`);
  if (sideBySide && !scenarios.some((id) => (SIDE_BY_SIDE_SCENARIOS as readonly string[]).includes(id))) fail('--side-by-side applies to (a) throughput, (b) latency, (c) churn and (d) bulk: --scenario includes none of them');
  return {
    mode: quick ? 'quick' : 'full',
    scenarios: SCENARIOS.filter((id) => scenarios.includes(id)),
    rows: ROWS.filter((id) => rows.includes(id)),
    seconds: {
      throughput: duration ?? (quick ? 2 : 10),
      latency: duration ?? (quick ? 2 : 10),
      churn: duration ?? (quick ? 2 : 10),
      // Long enough for certificates of --svid-ttl 4s to be renewed (at half-life) a few times.
      rotation: Math.max(duration ?? (quick ? 4 : 20), 4),
      warmup: quick ? 0.5 : 2,
    },
    connections,
    churnConcurrency: connections,
    ratePerSecond: number(values.rate, 'rate', 2000),
    newConnectionsPerSecond: 50,
    svidTtl: '4s',
    bulkBytes: Math.round(number(values['bulk-mib'], 'bulk-mib', quick ? 64 : 1024) * 1024 * 1024),
    rounds,
    sideBySide,
    idleRequested,
    idleConnections: idleRequested,
    idleConnectionsPaired: idleRequested,
    without: new Set((values.without ?? '').split(',').map((s) => s.trim()).filter(Boolean)),
    resultsDir: values['results-dir'] ?? join(HERE, 'results'),
    accessLog: values['access-log'] === true,
    cpuProf: values['cpu-prof'] === true,
    pin: values['no-pin'] !== true,
    setup: values['no-setup'] !== true,
    keep: values.keep === true,
  };
}

/**
 * Open files: the harness, the hold server and each proxy hold one descriptor per idle connection, and
 * HAProxy's client side two. Raise the limit by re-executing under `ulimit -n` when the hard limit allows;
 * otherwise scale the idle scenario down and say so.
 */
function descriptorsNeeded(plan: Plan): number {
  return plan.idleRequested * 2 + 512;
}

function reexecWithMoreFiles(needed: number): boolean {
  if (process.env.AMBIT_BENCH_NOFILE === '1') return false;
  if (spawnSync('sh', ['-c', `ulimit -n ${needed}`], { stdio: 'ignore' }).status !== 0) return false;
  const child = spawn('sh', ['-c', `ulimit -n ${needed} && exec "$0" "$@"`, process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, AMBIT_BENCH_NOFILE: '1' },
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => child.kill(signal));
  child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
  return true;
}

interface RowTarget {
  http: HostPort;
  bulk: HostPort | null;
  hold: HostPort | null;
  /** The processes under test; ambit's carry a /metrics URL (Node heap figures for the idle scenario). */
  proxies: Array<{ name: string; pid: number; metricsUrl?: string }>;
}

interface Context {
  plan: Plan;
  processes: Processes;
  progress: Progress;
  upstream: Upstream;
  targets: Map<RowId, RowTarget>;
  results: RunResults;
  /** Foreign CPU (other processes, steal) during each measurement, % of one core. */
  noise: number[];
  /**
   * --side-by-side: the pairs loaded at once. Their CPU is the benchmark's own, not other processes': counted as
   * foreign, each pair's measurement said the machine was disturbed by the pairs beside it.
   */
  loadedAtOnce?: readonly RowTarget[];
  /** The first ambit CA's directory: its root signs the HAProxy certificates too. */
  caDir?: string;
}

const NOT_A_BYTE_STREAM = 'an HTTP-inspected port carries HTTP requests, not a raw byte stream';

/** Rows each scenario applies to, and why not the others. */
function notApplicable(scenario: ScenarioId, row: RowId): string | null {
  const l7 = row === 'ambit-l7' || row === 'haproxy-l7';
  switch (scenario) {
    case 'bulk': return l7 ? NOT_A_BYTE_STREAM : null;
    case 'idle': return l7 ? NOT_A_BYTE_STREAM : row === 'direct' ? 'no proxy to measure' : null;
    case 'rotation': return row === 'direct' ? 'no certificates' : row.startsWith('haproxy') ? "HAProxy's certificates are files loaded at start; not rotated here" : row === 'node-l4' ? 'a reference pair with fixed certificates' : null;
    case 'footprint': return row === 'ambit-l4' ? null : 'ambit only';
    default: return null;
  }
}

/** CPU each of the row's proxy processes has used so far, µs, by name (client side first). */
function proxyCpu(target: RowTarget): Record<string, number> {
  const used: Record<string, number> = {};
  for (const proxy of target.proxies) used[proxy.name] = cpuMicros(proxy.pid);
  return used;
}

const sum = (values: Record<string, number>): number => Object.values(values).reduce((total, value) => total + value, 0);

/** Each process's CPU per request or connection, µs; null for a row with no proxy. */
function perProcess(target: RowTarget, cpu: CpuUse, count: number): Record<string, number> | null {
  if (target.proxies.length === 0) return null;
  const result: Record<string, number> = {};
  for (const [name, micros] of Object.entries(cpu.byProcess)) result[name] = round(micros / count, 2);
  return result;
}

/** V8 heap in use and external (Buffer) memory of each ambit proxy, from prom-client's process metrics. */
async function heapOf(target: RowTarget): Promise<Record<string, { heapUsed: number; external: number }>> {
  const result: Record<string, { heapUsed: number; external: number }> = {};
  for (const proxy of target.proxies) {
    if (!proxy.metricsUrl) continue;
    const text = await httpText(proxy.metricsUrl);
    result[proxy.name] = { heapUsed: metricTotal(text, 'nodejs_heap_size_used_bytes'), external: metricTotal(text, 'nodejs_external_memory_bytes') };
  }
  return result;
}

function rssOf(target: RowTarget): Record<string, number> {
  const result: Record<string, number> = {};
  for (const proxy of target.proxies) result[proxy.name] = rssBytes(proxy.pid);
  return result;
}

interface CpuMark {
  proxy: Record<string, number>;
  /** The CPU of the other pairs loaded at the same time (--side-by-side), µs. */
  besides: number;
  harness: number;
  upstream: number;
  machine: number;
  steal: number;
  atMs: number;
}

function markCpu(ctx: Context, target: RowTarget): CpuMark {
  const own = process.cpuUsage();
  const machine = machineCpuMicros();
  const upstream = treeCpuMicros(ctx.upstream.httpPid) + (ctx.upstream.tcpPid === ctx.upstream.httpPid ? 0 : cpuMicros(ctx.upstream.tcpPid));
  let besides = 0;
  for (const other of ctx.loadedAtOnce ?? []) if (other !== target) besides += sum(proxyCpu(other));
  return { proxy: proxyCpu(target), besides, harness: own.user + own.system, upstream, machine: machine.busy, steal: machine.steal, atMs: performance.now() };
}

interface CpuUse {
  /** CPU the row's proxies used, µs: together, and each by name. */
  proxy: number;
  byProcess: Record<string, number>;
  /** Each in % of one core over the measurement. */
  harnessPercent: number;
  upstreamPercent: number;
  proxyPercent: number;
  /** CPU used by processes that are not part of the benchmark (and stolen by the hypervisor): noise. */
  otherPercent: number;
  stealPercent: number;
}

function cpuSince(ctx: Context, target: RowTarget, mark: CpuMark): CpuUse {
  const now = markCpu(ctx, target);
  const wallMicros = (now.atMs - mark.atMs) * 1000;
  const percent = (micros: number) => round((micros / wallMicros) * 100, 0);
  const byProcess: Record<string, number> = {};
  for (const [name, micros] of Object.entries(now.proxy)) byProcess[name] = micros - (mark.proxy[name] ?? 0);
  const proxy = sum(byProcess);
  const ours = proxy + (now.besides - mark.besides) + (now.harness - mark.harness) + (now.upstream - mark.upstream);
  const use: CpuUse = {
    proxy,
    byProcess,
    harnessPercent: percent(now.harness - mark.harness),
    upstreamPercent: percent(now.upstream - mark.upstream),
    proxyPercent: percent(proxy),
    otherPercent: Math.max(0, percent(now.machine - mark.machine - ours)),
    stealPercent: percent(now.steal - mark.steal),
  };
  ctx.noise.push(use.otherPercent + use.stealPercent);
  return use;
}

/** Which of the row's proxy processes has exited, if one has: its CPU can no longer be read. */
function goneProxy(target: RowTarget): string | null {
  for (const proxy of target.proxies) if (rssBytes(proxy.pid) === 0) return `proxy ${proxy.name} (pid ${proxy.pid}) is gone`;
  return null;
}

type Runner<S extends ScenarioId> = (ctx: Context, row: RowId, target: RowTarget) => Promise<Outcome<FiguresByScenario[S]>>;

const round = (value: number, digits = 2) => Math.round(value * 10 ** digits) / 10 ** digits;

const runThroughput: Runner<'throughput'> = async (ctx, row, target) => {
  const { plan } = ctx;
  const warm = await throughput(target.http, plan.connections, plan.seconds.warmup);
  if (warm.ok === 0) return { status: 'failed', reason: `no successful response while warming up (${warm.failed} failed)` };
  const mark = markCpu(ctx, target);
  const result = await throughput(target.http, plan.connections, plan.seconds.throughput);
  const cpu = cpuSince(ctx, target, mark);
  if (result.ok === 0) return { status: 'failed', reason: `no successful response (${result.failed} failed)` };
  return {
    status: 'ok',
    figures: {
      requestsPerSecond: round(result.requestsPerSecond, 0),
      ok: result.ok,
      failed: result.failed,
      warmupFailed: warm.failed,
      seconds: result.seconds,
      latencyMs: result.latencyMs,
      proxyCpuMicrosPerRequest: target.proxies.length ? round(cpu.proxy / result.ok, 2) : null,
      proxyCpuMicrosPerRequestByProcess: perProcess(target, cpu, result.ok),
      loadgenCpuPercent: cpu.harnessPercent,
      upstreamCpuPercent: cpu.upstreamPercent,
      proxyCpuPercent: target.proxies.length ? cpu.proxyPercent : null,
      otherCpuPercent: cpu.otherPercent + cpu.stealPercent,
    },
  };
};

const runLatency: Runner<'latency'> = async (ctx, _row, target) => {
  const { plan } = ctx;
  // The warm-up's connections carry the measured run: (b) is a fixed rate over open keep-alive connections (opening
  // them is (c)'s), and their setup would otherwise fall into its first moments, a TLS handshake each for HAProxy.
  const connections = keepAliveConnections(target.http, plan.connections);
  let result: Awaited<ReturnType<typeof paced>>;
  let warm: Awaited<ReturnType<typeof paced>>;
  let cpu: CpuUse;
  try {
    await openAll(connections);
    warm = await paced(target.http, plan.ratePerSecond, plan.seconds.warmup, connections);
    const mark = markCpu(ctx, target);
    result = await paced(target.http, plan.ratePerSecond, plan.seconds.latency, connections);
    cpu = cpuSince(ctx, target, mark);
  } finally {
    for (const connection of connections) connection.close();
  }
  if (result.ok === 0) return { status: 'failed', reason: `no successful response (${result.failed} failed)` };
  return {
    status: 'ok',
    figures: {
      ratePerSecond: plan.ratePerSecond,
      seconds: round(result.seconds),
      ok: result.ok,
      failed: result.failed,
      warmupFailed: warm.failed,
      achievedPerSecond: round(result.achievedPerSecond, 0),
      latencyMs: result.latencyMs,
      proxyCpuMicrosPerRequest: target.proxies.length ? round(cpu.proxy / result.ok, 2) : null,
      proxyCpuMicrosPerRequestByProcess: perProcess(target, cpu, result.ok),
      proxyRssBytes: rssOf(target),
      otherCpuPercent: cpu.otherPercent + cpu.stealPercent,
    },
  };
};

const runChurn: Runner<'churn'> = async (ctx, _row, target) => {
  const { plan } = ctx;
  const mark = markCpu(ctx, target);
  const result = await churn(target.http, plan.churnConcurrency, plan.seconds.churn, CHURN_SOURCES);
  const cpu = cpuSince(ctx, target, mark);
  if (result.ok === 0) return { status: 'failed', reason: `no connection completed a request (${result.failed} failed)` };
  return {
    status: 'ok',
    figures: {
      connectionsPerSecond: round(result.connectionsPerSecond, 0),
      ok: result.ok,
      failed: result.failed,
      seconds: round(result.seconds),
      latencyMs: result.latencyMs,
      proxyCpuMicrosPerConnection: target.proxies.length ? round(cpu.proxy / result.ok, 2) : null,
      proxyCpuMicrosPerConnectionByProcess: perProcess(target, cpu, result.ok),
      otherCpuPercent: cpu.otherPercent + cpu.stealPercent,
    },
  };
};

const runBulk: Runner<'bulk'> = async (ctx, _row, target) => {
  if (!target.bulk) return { status: 'n/a', reason: NOT_A_BYTE_STREAM };
  const bytes = ctx.plan.bulkBytes;
  // At least 10 MiB/s, or the row is broken rather than slow.
  const timeoutMs = 30_000 + (bytes / (10 * 1024 * 1024)) * 1000;
  const source = target.bulk;
  return { status: 'ok', figures: await bothWays(ctx, target, (direction) => bulk(source, direction, bytes, timeoutMs)) };
};

/**
 * (d) for --side-by-side: each way for the same seconds as (a), not a byte count, so that the pairs loaded at once
 * are loaded for the same time (with a byte count the fastest finishes first and the others run on alone).
 */
const runBulkTimed: Runner<'bulk'> = async (ctx, _row, target) => {
  if (!target.bulk) return { status: 'n/a', reason: NOT_A_BYTE_STREAM };
  const ms = ctx.plan.seconds.throughput * 1000;
  const source = target.bulk;
  const figures = await bothWays(ctx, target, (direction) => bulkFor(source, direction, ms, BULK_STALL_MS));
  return { status: 'ok', figures: { ...figures, seconds: ctx.plan.seconds.throughput } };
};

/** A timed transfer that moves nothing for this long has failed (a stalled pair, not a slow one). */
const BULK_STALL_MS = 5_000;

/** (d)'s two transfers, down then up, each with the pair's CPU over it. */
async function bothWays(ctx: Context, target: RowTarget, move: (direction: 'down' | 'up') => Promise<BulkResult>): Promise<FiguresByScenario['bulk']> {
  let mark = markCpu(ctx, target);
  const down = await move('down');
  const downCpu = cpuSince(ctx, target, mark);
  mark = markCpu(ctx, target);
  const up = await move('up');
  const upCpu = cpuSince(ctx, target, mark);
  const perMiB = (cpu: CpuUse, bytes: number) => (target.proxies.length ? round(cpu.proxy / (bytes / (1024 * 1024)), 0) : null);
  return {
    bytes: down.bytes,
    upBytes: up.bytes,
    downMiBPerSecond: round(down.mibPerSecond, 1),
    upMiBPerSecond: round(up.mibPerSecond, 1),
    proxyCpuMicrosPerMiB: { down: perMiB(downCpu, down.bytes), up: perMiB(upCpu, up.bytes) },
    proxyCpuPercent: { down: target.proxies.length ? downCpu.proxyPercent : null, up: target.proxies.length ? upCpu.proxyPercent : null },
    loadgenCpuPercent: { down: downCpu.harnessPercent, up: upCpu.harnessPercent },
    upstreamCpuPercent: { down: downCpu.upstreamPercent, up: upCpu.upstreamPercent },
    otherCpuPercent: Math.max(downCpu.otherPercent + downCpu.stealPercent, upCpu.otherPercent + upCpu.stealPercent),
  };
}

async function waitForHold(ctx: Context, predicate: (count: number) => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let count = await ctx.upstream.holdCount();
  while (!predicate(count) && Date.now() < deadline) {
    await sleep(100);
    count = await ctx.upstream.holdCount();
  }
  return count;
}

const runIdle: Runner<'idle'> = async (ctx, row, target) => {
  if (!target.hold) return { status: 'n/a', reason: NOT_A_BYTE_STREAM };
  const count = row.startsWith('haproxy') ? ctx.plan.idleConnectionsPaired : ctx.plan.idleConnections;
  // Connections of the row before still held would count as this row's when they reach the holder.
  const left = await waitForHold(ctx, (n) => n === 0, 10_000);
  if (left !== 0) return { status: 'failed', reason: `the upstream still held ${left} connections of the row before` };
  // The idle baseline is read after ambit's one collection a second after it loaded its configuration
  // (src/proxy/heap.ts): read before it, the baseline held startup garbage that opening the connections then
  // replaced, and the figure per connection moved by 2–3 KiB with the timing.
  await sleep(3000);
  // The heap figures first: a proxy's first /metrics scrape grows it, which must not count as the connections' cost.
  const heapBefore = await heapOf(target);
  const before = rssOf(target);
  const sockets: Socket[] = [];
  try {
    const openFailed = await openIdle(target.hold, count, 200, sockets);
    const reached = await waitForHold(ctx, (n) => n >= count - openFailed, 30_000 + count * 5);
    if (reached < count - openFailed) return { status: 'failed', reason: `only ${reached} of ${count} connections reached the upstream` };
    if (openFailed > count / 100) return { status: 'failed', reason: `${openFailed} of ${count} connections failed to open` };
    // Let allocation settle (and the proxies' byte-flush timers run once) before reading RSS.
    await sleep(ctx.plan.mode === 'quick' ? 2000 : 6000);
    const after = rssOf(target);
    const heapAfter = await heapOf(target);
    const perConnection: Record<string, number> = {};
    // Per connection that opened (up to 1 % may fail, above).
    const opened = count - openFailed;
    for (const [name, bytes] of Object.entries(after)) perConnection[name] = round((bytes - (before[name] ?? 0)) / opened, 0);
    // For ambit: how much of it is V8 heap (JS objects) and off-heap buffers, from the proxies' own /metrics.
    const heapPerConnection: Record<string, { heapUsed: number; external: number }> = {};
    for (const [name, heap] of Object.entries(heapAfter)) {
      const start = heapBefore[name];
      if (start) heapPerConnection[name] = { heapUsed: round((heap.heapUsed - start.heapUsed) / opened, 0), external: round((heap.external - start.external) / opened, 0) };
    }
    return {
      status: 'ok',
      figures: { connections: count, openFailed, rssBeforeBytes: before, rssAfterBytes: after, bytesPerConnection: perConnection, maxBytesPerConnection: Math.max(...Object.values(perConnection)), heapBytesPerConnection: heapPerConnection },
    };
  } finally {
    for (const socket of sockets) socket.destroy();
    await waitForHold(ctx, (n) => n === 0, 30_000);
  }
};

const RUNNERS: { [S in LoadScenario]: Runner<S> } = {
  throughput: runThroughput,
  latency: runLatency,
  churn: runChurn,
  bulk: runBulk,
  idle: runIdle,
};

const SCENARIO_TITLES: Record<ScenarioId, string> = {
  throughput: '(a) max throughput',
  latency: '(b) fixed rate',
  churn: '(c) connection churn',
  bulk: '(d) bulk',
  idle: '(e) idle connections',
  rotation: '(f) rotation under load',
  footprint: '(g) idle footprint',
};

function expectedSeconds(plan: Plan, scenario: ScenarioId): number | undefined {
  switch (scenario) {
    case 'throughput': return plan.seconds.throughput + plan.seconds.warmup;
    case 'latency': return plan.seconds.latency + plan.seconds.warmup;
    case 'churn': return plan.seconds.churn;
    case 'rotation': return plan.seconds.rotation;
    default: return undefined;
  }
}

function setOutcome<S extends ScenarioId>(results: RunResults, scenario: S, row: RowId, outcome: Outcome<FiguresByScenario[S]>): void {
  const entry = results.scenarios[scenario];
  if (entry) (entry.rows as Partial<Record<RowId, Outcome<FiguresByScenario[S]>>>)[row] = outcome;
}

/** Rows present in the plan get an outcome for every scenario: figures, skipped, n/a or failed. */
function prefill(ctx: Context, scenario: ScenarioId): RowId[] {
  const runnable: RowId[] = [];
  for (const row of ctx.plan.rows) {
    const reason = notApplicable(scenario, row);
    if (reason !== null) {
      if (scenario !== 'footprint') setOutcome(ctx.results, scenario, row, { status: 'n/a', reason });
      continue;
    }
    const skipped = ctx.results.skipped[row];
    if (skipped !== undefined) setOutcome(ctx.results, scenario, row, { status: 'skipped', reason: skipped });
    else runnable.push(row);
  }
  return runnable;
}

function ambitTarget(mesh: AmbitMesh, layer: 'l4' | 'l7'): RowTarget {
  const port = layer === 'l4' ? AMBIT.listen.webL4 : AMBIT.listen.webL7;
  return {
    http: { host: AMBIT.clientIp, port },
    bulk: layer === 'l4' ? { host: AMBIT.clientIp, port: AMBIT.listen.bulk } : null,
    hold: layer === 'l4' ? { host: AMBIT.clientIp, port: AMBIT.listen.hold } : null,
    proxies: mesh.nodes.map((node) => ({ name: node.name, pid: node.process.pid, metricsUrl: node.metricsUrl })),
  };
}

function nodeFloorTarget(pair: NodeFloorPair): RowTarget {
  const at = (port: number): HostPort => ({ host: NODE_FLOOR.client, port });
  return {
    http: at(NODE_FLOOR.listen.web),
    bulk: at(NODE_FLOOR.listen.bulk),
    hold: at(NODE_FLOOR.listen.hold),
    proxies: [{ name: 'floor-client', pid: pair.client.pid }, { name: 'floor-server', pid: pair.server.pid }],
  };
}

function haproxyTarget(pair: HaproxyPair, layer: 'l4' | 'l7'): RowTarget {
  const client = HAPROXY[layer].client;
  return {
    http: { host: client, port: HAPROXY.listen.web },
    bulk: layer === 'l4' ? { host: client, port: HAPROXY.listen.bulk } : null,
    hold: layer === 'l4' ? { host: client, port: HAPROXY.listen.hold } : null,
    proxies: [{ name: 'client-side', pid: pair.client.pid }, { name: 'server-side', pid: pair.server.pid }],
  };
}

async function rotationsOf(mesh: AmbitMesh): Promise<number> {
  let total = 0;
  for (const node of mesh.nodes) total += metricTotal(await httpText(node.metricsUrl), 'ambit_certificate_rotations_total');
  return total;
}

async function runScenario(ctx: Context, scenario: LoadScenario): Promise<void> {
  const { plan, progress, results } = ctx;
  // Idle connections are measured once, on proxies started for them (see run()).
  const rounds = scenario === 'idle' ? 1 : plan.rounds;
  results.scenarios[scenario] = { settings: { ...scenarioSettings(plan, scenario), rounds }, rows: {} };
  const rows: RowId[] = [];
  for (const row of prefill(ctx, scenario)) {
    if (ctx.targets.has(row)) rows.push(row);
    else setOutcome(results, scenario, row, { status: 'skipped', reason: 'not started' });
  }
  const byRow = new Map<RowId, Array<Outcome<FiguresByScenario[typeof scenario]>>>(rows.map((row) => [row, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      // Every other round in reverse order: no row always runs right after the same neighbour.
      for (const row of round % 2 === 0 ? rows : [...rows].reverse()) {
        const target = ctx.targets.get(row) as RowTarget;
        progress.step(`${SCENARIO_TITLES[scenario]} · ${ROW_LABELS[row]}${rounds > 1 ? ` · round ${round + 1}/${rounds}` : ''}`, expectedSeconds(plan, scenario));
        const runner = RUNNERS[scenario] as Runner<typeof scenario>;
        let outcome: Outcome<FiguresByScenario[typeof scenario]>;
        try {
          outcome = await runner(ctx, row, target);
        } catch (error) {
          outcome = { status: 'failed', reason: (error as Error).message };
        }
        // A proxy that died during the round left its CPU unread (a figure too low, even negative): the round failed.
        const gone = goneProxy(target);
        if (gone !== null) outcome = { status: 'failed', reason: gone };
        if (outcome.status === 'failed') progress.note(`${SCENARIO_TITLES[scenario]} · ${ROW_LABELS[row]}: ${outcome.reason}`);
        byRow.get(row)?.push(outcome);
        if (gone !== null) throw new Error(`${ROW_LABELS[row]}: ${gone}`);
      }
    }
  } finally {
    // A run stopped by a vanished proxy still reports what it measured; rows it did not reach say so.
    for (const [row, outcomes] of byRow) {
      // Not this row's failure unless its own proxy went (that round is failed, above): another row's proxy stopped the run.
      if (outcomes.length < rounds) outcomes.push({ status: 'skipped', reason: 'the run stopped (a proxy is gone) before this row finished its rounds' });
      recordRounds(results, scenario, row, outcomes);
    }
  }
}

/**
 * --side-by-side: the scenario again with ambit L4 and each reference pair that started (the Node floor, HAProxy's
 * L4 pair) under their own loads at the same time, on the one proxy core, in rounds. Rows measured in turn are half
 * a minute apart and the VM's speed moves in between; measured at once, all see the same speed, so their CPU per
 * request, connection or MiB compares.
 */
async function runSideBySide(ctx: Context, scenario: SideBySideScenario): Promise<void> {
  const { plan, results } = ctx;
  const ambit = ctx.targets.get('ambit-l4');
  const peers = SIDE_BY_SIDE_PEERS.filter((peer) => plan.rows.includes(peer) && ctx.targets.has(peer));
  const entry: { rounds: Array<SideBySideRound<typeof scenario>>; failed?: string } = { rounds: [] };
  (results.sideBySide ??= {})[scenario] = entry as never;
  if (ambit === undefined || peers.length === 0) {
    entry.failed = ambit === undefined ? `${ROW_LABELS['ambit-l4']} did not start` : 'no reference pair started';
    return;
  }
  const names = ['ambit L4', ...peers.map((peer) => ROW_LABELS[peer])].join(', ');
  ctx.loadedAtOnce = [ambit, ...peers.map((peer) => ctx.targets.get(peer) as RowTarget)];
  try {
    await sideBySideRounds(ctx, scenario, entry, ambit, peers, names);
  } finally {
    ctx.loadedAtOnce = undefined;
  }
}

async function sideBySideRounds(ctx: Context, scenario: SideBySideScenario, entry: { rounds: Array<SideBySideRound<typeof scenario>>; failed?: string }, ambit: RowTarget, peers: SideBySidePeer[], names: string): Promise<void> {
  const { plan, progress } = ctx;
  const runner = (scenario === 'bulk' ? runBulkTimed : RUNNERS[scenario]) as Runner<typeof scenario>;
  const measure = (row: RowId, target: RowTarget) => runner(ctx, row, target).catch((error: unknown): Outcome<never> => ({ status: 'failed', reason: (error as Error).message }));
  for (let round = 0; round < plan.rounds; round++) {
    progress.step(`${SCENARIO_TITLES[scenario]} · at once: ${names}${plan.rounds > 1 ? ` · round ${round + 1}/${plan.rounds}` : ''}`, expectedSeconds(plan, scenario));
    const rows: RowId[] = ['ambit-l4', ...peers];
    const outcomes = (await Promise.all([measure('ambit-l4', ambit), ...peers.map((peer) => measure(peer, ctx.targets.get(peer) as RowTarget))])).map((outcome, i): Outcome<FiguresByScenario[typeof scenario]> => {
      const gone = goneProxy(ctx.targets.get(rows[i] as RowId) as RowTarget);
      return gone === null ? outcome : { status: 'failed', reason: gone };
    });
    const failures = outcomes.flatMap((outcome, i) => (outcome.status === 'ok' ? [] : [`${ROW_LABELS[rows[i] as RowId]}: ${outcome.reason}`]));
    if (failures.length > 0) {
      // A failed round ends the comparison: ratios over the rounds that happened to pass would hide it.
      entry.failed = `round ${round + 1}: ${failures.join('; ')}`;
      progress.note(`${SCENARIO_TITLES[scenario]} side by side: ${entry.failed}`);
      return;
    }
    const figures = outcomes.map((outcome) => (outcome as { figures: FiguresByScenario[typeof scenario] }).figures);
    const byPeer: Partial<Record<SideBySidePeer, FiguresByScenario[typeof scenario]>> = {};
    peers.forEach((peer, i) => (byPeer[peer] = figures[i + 1]));
    entry.rounds.push({ ambit: figures[0] as FiguresByScenario[typeof scenario], peers: byPeer });
  }
}

async function run(ctx: Context, workDir: string): Promise<void> {
  const { plan, processes, progress, results } = ctx;
  const wantsAmbit = plan.rows.some((row) => row.startsWith('ambit'));
  const wantsHaproxy = plan.rows.some((row) => row.startsWith('haproxy')) && results.skipped['haproxy-l4'] === undefined;
  const profileDir = join(plan.resultsDir, `profiles-${results.date.replace(/[:.]/g, '-')}`);
  const nodeFlags = plan.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [];
  const envFlags = (process.env.AMBIT_BENCH_PROXY_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const ambitOptions = (label: string, svidTtl?: string) => ({
    dir: join(workDir, label), label, configYaml: benchConfig(), nodes: [AMBIT.nodeA, AMBIT.nodeB], ca: AMBIT.ca, svidTtl,
    nodeFlags: [...nodeFlags, ...envFlags], logLevel: plan.accessLog ? 'info' : 'warn', readyTimeoutMs: 60_000,
  });

  const binary = hasCommand('haproxy');
  let certs: HaproxyCertificates | null = null;
  // The HAProxy pairs and the Node floor pair present the same certificates, from the ambit CA's root.
  const pairCertificates = async (): Promise<HaproxyCertificates> => {
    if (certs === null) {
      const caDir = ctx.caDir ?? join(workDir, 'haproxy-ca');
      if (ctx.caDir === undefined) await initCa(caDir, TRUST_DOMAIN);
      certs = await issueCertificates(join(workDir, 'haproxy', 'certs'), caDir);
    }
    return certs;
  };

  const isMain = (s: ScenarioId): s is LoadScenario => s !== 'rotation' && s !== 'footprint';
  /** Starts the proxies the scenarios need, runs them row by row (in rounds), stops the proxies. */
  const phase = async (scenarios: LoadScenario[], label: string, layers: ReadonlyArray<'l4' | 'l7'>) => {
    if (scenarios.length === 0) return;
    const stoppers: Array<() => Promise<void>> = [];
    try {
      if (wantsAmbit) {
        progress.step(`starting ambit: CA, node-a, node-b (1,000 AuthorizationPolicies)${label}`);
        const mesh = await startAmbit(processes, ambitOptions(`ambit-${scenarios.join('-')}`));
        stoppers.push(() => mesh.stop());
        ctx.caDir ??= mesh.caDir;
        ctx.targets.set('ambit-l4', ambitTarget(mesh, 'l4'));
        ctx.targets.set('ambit-l7', ambitTarget(mesh, 'l7'));
      }
      if (wantsHaproxy && binary) {
        progress.step(`starting the HAProxy pairs (certificates from the ambit CA root)${label}`);
        const pem = await pairCertificates();
        for (const layer of layers) {
          const row: RowId = `haproxy-${layer}`;
          if (!plan.rows.includes(row) || results.skipped[row] !== undefined) continue;
          try {
            // Two descriptors per connection on each side: stay inside the open-files limit or haproxy refuses to start.
            const maxConnections = Math.min(plan.idleConnectionsPaired + 64, Math.floor((openFilesLimit().hard - 256) / 2));
            const pair = await startHaproxyPair(processes, binary, layer, join(workDir, 'haproxy'), pem, maxConnections);
            stoppers.push(() => pair.stop());
            ctx.targets.set(row, haproxyTarget(pair, layer));
          } catch (error) {
            const message = (error as Error).message;
            results.skipped[row] = `haproxy did not start: ${/\[ALERT\][^\n]*/.exec(message)?.[0] ?? message.split('\n')[0]}`;
            progress.note(`${ROW_LABELS[row]}: ${results.skipped[row]}`);
          }
        }
      }
      if (plan.rows.includes('node-l4') && results.skipped['node-l4'] === undefined) {
        progress.step(`starting the Node floor pair${label}`);
        try {
          // The same flags as ambit's proxies; its profiles in a directory of their own.
          const floorFlags = [...(plan.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', join(profileDir, 'node-floor')] : []), ...envFlags];
          const pair = await startNodeFloorPair(processes, await pairCertificates(), floorFlags);
          stoppers.push(() => pair.stop());
          ctx.targets.set('node-l4', nodeFloorTarget(pair));
        } catch (error) {
          results.skipped['node-l4'] = `the Node floor pair did not start: ${(error as Error).message.split('\n')[0]}`;
          progress.note(`${ROW_LABELS['node-l4']}: ${results.skipped['node-l4']}`);
        }
      }
      ctx.targets.set('direct', { http: UPSTREAM.webL4, bulk: UPSTREAM.bulk, hold: null, proxies: [] });
      for (const scenario of scenarios) {
        await runScenario(ctx, scenario);
        if (plan.sideBySide && (SIDE_BY_SIDE_SCENARIOS as readonly string[]).includes(scenario)) await runSideBySide(ctx, scenario as SideBySideScenario);
      }
    } finally {
      progress.step(`stopping the proxies${label}`);
      await Promise.all(stoppers.map((stop) => stop()));
      ctx.targets.clear();
    }
  };
  await phase(plan.scenarios.filter(isMain).filter((s) => s !== 'idle'), '', ['l4', 'l7']);
  // Idle memory is measured on proxies started for it: after load, a heap has room to spare that would
  // hide what each connection costs.
  await phase(plan.scenarios.filter(isMain).filter((s) => s === 'idle'), ' (fresh, for idle connections)', ['l4']);

  if (plan.scenarios.includes('rotation')) {
    results.scenarios.rotation = { settings: scenarioSettings(plan, 'rotation'), rows: {} };
    const rows = prefill(ctx, 'rotation');
    if (rows.length > 0) {
      progress.step(`starting ambit with --svid-ttl ${plan.svidTtl}`);
      const rotating = await startAmbit(processes, ambitOptions('ambit-rotation', plan.svidTtl));
      try {
        for (const row of rows) {
          const target = ambitTarget(rotating, row === 'ambit-l4' ? 'l4' : 'l7');
          progress.step(`${SCENARIO_TITLES.rotation} · ${ROW_LABELS[row]}`, plan.seconds.rotation);
          // As in (b), the warm-up's connections carry the load; the certificates rotate from the start, so what the
          // warm-up failed counts too.
          const connections = keepAliveConnections(target.http, plan.connections);
          try {
            await openAll(connections);
            const warm = await paced(target.http, plan.ratePerSecond, plan.seconds.warmup, connections);
            const rotationsBefore = await rotationsOf(rotating);
            const [load, fresh] = await Promise.all([
              paced(target.http, plan.ratePerSecond, plan.seconds.rotation, connections),
              trickle(target.http, plan.newConnectionsPerSecond, plan.seconds.rotation),
            ]);
            const rotations = (await rotationsOf(rotating)) - rotationsBefore;
            setOutcome(results, 'rotation', row, {
              status: 'ok',
              figures: {
                ratePerSecond: plan.ratePerSecond, seconds: round(load.seconds), ok: load.ok, failed: load.failed, latencyMs: load.latencyMs,
                newConnectionsOk: fresh.ok, newConnectionsFailed: fresh.failed, warmupFailed: warm.failed,
                // Over the connections' whole life: a close between the warm-up and the load counts too.
                connectionsClosed: connections.reduce((sum, connection) => sum + connection.closedBetweenRequests, 0),
                rotations, svidTtl: plan.svidTtl,
              },
            });
          } catch (error) {
            setOutcome(results, 'rotation', row, { status: 'failed', reason: (error as Error).message });
          } finally {
            for (const connection of connections) connection.close();
          }
        }
      } finally {
        await rotating.stop();
      }
    }
  }

  if (plan.scenarios.includes('footprint')) {
    results.scenarios.footprint = { settings: { workloads: FOOTPRINT.workloads, localWorkloads: FOOTPRINT.local }, rows: {} };
    if (prefill(ctx, 'footprint').length > 0) {
      progress.step(`${SCENARIO_TITLES.footprint} · starting a proxy with ${FOOTPRINT.workloads} workloads, ${FOOTPRINT.local} local`);
      const started = performance.now();
      try {
        const footprint = await startAmbit(processes, {
          ...ambitOptions('ambit-footprint'), configYaml: footprintConfig(), nodes: [FOOTPRINT.node], ca: FOOTPRINT.ca, readyTimeoutMs: 120_000,
        });
        try {
          const readySeconds = (performance.now() - started) / 1000;
          progress.step(`${SCENARIO_TITLES.footprint} · settling`);
          const settleMs = plan.mode === 'quick' ? 2000 : 10_000;
          const node = footprint.nodes[0] as AmbitMesh['nodes'][number];
          await sleep(settleMs / 2);
          // Measured before the scrape below, which is work of its own.
          const idle = await idleCost(node.process.pid, settleMs / 2);
          // RSS before the scrape too: a first scrape of /metrics grows the proxy a little.
          const parts = rssParts(node.process.pid);
          const metrics = await httpText(node.metricsUrl);
          setOutcome(results, 'footprint', 'ambit-l4', {
            status: 'ok',
            figures: {
              workloads: FOOTPRINT.workloads,
              localWorkloads: FOOTPRINT.local,
              readySeconds: round(readySeconds, 1),
              ...idle,
              rssBytes: parts.rss,
              rssAnonBytes: parts.anon,
              rssFileBytes: parts.file,
              bareNode: await bareNodeFootprint(processes, plan.mode === 'quick' ? 1000 : 3000),
              heapUsedBytes: metricTotal(metrics, 'nodejs_heap_size_used_bytes'),
              heapTotalBytes: metricTotal(metrics, 'nodejs_heap_size_total_bytes'),
            },
          });
        } finally {
          await footprint.stop();
        }
      } catch (error) {
        setOutcome(results, 'footprint', 'ambit-l4', { status: 'failed', reason: (error as Error).message });
      }
    }
  }
}

/** What an idle `node` with the proxies' flags and no code holds: the floor under (g)'s figure. */
async function bareNodeFootprint(processes: Processes, settleMs: number): Promise<BareNodeFootprint> {
  const bare = processes.spawn('bare-node', process.execPath, [...LONG_RUNNING_NODE_FLAGS, '-e', 'setInterval(() => {}, 60_000)'], { cpu: 'proxy', env: longRunningEnv(process.env) });
  try {
    await sleep(settleMs / 2);
    const idle = await idleCost(bare.pid, settleMs / 2);
    const parts = rssParts(bare.pid);
    return { rssBytes: parts.rss, rssAnonBytes: parts.anon, rssFileBytes: parts.file, ...idle };
  } finally {
    await processes.stop(bare);
  }
}

function scenarioSettings(plan: Plan, scenario: ScenarioId): Record<string, unknown> {
  switch (scenario) {
    case 'throughput': return { connections: plan.connections, seconds: plan.seconds.throughput, warmupSeconds: plan.seconds.warmup, bodyBytes: 1024 };
    case 'latency': return { ratePerSecond: plan.ratePerSecond, seconds: plan.seconds.latency, connections: plan.connections, bodyBytes: 1024 };
    case 'churn': return { concurrency: plan.churnConcurrency, seconds: plan.seconds.churn, sourceAddresses: CHURN_SOURCES.length };
    case 'bulk': return { bytes: plan.bulkBytes };
    case 'idle': return { connections: plan.idleConnections, haproxyConnections: plan.idleConnectionsPaired, requested: plan.idleRequested };
    case 'rotation': return { ratePerSecond: plan.ratePerSecond, seconds: plan.seconds.rotation, newConnectionsPerSecond: plan.newConnectionsPerSecond, svidTtl: plan.svidTtl };
    case 'footprint': return {};
  }
}

/** Every address the run listens on must be free: a leftover process from an earlier run would answer for ours. */
async function assertAddressesFree(): Promise<void> {
  const addresses: HostPort[] = [
    ...Object.values(UPSTREAM), AMBIT.ca, FOOTPRINT.ca,
    ...[AMBIT.nodeA.address, AMBIT.nodeB.address, FOOTPRINT.node.address].flatMap((host) => [{ host, port: 15020 }, { host, port: 15021 }]),
    ...Object.values(AMBIT.listen).map((port) => ({ host: AMBIT.clientIp, port })),
    ...Object.values(NODE_FLOOR.listen).map((port) => ({ host: NODE_FLOOR.client, port })), { host: NODE_FLOOR.server, port: NODE_FLOOR.hbonePort },
    ...(['l4', 'l7'] as const).flatMap((layer) => [
      ...Object.values(HAPROXY.listen).map((port) => ({ host: HAPROXY[layer].client, port })),
      ...Object.values(HAPROXY.tls).map((port) => ({ host: HAPROXY[layer].server, port })),
    ]),
  ];
  const busy: string[] = [];
  await Promise.all(addresses.map(async (address) => {
    if (await isListening(address.host, address.port)) busy.push(`${address.host}:${address.port}`);
  }));
  if (busy.length > 0) throw new Error(`already in use: ${busy.sort().join(', ')} (a leftover from an earlier run? the benchmark owns 127.70.0.0/16)`);
}

function ensurePeers(plan: Plan, progress: Progress): { haproxy: string | null; nginx: string | null; setupLog: string } {
  let haproxy = plan.without.has('haproxy') ? null : hasCommand('haproxy');
  let nginx = plan.without.has('nginx') ? null : hasCommand('nginx');
  let setupLog = '';
  const missing = (!haproxy && !plan.without.has('haproxy')) || (!nginx && !plan.without.has('nginx'));
  if (missing && plan.setup) {
    progress.step('installing missing peers with bench/setup.sh (apt-get)');
    const result = spawnSync('sh', [join(HERE, 'setup.sh')], { encoding: 'utf8', timeout: 300_000 });
    setupLog = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim();
    if (!plan.without.has('haproxy')) haproxy = hasCommand('haproxy');
    if (!plan.without.has('nginx')) nginx = hasCommand('nginx');
  }
  return { haproxy, nginx, setupLog };
}

async function main(): Promise<number> {
  const plan = parsePlan(process.argv.slice(2));
  const notes: string[] = [];
  const wantsIdle = plan.scenarios.includes('idle');
  const limits = openFilesLimit();
  const needed = descriptorsNeeded(plan);
  if (wantsIdle && limits.hard < needed && reexecWithMoreFiles(needed)) return -1;
  if (wantsIdle && openFilesLimit().hard < needed) {
    const hard = openFilesLimit().hard;
    const counts = idleConnectionCounts(plan.idleRequested, hard);
    const count = (n: number) => n.toLocaleString('en-US');
    plan.idleConnections = counts.single;
    plan.idleConnectionsPaired = counts.paired;
    const scaled = [
      counts.single < plan.idleRequested ? `through ambit and the Node floor scaled from ${count(plan.idleRequested)} to ${count(counts.single)}` : null,
      counts.paired < plan.idleRequested ? `through HAProxy's pairs scaled from ${count(plan.idleRequested)} to ${count(counts.paired)} (its client side holds two descriptors per connection)` : null,
    ].filter((part) => part !== null);
    notes.push(`open-files limit is ${hard} and cannot be raised here (ulimit -n ${needed} refused): idle connections ${scaled.join('; ')}`);
  }

  const progress = new Progress();
  const started = Date.now();
  const date = new Date().toISOString();
  const workDir = await mkdtemp(join(tmpdir(), 'ambit-bench-'));
  const logDir = join(workDir, 'logs');
  await mkdir(logDir, { recursive: true });
  const cores = cpus().length;
  let pinning: { load: number; proxy: number } | null = null;
  if (plan.pin && cores >= 2 && hasCommand('taskset') && pinSelf(0)) pinning = { load: 0, proxy: 1 };
  notes.push(pinning
    ? `pinned: load generator (this process), upstream and CA on CPU ${pinning.load}; the proxy pair under test on CPU ${pinning.proxy} (${cores} cores)`
    : `not pinned (${plan.pin ? (cores < 2 ? 'one core' : 'taskset unavailable') : '--no-pin'}): load generator, upstream and proxies share the cores`);
  const processes = new Processes(logDir, pinning);

  let cleaning: Promise<void> | null = null;
  const cleanup = () => (cleaning ??= (async () => {
    progress.stop();
    await processes.stopAll();
    if (!plan.keep) await rm(workDir, { recursive: true, force: true });
    else process.stderr.write(`bench: working directory kept: ${workDir}\n`);
  })());
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, stopping every process\n`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  process.on('exit', () => processes.killAllSync());

  const peers = ensurePeers(plan, progress);
  if (plan.rows.some((row) => row.startsWith('ambit')) && buildIsStale()) {
    progress.step('building dist/ (npm run build): the proxies run the compiled JavaScript');
    ensureBuilt();
  }
  const skipped: RunResults['skipped'] = {};
  if (!peers.haproxy) {
    const reason = plan.without.has('haproxy') ? 'left out with --without haproxy' : `haproxy not installed${plan.setup ? ` and bench/setup.sh could not install it${peers.setupLog ? `: ${peers.setupLog.split('\n').slice(-1)[0]}` : ''}` : ' (--no-setup)'}`;
    for (const row of ['haproxy-l4', 'haproxy-l7'] as const) if (plan.rows.includes(row)) skipped[row] = reason;
  }
  if (!peers.nginx) notes.push(`nginx ${plan.without.has('nginx') ? 'left out with --without nginx' : 'not installed'}: the upstream is the Node fallback (bench/system/upstream-server.ts)`);
  if (pinning === null && cores <= 2) notes.push('on 2 cores without pinning the load generator competes with the proxies: figures are lower bounds');

  const results: RunResults = {
    date,
    command: process.argv.length > 2 ? `npm run bench -- ${process.argv.slice(2).join(' ')}` : 'npm run bench',
    mode: plan.mode,
    durationSeconds: 0,
    machine: {},
    notes,
    skipped,
    scenarios: {},
  };
  let exitCode = 0;
  const noise: number[] = [];
  try {
    await assertAddressesFree();
    progress.step(`starting the upstream (${peers.nginx ? 'nginx' : 'Node fallback'}, 1 KiB responses)`);
    const upstream = await startUpstream(processes, join(workDir, 'upstream'), peers.nginx, Math.max(plan.idleConnections, 4096));
    results.machine = machineInfo({
      haproxy: peers.haproxy ? haproxyVersion(peers.haproxy) : 'not installed',
      haproxyOpenssl: peers.haproxy ? haproxyOpenssl(peers.haproxy) : 'not installed',
      nginx: peers.nginx ? nginxVersion(peers.nginx) : 'not installed',
      upstream: upstream.kind,
      pinning,
      openFiles: openFilesLimit(),
    });
    const ctx: Context = { plan, processes, progress, upstream, targets: new Map(), results, noise };
    await run(ctx, workDir);
  } catch (error) {
    exitCode = 1;
    const message = (error as Error).stack ?? String(error);
    notes.push(`run aborted: ${(error as Error).message}`);
    progress.note(`failed: ${message}`);
  } finally {
    await cleanup();
  }
  results.durationSeconds = Math.round((Date.now() - started) / 100) / 10;
  const worstNoise = Math.max(0, ...noise);
  if (worstNoise >= 10) notes.push(`other processes on this machine (or the hypervisor) used up to ${worstNoise} % of a core during a measurement (median ${noise.sort((a, b) => a - b)[Math.floor(noise.length / 2)]} %): figures are noisy, compare rows of one run only`);
  if (results.machine.cores === undefined) results.machine = machineInfo({ pinning });

  await mkdir(plan.resultsDir, { recursive: true });
  const file = join(plan.resultsDir, `${date.replace(/[:.]/g, '-')}-${plan.mode}.json`);
  await writeFile(file, JSON.stringify({ ...results, targets: checkTargets(results), floor: compareToFloor(results), sideBySideComparison: compareSideBySide(results) }, null, 2) + '\n');

  const m = results.machine;
  const header = [
    `## ambit system benchmark — ${date.slice(0, 10)} (${plan.mode}, ${results.durationSeconds} s)`,
    '',
    `\`${results.command}\` on ${m.cores} × ${m.cpuModel}, ${m.memoryGiB} GiB, Linux ${m.kernel}; Node ${m.node} (OpenSSL ${m.nodeOpenssl}); ${m.haproxy === 'not installed' ? 'HAProxy not installed' : `${String(m.haproxy).replace(/ - https?:\/\/\S+/, '')} (${m.haproxyOpenssl})`}; upstream ${m.upstream === 'nginx' ? m.nginx : 'Node fallback'}.`,
    '',
    ...notes.map((note) => `- ${note}`),
    ...Object.entries(skipped).map(([row, reason]) => `- ${ROW_LABELS[row as RowId]} skipped: ${reason}`),
    '',
  ];
  process.stdout.write(header.join('\n') + '\n' + renderMarkdown(results) + '\n');
  process.stderr.write(`bench: ${results.durationSeconds} s; figures in ${file}\n`);
  return exitCode;
}

main().then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (error: unknown) => {
    process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  },
);
