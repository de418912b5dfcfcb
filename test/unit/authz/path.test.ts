import { describe, expect, it } from 'vitest';
import { normalizePath } from '../../../src/authz/path.ts';

describe('request path normalisation before path rules', () => {
  const cases: Array<[string, string, string | null]> = [
    ['leaves an ordinary path untouched', '/api/v1/items', '/api/v1/items'],
    ['leaves the root untouched', '/', '/'],
    ['merges repeated slashes', '//admin//users', '/admin/users'],
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
  ];
  for (const [name, input, expected] of cases) {
    it(`${name}: ${input}`, () => {
      expect(normalizePath(input)).toBe(expected);
    });
  }

  it('returns the very same string when nothing needs changing (no allocation on the common path)', () => {
    const path = '/api/v1/items';
    expect(normalizePath(path)).toBe(path);
  });
});
