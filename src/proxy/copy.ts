// Carries bytes between an application TCP socket and an HBONE stream, both ways, with half-close:
// FIN becomes END_STREAM and END_STREAM becomes FIN; a reset or an error on either side closes the
// other abruptly. pipe() honours write()'s return value and 'drain' in both directions, so a slow
// reader stalls its writer (through TCP and HTTP/2 flow control) instead of growing a buffer.
// No per-chunk work is done here: bytes are counted by the sockets themselves (bytesRead/bytesWritten).
import type { Socket } from 'node:net';
import type { Http2Stream } from 'node:http2';
import { constants as h2constants } from 'node:http2';

export interface BridgeResult {
  /** The first error on either side, if any; undefined for a clean close. */
  readonly error: Error | undefined;
  /** Which side failed first. */
  readonly failedSide: 'socket' | 'stream' | undefined;
}

/** Runs until both sides have closed; the callback runs exactly once. */
export class Bridge {
  readonly socket: Socket;
  readonly stream: Http2Stream;
  #socketClosed = false;
  #streamClosed = false;
  #error: Error | undefined;
  #failedSide: 'socket' | 'stream' | undefined;
  #done: ((result: BridgeResult) => void) | null;

  constructor(socket: Socket, stream: Http2Stream, done: (result: BridgeResult) => void) {
    this.socket = socket;
    this.stream = stream;
    this.#done = done;
    socket.on('error', (error) => this.#fail('socket', error));
    socket.on('close', () => {
      this.#socketClosed = true;
      // The app side is gone (both directions done, or aborted): nothing more will flow into the stream.
      if (!this.#streamClosed && (socket.destroyed && !socket.readableEnded)) this.#resetStream();
      this.#finish();
    });
    stream.on('error', (error) => this.#fail('stream', error));
    stream.on('aborted', () => this.#fail('stream', new Error('stream aborted by peer')));
    stream.on('close', () => {
      this.#streamClosed = true;
      // A reset from the peer (any code but a clean end) closes the app connection abruptly.
      if (!this.#socketClosed && (stream.rstCode !== h2constants.NGHTTP2_NO_ERROR || !stream.readableEnded)) socket.destroy();
      this.#finish();
    });
    socket.pipe(stream);
    stream.pipe(socket);
  }

  #resetStream(): void {
    if (!this.stream.destroyed) this.stream.close(h2constants.NGHTTP2_CANCEL);
  }

  #fail(side: 'socket' | 'stream', error: Error): void {
    if (this.#error === undefined) {
      this.#error = error;
      this.#failedSide = side;
    }
    if (side === 'socket') this.#resetStream();
    else this.socket.destroy();
  }

  #finish(): void {
    if (!this.#socketClosed || !this.#streamClosed || this.#done === null) return;
    const done = this.#done;
    this.#done = null;
    done({ error: this.#error, failedSide: this.#failedSide });
  }

  /** Closes both sides now (a policy change revoked the connection, or shutdown). */
  abort(): void {
    this.#resetStream();
    this.socket.destroy();
  }
}
