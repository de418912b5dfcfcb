// ambit under test, brought up the way `ambit mesh` (src/cli/mesh.ts) does it: a CA directory made with
// initCa, `ambit ca serve`, and one `ambit proxy` per node joined with a fresh token, each a child process
// of its own. Also the configurations: the benchmark mesh (an L4 web, an L7 web under 1,000
// AuthorizationPolicies, a TCP bulk/hold workload) and the idle-footprint registry (1,000 workloads).
import { mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { initCa } from '../../src/identity/ca/store.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { encodePemBundle } from '../../src/identity/bundle.ts';
import { AMBIT, ALLOWING_POLICY, FOOTPRINT, NAMESPACE, POLICY_COUNT, TRUST_DOMAIN, UPSTREAM, policyName } from './layout.ts';
import type { HostPort } from './layout.ts';
import { sleep, waitForPort } from './processes.ts';
import type { Processes, Spawned } from './processes.ts';
import { LONG_RUNNING_NODE_FLAGS, longRunningEnv } from '../../src/cli/node-flags.ts';
import { BUILT_CLI as CLI } from './build.ts';


export interface AmbitNodeSpec {
  readonly name: string;
  readonly address: string;
}

export interface AmbitOptions {
  /** Directory of its own for this mesh: config/, ca/, state. */
  dir: string;
  label: string;
  configYaml: string;
  nodes: readonly AmbitNodeSpec[];
  ca: HostPort;
  /** `--svid-ttl` for the proxies (rotation under load). */
  svidTtl?: string;
  /** Extra `node` flags for the proxies, e.g. --cpu-prof. */
  nodeFlags: readonly string[];
  /** AMBIT_LOG_LEVEL of the proxies: `warn` leaves out the per-connection access log, `info` keeps it. */
  logLevel: string;
  readyTimeoutMs: number;
}

export interface AmbitNode {
  readonly name: string;
  readonly address: string;
  readonly process: Spawned;
  readonly metricsUrl: string;
}

export interface AmbitMesh {
  readonly ca: Spawned;
  readonly nodes: readonly AmbitNode[];
  readonly caDir: string;
  stop(): Promise<void>;
}

function httpStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

export function httpText(url: string): Promise<string> {
  return new Promise((resolve) => {
    const req = request(url, { timeout: 2000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve(text));
    });
    req.on('error', () => resolve(''));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

export async function startAmbit(processes: Processes, options: AmbitOptions): Promise<AmbitMesh> {
  const configDir = join(options.dir, 'config');
  await mkdir(configDir, { recursive: true });
  await writeFile(join(configDir, 'mesh.yaml'), options.configYaml);
  const caDir = join(options.dir, 'ca');
  const state = await initCa(caDir, TRUST_DOMAIN);
  const bundleFile = join(options.dir, 'bundle.pem');
  await writeFile(bundleFile, encodePemBundle(state.bundle));
  const caListen = `${options.ca.host}:${options.ca.port}`;
  const ca = processes.spawn(`${options.label}-ca`, process.execPath, [...LONG_RUNNING_NODE_FLAGS, CLI, 'ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', caListen], { cpu: 'load', env: { ...longRunningEnv(process.env), AMBIT_LOG_LEVEL: 'warn' } });
  const started: Spawned[] = [ca];
  const stop = async () => {
    await Promise.all(started.map((spawned) => processes.stop(spawned)));
  };
  try {
    await waitForPort(options.ca.host, options.ca.port, 20_000, () => processes.assertRunning(ca));
    const nodes: AmbitNode[] = [];
    for (const node of options.nodes) {
      const token = await createJoinToken(caDir, node.name, 600_000);
      // As ambit recommends running it (src/cli/node-flags.ts); --cpu-prof and AMBIT_BENCH_PROXY_NODE_FLAGS come after, so they can override.
      const args = [
        ...LONG_RUNNING_NODE_FLAGS, ...options.nodeFlags, CLI,
        'proxy', '--node', node.name, '--config', configDir, '--ca', `https://${caListen}`, '--ca-bundle', bundleFile, '--trust-domain', TRUST_DOMAIN,
        // A row's pair is stopped once its load is done: nothing to drain that a test measures.
        '--drain-timeout', '0',
        // The benchmark's one load generator stands for a node's many clients: (e)'s 9,700 idle connections are past
        // the bound one workload gets by default (a quarter of the open-files limit). All workloads' bound still holds.
        '--max-workload-connections', '1000000',
        '--state-dir', join(options.dir, node.name), `--join-token=${token.token}`,
        '--metrics', `${node.address}:15020`, '--readiness', `${node.address}:15021`,
        ...(options.svidTtl ? ['--svid-ttl', options.svidTtl] : []),
      ];
      const spawned = processes.spawn(`${options.label}-${node.name}`, process.execPath, args, { cpu: 'proxy', env: { ...longRunningEnv(process.env), AMBIT_LOG_LEVEL: options.logLevel } });
      started.push(spawned);
      nodes.push({ name: node.name, address: node.address, process: spawned, metricsUrl: `http://${node.address}:15020/metrics` });
    }
    for (const node of nodes) {
      const deadline = Date.now() + options.readyTimeoutMs;
      for (;;) {
        processes.assertRunning(node.process);
        if ((await httpStatus(`http://${node.address}:15021/healthz/ready`)) === 200) break;
        if (Date.now() > deadline) throw new Error(`${options.label} ${node.name} not ready after ${options.readyTimeoutMs} ms`);
        await sleep(100);
      }
    }
    return { ca, nodes, caDir, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Sums a Prometheus counter over all its series in /metrics text. */
export function metricTotal(text: string, name: string): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) total += Number(line.slice(line.lastIndexOf(' ') + 1)) || 0;
  }
  return total;
}

const MESH_CONFIG = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec:
  trustDomain: ${TRUST_DOMAIN}
`;

/** The benchmark mesh: client on node-a; web-l4, web-l7 (HTTP port, 1,000 policies) and tcp on node-b. */
export function benchConfig(): string {
  const l = AMBIT.listen;
  const parts = [
    MESH_CONFIG,
    `apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: ${NAMESPACE}
  labels: { app: client }
  annotations:
    ambit.dev/outbound: "${l.webL4}=web-l4.${NAMESPACE}:80,${l.webL7}=web-l7.${NAMESPACE}:80,${l.bulk}=bulk.${NAMESPACE}:${UPSTREAM.bulk.port},${l.hold}=hold.${NAMESPACE}:${UPSTREAM.hold.port}"
spec: { nodeName: ${AMBIT.nodeA.name}, serviceAccountName: client }
status: { phase: Running, podIP: ${AMBIT.clientIp} }
`,
    pod('web-l4', UPSTREAM.webL4.host),
    pod('web-l7', UPSTREAM.webL7.host),
    pod('tcp', UPSTREAM.bulk.host),
    // tcp-*: plain bytes, never parsed. http: declared HTTP, so the L7 policies decide each request.
    service('web-l4', 'web-l4', 'tcp-web', 80, UPSTREAM.webL4.port),
    service('web-l7', 'web-l7', 'http', 80, UPSTREAM.webL7.port),
    service('bulk', 'tcp', 'tcp-bulk', UPSTREAM.bulk.port, UPSTREAM.bulk.port),
    service('hold', 'tcp', 'tcp-hold', UPSTREAM.hold.port, UPSTREAM.hold.port),
    ...l7Policies(),
  ];
  return parts.join('---\n');
}

function pod(name: string, ip: string): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NAMESPACE}, labels: { app: ${name} } }
spec: { nodeName: ${AMBIT.nodeB.name}, serviceAccountName: ${name} }
status: { phase: Running, podIP: ${ip} }
`;
}

function service(name: string, app: string, portName: string, port: number, targetPort: number): string {
  return `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${NAMESPACE} }
spec: { selector: { app: ${app} }, ports: [{ name: ${portName}, port: ${port}, targetPort: ${targetPort} }] }
`;
}

/**
 * POLICY_COUNT ALLOW policies on web-l7, each allowing GET under its own path prefix; the benchmark's
 * request matches only policy ALLOWING_POLICY. The HAProxy L7 pair gets the same rules as ACLs.
 */
export function l7Policies(): string[] {
  const policies: string[] = [];
  for (let i = 0; i < POLICY_COUNT; i++) {
    policies.push(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-${policyName(i)}, namespace: ${NAMESPACE} }
spec:
  selector: { matchLabels: { app: web-l7 } }
  action: ALLOW
  rules:
    - to: [{ operation: { methods: ["GET"], paths: ["/api/v1/${policyName(i)}/*"] } }]
`);
  }
  if (ALLOWING_POLICY >= POLICY_COUNT) throw new Error('the allowing policy must be one of the policies');
  return policies;
}

/** The idle-footprint registry: 1,000 workloads with a Service each, 100 of them on node-c. */
export function footprintConfig(workloads: number = FOOTPRINT.workloads, localWorkloads: number = FOOTPRINT.local): string {
  const parts = [MESH_CONFIG];
  for (let i = 0; i < workloads; i++) {
    const local = i < localWorkloads;
    const name = `w-${String(i).padStart(4, '0')}`;
    const node = local ? FOOTPRINT.node.name : `node-x${i % 9}`;
    const ip = local ? FOOTPRINT.localIp(i) : FOOTPRINT.remoteIp(i);
    parts.push(`apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${NAMESPACE}, labels: { app: ${name} } }
spec: { nodeName: ${node}, serviceAccountName: ${name} }
status: { phase: Running, podIP: ${ip} }
`);
    parts.push(service(name, name, 'http', 80, 8080));
  }
  return parts.join('---\n');
}
