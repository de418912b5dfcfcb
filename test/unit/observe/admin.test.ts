// Metrics, readiness and admin servers (src/observe/admin.ts) over real HTTP on loopback: routes, status
// codes, the log level switch, the loopback-only admin bind, and clean shutdown without leaked handles.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Gauge, Registry } from 'prom-client';
import { Agent, request } from 'undici';
import { AmbitError } from '../../../src/errors.ts';
import { isLoopbackAddress, startObservability } from '../../../src/observe/admin.ts';
import type { AdminSources, Observability } from '../../../src/observe/admin.ts';
import { ProxyMetrics, workloadLabels } from '../../../src/observe/metrics.ts';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const LOCAL = { host: '127.0.0.1', port: 0 };

let running: Observability | undefined;

afterEach(async () => {
  await running?.close();
  running = undefined;
});

interface Harness {
  urls: Observability;
  registry: Registry;
  sources: AdminSources & { ready: boolean; pending: string[] };
}

async function start(): Promise<Harness> {
  const registry = new Registry();
  const sources = {
    ready: false,
    pending: ['workload certificates', 'configuration'],
    configDump: () => ({ workloads: [{ name: 'web', namespace: 'shop', workloadIps: ['10.0.0.5'] }], policies: [] }),
    readiness(this: { ready: boolean; pending: string[] }) {
      return { ready: this.ready, pending: this.pending };
    },
    logger: pino({ level: 'info' }, { write: () => undefined }),
  };
  running = await startObservability({ metrics: LOCAL, readiness: LOCAL, admin: LOCAL, registry, sources });
  return { urls: running, registry, sources };
}

async function get(url: string, method: 'GET' | 'POST' | 'PUT' | 'DELETE' = 'GET'): Promise<{ status: number; type: string; body: string; allow: string | undefined }> {
  const response = await request(url, { method });
  const body = await response.body.text();
  return { status: response.statusCode, type: String(response.headers['content-type']), body, allow: response.headers.allow as string | undefined };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof AmbitError) return error.code;
    throw error;
  }
  throw new Error('expected the call to be refused');
}

