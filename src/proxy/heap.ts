// Returning the heap's spare pages after the proxy loads or reloads its configuration. Parsing and compiling leave
// tens of MiB of garbage, and V8 keeps the pages its heap grew to; its memory reducer did not give them back in 10 s
// of idleness. With 1,000 workloads configured that was 20 MiB of an idle proxy's RSS (152 against 132 MiB,
// `npm run bench -- --scenario footprint`). One full collection that releases them, at least a second after the last
// configuration step, when the process runs with --expose-gc (LONG_RUNNING_NODE_FLAGS); without it, nothing.
//
// Only while the proxy is quiet. The collection stops the process for 60–100 ms (two full collections) and throws
// away optimized code whose maps it frees, the data path's with the parsers': a proxy carrying traffic paid both on
// every configuration change, a stall for every tunnel and then seconds of re-optimization. In the benchmark the
// collection fell into the warm-up: at 2,000 req/s ambit L4 spent 114–128 µs of CPU per request in six runs with it
// and 108–120 in six without, L7 267 and 280 against 247 and 260 (`node bench/run.ts --scenario b --rows
// ambit-l4,ambit-l7`, alternated). Under traffic V8's own collections keep the heap in check; the pages go back once
// the loop idles.
import { performance } from 'node:perf_hooks';
import type { EventLoopUtilization } from 'node:perf_hooks';

export type CollectGarbage = (options: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;
/** performance.eventLoopUtilization: since a mark, or the mark itself. */
export type LoopUtilization = (since?: EventLoopUtilization) => EventLoopUtilization;

/**
 * The share of the last interval the event loop may have been busy for the process to count as quiet. An idle proxy
 * with 1,000 workloads configured was busy 0.4 % in the second after its start had settled, each proxy of a pair
 * carrying 2,000 req/s 8–20 % (measured in the benchmark's footprint and fixed-rate scenarios).
 */
export const QUIET_LOOP_UTILIZATION = 0.01;

const loopUtilization: LoopUtilization = (since) => performance.eventLoopUtilization(since);

export class HeapRelease {
  readonly #collect: CollectGarbage | undefined;
  readonly #delayMs: number;
  readonly #utilization: LoopUtilization;
  #timer: NodeJS.Timeout | null = null;
  #since: EventLoopUtilization | undefined;
  /** Stopped for good: the proxy closing may still finish a configuration step, which must not arm it again. */
  #stopped = false;

  constructor(collect: CollectGarbage | undefined = globalThis.gc, delayMs = 1000, utilization: LoopUtilization = loopUtilization) {
    this.#collect = collect;
    this.#delayMs = delayMs;
    this.#utilization = utilization;
  }

  /**
   * Collects once, `delayMs` after the last call (a burst of configuration steps costs one collection), or, if the
   * loop was busier than QUIET_LOOP_UTILIZATION over that time, after the first such interval that was not.
   */
  schedule(): void {
    if (this.#collect === undefined || this.#stopped) return;
    this.#arm();
  }

  /** No collection from now on, whatever is scheduled later. */
  stop(): void {
    this.#stopped = true;
    this.#clear();
  }

  #clear(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #arm(): void {
    this.#clear();
    this.#since = this.#utilization();
    this.#timer = setTimeout(() => this.#fire(), this.#delayMs);
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = null;
    if (this.#utilization(this.#since).utilization > QUIET_LOOP_UTILIZATION) {
      this.#arm();
      return;
    }
    this.#collect?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
  }
}
