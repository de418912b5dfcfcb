// A TLS 1.3 client that presents its certificate chain and then abandons the handshake before its Finished: a relay
// between Node's own client and the server forwards the client's records but the last encrypted one of its second
// flight (Certificate, however many records it takes, and CertificateVerify go; the Finished does not), then resets or
// stalls. The server has checked the chain by then; its handshake fails ('tlsClientError') instead of completing.
import { once } from 'node:events';
import * as net from 'node:net';
import * as tls from 'node:tls';

const RECORD_HEADER_BYTES = 5;
const APPLICATION_DATA = 23;
/** The client writes its flight at once: quiet this long after its first encrypted record, the flight is all in. */
const FLIGHT_QUIET_MS = 50;

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
      const flight: Buffer[] = [];
      let timer: NodeJS.Timeout | undefined;
      client.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        while (pending.length >= RECORD_HEADER_BYTES) {
          const length = RECORD_HEADER_BYTES + pending.readUInt16BE(3);
          if (pending.length < length) break;
          const record = pending.subarray(0, length);
          pending = pending.subarray(length);
          if (record[0] === APPLICATION_DATA) flight.push(record);
          else upstream.write(record);
        }
        if (flight.length === 0) return;
        clearTimeout(timer);
        timer = setTimeout(() => {
          // All but the Finished.
          for (const record of flight.slice(0, -1)) upstream.write(record);
          // Stalled: the server's handshake timeout ends it. Else reset, once the server has had a moment to read the rest.
          if (options.stall !== true) setTimeout(finish, 200);
        }, FLIGHT_QUIET_MS);
      });
    });
  });
  const socket = tls.connect({ host: '127.0.0.1', port: (relay.address() as net.AddressInfo).port, cert: options.cert, key: options.key, rejectUnauthorized: false, minVersion: 'TLSv1.3', ALPNProtocols: [options.alpn] });
  socket.on('error', () => {});
  await done;
  socket.destroy();
  relay.close();
}
