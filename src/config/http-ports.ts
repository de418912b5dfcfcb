/**
 * Which ports of a workload carry HTTP, as Istio declares them: the ports of the Services that select it (by
 * appProtocol or name) and of the mesh ServiceEntries that name it (by `protocol`: Istio's VM pattern, a
 * WorkloadEntry behind a ServiceEntry's workloadSelector). The node proxy inspects HTTP on these ports only.
 */
import type { ServiceEntryObject, ServiceEntryPort, ServicePort } from './objects.ts';
import type { ConfigSnapshot, Workload } from './snapshot.ts';

/**
 * The HTTP version Istio speaks to the workload on a port it reads as HTTP (`protocol.Instance.IsHTTP2`: HTTP2, GRPC
 * and GRPC-Web are HTTP/2; HTTP and HTTP_PROXY are HTTP/1.1), whatever the client spoke: Envoy converts. null: not HTTP.
 */
export type HttpVersion = 'http1' | 'http2';

/**
 * Istio's protocol of a Service port (`ConvertProtocol`, pkg/config/kube/conversion.go): Kubernetes' standard
 * appProtocols first, then the appProtocol, else the port name, up to its first `-` (`grpc-web` whole). `h2c` is
 * ambit's own: Istio sniffs such a port and finds HTTP, and ambit does not sniff.
 */
export function httpVersionOf(appProtocol: string | undefined, name: string | undefined): HttpVersion | null {
  if (appProtocol === 'kubernetes.io/h2c') return 'http2';
  if (appProtocol === 'kubernetes.io/ws') return 'http1';
  if (appProtocol === 'kubernetes.io/wss') return null;
  const declared = (appProtocol ?? name ?? '').toLowerCase();
  if (declared.startsWith('grpc-web')) return 'http2';
  const dash = declared.indexOf('-');
  return versionOfName(dash < 0 ? declared : declared.slice(0, dash));
}

export function isHttpProtocol(appProtocol: string | undefined, name: string | undefined): boolean {
  return httpVersionOf(appProtocol, name) !== null;
}

/** A ServiceEntry port's `protocol` (Istio's `protocol.Parse(...)`; the validator upper-cases it). */
export function entryHttpVersionOf(protocol: string | undefined): HttpVersion | null {
  if (protocol === undefined) return null;
  const lower = protocol.toLowerCase();
  return lower === 'grpc-web' ? 'http2' : versionOfName(lower);
}

export function isHttpEntryProtocol(protocol: string | undefined): boolean {
  return entryHttpVersionOf(protocol) !== null;
}

function versionOfName(name: string): HttpVersion | null {
  if (name === 'http' || name === 'http_proxy') return 'http1';
  if (name === 'http2' || name === 'grpc' || name === 'h2c') return 'http2';
  return null;
}

/** A Service port's targetPort on one workload: a number, or a named container/WorkloadEntry port. */
export function targetPortOn(workload: Workload, port: ServicePort): number | undefined {
  if (typeof port.targetPort === 'number') return port.targetPort;
  const object = workload.object;
  // Own keys only: a port named `constructor` must not read Object.prototype's.
  if (object.kind === 'WorkloadEntry') return Object.hasOwn(object.spec.ports, port.targetPort) ? object.spec.ports[port.targetPort] : undefined;
  for (const container of object.spec.containers) {
    for (const containerPort of container.ports) if (containerPort.name === port.targetPort) return containerPort.containerPort;
  }
  return undefined;
}

/** Where a ServiceEntry port lands on a workload: its port of the same name, else the port's targetPort, else its number. */
export function entryTargetPort(port: ServiceEntryPort, ports: Readonly<Record<string, number>>): number {
  const named = port.name !== undefined && Object.hasOwn(ports, port.name) ? ports[port.name] : undefined;
  return named ?? port.targetPort ?? port.number;
}

/** A policy's or ServiceEntry's selector: none selects every workload. */
export function selects(selector: Readonly<Record<string, string>> | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (selector === undefined) return true;
  for (const key in selector) if (labels[key] !== selector[key]) return false;
  return true;
}

type Service = ConfigSnapshot['services'][number];

