// One process per state directory (src/identity/state-lock.ts): a lease file, waited for while its holder is alive,
// taken over once it is provably gone or its lease is stale.
import { spawnSync } from 'node:child_process';
import { chmod, chown, lchown, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/observe/log.ts';
import { LEASE_STALE_MS, LOCK_FILE, StateDirLock } from '../../../src/identity/state-lock.ts';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-state-lock-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Whether the promise settles within ms (true) or is still pending (false). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return Promise.race([promise.then(() => true, () => true), new Promise<boolean>((resolve) => setTimeout(resolve, ms, false))]);
}

/** A lock file as another process would have written it. */
async function foreignLock(fields: Record<string, unknown>): Promise<void> {
  const ours = await readlink('/proc/self/ns/pid').catch(() => '');
  const bootId = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => '')).trim();
  await writeFile(join(dir, LOCK_FILE), `${JSON.stringify({ pid: 1, host: 'elsewhere', pidNamespace: ours, bootId, startedAt: new Date().toISOString(), token: 'theirs', ...fields })}\n`);
}

/** The lock in `dir` is waited for while fresh, then (its holder gone without a word) taken once its lease is stale. */
async function waitedForThenTakenOnceStale(): Promise<void> {
  const taking = StateDirLock.acquire(dir, silentLogger());
  expect(await settlesWithin(taking, 1_500)).toBe(false);
  const old = new Date(Date.now() - LEASE_STALE_MS - 1_000);
  await utimes(join(dir, LOCK_FILE), old, old);
  expect(await settlesWithin(taking, 2_500)).toBe(true);
  await (await taking).release();
}

const isRoot = process.getuid?.() === 0;
if (!isRoot) process.stderr.write('state-lock.test.ts: not root, skipping the state directories owned by another user (chown needs root)\n');

describe('the state directory, whose files are read as the CA\'s word', () => {
  it('is taken when it is this user\'s alone, also through a symbolic link of this user\'s', async () => {
    const real = join(dir, 'real');
    await mkdir(real, { mode: 0o700 });
    const link = join(dir, 'link');
    await symlink(real, link);
    const lock = await StateDirLock.acquire(link, silentLogger(), { wait: false });
    await lock.release();
  });

  it.each([0o770, 0o707, 0o777, 0o2775])('is made 0700 when its group or others may write it (mode %o: an emptyDir, an fsGroup volume), saying so', async (mode) => {
    const state = join(dir, 'state');
    await mkdir(state);
    await chmod(state, mode);
    const warned: string[] = [];
    const logger = silentLogger();
    const capture = Object.assign(logger, { warn: (_fields: unknown, message: string) => void warned.push(message) });
    const lock = await StateDirLock.acquire(`${state}/`, capture, { wait: false });
    await lock.release();
    expect((await stat(state)).mode & 0o7777).toBe(0o700);
    expect(warned).toEqual([expect.stringContaining(`was writable by group or others (mode ${mode.toString(8)}): made 0700`)]);
  });

  it.skipIf(!isRoot)('is refused when another user owns it (made in advance under a world-writable parent), or owns the link to it', async () => {
    const state = join(dir, 'theirs');
    await mkdir(state, { mode: 0o700 });
    await chown(state, 65534, 65534);
    await expect(StateDirLock.acquire(state, silentLogger(), { wait: false })).rejects.toMatchObject({ code: 'STATE_DIR_UNSAFE', message: expect.stringContaining('is owned by uid 65534') });
    const ours = join(dir, 'ours');
    await mkdir(ours, { mode: 0o700 });
    const link = join(dir, 'their-link');
    await symlink(ours, link);
    await lchown(link, 65534, 65534);
    await expect(StateDirLock.acquire(link, silentLogger(), { wait: false })).rejects.toMatchObject({ code: 'STATE_DIR_UNSAFE', message: expect.stringContaining('is a symbolic link owned by uid 65534') });
    // Written with a trailing "/", which makes lstat follow the link: judged as the link all the same.
    await expect(StateDirLock.acquire(`${link}/`, silentLogger(), { wait: false })).rejects.toMatchObject({ code: 'STATE_DIR_UNSAFE', message: expect.stringContaining('is a symbolic link owned by uid 65534') });
  });
});

