import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuthorizationPolicySpec, PeerAuthenticationSpec } from '../../../src/authz/types.ts';
import { diffSnapshots } from '../../../src/config/diff.ts';
import { ConfigError } from '../../../src/config/issues.ts';
import { loadConfigDir, parseConfigText } from '../../../src/config/loader.ts';
import { FIXTURES, configDir, configError, meshYaml, removeConfigDirs } from '../config/temp-config.ts';

afterEach(removeConfigDirs);

const FILE = 'policies/policy.yaml';

function indent(text: string, spaces: number): string {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => (line === '' ? line : `${' '.repeat(spaces)}${line}`))
    .join('\n');
}

interface ObjectOptions {
  name?: string;
  namespace?: string;
  annotations?: Record<string, string>;
  apiVersion?: string;
}

function securityObject(kind: string, spec: string | undefined, options: ObjectOptions = {}): string {
  const lines = [
    `apiVersion: ${options.apiVersion ?? 'security.istio.io/v1'}`,
    `kind: ${kind}`,
    'metadata:',
    `  name: ${options.name ?? 'policy'}`,
    `  namespace: ${options.namespace ?? 'shop'}`,
  ];
  if (options.annotations !== undefined) {
    lines.push('  annotations:');
    for (const [key, value] of Object.entries(options.annotations)) lines.push(`    ${JSON.stringify(key)}: ${JSON.stringify(value)}`);
  }
  if (spec !== undefined) lines.push('spec:', indent(spec, 2));
  return `${lines.join('\n')}\n`;
}

const policy = (spec: string | undefined, options?: ObjectOptions) => securityObject('AuthorizationPolicy', spec, options);
const peer = (spec: string | undefined, options?: ObjectOptions) => securityObject('PeerAuthentication', spec, options);

/** A policy whose only rule has one `from` source with the given fields. */
const fromSource = (source: string, action = 'ALLOW') => policy(`action: ${action}\nrules:\n- from:\n  - source:\n${indent(source, 6)}`);
/** A policy whose only rule has one `to` operation with the given fields. */
const toOperation = (operation: string, action = 'ALLOW') => policy(`action: ${action}\nrules:\n- to:\n  - operation:\n${indent(operation, 6)}`);
/** A policy whose only rule has the given `when` conditions (a YAML list). */
const when = (conditions: string) => policy(`rules:\n- when:\n${indent(conditions, 2)}`);

function parseOne(text: string): unknown {
  const objects = parseConfigText(text, FILE);
  expect(objects).toHaveLength(1);
  return (objects[0] as { spec: unknown }).spec;
}

// ---------------------------------------------------------------------------------------------------------------

interface PolicyAcceptCase {
  name: string;
  yaml: string;
  spec: AuthorizationPolicySpec;
}

