// Which node SVID each node may use at the CA. A valid node certificate alone would renew itself forever: a copy
// (a VM image taken after onboarding, a backup, a decommissioned disk) would be a permanent node identity, and
// onboarding the name again would not end it. So the CA keeps, per node, the serial of the certificate it issued
// last and, after a renewal, the new one until the node first uses it (SPIRE's CertSerialNumber and
// NewCertSerialNumber): the node's first request with the new certificate retires the old one, and a copy of
// an older certificate is refused. `ambit ca node evict` ends a node until it attests again with a join token.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AmbitError } from '../../errors.ts';
import { withLockFile, writeFileAtomic } from '../files.ts';
import { makeDirs } from '../../mkdir.ts';

interface NodeRecord {
  /** The serial of the certificate the node uses now. */
  current: string;
  /**
   * Renewals' new certificates, oldest first, until the node first presents one of them: a renewal the node gave up
   * on may finish after its retry, so the one the node holds need not be the last issued.
   */
  pending?: string[];
  /** Set by `ambit ca node evict`: nothing is accepted until a join token attests the node again. */
  evicted?: boolean;
  updatedAt: string;
}

function nodesDir(caDir: string): string {
  return join(caDir, 'nodes');
}

/**
 * The longest name kept as its own file name: with `.json` and writeFileAtomic's `.<12 hex>.tmp`, 255 bytes, what a
 * file name may have. Every name that worked before keeps its record where it is.
 */
const LONGEST_NAME_AS_IS = 233;

/**
 * A node's record: under its name, or for a longer one (a Kubernetes node name may have 253 characters) under `~` and
 * its SHA-256, which no node name can be (`~` is in no SPIFFE path segment). Such a node failed to attest with
 * ENAMETOOLONG, a 500 whose token was given back, and its agent retried for ever.
 */
function recordFile(caDir: string, node: string): string {
  const name = Buffer.byteLength(node) <= LONGEST_NAME_AS_IS ? node : `~${createHash('sha256').update(node).digest('hex')}`;
  return join(nodesDir(caDir), `${name}.json`);
}

/** Serials as hex without leading zeros, in lower case: Node's TLS and @peculiar/x509 spell them differently. */
export function normalizeSerial(serial: string): string {
  const lower = serial.toLowerCase();
  let start = 0;
  while (start < lower.length - 1 && lower.charCodeAt(start) === 48 /* 0 */) start++;
  return lower.slice(start);
}

