// What the HBONE client's transport costs: the client end of one HTTP/2 session over mTLS, set as ambit sets it
// (src/proxy/settings.ts), on its TLS socket directly (Node's native path, which can deadlock two Node peers under
// bulk both ways) and through SessionSocket (src/proxy/session-socket.ts, what the pool uses). One server process
// answers both; each measurement is a fresh client process on a core of its own, and what it reports is its own CPU
// time (user + system, every thread) per request and answer at a fixed rate over 32 streams, and per MiB down and
// up one stream. The variants alternate within each round, so a VM's drifting speed moves them alike: a difference
// the system benchmark (bench/run.ts) cannot separate from its spread shows here.
//
//   node bench/proxy/hbone-transport.ts [--rounds 3] [--mib 256] [--seconds 5] [--rate 2000]
import { fork, spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnSyncOptionsWithStringEncoding } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { certificatesToPem, exportPrivateKeyPem, generateKeyPair, issueCa, issueLeaf } from '../../src/identity/svid.ts';
import { SessionSocket } from '../../src/proxy/session-socket.ts';
import {
  H2_CONNECTION_WINDOW_BYTES, H2_MAX_FRAME_BYTES, H2_MAX_SESSION_MEMORY_MB, H2_STREAM_WINDOW_BYTES, HBONE_ALPN, TLS_CIPHERS, TLS_GROUPS, TLS_MIN_VERSION,
} from '../../src/proxy/settings.ts';
import { hasCommand } from '../system/processes.ts';

const VARIANTS = ['native', 'session-socket'] as const;
type Variant = (typeof VARIANTS)[number];
const MODES = ['paced', 'down', 'up'] as const;
type Mode = (typeof MODES)[number];

const SELF = fileURLToPath(import.meta.url);
const STREAMS = 32;
const REQUEST = Buffer.alloc(100, 0x71);
const ANSWER = Buffer.alloc(1024, 0x61);
const MIB = Buffer.alloc(1024 * 1024, 0x62);
const SETTINGS: http2.Settings = { initialWindowSize: H2_STREAM_WINDOW_BYTES, maxFrameSize: H2_MAX_FRAME_BYTES };
const TLS_OPTIONS = { minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS, ecdhCurve: TLS_GROUPS, ALPNProtocols: HBONE_ALPN } as const;
/** The proxies' V8 flags (src/cli/node-flags.ts): a young generation of another size moves what a chunk costs. */
const NODE_FLAGS = ['--max-semi-space-size=1', '--initial-old-space-size=64'];

interface Certificates {
  readonly dir: string;
  readonly ca: string;
  readonly server: { cert: string; key: string };
  readonly client: { cert: string; key: string };
}

interface Measurement {
  readonly variant: Variant;
  readonly mode: Mode;
  /** CPU µs per request and answer (paced) or per MiB (down, up). */
  readonly cpuMicrosPerUnit: number;
  readonly unitsPerSecond: number;
}

async function makeCertificates(): Promise<Certificates> {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-hbone-transport-'));
  const rootKeys = await generateKeyPair();
  const root = await issueCa({ trustDomain: 'bench.local', keys: rootKeys, ttlMs: 3_600_000 });
  const authority = { cert: root, privateKey: rootKeys.privateKey, chainAbove: [] };
  const leaf = async (name: string) => {
    const keys = await generateKeyPair();
    const cert = await issueLeaf({ spiffeId: `spiffe://bench.local/${name}`, publicKey: keys.publicKey, authority, ttlMs: 3_600_000 });
    const files = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) };
    writeFileSync(files.cert, certificatesToPem([cert]));
    writeFileSync(files.key, await exportPrivateKeyPem(keys.privateKey), { mode: 0o600 });
    return files;
  };
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, certificatesToPem([root]));
  return { dir, ca, server: await leaf('server'), client: await leaf('client') };
}

/** Writes `count` MiB to the stream as fast as it takes them, then ends it. */
function sendMiB(stream: http2.Http2Stream, count: number): void {
  let left = count;
  const pump = (): void => {
    while (left > 0) {
      left--;
      if (!stream.write(MIB)) {
        stream.once('drain', pump);
        return;
      }
    }
    stream.end();
  };
  pump();
}

