// The connection limits of the servers that take connections before knowing the client (admin, metrics, readiness,
// the CA): per client address, in all, and a reserve past "in all" for clients on this host only.
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { gateConnections, isLocalConnection, limitConnectionsPerPeer } from '../../src/peer-connections.ts';

let server: Server | undefined;
const clients: Socket[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.destroy();
  if (server !== undefined) await new Promise((resolve) => server?.close(resolve));
  server = undefined;
});

/** Whether a connection from `from` is kept: an echo answers it, a refused one is closed unanswered. */
async function kept(port: number, from: string): Promise<boolean> {
  const socket = connect({ host: '127.0.0.1', port, localAddress: from });
  clients.push(socket);
  socket.on('error', () => {});
  await once(socket, 'connect');
  socket.write('x');
  const [outcome] = await Promise.race([once(socket, 'data').then(() => ['kept']), once(socket, 'close').then(() => ['refused'])]);
  return outcome === 'kept';
}

async function echoServer(limits: Parameters<typeof limitConnectionsPerPeer>[1]): Promise<number> {
  server = createServer((socket) => socket.pipe(socket));
  limitConnectionsPerPeer(server, limits);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
}

describe('connection limits', () => {
  it('take no more from one address than its share, and no more in all, but for a local client within the reserve', async () => {
    // 127.0.0.1 plays this host; the other loopback addresses play clients elsewhere.
    const port = await echoServer({ perPeer: 2, total: 4, localReserve: 2, isLocal: (socket) => socket.remoteAddress === '127.0.0.1' });
    expect(await kept(port, '127.0.0.2')).toBe(true);
    expect(await kept(port, '127.0.0.2')).toBe(true);
    expect(await kept(port, '127.0.0.2')).toBe(false);
    expect(await kept(port, '127.0.0.3')).toBe(true);
    expect(await kept(port, '127.0.0.4')).toBe(true);
    // Four in all: another client is refused, this host's own is taken (the kubelet's probe), twice.
    expect(await kept(port, '127.0.0.5')).toBe(false);
    expect(await kept(port, '127.0.0.1')).toBe(true);
    expect(await kept(port, '127.0.0.1')).toBe(true);
    // Six in all, the reserve spent (and this host's own share too).
    expect(await kept(port, '127.0.0.1')).toBe(false);
    clients.find((client) => client.localAddress === '127.0.0.4' && !client.destroyed)?.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Five held, over the total: still none for a client elsewhere.
    expect(await kept(port, '127.0.0.6')).toBe(false);
  });

  it('count this host: loopback, and a connection from the very address it reached', () => {
    const socket = (remoteAddress: string, localAddress: string) => ({ remoteAddress, localAddress }) as Socket;
    expect(isLocalConnection(socket('127.0.0.1', '127.0.0.1'))).toBe(true);
    expect(isLocalConnection(socket('::ffff:127.0.0.9', '::ffff:127.0.0.1'))).toBe(true);
    expect(isLocalConnection(socket('10.0.0.5', '10.0.0.5'))).toBe(true);
    expect(isLocalConnection(socket('10.0.0.6', '10.0.0.5'))).toBe(false);
  });
});

describe('a gate in front of a server', () => {
  it("keeps a refused connection from the server's own listeners, runs the last gate put first, and hands on the rest", async () => {
    const reached: string[] = [];
    const order: string[] = [];
    server = createServer((socket) => {
      reached.push(socket.remoteAddress ?? '');
      socket.end('served');
    });
    gateConnections(server, () => {
      order.push('first put');
      return true;
    });
    gateConnections(server, (socket) => {
      order.push('last put');
      if (socket.remoteAddress === '127.0.0.9') {
        socket.destroy();
        return false;
      }
      return true;
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const outcome = async (from: string) => {
      const socket = connect({ host: '127.0.0.1', port, localAddress: from });
      clients.push(socket);
      socket.on('error', () => {});
      return await new Promise<string>((resolve) => {
        socket.once('data', (data: Buffer) => resolve(data.toString()));
        socket.once('close', () => resolve('closed'));
      });
    };
    expect(await outcome('127.0.0.9')).toBe('closed');
    expect(await outcome('127.0.0.8')).toBe('served');
    expect(reached).toEqual(['127.0.0.8']);
    expect(order).toEqual(['last put', 'last put', 'first put']);
  });
});
