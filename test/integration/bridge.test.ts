// The Bridge between an application socket and an HBONE stream, on real sockets and a real HTTP/2 session.
import { once } from 'node:events';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Bridge } from '../../src/proxy/copy.ts';
import type { BridgeResult } from '../../src/proxy/copy.ts';

let h2server: http2.Http2Server;
let session: http2.ClientHttp2Session;
let apps: net.Server;

beforeAll(async () => {
  h2server = http2.createServer();
  h2server.on('stream', (stream, headers) => {
    stream.on('error', () => {});
    stream.respond({ ':status': 200 });
    // 'now': reset at once; 'clean': echo and end; otherwise read the client's bytes to END_STREAM, then reset.
    if (headers[':authority'] === 'now:80') stream.destroy(new Error('reset at once'));
    else if (headers[':authority'] === 'clean:80') stream.pipe(stream); // echoes, and ends when the client does
    else {
      stream.resume();
      // destroy() sends RST_STREAM at once; close(code) would first end our side (END_STREAM) and the client
      // would see a clean close.
      stream.on('end', () => stream.destroy(new Error('reset after the client ended')));
    }
  });
  h2server.listen(0, '127.0.0.1');
  await once(h2server, 'listening');
  session = http2.connect(`http://127.0.0.1:${(h2server.address() as AddressInfo).port}`);
  apps = net.createServer();
  apps.listen(0, '127.0.0.1');
  await once(apps, 'listening');
});

afterAll(() => {
  session?.destroy();
  h2server?.close();
  apps?.close();
});

/** An application connection: the client end, and the accepted socket a Bridge carries. */
async function appConnection(): Promise<{ client: net.Socket; socket: net.Socket }> {
  const accepted = once(apps, 'connection') as Promise<[net.Socket]>;
  const client = net.connect((apps.address() as AddressInfo).port, '127.0.0.1');
  client.on('error', () => {});
  const [socket] = await accepted;
  return { client, socket };
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
  it('closes the application connection at once when its stream was reset before the Bridge was built', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'now:80' });
    stream.on('error', () => {}); // the reset; events.once would reject on it
    await new Promise((resolve) => stream.on('close', resolve));
    expect(stream.destroyed).toBe(true);

    const { client, socket } = await appConnection();
    const clientClosed = once(client, 'close');
    const result = await bridged(socket, stream);
    expect(result.failedSide).toBe('stream');
    expect(result.error?.message).toMatch(/closed before the tunnel started/);
    await clientClosed;
  });

  it('reports a tunnel the peer reset after the app half-closed as failed on the stream side, not as a clean close', async () => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': 'after-end:80' });
    await once(stream, 'response');
    const { client, socket } = await appConnection();
    const clientClosed = once(client, 'close');
    const result = await bridged(socket, stream, () => client.end('bytes the peer never acknowledged'));
    expect(stream.rstCode).toBe(http2.constants.NGHTTP2_INTERNAL_ERROR);
    expect(result.failedSide).toBe('stream');
    expect(result.error).toBeDefined();
    await clientClosed;
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
