// A policy's `cluster.local/...` principal names the mesh's own trust domain, whatever that is, as in Istio
// (trustdomain.Bundle.ReplaceTrustDomainAliases): policies written for the default trust domain keep working in a
// mesh with its own, and a DENY written that way still denies. Only five-segment principals not starting with `*`
// are read so; other patterns, and peers that really are in a trust domain named cluster.local, are left as written.
import { describe, expect, it } from 'vitest';
import { compileAuthorization } from '../../../src/authz/compile.ts';
import { authzContext, decide } from '../../../src/authz/decide.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';

function mesh(trustDomain: string, policies: string) {
  const text = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: ${trustDomain} }
---
${policies}`;
  return compileAuthorization(buildSnapshot(parseConfigText(text, 'mesh.yaml'))).forLabels('shop', {}, new Set());
}

function policy(action: 'ALLOW' | 'DENY', rule: string): string {
  return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: p, namespace: shop }
spec:
  action: ${action}
  rules: [${rule}]
`;
}

function allowed(policies: ReturnType<typeof mesh>, principal: string): boolean {
  return decide(policies, authzContext({ sourcePrincipal: principal, sourceNamespace: 'front', sourceIp: null, destinationIp: null, destinationPort: 8080, request: null }), 'tcp').allow;
}

describe('cluster.local in a policy principal is the mesh\'s own trust domain', () => {
  it('denies the local peer a DENY names as cluster.local/..., and no other', () => {
    const policies = mesh('prod.example', policy('DENY', '{from: [{source: {principals: ["cluster.local/ns/front/sa/bad"]}}]}'));
    expect(allowed(policies, 'prod.example/ns/front/sa/bad')).toBe(false);
    expect(allowed(policies, 'prod.example/ns/front/sa/good')).toBe(true);
    // A peer whose trust domain really is "cluster.local" (a federated one) is not the local one.
    expect(allowed(policies, 'cluster.local/ns/front/sa/bad')).toBe(true);
  });

  it('allows the local peer an ALLOW names as cluster.local/..., and refuses the others', () => {
    const policies = mesh('prod.example', policy('ALLOW', '{from: [{source: {principals: ["cluster.local/ns/front/sa/*"]}}]}'));
    expect(allowed(policies, 'prod.example/ns/front/sa/web')).toBe(true);
    expect(allowed(policies, 'prod.example/ns/back/sa/web')).toBe(false);
    expect(allowed(policies, 'partner.example/ns/front/sa/web')).toBe(false);
  });

  it('reads notPrincipals and the source.principal condition the same way', () => {
    const notPrincipals = mesh('prod.example', policy('DENY', '{from: [{source: {notPrincipals: ["cluster.local/ns/front/sa/web"]}}]}'));
    expect(allowed(notPrincipals, 'prod.example/ns/front/sa/web')).toBe(true);
    expect(allowed(notPrincipals, 'prod.example/ns/front/sa/other')).toBe(false);
    const when = mesh('prod.example', policy('DENY', '{when: [{key: source.principal, values: ["cluster.local/ns/front/sa/bad"]}]}'));
    expect(allowed(when, 'prod.example/ns/front/sa/bad')).toBe(false);
    expect(allowed(when, 'prod.example/ns/front/sa/good')).toBe(true);
    const notValues = mesh('prod.example', policy('DENY', '{when: [{key: source.principal, notValues: ["cluster.local/ns/front/sa/good"]}]}'));
    expect(allowed(notValues, 'prod.example/ns/front/sa/good')).toBe(true);
    expect(allowed(notValues, 'prod.example/ns/front/sa/bad')).toBe(false);
  });

  it('leaves patterns Istio leaves: a leading *, and fewer segments than a full principal', () => {
    const prefix = mesh('prod.example', policy('DENY', '{from: [{source: {notPrincipals: ["cluster.local/*"]}}]}'));
    // Istio keeps "cluster.local/*" as written: every peer outside a trust domain named cluster.local is denied.
    expect(allowed(prefix, 'prod.example/ns/front/sa/web')).toBe(false);
    const suffix = mesh('prod.example', policy('DENY', '{from: [{source: {principals: ["*/ns/front/sa/bad"]}}]}'));
    expect(allowed(suffix, 'prod.example/ns/front/sa/bad')).toBe(false);
    expect(allowed(suffix, 'prod.example/ns/front/sa/good')).toBe(true);
  });

  it('changes nothing in a mesh whose trust domain is cluster.local', () => {
    const policies = mesh('cluster.local', policy('DENY', '{from: [{source: {principals: ["cluster.local/ns/front/sa/bad"]}}]}'));
    expect(allowed(policies, 'cluster.local/ns/front/sa/bad')).toBe(false);
    expect(allowed(policies, 'cluster.local/ns/front/sa/good')).toBe(true);
  });
});
