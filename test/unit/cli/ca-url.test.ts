// --ca of `ambit proxy` and `ambit agent`: a CA URL that cannot be one is bad input (USAGE), said at once, not a CA out
// of reach retried for ever.
import { describe, expect, it } from 'vitest';
import { parseCaUrl } from '../../../src/cli/args.ts';
import { AmbitError } from '../../../src/errors.ts';

describe('--ca', () => {
  it.each([
    ['https://127.0.0.1:15012', 'https://127.0.0.1:15012'],
    ['https://ca.mesh.internal:15012/', 'https://ca.mesh.internal:15012'],
    ['https://[::1]:15012', 'https://[::1]:15012'],
    ['https://CA.Mesh.Internal', 'https://ca.mesh.internal'],
  ])('takes %s as %s', (text, url) => {
    expect(parseCaUrl(text)).toBe(url);
  });

  it.each([
    ['http://127.0.0.1:15012', 'must be an https:// URL'],
    ['https://127.0.0.1:abc', 'is not a URL'],
    ['https://:15012', 'is not a URL'],
    ['https://127.0.0.1:15012#', 'no path, query, fragment or user'],
    ['https://127.0.0.1:15012/?', 'no path, query, fragment or user'],
    ['https://127.0.0.1:15012/v1', 'no path, query, fragment or user'],
    ['https://user@127.0.0.1:15012', 'no path, query, fragment or user'],
  ])('refuses %s as USAGE, naming it', (text, says) => {
    let caught: unknown;
    try {
      parseCaUrl(text);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(AmbitError);
    expect((caught as AmbitError).code).toBe('USAGE');
    expect((caught as AmbitError).message).toContain(says);
  });
});
