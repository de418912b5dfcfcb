// What a client HBONE session reads and writes through, in place of its TLS socket. Node's HTTP/2 session stops
// reading its socket while one of its own writes is pending (Http2Session::MaybeStopReading in node_http2.cc, a
// mitigation of CVE-2019-9511/9517). Two Node sessions at either end of one connection, each with more to send than
// the kernel's buffers hold (bulk both ways on a few tunnels: the stream windows allow megabytes), then both stop
// reading and neither write ever completes: every tunnel on the connection stalls until the keepalive cuts them all.
// Here a session's write completes at once, so it always goes on reading: the DATA waiting in the TLS socket's queue
// is bounded by the windows the peer granted (its stream windows, within its session budget: window.ts), as in
// ztunnel, whose reads and writes are independent. One end suffices to break the cycle; the client end is where ambit
// builds the connection itself. What no window bounds (acknowledgements of a peer's PINGs and SETTINGS, 17 bytes each)
// is bounded here: past MAX_QUEUED_BYTES or MAX_QUEUED_BUFFERS waiting, a write completes only once the socket drains,
// so the session stops reading, as Node's does on a socket of its own (the TLS socket is read on meanwhile, into what
// is held, so that a peer waiting on us can go on reading our backlog): a peer that floods and never reads gets no
// more acknowledgements, and the pool's keepalive, its PONGs unread, cuts the session.
//
// The TLS socket is handed at most TLS_FEED_BYTES at a time, the rest kept here until it drains: Node's TLS encrypts a
// write into an output buffer sized for the whole write, and keeps that buffer for the socket's life, so one batch of a
// session with many streams' windows open (megabytes, handed over corked, or gathered while a write was pending) held
// its size for as long as the pooled session lived (2,000 stalled tunnels: ~230 MiB of such buffers on one node).
//
// Not a stream.Duplex: Node wraps whatever it is given in a JSStreamSocket (lib/internal/js_stream_socket.js), which
// calls only pause, resume, cork, uncork, write, end and destroy and listens for data, end, error and close. A Duplex
// between the two put a second stream's buffering, callbacks and ticks on every chunk each way, on top of the TLS
// socket's own: without it the client spent about a tenth less per request (bench/README.md). Most of what the
// wrapper costs is Node's JSStreamSocket, which copies every chunk each way, and stays.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { H2_CONNECTION_WINDOW_BYTES } from './settings.ts';

/** A session ended in an orderly way has this long to flush and exchange FINs before its socket is cut. */
const CLOSE_GRACE_MS = 10_000;
/**
 * Backlog past which writes wait for the socket again: above the 32 MiB a peer ambit's windows let us send (window.ts),
 * so bulk both ways never reaches it; a peer that floods acknowledgements and reads nothing does.
 */
const MAX_QUEUED_BYTES = 48 * 1024 * 1024;
/**
 * The same in buffers: each queued one costs far more than its bytes (an ack is 17; with the JSStreamSocket's copy and
 * the TLS socket's bookkeeping, ~500 bytes), and the session hands over thousands of acks in one write. Legitimate DATA
 * in small frames can reach it too (a slow path, an application writing small pieces): the session then reads nothing
 * until the socket drains, while the TLS socket is read on (HELD_WHILE_BLOCKED_BYTES), a pause and never a stall.
 */
const MAX_QUEUED_BUFFERS = 65_536;
/**
 * Input held while the session does not read (it pauses us while each of its writes is pending, a tick or so) before
 * the TLS socket is paused: pausing and resuming the socket itself on every write cost more than the bytes.
 */
