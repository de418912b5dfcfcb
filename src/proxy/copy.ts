// Carries bytes between an application TCP socket and an HBONE stream, both ways, with half-close:
// FIN becomes END_STREAM and END_STREAM becomes FIN; a reset or an error on either side closes the
// other abruptly, but for RST_STREAM NO_ERROR, with which a peer that has sent everything asks us to stop
// sending (RFC 9113 §8.1): what it sent still reaches the application, then FIN. A write() that returns false
// pauses the side that produced the chunk until the other drains, in both directions, so a slow reader stalls
// its writer (through TCP and HTTP/2 flow control) instead of growing a buffer. Bytes are counted by the sockets
// themselves (bytesRead/bytesWritten); the only per-chunk work is corking the app socket for large HBONE chunks
// (CORK_MIN_CHUNK_BYTES).
//
// The listeners are the class's static functions, shared by every tunnel, finding their Bridge in an
// EmitterSlot: pipe() in both directions would make about fifteen closures per tunnel.
import type { Socket } from 'node:net';
import type { Http2Session, Http2Stream } from 'node:http2';
import { constants as h2constants } from 'node:http2';
import { addAbortSignal, PassThrough } from 'node:stream';
import { EmitterSlot } from './emitter-slot.ts';

/**
 * Node's own AbortError: its HTTP/2 streams reset with CANCEL for that class only (INTERNAL_ERROR for any other), taken
 * from a stream it aborts.
 */
export const STREAM_ABORTED: Error = (() => {
  const aborted = new PassThrough();
  aborted.on('error', () => {});
  addAbortSignal(AbortSignal.abort(), aborted);
  return aborted.errored ?? new Error('tunnel reset');
})();

/**
 * Resets an HBONE stream with CANCEL at once. close(CANCEL) ends our side first (END_STREAM), and the peer's proxy,
 * reading that before the reset, gave its application a clean FIN: a cut tunnel passed for a complete one.
 */
export function cancelStream(stream: Http2Stream): void {
  if (!stream.destroyed) stream.destroy(STREAM_ABORTED);
}

/**
 * What ended a stream early: a reset the peer sent, or its whole session gone (the peer's process killed, the
 * connection lost), for which Node reports a reset no peer sent.
 */
function resetText(stream: Http2Stream, reset: string): string {
  const session = stream.session;
  // Node aborts the streams of a session whose connection died before it marks the session destroyed. (A stream
  // already destroyed has no session any more: that says nothing of how it ended.)
  if (session !== undefined && (session.destroyed || session.socket.destroyed)) return 'HBONE session to the peer ended (connection lost or closed) before the tunnel finished';
  return `${reset} (RST ${stream.rstCode ?? 'none'})`;
}

/**
 * Ends an HBONE session and every tunnel on it as cut (its peer stopped answering, or is no longer trusted): each
 * stream is reset (INTERNAL_ERROR) with `reason` as its error, so each tunnel's application connection is reset and
 * its access line says why. A bare destroy() closed the streams with NO_ERROR, and the tunnels read that as a clean
 * end: a download cut by a frozen peer reached the application as a complete one.
 */
export function cutSession(session: Http2Session, reason: string, socket?: Socket, code?: number): void {
  // `code`: the GOAWAY's error code (INTERNAL_ERROR unless given: SETTINGS_TIMEOUT for a peer that left our SETTINGS
  // unacknowledged). Sent first: destroy() submits the streams' resets and the GOAWAY together, and Node ends the
  // socket once the write under way completes, which with several streams left only the first reset sent.
  if (code !== undefined && !session.destroyed) session.goaway(code);
  if (!session.destroyed) session.destroy(new Error(reason), code);
  // Node ends the session's socket gracefully and destroys it only once that end has been written, which never
  // happens while a write waits for a peer that reads nothing: the connection stayed open, uncounted, for good. The
  // socket itself (a session's own is a proxy that refuses destroy()) goes after a moment for the resets to leave.
  if (socket !== undefined && !socket.destroyed) setTimeout(destroyConnection, CUT_SOCKET_GRACE_MS, socket).unref();
}

/** How long a cut session's resets and GOAWAY have to leave before its connection is closed under them. */
const CUT_SOCKET_GRACE_MS = 1_000;

/** Closes a cut session's TLS connection, if Node has not (its descriptor with it: the kernel sends what it can). */
function destroyConnection(socket: Socket): void {
  socket.destroy();
}

/**
 * Ends a TCP connection abruptly (RST): destroy() sends FIN when nothing is left unread, and the application took a
 * tunnel cut by a reset, a dead peer or a shutdown for a complete one (a truncated upload or download).
 */
