// Writing key, certificate and state files: write-then-rename, so a reader never sees half a file, with the mode
// set on the temporary file (the umask cannot loosen a key's 0600) and no temporary left behind on failure. The
// data and then the directory entry are flushed to disk (fsync) before the call resolves: after a power loss a
// node SVID, a CA key or a node record is either the old file or the new one, never an empty or truncated one.
import { chmod, lstat, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { randomBytes, randomUUID } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AmbitError } from '../errors.ts';

/**
 * Refuses a directory of keys and trust anchors that another user owns (OpenSSH's StrictModes, for ambit's state
 * directory): one made in advance under a world-writable parent, or reached by a symbolic link another user owns. Its
 * files (the trust bundle, the roots seen) are read as the CA's word at the next start: planted there, a root of an
 * attacker's would vouch for any identity to this node. One of this user's that its group or others may write (an
 * emptyDir is 0777, an fsGroup volume 2775) is made 0700, and the change returned to be said.
 */
export async function checkPrivateDirectory(dir: string): Promise<string | null> {
  // Without a trailing "/", which would make lstat follow a link.
  const path = resolve(dir);
  const link = await lstat(path);
  const info = link.isSymbolicLink() ? await stat(path) : link;
  const uid = process.getuid?.();
  let problem: string | null = null;
  // A link is followed (/var/lib/ambit -> /data/ambit), if its owner is this user or root: whoever owns it can point it
  // elsewhere later.
  if (link.isSymbolicLink() && uid !== undefined && link.uid !== uid && link.uid !== 0) problem = `is a symbolic link owned by uid ${link.uid}`;
  else if (!info.isDirectory()) problem = 'is not a directory';
  else if (uid !== undefined && info.uid !== uid) problem = `is owned by uid ${info.uid}, not by this process's (${uid})`;
  if (problem !== null) {
    throw new AmbitError('STATE_DIR_UNSAFE', `${dir} ${problem}: refused, since whoever can write it could plant trust roots or keys`, {
      hint: `give it to this user (chown ${uid ?? 'USER'} ${dir}; chmod 700 ${dir}), or point ambit at a directory of its own`,
    });
  }
  if ((info.mode & 0o022) === 0) return null;
  await chmod(path, 0o700);
  return `${dir} was writable by group or others (mode ${(info.mode & 0o7777).toString(8)}): made 0700`;
}

export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const file = await open(temp, 'wx', mode);
    try {
      await file.chmod(mode);
      await file.writeFile(data);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch(() => {});
    throw error;
  }
  await syncDirectory(dirname(path));
}

/** Flushes a directory's entries (a rename into it). Some filesystems cannot: the rename is already visible then. */
async function syncDirectory(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // EISDIR/EINVAL/EPERM on filesystems that do not sync directories: nothing more can be done.
  } finally {
    await handle?.close();
  }
}

/** How long a lock file may be waited for, and after how long one is a crashed holder's and is broken. */
const LOCK_WAIT_MS = 5_000;
const LOCK_STALE_MS = 30_000;

/**
 * Runs a read-modify-write of a file other processes also change, holding `lock` (created exclusively, holding a
 * token of its holder). The writes are atomic (writeFileAtomic), but two writers that read the same version lose one
 * change: the lock is what serialises them. `holder` names the likely other holder, for the error after LOCK_WAIT_MS.
 */
export async function withLockFile<T>(lock: string, holder: string, work: () => Promise<T>): Promise<T> {
  const token = randomUUID();
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      await writeFile(lock, token, { flag: 'wx', mode: 0o600 });
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new AmbitError('CA_STATE', `${lock}: ${(error as Error).message}`, { cause: error });
      const since = await stat(lock).then((found) => Date.now() - found.mtimeMs, () => 0);
      if (since > LOCK_STALE_MS) await breakStaleLock(lock);
      if (Date.now() > deadline) throw new AmbitError('CA_STATE', `${lock}: held by another process for more than ${LOCK_WAIT_MS / 1000} s (${holder}, or a stale ${lock}.break left by a crash)`);
      await sleep(10);
    }
  }
  try {
    return await work();
  } finally {
    // Only our own: a lock broken as stale (we took more than LOCK_STALE_MS) may be someone else's by now.
    if ((await readFile(lock, 'utf8').catch(() => null)) === token) await unlink(lock).catch(() => {});
  }
}

/**
 * Takes a crashed holder's lock away, one breaker at a time (its own lock file, `.break`): a waiter that found the
 * lock stale looks again inside, so of several that found it stale only the first removes it, never the lock a
 * waiter took right after. A breaker that crashed mid-break leaves `.break` behind, given up after the stale limit.
 */
async function breakStaleLock(lock: string): Promise<void> {
  const breaking = `${lock}.break`;
  try {
    await writeFile(breaking, '', { flag: 'wx', mode: 0o600 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw new AmbitError('CA_STATE', `${breaking}: ${(error as Error).message}`, { cause: error });
    const since = await stat(breaking).then((found) => Date.now() - found.mtimeMs, () => 0);
    if (since > LOCK_STALE_MS) await unlink(breaking).catch(() => {});
    return;
  }
  try {
    const found = await stat(lock).catch(() => null);
    if (found !== null && Date.now() - found.mtimeMs > LOCK_STALE_MS) await unlink(lock).catch(() => {});
  } finally {
    await unlink(breaking).catch(() => {});
  }
}
