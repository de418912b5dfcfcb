// Test plumbing shared by the corpus and the property tests: policies from YAML (through the real loader and
// validator) or from ready-made objects, compiled by src/authz and mirrored as a world for the reference evaluator,
// and one request turned into both the compiled matcher's AuthzContext and the reference's plain request.
import { compileAuthorization } from '../../../src/authz/compile.ts';
import type { CompiledAuthorization, Decision, WorkloadPolicies } from '../../../src/authz/compile.ts';
import { authzContext, clientIpOfForwardedFor, decide } from '../../../src/authz/decide.ts';
import type { AuthzContext, HttpRequestFacts } from '../../../src/authz/decide.ts';
import { parseIp } from '../../../src/authz/match.ts';
import type { IpAddress } from '../../../src/authz/match.ts';
import { ENFORCE_ANNOTATION } from '../../../src/authz/types.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import type { ConfigObject } from '../../../src/config/objects.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import type { Moment, ReferenceDestination, ReferenceRequest, ReferenceWorld } from './reference.ts';

export interface Loaded {
  readonly snapshot: ConfigSnapshot;
  readonly compiled: CompiledAuthorization;
  readonly world: ReferenceWorld;
}

export function meshConfigYaml(rootNamespace: string): string {
  return `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  trustDomain: cluster.local
  rootNamespace: ${rootNamespace}
`;
}

/** The reference's view of a snapshot's security objects, in configuration order. */
export function worldOf(snapshot: ConfigSnapshot): ReferenceWorld {
  const policies = [];
  const peerAuthentications = [];
  for (const object of snapshot.objects) {
    if (object.kind === 'AuthorizationPolicy') {
      policies.push({ namespace: object.metadata.namespace, name: object.metadata.name, spec: object.spec });
    } else if (object.kind === 'PeerAuthentication') {
      peerAuthentications.push({ namespace: object.metadata.namespace, name: object.metadata.name, enforce: object.metadata.annotations[ENFORCE_ANNOTATION] === 'true', createdMs: object.metadata.createdMs, spec: object.spec });
    }
  }
  return { rootNamespace: snapshot.mesh.rootNamespace, policies, peerAuthentications };
}

export function loadObjects(objects: readonly ConfigObject[]): Loaded {
  const snapshot = buildSnapshot(objects);
  return { snapshot, compiled: compileAuthorization(snapshot), world: worldOf(snapshot) };
}

/** YAML documents (policies, PeerAuthentications, optionally a MeshConfig) → snapshot, compiled matchers, reference world. */
export function loadYaml(yaml: string, rootNamespace?: string): Loaded {
  const text = rootNamespace === undefined ? yaml : `${meshConfigYaml(rootNamespace)}---\n${yaml}`;
  return loadObjects(parseConfigText(text, 'policies.yaml'));
}

/** One request's HTTP facts, as the proxy's inspector gives them: one class, so decide() sees one shape. */
class RequestFacts implements HttpRequestFacts {
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly remoteIp: IpAddress | null;
  readonly #headers: ReadonlyMap<string, string>;

  constructor(method: string, path: string, host: string, headers: Readonly<Record<string, string>>) {
    this.method = method;
    this.path = path;
    this.host = host;
    this.#headers = new Map(Object.entries(headers));
    this.remoteIp = clientIpOfForwardedFor(this.#headers.get('x-forwarded-for'));
  }

  /** As the proxy's MutableFacts answers: the Host is the decided authority, pseudo-headers come from the request. */
  header(name: string): string | undefined {
    if (name === 'host' || name === ':authority') return this.host === '' ? undefined : this.host;
    if (name === ':method') return this.method;
    if (name === ':path') return this.path;
    if (name === ':scheme') return 'http';
    return name.startsWith(':') ? undefined : this.#headers.get(name);
  }
}

function ipOf(text: string | null): IpAddress | null {
  if (text === null) return null;
  const parsed = parseIp(text);
  if (parsed === null) throw new Error(`test request has a bad IP: ${text}`);
  return parsed;
}

/** The context the proxy would fill for this request (IPs parsed once, headers by lower-case name). */
export function contextOf(request: ReferenceRequest): AuthzContext {
  const http = request.http;
  return authzContext({
    sourcePrincipal: request.principal,
    sourceNamespace: request.namespace,
    sourceIp: ipOf(request.sourceIp),
    destinationIp: ipOf(request.destinationIp),
    destinationPort: request.port,
    request: http === null ? null : new RequestFacts(http.method, http.path, http.host, http.headers),
  });
}

/**
 * Ports the tests' destinations declare HTTP: their rule lists also index paths and hosts. A request on another
 * port (9090 in the property tests; a dry run can ask) is decided by checking paths and hosts per rule instead.
 */
export const HTTP_PORTS: ReadonlySet<number> = new Set([80, 8080]);

export function matcherFor(loaded: Loaded, destination: ReferenceDestination): WorkloadPolicies {
  return loaded.compiled.forLabels(destination.namespace, destination.labels, HTTP_PORTS);
}

export function compiledDecision(loaded: Loaded, destination: ReferenceDestination, request: ReferenceRequest, moment: Moment): Decision {
  return decide(matcherFor(loaded, destination), contextOf(request), moment);
}
