// Tunables of the HBONE data path, each with the reason for its value (ztunnel's config.rs defaults
// unless said otherwise; see shared/reference/ztunnel.md §1.5–§1.6).

/** HTTP/2 stream window: 4 MiB lets one tunnel fill a fast link without waiting for WINDOW_UPDATEs. */
export const H2_STREAM_WINDOW_BYTES = 4 * 1024 * 1024;
/**
 * What the open streams of one session may make us hold (window.ts narrows the stream window to keep to it): twice
 * ztunnel's connection window, which Node cannot enforce itself (it hands the connection window back on receipt).
 */
export const H2_SESSION_BUFFER_BYTES = 32 * 1024 * 1024;
/** The narrowest stream window a busy session gets: 128 KiB still moves ~40 MiB/s per tunnel at a 3 ms round trip. */
export const H2_MIN_STREAM_WINDOW_BYTES = 128 * 1024;
/**
 * The stream window a session's first SETTINGS advertises, before it carries a stream: the narrowest, at which the
 * most streams a peer may open at once (200 × 128 KiB) fit H2_SESSION_BUFFER_BYTES. window.ts widens it once a
 * stream is answered (the server sends that before its 200, the client as the 200 arrives: a tunnel's first bytes
 * wait a round trip at most). Opening at 4 MiB, a burst of streams before the peer had acknowledged any narrower
 * window held 4 MiB each.
 */
export const H2_OPENING_STREAM_WINDOW_BYTES = H2_MIN_STREAM_WINDOW_BYTES;
/**
 * What the open streams of every session of one proxy, both ways, may make it hold together (window.ts narrows every
 * session's stream window to keep to it; `ambit proxy --stream-window-budget`). The session budget alone let each
 * session hold 32 MiB, and a peer may have 256 sessions here (H2_SERVER_MAX_SESSIONS_PER_PEER): 2,000 tunnels to
 * workloads that did not read, 100 a session, held 256 KiB each on the receiving node. A window W is kept while fewer
 * than budget ÷ W streams are open (the next one counted ahead): 4 MiB below 32, 512 KiB below 256, 128 KiB (the
 * session budget's floor) below 1,024, 64 KiB below 2,048. The price is a tunnel's speed when many are open: a window
 * per round trip (512 KiB at a 3 ms round trip is ~170 MiB/s, at 50 ms ~10 MiB/s).
 */
export const H2_PROXY_BUFFER_BYTES = 128 * 1024 * 1024;
/**
 * The narrowest stream window the proxy budget narrows to (from 4,096 streams open at the default budget): one
 * default-sized frame, ~5 MiB/s per tunnel at a 3 ms round trip. Past 8,192 what the streams may make the proxy hold
 * grows again, by this much a stream.
 */
export const H2_PROXY_MIN_STREAM_WINDOW_BYTES = 16 * 1024;
/**
 * How long a peer has to acknowledge our SETTINGS (RFC 9113 §6.5.3) before its session is ended with SETTINGS_TIMEOUT.
 * The acknowledgement is one round trip away once the SETTINGS has left, and nghttp2 sends SETTINGS ahead of queued
 * DATA: what can delay it is what is already in the kernel's send buffer (4 MiB at most, autotuned), about 3 s on a
 * 10 Mbit/s path; 10 s leaves room for that and a busy peer. A deadline found with our own writes still backed up is
 * extended (the SETTINGS may not have left). Until it, a peer that acknowledged a wide window keeps it on the streams
 * it opens (window.ts): what bounds that in time.
 */
export const SETTINGS_ACK_TIMEOUT_MS = 10_000;
/**
 * Our SETTINGS out at once on a session: a window wanted past them is sent once one is acknowledged (window.ts). Node
 * ends the session itself at 10 (its own first among them) with INTERNAL_ERROR, which says nothing of why. A burst of
 * streams can cross more narrowings than this within a round trip (4 MiB to 16 KiB is eight).
 */
export const H2_MAX_UNACKNOWLEDGED_SETTINGS = 6;
/** Connection window = 4 × stream window, chosen by ztunnel to avoid cross-stream starvation. */
export const H2_CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;
/** Largest DATA frame we accept: 1 MiB, so bulk transfers move in few frames. */
export const H2_MAX_FRAME_BYTES = 1024 * 1024;
/**
 * Server: streams a peer may reset per second, and at once (nghttp2's token bucket against rapid reset, CVE-2023-44487;
 * it refills once a second, so the burst is also the most per second). Node's defaults, 1,000 then 33 a second, took a
 * busy node whose clients reset their connections for an attacker and ended the session with every tunnel on it; these
 * follow what one node can churn (about 2,000 connections a second), and a flood in one write is still cut at 2,000.
 */
