// The machine a run was measured on, recorded beside every figure: cores, memory, kernel, Node and its
// OpenSSL, the peers' versions, and how the processes were placed on the cores.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { createRequire } from 'node:module';

function opensslCli(): string {
  try {
    return execFileSync('openssl', ['version'], { encoding: 'utf8' }).trim();
  } catch {
    return 'not installed';
  }
}

function autocannonVersion(): string {
  try {
    const require = createRequire(import.meta.url);
    return (JSON.parse(readFileSync(require.resolve('autocannon/package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function machineInfo(extra: Record<string, unknown>): Record<string, unknown> {
  const cores = cpus();
  return {
    cores: cores.length,
    cpuModel: cores[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    node: process.version,
    nodeOpenssl: process.versions.openssl,
    opensslCli: opensslCli(),
    autocannon: autocannonVersion(),
    ...extra,
  };
}
