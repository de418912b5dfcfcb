// The `ambit` command: dispatches to one module per subcommand and maps errors to exit codes
// (0 ok, 1 a negative result such as an invalid SVID, 2 bad usage or input).
import { realpathSync } from 'node:fs';
import { AmbitError } from '../errors.ts';
import type { Command } from './args.ts';

const commands: Record<string, () => Promise<Command>> = {
  ca: async () => (await import('./ca.ts')).command,
  agent: async () => (await import('./agent.ts')).command,
  svid: async () => (await import('./svid.ts')).command,
  proxy: async () => (await import('./proxy.ts')).command,
  mesh: async () => (await import('./mesh.ts')).command,
  authz: async () => (await import('./authz.ts')).command,
};

async function mainHelp(): Promise<string> {
  const lines = ['usage: ambit <command> [options]', '', 'commands:'];
  for (const [name, load] of Object.entries(commands)) lines.push(`  ${name.padEnd(8)} ${(await load()).summary}`);
  lines.push('', 'Run `ambit <command> --help` for its options.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    // Asked for, on stdout; no command at all is bad usage, on stderr (a script's stdout gets nothing it did not ask for).
    (name === undefined ? process.stderr : process.stdout).write((await mainHelp()) + '\n');
    return name === undefined ? 2 : 0;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`ambit: unknown command "${name}" (commands: ${Object.keys(commands).join(', ')})\n`);
    return 2;
  }
  const command = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(command.help.trimEnd() + '\n');
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (error) {
    if (error instanceof AmbitError) {
      process.stderr.write(`ambit ${name}: ${error.message} [${error.code}]\n`);
      return 2;
    }
    // A directory or file named by a flag that cannot be made or read (--state-dir, --out, --dir as another user, on
    // a read-only volume): one line naming it, as bad usage gets, not a stack trace.
    const fileError = fileSystemError(error);
    if (fileError !== null) {
      process.stderr.write(`ambit ${name}: ${fileError}\n`);
      return 2;
    }
    throw error;
  }
}

/** The errno codes a named file or directory fails with, each in words. */
const FILE_ERRORS: ReadonlyMap<string, string> = new Map([
  ['EACCES', 'permission denied'],
  ['EPERM', 'not permitted'],
  ['ENOENT', 'no such file or directory'],
  ['ENOTDIR', 'a file is in the way (not a directory)'],
  ['EISDIR', 'it is a directory'],
  ['EROFS', 'read-only file system'],
  ['EEXIST', 'a file is in the way'],
  ['ENOSPC', 'no space left on the device'],
  ['ELOOP', 'too many symbolic links'],
  ['ENAMETOOLONG', 'name too long'],
]);
const WRITING_SYSCALLS = new Set(['mkdir', 'write', 'rename', 'unlink', 'rmdir', 'copyfile', 'symlink', 'chmod', 'mkdtemp']);

/** The one line for a failed file-system call, with its path, what went wrong and a code; null for any other error. */
function fileSystemError(error: unknown): string | null {
  const failure = error as NodeJS.ErrnoException;
  const reason = typeof failure.code === 'string' ? FILE_ERRORS.get(failure.code) : undefined;
  if (!(error instanceof Error) || reason === undefined || typeof failure.path !== 'string') return null;
  const code = failure.syscall !== undefined && WRITING_SYSCALLS.has(failure.syscall) ? 'FILE_WRITE' : 'FILE_READ';
  return `cannot ${failure.syscall ?? 'use'} ${failure.path}: ${reason} (${failure.code as string}) [${code}]`;
}

/**
 * For processes a parent starts and owns (`ambit mesh`'s CA and proxies): stdin is a pipe the parent never writes, so
 * its end means the parent is gone, however it died, and this process stops as SIGTERM stops it.
 */
function exitWithParent(): void {
  if (process.env.AMBIT_EXIT_WITH_PARENT !== '1') return;
  process.stdin.on('error', () => {});
  process.stdin.once('close', () => process.kill(process.pid, 'SIGTERM'));
  process.stdin.resume();
  // Watching, not holding: a proxy that has stopped must still be able to exit.
  process.stdin.unref();
}

/** The Node major this build runs on (package.json's engines, and the `node` package it pins). */
const MIN_NODE_MAJOR = 24;

/** Runs the CLI on this process's arguments and sets its exit code. */
export function runCli(): void {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < MIN_NODE_MAJOR) {
    process.stderr.write(`ambit: needs Node ${MIN_NODE_MAJOR} or later, and this is Node ${process.versions.node}: run it through npm (npm start, npm run ambit -- ...), which uses the Node that npm install fetched, or node_modules/.bin/node\n`);
    process.exitCode = 2;
    return;
  }
  exitWithParent();
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`ambit: unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exitCode = 70;
    },
  );
}

// import.meta.main is Node 24's: before it, undefined, and the CLI did nothing at all (exit 0). Then the entry is
// judged by path, so an older Node gets runCli's message.
if (import.meta.main ?? (process.argv[1] !== undefined && import.meta.filename !== undefined && realpathSync(process.argv[1]) === import.meta.filename)) runCli();
