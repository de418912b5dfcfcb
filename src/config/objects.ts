// The typed configuration model: the Kubernetes-shaped objects ambit reads, after validation and defaulting.
// Field names follow the Kubernetes/Istio schemas so a field path in an error or a diff is the path in the YAML.
import type { AuthorizationPolicySpec, PeerAuthenticationSpec } from '../authz/types.ts';

/** Where an object came from: its file relative to the configuration directory, and its first line (1-based). */
export interface ObjectSource {
  readonly file: string;
  readonly line: number | undefined;
}

export type Labels = Readonly<Record<string, string>>;

export interface ObjectMeta {
  readonly name: string;
  /** 'default' when omitted; '' for the cluster-scoped MeshConfig. */
  readonly namespace: string;
  readonly labels: Labels;
  readonly annotations: Labels;
  /**
   * Server metadata of a controller-made object, when present: its controlling ownerReference (controller: true) and
   * whether its name was generated (metadata.generateName). Read only to name the workload, as Istio does.
   */
  readonly controller?: { readonly kind: string; readonly name: string };
  readonly generated?: boolean;
  /**
   * A PeerAuthentication's metadata.creationTimestamp, in ms since the epoch: of several at one level Istio applies the
   * oldest (an object without one sorts first, as Go's zero time does). Not read for other kinds.
   */
  readonly createdMs?: number;
}

interface ObjectBase {
  readonly apiVersion: string;
  readonly metadata: ObjectMeta;
  readonly source: ObjectSource;
}

// ---- v1 Pod ----

export type PortProtocol = 'TCP' | 'UDP' | 'SCTP';

export interface ContainerPort {
  readonly containerPort: number;
  readonly name: string | undefined;
  readonly protocol: PortProtocol;
}

export interface Container {
  readonly name: string | undefined;
  readonly ports: readonly ContainerPort[];
}

export interface PodSpec {
  /** Unset until the scheduler places the pod; a pod without a node is not a mesh workload. */
  readonly nodeName: string | undefined;
  readonly serviceAccountName: string;
  /** Host-network pods share the node's IP and are not captured, so they are not mesh workloads. */
  readonly hostNetwork: boolean;
  readonly containers: readonly Container[];
}

export type PodPhase = 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Unknown';

export interface PodStatus {
  readonly phase: PodPhase | undefined;
  /** Canonical spelling (see canonicalIp); unset until the pod has a sandbox. */
  readonly podIP: string | undefined;
  /** Always starts with podIP when both are set (a Kubernetes invariant ambit checks). */
  readonly podIPs: readonly { readonly ip: string }[];
  /** status.hostIP and status.hostIPs, canonical, without repeats: the addresses of the pod's node. */
  readonly hostIPs: readonly string[];
  /**
   * The Ready condition: false when Kubernetes says the pod is not ready (a failing readiness probe), undefined when
   * the object says nothing (a pod written by hand), which counts as ready.
   */
  readonly ready: boolean | undefined;
  /** metadata.deletionTimestamp is set: the pod is in its termination grace period. */
  readonly terminating: boolean;
}

export interface PodObject extends ObjectBase {
  readonly kind: 'Pod';
  readonly spec: PodSpec;
  readonly status: PodStatus;
}

// ---- v1 Service ----

export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';

export interface ServicePort {
  readonly name: string | undefined;
  readonly port: number;
  /** A container port number, or the name of a container port; defaults to `port`. */
  readonly targetPort: number | string;
  readonly protocol: PortProtocol;
  readonly appProtocol: string | undefined;
}

export interface ServiceSpec {
  readonly type: ServiceType;
  /** Undefined when absent or empty: as in Kubernetes, an empty selector selects nothing (not everything). */
  readonly selector: Labels | undefined;
  readonly ports: readonly ServicePort[];
  /** 'None' for a headless service; canonical IP spelling otherwise. */
  readonly clusterIP: string | undefined;
  readonly clusterIPs: readonly string[];
  readonly externalName: string | undefined;
  /** spec.publishNotReadyAddresses: its endpoints include pods that are not ready (StatefulSet peer discovery). */
  readonly publishNotReadyAddresses: boolean;
}

export interface ServiceObject extends ObjectBase {
  readonly kind: 'Service';
  readonly spec: ServiceSpec;
  /** NAME.NAMESPACE.svc.cluster.local */
  readonly hostname: string;
}

// ---- networking.istio.io WorkloadEntry / ServiceEntry ----

/** The annotation that places a WorkloadEntry (a VM or bare-metal host joined to the mesh) on a node. */
export const NODE_ANNOTATION = 'ambit.dev/node';

