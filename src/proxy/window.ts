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
//
// The session budget bounds one session; a proxy has many (a peer's pool opens one per 100 streams, and may hold 256
// here), so a StreamBudget shared by every session of the proxy, both ways, narrows them all as the streams open
// across them grow past the proxy's budget (H2_PROXY_BUFFER_BYTES unless --stream-window-budget says), by the same
// steps and with the same lag (a cap narrowed one stream ahead, widened at half). A burst can cross more of those
// steps than a peer has acknowledged yet: a session with H2_MAX_UNACKNOWLEDGED_SETTINGS out sends its next window once
// one is acknowledged (the latest one wanted then), rather than being ended as a peer that does not acknowledge, which
// the deadline alone judges. Any peer can move the cap by opening and closing streams, and every session of the proxy
// follows it, so the cap widens at most once a second; a session is narrowed to it from its start, and after a GOAWAY
// while its streams go on.
import type { Http2Session } from 'node:http2';
import {
  H2_MAX_UNACKNOWLEDGED_SETTINGS,
  H2_MIN_STREAM_WINDOW_BYTES,
  H2_OPENING_STREAM_WINDOW_BYTES,
  H2_PROXY_BUFFER_BYTES,
  H2_PROXY_MIN_STREAM_WINDOW_BYTES,
  H2_SESSION_BUFFER_BYTES,
  H2_STREAM_WINDOW_BYTES,
} from './settings.ts';

/** The widest window, halving from H2_STREAM_WINDOW_BYTES down to `floor`, at which `open` streams fit in `bytes`. */
function windowWithin(open: number, bytes: number, floor: number): number {
  let window = H2_STREAM_WINDOW_BYTES;
  while (window > floor && window * open > bytes) window /= 2;
  return window;
}

/** The stream window for a session with `open` streams. */
export function streamWindowFor(open: number): number {
  return windowWithin(open, H2_SESSION_BUFFER_BYTES, H2_MIN_STREAM_WINDOW_BYTES);
}

/** The widest stream window any session may have when `open` streams are open across a proxy's budget of `bytes`. */
export function proxyWindowFor(open: number, bytes: number): number {
  return windowWithin(open, bytes, H2_PROXY_MIN_STREAM_WINDOW_BYTES);
}

/**
 * Called when the peer has left our SETTINGS unacknowledged for the timeout (`tooMany` false) or Node refused another
 * (true). Returns whether the owner ended the session; false: the SETTINGS may not have left yet (our own writes are
 * backed up ahead of it), and the peer is given another period.
 */
export type SettingsUnacknowledged = (session: Http2Session, tooMany: boolean) => boolean;

export interface WindowOptions {
  readonly ackTimeoutMs: number;
  readonly onUnacknowledged: SettingsUnacknowledged;
  /** Shared by every session of the proxy, inbound and pooled. */
  readonly budget: StreamBudget;
}

interface WindowState {
  readonly session: Http2Session;
  open: number;
  /** The stream window last asked for. */
  window: number;
  /** A stream of the session has been answered: it may be widened by its budget, not only by its own streams. */
  answered: boolean;
  /** A window is wanted that waits for one of the SETTINGS out to be acknowledged (H2_MAX_UNACKNOWLEDGED_SETTINGS). */
  deferred: boolean;
  /** Our SETTINGS the peer has not acknowledged yet, and the deadline of the oldest. */
  pending: number;
  timer: NodeJS.Timeout | undefined;
  readonly options: WindowOptions;
  /** The acknowledgement callback of every SETTINGS this session sends: one per session, not one per SETTINGS. */
  readonly onAck: (error: Error | null) => void;
}

/** How often a proxy's cap may widen (StreamBudget.#widen). */
const CAP_WIDEN_INTERVAL_MS = 1_000;

/** The widest stream window a proxy's sessions may have, from the streams open across all of them. */
export class StreamBudget {
  readonly bytes: number;
  readonly #states = new Set<WindowState>();
  #open = 0;
  #window = H2_STREAM_WINDOW_BYTES;
  #widenedAtMs = -Infinity;
  #widenTimer: NodeJS.Timeout | undefined;
  readonly #onChange: ((window: number, open: number) => void) | undefined;

  /** `onChange` hears each narrowing and widening of the cap (a step per halving or doubling of the streams open). */
  constructor(bytes: number = H2_PROXY_BUFFER_BYTES, onChange?: (window: number, open: number) => void) {
    this.bytes = bytes;
    this.#onChange = onChange;
  }

  /** The widest stream window a session may ask for now. */
  get window(): number {
    return this.#window;
  }

  /** Streams open across every tracked session. */
  get open(): number {
    return this.#open;
  }

  /** @internal */
  add(state: WindowState): void {
    this.#states.add(state);
  }

