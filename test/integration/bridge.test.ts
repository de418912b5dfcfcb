// The Bridge between an application socket and an HBONE stream, on real sockets and a real HTTP/2 session.
import { EventEmitter, once } from 'node:events';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Bridge } from '../../src/proxy/copy.ts';
import type { BridgeResult } from '../../src/proxy/copy.ts';

let h2server: http2.Http2Server;
let session: http2.ClientHttp2Session;
let apps: net.Server;
/** How the peer saw each 'forever:80' stream closed (its RST code), in order. */
const foreverClosedWith: number[] = [];
/** How each 'watch:80' stream ended on the peer's side: END_STREAM seen or not, and its RST code. */
const watched: { ended: boolean; rstCode: number | undefined }[] = [];
/** A response larger than what loopback's buffers hold while the app reads nothing. */
const RESPONSE_BYTES = 24 * 1024 * 1024;

beforeAll(async () => {
  h2server = http2.createServer();
  h2server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200 });
    // 'now': reset at once; 'clean': echo and end; otherwise read the client's bytes to END_STREAM, then reset.
    if (headers[':authority'] === 'now:80') stream.destroy(new Error('reset at once'));
    else if (headers[':authority'] === 'clean:80') stream.pipe(stream); // echoes, and ends when the client does
    else if (headers[':authority'] === 'respond-reset:80') {
      // A server done with its response before the request ended (RFC 9113 §8.1): END_STREAM, then RST_STREAM
      // NO_ERROR, which Node sends once the response has left.
      stream.end(Buffer.alloc(RESPONSE_BYTES, 'r'));
      stream.close(http2.constants.NGHTTP2_NO_ERROR);
    } else if (headers[':authority'] === 'data-then-cancel:80') {
      // A workload that said something and reset at once: the bytes, then CANCEL, read by the client together.
      stream.write(Buffer.alloc(1000, 'w'));
      void abortError().then((error) => stream.destroy(error));
    } else if (headers[':authority'] === 'answer-then-cancel:80') {
      // The same once the tunnel carries: the client's first bytes answered, and the stream reset in the same tick.
      stream.once('data', () => {
        stream.write(Buffer.alloc(1000, 'a'));
        void abortError().then((error) => stream.destroy(error));
      });
    } else if (headers[':authority'] === 'forever:80') {
      const timer = setInterval(() => stream.write(Buffer.alloc(1024, 'f')), 5);
      stream.once('close', () => {
        clearInterval(timer);
        foreverClosedWith.push(stream.rstCode);
      });
    } else if (headers[':authority'] === 'cancel-midway:80') {
      // A download cut by the peer (its proxy went away, its workload reset): some bytes, then CANCEL.
      stream.write(Buffer.alloc(64 * 1024, 'd'));
      setTimeout(() => void abortError().then((error) => stream.destroy(error)), 50);
    } else if (headers[':authority'] === 'watch:80') {
      // Records whether our side of the stream ended (END_STREAM) before it was reset.
      let ended = false;
      // END_STREAM received before the stream closed (Node also emits 'end' after a reset, the stream closed by then).
      stream.on('end', () => (ended ||= !stream.closed));
      stream.resume();
      stream.once('close', () => watched.push({ ended, rstCode: stream.rstCode }));
    } else if (headers[':authority'] === 'cancel-after-end:80') {
      stream.resume();
      // Node resets with CANCEL for its own AbortError (close(CANCEL) here would send END_STREAM first).
      stream.on('end', () => void abortError().then((error) => stream.destroy(error)));
    } else {
      stream.resume();
      // destroy() sends RST_STREAM at once; close(code) would first end our side (END_STREAM) and the client
      // would see a clean close.
      stream.on('end', () => stream.destroy(new Error('reset after the client ended')));
    }
  });
  h2server.listen(0, '127.0.0.1');
  await once(h2server, 'listening');
  session = http2.connect(`http://127.0.0.1:${(h2server.address() as AddressInfo).port}`);
  // Half-open, as the proxy's own sockets: an app's FIN does not end our side by itself.
  apps = net.createServer({ allowHalfOpen: true });
  apps.listen(0, '127.0.0.1');
  await once(apps, 'listening');
});

afterAll(() => {
  session?.destroy();
  h2server?.close();
  apps?.close();
});

/** Node's own AbortError, the one error its HTTP/2 streams reset with CANCEL. */
function abortError(): Promise<Error> {
  return once(new EventEmitter(), 'never', { signal: AbortSignal.abort() }).then(() => new Error('not aborted'), (error: unknown) => error as Error);
}

