import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfigDir } from '../../../src/config/loader.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { FIXTURES, configDir, meshYaml, podYaml, removeConfigDirs, workloadEntryYaml } from './temp-config.ts';

afterEach(removeConfigDirs);

let basic: ConfigSnapshot;
beforeAll(async () => {
  basic = await loadConfigDir(join(FIXTURES, 'basic'), { requireMesh: true });
});

describe('workloadsOnNode', () => {
  it('lists the pods scheduled on a node', () => {
    expect(basic.workloadsOnNode('node-a').map((workload) => workload.name)).toEqual(['web-7d4b9c', 'cart-5f6d8']);
    expect(basic.workloadsOnNode('node-b').map((workload) => workload.name)).toEqual(['web-2a8c1e']);
  });

  it('places a WorkloadEntry on the node named by its ambit.dev/node annotation', () => {
    expect(basic.workloadsOnNode('vm-db-1')).toEqual([
      expect.objectContaining({
        kind: 'WorkloadEntry',
        name: 'orders-db',
        namespace: 'data',
        node: 'vm-db-1',
        serviceAccount: 'orders-db',
        ips: ['192.168.50.7'],
        labels: { app: 'orders-db' },
        identity: 'spiffe://cluster.local/ns/data/sa/orders-db',
        source: { file: 'workloads/vm.yml', line: 2 },
      }),
    ]);
  });

  it('answers an empty list for a node with no workloads', () => {
    expect(basic.workloadsOnNode('node-z')).toEqual([]);
  });

  it('normalises a pod into a workload with all its IPs, primary first, and its SPIFFE identity', () => {
    expect(basic.workloadsOnNode('node-a')[0]).toMatchObject({
      kind: 'Pod',
      namespace: 'shop',
      serviceAccount: 'web',
      ips: ['10.0.1.10', 'fd00:10::a'],
      labels: { app: 'web', version: 'v1' },
      identity: 'spiffe://cluster.local/ns/shop/sa/web',
      source: { file: 'workloads/pods.yaml', line: 1 },
    });
  });
});

describe('identitiesOnNode (may node N obtain identity X?)', () => {
  it('allows the identities of the workloads on the node', () => {
    const identities = basic.identitiesOnNode('node-a');
    expect(identities.has('spiffe://cluster.local/ns/shop/sa/web')).toBe(true);
    expect(identities.has('spiffe://cluster.local/ns/shop/sa/cart')).toBe(true);
    expect(identities.size).toBe(2);
  });

  it('refuses an identity whose workloads all run on other nodes', () => {
    expect(basic.identitiesOnNode('node-b').has('spiffe://cluster.local/ns/shop/sa/cart')).toBe(false);
    expect(basic.identitiesOnNode('node-a').has('spiffe://cluster.local/ns/data/sa/orders-db')).toBe(false);
  });

  it('refuses every identity to a node the registry does not know', () => {
    expect(basic.identitiesOnNode('intruder').size).toBe(0);
  });

  it('refuses an identity that differs only in trust domain', () => {
    expect(basic.identitiesOnNode('node-a').has('spiffe://partner.example/ns/shop/sa/web')).toBe(false);
  });

  it('does not let a pod that is unscheduled or without an IP grant its identity to any node', async () => {
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'pods.yaml': `${podYaml({ name: 'pending', serviceAccount: 'pending', ip: '10.0.0.1' })}---\n${podYaml({ name: 'starting', serviceAccount: 'starting', node: 'node-a' })}`,
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.identitiesOnNode('node-a').size).toBe(0);
  });

  it('cannot be widened by the caller', () => {
    const identities = basic.identitiesOnNode('node-b') as Set<string>;
    expect('add' in identities).toBe(false);
    expect(() => (identities as unknown as { add(value: string): void }).add('spiffe://cluster.local/ns/shop/sa/cart')).toThrow(TypeError);
    expect(basic.identitiesOnNode('node-b').has('spiffe://cluster.local/ns/shop/sa/cart')).toBe(false);
  });
});

describe('workloadsOnNodeByName', () => {
  it("finds a node's own workload by namespace/name", () => {
    expect(basic.workloadsOnNodeByName('node-a', 'shop/web-7d4b9c').map((w) => w.ips)).toEqual([['10.0.1.10', 'fd00:10::a']]);
  });

  it("finds nothing for another node's workload, an unknown node, or a name spelled otherwise", () => {
    expect(basic.workloadsOnNodeByName('node-b', 'shop/web-7d4b9c')).toEqual([]);
    expect(basic.workloadsOnNodeByName('intruder', 'shop/web-7d4b9c')).toEqual([]);
    for (const key of ['shop/web', 'web-7d4b9c', 'SHOP/web-7d4b9c', ' shop/web-7d4b9c', 'shop/web-7d4b9c/', '']) expect(basic.workloadsOnNodeByName('node-a', key)).toEqual([]);
  });

  it('keeps both a Pod and a WorkloadEntry of one name on one node, in file order, and only for that node', async () => {
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'a.yaml': podYaml({ name: 'twin', namespace: 'default', node: 'node-a', serviceAccount: 'pod-sa', ip: '10.0.0.5' }),
      'b.yaml': workloadEntryYaml('twin', '10.0.0.6', 'node-a'),
      'c.yaml': podYaml({ name: 'twin', namespace: 'other', node: 'node-b', serviceAccount: 'pod-sa', ip: '10.0.0.7' }),
    });
    const snapshot = await loadConfigDir(dir);
    const twins = snapshot.workloadsOnNodeByName('node-a', 'default/twin');
    expect(twins.map((w) => [w.kind, w.identity])).toEqual([['Pod', 'spiffe://cluster.local/ns/default/sa/pod-sa'], ['WorkloadEntry', 'spiffe://cluster.local/ns/default/sa/twin']]);
    expect(Object.isFrozen(twins)).toBe(true);
    expect(snapshot.workloadsOnNodeByName('node-b', 'default/twin')).toEqual([]);
    expect(snapshot.workloadsOnNodeByName('node-b', 'other/twin').map((w) => w.ips)).toEqual([['10.0.0.7']]);
  });
});