  /** @internal A session has closed: its streams no longer count. */
  remove(state: WindowState): void {
    if (!this.#states.delete(state)) return;
    const open = state.open;
    state.open = 0;
    this.#open -= open;
    if (open > 0) this.#widen();
  }

  /** @internal One stream ahead, as a session's own window: the cap the next stream needs is asked for now. */
  opened(): void {
    this.#open++;
    // Per stream: the cap in force still fits (the common case) is one product, not proxyWindowFor's halvings.
    if (this.#window <= H2_PROXY_MIN_STREAM_WINDOW_BYTES || (this.#open + 1) * this.#window <= this.bytes) return;
    const narrower = proxyWindowFor(this.#open + 1, this.bytes);
    this.#window = narrower;
    this.#onChange?.(narrower, this.#open);
    for (const state of this.#states) adjust(state, false);
  }

  /** @internal */
  closed(): void {
    this.#open--;
    this.#widen();
  }

  /**
   * Wider only once the streams are down to half of what the cap is for, as a session's own window, and at most once
   * every CAP_WIDEN_INTERVAL_MS: a peer opening and closing streams across a step makes every session of the proxy
   * narrow and widen, other peers' too, and this bounds how often.
   */
  #widen(): void {
    // Per stream, as opened(): twice the cap does not fit twice the streams (the common case) is one product.
    if (this.#widenTimer !== undefined || this.#window >= H2_STREAM_WINDOW_BYTES || (this.#open * 2 + 1) * this.#window * 2 > this.bytes) return;
    // Monotonic: a wall clock stepped back would hold the cap narrow for as long.
    const now = performance.now();
    if (now < this.#widenedAtMs + CAP_WIDEN_INTERVAL_MS) {
      this.#widenTimer = setTimeout(StreamBudget.#widenLater, this.#widenedAtMs + CAP_WIDEN_INTERVAL_MS - now, this).unref();
      return;
    }
    const wider = proxyWindowFor(this.#open * 2 + 1, this.bytes);
    this.#widenedAtMs = now;
    this.#window = wider;
    this.#onChange?.(wider, this.#open);
    for (const state of this.#states) if (state.answered) adjust(state, true);
  }

  static #widenLater(budget: StreamBudget): void {
    budget.#widenTimer = undefined;
    budget.#widen();
  }
}

const states = new WeakMap<Http2Session, WindowState>();

/**
 * Keeps the stream windows of an authenticated session that advertised H2_OPENING_STREAM_WINDOW_BYTES in its first
 * SETTINGS. Sessions not tracked are neither narrowed nor timed.
 */
export function trackWindows(session: Http2Session, options: WindowOptions): void {
  const state: WindowState = {
    session,
    open: 0,
    window: H2_OPENING_STREAM_WINDOW_BYTES,
    answered: false,
    deferred: false,
    pending: 0,
    timer: undefined,
    options,
    onAck: (error) => settingsAcknowledged(state, error),
  };
  states.set(session, state);
  options.budget.add(state);
  session.once('close', () => options.budget.remove(state));
  // The first SETTINGS left with the opening window; a proxy already past its budget asks for less before any stream.
  if (options.budget.window < state.window) adjust(state, false);
}

/** A stream opened on the session: the window narrows, one stream ahead, if the streams now open need it. */
export function streamOpened(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined) return;
  state.open++;
  state.options.budget.opened();
  adjust(state, false);
}

/** A stream streamOpened admitted is answered (200): the window may widen for the streams now open. */
export function streamAnswered(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined) return;
  state.answered = true;
  adjust(state, true);
}

/** A stream counted by streamOpened has closed. */
export function streamClosed(session: Http2Session): void {
  const state = states.get(session);
  // A closed session's streams were taken off the budget with it.
  if (state === undefined || state.open === 0) return;
  state.open--;
  state.options.budget.closed();
  adjust(state, true);
}

function adjust(state: WindowState, widen: boolean): void {
  const { session } = state;
  const cap = state.options.budget.window;
  // One stream ahead: the window the next stream needs is asked for now, acknowledged by the time it comes.
  const narrower = Math.min(streamWindowFor(state.open + 1), cap);
  // Wider only once the streams are down to half of what the current window is for: a session whose count moves
  // around a threshold does not send SETTINGS back and forth.
  const wider = Math.min(streamWindowFor(state.open * 2 + 1), cap);
  const next = narrower < state.window ? narrower : widen && wider > state.window ? wider : state.window;
  // A closed session (a GOAWAY either way) still carries its open streams: it is narrowed as any other, not widened.
  if (next === state.window || session.destroyed || (session.closed && next > state.window)) return;
  if (state.pending >= H2_MAX_UNACKNOWLEDGED_SETTINGS) {
    // Sent once one is acknowledged (settingsAcknowledged); the deadline of the oldest judges a peer that never does.
    state.deferred = true;
    return;
  }
  try {
    session.settings({ initialWindowSize: next }, state.onAck);
  } catch {
    // Not expected (settings() throws for a destroyed session, checked above, or a bad value); were Node to refuse
    // another SETTINGS outstanding, the owner ends the session saying why.
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
    state.deferred = false;
    return;
  }
  if (--state.pending > 0) {
    // The next is younger than the one just acknowledged: it gets a whole period from now, never less.
    state.timer?.refresh();
  } else {
    state.pending = 0;
    clearTimeout(state.timer);
    state.timer = undefined;
  }
  if (state.deferred) {
    state.deferred = false;
    adjust(state, state.answered);
  }
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
