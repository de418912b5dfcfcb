// `ambit svid inspect` and `ambit svid verify`, run as the real CLI process on files written by the test CA.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUILT_CLI } from '../../../bench/system/build.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as x509 from '../../../src/identity/x509.ts';
import { encodeBundle, encodePemBundle } from '../../../src/identity/bundle.ts';
import { certificatesToPem, fingerprintOf, generateKeyPair } from '../../../src/identity/svid.ts';
import type { Certificate } from '../../../src/identity/svid.ts';
import { formatIpAddress, parseRfc3339 } from '../../../src/cli/svid.ts';
import { formatSpan } from '../../../src/identity/timers.ts';
import { AmbitError } from '../../../src/errors.ts';
import { craftCertificate, createTestCa, HOUR_MS, issueTestSvid } from '../../helpers/certs.ts';

const cli = BUILT_CLI;

const WEB = 'spiffe://cluster.local/ns/default/sa/web';
const DB = 'spiffe://cluster.local/ns/default/sa/db';
const OTHER = 'spiffe://other.test/ns/default/sa/api';

let dir: string;

/** Absolute path of a fixture written in beforeAll. */
function file(name: string): string {
  return join(dir, name);
}

function ambit(...args: string[]) {
  return spawnSync(process.execPath, [cli, 'svid', ...args], { encoding: 'utf8', timeout: 20_000 });
}

interface Verdict {
  valid: boolean;
  spiffeId: string | null;
  error: { code: string; message: string } | null;
}

/** Runs `svid verify` and checks the output contract: exactly one JSON line on stdout, nothing on stderr. */
function verify(...args: string[]): { status: number | null; verdict: Verdict } {
  const result = ambit('verify', ...args);
  expect(result.stderr).toBe('');
  const lines = result.stdout.split('\n');
  expect(lines).toHaveLength(2);
  expect(lines[1]).toBe('');
  const verdict = JSON.parse(lines[0] as string) as Verdict;
  expect(Object.keys(verdict)).toEqual(['valid', 'spiffeId', 'error']);
  return { status: result.status, verdict };
}

/** Checks the bad-usage contract (exit 2, no stdout, one stderr line) and returns the code on that line. */
function failureCode(result: ReturnType<typeof ambit>): string | undefined {
  expect(result.status).toBe(2);
  expect(result.stdout).toBe('');
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  return /\[([A-Z_]+)\]$/.exec(result.stderr.trimEnd())?.[1];
}

/** DER TLV, for certificates with subjectAltNames the x509 library cannot write (or read). */
function der(identifier: number, content: Uint8Array | string): Uint8Array {
  const body = typeof content === 'string' ? Buffer.from(content, 'latin1') : content;
  const length = body.length < 0x80 ? [body.length] : [0x82, body.length >> 8, body.length & 0xff];
  return Uint8Array.from([identifier, ...length, ...body]);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return Uint8Array.from(parts.flatMap((part) => [...part]));
}

const IPV6_DOC = Uint8Array.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/** A self-signed leaf whose SAN extension is exactly `generalNames` (DER GeneralNames content). */
async function certWithSans(generalNames: Uint8Array): Promise<Certificate> {
  const keys = await generateKeyPair();
  const now = Date.now();
  return x509.X509CertificateGenerator.create({
    serialNumber: '01',
    subject: 'CN=all the names',
    issuer: 'CN=all the names',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + HOUR_MS),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.Extension('2.5.29.17', false, der(0x30, generalNames)),
    ],
  });
}

