// Join tokens (src/identity/ca/tokens.ts): single use under races, expiry, node binding, hostile token
// text, and what is kept on disk.
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initCa } from '../../../src/identity/ca/store.ts';
import { ISSUANCE_LIMIT_MS, consumeJoinToken, createJoinToken, recordTokenAnswer, restoreJoinToken } from '../../../src/identity/ca/tokens.ts';
import { AmbitError } from '../../../src/errors.ts';

const TD = 'cluster.local';
const MINUTE_MS = 60_000;
/** What the CA passes: the SHA-256 of the CSR's public key, hex. */
const KEY = 'a'.repeat(64);
const OTHER_KEY = 'b'.repeat(64);

let base: string;
let counter = 0;

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'ambit-ca-tokens-'));
});

afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

/** A fresh CA directory (tokens live inside the CA's own directory). */
async function newCaDir(): Promise<string> {
  counter++;
  const dir = join(base, `ca-${counter}`);
  await initCa(dir, TD);
  return dir;
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AmbitError) return error.code;
    throw error;
  }
  throw new Error('expected the call to be refused');
}

/** Every regular file under dir, with its content and mtime: a fingerprint of what is on disk. */
async function tree(dir: string): Promise<Map<string, { content: string; mtimeMs: number; mode: number }>> {
  const files = new Map<string, { content: string; mtimeMs: number; mode: number }>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    const info = await stat(path);
    files.set(relative(dir, path), { content: await readFile(path, 'utf8'), mtimeMs: info.mtimeMs, mode: info.mode & 0o777 });
  }
  return files;
}

