// HTTP/2 stream windows that narrow as a session carries more streams. Node gives a session's connection window
// back as soon as data arrives, not when the application reads it, so the 16 MiB connection window bounds nothing:
// what a peer can make us hold on one session is its open streams times the stream window, 200 × 4 MiB. A peer that
// uploads on many tunnels to slow workloads (or a download on many tunnels to slow applications) made the node
// proxy hold over 350 MiB per session. The stream window is halved as streams open, so that open streams × window
// stays within H2_SESSION_BUFFER_BYTES (SETTINGS_INITIAL_WINDOW_SIZE also shrinks the streams already open), and
// widened again once half of them have closed: one tunnel still gets the whole 4 MiB for a fast link.
//
// nghttp2 applies a SETTINGS of ours only once the peer acknowledges it: until then new streams get, and open ones
// keep, the window the peer last acknowledged. A peer that acknowledged 4 MiB and none of the narrower windows after
// held 4 MiB on each of 200 streams (800 MiB), the budget above a promise it did not keep. So a session opens with the
// narrowest window (200 streams fit the budget at it) and widens only once a stream is answered (streamAnswered), so
// that a burst of streams opened together is counted before any wider window is asked for; the next narrower window
// is asked for one stream ahead, so that streams opened one after another find it acknowledged; and a peer that leaves
// our SETTINGS unacknowledged past SETTINGS_ACK_TIMEOUT_MS, or lets too many pile up, is given to the owner to end
// (RFC 9113 §6.5.3: SETTINGS_TIMEOUT). What a peer that acknowledges a wide window and then opens many streams faster
// than it acknowledges the narrower ones can make us hold is so bounded in time, not in bytes. Bounding it in bytes
// (refusing, or on the pool's side not placing, a stream past the budget at the widest window the peer has
// acknowledged or may still acknowledge) refused a prompt client's burst within one round trip of a widening, and the
// pool, placing none there, dialled 3-5 sessions where one served, for 5-15 % more CPU per request.
import type { Http2Session } from 'node:http2';
import { H2_MAX_UNACKNOWLEDGED_SETTINGS, H2_MIN_STREAM_WINDOW_BYTES, H2_OPENING_STREAM_WINDOW_BYTES, H2_SESSION_BUFFER_BYTES, H2_STREAM_WINDOW_BYTES } from './settings.ts';

/** The stream window for a session with `open` streams. */
export function streamWindowFor(open: number): number {
  let window = H2_STREAM_WINDOW_BYTES;
  while (window > H2_MIN_STREAM_WINDOW_BYTES && window * open > H2_SESSION_BUFFER_BYTES) window /= 2;
  return window;
}

/**
 * Called when the peer has left our SETTINGS unacknowledged for the timeout (`tooMany` false) or let more than
 * H2_MAX_UNACKNOWLEDGED_SETTINGS pile up (true). Returns whether the owner ended the session; false: the SETTINGS may
 * not have left yet (our own writes are backed up ahead of it), and the peer is given another period.
 */
export type SettingsUnacknowledged = (session: Http2Session, tooMany: boolean) => boolean;

export interface WindowOptions {
  readonly ackTimeoutMs: number;
  readonly onUnacknowledged: SettingsUnacknowledged;
}

interface WindowState {
  open: number;
  /** The stream window last asked for. */
  window: number;
  /** Our SETTINGS the peer has not acknowledged yet, and the deadline of the oldest. */
  pending: number;
  timer: NodeJS.Timeout | undefined;
  readonly options: WindowOptions;
  /** The acknowledgement callback of every SETTINGS this session sends: one per session, not one per SETTINGS. */
  readonly onAck: (error: Error | null) => void;
}

const states = new WeakMap<Http2Session, WindowState>();

/**
 * Keeps the stream windows of an authenticated session that advertised H2_OPENING_STREAM_WINDOW_BYTES in its first
 * SETTINGS. Sessions not tracked are neither narrowed nor timed.
 */
export function trackWindows(session: Http2Session, options: WindowOptions): void {
  const state: WindowState = {
    open: 0,
    window: H2_OPENING_STREAM_WINDOW_BYTES,
    pending: 0,
    timer: undefined,
    options,
    onAck: (error) => settingsAcknowledged(state, error),
  };
  states.set(session, state);
}

/** A stream opened on the session: the window narrows, one stream ahead, if the streams now open need it. */
export function streamOpened(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined) return;
  state.open++;
  adjust(session, state, false);
}

/** A stream streamOpened admitted is answered (200): the window may widen for the streams now open. */
export function streamAnswered(session: Http2Session): void {
  const state = states.get(session);
  if (state !== undefined) adjust(session, state, true);
}

/** A stream counted by streamOpened has closed. */
export function streamClosed(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined || state.open === 0) return;
  state.open--;
  adjust(session, state, true);
}

function adjust(session: Http2Session, state: WindowState, widen: boolean): void {
  // One stream ahead: the window the next stream needs is asked for now, acknowledged by the time it comes.
  const narrower = streamWindowFor(state.open + 1);
  // Wider only once the streams are down to half of what the current window is for: a session whose count moves
  // around a threshold does not send SETTINGS back and forth.
  const wider = streamWindowFor(state.open * 2 + 1);
  const next = narrower < state.window ? narrower : widen && wider > state.window ? wider : state.window;
  if (next === state.window || session.destroyed || session.closed) return;
  if (state.pending >= H2_MAX_UNACKNOWLEDGED_SETTINGS) {
    unacknowledged(session, state, true);
    return;
  }
  try {
    session.settings({ initialWindowSize: next }, state.onAck);
  } catch {
    // Node ended the session itself (too many SETTINGS outstanding, counting its own first): the owner says why.
    unacknowledged(session, state, true);
    return;
  }
  state.window = next;
  if (state.pending++ === 0) state.timer = setTimeout(onAckTimeout, state.options.ackTimeoutMs, session).unref();
}

function settingsAcknowledged(state: WindowState, error: Error | null): void {
  if (error !== null) {
    // Cancelled: the session is gone.
    clearTimeout(state.timer);
    state.timer = undefined;
    state.pending = 0;
    return;
  }
  if (--state.pending > 0) {
    // The next is younger than the one just acknowledged: it gets a whole period from now, never less.
    state.timer?.refresh();
    return;
  }
  state.pending = 0;
  clearTimeout(state.timer);
  state.timer = undefined;
}

function onAckTimeout(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined || state.pending === 0 || session.destroyed) return;
  unacknowledged(session, state, false);
}

function unacknowledged(session: Http2Session, state: WindowState, tooMany: boolean): void {
  if (session.destroyed) return;
  if (state.options.onUnacknowledged(session, tooMany)) {
    clearTimeout(state.timer);
    state.timer = undefined;
    return;
  }
  // The owner waits on: another period for the oldest.
  if (state.timer !== undefined) state.timer.refresh();
  else if (state.pending > 0) state.timer = setTimeout(onAckTimeout, state.options.ackTimeoutMs, session).unref();
}
