// Returning the heap's spare pages after the proxy loads or reloads its configuration. Parsing and compiling leave
// tens of MiB of garbage, and V8 keeps the pages its heap grew to; its memory reducer did not give them back in 10 s
// of idleness. With 1,000 workloads configured that was 20 MiB of an idle proxy's RSS (152 against 132 MiB,
// `npm run bench -- --scenario footprint`). One full collection that releases them, a second after the last
// configuration step, when the process runs with --expose-gc (LONG_RUNNING_NODE_FLAGS); without it, nothing.
export type CollectGarbage = (options: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

export class HeapRelease {
  readonly #collect: CollectGarbage | undefined;
  readonly #delayMs: number;
  #timer: NodeJS.Timeout | null = null;

  constructor(collect: CollectGarbage | undefined = globalThis.gc, delayMs = 1000) {
    this.#collect = collect;
    this.#delayMs = delayMs;
  }

  /** Collects once, `delayMs` after the last call: a burst of configuration steps costs one collection. */
  schedule(): void {
    const collect = this.#collect;
    if (collect === undefined) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      collect({ type: 'major', execution: 'sync', flavor: 'last-resort' });
    }, this.#delayMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
