// Writing key and certificate files: write-then-rename, so a reader never sees half a file, with the mode
// set on the temporary file (the umask cannot loosen a key's 0600) and no temporary left behind on failure.
import { chmod, rename, unlink, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';

export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, data, { mode });
    await chmod(temp, mode);
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch(() => {});
    throw error;
  }
}
