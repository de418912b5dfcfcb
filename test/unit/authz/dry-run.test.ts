// `istio.io/dry-run` as Istio reads it (strconv.ParseBool): a dry-run policy is evaluated and logged, never enforced,
// as Envoy's shadow rules; a policy whose annotation says false is enforced as any other.
import { describe, expect, it } from 'vitest';
import { compileAuthorization } from '../../../src/authz/compile.ts';
import { auditMatch, authzContext, decide } from '../../../src/authz/decide.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';

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

const request = (path: string) => authzContext({ sourcePrincipal: 'cluster.local/ns/shop/sa/client', sourceNamespace: 'shop', sourceIp: null, destinationIp: null, destinationPort: 80, request: { method: 'DELETE', path, host: 'web.shop', header: () => undefined } });

describe('dry-run authorization policies', () => {
  it.each(['true', 'True', 'TRUE', 't', '1'])('do not enforce a DENY annotated %s, and log the requests it matches with the action it would take', (value) => {
    const policies = policiesOf(policy('no-delete', 'DENY', value, '{ to: [{ operation: { methods: [DELETE] } }] }'));
    expect(decide(policies, request('/items'), 'request').allow).toBe(true);
    const matched = auditMatch(policies, request('/items'), 'request');
    expect(matched?.policy.name).toBe('shop/no-delete');
    expect(matched?.policy.dryRun).toBe('DENY');
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

  it('leave the policies in force deciding beside them', () => {
    const policies = policiesOf(
      policy('no-delete-dry', 'DENY', 'true', '{ to: [{ operation: { methods: [DELETE] } }] }'),
      policy('no-admin', 'DENY', null, '{ to: [{ operation: { paths: ["/admin"] } }] }'),
    );
    expect(decide(policies, request('/admin'), 'request').allow).toBe(false);
    expect(decide(policies, request('/items'), 'request').allow).toBe(true);
  });
});
