// Bytes an HBONE stream carried, counted on the stream itself: an inspected tunnel's are not its upstream socket's
// (the proxy's own answers, a 403, never reach the workload; the headers it adds, x-forwarded-client-cert, never came
// from the peer), and the destination reports what crossed the tunnel, as the source does.
import type { Duplex } from 'node:stream';

export class StreamBytes {
  /** From the peer: every chunk the stream pushed to its readers. */
  received = 0;
  /** To the peer: every chunk written to the stream. */
  sent = 0;
}

type WriteCallback = (error?: Error | null) => void;
type Chunk = Buffer | string;

function byteLength(chunk: Chunk, encoding: BufferEncoding): number {
  return typeof chunk === 'string' ? Buffer.byteLength(chunk, encoding) : chunk.length;
}

/**
 * Counts what the stream carries from now on, and what it holds already unread (the first bytes of a tunnel can
 * arrive before it is handed over). Per tunnel, not per chunk: the stream's own push and write are wrapped once.
 */
export function countStreamBytes(stream: Duplex): StreamBytes {
  const bytes = new StreamBytes();
  bytes.received = stream.readableLength;
  const push = stream.push;
  stream.push = function (this: Duplex, chunk: unknown, encoding?: BufferEncoding): boolean {
    if (chunk !== null && chunk !== undefined) bytes.received += byteLength(chunk as Chunk, encoding ?? 'utf8');
    return push.call(this, chunk, encoding);
  };
  // Http2Stream keeps strings as they were written (decodeStrings: false): counted in bytes of their encoding.
  const write = stream._write;
  stream._write = function (this: Duplex, chunk: Chunk, encoding: BufferEncoding, callback: WriteCallback): void {
    bytes.sent += byteLength(chunk, encoding);
    write.call(this, chunk, encoding, callback);
  };
  const writev = stream._writev;
  if (writev !== undefined) {
    stream._writev = function (this: Duplex, chunks: Array<{ chunk: Chunk; encoding: BufferEncoding }>, callback: WriteCallback): void {
      for (const { chunk, encoding } of chunks) bytes.sent += byteLength(chunk, encoding);
      writev.call(this, chunks, callback);
    };
  }
  return bytes;
}
