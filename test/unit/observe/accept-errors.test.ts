// A server whose accepts fail (EMFILE) is retried by libuv on every turn of the loop: its log says so at most once per
// interval, with how many it did not write, rather than once per attempt.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { acceptErrorLogger, silentLogger } from '../../../src/observe/log.ts';

afterEach(() => {
  vi.useRealTimers();
});

describe('failed accepts in the log', () => {
  it('are written at most once per interval, the next line counting those not written', () => {
    vi.useFakeTimers({ now: new Date('2026-12-05T12:00:00Z') });
    const lines: Array<Record<string, unknown>> = [];
    const logger = Object.assign(silentLogger(), { warn: (fields: Record<string, unknown>) => void lines.push(fields) });
    const onError = acceptErrorLogger(logger, 'metrics', 10_000);
    for (let i = 0; i < 5; i++) onError(new Error('accept EMFILE'));
    expect(lines).toEqual([{ server: 'metrics', err: 'accept EMFILE', sinceLast: 0 }]);
    vi.advanceTimersByTime(9_999);
    onError(new Error('accept EMFILE'));
    expect(lines).toHaveLength(1);
    vi.advanceTimersByTime(1);
    onError(new Error('accept ENFILE'));
    expect(lines[1]).toEqual({ server: 'metrics', err: 'accept ENFILE', sinceLast: 5 });
  });
});
