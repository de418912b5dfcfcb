// `ambit authz check`: evaluates one request against the configuration's policies, offline, exactly as
// the proxy would, so operators can try a policy before they apply it.
import { http as nodeHttp } from '../node-http.ts';
import { readFile } from 'node:fs/promises';
import { AmbitError, fileFailure } from '../errors.ts';
import { parse, requireString } from './args.ts';
import type { Command } from './args.ts';
import { loadConfigDir } from '../config/loader.ts';
import { isWorkloadKind } from '../config/snapshot.ts';
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import { authorizationOf, DENY_ON_ERROR } from '../authz/compile.ts';
import { httpPortSources, httpPortsOfLabels } from '../config/http-ports.ts';
import type { WorkloadPolicies } from '../authz/compile.ts';
import { authzContext, decideSafely, mtlsModeFor } from '../authz/decide.ts';
import type { AuthzContext, DecisionMoment } from '../authz/decide.ts';
import { explain } from '../authz/explain.ts';
import { parseIp } from '../authz/match.ts';
import { forwardableRawHeaders, MAX_REQUEST_HEADER_BYTES, MutableFacts } from '../proxy/l7.ts';
import { AMBIGUOUS_NAMESPACE, namespaceOfPath, tryParseSpiffeId } from '../identity/spiffe-id.ts';

const help = `usage: ambit authz check --config DIR --request FILE|- [--explain]

Evaluates one request against the AuthorizationPolicies and PeerAuthentications in DIR, as the node
proxy would, and prints {"decision": "ALLOW"|"DENY", "policy": "ns/name"|null, "rule": N|null,
"reason": "..."}. Exit 0 for any decision, 2 for bad input. The request (JSON, from FILE or stdin):

  {"destination": {"namespace": "demo", "workload": "web-1" | "labels": {"app": "web"},
                   "port": 8080, "ip": "10.0.0.5"},
   "source": {"principal": "cluster.local/ns/demo/sa/client", "namespace": "demo", "ip": "10.0.0.9"},
   "request": {"method": "GET", "path": "/api", "host": "web.demo", "headers": {"x-user": "alice"}}}

"request" absent: an L4 connection (on a port declared HTTP, the connection-time decision). A
"request", where the proxy reads requests (HTTP rules in force on a port declared HTTP), is read as it
reads an HTTP/1.1 request: one it answers 400 (no host, a bad Host or path, a method HTTP/1.1 does not
know) is a DENY naming why. A
"request" to a port not declared HTTP is decided as the proxy decides it there, as a TCP connection
(the output's "note" says so). A source
without "principal" is a connection without peer identity (plaintext). "destination.kind" ("Pod" or
"WorkloadEntry") says which of two workloads sharing the name is meant. --explain adds, for every
policy that applies, why each rule matched or did not.
`;

type Json = Record<string, unknown>;

function object(value: unknown, field: string): Json {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AmbitError('USAGE', `request: "${field}" must be an object`);
  return value as Json;
}

