// One side of the Node floor pair (bench/system/node-floor.ts): the least a Node process does to carry a TCP
// connection over HBONE, with nothing of ambit's. The client side accepts plain TCP and opens one CONNECT stream
// per connection on pooled HTTP/2 sessions over mTLS (at most ambit's streams per session), waits for the 200,
// and pipes both ways (half-close kept: FIN is END_STREAM and back, or bulk up could not read its answer); the
// server side verifies the client certificate, connects to the CONNECT authority and answers 200 once connected.
// TLS and HTTP/2 are set as ambit sets them (src/proxy/settings.ts). No identity checks beyond the chain and the
// name, no policy, no metrics, no logs, no timeouts: the gap between this pair and ambit's is ambit's own work.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { readFileSync } from 'node:fs';
import {
  H2_CLIENT_MAX_HEADER_LIST_BYTES, H2_CONNECTION_WINDOW_BYTES, H2_MAX_FRAME_BYTES, H2_MAX_SESSION_MEMORY_MB, H2_SERVER_MAX_HEADER_LIST_BYTES,
  H2_SERVER_MAX_STREAMS, H2_STREAM_WINDOW_BYTES, HBONE_ALPN, POOL_MAX_STREAMS_PER_SESSION, TLS_CIPHERS, TLS_GROUPS, TLS_MIN_VERSION,
} from '../../src/proxy/settings.ts';

export interface FloorClientConfig {
  readonly role: 'client';
  /** listen host:port → CONNECT authority */
  readonly listeners: ReadonlyArray<{ host: string; port: number; authority: string }>;
  readonly server: { host: string; port: number; name: string };
  readonly caFile: string;
  /** Certificate and key in one PEM file (the HAProxy pairs' files). */
  readonly pemFile: string;
}

export interface FloorServerConfig {
  readonly role: 'server';
  readonly listen: { host: string; port: number };
  readonly caFile: string;
  readonly pemFile: string;
}

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;
const TLS = { minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS, ecdhCurve: TLS_GROUPS, ALPNProtocols: HBONE_ALPN } as const;
const noop = (): void => {};

/** Pipes a socket and a stream both ways, half-close kept; a reset, an error or an abrupt close of either ends both. */
function splice(socket: net.Socket, stream: http2.Http2Stream): void {
  socket.on('close', () => {
    if (!stream.destroyed && !(stream.readableEnded && stream.writableEnded)) stream.close(NGHTTP2_CANCEL);
  });
  stream.on('close', () => {
    if (stream.rstCode !== NGHTTP2_NO_ERROR || !stream.readableEnded) socket.destroy();
  });
  socket.pipe(stream);
  stream.pipe(socket);
}

function runClient(config: FloorClientConfig): void {
  const pem = readFileSync(config.pemFile);
  const ca = readFileSync(config.caFile);
  const sessions: Array<{ session: http2.ClientHttp2Session; streams: number }> = [];
  const sessionWithRoom = () => {
    for (const entry of sessions) if (entry.streams < POOL_MAX_STREAMS_PER_SESSION && !entry.session.closed && !entry.session.destroyed) return entry;
    const session = http2.connect(`https://${config.server.host}:${config.server.port}`, {
      ...TLS, ca, cert: pem, key: pem, servername: config.server.name, maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
      settings: { initialWindowSize: H2_STREAM_WINDOW_BYTES, maxFrameSize: H2_MAX_FRAME_BYTES, maxHeaderListSize: H2_CLIENT_MAX_HEADER_LIST_BYTES, enablePush: false },
    });
    const entry = { session, streams: 0 };
    session.on('connect', () => session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES));
    session.on('error', (error) => console.error(`floor client: session error: ${error.message}`));
    session.on('close', () => {
      const index = sessions.indexOf(entry);
      if (index >= 0) sessions.splice(index, 1);
    });
    session.on('goaway', () => session.close());
    sessions.push(entry);
    return entry;
  };
  for (const listener of config.listeners) {
    net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => {
      socket.on('error', noop);
      const entry = sessionWithRoom();
      let stream: http2.ClientHttp2Stream;
      try {
        stream = entry.session.request({ ':method': 'CONNECT', ':authority': listener.authority }, { endStream: false });
      } catch {
        socket.destroy();
        return;
      }
      entry.streams++;
      stream.on('error', noop);
      let answered = false;
      stream.on('close', () => {
        entry.streams--;
        if (!answered) socket.destroy();
      });
      socket.on('close', () => {
        if (!answered) stream.close(NGHTTP2_CANCEL);
      });
      stream.once('response', (headers) => {
        if (headers[':status'] !== 200) {
          stream.close(NGHTTP2_CANCEL);
          return;
        }
        answered = true;
        splice(socket, stream);
        socket.resume();
      });
    }).listen(listener.port, listener.host);
  }
}

function runServer(config: FloorServerConfig): void {
  const pem = readFileSync(config.pemFile);
  const server = http2.createSecureServer({
    ...TLS, ca: readFileSync(config.caFile), cert: pem, key: pem, requestCert: true, rejectUnauthorized: true, allowHTTP1: false,
    maxSessionMemory: H2_MAX_SESSION_MEMORY_MB,
    settings: { initialWindowSize: H2_STREAM_WINDOW_BYTES, maxFrameSize: H2_MAX_FRAME_BYTES, maxConcurrentStreams: H2_SERVER_MAX_STREAMS, maxHeaderListSize: H2_SERVER_MAX_HEADER_LIST_BYTES, enablePush: false },
  });
  server.on('session', (session) => session.on('connect', () => session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES)));
  server.on('stream', (stream, headers) => {
    stream.on('error', noop);
    const target = /^(.+):(\d{1,5})$/.exec(String(headers[':authority'] ?? ''));
    const port = Number(target?.[2]);
    if (headers[':method'] !== 'CONNECT' || target === null || port < 1 || port > 65535) {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    const upstream = net.connect({ host: (target[1] as string).replace(/^\[(.*)\]$/, '$1'), port, allowHalfOpen: true, noDelay: true });
    upstream.on('error', noop);
    let connected = false;
    upstream.once('close', () => {
      if (!connected && !stream.destroyed) stream.respond({ ':status': 503 }, { endStream: true });
    });
    stream.on('close', () => {
      if (!connected) upstream.destroy();
    });
    upstream.once('connect', () => {
      if (stream.destroyed) return;
      connected = true;
      stream.respond({ ':status': 200 });
      splice(upstream, stream);
    });
  });
  server.on('sessionError', (error) => console.error(`floor server: session error: ${error.message}`));
  server.listen(config.listen.port, config.listen.host);
}

const config = JSON.parse(process.argv[2] ?? '{}') as FloorClientConfig | FloorServerConfig;
// --cpu-prof writes its profile only on a normal exit.
process.on('SIGTERM', () => process.exit(0));
if (config.role === 'client') runClient(config);
else if (config.role === 'server') runServer(config);
else {
  console.error('usage: node node-floor-proxy.ts \'{"role":"client"|"server",...}\'');
  process.exit(2);
}
