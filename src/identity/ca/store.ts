// The CA's state directory: signing authorities (root or intermediate), root rotation with overlap,
// and the published trust bundle derived from them. Private keys are written 0600 and never leave it.
//
// Layout:   DIR/ca.json                      trust domain, bundle sequence, authorities and their states
//           DIR/authorities/NAME/cert.pem    the signing certificate
//           DIR/authorities/NAME/key.pem     its private key (0600)
//           DIR/authorities/NAME/root.pem    the root it chains to (itself for a self-signed root)
//
// Root rotation (SPIRE's prepare/activate, Federation §6.2): `prepare` publishes a new root in the
// bundle without signing with it, so every peer trusts it before it is used; `activate` signs with it
// while the old root stays published for the certificates it still backs; `withdraw` removes roots
// that no longer sign. Each bundle change bumps spiffe_sequence.
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { createReadStream, existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { AmbitError } from '../../errors.ts';
import { withLockFile, writeFileAtomic } from '../files.ts';
import { BasicConstraintsExtension, KeyUsageFlags, KeyUsagesExtension } from '../x509.ts';
import { validateTrustDomain } from '../spiffe-id.ts';
import { BundleSet, createBundle } from '../bundle.ts';
import type { TrustBundle } from '../bundle.ts';
import {
  certificatesToPem,
  exportPrivateKeyPem,
  fingerprintOf,
  generateKeyPair,
  importPrivateKeyPem,
  issueCa,
  issueLeaf,
  parseCertificates,
  spiffeIdOf,
  verifySvid,
} from '../svid.ts';
import type { Certificate, SigningAuthority } from '../svid.ts';
import { makeDirs } from '../../mkdir.ts';

export const DEFAULT_CA_TTL_MS = 365 * 24 * 3_600_000;
export const DEFAULT_REFRESH_HINT_SECONDS = 300;

export type AuthorityState = 'prepared' | 'active' | 'published' | 'retired';

interface AuthorityRecord {
  name: string;
  state: AuthorityState;
  createdAt: string;
  /** When it started signing (absent for the first authority: it signed from creation). */
  activatedAt?: string;
}

interface StateFile {
  version: 1;
  trustDomain: string;
  /** Decimal string: spiffe_sequence is 64-bit and JSON numbers are not. */
  sequence: string;
  refreshHintSeconds: number;
  authorities: AuthorityRecord[];
}

export interface LoadedAuthority extends SigningAuthority {
  readonly name: string;
  readonly state: AuthorityState;
  readonly root: Certificate;
}

export interface CaState {
  readonly dir: string;
  readonly trustDomain: string;
  readonly sequence: bigint;
  readonly refreshHintSeconds: number;
  readonly active: LoadedAuthority;
  readonly authorities: readonly LoadedAuthority[];
  /** The roots peers must trust: every authority not retired. */
  readonly bundle: TrustBundle;
}

function statePath(dir: string): string {
  return join(dir, 'ca.json');
}


async function readState(dir: string): Promise<StateFile> {
  let text: string;
  try {
    text = await readFile(statePath(dir), 'utf8');
  } catch (error) {
    // Only a missing file means no CA: a permission problem said so sent the operator to `ca init` over a CA that exists.
    const code = (error as NodeJS.ErrnoException).code;
    throw new AmbitError('CA_STATE', code === 'ENOENT' || code === 'ENOTDIR' ? `${statePath(dir)}: no CA state (run \`ambit ca init\` first)` : `${statePath(dir)}: cannot read CA state: ${code ?? (error as Error).message}`, { cause: error });
  }
  try {
    const state = JSON.parse(text) as StateFile;
    if (state.version !== 1 || typeof state.trustDomain !== 'string' || !Array.isArray(state.authorities)) throw new Error('unexpected shape');
    return state;
  } catch (error) {
    throw new AmbitError('CA_STATE', `${statePath(dir)}: corrupt CA state (${(error as Error).message})`, { cause: error });
  }
}

async function writeState(dir: string, state: StateFile): Promise<void> {
  await writeFileAtomic(statePath(dir), JSON.stringify(state, null, 2) + '\n', 0o644);
}

export interface NewAuthorityOptions {
  ttlMs?: number;
  /** Sign the new authority with this root (an intermediate under a shared root) instead of self-signing. */
  /** `certFrom`/`keyFrom`: where each came from (`--root-cert root.pem`), for the errors. */
  parent?: { certPem: string; keyPem: string; certFrom?: string; keyFrom?: string };
  now?: Date;
}

async function createAuthority(dir: string, trustDomain: string, name: string, options: NewAuthorityOptions): Promise<void> {
  const keys = await generateKeyPair();
  const ttlMs = options.ttlMs ?? DEFAULT_CA_TTL_MS;
  let cert: Certificate;
  let root: Certificate;
  if (options.parent) {
    const parentCerts = parseCertificates(options.parent.certPem, options.parent.certFrom ?? 'parent root certificate');
    const parentCert = parentCerts[0] as Certificate;
    const parentKeys = await importPrivateKeyPem(options.parent.keyPem, options.parent.keyFrom ?? 'parent root key');
    // A key of another root would sign an intermediate that chains to nothing: every leaf it issues would be refused.
    const parentKeySpki = Buffer.from(await globalThis.crypto.subtle.exportKey('spki', parentKeys.publicKey));
    if (!Buffer.from(parentCert.publicKey.rawData).equals(parentKeySpki)) throw new AmbitError('SVID_KEY_MISMATCH', 'parent root key does not belong to the parent root certificate');
    // The parent must be able to sign CAs; check before anything is written, so a failed init leaves no half-made directory.
    const parentBasic = parentCert.getExtension(BasicConstraintsExtension);
    const parentUsage = parentCert.getExtension(KeyUsagesExtension);
    if (parentBasic?.ca !== true || (parentUsage !== null && (parentUsage.usages & KeyUsageFlags.keyCertSign) === 0)) {
      throw new AmbitError('SVID_CA_INVALID', 'parent root certificate is not a CA (needs basicConstraints cA=true and keyCertSign)');
    }
    const parentId = spiffeIdOf(parentCert);
    if (!(parentId instanceof AmbitError) && parentId.path !== '') {
      throw new AmbitError('SVID_CA_INVALID', `parent root carries ${parentId.id}; a CA's SPIFFE ID has no path`);
    }
    if (!(parentId instanceof AmbitError) && parentId.trustDomain !== trustDomain) {
      throw new AmbitError('TRUST_DOMAIN_MISMATCH', `parent root belongs to trust domain ${parentId.trustDomain}, not ${trustDomain}`);
    }
    cert = await issueCa({
      trustDomain,
      keys,
      ttlMs,
      commonName: `${trustDomain} intermediate ${name}`,
      authority: { cert: parentCert, privateKey: parentKeys.privateKey, chainAbove: [] },
      now: options.now,
    });
    root = parentCert;
    // What the parent allows below it (a pathLenConstraint of 0, a name constraint, a critical extension) may leave
    // every certificate this authority would sign unverifiable: agents would then refuse the CA itself. Try one now.
    const probeKeys = await generateKeyPair();
    const probe = await issueLeaf({ spiffeId: `spiffe://${trustDomain}/ambit/ca-probe`, publicKey: probeKeys.publicKey, authority: { cert, privateKey: keys.privateKey, chainAbove: [] }, ttlMs: 60_000, now: options.now });
    const verdict = verifySvid([probe, cert], new BundleSet([createBundle(trustDomain, [parentCert])]), { ...(options.now === undefined ? {} : { at: options.now }), localTrustDomain: trustDomain });
    if (!verdict.valid) {
      throw new AmbitError(verdict.error.code, `an intermediate under this parent root could sign nothing that verifies: [${verdict.error.code}] ${verdict.error.message}`);
    }
  } else {
    cert = await issueCa({ trustDomain, keys, ttlMs, commonName: `${trustDomain} root ${name}`, now: options.now });
    root = cert;
  }
  const authorityDir = join(dir, 'authorities', name);
  await makeDirs(join(dir, 'authorities'), 0o700);
  // Never into an existing authority: its key may be the one signing now.
  try {
    await mkdir(authorityDir, { mode: 0o700 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new AmbitError('CA_STATE', `${authorityDir} already exists; refusing to overwrite an authority's key`);
    throw error;
  }
  await writeFileAtomic(join(authorityDir, 'key.pem'), await exportPrivateKeyPem(keys.privateKey), 0o600);
  await writeFileAtomic(join(authorityDir, 'cert.pem'), certificatesToPem([cert]), 0o644);
  await writeFileAtomic(join(authorityDir, 'root.pem'), certificatesToPem([root]), 0o644);
}

/**
 * `a` and one more than the highest number any authority has, on disk or in ca.json: an operator may have removed a
 * retired one, and a count-based name would then be an active authority's.
 */
async function nextAuthorityName(dir: string, recorded: readonly string[] = []): Promise<string> {
  let entries: string[] = [];
  try {
    entries = await readdir(join(dir, 'authorities'));
  } catch {
    // none yet
  }
  let highest = 0;
  for (const name of [...entries, ...recorded]) {
    const match = /^a(\d+)$/.exec(name);
    if (match) highest = Math.max(highest, Number(match[1]));
  }
  return `a${highest + 1}`;
}

export interface InitOptions extends NewAuthorityOptions {
  refreshHintSeconds?: number;
}

/** `ambit ca init`: a new CA directory with one active authority. Refuses to overwrite an existing CA. */
export async function initCa(dir: string, trustDomain: string, options: InitOptions = {}): Promise<CaState> {
  validateTrustDomain(trustDomain);
  if (existsSync(statePath(dir))) throw new AmbitError('CA_STATE', `${dir} already holds a CA (ca.json exists); refusing to overwrite it`);
  const made = await makeDirs(dir, 0o700);
  const name = await nextAuthorityName(dir);
  try {
    await createAuthority(dir, trustDomain, name, options);
    await writeState(dir, {
      version: 1,
      trustDomain,
      sequence: '1',
      refreshHintSeconds: options.refreshHintSeconds ?? DEFAULT_REFRESH_HINT_SECONDS,
      authorities: [{ name, state: 'active', createdAt: (options.now ?? new Date()).toISOString() }],
    });
  } catch (error) {
    // A refused init (a parent root that is no CA, a key that does not match it) leaves nothing behind: what it made,
    // the directories included, is removed; a directory the operator gave is left as it was.
    await rm(made ?? join(dir, name), { recursive: true, force: true });
    throw error;
  }
  return loadCa(dir);
}

/** Reads the CA directory and checks each authority's key against its certificate. */
export async function loadCa(dir: string): Promise<CaState> {
  const state = await readState(dir);
  const authorities: LoadedAuthority[] = [];
  for (const record of state.authorities) {
    const base = join(dir, 'authorities', record.name);
    let certPem: string;
    let keyPem: string;
    let rootPem: string;
    try {
      [certPem, keyPem, rootPem] = await Promise.all([readFile(join(base, 'cert.pem'), 'utf8'), readFile(join(base, 'key.pem'), 'utf8'), readFile(join(base, 'root.pem'), 'utf8')]);
    } catch (error) {
      throw new AmbitError('CA_STATE', `${base}: authority ${record.name} is incomplete (${(error as Error).message})`, { cause: error });
    }
    const cert = parseCertificates(certPem, `${base}/cert.pem`)[0] as Certificate;
    const root = parseCertificates(rootPem, `${base}/root.pem`)[0] as Certificate;
    const keys = await importPrivateKeyPem(keyPem, `${base}/key.pem`);
    const certSpki = Buffer.from(cert.publicKey.rawData);
    const keySpki = Buffer.from(await globalThis.crypto.subtle.exportKey('spki', keys.publicKey));
    if (!certSpki.equals(keySpki)) throw new AmbitError('SVID_KEY_MISMATCH', `${base}: key.pem does not belong to cert.pem`);
    authorities.push({ name: record.name, state: record.state, cert, privateKey: keys.privateKey, root, chainAbove: [] });
  }
  const active = authorities.find((authority) => authority.state === 'active');
  if (!active) throw new AmbitError('CA_STATE', `${statePath(dir)}: no active authority`);
  const roots = new Map<string, Certificate>();
  for (const authority of authorities) {
    if (authority.state !== 'retired') roots.set(fingerprintOf(authority.root), authority.root);
  }
  const sequence = BigInt(state.sequence);
  return {
    dir,
    trustDomain: state.trustDomain,
    sequence,
    refreshHintSeconds: state.refreshHintSeconds,
    active,
    authorities,
    bundle: createBundle(state.trustDomain, [...roots.values()], { sequence, refreshHintSeconds: state.refreshHintSeconds }),
  };
}

/**
 * Runs a change of ca.json holding its lock: `ambit ca root prepare`, `activate` and `withdraw` are separate processes,
 * and two that read the same version lost one change (a withdrawal lost kept a withdrawn root in the bundle; two
 * bundles carried one sequence number).
 */
async function withStateLock<T>(dir: string, work: () => Promise<T>): Promise<T> {
  return await withLockFile(`${statePath(dir)}.lock`, 'another ambit ca root command', work);
}

function bump(state: StateFile): void {
  state.sequence = (BigInt(state.sequence) + 1n).toString();
}

/** Publishes a new authority in the bundle without signing with it yet. */
export async function prepareAuthority(dir: string, options: NewAuthorityOptions = {}): Promise<string> {
  return await withStateLock(dir, () => prepareLocked(dir, options));
}

async function prepareLocked(dir: string, options: NewAuthorityOptions): Promise<string> {
  const state = await readState(dir);
  if (state.authorities.some((authority) => authority.state === 'prepared')) {
    // Withdraw takes only authorities that have signed (published but no longer active): a prepared one can only be
    // activated, which the advice said otherwise.
    throw new AmbitError('CA_STATE', `${dir}: an authority is already prepared; activate it first (ambit ca root activate), then prepare the next`);
  }
  const name = await nextAuthorityName(dir, state.authorities.map((authority) => authority.name));
  await createAuthority(dir, state.trustDomain, name, options);
  state.authorities.push({ name, state: 'prepared', createdAt: (options.now ?? new Date()).toISOString() });
  bump(state);
  await writeState(dir, state);
  return name;
}

/** Signs with the prepared authority from now on; the previous one stays in the bundle. */
export async function activateAuthority(dir: string, now = new Date()): Promise<string> {
  return await withStateLock(dir, () => activateLocked(dir, now));
}

async function activateLocked(dir: string, now: Date): Promise<string> {
  const state = await readState(dir);
  const prepared = state.authorities.find((authority) => authority.state === 'prepared');
  if (!prepared) throw new AmbitError('CA_STATE', `${dir}: no prepared authority to activate (run \`ambit ca root prepare\` first)`);
  for (const authority of state.authorities) if (authority.state === 'active') authority.state = 'published';
  prepared.state = 'active';
  prepared.activatedAt = now.toISOString();
  bump(state);
  await writeState(dir, state);
  return prepared.name;
}

/** When `withdrawAuthorities` may remove the old roots. */
export type WithdrawWhen =
  /** Once the active authority has signed for this long (the longest SVID lifetime the CA issues). */
  | { readonly graceMs: number }
  /** Once no holder's newest certificate, as the CA's audit log records them, is an unexpired one of an old root. */
  | { readonly auditLog: string };

/**
 * Removes roots that no longer sign from the bundle: certificates they issued stop being trusted. Refused while a
 * certificate of an old root can still be in use (node SVIDs included, which renew only with a trusted one): by
 * default while the audit log shows a holder whose newest certificate is an old root's and has not expired, or
 * until the active authority has signed for a given grace period.
 */
export interface Withdrawal {
  /** The authorities retired. */
  readonly withdrawn: string[];
  /** Of those, intermediates under the root the authority in force also uses: what they signed verifies until then. */
  readonly stillTrusted: ReadonlyArray<{ name: string; until: Date }>;
}

export async function withdrawAuthorities(dir: string, when: WithdrawWhen, now = new Date()): Promise<Withdrawal> {
  return await withStateLock(dir, () => withdrawLocked(dir, when, now));
}

async function withdrawLocked(dir: string, when: WithdrawWhen, now: Date): Promise<Withdrawal> {
  const state = await readState(dir);
  const retiring = state.authorities.filter((authority) => authority.state === 'published').map((authority) => authority.name);
  if (retiring.length === 0) throw new AmbitError('CA_STATE', `${dir}: no published-but-inactive authority to withdraw`);
  // Withdrawing removes roots from the bundle. An authority that is an intermediate under a root an authority staying
  // in force also uses (`--root-cert`) is retired all the same, but removes nothing: what it signed goes on verifying
  // until its own expiry, which the answer says (stillTrusted).
  const loaded = await loadCa(dir);
  const kept = new Set(loaded.authorities.filter((authority) => authority.state !== 'retired' && !retiring.includes(authority.name)).map((authority) => fingerprintOf(authority.root)));
  const stillTrusted = loaded.authorities
    .filter((authority) => retiring.includes(authority.name) && kept.has(fingerprintOf(authority.root)))
    .map((authority) => ({ name: authority.name, until: authority.cert.notAfter }));
  if ('graceMs' in when) {
    const active = state.authorities.find((authority) => authority.state === 'active');
    const activeSinceMs = active?.activatedAt ? now.getTime() - Date.parse(active.activatedAt) : Infinity;
    if (activeSinceMs < when.graceMs) {
      const waitSeconds = Math.ceil((when.graceMs - activeSinceMs) / 1000);
      throw new AmbitError('CA_STATE', `${dir}: authority ${active?.name ?? '?'} has signed for only ${Math.floor(activeSinceMs / 1000)}s; certificates from the old root may still be in use. Withdraw in ${waitSeconds}s, or lower --grace if no SVID lives that long`);
    }
  } else {
    const last = await lastExpiry(when.auditLog, new Set(retiring));
    if (last !== null && last.expiresAtMs > now.getTime()) {
      throw new AmbitError('CA_STATE', `${dir}: ${last.spiffeId} still holds a certificate from ${last.authority ?? 'an old root'} (serial ${last.serial}, its newest per ${when.auditLog}) valid until ${new Date(last.expiresAtMs).toISOString()}; withdraw ${retiring.join(', ')} once it has been renewed under the new root or has expired, or pass --grace to decide yourself`);
    }
  }
  const withdrawn: string[] = [];
  for (const authority of state.authorities) {
    if (authority.state === 'published') {
      authority.state = 'retired';
      withdrawn.push(authority.name);
    }
  }
  bump(state);
  await writeState(dir, state);
  return { withdrawn, stillTrusted };
}

/** The events only a CA's audit log holds (the proxy's holds configuration changes, as the CA's does too). */
const CA_AUDIT_EVENTS: ReadonlySet<string> = new Set(['svid_issued', 'node_attested', 'node_attestation_resent', 'sign_refused', 'attest_refused', 'sign_rate_limited', 'bundle_changed']);

interface Issued {
  readonly expiresAtMs: number;
  readonly spiffeId: string;
  readonly serial: string;
  /** null: a record written before the audit log named the signer, so it may be one of the old roots. */
  readonly authority: string | null;
}

/**
 * The latest-expiring certificate of `authorities` still in use per the audit log, null when none: for each holder
 * (the node that asked, and the identity), only its newest certificate counts; one it has replaced with a
 * certificate of another authority is no longer presented (agents switch at once).
 */
async function lastExpiry(auditLog: string, authorities: ReadonlySet<string>): Promise<Issued | null> {
  if (!existsSync(auditLog)) {
    throw new AmbitError('CA_STATE', `${auditLog}: no audit log, so nothing tells when the certificates of the old roots expire; pass --audit-log FILE (what \`ca serve\` was given) or --grace DURATION (at least the longest SVID lifetime)`);
  }
  const newest = new Map<string, Issued>();
  // A file with no record only a CA writes is not the CA's audit log (a path mistyped, the proxy's audit.log, another
  // file): read as one, it would say that no certificate of the old roots is in use, and the roots would be withdrawn
  // from under them.
  let records = 0;
  const lines = createInterface({ input: createReadStream(auditLog, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.includes('"event"')) continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      // A line cut short by a crash.
      continue;
    }
    if (typeof record !== 'object' || record === null) continue;
    const { event, time, expiresAt, authority, spiffeId, serial, node } = record as Record<string, unknown>;
    if (typeof event !== 'string' || typeof time !== 'string') continue;
    if (CA_AUDIT_EVENTS.has(event)) records++;
    // Issuance records only; others (configuration changes, refusals) carry no certificate.
    if (event !== 'svid_issued' && event !== 'node_attested') continue;
    const expiresAtMs = typeof expiresAt === 'string' ? Date.parse(expiresAt) : Number.NaN;
    if (Number.isNaN(expiresAtMs) || typeof spiffeId !== 'string') continue;
    newest.set(`${String(node)} ${spiffeId}`, { expiresAtMs, spiffeId, serial: String(serial), authority: typeof authority === 'string' ? authority : null });
  }
  if (records === 0) {
    throw new AmbitError('CA_STATE', `${auditLog}: holds no record of a CA (${[...CA_AUDIT_EVENTS].join(', ')}, as \`ca serve --audit-log\` writes them), so nothing tells when the certificates of the old roots expire; pass the file \`ca serve\` was given, or --grace DURATION (at least the longest SVID lifetime)`);
  }
  let last: Issued | null = null;
  for (const issued of newest.values()) {
    if (issued.authority !== null && !authorities.has(issued.authority)) continue;
    if (last === null || issued.expiresAtMs > last.expiresAtMs) last = issued;
  }
  return last;
}

/** For `ambit ca` status output and tests: the file whose changes the server watches. */
export function caStateFile(dir: string): string {
  return statePath(dir);
}
