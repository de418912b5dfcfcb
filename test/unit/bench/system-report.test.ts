// The system benchmark's rounds: rows take turns, each row shows its median round, a failed round is never
// hidden, and a target is decided by the median of the ratios of rows measured side by side.
import { describe, expect, it } from 'vitest';
import { checkTargets, compareSideBySide, compareToFloor, cpuCell, recordRounds, renderMarkdown } from '../../../bench/system/report.ts';
import type { BulkFigures, FiguresByScenario, IdleFigures, LatencyFigures, LoadScenario, Outcome, RowId, RunResults, ThroughputFigures } from '../../../bench/system/report.ts';
import { idleConnectionCounts } from '../../../bench/system/load.ts';

function throughput(requestsPerSecond: number): ThroughputFigures {
  return { requestsPerSecond, ok: requestsPerSecond * 10, failed: 0, seconds: 10, latencyMs: { p50: 1, p99: 2, max: 3 }, proxyCpuMicrosPerRequest: 50, loadgenCpuPercent: 30, upstreamCpuPercent: 20, proxyCpuPercent: 90, otherCpuPercent: 0 };
}

function latency(proxyCpuMicrosPerRequest: number): LatencyFigures {
  return { ratePerSecond: 2000, seconds: 10, ok: 20_000, failed: 0, achievedPerSecond: 2000, latencyMs: { p50: 1, p99: 5, max: 9 }, proxyCpuMicrosPerRequest, proxyRssBytes: { a: 1 }, otherCpuPercent: 0 };
}

function emptyRun(): RunResults {
  return { date: '2026-12-04T00:00:00.000Z', command: 'test', mode: 'full', durationSeconds: 1, machine: {}, notes: [], skipped: {}, scenarios: {} };
}

const ok = <F>(figures: F): Outcome<F> => ({ status: 'ok', figures });

/** A run of one scenario whose rows ran these rounds. */
function roundsRun<S extends LoadScenario>(scenario: S, rounds: Partial<Record<RowId, Array<Outcome<FiguresByScenario[S]>>>>): RunResults {
  const results = emptyRun();
  results.scenarios[scenario] = { settings: { rounds: 3 }, rows: {} };
  for (const [row, outcomes] of Object.entries(rounds)) recordRounds(results, scenario, row as RowId, outcomes);
  return results;
}

function throughputRun(rounds: Partial<Record<RowId, number[]>>): RunResults {
  return roundsRun('throughput', Object.fromEntries(Object.entries(rounds).map(([row, values]) => [row, values.map((v) => ok(throughput(v)))])));
}

