import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AmbitError, ERROR_CODES } from '../../src/errors.ts';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const documented = new Set([...readme.matchAll(/^\| `([A-Z0-9_]+)` \|/gm)].map((m) => m[1] as string));

describe('error codes', () => {
  it('documents every code the code defines', () => {
    const missing = Object.keys(ERROR_CODES).filter((code) => !documented.has(code));
    expect(missing).toEqual([]);
  });

  it('defines every code the README documents', () => {
    const unknown = [...documented].filter((code) => !(code in ERROR_CODES));
    expect(unknown).toEqual([]);
  });

  it('carries the code, the message and the default hint of its code', () => {
    const error = new AmbitError('SVID_EXPIRED', 'leaf expired at 2026-01-01T00:00:00Z');
    expect(error.code).toBe('SVID_EXPIRED');
    expect(error.hint).toBe(ERROR_CODES.SVID_EXPIRED);
    expect(JSON.parse(JSON.stringify(error))).toMatchObject({ code: 'SVID_EXPIRED' });
  });
});
