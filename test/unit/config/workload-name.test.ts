// A workload's name in metric labels and baggage, as Istio derives it from a pod's controller (GetDeployMetaFromPod):
// a Deployment's for its ReplicaSet's pods, a CronJob's for its Jobs', else the controller's or the pod's own.
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import { buildBaggage, parseBaggage } from '../../../src/proxy/baggage.ts';

function pod(name: string, metadata: string, labels: Record<string, string> = {}): string {
  const labelLines = Object.entries(labels).map(([key, value]) => `    ${key}: "${value}"`);
  return [
    'apiVersion: v1',
    'kind: Pod',
    'metadata:',
    `  name: ${name}`,
    '  namespace: shop',
    ...(labelLines.length > 0 ? ['  labels:', ...labelLines] : []),
    ...metadata.split('\n').filter(Boolean).map((line) => `  ${line}`),
    'spec:',
    '  nodeName: node-a',
    '  serviceAccountName: web',
    '  containers: [{ name: app }]',
    'status:',
    '  phase: Running',
    `  podIP: 10.0.0.${name.length}`,
  ].join('\n');
}

function workloadOf(yaml: string) {
  const snapshot = buildSnapshot(parseConfigText(yaml, 'pods.yaml'));
  const workload = snapshot.workloads[0];
  if (workload === undefined) throw new Error('no workload');
  return workload;
}

const owned = (kind: string, name: string, generateName = 'x-') => `generateName: ${generateName}\nownerReferences:\n  - { apiVersion: apps/v1, kind: ${kind}, name: ${name}, uid: u1, controller: true }`;

describe("a pod's workload name", () => {
  it("is its Deployment's for a ReplicaSet pod whose pod-template-hash ends the ReplicaSet's name", () => {
    const workload = workloadOf(pod('web-7d4b9c-abcde', owned('ReplicaSet', 'web-7d4b9c'), { 'pod-template-hash': '7d4b9c' }));
    expect([workload.workloadName, workload.workloadType, workload.name]).toEqual(['web', 'deployment', 'web-7d4b9c-abcde']);
  });

  it("is the ReplicaSet's own when the hash does not end its name, or there is none", () => {
    expect(workloadOf(pod('rs-1-abcde', owned('ReplicaSet', 'rs-1'), { 'pod-template-hash': 'zzz' })).workloadName).toBe('rs-1');
    expect(workloadOf(pod('rs-2-abcde', owned('ReplicaSet', 'rs-2'))).workloadType).toBe('replicaset');
  });

  it("is its CronJob's for a Job named with a timestamp, else the Job's", () => {
    const cron = workloadOf(pod('backup-28912345-x1', owned('Job', 'backup-28912345')));
    expect([cron.workloadName, cron.workloadType]).toEqual(['backup', 'cronjob']);
    const job = workloadOf(pod('migrate-x1', owned('Job', 'migrate')));
    expect([job.workloadName, job.workloadType]).toEqual(['migrate', 'job']);
  });

  it("is its DaemonSet's or StatefulSet's", () => {
    expect(workloadOf(pod('agent-x1', owned('DaemonSet', 'agent'))).workloadName).toBe('agent');
    expect(workloadOf(pod('db-0', owned('StatefulSet', 'db'))).workloadType).toBe('statefulset');
  });

  it("is the pod's own without a generated name, without a controller, or with owner references it cannot read", () => {
    expect(workloadOf(pod('solo', '')).workloadName).toBe('solo');
    expect(workloadOf(pod('named-by-hand', owned('ReplicaSet', 'web-1', ''), { 'pod-template-hash': '1' })).workloadName).toBe('named-by-hand');
    expect(workloadOf(pod('not-controller', 'generateName: x-\nownerReferences:\n  - { kind: ReplicaSet, name: rs, controller: false }')).workloadName).toBe('not-controller');
    expect(workloadOf(pod('odd', 'generateName: x-\nownerReferences: 5')).workloadName).toBe('odd');
    // A name that is not one Kubernetes writes never reaches a label or the baggage header.
    expect(workloadOf(pod('hostile', owned('DaemonSet', '"evil,k8s.namespace.name=kube-system"'))).workloadName).toBe('hostile');
    expect(workloadOf(pod('hostile-kind', owned('"Set; x"', 'agent'))).workloadName).toBe('hostile-kind');
  });
});