describe('benchmark rounds', () => {
  it("shows each row's median round by the figure its target reads, and keeps every round in the JSON", () => {
    const results = throughputRun({ 'ambit-l4': [100, 300, 200] });
    const outcome = results.scenarios.throughput?.rows['ambit-l4'];
    expect(outcome?.status === 'ok' && outcome.figures.requestsPerSecond).toBe(200);
    expect(results.scenarios.throughput?.rounds?.['ambit-l4']?.map((f) => f.requestsPerSecond)).toEqual([100, 300, 200]);
  });

  it('reports a failure in any round as the row\'s outcome, never the good rounds around it', () => {
    const results = emptyRun();
    results.scenarios.throughput = { settings: { rounds: 3 }, rows: {} };
    recordRounds(results, 'throughput', 'ambit-l4', [ok(throughput(100)), { status: 'failed', reason: 'proxy node-b exited' }, ok(throughput(120))]);
    expect(results.scenarios.throughput.rows['ambit-l4']).toEqual({ status: 'failed', reason: 'round 2 of 3: proxy node-b exited' });
    expect(results.scenarios.throughput.rounds).toBeUndefined();
    // ambit's row failed: the target is missed, never left "not measured".
    const check = checkTargets(results).find((t) => t.target.startsWith('ambit L4 max throughput'));
    expect(check?.met).toBe(false);
    expect(check?.measured).toBe('ambit L4: failed: round 2 of 3: proxy node-b exited');
  });

  it('decides a target by the median of the paired ratios, not by the ratio of the two medians', () => {
    // Round by round 2.0×, 0.8× and 1.5×: the median 1.5× meets 1.3×, where 200 against 200 would not.
    const results = throughputRun({ 'ambit-l4': [100, 200, 300], 'haproxy-l4': [50, 250, 200] });
    const check = checkTargets(results).find((t) => t.target.startsWith('ambit L4 max throughput'));
    expect(check?.met).toBe(true);
    expect(check?.measured).toContain('1.50× (median of 3 rounds side by side: 2.00×, 0.80×, 1.50×)');
    expect(check?.measured).toContain('median rounds 200.0 vs 200.0');
  });

  it('misses a target whose median paired ratio falls short, however good one round was', () => {
    const results = throughputRun({ 'ambit-l4': [400, 100, 110], 'haproxy-l4': [100, 100, 100] });
    const check = checkTargets(results).find((t) => t.target.startsWith('ambit L4 max throughput'));
    expect(check?.met).toBe(false);
    expect(check?.shortfall).toBe('15 % short');
  });

  it('holds CPU per request to at most the peer\'s by the median paired ratio, on both sides of the limit', () => {
    const run = (mine: number[], theirs: number[]) => {
      const results = emptyRun();
      results.scenarios.latency = { settings: { rounds: 3 }, rows: {} };
      recordRounds(results, 'latency', 'ambit-l4', mine.map((v) => ok(latency(v))));
      recordRounds(results, 'latency', 'haproxy-l4', theirs.map((v) => ok(latency(v))));
      return checkTargets(results).find((t) => t.target.startsWith('ambit L4 CPU per request'));
    };
    const over = run([120, 100, 90], [100, 110, 80]); // 1.20×, 0.91×, 1.13×
    expect(over?.met).toBe(false);
    expect(over?.shortfall).toBe('13 % over');
    expect(run([90, 100, 120], [100, 110, 110])?.met).toBe(true); // 0.90×, 0.91×, 1.09×
  });

  it('judges an even number of rounds on the mean of the two middle ratios, favouring neither side of a limit', () => {
    const results = emptyRun();
    results.scenarios.latency = { settings: { rounds: 2 }, rows: {} };
    recordRounds(results, 'latency', 'ambit-l4', [ok(latency(90)), ok(latency(120))]);
    recordRounds(results, 'latency', 'haproxy-l4', [ok(latency(100)), ok(latency(100))]);
    const check = checkTargets(results).find((t) => t.target.startsWith('ambit L4 CPU per request'));
    expect(check).toMatchObject({ met: false, shortfall: '5 % over' }); // 0.90× and 1.20×: 1.05×
  });

  it('names the failed requests of a round that is not the one shown', () => {
    const results = emptyRun();
    results.scenarios.throughput = { settings: { rounds: 3 }, rows: {} };
    const failing = { ...throughput(90), failed: 12 };
    recordRounds(results, 'throughput', 'ambit-l4', [ok(throughput(100)), ok(failing), ok(throughput(110))]);
    expect(results.notes).toEqual(['(a) ambit L4: 12 failed in round 2 of 3 (not the round shown)']);
  });

  it('uses the one run\'s ratio when the scenario ran once', () => {
    const results = emptyRun();
    results.scenarios.throughput = { settings: { rounds: 1 }, rows: {} };
    recordRounds(results, 'throughput', 'ambit-l4', [ok(throughput(130))]);
    recordRounds(results, 'throughput', 'haproxy-l4', [ok(throughput(100))]);
    expect(results.scenarios.throughput.rounds).toBeUndefined();
    const check = checkTargets(results).find((t) => t.target.startsWith('ambit L4 max throughput'));
    expect(check).toMatchObject({ met: true, measured: '1.30×; 130.0 vs 100.0' });
  });
});

