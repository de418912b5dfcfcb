// A mesh of real processes on loopback for integration tests: `ambit ca serve` and one `ambit proxy`
// per node, each node on its own 127.P.N.0/24 so test files running in parallel never collide.
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { initCa } from '../../src/identity/ca/store.ts';
import { createJoinToken } from '../../src/identity/ca/tokens.ts';
import { encodePemBundle } from '../../src/identity/bundle.ts';
import type { TrustBundle } from '../../src/identity/bundle.ts';
import { AmbitProcess } from './process.ts';

export interface TestNode {
  readonly name: string;
  /** The node's own address (metrics, readiness, admin bind here): 127.P.N.1 */
  readonly address: string;
  proc: AmbitProcess;
  readonly metricsUrl: string;
  readonly readinessUrl: string;
  readonly adminUrl: string;
}

export interface TestMesh {
  readonly dir: string;
  readonly configDir: string;
  readonly caDir: string;
  readonly caUrl: string;
  readonly bundleFile: string;
  readonly bundle: TrustBundle;
  readonly trustDomain: string;
  readonly nodes: Map<string, TestNode>;
  ca: AmbitProcess;
  /** Writes (or replaces) a file in the configuration directory. */
  writeConfig(file: string, yaml: string): Promise<void>;
  /** Starts (or restarts) a node's proxy and waits for readiness; `env` is added to the process's environment. */
  startNode(name: string, extraArgs?: string[], env?: NodeJS.ProcessEnv): Promise<TestNode>;
  stop(): Promise<void>;
}

export interface TestMeshOptions {
  /** 127.P.x.y: pick a different P per test file. */
  prefix: number;
  trustDomain?: string;
  nodes: string[];
  /** Configuration files (name → YAML); a MeshConfig is added unless one is given. */
  config: Record<string, string>;
  extraProxyArgs?: (node: string) => string[];
}

/** The address of node index n (0-based) in a mesh: 127.P.(n+1).host */
export function nodeIp(prefix: number, nodeIndex: number, host: number): string {
  return `127.${prefix}.${nodeIndex + 1}.${host}`;
}