let webLeaf: Certificate;
let chainLeaf: Certificate;
let chainIntermediate: Certificate;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-svid-cli-'));
  const write = (name: string, content: string | Uint8Array) => writeFileSync(file(name), content);

  const caA = await createTestCa('cluster.local');
  const caAWithIntermediate = await createTestCa('cluster.local', { intermediate: true });
  const caB = await createTestCa('other.test', { intermediate: true });
  write('bundle-a.pem', encodePemBundle(caA.bundle));
  write('bundle-a.json', encodeBundle(caA.bundle));
  write('bundle-a-intermediate.pem', encodePemBundle(caAWithIntermediate.bundle));
  write('bundle-b.pem', encodePemBundle(caB.bundle));
  write('bundle-a-and-b.pem', encodePemBundle(caA.bundle) + encodePemBundle(caB.bundle));

  const web = await issueTestSvid(caA, WEB);
  webLeaf = web.chain[0] as Certificate;
  write('web.pem', web.certPem);
  write('web.der', new Uint8Array(webLeaf.rawData));
  write('web.key', web.keyPem);
  write('other.pem', (await issueTestSvid(caB, OTHER)).certPem);

  const chained = await issueTestSvid(caAWithIntermediate, WEB);
  chainLeaf = chained.chain[0] as Certificate;
  chainIntermediate = chained.chain[1] as Certificate;
  write('chain.pem', chained.certPem);
  write('chain-leaf-only.pem', certificatesToPem([chainLeaf]));

  // Claims cluster.local, but other.test's intermediate signed it.
  write('forged.pem', (await issueTestSvid(caB, WEB)).certPem);

  // Lifetimes pinned to known instants, to judge with --at.
  const dated = await createTestCa('cluster.local', { now: new Date('2026-11-23T00:00:00Z'), ttlMs: 48 * HOUR_MS });
  write('bundle-dated.pem', encodePemBundle(dated.bundle));
  write('dated.pem', (await issueTestSvid(dated, WEB, { now: new Date('2026-11-23T12:00:00Z'), ttlMs: HOUR_MS })).certPem);

  write('two-uris.pem', certificatesToPem([(await craftCertificate(caA.root, { uris: [WEB, DB] })).cert]));
  write('weak-key-usage.pem', certificatesToPem([(await craftCertificate(caA.root, { uris: [WEB], keyUsageCritical: false })).cert]));
  write('no-san.pem', certificatesToPem([(await craftCertificate(caA.root, { uris: null })).cert]));
  const now = Date.now();
  const expired = await craftCertificate(null, { uris: [WEB], notBefore: new Date(now - 5 * HOUR_MS), notAfter: new Date(now - 3 * HOUR_MS - 30_000) });
  write('expired.pem', certificatesToPem([expired.cert]));
  write('root-a.pem', certificatesToPem([caA.root.cert]));

  const allNames = await certWithSans(
    concat(
      der(0x86, WEB),
      der(0x82, 'web.default.svc'),
      der(0x87, Uint8Array.from([10, 0, 0, 7])),
      der(0x87, IPV6_DOC),
      der(0x81, 'ops@example.com'),
      // otherName of a type the x509 library does not know (it drops such names): 1.2.3.4 = UTF8String "hello"
      der(0xa0, concat(der(0x06, Uint8Array.from([0x2a, 3, 4])), der(0xa0, der(0x0c, 'hello')))),
      der(0x88, Uint8Array.from([0x2a, 3, 4, 5])),
      // directoryName CN=dir
      der(0xa4, der(0x30, der(0x31, der(0x30, concat(der(0x06, Uint8Array.from([0x55, 4, 3])), der(0x0c, 'dir')))))),
      // A hostile DNS name trying to forge an output line.
      der(0x82, 'evil.example\nFORGED LINE'),
    ),
  );
  write('all-names.pem', certificatesToPem([allNames]));

  write('garbage.txt', 'this is not a certificate, nor a bundle\n');
  write('broken-bundle.json', '{"keys": 5}');
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('ambit svid verify', () => {
  it('accepts a leaf signed by a root of its trust domain, given a PEM bundle', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), file('web.pem'));
    expect(status).toBe(0);
    expect(verdict).toEqual({ valid: true, spiffeId: WEB, error: null });
  });

  it('accepts a leaf signed by a root of its trust domain, given a SPIFFE JSON bundle', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.json'), file('web.pem'));
    expect(status).toBe(0);
    expect(verdict).toEqual({ valid: true, spiffeId: WEB, error: null });
  });

  it('accepts a DER leaf', () => {
    expect(verify('--bundle', file('bundle-a.pem'), file('web.der')).status).toBe(0);
  });

  it('accepts a leaf followed by the intermediate that signed it', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a-intermediate.pem'), file('chain.pem'));
    expect(status).toBe(0);
    expect(verdict.valid).toBe(true);
  });

  it('rejects a leaf whose intermediate is missing as SVID_CHAIN_INVALID', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a-intermediate.pem'), file('chain-leaf-only.pem'));
    expect(status).toBe(1);
    expect(verdict.error?.code).toBe('SVID_CHAIN_INVALID');
    expect(verdict.spiffeId).toBe(WEB);
  });

  it('rejects a leaf signed by another trust domain\'s CA as TRUST_DOMAIN_MISMATCH when the chain presents that CA, even with only its own domain\'s roots in the bundle', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), file('forged.pem'));
    expect(status).toBe(1);
    expect(verdict.valid).toBe(false);
    expect(verdict.spiffeId).toBe(WEB);
    expect(verdict.error?.code).toBe('TRUST_DOMAIN_MISMATCH');
  });

  it('rejects a leaf signed by a CA whose roots the bundle does not hold as SVID_CHAIN_INVALID', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), file('other.pem'));
    expect(status).toBe(1);
    expect(verdict.error?.code).toBe('SVID_CHAIN_INVALID');
  });

  it('rejects a leaf signed by another trust domain\'s CA as TRUST_DOMAIN_MISMATCH when the bundle file also holds that domain\'s roots', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a-and-b.pem'), file('forged.pem'));
    expect(status).toBe(1);
    expect(verdict.error?.code).toBe('TRUST_DOMAIN_MISMATCH');
  });

  it('never lets roots that name another trust domain vouch for the leaf\'s, even when the bundle is taken to be the leaf\'s', () => {
    const { status, verdict } = verify('--bundle', file('bundle-b.pem'), file('forged.pem'));
    expect(status).toBe(1);
    expect(verdict.error?.code).toBe('TRUST_DOMAIN_MISMATCH');
  });

  it('still accepts the leaves of the bundle file that holds two trust domains\' roots', () => {
    expect(verify('--bundle', file('bundle-a-and-b.pem'), file('web.pem')).verdict.valid).toBe(true);
    expect(verify('--bundle', file('bundle-a-and-b.pem'), file('other.pem')).verdict).toEqual({ valid: true, spiffeId: OTHER, error: null });
  });

  it('accepts a leaf of the trust domain named by --trust-domain', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), '--trust-domain', 'cluster.local', file('web.pem'));
    expect(status).toBe(0);
    expect(verdict.valid).toBe(true);
  });

  it('rejects a leaf of another trust domain than --trust-domain as TRUST_DOMAIN_UNKNOWN', () => {
    const { status, verdict } = verify('--bundle', file('bundle-b.pem'), '--trust-domain', 'cluster.local', file('other.pem'));
    expect(status).toBe(1);
    expect(verdict.spiffeId).toBe(OTHER);
    expect(verdict.error?.code).toBe('TRUST_DOMAIN_UNKNOWN');
  });

  describe('--at', () => {
    // dated.pem: notBefore 2026-11-23T11:59:50Z (10 s cushion), notAfter 2026-11-23T13:00:00Z.
    const cases: { name: string; at: string; code: string | null }[] = [
      { name: 'accepts a time inside the validity period, given with an offset', at: '2026-11-23T14:30:00+02:00', code: null },
      { name: 'accepts the notAfter instant itself', at: '2026-11-23T13:00:00Z', code: null },
      { name: 'rejects a time before notBefore as SVID_NOT_YET_VALID', at: '2026-11-23T11:00:00Z', code: 'SVID_NOT_YET_VALID' },
      { name: 'rejects a time after expiry as SVID_EXPIRED', at: '2026-11-23T14:00:00Z', code: 'SVID_EXPIRED' },
      { name: 'rejects the first millisecond after notAfter as SVID_EXPIRED', at: '2026-11-23T13:00:00.001Z', code: 'SVID_EXPIRED' },
    ];
    it.each(cases)('$name', ({ at, code }) => {
      const { status, verdict } = verify('--bundle', file('bundle-dated.pem'), '--at', at, file('dated.pem'));
      expect(verdict.error?.code ?? null).toBe(code);
      expect(verdict.spiffeId).toBe(WEB);
      expect(status).toBe(code === null ? 0 : 1);
    });
  });

  it('rejects a certificate with two URI SANs as SVID_MULTIPLE_URI_SANS, with no SPIFFE ID', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), file('two-uris.pem'));
    expect(status).toBe(1);
    expect(verdict.spiffeId).toBeNull();
    expect(verdict.error?.code).toBe('SVID_MULTIPLE_URI_SANS');
  });

  it('reports the leaf\'s SPIFFE ID when it breaks another leaf rule', () => {
    const { status, verdict } = verify('--bundle', file('bundle-a.pem'), file('weak-key-usage.pem'));
    expect(status).toBe(1);
    expect(verdict.spiffeId).toBe(WEB);
    expect(verdict.error?.code).toBe('SVID_KEY_USAGE');
  });

  const badUsage: { name: string; args: () => string[]; code: string; names?: () => string }[] = [
    { name: 'no arguments at all', args: () => [], code: 'USAGE' },
    { name: 'verify without CERT', args: () => ['verify', '--bundle', file('bundle-a.pem')], code: 'USAGE' },
    { name: 'verify without --bundle', args: () => ['verify', file('web.pem')], code: 'USAGE' },
    { name: 'two CERT files', args: () => ['verify', '--bundle', file('bundle-a.pem'), file('web.pem'), file('chain.pem')], code: 'USAGE' },
    { name: '--at without an offset', args: () => ['verify', '--bundle', file('bundle-a.pem'), '--at', '2026-11-23T10:00:00', file('web.pem')], code: 'USAGE' },
    { name: '--at that is not a time', args: () => ['verify', '--bundle', file('bundle-a.pem'), '--at', 'yesterday', file('web.pem')], code: 'USAGE' },
    { name: '--at on a day that does not exist', args: () => ['verify', '--bundle', file('bundle-a.pem'), '--at', '2026-02-30T10:00:00Z', file('web.pem')], code: 'USAGE' },
    { name: 'an unknown flag', args: () => ['verify', '--bundle', file('bundle-a.pem'), '--frobnicate', file('web.pem')], code: 'USAGE' },
    { name: 'an unknown subcommand', args: () => ['frobnicate', file('web.pem')], code: 'USAGE' },
    { name: '--trust-domain that is not a trust domain', args: () => ['verify', '--bundle', file('bundle-a.pem'), '--trust-domain', 'Cluster.Local', file('web.pem')], code: 'SPIFFE_ID_TRUST_DOMAIN_CHARS' },
    { name: 'a bundle file that does not exist', args: () => ['verify', '--bundle', file('missing.pem'), file('web.pem')], code: 'FILE_READ', names: () => file('missing.pem') },
    { name: 'a CERT file that does not exist', args: () => ['verify', '--bundle', file('bundle-a.pem'), file('missing.pem')], code: 'FILE_READ', names: () => file('missing.pem') },
    { name: 'a bundle file that is not a bundle', args: () => ['verify', '--bundle', file('garbage.txt'), file('web.pem')], code: 'BUNDLE_INVALID', names: () => file('garbage.txt') },
    { name: 'a bundle file holding only a private key', args: () => ['verify', '--bundle', file('web.key'), file('web.pem')], code: 'BUNDLE_INVALID', names: () => file('web.key') },
    { name: 'a bundle file holding a leaf instead of CAs', args: () => ['verify', '--bundle', file('web.pem'), file('web.pem')], code: 'BUNDLE_INVALID', names: () => file('web.pem') },
    { name: 'a malformed JSON bundle', args: () => ['verify', '--bundle', file('broken-bundle.json'), file('web.pem')], code: 'BUNDLE_INVALID', names: () => file('broken-bundle.json') },
    { name: 'a CERT file that holds no certificate', args: () => ['verify', '--bundle', file('bundle-a.pem'), file('garbage.txt')], code: 'SVID_PARSE', names: () => file('garbage.txt') },
  ];
  it.each(badUsage)('exits 2 with one line on stderr and no JSON for $name', ({ args, code, names }) => {
    const result = ambit(...args());
    expect(failureCode(result)).toBe(code);
    if (names) expect(result.stderr).toContain(names());
  });
});