const READ_AHEAD_BYTES = 1024 * 1024;
/**
 * The same while a write waits past the backlog bound, when the session may not read for as long as the peer takes to
 * read our backlog. A Node peer stops reading while its own write is pending, so with the TLS socket paused at the
 * read-ahead neither backlog ever drained (bulk both ways on many tunnels over a slow path: every tunnel stalled until
 * the keepalive cut them). Reading on lets the peer's write complete and it reads again. What a peer may send while
 * the session reads nothing is our connection window (16 MiB, settings.ts) of DATA and its control frames: past this
 * bound only a peer that floods and never reads is held back, and its PONGs go unread.
 */
const HELD_WHILE_BLOCKED_BYTES = H2_CONNECTION_WINDOW_BYTES + READ_AHEAD_BYTES;

/** What the TLS socket is handed at most at once (see the top): more waits in SessionSocket's own queue. */
const TLS_FEED_BYTES = 256 * 1024;

type WriteCallback = (error?: Error | null) => void;

export class SessionSocket extends EventEmitter {
  readonly tls: TLSSocket;
  /** Read once by the JSStreamSocket, as a stream's. */
  readonly readable = true;
  readonly writable = true;

  /** The backlog bound in bytes (MAX_QUEUED_BYTES unless a test sets a smaller one). */
  readonly #maxQueuedBytes: number;
  /** What is held while a write waits past it (HELD_WHILE_BLOCKED_BYTES unless a test sets a smaller one). */
  readonly #maxHeldWhileBlocked: number;
  /** The session has asked for no input (JSStreamSocket pauses its stream before it first reads). */
  #paused = true;
  /** Input that arrived while paused, in order, and its size. */
  readonly #held: Buffer[] = [];
  #heldBytes = 0;
  #tlsPaused = false;
  #flushQueued = false;
  /** The TLS socket's input ended; said to the session once what is held has been delivered. */
  #inputEnded = false;
  #endSaid = false;
  /**
   * The TLS socket has closed; said to the session once what is held (and the end) has been delivered: the
   * JSStreamSocket destroys itself on 'close', and the last bytes a peer sent before closing (the rest of a stream,
   * its GOAWAY) were lost when they had arrived while the session was not reading.
   */
  #closed = false;
  #closeSaid = false;
  /** The TLS socket's error (a reset), said just before the close, after what was held: the peer's last frames first. */
  #error: Error | null = null;
  /**
   * Buffers written to the TLS socket since it last had room (at least what it holds now). Reaching the bound is a
   * pause, not a stall, since the TLS socket is read on meanwhile: counted per write (a batch) instead, one write of
   * thousands of acks had counted once, and a peer flooding PINGs grew us by 1.5 GB.
   */
  #queuedBuffers = 0;
  /** The callbacks of a batch held past the bound, released together once all is handed over and drained. */
  #blocked: WriteCallback[] | null = null;
  /** Written by the session and not yet handed to the TLS socket (TLS_FEED_BYTES), in order, and its size. */
  readonly #pending: Buffer[] = [];
  #pendingBytes = 0;
  /** end() came with writes still pending: the TLS socket is ended once they are handed over. */
  #ending = false;
  #destroyed = false;
  readonly #flushLater = (): void => this.#flush();
  readonly #onDrain = (): void => this.#drained();
  readonly #onPeerEnd = (): void => this.#handOverAll();