describe('join tokens', () => {
  it('are accepted once for the node they were created for', async () => {
    const dir = await newCaDir();
    const { token, node } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(node).toBe('node-a');
    await expect(consumeJoinToken(dir, token, 'node-a', KEY)).resolves.toEqual({ retry: false });
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', OTHER_KEY))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are 256-bit base64url strings, different every time', async () => {
    const dir = await newCaDir();
    const tokens = new Set<string>();
    for (let i = 0; i < 5; i++) tokens.add((await createJoinToken(dir, 'node-a', MINUTE_MS)).token);
    expect(tokens.size).toBe(5);
    for (const token of tokens) expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });

  it('let exactly one of 20 concurrent attempts with the same token succeed', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    // Twenty different keys: none of the nineteen later ones is the winner's retry.
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => consumeJoinToken(dir, token, 'node-a', i.toString(16).padStart(64, '0'))));
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
    // The others are refused as spent, or told to wait while the winner's attempt is between claiming and binding.
    const refusals = results.filter((result) => result.status === 'rejected').map((result) => (result.reason as AmbitError).code);
    expect(refusals).toHaveLength(19);
    for (const code of refusals) expect(['JOIN_TOKEN_INVALID', 'JOIN_TOKEN_BUSY']).toContain(code);
  });

  it('are accepted up to their expiry', async () => {
    const dir = await newCaDir();
    const createdAt = new Date('2026-11-23T12:00:00Z');
    const { token, expiresAt } = await createJoinToken(dir, 'node-a', MINUTE_MS, createdAt);
    expect(expiresAt.getTime()).toBe(createdAt.getTime() + MINUTE_MS);
    await expect(consumeJoinToken(dir, token, 'node-a', KEY, expiresAt)).resolves.toEqual({ retry: false });
  });

  it('are refused after their expiry, and spent by the attempt', async () => {
    const dir = await newCaDir();
    const createdAt = new Date('2026-11-23T12:00:00Z');
    const { token } = await createJoinToken(dir, 'node-a', MINUTE_MS, createdAt);
    const late = new Date(createdAt.getTime() + MINUTE_MS + 1);
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, late))).toBe('JOIN_TOKEN_EXPIRED');
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, createdAt))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are refused for another node, and spent by the attempt', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(dir, token, 'node-b', KEY))).toBe('JOIN_TOKEN_WRONG_NODE');
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are refused when unknown, even when well formed', async () => {
    const dir = await newCaDir();
    await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(dir, 'A'.repeat(43), 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are not valid in another CA directory', async () => {
    const dir = await newCaDir();
    const other = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(other, token, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
    await expect(consumeJoinToken(dir, token, 'node-a', KEY)).resolves.toEqual({ retry: false });
  });

  describe('malformed token text', () => {
    let dir: string;
    let outside: string;
    let pendingToken: string;

    beforeAll(async () => {
      dir = await newCaDir();
      // A file beside the CA that a path-traversing token might reach.
      outside = join(base, 'outside');
      await mkdir(outside, { recursive: true });
      await writeFile(join(outside, 'victim.json'), JSON.stringify({ node: 'node-a', createdAt: '2026-01-01T00:00:00Z', expiresAt: '2999-01-01T00:00:00Z' }));
      pendingToken = (await createJoinToken(dir, 'node-a', 10 * MINUTE_MS)).token;
    });

    it.each([
      ['empty', ''],
      ['too short', 'abc'],
      ['one character short', 'A'.repeat(42)],
      ['one character long', 'A'.repeat(44)],
      ['with a slash', `${'A'.repeat(21)}/${'A'.repeat(21)}`],
      ['a parent path', `../${'A'.repeat(40)}`],
      ['a path to a file outside', '../../outside/victim'],
      ['with a NUL byte', `${'A'.repeat(42)}\0`],
      ['with a newline', `${'A'.repeat(42)}\n`],
      ['with padding', `${'A'.repeat(42)}=`],
      ['10 KB long', 'A'.repeat(10 * 1024)],
    ])('refuses a token that is %s and touches no file', async (_case, token) => {
      const before = await tree(base);
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
      expect(await tree(base)).toEqual(before);
    });

    it('leaves the real token usable', async () => {
      await expect(consumeJoinToken(dir, pendingToken, 'node-a', KEY)).resolves.toEqual({ retry: false });
    });
  });

  it('are kept on disk only as a hash, before and after use', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    const lookFor = (files: Map<string, { content: string }>) => [...files].filter(([path, { content }]) => path.includes(token) || content.includes(token));
    const pending = await tree(dir);
    expect([...pending.keys()].some((path) => path.startsWith('tokens'))).toBe(true);
    expect(lookFor(pending)).toEqual([]);
    await consumeJoinToken(dir, token, 'node-a', KEY);
    expect(lookFor(await tree(dir))).toEqual([]);
  });

  it('are written 0600 in directories only the CA can enter', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    const tokenFiles = () => tree(join(dir, 'tokens'));
    const pending = await tokenFiles();
    expect(pending.size).toBe(1);
    for (const { mode } of pending.values()) expect(mode).toBe(0o600);
    await consumeJoinToken(dir, token, 'node-a', KEY);
    const used = await tokenFiles();
    expect([...used.keys()].every((path) => path.startsWith('used'))).toBe(true);
    for (const { mode } of used.values()) expect(mode).toBe(0o600);
    expect((await stat(join(dir, 'tokens'))).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, 'tokens', 'used'))).mode & 0o777).toBe(0o700);
  });

  it.each([
    ['999 ms', 999],
    ['zero', 0],
    ['negative', -MINUTE_MS],
    ['not a number', Number.NaN],
  ])('refuse a TTL that is %s, writing nothing', async (_case, ttlMs) => {
    const dir = await newCaDir();
    const before = await tree(dir);
    expect(await codeOf(createJoinToken(dir, 'node-a', ttlMs))).toBe('USAGE');
    expect(await tree(dir)).toEqual(before);
  });

  it('accept a TTL of exactly one second', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 1000);
    await expect(consumeJoinToken(dir, token, 'node-a', KEY)).resolves.toEqual({ retry: false });
  });

  it('stay spent when their record is damaged (CA_STATE once, then refused), and count as expired when their expiry does not parse', async () => {
    const dir = await newCaDir();
    const pendingFile = async () => join(dir, 'tokens', (await readdir(join(dir, 'tokens'))).find((entry) => entry.endsWith('.json')) as string);
    const damaged = (await createJoinToken(dir, 'node-a', 10 * MINUTE_MS)).token;
    await writeFile(await pendingFile(), '{"node": "node-a", ');
    expect(await codeOf(consumeJoinToken(dir, damaged, 'node-a', KEY))).toBe('CA_STATE');
    // Not given back: a second attempt would only claim and fail it again, and again.
    expect(await codeOf(consumeJoinToken(dir, damaged, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
    const undated = (await createJoinToken(dir, 'node-a', 10 * MINUTE_MS)).token;
    const file = await pendingFile();
    await writeFile(file, JSON.stringify({ ...(JSON.parse(await readFile(file, 'utf8')) as object), expiresAt: 'whenever' }));
    expect(await codeOf(consumeJoinToken(dir, undated, 'node-a', KEY))).toBe('JOIN_TOKEN_EXPIRED');
  });

  describe('presented again after they were spent (the answer to the attestation was lost)', () => {
    const spentAt = new Date('2026-11-23T12:00:00Z');
    const later = (ms: number) => new Date(spentAt.getTime() + ms);
    const answer = { serial: 'abc123', certChain: '-----BEGIN CERTIFICATE-----\n...', expiresAt: later(60 * MINUTE_MS).toISOString() };

    async function spent(answered = true): Promise<{ dir: string; token: string }> {
      const dir = await newCaDir();
      const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS, new Date(spentAt.getTime() - MINUTE_MS));
      await expect(consumeJoinToken(dir, token, 'node-a', KEY, spentAt)).resolves.toEqual({ retry: false });
      if (answered) await recordTokenAnswer(dir, token, answer);
      return { dir, token };
    }

    it('give the node and key that spent them the answer kept for them, as often as asked', async () => {
      const { dir, token } = await spent();
      await expect(consumeJoinToken(dir, token, 'node-a', KEY, later(MINUTE_MS))).resolves.toEqual({ retry: true, answer });
      await expect(consumeJoinToken(dir, token, 'node-a', KEY, later(2 * MINUTE_MS))).resolves.toEqual({ retry: true, answer });
    });

    it('are answered again while that certificate is valid, after the token itself expired, and refused after', async () => {
      const { dir, token } = await spent();
      await expect(consumeJoinToken(dir, token, 'node-a', KEY, later(60 * MINUTE_MS - 1))).resolves.toMatchObject({ retry: true });
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(60 * MINUTE_MS)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are refused with any other key, or for any other node, as spent', async () => {
      const { dir, token } = await spent();
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', OTHER_KEY, later(1000)))).toBe('JOIN_TOKEN_INVALID');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-b', KEY, later(1000)))).toBe('JOIN_TOKEN_INVALID');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', '', later(1000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are told to wait while the first issuance is under way, and refused once it has had time to finish', async () => {
      const { dir, token } = await spent(false);
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(1000)))).toBe('JOIN_TOKEN_BUSY');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(ISSUANCE_LIMIT_MS)))).toBe('JOIN_TOKEN_BUSY');
      // It died (a CA crash between spending and answering): spent, as before tokens kept answers.
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(ISSUANCE_LIMIT_MS + 1)))).toBe('JOIN_TOKEN_INVALID');
      // A clock before the spending is no issuance under way either.
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(-1000)))).toBe('JOIN_TOKEN_INVALID');
      // With another key it is a spent token, as ever.
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', OTHER_KEY, later(1000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are told to wait when an attempt has claimed them and not yet bound them, and refused once that is long past', async () => {
      const dir = await newCaDir();
      const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
      // As an attempt under way leaves it: renamed into used/, its key not written yet.
      const file = (await readdir(join(dir, 'tokens'))).find((entry) => entry.endsWith('.json'));
      await rename(join(dir, 'tokens', file as string), join(dir, 'tokens', 'used', file as string));
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY))).toBe('JOIN_TOKEN_BUSY');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-b', KEY))).toBe('JOIN_TOKEN_INVALID');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, new Date(Date.now() + ISSUANCE_LIMIT_MS + 1000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are refused at once, not told to wait, after an attempt for another node or past their expiry spent them', async () => {
      const dir = await newCaDir();
      const misdirected = (await createJoinToken(dir, 'node-a', 10 * MINUTE_MS)).token;
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-b', KEY))).toBe('JOIN_TOKEN_WRONG_NODE');
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-a', ''))).toBe('JOIN_TOKEN_INVALID');
      const expiring = (await createJoinToken(dir, 'node-a', 1000, new Date(Date.now() - 5000))).token;
      expect(await codeOf(consumeJoinToken(dir, expiring, 'node-a', KEY))).toBe('JOIN_TOKEN_EXPIRED');
      expect(await codeOf(consumeJoinToken(dir, expiring, 'node-a', KEY))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are not bound to a key when the attempt that spent them was refused (expired, or another node)', async () => {
      const dir = await newCaDir();
      const expiring = (await createJoinToken(dir, 'node-a', MINUTE_MS, spentAt)).token;
      expect(await codeOf(consumeJoinToken(dir, expiring, 'node-a', KEY, later(MINUTE_MS + 1)))).toBe('JOIN_TOKEN_EXPIRED');
      expect(await codeOf(consumeJoinToken(dir, expiring, 'node-a', KEY, later(MINUTE_MS + 2)))).toBe('JOIN_TOKEN_INVALID');
      const misdirected = (await createJoinToken(dir, 'node-a', MINUTE_MS, spentAt)).token;
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-b', KEY, later(1000)))).toBe('JOIN_TOKEN_WRONG_NODE');
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-b', KEY, later(2000)))).toBe('JOIN_TOKEN_INVALID');
      expect(await codeOf(consumeJoinToken(dir, misdirected, 'node-a', KEY, later(2000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it.each([
      ['written before tokens kept keys', (record: Record<string, unknown>) => ({ node: record.node, createdAt: record.createdAt, expiresAt: record.expiresAt })],
      ['with spent: null', (record: Record<string, unknown>) => ({ ...record, spent: null })],
      ['with an answer that is not one', (record: Record<string, unknown>) => ({ ...record, spent: { ...(record.spent as object), answer: { serial: 7 } } })],
      ['null', () => null],
      ['an array', () => []],
    ])('are refused as spent when their record is %s', async (_case, rewrite) => {
      const { dir, token } = await spent();
      const usedFile = join(dir, 'tokens', 'used', (await readdir(join(dir, 'tokens', 'used')))[0] as string);
      await writeFile(usedFile, JSON.stringify(rewrite(JSON.parse(await readFile(usedFile, 'utf8')) as Record<string, unknown>)));
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(1000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('are refused as spent when their record is not JSON', async () => {
      const { dir, token } = await spent();
      const usedFile = join(dir, 'tokens', 'used', (await readdir(join(dir, 'tokens', 'used')))[0] as string);
      await writeFile(usedFile, '{"node": "node-a", "spent": ');
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(1000)))).toBe('JOIN_TOKEN_INVALID');
    });

    it('let one of 20 concurrent attempts with the same key spend the token, and none of the others pass as its retry', async () => {
      const dir = await newCaDir();
      const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => consumeJoinToken(dir, token, 'node-a', KEY)));
      expect(results.filter((result) => result.status === 'fulfilled').map((result) => result.value)).toEqual([{ retry: false }]);
      for (const result of results) if (result.status === 'rejected') expect(['JOIN_TOKEN_INVALID', 'JOIN_TOKEN_BUSY']).toContain((result.reason as AmbitError).code);
    });

    it('are spendable afresh once given back, whatever key spent them before', async () => {
      const { dir, token } = await spent(false);
      await restoreJoinToken(dir, token);
      await expect(consumeJoinToken(dir, token, 'node-a', OTHER_KEY, later(1000))).resolves.toEqual({ retry: false });
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a', KEY, later(2000)))).toBe('JOIN_TOKEN_INVALID');
    });
  });
});
