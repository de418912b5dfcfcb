// A workload's passthrough to a name whose resolver never answers must not hold the other workloads' lookups: getaddrinfo
// runs on libuv's four threads and cannot be cancelled (src/proxy/destinations.ts, NameLookups). Needs root for a mount
// namespace with its own /etc/resolv.conf (CI has it); skipped, saying so, elsewhere.
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const CHILD = fileURLToPath(new URL('../helpers/dns-hang-child.ts', import.meta.url));
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', 'true']).status === 0;

describe('a workload whose passthrough name never resolves', () => {
  it.skipIf(!canUnshare)("holds one lookup, not the node's: another workload's name resolves meanwhile, and the access lines say DNS (needs root: unshare -m)", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-dns-hang-'));
    try {
      const resolvConf = join(dir, 'resolv.conf');
      await writeFile(resolvConf, 'nameserver 127.0.0.153\noptions timeout:5 attempts:2\n');
      const run = spawnSync('unshare', ['-m', 'sh', '-c', `mount --bind "$1" /etc/resolv.conf && exec "$2" "$3"`, 'sh', resolvConf, process.execPath, CHILD], { encoding: 'utf8', timeout: 90_000 });
      const line = run.stdout.split('\n').find((text) => text.startsWith('{'));
      expect(line, run.stderr).toBeDefined();
      const result = JSON.parse(line as string) as { during: { got: string; ms: number; how: string }; slow: string[]; queries: number; access: Record<string, unknown> | null };
      // While forty lookups of one name hang, another workload's `localhost` is answered at once.
      expect(result.during.how).toBe('fin');
      expect(result.during.got).toBe('hello');
      expect(result.during.ms).toBeLessThan(2_000);
      // The forty share one lookup (two queries a try, A and AAAA; two tries), and end with a reset saying why.
      expect(result.slow.every((how) => how === 'ECONNRESET')).toBe(true);
      expect(result.queries).toBeLessThanOrEqual(8);
      expect(result.access).toMatchObject({ error_code: 'DNS_LOOKUP', error: 'slow.example: no answer from the resolver within 10000 ms' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