describe('ambit svid inspect', () => {
  it('shows each certificate of a chain with its SPIFFE ID, role, validity and fingerprint, then the leaf verdict', () => {
    const result = ambit('inspect', file('chain.pem'));
    expect(result.status).toBe(0);
    expect(result.stderr).toBe('');
    const out = result.stdout;
    expect(out).toMatch(/^#1 leaf$/m);
    expect(out).toMatch(/^#2 intermediate CA$/m);
    expect(out).toMatch(new RegExp(`SPIFFE ID: +${WEB}$`, 'm'));
    expect(out).toMatch(/SPIFFE ID: +spiffe:\/\/cluster\.local$/m);
    expect(out).toMatch(/validity: +\S+Z -> \S+Z \(expires in 5\dm\)$/m);
    expect(out).toContain(fingerprintOf(chainLeaf));
    expect(out).toContain(fingerprintOf(chainIntermediate));
    expect(out).toContain(`URI:${WEB}`);
    expect(out).toMatch(/key: +EC P-256$/m);
    expect(out).toMatch(/key usage: +digitalSignature, keyEncipherment, keyAgreement \(critical\)$/m);
    expect(out).toMatch(/ext key usage: +serverAuth, clientAuth$/m);
    expect(out.trimEnd().split('\n').at(-1)).toMatch(new RegExp(`^leaf SVID rules: ok for ${WEB}`));
  });

  it('calls a self-signed CA a root CA, and judges it unfit as a leaf', () => {
    const result = ambit('inspect', file('root-a.pem'));
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/^#1 root CA$/m);
    expect(result.stdout.trimEnd().split('\n').at(-1)).toContain('[SVID_NO_PATH]');
  });

  it('reads a DER certificate', () => {
    const result = ambit('inspect', file('web.der'));
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(fingerprintOf(webLeaf));
  });

  it('says how long ago an expired certificate expired', () => {
    const result = ambit('inspect', file('expired.pem'));
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/\(EXPIRED 3h(\d+m)? ago\)/);
  });

  it('shows the code that says why a certificate has no SPIFFE ID', () => {
    const result = ambit('inspect', file('no-san.pem'));
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/SPIFFE ID: +none \[SVID_NO_URI_SAN\]/);
    expect(result.stdout.trimEnd().split('\n').at(-1)).toContain('FAILED [SVID_NO_URI_SAN]');
  });

  it('shows both URI SANs of a certificate with two, and fails it as SVID_MULTIPLE_URI_SANS', () => {
    const result = ambit('inspect', file('two-uris.pem'));
    expect(result.status).toBe(0);
    expect(result.stdout).toContain(`URI:${WEB}`);
    expect(result.stdout).toContain(`URI:${DB}`);
    expect(result.stdout.trimEnd().split('\n').at(-1)).toContain('FAILED [SVID_MULTIPLE_URI_SANS]');
  });

  it('lists subjectAltNames of every type as encoded, including those the x509 library drops', () => {
    const result = ambit('inspect', file('all-names.pem'));
    expect(result.status).toBe(0);
    const sans = result.stdout.split('\n').filter((line) => line.startsWith('  SAN:')).map((line) => line.replace(/^ {2}SAN: +/, ''));
    expect(sans).toEqual([
      `URI:${WEB}`,
      'DNS:web.default.svc',
      'IP:10.0.0.7',
      'IP:2001:db8::1',
      'email:ops@example.com',
      'otherName:1.2.3.4="hello"',
      'registeredID:1.2.3.4.5',
      'dirName:CN=dir',
      'DNS:evil.example\\u{a}FORGED LINE',
    ]);
    expect(result.stdout).not.toMatch(/^FORGED LINE/m);
  });

  it('prints the same facts as JSON with --json', () => {
    const result = ambit('inspect', '--json', file('chain.pem'));
    expect(result.status).toBe(0);
    const report = JSON.parse(result.stdout) as {
      file: string;
      certificates: { role: string; spiffeId: string | null; sha256Fingerprint: string; validity: { status: string }; subjectAltNames: { type: string; value: string }[] }[];
      leafRules: { ok: boolean; spiffeId: string | null; error: unknown };
    };
    expect(report.file).toBe(file('chain.pem'));
    expect(report.certificates.map((cert) => cert.role)).toEqual(['leaf', 'intermediate CA']);
    expect(report.certificates[0]?.spiffeId).toBe(WEB);
    expect(report.certificates[0]?.sha256Fingerprint).toBe(fingerprintOf(chainLeaf));
    expect(report.certificates[0]?.validity.status).toBe('valid');
    expect(report.certificates[0]?.subjectAltNames).toEqual([{ type: 'URI', value: WEB }]);
    expect(report.leafRules).toEqual({ ok: true, spiffeId: WEB, error: null });
  });

  it('exits 2 naming the file when it holds no certificate', () => {
    const result = ambit('inspect', file('garbage.txt'));
    expect(failureCode(result)).toBe('SVID_PARSE');
    expect(result.stderr).toContain(file('garbage.txt'));
  });

  it('exits 2 naming the file when it cannot be read', () => {
    const result = ambit('inspect', file('missing.pem'));
    expect(failureCode(result)).toBe('FILE_READ');
    expect(result.stderr).toContain(file('missing.pem'));
  });

  it('exits 2 without FILE', () => {
    expect(failureCode(ambit('inspect'))).toBe('USAGE');
  });
});

