import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AmbitError } from '../../../src/errors.ts';
import type { ErrorCode } from '../../../src/errors.ts';
import {
  AMBIGUOUS_NAMESPACE,
  MAX_SPIFFE_ID_BYTES,
  MAX_TRUST_DOMAIN_BYTES,
  namespaceOfPath,
  nodeId,
  parseNodeId,
  parseSpiffeId,
  parseWorkloadId,
  trustDomainId,
  tryParseSpiffeId,
  validateTrustDomain,
  workloadId,
} from '../../../src/identity/spiffe-id.ts';

// Non-ASCII that a careless check might let through: look-alikes, emoji (a surrogate pair), a lone surrogate.
// (fast-check's full-Unicode units cost about a second to warm up; these plus all of ASCII cover the classes.)
const NON_ASCII = fc.constantFrom('\u00e4', '\uff45', '\u3002', '\u{1F600}', '\ud800', '\u0080', '\u2024', '\u0131');

function codeOf(run: () => unknown): ErrorCode | 'no error' {
  try {
    run();
  } catch (error) {
    if (error instanceof AmbitError) return error.code;
    throw error;
  }
  return 'no error';
}

// [case name, input, trust domain, path]
const VALID: Array<[string, string, string, string]> = [
  ['trust domain ID', 'spiffe://example.org', 'example.org', ''],
  ['workload path', 'spiffe://example.org/ns/default/sa/web', 'example.org', '/ns/default/sa/web'],
  ['segment starting with a dot', 'spiffe://td/.a', 'td', '/.a'],
  ['segment of two dots and a letter', 'spiffe://td/..a', 'td', '/..a'],
  ['segment of three dots', 'spiffe://td/...', 'td', '/...'],
  ['IPv4-looking trust domain', 'spiffe://192.168.0.1/x', '192.168.0.1', '/x'],
  ['impossible IPv4 trust domain', 'spiffe://999.999.999.999', '999.999.999.999', ''],
  ['trust domain starting with a dash', 'spiffe://-x/y', '-x', '/y'],
  ['trust domain ending with a dot', 'spiffe://x./y', 'x.', '/y'],
  ['underscore-only trust domain', 'spiffe://_', '_', ''],
  ['uppercase path kept as is', 'spiffe://td/PATH/Mixed', 'td', '/PATH/Mixed'],
  ['every path character class', 'spiffe://a-b_c.d/aZ09.-_', 'a-b_c.d', '/aZ09.-_'],
  ['longest ID accepted', `spiffe://td/${'a'.repeat(MAX_SPIFFE_ID_BYTES - 'spiffe://td/'.length)}`, 'td', `/${'a'.repeat(MAX_SPIFFE_ID_BYTES - 'spiffe://td/'.length)}`],
  ['longest trust domain accepted', `spiffe://${'t'.repeat(MAX_TRUST_DOMAIN_BYTES)}/x`, 't'.repeat(MAX_TRUST_DOMAIN_BYTES), '/x'],
];