function optionalString(parent: Json, key: string, field: string): string | undefined {
  const value = parent[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') throw new AmbitError('USAGE', `request: "${field}" must be a string`);
  return value;
}

/** `field` null: the input's top level. */
function checkKeys(parent: Json, allowed: string[], field: string | null): void {
  for (const key of Object.keys(parent)) if (!allowed.includes(key)) throw new AmbitError('USAGE', `request: unknown field "${field === null ? key : `${field}.${key}`}" (allowed: ${allowed.join(', ')})`);
}

function ipField(parent: Json, key: string, field: string) {
  const text = optionalString(parent, key, field);
  if (text === undefined) return null;
  const ip = parseIp(text);
  if (ip === null) throw new AmbitError('USAGE', `request: "${field}" is not an IP address: ${JSON.stringify(text)}`);
  return ip;
}

interface Target {
  policies: WorkloadPolicies;
  description: string;
  /** For a destination given by labels: HTTP Service ports whose targetPort is a name, which only a workload resolves. */
  unresolved: string[];
}

function target(snapshot: ConfigSnapshot, destination: Json): Target {
  const namespace = optionalString(destination, 'namespace', 'destination.namespace') ?? 'default';
  const name = optionalString(destination, 'workload', 'destination.workload');
  const authorization = authorizationOf(snapshot);
  const kind = optionalString(destination, 'kind', 'destination.kind');
  if (kind !== undefined && !isWorkloadKind(kind)) throw new AmbitError('USAGE', `request: "destination.kind" must be "Pod" or "WorkloadEntry", not ${JSON.stringify(kind)}`);
  if (name !== undefined) {
    // A Pod and a WorkloadEntry may share namespace/name, with different labels and so different policies: never a guess.
    const named = snapshot.workloads.filter((w: Workload) => w.namespace === namespace && w.name === name && (kind === undefined || w.kind === kind));
    const workload = named[0];
    if (workload === undefined) throw new AmbitError('USAGE', `request: destination.workload ${kind === undefined ? '' : `${kind} `}${namespace}/${name} is not a workload in the configuration`);
    if (named.length > 1) throw new AmbitError('USAGE', `request: destination.workload ${namespace}/${name} is both a Pod and a WorkloadEntry; say which with "destination.kind"`);
    return { policies: authorization.forWorkload(workload), description: `${namespace}/${name}`, unresolved: [] };
  }
  if (kind !== undefined) throw new AmbitError('USAGE', 'request: "destination.kind" needs "destination.workload"');
  const labelsValue = destination.labels === undefined ? {} : object(destination.labels, 'destination.labels');
  const labels: Record<string, string> = {};
  for (const [key, value] of Object.entries(labelsValue)) {
    if (typeof value !== 'string') throw new AmbitError('USAGE', `request: destination.labels.${key} must be a string`);
    labels[key] = value;
  }
  // HTTP ports of a workload that is not in the registry: those of the Services and ServiceEntries that would select it.
  const { ports: httpPorts, unresolved } = httpPortsOfLabels(httpPortSources(snapshot), namespace, labels);
  return { policies: authorization.forLabels(namespace, labels, httpPorts), description: `${namespace} ${JSON.stringify(labels)}`, unresolved };
}

export const command: Command = {
  summary: 'authorization dry run: evaluate one request against the configuration\'s policies',
  help,
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub !== 'check') throw new AmbitError('USAGE', sub === undefined ? 'missing subcommand (check)' : `unknown subcommand "${sub}" (check)`);
    const { values } = parse(rest, { config: { type: 'string' }, request: { type: 'string' }, explain: { type: 'boolean' } }, false);
    const configDir = requireString(values.config, 'config');
    const requestFile = requireString(values.request, 'request');
    let text: string;
    try {
      text = requestFile === '-' ? await readStdin() : await readFile(requestFile, 'utf8');
    } catch (error) {
      throw new AmbitError('FILE_READ', `--request ${requestFile}: cannot be read (${fileFailure(error)})`);
    }
    let input: Json;
    try {
      input = object(JSON.parse(text), '(top level)');
    } catch (error) {
      if (error instanceof AmbitError) throw error;
      throw new AmbitError('USAGE', `${requestFile}: not JSON (${(error as Error).message})`);
    }
    checkKeys(input, ['destination', 'source', 'request'], null);
    const destination = object(input.destination, 'destination');
    checkKeys(destination, ['namespace', 'workload', 'kind', 'labels', 'port', 'ip'], 'destination');
    if (destination.workload !== undefined && destination.labels !== undefined) throw new AmbitError('USAGE', 'request: give "destination.workload" or "destination.labels", not both');
    const port = destination.port;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65_535) throw new AmbitError('USAGE', 'request: "destination.port" must be an integer 1-65535');
    const source = input.source === undefined ? {} : object(input.source, 'source');
    checkKeys(source, ['principal', 'namespace', 'ip'], 'source');
    let principal = optionalString(source, 'principal', 'source.principal') ?? null;
    if (principal?.startsWith('spiffe://')) principal = principal.slice('spiffe://'.length);
    if (principal !== null) {
      // The proxy's peers are SPIFFE IDs it verified: a principal no peer could present is a mistake in the request.
      const parsed = tryParseSpiffeId(`spiffe://${principal}`);
      if (parsed instanceof AmbitError) throw new AmbitError('USAGE', `request: source.principal ${JSON.stringify(principal)} is no SPIFFE ID (TRUST_DOMAIN/PATH, as cluster.local/ns/NS/sa/SA): ${parsed.message}`);
    }
    let sourceNamespace = optionalString(source, 'namespace', 'source.namespace') ?? null;
    if (sourceNamespace === null && principal !== null) {
      const slash = principal.indexOf('/');
      const found = slash < 0 ? null : namespaceOfPath(principal.slice(slash));
      if (found === AMBIGUOUS_NAMESPACE) {
        process.stdout.write(JSON.stringify({ decision: 'DENY', policy: null, rule: null, reason: 'the principal names more than one namespace (/ns/NAME/ twice): the proxy refuses such a peer' }) + '\n');
        return 0;
      }
      sourceNamespace = found;
    }

    // The request as an HTTP/1.1 client sends it; read (below) only where the proxy reads requests.
    let requestInput: { raw: string[]; rawPath: string; host: string; method: string } | null = null;
    if (input.request !== undefined) {
      const r = object(input.request, 'request');
      checkKeys(r, ['method', 'path', 'host', 'headers'], 'request');
      const raw: string[] = [];
      let hostField: string | undefined;
      if (r.headers !== undefined) {
        for (const [key, value] of Object.entries(object(r.headers, 'request.headers'))) {
          if (typeof value !== 'string') throw new AmbitError('USAGE', `request: request.headers.${key} must be a string`);
          raw.push(key, value);
          if (key.toLowerCase() === 'host') hostField = value;
        }
      }
      const rawPath = optionalString(r, 'path', 'request.path') ?? '/';
      if (rawPath.charCodeAt(0) !== 47 && rawPath !== '*') throw new AmbitError('USAGE', `request: request.path must be a path starting with "/" (got "${rawPath}"); give an absolute URI's authority as request.host`);
      const host = optionalString(r, 'host', 'request.host') ?? hostField ?? '';
      if (hostField === undefined && host !== '') raw.push('host', host);
      requestInput = { raw, rawPath, host, method: optionalString(r, 'method', 'request.method') ?? 'GET' };
    }

    const snapshot = await loadConfigDir(configDir, { requireMesh: false });
    const { policies, description, unresolved } = target(snapshot, destination);
    // As the proxy: requests are read only on ports declared HTTP, and there only for a workload that HTTP rules in
    // force apply to; elsewhere a request is bytes of a connection, decided once with HTTP fields unknown.
    const http = policies.httpPorts.has(port);
    const inspected = http && policies.hasEnforcingL7Rules;
    let request: AuthzContext['request'] = null;
    if (requestInput !== null && inspected) {
      // Read by the proxy's own request facts: every request it answers 400 before any policy (a Host it cannot read, a
      // field the Connection header takes away, a bad path) is refused here too, with the same words.
      const refuse = (reason: string): number => {
        process.stdout.write(JSON.stringify({ decision: 'DENY', policy: null, rule: null, reason }) + '\n');
        return 0;
      };
      const { raw, rawPath, host, method } = requestInput;
      if (host === '') return refuse('no Host (give request.host): the proxy answers 400 to an HTTP request without one');
      // Node's HTTP/1.1 parser knows its methods by name, in capitals (`get` is no method to it); over h2c any name goes.
      if (!nodeHttp.METHODS.includes(method)) return refuse(`an HTTP/1.1 request with method ${JSON.stringify(method)}, which is not one HTTP/1.1's parser knows (names are case-sensitive): the proxy answers 400 (over HTTP/2 it is decided by policy)`);
      if (method === 'CONNECT') return refuse('CONNECT inside an inspected connection cannot be forwarded as a request: the proxy answers 405');
      const unreadable = unparseableHead(method, rawPath, raw);
      if (unreadable !== null) return refuse(unreadable);
      const facts = new MutableFacts();
      const malformed = facts.fill(method, rawPath, host, forwardableRawHeaders(raw), true, snapshot.mesh.pathNormalization);
      if (malformed !== null) return refuse(`${malformed}: the proxy answers 400`);
      request = facts;
    }
    const ctx: AuthzContext = authzContext({
      sourcePrincipal: principal,
      sourceNamespace,
      sourceIp: ipField(source, 'ip', 'source.ip'),
      destinationIp: ipField(destination, 'ip', 'destination.ip'),
      destinationPort: port,
      request,
    });
    const moment: DecisionMoment = http ? (request !== null ? 'request' : 'connect') : 'tcp';
    const decision = decideSafely(policies, ctx, moment, DENY_ON_ERROR);
    const output: Record<string, unknown> = { decision: decision.allow ? 'ALLOW' : 'DENY', policy: decision.policy, rule: decision.rule, reason: decision.reason };
    if (requestInput !== null && !http) {
      output.note = `port ${port} is not declared HTTP (no Service port with appProtocol or name http, http2, grpc or h2c (or http-web and the like), nor a ServiceEntry port with protocol HTTP, HTTP2 or GRPC, targets it): the proxy does not read requests there, so this was decided as a TCP connection`;
      // A named targetPort is resolved by a workload's container ports, which a destination given by labels has not.
      if (unresolved.length > 0) output.note += `; ${unresolved.join(', ')} may target it: give destination.workload to resolve the name`;
    } else if (requestInput !== null && !inspected) {
      output.note = `port ${port} is declared HTTP, but no ALLOW or DENY rule with HTTP fields applies to this workload: the proxy does not read its requests (they reach it as they are), so this was decided as the connection`;
    }
    if (values.explain) {
      output.explain = {
        destination: description,
        moment,
        mtls: mtlsModeFor(policies, port),
        policies: explain(policies, ctx, moment),
      };
    }
    process.stdout.write(JSON.stringify(output, null, values.explain ? 2 : undefined) + '\n');
    return 0;
  },
};

