// The authorization benchmark end to end: `node bench/authz/run.ts --quick` generates and loads its
// configuration, checks every engine against the reference evaluator on the whole mix, times every engine, prints
// a Markdown row per engine (or a peer marked skipped with its reason) and writes valid JSON. The figures are not
// judged here (the machine running the tests is busy with other tests): only that they are there and positive.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
/** --quick finishes in under 20 s on an idle machine; the test machine runs other suites beside it. */
const RUN_TIMEOUT_MS = 120_000;

interface LatencyFigures {
  p50Ns: number;
  p99Ns: number;
  meanNs: number;
  samples: number;
  batch: number;
}

interface Results {
  bench: string;
  date: string;
  command: string;
  quick: boolean;
  machine: { cores: number; cpu: string; node: string };
  config: { policies: number; workloads: number; compileMs: { first: number } };
  mix: { requests: number; allowed: number; denied: number };
  features: string[];
  engines: { engine: string; mode: string; loadMs: number; L4: LatencyFigures; L7: LatencyFigures; ratioVsAmbit: Record<string, number> }[];
  skipped: { name: string; skipped: string }[];
  targets: Record<string, unknown>;
}

/** Every engine the issue names: a row of figures or a skipped row, never silently absent. */
const ENGINES = [/^ambit \(compiled\)$/, /^reference evaluator$/, /^Cedar/, /^casbin/];

let stdout = '';
let stderr = '';
let code: number | null = null;
let results: Results;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-authz-bench-'));
  const out = join(dir, 'authz.json');
  const child = spawn(process.execPath, ['bench/authz/run.ts', '--quick', '--out', out], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  if (code === 0) results = JSON.parse(await readFile(out, 'utf8')) as Results;
}, RUN_TIMEOUT_MS);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bench/authz --quick', () => {
  it('exits 0 after every engine agreed with the reference evaluator', () => {
    expect(code, stderr).toBe(0);
    expect(stdout).toContain('every engine agreed with the reference');
  });

  it('writes valid JSON naming the run: date, command, machine, configuration and mix', () => {
    expect(results.bench).toBe('authz');
    expect(results.quick).toBe(true);
    expect(results.date).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    expect(results.command).toContain('bench/authz/run.ts --quick');
    expect(results.machine.cores).toBeGreaterThan(0);
    expect(results.machine.node).toMatch(/^v\d+/);
    expect(results.config.policies).toBe(1000);
    expect(results.config.workloads).toBe(100);
    expect(results.config.compileMs.first).toBeGreaterThan(0);
    expect(results.mix.allowed).toBeGreaterThan(0);
    expect(results.mix.denied).toBeGreaterThan(0);
    expect(results.mix.allowed + results.mix.denied).toBe(results.mix.requests);
    expect(results.features.length).toBeGreaterThan(0);
  });

  it('has a row with positive figures, or a skipped row with its reason, for every engine', () => {
    for (const pattern of ENGINES) {
      const measured = results.engines.filter((engine) => pattern.test(engine.engine));
      const skipped = results.skipped.filter((entry) => pattern.test(entry.name));
      expect(measured.length + skipped.length, `no row for ${pattern}`).toBeGreaterThan(0);
      for (const entry of skipped) expect(entry.skipped.length).toBeGreaterThan(0);
      for (const engine of measured) {
        for (const layer of [engine.L4, engine.L7]) {
          expect(layer.p50Ns).toBeGreaterThan(0);
          expect(layer.p99Ns).toBeGreaterThanOrEqual(layer.p50Ns);
          expect(layer.samples).toBeGreaterThan(0);
          expect(layer.batch).toBeGreaterThanOrEqual(1);
        }
        expect(engine.loadMs).toBeGreaterThan(0);
        for (const ratio of Object.values(engine.ratioVsAmbit)) expect(ratio).toBeGreaterThan(0);
      }
    }
  });

  it('prints the Markdown table with every engine, the date and the command', () => {
    expect(stdout).toContain('| engine | L4 p50 | L4 p99 | L7 p50 | L7 p99 | compile/load time | ratio vs ambit');
    for (const engine of results.engines) expect(stdout).toContain(`| ${engine.engine} |`);
    for (const entry of results.skipped) expect(stdout).toMatch(new RegExp(`\\| ${entry.name.replace(/[()]/g, '\\$&')} \\| skipped`));
    expect(stdout).toContain(results.date);
    expect(stdout).toContain('Command: `node bench/authz/run.ts --quick');
  });
});
