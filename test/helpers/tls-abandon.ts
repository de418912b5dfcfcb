// A TLS 1.3 client that presents its certificate chain and then abandons the handshake before its Finished: a relay
// between Node's own client and the server forwards every record the client sends but its third encrypted one (after
// Certificate and CertificateVerify, the Finished), then resets or stalls. The server has checked the chain by then;
// its handshake fails ('tlsClientError') instead of completing.
import { once } from 'node:events';
import * as net from 'node:net';
import * as tls from 'node:tls';

const RECORD_HEADER_BYTES = 5;
const APPLICATION_DATA = 23;

/**
 * Presents `cert` (PEM chain, leaf first) from `localAddress` to host:port and abandons the handshake: resets it, or
 * with `stall` waits for the server to give up. Resolves once the server's side is closed.
 */
export async function abandonHandshakeAfterCertificate(options: { host: string; port: number; localAddress: string; cert: string; key: string; alpn: string; stall?: boolean }): Promise<void> {
  const relay = net.createServer();
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const done = new Promise<void>((resolve) => {
    relay.once('connection', (client: net.Socket) => {
      client.on('error', () => {});
      const upstream = net.connect({ host: options.host, port: options.port, localAddress: options.localAddress });
      upstream.on('error', () => {});
      const finish = () => {
        upstream.resetAndDestroy();
        client.destroy();
        resolve();
      };
      upstream.once('close', finish);
      upstream.pipe(client);
      let pending = Buffer.alloc(0);
      let encrypted = 0;
      client.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= RECORD_HEADER_BYTES) {
          const length = RECORD_HEADER_BYTES + pending.readUInt16BE(3);
          if (pending.length < length) return;
          const record = pending.subarray(0, length);
          pending = pending.subarray(length);
          if (record[0] === APPLICATION_DATA && ++encrypted === 3) {
            // The Finished: withheld.
            // Stalled: the server's handshake timeout ends it. Else reset, once the server has had a moment to read the rest.
            if (options.stall !== true) setTimeout(finish, 200);
            return;
          }
          upstream.write(record);
        }
      });
    });
  });
  const socket = tls.connect({ host: '127.0.0.1', port: (relay.address() as net.AddressInfo).port, cert: options.cert, key: options.key, rejectUnauthorized: false, minVersion: 'TLSv1.3', ALPNProtocols: [options.alpn] });
  socket.on('error', () => {});
  await done;
  socket.destroy();
  relay.close();
}
