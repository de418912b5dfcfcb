import { readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog, diffSnapshots, isEmptyDiff } from '../../../src/config/diff.ts';
import { loadConfigDir } from '../../../src/config/loader.ts';
import { configDir, fixtureCopy, meshYaml, podYaml, removeConfigDirs, writeFiles } from './temp-config.ts';

afterEach(removeConfigDirs);

describe('diffSnapshots', () => {
  it('reports added and removed objects with their files', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'a.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }) });
    const before = await loadConfigDir(dir);
    await writeFiles(dir, { 'a.yaml': '# emptied\n', 'sub/b.yaml': podYaml({ name: 'b', node: 'node-a', ip: '10.0.0.1' }) });
    const after = await loadConfigDir(dir);
    expect(diffSnapshots(before, after)).toEqual({
      added: [{ object: 'Pod default/b', file: 'sub/b.yaml' }],
      removed: [{ object: 'Pod default/a', file: 'a.yaml' }],
      changed: [],
    });
  });

  it('reports the field paths that changed in spec, status, labels and annotations', async () => {
    const dir = await fixtureCopy('basic');
    const before = await loadConfigDir(dir);
    const pods = await readFile(join(dir, 'workloads/pods.yaml'), 'utf8');
    await writeFiles(dir, {
      'workloads/pods.yaml': pods
        .replace('    version: v1\nspec:\n  nodeName: node-a', '    version: v2\n  annotations:\n    team: storefront\nspec:\n  nodeName: node-a')
        .replace('containerPort: 8080\n          name: http\nstatus:\n  phase: Running\n  podIP: 10.0.1.10', 'containerPort: 8081\n          name: http\nstatus:\n  phase: Running\n  podIP: 10.0.1.10'),
    });
    const after = await loadConfigDir(dir);
    const diff = diffSnapshots(before, after);
    expect(diff.added).toEqual([]);
    expect(diff.removed).toEqual([]);
    expect(diff.changed).toEqual([
      {
        object: 'Pod shop/web-7d4b9c',
        file: 'workloads/pods.yaml',
        fields: ['metadata.labels.version', 'metadata.annotations.team', 'spec.containers[0].ports[0].containerPort'],
      },
    ]);
  });

  it('quotes label keys that are not plain identifiers and lists grown list entries', async () => {
    const dir = await configDir({ 'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { ports: [{ name: http, port: 80 }] }\n' });
    const before = await loadConfigDir(dir);
    await writeFiles(dir, {
      'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: web, labels: { app.kubernetes.io/name: web } }\nspec: { ports: [{ name: http, port: 80 }, { name: https, port: 443 }] }\n',
    });
    const diff = diffSnapshots(before, await loadConfigDir(dir));
    expect(diff.changed[0]?.fields).toEqual(['metadata.labels["app.kubernetes.io/name"]', 'spec.ports[1]']);
  });

  it('reports an object that moved file without other changes', async () => {
    const dir = await configDir({ 'a.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }) });
    const before = await loadConfigDir(dir);
    await rename(join(dir, 'a.yaml'), join(dir, 'b.yaml'));
    const after = await loadConfigDir(dir);
    expect(after.version).toBe(before.version);
    expect(diffSnapshots(before, after).changed).toEqual([{ object: 'Pod default/a', file: 'b.yaml', fields: [], previousFile: 'a.yaml' }]);
  });

  it("reports a Pod's new controlling owner and a PeerAuthentication's new creationTimestamp (both change what is applied)", async () => {
    const pod = (owner: string) => `apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  generateName: web-\n  ownerReferences: [{ kind: ReplicaSet, name: ${owner}, controller: true }]\nspec: { nodeName: node-a }\nstatus: { podIP: 10.0.0.9, phase: Running }\n`;
    const pa = (created: string) => `apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: strict, namespace: shop, creationTimestamp: "${created}" }\nspec: { mtls: { mode: STRICT } }\n`;
    const dir = await configDir({ 'pod.yaml': pod('web-5d8f'), 'pa.yaml': pa('2024-01-01T00:00:00Z') });
    const before = await loadConfigDir(dir);
    await writeFiles(dir, { 'pod.yaml': pod('checkout-5d8f'), 'pa.yaml': pa('2025-01-01T00:00:00Z') });
    expect(diffSnapshots(before, await loadConfigDir(dir)).changed).toEqual([
      { object: 'PeerAuthentication shop/strict', file: 'pa.yaml', fields: ['metadata.creationTimestamp'] },
      { object: 'Pod shop/web-1', file: 'pod.yaml', fields: ['metadata.ownerReferences.name'] },
    ]);
  });

  it('is empty when only comments and layout changed', async () => {
    const dir = await configDir({ 'a.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }) });
    const before = await loadConfigDir(dir);
    await writeFiles(dir, { 'a.yaml': `# owned by team storefront\n\n${podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' })}` });
    expect(isEmptyDiff(diffSnapshots(before, await loadConfigDir(dir)))).toBe(true);
  });

  it('reports everything as added against no previous snapshot', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml() });
    expect(diffSnapshots(undefined, await loadConfigDir(dir)).added).toEqual([{ object: 'MeshConfig mesh', file: 'mesh.yaml' }]);
  });
});

