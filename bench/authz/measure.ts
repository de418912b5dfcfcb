// Per-decision latency from batches. A decision of the compiled matcher can take less than the resolution and
// the cost of reading the clock (performance.now() itself costs tens of nanoseconds), so each sample times
// a batch of B decisions between two clock readings and divides by B; B is chosen per engine and mode so a batch
// lasts ~targetBatchNs, and is 1 for engines whose decision already takes longer than that (then every sample is
// one decision). Two ways to fill a batch:
//   'interleaved'  the next B requests of the mix in a shuffled order, pass after pass: consecutive decisions are
//                  for different workloads and policies, as in a proxy serving many, so cache misses count. With
//                  B > 1 the p99 is over batch means and hides variation between the requests of one batch.
//   'repeated'     one request decided B times: the same work with warm caches and branch predictors, so the
//                  p50/p99 are over requests (the slowest requests of the mix set the p99) but flatter the cost.
// In interleaved mode the inputs of a batch (the request's context, its strings and addresses, the destination) are
// read just before its clock starts: a proxy builds the context right before deciding, so those are in cache there,
// and the misses left to count are those of the policy data. The policy data is never touched outside the clock.
// GC pauses and preemption by other processes land in the samples they hit, in both modes.
import { Picker } from './generate.ts';

export interface Latency {
  /** Per decision, nanoseconds: the median over ROUNDS consecutive slices of the samples of each slice's quantile. */
  readonly p50Ns: number;
  readonly p99Ns: number;
  /** The same quantiles over all samples pooled: every preemption and GC pause of the run counts. */
  readonly pooledP50Ns: number;
  readonly pooledP99Ns: number;
  readonly meanNs: number;
  readonly maxNs: number;
  /** Batch samples taken and decisions per batch. */
  readonly samples: number;
  readonly batch: number;
  readonly decisions: number;
  /** Answers seen while timing (the last decision of each batch), for the equivalence check. */
  readonly answers: ReadonlyMap<number, boolean>;
}

export type BatchMode = 'interleaved' | 'repeated';

export interface MeasureOptions {
  readonly mode: BatchMode;
  /** Stop after this long once one whole pass is done (and at most maxPasses passes over the mix). */
  readonly budgetMs: number;
  readonly maxPasses: number;
  readonly targetBatchNs: number;
  readonly warmupMs: number;
  readonly seed: number;
}

/**
 * The samples are cut, in the order they were taken, into this many slices; the reported p50 and p99 are the
 * medians of the slices' own p50 and p99. On a shared machine another process's burst of work lands in one slice
 * and no longer sets the p99 of the whole run; the pooled figures are kept beside them.
 */
export const ROUNDS = 5;

/** Nearest-rank quantile of sorted values. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

/** What one clock reading costs here: the floor under any single-decision timing. */
export function clockCostNs(): number {
  const rounds = 100_000;
  let last = 0;
  const started = performance.now();
  for (let i = 0; i < rounds; i++) last = performance.now();
  return ((last - started) * 1e6) / rounds;
}

/** A calibration of the machine: one iteration of a dependent integer add loop (about 0.3–1 ns on an unshared modern core). */
export function loopCostNs(): number {
  const rounds = 200_000_000;
  let value = 0;
  const started = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) value = (value + i) | 0;
  const elapsed = Number(process.hrtime.bigint() - started);
  sink += value & 1;
  return elapsed / rounds;
}

let sink = 0;

/** `decide(i)` decides request i of the mix; `indices` are the requests of one layer. */
/** `touch(i)` reads the inputs of request i (never the engine's policy data) and returns anything derived from them. */
export function measure(decide: (index: number) => boolean, indices: readonly number[], options: MeasureOptions, touch: (index: number) => number = () => 0): Latency {
  const pick = new Picker(options.seed);
  // Warm-up (after the equivalence pass has already decided every request once): passes over the mix until
  // warmupMs, so the paths of the mix are optimised before samples are taken. The clock is read every 64 decisions.
  let started = performance.now();
  let warmDecisions = 0;
  warm: while (true) {
    for (const index of indices) {
      sink += decide(index) ? 1 : 0;
      if ((++warmDecisions & 63) === 0 || warmDecisions < 64) {
        if (performance.now() - started > options.warmupMs) break warm;
      }
    }
  }
  let estimateNs = ((performance.now() - started) * 1e6) / warmDecisions;
  if (options.mode === 'repeated') {
    // Repeating one request is cheaper than walking the mix: size B from repeats of a few requests.
    const probe = indices.slice(0, 20);
    const probeStarted = process.hrtime.bigint();
    for (const index of probe) for (let k = 0; k < 16; k++) sink += decide(index) ? 1 : 0;
    estimateNs = Number(process.hrtime.bigint() - probeStarted) / (probe.length * 16);
  }
  const batch = Math.max(1, Math.min(1000, Math.round(options.targetBatchNs / estimateNs)));

  const samples: number[] = [];
  // Answers are recorded outside the timed region (the last decision of each batch); the caller decides the rest.
  const answers = new Map<number, boolean>();
  started = performance.now();
  let order: number[] = [];
  let position = 0;
  let passes = 0;
  const take = options.mode === 'interleaved' ? batch : 1;
  while (true) {
    if (position + take > order.length) {
      if (passes >= options.maxPasses || (passes >= 1 && performance.now() - started > options.budgetMs)) break;
      // A new pass starts where the last one left off: a tail shorter than a batch joins the next pass's order.
      order = [...order.slice(position), ...pick.shuffle([...indices])];
      position = 0;
      passes++;
    }
    let answer = false;
    // performance.now(), not process.hrtime.bigint(): a BigInt is allocated after the clock was read, so the
    // collector's work it triggers (scavenges, incremental marking steps, more of both in a big heap) landed
    // inside the timed batch.
    let before: number;
    let after: number;
    if (options.mode === 'interleaved') {
      for (let k = 0; k < batch; k++) sink += touch(order[position + k] as number);
      before = performance.now();
      for (let k = 0; k < batch; k++) {
        answer = decide(order[position + k] as number);
        sink += answer ? 1 : 0;
      }
      after = performance.now();
    } else {
      const index = order[position] as number;
      before = performance.now();
      for (let k = 0; k < batch; k++) {
        answer = decide(index);
        sink += answer ? 1 : 0;
      }
      after = performance.now();
    }
    position += take;
    samples.push(((after - before) * 1e6) / batch);
    answers.set(order[position - 1] as number, answer);
  }
  const slices: { p50: number; p99: number }[] = [];
  const sliceSize = Math.ceil(samples.length / ROUNDS);
  for (let start = 0; start < samples.length; start += sliceSize) {
    const slice = samples.slice(start, start + sliceSize).sort((a, b) => a - b);
    slices.push({ p50: quantile(slice, 0.5), p99: quantile(slice, 0.99) });
  }
  const medianOf = (values: number[]) => quantile(values.sort((a, b) => a - b), 0.5);
  samples.sort((a, b) => a - b);
  let total = 0;
  for (const sample of samples) total += sample;
  return {
    p50Ns: medianOf(slices.map((slice) => slice.p50)),
    p99Ns: medianOf(slices.map((slice) => slice.p99)),
    pooledP50Ns: quantile(samples, 0.5),
    pooledP99Ns: quantile(samples, 0.99),
    meanNs: total / samples.length,
    maxNs: samples[samples.length - 1] as number,
    samples: samples.length,
    batch,
    decisions: samples.length * batch,
    answers,
  };
}

/** Keeps the JIT from discarding decisions whose result is never read. */
export function consumed(): number {
  return sink;
}
