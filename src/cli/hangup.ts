// SIGHUP to a long-running command (a closed terminal, `systemctl reload`, `kill -HUP`): Node's default ends the
// process at once, with no drain, cutting every open connection. Nothing needs a reload signal (the configuration
// directory is watched, certificates renew by themselves), so it is said and ignored; SIGTERM stops.
import type { Logger } from '../observe/log.ts';

export function ignoreHangup(logger: Logger, what: string): void {
  process.on('SIGHUP', () => logger.warn(`SIGHUP ignored: ${what}; SIGTERM or Ctrl-C stops this process`));
}

/**
 * Aborted by the first SIGTERM or SIGINT, listened for from the start: one during a start that waits (for the CA, for
 * the state directory) stops it in order, where the default action had killed the process with its lock held. A
 * second signal calls `again` (the proxy cuts its drain short and stops in order); without one, and for any signal
 * after that, the default action.
 */
export function stopSignal(again?: (signal: NodeJS.Signals) => void): AbortSignal {
  const stopping = new AbortController();
  let calledAgain = false;
  const handler = (signal: NodeJS.Signals) => {
    if (!stopping.signal.aborted) return stopping.abort();
    // Once: a third signal ends the process however far its stop has come (a stop that hangs is never a trap).
    if (again !== undefined && !calledAgain) {
      calledAgain = true;
      return again(signal);
    }
    process.off('SIGTERM', handler);
    process.off('SIGINT', handler);
    process.kill(process.pid, signal);
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  return stopping.signal;
}
