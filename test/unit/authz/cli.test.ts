// `ambit authz check` spawned for real against test/fixtures/authz/shop: decisions with their policy and rule,
// the --explain shape, a request from stdin, and exit 2 with the offending field named for bad input.
import { spawn } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUILT_CLI } from '../../../bench/system/build.ts';
import { afterAll, describe, it } from 'vitest';

const CLI = BUILT_CLI;
const FIXTURES = fileURLToPath(new URL('../../fixtures/authz/', import.meta.url));
const CONFIG = join(FIXTURES, 'shop');
const FRONT = 'cluster.local/ns/front/sa/client';
const ADMIN = 'cluster.local/ns/ops/sa/admin';

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function ambit(args: string[], stdin?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.once('error', reject);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    child.stdin.end(stdin ?? '');
  });
}

/** `ambit authz check --config DIR --request -` with the request as JSON on stdin. */
/** An HTTP request without a Host of its own is given `web.shop`: the proxy answers one without any 400, and so does the check. */
function check(request: unknown, options: { config?: string; explain?: boolean } = {}): Promise<Result> {
  const args = ['authz', 'check', '--config', options.config ?? CONFIG, '--request', '-'];
  if (options.explain) args.push('--explain');
  return ambit(args, typeof request === 'string' ? request : JSON.stringify(withHost(request)));
}

function withHost(input: unknown): unknown {
  const http = (input as { request?: { host?: string; headers?: Record<string, string> } }).request;
  if (http === undefined || http.host !== undefined || http.headers?.host !== undefined) return input;
  return { ...(input as object), request: { ...http, host: 'web.shop' } };
}

interface Output {
  decision: 'ALLOW' | 'DENY';
  policy: string | null;
  rule: number | null;
  reason: string;
  explain?: {
    destination: string;
    moment: string;
    mtls: string;
    policies: { policy: string; action: string; source: string; rules: { rule: number; matched: boolean; why: string }[]; note?: string }[];
  };
}

function decided(result: Result): Output {
  if (result.status !== 0) throw new Error(`exit ${result.status}: ${result.stderr}`);
  return JSON.parse(result.stdout) as Output;
}

const web = (port = 8080) => ({ namespace: 'shop', workload: 'web-1', port, ip: '10.0.1.10' });

const VM_BEHIND_SERVICE_ENTRY = `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: details-vm, namespace: bookinfo, annotations: {ambit.dev/node: vm-host-1}}
spec: {serviceAccount: details-legacy, address: 10.0.9.9, labels: {app: details-legacy}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details-svc, namespace: bookinfo}
spec:
  hosts: [details.bookinfo.com]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  workloadSelector: {labels: {app: details-legacy}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details-legacy}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookinfo/sa/bookinfo-productpage]}}]
    to: [{operation: {methods: [GET]}}]
`;

const CHAT_SERVICES = `apiVersion: v1
kind: Service
metadata: {name: chat, namespace: shop}
spec:
  selector: {app: chat}
  ports:
  - {name: ws, port: 80, targetPort: 8080, appProtocol: kubernetes.io/ws}
  - {name: http-secure, port: 443, targetPort: 8443, appProtocol: kubernetes.io/wss}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: chat-ws, namespace: shop}
spec:
  selector: {matchLabels: {app: chat}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: [/ws]}}]
`;

