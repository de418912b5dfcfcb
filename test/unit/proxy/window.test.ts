// The stream window a session advertises for its number of open streams: the whole 4 MiB for a few, narrower as
// they grow, so that streams × window stays within the session's budget, and never below the floor.
import { describe, expect, it } from 'vitest';
import { StreamBudget, proxyWindowFor, streamWindowFor } from '../../../src/proxy/window.ts';
import { H2_MIN_STREAM_WINDOW_BYTES, H2_PROXY_BUFFER_BYTES, H2_PROXY_MIN_STREAM_WINDOW_BYTES, H2_SESSION_BUFFER_BYTES, H2_STREAM_WINDOW_BYTES } from '../../../src/proxy/settings.ts';

describe('the stream window for a number of open streams', () => {
  it('is the whole window for a few streams, and halves as they grow', () => {
    expect(streamWindowFor(0)).toBe(H2_STREAM_WINDOW_BYTES);
    expect(streamWindowFor(1)).toBe(H2_STREAM_WINDOW_BYTES);
    expect(streamWindowFor(8)).toBe(4 * 1024 * 1024);
    expect(streamWindowFor(9)).toBe(2 * 1024 * 1024);
    expect(streamWindowFor(48)).toBe(512 * 1024);
  });

  it('keeps open streams × window within the budget, down to the floor', () => {
    for (let open = 1; open <= 200; open++) {
      const window = streamWindowFor(open);
      expect(window).toBeGreaterThanOrEqual(H2_MIN_STREAM_WINDOW_BYTES);
      if (window > H2_MIN_STREAM_WINDOW_BYTES) expect(window * open).toBeLessThanOrEqual(H2_SESSION_BUFFER_BYTES);
    }
    expect(streamWindowFor(200)).toBe(H2_MIN_STREAM_WINDOW_BYTES);
  });
});

describe("the widest stream window for the streams open across a proxy's sessions", () => {
  it('is the whole window for up to 32 streams open, and keeps a window W for up to 128 MiB ÷ W', () => {
    expect(H2_PROXY_BUFFER_BYTES).toBe(128 * 1024 * 1024);
    expect(proxyWindowFor(0, H2_PROXY_BUFFER_BYTES)).toBe(H2_STREAM_WINDOW_BYTES);
    expect(proxyWindowFor(32, H2_PROXY_BUFFER_BYTES)).toBe(H2_STREAM_WINDOW_BYTES);
    expect(proxyWindowFor(33, H2_PROXY_BUFFER_BYTES)).toBe(2 * 1024 * 1024);
    expect(proxyWindowFor(256, H2_PROXY_BUFFER_BYTES)).toBe(512 * 1024);
    expect(proxyWindowFor(1_024, H2_PROXY_BUFFER_BYTES)).toBe(H2_MIN_STREAM_WINDOW_BYTES);
    expect(proxyWindowFor(1_025, H2_PROXY_BUFFER_BYTES)).toBe(64 * 1024);
  });

  it('keeps open streams × window within the budget, down to its floor, and no lower however many are open', () => {
    for (let open = 1; open <= 20_000; open += 7) {
      const window = proxyWindowFor(open, H2_PROXY_BUFFER_BYTES);
      expect(window).toBeGreaterThanOrEqual(H2_PROXY_MIN_STREAM_WINDOW_BYTES);
      if (window > H2_PROXY_MIN_STREAM_WINDOW_BYTES) expect(window * open).toBeLessThanOrEqual(H2_PROXY_BUFFER_BYTES);
    }
    expect(proxyWindowFor(8_192, H2_PROXY_BUFFER_BYTES)).toBe(16 * 1024);
    expect(proxyWindowFor(51_200, H2_PROXY_BUFFER_BYTES)).toBe(H2_PROXY_MIN_STREAM_WINDOW_BYTES);
  });
});

describe("a proxy's stream budget as streams open", () => {
  it('narrows its cap one stream ahead, to the widest window the next stream fits, at each count', () => {
    const bytes = 8 * 1024 * 1024;
    const changes: number[] = [];
    const budget = new StreamBudget(bytes, (window) => changes.push(window));
    for (let open = 1; open <= 2_000; open++) {
      budget.opened();
      expect(budget.window).toBe(proxyWindowFor(open + 1, bytes));
    }
    // A change per step, none in between: 4 MiB to 16 KiB in halves.
    expect(changes).toEqual([2, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625].map((mib) => mib * 1024 * 1024));
  });

  it('widens its cap once the streams are down to half, at once the first time and not again within the second', () => {
    const bytes = 8 * 1024 * 1024;
    const budget = new StreamBudget(bytes);
    for (let open = 0; open < 100; open++) budget.opened();
    expect(budget.window).toBe(64 * 1024);
    // 32 open: twice them and one (65) do not fit 8 MiB at 128 KiB.
    while (budget.open > 32) budget.closed();
    expect(budget.window).toBe(64 * 1024);
    // 31 open: 63 × 128 KiB fits, and this first widening is not held back.
    budget.closed();
    expect(budget.window).toBe(128 * 1024);
    // 15 open: 31 × 256 KiB fits, but the cap widened less than a second ago.
    while (budget.open > 15) budget.closed();
    expect(budget.window).toBe(128 * 1024);
  });
});
