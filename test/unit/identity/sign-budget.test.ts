import { describe, expect, it } from 'vitest';
import { SignBudget } from '../../../src/identity/ca/sign-budget.ts';

describe("a node's signing budget", () => {
  it('lets a node ask up to its burst at once, then refuses with the seconds until one more request is allowed', () => {
    let now = 0;
    const budget = new SignBudget({ burst: 3, perMinute: 30 }, () => now);
    for (let i = 0; i < 3; i++) expect(budget.take('a')).toEqual({ allowed: true, refusedBefore: 0 });
    expect(budget.take('a')).toEqual({ allowed: false, retryAfterSeconds: 2, first: true });
    expect(budget.take('a')).toEqual({ allowed: false, retryAfterSeconds: 2, first: false });
    now = 1_000;
    expect(budget.take('a')).toEqual({ allowed: false, retryAfterSeconds: 1, first: false });
    now = 2_000;
    // Back within budget: the refusals of the spell are counted for the log.
    expect(budget.take('a')).toEqual({ allowed: true, refusedBefore: 3 });
  });

  it('keeps each node to its own budget', () => {
    const budget = new SignBudget({ burst: 1, perMinute: 1 }, () => 0);
    expect(budget.take('a').allowed).toBe(true);
    expect(budget.take('a').allowed).toBe(false);
    expect(budget.take('b').allowed).toBe(true);
  });

  it('refills no further than the burst, however long a node was quiet', () => {
    let now = 0;
    const budget = new SignBudget({ burst: 2, perMinute: 60 }, () => now);
    now = 3_600_000;
    expect(budget.take('a').allowed).toBe(true);
    expect(budget.take('a').allowed).toBe(true);
    expect(budget.take('a').allowed).toBe(false);
  });

  it('is not fooled by a clock that steps back', () => {
    let now = 10_000;
    const budget = new SignBudget({ burst: 1, perMinute: 60 }, () => now);
    expect(budget.take('a').allowed).toBe(true);
    now = 0;
    expect(budget.take('a').allowed).toBe(false);
  });

  it('forgets the nodes whose budget has refilled, and keeps those it is refusing', () => {
    let now = 0;
    const budget = new SignBudget({ burst: 1, perMinute: 60 }, () => now);
    budget.take('quiet');
    budget.take('flooding');
    budget.take('flooding');
    now = 5_000;
    budget.sweep();
    // A swept node starts again with a full budget; the refusing one still has its spell open.
    expect(budget.take('quiet')).toEqual({ allowed: true, refusedBefore: 0 });
    expect(budget.take('flooding')).toEqual({ allowed: true, refusedBefore: 1 });
  });

  it('refuses limits that would refuse everything or nothing', () => {
    expect(() => new SignBudget({ burst: 0, perMinute: 60 })).toThrow(RangeError);
    expect(() => new SignBudget({ burst: 5, perMinute: 0 })).toThrow(RangeError);
    expect(() => new SignBudget({ burst: Number.NaN, perMinute: 5 })).toThrow(RangeError);
  });
});
