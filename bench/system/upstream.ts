// The upstream every row shares: nginx (one worker) answering any request with the same 1 KiB body when
// it is installed, else the Node fallback in upstream-server.ts; plus that Node process's TCP bulk
// source/sink and idle-connection holder. Pinned with the load generator, away from the proxies.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BODY_BYTES, UPSTREAM } from './layout.ts';
import { waitForPort } from './processes.ts';
import type { Processes, Spawned } from './processes.ts';
import type { UpstreamConfig, UpstreamMessage, UpstreamRequest } from './upstream-server.ts';

const SERVER = fileURLToPath(new URL('./upstream-server.ts', import.meta.url));

export interface Upstream {
  readonly kind: 'nginx' | 'node';
  readonly version: string;
  /** The HTTP server's main pid (nginx's master) and the Node bulk/hold server's pid. */
  readonly httpPid: number;
  readonly tcpPid: number;
  /** Connections the hold server has open now. */
  holdCount(): Promise<number>;
  stop(): Promise<void>;
}

/** `nginx -v` prints its version on stderr. */
export function nginxVersion(binary: string): string {
  const result = spawnSync(binary, ['-v'], { encoding: 'utf8' });
  return `${result.stdout ?? ''}${result.stderr ?? ''}`.trim() || 'unknown';
}

async function startNginx(processes: Processes, binary: string, dir: string, maxConnections: number): Promise<Spawned> {
  await mkdir(join(dir, 'tmp'), { recursive: true });
  const body = 'x'.repeat(BODY_BYTES);
  const config = `worker_processes 1;
daemon off;
master_process on;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'nginx-error.log')} warn;
worker_rlimit_nofile ${maxConnections + 1024};
events { worker_connections ${maxConnections + 512}; multi_accept on; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'tmp')};
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  client_header_timeout 3600s;
  server {
    listen ${UPSTREAM.webL4.host}:${UPSTREAM.webL4.port} backlog=4096;
    listen ${UPSTREAM.webL7.host}:${UPSTREAM.webL7.port} backlog=4096;
    location / {
      default_type text/plain;
      return 200 "${body}";
    }
  }
}
`;
  const file = join(dir, 'nginx.conf');
  await writeFile(file, config);
  execFileSync(binary, ['-t', '-q', '-p', dir, '-e', join(dir, 'nginx-error.log'), '-c', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  return processes.spawn('nginx', binary, ['-p', dir, '-e', join(dir, 'nginx-error.log'), '-c', file], { cpu: 'load' });
}

export async function startUpstream(processes: Processes, dir: string, nginx: string | null, maxConnections: number): Promise<Upstream> {
  await mkdir(dir, { recursive: true });
  const started: Spawned[] = [];
  const stop = async () => {
    await Promise.all(started.map((spawned) => processes.stop(spawned)));
  };
  try {
    const nginxProcess = nginx ? await startNginx(processes, nginx, dir, maxConnections) : null;
    if (nginxProcess) started.push(nginxProcess);
    const config: UpstreamConfig = {
      http: nginxProcess ? [] : [UPSTREAM.webL4, UPSTREAM.webL7],
      bulk: UPSTREAM.bulk,
      hold: UPSTREAM.hold,
      bodyBytes: BODY_BYTES,
    };
    const tcp = processes.spawn('upstream', process.execPath, [SERVER, JSON.stringify(config)], { cpu: 'load', ipc: true });
    started.push(tcp);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (message: UpstreamMessage) => {
        if (message.type === 'ready') resolve();
        else if (message.type === 'error') reject(new Error(`upstream: ${message.message}`));
      };
      tcp.child.on('message', onMessage);
      tcp.exited.then(() => reject(new Error('upstream exited before it was ready')));
    });
    if (nginxProcess) await waitForPort(UPSTREAM.webL4.host, UPSTREAM.webL4.port, 10_000, () => processes.assertRunning(nginxProcess));
    let waiting: Array<(count: number) => void> = [];
    tcp.child.on('message', (message: UpstreamMessage) => {
      if (message.type !== 'count') return;
      const resolvers = waiting;
      waiting = [];
      for (const resolve of resolvers) resolve(message.hold);
    });
    return {
      kind: nginxProcess ? 'nginx' : 'node',
      version: nginx ? nginxVersion(nginx) : `node ${process.version}`,
      httpPid: nginxProcess?.pid ?? tcp.pid,
      tcpPid: tcp.pid,
      holdCount: () => new Promise((resolve) => {
        waiting.push(resolve);
        tcp.child.send({ type: 'count' } satisfies UpstreamRequest);
      }),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