/** Resolves when the socket has closed, however (events.once would reject on the reset the app is now given). */
function closed(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

/** An application connection: the client end, and the accepted socket a Bridge carries. */
async function appConnection(): Promise<{ client: net.Socket; socket: net.Socket }> {
  const accepted = once(apps, 'connection') as Promise<[net.Socket]>;
  const client = net.connect((apps.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => {});
  // Connected on both sides: a client whose connect Node had not yet completed reads nothing before a reset.
  const [[socket]] = await Promise.all([accepted, once(client, 'connect')]);
  return { client, socket };
}

/** What the application's client end received before it closed, and how it ended (an error code, or 'end'). */
function appOutcome(client: net.Socket): Promise<{ received: number; ending: string }> {
  return new Promise((resolve) => {
    let received = 0;
    let ending = 'closed without an end or an error';
    client.on('data', (chunk: Buffer) => (received += chunk.length));
    client.once('end', () => (ending = 'end'));
    client.once('error', (error: NodeJS.ErrnoException) => (ending = error.code ?? error.message));
    client.once('close', () => resolve({ received, ending }));
  });
}

/** A peer that takes each CONNECT and never grants it a byte of window, nor reads: the app's upload is held back. */
async function shutPeer(): Promise<{ tunnel: () => Promise<http2.ClientHttp2Stream>; close: () => void }> {
  const server = http2.createServer({ settings: { initialWindowSize: 0 } });
  server.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200 });
    stream.pause();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  return {
    async tunnel() {
      const stream = client.request({ ':method': 'CONNECT', ':authority': 'stuck:80' });
      await once(stream, 'response');
      return stream;
    },
    close() {
      client.destroy();
      server.close();
    },
  };
}

/** Bridges socket and stream, runs `then` once it is built, and resolves with its result (or fails after 2 s). */
function bridged(socket: net.Socket, stream: http2.ClientHttp2Stream, then: () => void = () => {}): Promise<BridgeResult> {
  return new Promise<BridgeResult>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the Bridge never finished')), 2_000);
    new Bridge(socket, stream, (r) => {
      clearTimeout(timer);
      resolve(r);
    });
    then();
  });
}

