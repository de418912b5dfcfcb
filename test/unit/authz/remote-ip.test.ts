// Istio's remote IP, per request: the last address of X-Forwarded-For (an ingress gateway appends the address it
// saw), else the source's. One tunnel from a gateway carries many clients: each request is judged on its own.
import { describe, expect, it } from 'vitest';
import { authzContext, decide } from '../../../src/authz/decide.ts';
import { parseIp } from '../../../src/authz/match.ts';
import { MutableFacts } from '../../../src/proxy/l7.ts';
import { HTTP_PORTS, loadYaml } from './harness.ts';

const POLICIES = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-blocked-clients, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - from: [{ source: { remoteIpBlocks: ["203.0.113.0/24"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: partners-only, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules:
    - from: [{ source: { remoteIpBlocks: ["198.51.100.0/24", "2001:db8::/32"] } }]
    - when: [{ key: remote.ip, values: ["192.0.2.0/24"] }]
`;

describe('the remote IP of each request of one tunnel', () => {
  it('is the last X-Forwarded-For address of that request, whatever the requests before it named', () => {
    const policies = loadYaml(POLICIES).compiled.forLabels('shop', { app: 'web' }, HTTP_PORTS);
    // The gateway's tunnel: one context, its source the gateway pod.
    const facts = new MutableFacts();
    const ctx = authzContext({ sourcePrincipal: 'cluster.local/ns/ingress/sa/gateway', sourceNamespace: 'ingress', sourceIp: parseIp('10.0.0.9'), destinationIp: parseIp('10.0.2.20'), destinationPort: 80, request: facts });
    const judge = (forwardedFor: string | null) => {
      const raw = ['Host', 'web.shop'];
      if (forwardedFor !== null) raw.push('X-Forwarded-For', forwardedFor);
      expect(facts.fill('GET', '/', 'web.shop', raw, true, 'MERGE_SLASHES')).toBeNull();
      return decide(policies, ctx, 'request');
    };
    expect(judge('198.51.100.7').allow).toBe(true);
    const blocked = judge('198.51.100.7, 203.0.113.9');
    expect(blocked.allow).toBe(false);
    expect(blocked.policy).toBe('shop/no-blocked-clients');
    expect(judge('203.0.113.9, 198.51.100.7').allow).toBe(true);
    expect(judge('2001:db8::5').allow).toBe(true);
    expect(judge('192.0.2.33').allow).toBe(true);
    // Naming none (or no address), the gateway's own address stands, which no ALLOW rule names.
    expect(judge(null).allow).toBe(false);
    expect(judge('unknown').allow).toBe(false);
    expect(judge('198.51.100.7').allow).toBe(true);
  });
});