describe('the Node floor pair in the report', () => {
  it('compares the floor with HAProxy and ambit with the floor by the median of the paired ratios', () => {
    // Floor against HAProxy 1.2×, 1.0×, 1.1×; ambit against the floor 0.5×, 1.0×, 0.8×.
    const results = throughputRun({ 'ambit-l4': [60, 100, 88], 'node-l4': [120, 100, 110], 'haproxy-l4': [100, 100, 100] });
    const [row] = compareToFloor(results);
    expect(row?.figure).toBe('(a) max throughput, req/s');
    expect(row?.floorVsHaproxy).toBe('1.10× (rounds 1.20×, 1.00×, 1.10×)');
    expect(row?.ambitVsFloor).toBe('0.80× (rounds 0.50×, 1.00×, 0.80×)');
    expect(renderMarkdown(results)).toContain('| (a) max throughput, req/s | 1.10× (rounds 1.20×, 1.00×, 1.10×) | 0.80× (rounds 0.50×, 1.00×, 0.80×) |');
  });

  it('says "—" for a side that was not measured, and leaves the section out when the floor did not run', () => {
    expect(compareToFloor(throughputRun({ 'ambit-l4': [100, 100, 100], 'node-l4': [120, 120, 120] }))[0]?.floorVsHaproxy).toBe('—');
    const withoutFloor = throughputRun({ 'ambit-l4': [100, 100, 100], 'haproxy-l4': [100, 100, 100] });
    expect(compareToFloor(withoutFloor)).toEqual([]);
    expect(renderMarkdown(withoutFloor)).not.toContain('Node floor');
  });
});

describe('ambit and its reference pairs loaded at the same time (--side-by-side)', () => {
  const cpu = (micros: number): ThroughputFigures => ({ ...throughput(1000), proxyCpuMicrosPerRequest: micros });

  it("compares ambit with each pair by the median of each round's ratio, and each pair by its own median", () => {
    const results = emptyRun();
    // Against the floor 1.2×, 1.5×, 1.1×: the median ratio (1.2×) is not the ratio of the medians (66 / 50 = 1.32×).
    // Against HAProxy 0.6×, 1.1×, 0.8×.
    results.sideBySide = { throughput: { rounds: [
      { ambit: cpu(60), peers: { 'node-l4': cpu(50), 'haproxy-l4': cpu(100) } },
      { ambit: cpu(66), peers: { 'node-l4': cpu(44), 'haproxy-l4': cpu(60) } },
      { ambit: cpu(88), peers: { 'node-l4': cpu(80), 'haproxy-l4': cpu(110) } },
    ] } };
    const row = compareSideBySide(results).find((c) => c.figure.startsWith('(a) proxy CPU'));
    expect(row).toEqual({
      figure: '(a) proxy CPU per request, both at full load',
      ambit: '66.0 µs',
      floor: { value: '50.0 µs', ratio: '1.20× (rounds 1.20×, 1.50×, 1.10×)' },
      haproxy: { value: '100.0 µs', ratio: '0.80× (rounds 0.60×, 1.10×, 0.80×)' },
    });
    const markdown = renderMarkdown(results);
    expect(markdown).toContain('--side-by-side');
    expect(markdown).toContain('| (a) proxy CPU per request, both at full load | 66.0 µs | 50.0 µs | 1.20× (rounds 1.20×, 1.50×, 1.10×) | 100.0 µs | 0.80× (rounds 0.60×, 1.10×, 0.80×) |');
  });

  it('compares bulk by CPU per MiB each way, and shows the MiB/s each pair moved on the shared core', () => {
    const bulk = (down: number, up: number, mibPerSecond: number): BulkFigures => ({ bytes: 1, upBytes: 1, seconds: 10, downMiBPerSecond: mibPerSecond, upMiBPerSecond: mibPerSecond / 2, proxyCpuMicrosPerMiB: { down, up }, proxyCpuPercent: { down: 30, up: 30 }, loadgenCpuPercent: { down: 50, up: 5 }, upstreamCpuPercent: { down: 5, up: 20 }, otherCpuPercent: 0 });
    const results = emptyRun();
    results.sideBySide = { bulk: { rounds: [
      { ambit: bulk(4000, 5000, 80), peers: { 'node-l4': bulk(5000, 5000, 60), 'haproxy-l4': bulk(3200, 4000, 90) } },
      { ambit: bulk(4400, 4500, 70), peers: { 'node-l4': bulk(4000, 5000, 50), 'haproxy-l4': bulk(4000, 3000, 100) } },
    ] } };
    const rows = compareSideBySide(results).filter((c) => c.figure.startsWith('(d)'));
    expect(rows.map((r) => [r.figure, r.ambit, r.floor.ratio, r.haproxy.ratio])).toEqual([
      // Two rounds: the mean of the two ratios.
      ['(d) proxy CPU per MiB down, both carrying bytes', '4,200.0 µs', '0.95× (rounds 0.80×, 1.10×)', '1.18× (rounds 1.25×, 1.10×)'],
      ['(d) proxy CPU per MiB up, both carrying bytes', '4,750.0 µs', '0.95× (rounds 1.00×, 0.90×)', '1.38× (rounds 1.25×, 1.50×)'],
      ['(d) MiB/s down, sharing the proxy core', '75', '1.37× (rounds 1.33×, 1.40×)', '0.79× (rounds 0.89×, 0.70×)'],
      ['(d) MiB/s up, sharing the proxy core', '38', '1.37× (rounds 1.33×, 1.40×)', '0.79× (rounds 0.89×, 0.70×)'],
    ]);
  });

  it('says "—" for a pair that was not loaded, or whose figure is missing', () => {
    const results = emptyRun();
    results.sideBySide = { latency: { rounds: [{ ambit: latency(150), peers: { 'node-l4': { ...latency(120), proxyCpuMicrosPerRequest: null } } }] } };
    expect(compareSideBySide(results).find((c) => c.figure.startsWith('(b) proxy CPU'))).toEqual({ figure: '(b) proxy CPU per request, both at the fixed rate', ambit: '150.0 µs', floor: { value: '—', ratio: '—' }, haproxy: { value: '—', ratio: '—' } });
  });

  it('reports a failed round instead of ratios over the rounds that passed, and leaves the section out when it did not run', () => {
    const results = emptyRun();
    results.sideBySide = { churn: { rounds: [], failed: 'round 2: ambit L4: no connection completed a request (32 failed)' } };
    const rows = compareSideBySide(results);
    expect(rows.map((r) => r.ambit)).toEqual(['failed: round 2: ambit L4: no connection completed a request (32 failed)', 'failed: round 2: ambit L4: no connection completed a request (32 failed)']);
    expect(rows.every((r) => r.floor.ratio === '' && r.haproxy.ratio === '')).toBe(true);
    expect(compareSideBySide(emptyRun())).toEqual([]);
    expect(renderMarkdown(emptyRun())).not.toContain('side-by-side');
  });
});

