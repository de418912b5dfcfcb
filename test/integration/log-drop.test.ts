// A process whose stdout nobody reads (a stalled pipe, a full log collector) drops log lines past its buffer rather
// than grow or wait: it says so once on stderr, counts every dropped line in ambit_log_lines_dropped_total, and says
// how many were dropped once stdout is read again. A real child process writing to a real pipe.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const LOG_MODULE = fileURLToPath(new URL('../../src/observe/log.ts', import.meta.url));
const METRICS_MODULE = fileURLToPath(new URL('../../src/observe/metrics.ts', import.meta.url));

// 24,000 lines of ~1 KiB: 24 MiB against a 16 MiB buffer, written while the parent does not read.
const CHILD = `
const { createLogger, droppedLogLines } = await import(${JSON.stringify(LOG_MODULE)});
const { ProxyMetrics } = await import(${JSON.stringify(METRICS_MODULE)});
const { Registry } = await import('prom-client');
const registry = new Registry();
new ProxyMetrics(registry);
const logger = createLogger({ name: 'log-drop-test', level: 'info' });
const filler = 'x'.repeat(1000);
for (let i = 0; i < 24000; i++) logger.info({ i, filler }, 'line');
const metric = (await registry.getSingleMetricAsString('ambit_log_lines_dropped_total')).split('\\n').find((l) => l.startsWith('ambit_log_lines_dropped_total'));
process.stderr.write('counted ' + droppedLogLines() + ' | ' + metric + '\\n');
// Keep running until the parent has read stdout to the end of the buffer.
setTimeout(() => {}, 5000);
process.stdin.on('data', () => process.exit(0));
`;

describe('logs to a stdout nobody reads', () => {
  it('drop the lines past the buffer, say so once, count them, and say how many once stdout is read again', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD], { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdout.pause();
    let stderr = '';
    child.stderr.setEncoding('utf8');
    const counted = new Promise<string>((resolve, reject) => {
      child.on('exit', (code) => reject(new Error(`the child exited (${code}) before counting: ${stderr}`)));
      child.stderr.on('data', (chunk: string) => {
        stderr += chunk;
        const match = /counted (\d+) \| ambit_log_lines_dropped_total (\d+)/.exec(stderr);
        if (match) resolve(stderr);
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await counted;
      const match = /counted (\d+) \| ambit_log_lines_dropped_total (\d+)/.exec(stderr) as RegExpExecArray;
      const dropped = Number(match[1]);
      expect(dropped).toBeGreaterThan(1000);
      expect(Number(match[2])).toBe(dropped);
      expect(stderr.match(/stdout is not being read/g)).toHaveLength(1);
      // Now read: what was kept arrives whole, line by line, and the count follows on stderr.
      let stdout = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (chunk: string) => (stdout += chunk));
      child.stdout.resume();
      await expect.poll(() => stderr, { timeout: 10_000 }).toContain(`stdout is read again; ${dropped} log lines were dropped`);
      const lines = stdout.split('\n').filter((line) => line !== '');
      expect(lines.length + dropped).toBe(24_000);
      for (const line of [lines[0], lines.at(-1)]) expect(JSON.parse(line as string)).toMatchObject({ msg: 'line', name: 'log-drop-test' });
      child.stdin.write('done');
    } finally {
      child.kill();
      await exited;
    }
  });

  it("say once on stderr that stdout's reader went away, and count every line after as dropped, the process going on", async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', EPIPE_CHILD], { cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => (stderr += chunk));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      // The first line read, the reader goes (as `| head -1` does).
      await new Promise((resolve) => child.stdout.once('data', resolve));
      child.stdout.destroy();
      await expect.poll(() => stderr, { timeout: 10_000 }).toMatch(/still running after (\d+) lines, (\d+) counted as dropped/);
      const match = /still running after (\d+) lines, (\d+) counted as dropped/.exec(stderr) as RegExpExecArray;
      expect(Number(match[2])).toBeGreaterThan(0);
      expect(stderr.match(/stdout was closed by its reader \(EPIPE\)/g)).toHaveLength(1);
    } finally {
      child.kill();
      await exited;
    }
  });

  it('go on when stderr is the same closed pipe (`2>&1 | head`): saying so fails too, and must not end the process', async () => {
    const child = spawn('sh', ['-c', `exec "${process.execPath}" --input-type=module -e "$CHILD" 2>&1`], { cwd: fileURLToPath(new URL('../..', import.meta.url)), env: { ...process.env, CHILD: EPIPE_CHILD }, stdio: ['pipe', 'pipe', 'ignore'] });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      await new Promise((resolve) => child.stdout.once('data', resolve));
      child.stdout.destroy();
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      expect(child.exitCode).toBeNull();
    } finally {
      child.kill();
      await exited;
    }
  });
});

// Logs a line every 5 ms for 1.5 s, then says how many it counted as dropped.
const EPIPE_CHILD = `
const { createLogger, droppedLogLines } = await import(${JSON.stringify(LOG_MODULE)});
const logger = createLogger({ name: 'log-epipe-test', level: 'info' });
let written = 0;
const timer = setInterval(() => { logger.info({ written }, 'line'); written++; }, 5);
setTimeout(() => {
  clearInterval(timer);
  process.stderr.write('still running after ' + written + ' lines, ' + droppedLogLines() + ' counted as dropped\\n');
  setTimeout(() => {}, 10000);
}, 1500);
`;
