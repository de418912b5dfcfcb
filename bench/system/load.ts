// The load each scenario puts on a row, from the harness process (pinned with the upstream):
//   throughput  autocannon, closed loop, N keep-alive connections, as fast as the row answers;
//   paced       an open-loop fixed rate over a pool of keep-alive connections, latency counted from the
//               moment each request was due (so a stalled row is not excused by fewer requests: no
//               coordinated omission). autocannon's own rate limit sends each connection's quota for
//               the second back to back at the start of the second, and its histogram has 1 ms steps;
//               neither suits a sub-millisecond p50 at a steady rate.
//   churn       a new TCP connection for every request (`Connection: close`), N at a time;
//   bulk        one connection carrying N bytes one way;
//   idle        N connections opened and left idle.
import autocannon from 'autocannon';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { REQUEST_PATH } from './layout.ts';
import type { HostPort } from './layout.ts';

/** A request that has not completed after this long is a failure. */
const REQUEST_TIMEOUT_MS = 10_000;
/** What a paced run waits for stragglers after its last request is due. */
const DRAIN_TIMEOUT_MS = 10_000;
/** Bulk data is written in pieces this size, honouring backpressure. */
const BULK_CHUNK = Buffer.alloc(1024 * 1024, 0x62);

/** Latencies in microseconds, kept whole (a run is at most a few million requests) for exact percentiles. */
export class Latencies {
  #values = new Float64Array(1 << 16);
  #count = 0;

  get count(): number {
    return this.#count;
  }

  add(micros: number): void {
    if (this.#count === this.#values.length) {
      const grown = new Float64Array(this.#values.length * 2);
      grown.set(this.#values);
      this.#values = grown;
    }
    this.#values[this.#count++] = micros;
  }

  /** Percentiles in milliseconds (nearest rank); null without samples. */
  percentiles(): { p50: number; p99: number; max: number } | null {
    if (this.#count === 0) return null;
    const sorted = this.#values.slice(0, this.#count).sort();
    const at = (p: number) => (sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number) / 1000;
    return { p50: at(50), p99: at(99), max: (sorted[sorted.length - 1] as number) / 1000 };
  }
}

export interface ThroughputResult {
  ok: number;
  failed: number;
  seconds: number;
  requestsPerSecond: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
}

/** Closed-loop maximum throughput with autocannon. */
export function throughput(target: HostPort, connections: number, seconds: number): Promise<ThroughputResult> {
  const latencies = new Latencies();
  return new Promise((resolve, reject) => {
    const instance = autocannon({ url: `http://${target.host}:${target.port}${REQUEST_PATH}`, connections, duration: seconds, pipelining: 1, timeout: REQUEST_TIMEOUT_MS / 1000 }, (error, result) => {
      if (error) {
        reject(error);
        return;
      }
      const ok = result['2xx'];
      resolve({ ok, failed: result.non2xx + result.errors, seconds: result.duration, requestsPerSecond: ok / result.duration, latencyMs: latencies.percentiles() });
    });
    instance.on('response', (_client: unknown, statusCode: number, _bytes: number, responseTimeMs: number) => {
      if (statusCode === 200) latencies.add(responseTimeMs * 1000);
    });
  });
}

function requestBytes(target: HostPort, close: boolean): Buffer {
  return Buffer.from(`GET ${REQUEST_PATH} HTTP/1.1\r\nHost: ${target.host}:${target.port}\r\nUser-Agent: ambit-bench\r\n${close ? 'Connection: close\r\n' : ''}\r\n`);
}

const HEADER_END = Buffer.from('\r\n\r\n');
const CHUNKED_END = Buffer.from('0\r\n\r\n');

/** Reads one HTTP/1.1 response from accumulated bytes: its status once complete, else null. */
function completeResponse(buffer: Buffer): number | null {
  const headerEnd = buffer.indexOf(HEADER_END);
  if (headerEnd < 0) return null;
  const head = buffer.subarray(0, headerEnd).toString('latin1');
  const status = Number(head.slice(9, 12));
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length) return buffer.length >= headerEnd + 4 + Number(length[1]) ? status : null;
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) return buffer.length >= headerEnd + 4 + CHUNKED_END.length && buffer.subarray(buffer.length - CHUNKED_END.length).equals(CHUNKED_END) ? status : null;
  return status;
}

/** One keep-alive HTTP/1.1 connection, one request at a time; reconnects after a failure. */
export class KeepAliveConnection {
  readonly #target: HostPort;
  readonly #request: Buffer;
  #socket: Socket | null = null;
  /**
   * Times the far side closed this connection while no request was in flight. The next request opens a new one, as a
   * client would; nothing in the benchmark closes keep-alive connections (the upstream keeps them an hour, for any
   * number of requests), so each is a proxy cutting an application's connection (a rotation must never do so).
   */
  closedBetweenRequests = 0;
  #buffer: Buffer = Buffer.alloc(0);
  #done: ((ok: boolean) => void) | null = null;
  #timer: NodeJS.Timeout | null = null;