/** A field name as HTTP/1.1 writes one (RFC 9110 §5.1). */
const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Whether a field value holds a control character (all but HTAB): the wire has no way to carry CR or LF in one. */
function hasControlCharacter(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if ((code < 0x20 && code !== 0x09) || code === 0x7f) return true;
  }
  return false;
}

/**
 * Why Node's HTTP/1.1 parser, as the proxy runs it, would refuse this request before any policy (the answer and the
 * reason, as the proxy gives them), or null when it would read it: a field name or value no request can carry, a
 * length that is no number or beside a transfer coding (request smuggling's shapes), a head larger than it takes.
 */
function unparseableHead(method: string, path: string, raw: readonly string[]): string | null {
  let bytes = method.length + 1 + path.length + ' HTTP/1.1\r\n'.length + 2;
  let length: string | undefined;
  let coding = false;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    if (!FIELD_NAME.test(name)) return `header name ${JSON.stringify(name)} is not a token (RFC 9110 §5.1): the proxy answers 400`;
    if (hasControlCharacter(value)) return `header ${name} holds a control character (CR, LF, NUL and the like) no request can carry: the proxy answers 400`;
    const lower = name.toLowerCase();
    if (lower === 'content-length') {
      if (!/^\s*\d+\s*$/.test(value)) return `content-length ${JSON.stringify(value)} is not a number: the proxy answers 400`;
      if (length !== undefined && length.trim() !== value.trim()) return 'two content-length fields that differ: the proxy answers 400';
      length = value;
    } else if (lower === 'transfer-encoding') {
      coding = true;
    }
    bytes += Buffer.byteLength(name) + 2 + Buffer.byteLength(value, 'latin1') + 2;
  }
  if (length !== undefined && coding) return 'content-length beside transfer-encoding (a request smuggling shape): the proxy answers 400';
  if (bytes > MAX_REQUEST_HEADER_BYTES) return `a request head of ${bytes} bytes, over the ${MAX_REQUEST_HEADER_BYTES} the proxy takes (Envoy's default): the proxy answers 431`;
  return null;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
