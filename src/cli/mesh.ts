// `ambit mesh` (npm start): a whole mesh on loopback, no root needed: the CA and two node proxies as
// child processes, demo workloads (an HTTP service and a TCP echo) on 127.0.x.y addresses, a client
// sending traffic across the nodes, and a live summary read from the proxies' /metrics.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { http } from '../node-http.ts';
import type { Server } from 'node:http';
import { createServer as createTcpServer, connect } from 'node:net';
import type { Server as TcpServer } from 'node:net';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from '../undici.ts';
import { parse, parseDurationMs } from './args.ts';
import { AmbitError, toAmbitError } from '../errors.ts';
import type { Command } from './args.ts';
import { initCa } from '../identity/ca/store.ts';
import { createJoinToken } from '../identity/ca/tokens.ts';
import { encodePemBundle } from '../identity/bundle.ts';
import { CLI_ENTRY, LONG_RUNNING_NODE_FLAGS, longRunningEnv } from './node-flags.ts';
import { levelFromEnvironment } from '../observe/log.ts';
import { makeDirs } from '../mkdir.ts';

const TRUST_DOMAIN = 'cluster.local';

const help = `usage: ambit mesh [--duration 30s] [--dir DIR] [--quiet]

Starts a whole mesh on loopback: ambit ca, two node proxies (node-a on 127.0.1.x, node-b on
127.0.2.x), an HTTP service "web" and a TCP echo "echo" on node-b, and a client on node-a that calls
both through its node proxy every 200 ms, over HBONE with both SPIFFE identities. A live summary shows
connections, bytes, identities and decisions, read from each proxy's /metrics. Ctrl-C (or --duration)
stops everything and removes the temporary directory (keep it with --dir, a new or empty directory).
`;

export interface MeshLayout {
  readonly trustDomain: string;
  readonly nodes: ReadonlyArray<{ name: string; address: string }>;
  readonly client: { ip: string; httpPort: number; echoPort: number };
  readonly web: { ip: string; port: number };
  readonly echo: { ip: string; port: number };
}

export const DEMO_LAYOUT: MeshLayout = {
  trustDomain: TRUST_DOMAIN,
  nodes: [
    { name: 'node-a', address: '127.0.1.1' },
    { name: 'node-b', address: '127.0.2.1' },
  ],
  client: { ip: '127.0.1.20', httpPort: 9080, echoPort: 9007 },
  web: { ip: '127.0.2.10', port: 8080 },
  echo: { ip: '127.0.2.11', port: 7000 },
};

export function demoConfig(layout: MeshLayout): string {
  return `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  trustDomain: ${layout.trustDomain}
---
apiVersion: v1
kind: Pod
metadata:
  name: client-1
  namespace: demo
  labels: { app: client }
  annotations:
    ambit.dev/outbound: "${layout.client.httpPort}=web.demo:80,${layout.client.echoPort}=echo.demo:7"
spec:
  nodeName: node-a
  serviceAccountName: client
status:
  phase: Running
  podIP: ${layout.client.ip}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: { app: web }
spec:
  nodeName: node-b
  serviceAccountName: web
  containers:
    - name: web
      ports: [{ name: http, containerPort: ${layout.web.port} }]
status:
  phase: Running
  podIP: ${layout.web.ip}
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-1
  namespace: demo
  labels: { app: echo }
spec:
  nodeName: node-b
  serviceAccountName: echo
status:
  phase: Running
  podIP: ${layout.echo.ip}
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: demo }
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: demo }
spec:
  selector: { app: echo }
  ports: [{ name: tcp-echo, port: 7, targetPort: ${layout.echo.port} }]
`;
}

interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  readonly lines: string[];
}

