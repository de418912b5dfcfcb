// The proxies and the CA under test run the compiled JavaScript (dist/, `npm run build`), as a deployment runs
// bin/ambit.js: Node's type stripping would add the amaro/swc bundle to every proxy's memory. A build older than
// any source file is rebuilt first, so a run never measures stale code.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BUILT_CLI = join(ROOT, 'dist', 'cli', 'main.js');

function newestMtimeMs(dir: string, suffix: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !entry.name.endsWith(suffix)) continue;
    newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/** Whether dist/ is missing or older than src/ (or than the build's configuration). */
export function buildIsStale(): boolean {
  const dist = join(ROOT, 'dist');
  if (!existsSync(BUILT_CLI)) return true;
  const sources = Math.max(newestMtimeMs(join(ROOT, 'src'), '.ts'), statSync(join(ROOT, 'tsconfig.build.json')).mtimeMs);
  return sources > newestMtimeMs(dist, '.js');
}

/** Runs `tsc -p tsconfig.build.json` when the build is stale; throws with tsc's output when it fails. */
export function ensureBuilt(): boolean {
  if (!buildIsStale()) return false;
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  if (result.status !== 0) throw new Error(`npm run build failed (tsc -p tsconfig.build.json):\n${`${result.stdout ?? ''}${result.stderr ?? ''}`.trim() || (result.error?.message ?? `exit ${result.status}`)}`);
  return true;
}
