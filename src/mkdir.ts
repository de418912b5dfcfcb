// `mkdir -p` for the directories ambit is told to use (CA directory, state directory, --out). Node's own
// `mkdir(path, { recursive: true })` loops forever, one core busy, when a parent refuses creation with ENOENT
// although it exists (`/proc/nope`: procfs answers ENOENT, the parent /proc exists, Node retries the child;
// Node 24.21). Here each missing directory is created once, top down, and the first refusal is the error, with
// its syscall, code and path as Node reports them. Directories created get `mode`, as the recursive form does.
import { mkdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** What mkdir itself says of a file in the way: EEXIST for the path asked, ENOTDIR for a path below a file. */
function fileInTheWay(missing: readonly string[], file: string): Error {
  const [code, path] = missing.length === 0 ? ['EEXIST', file] : ['ENOTDIR', missing[missing.length - 1] as string];
  return Object.assign(new Error(`${code}: a file is in the way, mkdir '${path}'`), { code, syscall: 'mkdir', path });
}

/**
 * The directories to create, top down: `path` and its parents up to the first that exists. Looked up with statSync
 * in both forms: a handful of calls on a path given at startup or the agent's state directory.
 */
function missingAbove(path: string): string[] {
  const missing: string[] = [];
  for (let at = resolve(path); ; at = dirname(at)) {
    const found = isDirectory(at);
    if (found === true) break;
    if (found === false) throw fileInTheWay(missing, at);
    missing.push(at);
    if (dirname(at) === at) break;
  }
  return missing.reverse();
}

/** true: a directory; false: something else; undefined: nothing there (ENOTDIR: a file above, which the walk names). */
function isDirectory(p: string): boolean | undefined {
  try {
    return statSync(p).isDirectory();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/** A directory that appeared meanwhile (EEXIST) is fine; anything else is the error. */
function raceLost(error: unknown, dir: string): boolean {
  return (error as NodeJS.ErrnoException).code === 'EEXIST' && isDirectory(dir) === true;
}

/** Creates `path` and its missing parents; an existing directory is fine. Throws Node's error of the refusal. */
export function makeDirsSync(path: string, mode?: number): void {
  for (const dir of missingAbove(path)) {
    try {
      mkdirSync(dir, { mode });
    } catch (error) {
      if (!raceLost(error, dir)) throw error;
    }
  }
}

/** The same, asynchronously; returns the topmost directory it made (for a caller to undo a failed start), if any. */
export async function makeDirs(path: string, mode?: number): Promise<string | undefined> {
  let made: string | undefined;
  for (const dir of missingAbove(path)) {
    try {
      await mkdir(dir, { mode });
      made ??= dir;
    } catch (error) {
      if (!raceLost(error, dir)) throw error;
    }
  }
  return made;
}
