// A node proxy whose node the CA no longer accepts (`ambit ca node evict`, a copied or replaced node SVID): its
// readiness says so rather than report ready while no certificate of the node can be renewed, and a new join token it
// is restarted with is used to attest again (it had kept presenting the refused node SVID for ever). Real processes.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evictNode } from '../../src/identity/ca/nodes.ts';
import { nodeIp, podYaml, probe, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 74;

let mesh: TestMesh;
/** node-a's record at the CA before the second eviction, to undo it with. */
let recordBeforeEviction = '';

beforeAll(async () => {
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a'],
    config: { 'workloads.yaml': yamlDocuments(podYaml({ name: 'web-1', node: 'node-a', serviceAccount: 'web', ip: nodeIp(P, 0, 10) })) },
    // Workload certificates of 4 s, renewed every ~2 s: the eviction is met within seconds.
    extraProxyArgs: () => ['--svid-ttl', '4s'],
  });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
});

async function refusedReadiness(): Promise<string> {
  let body = '';
  await waitUntil('readiness naming the refused node identity', async () => {
    const ready = await probe(mesh.nodes.get('node-a')!.readinessUrl);
    body = ready.body;
    return ready.status === 503 && ready.body.includes('node identity refused by the CA');
  }, 20_000);
  return body;
}

describe('a node proxy whose node the CA no longer accepts', () => {
  it('is not ready, saying why, and attests again with the new join token it is restarted with', async () => {
    await evictNode(mesh.caDir, 'node-a');
    expect(await refusedReadiness()).toContain('node node-a was evicted');
    expect(mesh.nodes.get('node-a')!.proc.lines.some((line) => line.msg === "the CA no longer accepts this node's certificate: attesting again with the join token given")).toBe(true);

    // Restarted with a new token (the old one is spent): the stored node SVID is refused, the token attests again.
    const node = await mesh.startNode('node-a');
    expect(node.proc.lines.some((line) => line.msg === 'using stored node SVID')).toBe(true);
    expect(node.proc.lines.some((line) => line.msg === 'node attested with join token')).toBe(true);
    expect((await probe(node.readinessUrl)).status).toBe(200);
  }, 90_000);

  it('says what to do once the token it was given is spent too', async () => {
    recordBeforeEviction = await readFile(join(mesh.caDir, 'nodes', 'node-a.json'), 'utf8');
    await evictNode(mesh.caDir, 'node-a');
    expect(await refusedReadiness()).toContain('attest again with a new join token');
    const proc = mesh.nodes.get('node-a')!.proc;
    await waitUntil('the line saying the token was refused', () => proc.lines.some((line) => line.msg === "the CA no longer accepts this node's certificate and refused the join token given: no certificate of this node can be renewed" && typeof line.hint === 'string' && line.hint.includes('ambit ca token create --node node-a')), 20_000);
  }, 60_000);

  // The refusal had stayed in readiness for good, every certificate renewing normally again.
  it('is ready again once the CA takes the node back (its eviction undone from a backup)', async () => {
    await writeFile(join(mesh.caDir, 'nodes', 'node-a.json'), recordBeforeEviction);
    await waitUntil('ready again', async () => (await probe(mesh.nodes.get('node-a')!.readinessUrl)).status === 200, 30_000);
  }, 40_000);
});
