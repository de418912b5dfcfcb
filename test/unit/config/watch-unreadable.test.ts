// A configuration watcher out of file descriptors (real EMFILE, in a process of its own with a low limit) reports
// that it cannot read, once, not a rejected change; and applies the change once it can read again.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { configDir, meshYaml, podYaml, removeConfigDirs } from './temp-config.ts';

const SCRIPT = fileURLToPath(new URL('../../fixtures/scripts/watch-out-of-descriptors.ts', import.meta.url));

afterEach(removeConfigDirs);

function run(dir: string, pod: string): Promise<{ lines: Record<string, unknown>[]; stderr: string }> {
  return new Promise((resolve, reject) => {
    // A limit low enough to reach, high enough for Node itself to start.
    const child = spawn('sh', ['-c', 'ulimit -n 64 && exec "$0" "$@"', process.execPath, SCRIPT, dir, pod], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', () => resolve({ lines: stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>), stderr }));
  });
}

describe('a configuration watcher out of file descriptors', () => {
  it('says once that it cannot read the configuration (no rejected change), and applies the change once it can', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' }) });
    const { lines, stderr } = await run(dir, podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.2' }));
    expect(lines.at(-1), stderr).toEqual({ done: true });
    // fs.watch may fail too (Node's recursive watch scans directories), and the watcher says it polls instead.
    const reports = lines.filter((line) => 'kind' in line && line.kind !== 'watch');
    expect(reports.map((line) => line.kind)).toEqual(['unreadable']);
    expect(String(reports[0]?.message)).toContain('EMFILE');
    expect(lines.filter((line) => 'change' in line)).toEqual([{ change: ['10.0.0.2'] }]);
  }, 20_000);
});
