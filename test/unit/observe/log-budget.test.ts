// Warnings anyone can cause at any rate are budgeted: a burst per interval, then nothing until the next, and the
// next line says how many were left out.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { LogBudget } from '../../../src/observe/log.ts';

afterEach(() => {
  vi.useRealTimers();
});

describe('a log budget', () => {
  it('lets a burst through per interval, refuses the rest, and reports them with the next line it lets through', () => {
    vi.useFakeTimers({ toFake: ['Date'], now: 1_000_000 });
    const budget = new LogBudget(10_000, 3);
    expect([budget.take('k'), budget.take('k'), budget.take('k')]).toEqual([0, 0, 0]);
    expect(budget.take('k')).toBeNull();
    expect(budget.take('k')).toBeNull();
    // Another key has its own budget.
    expect(budget.take('other')).toBe(0);
    vi.setSystemTime(1_000_000 + 9_999);
    expect(budget.take('k')).toBeNull();
    vi.setSystemTime(1_000_000 + 10_000);
    expect(budget.take('k')).toBe(3);
    expect(budget.take('k')).toBe(0);
  });
});
