// Test helpers: configuration directories in fresh temp dirs, and small YAML builders for the objects tests vary.
import { cp, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { ConfigError } from '../../../src/config/issues.ts';

export const FIXTURES = fileURLToPath(new URL('../../fixtures/config/', import.meta.url));

const created: string[] = [];

/** Writes `files` (relative path → text) into a new temp directory and returns its path. */
export async function configDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-config-'));
  created.push(dir);
  await writeFiles(dir, files);
  return dir;
}

export async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [file, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await writeFile(join(dir, file), text);
  }
}

/**
 * Writes each file beside itself and renames it into place, as ConfigMaps and editors do: a watcher never sees it
 * half written. Tests of what a watcher does with files written in place use `writeFiles`.
 */
export async function replaceFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [file, text] of Object.entries(files)) {
    const path = join(dir, file);
    await mkdir(dirname(path), { recursive: true });
    // A dotfile: the loader skips those, so the watcher does not load the temporary copy.
    const temporary = join(dirname(path), `.${file.replaceAll('/', '_')}.tmp`);
    await writeFile(temporary, text);
    await rename(temporary, path);
  }
}

/** A writable copy of a fixture directory. */
export async function fixtureCopy(name: string): Promise<string> {
  const dir = await configDir({});
  await cp(join(FIXTURES, name), dir, { recursive: true });
  return dir;
}

export async function removeConfigDirs(): Promise<void> {
  await Promise.all(created.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

/** Awaits a promise expected to reject with a ConfigError, and returns that error. */
export async function configError(promise: Promise<unknown>): Promise<ConfigError> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as ConfigError;
}

export function meshYaml(trustDomain = 'cluster.local', name = 'mesh'): string {
  return `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata:
  name: ${name}
spec:
  trustDomain: ${trustDomain}
`;
}

export interface PodFields {
  name: string;
  namespace?: string;
  node?: string;
  ip?: string;
  serviceAccount?: string;
  labels?: Record<string, string>;
}

export function podYaml(pod: PodFields): string {
  const lines = ['apiVersion: v1', 'kind: Pod', 'metadata:', `  name: ${pod.name}`];
  if (pod.namespace !== undefined) lines.push(`  namespace: ${pod.namespace}`);
  if (pod.labels !== undefined) {
    lines.push('  labels:');
    for (const [key, value] of Object.entries(pod.labels)) lines.push(`    ${key}: "${value}"`);
  }
  lines.push('spec:');
  if (pod.node !== undefined) lines.push(`  nodeName: ${pod.node}`);
  if (pod.serviceAccount !== undefined) lines.push(`  serviceAccountName: ${pod.serviceAccount}`);
  lines.push('  containers:', '    - name: app', '      image: app:1');
  if (pod.ip !== undefined) lines.push('status:', `  podIP: "${pod.ip}"`);
  return `${lines.join('\n')}\n`;
}

export function workloadEntryYaml(name: string, address: string, node: string, namespace = 'default'): string {
  return `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ${name}
  namespace: ${namespace}
  annotations:
    ambit.dev/node: ${node}
spec:
  address: "${address}"
  serviceAccount: ${name}
`;
}
