// Join tokens: single-use, expiring secrets that let a new VM or host prove itself once and receive
// its node SVID. Only a SHA-256 of each token is stored; consuming one is an atomic rename, so a token
// can never be used twice, not even by two racing requests or after a CA restart.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError } from '../../errors.ts';

/** 256 bits: guessing is not an attack worth considering; base64url so it pastes into any shell. */
const TOKEN_BYTES = 32;
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;

interface TokenRecord {
  node: string;
  createdAt: string;
  expiresAt: string;
}

function tokenHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function pendingDir(caDir: string): string {
  return join(caDir, 'tokens');
}

function usedDir(caDir: string): string {
  return join(caDir, 'tokens', 'used');
}

export interface CreatedToken {
  token: string;
  node: string;
  expiresAt: Date;
}

export async function createJoinToken(caDir: string, node: string, ttlMs: number, now = new Date()): Promise<CreatedToken> {
  if (!(ttlMs >= 1000)) throw new AmbitError('USAGE', 'join token TTL must be at least 1s');
  await mkdir(usedDir(caDir), { recursive: true, mode: 0o700 });
  let token = randomBytes(TOKEN_BYTES).toString('base64url');
  // A token starting with "-" reads as an option on command lines (`--join-token -x...`): draw again.
  while (token.startsWith('-')) token = randomBytes(TOKEN_BYTES).toString('base64url');
  const expiresAt = new Date(now.getTime() + ttlMs);
  const record: TokenRecord = { node, createdAt: now.toISOString(), expiresAt: expiresAt.toISOString() };
  await writeFile(join(pendingDir(caDir), `${tokenHash(token)}.json`), JSON.stringify(record) + '\n', { mode: 0o600, flag: 'wx' });
  return { token, node, expiresAt };
}

/**
 * Consumes a token for `node`. As SPIRE does, the token is spent before its expiry is checked, and a
 * token presented for the wrong node is spent too: whoever holds it has shown it to the wrong party.
 */
/**
 * Gives back a token consumeJoinToken accepted, when the CA then failed to hand out the certificate (its audit log or
 * the node record could not be written): the node's retry with the same token must not be refused for the CA's fault.
 */
export async function restoreJoinToken(caDir: string, token: string): Promise<void> {
  if (!TOKEN_SHAPE.test(token)) return;
  const name = `${tokenHash(token)}.json`;
  await rename(join(usedDir(caDir), name), join(pendingDir(caDir), name));
}

export async function consumeJoinToken(caDir: string, token: string, node: string, now = new Date()): Promise<void> {
  if (!TOKEN_SHAPE.test(token)) throw new AmbitError('JOIN_TOKEN_INVALID', 'join token is malformed');
  const name = `${tokenHash(token)}.json`;
  const usedPath = join(usedDir(caDir), name);
  try {
    await mkdir(usedDir(caDir), { recursive: true, mode: 0o700 });
    await rename(join(pendingDir(caDir), name), usedPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new AmbitError('JOIN_TOKEN_INVALID', 'join token does not exist or was already used');
    throw error;
  }
  const record = JSON.parse(await readFile(usedPath, 'utf8')) as TokenRecord;
  if (now.getTime() > Date.parse(record.expiresAt)) {
    throw new AmbitError('JOIN_TOKEN_EXPIRED', `join token for node "${record.node}" expired at ${record.expiresAt}`);
  }
  if (record.node !== node) {
    throw new AmbitError('JOIN_TOKEN_WRONG_NODE', `join token was created for node "${record.node}", presented by "${node}"`);
  }
}