async function read(caDir: string, node: string): Promise<NodeRecord | undefined> {
  let text: string;
  try {
    text = await readFile(recordFile(caDir, node), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new AmbitError('CA_STATE', `${recordFile(caDir, node)}: ${(error as Error).message}`, { cause: error });
  }
  try {
    const parsed = JSON.parse(text) as Partial<NodeRecord>;
    if (typeof parsed.current !== 'string') throw new Error('no current serial');
    const pending = Array.isArray(parsed.pending) ? parsed.pending.filter((serial): serial is string => typeof serial === 'string') : undefined;
    return { current: parsed.current, pending, evicted: parsed.evicted === true, updatedAt: String(parsed.updatedAt ?? '') };
  } catch (error) {
    throw new AmbitError('CA_STATE', `${recordFile(caDir, node)}: not a node record: ${(error as Error).message}`, { cause: error });
  }
}

async function write(caDir: string, node: string, record: Omit<NodeRecord, 'updatedAt'>): Promise<void> {
  await makeDirs(nodesDir(caDir), 0o700);
  const body: NodeRecord = { ...record, updatedAt: new Date().toISOString() };
  await writeFileAtomic(recordFile(caDir, node), `${JSON.stringify(body, null, 2)}\n`, 0o600);
}

/**
 * Runs a record's read-modify-write holding its lock file: the CA serialises its own updates per node, but `ambit ca
 * node evict` is another process, and an eviction written between the CA's read and write would be lost (the node
 * keeps renewing).
 */
export async function withRecord<T>(caDir: string, node: string, work: () => Promise<T>): Promise<T> {
  await makeDirs(nodesDir(caDir), 0o700);
  return await withLockFile(`${recordFile(caDir, node)}.lock`, 'a running ambit ca node evict', work);
}

/** A join token attested the node: its new certificate is the one it uses, whatever came before (eviction too). */
export async function recordAttested(caDir: string, node: string, serial: string): Promise<void> {
  await withRecord(caDir, node, () => write(caDir, node, { current: normalizeSerial(serial) }));
}

/**
 * Whether a join token's answer, asked for again, is still the node's certificate: null when it is (the current one,
 * no renewal asked for with it, not evicted), else why not. Read only: nothing changes when it is answered again.
 */
export async function answerStands(caDir: string, node: string, serial: string): Promise<string | null> {
  const record = await read(caDir, node);
  if (record === undefined) return `the CA has no record of node ${node}`;
  if (record.evicted === true) return `node ${node} was evicted`;
  if (record.current !== normalizeSerial(serial) || (record.pending?.length ?? 0) > 0) return `node ${node} has moved on from the certificate its join token was answered with`;
  return null;
}

/** Renewals kept pending at once: more means a node retrying far more than its agent does. */
const MAX_PENDING = 4;

/**
 * The node renewed its own certificate: the new one is accepted alongside the current until first used. An
 * eviction that came meanwhile stays (a renewal under way when the operator evicted must not undo it).
 */
export async function recordRenewal(caDir: string, node: string, callerSerial: string, newSerial: string): Promise<void> {
  await withRecord(caDir, node, async () => {
    const record = await read(caDir, node);
    const pending = [...(record?.pending ?? []), normalizeSerial(newSerial)].slice(-MAX_PENDING);
    await write(caDir, node, { current: record?.current ?? normalizeSerial(callerSerial), pending, evicted: record?.evicted === true ? true : undefined });
  });
}

/**
 * Whether the node may use the certificate with this serial: null when it may (a pending one becomes current and
 * the old one is retired), else why not (a node without a record, one evicted, a serial replaced since).
 */
export async function admitNodeCertificate(caDir: string, node: string, serial: string): Promise<string | null> {
  return withRecord(caDir, node, () => admit(caDir, node, normalizeSerial(serial)));
}

async function admit(caDir: string, node: string, presented: string): Promise<string | null> {
  const record = await read(caDir, node);
  const refusal = refusalOf(record, node, presented);
  if (refusal !== null || record === undefined || presented === record.current) return refusal;
  // A pending renewal, first used: it becomes current, the one before is retired.
  await write(caDir, node, { current: presented });
  return null;
}

/**
 * Read only, before a request's body is read or the registry consulted: whether the node may use this certificate at
 * all (admitNodeCertificate decides for good, in the node's queue). An evicted node, or one presenting a copied old
 * certificate, learns nothing then of what the registry places on the node.
 */
export async function nodeCertificateRefusal(caDir: string, node: string, serial: string): Promise<string | null> {
  return refusalOf(await read(caDir, node), node, normalizeSerial(serial));
}

function refusalOf(record: NodeRecord | undefined, node: string, presented: string): string | null {
  // Every node this CA onboarded has a record (attestation writes it). A node certificate without one was issued
  // elsewhere (another CA under the same root), or its record was removed: taking it would hand that node's
  // workload identities to whoever presents it first. SPIRE likewise refuses an agent it has no attested record of.
  if (record === undefined) return `node ${node} has not attested with this CA (no record in nodes/): it must attest with a join token`;
  if (record.evicted) return `node ${node} was evicted (ambit ca node evict): it must attest again with a new join token`;
  if (presented === record.current || record.pending?.includes(presented) === true) return null;
  return `node ${node}'s certificate (serial ${presented}) was replaced by a later renewal or attestation: a copy of an old node SVID, or a node that must attest again with a new join token`;
}

/** Ends a node's access until it attests again; false when the CA had no record of the node (it is evicted all the same). */
export async function evictNode(caDir: string, node: string): Promise<boolean> {
  return withRecord(caDir, node, async () => {
    const record = await read(caDir, node);
    await write(caDir, node, { current: record?.current ?? '', evicted: true });
    return record !== undefined;
  });
}
