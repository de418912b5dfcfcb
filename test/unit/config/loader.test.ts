import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfigDir, parseConfigText } from '../../../src/config/loader.ts';
import type { ErrorCode } from '../../../src/errors.ts';
import { FIXTURES, configDir, configError, meshYaml, podYaml, removeConfigDirs, workloadEntryYaml } from './temp-config.ts';

afterEach(removeConfigDirs);

describe('loadConfigDir accepts', () => {
  it('a realistic multi-file directory with nested folders, .yml files and multi-document files', async () => {
    const snapshot = await loadConfigDir(join(FIXTURES, 'basic'), { requireMesh: true });
    const kinds = snapshot.objects.map((object) => `${object.kind} ${object.metadata.namespace}/${object.metadata.name} ${object.source.file}`);
    expect(kinds).toEqual([
      'MeshConfig /mesh mesh.yaml',
      'AuthorizationPolicy shop/cart-allow-web policies/allow-web.yaml',
      'Service shop/web services.yaml',
      'Pod shop/web-7d4b9c workloads/pods.yaml',
      'Pod shop/cart-5f6d8 workloads/pods.yaml',
      'Pod shop/web-2a8c1e workloads/pods.yaml',
      'WorkloadEntry data/orders-db workloads/vm.yml',
    ]);
    expect(snapshot.objects[4]?.source.line).toBe(25);
    expect(snapshot.mesh).toMatchObject({ trustDomain: 'cluster.local', egress: { mode: 'REGISTRY_ONLY' }, certificateTtlMs: 30 * 60_000 });
    expect(snapshot.mesh.federation).toEqual([
      {
        trustDomain: 'partner.example',
        bundleEndpoint: 'https://bundle.partner.example/',
        profile: 'https_spiffe',
        endpointSpiffeId: 'spiffe://partner.example/spire/server',
        bundleFile: 'bundles/partner.example.json',
      },
    ]);
  });

  it('ignores hidden files and files that are not YAML', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), '.draft.yaml': 'not: [valid', 'notes.txt': 'kind: Nonsense', '.git/x.yaml': 'kind: Nonsense' });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objects.map((object) => object.kind)).toEqual(['MeshConfig']);
  });

  it('reads objects in .json files, as `kubectl apply -f DIR` does, and leaves a trust bundle kept there alone', async () => {
    const deny = { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'deny-all', namespace: 'shop' }, spec: { action: 'DENY', rules: [{}] } };
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'policies/deny.json': JSON.stringify(deny, null, '\t'),
      'list.JSON': JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ ...deny, metadata: { name: 'deny-more', namespace: 'shop' } }] }),
      'bundles/partner.example.json': JSON.stringify({ keys: [], spiffe_refresh_hint: 300 }),
      // Other data: an array, a string, JSON with a comment (not JSON) naming no kind.
      'data/list.json': '[{"name": "x"}]',
      'data/text.json': '"just a string"',
      'data/commented.json': '{ // settings\n  "a": 1 }',
      // Not JSON but YAML's flow style, which kubectl reads as well: an object all the same.
      'policies/flow.json': '{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy,\n metadata: {name: deny-flow, namespace: shop}, spec: {action: DENY, rules: [{}]}}\n',
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objects.map((object) => `${object.kind} ${object.metadata.name} ${object.source.file}:${object.source.line}`)).toEqual([
      'AuthorizationPolicy deny-more list.JSON:1',
      'MeshConfig mesh mesh.yaml:1',
      'AuthorizationPolicy deny-all policies/deny.json:1',
      'AuthorizationPolicy deny-flow policies/flow.json:1',
    ]);
  });

  it('fills in the defaults: namespace, service account, mesh ports, egress and certificate lifetime', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml('example.org'), 'pod.yaml': podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' }) });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.mesh).toMatchObject({
      trustDomain: 'example.org',
      rootNamespace: 'istio-system',
      ports: { outbound: 15001, inboundPlaintext: 15006, hbone: 15008, metrics: 15020, readiness: 15021, admin: 15000 },
      egress: { mode: 'ALLOW_ANY' },
      federation: [],
      certificateTtl: '1h',
      certificateTtlMs: 3_600_000,
      nodeCertificateTtl: '24h',
      nodeCertificateTtlMs: 86_400_000,
      clusterId: 'Kubernetes',
    });
    expect(snapshot.workloads[0]).toMatchObject({ namespace: 'default', serviceAccount: 'default', identity: 'spiffe://example.org/ns/default/sa/default' });
  });

  it('reads pathNormalization as Istio writes it: DECODE_AND_MERGE_SLASHES decodes, DEFAULT, BASE and MERGE_SLASHES all merge', async () => {
    const normalizationOf = async (value: string | null) => {
      const dir = await configDir({ 'mesh.yaml': value === null ? meshYaml() : `${meshYaml()}  pathNormalization:\n    normalization: ${value}\n` });
      return (await loadConfigDir(dir)).mesh.pathNormalization;
    };
    expect(await normalizationOf(null)).toBe('MERGE_SLASHES');
    expect(await normalizationOf('DEFAULT')).toBe('MERGE_SLASHES');
    expect(await normalizationOf('BASE')).toBe('MERGE_SLASHES');
    expect(await normalizationOf('MERGE_SLASHES')).toBe('MERGE_SLASHES');
    expect(await normalizationOf('DECODE_AND_MERGE_SLASHES')).toBe('DECODE_AND_MERGE_SLASHES');
  });

  it('says, refusing an escaped slash under DECODE_AND_MERGE_SLASHES, the form to write, normalised as requests then are', async () => {
    const deny = (paths: string) => `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin, namespace: shop }\nspec:\n  action: DENY\n  rules:\n    - to: [{ operation: { paths: ${paths} } }]\n`;
    const mesh = `${meshYaml()}  pathNormalization:\n    normalization: DECODE_AND_MERGE_SLASHES\n`;
    const error = await configError(loadConfigDir(await configDir({ 'mesh.yaml': mesh, 'deny.yaml': deny('["/api/admin%2F*", "/public%2F..%2Fsecret", "/files/{*}/a%5Cb"]') })));
    expect(error.details.map((issue) => issue.message)).toEqual([
      expect.stringContaining('write "/api/admin/*"'),
      expect.stringContaining('write "/secret"'),
      expect.stringContaining('the segment "a%5Cb" matches no request'),
    ]);
  });

  it('takes a path rule with an escaped slash under the default normalisation, where requests keep theirs', async () => {
    const deny = 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin, namespace: shop }\nspec:\n  action: DENY\n  rules:\n    - to: [{ operation: { paths: ["/api/admin%2F*"] } }]\n';
    const snapshot = await loadConfigDir(await configDir({ 'mesh.yaml': meshYaml(), 'deny.yaml': deny }));
    expect(snapshot.objectsOfKind('AuthorizationPolicy')).toHaveLength(1);
  });

  it('reads the node certificate lifetime when given', async () => {
    const dir = await configDir({ 'mesh.yaml': `${meshYaml('example.org')}  nodeCertificateTtl: 12h\n` });
    expect((await loadConfigDir(dir)).mesh).toMatchObject({ nodeCertificateTtl: '12h', nodeCertificateTtlMs: 43_200_000 });
  });

  // Istio applies a host's most specific rule: a mesh-wide ISTIO_MUTUAL is overridden for an external host by its own.
  it('a mesh-wide ISTIO_MUTUAL DestinationRule (*) when the external host has its own rule, tls.mode DISABLE', async () => {
    const dir = await configDir({
      'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: api, namespace: shop }\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{ number: 443, name: tls, protocol: TLS }]\n',
      'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: all, namespace: istio-system }\nspec:\n  host: "*"\n  trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: api, namespace: shop }\nspec:\n  host: api.example.com\n  trafficPolicy: { tls: { mode: DISABLE } }\n',
    });
    expect((await loadConfigDir(dir)).objectsOfKind('DestinationRule')).toHaveLength(2);
  });

  it('uses the default trust domain when no MeshConfig exists and none was required', async () => {
    const dir = await configDir({ 'pod.yaml': podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1', serviceAccount: 'web' }) });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.meshObject).toBeUndefined();
    expect(snapshot.workloads[0]?.identity).toBe('spiffe://cluster.local/ns/default/sa/web');
  });

  it('keeps pods that are not mesh workloads (unscheduled, no IP yet, host network, finished) but leaves them out of workloads', async () => {
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'pending.yaml': podYaml({ name: 'pending', ip: '10.0.0.1' }),
      'no-ip.yaml': podYaml({ name: 'no-ip', node: 'node-a' }),
      'host.yaml': `${podYaml({ name: 'host', node: 'node-a', ip: '192.168.0.5' }).replace('spec:\n', 'spec:\n  hostNetwork: true\n')}`,
      'done.yaml': `${podYaml({ name: 'done', node: 'node-a', ip: '10.0.0.9' })}  phase: Succeeded\n`,
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objectsOfKind('Pod').map((pod) => pod.metadata.name).sort()).toEqual(['done', 'host', 'no-ip', 'pending']);
    expect(snapshot.workloads).toEqual([]);
  });

  it('reads the items of a v1 List, as `kubectl get -o yaml` writes them', async () => {
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'pods.yaml': `apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: { name: a, resourceVersion: "12", uid: 0d7c }
    spec: { nodeName: node-a, containers: [{ name: a, image: a }] }
    status: { podIP: 10.0.0.1, hostIP: 192.168.0.1, phase: Running }
  - apiVersion: v1
    kind: Pod
    metadata: { name: b }
    spec: { nodeName: node-b, containers: [{ name: b, image: b }] }
    status: { podIP: 10.0.0.2 }
`,
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.workloads.map((workload) => [workload.name, workload.source.line])).toEqual([
      ['a', 4],
      ['b', 9],
    ]);
  });

  it('reads a ConfigMap volume layout once: top-level links into the hidden ..data directory', async () => {
    const dir = await configDir({ '..2026_01_01/mesh.yaml': meshYaml(), '..2026_01_01/pod.yaml': podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' }) });
    await symlink('..2026_01_01', join(dir, '..data'));
    await symlink('..data/mesh.yaml', join(dir, 'mesh.yaml'));
    await symlink('..data/pod.yaml', join(dir, 'pod.yaml'));
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objects.map((object) => object.source.file)).toEqual(['mesh.yaml', 'pod.yaml']);
  });

  it('skips a link that leads back to a directory already read', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'sub/pod.yaml': podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' }) });
    await symlink('..', join(dir, 'sub', 'loop'));
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objects).toHaveLength(2);
  });

  it('accepts every supported apiVersion of the Istio kinds and keeps the not-yet-modelled specs as data', async () => {
    const opaque = (apiVersion: string, kind: string, name: string, spec: string) =>
      `apiVersion: ${apiVersion}\nkind: ${kind}\nmetadata: { name: ${name}, namespace: shop }\nspec: ${spec}\n---\n`;
    const dir = await configDir({
      'istio.yaml':
        opaque('networking.istio.io/v1beta1', 'DestinationRule', 'web', '{ host: web, trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }, subsets: [{ name: v1, labels: { version: v1 } }] }') +
        opaque('networking.istio.io/v1alpha3', 'VirtualService', 'web', '{ hosts: [web], http: [{ route: [{ destination: { host: web } }] }] }') +
        opaque('security.istio.io/v1beta1', 'PeerAuthentication', 'strict', '{ mtls: { mode: STRICT } }') +
        opaque('networking.istio.io/v1', 'ServiceEntry', 'payments', '{ hosts: [api.payments.example], ports: [{ number: 443, name: https, protocol: TLS }], resolution: DNS, location: MESH_EXTERNAL }'),
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objectsOfKind('DestinationRule')[0]?.spec).toEqual({ host: 'web', trafficPolicy: { tls: { mode: 'ISTIO_MUTUAL' } }, subsets: [{ name: 'v1', labels: { version: 'v1' } }] });
    expect(snapshot.objectsOfKind('PeerAuthentication')[0]?.spec).toEqual({ mtls: 'STRICT', portLevelMtls: new Map() });
    expect(snapshot.objectsOfKind('ServiceEntry')[0]?.spec).toMatchObject({ hosts: ['api.payments.example'], resolution: 'DNS', ports: [{ number: 443, protocol: 'TLS' }] });
  });
});

