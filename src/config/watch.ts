// Hot reload of a configuration directory: load once, then on every change reload the whole directory, validate
// it as a whole and swap the new snapshot in; an invalid change is reported and the last good snapshot stays in
// force (never fail open).
import { watch } from 'node:fs';
import type { FSWatcher } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AmbitError, toAmbitError } from '../errors.ts';
import type { AuditLog } from './audit.ts';
import { diffSnapshots, isEmptyDiff } from './diff.ts';
import type { ConfigDiff } from './diff.ts';
import { listConfigFiles, loadConfigDir, ParsedFiles } from './loader.ts';
import { labelOf } from './objects.ts';
import { buildSnapshot } from './snapshot.ts';
import type { ConfigSnapshot } from './snapshot.ts';

/** A read that may succeed if tried again as it is (out of descriptors): the poll retries it; other failures wait for an edit. */
const TRANSIENT_READ_ERROR = /\b(?:EMFILE|ENFILE|EAGAIN|EBUSY|EINTR)\b/;

/** Loads read again, at most, because the files changed while they were read. */
const MAX_TORN_LOADS = 3;
/**
 * A file written in place (the same inode: `curl ... > f.yaml`, `kubectl get -o yaml > f.yaml`, `cat >> f.yaml`, a copy
 * over a slow mount) is applied only once this watcher has seen it unchanged for this long: a write that paused at a
 * `---` or between two rules reads as valid YAML with a DENY policy or rule missing, or with an ALLOW policy that has its
 * sources but not yet its operations, conditions or selector (kubectl writes `rules` before `selector`, `from` before
 * `to`): wider than written. So is a file under a new name (a new name cannot be told from a file still being written),
 * unless what it adds fails closed when cut short (WHOLE_WHEN_CUT_KINDS: a Pod appearing by rename applies at once). A
 * file rewritten in place more often than that waits until it stops. A file replaced by rename (a ConfigMap's keys, `mv`
 * over a name, most editors) is whole when it appears, and applies at once.
 */
export const IN_PLACE_SETTLE_MS = 2_000;

export type WatchErrorKind = 'rejected' | 'audit' | 'watch' | 'unreadable';

/** What each kind of watcher error means for the configuration in force, for the log line that reports it. */
export const WATCH_ERROR_MESSAGES: Readonly<Record<WatchErrorKind, string>> = {
  rejected: 'configuration change rejected; the last good configuration stays in force',
  audit: 'configuration change in force but not written to the audit log',
  watch: 'configuration directory no longer watched; polling it instead',
  unreadable: 'configuration cannot be read for now; the configuration in force stays, and it is read again',
};

/** What a change adds that may apply while the rest of it waits, on its own (#applyAdditions). */
const POLICY_KINDS: ReadonlySet<string> = new Set(['AuthorizationPolicy', 'PeerAuthentication']);
/**
 * What a new file may add before it has held still (#unsettled): kinds that, cut short, fail closed. kubectl writes a
 * Pod's address last (a Pod cut short has none, and gets no traffic); a Service cut short selects or declares less. A
 * WorkloadEntry's address comes first, before its labels and service account: cut short, it is a workload with the
 * namespace's default identity that policies selecting it by label miss; a ServiceEntry cut before its
 * workloadSelector sends its hosts outside the mesh in plain text.
 */
const WHOLE_WHEN_CUT_KINDS: ReadonlySet<string> = new Set(['Pod', 'Service']);

export interface WatchOptions {
  /**
   * Called after a valid change has been swapped in (not for the initial load, nor for edits that change nothing,
   * such as comments). It must not throw: the watcher does not catch what it throws.
   */
  onChange(next: ConfigSnapshot, prev: ConfigSnapshot, diff: ConfigDiff): void;
  /**
   * `rejected`: a change was refused, the last good configuration kept (its ConfigError lists every problem).
   * `audit`: a change in force could not be written to the audit log. `watch`: fs.watch failed; polling goes on.
   * `unreadable`: the files could not be read for a passing reason (out of descriptors): nothing was judged, the poll
   * tries again; said once until a read succeeds.
   */
  onError(error: AmbitError, kind: WatchErrorKind): void;
  /**
   * Called once after a rejected change when the directory holds what is in force again (the bad file removed or
   * mended to what it was) or a later change was accepted: the rejection no longer describes the directory.
   */
  onSettled?(): void;
  /** Editors and `kubectl cp` write in several steps; wait this long after the last event before reloading. */
  debounceMs?: number;
  /** How long a file written in place, or a new one (but for Pods and Services), must hold still before its change applies (IN_PLACE_SETTLE_MS). */
  inPlaceSettleMs?: number;
  /** Interval of the mtime poll used where fs.watch is unavailable. */
  pollIntervalMs?: number;
  /** Poll even where fs.watch works (file systems without inotify: NFS, some bind mounts). */
  poll?: boolean;
  requireMesh?: boolean;
  /** When set, the initial load and every accepted change are written to it. */
  auditLog?: AuditLog;
  /**
   * The caller's own judgement of a valid change (what may not alter while the process runs; whether its policies
   * compile): the reason to refuse it, reported as CONFIG_FIELD with the last good configuration kept, or undefined
   * to take it.
   */
  accept?(next: ConfigSnapshot, prev: ConfigSnapshot): string | undefined;
}