describe('the CPU cells of the scenario tables', () => {
  it("shows each side's CPU beside the pair's, and the pair's alone where the sides were not measured", () => {
    expect(cpuCell(147, { 'node-a': 66.04, 'node-b': 80.96 })).toBe('147.0 (66.0 + 81.0)');
    expect(cpuCell(147, undefined)).toBe('147.0');
    expect(cpuCell(147, null)).toBe('147.0');
    expect(cpuCell(null, null)).toBe('—');
    const results = emptyRun();
    results.scenarios.latency = { settings: { ratePerSecond: 2000, seconds: 10, connections: 32 }, rows: { 'ambit-l4': ok({ ...latency(147), proxyCpuMicrosPerRequestByProcess: { 'node-a': 66, 'node-b': 81 } }) } };
    expect(renderMarkdown(results)).toContain('| 147.0 (66.0 + 81.0) |');
  });
});

describe('the idle footprint table', () => {
  it("shows what the idle proxy and a bare node cost while they wait, and '—' where a run before these figures did not measure it", () => {
    const results = emptyRun();
    const mib = 1024 * 1024;
    const bare = { rssBytes: 42 * mib, rssAnonBytes: 8 * mib, rssFileBytes: 34 * mib };
    const figures = { workloads: 1000, localWorkloads: 100, readySeconds: 5, rssBytes: 106 * mib, rssAnonBytes: 52 * mib, rssFileBytes: 54 * mib, heapUsedBytes: 25 * mib, heapTotalBytes: 27 * mib };
    results.scenarios.footprint = { settings: {}, rows: { 'ambit-l4': ok({ ...figures, idleCpuPercent: 0.2, idleWakeupsPerSecond: 13, bareNode: { ...bare, idleCpuPercent: 0, idleWakeupsPerSecond: 0 } }) } };
    const markdown = renderMarkdown(results);
    expect(markdown).toContain('| ambit proxy (node-c), idle | 106.0 | 52.0 | 54.0 | 25.0 / 27.0 | 5.0 | 0.2 | 13 |');
    expect(markdown).toContain('| bare `node`, the same flags, idle (reference) | 42.0 | 8.0 | 34.0 | — | — | 0.0 | 0 |');
    results.scenarios.footprint.rows['ambit-l4'] = ok({ ...figures, bareNode: bare });
    expect(renderMarkdown(results)).toContain('| ambit proxy (node-c), idle | 106.0 | 52.0 | 54.0 | 25.0 / 27.0 | 5.0 | — | — |');
  });
});