const policyAccepts: PolicyAcceptCase[] = [
  { name: 'an empty spec: an ALLOW policy that allows nothing', yaml: policy('{}'), spec: { action: 'ALLOW', rules: [] } },
  { name: 'no spec at all, read as an empty one', yaml: policy(undefined), spec: { action: 'ALLOW', rules: [] } },
  { name: 'one empty rule: allow everything', yaml: policy('rules:\n- {}'), spec: { action: 'ALLOW', rules: [{}] } },
  { name: 'an AUDIT policy without rules (Istio accepts it)', yaml: policy('action: AUDIT'), spec: { action: 'AUDIT', rules: [] } },
  {
    name: 'the reference example: principals or namespaces, two operations, a header condition',
    yaml: policy(`
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/sleep"]
  - source:
      namespaces: ["test"]
  to:
  - operation:
      methods: ["GET"]
      paths: ["/info*"]
  - operation:
      methods: ["POST"]
      paths: ["/data"]
  when:
  - key: request.headers[X-Env]
    values: ["prod"]
`, { apiVersion: 'security.istio.io/v1beta1' }),
    spec: {
      action: 'ALLOW',
      rules: [
        {
          from: [{ principals: ['cluster.local/ns/default/sa/sleep'] }, { namespaces: ['test'] }],
          to: [
            { methods: ['GET'], paths: ['/info*'] },
            { methods: ['POST'], paths: ['/data'] },
          ],
          when: [{ key: 'request.headers[X-Env]', parsedKey: { kind: 'request.headers', header: 'x-env' }, values: ['prod'] }],
        },
      ],
    },
  },
  {
    name: 'a selector, kept as its matchLabels',
    yaml: policy('selector:\n  matchLabels:\n    app: web\n    version: v1\nrules:\n- {}'),
    spec: { selector: { app: 'web', version: 'v1' }, action: 'ALLOW', rules: [{}] },
  },
  {
    name: 'a selector without labels, which selects every workload in scope',
    yaml: policy('selector:\n  matchLabels: {}\nrules:\n- {}'),
    spec: { action: 'ALLOW', rules: [{}] },
  },
  {
    name: 'ports as strings, as Istio writes them, read as numbers',
    yaml: toOperation('ports: ["8080", "443"]\nnotPorts: ["9090"]', 'DENY'),
    spec: { action: 'DENY', rules: [{ to: [{ ports: [8080, 443], notPorts: [9090] }] }] },
  },
  {
    name: 'ports as YAML numbers',
    yaml: toOperation('ports: [1, 65535]'),
    spec: { action: 'ALLOW', rules: [{ to: [{ ports: [1, 65535] }] }] },
  },
  {
    name: 'single IPs and CIDR blocks in their canonical spelling',
    yaml: fromSource('ipBlocks: ["203.0.113.4", "198.51.100.0/24", "2001:DB8:0:0::1"]'),
    spec: { action: 'ALLOW', rules: [{ from: [{ ipBlocks: ['203.0.113.4', '198.51.100.0/24', '2001:db8::1'] }] }] },
  },
  {
    name: 'a CIDR block with host bits set, as Istio accepts it, normalised to its network',
    yaml: fromSource('ipBlocks: ["10.0.0.1/24", "10.1.2.3/0", "fd00::1:2/64", "10.9.9.9/32"]'),
    spec: { action: 'ALLOW', rules: [{ from: [{ ipBlocks: ['10.0.0.0/24', '0.0.0.0/0', 'fd00::/64', '10.9.9.9/32'] }] }] },
  },
  {
    name: 'remote IP blocks and their negation',
    yaml: fromSource('remoteIpBlocks: ["192.0.2.0/24"]\nnotRemoteIpBlocks: ["192.0.2.66"]'),
    spec: { action: 'ALLOW', rules: [{ from: [{ remoteIpBlocks: ['192.0.2.0/24'], notRemoteIpBlocks: ['192.0.2.66'] }] }] },
  },
  {
    name: 'principals in every match form: exact, presence, prefix and suffix',
    yaml: fromSource('principals: ["cluster.local/ns/shop/sa/web", "*", "cluster.local/ns/shop/*", "cluster.local/*", "*/ns/shop/sa/web", "*/sa/web", "*web", "*.local/ns/a/sa/b"]'),
    spec: {
      action: 'ALLOW',
      rules: [{ from: [{ principals: ['cluster.local/ns/shop/sa/web', '*', 'cluster.local/ns/shop/*', 'cluster.local/*', '*/ns/shop/sa/web', '*/sa/web', '*web', '*.local/ns/a/sa/b'] }] }],
    },
  },
  {
    name: 'notPrincipals, with a federated trust domain and a dotted service account',
    yaml: fromSource('notPrincipals: ["partner.example/ns/billing/sa/invoice.v2"]', 'DENY'),
    spec: { action: 'DENY', rules: [{ from: [{ notPrincipals: ['partner.example/ns/billing/sa/invoice.v2'] }] }] },
  },
  {
    name: 'namespaces and notNamespaces with wildcards',
    yaml: fromSource('namespaces: ["prod-*", "*-test", "shop"]\nnotNamespaces: ["*"]'),
    spec: { action: 'ALLOW', rules: [{ from: [{ namespaces: ['prod-*', '*-test', 'shop'], notNamespaces: ['*'] }] }] },
  },
  {
    name: 'hosts with ports, wildcards and IP literals, and notHosts',
    yaml: toOperation('hosts: ["shop.example.com", "*.example.com", "API.example.com:8443", "example.*", "[::1]:8080", "10.0.0.1"]\nnotHosts: ["*.internal"]'),
    spec: {
      action: 'ALLOW',
      rules: [{ to: [{ hosts: ['shop.example.com', '*.example.com', 'API.example.com:8443', 'example.*', '[::1]:8080', '10.0.0.1'], notHosts: ['*.internal'] }] }],
    },
  },
  {
    name: 'methods, extension methods and notMethods',
    yaml: toOperation('methods: ["GET", "PURGE", "PROPFIND"]\nnotMethods: ["DELETE", "P*"]'),
    spec: { action: 'ALLOW', rules: [{ to: [{ methods: ['GET', 'PURGE', 'PROPFIND'], notMethods: ['DELETE', 'P*'] }] }] },
  },
  {
    name: 'paths in every match form and notPaths, gRPC paths included',
    yaml: toOperation('paths: ["/", "/api/*", "*.png", "*", "/shop.v1.Cart/AddItem"]\nnotPaths: ["/admin*"]'),
    spec: { action: 'ALLOW', rules: [{ to: [{ paths: ['/', '/api/*', '*.png', '*', '/shop.v1.Cart/AddItem'], notPaths: ['/admin*'] }] }] },
  },
  {
    name: 'paths already in normalised form: an upper-case escape, a trailing slash, dots inside a segment, a prefix ending in ".."',
    yaml: toOperation('paths: ["/files/a%2Fb", "/admin/", "/a..b/.well-known", "/a/..*", "*..png", "/files/%2*", "/files/%*"]', 'DENY'),
    spec: { action: 'DENY', rules: [{ to: [{ paths: ['/files/a%2Fb', '/admin/', '/a..b/.well-known', '/a/..*', '*..png', '/files/%2*', '/files/%*'] }] }] },
  },
  {
    name: 'every when key ambit evaluates, each parsed, with IPs and ports in canonical spelling',
    yaml: when(`
- key: request.headers[User-Agent]
  values: ["curl/*"]
- key: source.ip
  values: ["10.0.0.7/8"]
- key: remote.ip
  notValues: ["192.0.2.1"]
- key: source.namespace
  values: ["shop"]
- key: source.principal
  values: ["cluster.local/ns/shop/sa/web"]
- key: destination.ip
  values: ["FD00::1"]
- key: destination.port
  values: ["0443"]
`),
    spec: {
      action: 'ALLOW',
      rules: [
        {
          when: [
            { key: 'request.headers[User-Agent]', parsedKey: { kind: 'request.headers', header: 'user-agent' }, values: ['curl/*'] },
            { key: 'source.ip', parsedKey: { kind: 'source.ip' }, values: ['10.0.0.0/8'] },
            { key: 'remote.ip', parsedKey: { kind: 'remote.ip' }, notValues: ['192.0.2.1'] },
            { key: 'source.namespace', parsedKey: { kind: 'source.namespace' }, values: ['shop'] },
            { key: 'source.principal', parsedKey: { kind: 'source.principal' }, values: ['cluster.local/ns/shop/sa/web'] },
            { key: 'destination.ip', parsedKey: { kind: 'destination.ip' }, values: ['fd00::1'] },
            { key: 'destination.port', parsedKey: { kind: 'destination.port' }, values: ['443'] },
          ],
        },
      ],
    },
  },
  {
    name: 'a condition with both values and notValues',
    yaml: when('- key: request.headers[x-role]\n  values: ["admin*"]\n  notValues: ["admin-readonly"]'),
    spec: {
      action: 'ALLOW',
      rules: [{ when: [{ key: 'request.headers[x-role]', parsedKey: { kind: 'request.headers', header: 'x-role' }, values: ['admin*'], notValues: ['admin-readonly'] }] }],
    },
  },
  {
    name: 'a condition on the Host or :authority, its values in lower case as the request\'s authority is read',
    yaml: when('- key: request.headers[Host]\n  values: ["Admin.Shop"]\n- key: request.headers[:authority]\n  notValues: ["*.Example.COM"]'),
    spec: {
      action: 'ALLOW',
      rules: [
        {
          when: [
            { key: 'request.headers[Host]', parsedKey: { kind: 'request.headers', header: 'host' }, values: ['admin.shop'] },
            { key: 'request.headers[:authority]', parsedKey: { kind: 'request.headers', header: ':authority' }, notValues: ['*.example.com'] },
          ],
        },
      ],
    },
  },
  {
    name: 'a condition on a request pseudo-header, as Envoy keeps them among the fields',
    yaml: when('- key: request.headers[:path]\n  values: ["/admin*"]'),
    spec: {
      action: 'ALLOW',
      rules: [{ when: [{ key: 'request.headers[:path]', parsedKey: { kind: 'request.headers', header: ':path' }, values: ['/admin*'] }] }],
    },
  },
  {
    name: 'serviceAccounts and trustDomains with their not forms, and a bare service account (the policy\'s namespace)',
    yaml: fromSource('serviceAccounts: ["front/client", "web"]\nnotTrustDomains: ["*.partner.example"]\ntrustDomains: ["cluster.local", "*"]\nnotServiceAccounts: ["front/legacy"]\nipBlocks: ["10.0.0.0/8"]'),
    spec: { action: 'ALLOW', rules: [{ from: [{ ipBlocks: ['10.0.0.0/8'], serviceAccounts: ['front/client', 'web'], notServiceAccounts: ['front/legacy'], trustDomains: ['cluster.local', '*'], notTrustDomains: ['*.partner.example'] }] }] },
  },
  {
    name: 'source.serviceAccount and source.trustDomain conditions',
    yaml: when('- key: source.serviceAccount\n  values: ["front/client"]\n- key: source.trustDomain\n  notValues: ["legacy.*"]'),
    spec: {
      action: 'ALLOW',
      rules: [{ when: [
        { key: 'source.serviceAccount', parsedKey: { kind: 'source.serviceAccount' }, values: ['front/client'] },
        { key: 'source.trustDomain', parsedKey: { kind: 'source.trustDomain' }, notValues: ['legacy.*'] },
      ] }],
    },
  },
  {
    name: 'path templates as Istio writes them: {*} for one segment, {**} for the rest, literal segments after it',
    yaml: toOperation('paths: ["/api/{*}/items", "/static/{**}", "/{**}/edit", "/v1/{*}/"]\nnotPaths: ["/api/{*}/items/{**}"]', 'DENY'),
    spec: { action: 'DENY', rules: [{ to: [{ paths: ['/api/{*}/items', '/static/{**}', '/{**}/edit', '/v1/{*}/'], notPaths: ['/api/{*}/items/{**}'] }] }] },
  },
  { name: 'an empty when list (no conditions)', yaml: policy('rules:\n- when: []'), spec: { action: 'ALLOW', rules: [{}] } },
  {
    name: 'empty lists next to a set one, left out as Istio treats them as unset',
    yaml: fromSource('principals: []\nnamespaces: ["shop"]\nipBlocks: []'),
    spec: { action: 'ALLOW', rules: [{ from: [{ namespaces: ['shop'] }] }] },
  },
  {
    name: 'null fields, read as absent as Kubernetes does',
    yaml: policy('selector:\naction:\nrules:\n- from:\n  to:\n  - operation:\n      methods: ["GET"]\n      paths:'),
    spec: { action: 'ALLOW', rules: [{ to: [{ methods: ['GET'] }] }] },
  },
  {
    name: 'the dry-run annotation set to false',
    yaml: policy('rules:\n- {}', { annotations: { 'istio.io/dry-run': 'false' } }),
    spec: { action: 'ALLOW', rules: [{}] },
  },
];

