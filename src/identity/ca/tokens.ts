// Join tokens: single-use, expiring secrets that let a new VM or host prove itself once and receive
// its node SVID. Only a SHA-256 of each token is stored; consuming one is an atomic rename, so a token
// can never be used twice, not even by two racing requests or after a CA restart.
//
// Spending a token binds it to the public key of the CSR that spent it, and the CA keeps the certificate it answered
// with. That answer can be lost (the node's deadline passed while the CA signed, a connection cut): the same node
// presenting the same token with a CSR for the same key gets the same certificate again, while it is valid. Nothing
// new is issued and no record changes, so a retry races nothing, and whoever replays a captured request gets a public
// certificate it has no key for.
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError } from '../../errors.ts';
import { writeFileAtomic } from '../files.ts';
import { makeDirs } from '../../mkdir.ts';

/** 256 bits: guessing is not an attack worth considering; base64url so it pastes into any shell. */
const TOKEN_BYTES = 32;
const TOKEN_SHAPE = /^[A-Za-z0-9_-]{43}$/;

/** How long a retry is told to wait (503) for the issuance its token's first attempt started; after, it died. */
export const ISSUANCE_LIMIT_MS = 60_000;

/** The certificate a token was answered with: public, kept to answer a retry with. */
export interface TokenAnswer {
  serial: string;
  /** PEM, leaf first, as the CA answers. */
  certChain: string;
  expiresAt: string;
}

interface SpentRecord {
  /** When the token was spent. */
  at: string;
  /** SHA-256 of the spending CSR's SubjectPublicKeyInfo, hex. */
  key: string;
  /** Absent while that issuance is under way (or if it died). */
  answer?: TokenAnswer;
}

interface TokenRecord {
  node: string;
  createdAt: string;
  expiresAt: string;
  spent?: SpentRecord;
}

/** What presenting a token allows: a first attestation, or the answer to that one again. */
export type JoinTokenClaim = { readonly retry: false } | { readonly retry: true; readonly answer: TokenAnswer };

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
  await makeDirs(usedDir(caDir), 0o700);
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
    await makeDirs(usedDir(caDir), 0o700);
    await rename(join(pendingDir(caDir), name), usedPath);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return reclaim(usedPath, node, key, now);
    throw error;
  }
  const giveBack = () => rename(usedPath, join(pendingDir(caDir), name)).catch(() => {});
  let record: TokenRecord | undefined;
  try {
    record = await readRecord(usedPath);
  } catch (error) {
    // The CA's disk failed it (the node's retry gets its token back); a damaged record stays spent, or every attempt
    // would claim it, fail and give it back again.
    const io = !(error instanceof AmbitError) && !(error instanceof SyntaxError);
    if (io) await giveBack();
    throw new AmbitError('CA_STATE', `the record of a join token for node "${node}" cannot be read: ${(error as Error).message}`, { cause: error });
  }
  if (record === undefined) throw new AmbitError('CA_STATE', `${usedPath}: vanished after the token was spent`);
  // Spent by a refused attempt: bound to no key, so that no retry takes it for an attempt under way.
  const refused = (error: AmbitError) => writeRecord(usedPath, { ...record, spent: { at: now.toISOString(), key: '' } }).then(() => error, () => error);
  // An expiry that does not parse counts as passed.
  if (!(now.getTime() <= Date.parse(record.expiresAt))) {
    throw await refused(new AmbitError('JOIN_TOKEN_EXPIRED', `join token for node "${record.node}" expired at ${record.expiresAt}`));
  }
  if (record.node !== node) {
    // Spent all the same (a stolen token is not kept for a guess at the right name): said, with what to do.
    throw await refused(new AmbitError('JOIN_TOKEN_WRONG_NODE', `join token was created for node "${record.node}", presented by "${node}"; it is spent now: create another (ambit ca token create --node NAME) and give the agent the same --node NAME`));
  }
  // Bound before anything is issued: a retry that overtakes this issuance is told to wait, not refused.
  try {
    await writeRecord(usedPath, { node: record.node, createdAt: record.createdAt, expiresAt: record.expiresAt, spent: { at: now.toISOString(), key } });
  } catch (error) {
    // Unbound, a retry would find it spent: the CA's disk failed, not the node, so it gets its token back.
    await giveBack();
    throw new AmbitError('CA_STATE', `join token for node "${node}" could not be recorded as spent: ${(error as Error).message}`, { cause: error });
  }
  return { retry: false };
}