  constructor(target: HostPort) {
    this.#target = target;
    this.#request = requestBytes(target, false);
  }

  send(done: (ok: boolean) => void): void {
    this.#done = done;
    this.#buffer = Buffer.alloc(0);
    if (this.#socket === null) this.#socket = this.#connect();
    this.#timer = setTimeout(() => this.#finish(false, true), REQUEST_TIMEOUT_MS);
    this.#socket.write(this.#request);
  }

  /** Opens the connection ahead of its first request; resolves once connected, or refused (a request then retries). */
  open(): Promise<void> {
    if (this.#socket !== null) return Promise.resolve();
    const socket = this.#connect();
    this.#socket = socket;
    return new Promise((resolve) => {
      socket.once('connect', () => resolve());
      socket.once('close', () => resolve());
    });
  }

  /** Closes the connection; a request still in flight is dropped unanswered (its run has already counted it failed). */
  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#done = null;
    this.#socket?.destroy();
    this.#socket = null;
  }

  #connect(): Socket {
    const socket = connect({ host: this.#target.host, port: this.#target.port, noDelay: true });
    socket.on('data', (chunk: Buffer) => {
      if (this.#done === null || this.#socket !== socket) return;
      this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
      const status = completeResponse(this.#buffer);
      if (status !== null) this.#finish(status === 200, false);
    });
    socket.on('error', () => {});
    let connected = false;
    socket.once('connect', () => (connected = true));
    socket.on('close', () => {
      // A socket we already let go of (timed out, replaced) must not fail the request now in flight.
      if (this.#socket !== socket) return;
      this.#socket = null;
      // Closed by the far side once open (a connect refused is no connection cut; the next request tries again).
      if (this.#done === null && connected) this.closedBetweenRequests++;
      this.#finish(false, false);
    });
    return socket;
  }

  #finish(ok: boolean, reset: boolean): void {
    const done = this.#done;
    if (done === null) return;
    this.#done = null;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (reset) this.close();
    done(ok);
  }
}

export interface PacedResult {
  due: number;
  ok: number;
  failed: number;
  /** Connections the far side closed between requests during the run (see KeepAliveConnection). */
  connectionsClosed: number;
  seconds: number;
  achievedPerSecond: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
}

/** `count` keep-alive connections to `target`, each opened by its first request; the caller closes them. */
export function keepAliveConnections(target: HostPort, count: number): KeepAliveConnection[] {
  return Array.from({ length: count }, () => new KeepAliveConnection(target));
}

/**
 * Opens every one of `connections` at once, before a warm-up: opened on demand, a warm-up at a steady rate opens only
 * as many as its busiest moment needs, and a burst in the measured run then opens the rest.
 */
export async function openAll(connections: readonly KeepAliveConnection[]): Promise<void> {
  await Promise.all(connections.map((connection) => connection.open()));
}

/**
 * Open-loop fixed rate: request i is due at start + i/rate, sent on a free connection or queued for one. Over
 * `connections` given (a warm-up's, kept open for the measured run, so that neither a proxy's setup of new connections
 * nor HAProxy's handshakes fall into it) or as many new ones, closed at the end.
 */
export async function paced(target: HostPort, ratePerSecond: number, seconds: number, connections: number | readonly KeepAliveConnection[], onTick?: (elapsedMs: number) => void): Promise<PacedResult> {
  const latencies = new Latencies();
  const own = typeof connections === 'number';
  const all: readonly KeepAliveConnection[] = own ? keepAliveConnections(target, connections) : connections;
  const free: KeepAliveConnection[] = [...all];
  const closedBefore = all.reduce((sum, connection) => sum + connection.closedBetweenRequests, 0);
  const queue: number[] = [];
  let queueHead = 0;
  let due = 0;
  let ok = 0;
  let failed = 0;
  let outstanding = 0;
  const total = Math.round(ratePerSecond * seconds);
  const start = performance.now();
  let lastResponse = start;

  const dispatch = (connection: KeepAliveConnection, dueAt: number) => {
    outstanding++;
    connection.send((success) => {
      outstanding--;
      const now = performance.now();
      lastResponse = now;
      if (success) {
        ok++;
        latencies.add((now - dueAt) * 1000);
      } else {
        failed++;
      }
      if (queueHead < queue.length) dispatch(connection, queue[queueHead++] as number);
      else free.push(connection);
    });
  };

  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const elapsed = performance.now() - start;
      onTick?.(elapsed);
      const shouldBeDue = Math.min(total, Math.floor((elapsed * ratePerSecond) / 1000));
      while (due < shouldBeDue) {
        const dueAt = start + (due * 1000) / ratePerSecond;
        due++;
        const connection = free.pop();
        if (connection) dispatch(connection, dueAt);
        else queue.push(dueAt);
      }
      if (due >= total) {
        clearInterval(timer);
        resolve();
      }
    }, 1);
  });
  const drainDeadline = performance.now() + DRAIN_TIMEOUT_MS;
  while ((outstanding > 0 || queueHead < queue.length) && performance.now() < drainDeadline) await new Promise((resolve) => setTimeout(resolve, 5));
  failed += outstanding + (queue.length - queueHead);
  const connectionsClosed = all.reduce((sum, connection) => sum + connection.closedBetweenRequests, 0) - closedBefore;
  if (own || outstanding > 0) for (const connection of all) connection.close();
  const seconds_ = (lastResponse - start) / 1000;
  return { due, ok, failed, connectionsClosed, seconds: seconds_, achievedPerSecond: ok / Math.max(seconds_, 1e-9), latencyMs: latencies.percentiles() };
}

/** One request on a new connection: connect, `Connection: close`, read the response to the server's FIN. */
function oneShot(target: HostPort, request: Buffer, localAddress: string | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: target.host, port: target.port, localAddress, noDelay: true });
    let buffer: Buffer = Buffer.alloc(0);
    let settled = false;
    const settle = (ok: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => settle(false), REQUEST_TIMEOUT_MS);
    socket.once('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => (buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk])));
    socket.once('end', () => {
      socket.end();
      settle(completeResponse(buffer) === 200);
    });
    socket.once('error', () => settle(false));
    socket.once('close', () => settle(completeResponse(buffer) === 200));
  });
}

