// SIGHUP (a closed terminal, `systemctl reload`) while a long-running command is still starting: the proxy waiting for
// its first attestation, the agent for a CA that is not there. Ignored and said, as once they run, never their end.
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodePemBundle } from '../../src/identity/bundle.ts';
import { initCa } from '../../src/identity/ca/store.ts';
import { AmbitProcess } from '../helpers/process.ts';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-hangup-'));
  const ca = await initCa(join(dir, 'ca'), 'cluster.local');
  await writeFile(join(dir, 'bundle.pem'), encodePemBundle(ca.bundle));
  await writeFile(join(dir, 'token'), 'a'.repeat(64) + '\n');
  await mkdir(join(dir, 'config'));
  await writeFile(join(dir, 'config', 'mesh.yaml'), 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { trustDomain: cluster.local }\n');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SIGHUP during startup', () => {
  it.each([
    ['proxy', (d: string) => ['proxy', '--node', 'n1', '--ca', 'https://127.0.0.1:1', '--trust-domain', 'cluster.local', '--ca-bundle', join(d, 'bundle.pem'), '--join-token-file', join(d, 'token'), '--config', join(d, 'config'), '--state-dir', join(d, 'state-proxy'), '--metrics', '127.0.0.1:0', '--readiness', '127.0.0.1:0', '--admin', '127.0.0.1:0']],
    ['agent', (d: string) => ['agent', '--node', 'n1', '--ca', 'https://127.0.0.1:1', '--trust-domain', 'cluster.local', '--bundle', join(d, 'bundle.pem'), '--join-token-file', join(d, 'token'), '--state-dir', join(d, 'state-agent'), '--out', join(d, 'out')]],
  ])('is ignored by the %s still waiting for its CA, which says so and goes on', async (_name, args) => {
    const process = AmbitProcess.start(args(dir));
    try {
      // Waiting: its first attestation failed and is retried.
      await process.waitFor((line) => typeof line.msg === 'string' && line.msg.startsWith('node attestation failed'), 20_000, 'an attestation retry');
      process.child.kill('SIGHUP');
      await process.waitFor((line) => typeof line.msg === 'string' && line.msg.startsWith('SIGHUP ignored'), 5_000, 'the SIGHUP line');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(process.child.exitCode).toBeNull();
      expect(process.child.signalCode).toBeNull();
    } finally {
      await process.stop('SIGKILL');
    }
  });
});
