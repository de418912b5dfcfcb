// One large policy must not take authorization down: a rule is (any source) AND (any operation), and indexing it as
// every pair made 2,000 sources × 2,000 paths into four million terms, whose masks no array could hold. The compile
// threw, and every decision of the node denied until the configuration changed.
import { describe, expect, it } from 'vitest';
import type { ReferenceDestination, ReferenceRequest } from './reference.ts';
import { compiledDecision, loadYaml } from './harness.ts';

const SIDE = 2_000;

function largeRule(action: 'ALLOW' | 'DENY'): string {
  const sources = Array.from({ length: SIDE }, (_, i) => `    - source: { principals: ["cluster.local/ns/n${i}/sa/s"], ipBlocks: ["10.${i >> 8}.${i & 255}.0/24"] }`).join('\n');
  const operations = Array.from({ length: SIDE }, (_, i) => `    - operation: { paths: ["/p${i}"], hosts: ["h${i}.shop"] }`).join('\n');
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: large, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  action: ${action}
  rules:
  - from:
${sources}
    to:
${operations}
`;
}

const destination: ReferenceDestination = { namespace: 'shop', labels: { app: 'web' } };

function request(source: number, path: string, host: string, sourceIp = `10.${source >> 8}.${source & 255}.7`): ReferenceRequest {
  return {
    principal: `cluster.local/ns/n${source}/sa/s`,
    namespace: `n${source}`,
    sourceIp,
    destinationIp: '10.9.0.1',
    port: 80,
    http: { method: 'GET', path, host, headers: {} },
  };
}

describe('a rule with thousands of sources and thousands of operations', () => {
  it('compiles, and allows exactly the requests one of its sources and one of its operations admit', () => {
    const loaded = loadYaml(largeRule('ALLOW'), 'istio-system');
    const decide = (r: ReferenceRequest) => compiledDecision(loaded, destination, r, 'request');
    expect(decide(request(1_999, '/p0', 'h0.shop'))).toMatchObject({ allow: true, policy: 'shop/large', rule: 0 });
    expect(decide(request(0, '/p1999', 'h1999.shop')).allow).toBe(true);
    // A path no operation names; a path and a host of two different operations; another IP block; another principal.
    expect(decide(request(1_999, '/p2000', 'h1.shop')).allow).toBe(false);
    expect(decide(request(5, '/p5', 'h6.shop')).allow).toBe(false);
    expect(decide(request(5, '/p5', 'h5.shop', '10.200.0.1')).allow).toBe(false);
    expect(decide({ ...request(5, '/p5', 'h5.shop'), principal: 'cluster.local/ns/x/sa/s', namespace: 'x' }).allow).toBe(false);
  });

  it('as a DENY, denies what it names and nothing else', () => {
    const loaded = loadYaml(largeRule('DENY'), 'istio-system');
    const decide = (r: ReferenceRequest) => compiledDecision(loaded, destination, r, 'request');
    expect(decide(request(1_000, '/p1999', 'h1999.shop'))).toMatchObject({ allow: false, policy: 'shop/large', rule: 0 });
    expect(decide(request(1_000, '/p1999', 'h1998.shop')).allow).toBe(true);
    expect(decide(request(1_000, '/other', 'h3.shop')).allow).toBe(true);
    // At the connection, before any request: a DENY with HTTP fields waits for the request.
    expect(compiledDecision(loaded, destination, request(1_000, '/p1', 'h1.shop'), 'connect').allow).toBe(true);
  });
});