export async function waitUntil(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await Promise.resolve().then(check).catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function startTestMesh(options: TestMeshOptions): Promise<TestMesh> {
  const trustDomain = options.trustDomain ?? 'cluster.local';
  const dir = await mkdtemp(join(tmpdir(), 'ambit-mesh-it-'));
  const configDir = join(dir, 'config');
  await mkdir(configDir, { recursive: true });
  const hasMesh = Object.values(options.config).some((yaml) => /kind:\s*MeshConfig/.test(yaml));
  if (!hasMesh) {
    await writeFile(join(configDir, 'mesh.yaml'), `apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: ${trustDomain}\n`);
  }
  for (const [file, yaml] of Object.entries(options.config)) await writeFile(join(configDir, file), yaml);
  const caDir = join(dir, 'ca');
  const state = await initCa(caDir, trustDomain);
  const bundleFile = join(dir, 'bundle.pem');
  await writeFile(bundleFile, encodePemBundle(state.bundle));
  const ca = AmbitProcess.start(['ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', '127.0.0.1:0']);
  const listening = await ca.waitForMessage('CA listening');
  const caUrl = String(listening.url);
  const nodes = new Map<string, TestNode>();

  const mesh: TestMesh = {
    dir,
    configDir,
    caDir,
    caUrl,
    bundleFile,
    bundle: state.bundle,
    trustDomain,
    nodes,
    ca,
    async writeConfig(file, yaml) {
      const temp = join(configDir, `.${file}.tmp`);
      await writeFile(temp, yaml);
      const { rename } = await import('node:fs/promises');
      await rename(temp, join(configDir, file));
    },
    async startNode(name, extraArgs = [], env = {}) {
      const index = options.nodes.indexOf(name);
      if (index < 0) throw new Error(`unknown node ${name}`);
      const existing = nodes.get(name);
      if (existing) await existing.proc.stop();
      const address = nodeIp(options.prefix, index, 1);
      const token = await createJoinToken(caDir, name, 600_000);
      const tokenFile = join(dir, `${name}.join-token`);
      await writeFile(tokenFile, `${token.token}\n`, { mode: 0o600 });
      const proxyArgs = [...(options.extraProxyArgs?.(name) ?? []), ...extraArgs];
      const proc = AmbitProcess.start([
        'proxy', '--node', name, '--config', configDir, '--ca', caUrl, '--ca-bundle', bundleFile, '--trust-domain', trustDomain,
        '--state-dir', join(dir, name), '--join-token-file', tokenFile,
        '--metrics', `${address}:15020`, '--readiness', `${address}:15021`, '--admin', `${address}:15000`,
        ...proxyArgs,
        // Stopped at once, as before drains existed, unless a test asks for its own.
        ...(proxyArgs.includes('--drain-timeout') ? [] : ['--drain-timeout', '0']),
      ], env);
      const node: TestNode = { name, address, proc, metricsUrl: `http://${address}:15020/metrics`, readinessUrl: `http://${address}:15021/healthz/ready`, adminUrl: `http://${address}:15000` };
      nodes.set(name, node);
      await proc.waitForMessage('proxy started', 30_000);
      await waitUntil(`${name} ready`, async () => {
        const response = await request(node.readinessUrl);
        await response.body.dump();
        return response.statusCode === 200;
      }, 30_000);
      return node;
    },
    async stop() {
      await Promise.all([...nodes.values()].map((node) => node.proc.stop()));
      await ca.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    for (const name of options.nodes) await mesh.startNode(name);
  } catch (error) {
    await mesh.stop();
    throw error;
  }
  return mesh;
}

/** Reads a proxy's /metrics and sums a counter over the series whose labels match. */
export async function metricSum(node: TestNode, name: string, match: Record<string, string> = {}): Promise<number> {
  const response = await request(node.metricsUrl);
  const text = await response.body.text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(match).every(([key, value]) => line.includes(`${key}="${value}"`))) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

export interface PodInput {
  name: string;
  namespace?: string;
  node: string;
  serviceAccount: string;
  ip: string;
  labels?: Record<string, string>;
  /** The `ambit.dev/outbound` annotation: explicit outbound listeners of this pod. */
  outbound?: string;
  /** Named container ports, for Services whose targetPort is a name. */
  ports?: Array<{ name: string; containerPort: number }>;
  /** status.hostIP: the address of the pod's node. */
  hostIp?: string;
}

/** One running Pod as YAML (JSON flow mappings are valid YAML). */
export function podYaml(pod: PodInput): string {
  const metadata: Record<string, unknown> = { name: pod.name, namespace: pod.namespace ?? 'demo' };
  if (pod.labels) metadata.labels = pod.labels;
  if (pod.outbound !== undefined) metadata.annotations = { 'ambit.dev/outbound': pod.outbound };
  const spec: Record<string, unknown> = { nodeName: pod.node, serviceAccountName: pod.serviceAccount };
  if (pod.ports) spec.containers = [{ name: 'app', ports: pod.ports }];
  const status = pod.hostIp === undefined ? { phase: 'Running', podIP: pod.ip } : { phase: 'Running', podIP: pod.ip, hostIP: pod.hostIp };
  return `apiVersion: v1\nkind: Pod\nmetadata: ${JSON.stringify(metadata)}\nspec: ${JSON.stringify(spec)}\nstatus: ${JSON.stringify(status)}\n`;
}

/** A Service selecting `selector` with TCP ports `{ name, port, targetPort }`. */
export function serviceYaml(service: { name: string; namespace?: string; selector: Record<string, string>; ports: Array<{ name: string; port: number; targetPort: number | string }> }): string {
  const metadata = { name: service.name, namespace: service.namespace ?? 'demo' };
  return `apiVersion: v1\nkind: Service\nmetadata: ${JSON.stringify(metadata)}\nspec: ${JSON.stringify({ selector: service.selector, ports: service.ports })}\n`;
}

/** Several YAML documents in one file. */
export function yamlDocuments(...documents: string[]): string {
  return documents.join('---\n');
}

/** A readiness probe's answer: its status and body. */
export async function probe(url: string): Promise<{ status: number; body: string }> {
  const response = await request(url);
  return { status: response.statusCode, body: await response.body.text() };
}
