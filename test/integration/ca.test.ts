// The real `ambit ca` process on loopback: attestation, node-authorized signing, restarts, outages,
// root rotation and federation between two trust domains.
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import * as net from 'node:net';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { AmbitProcess, freePort, runAmbit } from '../helpers/process.ts';
import { waitUntil } from '../helpers/mesh.ts';
import type { LogLine } from '../helpers/process.ts';
import { createTestCa } from '../helpers/certs.ts';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { BundleSet, createBundle, decodeBundle, decodePemBundle } from '../../src/identity/bundle.ts';
import { loadSvid, verifySvid } from '../../src/identity/svid.ts';
import type { Svid } from '../../src/identity/svid.ts';
import { createLogger, silentLogger } from '../../src/observe/log.ts';

const dirs: string[] = [];
const processes: AmbitProcess[] = [];
const agents: IdentityAgent[] = [];

afterEach(async () => {
  await Promise.all(agents.splice(0).map((agent) => agent.stop()));
  await Promise.all(processes.splice(0).map((proc) => proc.stop()));
});

afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-ca-it-'));
  dirs.push(dir);
  return dir;
}

interface MeshOptions {
  trustDomain: string;
  federation?: Array<{ trustDomain: string; bundleEndpoint: string; endpointSpiffeId: string; bundleFile: string }>;
}

/** A configuration directory: the mesh settings and pods web (node-a) and db (node-b). */
async function writeConfig(dir: string, options: MeshOptions): Promise<string> {
  const config = join(dir, 'config');
  await mkdir(config, { recursive: true });
  const federation = (options.federation ?? [])
    .map((peer) => `    - trustDomain: ${peer.trustDomain}\n      bundleEndpoint: ${peer.bundleEndpoint}\n      profile: https_spiffe\n      endpointSpiffeId: ${peer.endpointSpiffeId}\n      bundleFile: ${peer.bundleFile}\n`)
    .join('');
  await writeFile(join(config, 'mesh.yaml'), `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  trustDomain: ${options.trustDomain}
${federation ? `  federation:\n${federation}` : ''}`);
  await writeFile(join(config, 'pods.yaml'), `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: default }
spec:
  nodeName: node-a
  serviceAccountName: web
status:
  podIP: 10.0.0.10
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: data }
spec:
  nodeName: node-b
  serviceAccountName: db
status:
  podIP: 10.0.0.20
`);
  return config;
}

interface RunningCa {
  proc: AmbitProcess;
  url: string;
  caDir: string;
  configDir: string;
  port: number;
}

async function initCa(dir: string, trustDomain: string, extra: string[] = []): Promise<string> {
  const caDir = join(dir, 'ca');
  const result = await runAmbit(['ca', 'init', '--dir', caDir, '--trust-domain', trustDomain, ...extra]);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return caDir;
}

async function startCa(caDir: string, configDir: string, port = 0, extra: string[] = []): Promise<RunningCa> {
  const proc = AmbitProcess.start(['ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', `127.0.0.1:${port}`, '--state-poll', '200ms', ...extra]);
  processes.push(proc);
  const line = await proc.waitForMessage('CA listening');
  const url = String(line.url);
  return { proc, url, caDir, configDir, port: Number(new URL(url).port) };
}

