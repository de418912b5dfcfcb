// What a client HBONE session reads and writes through, in place of its TLS socket. Node's HTTP/2 session stops
// reading its socket while one of its own writes is pending (Http2Session::MaybeStopReading in node_http2.cc, a
// mitigation of CVE-2019-9511/9517). Two Node sessions at either end of one connection, each with more to send than
// the kernel's buffers hold (bulk both ways on a few tunnels: the stream windows allow megabytes), then both stop
// reading and neither write ever completes: every tunnel on the connection stalls until the keepalive cuts them all.
// Here a session's write completes at once, so it always goes on reading: the DATA waiting in the TLS socket's queue
// is bounded by the windows the peer granted (its stream windows, within its session budget: window.ts), as in
// ztunnel, whose reads and writes are independent. One end suffices to break the cycle; the client end is where ambit
// builds the connection itself. What no window bounds (acknowledgements of a peer's PINGs and SETTINGS, 17 bytes each)
// is bounded here: past MAX_QUEUED_BYTES or MAX_QUEUED_WRITES waiting, a write completes only once the socket drains,
// so the session stops reading, as Node's does on a socket of its own: a peer that floods and never reads gets no
// more acknowledgements, and the pool's keepalive, its PONGs unread, cuts the session.
import { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';

/** A session ended in an orderly way has this long to flush and exchange FINs before its socket is cut. */
const CLOSE_GRACE_MS = 10_000;
/**
 * Backlog past which writes wait for the socket again: above the 32 MiB a peer ambit's windows let us send (window.ts),
 * so bulk both ways never reaches it; a peer that floods acknowledgements and reads nothing does.
 */
const MAX_QUEUED_BYTES = 48 * 1024 * 1024;
/** The same in writes: each queued one costs far more than its bytes (an ack is 17), 4,096 of them about a megabyte. */
const MAX_QUEUED_WRITES = 4_096;

export class SessionSocket extends Duplex {
  readonly tls: TLSSocket;

  /** The backlog bound in bytes (MAX_QUEUED_BYTES unless a test sets a smaller one). */
  readonly #maxQueuedBytes: number;

  constructor(tls: TLSSocket, options: { maxQueuedBytes?: number } = {}) {
    // Half-open as the TLS socket is not: the session decides when both directions are done.
    // A read-ahead of 1 MiB: at the default 16 KiB every TLS record or two paused and resumed the socket.
    super({ allowHalfOpen: true, decodeStrings: false, readableHighWaterMark: 1024 * 1024 });
    this.tls = tls;
    this.#maxQueuedBytes = options.maxQueuedBytes ?? MAX_QUEUED_BYTES;
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
    this.#written(callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    const tls = this.tls;
    tls.cork();
    for (const { chunk } of chunks) tls.write(chunk);
    tls.uncork();
    this.#written(callback);
  }

  /** Writes queued on the TLS socket since it last had room. */
  #queuedWrites = 0;

  #written(callback: (error?: Error | null) => void): void {
    const tls = this.tls;
    if (!tls.writableNeedDrain) {
      this.#queuedWrites = 0;
      callback();
      return;
    }
    if (++this.#queuedWrites < MAX_QUEUED_WRITES && tls.writableLength < this.#maxQueuedBytes) {
      callback();
      return;
    }
    // A backlog no window explains: this write completes once the socket has drained (or is gone).
    const done = () => {
      tls.off('drain', done);
      tls.off('close', done);
      this.#queuedWrites = 0;
      callback();
    };
    tls.on('drain', done);
    tls.on('close', done);
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