describe('AuthorizationPolicy accepts', () => {
  it.each(policyAccepts)('$name', ({ yaml, spec }) => {
    expect(parseOne(yaml)).toEqual(spec);
  });
});

interface PeerAcceptCase {
  name: string;
  yaml: string;
  spec: PeerAuthenticationSpec;
}

const peerAccepts: PeerAcceptCase[] = [
  { name: 'an empty spec: mode UNSET', yaml: peer('{}'), spec: { mtls: 'UNSET', portLevelMtls: new Map() } },
  { name: 'no spec at all', yaml: peer(undefined), spec: { mtls: 'UNSET', portLevelMtls: new Map() } },
  { name: 'an empty mtls', yaml: peer('mtls: {}'), spec: { mtls: 'UNSET', portLevelMtls: new Map() } },
  { name: 'mesh-wide STRICT', yaml: peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', name: 'default' }), spec: { mtls: 'STRICT', portLevelMtls: new Map() } },
  { name: 'namespace-wide PERMISSIVE', yaml: peer('mtls:\n  mode: PERMISSIVE', { apiVersion: 'security.istio.io/v1beta1' }), spec: { mtls: 'PERMISSIVE', portLevelMtls: new Map() } },
  { name: 'DISABLE', yaml: peer('mtls:\n  mode: DISABLE'), spec: { mtls: 'DISABLE', portLevelMtls: new Map() } },
  { name: 'an explicit UNSET', yaml: peer('mtls:\n  mode: UNSET'), spec: { mtls: 'UNSET', portLevelMtls: new Map() } },
  {
    name: 'a workload with port-level modes, ports written as numbers or strings',
    yaml: peer('selector:\n  matchLabels:\n    app: checkout\nmtls:\n  mode: STRICT\nportLevelMtls:\n  9102:\n    mode: DISABLE\n  "8080":\n    mode: PERMISSIVE\n  5432: {}'),
    spec: {
      selector: { app: 'checkout' },
      mtls: 'STRICT',
      portLevelMtls: new Map([
        [5432, 'UNSET'],
        [8080, 'PERMISSIVE'],
        [9102, 'DISABLE'],
      ]),
    },
  },
  {
    name: 'the enforce annotation on the mesh-wide PeerAuthentication',
    yaml: peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', name: 'default', annotations: { 'ambit.dev/enforce': 'true' } }),
    spec: { mtls: 'STRICT', portLevelMtls: new Map() },
  },
];

describe('PeerAuthentication accepts', () => {
  it.each(peerAccepts)('$name', ({ yaml, spec }) => {
    expect(parseOne(yaml)).toEqual(spec);
  });
});

// ---------------------------------------------------------------------------------------------------------------

interface RejectCase {
  name: string;
  yaml: string;
  /** The field path the first problem names, as the message prints it. */
  field: string;
  object?: string;
  line?: number;
}

const rejects: RejectCase[] = [
  // action, provider, attachment
  { name: 'action CUSTOM (external authorization)', yaml: policy('action: CUSTOM\nprovider:\n  name: ext-authz\nrules:\n- {}'), field: 'spec.action', line: 7 },
  { name: 'an action in lower case', yaml: policy('action: deny\nrules:\n- {}'), field: 'spec.action' },
  { name: 'an action Istio does not have', yaml: policy('action: REJECT'), field: 'spec.action' },
  { name: 'a provider without action CUSTOM', yaml: policy('provider:\n  name: ext-authz\nrules:\n- {}'), field: 'spec.provider' },
  { name: 'targetRef (waypoint attachment)', yaml: policy('targetRef:\n  kind: Gateway\n  group: gateway.networking.k8s.io\n  name: waypoint'), field: 'spec.targetRef' },
  { name: 'targetRefs (waypoint attachment)', yaml: policy('targetRefs:\n- kind: Service\n  group: ""\n  name: web'), field: 'spec.targetRefs' },
  { name: 'a DENY policy without rules (Istio refuses it: it never denies)', yaml: policy('action: DENY'), field: 'spec.rules' },
  { name: 'a DENY policy with an empty rules list', yaml: policy('action: DENY\nrules: []'), field: 'spec.rules' },
  // unknown fields
  { name: 'a misspelt spec field', yaml: policy('rule:\n- {}'), field: 'spec.rule' },
  { name: 'principles for principals', yaml: fromSource('principles: ["cluster.local/ns/shop/sa/web"]'), field: 'spec.rules[0].from[0].source.principles', line: 11 },
  { name: 'a misspelt operation field', yaml: toOperation('method: ["GET"]'), field: 'spec.rules[0].to[0].operation.method' },
  { name: 'a misspelt condition field', yaml: when('- key: source.ip\n  value: ["10.0.0.1"]'), field: 'spec.rules[0].when[0].value' },
  { name: 'a misspelt rule field', yaml: policy('rules:\n- form:\n  - source:\n      namespaces: [shop]'), field: 'spec.rules[0].form' },
  { name: 'a field beside source in a from entry', yaml: policy('rules:\n- from:\n  - source:\n      namespaces: [shop]\n    namespaces: [shop]'), field: 'spec.rules[0].from[0].namespaces' },
  { name: 'a selector written like a WorkloadEntry\'s labels', yaml: policy('selector:\n  labels:\n    app: web'), field: 'spec.selector.labels' },
  // JWT and other fields ambit does not evaluate
  { name: 'requestPrincipals (JWT)', yaml: fromSource('requestPrincipals: ["issuer.example/sub"]'), field: 'spec.rules[0].from[0].source.requestPrincipals' },
  { name: 'notRequestPrincipals (JWT)', yaml: fromSource('notRequestPrincipals: ["*"]', 'DENY'), field: 'spec.rules[0].from[0].source.notRequestPrincipals' },
  { name: 'a request.auth.claims condition (JWT)', yaml: when('- key: request.auth.claims[iss]\n  values: ["https://issuer.example"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a request.auth.principal condition (JWT)', yaml: when('- key: request.auth.principal\n  values: ["*"]'), field: 'spec.rules[0].when[0].key' },
  // serviceAccounts and trustDomains, as istiod's CheckServiceAccount and CheckTrustDomainValues, and values that
  // cannot name a Kubernetes service account or a trust domain.
  { name: 'a service account with a wildcard (Istio refuses one)', yaml: fromSource('serviceAccounts: ["shop/*"]'), field: 'spec.rules[0].from[0].source.serviceAccounts[0]' },
  { name: 'a principal written as a service account', yaml: fromSource('notServiceAccounts: ["cluster.local/ns/shop/sa/web"]', 'DENY'), field: 'spec.rules[0].from[0].source.notServiceAccounts[0]' },
  { name: 'a service account with an upper-case namespace', yaml: fromSource('serviceAccounts: ["Shop/web"]'), field: 'spec.rules[0].from[0].source.serviceAccounts[0]' },
  { name: 'an empty service account name', yaml: fromSource('serviceAccounts: ["shop/"]'), field: 'spec.rules[0].from[0].source.serviceAccounts[0]' },
  { name: 'serviceAccounts beside principals (Istio refuses it)', yaml: fromSource('principals: ["cluster.local/ns/shop/sa/web"]\nserviceAccounts: ["shop/web"]'), field: 'spec.rules[0].from[0].source.serviceAccounts' },
  { name: 'notServiceAccounts beside namespaces (Istio refuses it)', yaml: fromSource('namespaces: ["shop"]\nnotServiceAccounts: ["shop/web"]', 'DENY'), field: 'spec.rules[0].from[0].source.notServiceAccounts' },
  { name: 'more than 16 service accounts (istiod\'s bound)', yaml: fromSource(`serviceAccounts: [${Array.from({ length: 17 }, (_, i) => `"sa-${i}"`).join(', ')}]`), field: 'spec.rules[0].from[0].source.serviceAccounts' },
  { name: 'a trust domain with a path', yaml: fromSource('trustDomains: ["cluster.local/ns/shop"]'), field: 'spec.rules[0].from[0].source.trustDomains[0]' },
  { name: 'a trust domain with a wildcard in the middle', yaml: fromSource('notTrustDomains: ["a.*.example"]', 'DENY'), field: 'spec.rules[0].from[0].source.notTrustDomains[0]' },
  { name: 'a trust domain in upper case (SPIFFE trust domains are lower case)', yaml: fromSource('trustDomains: ["Partner.Example"]'), field: 'spec.rules[0].from[0].source.trustDomains[0]' },
  { name: 'a source.serviceAccount condition with more than 16 values (istiod\'s bound)', yaml: when(`- key: source.serviceAccount\n  notValues: [${Array.from({ length: 17 }, (_, i) => `"sa-${i}"`).join(', ')}]`), field: 'spec.rules[0].when[0].notValues' },
  { name: 'a source.serviceAccount condition with a wildcard', yaml: when('- key: source.serviceAccount\n  values: ["shop/*"]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a source.trustDomain condition with the spiffe:// scheme', yaml: when('- key: source.trustDomain\n  notValues: ["spiffe://partner.example"]'), field: 'spec.rules[0].when[0].notValues[0]' },
  // IP blocks
  { name: 'a CIDR prefix longer than 32', yaml: fromSource('ipBlocks: ["10.0.0.0/8", "10.0.0.0/33"]'), field: 'spec.rules[0].from[0].source.ipBlocks[1]' },
  { name: 'an IPv4 address with an octet over 255', yaml: fromSource('ipBlocks: ["300.1.1.1"]'), field: 'spec.rules[0].from[0].source.ipBlocks[0]' },
  { name: 'a name where an IP belongs', yaml: fromSource('notIpBlocks: ["gateway.local"]', 'DENY'), field: 'spec.rules[0].from[0].source.notIpBlocks[0]' },
  // Istio keeps these IPv6 blocks, which no (canonical) IPv4 peer is in: read as IPv4 they would mean the opposite.
  { name: 'an IPv4-mapped IPv6 block in notIpBlocks (in Istio it holds for every IPv4 peer)', yaml: fromSource('notIpBlocks: ["::ffff:10.0.0.0/104"]', 'DENY'), field: 'spec.rules[0].from[0].source.notIpBlocks[0]' },
  { name: 'an IPv4-mapped IPv6 address in ipBlocks (in Istio it matches no IPv4 peer)', yaml: fromSource('ipBlocks: ["10.0.0.6", "::ffff:10.0.0.5"]'), field: 'spec.rules[0].from[0].source.ipBlocks[1]' },
  { name: 'an IPv4-mapped IPv6 block in a source.ip condition', yaml: when('- key: source.ip\n  values: ["::ffff:192.0.2.0/120"]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a prefix length with a leading zero', yaml: fromSource('remoteIpBlocks: ["10.0.0.0/08"]'), field: 'spec.rules[0].from[0].source.remoteIpBlocks[0]' },
  { name: 'an IPv6 prefix longer than 128', yaml: fromSource('notRemoteIpBlocks: ["fd00::/129"]', 'DENY'), field: 'spec.rules[0].from[0].source.notRemoteIpBlocks[0]' },
  { name: 'a wildcard IP', yaml: fromSource('ipBlocks: ["10.0.0.*"]'), field: 'spec.rules[0].from[0].source.ipBlocks[0]' },
  { name: 'an IP block written as a number', yaml: fromSource('ipBlocks: [10]'), field: 'spec.rules[0].from[0].source.ipBlocks[0]' },
  // principals
  { name: 'a principal without a trust domain', yaml: fromSource('principals: ["ns/shop/sa/web"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a principal with the spiffe:// scheme', yaml: fromSource('principals: ["spiffe://cluster.local/ns/shop/sa/web"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a principal with a wildcard in the middle', yaml: fromSource('principals: ["cluster.local/ns/*/sa/web"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a principal with two wildcards', yaml: fromSource('principals: ["*/ns/shop/*"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a principal with an upper-case namespace', yaml: fromSource('principals: ["cluster.local/ns/Shop/sa/web"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a bare service account as a principal', yaml: fromSource('notPrincipals: ["web"]', 'DENY'), field: 'spec.rules[0].from[0].source.notPrincipals[0]' },
  { name: 'a principal prefix that cannot become one', yaml: fromSource('principals: ["cluster.local/namespace/*"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'a principal with extra segments', yaml: fromSource('principals: ["cluster.local/ns/shop/sa/web/extra"]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'an empty principal', yaml: fromSource('principals: [""]'), field: 'spec.rules[0].from[0].source.principals[0]' },
  { name: 'principals written as one string instead of a list', yaml: fromSource('principals: cluster.local/ns/shop/sa/web'), field: 'spec.rules[0].from[0].source.principals' },
  // namespaces
  { name: 'a namespace with upper-case letters', yaml: fromSource('namespaces: ["Shop"]'), field: 'spec.rules[0].from[0].source.namespaces[0]' },
  { name: 'a namespace with a wildcard in the middle', yaml: fromSource('notNamespaces: ["prod-*-eu"]', 'DENY'), field: 'spec.rules[0].from[0].source.notNamespaces[0]' },
  // ports
  { name: 'port 0', yaml: toOperation('ports: ["0"]'), field: 'spec.rules[0].to[0].operation.ports[0]' },
  { name: 'a port over 65535', yaml: toOperation('ports: [8080, 70000]'), field: 'spec.rules[0].to[0].operation.ports[1]' },
  { name: 'a port name instead of a number', yaml: toOperation('ports: ["http"]'), field: 'spec.rules[0].to[0].operation.ports[0]' },
  { name: 'a notPorts entry over 65535', yaml: toOperation('notPorts: ["65536"]', 'DENY'), field: 'spec.rules[0].to[0].operation.notPorts[0]' },
  { name: 'a port range', yaml: toOperation('ports: ["8000-8080"]'), field: 'spec.rules[0].to[0].operation.ports[0]' },
  { name: 'a wildcard port', yaml: toOperation('ports: ["*"]'), field: 'spec.rules[0].to[0].operation.ports[0]' },
  // methods, paths, hosts
  { name: 'two methods in one string', yaml: toOperation('methods: ["GET POST"]'), field: 'spec.rules[0].to[0].operation.methods[0]' },
  { name: 'a method with a wildcard in the middle', yaml: toOperation('notMethods: ["G*T"]', 'DENY'), field: 'spec.rules[0].to[0].operation.notMethods[0]' },
  { name: 'a path not starting with / or *', yaml: toOperation('paths: ["api/v1"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path with a wildcard in the middle', yaml: toOperation('paths: ["/api/*/items"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  // Path templates: istiod's CheckValidPathTemplate and Envoy's uri_template parser refuse these.
  { name: 'a path template with an operator after {**}', yaml: toOperation('paths: ["/{**}/items/{*}"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template with {**} twice', yaml: toOperation('notPaths: ["/{**}/{**}"]', 'DENY'), field: 'spec.rules[0].to[0].operation.notPaths[0]' },
  { name: 'a path template operator in part of a segment', yaml: toOperation('paths: ["/items/{*}.json"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a named variable (not an Istio template)', yaml: toOperation('paths: ["/items/{id}"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a lone brace', yaml: toOperation('paths: ["/items/{"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template mixed with an Istio wildcard', yaml: toOperation('paths: ["/api/{*}/*"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template not starting with /', yaml: toOperation('paths: ["{**}/admin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template with an empty segment (requests have repeated slashes merged)', yaml: toOperation('paths: ["/api//{*}"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template with a dot-dot segment', yaml: toOperation('paths: ["/api/{*}/../admin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template with an escaped letter (requests arrive decoded)', yaml: toOperation('paths: ["/%61dmin/{*}"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path template literal with a character Envoy refuses in one', yaml: toOperation('paths: ["/a[1]/{*}"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a path with a query string (matched without it, so it would never match)', yaml: toOperation('notPaths: ["/search?q=admin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.notPaths[0]' },
  { name: 'a path with a space', yaml: toOperation('paths: ["/a b"]'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  // Requests are matched by their normalised path: these match none, and a DENY written with them denied nothing.
  { name: 'a DENY path with an escaped letter (requests arrive decoded)', yaml: toOperation('paths: ["/%61dmin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path with a lower-case escape (requests arrive upper-cased)', yaml: toOperation('paths: ["/files/a%2fb"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path with a dot segment', yaml: toOperation('paths: ["/x/./admin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path prefix with a double slash', yaml: toOperation('paths: ["//admin/*"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'an ALLOW notPaths suffix with a dot-dot segment', yaml: toOperation('notPaths: ["*/../secret"]'), field: 'spec.rules[0].to[0].operation.notPaths[0]' },
  { name: 'a path with a broken escape', yaml: toOperation('paths: ["/a%zz"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path prefix ending in a lower-case escape', yaml: toOperation('paths: ["/files/%2f*"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path prefix ending in a lower-case half escape', yaml: toOperation('paths: ["/files/%e*"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path with a raw "|" (requests arrive with it escaped, as Envoy escapes it)', yaml: toOperation('paths: ["/files/a|b"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path with a lone surrogate (no UTF-8 to match)', yaml: toOperation('paths: ["/a\\ud800"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a DENY path prefix with a non-ASCII character (requests carry its UTF-8 bytes, escaped)', yaml: toOperation('paths: ["/café/*"]', 'DENY'), field: 'spec.rules[0].to[0].operation.paths[0]' },
  { name: 'a host with a wildcard in the middle', yaml: toOperation('hosts: ["api.*.example.com"]'), field: 'spec.rules[0].to[0].operation.hosts[0]' },
  { name: 'a host with a path', yaml: toOperation('notHosts: ["example.com/admin"]', 'DENY'), field: 'spec.rules[0].to[0].operation.notHosts[0]' },
  { name: 'a URL where a host belongs', yaml: toOperation('hosts: ["https://example.com"]'), field: 'spec.rules[0].to[0].operation.hosts[0]' },
  // when
  { name: 'a when key ambit does not evaluate', yaml: when('- key: source.user\n  values: ["web"]'), field: 'spec.rules[0].when[0].key' },
  // Names on Object.prototype: read as a table entry they loaded as conditions that never match (an ALLOW with
  // notValues then let everyone in).
  { name: 'a when key named constructor', yaml: when('- key: constructor\n  notValues: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a when key named __proto__', yaml: when('- key: __proto__\n  values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a when key named toString', yaml: when('- key: toString\n  values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  // YAML tags make a Map, Set, Date or bytes: not a mapping, and an ordered map of selector labels read as none.
  { name: 'selector labels given as a YAML !!omap', yaml: policy('selector:\n  matchLabels: !!omap\n  - app: web\nrules:\n- {}'), field: 'spec.selector.matchLabels' },
  { name: 'a when key Istio replaced by the selector', yaml: when('- key: destination.labels[app]\n  values: ["web"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'an experimental Envoy filter key', yaml: when('- key: experimental.envoy.filters.network.mysql_proxy[db.table]\n  values: ["[update]"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a header key without a name', yaml: when('- key: request.headers[]\n  values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a header key with a name that is not a token', yaml: when('- key: request.headers[x user]\n  values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a header key naming a response pseudo-header', yaml: when('- key: request.headers[:status]\n  values: ["200"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a header key naming no pseudo-header', yaml: when('- key: request.headers[:admin]\n  values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a condition without a key', yaml: when('- values: ["x"]'), field: 'spec.rules[0].when[0].key' },
  { name: 'a condition with neither values nor notValues', yaml: when('- key: source.ip'), field: 'spec.rules[0].when[0]' },
  { name: 'a condition with empty values and notValues', yaml: when('- key: source.ip\n  values: []\n  notValues: []'), field: 'spec.rules[0].when[0]' },
  { name: 'a source.ip value that is not an IP', yaml: when('- key: source.ip\n  values: ["10.0.0.0/40"]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a destination.port value out of range', yaml: when('- key: destination.port\n  notValues: ["80", "0"]'), field: 'spec.rules[0].when[0].notValues[1]' },
  { name: 'a value that is not a string', yaml: when('- key: destination.port\n  values: [8080]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a source.principal value that is not a principal', yaml: when('- key: source.principal\n  values: ["spiffe://cluster.local/ns/a/sa/b"]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a header value with a wildcard in the middle', yaml: when('- key: request.headers[x-user]\n  values: ["a*b"]'), field: 'spec.rules[0].when[0].values[0]' },
  { name: 'a connection.sni key (the proxy never sees the application\'s SNI)', yaml: when('- key: connection.sni\n  values: ["example.com"]'), field: 'spec.rules[0].when[0].key' },
  // empty structures Istio refuses
  { name: 'an empty source', yaml: policy('rules:\n- from:\n  - source: {}'), field: 'spec.rules[0].from[0].source' },
  { name: 'a source whose lists are all empty', yaml: fromSource('principals: []\nnotNamespaces: []'), field: 'spec.rules[0].from[0].source' },
  { name: 'a from entry without a source', yaml: policy('rules:\n- from:\n  - {}'), field: 'spec.rules[0].from[0].source' },
  { name: 'an empty from list', yaml: policy('rules:\n- from: []'), field: 'spec.rules[0].from' },
  { name: 'an empty to list', yaml: policy('rules:\n- to: []'), field: 'spec.rules[0].to' },
  { name: 'an empty operation', yaml: policy('rules:\n- to:\n  - operation: {}'), field: 'spec.rules[0].to[0].operation' },
  { name: 'a rule that is null', yaml: policy('rules:\n-\n- {}'), field: 'spec.rules[0]' },
  { name: 'rules written as a mapping', yaml: policy('rules:\n  from: []'), field: 'spec.rules' },
  // selector and annotations
  { name: 'a wildcard in a selector label value', yaml: policy('selector:\n  matchLabels:\n    app: "web*"'), field: 'spec.selector.matchLabels.app' },
  { name: 'a selector label value that is not a string', yaml: policy('selector:\n  matchLabels:\n    version: 2'), field: 'spec.selector.matchLabels.version' },
  { name: 'a dry-run annotation Go\'s strconv.ParseBool does not read (yes)', yaml: policy('rules:\n- {}', { annotations: { 'istio.io/dry-run': 'yes' } }), field: 'metadata.annotations["istio.io/dry-run"]' },
  { name: 'the enforce annotation on an AuthorizationPolicy', yaml: policy('rules:\n- {}', { annotations: { 'ambit.dev/enforce': 'true' } }), field: 'metadata.annotations["ambit.dev/enforce"]' },
  // PeerAuthentication
  { name: 'an mTLS mode in lower case', yaml: peer('mtls:\n  mode: strict'), field: 'spec.mtls.mode', object: 'PeerAuthentication shop/policy' },
  { name: 'an mTLS mode Istio does not have', yaml: peer('mtls:\n  mode: REQUIRED'), field: 'spec.mtls.mode', object: 'PeerAuthentication shop/policy' },
  { name: 'a misspelt mtls field', yaml: peer('mtls:\n  mod: STRICT'), field: 'spec.mtls.mod', object: 'PeerAuthentication shop/policy' },
  { name: 'a misspelt PeerAuthentication field', yaml: peer('mTLS:\n  mode: STRICT'), field: 'spec.mTLS', object: 'PeerAuthentication shop/policy' },
  { name: 'mtls written as the mode alone', yaml: peer('mtls: STRICT'), field: 'spec.mtls', object: 'PeerAuthentication shop/policy' },
  {
    name: 'port-level modes without a selector (Istio refuses them mesh- and namespace-wide)',
    yaml: peer('mtls:\n  mode: STRICT\nportLevelMtls:\n  8080:\n    mode: DISABLE'),
    field: 'spec.portLevelMtls',
    object: 'PeerAuthentication shop/policy',
  },
  { name: 'an empty portLevelMtls', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls: {}'), field: 'spec.portLevelMtls', object: 'PeerAuthentication shop/policy' },
  { name: 'port-level port 0', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  0:\n    mode: DISABLE'), field: 'spec.portLevelMtls["0"]', object: 'PeerAuthentication shop/policy' },
  { name: 'a port-level port over 65535', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  "70000":\n    mode: DISABLE'), field: 'spec.portLevelMtls["70000"]', object: 'PeerAuthentication shop/policy' },
  { name: 'a port-level port name', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  http:\n    mode: DISABLE'), field: 'spec.portLevelMtls.http', object: 'PeerAuthentication shop/policy' },
  { name: 'the same port twice', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  80:\n    mode: DISABLE\n  "080":\n    mode: STRICT'), field: 'spec.portLevelMtls["080"]', object: 'PeerAuthentication shop/policy' },
  { name: 'a port-level mode Istio does not have', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  8080:\n    mode: OFF'), field: 'spec.portLevelMtls["8080"].mode', object: 'PeerAuthentication shop/policy' },
  { name: 'a port-level mode written without mode:', yaml: peer('selector:\n  matchLabels:\n    app: web\nportLevelMtls:\n  8080: DISABLE'), field: 'spec.portLevelMtls["8080"]', object: 'PeerAuthentication shop/policy' },
  { name: 'a misspelt selector field', yaml: peer('selector:\n  matchlabels:\n    app: web'), field: 'spec.selector.matchlabels', object: 'PeerAuthentication shop/policy' },
  {
    name: 'an enforce annotation that is not "true" or "false"',
    yaml: peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', annotations: { 'ambit.dev/enforce': 'yes' } }),
    field: 'metadata.annotations["ambit.dev/enforce"]',
    object: 'PeerAuthentication istio-system/policy',
  },
];

function thrownBy(action: () => unknown): ConfigError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError, but the configuration was accepted');
}

describe('refuses at load, naming file, object and field', () => {
  it('says which pseudo-headers a condition may name when it names another', () => {
    const error = thrownBy(() => parseConfigText(when('- key: request.headers[:status]\n  values: ["200"]'), FILE));
    expect(error.message).toContain('":status" is not a request pseudo-header (a condition may name :authority, :method, :path, :scheme)');
  });

  it('gives the form of a path to write: raw characters requests have escaped, non-ASCII as its UTF-8 escapes', () => {
    expect(thrownBy(() => parseConfigText(toOperation('paths: ["/files/a|b"]', 'DENY'), FILE)).message).toContain('write "/files/a%7Cb"');
    expect(thrownBy(() => parseConfigText(toOperation('paths: ["/café/*"]', 'DENY'), FILE)).message).toContain('write "/caf%C3%A9/*"');
  });

  it('says what a path template may hold, and the segment to write when one is not in normalised form', () => {
    expect(thrownBy(() => parseConfigText(toOperation('paths: ["/{**}/items/{*}"]'), FILE)).message).toContain('{**} must be the last operator');
    expect(thrownBy(() => parseConfigText(toOperation('paths: ["/items/{id}"]'), FILE)).message).toContain('named variables and partial segments');
    expect(thrownBy(() => parseConfigText(toOperation('paths: ["/%61dmin/{*}"]', 'DENY'), FILE)).message).toContain('write "admin"');
  });

  it.each(rejects)('$name', ({ yaml, field, object, line }) => {
    const error = thrownBy(() => parseConfigText(yaml, FILE));
    expect(error.code).toBe('CONFIG_FIELD');
    const first = error.details[0];
    expect(first?.code).toBe('CONFIG_FIELD');
    expect(first?.field).toBe(field);
    expect(error.message).toContain(`${FILE}:`);
    expect(error.message).toContain(object ?? 'AuthorizationPolicy shop/policy');
    expect(error.message).toContain(`: ${field}: `);
    if (line !== undefined) expect(first?.line).toBe(line);
  });

  // Istio's egress authorization: said for what it is, so nobody takes the external service for guarded.
  it('says a policy on a ServiceEntry (egress authorization) is not supported, and what decides egress instead', () => {
    const error = thrownBy(() => parseConfigText(policy('targetRefs:\n- kind: ServiceEntry\n  group: networking.istio.io\n  name: clouddb'), FILE));
    expect(error.details[0]?.field).toBe('spec.targetRefs');
    expect(error.message).toContain('ambit does not authorize traffic leaving for a ServiceEntry');
    expect(error.message).toContain("exportTo, under egress REGISTRY_ONLY");
  });

  it('has at least 60 accept and reject cases between them', () => {
    expect(policyAccepts.length + peerAccepts.length + rejects.length).toBeGreaterThanOrEqual(60);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('the enforce annotation', () => {
  const enforced = { 'ambit.dev/enforce': 'true' };

  it('is accepted on the mesh-wide PeerAuthentication of the default root namespace, true or false', async () => {
    const dir = await configDir({
      'a.yaml': peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', name: 'default', annotations: enforced }),
      'b.yaml': peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', name: 'other', annotations: { 'ambit.dev/enforce': 'false' } }),
    });
    const snapshot = await loadConfigDir(dir);
    expect(snapshot.objectsOfKind('PeerAuthentication').map((object) => object.metadata.annotations['ambit.dev/enforce'])).toEqual(['true', 'false']);
  });

  it('is accepted in the root namespace the MeshConfig names', async () => {
    const dir = await configDir({
      'mesh.yaml': `${meshYaml()}  rootNamespace: mesh-root\n`,
      'pa.yaml': peer('mtls:\n  mode: STRICT', { namespace: 'mesh-root', name: 'default', annotations: enforced }),
    });
    await expect(loadConfigDir(dir)).resolves.toBeDefined();
  });

  const scopeRejects: { name: string; files: Record<string, string>; object: string }[] = [
    { name: 'a namespace-wide PeerAuthentication', files: { 'pa.yaml': peer('mtls:\n  mode: STRICT', { namespace: 'shop', annotations: enforced }) }, object: 'PeerAuthentication shop/policy' },
    {
      name: 'a PeerAuthentication in the root namespace with a selector',
      files: { 'pa.yaml': peer('selector:\n  matchLabels:\n    app: web\nmtls:\n  mode: STRICT', { namespace: 'istio-system', annotations: enforced }) },
      object: 'PeerAuthentication istio-system/policy',
    },
    {
      name: 'a PeerAuthentication in istio-system when the MeshConfig names another root namespace',
      files: { 'mesh.yaml': `${meshYaml()}  rootNamespace: mesh-root\n`, 'pa.yaml': peer('mtls:\n  mode: STRICT', { namespace: 'istio-system', annotations: enforced }) },
      object: 'PeerAuthentication istio-system/policy',
    },
    {
      name: 'a PeerAuthentication annotated "false" outside the root namespace',
      files: { 'pa.yaml': peer('mtls:\n  mode: PERMISSIVE', { namespace: 'shop', annotations: { 'ambit.dev/enforce': 'false' } }) },
      object: 'PeerAuthentication shop/policy',
    },
  ];

  it.each(scopeRejects)('is refused on $name', async ({ files, object }) => {
    const error = await configError(loadConfigDir(await configDir(files)));
    expect(error.code).toBe('CONFIG_FIELD');
    expect(error.details[0]?.field).toBe('metadata.annotations["ambit.dev/enforce"]');
    expect(error.message).toContain('pa.yaml:1:');
    expect(error.message).toContain(object);
    expect(error.message).toContain(': metadata.annotations["ambit.dev/enforce"]: ');
  });
});

describe('Istio YAML as users write it', () => {
  it('loads the fixture of Istio-documented shapes unchanged', async () => {
    const snapshot = await loadConfigDir(join(FIXTURES, 'istio-policies'));
    expect(snapshot.objectsOfKind('AuthorizationPolicy')).toHaveLength(12);
    expect(snapshot.objectsOfKind('PeerAuthentication')).toHaveLength(4);
    const byName = (name: string) => snapshot.objectsOfKind('AuthorizationPolicy').find((object) => object.metadata.name === name)?.spec;
    expect(byName('allow-nothing')).toEqual({ action: 'ALLOW', rules: [] });
    expect(byName('ledger-db')?.rules[0]?.to).toEqual([{ ports: [5432, 5433] }]);
    expect(byName('office-only')?.rules[0]?.from?.[0]).toEqual({ ipBlocks: ['203.0.113.4', '198.51.100.0/24', '2001:db8::/32'] });
    const ledger = snapshot.objectsOfKind('PeerAuthentication').find((object) => object.metadata.name === 'ledger-ports')?.spec;
    expect(ledger).toEqual({ selector: { app: 'ledger' }, mtls: 'UNSET', portLevelMtls: new Map([[8080, 'PERMISSIVE'], [5432, 'STRICT']]) });
  });

  it('makes the whole configuration invalid when one policy is, so the last good one stays in force', async () => {
    const dir = await configDir({
      'mesh.yaml': meshYaml(),
      'good.yaml': policy('rules:\n- {}', { name: 'good' }),
      'bad.yaml': fromSource('ipBlocks: ["10.0.0.0/33"]'),
    });
    const error = await configError(loadConfigDir(dir));
    expect(error.details.map((issue) => [issue.file, issue.field])).toEqual([['bad.yaml', 'spec.rules[0].from[0].source.ipBlocks[0]']]);
  });

  it('reports every bad field of a policy at once, in line order', () => {
    const error = thrownBy(() => parseConfigText(fromSource('principals: ["spiffe://x/ns/a/sa/b"]\nipBlocks: ["1.2.3.4/40"]\nnamespaces: ["A"]'), FILE));
    expect(error.details.map((issue) => issue.field)).toEqual([
      'spec.rules[0].from[0].source.principals[0]',
      'spec.rules[0].from[0].source.ipBlocks[0]',
      'spec.rules[0].from[0].source.namespaces[0]',
    ]);
  });
});

describe('a loaded PeerAuthentication', () => {
  const withPort = (mode: string) => peer(`selector:\n  matchLabels:\n    app: web\nmtls:\n  mode: STRICT\nportLevelMtls:\n  9102:\n    mode: ${mode}`);

  it('cannot have its port-level modes changed through the snapshot', async () => {
    const snapshot = await loadConfigDir(await configDir({ 'pa.yaml': withPort('DISABLE') }));
    const ports = snapshot.objectsOfKind('PeerAuthentication')[0]?.spec.portLevelMtls as Map<number, string>;
    expect(() => ports.set(9102, 'STRICT')).toThrow(TypeError);
    expect(() => ports.delete(9102)).toThrow(TypeError);
    expect(() => ports.clear()).toThrow(TypeError);
    expect(ports.get(9102)).toBe('DISABLE');
  });

  it('changes the snapshot version and the diff when only a port-level mode changes', async () => {
    const before = await loadConfigDir(await configDir({ 'pa.yaml': withPort('DISABLE') }));
    const after = await loadConfigDir(await configDir({ 'pa.yaml': withPort('PERMISSIVE') }));
    expect(after.version).not.toBe(before.version);
    expect(diffSnapshots(before, after).changed).toEqual([{ object: 'PeerAuthentication shop/policy', file: 'pa.yaml', fields: ['spec.portLevelMtls["9102"]'] }]);
  });
});
