// An error nothing handled (a defect of ambit): Node's default prints a stack on stderr, outside the JSON log an
// operator's collector reads, and leaves the state directory's lease to go stale, so the restarted process (a new
// container, in a PID namespace of its own) waits LEASE_STALE_MS before it may serve. Instead: one fatal line in the
// log with the error and its stack, the lease given up, and the exit code Node's default would have given.
import type { Logger } from '../observe/log.ts';
import { releaseHeldLocksSync } from '../identity/state-lock.ts';

export function stopOnUncaughtError(logger: Logger): void {
  let ending = false;
  process.on('uncaughtException', (error: Error, origin: NodeJS.UncaughtExceptionOrigin) => {
    // A second error while the first is written (or thrown by the logger itself) ends it as it stands.
    if (!ending) {
      ending = true;
      try {
        logger.fatal({ err: error, origin }, `stopping: an error that nothing handled (${origin === 'unhandledRejection' ? 'a promise rejected with no handler' : 'an exception no handler caught'}); this is a defect of ambit, please report it with this line`);
      } catch {
        // The log itself failed: stderr still says it.
        process.stderr.write(`${String(error?.stack ?? error)}\n`);
      }
      releaseHeldLocksSync();
    }
    // pino's destination is written out on exit (its own exit handler flushes synchronously).
    process.exit(1);
  });
}