export function cutSocket(socket: Socket): void {
  if (socket.destroyed) return;
  // Our FIN already asked for: libuv refuses a reset while a shutdown is under way, and Node would then never close
  // the socket. Still connecting: nothing was carried, and Node would wait for the connect to reset it.
  if (socket.writableEnded || socket.connecting) {
    socket.destroy();
    return;
  }
  try {
    socket.resetAndDestroy();
  } catch {
    // Not a TCP handle (a pipe): closed as it can be.
    socket.destroy();
  }
}

export interface BridgeResult {
  /** The first error on either side, if any; undefined for a clean close. */
  readonly error: Error | undefined;
  /** Which side failed first. */
  readonly failedSide: 'socket' | 'stream' | undefined;
}

const bridges = new EmitterSlot<Bridge>('ambit.bridge');

/**
 * HBONE chunks arrive one TLS record's plaintext at a time (at most 16 KiB, less frame headers). One this
 * large means more usually follow from the same socket read, so the app socket is corked until the loop's
 * check phase and they leave in one writev instead of a write each (a bulk download made 4x fewer syscalls
 * and skbs). Smaller chunks, requests and responses, are written at once as before.
 */
const CORK_MIN_CHUNK_BYTES = 8 * 1024;

/** How often an app socket paused for a stream that does not drain is read again (#lookAtPausedSocket). */
const PAUSED_SOCKET_CHECK_MS = 10_000;
/** A paused socket is read again only while the stream's queue holds less than this: its memory stays bounded. */
const PAUSED_QUEUE_LIMIT_BYTES = 256 * 1024;
/**
 * ...and while the stalled tunnels of the process, each at that bound, would hold no more than this together: past it
 * each is read again only below its share (and none once the share is less than what one read brings). 2,000 tunnels
 * whose peer read nothing held ~320 KiB each on the sending node (640 MiB); a stalled tunnel not read again is cut
 * after STALLED_TUNNEL_MS all the same, its application's end seen then instead of at the next look (as ztunnel, which
 * does not read a side whose other side is full).
 */
const PAUSED_QUEUE_BUDGET_BYTES = 32 * 1024 * 1024;

/** What a stalled tunnel's queue may hold for its paused socket to be read again, with `stalled` tunnels stalled in all. */
export function pausedQueueLimit(stalled: number): number {
  return Math.min(PAUSED_QUEUE_LIMIT_BYTES, PAUSED_QUEUE_BUDGET_BYTES / Math.max(1, stalled));
}
/**
 * A tunnel whose application's bytes are held (the stream's window closed) and that moves nothing either way this long
 * is cut, as Envoy's stream idle timeout (5 min) cuts an idle stream.
 */
const STALLED_TUNNEL_MS = 5 * 60_000;

/** Runs until both sides have closed; the callback runs exactly once. */
export class Bridge {
  readonly socket: Socket;
  readonly stream: Http2Stream;
  #socketClosed = false;
  #streamClosed = false;
  #error: Error | undefined;
  #failedSide: 'socket' | 'stream' | undefined;
  /** The Bridge reset the stream itself: its 'aborted' and 'close' are not the peer's doing. */
  #resetting = false;
  #done: ((result: BridgeResult) => void) | null;
  /** Once the app socket has been paused for the stream: when it is next looked at (#lookAtPausedSocket). */
  #pausedCheck: NodeJS.Timeout | undefined;
  /** The tunnel's progress (the stream drained, or brought bytes), and its count when last looked at. */
  #progress = 0;
  #progressLookedAt = 0;
  /** Looks in a row that found no progress while the app's bytes were held. */
  #stalledLooks = 0;
  /** Tunnels whose last look found no progress (#stalledLooks above 0): they share PAUSED_QUEUE_BUDGET_BYTES. */
  static #stalled = 0;