/** Whether a token is one this CA made (pending or spent): a refusal of a request carrying it is worth an audit record. */
export async function joinTokenKnown(caDir: string, token: string): Promise<boolean> {
  if (!TOKEN_SHAPE.test(token)) return false;
  const name = `${tokenHash(token)}.json`;
  for (const path of [join(pendingDir(caDir), name), join(usedDir(caDir), name)]) {
    if (await stat(path).then(() => true, () => false)) return true;
  }
  return false;
}

/** Keeps the certificate a spent token was answered with, to answer its retries. */
export async function recordTokenAnswer(caDir: string, token: string, answer: TokenAnswer): Promise<void> {
  const usedPath = join(usedDir(caDir), `${tokenHash(token)}.json`);
  const record = await readRecord(usedPath);
  if (record?.spent === undefined) throw new AmbitError('CA_STATE', `${usedPath}: not a spent join token`);
  await writeRecord(usedPath, { ...record, spent: { at: record.spent.at, key: record.spent.key, answer } });
}

/**
 * A token that is not pending: refused as unknown or spent (one message for both, so a prober learns nothing) unless
 * it is the node that spent it, with the same key, asking for that answer again while its certificate is valid.
 */
async function reclaim(usedPath: string, node: string, key: string, now: Date): Promise<JoinTokenClaim> {
  const spentAlready = new AmbitError('JOIN_TOKEN_INVALID', 'join token does not exist or was already used');
  const record = await readRecord(usedPath).catch(() => undefined);
  if (record === undefined || record.node !== node) throw spentAlready;
  const spent = record.spent;
  if (spent === undefined) {
    // Claimed (renamed) but not yet bound to a key: an attempt for this node is between the two, unless the token was
    // claimed long ago or already expired then (a refused attempt, or a record from before tokens kept keys).
    // Either way round: the claim may land after `now` was read, and the file's clock is the kernel's, not ours.
    const claimedMs = await stat(usedPath).then((found) => found.ctimeMs, () => Number.NaN);
    if (Math.abs(now.getTime() - claimedMs) <= ISSUANCE_LIMIT_MS && claimedMs <= Date.parse(record.expiresAt)) throw busy(node);
    throw spentAlready;
  }
  if (spent.key === '' || spent.key !== key) throw spentAlready;
  if (spent.answer !== undefined) {
    if (!(now.getTime() < Date.parse(spent.answer.expiresAt))) throw spentAlready;
    return { retry: true, answer: spent.answer };
  }
  const sinceSpent = now.getTime() - Date.parse(spent.at);
  if (sinceSpent >= 0 && sinceSpent <= ISSUANCE_LIMIT_MS) throw busy(node);
  // The issuance died (a CA crash between spending and answering, a token that could not be given back).
  throw spentAlready;
}

function busy(node: string): AmbitError {
  return new AmbitError('JOIN_TOKEN_BUSY', `the attestation that spent this join token for node "${node}" is still being answered: ask again shortly`);
}

async function readRecord(path: string): Promise<TokenRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const parsed = JSON.parse(text) as unknown;
  if (!isObject(parsed) || typeof parsed.node !== 'string' || typeof parsed.createdAt !== 'string' || typeof parsed.expiresAt !== 'string') {
    throw new AmbitError('CA_STATE', `${path}: not a join token record`);
  }
  return { node: parsed.node, createdAt: parsed.createdAt, expiresAt: parsed.expiresAt, spent: spentOf(parsed.spent) };
}

/** A spent record as written; anything else (older records, damage) counts as none: the token is then just spent. */
function spentOf(value: unknown): SpentRecord | undefined {
  if (!isObject(value) || typeof value.at !== 'string' || typeof value.key !== 'string') return undefined;
  const answer = value.answer;
  if (answer === undefined) return { at: value.at, key: value.key };
  if (!isObject(answer) || typeof answer.serial !== 'string' || typeof answer.certChain !== 'string' || typeof answer.expiresAt !== 'string') return undefined;
  return { at: value.at, key: value.key, answer: { serial: answer.serial, certChain: answer.certChain, expiresAt: answer.expiresAt } };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function writeRecord(path: string, record: TokenRecord): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(record) + '\n', 0o600);
}
