// The benchmark's child processes: spawned each in its own process group (so a whole nginx, master and
// worker, stops together), pinned to a CPU when pinning is on, logged to a file, and stopped by the ids we
// hold, on success, failure and signals alike. Also the /proc readers the figures come from.
import { spawn, execFileSync } from 'node:child_process';
import type { ChildProcess, StdioOptions } from 'node:child_process';
import { openSync, closeSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';
import { release } from 'node:os';
import { gunzipSync } from 'node:zlib';

/** Where each kind of process runs when pinning is on (2 cores: load + upstream on one, the proxy pair on the other). */
export type CpuRole = 'load' | 'proxy';

export interface Pinning {
  readonly load: number;
  readonly proxy: number;
}

export interface Spawned {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  readonly logFile: string;
  readonly exited: Promise<number | null>;
  exitCode: number | null | undefined;
}

export interface SpawnOptions {
  cpu?: CpuRole | null;
  env?: NodeJS.ProcessEnv;
  ipc?: boolean;
  cwd?: string;
}

/** SIGTERM first; what is still there after this long gets SIGKILL. */
const STOP_GRACE_MS = 5_000;

export class Processes {
  readonly #logDir: string;
  readonly #pinning: Pinning | null;
  readonly #live = new Set<Spawned>();

  constructor(logDir: string, pinning: Pinning | null) {
    this.#logDir = logDir;
    this.#pinning = pinning;
  }

  get pinning(): Pinning | null {
    return this.#pinning;
  }

  spawn(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): Spawned {
    const logFile = join(this.#logDir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    const cpu = options.cpu && this.#pinning ? this.#pinning[options.cpu] : undefined;
    const [file, argv] = cpu === undefined ? [command, [...args]] : ['taskset', ['-c', String(cpu), command, ...args]];
    const stdio: StdioOptions = options.ipc ? ['ignore', fd, fd, 'ipc'] : ['ignore', fd, fd];
    // Own process group: a Ctrl-C on the terminal reaches only us, and we stop each group whole.
    const child = spawn(file, argv, { stdio, detached: true, env: { ...process.env, ...options.env }, cwd: options.cwd });
    closeSync(fd);
    if (child.pid === undefined) throw new Error(`cannot start ${name} (${command})`);
    const spawned: Spawned = {
      name,
      pid: child.pid,
      child,
      logFile,
      exitCode: undefined,
      exited: new Promise((resolve) => {
        child.once('exit', (code, signal) => {
          spawned.exitCode = code ?? (signal ? -1 : null);
          this.#live.delete(spawned);
          resolve(code);
        });
        child.once('error', () => resolve(null));
      }),
    };
    this.#live.add(spawned);
    return spawned;
  }

  /** Fails with the tail of its log when the process has already exited. */
  assertRunning(spawned: Spawned): void {
    if (spawned.exitCode !== undefined) throw new Error(`${spawned.name} exited (${spawned.exitCode}):\n${tail(spawned.logFile, 15)}`);
  }

  async stop(spawned: Spawned): Promise<void> {
    if (spawned.exitCode !== undefined) return;
    signalGroup(spawned.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(spawned.pid, 'SIGKILL'), STOP_GRACE_MS);
    await spawned.exited;
    clearTimeout(timer);
    // nginx's worker, or anything else the child started in its group, goes too.
    signalGroup(spawned.pid, 'SIGKILL');
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.#live].map((spawned) => this.stop(spawned)));
  }

  /** Last resort from process.on('exit'): no waiting possible there. */
  killAllSync(): void {
    for (const spawned of this.#live) signalGroup(spawned.pid, 'SIGKILL');
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

export function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Pins this process, every thread of it, to one CPU. */
export function pinSelf(cpu: number): boolean {
  try {
    execFileSync('taskset', ['-a', '-cp', String(cpu), String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function hasCommand(name: string): string | null {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin']) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

let clockTicks: number | undefined;

/** Clock ticks per second for /proc/PID/stat (CLK_TCK, 100 on Linux nearly everywhere). */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

/** CPU time (user + system, every thread) of a process, in microseconds; 0 once it is gone. */
export function cpuMicros(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / ticksPerSecond();
  } catch {
    return 0;
  }
}

/**
 * How often a process's main thread has gone to sleep (voluntary context switches, /proc/PID/status): each time its
 * event loop waits for I/O or a timer (or it waits for a lock), so at idle, how often something wakes it; 0 once it is
 * gone.
 */
export function mainThreadSleeps(pid: number): number {
  try {
    return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** What an idle process costs over `ms`: CPU (% of one core, every thread) and its main thread's wake-ups per second. */
export async function idleCost(pid: number, ms: number): Promise<{ idleCpuPercent: number; idleWakeupsPerSecond: number }> {
  const cpuBefore = cpuMicros(pid);
  const sleepsBefore = mainThreadSleeps(pid);
  await sleep(ms);
  return {
    idleCpuPercent: Math.round(((cpuMicros(pid) - cpuBefore) / (ms * 1000)) * 1000) / 10,
    idleWakeupsPerSecond: Math.round(((mainThreadSleeps(pid) - sleepsBefore) * 1000) / ms),
  };
}

/**
 * What a process's resident set is made of, in bytes (/proc/PID/status): anonymous memory (heaps, stacks) and pages
 * of mapped files (the node binary's code and read-only data, shared libraries); 0s once it is gone.
 */
export function rssParts(pid: number): { rss: number; anon: number; file: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
    return { rss: kib('VmRSS'), anon: kib('RssAnon'), file: kib('RssFile') };
  } catch {
    return { rss: 0, anon: 0, file: 0 };
  }
}

/** Resident set size (VmRSS) of a process, in bytes. */
export function rssBytes(pid: number): number {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The process and everything it started (nginx's worker), by /proc/PID/task/TID/children. */
export function processTree(pid: number): number[] {
  const result = [pid];
  for (let i = 0; i < result.length; i++) {
    const current = result[i] as number;
    try {
      for (const task of readdirSync(`/proc/${current}/task`)) {
        const children = readFileSync(`/proc/${current}/task/${task}/children`, 'utf8').trim();
        if (children) for (const child of children.split(' ')) result.push(Number(child));
      }
    } catch {
      // gone
    }
  }
  return result;
}

export function treeCpuMicros(pid: number): number {
  let total = 0;
  for (const member of processTree(pid)) total += cpuMicros(member);
  return total;
}

/** The open-files limit (soft, hard) of this process. */
export function openFilesLimit(): { soft: number; hard: number } {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files')) ?? '';
  const [soft, hard] = line.replace('Max open files', '').trim().split(/\s+/);
  const parse = (value: string | undefined) => (value === 'unlimited' ? 1_048_576 : Number(value) || 1024);
  return { soft: parse(soft), hard: parse(hard) };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether something accepts TCP connections on host:port now. */
export function isListening(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.setTimeout(1000, () => socket.destroy());
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
    socket.once('close', () => resolve(false));
  });
}

/** Waits until host:port accepts a TCP connection. */
export async function waitForPort(host: string, port: number, timeoutMs: number, alive?: () => void): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    alive?.();
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host, port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * Whether the kernel charges interrupt time to the interrupted process: so when it was built without
 * CONFIG_IRQ_TIME_ACCOUNTING (as this VM's), read from /proc/config.gz or /boot/config-RELEASE; null when neither says.
 */
function interruptsChargedToProcesses(): boolean | null {
  const configs: Array<() => string> = [
    () => gunzipSync(readFileSync('/proc/config.gz')).toString('latin1'),
    () => readFileSync(`/boot/config-${release()}`, 'latin1'),
  ];
  for (const read of configs) {
    try {
      return !/^CONFIG_IRQ_TIME_ACCOUNTING=y$/m.test(read());
    } catch {
      // not there: the next one
    }
  }
  return null;
}

let chargedToProcesses: boolean | null | undefined;

/**
 * CPU time every process on the machine spent in user and system mode, and the time the hypervisor stole, in
 * microseconds (from /proc/stat). Against the CPU of our own processes this shows whether something else ran during a
 * measurement. Interrupt time counts as busy where the kernel charges it to the process it interrupted (no
 * CONFIG_IRQ_TIME_ACCOUNTING, as on this VM): our processes' figures then hold the ticks that landed in a softirq
 * (loopback TCP's receive path), and a machine total without them read less than ours and hid other work. Where the
 * kernel accounts interrupts apart (or says nothing), they are left out: they are then in no process's figures, and
 * the work of our own traffic would read as another process's.
 */
export function machineCpuMicros(): { busy: number; steal: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    const perTick = 1e6 / ticksPerSecond();
    if (chargedToProcesses === undefined) chargedToProcesses = interruptsChargedToProcesses();
    const interrupts = chargedToProcesses === true ? (irq ?? 0) + (softirq ?? 0) : 0;
    return { busy: ((user ?? 0) + (nice ?? 0) + (system ?? 0) + interrupts) * perTick, steal: (steal ?? 0) * perTick };
  } catch {
    return { busy: 0, steal: 0 };
  }
}