export interface ConfigWatcher {
  /** The snapshot in force: a field read, cheap enough to call per connection. */
  current(): ConfigSnapshot;
  close(): Promise<void>;
}

export const DEFAULT_DEBOUNCE_MS = 200;
export const DEFAULT_POLL_INTERVAL_MS = 1000;

/** Loads dir (rejecting with its ConfigError if invalid) and keeps the returned watcher's snapshot current. */
export async function watchConfigDir(dir: string, options: WatchOptions): Promise<ConfigWatcher> {
  const watcher = new DirectoryWatcher(resolve(dir), options);
  try {
    await watcher.start();
  } catch (error) {
    await watcher.close();
    throw error;
  }
  return watcher;
}

class DirectoryWatcher implements ConfigWatcher {
  readonly #dir: string;
  readonly #options: WatchOptions;
  readonly #debounceMs: number;
  readonly #pollIntervalMs: number;
  #snapshot: ConfigSnapshot | undefined;
  #fsWatcher: FSWatcher | undefined;
  #debounceTimer: NodeJS.Timeout | undefined;
  #pollTimer: NodeJS.Timeout | undefined;
  #pollSignature: string | undefined;
  /** Each file as last judged: the same identity (inode and birth time) again means written in place. */
  #judged: TreeState['files'] = new Map();
  /** Each file's last seen state (size, mtime, identity) and when this watcher first saw it so (monotonic ms). */
  readonly #seenSince = new Map<string, { readonly state: string; readonly atMs: number }>();
  #settleTimer: NodeJS.Timeout | undefined;
  #reloading: Promise<void> | undefined;
  #reloadAgain = false;
  /** Loads in a row during which the files changed (see #reloadOnce). */
  #tornLoads = 0;
  /** A passing read failure was reported, and no read has succeeded since. */
  #unreadableReported = false;
  /** The files last reported as emptied in place, while nothing else has been reported or applied since. */
  #emptiedReported: string | undefined;
  /** A change was rejected and nothing since has brought the directory in line with what is in force. */
  #rejectedPending = false;
  #changedDuringStart = false;
  #closed = false;
  /** Each file as the last load parsed it: a reload parses only the files whose bytes changed. */
  readonly #parsed = new ParsedFiles();

