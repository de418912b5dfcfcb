// The CLI on a Node older than it needs (this machine's system Node is one): one line saying so, exit 2, where it
// used to do nothing at all and exit 0. Runs the TypeScript source's entry as an older Node cannot: the built one.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { BUILT_CLI, ensureBuilt } from '../../bench/system/build.ts';

const BIN = fileURLToPath(new URL('../../bin/ambit.js', import.meta.url));

/** A system Node older than 24, if this machine has one. */
function olderNode(): string | undefined {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node']) {
    if (!existsSync(candidate)) continue;
    const version = spawnSync(candidate, ['--version'], { encoding: 'utf8' }).stdout.trim();
    if (Number(/^v(\d+)/.exec(version)?.[1] ?? 99) < 24) return candidate;
  }
  return undefined;
}

const node = olderNode();
if (node === undefined) console.log('cli-old-node: skipped, no system Node older than 24 on this machine');

describe.skipIf(node === undefined)('ambit on a Node older than 24', () => {
  beforeAll(() => {
    ensureBuilt();
  }, 120_000);

  it.each([
    ['the built CLI', () => BUILT_CLI],
    ['the package bin', () => BIN],
  ])('%s says which Node it needs, in one line, and exits 2', (_what, entry) => {
    const result = spawnSync(node as string, [entry(), 'ca', 'init', '--dir', '/nonexistent/ambit-old-node', '--trust-domain', 'x.y'], { encoding: 'utf8' });
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(/^ambit: needs Node 24 or later, and this is Node \d+/);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
  });
});