function startChild(name: string, args: string[], logDir: string, level: string): Child {
  // stdin a pipe the mesh never writes: when the mesh dies, even by SIGKILL, it closes, and the child stops itself
  // (AMBIT_EXIT_WITH_PARENT) rather than go on holding the demo's ports.
  const child = spawn(process.execPath, [...LONG_RUNNING_NODE_FLAGS, CLI_ENTRY, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...longRunningEnv(process.env), AMBIT_LOG_LEVEL: level, AMBIT_EXIT_WITH_PARENT: '1' } });
  const lines: string[] = [];
  // Every child's log also goes to DIR/logs/NAME.log, for a look after the fact (with --dir).
  const log = createWriteStream(join(logDir, `${name}.log`), { flags: 'a' });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  // 'close', not 'exit': the child's output may still be draining into the file after it exited.
  child.once('close', () => log.end());
  log.on('error', (error) => process.stderr.write(`ambit mesh: cannot write ${name}.log: ${error.message}\n`));
  const keep = (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      if (!line) continue;
      lines.push(line);
      if (lines.length > 200) lines.shift();
    }
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return { name, process: child, lines };
}

/** Ctrl-C or SIGTERM while the mesh is still starting: it stops there, and cleans up as it does once up. */
class Interrupted extends Error {}

/**
 * Whether a child still runs. Not exitCode alone: one ended by a signal (the terminal's Ctrl-C reaches the whole
 * process group, before a proxy has its own handler) has a null exitCode, and was taken for running: stop() waited
 * for an 'exit' already emitted, and the mesh hung with its CA key left on disk.
 */
function running(child: Child): boolean {
  return child.process.exitCode === null && child.process.signalCode === null;
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, children: Child[], interrupted: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (interrupted()) throw new Interrupted(`interrupted while waiting for ${what}`);
    for (const child of children) {
      if (!running(child)) throw new Error(`${child.name} exited (${child.process.exitCode ?? child.process.signalCode}) while waiting for ${what}:\n${child.lines.slice(-10).join('\n')}`);
    }
    if (await check().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Binds a demo workload, or says which address is taken (a second `npm start`, a dev server on the same port). */
function listenOn(server: Server | TcpServer, port: number, host: string, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => reject(new Error(`cannot listen on ${host}:${port} for the demo ${what} workload: ${error.code ?? error.message}${error.code === 'EADDRINUSE' ? ' (is another ambit mesh running, or a server on that port on every address?)' : ''}`));
    server.once('error', failed);
    server.listen(port, host, () => {
      server.off('error', failed);
      resolve();
    });
  });
}

/** Keep-alive connections for the mesh's own checks and its demo client, as undici's global dispatcher would. */
const dispatcher = new Agent();

async function httpOk(url: string): Promise<boolean> {
  const response = await request(url, { dispatcher, method: 'GET', headersTimeout: 1000, bodyTimeout: 1000 });
  await response.body.dump();
  return response.statusCode === 200;
}

/** Sums Prometheus counters by a label, from /metrics text. */
export function sumMetric(text: string, name: string, filter: (labels: Record<string, string>) => boolean = () => true): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    const labels: Record<string, string> = {};
    const brace = line.indexOf('{');
    if (brace >= 0) for (const match of line.slice(brace + 1, line.lastIndexOf('}')).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[match[1] as string] = match[2] as string;
    if (filter(labels)) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

export function identityPairs(text: string): string[] {
  const pairs = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('istio_tcp_connections_opened_total{')) continue;
    const source = /source_principal="([^"]*)"/.exec(line)?.[1];
    const destination = /destination_principal="([^"]*)"/.exec(line)?.[1];
    if (source && destination) pairs.add(`${source} → ${destination}`);
  }
  return [...pairs].sort();
}

/**
 * --dir must be new or empty: the mesh writes its own configuration (over a mesh.yaml found there), CA, logs and join
 * tokens into it, and reads every file of DIR/config as its configuration. Each run makes a CA of its own, so an
 * earlier run's directory is refused too.
 */
