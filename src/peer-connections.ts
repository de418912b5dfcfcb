// A cap on the connections one client address holds on a server that takes them before knowing who the client is
// (the admin, metrics and readiness servers, the CA): one client must not hold the server's whole share of them.
import type { Server, Socket } from 'node:net';

/** Closes, as soon as it is accepted, a connection from an address that already holds `max`. */
export function limitConnectionsPerPeer(server: Server, max: number): void {
  const open = new Map<string, number>();
  // Before the server's own 'connection' listener: a refused socket is never parsed, nor its TLS handshake begun.
  server.prependListener('connection', (socket: Socket) => {
    const peer = socket.remoteAddress ?? '';
    const count = open.get(peer) ?? 0;
    if (count >= max) {
      socket.destroy();
      return;
    }
    open.set(peer, count + 1);
    socket.once('close', () => {
      const left = (open.get(peer) ?? 1) - 1;
      if (left === 0) open.delete(peer);
      else open.set(peer, left);
    });
  });
}
