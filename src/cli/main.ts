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
    process.stdout.write((await mainHelp()) + '\n');
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

const FILE_ERRORS = new Set(['EACCES', 'EPERM', 'ENOENT', 'ENOTDIR', 'EISDIR', 'EROFS', 'EEXIST', 'ENOSPC', 'ELOOP', 'ENAMETOOLONG']);

/** The one line for a failed file-system call, with its path and errno code; null for any other error. */
function fileSystemError(error: unknown): string | null {
  const failure = error as NodeJS.ErrnoException;
  if (!(error instanceof Error) || typeof failure.code !== 'string' || !FILE_ERRORS.has(failure.code) || typeof failure.path !== 'string') return null;
  return `cannot ${failure.syscall ?? 'use'} ${failure.path}: ${failure.code}`;
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