describe('idle connections under an open-files limit', () => {
  it('gives each pair the connections its own processes can hold: HAProxy, two descriptors each, fewer than ambit', () => {
    // This machine's hard limit: 10,000 for ambit and the Node floor, 9,700 for HAProxy's pairs.
    expect(idleConnectionCounts(10_000, 20_000)).toEqual({ single: 10_000, paired: 9_700 });
    expect(idleConnectionCounts(10_000, 1_048_576)).toEqual({ single: 10_000, paired: 10_000 });
    expect(idleConnectionCounts(10_000, 8_192)).toEqual({ single: 7_650, paired: 3_800 });
    expect(idleConnectionCounts(10_000, 600)).toEqual({ single: 100, paired: 100 });
  });

  it("names both counts in the table's heading when they differ, one when they do not", () => {
    const results = emptyRun();
    const figures = (connections: number): IdleFigures => ({ connections, openFailed: 0, rssBeforeBytes: { a: 1, b: 1 }, rssAfterBytes: { a: 2, b: 2 }, bytesPerConnection: { a: 8000, b: 7000 }, maxBytesPerConnection: 8000, heapBytesPerConnection: {} });
    results.scenarios.idle = { settings: { connections: 10_000, haproxyConnections: 9_700, requested: 10_000 }, rows: { 'ambit-l4': ok(figures(10_000)), 'haproxy-l4': ok(figures(9_700)) } };
    expect(renderMarkdown(results)).toContain("### (e) idle connections — 10,000 concurrent idle connections through each pair (HAProxy's: 9,700, see the notes)");
    results.scenarios.idle.settings = { connections: 10_000, haproxyConnections: 10_000, requested: 10_000 };
    expect(renderMarkdown(results)).toContain('### (e) idle connections — 10,000 concurrent idle connections through the pair\n');
    // The JSON of runs before the two counts: one count for every pair.
    results.scenarios.idle.settings = { connections: 9_700, requested: 10_000 };
    expect(renderMarkdown(results)).toContain('### (e) idle connections — 9,700 concurrent idle connections through the pair\n');
  });
});