/** Writes `requests` pipelined in one write on one connection; what came back before the server closed it. */
async function pipelined(url: string, path: string, requests: number): Promise<string> {
  const { hostname, port } = new URL(url);
  const socket = connect({ host: hostname, port: Number(port) });
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  socket.on('error', () => {});
  socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`.repeat(requests));
  await once(socket, 'close');
  return text;
}

describe('metrics server', () => {
  it('answers one of many pipelined scrapes and closes the connection, rendering the metrics once (each render held the event loop)', async () => {
    const { urls, registry } = await start();
    let renders = 0;
    registry.registerMetric(new Gauge({ name: 'renders_seen', help: 'renders', registers: [], collect() {
      renders++;
      this.set(renders);
    } }));
    const text = await pipelined(urls.metricsUrl as string, '/metrics', 200);
    expect(text.match(/HTTP\/1\.1 200 /g)).toHaveLength(1);
    expect(renders).toBe(1);
    // One request at a time on a kept-alive connection is served as ever.
    const keep = new Agent({ connections: 1, pipelining: 1 });
    try {
      for (let i = 0; i < 3; i++) expect((await request(`${urls.metricsUrl}/metrics`, { dispatcher: keep })).statusCode).toBe(200);
    } finally {
      await keep.close();
    }
    // Every server of the three, the same.
    expect((await pipelined(urls.readinessUrl as string, '/healthz/ready', 50)).match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
  });

  it('renders once for scrapes that arrive together on several connections, each answered', async () => {
    const { urls, registry } = await start();
    let renders = 0;
    registry.registerMetric(new Gauge({ name: 'renders_seen', help: 'renders', registers: [], async collect() {
      renders++;
      await new Promise((resolve) => setTimeout(resolve, 50));
      this.set(renders);
    } }));
    const answers = await Promise.all(Array.from({ length: 8 }, () => request(`${urls.metricsUrl}/metrics`, { dispatcher: new Agent() }).then(async (response) => [response.statusCode, await response.body.text()] as const)));
    expect(answers.map(([status]) => status)).toEqual(Array(8).fill(200));
    expect(renders).toBeLessThanOrEqual(2);
    expect(new Set(answers.map(([, body]) => body)).size).toBeLessThanOrEqual(2);
  });


  it('serves the registry in Prometheus text format on /metrics and /stats/prometheus', async () => {
    const { urls, registry } = await start();
    new ProxyMetrics(registry).open({
      reporter: 'destination',
      source: workloadLabels({ workload: 'web', namespace: 'shop', canonicalService: 'web', canonicalRevision: 'v1', app: 'web', version: 'v1', cluster: 'Kubernetes', region: '', zone: '' }),
      sourcePrincipal: 'spiffe://cluster.local/ns/shop/sa/web',
      destination: workloadLabels({ workload: 'api', namespace: 'shop', canonicalService: 'api', canonicalRevision: 'latest', app: 'api', version: 'latest', cluster: 'Kubernetes', region: '', zone: '' }),
      destinationPrincipal: 'spiffe://cluster.local/ns/shop/sa/api',
      service: { hostname: 'api.shop.svc.cluster.local', name: 'api', namespace: 'shop' },
      connectionSecurityPolicy: 'mutual_tls',
    });
    for (const path of ['/metrics', '/stats/prometheus']) {
      const response = await get(`${urls.metricsUrl}${path}`);
      expect(response.status).toBe(200);
      expect(response.type).toBe(registry.contentType);
      expect(response.body).toMatch(/^istio_tcp_connections_opened_total\{reporter="destination",.*source_principal="spiffe:\/\/cluster.local\/ns\/shop\/sa\/web".*\} 1$/m);
    }
  });

  it('answers 404 elsewhere and 405 to methods other than GET', async () => {
    const { urls } = await start();
    expect((await get(`${urls.metricsUrl}/config_dump`)).status).toBe(404);
    const wrong = await get(`${urls.metricsUrl}/metrics`, 'POST');
    expect(wrong.status).toBe(405);
    expect(wrong.allow).toBe('GET, HEAD');
  });
});

describe('readiness server', () => {
  it('answers 503 listing pending tasks until ready, then 200 "ready"', async () => {
    const { urls, sources } = await start();
    const before = await get(`${urls.readinessUrl}/healthz/ready`);
    expect(before.status).toBe(503);
    expect(before.body).toBe('not ready, pending: configuration, workload certificates\n');
    sources.ready = true;
    sources.pending = [];
    const after = await get(`${urls.readinessUrl}/healthz/ready`);
    expect(after.status).toBe(200);
    expect(after.body).toBe('ready\n');
  });

  it('answers 503 when readiness cannot be determined', async () => {
    const { urls, sources } = await start();
    sources.readiness = () => {
      throw new Error('state not loaded');
    };
    const response = await get(`${urls.readinessUrl}/healthz/ready`);
    expect(response.status).toBe(503);
    expect(response.body).toContain('state not loaded');
  });

  it('answers 404 elsewhere and 405 to POST', async () => {
    const { urls } = await start();
    expect((await get(`${urls.readinessUrl}/metrics`)).status).toBe(404);
    expect((await get(`${urls.readinessUrl}/healthz/ready`, 'POST')).status).toBe(405);
  });
});

describe('admin server', () => {
  it('lists its endpoints on /', async () => {
    const { urls } = await start();
    const response = await get(`${urls.adminUrl}/`);
    expect(response.status).toBe(200);
    expect(response.body).toContain('/config_dump');
    expect(response.body).toContain('/logging');
  });

  it('serves the config dump as JSON', async () => {
    const { urls } = await start();
    const response = await get(`${urls.adminUrl}/config_dump`);
    expect(response.status).toBe(200);
    expect(response.type).toMatch(/^application\/json/);
    expect(JSON.parse(response.body)).toEqual({ workloads: [{ name: 'web', namespace: 'shop', workloadIps: ['10.0.0.5'] }], policies: [] });
  });

  it('answers 500 when the config dump cannot be serialised', async () => {
    const { urls, sources } = await start();
    sources.configDump = () => ({ sequence: 1n });
    expect((await get(`${urls.adminUrl}/config_dump`)).status).toBe(500);
  });

  it('reports the log level and changes it on the root logger and its children', async () => {
    const { urls, sources } = await start();
    const child = sources.logger.child({ component: 'proxy' });
    expect(JSON.parse((await get(`${urls.adminUrl}/logging`)).body)).toEqual({ level: 'info' });
    const changed = await get(`${urls.adminUrl}/logging?level=debug`, 'POST');
    expect(changed.status).toBe(200);
    expect(JSON.parse(changed.body)).toEqual({ level: 'debug', previous: 'info' });
    expect(sources.logger.level).toBe('debug');
    expect(child.isLevelEnabled('debug')).toBe(true);
    expect(JSON.parse((await get(`${urls.adminUrl}/logging`)).body)).toEqual({ level: 'debug' });
  });

  it('refuses a web page (Origin) and a DNS-rebound name (Host), and serves curl-like clients by IP or localhost', async () => {
    const { urls } = await start();
    const port = new URL(urls.adminUrl as string).port;
    const level = JSON.parse((await get(`${urls.adminUrl}/logging`)).body) as { level: string };
    const cross = await request(`${urls.adminUrl}/logging?level=silent`, { method: 'POST', headers: { origin: 'https://evil.example' } });
    expect(cross.statusCode).toBe(403);
    expect(await cross.body.text()).toMatch(/Origin header/);
    const rebound = await request(`${urls.adminUrl}/config_dump`, { headers: { host: `evil.example:${port}` } });
    expect(rebound.statusCode).toBe(403);
    expect(await rebound.body.text()).toMatch(/neither an IP address nor localhost/);
    expect(JSON.parse((await get(`${urls.adminUrl}/logging`)).body)).toEqual(level);
    // The accept side: an IP Host (what get() sends), and localhost.
    expect((await request(`${urls.adminUrl}/config_dump`, { headers: { host: `localhost:${port}` } })).statusCode).toBe(200);
    expect((await get(`${urls.adminUrl}/config_dump`)).status).toBe(200);
  });

  it('resets the log level to the one the process started with', async () => {
    const { urls, sources } = await start();
    await get(`${urls.adminUrl}/logging?level=trace`, 'POST');
    const reset = await get(`${urls.adminUrl}/logging?reset`, 'POST');
    expect(JSON.parse(reset.body)).toEqual({ level: 'info', previous: 'trace' });
    expect(sources.logger.level).toBe('info');
  });

  it('refuses an unknown log level with 400 naming the allowed levels, and keeps the level', async () => {
    const { urls, sources } = await start();
    const response = await get(`${urls.adminUrl}/logging?level=verbose`, 'POST');
    expect(response.status).toBe(400);
    const body = JSON.parse(response.body);
    expect(body.allowed).toEqual(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);
    expect(body.error).toContain('verbose');
    expect(sources.logger.level).toBe('info');
  });

  it('answers 404 to unknown paths and 405 to wrong methods', async () => {
    const { urls } = await start();
    expect((await get(`${urls.adminUrl}/quitquitquit`, 'POST')).status).toBe(404);
    expect((await get(`${urls.adminUrl}/config_dump`, 'POST')).status).toBe(405);
    const wrong = await get(`${urls.adminUrl}/logging`, 'PUT');
    expect(wrong.status).toBe(405);
    expect(wrong.allow).toBe('GET, HEAD, POST');
  });

  it.each(['0.0.0.0', '::', '10.0.0.5', 'localhost', '', 'fe80::1'])('refuses to bind the admin server to %j', async (host) => {
    const sources: AdminSources = { configDump: () => ({}), readiness: () => ({ ready: true, pending: [] }), logger: pino({ level: 'silent' }) };
    expect(await codeOf(startObservability({ admin: { host, port: 0 }, registry: new Registry(), sources }))).toBe('USAGE');
  });

  it.each(['127.0.0.1', '127.0.0.53', '127.255.255.255', '::1', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1'])('accepts the loopback address %s for the admin server', (host) => {
    expect(isLoopbackAddress(host)).toBe(true);
  });

  it.each(['128.0.0.1', '126.255.255.255', '10.127.0.1', '0127.0.0.1', '127.1', '127.0.0.1.', '::2', '::ffff:128.0.0.1', '127.example', ''])('does not take %j for a loopback address', (host) => {
    expect(isLoopbackAddress(host)).toBe(false);
  });

  it('binds the admin server on ::1', async () => {
    const sources: AdminSources = { configDump: () => ({}), readiness: () => ({ ready: true, pending: [] }), logger: pino({ level: 'silent' }) };
    running = await startObservability({ admin: { host: '::1', port: 0 }, registry: new Registry(), sources });
    expect(running.adminUrl).toMatch(/^http:\/\/\[::1\]:\d+$/);
    expect((await get(`${running.adminUrl}/`)).status).toBe(200);
  });
});

describe('lifecycle', () => {
  it('starts only the servers given an address', async () => {
    const sources: AdminSources = { configDump: () => ({}), readiness: () => ({ ready: true, pending: [] }), logger: pino({ level: 'silent' }) };
    running = await startObservability({ readiness: LOCAL, registry: new Registry(), sources });
    expect(running.readinessUrl).toBeDefined();
    expect(running.metricsUrl).toBeUndefined();
    expect(running.adminUrl).toBeUndefined();
  });

  it('reports a port already in use as PROXY_BIND and closes the servers it had started', async () => {
    const { urls } = await start();
    const port = Number(new URL(urls.metricsUrl!).port);
    const sources: AdminSources = { configDump: () => ({}), readiness: () => ({ ready: true, pending: [] }), logger: pino({ level: 'silent' }) };
    expect(await codeOf(startObservability({ readiness: LOCAL, admin: { host: '127.0.0.1', port }, registry: new Registry(), sources }))).toBe('PROXY_BIND');
  });

  it('closes promptly with keep-alive and half-sent requests open, and refuses connections afterwards', async () => {
    const { urls } = await start();
    // A keep-alive connection left idle by undici's pool, and a client that stops mid-headers.
    await get(`${urls.metricsUrl}/metrics`);
    const { hostname, port } = new URL(urls.adminUrl!);
    const stalled = connect(Number(port), hostname);
    // The server destroys it, which may arrive as a reset.
    stalled.on('error', () => undefined);
    await new Promise<void>((resolve) => stalled.once('connect', resolve));
    stalled.write('GET /config_dump HTTP/1.1\r\nHost: x\r\n');
    const stalledClosed = new Promise<void>((resolve) => stalled.once('close', () => resolve()));

    const startedAt = Date.now();
    await running!.close();
    running = undefined;
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    await stalledClosed;
    await expect(request(`${urls.metricsUrl}/metrics`)).rejects.toThrow();
  });

  it('holds one address to 16 connections, so a client hoarding them starves neither scrapes nor probes from elsewhere', async () => {
    const { urls, sources } = await start();
    sources.ready = true;
    sources.pending = [];
    const { hostname, port } = new URL(urls.readinessUrl!);
    const hoarded: Socket[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const socket = connect({ host: hostname, port: Number(port), localAddress: '127.0.0.9' });
        socket.on('error', () => undefined);
        await once(socket, 'connect');
        hoarded.push(socket);
      }
      // The 17th from that address is closed at once, before any request is read.
      const refused = connect({ host: hostname, port: Number(port), localAddress: '127.0.0.9' });
      refused.on('error', () => undefined);
      refused.write('GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n');
      let answer = '';
      refused.on('data', (chunk: Buffer) => (answer += chunk.toString()));
      await once(refused, 'close');
      expect(answer).toBe('');
      // Another address is served, and so is the first again once it lets one go.
      expect((await get(`${urls.readinessUrl}/healthz/ready`)).status).toBe(200);
      hoarded.pop()?.destroy();
      await new Promise((resolve) => setTimeout(resolve, 50));
      const again = connect({ host: hostname, port: Number(port), localAddress: '127.0.0.9' });
      again.on('error', () => undefined);
      let served = '';
      again.on('data', (chunk: Buffer) => (served += chunk.toString()));
      again.end('GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      await once(again, 'close');
      expect(served).toMatch(/^HTTP\/1\.1 200 /);
    } finally {
      for (const socket of hoarded) socket.destroy();
    }
  });

  it('cuts off a client that never finishes its request headers', async () => {
    const { urls } = await start();
    const { hostname, port } = new URL(urls.readinessUrl!);
    const stalled = connect(Number(port), hostname);
    stalled.on('error', () => undefined);
    let answer = '';
    stalled.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    await new Promise<void>((resolve) => stalled.once('connect', resolve));
    stalled.write('GET /healthz/ready HTTP/1.1\r\nHost: x\r\n');
    const startedAt = Date.now();
    await new Promise<void>((resolve) => stalled.once('close', () => resolve()));
    // Headers timeout 5 s, checked every second.
    expect(Date.now() - startedAt).toBeLessThan(7_500);
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
  }, 15_000);

  it('leaves no handle behind: a process that starts, uses and closes the servers exits on its own', async () => {
    const script = `
      import { Gauge, Registry } from 'prom-client';
      import { Agent, request } from 'undici';
      import { pino } from 'pino';
      import { startObservability } from './src/observe/admin.ts';
      const local = { host: '127.0.0.1', port: 0 };
      const sources = { configDump: () => ({}), readiness: () => ({ ready: true, pending: [] }), logger: pino({ level: 'silent' }) };
      const o = await startObservability({ metrics: local, readiness: local, admin: local, registry: new Registry(), sources });
      for (const url of [o.metricsUrl + '/metrics', o.readinessUrl + '/healthz/ready', o.adminUrl + '/config_dump']) {
        const response = await request(url);
        await response.body.text();
      }
      const closing = Date.now();
      await o.close();
      console.log('closed in ' + (Date.now() - closing) + ' ms');
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exitCode = await new Promise<number | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`the process did not exit after close(): ${output}`));
      }, 10_000);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
    });
    const closeMs = Number(/closed in (\d+) ms/.exec(output)?.[1]);
    // Waiting out the keep-alive timeout (5 s) instead of destroying connections would show here.
    expect(closeMs).toBeLessThan(1_000);
    expect(exitCode).toBe(0);
  });
});
