// Replicas share their matcher: workloads selected by the same policies, with the same HTTP ports, get one set of
// rule lists and one index from the compiler; others get their own, and decisions stay per workload.
import { describe, expect, it } from 'vitest';
import { decide } from '../../../src/authz/decide.ts';
import { contextOf, loadYaml } from './harness.ts';

function pod(name: string, app: string, ip: string): string {
  return `apiVersion: v1\nkind: Pod\nmetadata: { name: ${name}, namespace: shop, labels: { app: ${app} } }\nspec: { nodeName: node-a, serviceAccountName: ${app} }\nstatus: { podIP: ${ip} }\n`;
}

const yaml = [
  pod('web-1', 'web', '10.0.0.1'),
  pod('web-2', 'web', '10.0.0.2'),
  pod('db-1', 'db', '10.0.0.3'),
  `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: web-callers, namespace: shop }\nspec:\n  selector: { matchLabels: { app: web } }\n  rules:\n    - from: [{ source: { principals: ["cluster.local/ns/front/sa/client"] } }]\n`,
].join('---\n');

describe('compiled matchers of replicas', () => {
  it('are shared by workloads the same policies select, and not by others', () => {
    const loaded = loadYaml(yaml);
    const [web1, web2, db1] = ['web-1', 'web-2', 'db-1'].map((name) => loaded.snapshot.workloads.find((workload) => workload.name === name)!);
    const compiled = loaded.compiled;
    expect(compiled.forWorkload(web1!).index).toBe(compiled.forWorkload(web2!).index);
    expect(compiled.forWorkload(web1!).index).not.toBe(compiled.forWorkload(db1!).index);
    const request = { principal: 'cluster.local/ns/front/sa/client', namespace: 'front', sourceIp: null, destinationIp: null, port: 80, http: null };
    const other = { ...request, principal: 'cluster.local/ns/front/sa/other' };
    expect(decide(compiled.forWorkload(web2!), contextOf(request), 'tcp').allow).toBe(true);
    expect(decide(compiled.forWorkload(web2!), contextOf(other), 'tcp').allow).toBe(false);
    // db-1 has no ALLOW policy: anything is allowed there.
    expect(decide(compiled.forWorkload(db1!), contextOf(other), 'tcp').allow).toBe(true);
  });
});
