// Join tokens: single-use, expiring secrets that let a new VM or host prove itself once and receive
// its node SVID. Only a SHA-256 of each token is stored; consuming one is an atomic rename, so a token
// can never be used twice, not even by two racing requests or after a CA restart.
//
// Spending a token binds it to the public key of the CSR that spent it. The answer to that attestation can be lost
// (the node's deadline passed while the CA was signing, a connection cut): the same node presenting the same token
// with a CSR for the same key, soon after, is that request again, not a second use, and gets its certificate. The key
// is proven by the CSR's signature, so whoever copies a spent token gains nothing without the node's private key.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError } from '../../errors.ts';
import { writeFileAtomic } from '../files.ts';

/** 256 bits: guessing is not an attack worth considering; base64url so it pastes into any shell. */
const TOKEN_BYTES = 32;
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;

/** How long after spending a token its node may ask again for the answer it lost (its agent retries within minutes). */
export const REATTEST_WINDOW_MS = 15 * 60_000;

interface SpentRecord {
  /** When the token was spent: the window for asking again runs from here, never from a later retry. */
  at: string;
  /** SHA-256 of the spending CSR's SubjectPublicKeyInfo, hex. */
  key: string;
  /** The node certificate last issued for it; absent while that first issuance is under way. */
  serial?: string;
}

interface TokenRecord {
  node: string;
  createdAt: string;
  expiresAt: string;
  spent?: SpentRecord;
}

/** What presenting a token allows: a first attestation, or the one already made again, for an answer that was lost. */
export type JoinTokenClaim =
  | { readonly retry: false }
  /** `serial`: the node certificate issued for the lost answer, which must still be the node's current one. */
  | { readonly retry: true; readonly serial: string };

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
 * Gives back a token consumeJoinToken accepted, when the CA then failed to hand out the certificate (its audit log or
 * the node record could not be written): the node's retry with the same token must not be refused for the CA's fault.
 */
export async function restoreJoinToken(caDir: string, token: string): Promise<void> {
  if (!TOKEN_SHAPE.test(token)) return;
  const name = `${tokenHash(token)}.json`;
  await rename(join(usedDir(caDir), name), join(pendingDir(caDir), name));
}

/**
 * Consumes a token for `node`, binding it to `key` (the SHA-256 of the CSR's SubjectPublicKeyInfo, hex). As SPIRE
 * does, the token is spent before its expiry is checked, and a token presented for the wrong node is spent too:
 * whoever holds it has shown it to the wrong party. A spent token is a retry only as `reclaim` allows.
 */
export async function consumeJoinToken(caDir: string, token: string, node: string, key: string, now = new Date()): Promise<JoinTokenClaim> {
  if (!TOKEN_SHAPE.test(token)) throw new AmbitError('JOIN_TOKEN_INVALID', 'join token is malformed');
  const name = `${tokenHash(token)}.json`;
  const usedPath = join(usedDir(caDir), name);
  try {
    await mkdir(usedDir(caDir), { recursive: true, mode: 0o700 });
    await rename(join(pendingDir(caDir), name), usedPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return reclaim(usedPath, node, key, now);
    throw error;
  }
  const record = await readRecord(usedPath);
  if (record === undefined) throw new AmbitError('CA_STATE', `${usedPath}: vanished after the token was spent`);
  if (now.getTime() > Date.parse(record.expiresAt)) {
    throw new AmbitError('JOIN_TOKEN_EXPIRED', `join token for node "${record.node}" expired at ${record.expiresAt}`);
  }
  if (record.node !== node) {
    throw new AmbitError('JOIN_TOKEN_WRONG_NODE', `join token was created for node "${record.node}", presented by "${node}"`);
  }
  // Bound before anything is issued: a retry that overtakes this issuance is told to wait, not refused.
  await writeRecord(usedPath, { node: record.node, createdAt: record.createdAt, expiresAt: record.expiresAt, spent: { at: now.toISOString(), key } });
  return { retry: false };
}

/** Records the node certificate issued for a spent token (the first, or a lost answer's again). */
export async function recordTokenIssue(caDir: string, token: string, serial: string): Promise<void> {
  const usedPath = join(usedDir(caDir), `${tokenHash(token)}.json`);
  const record = await readRecord(usedPath);
  if (record?.spent === undefined) throw new AmbitError('CA_STATE', `${usedPath}: not a spent token`);
  await writeRecord(usedPath, { ...record, spent: { ...record.spent, serial } });
}

/**
 * A token that is not pending: refused as unknown or spent (one message for both, so a prober learns nothing) unless
 * it is the same node asking again, with the same key, within the window, for an issuance that has finished.
 */
async function reclaim(usedPath: string, node: string, key: string, now: Date): Promise<JoinTokenClaim> {
  const spentAlready = new AmbitError('JOIN_TOKEN_INVALID', 'join token does not exist or was already used');
  const record = await readRecord(usedPath).catch(() => undefined);
  const spent = record?.spent;
  if (record === undefined || spent === undefined || record.node !== node || spent.key !== key) throw spentAlready;
  const at = Date.parse(spent.at);
  if (!(now.getTime() >= at && now.getTime() - at <= REATTEST_WINDOW_MS)) throw spentAlready;
  if (spent.serial === undefined) {
    throw new AmbitError('JOIN_TOKEN_BUSY', `the attestation that spent this join token for node "${node}" is still being answered: ask again shortly`);
  }
  return { retry: true, serial: spent.serial };
}

async function readRecord(path: string): Promise<TokenRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const parsed = JSON.parse(text) as Partial<TokenRecord>;
  if (typeof parsed.node !== 'string' || typeof parsed.createdAt !== 'string' || typeof parsed.expiresAt !== 'string') {
    throw new AmbitError('CA_STATE', `${path}: not a join token record`);
  }
  const spent = parsed.spent;
  const validSpent = spent !== undefined && typeof spent.at === 'string' && typeof spent.key === 'string' && (spent.serial === undefined || typeof spent.serial === 'string');
  return { node: parsed.node, createdAt: parsed.createdAt, expiresAt: parsed.expiresAt, spent: validSpent ? spent : undefined };
}

function writeRecord(path: string, record: TokenRecord): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(record) + '\n', 0o600);
}