describe('Bridge', () => {
  // The source proxy awaits the CONNECT's answer before it builds the Bridge; a busy proxy can read the answer, the
  // workload's bytes and the reset in one go before it does. Node keeps those bytes in the destroyed stream.
  it('gives the application what the peer sent before a reset that came before the Bridge was built, then resets it', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'data-then-cancel:80' });
    stream.on('error', () => {});
    await new Promise((resolve) => stream.on('close', resolve));
    expect(stream.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);

    const { client, socket } = await appConnection();
    const outcome = appOutcome(client);
    const result = await bridged(socket, stream);
    expect(result.failedSide).toBe('stream');
    // Every byte, then a reset, never a clean end: the workload's connection did not end in order.
    expect(await outcome).toEqual({ received: 1000, ending: 'ECONNRESET' });
  });

  // The answer and the reset reach the proxy in one read, once the tunnel carries: the bytes are written to the
  // application before its reset.
  it('gives the application the bytes that came with the peer\'s reset before resetting it', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'answer-then-cancel:80' });
    stream.on('error', () => {});
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    const outcome = appOutcome(client);
    const result = await bridged(socket, stream, () => client.write('go'));
    expect(result.failedSide).toBe('stream');
    expect(await outcome).toEqual({ received: 1000, ending: 'ECONNRESET' });
  });

  it('closes the application connection at once when its stream was reset before the Bridge was built', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'now:80' });
    stream.on('error', () => {}); // the reset; events.once would reject on it
    await new Promise((resolve) => stream.on('close', resolve));
    expect(stream.destroyed).toBe(true);

    const { client, socket } = await appConnection();
    const clientClosed = closed(client);
    const result = await bridged(socket, stream);
    expect(result.failedSide).toBe('stream');
    expect(result.error?.message).toMatch(/closed before the tunnel started/);
    await clientClosed;
  });

  it('reports a tunnel the peer reset after the app half-closed as failed on the stream side, not as a clean close', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'after-end:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    const clientClosed = closed(client);
    const result = await bridged(socket, stream, () => client.end('bytes the peer never acknowledged'));
    expect(stream.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
    expect(result.failedSide).toBe('stream');
    expect(result.error).toBeDefined();
    await clientClosed;
  });

  it("delivers every byte of a response the peer ended and then reset with NO_ERROR while the app was still sending, then FIN", async () => {
    // Windows that let the whole response arrive while the app reads nothing: it waits in the stream and the socket.
    const roomy = http2.connect(`http://127.0.0.1:${(h2server.address() as AddressInfo).port}`, { settings: { initialWindowSize: 2 * RESPONSE_BYTES } });
    try {
      await once(roomy, 'connect');
      roomy.setLocalWindowSize(2 * RESPONSE_BYTES);
      const stream = roomy.request({ ':method': 'CONNECT', ':authority': 'respond-reset:80' });
      await once(stream, 'response');
      const { client, socket } = await appConnection();
      client.pause();
      client.write('a request the server stopped reading');
      let received = 0;
      const ended = new Promise<void>((resolve) => client.once('end', resolve));
      const result = new Promise<BridgeResult>((resolve) => new Bridge(socket, stream, resolve));
      await expect.poll(() => stream.rstCode, { timeout: 5_000 }).toBe(http2.constants.NGHTTP2_NO_ERROR);
      client.on('data', (chunk: Buffer) => (received += chunk.length));
      client.resume();
      await ended;
      expect(received).toBe(RESPONSE_BYTES);
      // The app's side stays its own until it ends it; then the tunnel is done, cleanly.
      client.end();
      expect((await result).error).toBeUndefined();
    } finally {
      roomy.destroy();
    }
  });

  it('finishes a tunnel the peer reset with NO_ERROR while its writes waited for window, once the app closes', async () => {
    // A peer with a 1 KiB window that answers and resets as soon as the upload starts: the rest of it stays queued.
    const tight = http2.createServer({ settings: { initialWindowSize: 1024 } });
    tight.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      stream.once('data', () => {
        stream.pause();
        stream.end('no');
        stream.close(http2.constants.NGHTTP2_NO_ERROR);
      });
    });
    tight.listen(0, '127.0.0.1');
    await once(tight, 'listening');
    const client2 = http2.connect(`http://127.0.0.1:${(tight.address() as AddressInfo).port}`);
    try {
      const stream = client2.request({ ':method': 'CONNECT', ':authority': 'upload:80' });
      await once(stream, 'response');
      const { client, socket } = await appConnection();
      let answer = '';
      client.on('data', (chunk: Buffer) => (answer += chunk.toString()));
      // The app reads the answer to its end, then closes its side too.
      client.once('end', () => client.end());
      const result = await bridged(socket, stream, () => client.write(Buffer.alloc(1024 * 1024, 'u')));
      expect(answer).toBe('no');
      expect(result.error).toBeUndefined();
    } finally {
      client2.destroy();
      tight.close();
    }
  });

  it('ends a tunnel whose peer never opens its window once the application, held back, resets (its paused socket is looked at again)', async () => {
    const shut = await shutPeer();
    try {
      const stream = await shut.tunnel();
      const { client, socket } = await appConnection();
      const outcome = new Promise<BridgeResult>((resolve) => new Bridge(socket, stream, resolve));
      // Written until the kernel's buffers fill behind the paused socket, then reset: a paused socket is not read, and
      // the tunnel (its descriptor, its stream, its buffers) was held for as long as the peer liked.
      const chunk = Buffer.alloc(64 * 1024, 'u');
      while (client.write(chunk));
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(socket.isPaused()).toBe(true);
      client.resetAndDestroy();
      const started = Date.now();
      const result = await outcome;
      // Looked at again within PAUSED_SOCKET_CHECK_MS (10 s).
      expect(Date.now() - started).toBeLessThan(12_000);
      expect(result.failedSide).toBe('socket');
      expect(socket.destroyed).toBe(true);
      expect(stream.destroyed).toBe(true);
      // Its queue stayed bounded while it waited.
      expect(stream.writableLength).toBeLessThanOrEqual(256 * 1024 + 64 * 1024);
    } finally {
      shut.close();
    }
  }, 20_000);

  it('cuts a tunnel that has moved nothing either way for 5 minutes while the peer holds the application\'s bytes (its end among them)', async () => {
    const shut = await shutPeer();
    // The Bridge's own timers only (the sockets keep their real ones): five minutes pass in a moment.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const stream = await shut.tunnel();
      const { client, socket } = await appConnection();
      let result: BridgeResult | undefined;
      new Bridge(socket, stream, (r) => (result = r));
      // 100 KiB and the app's FIN: the socket ends, its half-open side stays, and the end waits behind the window.
      client.end(Buffer.alloc(100 * 1024, 'u'));
      const tick = () => new Promise((resolve) => setImmediate(resolve));
      for (let i = 0; i < 20; i++) await tick();
      for (let looked = 0; looked < 29 && result === undefined; looked++) {
        vi.advanceTimersByTime(10_000);
        for (let i = 0; i < 5; i++) await tick();
      }
      expect(result).toBeUndefined();
      vi.advanceTimersByTime(10_000);
      for (let i = 0; i < 20 && result === undefined; i++) await tick();
      expect(result?.failedSide).toBe('stream');
      expect(result?.error?.message).toBe('the peer took none of the application\'s bytes, and sent none, for 300 s (its window closed)');
    } finally {
      vi.useRealTimers();
      shut.close();
    }
  });

  it('counts a tunnel as stalled from its first look without progress until it moves or ends, so the stalled share a budget', async () => {
    const shut = await shutPeer();
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const tick = () => new Promise((resolve) => setImmediate(resolve));
    const clients: net.Socket[] = [];
    try {
      const before = Bridge.stalled;
      const outcomes: Array<Promise<BridgeResult>> = [];
      const streams: http2.ClientHttp2Stream[] = [];
      for (let i = 0; i < 3; i++) {
        const stream = await shut.tunnel();
        const { client, socket } = await appConnection();
        clients.push(client);
        streams.push(stream);
        outcomes.push(new Promise<BridgeResult>((resolve) => new Bridge(socket, stream, resolve)));
        client.write(Buffer.alloc(100 * 1024, 'u'));
      }
      for (let i = 0; i < 20; i++) await tick();
      expect(Bridge.stalled).toBe(before);
      vi.advanceTimersByTime(10_000);
      for (let i = 0; i < 5; i++) await tick();
      expect(Bridge.stalled).toBe(before + 3);
      // Another look without progress counts no one twice.
      vi.advanceTimersByTime(10_000);
      for (let i = 0; i < 5; i++) await tick();
      expect(Bridge.stalled).toBe(before + 3);
      // Ended tunnels leave the count (a leak would shrink every later tunnel's share for good).
      for (const client of clients) client.resetAndDestroy();
      await Promise.all(outcomes);
      expect(Bridge.stalled).toBe(before);
    } finally {
      vi.useRealTimers();
      for (const client of clients) client.destroy();
      shut.close();
    }
  });

  it('resets the stream when the app connection is destroyed after its FIN while the peer still sends, rather than hold the tunnel', async () => {
    foreverClosedWith.length = 0;
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'forever:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    client.resume();
    const result = await bridged(socket, stream, () => {
      client.end();
      // The proxy lets the connection go (its workload left the node) once the app's FIN is in.
      socket.once('end', () => setTimeout(() => socket.destroy(), 20));
    });
    expect(result).toBeDefined();
    await expect.poll(() => foreverClosedWith).toEqual([http2.constants.NGHTTP2_CANCEL]);
  });

  it('reports a tunnel the peer cancelled (RST CANCEL) after the app half-closed as failed on the stream side', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'cancel-after-end:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    client.resume();
    const result = await bridged(socket, stream, () => client.end('bytes'));
    expect(stream.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
    expect(result.failedSide).toBe('stream');
    expect(result.error?.message).toContain('RST 8');
  });

  it('gives the application a reset, not a FIN, when the peer cancels its stream in the middle of a download', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'cancel-midway:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    let received = 0;
    let ended = false;
    client.on('data', (chunk: Buffer) => (received += chunk.length));
    client.on('end', () => (ended = true));
    const failed = new Promise<string | undefined>((resolve) => client.once('error', (error: NodeJS.ErrnoException) => resolve(error.code)));
    const result = await bridged(socket, stream);
    expect(result.failedSide).toBe('stream');
    expect(await failed).toBe('ECONNRESET');
    expect(received).toBeGreaterThan(0);
    expect(ended).toBe(false);
  });

  it('resets the peer\'s stream at once when the tunnel is cut, without ending it first (no END_STREAM a proxy would pass on as FIN)', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'watch:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    const clientFailed = new Promise<string | undefined>((resolve) => client.once('error', (error: NodeJS.ErrnoException) => resolve(error.code)));
    const done = new Promise<BridgeResult>((resolve) => {
      const bridge = new Bridge(socket, stream, resolve);
      client.write('some bytes', () => setTimeout(() => bridge.abort(), 20));
    });
    await done;
    await expect.poll(() => watched.length).toBe(1);
    expect(watched[0]).toEqual({ ended: false, rstCode: http2.constants.NGHTTP2_CANCEL });
    // And the application connection is reset too.
    expect(await clientFailed).toBe('ECONNRESET');
  });

  it('reports a tunnel both ends closed cleanly as a clean close', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'clean:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    const result = await bridged(socket, stream, () => {
      client.end('hello');
      client.resume();
    });
    expect(result.error).toBeUndefined();
    expect(result.failedSide).toBeUndefined();
  });
});