const temporary: string[] = [];
afterAll(async () => {
  await Promise.all(temporary.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A copy of the fixture configuration with one more file in it. */
async function configWith(file: string, text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ambit-authz-cli-'));
  temporary.push(dir);
  await cp(CONFIG, dir, { recursive: true });
  await writeFile(join(dir, file), text);
  return dir;
}

describe.concurrent('ambit authz check', () => {
  it('prints ALLOW with the deciding policy and rule for a request read from a file, and exits 0', async ({ expect }) => {
    // The file's principal has the spiffe:// scheme, its path a query string and its host a port and capitals.
    const result = await ambit(['authz', 'check', '--config', CONFIG, '--request', join(FIXTURES, 'requests', 'front-get-api.json')]);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    const output = decided(result);
    expect(output).toEqual({ decision: 'ALLOW', policy: 'shop/web-allow', rule: 0, reason: expect.any(String) });
    expect(result.stdout.trim().split('\n')).toHaveLength(1);
  });

  it('prints DENY with the deciding DENY policy and rule, and still exits 0', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'DELETE', path: '/api/items' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: 'shop/deny-delete', rule: 0 });
  });

  it('prints DENY with no policy and no rule when ALLOW policies apply and none matches', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/admin' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
  });

  it('denies a request whose path has a malformed escape, as the proxy refuses it before any policy', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: ADMIN }, request: { method: 'GET', path: '/admin%zz' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
  });

  it('decodes escaped slashes in the path as the proxy does when the MeshConfig says DECODE_AND_MERGE_SLASHES, and keeps them by default', async ({ expect }) => {
    const request = { destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x%2F..%2F..%2Fadmin' } };
    expect(decided(await check(request))).toMatchObject({ decision: 'ALLOW', policy: 'shop/web-allow' });
    const config = await configWith('mesh.yaml', 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n  pathNormalization: { normalization: DECODE_AND_MERGE_SLASHES }\n');
    expect(decided(await check(request, { config }))).toMatchObject({ decision: 'DENY', policy: null, rule: null });
  });

  it('denies a request whose path carries a fragment, as the proxy refuses it before any policy', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x#frag' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(output.reason)).toContain('fragment');
  });

  it('denies a Host whose port is not a number, as the proxy answers it 400 before any policy; allows it with a numeric port', async ({ expect }) => {
    const refused = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x', host: 'web.shop:8o' } }));
    expect(refused).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(refused.reason)).toContain('port is not a number');
    expect(decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x', host: 'web.shop:80' } })).reason).not.toContain('port is not a number');
  });

  it('denies a Host with an empty label, as the proxy answers it 400 before any policy; allows one trailing dot', async ({ expect }) => {
    const refused = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x', host: 'web.shop..' } }));
    expect(refused).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(refused.reason)).toContain('empty label');
    expect(decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x', host: 'web.shop.' } })).reason).not.toContain('empty label');
  });

  it('denies OPTIONS *, as the proxy answers it 400 before any policy', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'OPTIONS', path: '*' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(output.reason)).toContain('OPTIONS * is not forwarded');
  });

  it.for([
    [{ method: 'CONNECT', path: '/api/x' }, 'the proxy answers 405'],
    [{ method: 'GET', path: '/api/x', headers: { 'bad header': 'x' } }, 'is not a token'],
    [{ method: 'GET', path: '/api/x', headers: { 'x-user': 'alice\r\nx-role: admin' } }, 'holds a control character'],
    [{ method: 'GET', path: '/api/x', headers: { 'x-user': 'a\u0000b' } }, 'holds a control character'],
    [{ method: 'POST', path: '/api/x', headers: { 'content-length': 'abc' } }, 'is not a number'],
    [{ method: 'POST', path: '/api/x', headers: { 'content-length': '5', 'transfer-encoding': 'chunked' } }, 'request smuggling shape'],
    [{ method: 'GET', path: '/api/x', headers: { cookie: 'a'.repeat(70_000) } }, 'the proxy answers 431'],
  ] as const)('denies %j as the proxy refuses it before any policy', async ([request, reason], { expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(output.reason)).toContain(reason);
  });

  it('reads a request the proxy reads: a body length, a tab in a value, a head just under 60 KiB', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/x', headers: { 'content-length': '5', 'x-user': 'alice\tbob', cookie: 'a'.repeat(60_000) } } }));
    expect(output.reason).not.toMatch(/the proxy answers/);
  });

  it('reads no request where the proxy reads none: an HTTP port without HTTP rules in force, a TCP port', async ({ expect }) => {
    const config = await configWith('plain.yaml', `apiVersion: v1
kind: Service
metadata: {name: plain, namespace: plain}
spec:
  selector: {app: plain}
  ports: [{name: http, port: 80, targetPort: 8080}]
`);
    // What the proxy would answer 400 where it reads requests: here it reaches the workload as it is.
    const odd = { method: 'BREW', path: '/a%zz', headers: { host: 'plain.plain', connection: 'host' } };
    const plain = decided(await ambit(['authz', 'check', '--config', config, '--request', '-'], JSON.stringify({ destination: { namespace: 'plain', labels: { app: 'plain' }, port: 8080 }, source: { principal: FRONT }, request: odd })));
    expect(plain).toMatchObject({ decision: 'ALLOW' });
    expect(String((plain as Output & { note?: string }).note)).toContain('no ALLOW or DENY rule with HTTP fields applies');
    const tcp = decided(await ambit(['authz', 'check', '--config', config, '--request', '-'], JSON.stringify({ destination: { namespace: 'plain', labels: { app: 'plain' }, port: 9000 }, source: { principal: FRONT }, request: odd })));
    expect(tcp).toMatchObject({ decision: 'ALLOW' });
    expect(String((tcp as Output & { note?: string }).note)).toContain('is not declared HTTP');
  });

  it.for([
    ['no Host at all', { method: 'GET', path: '/api/x' }, 'no Host'],
    ['a Host that is no authority', { method: 'GET', path: '/api/x', host: 'web shop' }, 'a Host that is not a valid authority'],
    ['a Host the Connection header takes away', { method: 'GET', path: '/api/x', headers: { host: 'web.shop', connection: 'host' } }, 'no Host field'],
    ['a method HTTP/1.1 does not know', { method: 'get', path: '/api/x', host: 'web.shop' }, 'not one HTTP/1.1'],
    ['a second Host field other than the authority', { method: 'GET', path: '/api/x', host: 'web.shop', headers: { Host: 'admin.shop' } }, 'a Host field other than the authority'],
  ] as const)('denies, as the proxy answers it 400 before any policy, a request with %s', async ([, http, reason], { expect }) => {
    const output = decided(await ambit(['authz', 'check', '--config', CONFIG, '--request', '-'], JSON.stringify({ destination: web(), source: { principal: FRONT }, request: http })));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(output.reason)).toContain(reason);
    expect(String(output.reason)).toContain('400');
  });

  it('denies a principal that names two namespaces, as the proxy refuses such a peer', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: 'cluster.local/tenant/ns/shop/x/ns/front/y' }, request: { method: 'GET', path: '/api/x' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(String(output.reason)).toContain('more than one namespace');
  });

  it('allows by a later rule of the same policy and names that rule', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { principal: ADMIN }, request: { method: 'GET', path: '/admin' } }));
    expect(output).toMatchObject({ decision: 'ALLOW', policy: 'shop/web-allow', rule: 1 });
  });

  it('decides a connection without "request" on an HTTP port at connection time: the HTTP rule defers', async ({ expect }) => {
    const output = decided(await check({ destination: web(8080), source: { principal: FRONT } }, { explain: true }));
    expect(output).toMatchObject({ decision: 'ALLOW', policy: 'shop/web-allow', rule: 0 });
    expect(output.explain?.moment).toBe('connect');
  });

  it('decides a connection on a plain TCP port as L4: a DENY rule with HTTP fields applies with them ignored', async ({ expect }) => {
    // shop/deny-delete denies DELETE; on port 9000, which no Service declares HTTP, methods are never known, so
    // the rule denies every connection there (fail closed for DENY), even one rule 1 of shop/web-allow would allow.
    const output = decided(await check({ destination: web(9000), source: { principal: ADMIN } }, { explain: true }));
    expect(output).toMatchObject({ decision: 'DENY', policy: 'shop/deny-delete', rule: 0 });
    expect(output.explain?.moment).toBe('tcp');
  });

  it('reads requests on a VM port that a ServiceEntry declares HTTP (a WorkloadEntry behind its workloadSelector), as Istio does', async ({ expect }) => {
    const config = await configWith('vm.yaml', VM_BEHIND_SERVICE_ENTRY);
    const vm = { namespace: 'bookinfo', workload: 'details-vm', port: 8080 };
    const source = { principal: 'cluster.local/ns/bookinfo/sa/bookinfo-productpage' };
    const allowed = decided(await check({ destination: vm, source, request: { method: 'GET', path: '/details/0' } }, { config, explain: true }));
    expect(allowed).toMatchObject({ decision: 'ALLOW', policy: 'bookinfo/details-viewer', rule: 0 });
    expect(allowed.explain?.moment).toBe('request');
    const refused = decided(await check({ destination: vm, source, request: { method: 'POST', path: '/details/0' } }, { config }));
    expect(refused).toMatchObject({ decision: 'DENY', policy: null });
    // The same VM described by its labels only.
    const byLabels = decided(await check({ destination: { namespace: 'bookinfo', labels: { app: 'details-legacy' }, port: 8080 }, source, request: { method: 'GET', path: '/x' } }, { config }));
    expect(byLabels).toMatchObject({ decision: 'ALLOW', policy: 'bookinfo/details-viewer' });
  });

  it('reads requests on a Service port with appProtocol kubernetes.io/ws, and not on kubernetes.io/wss (TLS the proxy cannot read)', async ({ expect }) => {
    const config = await configWith('chat.yaml', CHAT_SERVICES);
    const source = { principal: FRONT };
    const ws = decided(await check({ destination: { namespace: 'shop', labels: { app: 'chat' }, port: 8080 }, source, request: { method: 'GET', path: '/ws' } }, { config, explain: true }));
    expect(ws).toMatchObject({ decision: 'ALLOW', policy: 'shop/chat-ws' });
    expect(ws.explain?.moment).toBe('request');
    const wss = decided(await check({ destination: { namespace: 'shop', labels: { app: 'chat' }, port: 8443 }, source, request: { method: 'GET', path: '/ws' } }, { config, explain: true })) as Output & { note?: string };
    expect(wss.explain?.moment).toBe('tcp');
    expect(wss.note).toMatch(/^port 8443 is not declared HTTP/);
  });

  it('decides a request to a port not declared HTTP as the proxy does, as a TCP connection, and says so', async ({ expect }) => {
    // GET is no DELETE, but on port 9000 the proxy never sees the method: deny-delete applies to the connection.
    const output = decided(await check({ destination: web(9000), source: { principal: ADMIN }, request: { method: 'GET', path: '/admin' } }, { explain: true })) as Output & { note?: string };
    expect(output).toMatchObject({ decision: 'DENY', policy: 'shop/deny-delete', rule: 0 });
    expect(output.explain?.moment).toBe('tcp');
    expect(output.note).toMatch(/^port 9000 is not declared HTTP/);
    // On the HTTP port the same request is decided per request, and GET is allowed.
    expect(decided(await check({ destination: web(8080), source: { principal: ADMIN }, request: { method: 'GET', path: '/admin' } }))).toMatchObject({ decision: 'ALLOW' });
  });

  it('says which HTTP Service ports a destination given by labels cannot resolve, when a request meets a port not known as HTTP', async ({ expect }) => {
    const config = await configWith('named.yaml', 'apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\nspec:\n  selector: { app: api }\n  ports: [{ name: http, port: 80, targetPort: web }]\n');
    const output = decided(await check({ destination: { namespace: 'shop', labels: { app: 'api' }, port: 8080 }, source: { principal: FRONT }, request: { path: '/api' } }, { config })) as Output & { note?: string };
    expect(output.note).toContain('Service shop/api port 80 (targetPort "web") may target it: give destination.workload to resolve the name');
  });

  it('refuses a source without principal under STRICT, naming the PeerAuthentication', async ({ expect }) => {
    const output = decided(await check({ destination: web(), source: { ip: '10.0.2.7' }, request: { method: 'GET', path: '/api/x' } }));
    expect(output).toMatchObject({ decision: 'DENY', policy: 'shop/strict', rule: null });
  });

  it('evaluates a destination given by labels instead of a workload name', async ({ expect }) => {
    const allowed = decided(await check({ destination: { namespace: 'shop', labels: { app: 'db' }, port: 5432 }, source: { principal: 'cluster.local/ns/shop/sa/web' } }));
    expect(allowed).toMatchObject({ decision: 'ALLOW', policy: 'shop/db-allow', rule: 0 });
    const denied = decided(await check({ destination: { namespace: 'shop', labels: { app: 'db' }, port: 5432 }, source: { principal: FRONT } }));
    expect(denied).toMatchObject({ decision: 'DENY', policy: null, rule: null });
  });

  it('--explain lists every policy that applies, each rule with whether it matched and why', async ({ expect }) => {
    const result = await check({ destination: web(), source: { principal: FRONT }, request: { method: 'GET', path: '/api/items' } }, { explain: true });
    const output = decided(result);
    expect(output).toMatchObject({ decision: 'ALLOW', policy: 'shop/web-allow', rule: 0, reason: expect.any(String) });
    expect(output.explain).toEqual({
      destination: 'shop/web-1',
      moment: 'request',
      mtls: 'STRICT',
      policies: [
        { policy: 'shop/deny-delete', action: 'DENY', source: 'policies/web.yaml', rules: [{ rule: 0, matched: false, why: expect.any(String) }] },
        {
          policy: 'shop/web-allow',
          action: 'ALLOW',
          source: 'policies/web.yaml',
          rules: [{ rule: 0, matched: true, why: expect.any(String) }, { rule: 1, matched: false, why: expect.any(String) }],
        },
      ],
    });
  });

  it('--explain notes an ALLOW policy without rules', async ({ expect }) => {
    const config = await configWith('policies/nothing.yaml', 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: allow-nothing\n  namespace: shop\nspec: {}\n');
    const output = decided(await check({ destination: { namespace: 'shop', labels: { app: 'cache' }, port: 6379 }, source: { principal: FRONT } }, { config, explain: true }));
    expect(output).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(output.explain?.policies).toEqual([{ policy: 'shop/allow-nothing', action: 'ALLOW', source: 'policies/nothing.yaml', rules: [], note: expect.any(String) }]);
  });

  it('decides for the workload of the kind asked when a Pod and a WorkloadEntry share the name, and refuses to guess', async ({ expect }) => {
    // A VM named like the web Pod, without its labels: no policy selects it.
    const config = await configWith('vm.yaml', 'apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: { app: legacy }\n  annotations: { ambit.dev/node: vm-1 }\nspec: { address: 10.0.9.9, serviceAccount: legacy }\n');
    const request = (kind?: string) => ({ destination: { ...web(), ...(kind === undefined ? {} : { kind }) }, source: { principal: FRONT }, request: { method: 'GET', path: '/admin' } });
    expect(decided(await check(request('Pod'), { config }))).toMatchObject({ decision: 'DENY', policy: null, rule: null });
    expect(decided(await check(request('WorkloadEntry'), { config }))).toMatchObject({ decision: 'ALLOW', policy: null, rule: null });
    const ambiguous = await check(request(), { config });
    expect(ambiguous.status).toBe(2);
    expect(ambiguous.stdout).toBe('');
    expect(ambiguous.stderr.trim()).toContain('shop/web-1 is both a Pod and a WorkloadEntry; say which with "destination.kind"');
  });

  it('reads the request from stdin with --request -', async ({ expect }) => {
    const result = await ambit(['authz', 'check', '--config', CONFIG, '--request', '-'], JSON.stringify({ destination: web(), source: { principal: FRONT }, request: { path: '/api/x', host: 'web.shop' } }));
    expect(decided(result)).toMatchObject({ decision: 'ALLOW', policy: 'shop/web-allow', rule: 0 });
  });

  // ---- bad input: exit 2, one line on stderr with the error code, nothing on stdout ----

  const badRequests: { name: string; input: string; names: string }[] = [
    { name: 'input that is not JSON', input: '{"destination": ', names: 'JSON' },
    { name: 'a top-level JSON value that is not an object', input: '[1, 2]', names: '(top level)' },
    { name: 'an unknown field', input: JSON.stringify({ destination: { ...web(), prot: 8080 } }), names: 'destination.prot' },
    { name: 'an unknown field in the HTTP request', input: JSON.stringify({ destination: web(), request: { verb: 'GET' } }), names: 'request.verb' },
    { name: 'a port out of range', input: JSON.stringify({ destination: web(70_000) }), names: 'destination.port' },
    { name: 'a port written as a string', input: JSON.stringify({ destination: { ...web(), port: '8080' } }), names: 'destination.port' },
    { name: 'a missing port', input: JSON.stringify({ destination: { namespace: 'shop', workload: 'web-1' } }), names: 'destination.port' },
    { name: 'a source IP that is not an IP', input: JSON.stringify({ destination: web(), source: { ip: '10.0.0.300' } }), names: 'source.ip' },
    { name: 'a destination IP that is not an IP', input: JSON.stringify({ destination: { ...web(), ip: 'web-1' } }), names: 'destination.ip' },
    { name: 'a header value that is not a string', input: JSON.stringify({ destination: web(), request: { headers: { 'x-user': 7 } } }), names: 'x-user' },
    { name: 'a workload that is not in the configuration', input: JSON.stringify({ destination: { ...web(), workload: 'ghost' } }), names: 'ghost' },
    { name: 'a workload of another kind than the one asked', input: JSON.stringify({ destination: { ...web(), kind: 'WorkloadEntry' } }), names: 'WorkloadEntry shop/web-1 is not a workload' },
    { name: 'a kind that is neither Pod nor WorkloadEntry', input: JSON.stringify({ destination: { ...web(), kind: 'Deployment' } }), names: 'destination.kind' },
    { name: 'a request path that is an absolute URI', input: JSON.stringify({ destination: web(), request: { path: 'http://web/api/x' } }), names: 'request.path must be a path' },
    { name: 'a principal no peer could present', input: JSON.stringify({ destination: web(), source: { principal: 'bad principal' } }), names: 'source.principal "bad principal" is no SPIFFE ID' },
    { name: 'an unknown top-level field, named as it is', input: JSON.stringify({ destination: web(), bogus: 1 }), names: 'unknown field "bogus"' },
    { name: 'a destination given both by workload and by labels', input: JSON.stringify({ destination: { ...web(), labels: { app: 'web' } } }), names: 'not both' },
    { name: 'a kind without a workload', input: JSON.stringify({ destination: { namespace: 'shop', labels: { app: 'web' }, port: 8080, kind: 'Pod' } }), names: 'destination.kind' },
  ];

  for (const bad of badRequests) {
    it(`refuses ${bad.name} with exit 2 and one line naming it`, async ({ expect }) => {
      const result = await check(bad.input);
      expect(result.status).toBe(2);
      expect(result.stdout).toBe('');
      const lines = result.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('[USAGE]');
      expect(lines[0]).toContain(bad.names);
    });
  }

  it('refuses a missing --config with exit 2 and one line', async ({ expect }) => {
    const result = await ambit(['authz', 'check', '--request', '-'], JSON.stringify({ destination: web() }));
    expect(result.status).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('--config');
    expect(result.stderr).toContain('[USAGE]');
  });

  it('refuses a missing --request with exit 2 and one line', async ({ expect }) => {
    const result = await ambit(['authz', 'check', '--config', CONFIG]);
    expect(result.status).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('--request');
  });

  it('refuses a request file that cannot be read with exit 2 and one line', async ({ expect }) => {
    const result = await ambit(['authz', 'check', '--config', CONFIG, '--request', join(FIXTURES, 'requests', 'absent.json')]);
    expect(result.status).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toContain('[FILE_READ]');
  });

  // An invalid policy refuses the whole configuration. ConfigError's message is a heading plus one line per problem,
  // so with one problem stderr has the heading and exactly one line naming file, object and field.
  const badPolicies: { name: string; yaml: string; object: string; field: string; code: string }[] = [
    {
      name: 'a CIDR with a prefix longer than the address',
      yaml: 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad-cidr\n  namespace: shop\nspec:\n  rules:\n    - from:\n        - source:\n            ipBlocks: ["10.0.0.0/33"]\n',
      object: 'AuthorizationPolicy shop/bad-cidr', field: 'spec.rules[0].from[0].source.ipBlocks[0]', code: '[CONFIG_FIELD]',
    },
    {
      name: 'an unknown field in a source',
      yaml: 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: typo\n  namespace: shop\nspec:\n  rules:\n    - from:\n        - source:\n            principal: ["cluster.local/ns/front/sa/client"]\n',
      object: 'AuthorizationPolicy shop/typo', field: 'spec.rules[0].from[0].source.principal', code: '[CONFIG_',
    },
    {
      name: 'action CUSTOM',
      yaml: 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ext\n  namespace: shop\nspec:\n  action: CUSTOM\n  provider:\n    name: opa\n  rules:\n    - {}\n',
      object: 'AuthorizationPolicy shop/ext', field: 'spec.action', code: '[CONFIG_',
    },
    {
      name: 'a port out of range',
      yaml: 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad-port\n  namespace: shop\nspec:\n  rules:\n    - to:\n        - operation:\n            ports: ["70000"]\n',
      object: 'AuthorizationPolicy shop/bad-port', field: 'spec.rules[0].to[0].operation.ports[0]', code: '[CONFIG_',
    },
    {
      name: 'a principal that is not TD/ns/NS/sa/SA',
      yaml: 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad-principal\n  namespace: shop\nspec:\n  rules:\n    - from:\n        - source:\n            principals: ["front/client"]\n',
      object: 'AuthorizationPolicy shop/bad-principal', field: 'spec.rules[0].from[0].source.principals[0]', code: '[CONFIG_',
    },
  ];

  for (const bad of badPolicies) {
    it(`refuses a configuration with ${bad.name}, naming file, object and field, with exit 2`, async ({ expect }) => {
      const config = await configWith('policies/bad.yaml', bad.yaml);
      const result = await ambit(['authz', 'check', '--config', config, '--request', join(FIXTURES, 'requests', 'front-get-api.json')]);
      expect(result.status).toBe(2);
      expect(result.stdout).toBe('');
      const problems = result.stderr.trim().split('\n').filter((line) => line.includes('policies/bad.yaml'));
      expect(problems).toHaveLength(1);
      expect(problems[0]).toContain(bad.object);
      expect(problems[0]).toContain(`${bad.field}:`);
      expect(result.stderr).toContain(bad.code);
      expect(result.stderr.trim().split('\n').length).toBeLessThanOrEqual(2);
    });
  }
});
