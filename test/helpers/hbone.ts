// Peers for HBONE interop tests that are not ambit's own code: a counting TCP echo workload, a CONNECT tunnel over a
// plain node:tls + node:http2 session with TLS options of the test's choosing, and a relay that can go silent.
import { once } from 'node:events';
import * as http2 from 'node:http2';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import * as tls from 'node:tls';

export interface EchoServer {
  readonly server: Server;
  /** Connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

/** A workload that echoes every byte and half-closes after its peer does. */
export async function startEchoServer(host: string, port: number): Promise<EchoServer> {
  const sockets = new Set<Socket>();
  const echo: EchoServer = {
    server: createServer({ allowHalfOpen: true }, (socket) => {
      echo.connections++;
      sockets.add(socket);
      socket.on('error', () => {});
      socket.once('close', () => sockets.delete(socket));
      socket.pipe(socket);
    }),
    connections: 0,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => echo.server.close(() => resolve()));
    },
  };
  echo.server.listen(port, host);
  await once(echo.server, 'listening');
  return echo;
}

/**
 * A TLS 1.3 + h2 session to an HBONE server at host:port with our own options: the client SVID, the mesh's
 * roots, no SNI (as ztunnel), and the server's SPIFFE ID checked against `expectedServerId`.
 */
export async function connectHbone(host: string, port: number, svid: { certPem: string; keyPem: string }, rootsPem: string, expectedServerId: string): Promise<http2.ClientHttp2Session> {
  const socket = tls.connect({
    host,
    port,
    cert: svid.certPem,
    key: svid.keyPem,
    ca: rootsPem,
    minVersion: 'TLSv1.3',
    ALPNProtocols: ['h2'],
    servername: '',
    checkServerIdentity: (_host, cert) => (cert.subjectaltname === `URI:${expectedServerId}` ? undefined : new Error(`server presented ${cert.subjectaltname}, expected URI:${expectedServerId}`)),
  });
  await once(socket, 'secureConnect');
  if (socket.alpnProtocol !== 'h2') throw new Error(`ALPN negotiated ${String(socket.alpnProtocol)}, not h2`);
  const session = http2.connect(`https://${host}:${port}`, { createConnection: () => socket });
  session.on('error', () => {}); // surfaced through the streams
  return session;
}

export interface Tunnel {
  readonly stream: http2.ClientHttp2Stream;
  readonly status: number;
}

/** Sends CONNECT authority and resolves once the response headers arrive; rejects if the stream ends first. */
export function openTunnel(session: http2.ClientHttp2Session, authority: string, headers: Record<string, string> = {}): Promise<Tunnel> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': authority, ...headers }, { endStream: false });
    stream.once('response', (response) => resolve({ stream, status: Number(response[':status']) }));
    stream.once('error', reject);
    stream.once('close', () => reject(new Error(`CONNECT ${authority}: stream closed (code ${stream.rstCode}) before a response`)));
  });
}

/** Writes `payload`, half-closes, and collects everything the other side sends until it half-closes too. */
export async function echoThrough(stream: http2.ClientHttp2Stream, payload: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  const ended = once(stream, 'end');
  stream.write(payload);
  stream.end();
  await ended;
  return Buffer.concat(chunks);
}

export interface FreezableRelay {
  /** Where the relay listens, on 127.0.0.1. */
  readonly port: number;
  /** From now on no byte goes through, either way, and no connection is closed: a peer that vanished (no FIN, no RST). */
  freeze(): void;
  close(): void;
}

/** A TCP relay on 127.0.0.1 to host:port, for tests of what happens when the far side stops answering. */
export async function freezableRelay(host: string, port: number): Promise<FreezableRelay> {
  let frozen = false;
  const sockets: Socket[] = [];
  const relay = createServer((near) => {
    const far = connect(port, host);
    sockets.push(near, far);
    for (const [from, to] of [[near, far], [far, near]] as const) {
      from.on('error', () => {});
      from.on('data', (chunk: Buffer) => {
        if (!frozen) to.write(chunk);
      });
    }
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  return {
    port: (relay.address() as AddressInfo).port,
    freeze: () => (frozen = true),
    close: () => {
      for (const socket of sockets) socket.destroy();
      relay.close();
    },
  };
}

/**
 * A relay to host:port that carries each direction at most `bytesPerSecond` (the way back `backBytesPerSecond`), reading
 * only as fast (what it has not read waits in the kernel's buffers, as on a slow path): a slow link between two proxies.
 */
export async function throttledRelay(host: string, port: number, bytesPerSecond: number, backBytesPerSecond = bytesPerSecond): Promise<{ port: number; close: () => void }> {
  const sockets: Socket[] = [];
  const carry = (from: Socket, to: Socket, rate: number): void => {
    const perTick = Math.max(1, Math.floor(rate / 100));
    from.pause();
    const timer = setInterval(() => {
      if (to.writableNeedDrain) return;
      const data = (from.read(perTick) ?? from.read()) as Buffer | null;
      if (data !== null) to.write(data);
    }, 10);
    from.on('end', () => to.end());
    from.on('close', () => clearInterval(timer));
    to.on('close', () => clearInterval(timer));
  };
  const relay = createServer((near) => {
    const far = connect(port, host);
    sockets.push(near, far);
    near.on('error', () => {});
    far.on('error', () => {});
    carry(near, far, bytesPerSecond);
    carry(far, near, backBytesPerSecond);
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  return {
    port: (relay.address() as AddressInfo).port,
    close: () => {
      for (const socket of sockets) socket.destroy();
      relay.close();
    },
  };
}

/**
 * Floods PINGs on `socket` (an HTTP/2 peer's TLS socket, after `first`: an empty SETTINGS, or the client preface and
 * one) as fast as it takes them, `perBurst` at a time, and never reads a byte: a peer whose acknowledgements no
 * window limits. Stops when the socket closes.
 */
export function floodPings(socket: Socket, first: Buffer, perBurst = 200): void {
  socket.on('error', () => {});
  socket.pause();
  socket.write(first);
  const ping = Buffer.from([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
  const burst = Buffer.concat(Array.from({ length: perBurst }, () => ping));
  const timer = setInterval(() => {
    if (socket.writableLength < 4_000_000) socket.write(burst);
  }, 2);
  socket.on('close', () => clearInterval(timer));
}

/** An empty SETTINGS frame: what a server says first. */
export const EMPTY_SETTINGS: Buffer = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

