// How ambit starts its long-running processes (src/cli/node-flags.ts): `ambit mesh` and the benchmark use these.
import { describe, expect, it } from 'vitest';
import { LONG_RUNNING_NODE_FLAGS, longRunningEnv } from '../../../src/cli/node-flags.ts';

describe('long-running process settings', () => {
  it('limits glibc to two malloc arenas and keeps the rest of the environment', () => {
    const env = longRunningEnv({ PATH: '/usr/bin', AMBIT_LOG_LEVEL: 'warn' });
    expect(env).toEqual({ MALLOC_ARENA_MAX: '2', PATH: '/usr/bin', AMBIT_LOG_LEVEL: 'warn' });
  });

  it("leaves an operator's own MALLOC_ARENA_MAX in force", () => {
    expect(longRunningEnv({ MALLOC_ARENA_MAX: '8' }).MALLOC_ARENA_MAX).toBe('8');
  });

  it('are flags a node binary accepts, so a child does not fail to start', async () => {
    const { execFileSync } = await import('node:child_process');
    const out = execFileSync(process.execPath, [...LONG_RUNNING_NODE_FLAGS, '-e', 'process.stdout.write(typeof gc)'], { env: longRunningEnv(process.env) });
    expect(out.toString()).toBe('function');
  });
});