const INVALID: Array<[string, string, ErrorCode]> = [
  ['empty string', '', 'SPIFFE_ID_EMPTY'],
  ['no scheme', 'example.org/x', 'SPIFFE_ID_SCHEME'],
  ['capitalised scheme', 'Spiffe://td/x', 'SPIFFE_ID_SCHEME'],
  ['uppercase scheme', 'SPIFFE://td/x', 'SPIFFE_ID_SCHEME'],
  ['other scheme', 'https://td/x', 'SPIFFE_ID_SCHEME'],
  ['one slash after the scheme', 'spiffe:/td/x', 'SPIFFE_ID_SCHEME'],
  ['leading space', ' spiffe://td/x', 'SPIFFE_ID_SCHEME'],
  ['uppercase trust domain', 'spiffe://Example.org', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['port', 'spiffe://td:443/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['userinfo', 'spiffe://u@td/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['percent-encoded trust domain', 'spiffe://t%64/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['query after the trust domain', 'spiffe://td?q', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['fragment after the trust domain', 'spiffe://td#f', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['IPv6 literal', 'spiffe://[::1]/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['fullwidth letter in the trust domain', 'spiffe://ｅxample.org/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['ideographic full stop in the trust domain', 'spiffe://example\u3002org/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['emoji in the trust domain', 'spiffe://td\u{1F600}/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['NUL in the trust domain', 'spiffe://td\u0000.evil/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['space in the trust domain', 'spiffe://t d/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
  ['trust domain too long', `spiffe://${'t'.repeat(MAX_TRUST_DOMAIN_BYTES + 1)}/x`, 'SPIFFE_ID_TRUST_DOMAIN_TOO_LONG'],
  ['scheme only', 'spiffe://', 'SPIFFE_ID_TRUST_DOMAIN_MISSING'],
  ['path without trust domain', 'spiffe:///x', 'SPIFFE_ID_TRUST_DOMAIN_MISSING'],
  ['trailing slash after the trust domain', 'spiffe://td/', 'SPIFFE_ID_TRAILING_SLASH'],
  ['trailing slash after a segment', 'spiffe://td/a/', 'SPIFFE_ID_TRAILING_SLASH'],
  ['two slashes after the trust domain', 'spiffe://td//', 'SPIFFE_ID_EMPTY_SEGMENT'],
  ['empty inner segment', 'spiffe://td/a//b', 'SPIFFE_ID_EMPTY_SEGMENT'],
  ['dot segment', 'spiffe://td/a/./b', 'SPIFFE_ID_DOT_SEGMENT'],
  ['dot-dot segment', 'spiffe://td/a/../b', 'SPIFFE_ID_DOT_SEGMENT'],
  ['final dot segment', 'spiffe://td/a/.', 'SPIFFE_ID_DOT_SEGMENT'],
  ['final dot-dot segment', 'spiffe://td/..', 'SPIFFE_ID_DOT_SEGMENT'],
  ['dot-dot segment before a bad character', 'spiffe://td/../x?', 'SPIFFE_ID_DOT_SEGMENT'],
  ['percent-encoded dot-dot segment', 'spiffe://td/a/%2e%2e/b', 'SPIFFE_ID_PATH_CHARS'],
  ['query in the path', 'spiffe://td/x?q', 'SPIFFE_ID_PATH_CHARS'],
  ['fragment in the path', 'spiffe://td/x#f', 'SPIFFE_ID_PATH_CHARS'],
  ['colon in the path', 'spiffe://td/a:b', 'SPIFFE_ID_PATH_CHARS'],
  ['tilde in the path', 'spiffe://td/~a', 'SPIFFE_ID_PATH_CHARS'],
  ['fullwidth letter in the path', 'spiffe://td/ｐath', 'SPIFFE_ID_PATH_CHARS'],
  ['emoji in the path', 'spiffe://td/\u{1F600}', 'SPIFFE_ID_PATH_CHARS'],
  ['NUL in the path', 'spiffe://td/a\u0000b', 'SPIFFE_ID_PATH_CHARS'],
  ['non-ASCII letter in the path', 'spiffe://td/\u00e4', 'SPIFFE_ID_PATH_CHARS'],
  ['bad character before a later empty segment', 'spiffe://td/a%//b', 'SPIFFE_ID_PATH_CHARS'],
  ['newline at the end', 'spiffe://td/x\n', 'SPIFFE_ID_PATH_CHARS'],
  ['ID too long', `spiffe://td/${'a'.repeat(MAX_SPIFFE_ID_BYTES - 'spiffe://td/'.length + 1)}`, 'SPIFFE_ID_TOO_LONG'],
  ['very long ID with bad characters', `spiffe://TD/${'%'.repeat(100_000)}`, 'SPIFFE_ID_TOO_LONG'],
];

describe('parseSpiffeId', () => {
  it.each(VALID)('accepts %s', (_name, input, trustDomain, path) => {
    expect(parseSpiffeId(input)).toEqual({ id: input, trustDomain, path });
    expect(tryParseSpiffeId(input)).toEqual({ id: input, trustDomain, path });
  });

  it.each(INVALID)('rejects %s', (_name, input, code) => {
    expect(codeOf(() => parseSpiffeId(input))).toBe(code);
    const result = tryParseSpiffeId(input);
    expect(result).toBeInstanceOf(AmbitError);
    expect((result as AmbitError).code).toBe(code);
  });

  it('never throws from tryParseSpiffeId', () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.oneof(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 1 }), NON_ASCII), maxLength: 64 }), (text) => {
        const result = tryParseSpiffeId(`spiffe://${text}`);
        expect(result instanceof AmbitError || typeof result.id === 'string').toBe(true);
      }),
    );
  });

  it('keeps an error message short for a very long input', () => {
    const result = tryParseSpiffeId(`spiffe://${'x'.repeat(10_000)}/`);
    expect((result as AmbitError).message.length).toBeLessThan(300);
  });
});