async function auditLines(path: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path, 'utf8');
  expect(text.endsWith('\n')).toBe(true);
  return text.trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('AuditLog', () => {
  it('appends one JSON line per accepted change with version, added, removed and changed fields', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'a.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }) });
    const logDir = await configDir({});
    const log = new AuditLog(join(logDir, 'audit.log'));
    const first = await loadConfigDir(dir);
    await log.writeConfigChange(first, undefined, diffSnapshots(undefined, first));
    await writeFiles(dir, { 'a.yaml': podYaml({ name: 'a', node: 'node-b', ip: '10.0.0.1' }) });
    const second = await loadConfigDir(dir);
    await log.writeConfigChange(second, first, diffSnapshots(first, second));

    const lines = await auditLines(log.path);
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({ event: 'config_change', version: first.version, previousVersion: null, removed: [], changed: [] });
    expect(lines[0]?.['added']).toEqual([
      { object: 'Pod default/a', file: 'a.yaml' },
      { object: 'MeshConfig mesh', file: 'mesh.yaml' },
    ]);
    expect(lines[1]).toEqual({
      time: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      event: 'config_change',
      version: second.version,
      previousVersion: first.version,
      added: [],
      removed: [],
      changed: [{ object: 'Pod default/a', file: 'a.yaml', fields: ['spec.nodeName'] }],
    });
  });

  it('writes any record as a timestamped line, in call order', async () => {
    const logDir = await configDir({});
    const log = new AuditLog(join(logDir, 'audit.log'));
    const writes = Array.from({ length: 20 }, (_, index) => log.write({ event: 'svid_issued', sequence: index, identity: 'spiffe://cluster.local/ns/shop/sa/web' }));
    await Promise.all(writes);
    const lines = await auditLines(log.path);
    expect(lines.map((line) => line['sequence'])).toEqual(Array.from({ length: 20 }, (_, index) => index));
    expect(lines[0]).toMatchObject({ time: expect.any(String), event: 'svid_issued', identity: 'spiffe://cluster.local/ns/shop/sa/web' });
  });

  it('rejects with FILE_WRITE when the file cannot be written, and keeps writing afterwards', async () => {
    const logDir = await configDir({});
    const broken = new AuditLog(join(logDir, 'missing-dir', 'audit.log'));
    await expect(broken.write({ event: 'x' })).rejects.toMatchObject({ code: 'FILE_WRITE' });
    await expect(broken.write({ event: 'y' })).rejects.toMatchObject({ code: 'FILE_WRITE' });
    await writeFiles(logDir, { 'missing-dir/.keep': '' });
    await broken.write({ event: 'z' });
    expect((await auditLines(broken.path)).map((line) => line['event'])).toEqual(['z']);
  });
});
