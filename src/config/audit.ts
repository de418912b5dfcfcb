// The audit log: one JSON line per event, appended to a file. Configuration changes are written by the watcher's
// owner; the CA writes its issuance decisions through the same `write`.
import { appendFile } from 'node:fs/promises';
import { AmbitError } from '../errors.ts';
import type { ConfigDiff } from './diff.ts';
import type { ConfigSnapshot } from './snapshot.ts';

export interface ConfigChangeRecord {
  readonly event: 'config_change';
  readonly version: string;
  /** null for the first load. */
  readonly previousVersion: string | null;
  readonly added: ConfigDiff['added'];
  readonly removed: ConfigDiff['removed'];
  readonly changed: ConfigDiff['changed'];
}

export class AuditLog {
  readonly path: string;
  /** Writes go out one after another, in call order; a failed write does not stop later ones. */
  #tail: Promise<void> = Promise.resolve();

  constructor(path: string) {
    this.path = path;
  }

  /**
   * Appends `{ time, ...record }` as one line (`time` is when write was called, ISO 8601, unless the record has
   * one). Rejects with FILE_WRITE when the line cannot be written. Each line goes out in one append, opened
   * and closed per write, so an external log rotation is picked up at the next line.
   */
  write(record: object): Promise<void> {
    const line = `${JSON.stringify({ time: new Date().toISOString(), ...record })}\n`;
    const written = this.#tail.then(() =>
      appendFile(this.path, line, { mode: 0o600 }).catch((error: unknown) => {
        throw new AmbitError('FILE_WRITE', `cannot append to audit log ${this.path}: ${(error as Error).message}`, { cause: error });
      }),
    );
    this.#tail = written.catch(() => undefined);
    return written;
  }

  writeConfigChange(next: ConfigSnapshot, prev: ConfigSnapshot | undefined, diff: ConfigDiff): Promise<void> {
    const record: ConfigChangeRecord = {
      event: 'config_change',
      version: next.version,
      previousVersion: prev?.version ?? null,
      added: diff.added,
      removed: diff.removed,
      changed: diff.changed,
    };
    return this.write(record);
  }

  /** Resolves once every write requested so far has finished. */
  flush(): Promise<void> {
    return this.#tail;
  }
}
