// One side of the Node floor pair (bench/system/node-floor.ts): the least a Node process does to carry a TCP
// connection over HBONE, with nothing of ambit's. The client side accepts plain TCP and opens one CONNECT stream
// per connection on one pooled HTTP/2 session over mTLS, waits for the 200, and pipes (half-close kept: FIN is
// END_STREAM and back, as every proxy here must, or bulk up could not read its answer); the server side verifies
// the client certificate, connects to the CONNECT authority and answers 200 once connected. TLS and HTTP/2 are
// set as ambit sets them (src/proxy/settings.ts). No identity checks beyond the chain and name, no policy, no
// metrics, no logs, no timeouts: the gap between this pair and ambit's is what ambit's own work costs.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { readFileSync } from 'node:fs';
import {
  H2_CONNECTION_WINDOW_BYTES, H2_MAX_FRAME_BYTES, H2_STREAM_WINDOW_BYTES, HBONE_ALPN, TLS_CIPHERS, TLS_GROUPS, TLS_MIN_VERSION,
} from '../../src/proxy/settings.ts';

export interface FloorClientConfig {
  readonly role: 'client';
  /** listen host:port → CONNECT authority */
  readonly listeners: ReadonlyArray<{ host: string; port: number; authority: string }>;
  readonly server: { host: string; port: number; name: string };
  readonly caFile: string;
  /** Certificate and key in one PEM file (the HAProxy pair's files). */
  readonly pemFile: string;
}

export interface FloorServerConfig {
  readonly role: 'server';
  readonly listen: { host: string; port: number };
  readonly caFile: string;
  readonly pemFile: string;
}

const SETTINGS: http2.Settings = { initialWindowSize: H2_STREAM_WINDOW_BYTES, maxFrameSize: H2_MAX_FRAME_BYTES, enablePush: false };

function runClient(config: FloorClientConfig): void {
  const pem = readFileSync(config.pemFile);
  const ca = readFileSync(config.caFile);
  let session: http2.ClientHttp2Session | null = null;
  const sessionNow = (): http2.ClientHttp2Session => {
    if (session !== null && !session.closed && !session.destroyed) return session;
    const fresh = http2.connect(`https://${config.server.host}:${config.server.port}`, {
      ca, cert: pem, key: pem, servername: config.server.name, minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS, ecdhCurve: TLS_GROUPS,
      ALPNProtocols: HBONE_ALPN, settings: SETTINGS,
    });
    fresh.on('connect', () => fresh.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES));
    fresh.on('error', (error) => console.error(`floor client: session error: ${error.message}`));
    fresh.on('close', () => {
      if (session === fresh) session = null;
    });
    session = fresh;
    return fresh;
  };
  for (const listener of config.listeners) {
    net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => {
      const stream = sessionNow().request({ ':method': 'CONNECT', ':authority': listener.authority }, { endStream: false });
      const fail = (): void => {
        socket.destroy();
        stream.destroy();
      };
      socket.on('error', fail);
      stream.on('error', fail);
      stream.on('close', () => {
        if (!stream.readableEnded) socket.destroy();
      });
      stream.once('response', (headers) => {
        if (headers[':status'] !== 200) {
          fail();
          return;
        }
        socket.pipe(stream);
        stream.pipe(socket);
        socket.resume();
      });
    }).listen(listener.port, listener.host);
  }
}

function runServer(config: FloorServerConfig): void {
  const pem = readFileSync(config.pemFile);
  const server = http2.createSecureServer({
    ca: readFileSync(config.caFile), cert: pem, key: pem, requestCert: true, rejectUnauthorized: true,
    minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS, ecdhCurve: TLS_GROUPS, ALPNProtocols: HBONE_ALPN, allowHTTP1: false, settings: SETTINGS,
  });
  server.on('session', (session) => session.on('connect', () => session.setLocalWindowSize(H2_CONNECTION_WINDOW_BYTES)));
  server.on('stream', (stream, headers) => {
    stream.on('error', () => stream.destroy());
    const authority = headers[':authority'];
    const colon = typeof authority === 'string' ? authority.lastIndexOf(':') : -1;
    if (headers[':method'] !== 'CONNECT' || colon <= 0) {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    const upstream = net.connect({ host: (authority as string).slice(0, colon), port: Number((authority as string).slice(colon + 1)), allowHalfOpen: true, noDelay: true });
    const fail = (): void => {
      upstream.destroy();
      stream.destroy();
    };
    upstream.on('error', fail);
    stream.on('close', () => {
      if (!stream.readableEnded) upstream.destroy();
    });
    upstream.once('connect', () => {
      if (stream.destroyed) {
        upstream.destroy();
        return;
      }
      stream.respond({ ':status': 200 });
      upstream.pipe(stream);
      stream.pipe(upstream);
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