describe("a source workload's baggage", () => {
  it("names the workload under its kind, and its canonical service and revision from Istio's labels", () => {
    const workload = workloadOf(pod('web-7d4b9c-abcde', owned('ReplicaSet', 'web-7d4b9c'), { 'pod-template-hash': '7d4b9c', app: 'web-app', version: 'v2' }));
    expect(buildBaggage(workload)).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,service.name=web-app,service.version=v2');
    const canonical = workloadOf(pod('api-1', '', { 'service.istio.io/canonical-name': 'api', 'service.istio.io/canonical-revision': 'r7', app: 'ignored' }));
    expect(buildBaggage(canonical)).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=api-1,service.name=api,service.version=r7');
    expect(buildBaggage(workloadOf(pod('plain', '')))).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=plain,service.name=plain,service.version=latest');
  });
});

describe("a workload's canonical service, revision and cluster", () => {
  it("follow Istio's label precedence, an empty label value counting as unset", () => {
    const byAppKubernetes = workloadOf(pod('web-1', '', { 'app.kubernetes.io/name': 'shopfront', 'app.kubernetes.io/version': '3.1', app: 'ignored', version: 'ignored' }));
    expect([byAppKubernetes.canonicalService, byAppKubernetes.canonicalRevision]).toEqual(['shopfront', '3.1']);
    const empty = workloadOf(pod('web-2', '', { 'service.istio.io/canonical-name': '', app: 'web', version: '' }));
    expect([empty.canonicalService, empty.canonicalRevision]).toEqual(['web', 'latest']);
  });

  it("take the cluster from the MeshConfig's clusterId, Istio's default Kubernetes without one", () => {
    expect(workloadOf(pod('web-3', '')).cluster).toBe('Kubernetes');
    const mesh = 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec: { trustDomain: cluster.local, clusterId: east-1 }\n---\n';
    const workload = workloadOf(mesh + pod('web-4', ''));
    expect(workload.cluster).toBe('east-1');
    expect(buildBaggage(workload)).toMatch(/^k8s\.cluster\.name=east-1,/);
  });
});

