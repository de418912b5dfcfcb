// What changed between two snapshots: objects added and removed, and for the others the field paths whose values
// differ. Feeds the audit log and lets consumers recompile only what a change touches.
import { formatPath, isMapping } from './fields.ts';
import { labelOf } from './objects.ts';
import type { ConfigObject } from './objects.ts';
import type { ConfigSnapshot } from './snapshot.ts';

export { AuditLog } from './audit.ts';

export interface ObjectRef {
  /** `Pod default/web` */
  readonly object: string;
  readonly file: string;
}

export interface ObjectChange extends ObjectRef {
  /** Changed field paths such as `spec.ports[0].port` or `metadata.labels.app`; empty when the object only moved file. */
  readonly fields: readonly string[];
  /** Set when the object moved to another file. */
  readonly previousFile?: string;
}

export interface ConfigDiff {
  readonly added: readonly ObjectRef[];
  readonly removed: readonly ObjectRef[];
  readonly changed: readonly ObjectChange[];
}

/** `prev` undefined (the first load) reports every object as added. */
export function diffSnapshots(prev: ConfigSnapshot | undefined, next: ConfigSnapshot): ConfigDiff {
  const before = new Map<string, ConfigObject>();
  for (const object of prev?.objects ?? []) before.set(labelOf(object), object);
  const added: ObjectRef[] = [];
  const changed: ObjectChange[] = [];
  const seen = new Set<string>();
  for (const object of next.objects) {
    const label = labelOf(object);
    seen.add(label);
    const old = before.get(label);
    if (old === undefined) {
      added.push({ object: label, file: object.source.file });
      continue;
    }
    // The same object: its file was not parsed again (ParsedFiles), so neither it nor its place changed.
    if (old === object) continue;
    const fields: string[] = [];
    collectChanges(comparable(old), comparable(object), [], fields);
    const moved = old.source.file !== object.source.file;
    if (fields.length === 0 && !moved) continue;
    changed.push(moved ? { object: label, file: object.source.file, fields, previousFile: old.source.file } : { object: label, file: object.source.file, fields });
  }
  const removed: ObjectRef[] = [];
  for (const [label, object] of before) if (!seen.has(label)) removed.push({ object: label, file: object.source.file });
  return Object.freeze({ added: Object.freeze(added), removed: Object.freeze(removed), changed: Object.freeze(changed) });
}

export function isEmptyDiff(diff: ConfigDiff): boolean {
  return diff.added.length === 0 && diff.removed.length === 0 && diff.changed.length === 0;
}

/** The parts of an object that carry meaning; name, namespace and kind are its identity, source is where it was. */
function comparable(object: ConfigObject): Record<string, unknown> {
  return {
    apiVersion: object.apiVersion,
    // The rest of the metadata read, under the fields it came from: a workload's controlling owner names it; a
    // PeerAuthentication's age picks it among several.
    metadata: {
      labels: object.metadata.labels,
      annotations: object.metadata.annotations,
      ownerReferences: object.metadata.controller,
      generateName: object.metadata.generated,
      creationTimestamp: object.metadata.createdMs,
    },
    spec: object.spec,
    status: object.kind === 'Pod' ? object.status : undefined,
  };
}

function collectChanges(before: unknown, after: unknown, path: (string | number)[], out: string[]): void {
  if (Object.is(before, after)) return;
  // A Map (portLevelMtls) compares by its entries, keyed as written in YAML: spec.portLevelMtls["8080"].
  if (before instanceof Map || after instanceof Map) {
    collectChanges(before instanceof Map ? Object.fromEntries(before) : before, after instanceof Map ? Object.fromEntries(after) : after, path, out);
    return;
  }
  if (Array.isArray(before) && Array.isArray(after)) {
    const length = Math.max(before.length, after.length);
    for (let index = 0; index < length; index++) {
      if (index >= before.length || index >= after.length) out.push(formatPath([...path, index]));
      else collectChanges(before[index], after[index], [...path, index], out);
    }
    return;
  }
  if (isMapping(before) && isMapping(after)) {
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const key of keys) collectChanges(before[key], after[key], [...path, key], out);
    return;
  }
  out.push(formatPath(path));
}