async function checkNewDir(dir: string): Promise<void> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      // Made now, so that a directory that cannot be is said as this flag's, before anything starts.
      try {
        await makeDirs(dir);
      } catch (made) {
        throw new AmbitError('USAGE', `--dir ${dir}: cannot be created (${(made as NodeJS.ErrnoException).code ?? (made as Error).message}): give a new or empty directory where you may write`, { cause: made });
      }
      return;
    }
    throw new AmbitError('USAGE', `--dir ${dir}: ${code === 'ENOTDIR' ? 'not a directory' : `cannot be read (${code ?? (error as Error).message})`}: give a new or empty directory`);
  }
  if (existsSync(join(dir, 'ca', 'ca.json'))) {
    throw new AmbitError('USAGE', `--dir ${dir} holds an earlier mesh (its CA in ${join(dir, 'ca')}): remove it, or give a new directory`);
  }
  if (entries.length > 0) {
    const shown = entries.slice(0, 3).join(', ') + (entries.length > 3 ? `, and ${entries.length - 3} more` : '');
    throw new AmbitError('USAGE', `--dir ${dir} is not empty (${shown}): the mesh writes its own configuration, CA, logs and join tokens there and reads all of DIR/config; give a new or empty directory`);
  }
}

export const command: Command = {
  summary: 'a whole mesh on loopback: CA, two node proxies, demo workloads and live traffic (npm start)',
  help,
  async run(argv) {
    const { values } = parse(argv, { duration: { type: 'string' }, dir: { type: 'string' }, quiet: { type: 'boolean' } }, false);
    const durationMs = values.duration ? parseDurationMs(values.duration, 'duration') : undefined;
    const level = levelFromEnvironment(process.env.AMBIT_LOG_LEVEL);
    const layout = DEMO_LAYOUT;
    if (values.dir !== undefined) await checkNewDir(values.dir);
    const dir = values.dir ?? (await mkdtemp(join(tmpdir(), 'ambit-mesh-')));
    const keepDir = values.dir !== undefined;
    const children: Child[] = [];
    const servers: Array<Server | TcpServer> = [];
    let stopping = false;
    const out = (line: string) => {
      if (!values.quiet) process.stdout.write(line + '\n');
    };

    // From the start: a Ctrl-C while the CA and proxies come up (up to a minute) must stop them and remove the
    // directory (its CA key and join tokens) too, not leave them to the default action.
    let interrupted = false;
    let onInterrupt = () => {};
    const interruption = new Promise<void>((resolve) => (onInterrupt = resolve));
    const interrupt = () => {
      interrupted = true;
      onInterrupt();
    };
    // `on`, not `once`: a second Ctrl-C (or a terminal's HUP twice) while stopping must not kill it before the clean-up.
    process.on('SIGINT', interrupt);
    process.on('SIGTERM', interrupt);
    // A closed terminal or SSH session: stopped as on Ctrl-C, so the temporary directory (CA key, tokens) goes too.
    process.on('SIGHUP', interrupt);
    // The terminal gone, writing the summary to it fails (EIO): that too is the user leaving, not a crash that would
    // skip the clean-up.
    process.stdout.on('error', interrupt);
    process.stderr.on('error', () => {});
    const isInterrupted = () => interrupted;

    const stop = async (code: number): Promise<number> => {
      if (stopping) return code;
      stopping = true;
      for (const child of children) if (running(child)) child.process.kill('SIGTERM');
      await Promise.all(children.map((child) => !running(child) ? undefined : new Promise((resolve) => {
        const timer = setTimeout(() => {
          process.stderr.write(`ambit mesh: ${child.name} did not stop within 5 s of SIGTERM; killed\n`);
          child.process.kill('SIGKILL');
        }, 5000);
        child.process.once('exit', () => {
          clearTimeout(timer);
          resolve(undefined);
        });
      })));
      await Promise.all(servers.map((server) => new Promise((resolve) => server.close(() => resolve(undefined)))));
      if (!keepDir) await rm(dir, { recursive: true, force: true });
      return code;
    };

    try {
      out(`ambit mesh: working directory ${dir}`);
      const configDir = join(dir, 'config');
      await makeDirs(configDir);
      await writeFile(join(configDir, 'mesh.yaml'), demoConfig(layout));
      const logDir = join(dir, 'logs');
      await makeDirs(logDir);
      const caDir = join(dir, 'ca');
      const ca = await initCa(caDir, layout.trustDomain);
      await writeFile(join(dir, 'bundle.pem'), encodePemBundle(ca.bundle));

      // Demo workloads, bound to their pod IPs on node-b.
      const web = http.createServer((req, res) => {
        const body = JSON.stringify({ service: 'web', path: req.url, from: `${req.socket.remoteAddress}:${req.socket.remotePort}` }) + '\n';
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
      });
      const echo = createTcpServer({ allowHalfOpen: true }, (socket) => {
        // A peer that resets mid-echo (ECONNRESET, EPIPE) must not end the whole demo.
        socket.on('error', () => socket.destroy());
        socket.pipe(socket);
      });
      servers.push(web, echo);
      await listenOn(web, layout.web.port, layout.web.ip, 'web');
      await listenOn(echo, layout.echo.port, layout.echo.ip, 'echo');

      // The mesh learns the CA's address from its "CA listening" line (info): the CA logs at info at least.
      const caLevel = ['warn', 'error', 'fatal', 'silent'].includes(level) ? 'info' : level;
      const caProcess = startChild('ca', ['ca', 'serve', '--dir', caDir, '--config', configDir, '--listen', '127.0.0.1:0'], logDir, caLevel);
      children.push(caProcess);
      let caUrl = '';
      await waitFor('the CA', async () => {
        for (const line of caProcess.lines) {
          if (line.includes('"CA listening"')) caUrl = (JSON.parse(line) as { url: string }).url;
        }
        return caUrl !== '';
      }, 20_000, children, isInterrupted);
      out(`  CA            ${caUrl}  (trust domain ${layout.trustDomain})`);

      for (const node of layout.nodes) {
        if (interrupted) throw new Interrupted('interrupted while starting the node proxies');
        const token = await createJoinToken(caDir, node.name, 600_000);
        // In a file (0600), not on the command line, where every local user could read it.
        const tokenFile = join(dir, `${node.name}.join-token`);
        await writeFile(tokenFile, `${token.token}\n`, { mode: 0o600 });
        children.push(startChild(node.name, [
          'proxy', '--node', node.name, '--config', configDir, '--ca', caUrl, '--ca-bundle', join(dir, 'bundle.pem'), '--trust-domain', layout.trustDomain,
          // Well within the 5 s the mesh gives each process to stop.
          '--drain-timeout', '2s',
          '--state-dir', join(dir, node.name), '--join-token-file', tokenFile,
          '--metrics', `${node.address}:15020`, '--readiness', `${node.address}:15021`, '--admin', `${node.address}:15000`,
        ], logDir, level));
      }
      for (const node of layout.nodes) {
        await waitFor(`${node.name} readiness`, () => httpOk(`http://${node.address}:15021/healthz/ready`), 30_000, children, isInterrupted);
        out(`  ${node.name.padEnd(13)} ready: HBONE on its workloads' IPs :15008, metrics http://${node.address}:15020/metrics`);
      }
      out(`  web           http://${layout.web.ip}:${layout.web.port} (spiffe://${layout.trustDomain}/ns/demo/sa/web, node-b)`);
      out(`  echo          tcp ${layout.echo.ip}:${layout.echo.port} (spiffe://${layout.trustDomain}/ns/demo/sa/echo, node-b)`);
      out(`  client        on node-a calls web.demo:80 via ${layout.client.ip}:${layout.client.httpPort} and echo.demo:7 via ${layout.client.ip}:${layout.client.echoPort}`);
      out('');

      let ok = 0;
      let failed = 0;
      /** HTTP calls a policy refused (403): not failures of the mesh. */
      let denied = 0;
      let lastError = '';
      const clientTimer = setInterval(() => {
        request(`http://${layout.client.ip}:${layout.client.httpPort}/hello`, { dispatcher, method: 'GET', headersTimeout: 2000, bodyTimeout: 2000 }).then(async (response) => {
          await response.body.dump();
          if (response.statusCode === 200) ok++;
          else if (response.statusCode === 403) denied++;
          else failed++;
        }, (error: Error) => {
          failed++;
          lastError = error.message;
        });
        const socket = connect({ host: layout.client.ip, port: layout.client.echoPort });
        socket.setTimeout(2000, () => socket.destroy(new Error('echo timed out')));
        socket.once('connect', () => socket.end('ping over HBONE\n'));
        let echoed = '';
        socket.on('data', (data: Buffer) => (echoed += data.toString()));
        socket.once('close', () => {
          if (echoed === 'ping over HBONE\n') ok++;
          else failed++;
        });
        socket.on('error', (error) => (lastError = error.message));
      }, 200);
      clientTimer.unref();

      const started = Date.now();
      const summary = async () => {
        const texts = await Promise.all(layout.nodes.map((node) => request(`http://${node.address}:15020/metrics`, { dispatcher, method: 'GET' }).then((r) => r.body.text()).catch(() => '')));
        const lines = [`ambit mesh — ${Math.round((Date.now() - started) / 1000)}s — client calls ok ${ok}, ${denied > 0 ? `denied by policy ${denied}, ` : ''}failed ${failed}${lastError ? ` (last error: ${lastError})` : ''}`];
        layout.nodes.forEach((node, i) => {
          const text = texts[i] ?? '';
          const opened = sumMetric(text, 'istio_tcp_connections_opened_total');
          const closed = sumMetric(text, 'istio_tcp_connections_closed_total');
          const sent = sumMetric(text, 'istio_tcp_sent_bytes_total');
          const received = sumMetric(text, 'istio_tcp_received_bytes_total');
          const deniedConnections = sumMetric(text, 'istio_tcp_connections_failed_total', (labels) => labels.response_flags === 'DENY');
          const failures = sumMetric(text, 'istio_tcp_connections_failed_total');
          const requests = sumMetric(text, 'istio_requests_total');
          const requestsDenied = sumMetric(text, 'istio_requests_total', (labels) => labels.response_flags === 'DENY');
          lines.push(`  ${node.name}: connections opened ${opened}, closed ${closed}, failed ${failures} (denied ${deniedConnections}); bytes sent ${sent}, received ${received}${requests > 0 ? `; HTTP requests ${requests} (denied ${requestsDenied})` : ''}`);
          for (const pair of identityPairs(text)) lines.push(`      mTLS ${pair}`);
        });
        lines.push(`  metrics: ${layout.nodes.map((node) => `http://${node.address}:15020/metrics`).join('  ')}   (Ctrl-C stops everything)`);
        return lines;
      };
      const interactive = process.stdout.isTTY === true && !values.quiet;
      let printed = 0;
      const render = async () => {
        const lines = await summary();
        if (interactive && printed > 0) process.stdout.write(`\x1b[${printed}A\x1b[0J`);
        if (interactive || !values.quiet) process.stdout.write(lines.join('\n') + '\n');
        printed = lines.length;
      };
      const renderTimer = setInterval(() => void render(), interactive ? 1000 : 5000);
      await new Promise<void>((resolve) => {
        void interruption.then(resolve);
        if (durationMs !== undefined) setTimeout(resolve, durationMs).unref();
      });
      clearInterval(renderTimer);
      clearInterval(clientTimer);
      await render();
      out('');
      for (const node of layout.nodes) out(`  ${node.name} metrics: http://${node.address}:15020/metrics (stopping now)`);
      return await stop(failed + denied > 0 && ok === 0 ? 1 : 0);
    } catch (error) {
      const coded = toAmbitError(error, 'FILE_WRITE');
      process.stderr.write(`ambit mesh: ${coded.message} [${coded.code}]\n`);
      if (error instanceof Interrupted) return stop(130);
      for (const child of children) {
        if (child.lines.length) process.stderr.write(`--- ${child.name} (last lines)\n${child.lines.slice(-15).join('\n')}\n`);
      }
      return stop(1);
    }
  },
};