export const H2_SERVER_STREAM_RESET_BURST = 2_000;
export const H2_SERVER_STREAM_RESET_RATE = 2_000;
/**
 * Server: TLS handshakes one client address may have under way at once, and all of them together. A handshake is
 * unauthenticated work (a client chain OpenSSL checks before ambit can): 5,000 silent connections from one client held
 * 100 MiB, 20,000 every descriptor. A peer node opens a session per source workload, all at once when it starts (a
 * node runs ~110 pods at most); one stalled handshake holds 20–60 KiB. The cap on all of them is what sixteen
 * addresses can fill to keep new sessions out for a handshake timeout (sessions open go on): a trade against ~230 MiB.
 */
export const H2_SERVER_MAX_HANDSHAKES_PER_ADDRESS = 256;
export const H2_SERVER_MAX_HANDSHAKES = 4_096;
/**
 * Server: sessions one peer identity may hold from one address (a node's pods of that identity, each its own pooled
 * session, one more per 100 streams; a node runs ~110 pods at most). One peer held 20,000, every descriptor of the node.
 */
export const H2_SERVER_MAX_SESSIONS_PER_PEER = 256;
/** Server: streams a peer may open on one session (ztunnel advertises 200). */
export const H2_SERVER_MAX_STREAMS = 200;
/** Client: streams we put on one pooled session before opening another (Go and ztunnel use 100). */
export const POOL_MAX_STREAMS_PER_SESSION = 100;
/** Header block limits: CONNECT carries a handful of headers; anything near these is hostile. */
export const H2_CLIENT_MAX_HEADER_LIST_BYTES = 16 * 1024;
export const H2_SERVER_MAX_HEADER_LIST_BYTES = 64 * 1024;
/**
 * Node's per-session memory cap (MB) defaults to 10, which 4 MiB windows and many streams exceed,
 * making nghttp2 refuse new streams under load; this bound still stops a peer from growing us forever.
 */
export const H2_MAX_SESSION_MEMORY_MB = 256;
/** PING every 10 s; a session whose PONG does not come within 20 s is dead. */
export const KEEPALIVE_INTERVAL_MS = 10_000;
export const KEEPALIVE_TIMEOUT_MS = 20_000;
/** The pool drops a session that carried no stream for 5 minutes. */
export const POOL_IDLE_TIMEOUT_MS = 5 * 60_000;
/** TCP and TLS connect timeout, to an upstream or a peer's 15008. */
export const CONNECT_TIMEOUT_MS = 10_000;
/**
 * How long a CONNECT waits for its answer: longer than the destination's own connect to its upstream (it answers only
 * once that succeeded, or 503 when it failed or timed out), so its answer, which says why, arrives before we give up.
 */
export const CONNECT_ANSWER_TIMEOUT_MS = CONNECT_TIMEOUT_MS + 5_000;
/**
 * TCP keepalive on HBONE connections, after 180 s idle as ztunnel (Node's libuv then probes every second, ten
 * times): finds a vanished peer where no PING can be sent, a session closed by the peer's GOAWAY with tunnels still
 * open on it.
 */
export const TCP_KEEPALIVE_IDLE_MS = 180_000;
/** TLS 1.3 only; AES-GCM suites as ztunnel; post-quantum hybrid key exchange first, X25519 as fallback. */
export const TLS_MIN_VERSION = 'TLSv1.3';
export const TLS_CIPHERS = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';
export const TLS_GROUPS = 'X25519MLKEM768:X25519:P-256';
export const HBONE_ALPN = ['h2'];
/**
 * The GOAWAY reason of a peer whose certificate the trust bundles refused (inbound.ts refusalReason): one word for
 * an unknown trust domain, an unknown CA, or a CA that is expired or breaks the rules (path length, names, key
 * size), so an unauthenticated prober learns nothing of them.
 */
export const UNTRUSTED_REASON = 'SVID_UNTRUSTED';
/** Ports of our own listeners that a CONNECT to any workload address would loop into (ztunnel's set). */
export function illegalUpstreamPorts(ports: { outbound: number; inboundPlaintext: number; hbone: number }, ...listening: ReadonlyArray<number | undefined>): ReadonlySet<number> {
  const set = new Set([ports.outbound, ports.inboundPlaintext, ports.hbone]);
  // The ports the HBONE servers really listen on (--hbone-port, --hbone-listen) are illegal too: a CONNECT to one
  // would nest a second HBONE session inside the tunnel, its peer address the workload's own (ztunnel bans it).
  for (const port of listening) if (port !== undefined) set.add(port);
  return set;
}

/** Every port the configuration gives the proxy: a passthrough to this host on one of them reaches the proxy itself. */
export function proxyPorts(ports: { outbound: number; inboundPlaintext: number; hbone: number; admin: number; metrics: number; readiness: number }): ReadonlySet<number> {
  return new Set([ports.outbound, ports.inboundPlaintext, ports.hbone, ports.admin, ports.metrics, ports.readiness]);
}
