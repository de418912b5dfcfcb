// `mkdir -p` for the directories ambit is told to use (CA directory, state directory, --out). Node's own
// `mkdir(path, { recursive: true })` loops forever, one core busy, when a parent refuses creation with ENOENT
// although it exists (`/proc/nope`: procfs answers ENOENT, the parent /proc exists, Node retries the child;
// Node 24.21). Here each missing directory is created once, top down, and the first refusal is the error, with
// its syscall, code and path as Node reports them. Directories created get `mode`, as the recursive form does.
import { mkdirSync, statSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** What mkdir itself says of a file in the way: EEXIST for the path asked, ENOTDIR for a path below a file. */
function fileInTheWay(missing: readonly string[], file: string): Error {
  const [code, path] = missing.length === 0 ? ['EEXIST', file] : ['ENOTDIR', missing[missing.length - 1] as string];
  return Object.assign(new Error(`${code}: a file is in the way, mkdir '${path}'`), { code, syscall: 'mkdir', path });
}

/** The directories to create, top down: `path` and its parents up to the first that exists. */
function missingAbove(path: string, isDir: (p: string) => boolean | undefined): string[] {
  const missing: string[] = [];
  for (let at = resolve(path); ; at = dirname(at)) {
    const found = isDir(at);
    if (found === true) break;
    if (found === false) throw fileInTheWay(missing, at);
    missing.push(at);
    if (dirname(at) === at) break;
  }
  return missing.reverse();
}

async function missingAboveAsync(path: string): Promise<string[]> {
  const missing: string[] = [];
  for (let at = resolve(path); ; at = dirname(at)) {
    const found = await probe(at);
    if (found === true) break;
    if (found === false) throw fileInTheWay(missing, at);
    missing.push(at);
    if (dirname(at) === at) break;
  }
  return missing.reverse();
}

async function probe(p: string): Promise<boolean | undefined> {
  try {
    return (await stat(p)).isDirectory();
  } catch (error) {
    // ENOTDIR: a file above; the walk goes on up to name it.
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

function probeSync(p: string): boolean | undefined {
  try {
    return statSync(p).isDirectory();
  } catch (error) {
    // ENOTDIR: a file above; the walk goes on up to name it.
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/** Creates `path` and its missing parents; an existing directory is fine. Throws Node's error of the refusal. */
export function makeDirsSync(path: string, mode?: number): void {
  for (const dir of missingAbove(path, probeSync)) {
    try {
      mkdirSync(dir, { mode });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || probeSync(dir) !== true) throw error;
    }
  }
}

/** The same, asynchronously. */
export async function makeDirs(path: string, mode?: number): Promise<void> {
  for (const dir of await missingAboveAsync(path)) {
    try {
      await mkdir(dir, { mode });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || (await probe(dir)) !== true) throw error;
    }
  }
}
