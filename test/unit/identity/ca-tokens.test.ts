// Join tokens (src/identity/ca/tokens.ts): single use under races, expiry, node binding, hostile token
// text, and what is kept on disk.
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initCa } from '../../../src/identity/ca/store.ts';
import { consumeJoinToken, createJoinToken } from '../../../src/identity/ca/tokens.ts';
import { AmbitError } from '../../../src/errors.ts';

const TD = 'cluster.local';
const MINUTE_MS = 60_000;

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
    await expect(consumeJoinToken(dir, token, 'node-a')).resolves.toBeUndefined();
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a'))).toBe('JOIN_TOKEN_INVALID');
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
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => consumeJoinToken(dir, token, 'node-a')));
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
    const refusals = results.filter((result) => result.status === 'rejected').map((result) => (result.reason as AmbitError).code);
    expect(refusals).toEqual(Array.from({ length: 19 }, () => 'JOIN_TOKEN_INVALID'));
  });

  it('are accepted up to their expiry', async () => {
    const dir = await newCaDir();
    const createdAt = new Date('2026-11-23T12:00:00Z');
    const { token, expiresAt } = await createJoinToken(dir, 'node-a', MINUTE_MS, createdAt);
    expect(expiresAt.getTime()).toBe(createdAt.getTime() + MINUTE_MS);
    await expect(consumeJoinToken(dir, token, 'node-a', expiresAt)).resolves.toBeUndefined();
  });

  it('are refused after their expiry, and spent by the attempt', async () => {
    const dir = await newCaDir();
    const createdAt = new Date('2026-11-23T12:00:00Z');
    const { token } = await createJoinToken(dir, 'node-a', MINUTE_MS, createdAt);
    const late = new Date(createdAt.getTime() + MINUTE_MS + 1);
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', late))).toBe('JOIN_TOKEN_EXPIRED');
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a', createdAt))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are refused for another node, and spent by the attempt', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(dir, token, 'node-b'))).toBe('JOIN_TOKEN_WRONG_NODE');
    expect(await codeOf(consumeJoinToken(dir, token, 'node-a'))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are refused when unknown, even when well formed', async () => {
    const dir = await newCaDir();
    await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(dir, 'A'.repeat(43), 'node-a'))).toBe('JOIN_TOKEN_INVALID');
  });

  it('are not valid in another CA directory', async () => {
    const dir = await newCaDir();
    const other = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    expect(await codeOf(consumeJoinToken(other, token, 'node-a'))).toBe('JOIN_TOKEN_INVALID');
    await expect(consumeJoinToken(dir, token, 'node-a')).resolves.toBeUndefined();
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
      expect(await codeOf(consumeJoinToken(dir, token, 'node-a'))).toBe('JOIN_TOKEN_INVALID');
      expect(await tree(base)).toEqual(before);
    });

    it('leaves the real token usable', async () => {
      await expect(consumeJoinToken(dir, pendingToken, 'node-a')).resolves.toBeUndefined();
    });
  });

  it('are kept on disk only as a hash, before and after use', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    const lookFor = (files: Map<string, { content: string }>) => [...files].filter(([path, { content }]) => path.includes(token) || content.includes(token));
    const pending = await tree(dir);
    expect([...pending.keys()].some((path) => path.startsWith('tokens'))).toBe(true);
    expect(lookFor(pending)).toEqual([]);
    await consumeJoinToken(dir, token, 'node-a');
    expect(lookFor(await tree(dir))).toEqual([]);
  });

  it('are written 0600 in directories only the CA can enter', async () => {
    const dir = await newCaDir();
    const { token } = await createJoinToken(dir, 'node-a', 10 * MINUTE_MS);
    const tokenFiles = () => tree(join(dir, 'tokens'));
    const pending = await tokenFiles();
    expect(pending.size).toBe(1);
    for (const { mode } of pending.values()) expect(mode).toBe(0o600);
    await consumeJoinToken(dir, token, 'node-a');
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
    await expect(consumeJoinToken(dir, token, 'node-a')).resolves.toBeUndefined();
  });
});
