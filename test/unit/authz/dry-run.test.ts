// `istio.io/dry-run` as Istio reads it (strconv.ParseBool): a dry-run policy is evaluated and logged, never enforced,
// as Envoy's shadow rules; a policy whose annotation says false is enforced as any other.
import { describe, expect, it } from 'vitest';
import { compileAuthorization } from '../../../src/authz/compile.ts';
import { auditMatch, authzContext, decide } from '../../../src/authz/decide.ts';
import { explain } from '../../../src/authz/explain.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import { Registry } from 'prom-client';
import { parseIp } from '../../../src/authz/match.ts';
import { parseSpiffeId } from '../../../src/identity/spiffe-id.ts';
import { silentLogger } from '../../../src/observe/log.ts';
import { InboundAuthorizer } from '../../../src/proxy/authorize.ts';
import type { InboundConnection } from '../../../src/proxy/inbound.ts';

const policy = (name: string, action: string, dryRun: string | null, rule: string) => `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ${name}
  namespace: shop
${dryRun === null ? '' : `  annotations: { istio.io/dry-run: "${dryRun}" }\n`}spec:
  action: ${action}
  rules: [${rule}]
`;

function policiesOf(...documents: string[]) {
  return compileAuthorization(buildSnapshot(parseConfigText(documents.join('---\n'), 'policies.yaml'))).forLabels('shop', {}, new Set([80]));
}

const request = (path: string) => authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 80, request: { method: 'DELETE', path, host: 'web.shop', header: () => undefined, remoteIp: null } });