export interface ChurnResult {
  ok: number;
  failed: number;
  seconds: number;
  connectionsPerSecond: number;
  latencyMs: { p50: number; p99: number; max: number } | null;
}

/** `concurrency` clients, each opening a new connection for every request until time is up. */
export async function churn(target: HostPort, concurrency: number, seconds: number, sources: readonly string[]): Promise<ChurnResult> {
  const request = requestBytes(target, true);
  const latencies = new Latencies();
  let ok = 0;
  let failed = 0;
  const start = performance.now();
  const end = start + seconds * 1000;
  let next = 0;
  const worker = async () => {
    while (performance.now() < end) {
      const began = performance.now();
      const success = await oneShot(target, request, sources.length ? sources[next++ % sources.length] : undefined);
      if (success) {
        ok++;
        latencies.add((performance.now() - began) * 1000);
      } else {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const elapsed = (performance.now() - start) / 1000;
  return { ok, failed, seconds: elapsed, connectionsPerSecond: ok / elapsed, latencyMs: latencies.percentiles() };
}

/** A steady trickle of new connections (one request each) beside other load: how many succeeded and failed. */
export async function trickle(target: HostPort, perSecond: number, seconds: number): Promise<{ ok: number; failed: number }> {
  const request = requestBytes(target, true);
  const pending: Array<Promise<boolean>> = [];
  const intervalMs = 1000 / perSecond;
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    pending.push(oneShot(target, request, undefined));
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
  const results = await Promise.all(pending);
  const ok = results.filter(Boolean).length;
  return { ok, failed: results.length - ok };
}

export interface BulkResult {
  bytes: number;
  seconds: number;
  mibPerSecond: number;
}

/** N bytes through one connection: `down` from the upstream to us, `up` from us to the upstream. */
export function bulk(target: HostPort, direction: 'down' | 'up', bytes: number, timeoutMs: number): Promise<BulkResult> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = connect({ host: target.host, port: target.port, noDelay: true, allowHalfOpen: true });
    const timer = setTimeout(() => socket.destroy(new Error(`bulk ${direction} of ${bytes} bytes did not finish in ${timeoutMs} ms`)), timeoutMs);
    let received = 0;
    let answer = '';
    const finish = (moved: number) => {
      clearTimeout(timer);
      const seconds = (performance.now() - started) / 1000;
      socket.destroy();
      if (moved !== bytes) reject(new Error(`bulk ${direction}: moved ${moved} of ${bytes} bytes`));
      else resolve({ bytes, seconds, mibPerSecond: bytes / (1024 * 1024) / seconds });
    };
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('connect', () => {
      socket.write(`${direction} ${bytes}\n`);
      if (direction === 'down') return;
      let remaining = bytes;
      const pump = () => {
        while (remaining > 0) {
          const size = Math.min(remaining, BULK_CHUNK.length);
          remaining -= size;
          if (!socket.write(size === BULK_CHUNK.length ? BULK_CHUNK : BULK_CHUNK.subarray(0, size))) {
            socket.once('drain', pump);
            return;
          }
        }
        socket.end();
      };
      pump();
    });
    socket.on('data', (chunk: Buffer) => {
      if (direction === 'down') received += chunk.length;
      else answer += chunk.toString();
    });
    socket.once('end', () => {
      if (direction === 'down') finish(received);
      else finish(Number(/^ok (\d+)/.exec(answer)?.[1] ?? -1));
    });
  });
}