describe('workloadByIp', () => {
  it('finds a workload by its primary IP and by its secondary IPs', () => {
    expect(basic.workloadByIp('10.0.1.11')?.name).toBe('cart-5f6d8');
    expect(basic.workloadByIp('fd00:10::a')?.name).toBe('web-7d4b9c');
    expect(basic.workloadByIp('192.168.50.7')?.name).toBe('orders-db');
  });

  it('finds a workload whatever the spelling of the address, including an IPv4-mapped IPv6 socket address', () => {
    expect(basic.workloadByIp('::ffff:10.0.1.11')?.name).toBe('cart-5f6d8');
    expect(basic.workloadByIp('FD00:10:0:0::A')?.name).toBe('web-7d4b9c');
  });

  it('finds nothing for an address no workload has, or for text that is not an address', () => {
    expect(basic.workloadByIp('10.0.1.12')).toBeUndefined();
    expect(basic.workloadByIp('10.96.0.20')).toBeUndefined();
    expect(basic.workloadByIp('web')).toBeUndefined();
  });
});

describe('services', () => {
  it('finds a Service by its cluster hostname', () => {
    const service = basic.serviceByHost('web.shop.svc.cluster.local');
    expect(service?.metadata.name).toBe('web');
    expect(service?.spec.ports).toEqual([{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP', appProtocol: 'http' }]);
    expect(basic.serviceByHost('Web.Shop.svc.cluster.local.')).toBe(service);
    expect(basic.services).toEqual([service]);
  });

  it('finds nothing for a hostname in another namespace', () => {
    expect(basic.serviceByHost('web.default.svc.cluster.local')).toBeUndefined();
  });

  it('treats an empty selector as selecting nothing, as Kubernetes does', async () => {
    const dir = await configDir({ 'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: db }\nspec: { selector: {}, ports: [{ port: 5432 }] }\n' });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.services[0]?.spec).toMatchObject({ selector: undefined, ports: [{ port: 5432, targetPort: 5432 }] });
  });
});

describe('a snapshot', () => {
  it('is frozen deep enough that the data path cannot change it', () => {
    const workloads = basic.workloads as unknown as unknown[];
    expect(() => workloads.push({})).toThrow(TypeError);
    const pod = basic.objectsOfKind('Pod')[0] as unknown as { spec: { nodeName: string; containers: { ports: unknown[] }[] } };
    expect(() => {
      pod.spec.nodeName = 'node-z';
    }).toThrow(TypeError);
    expect(() => pod.spec.containers[0]?.ports.push({})).toThrow(TypeError);
    const policy = basic.objectsOfKind('AuthorizationPolicy')[0] as unknown as { spec: { rules: unknown[] } };
    expect(() => policy.spec.rules.push({})).toThrow(TypeError);
    expect(() => (basic.workloadsOnNode('node-a') as unknown as unknown[]).pop()).toThrow(TypeError);
    expect(() => {
      (basic as unknown as { version: string }).version = 'x';
    }).toThrow(TypeError);
    expect(() => {
      (basic.mesh as unknown as { trustDomain: string }).trustDomain = 'evil.example';
    }).toThrow(TypeError);
  });

  it('has the same version for the same content, however it is split into files', async () => {
    const pods = [podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }), podYaml({ name: 'b', node: 'node-b', ip: '10.0.0.2' })];
    const oneFile = await configDir({ 'all.yaml': `${meshYaml()}---\n${pods.join('---\n')}` });
    const threeFiles = await configDir({ 'z.yaml': meshYaml(), 'pods/b.yaml': pods[1] as string, 'pods/a.yaml': `# a comment\n${pods[0]}` });
    const [first, second] = await Promise.all([loadConfigDir(oneFile), loadConfigDir(threeFiles)]);
    expect(first.version).toMatch(/^[0-9a-f]{16}$/);
    expect(second.version).toBe(first.version);
  });

  it('has another version when any value changes', async () => {
    const before = await loadConfigDir(await configDir({ 'pod.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.1' }) }));
    const after = await loadConfigDir(await configDir({ 'pod.yaml': podYaml({ name: 'a', node: 'node-a', ip: '10.0.0.2' }) }));
    expect(after.version).not.toBe(before.version);
  });

  it('lists objects by kind', () => {
    expect(basic.objectsOfKind('AuthorizationPolicy').map((policy) => policy.metadata.name)).toEqual(['cart-allow-web']);
    expect(basic.objectsOfKind('VirtualService')).toEqual([]);
  });
});
