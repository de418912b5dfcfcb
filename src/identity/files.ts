// Writing key, certificate and state files: write-then-rename, so a reader never sees half a file, with the mode
// set on the temporary file (the umask cannot loosen a key's 0600) and no temporary left behind on failure. The
// data and then the directory entry are flushed to disk (fsync) before the call resolves: after a power loss a
// node SVID, a CA key or a node record is either the old file or the new one, never an empty or truncated one.
import { open, rename, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';

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
