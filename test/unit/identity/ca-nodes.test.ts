// The CA's per-node record of the node certificate in use: serial spellings, and a CA directory from before the
// records (each node's next certificate is recorded, not refused).
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admitNodeCertificate, evictNode, normalizeSerial, recordAttested, recordRenewal, withRecord } from '../../../src/identity/ca/nodes.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-ca-nodes-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('node certificate records', () => {
  it('compare serials however TLS and X.509 libraries spell them', () => {
    expect(normalizeSerial('00A1B2')).toBe('a1b2');
    expect(normalizeSerial('a1b2')).toBe('a1b2');
    expect(normalizeSerial('0')).toBe('0');
  });

  it('refuse every certificate of a node that never attested here (no record), and record none, so it can still attest', async () => {
    expect(await admitNodeCertificate(dir, 'unknown-node', 'AA01')).toMatch(/has not attested with this CA/);
    expect(await admitNodeCertificate(dir, 'unknown-node', 'AA01')).toMatch(/has not attested with this CA/);
    await recordAttested(dir, 'unknown-node', 'BB02');
    expect(await admitNodeCertificate(dir, 'unknown-node', 'AA01')).toMatch(/replaced/);
    expect(await admitNodeCertificate(dir, 'unknown-node', 'bb02')).toBeNull();
  });

  it('keep the record of a node whose name is as long as Kubernetes allows (253 characters), apart from any other', async () => {
    const label = (c: string) => c.repeat(63);
    const longest = `${label('a')}.${label('b')}.${label('c')}.${'d'.repeat(61)}`;
    const other = `${longest.slice(0, -1)}e`;
    expect(longest).toHaveLength(253);
    // Its file name would pass 255 bytes: attesting failed with ENAMETOOLONG.
    await recordAttested(dir, longest, 'C1');
    await recordAttested(dir, other, 'C2');
    expect(await admitNodeCertificate(dir, longest, 'c1')).toBeNull();
    expect(await admitNodeCertificate(dir, longest, 'c2')).toMatch(/replaced/);
    expect(await admitNodeCertificate(dir, other, 'c2')).toBeNull();
    expect(await evictNode(dir, longest)).toBe(true);
    expect(await admitNodeCertificate(dir, longest, 'c1')).toMatch(/evicted/);
    expect(await admitNodeCertificate(dir, other, 'c2')).toBeNull();
    // A name of 233 bytes, which worked before, keeps its record under its own name (found where it was written).
    const kept = 'k'.repeat(233);
    await recordAttested(dir, kept, 'D1');
    expect(await readFile(join(dir, 'nodes', `${kept}.json`), 'utf8')).toMatch(/"current": "d1"/);
  });

  it('keep a renewal pending alongside the current certificate until its first use', async () => {
    await recordAttested(dir, 'n1', '01');
    await recordRenewal(dir, 'n1', '01', '02');
    expect(await admitNodeCertificate(dir, 'n1', '01')).toBeNull();
    expect(await admitNodeCertificate(dir, 'n1', '02')).toBeNull();
    expect(await admitNodeCertificate(dir, 'n1', '01')).toMatch(/replaced/);
  });

  it('keep every renewal of an overlap pending (a request the node gave up on may finish after its retry)', async () => {
    await recordAttested(dir, 'n2', '01');
    await recordRenewal(dir, 'n2', '01', '0c'); // the retry, finished first
    await recordRenewal(dir, 'n2', '01', '0b'); // the abandoned request, finished last
    expect(await admitNodeCertificate(dir, 'n2', '0c')).toBeNull();
    expect(await admitNodeCertificate(dir, 'n2', '0b')).toMatch(/replaced/);
    expect(await admitNodeCertificate(dir, 'n2', '01')).toMatch(/replaced/);
  });

  it('keep an eviction that a renewal under way finishes after', async () => {
    await recordAttested(dir, 'n3', '01');
    await evictNode(dir, 'n3');
    await recordRenewal(dir, 'n3', '01', '02');
    expect(await admitNodeCertificate(dir, 'n3', '02')).toMatch(/evicted/);
    expect(await admitNodeCertificate(dir, 'n3', '01')).toMatch(/evicted/);
  });

  it('never lose an eviction that runs at the same time as the first use of a renewal (another process, the CLI)', async () => {
    for (let round = 0; round < 20; round++) {
      const node = `race-${round}`;
      await recordAttested(dir, node, '01');
      await recordRenewal(dir, node, '01', '02');
      // The first use of 02 rewrites the record; the eviction must survive whichever goes first.
      await Promise.all([admitNodeCertificate(dir, node, '02'), evictNode(dir, node)]);
      expect(await admitNodeCertificate(dir, node, '02'), `round ${round}`).toMatch(/evicted/);
    }
  });

  it('break a lock its holder left behind when it crashed', async () => {
    await recordAttested(dir, 'crashed', '01');
    const lock = join(dir, 'nodes', 'crashed.json.lock');
    await writeFile(lock, '');
    const old = new Date(Date.now() - 60_000);
    await utimes(lock, old, old);
    expect(await admitNodeCertificate(dir, 'crashed', '01')).toBeNull();
  });

  it('let one waiter at a time hold a lock that several found stale at once', async () => {
    for (let round = 0; round < 10; round++) {
      const node = `stale-${round}`;
      await recordAttested(dir, node, '01');
      const lock = join(dir, 'nodes', `${node}.json.lock`);
      await writeFile(lock, 'crashed');
      const old = new Date(Date.now() - 60_000);
      await utimes(lock, old, old);
      let inside = 0;
      let most = 0;
      await Promise.all(Array.from({ length: 24 }, () => withRecord(dir, node, async () => {
        most = Math.max(most, ++inside);
        await new Promise((resolve) => setTimeout(resolve, 5));
        inside--;
      })));
      expect(most, `round ${round}`).toBe(1);
      await expect(readFile(lock)).rejects.toThrow(/ENOENT/);
    }
  });

  it("leave the next holder's lock alone when their own was broken as stale while they worked", async () => {
    const lock = join(dir, 'nodes', 'slow.json.lock');
    let releaseNext!: () => void;
    let nextHolds = false;
    let next: Promise<void> | undefined;
    await withRecord(dir, 'slow', async () => {
      // This holder is taking longer than the stale limit: another process breaks its lock and takes it.
      const old = new Date(Date.now() - 60_000);
      await utimes(lock, old, old);
      next = withRecord(dir, 'slow', async () => {
        nextHolds = true;
        await new Promise<void>((resolve) => (releaseNext = resolve));
      });
      while (!nextHolds) await new Promise((resolve) => setTimeout(resolve, 5));
    });
    // The slow holder is done: the next holder's lock is still there.
    expect((await readFile(lock, 'utf8')).length).toBeGreaterThan(0);
    releaseNext();
    await next;
    await expect(readFile(lock)).rejects.toThrow(/ENOENT/);
  });

  it('evict a node, known or not, until it attests again', async () => {
    expect(await evictNode(dir, 'never-seen')).toBe(false);
    expect(await admitNodeCertificate(dir, 'never-seen', '05')).toMatch(/evicted/);
    await recordAttested(dir, 'never-seen', '06');
    expect(await admitNodeCertificate(dir, 'never-seen', '06')).toBeNull();
  });
});
