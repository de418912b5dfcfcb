import { describe, expect, it } from 'vitest';
import { ServiceAccountTest, TrustDomainTest } from '../../../src/authz/identity-match.ts';
import type { ConfigObject } from '../../../src/config/objects.ts';
import { compiledDecision, loadObjects } from './harness.ts';

// The cases of istiod's own table for its service-account regex (generator_test.go, TestServiceAccount), as
// principals (the SPIFFE ID without spiffe://), plus ambit's.
describe('a service account matches the peer principal as istiod\'s regex does', () => {
  const cases: Array<[string, string, string, boolean]> = [
    ['the standard form', 'my-ns/my-sa', 'cluster.local/ns/my-ns/sa/my-sa', true],
    ['segments after the account', 'my-ns/my-sa', 'cluster.local/ns/my-ns/sa/my-sa/k/v', true],
    ['segments before the namespace', 'my-ns/my-sa', 'cluster.local/k/v/ns/my-ns/sa/my-sa', true],
    ['segments between', 'my-ns/my-sa', 'cluster.local/ns/my-ns/k/v/sa/my-sa', true],
    ['segments everywhere', 'my-ns/my-sa', 'cluster.local/k1/v1/ns/my-ns/k2/v2/sa/my-sa/k3/v3', true],
    ['not an account it is the start of', 'my-ns/my-sa', 'cluster.local/ns/my-ns/sa/my-sa-suffix', false],
    ['not a namespace it is the start of', 'my-ns/my-sa', 'cluster.local/ns/my-ns-suffix/sa/my-sa', false],
    ['not without a trust domain', 'my-ns/my-sa', 'ns/my-ns/sa/my-sa', false],
    ['not without the account', 'my-ns/my-sa', 'cluster.local/ns/my-ns', false],
    ['not without the namespace', 'my-ns/my-sa', 'cluster.local/sa/my-sa', false],
    ['dots are dots, not any character (namespace)', 'my.ns/my.sa', 'cluster.local/ns/myXns/sa/my.sa', false],
    ['dots are dots, not any character (account)', 'my.ns/my.sa', 'cluster.local/ns/my.ns/sa/myXsa', false],
    ['a trailing "/" is not a segment after the account', 'my-ns/my-sa', 'cluster.local/ns/my-ns/sa/my-sa/', false],
    ['the account right after a one-character segment', 'my-ns/my-sa', 'cluster.local/ns/my-ns/x/sa/my-sa', true],
    ['an account mark glued to the namespace\'s end is not one', 'my-ns/my-sa', 'cluster.local/ns/my-ns/xsa/my-sa', false],
    ['a second namespace mark later', 'b/x', 'td/ns/a/ns/b/sa/x', true],
  ];
  for (const [name, written, principal, expected] of cases) {
    it(`${name}: ${written} against ${principal}`, () => {
      expect(new ServiceAccountTest(written, 'default').test(principal)).toBe(expected);
      // The same answer as istiod's regex, full-matched.
      const [ns, sa] = written.split('/') as [string, string];
      const escape = (text: string) => text.replace(/\./g, '\\.');
      expect(new RegExp(`^spiffe://.+/ns/${escape(ns)}/(.+/|)sa/${escape(sa)}(/.+)?$`).test(`spiffe://${principal}`)).toBe(expected);
    });
  }

  it('reads a bare account in the policy\'s namespace', () => {
    expect(new ServiceAccountTest('web', 'shop').test('cluster.local/ns/shop/sa/web')).toBe(true);
    expect(new ServiceAccountTest('web', 'shop').test('cluster.local/ns/front/sa/web')).toBe(false);
  });
});

describe('a trust domain matches the peer principal\'s first segment', () => {
  const cases: Array<[string, string, boolean]> = [
    ['cluster.local', 'cluster.local/ns/a/sa/b', true],
    ['cluster.local', 'cluster.localx/ns/a/sa/b', false],
    ['cluster.local', 'other.example/ns/cluster.local/sa/b', false],
    ['*', 'other.example/ns/a/sa/b', true],
    ['*.example', 'other.example/ns/a/sa/b', true],
    ['*.example', 'example/ns/a/sa/b', false],
    ['*.example', 'td/ns/a/sa/x.example', false],
    ['*.example', 'td/x.example/ns/a', false],
    ['cluster.*', 'cluster.local/ns/a/sa/b', true],
    ['cluster.*', 'clusterx/ns/a/sa/b', false],
    ['cluster.*', 'cluster./ns/a/sa/b', true],
  ];
  for (const [written, principal, expected] of cases) {
    it(`${written} against ${principal}: ${expected}`, () => {
      expect(new TrustDomainTest(written).test(principal)).toBe(expected);
    });
  }
});

describe('a source naming principals and service accounts both (refused at load, as Istio does)', () => {
  it('is held to both by the compiler all the same, never to the principals alone', () => {
    const object = {
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: { name: 'both', namespace: 'shop', labels: {}, annotations: {} },
      source: { file: 'built.yaml', line: 1 },
      spec: { action: 'ALLOW', rules: [{ from: [{ principals: ['cluster.local/ns/front/*'], serviceAccounts: ['front/client'] }] }] },
    } as unknown as ConfigObject;
    const loaded = loadObjects([object]);
    const request = (principal: string) => ({ principal, namespace: 'front', sourceIp: null, destinationIp: null, port: 80, http: null });
    const destination = { namespace: 'shop', labels: {} };
    expect(compiledDecision(loaded, destination, request('cluster.local/ns/front/sa/client'), 'tcp').allow).toBe(true);
    expect(compiledDecision(loaded, destination, request('cluster.local/ns/front/sa/other'), 'tcp').allow).toBe(false);
    expect(compiledDecision(loaded, destination, request('other.example/ns/front/sa/client'), 'tcp').allow).toBe(false);
  });
});