/** The snapshot's Services and ServiceEntries grouped once, for the HTTP ports of each of its workloads. */
export interface HttpPortSources {
  readonly services: ReadonlyMap<string, readonly Service[]>;
  /** ServiceEntries with a workloadSelector, by namespace (they select workloads of their own namespace). */
  readonly selecting: ReadonlyMap<string, readonly ServiceEntryObject[]>;
  /** ServiceEntry endpoints at a workload's IP, by that workload (entries of the workload's own namespace). */
  readonly endpoints: ReadonlyMap<Workload, readonly { readonly entry: ServiceEntryObject; readonly ports: Readonly<Record<string, number>> }[]>;
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list === undefined) map.set(key, [value]);
  else list.push(value);
}

export function httpPortSources(snapshot: ConfigSnapshot): HttpPortSources {
  const services = new Map<string, Service[]>();
  for (const service of snapshot.services) push(services, service.metadata.namespace, service);
  const selecting = new Map<string, ServiceEntryObject[]>();
  const endpoints = new Map<Workload, { entry: ServiceEntryObject; ports: Readonly<Record<string, number>> }[]>();
  for (const entry of snapshot.objectsOfKind('ServiceEntry')) {
    if (!entry.spec.ports.some((port) => isHttpEntryProtocol(port.protocol))) continue;
    if (entry.spec.workloadSelector !== undefined) push(selecting, entry.metadata.namespace, entry);
    else {
      for (const endpoint of entry.spec.endpoints) {
        const workload = snapshot.workloadByIp(endpoint.address);
        // Only its own namespace's: an entry in another namespace must not change how a workload's traffic is read (a
        // tenant declaring HTTP on another's database port would break its connections).
        if (workload !== undefined && workload.namespace === entry.metadata.namespace) push(endpoints, workload, { entry, ports: endpoint.ports });
      }
    }
  }
  return { services, selecting, endpoints };
}

/**
 * The ports of one workload that carry HTTP, each with the version its workload speaks; null where declarations
 * disagree (a Service says `http`, another `grpc`): then the proxy speaks whatever the client spoke.
 */
export function httpPortVersionsOf(sources: HttpPortSources, workload: Workload): Map<number, HttpVersion | null> {
  const result = new Map<number, HttpVersion | null>();
  const add = (port: number, version: HttpVersion) => {
    const known = result.get(port);
    result.set(port, known === undefined || known === version ? version : null);
  };
  for (const service of sources.services.get(workload.namespace) ?? []) {
    if (service.spec.selector === undefined || !selects(service.spec.selector, workload.labels)) continue;
    for (const port of service.spec.ports) {
      const version = httpVersionOf(port.appProtocol, port.name);
      if (version === null) continue;
      const target = targetPortOn(workload, port);
      if (target !== undefined) add(target, version);
    }
  }
  const ownPorts = workload.object.kind === 'WorkloadEntry' ? workload.object.spec.ports : {};
  for (const entry of sources.selecting.get(workload.namespace) ?? []) {
    if (!selects(entry.spec.workloadSelector?.labels, workload.labels)) continue;
    for (const port of entry.spec.ports) {
      const version = entryHttpVersionOf(port.protocol);
      if (version !== null) add(entryTargetPort(port, ownPorts), version);
    }
  }
  for (const { entry, ports } of sources.endpoints.get(workload) ?? []) {
    for (const port of entry.spec.ports) {
      const version = entryHttpVersionOf(port.protocol);
      if (version !== null) add(entryTargetPort(port, ports), version);
    }
  }
  return result;
}

/**
 * The HTTP ports of a workload described only by namespace and labels (`ambit authz check` without a registered
 * workload). A Service's named targetPort cannot be resolved without the workload's ports: those are returned apart.
 */
export function httpPortsOfLabels(sources: HttpPortSources, namespace: string, labels: Readonly<Record<string, string>>): { ports: Set<number>; unresolved: string[] } {
  const ports = new Set<number>();
  const unresolved: string[] = [];
  for (const service of sources.services.get(namespace) ?? []) {
    if (service.spec.selector === undefined || !selects(service.spec.selector, labels)) continue;
    for (const port of service.spec.ports) {
      if (!isHttpProtocol(port.appProtocol, port.name)) continue;
      if (typeof port.targetPort === 'number') ports.add(port.targetPort);
      else unresolved.push(`Service ${namespace}/${service.metadata.name} port ${port.port} (targetPort "${port.targetPort}")`);
    }
  }
  for (const entry of sources.selecting.get(namespace) ?? []) {
    if (!selects(entry.spec.workloadSelector?.labels, labels)) continue;
    for (const port of entry.spec.ports) if (isHttpEntryProtocol(port.protocol)) ports.add(entryTargetPort(port, {}));
  }
  return { ports, unresolved };
}
