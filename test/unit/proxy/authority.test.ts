// parseAuthority: what a CONNECT :authority or a listener target may be, from the accept and the reject side.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatAuthority, parseAuthority } from '../../../src/proxy/authority.ts';

const LABEL_63 = 'a'.repeat(63);
// 4 labels of 63 + 3 dots = 255 is too long; 3 × 63 + 61 + 3 dots = 253 is the longest legal name.
const HOSTNAME_253 = `${LABEL_63}.${LABEL_63}.${LABEL_63}.${'b'.repeat(61)}`;

describe('parseAuthority accepts', () => {
  const accepted: Array<[string, string, { host: string; port: number; family: 0 | 4 | 6 }]> = [
    ['an IPv4 address and port', '10.0.0.1:80', { host: '10.0.0.1', port: 80, family: 4 }],
    ['the lowest port', '10.0.0.1:1', { host: '10.0.0.1', port: 1, family: 4 }],
    ['the highest port', '10.0.0.1:65535', { host: '10.0.0.1', port: 65_535, family: 4 }],
    ['a bracketed IPv6 address', '[fd00::1]:443', { host: 'fd00::1', port: 443, family: 6 }],
    ['the IPv6 loopback', '[::1]:8080', { host: '::1', port: 8080, family: 6 }],
    ['an IPv6 address in capitals, in its canonical form', '[FD00::1]:443', { host: 'fd00::1', port: 443, family: 6 }],
    ['an IPv6 address with its zeros written out, compressed', '[fd00:0:0:0:0:0:0:0001]:443', { host: 'fd00::1', port: 443, family: 6 }],
    ['an IPv4-mapped IPv6 address, as written', '[::ffff:10.0.0.1]:80', { host: '::ffff:10.0.0.1', port: 80, family: 6 }],
    ['a Service short name', 'echo.demo:7', { host: 'echo.demo', port: 7, family: 0 }],
    ['a full Service hostname', 'echo.demo.svc.cluster.local:7', { host: 'echo.demo.svc.cluster.local', port: 7, family: 0 }],
    ['a single-label hostname', 'localhost:1', { host: 'localhost', port: 1, family: 0 }],
    ['a hostname with digits and inner hyphens', 'api-2.x9.example:443', { host: 'api-2.x9.example', port: 443, family: 0 }],
    ['a 63-character label', `${LABEL_63}.com:80`, { host: `${LABEL_63}.com`, port: 80, family: 0 }],
    ['a 253-character hostname', `${HOSTNAME_253}:80`, { host: HOSTNAME_253, port: 80, family: 0 }],
    ['a port with leading zeros, read as decimal', 'echo.demo:00080', { host: 'echo.demo', port: 80, family: 0 }],
  ];
  it.each(accepted)('%s', (_, text, expected) => {
    expect(parseAuthority(text)).toEqual(expected);
  });
});

describe('parseAuthority rejects', () => {
  const rejected: Array<[string, string]> = [
    ['the empty string', ''],
    ['more than 300 characters', `${'a'.repeat(301)}:80`],
    ['a host without a port', '10.0.0.1'],
    ['an empty port', '10.0.0.1:'],
    ['an empty host', ':80'],
    ['port 0', '10.0.0.1:0'],
    ['port 65536', '10.0.0.1:65536'],
    ['port 99999', 'echo.demo:99999'],
    ['a six-digit port', 'echo.demo:000080'],
    ['a negative port', '10.0.0.1:-1'],
    ['a signed port', '10.0.0.1:+80'],
    ['a hexadecimal port', '10.0.0.1:0x50'],
    ['junk before the port', '10.0.0.1: 80'],
    ['junk after the port', '10.0.0.1:80 '],
    ['letters in the port', '10.0.0.1:8o'],
    ['leading whitespace', ' 10.0.0.1:80'],
    ['two ports', 'echo.demo:80:90'],
    ['an unbracketed IPv6 address', 'fd00::1:80'],
    ['a bracketed IPv6 address without a port', '[fd00::1]'],
    ['a bracketed IPv6 address with no colon before the port', '[fd00::1]80'],
    ['an unclosed bracket', '[fd00::1:80'],
    ['a bracketed IPv4 address', '[10.0.0.1]:80'],
    ['a bracketed hostname', '[echo.demo]:80'],
    ['a bracketed non-address', '[zz::1]:80'],
    ['an upper-case hostname (ambit names are lower-case; no case folding)', 'Echo.demo:7'],
    ['an underscore in a hostname', 'echo_demo:7'],
    ['a label starting with a hyphen', '-echo.demo:7'],
    ['a label ending with a hyphen', 'echo-.demo:7'],
    ['an empty label', 'echo..demo:7'],
    ['a trailing dot', 'echo.demo.:7'],
    ['a 64-character label', `${'a'.repeat(64)}.com:80`],
    ['a 254-character hostname', `${HOSTNAME_253}c:80`],
    ['userinfo', 'user@echo.demo:80'],
    ['a path', 'echo.demo:80/x'],
    ['a scheme', 'http://echo.demo:80'],
    ['a NUL byte', 'echo.demo\u0000:80'],
  ];
  it.each(rejected)('%s', (_, text) => {
    expect(parseAuthority(text)).toBeNull();
  });

  // Not IPv4 literals to net.isIP, yet getaddrinfo reads them as inet_aton does (127.1 → 127.0.0.1,
  // 010 → 8): accepted as hostnames, an outbound target such as `10.0.1.010:80` would bypass the registry.
  // RFC 1123 §2.1: a host name is never all-numeric dotted form.
  it.each([
    ['a short-form IPv4 address', '127.1:80'],
    ['an IPv4 address with a leading-zero octet', '10.0.1.010:80'],
    ['a hexadecimal IPv4 octet', '0x7f.0.0.1:80'],
  ])('%s (neither an IP literal nor a hostname)', (_, text) => {
    expect(parseAuthority(text)).toBeNull();
  });
});

describe('formatAuthority', () => {
  it('brackets IPv6 and leaves IPv4 and hostnames bare', () => {
    expect(formatAuthority('fd00::1', 80)).toBe('[fd00::1]:80');
    expect(formatAuthority('10.0.0.1', 80)).toBe('10.0.0.1:80');
    expect(formatAuthority('echo.demo', 7)).toBe('echo.demo:7');
  });

  it('round-trips with parseAuthority for any IP and port, an IPv6 address in its canonical form (RFC 5952)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65_535 }), (host, port) => {
        const parsed = parseAuthority(formatAuthority(host, port));
        // The WHATWG URL parser writes IPv6 hosts in RFC 5952's form; dotted IPv4-mapped ones stay as written.
        const canonical = host.includes(':') && !host.includes('.') ? new URL(`http://[${host}]`).hostname.slice(1, -1) : host;
        expect(parsed).toEqual({ host: canonical, port, family: host.includes(':') ? 6 : 4 });
      }),
    );
  });

  it('round-trips with parseAuthority for any lower-case DNS name and port', () => {
    const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
    // A name whose last label is alphabetic is never mistaken for an IP address.
    const name = fc.tuple(fc.array(label, { minLength: 0, maxLength: 4 }), fc.stringMatching(/^[a-z]{1,8}$/)).map(([labels, last]) => [...labels, last].join('.'));
    fc.assert(
      fc.property(name, fc.integer({ min: 1, max: 65_535 }), (host, port) => {
        expect(parseAuthority(formatAuthority(host, port))).toEqual({ host, port, family: 0 });
      }),
    );
  });
});