/** A pod web-1 (10.0.2.20) on node-b, behind a Service whose port 8080 is declared HTTP. */
const WORLD = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: cluster.local }
---
apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec: { nodeName: node-b, serviceAccountName: web }
status: { phase: Running, podIP: 10.0.2.20 }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 8080 }] }
---
`;

/** A connection from shop/client to web-1's HTTP port. */
function connectionTo(snapshot: ReturnType<typeof buildSnapshot>): InboundConnection {
  const peer = parseSpiffeId('spiffe://cluster.local/ns/shop/sa/client');
  return { peer, principal: peer.id.slice('spiffe://'.length), peerNamespace: 'shop', peerAddress: '10.0.1.10', peerIp: parseIp('10.0.1.10'), claimedSource: null, destination: snapshot.workloadByIp('10.0.2.20')!, destinationIp: '10.0.2.20', destinationPort: 8080 };
}

describe('dry-run authorization policies', () => {
  it.each(['true', 'True', 'TRUE', 't', '1'])('do not enforce a DENY annotated %s, and log the requests it matches with the action it would take', (value) => {
    const policies = policiesOf(policy('no-delete', 'DENY', value, '{ to: [{ operation: { methods: [DELETE] } }] }'));
    expect(decide(policies, request('/items'), 'request').allow).toBe(true);
    const matched = auditMatch(policies, request('/items'), 'request');
    expect(matched?.policy.name).toBe('shop/no-delete');
    expect(matched?.policy.dryRun).toBe('DENY');
  });

  it('log what the enforced DENY would deny: a Host with a port its hosts omit, a path template segment holding "*"', () => {
    const policies = policiesOf(policy('no-admin', 'DENY', 'true', '{ to: [{ operation: { hosts: ["web.shop"], paths: ["/admin/{*}"] } }] }'));
    const enforced = policiesOf(policy('no-admin', 'DENY', null, '{ to: [{ operation: { hosts: ["web.shop"], paths: ["/admin/{*}"] } }] }'));
    const on = (host: string, path: string) => authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 80, request: { method: 'GET', path, host, header: () => undefined, remoteIp: null } });
    for (const [host, path] of [['web.shop:8080', '/admin/x'], ['web.shop', '/admin/a*b'], ['web.shop', '/admin/x']] as const) {
      expect(decide(enforced, on(host, path), 'request').allow, `${host}${path} enforced`).toBe(false);
      expect(auditMatch(policies, on(host, path), 'request')?.policy.dryRun, `${host}${path} dry run`).toBe('DENY');
    }
    expect(auditMatch(policies, on('web.shop', '/admin/x/y'), 'request')).toBeNull();
  });

  it('do not make an ALLOW policy in force: a dry-run ALLOW alone denies nothing', () => {
    const policies = policiesOf(policy('only-admin', 'ALLOW', 'true', '{ to: [{ operation: { paths: ["/admin"] } }] }'));
    expect(decide(policies, request('/items'), 'request').allow).toBe(true);
    expect(auditMatch(policies, request('/admin'), 'request')?.policy.dryRun).toBe('ALLOW');
    expect(auditMatch(policies, request('/items'), 'request')).toBeNull();
  });

  it.each(['false', 'False', '0', 'f'])('enforce a policy annotated %s', (value) => {
    const policies = policiesOf(policy('no-delete', 'DENY', value, '{ to: [{ operation: { methods: [DELETE] } }] }'));
    expect(decide(policies, request('/items'), 'request').allow).toBe(false);
    expect(auditMatch(policies, request('/items'), 'request')).toBeNull();
  });

  it('show a dry-run DENY with HTTP fields on a port that is not HTTP as it would be enforced (its HTTP fields ignored)', () => {
    const policies = compileAuthorization(buildSnapshot(parseConfigText(policy('no-delete', 'DENY', 'true', '{ to: [{ operation: { methods: [DELETE] } }] }'), 'policies.yaml'))).forLabels('shop', {}, new Set());
    const connection = authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 5432, request: null });
    expect(decide(policies, connection, 'tcp').allow).toBe(true);
    expect(auditMatch(policies, connection, 'tcp')?.policy.dryRun).toBe('DENY');
    // Enforced, the same policy denies that connection.
    const enforced = compileAuthorization(buildSnapshot(parseConfigText(policy('no-delete', 'DENY', null, '{ to: [{ operation: { methods: [DELETE] } }] }'), 'policies.yaml'))).forLabels('shop', {}, new Set());
    expect(decide(enforced, connection, 'tcp').allow).toBe(false);
  });

  it('cut no open byte tunnel to an HTTP port when they arrive (a DENY in force with HTTP fields closes it, to inspect it)', () => {
    const stillOpen = (dryRun: string | null): boolean => {
      const snapshot = buildSnapshot(parseConfigText(WORLD + policy('no-delete', 'DENY', dryRun, '{ to: [{ operation: { methods: [DELETE] } }] }'), 'all.yaml'));
      return new InboundAuthorizer(() => snapshot, new Registry(), silentLogger()).stillAllowed(connectionTo(snapshot), false, snapshot, 'node-b');
    };
    expect(stillOpen('true')).toBe(true);
    expect(stillOpen(null)).toBe(false);
  });

  it('are explained with the action they would take, and said to decide nothing', () => {
    const [explained] = explain(policiesOf(policy('only-admin', 'ALLOW', 'true', '')), request('/items'), 'request');
    expect(explained).toMatchObject({ policy: 'shop/only-admin', action: 'AUDIT', dryRun: 'ALLOW' });
    expect(explained?.note).toBe('an ALLOW policy with no rules allows nothing; dry run (istio.io/dry-run): logged, never enforced');
  });

  it.each([
    ['an AUDIT policy', 'AUDIT', null],
    ['a dry-run DENY', 'DENY', 'true'],
    ['a dry-run ALLOW', 'ALLOW', 'true'],
  ])('never make the proxy inspect an HTTP port: %s with HTTP fields alone leaves its bytes as they are', (_what, action, dryRun) => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('logged', action, dryRun, '{ to: [{ operation: { paths: ["/audited"] } }] }'), 'all.yaml'));
    expect(new InboundAuthorizer(() => snapshot, new Registry(), silentLogger()).requestInspection(connectionTo(snapshot), 'node-b')).toBeNull();
    // A rule in force with HTTP fields does.
    const enforced = buildSnapshot(parseConfigText(WORLD + policy('logged', action === 'AUDIT' ? 'DENY' : action, null, '{ to: [{ operation: { paths: ["/audited"] } }] }'), 'all.yaml'));
    expect(new InboundAuthorizer(() => enforced, new Registry(), silentLogger()).requestInspection(connectionTo(enforced), 'node-b')).not.toBeNull();
  });

  it('hide no AUDIT policy: a request both match is logged once for each, on a port inspected for a rule in force', () => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('no-delete', 'DENY', 'true', '{ to: [{ operation: { methods: [DELETE] } }] }') + '---\n' + policy('audit-all', 'AUDIT', null, '{}') + '---\n' + policy('no-admin', 'DENY', null, '{ to: [{ operation: { paths: ["/admin"] } }] }'), 'all.yaml'));
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger = Object.assign(silentLogger(), { info: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) });
    const inspection = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger })).requestInspection(connectionTo(snapshot), 'node-b');
    expect(inspection).not.toBeNull();
    expect(inspection?.decide({ method: 'DELETE', path: '/items', host: 'web.shop', header: () => undefined, remoteIp: null }).allow).toBe(true);
    expect(lines.map((line) => [line.message, line.fields.audit])).toEqual([['audited request', 'shop/audit-all'], ['dry-run DENY policy matched a request', 'shop/no-delete']]);
  });

  it('report a dry-run ALLOW that would deny a connection: none of its rules matches it (as Envoy\'s shadow engine does)', () => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('only-admin', 'ALLOW', 'true', '{ from: [{ source: { principals: ["cluster.local/ns/shop/sa/admin"] } }] }'), 'all.yaml'));
    const linesFor = (serviceAccount: string) => {
      const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
      const logger = Object.assign(silentLogger(), { info: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) });
      const authorizer = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger }));
      const peer = parseSpiffeId(`spiffe://cluster.local/ns/shop/sa/${serviceAccount}`);
      expect(authorizer.authorize({ ...connectionTo(snapshot), peer, principal: peer.id.slice('spiffe://'.length) }).allow).toBe(true);
      return lines.map((line) => [line.message, line.fields.audit, line.fields.decision]);
    };
    expect(linesFor('client')).toEqual([['dry-run ALLOW policies would deny a connection', 'shop/only-admin', 'ALLOW']]);
    expect(linesFor('admin')).toEqual([['dry-run ALLOW policy matched a connection', 'shop/only-admin', undefined]]);
  });

  it('log a dry-run DENY and a dry-run ALLOW that both match, each its own line (each its own shadow engine in Envoy)', () => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('a-allow', 'ALLOW', 'true', '{ to: [{ operation: { paths: ["/a*"] } }] }') + '---\n' + policy('b-deny', 'DENY', 'true', '{ to: [{ operation: { paths: ["/a*"] } }] }') + '---\n' + policy('no-admin', 'DENY', null, '{ to: [{ operation: { paths: ["/admin"] } }] }'), 'all.yaml'));
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger = Object.assign(silentLogger(), { info: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) });
    const inspection = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger })).requestInspection(connectionTo(snapshot), 'node-b');
    expect(inspection?.decide({ method: 'GET', path: '/a', host: 'web.shop', header: () => undefined, remoteIp: null }).allow).toBe(true);
    expect(lines.map((line) => [line.message, line.fields.audit]).sort()).toEqual([['dry-run ALLOW policy matched a request', 'shop/a-allow'], ['dry-run DENY policy matched a request', 'shop/b-deny']]);
  });

  it('say a dry-run ALLOW with HTTP fields cannot judge the requests of a port the proxy does not read', () => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('api-only', 'ALLOW', 'true', '{ to: [{ operation: { paths: ["/api*"] } }] }'), 'all.yaml'));
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger = Object.assign(silentLogger(), { info: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) });
    const authorizer = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger }));
    expect(authorizer.authorize(connectionTo(snapshot)).allow).toBe(true);
    expect(lines.map((line) => [line.message, line.fields.audit])).toEqual([["dry-run ALLOW policy cannot judge this connection's requests: the proxy reads none on this port, no HTTP rule in force applying to it", 'shop/api-only']]);
  });

  it('report a dry-run ALLOW that would deny a request, on a port inspected for a rule in force', () => {
    const snapshot = buildSnapshot(parseConfigText(WORLD + policy('only-get', 'ALLOW', 'true', '{ to: [{ operation: { methods: [GET] } }] }') + '---\n' + policy('no-admin', 'DENY', null, '{ to: [{ operation: { paths: ["/admin"] } }] }'), 'all.yaml'));
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger = Object.assign(silentLogger(), { info: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) });
    const inspection = new InboundAuthorizer(() => snapshot, new Registry(), Object.assign(logger, { child: () => logger })).requestInspection(connectionTo(snapshot), 'node-b');
    for (const method of ['GET', 'DELETE']) expect(inspection?.decide({ method, path: '/items', host: 'web.shop', header: () => undefined, remoteIp: null }).allow).toBe(true);
    expect(lines.map((line) => [line.message, line.fields.method])).toEqual([['dry-run ALLOW policy matched a request', 'GET'], ['dry-run ALLOW policies would deny a request', 'DELETE']]);
  });

  it('leave the policies in force deciding beside them', () => {
    const policies = policiesOf(
      policy('no-delete-dry', 'DENY', 'true', '{ to: [{ operation: { methods: [DELETE] } }] }'),
      policy('no-admin', 'DENY', null, '{ to: [{ operation: { paths: ["/admin"] } }] }'),
    );
    expect(decide(policies, request('/admin'), 'request').allow).toBe(false);
    expect(decide(policies, request('/items'), 'request').allow).toBe(true);
  });
});
