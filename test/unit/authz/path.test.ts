import { describe, expect, it } from 'vitest';
import { normalizePath } from '../../../src/authz/path.ts';

describe('request path normalisation before path rules', () => {
  const cases: Array<[string, string, string | null]> = [
    ['leaves an ordinary path untouched', '/api/v1/items', '/api/v1/items'],
    ['leaves the root untouched', '/', '/'],
    ['merges repeated slashes', '//admin//users', '/admin/users'],
    ['resolves dot segments before merging slashes, as Envoy does: ".." takes the empty segment', '/app//../admin', '/app/admin'],
    ['removes single-dot segments', '/./admin/./x', '/admin/x'],
    ['resolves double-dot segments', '/public/../admin', '/admin'],
    ['does not climb above the root', '/../../admin', '/admin'],
    ['keeps a trailing slash after a dot segment', '/admin/.', '/admin/'],
    ['decodes percent-encoded unreserved characters', '/%61dmin', '/admin'],
    ['decodes encoded dots before resolving them', '/public/%2e%2e/admin', '/admin'],
    ['keeps reserved escapes encoded, normalising their case', '/a%2fb', '/a%2Fb'],
    ['refuses a truncated escape', '/admin%2', null],
    ['refuses a non-hex escape', '/%zzadmin', null],
    ['leaves an asterisk-form target to its caller, which refuses it', '*', '*'],
    ['reads a backslash as a slash, as Envoy does', '/public\\..\\admin', '/admin'],
    ['leaves a target that does not start with "/" to its caller, which refuses it', '\\admin', '\\admin'],
    ['keeps an encoded backslash encoded', '/a%5cb', '/a%5Cb'],
    ['refuses a fragment', '/admin#x', null],
    ['refuses a fragment on a path that needs no other change', '/.env#', null],
    // Envoy's canonicaliser (Chromium's kPathCharLookup) escapes these: a DENY of `/files/a%7Cb` must deny `/files/a|b`.
    ['escapes "|" as Envoy does', '/files/a|b', '/files/a%7Cb'],
    ['escapes space, " < > ^ ` { } and DEL', '/a b"<>^`{}\x7f', '/a%20b%22%3C%3E%5E%60%7B%7D%7F'],
    ['escapes control characters', '/a\tb\x01', '/a%09b%01'],
    ['escapes each byte from 0x80 (Node gives a path one character per byte: é in UTF-8 is two)', '/caf\xc3\xa9', '/caf%C3%A9'],
    ['reads an escaped "|" the same as a raw one', '/files/a%7cb', '/files/a%7Cb'],
    ['leaves [ ] and the sub-delimiters as they are, as Envoy does', "/a[b]!$&'()*+,;=:@", "/a[b]!$&'()*+,;=:@"],
    ['refuses a character past 0xFF, which no request path carries', '/caf\u00e9\u65e5', null],
  ];
  for (const [name, input, expected] of cases) {
    it(`${name}: ${input}`, () => {
      expect(normalizePath(input)).toBe(expected);
    });
  }

  describe('with the mesh\'s pathNormalization DECODE_AND_MERGE_SLASHES', () => {
    const decoding: Array<[string, string, string | null]> = [
      ['decodes an escaped slash, as Go and Spring read it', '/api/admin%2Fusers', '/api/admin/users'],
      ['decodes a lower-case escaped slash', '/api/admin%2fusers', '/api/admin/users'],
      ['decodes an escaped backslash to a slash', '/api/admin%5cusers', '/api/admin/users'],
      ['decodes before resolving dot segments', '/public/..%2Fadmin', '/admin'],
      ['decodes escaped dots and slashes together', '/public/%2e%2e%2fadmin', '/admin'],
      ['merges the slashes decoding made', '/%2F%2Fadmin', '/admin'],
      ['leaves a double-escaped slash as it is (decoded once, as Envoy does)', '/a%252Fb', '/a%252Fb'],
      ['still refuses a truncated escape', '/admin%2', null],
      // Istio's own table for this mode (pilot's path normalisation tests): unescaped, dot segments resolved, then merged.
      ['resolves dot segments before merging (Istio\'s table)', '/%5Capp%2f%5c%2F%2e%2e%2fadmin%5c\\abc', '/app/admin/abc'],
      ['lets ".." take an empty segment, as Envoy does', '/app%2F%2F..%2Fadmin', '/app/admin'],
    ];
    for (const [name, input, expected] of decoding) {
      it(`${name}: ${input}`, () => {
        expect(normalizePath(input, 'DECODE_AND_MERGE_SLASHES')).toBe(expected);
      });
    }

    it('is the only mode that decodes them', () => {
      expect(normalizePath('/api/admin%2Fusers', 'MERGE_SLASHES')).toBe('/api/admin%2Fusers');
      expect(normalizePath('/api/admin%5Cusers')).toBe('/api/admin%5Cusers');
    });
  });

  it('returns the very same string when nothing needs changing (no allocation on the common path)', () => {
    const path = '/api/v1/items';
    expect(normalizePath(path)).toBe(path);
  });
});
