// A rule with HTTP fields meeting a port not declared HTTP: Istio applies a DENY without them (denying the whole
// connection) and drops an ALLOW, and says so in the policy's status. The proxy says it on the denial.
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import { parseIp } from '../../../src/authz/match.ts';
import { parseSpiffeId } from '../../../src/identity/spiffe-id.ts';
import { silentLogger } from '../../../src/observe/log.ts';
import { InboundAuthorizer } from '../../../src/proxy/authorize.ts';

const WORLD = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: cluster.local }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: shop, labels: { app: db } }
spec: { nodeName: node-b, serviceAccountName: db }
status: { phase: Running, podIP: 10.0.2.20 }
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: shop }
spec: { selector: { app: db }, ports: [{ name: web, port: 80, targetPort: 8080 }] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: shop }
spec:
`;

/** The warn line of a connection from shop/client to db-1:8080 (its Service port named `web`: not HTTP). */
function denialOf(spec: string): Record<string, unknown> | undefined {
  const snapshot = buildSnapshot(parseConfigText(WORLD + spec, 'all.yaml'));
  const lines: Array<Record<string, unknown>> = [];
  const logger = Object.assign(silentLogger(), { warn: (fields: Record<string, unknown>) => void lines.push(fields) });
  const authorizer = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger }));
  const peer = parseSpiffeId('spiffe://cluster.local/ns/shop/sa/client');
  const decision = authorizer.authorize({ peer, principal: peer.id.slice('spiffe://'.length), peerNamespace: 'shop', peerAddress: '10.0.1.10', peerIp: parseIp('10.0.1.10'), claimedSource: null, destination: snapshot.workloadByIp('10.0.2.20')!, destinationIp: '10.0.2.20', destinationPort: 8080 });
  expect(decision.allow).toBe(false);
  return lines[0];
}

describe('a connection denied on a port not declared HTTP', () => {
  it('says a DENY rule with HTTP fields applied without them', () => {
    const line = denialOf('  action: DENY\n  rules: [{ to: [{ operation: { paths: ["/admin"] } }] }]\n');
    expect(line).toMatchObject({ policy: 'shop/p', rule: 0 });
    expect(String(line?.note)).toContain('port 8080 is not declared HTTP');
    expect(String(line?.note)).toContain('applied without them');
  });

  it('says nothing more of a DENY rule without HTTP fields', () => {
    expect(denialOf('  action: DENY\n  rules: [{ from: [{ source: { namespaces: ["shop"] } }] }]\n')?.note).toBeUndefined();
  });

  it('says ALLOW rules with HTTP fields never match there', () => {
    const line = denialOf('  action: ALLOW\n  rules: [{ to: [{ operation: { methods: ["GET"] } }] }]\n');
    expect(String(line?.note)).toContain('never match here: port 8080 is not declared HTTP');
  });

  it('says nothing of ALLOW rules with HTTP fields for another port', () => {
    expect(denialOf('  action: ALLOW\n  rules: [{ to: [{ operation: { ports: ["9090"], methods: ["GET"] } }] }]\n')?.note).toBeUndefined();
  });

  it('says nothing more when the ALLOW rules that did not match have no HTTP fields', () => {
    expect(denialOf('  action: ALLOW\n  rules: [{ from: [{ source: { namespaces: ["other"] } }] }]\n')?.note).toBeUndefined();
  });
});
