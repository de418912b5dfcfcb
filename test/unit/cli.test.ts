import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUILT_CLI } from '../../bench/system/build.ts';
import { afterAll, describe, expect, it } from 'vitest';

const cli = BUILT_CLI;

function ambit(...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000 });
}

function ambitWithEnv(env: NodeJS.ProcessEnv, ...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, ...env } });
}

const temporary: string[] = [];
afterAll(() => {
  for (const dir of temporary) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-cli-'));
  temporary.push(dir);
  return dir;
}

describe('ambit command line', () => {
  it('lists its commands with --help and exits 0', () => {
    const result = ambit('--help');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('usage: ambit <command>');
  });

  it('answers no command at all as bad usage: its commands on stderr, nothing on stdout, exit 2', () => {
    const result = ambit();
    expect(result.status).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('usage: ambit <command>');
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
    const file = join(tempDir(), 'a-file');
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

  describe('ambit proxy, given a file it cannot use', () => {
    const dir = tempDir();
    const proxy = (...args: string[]) =>
      ambit('proxy', '--node', 'n1', '--ca', 'https://127.0.0.1:1', '--trust-domain', 'cluster.local', '--join-token-file', join(dir, 'token'), ...args);
    writeFileSync(join(dir, 'token'), 'x\n');
    writeFileSync(join(dir, 'not-a-bundle.pem'), 'not a bundle\n');
    mkdirSync(join(dir, 'config'));
    ambit('ca', 'init', '--dir', join(dir, 'ca'), '--trust-domain', 'cluster.local');
    writeFileSync(join(dir, 'bundle.pem'), ambit('ca', 'bundle', '--dir', join(dir, 'ca'), '--format', 'pem').stdout);

    it('names the flag and the file of a --ca-bundle that is no bundle', () => {
      const result = proxy('--config', join(dir, 'config'), '--state-dir', join(dir, 'state'), '--ca-bundle', join(dir, 'not-a-bundle.pem'));
      expect(result.status).toBe(2);
      expect(result.stderr.trim()).toMatch(new RegExp(`^ambit proxy: --ca-bundle ${join(dir, 'not-a-bundle.pem')}: .*\\[BUNDLE_INVALID\\]$`));
    });

    it('says a --state-dir that is a file is in the way, with a code', () => {
      const result = proxy('--config', join(dir, 'config'), '--state-dir', join(dir, 'token'), '--ca-bundle', join(dir, 'bundle.pem'));
      expect(result.status).toBe(2);
      expect(result.stderr.trim()).toBe(`ambit proxy: state directory ${join(dir, 'token')} cannot be created: a file is in the way [FILE_WRITE]`);
    });

    it('says in words, with a code, why a directory named by a flag cannot be made', () => {
      const result = ambit('ca', 'init', '--dir', join(dir, 'token'), '--trust-domain', 'cluster.local');
      expect(result.status).toBe(2);
      expect(result.stderr.trim()).toBe(`ambit ca: cannot mkdir ${join(dir, 'token')}: a file is in the way (EEXIST) [FILE_WRITE]`);
    });

    it('names a missing --config directory once, its error code not doubled', () => {
      const result = proxy('--config', join(dir, 'missing'), '--state-dir', join(dir, 'state'), '--ca-bundle', join(dir, 'bundle.pem'));
      expect(result.status).toBe(2);
      expect(result.stderr).toContain(`cannot read configuration directory: ENOENT: no such file or directory`);
      expect(result.stderr).not.toContain('ENOENT: ENOENT');
    });
  });
});