describe('validateTrustDomain', () => {
  it.each([['example.org'], ['-x'], ['_'], ['999.999.999.999'], ['t'.repeat(MAX_TRUST_DOMAIN_BYTES)]])('accepts %s', (name) => {
    expect(validateTrustDomain(name)).toBe(name);
  });

  it.each<[string, string, ErrorCode]>([
    ['empty name', '', 'SPIFFE_ID_EMPTY'],
    ['uppercase', 'Example.org', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['port', 'td:443', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['a full ID', 'spiffe://td', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['a path', 'td/x', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['non-ASCII', 'tｄ', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['too long name', 't'.repeat(MAX_TRUST_DOMAIN_BYTES + 1), 'SPIFFE_ID_TRUST_DOMAIN_TOO_LONG'],
  ])('rejects %s', (_name, input, code) => {
    expect(codeOf(() => validateTrustDomain(input))).toBe(code);
  });

  it('builds the trust domain ID', () => {
    expect(trustDomainId('example.org')).toBe('spiffe://example.org');
    expect(codeOf(() => trustDomainId('Example.org'))).toBe('SPIFFE_ID_TRUST_DOMAIN_CHARS');
  });
});

describe('workload IDs', () => {
  it('round-trips through workloadId and parseWorkloadId', () => {
    const id = workloadId('cluster.local', 'default', 'web-app');
    expect(id).toBe('spiffe://cluster.local/ns/default/sa/web-app');
    expect(parseWorkloadId(id)).toEqual({ trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'web-app' });
  });

  it.each<[string, string, string, string, ErrorCode]>([
    ['an empty namespace', 'td', '', 'sa', 'SPIFFE_ID_EMPTY_SEGMENT'],
    ['a namespace with a slash', 'td', 'a/b', 'sa', 'SPIFFE_ID_PATH_CHARS'],
    ['a dot-dot service account', 'td', 'ns', '..', 'SPIFFE_ID_DOT_SEGMENT'],
    ['a service account with a colon', 'td', 'ns', 'a:b', 'SPIFFE_ID_PATH_CHARS'],
    ['an uppercase trust domain', 'TD', 'ns', 'sa', 'SPIFFE_ID_TRUST_DOMAIN_CHARS'],
    ['an ID over the length limit', 'td', 'n'.repeat(1500), 's'.repeat(1500), 'SPIFFE_ID_TOO_LONG'],
  ])('refuses to build a workload ID from %s', (_name, trustDomain, namespace, serviceAccount, code) => {
    expect(codeOf(() => workloadId(trustDomain, namespace, serviceAccount))).toBe(code);
  });

  it.each<[string, string, ErrorCode]>([
    ['a trust domain ID', 'spiffe://td', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['a node ID', 'spiffe://td/ambit/node/n1', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['a path missing the service account', 'spiffe://td/ns/a/sa', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['an extra segment', 'spiffe://td/ns/a/sa/b/c', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['swapped markers', 'spiffe://td/sa/a/ns/b', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['uppercase markers', 'spiffe://td/NS/a/SA/b', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['a prefix before the markers', 'spiffe://td/x/ns/a/sa/b', 'SPIFFE_ID_NOT_WORKLOAD'],
    ['an invalid SPIFFE ID', 'spiffe://td/ns/a/sa/b/', 'SPIFFE_ID_TRAILING_SLASH'],
  ])('parseWorkloadId rejects %s', (_name, input, code) => {
    expect(codeOf(() => parseWorkloadId(input))).toBe(code);
  });
});

describe('the namespace a policy sees in an ID (Istio: `.*/ns/NAME/.*` on the principal)', () => {
  it.each([
    ['a workload ID', '/ns/shop/sa/web', 'shop'],
    ['a workload ID in a namespace named ns', '/ns/ns/sa/default', 'ns'],
    ['a workload ID whose service account is ns', '/ns/shop/sa/ns', 'shop'],
    ['a /ns/ deeper in a federated ID', '/tenant/ns/prod/sa/x', 'prod'],
    ['the same namespace twice', '/ns/a/x/ns/a/y', 'a'],
    ['a node ID', '/ambit/node/n1', null],
    ['a trailing /ns/NAME, which the pattern needs a "/" after', '/sa/x/ns/prod', null],
    ['an empty name', '/ns//sa/x', null],
  ])('%s: %s → %s', (_what, path, expected) => {
    expect(namespaceOfPath(path)).toBe(expected);
  });

  it.each([
    ['two namespaces', '/ns/demo/sa/x/ns/prod/y'],
    ['overlapping ones outside the workload shape: /x/ns/ns/y/ is in ns and in y', '/x/ns/ns/y/z'],
  ])('is ambiguous for %s: %s', (_what, path) => {
    expect(namespaceOfPath(path)).toBe(AMBIGUOUS_NAMESPACE);
  });
});

describe('node IDs', () => {
  it('round-trips through nodeId and parseNodeId', () => {
    const id = nodeId('example.org', 'worker-1');
    expect(id).toBe('spiffe://example.org/ambit/node/worker-1');
    expect(parseNodeId(id)).toEqual({ trustDomain: 'example.org', nodeName: 'worker-1' });
  });

  it.each([
    ['a workload ID', 'spiffe://td/ns/a/sa/b'],
    ['a trust domain ID', 'spiffe://td'],
    ['the node prefix alone', 'spiffe://td/ambit/node'],
    ['an extra segment', 'spiffe://td/ambit/node/n1/x'],
    ['an uppercase prefix', 'spiffe://td/Ambit/node/n1'],
  ])('parseNodeId returns null for %s', (_name, input) => {
    expect(parseNodeId(input)).toBeNull();
  });

  it('parseNodeId throws for an invalid SPIFFE ID', () => {
    expect(codeOf(() => parseNodeId('spiffe://td/ambit/node/'))).toBe('SPIFFE_ID_TRAILING_SLASH');
  });

  it.each<[string, string, string, ErrorCode]>([
    ['an empty node name', 'td', '', 'SPIFFE_ID_EMPTY_SEGMENT'],
    ['a dot node name', 'td', '.', 'SPIFFE_ID_DOT_SEGMENT'],
    ['a node name with a slash', 'td', 'a/b', 'SPIFFE_ID_PATH_CHARS'],
    ['an empty trust domain', '', 'n1', 'SPIFFE_ID_EMPTY'],
  ])('refuses to build a node ID from %s', (_name, trustDomain, nodeName, code) => {
    expect(codeOf(() => nodeId(trustDomain, nodeName))).toBe(code);
  });
});

const TRUST_DOMAIN_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789.-_'.split('');
const PATH_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_'.split('');
const trustDomainArb = fc.string({ unit: fc.constantFrom(...TRUST_DOMAIN_ALPHABET), minLength: 1, maxLength: 40 });
const segmentArb = fc
  .string({ unit: fc.constantFrom(...PATH_ALPHABET), minLength: 1, maxLength: 20 })
  .filter((segment) => segment !== '.' && segment !== '..');

describe('properties', () => {
  it('parses every ID built from valid parts back to the same parts', () => {
    fc.assert(
      fc.property(trustDomainArb, fc.array(segmentArb, { maxLength: 8 }), (trustDomain, segments) => {
        const path = segments.map((segment) => `/${segment}`).join('');
        const id = `spiffe://${trustDomain}${path}`;
        expect(parseSpiffeId(id)).toEqual({ id, trustDomain, path });
      }),
    );
  });

  it('round-trips random workload and node IDs', () => {
    fc.assert(
      fc.property(trustDomainArb, segmentArb, segmentArb, (trustDomain, first, second) => {
        expect(parseWorkloadId(workloadId(trustDomain, first, second))).toEqual({ trustDomain, namespace: first, serviceAccount: second });
        expect(parseNodeId(nodeId(trustDomain, first))).toEqual({ trustDomain, nodeName: first });
      }),
    );
  });

  it('rejects any trust domain containing a forbidden character', () => {
    const forbidden = fc.oneof(
      fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 1 }).filter((char) => !TRUST_DOMAIN_ALPHABET.includes(char) && char !== '/'),
      NON_ASCII,
    );
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom(...TRUST_DOMAIN_ALPHABET), maxLength: 10 }), forbidden, trustDomainArb, fc.array(segmentArb, { maxLength: 3 }), (before, bad, after, segments) => {
        const trustDomain = `${before}${bad}${after}`;
        const path = segments.map((segment) => `/${segment}`).join('');
        expect(codeOf(() => parseSpiffeId(`spiffe://${trustDomain}${path}`))).toBe('SPIFFE_ID_TRUST_DOMAIN_CHARS');
        expect(codeOf(() => validateTrustDomain(trustDomain))).toBe('SPIFFE_ID_TRUST_DOMAIN_CHARS');
      }),
    );
  });
});