describe('the state directory lock', () => {
  it('is taken in an empty directory, names this process, and is removed on release', async () => {
    const lock = await StateDirLock.acquire(dir, silentLogger());
    const held = JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { pid: number };
    expect(held.pid).toBe(process.pid);
    await lock.release();
    await expect(stat(join(dir, LOCK_FILE))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('makes a second taker wait while the first holds it, and gives it over once the first releases', async () => {
    const first = await StateDirLock.acquire(dir, silentLogger());
    const second = StateDirLock.acquire(dir, silentLogger());
    expect(await settlesWithin(second, 1_500)).toBe(false);
    await first.release();
    expect(await settlesWithin(second, 2_500)).toBe(true);
    await (await second).release();
  });

  it('stops waiting when told to, with STATE_DIR_LOCKED naming the file', async () => {
    const first = await StateDirLock.acquire(dir, silentLogger());
    const stop = new AbortController();
    const second = StateDirLock.acquire(dir, silentLogger(), { signal: stop.signal });
    setTimeout(() => stop.abort(), 300);
    await expect(second).rejects.toMatchObject({ code: 'STATE_DIR_LOCKED', message: expect.stringContaining(join(dir, LOCK_FILE)) });
    await first.release();
  });

  it('waits for a live holder in another PID namespace (another pod) whose lease is fresh, and takes it once stale', async () => {
    await foreignLock({ pidNamespace: 'pid:[1]', pid: process.pid });
    await waitedForThenTakenOnceStale();
  });

  it('takes over at once a lock whose process, in this PID namespace, is gone', async () => {
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    await foreignLock({ pid: Number(gone.stdout) });
    const lock = await StateDirLock.acquire(dir, silentLogger());
    expect((JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { pid: number }).pid).toBe(process.pid);
    await lock.release();
  });

  it('takes over at once a lock taken before this machine last booted', async () => {
    await foreignLock({ bootId: '00000000-0000-0000-0000-000000000000', pidNamespace: 'pid:[1]' });
    const lock = await StateDirLock.acquire(dir, silentLogger());
    await lock.release();
  });

  it('does not take over a lock whose process is alive in this PID namespace', async () => {
    // PID 1 of this namespace is always alive.
    await foreignLock({ pid: 1 });
    const taking = StateDirLock.acquire(dir, silentLogger());
    expect(await settlesWithin(taking, 1_500)).toBe(false);
    await rm(join(dir, LOCK_FILE));
    await (await taking).release();
  });

  it('takes over a half-written lock file only once it is stale', async () => {
    await writeFile(join(dir, LOCK_FILE), '{"pid": 12');
    await waitedForThenTakenOnceStale();
  });

  it('gives a lock two waiters judge abandoned at the same moment to one of them only', async () => {
    for (let round = 0; round < 5; round++) {
      const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
      await foreignLock({ pid: Number(gone.stdout) });
      const takers = [StateDirLock.acquire(dir, silentLogger()), StateDirLock.acquire(dir, silentLogger())];
      // The loser cannot settle before the winner lets go: a second is room for a busy machine, not a race.
      const settled = await Promise.all(takers.map((taker) => settlesWithin(taker, 1_000)));
      expect(settled.filter(Boolean), `round ${round}`).toHaveLength(1);
      const winner = takers[settled.indexOf(true)] as Promise<StateDirLock>;
      const loser = takers[settled.indexOf(false)] as Promise<StateDirLock>;
      await (await winner).release();
      await (await loser).release();
    }
  }, 30_000);

  it('refuses at once, naming the holder, when told not to wait', async () => {
    const first = await StateDirLock.acquire(dir, silentLogger());
    await expect(StateDirLock.acquire(dir, silentLogger(), { wait: false })).rejects.toMatchObject({ code: 'STATE_DIR_LOCKED', message: expect.stringContaining(`pid ${process.pid}`) });
    await first.release();
  });

  it('says it was lost when another process took the lease over (this one stalled past it)', async () => {
    const lock = await StateDirLock.acquire(dir, silentLogger());
    await foreignLock({ token: 'the new holder' });
    const lost = await Promise.race([lock.lost, new Promise((resolve) => setTimeout(resolve, 7_000, null))]);
    expect(lost).toMatchObject({ code: 'STATE_DIR_LOCKED' });
    await lock.release();
    // Not ours any more: left as the new holder wrote it.
    expect((JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { token: string }).token).toBe('the new holder');
  }, 10_000);

  it('keeps its lease through a refresh that cannot read it (EMFILE, EIO), and is not taken for lost', async () => {
    const lock = await StateDirLock.acquire(dir, silentLogger());
    const file = join(dir, LOCK_FILE);
    const mine = await readFile(file, 'utf8');
    // A directory where the file was: the read fails with EISDIR, an error that says nothing of who holds it.
    await rm(file);
    await mkdir(file);
    const lost = await Promise.race([lock.lost, new Promise((resolve) => setTimeout(resolve, 6_000, null))]);
    expect(lost).toBeNull();
    await rm(file, { recursive: true });
    await writeFile(file, mine);
    await lock.release();
    await expect(stat(file)).rejects.toMatchObject({ code: 'ENOENT' });
  }, 10_000);

  it('makes a missing state directory (0700), or says a file is in its way', async () => {
    const nested = join(dir, 'a', 'b');
    const lock = await StateDirLock.acquire(nested, silentLogger());
    expect((await stat(nested)).mode & 0o777).toBe(0o700);
    await lock.release();
    await writeFile(join(dir, 'file'), 'x');
    await expect(StateDirLock.acquire(join(dir, 'file'), silentLogger())).rejects.toMatchObject({ code: 'FILE_WRITE', message: `state directory ${join(dir, 'file')} cannot be created: a file is in the way` });
  });

  it('leaves alone, on release, a lock another process took over', async () => {
    const lock = await StateDirLock.acquire(dir, silentLogger());
    await foreignLock({ token: 'someone else' });
    await lock.release();
    expect((JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')) as { token: string }).token).toBe('someone else');
  });
});
