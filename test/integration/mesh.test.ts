// `npm start`: the whole mesh on loopback (`ambit mesh`), run as npm start runs it, from the compiled build, whose
// CA and node proxies are started from that same build.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILT_CLI, ensureBuilt } from '../../bench/system/build.ts';
import { DEMO_LAYOUT } from '../../src/cli/mesh.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function run(args: readonly string[], timeoutMs: number, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `ambit mesh` from the build, its output collected as it comes. */
function startMesh(args: readonly string[], options: { env?: NodeJS.ProcessEnv; detached?: boolean } = {}) {
  const child = spawn(process.execPath, [BUILT_CLI, 'mesh', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env }, detached: options.detached ?? false });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (chunk: Buffer) => (output.stdout += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output.stderr += chunk.toString('utf8')));
  const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
  return { child, output, closed };
}

/** The command lines of the running processes that mention a path (from /proc). */
function processesNaming(path: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    let args: string;
    try {
      args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    } catch {
      continue; // gone meanwhile
    }
    if (args.includes(path)) found.push(args);
  }
  return found;
}

describe('npm start (ambit mesh from the build)', () => {
  const cleanup: string[] = [];
  beforeAll(() => {
    ensureBuilt();
  }, 120_000);
  afterAll(async () => {
    for (const dir of cleanup) await rm(dir, { recursive: true, force: true });
  });

  it('starts its CA and proxies from the build it runs, not from the TypeScript source', async () => {
    const built = (await import(join(ROOT, 'dist', 'cli', 'node-flags.js'))) as { CLI_ENTRY: string };
    expect(built.CLI_ENTRY).toBe(BUILT_CLI);
    const source = await import('../../src/cli/node-flags.ts');
    expect(source.CLI_ENTRY).toBe(join(ROOT, 'src', 'cli', 'main.ts'));
  });

  it('carries the client calls over mTLS across both node proxies and stops cleanly when its time is up', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-test-'));
    cleanup.push(dir);
    const result = await run([BUILT_CLI, 'mesh', '--duration', '6s', '--dir', dir], 90_000);
    expect(result.stderr).not.toMatch(/unexpected error/);
    // Each child stopped on its SIGTERM, none had to be killed.
    expect(result.stderr).not.toMatch(/did not stop/);
    expect(result.code).toBe(0);
    const summaries = [...result.stdout.matchAll(/client calls ok (\d+), failed (\d+)/g)];
    expect(summaries.length).toBeGreaterThan(0);
    const last = summaries[summaries.length - 1] as RegExpMatchArray;
    expect(Number(last[1])).toBeGreaterThan(5);
    expect(Number(last[2])).toBe(0);
    expect(result.stdout).toContain('mTLS spiffe://cluster.local/ns/demo/sa/client → spiffe://cluster.local/ns/demo/sa/web');
    // Its CA and both proxies ran as child processes of their own, each logging to the directory.
    expect(readdirSync(join(dir, 'logs')).sort()).toEqual(['ca.log', 'node-a.log', 'node-b.log']);
  }, 120_000);

  it('keeps running when a connection to its echo workload is reset mid-echo', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-test-'));
    cleanup.push(dir);
    // At warn, the CA's own lines are quieter than the "CA listening" the mesh reads its address from.
    const { child, output, closed } = startMesh(['--duration', '8s', '--dir', dir], { env: { AMBIT_LOG_LEVEL: 'warn' } });
    try {
      await expect.poll(() => /client calls ok/.test(output.stdout), { timeout: 60_000, interval: 100 }).toBe(true);
      // Straight to the echo workload, not reading what it echoes, then a reset while it still writes.
      const socket = connect({ host: DEMO_LAYOUT.echo.ip, port: DEMO_LAYOUT.echo.port });
      socket.on('error', () => {});
      await once(socket, 'connect');
      socket.pause();
      socket.write(Buffer.alloc(8 * 1024 * 1024));
      await new Promise((resolve) => setTimeout(resolve, 300));
      socket.resetAndDestroy();
      expect(await closed, output.stderr).toBe(0);
      expect(output.stderr).not.toMatch(/ECONNRESET|EPIPE/);
    } finally {
      child.kill('SIGKILL');
    }
  }, 120_000);

  it("says which address is taken when a demo workload's port is, and removes its directory, without a stack trace", async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(DEMO_LAYOUT.web.port, DEMO_LAYOUT.web.ip, resolve));
    try {
      const result = await run([BUILT_CLI, 'mesh', '--duration', '5s'], 60_000);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`cannot listen on ${DEMO_LAYOUT.web.ip}:${DEMO_LAYOUT.web.port} for the demo web workload: EADDRINUSE`);
      expect(result.stderr).not.toMatch(/unexpected error|\n\s+at /);
      const dir = /working directory (\S+)/.exec(result.stdout)?.[1];
      expect(dir).toBeDefined();
      expect(existsSync(dir as string)).toBe(false);
    } finally {
      blocker.close();
    }
  }, 90_000);

  it('refuses, in one line, a --dir that holds an earlier run (its CA), rather than fail inside', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-kept-'));
    cleanup.push(dir);
    await mkdir(join(dir, 'ca'), { recursive: true });
    await writeFile(join(dir, 'ca', 'ca.json'), '{}');
    const result = await run([BUILT_CLI, 'mesh', '--dir', dir], 20_000);
    expect(result.code).toBe(2);
    expect(result.stderr.trim()).toBe(`ambit mesh: --dir ${dir} holds an earlier mesh (its CA in ${join(dir, 'ca')}): remove it, or give a new directory [USAGE]`);
  });

  it("refuses, in one line, a --dir that is not empty, empty, or a file, leaving what is there as it was", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-user-'));
    cleanup.push(dir);
    await mkdir(join(dir, 'config'));
    await writeFile(join(dir, 'config', 'mesh.yaml'), 'kind: MeshConfig # the user\'s own\n');
    const refused = await run([BUILT_CLI, 'mesh', '--dir', dir], 20_000);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim()).toBe(`ambit mesh: --dir ${dir} is not empty (config): the mesh writes its own configuration, CA, logs and join tokens there and reads all of DIR/config; give a new or empty directory [USAGE]`);
    expect(await readFile(join(dir, 'config', 'mesh.yaml'), 'utf8')).toBe('kind: MeshConfig # the user\'s own\n');
    const empty = await run([BUILT_CLI, 'mesh', '--dir', ''], 20_000);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain('--dir "": an empty value (give one, or leave the option out)');
    const file = await run([BUILT_CLI, 'mesh', '--dir', join(dir, 'config', 'mesh.yaml')], 20_000);
    expect(file.code).toBe(2);
    expect(file.stderr.trim()).toBe(`ambit mesh: --dir ${join(dir, 'config', 'mesh.yaml')}: not a directory: give a new or empty directory [USAGE]`);
    // One that cannot be made (nothing can be, under /proc): said as the flag's, before anything starts.
    const unmakeable = '/proc/ambit-no-such/mesh';
    const refusedMake = await run([BUILT_CLI, 'mesh', '--dir', unmakeable], 20_000);
    expect(refusedMake.code).toBe(2);
    expect(refusedMake.stdout).toBe('');
    expect(refusedMake.stderr.trim()).toBe(`ambit mesh: --dir ${unmakeable}: cannot be created (ENOENT): give a new or empty directory where you may write [USAGE]`);
  });

  it('stops and cleans up when its output can no longer be written (the terminal it ran in is gone)', async () => {
    const { child, output, closed } = startMesh([]);
    try {
      await expect.poll(() => /client calls ok/.test(output.stdout), { timeout: 60_000, interval: 100 }).toBe(true);
      const dir = /working directory (\S+)/.exec(output.stdout)?.[1] as string;
      expect(existsSync(dir)).toBe(true);
      // Its reader gone: the next summary fails to write (EPIPE here, EIO on a closed terminal).
      child.stdout.destroy();
      await closed;
      expect(existsSync(dir)).toBe(false);
      expect(processesNaming(dir)).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  }, 90_000);

  it('leaves no CA or proxy running when it is killed outright (SIGKILL: no cleanup of its own runs)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-test-'));
    cleanup.push(dir);
    const { child, output } = startMesh(['--dir', dir]);
    try {
      await expect.poll(() => /client calls ok/.test(output.stdout), { timeout: 60_000, interval: 100 }).toBe(true);
      // The mesh itself, its CA and its two proxies.
      expect(processesNaming(dir)).toHaveLength(4);
      child.kill('SIGKILL');
      await expect.poll(() => processesNaming(dir), { timeout: 10_000, interval: 100 }).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  }, 90_000);

  it.each(['SIGTERM', 'SIGHUP'] as const)('stops what it started and removes its directory on %s while its proxies start', async (signal) => {
    const { child, output, closed } = startMesh([]);
    try {
      // The CA is up, the proxies not yet ready.
      await expect.poll(() => /\n {2}CA {12}https:/.test(output.stdout), { timeout: 60_000, interval: 20 }).toBe(true);
      expect(output.stdout).not.toContain('ready: HBONE');
      // SIGHUP: the terminal or SSH session it ran in closed.
      child.kill(signal);
      expect(await closed).toBe(130);
      const dir = /working directory (\S+)/.exec(output.stdout)?.[1];
      expect(existsSync(dir as string)).toBe(false);
      // Its CA and proxies are gone: no process runs with the directory in its arguments.
      expect(processesNaming(dir as string)).toEqual([]);
    } finally {
      child.kill('SIGKILL');
    }
  }, 90_000);

  it('stops and cleans up on a Ctrl-C at the terminal while its proxies start (the signal reaches every process of the group)', async () => {
    // Its own process group, as a shell gives a foreground job: the SIGINT goes to the mesh, its CA and its proxies at
    // once, and a proxy not yet handling it dies of it (exit code null, signal SIGINT).
    const { child, output, closed } = startMesh([], { detached: true });
    try {
      await expect.poll(() => /\n {2}CA {12}https:/.test(output.stdout), { timeout: 60_000, interval: 20 }).toBe(true);
      process.kill(-(child.pid as number), 'SIGINT');
      const code = await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 20_000, 'still running'))]);
      expect(code).toBe(130);
      // Not a stop it waited out: nothing was alive to kill.
      expect(output.stderr).not.toContain('did not stop');
      const dir = /working directory (\S+)/.exec(output.stdout)?.[1];
      expect(existsSync(dir as string)).toBe(false);
      expect(processesNaming(dir as string)).toEqual([]);
    } finally {
      try {
        process.kill(-(child.pid as number), 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  }, 90_000);
});
