// SIGHUP to a long-running command (a closed terminal, `systemctl reload`, `kill -HUP`): Node's default ends the
// process at once, with no drain, cutting every open connection. Nothing needs a reload signal (the configuration
// directory is watched, certificates renew by themselves), so it is said and ignored; SIGTERM stops.
import type { Logger } from '../observe/log.ts';

export function ignoreHangup(logger: Logger, what: string): void {
  process.on('SIGHUP', () => logger.warn(`SIGHUP ignored: ${what}; SIGTERM or Ctrl-C stops this process`));
}
