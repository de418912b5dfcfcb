// Creating the directories ambit is told to use: parents made top down with the mode asked for, an existing
// directory accepted, and a path that cannot be made refused with Node's error for it, never a loop.
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { makeDirs, makeDirsSync } from '../../src/mkdir.ts';

let dir: string;
beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'ambit-mkdir-')); });
afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

describe.each([
  ['asynchronously', (path: string, mode?: number) => makeDirs(path, mode)],
  ['synchronously', async (path: string, mode?: number) => makeDirsSync(path, mode)],
])('making directories %s', (name, make) => {
  it('creates every missing parent with the mode given, and accepts a directory that exists', async ({ expect }) => {
    const target = join(dir, name, 'a', 'b');
    await make(target, 0o700);
    for (const made of [join(dir, name), join(dir, name, 'a'), target]) {
      expect((await stat(made)).mode & 0o777).toBe(0o700);
    }
    await make(target, 0o700);
  });

  it('refuses a path with a file in the way', async ({ expect }) => {
    const file = join(dir, `${name}-file`);
    await writeFile(file, 'x');
    await expect(make(join(file, 'sub'))).rejects.toMatchObject({ code: 'ENOTDIR', syscall: 'mkdir', path: join(file, 'sub') });
    await expect(make(file)).rejects.toMatchObject({ code: 'EEXIST', syscall: 'mkdir', path: file });
  });

  it.runIf(existsSync('/proc/self'))('refuses a directory procfs will not create, at once', async ({ expect }) => {
    await expect(make('/proc/ambit-no-such-dir/x')).rejects.toMatchObject({ code: 'ENOENT', syscall: 'mkdir', path: '/proc/ambit-no-such-dir' });
  });
});