interface RejectCase {
  name: string;
  files: Record<string, string>;
  code: ErrorCode;
  /** What the first problem's message must name: file (with line when given), object and field. */
  file: string;
  line?: number;
  object?: string;
  field?: string;
  requireMesh?: boolean;
}

const pod = (fields: Parameters<typeof podYaml>[0]) => podYaml({ node: 'node-a', ip: '10.0.0.1', ...fields });

const rejectCases: RejectCase[] = [
  {
    name: 'a merge key whose value is not a mapping, at its own line (the parser says no place)',
    files: { 'merge.yaml': 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: a, namespace: demo }\nspec:\n  <<: 5\n  action: DENY\n' },
    code: 'CONFIG_YAML',
    file: 'merge.yaml',
    line: 5,
  },
  {
    name: 'a .json file holding a list of policies (kubectl refuses it too): its DENY was skipped without a word',
    files: { 'deny.json': '[\n  {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "x", "namespace": "shop"}, "spec": {"action": "DENY", "rules": [{}]}}\n]\n' },
    code: 'CONFIG_FIELD',
    file: 'deny.json',
    line: 1,
  },
  {
    name: 'a .json file with a mistake in it that names a kind unquoted (it was skipped unless it named both keys in quotes)',
    files: { 'deny.json': '{kind: AuthorizationPolicy, apiVersion: security.istio.io/v1, metadata: {name: x, namespace: shop}, spec: {action: DENY, rules: [{}]},}}\n' },
    code: 'CONFIG_YAML',
    file: 'deny.json',
  },
  {
    name: 'a .json file that is not JSON, with its line',
    files: { 'deny.json': '{\n  "apiVersion": "security.istio.io/v1",\n  "kind": "AuthorizationPolicy",\n  "metadata": { "name": "x", "namespace": "shop" ],\n}\n' },
    code: 'CONFIG_YAML',
    file: 'deny.json',
    line: 4,
  },
  {
    name: 'a DestinationRule asking for TLS origination (ambit would send that traffic in plaintext)',
    files: { 'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: api, namespace: shop }\nspec:\n  host: api.example.com\n  trafficPolicy:\n    portLevelSettings:\n      - port: { number: 8080 }\n        tls: { mode: SIMPLE }\n' },
    code: 'CONFIG_FIELD',
    file: 'dr.yaml',
    object: 'DestinationRule shop/api',
    field: 'spec.trafficPolicy.portLevelSettings[0].tls.mode',
  },
  {
    name: 'a DestinationRule asking ISTIO_MUTUAL of a host declared outside the mesh (ambit reaches it as it is: in plaintext)',
    files: {
      'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: db, namespace: shop }\nspec:\n  hosts: [db.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]\n',
      'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: db, namespace: shop }\nspec:\n  host: db.example.com\n  subsets:\n    - name: primary\n      trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }\n',
    },
    code: 'CONFIG_FIELD',
    file: 'dr.yaml',
    object: 'DestinationRule shop/db',
    field: 'spec.subsets[0].trafficPolicy.tls.mode',
  },
  {
    name: 'a DestinationRule for every host (*) asking ISTIO_MUTUAL, a MESH_EXTERNAL entry declared',
    files: {
      'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: api, namespace: shop }\nspec:\n  hosts: [api.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{ number: 443, name: tls, protocol: TLS }]\n',
      'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: all, namespace: istio-system }\nspec:\n  host: "*"\n  trafficPolicy: { tls: { mode: ISTIO_MUTUAL } }\n',
    },
    code: 'CONFIG_FIELD',
    file: 'dr.yaml',
    object: 'DestinationRule istio-system/all',
    field: 'spec.trafficPolicy.tls.mode',
  },
  {
    name: 'a DNS ServiceEntry with a CIDR block among its addresses (Istio refuses it: a block has no name to resolve)',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: block, namespace: shop }\nspec:\n  hosts: [block.example.com]\n  addresses: [10.9.0.0/24]\n  resolution: DNS\n  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry shop/block',
    field: 'spec.addresses[0]',
  },
  {
    name: 'a ServiceEntry resolving several hosts behind a plain TCP port (a connection cannot say which it is for)',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: two-dbs, namespace: shop }\nspec:\n  hosts: [a.db.example.com, b.db.example.com]\n  resolution: DNS\n  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry shop/two-dbs',
    field: 'spec.hosts',
  },
  {
    name: 'a ServiceEntry endpoint port named after no port of the entry',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: misnamed, namespace: shop }\nspec:\n  hosts: [pg.example.com]\n  resolution: STATIC\n  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]\n  endpoints: [{ address: 10.9.0.7, ports: { tcp-pgsql: 6432 } }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry shop/misnamed',
    field: 'spec.endpoints[0].ports["tcp-pgsql"]',
  },
  {
    name: 'a ServiceEntry with endpoints and resolution NONE (they would be ignored)',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: pinned, namespace: shop }\nspec:\n  hosts: [pinned.example.com]\n  resolution: NONE\n  ports: [{ number: 80, name: http, protocol: HTTP }]\n  endpoints: [{ address: 10.9.0.7 }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry shop/pinned',
    field: 'spec.endpoints',
  },
  {
    name: 'a misspelt DestinationRule field, with the field it likely means',
    files: { 'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: web, namespace: shop }\nspec:\n  host: web\n  subsetz: [{ name: v1 }]\n' },
    code: 'CONFIG_FIELD',
    file: 'dr.yaml',
    object: 'DestinationRule shop/web',
    field: 'spec.subsetz',
  },
  {
    name: 'a misspelt VirtualService field',
    files: { 'vs.yaml': 'apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: web, namespace: shop }\nspec:\n  hosts: [web]\n  htttp: []\n' },
    code: 'CONFIG_FIELD',
    file: 'vs.yaml',
    object: 'VirtualService shop/web',
    field: 'spec.htttp',
  },
  {
    name: "a DestinationRule subset's MUTUAL TLS",
    files: { 'dr.yaml': 'apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: db, namespace: shop }\nspec:\n  host: db.example.com\n  subsets:\n    - name: v1\n      trafficPolicy: { tls: { mode: MUTUAL } }\n' },
    code: 'CONFIG_FIELD',
    file: 'dr.yaml',
    object: 'DestinationRule shop/db',
    field: 'spec.subsets[0].trafficPolicy.tls.mode',
  },
  {
    name: 'a file that is not valid YAML, with the line of the problem',
    files: { 'bad.yaml': 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n' },
    code: 'CONFIG_YAML',
    file: 'bad.yaml',
    line: 5,
  },
  {
    name: 'a key written twice in one mapping',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('spec:\n', 'spec:\n  nodeName: node-b\n') },
    code: 'CONFIG_YAML',
    file: 'pod.yaml',
    line: 7,
  },
  {
    name: 'a key written again through an alias (&k nodeName, then *k), which would override the first silently',
    files: { 'pod.yaml': 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  &k nodeName: node-a\n  *k : node-b\n  containers:\n    - name: app\n      image: app:1\nstatus:\n  podIP: "10.0.0.1"\n' },
    code: 'CONFIG_YAML',
    file: 'pod.yaml',
  },
  {
    name: 'a key written twice as different YAML scalars that become the same object key (1 and "1")',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('metadata:\n', 'metadata:\n  labels:\n    1: one\n    "1": also-one\n') },
    code: 'CONFIG_YAML',
    file: 'pod.yaml',
    line: 6,
  },
  {
    name: 'a kind ambit does not read',
    files: { 'deploy.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec: {}\n' },
    code: 'CONFIG_UNKNOWN_KIND',
    file: 'deploy.yaml',
    line: 2,
    object: 'Deployment default/web',
    field: 'kind',
  },
  {
    name: 'a known kind under an apiVersion ambit does not read',
    files: { 'policy.yaml': 'apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny\nspec: {}\n' },
    code: 'CONFIG_UNKNOWN_KIND',
    file: 'policy.yaml',
    object: 'AuthorizationPolicy default/deny',
    field: 'apiVersion',
  },
  {
    name: 'a misspelt field in a Pod spec',
    files: { 'pod.yaml': pod({ name: 'web', namespace: 'shop' }).replace('spec:\n', 'spec:\n  serviceAcountName: web\n') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    line: 7,
    object: 'Pod shop/web',
    field: 'spec.serviceAcountName',
  },
  {
    name: 'a misspelt top-level field',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('spec:', 'sepc:') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/web',
    field: 'sepc',
  },
  {
    name: 'a misspelt metadata field (the object would silently land in another namespace)',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('  name: web\n', '  name: web\n  namepsace: shop\n') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/web',
    field: 'metadata.namepsace',
  },
  {
    name: 'a Service port out of range',
    files: {
      'svc.yaml': `apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
    - name: http
      port: 80
    - name: admin
      port: 70000
`,
    },
    code: 'CONFIG_FIELD',
    file: 'svc.yaml',
    line: 10,
    object: 'Service default/web',
    field: 'spec.ports[1].port',
  },
  {
    name: 'a container port out of range',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('      image: app:1\n', '      image: app:1\n      ports:\n        - containerPort: 0\n') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/web',
    field: 'spec.containers[0].ports[0].containerPort',
  },
  {
    name: 'a pod IP that is not an IP address',
    files: { 'pod.yaml': pod({ name: 'web', ip: '10.0.0.256' }) },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/web',
    field: 'status.podIP',
  },
  {
    name: 'an IPv6 pod IP with a zone',
    files: { 'pod.yaml': pod({ name: 'web', ip: 'fe80::1%eth0' }) },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    field: 'status.podIP',
  },
  {
    name: 'podIPs that do not start with podIP',
    files: { 'pod.yaml': `${pod({ name: 'web' })}  podIPs:\n    - ip: 10.0.0.2\n` },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    field: 'status.podIPs[0].ip',
  },
  {
    name: 'a WorkloadEntry address that is not an IP address',
    files: { 'vm.yaml': workloadEntryYaml('db', 'db.internal', 'vm-1') },
    code: 'CONFIG_FIELD',
    file: 'vm.yaml',
    object: 'WorkloadEntry default/db',
    field: 'spec.address',
  },
  {
    name: 'a WorkloadEntry without the node annotation',
    files: { 'vm.yaml': workloadEntryYaml('db', '192.168.1.5', 'vm-1').replace('  annotations:\n    ambit.dev/node: vm-1\n', '') },
    code: 'CONFIG_FIELD',
    file: 'vm.yaml',
    object: 'WorkloadEntry default/db',
    field: 'metadata.annotations["ambit.dev/node"]',
  },
  {
    name: 'an object without a name',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('  name: web\n', '  labels: {}\n') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/?',
    field: 'metadata.name',
  },
  {
    name: 'a name that is not a DNS-1123 name',
    files: { 'pod.yaml': pod({ name: 'Web_1' }) },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    object: 'Pod default/Web_1',
    field: 'metadata.name',
  },
  {
    name: 'a service account that is not a DNS-1123 name (it becomes a SPIFFE ID path segment)',
    files: { 'pod.yaml': pod({ name: 'web', serviceAccount: 'a/b' }) },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    field: 'spec.serviceAccountName',
  },
  {
    name: 'a label value that is not a string',
    files: { 'pod.yaml': pod({ name: 'web' }).replace('  name: web\n', '  name: web\n  labels:\n    version: 2\n') },
    code: 'CONFIG_FIELD',
    file: 'pod.yaml',
    field: 'metadata.labels.version',
  },
  {
    name: 'the same object in two files',
    files: { 'a.yaml': pod({ name: 'web', ip: '10.0.0.1' }), 'b.yaml': pod({ name: 'web', ip: '10.0.0.2' }) },
    code: 'CONFIG_DUPLICATE',
    file: 'b.yaml',
    line: 1,
    object: 'Pod default/web',
  },
  {
    name: 'one IP for two workloads',
    files: { 'pods.yaml': pod({ name: 'web', ip: '10.0.0.7' }), 'vm.yaml': workloadEntryYaml('db', '10.0.0.7', 'vm-1') },
    code: 'CONFIG_CONFLICT',
    file: 'vm.yaml',
    object: 'WorkloadEntry default/db',
    field: 'spec.address',
  },
  {
    name: 'one IP for two workloads spelt differently',
    files: { 'a.yaml': pod({ name: 'a', ip: 'fd00::7' }), 'b.yaml': pod({ name: 'b', ip: 'FD00:0:0::7' }) },
    code: 'CONFIG_CONFLICT',
    file: 'b.yaml',
    object: 'Pod default/b',
    field: 'status.podIP',
  },
  {
    name: 'one cluster IP for two Services',
    files: {
      'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: a }\nspec: { clusterIP: 10.96.0.1 }\n---\napiVersion: v1\nkind: Service\nmetadata: { name: b }\nspec: { clusterIP: 10.96.0.1 }\n',
    },
    code: 'CONFIG_CONFLICT',
    file: 'svc.yaml',
    line: 6,
    object: 'Service default/b',
    field: 'spec.clusterIP',
  },
  {
    name: "a Service's cluster IP that is a workload's IP (connections to the workload would go to the Service)",
    files: { 'pods.yaml': pod({ name: 'web', ip: '10.0.0.7' }), 'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: a }\nspec: { clusterIP: 10.0.0.7 }\n' },
    code: 'CONFIG_CONFLICT',
    file: 'svc.yaml',
    object: 'Service default/a',
    field: 'spec.clusterIP',
  },
  {
    name: 'two MeshConfigs',
    files: { 'mesh.yaml': meshYaml('one.example'), 'z-mesh.yaml': meshYaml('two.example', 'other') },
    code: 'CONFIG_CONFLICT',
    file: 'z-mesh.yaml',
    object: 'MeshConfig other',
  },
  {
    name: 'no MeshConfig when one is required',
    files: { 'pod.yaml': pod({ name: 'web' }) },
    code: 'CONFIG_MESH_MISSING',
    file: '',
    requireMesh: true,
  },
  {
    name: 'a trust domain with uppercase letters',
    files: { 'mesh.yaml': meshYaml('Cluster.Local') },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    line: 6,
    object: 'MeshConfig mesh',
    field: 'spec.trustDomain',
  },
  {
    name: 'a trust domain longer than 255 bytes',
    files: { 'mesh.yaml': meshYaml(`${'a'.repeat(250)}.example`) },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.trustDomain',
  },
  {
    name: 'a MeshConfig without a trust domain',
    files: { 'mesh.yaml': meshYaml().replace('  trustDomain: cluster.local\n', '  rootNamespace: mesh\n') },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.trustDomain',
  },
  {
    name: 'a namespace on the cluster-scoped MeshConfig',
    files: { 'mesh.yaml': meshYaml().replace('  name: mesh\n', '  name: mesh\n  namespace: istio-system\n') },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'metadata.namespace',
  },
  {
    name: 'a certificate lifetime that is not a duration',
    files: { 'mesh.yaml': `${meshYaml()}  certificateTtl: 1 hour\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.certificateTtl',
  },
  {
    name: 'a node certificate lifetime that is not a duration',
    files: { 'mesh.yaml': `${meshYaml()}  nodeCertificateTtl: a day\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.nodeCertificateTtl',
  },
  {
    name: 'a cluster ID that would not be one token in a label value or the baggage header',
    files: { 'mesh.yaml': `${meshYaml()}  clusterId: "east,k8s.namespace.name=kube-system"\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.clusterId',
  },
  {
    name: 'a ServiceEntry host of "*" alone, which would open egress to every name',
    files: { 'mesh.yaml': meshYaml(), 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: all, namespace: default }\nspec:\n  hosts: ["*"]\n  ports: [{ number: 443, name: https }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    field: 'spec.hosts[0]',
  },
  {
    name: 'two mesh listeners on one port',
    files: { 'mesh.yaml': `${meshYaml()}  ports:\n    metrics: 15008\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.ports.metrics',
  },
  {
    name: 'pathNormalization NONE, under which rules would be dodged by /./admin',
    files: { 'mesh.yaml': `${meshYaml()}  pathNormalization:\n    normalization: NONE\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.pathNormalization.normalization',
  },
  {
    name: 'an unknown pathNormalization',
    files: { 'mesh.yaml': `${meshYaml()}  pathNormalization:\n    normalization: DECODE_SLASHES\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.pathNormalization.normalization',
  },
  {
    name: 'under DECODE_AND_MERGE_SLASHES, a DENY path with an escaped slash, which no request path then holds',
    files: {
      'mesh.yaml': `${meshYaml()}  pathNormalization:\n    normalization: DECODE_AND_MERGE_SLASHES\n`,
      'deny.yaml': 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin, namespace: shop }\nspec:\n  action: DENY\n  rules:\n    - to: [{ operation: { paths: ["/public/*"] } }, { operation: { notPaths: ["/api/admin%2F*"] } }]\n',
    },
    code: 'CONFIG_FIELD',
    file: 'deny.yaml',
    object: 'AuthorizationPolicy shop/no-admin',
    field: 'spec.rules[0].to[1].operation.notPaths[0]',
  },
  {
    name: 'under DECODE_AND_MERGE_SLASHES, a when on request.headers[:path] with an escaped slash before its query',
    files: {
      'mesh.yaml': `${meshYaml()}  pathNormalization:\n    normalization: DECODE_AND_MERGE_SLASHES\n`,
      'deny.yaml': 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin, namespace: shop }\nspec:\n  action: DENY\n  rules:\n    - when: [{ key: "request.headers[:path]", values: ["/x?q=%2F"] }, { key: "request.headers[:path]", notValues: ["/admin%5C*"] }]\n',
    },
    code: 'CONFIG_FIELD',
    file: 'deny.yaml',
    object: 'AuthorizationPolicy shop/no-admin',
    field: 'spec.rules[0].when[1].notValues[0]',
  },
  {
    name: 'an unknown egress mode',
    files: { 'mesh.yaml': `${meshYaml()}  egress:\n    mode: DENY_ALL\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.egress.mode',
  },
  {
    name: 'an https_spiffe federation peer without the endpoint SPIFFE ID',
    files: { 'mesh.yaml': `${meshYaml()}  federation:\n    - trustDomain: partner.example\n      bundleEndpoint: https://partner.example/bundle\n      profile: https_spiffe\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    line: 8,
    field: 'spec.federation[0].endpointSpiffeId',
  },
  {
    name: 'a federation bundle endpoint that is not https',
    files: { 'mesh.yaml': `${meshYaml()}  federation:\n    - trustDomain: partner.example\n      bundleEndpoint: http://partner.example/bundle\n      profile: https_web\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.federation[0].bundleEndpoint',
  },
  {
    name: 'a federation peer without a profile (SPIFFE never infers it)',
    files: { 'mesh.yaml': `${meshYaml()}  federation:\n    - trustDomain: partner.example\n      bundleEndpoint: https://partner.example/bundle\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.federation[0].profile',
  },
  {
    name: 'federating with the mesh\'s own trust domain',
    files: { 'mesh.yaml': `${meshYaml()}  federation:\n    - trustDomain: cluster.local\n      bundleEndpoint: https://x.example/\n      profile: https_web\n` },
    code: 'CONFIG_FIELD',
    file: 'mesh.yaml',
    field: 'spec.federation[0].trustDomain',
  },
  {
    name: 'an AuthorizationPolicy whose spec is not a mapping',
    files: { 'policy.yaml': 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow\n  namespace: shop\nspec:\n  - action: ALLOW\n' },
    code: 'CONFIG_FIELD',
    file: 'policy.yaml',
    line: 6,
    object: 'AuthorizationPolicy shop/allow',
    field: 'spec',
  },
  {
    name: 'a DNS ServiceEntry endpoint that is a wildcard (an endpoint is one destination)',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: ext }\nspec:\n  hosts: [db.example]\n  ports: [{ number: 5432, name: tcp }]\n  resolution: DNS\n  endpoints: [{ address: db-1.example.net }, { address: "*.example.net" }]\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry default/ext',
    field: 'spec.endpoints[1].address',
  },
  {
    name: 'a ServiceEntry without hosts',
    files: { 'se.yaml': 'apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: ext }\nspec: { ports: [{ number: 443, name: tls }] }\n' },
    code: 'CONFIG_FIELD',
    file: 'se.yaml',
    object: 'ServiceEntry default/ext',
    field: 'spec.hosts',
  },
  {
    // Of several PeerAuthentications at one level the oldest applies: a time that does not parse cannot be ordered.
    name: "a PeerAuthentication's creationTimestamp that is not an RFC 3339 time",
    files: { 'pa.yaml': 'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: default, namespace: istio-system, creationTimestamp: "yesterday" }\nspec: { mtls: { mode: STRICT } }\n' },
    code: 'CONFIG_FIELD',
    file: 'pa.yaml',
    object: 'PeerAuthentication istio-system/default',
    field: 'metadata.creationTimestamp',
  },
  {
    name: 'a document that is not a mapping',
    files: { 'list.yaml': '- apiVersion: v1\n  kind: Pod\n' },
    code: 'CONFIG_FIELD',
    file: 'list.yaml',
    line: 1,
  },
];

describe('loadConfigDir rejects', () => {
  it.each(rejectCases)('$name', async (testCase) => {
    const dir = await configDir(testCase.files);
    const error = await configError(loadConfigDir(dir, { requireMesh: testCase.requireMesh ?? false }));
    expect(error.code).toBe(testCase.code);
    const first = error.details[0];
    expect(first?.code).toBe(testCase.code);
    // The contract: the message names file (and line), object and field path.
    const place = testCase.line === undefined ? testCase.file : `${testCase.file}:${testCase.line}:`;
    expect(error.message).toContain(place);
    if (testCase.line !== undefined) expect(first?.line).toBe(testCase.line);
    if (testCase.object !== undefined) expect(error.message).toContain(testCase.object);
    if (testCase.field !== undefined) expect(error.message).toContain(`: ${testCase.field}: `);
  });

  it("refuses a Pod's labels given as a YAML-tagged ordered map (!!omap), which read as no labels at all", () => {
    const text = `apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: !!omap
  - app: web
spec: { nodeName: node-a }
status: { podIP: 10.0.0.9, phase: Running }
`;
    expect(() => parseConfigText(text, 'pods.yaml')).toThrow(/pods\.yaml:6: Pod shop\/web-1: metadata\.labels: .*YAML-tagged Map/);
  });

  it('lists the first 100 problems of an object and sums up the rest (a flood of unknown keys is not reported one by one)', () => {
    const keys = Array.from({ length: 5_000 }, (_, i) => `  unknown${i}: x`).join('\n');
    const text = `apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n${keys}\nspec: { nodeName: node-a }\n`;
    let details: readonly { message: string; field?: string }[] = [];
    try {
      parseConfigText(text, 'pods.yaml');
    } catch (error) {
      details = (error as { details: readonly { message: string; field?: string }[] }).details;
    }
    expect(details).toHaveLength(101);
    expect(details.filter((issue) => issue.message.includes('4900 more problems in this object'))).toHaveLength(1);
    expect(details.filter((issue) => issue.field?.startsWith('metadata.unknown'))).toHaveLength(100);
  });

  it("reads a Pod's node addresses (status.hostIP and hostIPs, canonical, once each) and refuses one that is not an address", () => {
    const pod = (status: string) => `apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: shop }\nspec: { nodeName: node-a }\nstatus: ${status}\n`;
    const [object] = parseConfigText(pod('{ podIP: 10.0.0.9, hostIP: 192.0.2.1, hostIPs: [{ ip: 192.0.2.1 }, { ip: "2001:DB8::1" }] }'), 'pods.yaml');
    expect(object?.kind === 'Pod' ? object.status.hostIPs : undefined).toEqual(['192.0.2.1', '2001:db8::1']);
    expect(() => parseConfigText(pod('{ podIP: 10.0.0.9, hostIPs: [{ ip: node-a }] }'), 'pods.yaml')).toThrow(/status\.hostIPs\[0\]\.ip/);
  });

  it('refuses a file that is not UTF-8, naming it, rather than read a Latin-1 byte as U+FFFD (a path that validates and never matches)', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml() });
    const policy = 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-cafe, namespace: shop }\nspec:\n  action: DENY\n  rules: [{ to: [{ operation: { paths: ["/caf\u00e9/*"] } }] }]\n';
    await writeFile(join(dir, 'latin1.yaml'), Buffer.from(policy, 'latin1'));
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('FILE_READ');
    expect(error.message).toContain('latin1.yaml');
    expect(error.message).toContain('not UTF-8');
    // In UTF-8, with a byte-order mark: read, and its text kept as written (a path is written with é's UTF-8 escapes,
    // as requests carry it; an annotation keeps the character).
    const utf8 = policy.replace('/caf\u00e9/*', '/caf%C3%A9/*').replace('namespace: shop }', 'namespace: shop, annotations: { note: "caf\u00e9" } }');
    await writeFile(join(dir, 'latin1.yaml'), Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(utf8, 'utf8')]));
    const snapshot = await loadConfigDir(dir);
    const kept = JSON.stringify(snapshot.objects.find((object) => object.kind === 'AuthorizationPolicy'));
    expect(kept).toContain('"caf\u00e9"');
    expect(kept).toContain('/caf%C3%A9/*');
  });

  it('refuses nesting deeper than the parser goes with an error naming the file, not a crash', () => {
    expect(() => parseConfigText('a: ' + '['.repeat(100_000), 'deep.yaml')).toThrow(/deep\.yaml/);
  });

  it('reports a required MeshConfig refused for its own field as that problem alone, not also as missing', async () => {
    const dir = await configDir({ 'mesh.yaml': `${meshYaml()}  profil: x\n` });
    const error = await configError(loadConfigDir(dir, { requireMesh: true }));
    expect(error.message).toContain('spec.profil');
    expect(error.message).not.toContain('no MeshConfig');
  });

  it('names both files of a duplicate', async () => {
    const dir = await configDir({ 'a.yaml': pod({ name: 'web', ip: '10.0.0.1' }), 'sub/b.yaml': pod({ name: 'web', ip: '10.0.0.2' }) });
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('CONFIG_DUPLICATE');
    expect(error.message).toContain('sub/b.yaml:1');
    expect(error.message).toContain('a.yaml:1');
  });

  it('names both workloads and both files of an IP conflict', async () => {
    const dir = await configDir({ 'pods.yaml': pod({ name: 'web', ip: '10.0.0.7' }), 'vm.yaml': workloadEntryYaml('db', '10.0.0.7', 'vm-1') });
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('CONFIG_CONFLICT');
    expect(error.message).toContain('vm.yaml');
    expect(error.message).toContain('WorkloadEntry default/db');
    expect(error.message).toContain('pods.yaml');
    expect(error.message).toContain('Pod default/web');
  });

  it('reports every problem in the directory at once, coded by the first', async () => {
    const dir = await configDir({
      'a.yaml': pod({ name: 'web', ip: 'nope' }),
      'b.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: x }\n',
      'c.yaml': 'key: [unclosed\n',
      'd.yaml': pod({ name: 'web', ip: '10.0.0.1' }),
    });
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('CONFIG_FIELD');
    expect(error.details.map((issue) => [issue.file, issue.code])).toEqual([
      ['a.yaml', 'CONFIG_FIELD'],
      ['b.yaml', 'CONFIG_UNKNOWN_KIND'],
      ['c.yaml', 'CONFIG_YAML'],
    ]);
  });

  it('reports several problems of one object, each with its own field path', async () => {
    const dir = await configDir({ 'pod.yaml': pod({ name: 'web', ip: '300.0.0.1' }).replace('spec:\n', 'spec:\n  nodName: x\n') });
    const error = await configError(loadConfigDir(dir));
    expect(error.details.map((issue) => issue.field)).toEqual(['spec.nodName', 'status.podIP']);
  });

  it('refuses a directory that does not exist', async () => {
    const dir = await configDir({});
    const error = await configError(loadConfigDir(join(dir, 'missing')));
    expect(error.code).toBe('FILE_READ');
    expect(error.message).toContain('missing');
  });

  it('refuses a broken link to a YAML file rather than skipping it', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml() });
    await symlink('gone.yaml', join(dir, 'pods.yaml'));
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('FILE_READ');
    expect(error.message).toContain('pods.yaml');
  });

  it("skips the lost+found directory at the root of a volume (root's alone, unreadable to a non-root proxy), and no other", async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'lost+found/#1234': 'not: [yaml', 'lost+found/recovered.yaml': 'not: [yaml', 'sub/lost+found/pod.yaml': pod({ name: 'web', ip: '10.0.0.1' }) });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.workloadByIp('10.0.0.1')?.name).toBe('web');
  });

  // Root reads everything, so this cannot be arranged when the tests run as root.
  it.skipIf(process.getuid?.() === 0)('refuses a subdirectory it cannot read', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml() });
    await mkdir(join(dir, 'locked'), { mode: 0o000 });
    const error = await configError(loadConfigDir(dir));
    expect(error.code).toBe('FILE_READ');
    expect(error.message).toContain('locked');
  });
});

