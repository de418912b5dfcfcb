// What a client HBONE session reads and writes through, in place of its TLS socket. Node's HTTP/2 session stops
// reading its socket while one of its own writes is pending (Http2Session::MaybeStopReading in node_http2.cc, a
// mitigation of CVE-2019-9511/9517). Two Node sessions at either end of one connection, each with more to send than
// the kernel's buffers hold (bulk both ways on a few tunnels: the stream windows allow megabytes), then both stop
// reading and neither write ever completes: every tunnel on the connection stalls until the keepalive cuts them all.
// Here a session's write completes at once, so it always goes on reading; what waits in the TLS socket's queue is
// bounded by the windows the peer granted (its stream windows, within its session budget: window.ts), as in ztunnel,
// whose reads and writes are independent. One end suffices to break the cycle; the client end is where ambit builds
// the connection itself.
import { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';

/** A session ended in an orderly way has this long to flush and exchange FINs before its socket is cut. */
const CLOSE_GRACE_MS = 10_000;

export class SessionSocket extends Duplex {
  readonly tls: TLSSocket;

  constructor(tls: TLSSocket) {
    // Half-open as the TLS socket is not: the session decides when both directions are done.
    // A read-ahead of 1 MiB: at the default 16 KiB every TLS record or two paused and resumed the socket.
    super({ allowHalfOpen: true, decodeStrings: false, readableHighWaterMark: 1024 * 1024 });
    this.tls = tls;
    // What Node's session does to a socket it is handed itself (it cannot reach this one): no Nagle delay, or each
    // small write after another not yet acknowledged waited up to 40 ms.
    tls.setNoDelay(true);
    tls.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) tls.pause();
    });
    tls.on('end', () => this.push(null));
    tls.on('error', (error) => this.destroy(error));
    tls.on('close', () => this.destroy());
  }

  override _read(): void {
    this.tls.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.tls.write(chunk);
    callback();
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const tls = this.tls;
    tls.cork();
    for (const { chunk } of chunks) tls.write(chunk);
    tls.uncork();
    callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.tls.end();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const tls = this.tls;
    if (error !== null || !tls.writableEnded) {
      // Cut (a reset, a missed PONG, an untrusted peer): at once, also while a write waits for a peer that reads nothing.
      tls.destroy(error ?? undefined);
    } else if (!tls.destroyed) {
      // Ended in order: what is queued leaves first, but a peer that never reads it does not keep the socket for ever.
      const timer = setTimeout(() => tls.destroy(), CLOSE_GRACE_MS);
      timer.unref();
      tls.once('close', () => clearTimeout(timer));
    }
    callback(error);
  }
}