  constructor(tls: TLSSocket, options: { maxQueuedBytes?: number; maxHeldWhileBlocked?: number } = {}) {
    super();
    this.tls = tls;
    this.#maxQueuedBytes = options.maxQueuedBytes ?? MAX_QUEUED_BYTES;
    this.#maxHeldWhileBlocked = options.maxHeldWhileBlocked ?? HELD_WHILE_BLOCKED_BYTES;
    // What Node's session does to a socket it is handed itself (it cannot reach this one): no Nagle delay, or each
    // small write after another not yet acknowledged waited up to 40 ms.
    tls.setNoDelay(true);
    tls.on('data', (chunk: Buffer) => this.#onData(chunk));
    tls.on('end', () => {
      this.#inputEnded = true;
      this.#sayEndIfDelivered();
    });
    // A socket's 'error' is followed by its 'close' (it is destroyed with it): said together, after what is held.
    tls.on('error', (error) => {
      this.#error ??= error;
    });
    tls.on('close', () => {
      this.#closed = true;
      this.#pending.length = 0;
      this.#pendingBytes = 0;
      this.#release();
      this.#sayCloseIfDelivered();
    });
    tls.on('drain', this.#onDrain);
    // Before Node's own listener, which ends our side at the peer's FIN (allowHalfOpen false) and takes no more writes:
    // what the session wrote, and was told was written, still goes.
    tls.prependListener('end', this.#onPeerEnd);
  }

  /** What the session has written that has not left yet: the TLS socket's queue and ours. */
  get backlog(): number {
    return this.tls.writableLength + this.#pendingBytes;
  }

  /** A write waits past the backlog bound: the session reads nothing until all is handed over and drained. */
  get blocked(): boolean {
    return this.#blocked !== null;
  }

  /**
   * For `http2.connect`'s createConnection, typed as the Duplex its types ask for: Node only ever wraps it in a
   * JSStreamSocket, which uses the members above.
   */
  forSession(): Duplex {
    return this as unknown as Duplex;
  }

  #onData(chunk: Buffer): void {
    if (this.#destroyed) return;
    if (!this.#paused && this.#held.length === 0) {
      this.emit('data', chunk);
      return;
    }
    this.#held.push(chunk);
    this.#heldBytes += chunk.length;
    if (this.#heldBytes >= (this.#blocked === null ? READ_AHEAD_BYTES : this.#maxHeldWhileBlocked) && !this.#tlsPaused) {
      this.#tlsPaused = true;
      this.tls.pause();
    }
  }

  pause(): this {
    this.#paused = true;
    return this;
  }

  resume(): this {
    this.#paused = false;
    // Never into the session from inside its own call: what is held is delivered on the next tick.
    if ((this.#held.length > 0 || this.#inputEnded) && !this.#flushQueued) {
      this.#flushQueued = true;
      process.nextTick(this.#flushLater);
    }
    return this;
  }

  #flush(): void {
    this.#flushQueued = false;
    const held = this.#held;
    // Each delivery may pause us again (the session began a write).
    while (!this.#paused && held.length > 0) {
      const chunk = held.shift() as Buffer;
      this.#heldBytes -= chunk.length;
      this.emit('data', chunk);
    }
    if (held.length > 0) return;
    if (this.#tlsPaused) {
      this.#tlsPaused = false;
      this.tls.resume();
    }
    this.#sayEndIfDelivered();
    this.#sayCloseIfDelivered();
  }

  #sayEndIfDelivered(): void {
    if (!this.#inputEnded || this.#endSaid || this.#paused || this.#held.length > 0) return;
    this.#endSaid = true;
    this.emit('end');
  }

  #sayCloseIfDelivered(): void {
    if (!this.#closed || this.#closeSaid || this.#held.length > 0 || (this.#inputEnded && !this.#endSaid)) return;
    this.#closeSaid = true;
    const error = this.#error;
    this.#error = null;
    if (error !== null && !this.#destroyed) this.emit('error', error);
    this.emit('close');
  }

  cork(): void {
    this.tls.cork();
  }

  uncork(): void {
    this.tls.uncork();
  }

  write(chunk: Buffer, callback: WriteCallback): boolean {
    const tls = this.tls;
    if (tls.destroyed || this.#ending) {
      callback(Object.assign(new Error('the HBONE session\'s TLS socket is closed'), { code: 'EPIPE' }));
      return false;
    }
    if (this.#pending.length === 0 && tls.writableLength < TLS_FEED_BYTES) {
      tls.write(chunk);
    } else {
      // The TLS socket has its share: it needs a drain (TLS_FEED_BYTES is past its high-water mark), which feeds it more.
      this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
    }
    // The rest of a batch held past the bound waits with it.
    if (this.#blocked !== null) {
      this.#blocked.push(callback);
      return false;
    }
    if (this.#pending.length === 0 && !tls.writableNeedDrain) {
      this.#queuedBuffers = 0;
      callback();
      return true;
    }
    if (++this.#queuedBuffers < MAX_QUEUED_BUFFERS && tls.writableLength + this.#pendingBytes < this.#maxQueuedBytes) {
      callback();
      return true;
    }
    // A backlog no window explains: this write completes once all is handed over and the socket has drained (or it is
    // gone). Meanwhile the TLS socket is read on (see HELD_WHILE_BLOCKED_BYTES).
    this.#blocked = [callback];
    if (this.#tlsPaused && this.#heldBytes < this.#maxHeldWhileBlocked) {
      this.#tlsPaused = false;
      tls.resume();
    }
    return false;
  }

  /** The TLS socket has written all it was handed: more from the queue, or, with none left, a blocked batch goes on. */
  #drained(): void {
    const tls = this.tls;
    if (this.#pending.length > 0) {
      const pending = this.#pending;
      // One write of up to TLS_FEED_BYTES (and the chunk that crosses it), as the batch it was; taken off the queue
      // at once after (shift() per chunk copies the rest each time: tens of thousands of small frames took seconds).
      let taken = 0;
      tls.cork();
      while (taken < pending.length && tls.writableLength < TLS_FEED_BYTES) {
        const chunk = pending[taken++] as Buffer;
        this.#pendingBytes -= chunk.length;
        tls.write(chunk);
      }
      tls.uncork();
      pending.splice(0, taken);
      if (pending.length > 0) return;
      if (this.#ending && !tls.writableEnded) tls.end();
      if (tls.writableNeedDrain) return;
    }
    this.#release();
  }

  /** The peer has ended: everything queued is handed over now, while the TLS socket still takes writes. */
  #handOverAll(): void {
    const pending = this.#pending;
    if (pending.length === 0 || this.tls.writableEnded) return;
    this.tls.cork();
    for (const chunk of pending) this.tls.write(chunk);
    this.tls.uncork();
    pending.length = 0;
    this.#pendingBytes = 0;
    if (this.#ending) this.tls.end();
  }

  #release(): void {
    const waiting = this.#blocked;
    if (waiting === null) return;
    this.#blocked = null;
    this.#queuedBuffers = 0;
    for (const waiter of waiting) waiter();
  }

  end(callback?: () => void): this {
    // What the session wrote before its end leaves first.
    if (this.#pending.length > 0) this.#ending = true;
    else if (!this.tls.writableEnded) this.tls.end();
    if (callback !== undefined) process.nextTick(callback);
    return this;
  }

  destroy(error?: Error): this {
    if (this.#destroyed) return this;
    this.#destroyed = true;
    // The session has let go: nothing held is wanted any more, and its close is not held back for it.
    this.#held.length = 0;
    this.#heldBytes = 0;
    this.#endSaid = true;
    // Read on, or the peer's FIN would go unread and an orderly close wait out its grace.
    if (this.#tlsPaused) {
      this.#tlsPaused = false;
      this.tls.resume();
    }
    if (this.#closed) process.nextTick(() => this.#sayCloseIfDelivered());
    const tls = this.tls;
    if (error !== undefined || !(tls.writableEnded || this.#ending)) {
      this.#pending.length = 0;
      this.#pendingBytes = 0;
      // Cut (a reset, a missed PONG, an untrusted peer): at once, also while a write waits for a peer that reads nothing.
      tls.destroy(error);
    } else if (!tls.destroyed) {
      // Ended in order: what is queued leaves first, but a peer that never reads it does not keep the socket for ever.
      const timer = setTimeout(() => tls.destroy(), CLOSE_GRACE_MS);
      timer.unref();
      tls.once('close', () => clearTimeout(timer));
    }
    return this;
  }
}