  constructor(dir: string, options: WatchOptions) {
    this.#dir = dir;
    this.#options = options;
    this.#debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.#pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  }

  current(): ConfigSnapshot {
    return this.#snapshot as ConfigSnapshot;
  }

  /** Watching starts before the first load, so a change made while it runs is not missed. */
  async start(): Promise<void> {
    // The poll baseline is taken before the load, so a change made in between is seen by the first poll.
    // fs.watch gives prompt reloads; the poll always runs too, because recursive fs.watch on Linux
    // (Node 24.21) watches file inodes and misses a file replaced by rename after the first time — how
    // mv, editors and ConfigMap swaps write. A change seen twice is loaded once (no diff, no swap).
    if (this.#options.poll !== true) this.#startWatching();
    await this.#startPolling();
    const snapshot = await loadConfigDir(this.#dir, { requireMesh: this.#options.requireMesh ?? false, cache: this.#parsed });
    this.#snapshot = snapshot;
    this.#audit(snapshot, undefined, diffSnapshots(undefined, snapshot));
    if (this.#changedDuringStart) this.#schedule();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#debounceTimer);
    clearTimeout(this.#pollTimer);
    clearTimeout(this.#settleTimer);
    this.#fsWatcher?.close();
    this.#fsWatcher = undefined;
    await this.#reloading;
  }

  /** False when fs.watch is unavailable here (it throws rather than emitting). */
  #startWatching(): boolean {
    try {
      this.#fsWatcher = watch(this.#dir, { recursive: true }, this.#schedule);
    } catch {
      return false;
    }
    this.#fsWatcher.on('error', (error) => {
      this.#fsWatcher?.close();
      this.#fsWatcher = undefined;
      if (this.#closed) return;
      this.#options.onError(new AmbitError('FILE_READ', `watching ${this.#dir} failed (${error.message}); polling every ${this.#pollIntervalMs} ms instead`, { cause: error }), 'watch');
      this.#schedule();
    });
    return true;
  }

  // Any event, including ones for hidden names, can matter: a ConfigMap update is an atomic swap of `..data`.
  readonly #schedule = (): void => {
    if (this.#closed) return;
    clearTimeout(this.#debounceTimer);
    this.#debounceTimer = setTimeout(this.#onQuiet, this.#debounceMs);
  };

  readonly #onQuiet = (): void => {
    this.#debounceTimer = undefined;
    void this.#reload();
  };

  /** One reload at a time; changes arriving during one cause exactly one more. */
  #reload(): Promise<void> {
    if (this.#reloading !== undefined) {
      this.#reloadAgain = true;
      return this.#reloading;
    }
    this.#reloading = this.#reloadUntilSettled().finally(() => {
      this.#reloading = undefined;
    });
    return this.#reloading;
  }

  async #reloadUntilSettled(): Promise<void> {
    do {
      this.#reloadAgain = false;
      await this.#reloadOnce();
    } while (this.#reloadAgain && !this.#closed);
  }

  async #reloadOnce(): Promise<void> {
    // Until the first load succeeds there is nothing to compare with; start() reloads once it has.
    if (this.#snapshot === undefined) {
      this.#changedDuringStart = true;
      return;
    }
    let next: ConfigSnapshot | undefined;
    let failure: unknown;
    const emptyFiles = new Set<string>();
    const before = (await treeState(this.#dir)).signature;
    try {
      next = await loadConfigDir(this.#dir, { requireMesh: this.#options.requireMesh ?? false, emptyFiles, cache: this.#parsed });
    } catch (error) {
      failure = error;
    }
    const afterState = await treeState(this.#dir);
    const after = afterState.signature;
    this.#noteChanges(afterState);
    if (this.#closed) return;
    // Files changed while they were read (a deploy writing several, a directory swapped): what was read may mix old and
    // new files, so it is never applied. It is read again at once a few times, then after the debounce, until the files
    // hold still.
    if (after !== before) {
      if (this.#tornLoads < MAX_TORN_LOADS) {
        this.#tornLoads++;
        this.#reloadAgain = true;
      } else {
        this.#tornLoads = 0;
        this.#schedule();
      }
      return;
    }
    this.#tornLoads = 0;
    const error = next === undefined ? toAmbitError(failure, 'FILE_READ') : undefined;
    // What this reload judged, the poll need not report again (a rejected change was logged and counted twice); but a
    // read that failed for a passing reason (EMFILE) is the poll's to retry.
    const passing = error === undefined ? null : TRANSIENT_READ_ERROR.exec(error.message);
    if (passing === null) this.#pollSignature = after;
    if (next === undefined) {
      // Out of descriptors is no verdict on the files: it was reported as a rejected change, with a "no MeshConfig"
      // that followed from reading nothing.
      if (passing !== null) {
        if (!this.#unreadableReported) {
          this.#unreadableReported = true;
          this.#options.onError(new AmbitError('FILE_READ', `${this.#dir}: cannot read the configuration (${passing[0]}); nothing in it was judged`, { cause: error }), 'unreadable');
        }
        return;
      }
      this.#unreadableReported = false;
      this.#emptiedReported = undefined;
      this.#reject(error as AmbitError);
      return;
    }
    this.#unreadableReported = false;
    const prev = this.#snapshot;
    if (this.#closed || prev === undefined) return;
    const diff = diffSnapshots(prev, next);
    const judged = this.#judged;
    if (isEmptyDiff(diff)) {
      this.#judged = afterState.files;
      this.#emptiedReported = undefined;
      this.#settle();
      return;
    }
    // Judged on the bytes this load read, not on the file afterwards: written again meanwhile, it would pass for a
    // change that drops its objects (its DENY policies) until the next reload. Only a file written in place: one that
    // appeared by rename is whole, and holding nothing is what it says.
    const emptied = [...new Set(diff.removed.map((ref) => ref.file))].filter((file) => emptyFiles.has(file) && judged.get(file)?.identity === afterState.files.get(file)?.identity);
    const unsettled = this.#unsettled(diff, next, afterState, judged);
    if (emptied.length > 0) {
      this.#judged = afterState.files;
      // What the change adds elsewhere (a new DENY among it) is not held back by these files, but by a file that may
      // still be being written all the same.
      const added = this.#applyAdditions(prev, next, diff, new Set([...emptied, ...unsettled.files]));
      if (unsettled.waitMs > 0) this.#judgeAgainIn(unsettled.waitMs);
      // A file held as blank is then truncated by the next in-place write: still the same hold, said once. A change to
      // another file meanwhile is said again: it waits too.
      let key = emptied.join('\0');
      for (const [file, info] of afterState.files) if (!emptied.includes(file)) key += `\0${file}:${info.state}`;
      if (key === this.#emptiedReported) return;
      this.#emptiedReported = key;
      // `kubectl get ... -o yaml > policies.yaml` empties the file, then waits for the API server, often longer than
      // the debounce: loading that moment would drop every DENY the file held. Removing a file removes its objects.
      this.#reject(new AmbitError('CONFIG_FILE_EMPTIED', `${emptied.map((file) => join(this.#dir, file)).join(', ')}: emptied in place (no objects left in it) while ${emptied.length === 1 ? 'it holds' : 'they hold'} objects in force; ${added ? 'the objects this change adds in other files are applied, the rest of it waits' : 'this change waits'} until ${emptied.length === 1 ? 'it has' : 'they have'} objects again or ${emptied.length === 1 ? 'is' : 'are'} removed (write configuration by rename, as ConfigMaps do; delete a file to remove its objects)`));
      return;
    }
    if (unsettled.waitMs > 0) {
      this.#applyAdditions(prev, next, diff, unsettled.files);
      this.#judgeAgainIn(unsettled.waitMs);
      return;
    }
    this.#judged = afterState.files;
    this.#emptiedReported = undefined;
    if (!this.#apply(next, prev, diff)) return;
    this.#settle();
  }

  /** A file waits to hold still: judged again then (the poll has seen this state already, so it is this timer's to do). */
  #judgeAgainIn(waitMs: number): void {
    clearTimeout(this.#settleTimer);
    this.#settleTimer = setTimeout(this.#schedule, waitMs);
  }

  /** Puts `next` in force unless the owner refuses it (reported, the last good configuration kept); true when applied. */
  #apply(next: ConfigSnapshot, prev: ConfigSnapshot, diff: ConfigDiff): boolean {
    const refusal = this.#options.accept?.(next, prev);
    if (refusal !== undefined) {
      this.#reject(new AmbitError('CONFIG_FIELD', `${this.#dir}: ${refusal}; the last good configuration stays in force`));
      return false;
    }
    this.#snapshot = next;
    this.#audit(next, prev, diff);
    this.#options.onChange(next, prev, diff);
    return true;
  }

  /**
   * While `held` files wait (emptied in place, or written in place and not yet still), the objects the change adds in
   * the other files apply on their own, so that a DENY written meanwhile is not held back by a file being rewritten:
   * only additions, which cannot drop what is in force (a removal or a change elsewhere may be half of an object moving
   * into a held file). Objects that do not stand without the rest of the change (one moving out of a held file, two
   * workloads on one IP) wait with it. True when some were applied.
   */
  #applyAdditions(prev: ConfigSnapshot, next: ConfigSnapshot, diff: ConfigDiff, held: ReadonlySet<string>): boolean {
    const added = new Set<string>();
    for (const ref of diff.added) if (!held.has(ref.file)) added.add(ref.object);
    if (added.size === 0) return false;
    const addedObjects = next.objects.filter((object) => added.has(labelOf(object)));
    // All of them, else the policies alone (a workload renamed on a held file's IP does not stand without the rest,
    // and must not hold a DENY back with it).
    for (const objects of [addedObjects, addedObjects.filter((object) => POLICY_KINDS.has(object.kind))]) {
      if (objects.length === 0) continue;
      let partial: ConfigSnapshot;
      try {
        partial = buildSnapshot([...prev.objects, ...objects], { dir: prev.dir, requireMesh: this.#options.requireMesh ?? false, where: this.#dir });
      } catch {
        continue;
      }
      return this.#apply(partial, prev, diffSnapshots(prev, partial));
    }
    return false;
  }

  #reject(error: AmbitError): void {
    this.#rejectedPending = true;
    this.#options.onError(error, 'rejected');
  }

  #settle(): void {
    if (!this.#rejectedPending) return;
    this.#rejectedPending = false;
    this.#options.onSettled?.();
  }

  /**
   * How long until every file written in place whose change adds, takes away or alters objects, and every new file
   * adding what does not fail closed when cut short, has held still (0 when none), and which of them have not yet.
   */
  #unsettled(diff: ConfigDiff, next: ConfigSnapshot, state: TreeState, judged: TreeState['files']): { waitMs: number; files: Set<string> } {
    const now = performance.now();
    const settleMs = this.#options.inPlaceSettleMs ?? IN_PLACE_SETTLE_MS;
    let wait = 0;
    const files = new Set<string>();
    // Timed from when this watcher saw the file so, not from its mtime: a file server's clock, `cp -p` or `touch -d`
    // set mtimes this host's clock knows nothing of.
    const consider = (file: string) => {
      const info = state.files.get(file);
      // Gone (its objects go with it), or replaced by rename (whole when it appeared).
      if (info === undefined) return;
      const before = judged.get(file);
      if (before !== undefined && before.identity !== info.identity) return;
      const since = this.#seenSince.get(file)?.atMs ?? now;
      const left = settleMs - (now - since);
      if (left <= 0) return;
      files.add(file);
      wait = Math.max(wait, left);
    };
    for (const ref of diff.removed) consider(ref.file);
    let cutUnsafe: Set<string> | undefined;
    for (const ref of diff.added) {
      if (!judged.has(ref.file)) {
        cutUnsafe ??= new Set(next.objects.filter((object) => !WHOLE_WHEN_CUT_KINDS.has(object.kind)).map(labelOf));
        if (!cutUnsafe.has(ref.object)) continue;
      }
      consider(ref.file);
    }
    for (const change of diff.changed) if (change.fields.length > 0) consider(change.file);
    return { waitMs: Math.ceil(wait), files };
  }

  #noteChanges(state: TreeState): void {
    const now = performance.now();
    for (const [file, info] of state.files) {
      if (this.#seenSince.get(file)?.state !== info.state) this.#seenSince.set(file, { state: info.state, atMs: now });
    }
    for (const file of this.#seenSince.keys()) if (!state.files.has(file)) this.#seenSince.delete(file);
  }

  #audit(next: ConfigSnapshot, prev: ConfigSnapshot | undefined, diff: ConfigDiff): void {
    const log = this.#options.auditLog;
    if (log === undefined) return;
    // The change is already in force: an audit failure is reported, not a reason to keep the old configuration.
    log.writeConfigChange(next, prev, diff).catch((error: unknown) => {
      if (!this.#closed) this.#options.onError(toAmbitError(error, 'FILE_WRITE'), 'audit');
    });
  }

  async #startPolling(): Promise<void> {
    if (this.#closed || this.#pollTimer !== undefined) return;
    const state = await treeState(this.#dir);
    this.#pollSignature = state.signature;
    this.#judged = state.files;
    // Files already there are as settled as they will be.
    for (const [file, info] of state.files) this.#seenSince.set(file, { state: info.state, atMs: Number.NEGATIVE_INFINITY });
    this.#pollTimer = setTimeout(this.#pollOnce, this.#pollIntervalMs);
  }

  readonly #pollOnce = async (): Promise<void> => {
    const { signature } = await treeState(this.#dir);
    if (this.#closed) return;
    // A reload under way or due judges the files itself and then gives the poll its view: scheduling another now
    // would load the same files again and report a rejected change twice.
    if (signature !== this.#pollSignature && this.#reloading === undefined && this.#debounceTimer === undefined) {
      this.#pollSignature = signature;
      this.#schedule();
    }
    this.#pollTimer = setTimeout(this.#pollOnce, this.#pollIntervalMs);
  };
}

interface TreeState {
  /** Name, size, mtime and inode of every configuration file (links followed): any edit or swap changes it. */
  readonly signature: string;
  readonly files: ReadonlyMap<string, { readonly identity: string; readonly state: string }>;
}

async function treeState(dir: string): Promise<TreeState> {
  const files = new Map<string, { identity: string; state: string }>();
  try {
    const { files: names, issues } = await listConfigFiles(dir);
    const parts: string[] = [];
    // A broken link or an unreadable directory counts as well: its removal is a change to load (the load refused it).
    for (const issue of issues) parts.push(`${issue.file ?? ''}:issue`);
    for (const file of names) {
      const info = await stat(join(dir, file)).catch(() => undefined);
      if (info !== undefined) {
        // The inode and its birth time: ext4 hands a freed inode to the next file at once, and a file replaced by
        // rename twice within a debounce would otherwise pass for one written in place.
        const identity = `${info.ino}:${info.birthtimeMs}`;
        files.set(file, { identity, state: `${info.size}:${info.mtimeMs}:${identity}` });
      }
      parts.push(info === undefined ? `${file}:gone` : `${file}:${files.get(file)?.state ?? ''}`);
    }
    return { signature: parts.join('\n'), files };
  } catch (error) {
    return { signature: `unreadable:${(error as Error).message}`, files };
  }
}
