// Bulk both ways between a Node HTTP/2 echo server and a client session over a SessionSocket, for the fixture scripts
// that session-socket.test.ts runs in their own processes: the echo server, the client session, and the echoed streams
// with a watch that says when nothing has moved for a while (a stall) instead of waiting for ever.
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { SessionSocket } from '../../src/proxy/session-socket.ts';
import { createTestCa, issueTestSvid } from './certs.ts';

export interface Windows {
  readonly stream: number;
  readonly session: number;
}

/** An HTTP/2 echo server over TLS on 127.0.0.1 with these windows; resolves to its port. */
export async function startEcho(windows: Windows): Promise<number> {
  const ca = await createTestCa('cluster.local');
  const svid = await issueTestSvid(ca, 'spiffe://cluster.local/ns/b/sa/echo');
  const echo = http2.createSecureServer({ cert: svid.certPem, key: svid.keyPem, ALPNProtocols: ['h2'], settings: { initialWindowSize: windows.stream } });
  echo.on('session', (session) => {
    session.on('error', () => {});
    session.setLocalWindowSize(windows.session);
  });
  echo.on('stream', (stream) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  return (echo.address() as AddressInfo).port;
}

/** A client session to 127.0.0.1:port over a SessionSocket with these windows, and its TLS socket. */
export async function connectClient(port: number, windows: Windows, options: ConstructorParameters<typeof SessionSocket>[1] = {}): Promise<{ session: http2.ClientHttp2Session; socket: tls.TLSSocket }> {
  const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'], servername: '' });
  await once(socket, 'secureConnect');
  const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => new SessionSocket(socket, options).forSession(), settings: { initialWindowSize: windows.stream } });
  session.on('error', () => {});
  session.setLocalWindowSize(windows.session);
  return { session, socket };
}

export type Outcome = { echoed: number[] } | { stalled: true; tlsPaused: boolean; queued: number; moved: number };

/**
 * `streams` streams each sending `bytes` and reading them back: written `chunk` bytes at a time, as fast as each
 * stream takes them, or (`piecewise`) one write per turn of the event loop, each leaving as a batch of its own. A stall
 * is said once nothing has moved for `stallMs`.
 */
export async function echoBothWays(session: http2.ClientHttp2Session, socket: tls.TLSSocket, options: { streams: number; bytes: number; chunk: number; piecewise: boolean; stallMs: number }): Promise<Outcome> {
  const { bytes, piecewise } = options;
  const chunk = Buffer.alloc(options.chunk, 1);
  let moved = 0;
  const echoed = (): Promise<number> =>
    new Promise((resolve) => {
      const stream = session.request({ ':method': 'POST', ':path': '/' });
      stream.on('error', () => {});
      let received = 0;
      let sent = 0;
      stream.on('data', (data: Buffer) => {
        received += data.length;
        moved += data.length;
        if (received === bytes) stream.close();
      });
      stream.on('close', () => resolve(received));
      const more = (): void => {
        while (sent < bytes) {
          sent += chunk.length;
          const room = stream.write(chunk);
          if (piecewise) return void (room ? setImmediate(more) : stream.once('drain', () => setImmediate(more)));
          if (!room) return void stream.once('drain', more);
        }
        stream.end();
      };
      more();
    });
  const stalled = new Promise<Outcome>((resolve) => {
    let seen = -1;
    const timer = setInterval(() => {
      if (moved === seen) resolve({ stalled: true, tlsPaused: socket.isPaused(), queued: socket.writableLength, moved });
      seen = moved;
    }, options.stallMs);
    timer.unref();
  });
  return Promise.race([Promise.all(Array.from({ length: options.streams }, echoed)).then((echoedBytes) => ({ echoed: echoedBytes })), stalled]);
}