/** What a timed transfer asks the upstream for: more than any run moves, so that the clock, not the count, ends it. */
const BULK_UNBOUNDED_BYTES = 2 ** 50;

/**
 * Bytes through one connection for `ms` (--side-by-side: pairs loaded at once must be loaded for the same time, which
 * fixed byte counts are not). `down`: what arrived, then the connection is cut. `up`: what reached the upstream: our
 * side is ended and the upstream's count awaited, so that what a pair still held in its buffers (a proxy's stream
 * windows, megabytes) counts only once carried, and its time with it. A transfer that stops moving for `stallMs` is a
 * failure.
 */
export function bulkFor(target: HostPort, direction: 'down' | 'up', ms: number, stallMs: number): Promise<BulkResult> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.host, port: target.port, noDelay: true, allowHalfOpen: true });
    let started = 0;
    let moved = 0;
    /** The clock has run out: no more is written (up) or counted (down). */
    let stopped = false;
    let settled = false;
    let answer = '';
    let stall: NodeJS.Timeout | undefined;
    const armStall = () => {
      clearTimeout(stall);
      stall = setTimeout(() => fail(new Error(stopped ? `bulk up: the upstream did not count what was sent within ${stallMs} ms of its end` : `bulk ${direction}: nothing moved for ${stallMs} ms after ${moved} bytes`)), stallMs);
    };
    // From the start: a connection that is never accepted fails too, instead of holding the run.
    armStall();
    let clock: NodeJS.Timeout | undefined;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(stall);
      clearTimeout(clock);
      socket.destroy();
      reject(error);
    };
    const done = (bytes: number) => {
      if (settled) return;
      settled = true;
      clearTimeout(stall);
      const seconds = (performance.now() - started) / 1000;
      socket.destroy();
      resolve({ bytes, seconds, mibPerSecond: bytes / (1024 * 1024) / seconds });
    };
    const stop = () => {
      stopped = true;
      if (direction === 'down') {
        done(moved);
        return;
      }
      // The rest of what we wrote goes on through the pair; the upstream answers `ok COUNT` at our end.
      armStall();
      socket.end();
    };
    socket.once('error', fail);
    socket.once('close', () => fail(new Error(`bulk ${direction}: the connection closed after ${moved} bytes${stopped ? '' : `, before ${ms} ms`}`)));
    socket.once('connect', () => {
      started = performance.now();
      clock = setTimeout(stop, ms);
      socket.write(`${direction} ${BULK_UNBOUNDED_BYTES}\n`);
      if (direction === 'down') return;
      const pump = () => {
        if (stopped) return;
        armStall();
        // Until the socket's buffer is full: the kernel takes a few MiB at once, then 'drain' calls again.
        while (socket.write(BULK_CHUNK)) moved += BULK_CHUNK.length;
        moved += BULK_CHUNK.length;
        socket.once('drain', pump);
      };
      pump();
    });
    socket.on('data', (chunk: Buffer) => {
      if (direction === 'up') {
        answer += chunk.toString('latin1');
        return;
      }
      if (stopped) return;
      moved += chunk.length;
      armStall();
    });
    socket.once('end', () => {
      if (direction !== 'up' || !stopped) return;
      const count = /^ok (\d+)/.exec(answer);
      if (count === null) fail(new Error(`bulk up: the upstream answered ${JSON.stringify(answer.slice(0, 40))}, not its count`));
      else done(Number(count[1]));
    });
  });
}

