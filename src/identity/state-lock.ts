// One process per state directory. The node SVID kept there is renewed by whoever holds it, and the CA accepts only
// the newest serial of a node: two proxies (a DaemonSet rollout with maxSurge on a hostPath directory, a second
// systemd unit, a debugging run) would each renew under the other until one is refused for good, its join token long
// spent, and every certificate of the node it serves expires (SPIRE's agent, too, keeps its data directory to one
// agent). Node has no flock, and a PID says nothing across PID namespaces (two pods' processes can both be PID 1), so
// the lock is a lease: a file made exclusively and touched every few seconds. A lease not touched for LEASE_STALE_MS,
// or one whose holder is provably gone (this machine booted since, or a process of our own PID namespace that no
// longer exists), is taken over; a live one is waited for, saying whose it is.
import { randomUUID } from 'node:crypto';
import { open, readFile, readlink, stat, unlink, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { readFileSync, unlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { AmbitError } from '../errors.ts';
import type { Logger } from '../observe/log.ts';
import { makeDirs } from '../mkdir.ts';
import { checkPrivateDirectory } from './files.ts';

export const LOCK_FILE = 'lock';
/** How often the holder touches its lease. */
const LEASE_REFRESH_MS = 5_000;
/** A lease untouched this long is abandoned (three refreshes missed: a process stopped, a pod gone). */
export const LEASE_STALE_MS = 15_000;

interface Holder {
  readonly pid: number;
  readonly host: string;
  /** The PID namespace (`/proc/self/ns/pid`'s link): a PID means something only within its own. */
  readonly pidNamespace: string;
  /** The kernel's boot ID: a lease from before the last boot is nobody's. */
  readonly bootId: string;
  readonly startedAt: string;
  readonly token: string;
}

/**
 * The leases this process holds, token → lock file: a lock with our PID is an earlier process's only if none of
 * them; and a process dying of a defect gives them up on its way out (releaseHeldLocksSync).
 */
const heldHere = new Map<string, string>();

/**
 * Gives up, synchronously, every lease this process still holds: for a process about to end on an error nothing
 * caught, so that its successor (a restarted container, in a PID namespace of its own) need not wait LEASE_STALE_MS.
 */
export function releaseHeldLocksSync(): void {
  for (const [token, file] of heldHere) {
    heldHere.delete(token);
    try {
      if ((JSON.parse(readFileSync(file, 'utf8')) as Partial<Holder>).token === token) unlinkSync(file);
    } catch {
      // Gone already, or not ours to remove.
    }
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

async function pidNamespace(): Promise<string> {
  return readlink('/proc/self/ns/pid').catch(() => '');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, another user's.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Why the lease in `file` is nobody's any more, or null while its holder may be alive. */
function abandoned(holder: Partial<Holder> | null, ageMs: number, ours: Holder): string | null {
  if (ageMs > LEASE_STALE_MS) return `not renewed for ${Math.round(ageMs / 1000)} s`;
  if (holder === null) return null;
  if (holder.bootId !== undefined && holder.bootId !== '' && ours.bootId !== '' && holder.bootId !== ours.bootId) return 'taken before this machine last booted';
  if (holder.pidNamespace !== undefined && holder.pidNamespace !== '' && holder.pidNamespace === ours.pidNamespace && holder.bootId === ours.bootId && typeof holder.pid === 'number') {
    if (holder.pid === process.pid) return typeof holder.token === 'string' && heldHere.has(holder.token) ? null : 'taken by an earlier process with this one\'s PID';
    if (!alive(holder.pid)) return `its process (pid ${holder.pid}) is gone`;
  }
  return null;
}

/**
 * Removes the lock judged abandoned, if it is still that one and no other waiter is removing it: returns whether this
 * waiter removed it (the caller then tries to take the directory like any other).
 */
async function takeOver(file: string, judged: { ino: number; mtimeMs: number; text: string }): Promise<boolean> {
  const claim = `${file}.takeover-${judged.ino}-${Math.round(judged.mtimeMs * 1000)}`;
  try {
    await (await open(claim, 'wx', 0o600)).close();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new AmbitError('FILE_WRITE', `state directory lock claim ${claim} cannot be made: ${(error as Error).message}`, { cause: error });
    // Another waiter's claim: it removes the lock. One left by a waiter that died in between is cleared once stale.
    const info = await stat(claim).catch(() => null);
    if (info !== null && Date.now() - info.mtimeMs > LEASE_STALE_MS) await unlink(claim).catch(() => {});
    return false;
  }
  try {
    const [text, info] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
    // Still the lock judged (not a new one the inode of the old was given to): removed.
    if (info.ino !== judged.ino || info.mtimeMs !== judged.mtimeMs || text !== judged.text) return false;
    await unlink(file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new AmbitError('FILE_WRITE', `state directory lock ${file} cannot be removed: ${(error as Error).message}`, { cause: error });
  } finally {
    await unlink(claim).catch(() => {});
  }
}

function describe(holder: Partial<Holder> | null): string {
  if (holder === null) return 'a process whose lock file is being written';
  return `pid ${String(holder.pid)} on host ${String(holder.host)}, since ${String(holder.startedAt)}`;
}

export class StateDirLock {
  readonly file: string;
  readonly #token: string;
  readonly #logger: Logger;
  readonly #timer: NodeJS.Timeout;
  #lost = false;
  #onLost: (error: AmbitError) => void = () => {};
  /**
   * Settles when another process has taken the lease (this one was stopped or stalled past LEASE_STALE_MS): the holder
   * must stop renewing the node's certificates at once, or the CA refuses one of the two for good.
   */
  readonly lost: Promise<AmbitError> = new Promise((resolve) => (this.#onLost = resolve));

  private constructor(file: string, token: string, logger: Logger) {
    this.file = file;
    this.#token = token;
    this.#logger = logger;
    this.#timer = setInterval(() => void this.#refresh(), LEASE_REFRESH_MS);
    this.#timer.unref();
  }

  /**
   * Makes the state directory (0700) when missing and takes its lease, waiting while another live process holds it,
   * with a warning naming it at first and every minute. `signal` ends the wait (a stop during start); `wait: false`
   * refuses at once instead (STATE_DIR_LOCKED, naming the holder).
   */
  static async acquire(dir: string, logger: Logger, options: { signal?: AbortSignal; wait?: boolean } = {}): Promise<StateDirLock> {
    const { signal } = options;
    try {
      await makeDirs(dir, 0o700);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new AmbitError('FILE_WRITE', `state directory ${dir} cannot be created: ${code === 'EEXIST' || code === 'ENOTDIR' ? 'a file is in the way' : (code ?? (error as Error).message)}`, { cause: error });
    }
    const tightened = await checkPrivateDirectory(dir);
    if (tightened !== null) logger.warn({ dir }, `state directory ${tightened}, as its keys and trust bundle need`);
    const file = join(dir, LOCK_FILE);
    const ours: Holder = { pid: process.pid, host: hostname(), pidNamespace: await pidNamespace(), bootId: bootId(), startedAt: new Date().toISOString(), token: randomUUID() };
    let warnedAtMs = 0;
    for (;;) {
      if (signal?.aborted) throw new AmbitError('STATE_DIR_LOCKED', `${file}: stopped while waiting for the state directory`);
      try {
        const handle = await open(file, 'wx', 0o600);
        try {
          await handle.writeFile(`${JSON.stringify(ours)}\n`);
        } finally {
          await handle.close();
        }
        heldHere.set(ours.token, file);
        return new StateDirLock(file, ours.token, logger);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new AmbitError('FILE_WRITE', `state directory lock ${file} cannot be made: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
        }
      }
      let holder: Partial<Holder> | null;
      let ageMs: number;
      let judged: { ino: number; mtimeMs: number; text: string };
      try {
        const [text, info] = await Promise.all([readFile(file, 'utf8'), stat(file)]);
        ageMs = Date.now() - info.mtimeMs;
        judged = { ino: info.ino, mtimeMs: info.mtimeMs, text };
        try {
          holder = JSON.parse(text) as Partial<Holder>;
        } catch {
          // Written half (a crash between create and write, or a write under way): its age decides.
          holder = null;
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw new AmbitError('FILE_READ', `state directory lock ${file} cannot be read: ${(error as Error).message}`, { cause: error });
      }
      const why = abandoned(holder, ageMs, ours);
      if (why !== null) {
        // Two waiters may judge the same lock abandoned: one claim per lock judged, made exclusively, so that only one
        // removes it (the other would remove the winner's new lock and both would hold the directory).
        if (await takeOver(file, judged)) logger.warn({ file, holder, reason: why }, 'took over the state directory lock of a process that is gone');
        // Another waiter is taking it over: a moment for it to finish, not a loop spinning on the claim.
        else await sleep(50, undefined, signal === undefined ? {} : { signal }).catch(() => {});
        continue;
      }
      if (options.wait === false) {
        throw new AmbitError('STATE_DIR_LOCKED', `state directory ${dir} is in use by another ambit process (${describe(holder)})`);
      }
      if (Date.now() - warnedAtMs >= 60_000) {
        warnedAtMs = Date.now();
        logger.warn({ file, holder }, `state directory ${dir} is in use by another ambit process (${describe(holder)}); waiting for it to stop: one proxy or agent per state directory, or both would renew the node's certificate and the CA would refuse one`);
      }
      await sleep(1_000, undefined, signal === undefined ? {} : { signal }).catch(() => {});
    }
  }

  async #refresh(): Promise<void> {
    if (this.#lost) return;
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      // Removed (by a successor taking it over): lost. Anything else (EMFILE while connections flood the proxy, EIO)
      // says nothing of who holds it: the next refresh tries again, and the lease is good for two more.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return this.#loseTo('removed');
      this.#logger.warn({ file: this.file, err: (error as Error).message }, 'cannot renew the state directory lock; trying again');
      return;
    }
    let holder: Partial<Holder> | null = null;
    try {
      holder = JSON.parse(text) as Partial<Holder>;
    } catch {
      // Being written by a successor: not ours.
    }
    if (holder?.token !== this.#token) return this.#loseTo(`held by ${describe(holder)}`);
    const now = new Date();
    await utimes(this.file, now, now).catch((error: unknown) => this.#logger.warn({ file: this.file, err: (error as Error).message }, 'cannot renew the state directory lock; trying again'));
  }

  /** Another process took the lease over (this one was stopped longer than it): said once, loudly, and `lost` settles. */
  #loseTo(reason: string): void {
    this.#lost = true;
    clearInterval(this.#timer);
    this.#logger.error({ file: this.file, reason }, 'lost the state directory lock: stopping, as another process now renews this node\'s certificates');
    this.#onLost(new AmbitError('STATE_DIR_LOCKED', `${this.file}: lost to another process while this one was stopped or stalled (${reason})`));
  }

  /** Gives the lease up, if it is still ours. */
  async release(): Promise<void> {
    clearInterval(this.#timer);
    heldHere.delete(this.#token);
    if (this.#lost) return;
    try {
      const holder = JSON.parse(await readFile(this.file, 'utf8')) as Partial<Holder>;
      if (holder.token === this.#token) await unlink(this.file);
    } catch {
      // Gone already, or not ours to remove.
    }
  }
}