describe('targets of rows that did not run cleanly', () => {
  const target = (results: RunResults, prefix: string) => checkTargets(results).find((t) => t.target.startsWith(prefix));

  it("misses a target when ambit failed requests in any round, even one not shown, and a good ratio would have met it", () => {
    const results = roundsRun('throughput', {
      'ambit-l4': [ok(throughput(200)), ok({ ...throughput(300), failed: 7 }), ok(throughput(250))],
      'haproxy-l4': [ok(throughput(100)), ok(throughput(100)), ok(throughput(100))],
    });
    expect(target(results, 'ambit L4 max throughput')).toMatchObject({ met: false, measured: 'ambit L4: 7 failed' });
    // The (a) table shows the failures of the round it shows.
    const clean = throughputRun({ 'ambit-l4': [200], 'haproxy-l4': [100] });
    expect(renderMarkdown(clean)).toMatch(/\| ambit L4 \| 200 \| 1\.000 \| 2\.000 \| 0 \|/);
  });

  it("leaves a target unmet but not missed when HAProxy's pair failed requests: its failures would flatter ambit", () => {
    const results = roundsRun('throughput', { 'ambit-l4': [ok(throughput(200))], 'haproxy-l4': [ok({ ...throughput(100), failed: 3 })] });
    expect(target(results, 'ambit L4 max throughput')).toMatchObject({ met: null, measured: 'not measured: HAProxy L4 pair: 3 failed' });
    const skipped = roundsRun('throughput', { 'ambit-l4': [ok(throughput(200))], 'haproxy-l4': [{ status: 'skipped', reason: 'haproxy is not installed' }] });
    expect(target(skipped, 'ambit L4 max throughput')).toMatchObject({ met: null, measured: 'not measured: HAProxy L4 pair: skipped: haproxy is not installed' });
  });

  it('misses the CPU target when ambit did not keep the fixed rate, and never meets it on a CPU figure of zero or below', () => {
    const results = emptyRun();
    results.scenarios.latency = { settings: {}, rows: { 'ambit-l4': ok({ ...latency(40), achievedPerSecond: 1500 }), 'haproxy-l4': ok(latency(60)) } };
    expect(target(results, 'ambit L4 CPU per request')).toMatchObject({ met: false, measured: 'ambit L4: reached 1,500 of 2,000 req/s' });
    // A proxy whose CPU was not read (gone mid-run) gives a figure that would read as "met".
    results.scenarios.latency.rows['ambit-l4'] = ok(latency(-12));
    expect(target(results, 'ambit L4 CPU per request')).toMatchObject({ met: null });
    expect(target(results, 'ambit L4 CPU per request')?.measured).toMatch(/^not measured: a figure that is not positive/);
    results.scenarios.latency.rows['ambit-l4'] = ok(latency(40));
    expect(target(results, 'ambit L4 CPU per request')?.met).toBe(true);
  });

  it('misses the CPU target when ambit fell behind the rate in any round, not only the round shown', () => {
    const results = roundsRun('latency', {
      'ambit-l4': [ok(latency(40)), ok({ ...latency(30), achievedPerSecond: 1500 }), ok(latency(50))],
      'haproxy-l4': [ok(latency(60)), ok(latency(60)), ok(latency(60))],
    });
    expect(target(results, 'ambit L4 CPU per request')).toMatchObject({ met: false, measured: 'ambit L4: reached 1,500 of 2,000 req/s in round 2 of 3' });
  });

  it("misses a target on requests ambit failed while warming up, and never meets a memory limit with a figure of zero", () => {
    const results = throughputRun({ 'ambit-l4': [200], 'haproxy-l4': [100] });
    const shown = results.scenarios.throughput?.rows['ambit-l4'];
    if (shown?.status === 'ok') shown.figures.warmupFailed = 2;
    expect(target(results, 'ambit L4 max throughput')).toMatchObject({ met: false, measured: 'ambit L4: 2 failed' });
    const idle: IdleFigures = { connections: 10_000, openFailed: 0, rssBeforeBytes: { a: 2 }, rssAfterBytes: { a: 1 }, bytesPerConnection: { a: 0 }, maxBytesPerConnection: 0, heapBytesPerConnection: {} };
    results.scenarios.idle = { settings: {}, rows: { 'ambit-l4': ok(idle) } };
    expect(target(results, 'idle: ≤ 10 KiB')).toMatchObject({ met: null });
  });

  it('misses the rotation target when the rotation run failed, rather than calling it not measured', () => {
    const results = emptyRun();
    results.scenarios.rotation = { settings: {}, rows: { 'ambit-l4': { status: 'failed', reason: 'proxy node-a (pid 1) is gone' } } };
    expect(target(results, 'rotation under load, ambit L4')).toMatchObject({ met: false, measured: 'ambit L4: failed: proxy node-a (pid 1) is gone' });
    expect(target(results, 'rotation under load, ambit L7')).toMatchObject({ met: null, measured: 'ambit L7 (1,000 policies): not run' });
  });

  it("misses the rotation target on a warm-up's failure or a keep-alive connection the proxy closed, with no request failed", () => {
    const results = emptyRun();
    const rotation = { ratePerSecond: 2000, seconds: 20, ok: 40_000, failed: 0, latencyMs: null, newConnectionsOk: 1000, newConnectionsFailed: 0, rotations: 50, svidTtl: '4s' };
    results.scenarios.rotation = { settings: {}, rows: { 'ambit-l4': ok({ ...rotation, warmupFailed: 0, connectionsClosed: 0 }) } };
    expect(target(results, 'rotation under load, ambit L4')).toMatchObject({ met: true, measured: '0 failed, 41,000 in the measured run, 50 certificates rotated' });
    results.scenarios.rotation.rows['ambit-l4'] = ok({ ...rotation, warmupFailed: 0, connectionsClosed: 3 });
    expect(target(results, 'rotation under load, ambit L4')).toMatchObject({ met: false, shortfall: '3 connections closed' });
    results.scenarios.rotation.rows['ambit-l4'] = ok({ ...rotation, warmupFailed: 2, connectionsClosed: 0 });
    expect(target(results, 'rotation under load, ambit L4')).toMatchObject({ met: false, measured: 'ambit L4: 2 failed' });
    expect(renderMarkdown(results)).toContain('| ambit L4 | 50 | 0 (2) | 0 | 0 | 40,000 |');
  });
});
