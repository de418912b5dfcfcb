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

/** A span at the precision a person reads a lifetime in: 2d3h, 5h12m, 42m, 17s (rounded down). */
export function formatSpan(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  const days = Math.floor(seconds / 86_400);
  const hours = Math.floor((seconds % 86_400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days > 0) return hours > 0 ? `${days}d${hours}h` : `${days}d`;
  if (hours > 0) return minutes > 0 ? `${hours}h${minutes}m` : `${hours}h`;
  if (minutes > 0) return `${minutes}m`;
  return `${seconds}s`;
}