describe('parseConfigText', () => {
  it('refuses a file of more than 1,500,000 lines and list items before parsing it, naming it (32 MiB of `---` exhausted the heap)', () => {
    expect(() => parseConfigText('---\n'.repeat(1_500_001), 'dashes.yaml')).toThrow(/dashes\.yaml: more than 1500000 lines and list items: split it into several files/);
    // A flow list on one line counts its items.
    expect(() => parseConfigText(`x: [${'a,'.repeat(1_500_001)}a]\n`, 'flow.yaml')).toThrow(/flow\.yaml: more than 1500000 lines and list items/);
    // Below the limit it is parsed as usual.
    expect(parseConfigText(`${meshYaml()}${'\n'.repeat(1_000_000)}`, 'padded.yaml').map((object) => object.kind)).toEqual(['MeshConfig']);
  });

  it('refuses a file whose aliases repeat a long list past 1,500,000 values, naming it and its line (counted before, it took 17 s and 2 GB)', () => {
    const policy = (aliases: number) => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: fan, namespace: shop }
spec:
  rules:
  - from: [{ source: { principals: &all [${Array.from({ length: 20_000 }, (_, i) => `"cluster.local/ns/n${i}/sa/s"`).join(',')}] } }]
${'  - from: [{ source: { principals: *all } }]\n'.repeat(aliases)}`;
    expect(() => parseConfigText(policy(99), 'fan.yaml')).toThrow(/fan\.yaml:1: its aliases expand it to more than 1500000 values/);
    // Counted over the file: two documents of 1,000,000 each, not each on its own.
    expect(() => parseConfigText(`${policy(49)}---\n${policy(49)}`, 'two.yaml')).toThrow(/two\.yaml:57: its aliases expand it to more than 1500000 values \(this document and those before it\)/);
    expect(parseConfigText(policy(49), 'one.yaml').map((object) => object.kind)).toEqual(['AuthorizationPolicy']);
    // A few aliases of it are read as written out.
    expect(parseConfigText(policy(3), 'fan.yaml').map((object) => object.kind)).toEqual(['AuthorizationPolicy']);
  });

  it('returns the objects of one text, with the given file as their source', () => {
    const objects = parseConfigText(`${meshYaml()}---\n${podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' })}`, 'inline.yaml');
    expect(objects.map((object) => [object.kind, object.source.file, object.source.line])).toEqual([
      ['MeshConfig', 'inline.yaml', 1],
      ['Pod', 'inline.yaml', 8],
    ]);
  });

  it('throws a coded error naming the file, line, object and field', () => {
    let caught: unknown;
    try {
      parseConfigText(podYaml({ name: 'web', node: 'node-a', ip: '10.0.0.1' }).replace('spec:\n', 'spec:\n  hostNetwork: "yes"\n'), 'inline.yaml');
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({ code: 'CONFIG_FIELD' });
    expect((caught as Error).message).toContain('inline.yaml:6: Pod default/web: spec.hostNetwork: ');
  });

  it('reads merge keys (`<<: *base`) as kubectl does, the mapping\'s own keys winning, and still refuses a repeated key', () => {
    const text = `apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels:
    <<: [&common { app: web, team: store }, { tier: front }]
    team: checkout
spec: { nodeName: node-a }
status: { podIP: 10.0.0.9, phase: Running }
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  annotations: &notes { team: store }
  labels: { <<: *notes, app: web }
spec: { nodeName: node-a }
status: { podIP: 10.0.0.10, phase: Running }
`;
    const [first, second] = parseConfigText(text, 'merge.yaml');
    expect(first?.metadata.labels).toEqual({ app: 'web', team: 'checkout', tier: 'front' });
    expect(second?.metadata.labels).toEqual({ app: 'web', team: 'store' });
    expect(() => parseConfigText(text.replace('    team: checkout\n', '    team: checkout\n    team: other\n'), 'merge.yaml')).toThrow(/key "team" appears more than once/);
  });

  it('ignores empty documents and comments', () => {
    expect(parseConfigText('# nothing here\n---\n---\n', 'empty.yaml')).toEqual([]);
  });

  it('refuses an alias that refers to a node containing it, naming the file', () => {
    let caught: unknown;
    try {
      parseConfigText('apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: loop }\nspec: &a { host: x, self: *a }\n', 'loop.yaml');
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({ code: 'CONFIG_YAML' });
    expect((caught as Error).message).toContain('loop.yaml');
  });

  it('bounds alias expansion', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'];
    for (let level = 1; level < 8; level++) bomb.push(`${String.fromCharCode(97 + level)}: &${String.fromCharCode(97 + level)} [${Array(10).fill(`*${String.fromCharCode(96 + level)}`).join(',')}]`);
    let caught: unknown;
    try {
      parseConfigText(`${bomb.join('\n')}\n`, 'bomb.yaml');
    } catch (error) {
      caught = error;
    }
    expect(caught).toMatchObject({ code: 'CONFIG_YAML' });
  });
});
