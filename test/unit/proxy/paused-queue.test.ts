// How much a stalled tunnel's queue may hold before its paused application socket is no longer read again: 256 KiB
// alone, a share of 32 MiB once many are stalled, so that thousands of tunnels to peers that read nothing do not each
// hold their bound on the sending node.
import { describe, expect, it } from 'vitest';
import { pausedQueueLimit } from '../../../src/proxy/copy.ts';

const KiB = 1024;

describe('stalled tunnels\' queue bound', () => {
  it('is 256 KiB while 128 or fewer tunnels are stalled, and their share of 32 MiB past that', () => {
    expect(pausedQueueLimit(0)).toBe(256 * KiB);
    expect(pausedQueueLimit(1)).toBe(256 * KiB);
    expect(pausedQueueLimit(128)).toBe(256 * KiB);
    expect(pausedQueueLimit(129)).toBeLessThan(256 * KiB);
    expect(pausedQueueLimit(512)).toBe(64 * KiB);
    expect(pausedQueueLimit(2_048)).toBe(16 * KiB);
  });

  it('keeps the queues of all stalled tunnels, each at its bound, within the budget once past 128', () => {
    for (const stalled of [129, 500, 2_000, 10_000]) expect(stalled * pausedQueueLimit(stalled)).toBeLessThanOrEqual(32 * 1024 * KiB);
  });
});
