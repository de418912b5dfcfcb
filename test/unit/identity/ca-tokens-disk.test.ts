// A join token the CA cannot record as spent (its disk fails while binding it to the CSR's key) is given back: the
// failure is the CA's, and the node's retry must find its token, not a spent one.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { initCa } from '../../../src/identity/ca/store.ts';
import { consumeJoinToken, createJoinToken } from '../../../src/identity/ca/tokens.ts';
import * as files from '../../../src/identity/files.ts';
import { AmbitError } from '../../../src/errors.ts';

vi.mock('../../../src/identity/files.ts', async (importOriginal) => {
  const real = await importOriginal<typeof files>();
  return { ...real, writeFileAtomic: vi.fn(real.writeFileAtomic) };
});

const KEY = 'a'.repeat(64);
const base = await mkdtemp(join(tmpdir(), 'ambit-ca-tokens-disk-'));
afterAll(() => rm(base, { recursive: true, force: true }));

describe('a join token whose spending cannot be recorded', () => {
  it('is refused with CA_STATE and given back, so the next attempt spends it', async () => {
    const dir = join(base, 'ca');
    await initCa(dir, 'cluster.local');
    const { token } = await createJoinToken(dir, 'node-a', 60_000);
    vi.mocked(files.writeFileAtomic).mockRejectedValueOnce(Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }));
    const error = await consumeJoinToken(dir, token, 'node-a', KEY).then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(AmbitError);
    expect((error as AmbitError).code).toBe('CA_STATE');
    expect((error as AmbitError).message).toMatch(/node "node-a" could not be recorded as spent: ENOSPC/);
    expect(await readdir(join(dir, 'tokens', 'used'))).toEqual([]);
    await expect(consumeJoinToken(dir, token, 'node-a', KEY)).resolves.toEqual({ retry: false });
  });
});