/** A GET over TLS; the CA's serving certificate is not what these checks are about. */
async function httpsGet(url: string): Promise<string> {
  return await new Promise<string>((resolve, reject) => {
    const req = httpsRequest(url, { rejectUnauthorized: false, minVersion: 'TLSv1.3' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(new Error(`${url}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

async function createToken(caDir: string, node: string, ttl = '10m'): Promise<string> {
  const result = await runAmbit(['ca', 'token', 'create', '--dir', caDir, '--node', node, '--ttl', ttl]);
  expect(result.status).toBe(0);
  return result.stdout.trim();
}

async function auditLines(caDir: string): Promise<LogLine[]> {
  const text = await readFile(join(caDir, 'audit.log'), 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as LogLine);
}

async function waitForAudit(caDir: string, predicate: (line: LogLine) => boolean): Promise<LogLine> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const found = (await auditLines(caDir)).find(predicate);
    if (found) return found;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no audit line matched; have: ${JSON.stringify(await auditLines(caDir))}`);
}

async function bundleOf(caDir: string, trustDomain: string) {
  const result = await runAmbit(['ca', 'bundle', '--dir', caDir]);
  expect(result.status).toBe(0);
  return decodeBundle(trustDomain, result.stdout);
}

function agentArgs(ca: Pick<RunningCa, 'url'>, trustDomain: string, node: string, stateDir: string, out: string, bundleFile: string): string[] {
  return ['agent', '--ca', ca.url, '--trust-domain', trustDomain, '--bundle', bundleFile, '--node', node, '--state-dir', stateDir, '--out', out, '--once'];
}

function inProcessAgent(ca: RunningCa, trustDomain: string, node: string, bundle: Awaited<ReturnType<typeof bundleOf>>, options: Partial<ConstructorParameters<typeof IdentityAgent>[0]> = {}): IdentityAgent {
  const agent = new IdentityAgent({ caUrl: ca.url, trustDomain, nodeName: node, bootstrapBundle: bundle, logger: process.env.DBG ? createLogger({ name: 'agent', level: 'debug' }) : silentLogger(), ...options });
  agents.push(agent);
  return agent;
}

function waitForEvent<T>(agent: IdentityAgent, event: 'rotated' | 'bundles' | 'failed', predicate: (value: T) => boolean, timeoutMs = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for agent event ${event} where ${predicate.toString()}`)), timeoutMs);
    const listener = (value: T) => {
      if (!predicate(value)) return;
      clearTimeout(timer);
      (agent as unknown as { off(e: string, l: (v: T) => void): void }).off(event, listener);
      resolve(value);
    };
    (agent as unknown as { on(e: string, l: (v: T) => void): void }).on(event, listener);
  });
}

const TD = 'cluster.local';

/** An agent of node-a in this process with WEB's certificate (60 s); the identities of the certificates it gets, in order. */
async function webCertificates(ca: RunningCa, dir: string, token: string, bundle: Awaited<ReturnType<typeof bundleOf>>): Promise<string[]> {
  const agent = inProcessAgent(ca, TD, 'node-a', bundle, { joinToken: token, ttlSeconds: 60, stateDir: join(dir, 'state') });
  const rotated: string[] = [];
  agent.on('rotated', (svid) => rotated.push(svid.id.id));
  await agent.start();
  await agent.ensure(WEB);
  return rotated;
}

/** A CA of its own, serving, with a join token for node-a and its bundle: for an agent in this process. */
/**
 * A CA for node-a with its bundle on disk, serving or not (an address nothing answers on), and how to start a node's
 * long-running process on a state directory against it: the state-directory tests' setup.
 */
async function nodeAWithCa(options: { serving: boolean }) {
  const dir = await tempDir();
  const caDir = await initCa(dir, TD);
  const configDir = await writeConfig(dir, { trustDomain: TD });
  const caUrl = options.serving ? (await startCa(caDir, configDir)).url : `https://127.0.0.1:${await freePort()}`;
  const bundleFile = join(dir, 'bundle.pem');
  await writeFile(bundleFile, (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
  const stateDir = join(dir, 'state');
  const commands = {
    agent: agentArgs({ url: caUrl }, TD, 'node-a', stateDir, join(dir, 'out'), bundleFile).filter((arg) => arg !== '--once'),
    proxy: ['proxy', '--node', 'node-a', '--config', configDir, '--ca', caUrl, '--ca-bundle', bundleFile, '--trust-domain', TD, '--state-dir', stateDir],
  };
  return { caDir, stateDir, lockFile: join(stateDir, 'lock'), commands, token: () => createToken(caDir, 'node-a') };
}

async function freshCaForNodeA() {
  const dir = await tempDir();
  const caDir = await initCa(dir, TD);
  const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
  return { dir, ca, token: await createToken(caDir, 'node-a'), bundle: await bundleOf(caDir, TD) };
}
const WEB = `spiffe://${TD}/ns/default/sa/web`;
const DB = `spiffe://${TD}/ns/data/sa/db`;

// Each test runs the CLI several times (a Node start each, ~1.5 s on a loaded 2-core machine) and waits through
// renewals: the root rotation and federation tests took 17-24 s with both cores busy, too close to the default 30 s.
describe('ambit ca on loopback', { timeout: 60_000 }, () => {
  it('attests a node with a join token and signs SVIDs for the workloads placed on it', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const token = await createToken(caDir, 'node-a');
    const out = join(dir, 'out');
    // As an earlier version left them: removed.
    await mkdir(out);
    await writeFile(join(out, 'ambit_node_node-a-key.pem'), 'old key\n');
    await writeFile(join(out, 'ambit_node_node-a.pem'), 'old certificate\n');
    const result = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state-a'), out, join(dir, 'bundle.pem')), '--join-token', token, '--identity', WEB]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);

    const bundles = new BundleSet([decodePemBundle(TD, await readFile(join(out, 'bundle.pem'), 'utf8'))]);
    // The node SVID stays in the state directory: its holder could ask the CA for every identity on the node.
    expect(existsSync(join(out, 'ambit_node_node-a-key.pem'))).toBe(false);
    expect(existsSync(join(out, 'ambit_node_node-a.pem'))).toBe(false);
    expect(existsSync(join(dir, 'state-a', 'node-svid.pem'))).toBe(true);
    // Each file ends in a newline, so `cat key.pem cert.pem` is a file OpenSSL reads.
    expect(await readFile(join(out, 'ns_default_sa_web-key.pem'), 'utf8')).toMatch(/-----END PRIVATE KEY-----\n$/);
    expect(await readFile(join(dir, 'state-a', 'node-svid.pem'), 'utf8')).toContain('-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----');
    const web = loadSvid(await readFile(join(out, 'ns_default_sa_web.pem'), 'utf8'), await readFile(join(out, 'ns_default_sa_web-key.pem'), 'utf8'));
    expect(web.id.id).toBe(WEB);
    expect(verifySvid(web.chain, bundles).valid).toBe(true);
    await waitForAudit(caDir, (line) => line.event === 'node_attested' && line.node === 'node-a');
    await waitForAudit(caDir, (line) => line.event === 'svid_issued' && line.spiffeId === WEB && line.caller === `spiffe://${TD}/ambit/node/node-a`);
  });

  it('takes the signing budget of each node from --node-sign-budget, 256 by default', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const config = await writeConfig(dir, { trustDomain: TD });
    const listening = (ca: RunningCa) => ca.proc.lines.find((line) => line.msg === 'CA listening');
    expect(listening(await startCa(caDir, config, 0, ['--node-sign-budget', '3']))).toMatchObject({ nodeSignBudget: { burst: 3, perMinute: 3 } });
    const other = await initCa(join(dir, 'other'), TD);
    expect(listening(await startCa(other, config))).toMatchObject({ nodeSignBudget: { burst: 256, perMinute: 256 } });
  });

  it('ambit agent --once exits 2 at once when no CA answers its first attestation, keeping the key the CA may have bound the token to', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const port = await freePort();
    const started = Date.now();
    const result = await runAmbit([...agentArgs({ url: `https://127.0.0.1:${port}` }, TD, 'node-a', join(dir, 'state'), join(dir, 'out'), join(dir, 'bundle.pem')), '--join-token', await createToken(caDir, 'node-a')], { timeoutMs: 30_000 });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('CA_UNREACHABLE');
    expect(Date.now() - started).toBeLessThan(15_000);
    // The next start retries with the same key.
    expect(existsSync(join(dir, 'state', 'attest-key.json'))).toBe(true);
  });

  it('ambit agent --once exits 2 naming --out when it could not write the files, not 0 with them missing', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const out = join(dir, 'out');
    // A directory where the key file goes: its write (a rename over it) fails, even for root.
    await mkdir(join(out, 'ns_default_sa_web-key.pem'), { recursive: true });
    const result = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state'), out, join(dir, 'bundle.pem')), '--join-token', await createToken(caDir, 'node-a'), '--identity', WEB]);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('FILE_WRITE');
    expect(result.stderr).toContain(`--out ${out}`);
  });

  it('ambit agent with a --state-dir it cannot write exits 2 naming it before attesting, and the join token still works', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const token = await createToken(caDir, 'node-a');
    // A typo naming a file: nowhere to keep the node SVID the token would buy.
    const file = join(dir, 'not-a-dir');
    await writeFile(file, 'x\n');
    const refused = await runAmbit([...agentArgs(ca, TD, 'node-a', file, join(dir, 'out'), join(dir, 'bundle.pem')), '--join-token', token]);
    expect(refused.status).toBe(2);
    expect(refused.stderr).toContain('[FILE_WRITE]');
    expect(refused.stderr).toContain(`state directory ${file} cannot be created: a file is in the way`);
    // Not spent: the same token attests with the right directory.
    const ok = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state'), join(dir, 'out'), join(dir, 'bundle.pem')), '--join-token', token]);
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
  });

  it('ambit agent --metrics on an address it cannot bind exits 2 naming --metrics, as ambit proxy does', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const args = agentArgs(ca, TD, 'node-a', join(dir, 'state'), join(dir, 'out'), join(dir, 'bundle.pem')).filter((arg) => arg !== '--once');
    // The CA's own port: taken.
    const result = await runAmbit([...args, '--join-token', await createToken(caDir, 'node-a'), '--metrics', `127.0.0.1:${ca.port}`], { timeoutMs: 30_000 });
    expect(result.status).toBe(2);
    expect(result.stderr).toContain(`--metrics 127.0.0.1:${ca.port}`);
    expect(result.stderr).toContain('EADDRINUSE');
    expect(result.stderr).toContain('[PROXY_BIND]');
  });

  it('ambit ca serve refuses to start, in one line naming what, on a port in use or an audit log it cannot append to', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const configDir = await writeConfig(dir, { trustDomain: TD });
    const ca = await startCa(caDir, configDir);
    const taken = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', `127.0.0.1:${ca.port}`]);
    expect(taken.status).toBe(2);
    expect(taken.stderr).toContain(`cannot listen on 127.0.0.1:${ca.port} for the CA`);
    expect(taken.stderr).toContain('EADDRINUSE');
    expect(taken.stderr).toContain('[PROXY_BIND]');
    expect(taken.stderr).not.toMatch(/\n\s+at /);
    // A directory where the audit log should be: no append there, even for root.
    const auditDir = join(dir, 'audit-here');
    await mkdir(auditDir);
    const unwritable = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', '127.0.0.1:0', '--audit-log', auditDir]);
    expect(unwritable.status).toBe(2);
    expect(unwritable.stderr).toContain(`--audit-log ${auditDir}: cannot append`);
    expect(unwritable.stdout).not.toContain('CA listening');
  });

  it('refuses a node that asks for a workload identity placed on another node, and audits who asked for what', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const token = await createToken(caDir, 'node-b');
    const result = await runAmbit([...agentArgs(ca, TD, 'node-b', join(dir, 'state-b'), join(dir, 'out'), join(dir, 'bundle.pem')), '--join-token', token, '--identity', WEB]);
    expect(result.status).toBe(2);
    expect(result.stderr).toContain('[CA_REJECTED]');
    expect(result.stderr).toContain('403');
    const refused = await waitForAudit(caDir, (line) => line.event === 'sign_refused');
    expect(refused).toMatchObject({ code: 'CA_NOT_AUTHORIZED', node: 'node-b', requested: WEB, caller: `spiffe://${TD}/ambit/node/node-b` });

    // The same node may have its own workload's identity.
    const own = await runAmbit([...agentArgs(ca, TD, 'node-b', join(dir, 'state-b'), join(dir, 'out'), join(dir, 'bundle.pem')), '--identity', DB]);
    expect(own.stderr).toBe('');
    expect(own.status).toBe(0);
  });

  it('refuses to sign for a caller without a node SVID', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    const bundle = await bundleOf(caDir, TD);
    const agent = inProcessAgent(ca, TD, 'node-a', bundle);
    // Not started: no node SVID, so the request goes out without a client certificate.
    const failure = waitForEvent<{ spiffeId: string; error: { code: string; message: string } }>(agent, 'failed', () => true);
    void agent.ensure(WEB);
    const { error } = await failure;
    expect(error.code).toBe('CA_NODE_REFUSED');
    expect(error.message).toContain('CA_UNAUTHENTICATED');
  });

  it('spends a join token once, also across a CA restart, and refuses expired tokens and tokens for other nodes', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const configDir = await writeConfig(dir, { trustDomain: TD });
    let ca = await startCa(caDir, configDir);
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const token = await createToken(caDir, 'node-a');
    const first = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state-1'), join(dir, 'out-1'), join(dir, 'bundle.pem')), '--join-token', token]);
    expect(first.status).toBe(0);

    await ca.proc.stop();
    processes.splice(processes.indexOf(ca.proc), 1);
    ca = await startCa(caDir, configDir, ca.port);
    const reuse = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state-2'), join(dir, 'out-2'), join(dir, 'bundle.pem')), '--join-token', token]);
    expect(reuse.status).toBe(2);
    expect(reuse.stderr).toContain('JOIN_TOKEN_INVALID');
    await waitForAudit(caDir, (line) => line.event === 'attest_refused' && line.code === 'JOIN_TOKEN_INVALID');

    const wrongNode = await createToken(caDir, 'node-a');
    const stolen = await runAmbit([...agentArgs(ca, TD, 'node-b', join(dir, 'state-3'), join(dir, 'out-3'), join(dir, 'bundle.pem')), '--join-token', wrongNode]);
    expect(stolen.status).toBe(2);
    expect(stolen.stderr).toContain('JOIN_TOKEN_WRONG_NODE');
    // The operator who mistyped --node learns the token is gone, and how to get another.
    expect(stolen.stderr).toMatch(/created for node "node-a", presented by "node-b"; it is spent now: create another \(ambit ca token create --node NAME\) and give the agent the same --node NAME/);

    const shortLived = await createToken(caDir, 'node-a', '1s');
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    const late = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state-4'), join(dir, 'out-4'), join(dir, 'bundle.pem')), '--join-token', shortLived]);
    expect(late.status).toBe(2);
    expect(late.stderr).toContain('JOIN_TOKEN_EXPIRED');

    // The node that joined keeps its stored node SVID across the restart: no token needed to renew.
    const again = await runAmbit([...agentArgs(ca, TD, 'node-a', join(dir, 'state-1'), join(dir, 'out-1'), join(dir, 'bundle.pem')), '--identity', WEB]);
    expect(again.stderr).toBe('');
    expect(again.status).toBe(0);
  });

  it('keeps serving a valid certificate while the CA is down, backs off, and recovers when it returns', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const configDir = await writeConfig(dir, { trustDomain: TD });
    const ca = await startCa(caDir, configDir);
    const token = await createToken(caDir, 'node-a');
    const agent = inProcessAgent(ca, TD, 'node-a', await bundleOf(caDir, TD), { joinToken: token, ttlSeconds: 8, backoffInitialMs: 200, stateDir: join(dir, 'state'), random: () => 0.5 }); // no jitter: the gaps are 200, 400, 800 ms
    await agent.start();
    const before = await agent.ensure(WEB);

    const failures: Array<{ at: number }> = [];
    agent.on('failed', ({ spiffeId }) => {
      if (spiffeId === WEB) failures.push({ at: Date.now() });
    });
    await ca.proc.stop();
    processes.splice(processes.indexOf(ca.proc), 1);
    // Renewal is due at about 4 s; let a few attempts fail.
    const deadline = Date.now() + 12_000;
    while (failures.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(failures.length).toBeGreaterThanOrEqual(3);
    // Backoff: the gaps between attempts grow.
    const gaps = failures.slice(1).map((failure, i) => failure.at - (failures[i] as { at: number }).at);
    expect(gaps[gaps.length - 1]).toBeGreaterThan((gaps[0] as number) * 1.2);
    // The old certificate keeps serving while it is valid.
    const serving = agent.current(WEB) as Svid;
    expect(serving.chain[0]?.serialNumber).toBe(before.chain[0]?.serialNumber);
    expect(serving.notAfter.getTime()).toBeGreaterThan(Date.now());

    const recovered = waitForEvent<Svid>(agent, 'rotated', (svid) => svid.id.id === WEB);
    await startCa(caDir, configDir, ca.port);
    const fresh = await recovered;
    expect(fresh.chain[0]?.serialNumber).not.toBe(before.chain[0]?.serialNumber);
    expect(verifySvid(fresh.chain, agent.bundles()).valid).toBe(true);
  });

  it('ambit agent --metrics serves /metrics while it runs and exits 0 on SIGTERM, its metrics server closed', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const configDir = await writeConfig(dir, { trustDomain: TD });
    const ca = await startCa(caDir, configDir);
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const args = agentArgs(ca, TD, 'node-a', join(dir, 'state'), join(dir, 'out'), join(dir, 'bundle.pem')).filter((arg) => arg !== '--once');
    // Refused before the token is spent: --metrics with --once.
    const both = await runAmbit([...args, '--once', '--metrics', '127.0.0.1:1', '--join-token', 'unused']);
    expect(both.status).toBe(2);
    expect(both.stderr).toContain('--metrics');
    const port = await freePort();
    const agent = AmbitProcess.start([...args, '--join-token', await createToken(caDir, 'node-a'), '--metrics', `127.0.0.1:${port}`]);
    processes.push(agent);
    await agent.waitForMessage('agent running');
    const scraped = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toContain('ambit_trust_bundle_sequence');
    // The proxy's hardened server: one client's idle connections are capped, and other clients are still served.
    const idle: net.Socket[] = [];
    try {
      for (let i = 0; i < 40; i++) idle.push(net.connect(port, '127.0.0.1').on('error', () => {}));
      await waitUntil('the idle connections past the cap closed', () => idle.filter((socket) => socket.closed).length > 0, 5_000);
      const other = await new Promise<string>((resolve, reject) => {
        const socket = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => socket.write(`GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`));
        let text = '';
        socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
      expect(other).toMatch(/^HTTP\/1\.1 200 /);
    } finally {
      for (const socket of idle) socket.destroy();
    }
    const stopping = Date.now();
    expect(await agent.stop()).toBe(0);
    expect(Date.now() - stopping).toBeLessThan(4_000);
  });

  it('a second ambit agent on the same --state-dir waits for the first to stop instead of renewing the node SVID under it', async () => {
    const { caDir, commands, token } = await nodeAWithCa({ serving: true });
    const first = AmbitProcess.start([...commands.agent, '--join-token', await token()]);
    processes.push(first);
    await first.waitForMessage('agent running');
    const issued = (await auditLines(caDir)).filter((line) => line.event === 'svid_issued').length;
    const second = AmbitProcess.start(commands.agent);
    processes.push(second);
    const waiting = await second.waitFor((line) => typeof line.msg === 'string' && line.msg.includes('is in use by another ambit process'), 10_000, 'the wait for the state directory');
    expect(waiting.msg).toContain(`pid ${first.child.pid}`);
    // Waiting, it asks the CA for nothing: the first agent's node SVID stays the one the CA accepts.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect((await auditLines(caDir)).filter((line) => line.event === 'svid_issued').length).toBe(issued);
    expect(second.lines.some((line) => line.msg === 'agent running')).toBe(false);
    // --once does not wait: it says whose the directory is, at once.
    const once = await runAmbit([...commands.agent, '--once'], { timeoutMs: 10_000 });
    expect(once.status).toBe(2);
    expect(once.stderr).toContain('[STATE_DIR_LOCKED]');
    expect(once.stderr).toContain(`pid ${first.child.pid}`);
    // The first stops (its lock goes with it): the second takes the directory and runs on the stored node SVID.
    expect(await first.stop()).toBe(0);
    await second.waitForMessage('agent running', 20_000);
    expect(await second.stop()).toBe(0);
  }, 40_000);

  it('ambit agent without --metrics keeps running, waits out a CA it cannot reach yet, and exits 0 on SIGTERM', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const configDir = await writeConfig(dir, { trustDomain: TD });
    await writeFile(join(dir, 'bundle.pem'), (await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'pem'])).stdout);
    const port = await freePort();
    const token = await createToken(caDir, 'node-a');
    const args = agentArgs({ url: `https://127.0.0.1:${port}` }, TD, 'node-a', join(dir, 'state'), join(dir, 'out'), join(dir, 'bundle.pem')).filter((arg) => arg !== '--once');
    const agent = AmbitProcess.start([...args, '--join-token', token]);
    processes.push(agent);
    let exited: number | null | undefined;
    agent.child.once('exit', (code) => (exited = code));
    // No CA yet: the agent backs off and stays.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(exited).toBeUndefined();
    await startCa(caDir, configDir, port);
    await agent.waitForMessage('agent running', 20_000);
    // Running, with nothing but its renewal timers to keep it.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(exited).toBeUndefined();
    expect(await agent.stop()).toBe(0);
  }, 40_000);

  it.each([
    ['proxy', 'proxy started'],
    ['agent', 'agent running'],
  ] as const)('ambit %s whose state directory lease another process took (it was stopped past the lease) exits 2 with STATE_DIR_LOCKED, renewing nothing more', async (which, running) => {
    const { commands, token, lockFile } = await nodeAWithCa({ serving: true });
    const proxy = AmbitProcess.start([...commands[which], '--join-token', await token()]);
    processes.push(proxy);
    await proxy.waitForMessage(running);
    // What a successor that found the lease stale leaves: its own lock.
    await writeFile(lockFile, `${JSON.stringify({ pid: 1, host: 'successor', pidNamespace: 'pid:[1]', bootId: '', startedAt: new Date().toISOString(), token: 'successor' })}\n`);
    const code = await new Promise<number | null>((resolve) => {
      if (proxy.child.exitCode !== null) resolve(proxy.child.exitCode);
      proxy.child.once('exit', (exit) => resolve(exit));
    });
    expect(code).toBe(2);
    expect(proxy.stderr).toContain('[STATE_DIR_LOCKED]');
    // The successor's lock is left as it wrote it.
    expect(JSON.parse(await readFile(lockFile, 'utf8'))).toMatchObject({ token: 'successor' });
  }, 30_000);

  // The default action had killed it with the lock held: a restarted container waited out the lease.
  it.each(['proxy', 'agent'] as const)('ambit %s stopped (SIGTERM) while it waits for a CA it cannot reach exits 0 and lets go of its state directory', async (which) => {
    const { commands, token, lockFile } = await nodeAWithCa({ serving: false });
    const started = AmbitProcess.start([...commands[which], '--join-token', await token()]);
    processes.push(started);
    await waitUntil('the state directory taken', () => existsSync(lockFile), 10_000);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(await started.stop()).toBe(0);
    expect(existsSync(lockFile)).toBe(false);
  }, 30_000);

  it('ambit ca serve stopped (SIGTERM) while it loads a large configuration exits 0, saying so', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD);
    const config = await writeConfig(dir, { trustDomain: TD });
    // Enough pods that loading them takes a while (the window the signal lands in).
    const pods = Array.from({ length: 6_000 }, (_, i) => `apiVersion: v1\nkind: Pod\nmetadata: { name: p-${i}, namespace: default }\nspec:\n  nodeName: node-${i % 50}\n  serviceAccountName: sa-${i % 100}\nstatus:\n  podIP: 10.9.${(i >> 8) & 255}.${i & 255}\n`);
    await writeFile(join(config, 'many.yaml'), pods.join('---\n'));
    const auditFile = join(dir, 'ca-audit.log');
    const ca = AmbitProcess.start(['ca', 'serve', '--dir', caDir, '--config', config, '--listen', '127.0.0.1:0', '--audit-log', auditFile]);
    processes.push(ca);
    // The audit log is opened after the signal handlers are in place, before the configuration is read.
    await waitUntil('the audit log opened', () => existsSync(auditFile), 10_000);
    expect(await ca.stop(), ca.stderr).toBe(0);
    // Stopped where it was (loading the configuration), not once started.
    expect(ca.lines.some((line) => line.msg === 'CA stopped before it had started')).toBe(true);
  }, 30_000);

  it("does not ask the CA again and again when this host's clock runs ahead of the CA's by more than half a certificate's life", async () => {
    const { dir, ca, token, bundle } = await freshCaForNodeA();
    // This process's clock (the agent's) 40 s ahead of the CA's; certificates of 60 s: each is due on receipt.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 40_000 });
    try {
      const rotated = await webCertificates(ca, dir, token, bundle);
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(rotated.filter((id) => id === WEB)).toHaveLength(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it("takes the certificates the CA issues when this host's clock runs behind the CA's by more than the 10 s backdating, and renews from their receipt", async () => {
    const { dir, ca, token, bundle } = await freshCaForNodeA();
    // This process's clock (the agent's) 40 s behind the CA's: each fresh certificate starts 30 s in its future. It
    // used to refuse every one, the first attestation's included, which spent the join token for nothing.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() - 40_000 });
    try {
      const agent = inProcessAgent(ca, TD, 'node-a', bundle, { joinToken: token, ttlSeconds: 8, stateDir: join(dir, 'state') });
      const rotated: string[] = [];
      agent.on('rotated', (svid) => rotated.push(svid.id.id));
      await agent.start();
      const web = await agent.ensure(WEB);
      expect(web.notBefore.getTime()).toBeGreaterThan(Date.now());
      // Renewed about half its 8 s from receipt (timers are real here), not when this host's clock says half its life
      // has passed: 44 s on, long after its end.
      for (let i = 0; i < 120 && rotated.filter((id) => id === WEB).length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(rotated.filter((id) => id === WEB)).toHaveLength(2);
      // Restarted within the skew, without a token (it was spent): the stored node SVID, not yet valid by this clock,
      // is used, not thrown away for an attestation that can only be refused.
      await agent.stop();
      const restarted = inProcessAgent(ca, TD, 'node-a', bundle, { ttlSeconds: 8, stateDir: join(dir, 'state') });
      await restarted.start();
      expect(restarted.nodeSvid()?.id.id).toBe(`spiffe://${TD}/ambit/node/node-a`);
    } finally {
      vi.useRealTimers();
    }
  });

  it('renews a certificate that fell due while the host was suspended (the wall clock jumped, timers did not)', async () => {
    const { dir, ca, token, bundle } = await freshCaForNodeA();
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    try {
      const rotated = await webCertificates(ca, dir, token, bundle);
      // Its renewal scheduled (right after the certificate is handed out)...
      await new Promise((resolve) => setTimeout(resolve, 200));
      // ...then 45 s of a 60 s certificate pass while timers stand still: that renewal (due at about 30 s) is late.
      vi.setSystemTime(Date.now() + 45_000);
      // Waited out on real timers (Date is this test's): well before the late timer's own 30 s.
      for (let i = 0; i < 100 && rotated.filter((id) => id === WEB).length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(rotated.filter((id) => id === WEB)).toHaveLength(2);
    } finally {
      vi.useRealTimers();
    }
  });

  it('rotates the root with overlap: both roots trusted until the old one is withdrawn', async () => {
    const dir = await tempDir();
    const caDir = await initCa(dir, TD, ['--refresh-hint', '1s']);
    const ca = await startCa(caDir, await writeConfig(dir, { trustDomain: TD }));
    const token = await createToken(caDir, 'node-a');
    // A fixed draw re-issues within 1 s of a bundle change instead of anywhere in 5 s (it also fixes the renewal
    // point, 47 % of the lifetime left, and the backoff's jitter). The node SVID (1 h) is renewed under the new root
    // only by that re-issue; the 6 s workload SVID also renews on its own every ~3 s.
    const installBundle = await bundleOf(caDir, TD);
    const agent = inProcessAgent(ca, TD, 'node-a', installBundle, { joinToken: token, stateDir: join(dir, 'state-a'), ttlSeconds: 6, minBundleRefreshMs: 200, random: () => 0.2 });
    await agent.start();
    const oldSvid = await agent.ensure(WEB);
    // node-b attests under the old root, then goes offline: its node SVID (the CA's default lifetime, 1 h) is never
    // renewed under the new one.
    const offline = inProcessAgent(ca, TD, 'node-b', await bundleOf(caDir, TD), { joinToken: await createToken(caDir, 'node-b') });
    await offline.start();
    await offline.stop();
    const oldRoot = agent.bundles().get(TD)?.roots[0];
    expect(agent.bundles().get(TD)?.roots).toHaveLength(1);
    // Judge the old certificate inside its own validity, so only trust decides.
    const whileOldValid = { at: new Date(oldSvid.notAfter.getTime() - 1000) };

    const overlap = waitForEvent<BundleSet>(agent, 'bundles', (set) => set.get(TD)?.roots.length === 2);
    expect((await runAmbit(['ca', 'root', 'prepare', '--dir', caDir])).status).toBe(0);
    // A second prepare is refused, with advice that works: a prepared authority can only be activated.
    const second = await runAmbit(['ca', 'root', 'prepare', '--dir', caDir]);
    expect(second.status).toBe(2);
    expect(second.stderr).toContain('activate it first');
    expect(second.stderr).not.toContain('withdraw');
    const newRoot = (await overlap).get(TD)?.roots.find((root) => root.serialNumber !== oldRoot?.serialNumber);
    const newRootOnly = new BundleSet([createBundle(TD, [newRoot!])]);
    // Prepared, not active: renewals still come from the old root.
    expect(verifySvid(oldSvid.chain, newRootOnly, whileOldValid).valid).toBe(false);
    // Nor is anything re-issued for it: the CA still signs with the old root (its ambit-signing-authority header says
    // so), and re-issuing every certificate of every node at each bundle change would be a CSR storm. The node SVID
    // renews only when re-issued (a re-issue would come within 1 s with this draw).
    const nodeSerial = agent.nodeSvid()?.chain[0]?.serialNumber;
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect(agent.nodeSvid()?.chain[0]?.serialNumber, 'the node SVID was re-issued after a prepare').toBe(nodeSerial);

    // The agent re-issues everything after the activation's bundle change, the node SVID included (listening for both
    // before activating: either may come first).
    const webRenewed = waitForEvent<Svid>(agent, 'rotated', (svid) => svid.id.id === WEB && verifySvid(svid.chain, newRootOnly).valid, 30_000);
    const nodeRenewed = waitForEvent<Svid>(agent, 'rotated', (svid) => svid.id.id === agent.nodeId && verifySvid(svid.chain, newRootOnly).valid, 30_000);
    expect((await runAmbit(['ca', 'root', 'activate', '--dir', caDir])).status).toBe(0);
    const newSvid = await webRenewed;
    // During the overlap both the old and the new certificates verify.
    expect(verifySvid(oldSvid.chain, agent.bundles(), whileOldValid).valid).toBe(true);
    expect(verifySvid(newSvid.chain, agent.bundles()).valid).toBe(true);

    await nodeRenewed;
    // Every holder on node-a now presents the new root's certificates, but the offline node-b still holds a valid
    // one of the old root (the CA's audit log says so): withdrawing would cut it off, so it is refused, naming it.
    const early = await runAmbit(['ca', 'root', 'withdraw', '--dir', caDir]);
    expect(early.status).toBe(2);
    expect(early.stderr).toContain('[CA_STATE]');
    expect(early.stderr).toContain(`spiffe://${TD}/ambit/node/node-b still holds a certificate from`);
    // The operator decides: --grace 0s withdraws at once.
    const withdrawn = waitForEvent<BundleSet>(agent, 'bundles', (set) => set.get(TD)?.roots.length === 1);
    expect((await runAmbit(['ca', 'root', 'withdraw', '--dir', caDir, '--grace', '0s'])).status).toBe(0);
    const after = await withdrawn;
    expect(verifySvid(oldSvid.chain, after, whileOldValid).error?.code).toBe('SVID_CHAIN_INVALID');
    // Judged inside its own 6 s validity too: on a slow machine the withdrawal can come after it expired.
    expect(verifySvid(newSvid.chain, after, { at: new Date(newSvid.notAfter.getTime() - 1000) }).valid).toBe(true);
    // And the agent keeps renewing against the new root alone.
    const later = await waitForEvent<Svid>(agent, 'rotated', (svid) => svid.id.id === WEB);
    expect(verifySvid(later.chain, after).valid).toBe(true);

    // node-a restarts with the bundle it was installed with (the old root only): the bundle the CA served last,
    // kept in its state directory, still lets it reach the CA (serving under the new root) and load its node SVID.
    await agent.stop();
    const restarted = inProcessAgent(ca, TD, 'node-a', installBundle, { stateDir: join(dir, 'state-a'), ttlSeconds: 6 });
    await restarted.start();
    expect(verifySvid(restarted.nodeSvid()!.chain, after).valid).toBe(true);
    expect(verifySvid((await restarted.ensure(WEB)).chain, after).valid).toBe(true);
    await restarted.stop();
    // What a restart trusts before the CA answers (it is down now): the install bundle it was stored with (a
    // DaemonSet's mounted file, rewritten for every pod) does not bring back the root withdrawn since...
    await ca.proc.stop();
    const stale = inProcessAgent(ca, TD, 'node-a', installBundle, { stateDir: join(dir, 'state-a') });
    await stale.start();
    expect(stale.bundles().get(TD)?.roots.map((root) => root.serialNumber)).toEqual([newRoot!.serialNumber]);
    expect(verifySvid(oldSvid.chain, stale.bundles(), whileOldValid).error?.code).toBe('SVID_CHAIN_INVALID');
    await stale.stop();
    // ...while a root the operator adds to it since is newer knowledge: added.
    const operatorRoot = (await createTestCa(TD)).root.cert;
    const reinstalled = inProcessAgent(ca, TD, 'node-a', createBundle(TD, [...installBundle.roots, operatorRoot]), { stateDir: join(dir, 'state-a') });
    await reinstalled.start();
    expect(reinstalled.bundles().get(TD)?.roots.map((root) => root.serialNumber).sort()).toEqual([newRoot!.serialNumber, operatorRoot.serialNumber].sort());
  });

  it('federates two trust domains: each CA fetches the other bundle from its endpoint and serves both', async () => {
    const dir = await tempDir();
    const [portOne, portTwo] = [await freePort(), await freePort()];
    const caOne = await initCa(join(dir, 'one'), 'one.test', ['--refresh-hint', '1s']);
    const caTwo = await initCa(join(dir, 'two'), 'two.test', ['--refresh-hint', '1s']);
    // Each side bootstraps trust in the other's endpoint with a bundle file exchanged out of band.
    const configOne = await writeConfig(join(dir, 'one'), { trustDomain: 'one.test', federation: [{ trustDomain: 'two.test', bundleEndpoint: `https://127.0.0.1:${portTwo}/bundle`, endpointSpiffeId: 'spiffe://two.test/ambit/ca', bundleFile: 'two.json' }] });
    const configTwo = await writeConfig(join(dir, 'two'), { trustDomain: 'two.test', federation: [{ trustDomain: 'one.test', bundleEndpoint: `https://127.0.0.1:${portOne}/bundle`, endpointSpiffeId: 'spiffe://one.test/ambit/ca', bundleFile: 'one.json' }] });
    await writeFile(join(configOne, 'two.json'), (await runAmbit(['ca', 'bundle', '--dir', caTwo])).stdout);
    await writeFile(join(configTwo, 'one.json'), (await runAmbit(['ca', 'bundle', '--dir', caOne])).stdout);
    const one = await startCa(caOne, configOne, portOne, ['--federation-min-refresh', '200ms']);
    const two = await startCa(caTwo, configTwo, portTwo, ['--federation-min-refresh', '200ms']);
    await one.proc.waitFor((line) => line.msg === 'federated bundle updated' && line.trustDomain === 'two.test');
    await two.proc.waitFor((line) => line.msg === 'federated bundle updated' && line.trustDomain === 'one.test');

    // A workload of two.test is trusted by one.test's agents through the federated bundle.
    const tokenOne = await createToken(caOne, 'node-a');
    const agentOne = inProcessAgent(one, 'one.test', 'node-a', await bundleOf(caOne, 'one.test'), { joinToken: tokenOne });
    await agentOne.start();
    await agentOne.refreshBundles();
    expect(agentOne.bundles().trustDomains().sort()).toEqual(['one.test', 'two.test']);
    const tokenTwo = await createToken(caTwo, 'node-b');
    const agentTwo = inProcessAgent(two, 'two.test', 'node-b', await bundleOf(caTwo, 'two.test'), { joinToken: tokenTwo });
    await agentTwo.start();
    const db = await agentTwo.ensure('spiffe://two.test/ns/data/sa/db');
    expect(verifySvid(db.chain, agentOne.bundles()).valid).toBe(true);
    const web = await agentOne.ensure('spiffe://one.test/ns/default/sa/web');
    await agentTwo.refreshBundles();
    expect(verifySvid(web.chain, agentTwo.bundles()).valid).toBe(true);
    // A two.test CA can still never vouch for a one.test identity.
    expect(verifySvid(db.chain, new BundleSet([agentOne.bundles().get('one.test')!])).error?.code).toBe('TRUST_DOMAIN_UNKNOWN');

    // A root rotation in two.test reaches one.test through the endpoint, with the new root trusted before use.
    expect((await runAmbit(['ca', 'root', 'prepare', '--dir', caTwo])).status).toBe(0);
    await one.proc.waitFor((line) => line.msg === 'federated bundle updated' && line.trustDomain === 'two.test' && line.roots === 2);
  });

  it('takes up and drops a federation peer when the MeshConfig changes, without a restart', async () => {
    const dir = await tempDir();
    const caOne = await initCa(join(dir, 'one'), 'one.test', ['--refresh-hint', '1s']);
    const caTwo = await initCa(join(dir, 'two'), 'two.test', ['--refresh-hint', '1s']);
    const configOne = await writeConfig(join(dir, 'one'), { trustDomain: 'one.test' });
    const configTwo = await writeConfig(join(dir, 'two'), { trustDomain: 'two.test' });
    const one = await startCa(caOne, configOne, 0, ['--federation-min-refresh', '200ms']);
    const two = await startCa(caTwo, configTwo);
    const trustDomainsServedByOne = async () => Object.keys((JSON.parse(await httpsGet(`${one.url}/v1/bundles`)) as { trust_domains: Record<string, unknown> }).trust_domains).sort();
    expect(await trustDomainsServedByOne()).toEqual(['one.test']);

    await writeFile(join(configOne, 'two.json'), (await runAmbit(['ca', 'bundle', '--dir', caTwo])).stdout);
    await writeConfig(join(dir, 'one'), { trustDomain: 'one.test', federation: [{ trustDomain: 'two.test', bundleEndpoint: `${two.url}/bundle`, endpointSpiffeId: 'spiffe://two.test/ambit/ca', bundleFile: 'two.json' }] });
    await one.proc.waitFor((line) => line.msg === 'federated bundle updated' && line.trustDomain === 'two.test');
    expect(await trustDomainsServedByOne()).toEqual(['one.test', 'two.test']);

    // A node of one.test keeps two.test's bundle in its state directory beside its own: restarted while its CA is out
    // of reach, it trusts two.test's peers as it did before (a restart must not change whom a node trusts).
    const stateDir = join(dir, 'state-a');
    const bootstrapOne = await bundleOf(caOne, 'one.test');
    const rootsOfTwo = (await bundleOf(caTwo, 'two.test')).roots.map((root) => root.serialNumber);
    const agent = inProcessAgent(one, 'one.test', 'node-a', bootstrapOne, { joinToken: await createToken(caOne, 'node-a'), stateDir });
    await agent.start();
    await agent.refreshBundles();
    expect(agent.bundles().trustDomains()).toEqual(['one.test', 'two.test']);
    await agent.stop();
    /** What a restarted agent of node-a trusts before `ca` (out of reach) answers: trust domain → root serials. */
    const trustedOffline = async (ca: RunningCa): Promise<Record<string, string[]>> => {
      const offline = inProcessAgent(ca, 'one.test', 'node-a', bootstrapOne, { stateDir });
      await offline.start();
      const trusted = Object.fromEntries([...offline.bundles()].map((bundle) => [bundle.trustDomain, bundle.roots.map((root) => root.serialNumber)]));
      await offline.stop();
      return trusted;
    };

    // A restart with two.test's endpoint down still serves its last bundle, kept in DIR/federation/.
    const kept = join(caOne, 'federation', 'two.test.json');
    await waitUntil('the federated bundle kept', async () => (await readFile(kept, 'utf8').catch(() => '')).includes('two.test'));
    await two.proc.stop();
    await one.proc.stop();
    expect((await trustedOffline(one))['two.test']).toEqual(rootsOfTwo);
    const restarted = await startCa(caOne, configOne, 0, ['--federation-min-refresh', '200ms']);
    const servedAfterRestart = Object.keys((JSON.parse(await httpsGet(`${restarted.url}/v1/bundles`)) as { trust_domains: Record<string, unknown> }).trust_domains).sort();
    expect(servedAfterRestart).toEqual(['one.test', 'two.test']);

    await writeConfig(join(dir, 'one'), { trustDomain: 'one.test' });
    await restarted.proc.waitFor((line) => line.msg === 'federation peer removed; its bundle is no longer trusted' && line.trustDomain === 'two.test');
    expect(Object.keys((JSON.parse(await httpsGet(`${restarted.url}/v1/bundles`)) as { trust_domains: Record<string, unknown> }).trust_domains)).toEqual(['one.test']);
    // Removed, its kept bundle goes too: adding it back starts from its bootstrap bundle.
    await waitUntil('the kept bundle removed', async () => (await readFile(kept, 'utf8').catch(() => null)) === null);
    // And from the node's state directory once the CA has said so: a restart does not bring two.test back.
    const told = inProcessAgent(restarted, 'one.test', 'node-a', bootstrapOne, { stateDir });
    await told.start();
    await told.refreshBundles();
    expect(told.bundles().trustDomains()).toEqual(['one.test']);
    await told.stop();
    await restarted.proc.stop();
    expect(Object.keys(await trustedOffline(restarted))).toEqual(['one.test']);
  });
});
