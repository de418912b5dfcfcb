// A connection keeps one decision context: the peer's vocabulary ids are resolved by its first decision and reused
// by its next ones (every request of an HTTP connection). They belong to one configuration: after a change the
// same context must be resolved again, never read with the old ids.
import { describe, expect, it } from 'vitest';
import { decide } from '../../../src/authz/decide.ts';
import { contextOf, loadYaml } from './harness.ts';

const POD = `apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: shop, labels: { app: web } }\nspec: { nodeName: node-a, serviceAccountName: web }\nstatus: { podIP: 10.0.0.1 }\n`;

function policy(name: string, action: 'ALLOW' | 'DENY', principals: readonly string[]): string {
  return `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: ${name}, namespace: shop }\nspec:\n  action: ${action}\n  rules:\n    - from: [{ source: { principals: ${JSON.stringify(principals)} } }]\n`;
}

const CLIENT = 'cluster.local/ns/front/sa/client';
const OTHER = 'cluster.local/ns/front/sa/other';

function load(...policies: string[]) {
  const loaded = loadYaml([POD, ...policies].join('---\n'));
  const web = loaded.snapshot.workloads.find((workload) => workload.name === 'web-1')!;
  return loaded.compiled.forWorkload(web);
}

describe('a connection decision context', () => {
  it('is resolved again for a new configuration, where the same ids name other principals', () => {
    // First configuration: the client is the first principal named (id 0) and is allowed.
    const before = load(policy('allow-client', 'ALLOW', [CLIENT]));
    // Second: another principal comes first (id 0) and is allowed; the client is named second and denied.
    const after = load(policy('allow-other', 'ALLOW', [OTHER]), policy('deny-client', 'DENY', [CLIENT]));
    const ctx = contextOf({ principal: CLIENT, namespace: 'front', sourceIp: null, destinationIp: null, port: 80, http: null });
    expect(decide(before, ctx, 'tcp').allow).toBe(true);
    const denied = decide(after, ctx, 'tcp');
    expect(denied.allow).toBe(false);
    expect(denied.policy).toBe('shop/deny-client');
    // And back: the first configuration's answer again.
    expect(decide(before, ctx, 'tcp').allow).toBe(true);
  });

  it('decides the requests of a connection again, in full, after a configuration change', () => {
    const route = (name: string, path: string) =>
      `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: ${name}, namespace: shop }\nspec:\n  rules:\n    - from: [{ source: { principals: ["${OTHER}"] } }]\n      to: [{ operation: { paths: ["/other"] } }]\n    - from: [{ source: { principals: ["${CLIENT}"] } }]\n      to: [{ operation: { paths: ["${path}"] } }]\n`;
    const before = load(route('client-api', '/api'));
    // The same shape of rules, but the client is no longer named: its requests must be denied.
    const after = load(route('client-api', '/api').replace(CLIENT, 'cluster.local/ns/front/sa/former'));
    const base = { principal: CLIENT, namespace: 'front', sourceIp: null, destinationIp: null, port: 80 };
    const connection = contextOf({ ...base, http: null });
    connection.request = contextOf({ ...base, http: { method: 'GET', path: '/api', host: 'web.shop', headers: {} } }).request;
    expect(decide(before, connection, 'request').allow).toBe(true);
    expect(decide(after, connection, 'request').allow).toBe(false);
    connection.request = contextOf({ ...base, http: { method: 'GET', path: '/other', host: 'web.shop', headers: {} } }).request;
    expect(decide(before, connection, 'request').allow).toBe(false);
  });

  it('gives every request of a connection the decision a fresh context gives it', () => {
    const compiled = load(
      policy('deny-other', 'DENY', [OTHER]),
      `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: get-api, namespace: shop }\nspec:\n  rules:\n    - from: [{ source: { principals: ["${CLIENT}"] } }]\n      to: [{ operation: { methods: [GET], paths: ["/api/*"] } }]\n`,
    );
    const requests = [
      { method: 'GET', path: '/api/orders' },
      { method: 'POST', path: '/api/orders' },
      { method: 'GET', path: '/admin' },
      { method: 'GET', path: '/api/' },
    ];
    for (const principal of [CLIENT, OTHER, 'cluster.local/ns/front/sa/unnamed']) {
      const base = { principal, namespace: 'front', sourceIp: null, destinationIp: null, port: 80 };
      const connection = contextOf({ ...base, http: null });
      const answers: boolean[] = [];
      const fresh: boolean[] = [];
      for (const { method, path } of requests) {
        const http = { method, path, host: 'web.shop', headers: {} };
        connection.request = contextOf({ ...base, http }).request;
        answers.push(decide(compiled, connection, 'request').allow);
        fresh.push(decide(compiled, contextOf({ ...base, http }), 'request').allow);
      }
      expect(answers).toEqual(fresh);
      expect(answers).toEqual(principal === CLIENT ? [true, false, false, true] : [false, false, false, false]);
    }
  });

  it('fails closed when asked to decide a request without the request: HTTP-only ALLOW rules match nothing', () => {
    const allow = (name: string, rule: string) => `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: ${name}, namespace: shop }\nspec:\n  rules:\n    - ${rule}\n`;
    const noFacts = contextOf({ principal: CLIENT, namespace: 'front', sourceIp: null, destinationIp: null, port: 80, http: null });
    const byHeader = load(allow('by-header', 'when: [{ key: "request.headers[x-a]", values: ["a"] }]'));
    expect(decide(byHeader, noFacts, 'request').allow).toBe(false);
    const byPath = load(allow('by-path', 'to: [{ operation: { paths: ["/a"] } }]'));
    expect(decide(byPath, noFacts, 'request').allow).toBe(false);
    const byPrincipal = load(allow('by-principal', `from: [{ source: { principals: ["${CLIENT}"] } }]`));
    expect(decide(byPrincipal, noFacts, 'request').allow).toBe(true);
  });
});
