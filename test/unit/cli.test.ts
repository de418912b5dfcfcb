import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const cli = new URL('../../src/cli/main.ts', import.meta.url).pathname;

function ambit(...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000 });
}

function ambitWithEnv(env: NodeJS.ProcessEnv, ...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, ...env } });
}

describe('ambit command line', () => {
  it('lists its commands with --help and exits 0', () => {
    const result = ambit('--help');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('usage: ambit <command>');
  });

  it('refuses an AMBIT_LOG_LEVEL that is no log level with one line naming it and exit 2, not a stack trace', () => {
    for (const level of ['verbose', 'DEBUG']) {
      const result = ambitWithEnv({ AMBIT_LOG_LEVEL: level }, 'ca', 'serve', '--dir', '/nonexistent/ca', '--config', '/nonexistent/config');
      expect(result.status).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toContain(`AMBIT_LOG_LEVEL: "${level}" is not a log level`);
    }
  });

  it('names a directory it cannot make in one line with exit 2, not a stack trace', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'ambit-cli-')), 'a-file');
    writeFileSync(file, '');
    const result = ambit('ca', 'init', '--dir', join(file, 'ca'), '--trust-domain', 'example.org');
    expect(result.status).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain(`${join(file, 'ca')}`);
    expect(result.stderr).toContain('ENOTDIR');
  });

  it('refuses an unknown command with one line and exit 2', () => {
    const result = ambit('frobnicate');
    expect(result.status).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('unknown command "frobnicate"');
  });
});