  constructor(socket: Socket, stream: Http2Stream, done: (result: BridgeResult) => void) {
    this.socket = socket;
    this.stream = stream;
    this.#done = done;
    bridges.set(socket, this);
    bridges.set(stream, this);
    socket.on('error', Bridge.#onSocketError);
    socket.on('close', Bridge.#onSocketClose);
    stream.on('error', Bridge.#onStreamError);
    stream.on('aborted', Bridge.#onStreamAborted);
    stream.on('close', Bridge.#onStreamClose);
    socket.on('data', Bridge.#onSocketData);
    socket.on('drain', Bridge.#onSocketDrain);
    socket.on('end', Bridge.#onSocketEnd);
    stream.on('data', Bridge.#onStreamData);
    stream.on('drain', Bridge.#onStreamDrain);
    stream.on('end', Bridge.#onStreamEnd);
    // A reset read together with the CONNECT's answer can destroy the stream, and emit its 'error' and
    // 'close', before the code awaiting the answer builds this Bridge: nothing would ever close the app side.
    if (stream.destroyed) {
      this.#streamClosed = true;
      // What the peer sent before its reset, read while nobody listened (the CONNECT's answer was being awaited):
      // Node keeps it in the destroyed stream. It reaches the application before the reset, as over TCP the bytes
      // before an RST do; dropped, a workload's last words before it reset (an error answer) were lost.
      let chunk: Buffer | null;
      while (!socket.destroyed && (chunk = stream.read() as Buffer | null) !== null) socket.write(chunk);
      this.#fail('stream', new Error(`stream closed before the tunnel started (RST ${stream.rstCode ?? 'none'})`));
    }
  }

  static #onSocketData(this: Socket, chunk: Buffer): void {
    const bridge = bridges.of(this);
    const stream = bridge.stream;
    // After a reset the tunnel is being torn down, and after the peer's NO_ERROR reset it takes no more (Node has
    // ended our side): the bytes have nowhere to go.
    if (stream.destroyed || stream.writableEnded) return;
    if (!stream.write(chunk)) {
      this.pause();
      // One timer for as long as pauses go on (an upload pauses thousands of times a second), not one per pause.
      if (bridge.#pausedCheck === undefined) bridge.#lookAgainLater();
    }
  }

  static #onStreamDrain(this: Http2Stream): void {
    const bridge = bridges.of(this);
    bridge.#progress++;
    bridge.socket.resume();
  }

  #lookAgainLater(): void {
    this.#progressLookedAt = this.#progress;
    this.#pausedCheck = setTimeout(Bridge.#lookAtPausedSocket, PAUSED_SOCKET_CHECK_MS, this).unref();
  }

  /**
   * A paused socket is not read, so its application's reset or FIN is never seen: a peer that took the CONNECT and
   * never opened its window (or a stream that never drains) held each such tunnel, its descriptor and its buffers, for
   * as long as it liked, after the application had gone (every retry of the application one more). So a paused socket
   * is read again now and then: its next chunk joins the queue (bounded by PAUSED_QUEUE_LIMIT_BYTES), and a reset or
   * an end shows as it comes. Past the bound, or after the app's end (which waits in the queue, for a half-open socket
   * never to close), a tunnel that has made no progress either way for STALLED_TUNNEL_MS is cut: else it was held for
   * as long as the peer liked.
   */
  static #lookAtPausedSocket(bridge: Bridge): void {
    bridge.#pausedCheck = undefined;
    const { socket, stream } = bridge;
    if (socket.destroyed || stream.destroyed || (!socket.isPaused() && stream.writableLength === 0)) {
      bridge.#notStalled();
      return;
    }
    if (bridge.#progress !== bridge.#progressLookedAt) {
      bridge.#notStalled();
      bridge.#lookAgainLater();
      return;
    }
    if (bridge.#stalledLooks++ === 0) Bridge.#stalled++;
    if (bridge.#stalledLooks * PAUSED_SOCKET_CHECK_MS >= STALLED_TUNNEL_MS) {
      bridge.#fail('stream', new Error(`the peer took none of the application's bytes, and sent none, for ${STALLED_TUNNEL_MS / 1000} s (its window closed)`));
      return;
    }
    if (socket.isPaused() && stream.writableLength <= pausedQueueLimit(Bridge.#stalled)) socket.resume();
    bridge.#lookAgainLater();
  }

  #notStalled(): void {
    if (this.#stalledLooks === 0) return;
    this.#stalledLooks = 0;
    Bridge.#stalled--;
  }

  /** Tunnels whose last look found them stalled (for tests). */
  static get stalled(): number {
    return Bridge.#stalled;
  }

  static #onStreamData(this: Http2Stream, chunk: Buffer): void {
    const bridge = bridges.of(this);
    bridge.#progress++;
    const socket = bridge.socket;
    if (socket.destroyed) return;
    // Nothing else corks these sockets: writableCorked says whether an uncork is already scheduled.
    if (chunk.length >= CORK_MIN_CHUNK_BYTES && socket.writableCorked === 0) {
      socket.cork();
      setImmediate(Bridge.#uncork, bridge);
    }
    // While corked, a full buffer is judged after the flush: most of it leaves in the writev.
    if (!socket.write(chunk) && socket.writableCorked === 0) this.pause();
  }

  static #uncork(bridge: Bridge): void {
    const socket = bridge.socket;
    // A no-op when end() has already flushed (it uncorks fully).
    socket.uncork();
    // Only what the kernel did not take holds the stream back; 'drain' follows, as needDrain is set.
    if (socket.writableNeedDrain && socket.writableLength > 0) bridge.stream.pause();
  }

  static #onSocketDrain(this: Socket): void {
    bridges.of(this).stream.resume();
  }

  /** FIN from the application: END_STREAM. */
  static #onSocketEnd(this: Socket): void {
    const stream = bridges.of(this).stream;
    if (!stream.destroyed) stream.end();
  }

  /** END_STREAM from the peer: FIN to the application. */
  static #onStreamEnd(this: Http2Stream): void {
    // Node emits 'end' for a stream the peer reset too, once it has closed: that is no END_STREAM, and a FIN here
    // would give the application a clean end before the reset reaches it.
    if (this.closed && this.rstCode !== h2constants.NGHTTP2_NO_ERROR) return;
    const socket = bridges.of(this).socket;
    if (!socket.destroyed) socket.end();
  }

  static #onSocketError(this: Socket, error: Error): void {
    bridges.of(this).#fail('socket', error);
  }

  static #onStreamError(this: Http2Stream, error: Error): void {
    const bridge = bridges.of(this);
    // Our own reset (cancelStream), reported by Node as the stream's error: the side that failed is known already.
    if (bridge.#resetting && error === STREAM_ABORTED) return;
    bridge.#fail('stream', error);
  }

  static #onStreamAborted(this: Http2Stream): void {
    const bridge = bridges.of(this);
    if (bridge.#resetting) return;
    if (this.rstCode === h2constants.NGHTTP2_NO_ERROR) {
      // The peer has sent all it will: its data (held by the stream, or queued on the socket) still goes to the app,
      // its end becomes FIN. What the app sends from now on is read and dropped, never left to fill its buffers.
      bridge.socket.resume();
      return;
    }
    bridge.#fail('stream', new Error(resetText(this, 'stream reset by peer')));
  }

  static #onSocketClose(this: Socket): void {
    const bridge = bridges.of(this);
    bridge.#socketClosed = true;
    // The app side is gone before both directions were done (aborted, or closed after the app's FIN while the peer
    // still sends), or after the peer's NO_ERROR reset: the peer's bytes have nowhere to go, and a stream left open
    // would hold the tunnel forever (one reset by the peer waits for writes that will never complete).
    const stream = bridge.stream;
    if (!bridge.#streamClosed && (stream.closed || !(this.readableEnded && stream.readableEnded))) bridge.#resetStream();
    bridge.#finish();
  }

  static #onStreamClose(this: Http2Stream): void {
    const bridge = bridges.of(this);
    bridge.#streamClosed = true;
    // A reset from the peer (any code but a clean end) closes the app connection abruptly. CANCEL too, unlike
    // ztunnel, which reads it as EOF: a cut tunnel must not reach the application as a complete one. Node emits no
    // 'error' for CANCEL, so the reset is recorded here, or the tunnel would be reported as a clean close.
    if (!bridge.#socketClosed && (this.rstCode !== h2constants.NGHTTP2_NO_ERROR || !this.readableEnded)) {
      if (!bridge.#resetting) bridge.#fail('stream', new Error(resetText(this, 'stream closed by peer before its end')));
      cutSocket(bridge.socket);
    }
    bridge.#finish();
  }

  #resetStream(): void {
    if (this.stream.destroyed) return;
    this.#resetting = true;
    // Closed already (the peer's NO_ERROR reset): close() would do nothing, and Node keeps the stream until writes
    // queued for a window that will never open complete. Let go of it.
    if (this.stream.closed) this.stream.destroy();
    else cancelStream(this.stream);
  }

  #fail(side: 'socket' | 'stream', error: Error): void {
    if (this.#error === undefined) {
      this.#error = error;
      this.#failedSide = side;
    }
    if (side === 'socket') this.#resetStream();
    else cutSocket(this.socket);
  }

  #finish(): void {
    if (!this.#socketClosed || !this.#streamClosed || this.#done === null) return;
    clearTimeout(this.#pausedCheck);
    this.#pausedCheck = undefined;
    this.#notStalled();
    const done = this.#done;
    this.#done = null;
    done({ error: this.#error, failedSide: this.#failedSide });
  }

  /** Closes both sides now (a policy change revoked the connection, or shutdown). */
  abort(): void {
    this.#resetStream();
    cutSocket(this.socket);
  }
}
