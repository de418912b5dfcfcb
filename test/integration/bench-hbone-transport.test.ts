// The HBONE transport benchmark end to end (bench/proxy/hbone-transport.ts): a server process, a client process per
// measurement on each transport, and a table with a positive figure for every transport and direction. The figures
// themselves are not judged (the machine running the tests is busy); that the harness measures both paths is.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bench/proxy/hbone-transport.ts', ...args], { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('the HBONE transport benchmark', () => {
  it('measures the native TLS socket and the SessionSocket in every direction, with positive figures', async () => {
    const { code, stdout, stderr } = await runBench(['--rounds', '1', '--seconds', '1', '--rate', '500', '--mib', '8']);
    expect(code, stderr).toBe(0);
    const rows = stdout.split('\n').filter((line) => line.startsWith('| µs per'));
    expect(rows).toHaveLength(3);
    for (const row of rows) {
      const [native, wrapped, ratio] = row.split('|').slice(2, 5).map((cell) => Number(cell.trim().replace(/[×,]/g, '')));
      expect(native, row).toBeGreaterThan(0);
      expect(wrapped, row).toBeGreaterThan(0);
      expect(ratio, row).toBeGreaterThan(0);
    }
    // Both transports ran in the one round, in turn.
    expect(stderr).toMatch(/paced · native/);
    expect(stderr).toMatch(/up · session-socket/);
  }, 120_000);

  it('refuses a parameter that is not a positive whole number, naming it', async () => {
    const { code, stderr } = await runBench(['--mib', '0']);
    expect(code).not.toBe(0);
    expect(stderr).toMatch(/--mib must be a positive whole number \(got "0"\)/);
  });
});
