// The join token on the command line or in a file: a file keeps the secret out of /proc/PID/cmdline.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { joinTokenOption } from '../../../src/cli/args.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-join-token-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function tokenFile(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text, { mode: 0o600 });
  return file;
}

describe('the join token option', () => {
  it('is the flag value, or the one line of the file (its newline dropped), or absent', async () => {
    expect(await joinTokenOption('-abc_DEF', undefined)).toBe('-abc_DEF');
    expect(await joinTokenOption(undefined, await tokenFile('ok', '-abc_DEF\n'))).toBe('-abc_DEF');
    expect(await joinTokenOption(undefined, undefined)).toBeUndefined();
  });

  it('refuses both at once, an empty file, a file of more than one token, and a missing file, naming what was wrong', async () => {
    await expect(joinTokenOption('a', await tokenFile('both', 'b\n'))).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/give one of them/) });
    await expect(joinTokenOption(undefined, await tokenFile('empty', '\n'))).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/empty.*one token on one line/) });
    await expect(joinTokenOption(undefined, await tokenFile('two', 'a\nb\n'))).rejects.toMatchObject({ code: 'USAGE' });
    await expect(joinTokenOption(undefined, join(dir, 'absent'))).rejects.toMatchObject({ code: 'FILE_READ', message: expect.stringMatching(/^--join-token-file .*absent: cannot be read \(ENOENT: no such file\)$/) });
  });
});