describe("a workload's locality (ztunnel's *_region and *_zone labels, the baggage's cloud.* keys)", () => {
  const entry = (locality: string) => `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vm-1
  namespace: shop
  annotations: { ambit.dev/node: node-a }
spec: { address: 10.1.0.5, serviceAccount: vm, locality: "${locality}" }`;

  it("is a pod's istio-locality label (dots for slashes) or a WorkloadEntry's spec.locality, and travels in the baggage", () => {
    const labelled = workloadOf(pod('web-5', '', { 'istio-locality': 'us-east1.us-east1-b.rack7' }));
    expect([labelled.region, labelled.zone]).toEqual(['us-east1', 'us-east1-b']);
    expect(buildBaggage(labelled)).toBe('k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web-5,service.name=web-5,service.version=latest,cloud.region=us-east1,cloud.availability_zone=us-east1-b');
    const vm = workloadOf(entry('eu-west1/eu-west1-c/r2'));
    expect([vm.region, vm.zone]).toEqual(['eu-west1', 'eu-west1-c']);
    expect(parseBaggage(buildBaggage(vm))).toMatchObject({ workload: 'vm-1', region: 'eu-west1', zone: 'eu-west1-c' });
  });

  it('is unknown when not given, and a region alone leaves the zone unknown', () => {
    const plain = workloadOf(pod('web-6', ''));
    expect([plain.region, plain.zone]).toEqual(['', '']);
    expect(buildBaggage(plain)).not.toContain('cloud.');
    const deeper = workloadOf(entry('eu-west1/eu-west1-c/r2/shelf9'));
    expect([deeper.region, deeper.zone]).toEqual(['eu-west1', 'eu-west1-c']);
    const regionOnly = workloadOf(entry('ap-south1'));
    expect([regionOnly.region, regionOnly.zone]).toEqual(['ap-south1', '']);
    expect(buildBaggage(regionOnly)).toMatch(/,cloud\.region=ap-south1$/);
  });

  const node = (name: string, labels: Record<string, string>) => `apiVersion: v1
kind: Node
metadata:
  name: ${name}
  uid: 5b0e8a44-1c1f-4c3a-9d55-0f6f3c1b2a77
  resourceVersion: "81234"
  creationTimestamp: "2026-11-20T08:00:00Z"
  labels: { ${Object.entries(labels).map(([key, value]) => `${key}: "${value}"`).join(', ')} }
  annotations: { node.alpha.kubernetes.io/ttl: "0", volumes.kubernetes.io/controller-managed-attach-detach: "true" }
spec:
  podCIDR: 10.244.1.0/24
  providerID: gce://project/us-east1-b/${name}
  taints: [{ key: node-role.kubernetes.io/control-plane, effect: NoSchedule }]
status:
  addresses: [{ type: InternalIP, address: 10.128.0.4 }, { type: Hostname, address: ${name} }]
  capacity: { cpu: "2", memory: 8Gi }
  nodeInfo: { kubeletVersion: v1.33.1, osImage: Ubuntu }
---
`;

  it("is, for a pod without the label, its node's topology labels, as istiod gives ztunnel", () => {
    const zoned = workloadOf(node('node-a', { 'topology.kubernetes.io/region': 'us-east1', 'topology.kubernetes.io/zone': 'us-east1-b', 'kubernetes.io/hostname': 'node-a' }) + pod('web-7', ''));
    expect([zoned.region, zoned.zone]).toEqual(['us-east1', 'us-east1-b']);
    expect(buildBaggage(zoned)).toMatch(/,cloud\.region=us-east1,cloud\.availability_zone=us-east1-b$/);
    // Clusters from before Kubernetes 1.17 label nodes with the beta names.
    const beta = workloadOf(node('node-a', { 'failure-domain.beta.kubernetes.io/region': 'eu-west1', 'failure-domain.beta.kubernetes.io/zone': 'eu-west1-c' }) + pod('web-8', ''));
    expect([beta.region, beta.zone]).toEqual(['eu-west1', 'eu-west1-c']);
    // The pod's own label wins; another node's labels are not this pod's; a node without topology labels gives none.
    const labelled = workloadOf(node('node-a', { 'topology.kubernetes.io/region': 'us-east1' }) + pod('web-9', '', { 'istio-locality': 'ap-south1.ap-south1-a' }));
    expect([labelled.region, labelled.zone]).toEqual(['ap-south1', 'ap-south1-a']);
    const elsewhere = workloadOf(node('node-b', { 'topology.kubernetes.io/region': 'us-east1', 'topology.kubernetes.io/zone': 'us-east1-b' }) + pod('web-10', ''));
    expect([elsewhere.region, elsewhere.zone]).toEqual(['', '']);
    // An empty label is no label, as Istio's: the node's locality shows.
    const empty = workloadOf(node('node-a', { 'topology.kubernetes.io/region': 'us-east1', 'topology.kubernetes.io/zone': 'us-east1-c' }) + pod('web-12', '', { 'istio-locality': '' }));
    expect([empty.region, empty.zone]).toEqual(['us-east1', 'us-east1-c']);
    const bare = workloadOf(node('node-a', { 'kubernetes.io/hostname': 'node-a' }) + pod('web-11', ''));
    expect([bare.region, bare.zone]).toEqual(['', '']);
    // A WorkloadEntry has its own spec.locality; a node of the same name does not change it.
    const vm = workloadOf(node('node-a', { 'topology.kubernetes.io/region': 'us-east1' }) + entry('eu-west1/eu-west1-c'));
    expect([vm.region, vm.zone]).toEqual(['eu-west1', 'eu-west1-c']);
  });

  it('refuses a Node that is namespaced, of another apiVersion, or whose spec is not a mapping, naming the field', () => {
    const bad = (yaml: string) => buildSnapshot(parseConfigText(yaml, 'nodes.yaml'));
    expect(() => bad('apiVersion: v1\nkind: Node\nmetadata: { name: node-a, namespace: shop }\n')).toThrow(/metadata\.namespace.*cluster-scoped/);
    expect(() => bad('apiVersion: v2\nkind: Node\nmetadata: { name: node-a }\n')).toThrow(/use apiVersion v1/);
    expect(() => bad('apiVersion: v1\nkind: Node\nmetadata: { name: node-a }\nspec: [1]\n')).toThrow(/spec/);
    expect(() => bad('apiVersion: v1\nkind: Node\nmetadata: { name: node-a, labels: { "topology.kubernetes.io/zone": "a b" } }\n')).toThrow(/metadata\.labels/);
  });

  it('refuses a WorkloadEntry locality that is not region/zone/subzone tokens, naming the field', () => {
    for (const bad of ['us east', 'x,cloud.region=forged', 'eu-/zone', 'a/b/c/d e']) {
      expect(() => workloadOf(entry(bad)), bad).toThrow(/spec\.locality.*must be region\/zone\/subzone/);
    }
  });
});