export interface WorkloadEntrySpec {
  readonly address: string;
  /** Port name → port number, as in Istio. */
  readonly ports: Readonly<Record<string, number>>;
  readonly labels: Labels;
  readonly network: string | undefined;
  readonly locality: string | undefined;
  readonly weight: number | undefined;
  readonly serviceAccount: string;
}

export interface WorkloadEntryObject extends ObjectBase {
  readonly kind: 'WorkloadEntry';
  readonly spec: WorkloadEntrySpec;
}

export type ServiceEntryLocation = 'MESH_EXTERNAL' | 'MESH_INTERNAL';
export type ServiceEntryResolution = 'NONE' | 'STATIC' | 'DNS' | 'DNS_ROUND_ROBIN';

export interface ServiceEntryPort {
  readonly number: number;
  /** Upper-cased Istio protocol name (HTTP, HTTPS, GRPC, TCP, TLS, ...). */
  readonly protocol: string | undefined;
  readonly name: string | undefined;
  readonly targetPort: number | undefined;
}

export interface ServiceEntryEndpoint {
  /** An IP, or a DNS name when resolution is DNS or DNS_ROUND_ROBIN. */
  readonly address: string;
  readonly ports: Readonly<Record<string, number>>;
  readonly labels: Labels;
  readonly network: string | undefined;
  readonly locality: string | undefined;
  readonly weight: number | undefined;
  readonly serviceAccount: string | undefined;
}

export interface ServiceEntrySpec {
  readonly hosts: readonly string[];
  /** IPs or CIDR blocks. */
  readonly addresses: readonly string[];
  readonly ports: readonly ServiceEntryPort[];
  readonly location: ServiceEntryLocation;
  readonly resolution: ServiceEntryResolution;
  readonly endpoints: readonly ServiceEntryEndpoint[];
  readonly workloadSelector: { readonly labels: Labels } | undefined;
  readonly exportTo: readonly string[];
  readonly subjectAltNames: readonly string[];
}

export interface ServiceEntryObject extends ObjectBase {
  readonly kind: 'ServiceEntry';
  readonly spec: ServiceEntrySpec;
}

// ---- Kinds whose spec is not modelled yet ----

/**
 * The spec of DestinationRule and VirtualService, checked only to be a mapping. A later issue validates these fully
 * (routing); until then nothing may act on a field it has not validated itself.
 */
export type OpaqueSpec = Readonly<Record<string, unknown>>;

export interface DestinationRuleObject extends ObjectBase {
  readonly kind: 'DestinationRule';
  readonly spec: OpaqueSpec;
}

export interface VirtualServiceObject extends ObjectBase {
  readonly kind: 'VirtualService';
  readonly spec: OpaqueSpec;
}

// ---- security.istio.io AuthorizationPolicy / PeerAuthentication (validated by src/authz/validate.ts) ----

export interface AuthorizationPolicyObject extends ObjectBase {
  readonly kind: 'AuthorizationPolicy';
  readonly spec: AuthorizationPolicySpec;
}

export interface PeerAuthenticationObject extends ObjectBase {
  readonly kind: 'PeerAuthentication';
  readonly spec: PeerAuthenticationSpec;
}

// ---- ambit.dev/v1alpha1 MeshConfig ----

export interface MeshPorts {
  readonly outbound: number;
  readonly inboundPlaintext: number;
  readonly hbone: number;
  readonly metrics: number;
  readonly readiness: number;
  readonly admin: number;
}

export type EgressMode = 'ALLOW_ANY' | 'REGISTRY_ONLY';
/**
 * How request paths are normalised before path rules match them (and as the application then receives them), named
 * as Istio's MeshConfig pathNormalization: MERGE_SLASHES is ambit's default (Istio's BASE and slashes merged),
 * DECODE_AND_MERGE_SLASHES decodes `%2F` and `%5C` first (src/authz/path.ts).
 */
export type PathNormalization = 'MERGE_SLASHES' | 'DECODE_AND_MERGE_SLASHES';
export type FederationProfile = 'https_spiffe' | 'https_web';

export interface FederationPeer {
  readonly trustDomain: string;
  readonly bundleEndpoint: string;
  readonly profile: FederationProfile;
  /** Required for https_spiffe (the SPIFFE ID the endpoint's certificate must carry), refused for https_web. */
  readonly endpointSpiffeId: string | undefined;
  /** Bootstrap bundle for the first fetch, as written; relative paths are relative to the configuration directory. */
  readonly bundleFile: string | undefined;
}

