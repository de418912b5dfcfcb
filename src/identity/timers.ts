// Timer delays from certificate lifetimes and refresh hints: Node fires any delay above 2^31-1 ms (about
// 24.8 days) after 1 ms instead, which would turn a long lifetime or a peer's huge refresh hint into a
// tight loop against the CA or a federation endpoint.
const MAX_TIMER_MS = 2_147_483_647;

export function timerDelayMs(ms: number): number {
  return Math.max(0, Math.min(ms, MAX_TIMER_MS));
}

/** How often renewals are checked against the wall clock (a suspended host's timers lag), and how late counts. */
export const WALL_CLOCK_CHECK_MS = 5_000;
export const WALL_CLOCK_SLACK_MS = 1_000;
