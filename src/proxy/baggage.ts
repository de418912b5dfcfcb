// The W3C baggage header ztunnel sends on CONNECT to describe the source workload (k8s.namespace.name,
// k8s.pod.name, ...), used for metric labels at the destination. Built once per source workload at
// configuration load; parsed at most once per distinct value (a small cache), never trusted for policy.
import type { Workload } from '../config/snapshot.ts';

export interface BaggageInfo {
  readonly namespace: string | undefined;
  readonly workload: string | undefined;
  /** service.name and service.version: the canonical service and revision. */
  readonly service: string | undefined;
  readonly revision: string | undefined;
  readonly cluster: string | undefined;
  /** cloud.region and cloud.availability_zone. */
  readonly region: string | undefined;
  readonly zone: string | undefined;
}

/** Only these keys matter to us; values are token-ish, so anything odd is dropped rather than escaped. */
const VALUE = /^[A-Za-z0-9._-]{1,253}$/;
const MAX_HEADER_BYTES = 1024;
const MAX_CACHED = 1024;
const cache = new Map<string, BaggageInfo | null>();

/**
 * ztunnel's baggage: the cluster, the workload's name under its kind (`k8s.deployment.name=web`), its canonical
 * service and revision, and its region and zone when known (ztunnel sends only keys with a value).
 */
export function buildBaggage(workload: Workload): string {
  const locality = `${workload.region === '' ? '' : `,cloud.region=${workload.region}`}${workload.zone === '' ? '' : `,cloud.availability_zone=${workload.zone}`}`;
  return `k8s.cluster.name=${workload.cluster},k8s.namespace.name=${workload.namespace},k8s.${workload.workloadType}.name=${workload.workloadName},service.name=${workload.canonicalService},service.version=${workload.canonicalRevision}${locality}`;
}

export function parseBaggage(header: string | string[] | undefined): BaggageInfo | null {
  if (typeof header !== 'string' || header.length === 0 || header.length > MAX_HEADER_BYTES) return null;
  const cached = cache.get(header);
  if (cached !== undefined) return cached;
  let namespace: string | undefined;
  let workload: string | undefined;
  let service: string | undefined;
  let revision: string | undefined;
  let cluster: string | undefined;
  let region: string | undefined;
  let zone: string | undefined;
  for (const member of header.split(',')) {
    const equals = member.indexOf('=');
    if (equals <= 0) continue;
    const key = member.slice(0, equals).trim();
    const value = member.slice(equals + 1).split(';')[0]?.trim() ?? '';
    if (!VALUE.test(value)) continue;
    if (key === 'k8s.namespace.name') namespace = value;
    else if (key === 'k8s.cluster.name') cluster = value;
    else if (key === 'service.name') service = value;
    else if (key === 'service.version') revision = value;
    else if (key === 'cloud.region') region = value;
    else if (key === 'cloud.availability_zone') zone = value;
    else if (key.startsWith('k8s.') && key.endsWith('.name')) workload ??= value;
  }
  const info = namespace === undefined && workload === undefined ? null : { namespace, workload, service, revision, cluster, region, zone };
  if (cache.size >= MAX_CACHED) cache.clear();
  cache.set(header, info);
  return info;
}
