// What a node proxy's readiness probe and metrics say when its identities are not in order: while its first
// attestation waits for a CA that is down (the servers are up, naming what is pending), and once a workload
// certificate has expired because the CA stayed away past its life. Real processes, real CA, real HTTP.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { metricSum, nodeIp, podYaml, probe, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';
import { AmbitProcess } from '../helpers/process.ts';

const P = 68;
const WEB_IP = nodeIp(P, 0, 10);
const WEB_ID = 'spiffe://cluster.local/ns/demo/sa/web';

let mesh: TestMesh;

beforeAll(async () => {
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a', 'node-b'],
    config: { 'workloads.yaml': yamlDocuments(podYaml({ name: 'web-1', node: 'node-a', serviceAccount: 'web', ip: WEB_IP })) },
    // Workload certificates of 4 s: once the CA is gone, one expires within seconds.
    extraProxyArgs: (node) => (node === 'node-a' ? ['--svid-ttl', '4s'] : []),
  });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
});

describe('readiness and metrics of a node proxy whose identities are not in order', () => {
  it('serves both while its first attestation waits for an unreachable CA, naming the node identity as pending', async () => {
    const address = nodeIp(P, 1, 1);
    const token = await createJoinToken(mesh.caDir, 'node-b', 600_000);
    const tokenFile = join(mesh.dir, 'node-b-second.join-token');
    await writeFile(tokenFile, `${token.token}\n`, { mode: 0o600 });
    await mesh.nodes.get('node-b')!.proc.stop();
    // Nothing listens on port 9 of loopback: every attempt is refused at once.
    const proc = AmbitProcess.start([
      'proxy', '--node', 'node-b', '--config', mesh.configDir, '--ca', 'https://127.0.0.1:9', '--ca-bundle', mesh.bundleFile, '--trust-domain', mesh.trustDomain,
      '--state-dir', join(mesh.dir, 'node-b-second'), '--join-token-file', tokenFile,
      '--metrics', `${address}:15020`, '--readiness', `${address}:15021`, '--admin', `${address}:15000`, '--drain-timeout', '0',
    ]);
    const node: TestNode = { name: 'node-b', address, proc, metricsUrl: `http://${address}:15020/metrics`, readinessUrl: `http://${address}:15021/healthz/ready`, adminUrl: `http://${address}:15000` };
    mesh.nodes.set('node-b', node);
    await proc.waitForMessage('node attestation failed; retrying with the same join token', 20_000);
    const ready = await probe(node.readinessUrl);
    expect(ready.status).toBe(503);
    expect(ready.body).toContain('node identity');
    expect(await metricSum(node, 'ambit_certificate_rotation_failures_total', { identity: 'spiffe://cluster.local/ambit/node/node-b', code: 'CA_UNREACHABLE' })).toBeGreaterThanOrEqual(1);
    expect(proc.lines.some((line) => line.msg === 'proxy started')).toBe(false);
  });

  it('is not ready once a workload certificate has expired, and says whose and since when', async () => {
    const node = mesh.nodes.get('node-a')!;
    expect((await probe(node.readinessUrl)).status).toBe(200);
    await mesh.ca.stop();
    await waitUntil('readiness reports the expired certificate', async () => {
      const ready = await probe(node.readinessUrl);
      return ready.status === 503 && ready.body.includes(`expired certificate ${WEB_ID} (since `);
    }, 15_000);
  }, 20_000);
});
