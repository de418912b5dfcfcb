// Parses a CONNECT :authority or a listener target: IPv4:port, [IPv6]:port, or hostname:port.
import { isIP } from 'node:net';
import { ipv6Text } from '../config/fields.ts';

export interface Authority {
  readonly host: string;
  readonly port: number;
  /** 4 or 6 for an IP literal, 0 for a hostname. */
  readonly family: 0 | 4 | 6;
}

const NUMERIC_LAST_LABEL = /(^|\.)(\d+|0x[0-9a-f]*)$/;
const HOSTNAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** Returns null for anything that is not exactly host:port with a port in 1-65535. */
export function parseAuthority(text: string): Authority | null {
  if (text.length === 0 || text.length > 300) return null;
  let host: string;
  let portText: string;
  if (text.charCodeAt(0) === 91 /* [ */) {
    const close = text.indexOf(']');
    if (close < 0 || text.charCodeAt(close + 1) !== 58 /* : */) return null;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (isIP(host) !== 6 || host.includes('%')) return null; // no zone IDs: they name an interface, not a peer
    // RFC 5952's form, as addresses are configured and ztunnel writes them: `[FD00:0::1]` is `fd00::1`, and compared
    // as written it was refused as another workload's. A dotted IPv4-mapped form stays as written.
    if (!host.includes('.')) host = ipv6Text(host);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon <= 0) return null;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return null; // an unbracketed IPv6 literal is ambiguous
  }
  if (portText.length === 0 || portText.length > 5) return null;
  let port = 0;
  for (let i = 0; i < portText.length; i++) {
    const digit = portText.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return null;
    port = port * 10 + digit;
  }
  if (port < 1 || port > 65_535) return null;
  const family = isIP(host);
  // RFC 1123 §2.1: a host name is never all-numeric; `127.1`, `10.0.1.010` or `0x7f.0.0.1` would be read by
  // the resolver as inet_aton does and reach an address the registry was never asked about.
  if (family === 0 && (!HOSTNAME.test(host) || NUMERIC_LAST_LABEL.test(host))) return null;
  return { host, port, family: family as 0 | 4 | 6 };
}

export function formatAuthority(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Whether an authority's port, if it has one, is digits (RFC 3986 §3.2.3): after an IPv6 literal's `]`, else after its colon. */
export function hasNumericPort(host: string): boolean {
  const bracket = host.lastIndexOf(']');
  const colon = host.indexOf(':', bracket + 1);
  if (colon < 0) return true;
  for (let i = colon + 1; i < host.length; i++) {
    const code = host.charCodeAt(i);
    if (code < 48 || code > 57) return false;
  }
  return true;
}

/**
 * Whether a Host or :authority has a percent-encoded character (`admin%2eshop`). RFC 3986 allows them in a reg-name,
 * and a DENY on hosts reads the text as sent, but an application that parses the authority as a URL (WHATWG's URL,
 * Go's net/url) decodes them and serves `admin.shop`. No host name a client uses needs one.
 */
export function hasPercent(host: string): boolean {
  return host.indexOf('%') >= 0;
}

/**
 * Whether a Host or :authority names its host with an empty label (`evil.shop..`, `.evil.shop`, `evil..shop`). A
 * resolver or the application's own routing may read it as the name without them, which a DENY on hosts would not
 * see; one trailing dot is a fully qualified name, which host rules read as the name without it.
 */
export function hasEmptyLabel(host: string): boolean {
  if (host.charCodeAt(0) === 91 /* [ */) return false;
  const colon = host.indexOf(':');
  const end = colon < 0 ? host.length : colon;
  if (host.charCodeAt(0) === 46 /* . */) return true;
  for (let i = 1; i < end; i++) {
    if (host.charCodeAt(i) === 46 && host.charCodeAt(i - 1) === 46) return true;
  }
  return false;
}
