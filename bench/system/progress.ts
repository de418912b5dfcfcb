// The progress line on stderr: which scenario and row are running, for how long, and the run's elapsed
// time. On a terminal it is one line rewritten in place; otherwise one line per step.

export class Progress {
  readonly #started = Date.now();
  readonly #tty = process.stderr.isTTY === true;
  #text = '';
  #stepStarted = Date.now();
  #expectedSeconds: number | undefined;
  #timer: NodeJS.Timeout | null = null;

  constructor() {
    if (this.#tty) {
      this.#timer = setInterval(() => this.#render(), 250);
      this.#timer.unref();
    }
  }

  step(text: string, expectedSeconds?: number): void {
    this.#text = text;
    this.#stepStarted = Date.now();
    this.#expectedSeconds = expectedSeconds;
    if (this.#tty) this.#render();
    else process.stderr.write(`${this.#prefix()} ${text}\n`);
  }

  /** A line of its own that stays (warnings, notes), above the progress line. */
  note(text: string): void {
    if (this.#tty) process.stderr.write('\r\x1b[2K');
    process.stderr.write(`${this.#prefix()} ${text}\n`);
    if (this.#tty) this.#render();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#tty) process.stderr.write('\r\x1b[2K');
  }

  #prefix(): string {
    const elapsed = Math.floor((Date.now() - this.#started) / 1000);
    return `[bench ${Math.floor(elapsed / 60)}:${String(elapsed % 60).padStart(2, '0')}]`;
  }

  #render(): void {
    const stepSeconds = (Date.now() - this.#stepStarted) / 1000;
    const of = this.#expectedSeconds === undefined ? `${stepSeconds.toFixed(0)} s` : `${Math.min(stepSeconds, this.#expectedSeconds).toFixed(0)}/${this.#expectedSeconds} s`;
    const line = `${this.#prefix()} ${this.#text} · ${of}`;
    const width = process.stderr.columns ?? 120;
    process.stderr.write(`\r\x1b[2K${line.length > width - 1 ? line.slice(0, width - 1) : line}`);
  }
}
