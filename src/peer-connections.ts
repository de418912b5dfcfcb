// A cap on the connections one client address holds on a server that takes them before knowing who the client is
// (the admin, metrics and readiness servers, the CA): one client must not hold the server's whole share of them.
import type { Server, Socket } from 'node:net';
import { countDown } from './counts.ts';

export interface ConnectionLimits {
  /** Connections one client address may hold. */
  readonly perPeer: number;
  /**
   * Connections all clients together may hold; past it only a local client (this host's own: the kubelet's probes of
   * a proxy on the host's network, an operator's curl) is taken, up to `localReserve` more: clients on 64 addresses,
   * 16 connections each, otherwise held every slot and the readiness probes failed. Without it, no bound in all.
   */
  readonly total?: number;
  readonly localReserve?: number;
  /** Whether a connection comes from this host (tests say otherwise); by default loopback or the address it reached. */
  readonly isLocal?: (socket: Socket) => boolean;
}

/** A connection from this host: from loopback, or from the very address it reached (the kernel's source for a connect to one of the host's own). */
export function isLocalConnection(socket: Socket): boolean {
  const remote = socket.remoteAddress ?? '';
  return remote === socket.localAddress || remote.startsWith('127.') || remote.startsWith('::ffff:127.') || remote === '::1';
}

/**
 * Puts `admit` in front of the server's own 'connection' listeners (and of gates put there before): a connection it
 * refuses (and closes) never reaches them, so no HTTP parser or TLS socket is built for it (a listener merely
 * prepended runs before them, but they still ran, a TLS socket built around the closed one each time).
 */
export function gateConnections(server: Server, admit: (socket: Socket) => boolean): void {
  // rawListeners: a once() listener stays a once() listener behind the gate.
  const behind = server.rawListeners('connection') as Array<(socket: Socket) => void>;
  server.removeAllListeners('connection');
  server.on('connection', (socket: Socket) => {
    if (!admit(socket)) return;
    for (const listener of behind) listener.call(server, socket);
  });
}

/** Closes, as soon as it is accepted, a connection past the limits. */
export function limitConnectionsPerPeer(server: Server, limits: number | ConnectionLimits): void {
  const { perPeer, total, localReserve = 0, isLocal = isLocalConnection } = typeof limits === 'number' ? { perPeer: limits } : limits;
  const open = new Map<string, number>();
  let all = 0;
  gateConnections(server, (socket) => {
    const peer = socket.remoteAddress ?? '';
    const count = open.get(peer) ?? 0;
    if (count >= perPeer || (total !== undefined && all >= total && (all >= total + localReserve || !isLocal(socket)))) {
      socket.destroy();
      return false;
    }
    open.set(peer, count + 1);
    all++;
    socket.once('close', () => {
      all--;
      countDown(open, peer);
    });
    return true;
  });
}