export interface MeshConfigSpec {
  readonly trustDomain: string;
  readonly rootNamespace: string;
  readonly ports: MeshPorts;
  readonly egress: { readonly mode: EgressMode };
  /** Istio's `pathNormalization.normalization`, BASE and DEFAULT read as MERGE_SLASHES (ambit always merges). */
  readonly pathNormalization: PathNormalization;
  readonly federation: readonly FederationPeer[];
  /** As written (for example `1h`); certificateTtlMs in MeshSettings is the parsed value. */
  readonly certificateTtl: string;
  /**
   * The node SVIDs' lifetime, as written. Longer than workloads': a node whose SVID expired during a CA outage can
   * only come back with a new join token, so it must outlive the outages the mesh should ride out.
   */
  readonly nodeCertificateTtl: string;
  /**
   * The cluster this configuration describes, as Istio's CLUSTER_ID: the `source_cluster` / `destination_cluster`
   * metric labels and the `k8s.cluster.name` baggage of its workloads. Istio's default, `Kubernetes`, when omitted.
   */
  readonly clusterId: string;
}

/**
 * A Kubernetes Node, read for its labels only: istiod gives a pod the locality of its node's topology labels
 * (`topology.kubernetes.io/region` and `zone`). Its spec and status are accepted as Kubernetes writes them and not kept.
 */
export interface NodeObject extends ObjectBase {
  readonly kind: 'Node';
  /** Nothing of it is kept. */
  readonly spec: Readonly<Record<string, never>>;
}

export interface MeshConfigObject extends ObjectBase {
  readonly kind: 'MeshConfig';
  readonly spec: MeshConfigSpec;
}

/** The mesh settings in force: the MeshConfig's spec plus derived values, or the defaults when there is none. */
export interface MeshSettings extends MeshConfigSpec {
  readonly certificateTtlMs: number;
  readonly nodeCertificateTtlMs: number;
}

export const DEFAULT_PORTS: MeshPorts = Object.freeze({
  outbound: 15001,
  inboundPlaintext: 15006,
  hbone: 15008,
  metrics: 15020,
  readiness: 15021,
  admin: 15000,
});

export const DEFAULT_ROOT_NAMESPACE = 'istio-system';
export const DEFAULT_CERTIFICATE_TTL = '1h';
export const DEFAULT_NODE_CERTIFICATE_TTL = '24h';
/** Istio's default CLUSTER_ID. */
export const DEFAULT_CLUSTER_ID = 'Kubernetes';
/** Istio's default trust domain, used only when no MeshConfig exists and none was required. */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';
/** Kubernetes' cluster DNS suffix: Service hostnames are NAME.NAMESPACE.svc.cluster.local. */
export const CLUSTER_DOMAIN = 'cluster.local';

export type ConfigObject =
  | PodObject
  | ServiceObject
  | WorkloadEntryObject
  | ServiceEntryObject
  | DestinationRuleObject
  | VirtualServiceObject
  | AuthorizationPolicyObject
  | PeerAuthenticationObject
  | NodeObject
  | MeshConfigObject;

export type ConfigKind = ConfigObject['kind'];

export type ObjectOfKind<K extends ConfigKind> = Extract<ConfigObject, { kind: K }>;

interface KindInfo {
  readonly apiVersions: readonly string[];
  readonly namespaced: boolean;
}

const NETWORKING = ['networking.istio.io/v1', 'networking.istio.io/v1beta1', 'networking.istio.io/v1alpha3'];
const SECURITY = ['security.istio.io/v1', 'security.istio.io/v1beta1'];

/** Every kind ambit reads and the apiVersions it accepts for it; any other apiVersion/kind is refused. */
export const KINDS: Readonly<Record<ConfigKind, KindInfo>> = Object.freeze({
  Pod: { apiVersions: ['v1'], namespaced: true },
  Service: { apiVersions: ['v1'], namespaced: true },
  WorkloadEntry: { apiVersions: NETWORKING, namespaced: true },
  ServiceEntry: { apiVersions: NETWORKING, namespaced: true },
  DestinationRule: { apiVersions: NETWORKING, namespaced: true },
  VirtualService: { apiVersions: NETWORKING, namespaced: true },
  AuthorizationPolicy: { apiVersions: SECURITY, namespaced: true },
  PeerAuthentication: { apiVersions: SECURITY, namespaced: true },
  Node: { apiVersions: ['v1'], namespaced: false },
  MeshConfig: { apiVersions: ['ambit.dev/v1alpha1'], namespaced: false },
});

export function isConfigKind(kind: string): kind is ConfigKind {
  return Object.hasOwn(KINDS, kind);
}

/** `Pod default/web`, `MeshConfig mesh`: how errors, diffs and audit lines name an object. */
export function objectLabel(kind: string, namespace: string, name: string): string {
  return namespace === '' ? `${kind} ${name}` : `${kind} ${namespace}/${name}`;
}

export function labelOf(object: ConfigObject): string {
  return objectLabel(object.kind, object.metadata.namespace, object.metadata.name);
}

/** `spiffe://TD/ns/NS/sa/SA`; namespace and service account are validated DNS-1123 names, valid path segments. */
export function workloadSpiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}
