// A node proxy that has been ready stays ready when a workload scheduled on it later cannot get its first
// certificate (the CA away): only that workload's connections fail, as ztunnel's readiness does not wait for
// certificates. Real processes, real CA.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeIp, podYaml, probe, startTestMesh, waitUntil } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 73;

let mesh: TestMesh;

beforeAll(async () => {
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a'], config: { 'workloads.yaml': podYaml({ name: 'web-1', node: 'node-a', serviceAccount: 'web', ip: nodeIp(P, 0, 10) }) } });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
});

describe('a ready node proxy', () => {
  it("stays ready when two workloads' annotations claim one listen address (their problem), and says why it binds neither", async () => {
    const node = mesh.nodes.get('node-a')!;
    expect((await probe(node.readinessUrl)).status).toBe(200);
    const since = node.proc.lines.length;
    await mesh.writeConfig('claims.yaml', [
      podYaml({ name: 'a-1', node: 'node-a', serviceAccount: 'a', ip: nodeIp(P, 0, 30), outbound: '127.0.0.1:45123=example.com:80' }),
      podYaml({ name: 'b-1', node: 'node-a', serviceAccount: 'b', ip: nodeIp(P, 0, 31), outbound: '127.0.0.1:45123=example.net:80' }),
    ].join('---\n'));
    await waitUntil('the conflict reported', () => node.proc.lines.slice(since).some((line) => line.msg === 'listener not applied' && String(line.problem).includes('127.0.0.1:45123')), 15_000);
    const ready = await probe(node.readinessUrl);
    expect(ready.status, ready.body).toBe(200);
    await rm(join(mesh.configDir, 'claims.yaml'));
  }, 30_000);

  it('stays ready when a workload scheduled later waits for its first certificate', async () => {
    const node = mesh.nodes.get('node-a')!;
    expect((await probe(node.readinessUrl)).status).toBe(200);
    await mesh.ca.stop();
    const late = 'spiffe://cluster.local/ns/demo/sa/late';
    const since = node.proc.lines.length;
    await mesh.writeConfig('late.yaml', podYaml({ name: 'late-1', node: 'node-a', serviceAccount: 'late', ip: nodeIp(P, 0, 20) }));
    await waitUntil("the late workload's certificate request failing", () => node.proc.lines.slice(since).some((line) => line.spiffeId === late && (line.err as { code?: string } | undefined)?.code === 'CA_UNREACHABLE'), 15_000);
    const ready = await probe(node.readinessUrl);
    expect(ready.status, ready.body).toBe(200);
  }, 30_000);
});