/**
 * How many of `requested` idle connections (e) each kind of pair can be given within a hard open-files limit that
 * cannot be raised, in steps of 50 with 512 descriptors spare. Every process of ambit's pair and the Node floor's holds
 * one descriptor per connection (an accepted socket, or an upstream one; the HBONE sessions are shared), as the harness
 * and the upstream do; each HAProxy process holds two (it opens a connection of its own for each one it accepts).
 * Each pair gets as many as its own processes can hold, so that a limit HAProxy needs does not shrink ambit's figure.
 */
export function idleConnectionCounts(requested: number, hardLimit: number): { single: number; paired: number } {
  const fit = (perConnection: number) => Math.max(100, Math.floor((hardLimit - 512) / perConnection / 50) * 50);
  return { single: Math.min(requested, fit(1)), paired: Math.min(requested, fit(2)) };
}

/** Opens `count` connections, at most `parallel` connecting at once; the caller closes them. */
export async function openIdle(target: HostPort, count: number, parallel: number, sockets: Socket[]): Promise<number> {
  let failed = 0;
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next++;
      const ok = await new Promise<boolean>((resolve) => {
        const socket = connect({ host: target.host, port: target.port });
        sockets.push(socket);
        socket.once('connect', () => resolve(true));
        socket.once('error', () => resolve(false));
        socket.on('error', () => {});
      });
      if (!ok) failed++;
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return failed;
}
