// The metric label blocks of workloads and Services, built once per configuration object and kept as long as it
// lives, so a connection's labels are a few references, not strings built per connection.
import type { Workload } from '../config/snapshot.ts';
import type { ServiceObject } from '../config/objects.ts';
import { UNKNOWN_WORKLOAD, workloadLabels } from '../observe/metrics.ts';
import type { ServiceLabels, WorkloadLabels } from '../observe/metrics.ts';
import type { BaggageInfo } from './baggage.ts';

const byWorkload = new WeakMap<Workload, WorkloadLabels>();
const byService = new WeakMap<ServiceObject, ServiceLabels>();

/** ztunnel's labels for a workload the registry knows. */
export function labelsOfWorkload(workload: Workload): WorkloadLabels {
  let labels = byWorkload.get(workload);
  if (labels === undefined) {
    labels = workloadLabels({
      workload: workload.workloadName,
      namespace: workload.namespace,
      canonicalService: workload.canonicalService,
      canonicalRevision: workload.canonicalRevision,
      app: workload.canonicalService,
      version: workload.canonicalRevision,
      cluster: workload.cluster,
      region: workload.region,
      zone: workload.zone,
    });
    byWorkload.set(workload, labels);
  }
  return labels;
}

export function labelsOfService(service: ServiceObject): ServiceLabels {
  let labels = byService.get(service);
  if (labels === undefined) {
    labels = Object.freeze({ hostname: service.hostname, name: service.metadata.name, namespace: service.metadata.namespace });
    byService.set(service, labels);
  }
  return labels;
}

const MAX_NAMESPACES = 4096;
const byNamespace = new Map<string, WorkloadLabels>();

/** A source known only by the namespace of its identity: every other label 'unknown'. */
export function labelsOfNamespace(namespace: string | null): WorkloadLabels {
  if (namespace === null) return UNKNOWN_WORKLOAD;
  let labels = byNamespace.get(namespace);
  if (labels === undefined) {
    labels = workloadLabels({ workload: '', namespace, canonicalService: '', canonicalRevision: '', app: '', version: '', cluster: '', region: '', zone: '' });
    // Namespaces come from verified peers' IDs; past the bound each call builds its own (same key, same series).
    if (byNamespace.size < MAX_NAMESPACES) byNamespace.set(namespace, labels);
  }
  return labels;
}

/**
 * ztunnel's derived source: what a peer's baggage says of its workload (its name, canonical service and revision,
 * cluster, region and zone), in the namespace of the peer's own identity. Never used for policy.
 */
export function labelsOfBaggage(info: BaggageInfo, namespace: string): WorkloadLabels {
  const memo = byBaggage.get(info);
  if (memo !== undefined && memo.namespace === namespace) return memo.labels;
  const labels = workloadLabels({
    workload: info.workload ?? '',
    namespace,
    canonicalService: info.service ?? '',
    canonicalRevision: info.revision ?? '',
    // As ztunnel's with_derived_source: the workload's name and the revision.
    app: info.workload ?? '',
    version: info.revision ?? '',
    cluster: info.cluster ?? '',
    region: info.region ?? '',
    zone: info.zone ?? '',
  });
  byBaggage.set(info, { namespace, labels });
  return labels;
}

/** Derived labels per parsed baggage (parseBaggage keeps a bounded cache of those; this goes with it). */
const byBaggage = new WeakMap<BaggageInfo, { readonly namespace: string; readonly labels: WorkloadLabels }>();