/** The server: answers each request of a paced stream with 1 KiB, sends `x-mib` MiB down, or reads what comes up. */
function serve(certs: Certificates): void {
  const server = http2.createSecureServer({
    ...TLS_OPTIONS, key: readFileSync(certs.server.key), cert: readFileSync(certs.server.cert), ca: readFileSync(certs.ca),
    requestCert: true, rejectUnauthorized: true, settings: SETTINGS, maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
  });
  server.on('session', (session) => session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES));
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200 });
    const mode = headers['x-mode'];
    if (mode === 'paced') {
      // An answer per request, counted in bytes: two requests can arrive in one read.
      let received = 0;
      stream.on('data', (chunk: Buffer) => {
        const before = Math.floor(received / REQUEST.length);
        received += chunk.length;
        for (let i = Math.floor(received / REQUEST.length) - before; i > 0; i--) stream.write(ANSWER);
      });
      stream.on('end', () => stream.end());
    } else if (mode === 'down') {
      sendMiB(stream, Number(headers['x-mib']));
    } else {
      stream.resume();
      stream.on('end', () => stream.end());
    }
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as { port: number }).port));
  process.on('disconnect', () => process.exit(0));
}

async function measure(certs: Certificates, variant: Variant, mode: Mode, port: number, plan: { mib: number; seconds: number; rate: number }): Promise<Measurement> {
  const socket = tls.connect({
    ...TLS_OPTIONS, host: '127.0.0.1', port, ca: readFileSync(certs.ca), cert: readFileSync(certs.client.cert), key: readFileSync(certs.client.key),
    // The server's certificate names a SPIFFE ID and no host: its chain is checked, the name is not (no policy here).
    checkServerIdentity: () => undefined,
  });
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    createConnection: () => (variant === 'native' ? socket : new SessionSocket(socket).forSession()),
    settings: SETTINGS, maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
  });
  session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES);
  await new Promise((resolve) => session.once('remoteSettings', resolve));
  const start = process.cpuUsage();
  const startMs = performance.now();
  let units: number;
  if (mode === 'paced') {
    const total = plan.rate * plan.seconds;
    const streams = Array.from({ length: STREAMS }, () => session.request({ ':method': 'POST', ':path': '/', 'x-mode': 'paced' }));
    // Counted in bytes: an answer can arrive split over two reads, or two in one.
    let answeredBytes = 0;
    await new Promise<void>((resolve) => {
      for (const stream of streams) {
        stream.on('data', (chunk: Buffer) => {
          answeredBytes += chunk.length;
          if (answeredBytes >= total * ANSWER.length) resolve();
        });
      }
      let sent = 0;
      const tick = (): void => {
        const due = Math.min(total, Math.floor(((performance.now() - startMs) / 1000) * plan.rate));
        for (; sent < due; sent++) (streams[sent % STREAMS] as http2.ClientHttp2Stream).write(REQUEST);
        if (sent < total) setTimeout(tick, 1);
      };
      tick();
    });
    units = total;
    for (const stream of streams) stream.close();
  } else if (mode === 'down') {
    const stream = session.request({ ':method': 'GET', ':path': '/', 'x-mode': 'down', 'x-mib': String(plan.mib) });
    await new Promise((resolve) => stream.on('end', resolve).resume());
    units = plan.mib;
  } else {
    const stream = session.request({ ':method': 'POST', ':path': '/', 'x-mode': 'up' });
    sendMiB(stream, plan.mib);
    await new Promise((resolve) => stream.on('end', resolve).resume());
    units = plan.mib;
  }
  const cpu = process.cpuUsage(start);
  const seconds = (performance.now() - startMs) / 1000;
  session.close();
  return { variant, mode, cpuMicrosPerUnit: (cpu.user + cpu.system) / units, unitsPerSecond: units / seconds };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[middle] as number) : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      serve: { type: 'string' }, client: { type: 'string' },
      rounds: { type: 'string', default: '3' }, mib: { type: 'string', default: '256' }, seconds: { type: 'string', default: '5' }, rate: { type: 'string', default: '2000' },
    },
  });
  const number = (name: 'rounds' | 'mib' | 'seconds' | 'rate'): number => {
    const value = Number(values[name]);
    if (!Number.isInteger(value) || value <= 0) throw new Error(`--${name} must be a positive whole number (got "${values[name]}")`);
    return value;
  };
  const plan = { rounds: number('rounds'), mib: number('mib'), seconds: number('seconds'), rate: number('rate') };
  if (values.serve !== undefined) return serve(JSON.parse(values.serve) as Certificates);
  if (values.client !== undefined) {
    const { certs, variant, mode, port } = JSON.parse(values.client) as { certs: Certificates; variant: Variant; mode: Mode; port: number };
    console.log(JSON.stringify(await measure(certs, variant, mode, port, plan)));
    process.exit(0);
  }

  const certs = await makeCertificates();
  // Server on the first core, each client alone on the second, when there are two and taskset is here.
  const pin = availableParallelism() >= 2 && hasCommand('taskset') !== null;
  const server: ChildProcess = fork(SELF, ['--serve', JSON.stringify(certs)], { execArgv: NODE_FLAGS });
  try {
    if (pin) spawnSync('taskset', ['-a', '-cp', '0', String(server.pid)], { stdio: 'ignore' });
    const port = await new Promise<number>((resolve, reject) => server.once('message', (m) => resolve(m as number)).once('exit', (code) => reject(new Error(`the server exited (${code})`))));
    const results = new Map<string, Measurement[]>();
    for (let round = 0; round < plan.rounds; round++) {
      for (const mode of MODES) {
        for (const variant of round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse()) {
          process.stderr.write(`[hbone-transport] round ${round + 1}/${plan.rounds} · ${mode} · ${variant}\n`);
          const argv = [...NODE_FLAGS, SELF, '--client', JSON.stringify({ certs, variant, mode, port }), '--mib', String(plan.mib), '--seconds', String(plan.seconds), '--rate', String(plan.rate)];
          // A client that hangs is a finding, not a reason for the run to hang: it is stopped and said.
          const options: SpawnSyncOptionsWithStringEncoding = { encoding: 'utf8', timeout: (plan.seconds + 60) * 1000, stdio: ['ignore', 'pipe', 'inherit'] };
          const child = pin ? spawnSync('taskset', ['-c', '1', process.execPath, ...argv], options) : spawnSync(process.execPath, argv, options);
          const line = child.stdout.trim().split('\n').pop() ?? '';
          if (child.status !== 0 || !line.startsWith('{')) throw new Error(`${variant} ${mode}: the client failed (${child.signal === 'SIGTERM' ? 'stopped after its time' : `exit ${child.status}`})`);
          const key = `${mode} ${variant}`;
          results.set(key, [...(results.get(key) ?? []), JSON.parse(line) as Measurement]);
        }
      }
    }
    const units: Record<Mode, string> = { paced: `µs per request (${plan.rate}/s over ${STREAMS} streams, ${plan.seconds} s)`, down: `µs per MiB down (${plan.mib} MiB)`, up: `µs per MiB up (${plan.mib} MiB)` };
    console.log(`## HBONE client transport — client CPU, median of ${plan.rounds} round(s)${pin ? ' (client on CPU 1, server on CPU 0)' : ' (not pinned)'}\n`);
    console.log('| figure | native TLS socket | SessionSocket | SessionSocket / native | rounds (SessionSocket / native) |');
    console.log('|---|---:|---:|---:|---|');
    for (const mode of MODES) {
      const native = (results.get(`${mode} native`) ?? []).map((m) => m.cpuMicrosPerUnit);
      const wrapped = (results.get(`${mode} session-socket`) ?? []).map((m) => m.cpuMicrosPerUnit);
      const ratios = wrapped.map((value, i) => value / (native[i] as number));
      console.log(`| ${units[mode]} | ${median(native).toFixed(1)} | ${median(wrapped).toFixed(1)} | ${median(ratios).toFixed(2)}× | ${ratios.map((r) => `${r.toFixed(2)}×`).join(', ')} |`);
    }
  } finally {
    server.kill();
    rmSync(certs.dir, { recursive: true, force: true });
  }
}

await main();