describe('ambit svid --help', () => {
  it.each(['svid --help', 'svid verify --help', 'svid inspect -h'])('`ambit %s` prints the usage of both subcommands and exits 0', (line) => {
    const result = spawnSync(process.execPath, [cli, ...line.split(' ')], { encoding: 'utf8', timeout: 20_000 });
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('ambit svid verify --bundle FILE');
    expect(result.stdout).toContain('ambit svid inspect');
  });
});

describe('--at times (RFC 3339 with offset)', () => {
  const accepted: [string, string][] = [
    ['2026-11-23T10:00:00Z', '2026-11-23T10:00:00.000Z'],
    ['2026-11-23t10:00:00z', '2026-11-23T10:00:00.000Z'],
    ['2026-11-23T12:00:00+02:00', '2026-11-23T10:00:00.000Z'],
    ['2026-11-23T05:30:00-04:30', '2026-11-23T10:00:00.000Z'],
    ['2026-11-23T10:00:00.25Z', '2026-11-23T10:00:00.250Z'],
    ['2026-11-23T10:00:00.123456789Z', '2026-11-23T10:00:00.123Z'],
    ['2024-02-29T00:00:00Z', '2024-02-29T00:00:00.000Z'],
    ['0050-01-01T00:00:00Z', '0050-01-01T00:00:00.000Z'],
  ];
  it.each(accepted)('reads %s as %s', (text, iso) => {
    expect(parseRfc3339(text, 'at').toISOString()).toBe(iso);
  });

  const rejected = [
    '2026-11-23T10:00:00',
    '2026-11-23 10:00:00Z',
    '2026-11-23',
    '2023-02-29T00:00:00Z',
    '2026-13-01T00:00:00Z',
    '2026-04-31T00:00:00Z',
    '2026-11-23T24:00:00Z',
    '2026-11-23T10:00:60Z',
    '2026-11-23T10:00:00+24:00',
    '2026-11-23T10:00:00+0200',
    '1700000000',
    '',
  ];
  it.each(rejected)('refuses %j as USAGE', (text) => {
    let error: unknown;
    try {
      parseRfc3339(text, 'at');
    } catch (thrown) {
      error = thrown;
    }
    expect(error instanceof AmbitError ? error.code : error).toBe('USAGE');
  });
});

describe('inspect formatting', () => {
  it.each([
    [0, '0s'],
    [59_999, '59s'],
    [42 * 60_000 + 59_000, '42m'],
    [3 * HOUR_MS, '3h'],
    [2 * HOUR_MS + 30 * 60_000, '2h30m'],
    [26 * HOUR_MS, '1d2h'],
  ])('shows a span of %i ms as %s', (ms, text) => {
    expect(formatSpan(ms)).toBe(text);
  });

  it.each([
    [[10, 0, 0, 7], '10.0.0.7'],
    [[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '2001:db8::1'],
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '::1'],
    [[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], '2001:db8:0:1::1'],
    [[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], '2001:db8:1:1:1:1:1:1'],
    [[10, 0, 0, 0, 255, 0, 0, 0], '0a000000ff000000'],
  ])('shows IP address bytes %j as %s (RFC 5952 for IPv6)', (bytes, text) => {
    expect(formatIpAddress(Uint8Array.from(bytes))).toBe(text);
  });
});
