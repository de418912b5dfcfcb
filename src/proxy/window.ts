// HTTP/2 stream windows that narrow as a session carries more streams. Node gives a session's connection window
// back as soon as data arrives, not when the application reads it, so the 16 MiB connection window bounds nothing:
// what a peer can make us hold on one session is its open streams times the stream window, 200 × 4 MiB. A peer that
// uploads on many tunnels to slow workloads (or a download on many tunnels to slow applications) made the node
// proxy hold over 350 MiB per session. The stream window is halved as streams open, so that open streams × window
// stays within H2_SESSION_BUFFER_BYTES (SETTINGS_INITIAL_WINDOW_SIZE also shrinks the streams already open), and
// widened again once half of them have closed: one tunnel still gets the whole 4 MiB for a fast link.
import type { Http2Session } from 'node:http2';
import { H2_MIN_STREAM_WINDOW_BYTES, H2_SESSION_BUFFER_BYTES, H2_STREAM_WINDOW_BYTES } from './settings.ts';

/** The stream window for a session with `open` streams. */
export function streamWindowFor(open: number): number {
  let window = H2_STREAM_WINDOW_BYTES;
  while (window > H2_MIN_STREAM_WINDOW_BYTES && window * open > H2_SESSION_BUFFER_BYTES) window /= 2;
  return window;
}

interface WindowState {
  open: number;
  window: number;
}

const states = new WeakMap<Http2Session, WindowState>();

/** A stream opened on the session (one that advertised H2_STREAM_WINDOW_BYTES at its start). */
export function streamOpened(session: Http2Session): void {
  let state = states.get(session);
  if (state === undefined) states.set(session, (state = { open: 0, window: H2_STREAM_WINDOW_BYTES }));
  state.open++;
  adjust(session, state);
}

/** A stream counted by streamOpened has closed. */
export function streamClosed(session: Http2Session): void {
  const state = states.get(session);
  if (state === undefined || state.open === 0) return;
  state.open--;
  adjust(session, state);
}

function adjust(session: Http2Session, state: WindowState): void {
  const narrower = streamWindowFor(state.open);
  // Wider only once the streams are down to half of what the current window is for: a session whose count moves
  // around a threshold does not send SETTINGS back and forth.
  const wider = streamWindowFor(state.open * 2);
  const next = narrower < state.window ? narrower : wider > state.window ? wider : state.window;
  if (next === state.window || session.destroyed || session.closed) return;
  try {
    session.settings({ initialWindowSize: next });
    state.window = next;
  } catch {
    // Too many SETTINGS not acknowledged (a peer that does not answer them): its windows stay as they are.
  }
}
