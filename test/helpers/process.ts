// Running the real `ambit` CLI as child processes on loopback, reading their JSON log lines.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { BUILT_CLI } from '../../bench/system/build.ts';

// The compiled build (test/global-setup.ts builds it before the suite).
const CLI = BUILT_CLI;
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `ambit ARGS` to completion (bounded by timeoutMs). */
export function runAmbit(args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ambit ${args.join(' ')} did not finish in ${options.timeoutMs ?? 30_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, options.timeoutMs ?? 30_000);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

export type LogLine = Record<string, unknown> & { msg?: string };

// Children die with the test worker, even when a test times out before its cleanup runs.
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A long-running `ambit` process whose stdout is pino JSON. */
export class AmbitProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  stderr = '';
  #waiters: Array<{ predicate: (line: LogLine) => boolean; resolve: (line: LogLine) => void }> = [];
  #exited: Promise<number | null>;

  private constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let buffer = '';
    this.child.stdout?.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const text = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        let line: LogLine;
        try {
          line = JSON.parse(text) as LogLine;
        } catch {
          line = { msg: text };
        }
        this.lines.push(line);
        this.#waiters = this.#waiters.filter((waiter) => {
          if (!waiter.predicate(line)) return true;
          waiter.resolve(line);
          return false;
        });
      }
    });
    this.child.stderr?.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    running.add(this.child);
    this.#exited = new Promise((resolve) => this.child.once('exit', (code) => {
      running.delete(this.child);
      resolve(code);
    }));
  }

  static start(args: string[], env: NodeJS.ProcessEnv = {}): AmbitProcess {
    return new AmbitProcess(args, env);
  }

  /** Resolves with the first log line (past or future) matching the predicate. */
  waitFor(predicate: (line: LogLine) => boolean, timeoutMs = 20_000, what = 'log line'): Promise<LogLine> {
    const found = this.lines.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; stderr: ${this.stderr}; last lines: ${JSON.stringify(this.lines.slice(-5))}`)), timeoutMs);
      const exitWatch = this.#exited.then((code) => reject(new Error(`process exited (${code}) while waiting for ${what}; stderr: ${this.stderr}`)));
      void exitWatch;
      this.#waiters.push({
        predicate,
        resolve: (line) => {
          clearTimeout(timer);
          resolve(line);
        },
      });
    });
  }

  waitForMessage(msg: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((line) => line.msg === msg, timeoutMs, `"${msg}"`);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    const code = await this.#exited;
    clearTimeout(timer);
    return code;
  }
}

/** A port free right now on loopback (for processes that must know each other's address before starting). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}
