// Per-object validation: turns one parsed YAML value into a typed, defaulted ConfigObject or a list of field
// issues. Objects are checked one at a time here; checks across objects (duplicates, IP conflicts, one
// MeshConfig) belong to the snapshot.
import {
  FieldIssues,
  anyValue,
  booleanField,
  canonicalIp,
  checkDns1035Label,
  checkDns1123Label,
  checkDns1123Subdomain,
  checkFields,
  checkHost,
  checkLocality,
  checkHttpsUrl,
  checkIp,
  checkIpBlock,
  canonicalIpBlock,
  checkLabelValue,
  checkPortName,
  checkQualifiedName,
  checkTrustDomain,
  checkWorkloadSpiffeId,
  enumField,
  hasValue,
  integerField,
  isMapping,
  listField,
  mappingAt,
  mappingField,
  parseDurationMs,
  portAt,
  portField,
  stringAt,
  stringField,
  stringListField,
  stringMapField,
} from './fields.ts';
import type { FieldIssue, FieldPath, Mapping } from './fields.ts';
import { checkPolicyAnnotations, validateAuthorizationPolicySpec, validatePeerAuthenticationSpec } from '../authz/validate.ts';
import {
  CLUSTER_DOMAIN,
  DEFAULT_CERTIFICATE_TTL, DEFAULT_NODE_CERTIFICATE_TTL, DEFAULT_CLUSTER_ID,
  DEFAULT_PORTS,
  DEFAULT_ROOT_NAMESPACE,
  KINDS,
  NODE_ANNOTATION,
  isConfigKind,
  objectLabel,
} from './objects.ts';
import type {
  ConfigKind,
  ConfigObject,
  Container,
  ContainerPort,
  FederationPeer,
  Labels,
  MeshConfigSpec,
  MeshPorts,
  ObjectMeta,
  ObjectSource,
  OpaqueSpec,
  PathNormalization,
  PodPhase,
  PodSpec,
  PodStatus,
  PortProtocol,
  ServiceEntryEndpoint,
  ServiceEntryPort,
  ServiceEntrySpec,
  ServicePort,
  ServiceSpec,
  ServiceType,
  WorkloadEntrySpec,
} from './objects.ts';

export interface ValidationResult {
  /** Set only when the object had no issues. */
  readonly object: ConfigObject | undefined;
  /** `Pod default/web`, as far as the raw value tells. */
  readonly label: string | undefined;
  readonly issues: readonly FieldIssue[];
}

const TOP_LEVEL = ['apiVersion', 'kind', 'metadata', 'spec', 'status'];

// ObjectMeta fields a server writes; tolerated so `kubectl get -o yaml` output loads, but never read.
const SERVER_METADATA = [
  'generateName', 'uid', 'resourceVersion', 'generation', 'creationTimestamp', 'deletionTimestamp',
  'deletionGracePeriodSeconds', 'ownerReferences', 'finalizers', 'managedFields', 'selfLink',
];

export function validateObject(raw: unknown, source: ObjectSource): ValidationResult {
  const issues = new FieldIssues();
  if (!isMapping(raw)) {
    issues.add([], 'a configuration object must be a mapping with apiVersion, kind and metadata');
    return { object: undefined, label: undefined, issues: issues.list };
  }
  const label = rawLabel(raw);
  checkFields(issues, raw, [], TOP_LEVEL);
  const apiVersion = stringField(issues, raw, 'apiVersion', [], { required: true });
  const kind = stringField(issues, raw, 'kind', [], { required: true });
  if (apiVersion === undefined || kind === undefined) return { object: undefined, label, issues: issues.list };
  if (!isConfigKind(kind)) {
    issues.add(['kind'], `${apiVersion} ${kind} is not a kind ambit reads (${Object.keys(KINDS).join(', ')})`, 'CONFIG_UNKNOWN_KIND');
    return { object: undefined, label, issues: issues.list };
  }
  if (!KINDS[kind].apiVersions.includes(apiVersion)) {
    issues.add(['apiVersion'], `${apiVersion} ${kind} is not read by ambit; use apiVersion ${KINDS[kind].apiVersions.join(' or ')}`, 'CONFIG_UNKNOWN_KIND');
    return { object: undefined, label, issues: issues.list };
  }

  const metadata = validateMetadata(issues, raw, kind);
  const object = metadata === undefined ? undefined : validateKind(issues, raw, kind, apiVersion, metadata, source);
  return { object: issues.list.length === 0 ? object : undefined, label, issues: issues.list };
}

function rawLabel(raw: Mapping): string | undefined {
  const kind = typeof raw['kind'] === 'string' ? raw['kind'] : undefined;
  if (kind === undefined) return undefined;
  const metadata = isMapping(raw['metadata']) ? raw['metadata'] : {};
  const name = typeof metadata['name'] === 'string' && metadata['name'] !== '' ? metadata['name'] : '?';
  const namespaced = !isConfigKind(kind) || KINDS[kind].namespaced;
  const namespace = !namespaced ? '' : typeof metadata['namespace'] === 'string' && metadata['namespace'] !== '' ? metadata['namespace'] : 'default';
  return objectLabel(kind, namespace, name);
}

function labelsField(issues: FieldIssues, object: Mapping, key: string, path: FieldPath): Labels {
  return stringMapField(issues, object, key, path, checkQualifiedName, checkLabelValue);
}

function validateMetadata(issues: FieldIssues, raw: Mapping, kind: ConfigKind): ObjectMeta | undefined {
  const metadata = mappingField(issues, raw, 'metadata', [], true);
  if (metadata === undefined) return undefined;
  const path = ['metadata'];
  checkFields(issues, metadata, path, ['name', 'namespace', 'labels', 'annotations'], SERVER_METADATA);
  // Kubernetes requires Service names to be DNS-1035 labels: the name becomes a DNS label of its hostname.
  const nameCheck = kind === 'Service' ? checkDns1035Label : checkDns1123Subdomain;
  const name = stringField(issues, metadata, 'name', path, { required: true, check: nameCheck });
  let namespace = '';
  if (KINDS[kind].namespaced) {
    namespace = stringField(issues, metadata, 'namespace', path, { check: checkDns1123Label }) ?? 'default';
  } else if (hasValue(metadata, 'namespace')) {
    issues.add([...path, 'namespace'], `${kind} is cluster-scoped: remove metadata.namespace`);
  }
  const labels = labelsField(issues, metadata, 'labels', path);
  const annotations = stringMapField(issues, metadata, 'annotations', path, checkQualifiedName, anyValue);
  if (name === undefined) return undefined;
  const controller = controllerOf(metadata.ownerReferences);
  const generated = typeof metadata.generateName === 'string' && metadata.generateName !== '';
  const createdMs = kind === 'PeerAuthentication' ? creationTime(issues, metadata, path) : undefined;
  return { name, namespace, labels, annotations, ...(controller === undefined ? {} : { controller }), ...(generated ? { generated } : {}), ...(createdMs === undefined ? {} : { createdMs }) };
}

/** Kubernetes' RFC 3339 timestamps, `2024-05-23T00:22:29Z` (a fraction and an offset allowed). */
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** metadata.creationTimestamp where it decides something (which of several PeerAuthentications applies): a real time or an issue. */
function creationTime(issues: FieldIssues, metadata: Mapping, path: FieldPath): number | undefined {
  if (!hasValue(metadata, 'creationTimestamp')) return undefined;
  const value = metadata.creationTimestamp;
  // A bare timestamp stays a string under YAML 1.2's core schema; a `%YAML 1.1` document reads it as a Date.
  const ms = value instanceof Date ? value.getTime() : typeof value === 'string' && RFC3339.test(value) ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) {
    issues.add([...path, 'creationTimestamp'], `${JSON.stringify(value)} is not an RFC 3339 time such as 2024-05-23T00:22:29Z (of several PeerAuthentications at one level the oldest applies)`);
    return undefined;
  }
  return ms;
}

/** The controlling owner reference (controller: true) of server metadata, read leniently: anything else is none. */
function controllerOf(references: unknown): { kind: string; name: string } | undefined {
  if (!Array.isArray(references)) return undefined;
  for (const reference of references) {
    if (!isMapping(reference) || reference.controller !== true) continue;
    const { kind, name } = reference;
    // Names only as Kubernetes writes them: the name goes into metric labels and the baggage header.
    if (typeof kind === 'string' && /^[A-Za-z][A-Za-z0-9]{0,62}$/.test(kind) && typeof name === 'string' && checkDns1123Subdomain(name) === undefined) return { kind, name };
  }
  return undefined;
}

function validateKind(
  issues: FieldIssues,
  raw: Mapping,
  kind: ConfigKind,
  apiVersion: string,
  metadata: ObjectMeta,
  source: ObjectSource,
): ConfigObject | undefined {
  const base = { apiVersion, metadata, source };
  // Only a Pod's status carries registry facts (its IPs); other kinds' status is written by controllers and not read.
  if (kind !== 'Pod') mappingField(issues, raw, 'status', []);
  switch (kind) {
    case 'Pod': {
      const spec = validatePodSpec(issues, mappingField(issues, raw, 'spec', [], true));
      const rawMetadata = raw.metadata;
      const terminating = isMapping(rawMetadata) && hasValue(rawMetadata, 'deletionTimestamp');
      const status = validatePodStatus(issues, mappingField(issues, raw, 'status', []) ?? {}, terminating);
      return spec && status && { ...base, kind, spec, status };
    }
    case 'Service': {
      const spec = validateServiceSpec(issues, mappingField(issues, raw, 'spec', []) ?? {});
      const hostname = `${metadata.name}.${metadata.namespace}.svc.${CLUSTER_DOMAIN}`;
      return spec && { ...base, kind, spec, hostname };
    }
    case 'WorkloadEntry': {
      const spec = validateWorkloadEntrySpec(issues, mappingField(issues, raw, 'spec', [], true));
      const node = metadata.annotations[NODE_ANNOTATION];
      if (node === undefined) {
        issues.add(['metadata', 'annotations', NODE_ANNOTATION], 'required: the node (VM or bare-metal host) this workload runs on');
      } else {
        const problem = checkDns1123Subdomain(node);
        if (problem !== undefined) issues.add(['metadata', 'annotations', NODE_ANNOTATION], `not a node name: ${problem}`);
      }
      return spec && { ...base, kind, spec };
    }
    case 'ServiceEntry': {
      const spec = validateServiceEntrySpec(issues, mappingField(issues, raw, 'spec', [], true));
      return spec && { ...base, kind, spec };
    }
    case 'DestinationRule': {
      const spec = opaqueSpec(issues, raw, true);
      if (spec !== undefined) {
        // Their routing is not applied yet, but a misspelt field (`hots:`) is said now, as Istio's schema would, not
        // left to stop a whole directory the day these objects are read in full.
        checkFields(issues, spec, ['spec'], DESTINATION_RULE_FIELDS);
        stringField(issues, spec, 'host', ['spec'], { required: true });
        checkNoTlsOrigination(issues, spec);
      }
      return spec && { ...base, kind, spec };
    }
    case 'VirtualService': {
      const spec = opaqueSpec(issues, raw, true);
      if (spec !== undefined) checkFields(issues, spec, ['spec'], VIRTUAL_SERVICE_FIELDS);
      return spec && { ...base, kind, spec };
    }
    // An empty spec means something for both (an ALLOW policy matching nothing; mode UNSET), so absent = {}.
    case 'AuthorizationPolicy': {
      checkPolicyAnnotations(issues, kind, metadata.annotations);
      const spec = securitySpec(issues, raw, validateAuthorizationPolicySpec);
      return spec && { ...base, kind, spec };
    }
    case 'PeerAuthentication': {
      checkPolicyAnnotations(issues, kind, metadata.annotations);
      const spec = securitySpec(issues, raw, validatePeerAuthenticationSpec);
      return spec && { ...base, kind, spec };
    }
    // Only its labels are read (a pod's locality); spec and status as the API server writes them.
    case 'Node': {
      mappingField(issues, raw, 'spec', []);
      return { ...base, kind, spec: {} };
    }
    case 'MeshConfig': {
      const spec = validateMeshConfigSpec(issues, mappingField(issues, raw, 'spec', [], true));
      return spec && { ...base, kind, spec };
    }
  }
}

/** Istio's top-level fields of these specs (networking/v1 DestinationRule, VirtualService). */
const DESTINATION_RULE_FIELDS = ['host', 'trafficPolicy', 'subsets', 'exportTo', 'workloadSelector'];
const VIRTUAL_SERVICE_FIELDS = ['hosts', 'gateways', 'http', 'tls', 'tcp', 'exportTo'];

/** The `tls.mode`s a DestinationRule may ask for: what the mesh does anyway (HBONE), or nothing. */
const TLS_MODES_KEPT = new Set(['DISABLE', 'ISTIO_MUTUAL']);

/**
 * A DestinationRule asking for TLS to its host (`tls.mode` SIMPLE or MUTUAL, Istio's TLS origination) is refused:
 * ambit does not originate TLS yet, and ignoring it sent what the operator meant to encrypt (credentials to an
 * external API) in plaintext. Its traffic policy, each port's and each subset's are read.
 */
function checkNoTlsOrigination(issues: FieldIssues, spec: Mapping): void {
  for (const { mode, path } of destinationRuleTlsModes(spec)) {
    if (!TLS_MODES_KEPT.has(String(mode))) issues.add(path, `${String(mode)}: ambit does not originate TLS, and this traffic would leave in plaintext; remove it, or send the client to the TLS port itself`);
  }
}

/** Every `tls.mode` a DestinationRule's spec sets, with its path: its traffic policy's, each port's, each subset's. */
export function destinationRuleTlsModes(spec: Readonly<Record<string, unknown>>): Array<{ mode: unknown; path: FieldPath }> {
  const found: Array<{ mode: unknown; path: FieldPath }> = [];
  const policyAt = (policy: unknown, path: FieldPath) => {
    if (!isMapping(policy)) return;
    const tls = policy.tls;
    if (isMapping(tls) && hasValue(tls, 'mode')) found.push({ mode: tls.mode, path: [...path, 'tls', 'mode'] });
    const ports = policy.portLevelSettings;
    if (Array.isArray(ports)) ports.forEach((port, i) => policyAt(port, [...path, 'portLevelSettings', i]));
  };
  policyAt(spec.trafficPolicy, ['spec', 'trafficPolicy']);
  const subsets = spec.subsets;
  if (Array.isArray(subsets)) subsets.forEach((subset, i) => isMapping(subset) && policyAt(subset.trafficPolicy, ['spec', 'subsets', i, 'trafficPolicy']));
  return found;
}

function opaqueSpec(issues: FieldIssues, raw: Mapping, required: boolean): OpaqueSpec | undefined {
  const spec = mappingField(issues, raw, 'spec', [], required);
  if (spec === undefined) return required ? undefined : {};
  return spec;
}

/** A security kind's spec: absent (or null) reads as {}, which means something for both kinds. */
function securitySpec<T>(issues: FieldIssues, raw: Mapping, validate: (issues: FieldIssues, spec: Mapping, path: FieldPath) => T | undefined): T | undefined {
  if (!hasValue(raw, 'spec')) return validate(issues, {}, ['spec']);
  const spec = mappingField(issues, raw, 'spec', []);
  return spec === undefined ? undefined : validate(issues, spec, ['spec']);
}

// ---- Pod ----

const POD_SPEC_FIELDS = ['nodeName', 'serviceAccountName', 'serviceAccount', 'hostNetwork', 'containers'];
// Every other PodSpec field of Kubernetes 1.33: accepted so real manifests load, not read by ambit.
const POD_SPEC_TOLERATED = [
  'activeDeadlineSeconds', 'affinity', 'automountServiceAccountToken', 'dnsConfig', 'dnsPolicy', 'enableServiceLinks',
  'ephemeralContainers', 'hostAliases', 'hostIPC', 'hostPID', 'hostUsers', 'hostname', 'imagePullSecrets',
  'initContainers', 'nodeSelector', 'os', 'overhead', 'preemptionPolicy', 'priority', 'priorityClassName',
  'readinessGates', 'resourceClaims', 'resources', 'restartPolicy', 'runtimeClassName', 'schedulerName',
  'schedulingGates', 'securityContext', 'setHostnameAsFQDN', 'shareProcessNamespace', 'subdomain',
  'terminationGracePeriodSeconds', 'tolerations', 'topologySpreadConstraints', 'volumes',
];
const POD_STATUS_FIELDS = ['phase', 'podIP', 'podIPs', 'hostIP', 'hostIPs', 'conditions'];
const POD_STATUS_TOLERATED = [
  'containerStatuses', 'ephemeralContainerStatuses', 'extendedResourceClaimStatus',
  'initContainerStatuses', 'message', 'nominatedNodeName', 'observedGeneration', 'qosClass', 'reason', 'resize',
  'resourceClaimStatuses', 'startTime',
];
const PROTOCOLS: readonly PortProtocol[] = ['TCP', 'UDP', 'SCTP'];
const POD_PHASES: readonly PodPhase[] = ['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown'];

function validatePodSpec(issues: FieldIssues, spec: Mapping | undefined): PodSpec | undefined {
  if (spec === undefined) return undefined;
  const path = ['spec'];
  checkFields(issues, spec, path, POD_SPEC_FIELDS, POD_SPEC_TOLERATED);
  const nodeName = stringField(issues, spec, 'nodeName', path, { check: checkDns1123Subdomain });
  // serviceAccount is the deprecated alias Kubernetes still honours when serviceAccountName is unset.
  const deprecatedAccount = stringField(issues, spec, 'serviceAccount', path, { check: checkDns1123Subdomain });
  const serviceAccountName = stringField(issues, spec, 'serviceAccountName', path, { check: checkDns1123Subdomain }) ?? deprecatedAccount ?? 'default';
  const hostNetwork = booleanField(issues, spec, 'hostNetwork', path) ?? false;
  const containers: Container[] = [];
  const items = listField(issues, spec, 'containers', path) ?? [];
  items.forEach((item, index) => {
    const containerPath = [...path, 'containers', index];
    const container = mappingAt(issues, item, containerPath);
    if (container === undefined) return;
    // Only ports are modelled inside a container; its other fields (image, env, probes, ...) are not ambit's business.
    const name = stringField(issues, container, 'name', containerPath, { check: checkDns1123Label });
    const ports: ContainerPort[] = [];
    (listField(issues, container, 'ports', containerPath) ?? []).forEach((portItem, portIndex) => {
      const portPath = [...containerPath, 'ports', portIndex];
      const port = mappingAt(issues, portItem, portPath);
      if (port === undefined) return;
      checkFields(issues, port, portPath, ['containerPort', 'name', 'protocol'], ['hostPort', 'hostIP']);
      const containerPort = portField(issues, port, 'containerPort', portPath, true);
      const portName = stringField(issues, port, 'name', portPath, { check: checkPortName });
      const protocol = enumField(issues, port, 'protocol', portPath, PROTOCOLS) ?? 'TCP';
      if (containerPort !== undefined) ports.push({ containerPort, name: portName, protocol });
    });
    containers.push({ name, ports });
  });
  return { nodeName, serviceAccountName, hostNetwork, containers };
}

/**
 * The Ready condition of status.conditions, as the kubelet writes it (`{type: Ready, status: "True"}`): true, false,
 * or undefined when there is none (`Unknown` reads as not ready, as Kubernetes' endpoints read it).
 */
function readyCondition(issues: FieldIssues, status: Mapping, path: FieldPath): boolean | undefined {
  const conditions = status.conditions;
  if (conditions === undefined || conditions === null) return undefined;
  if (!Array.isArray(conditions)) {
    issues.add([...path, 'conditions'], 'must be a list of conditions');
    return undefined;
  }
  let ready: boolean | undefined;
  conditions.forEach((condition, index) => {
    if (!isMapping(condition) || condition.type !== 'Ready') return;
    const value = condition.status;
    if (value !== 'True' && value !== 'False' && value !== 'Unknown') {
      issues.add([...path, 'conditions', index, 'status'], `${JSON.stringify(value)} is not True, False or Unknown`);
      return;
    }
    ready = value === 'True';
  });
  return ready;
}

function validatePodStatus(issues: FieldIssues, status: Mapping, terminating: boolean): PodStatus | undefined {
  const path = ['status'];
  checkFields(issues, status, path, POD_STATUS_FIELDS, POD_STATUS_TOLERATED);
  const phase = enumField(issues, status, 'phase', path, POD_PHASES);
  const podIPText = stringField(issues, status, 'podIP', path, { check: checkIp });
  const podIP = podIPText === undefined ? undefined : canonicalIp(podIPText);
  const podIPs = ipList(issues, status, 'podIPs', path).map((ip) => ({ ip }));
  if (podIPs.length > 0) {
    if (!hasValue(status, 'podIP')) {
      issues.add([...path, 'podIP'], 'required when status.podIPs is set (it is podIPs[0])');
    } else if (podIP !== undefined && podIPs[0]?.ip !== podIP) {
      issues.add([...path, 'podIPs', 0, 'ip'], `must equal status.podIP (${podIP})`);
    }
  }
  // The node's addresses as Kubernetes reports them: a host-network proxy's HBONE sessions come from one of them.
  const hostIPs: string[] = [];
  const hostIPText = stringField(issues, status, 'hostIP', path, { check: checkIp });
  if (hostIPText !== undefined) hostIPs.push(canonicalIp(hostIPText) as string);
  for (const ip of ipList(issues, status, 'hostIPs', path)) if (!hostIPs.includes(ip)) hostIPs.push(ip);
  return { phase, podIP, podIPs, hostIPs, ready: readyCondition(issues, status, path), terminating };
}

/** A Kubernetes list of `{ip: ADDRESS}` (status.podIPs, status.hostIPs): the addresses, canonical, in order. */
function ipList(issues: FieldIssues, status: Mapping, field: string, path: FieldPath): string[] {
  const ips: string[] = [];
  (listField(issues, status, field, path) ?? []).forEach((item, index) => {
    const entryPath = [...path, field, index];
    const entry = mappingAt(issues, item, entryPath);
    if (entry === undefined) return;
    checkFields(issues, entry, entryPath, ['ip']);
    const ip = stringField(issues, entry, 'ip', entryPath, { required: true, check: checkIp });
    if (ip !== undefined) ips.push(canonicalIp(ip) as string);
  });
  return ips;
}

// ---- Service ----

const SERVICE_SPEC_FIELDS = ['type', 'selector', 'ports', 'clusterIP', 'clusterIPs', 'externalName', 'publishNotReadyAddresses'];
const SERVICE_SPEC_TOLERATED = [
  'allocateLoadBalancerNodePorts', 'externalIPs', 'externalTrafficPolicy', 'healthCheckNodePort', 'internalTrafficPolicy',
  'ipFamilies', 'ipFamilyPolicy', 'loadBalancerClass', 'loadBalancerIP', 'loadBalancerSourceRanges',
  'sessionAffinity', 'sessionAffinityConfig', 'trafficDistribution',
];
const SERVICE_TYPES: readonly ServiceType[] = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];

function validateServiceSpec(issues: FieldIssues, spec: Mapping): ServiceSpec | undefined {
  const path = ['spec'];
  checkFields(issues, spec, path, SERVICE_SPEC_FIELDS, SERVICE_SPEC_TOLERATED);
  const type = enumField(issues, spec, 'type', path, SERVICE_TYPES) ?? 'ClusterIP';
  const selector = labelsField(issues, spec, 'selector', path);
  const clusterIPText = stringField(issues, spec, 'clusterIP', path, {
    check: (value) => (value === 'None' || value === '' ? undefined : checkIp(value)),
  });
  const clusterIP = clusterIPText === undefined || clusterIPText === '' ? undefined : clusterIPText === 'None' ? 'None' : canonicalIp(clusterIPText);
  const clusterIPs = stringListField(issues, spec, 'clusterIPs', path, {
    check: (value) => (value === 'None' ? undefined : checkIp(value)),
  }).map((ip) => (ip === 'None' ? ip : (canonicalIp(ip) as string)));
  if (clusterIPs.length > 0 && clusterIP !== undefined && clusterIPs[0] !== clusterIP) {
    issues.add([...path, 'clusterIPs', 0], `must equal spec.clusterIP (${clusterIP})`);
  }
  const externalName = stringField(issues, spec, 'externalName', path, { check: checkHost });
  const publishNotReadyAddresses = booleanField(issues, spec, 'publishNotReadyAddresses', path) ?? false;
  if (type === 'ExternalName' && !hasValue(spec, 'externalName')) {
    issues.add([...path, 'externalName'], 'required for type ExternalName');
  }

  const ports: ServicePort[] = [];
  const items = listField(issues, spec, 'ports', path) ?? [];
  const seenNames = new Map<string, number>();
  items.forEach((item, index) => {
    const portPath = [...path, 'ports', index];
    const entry = mappingAt(issues, item, portPath);
    if (entry === undefined) return;
    checkFields(issues, entry, portPath, ['name', 'port', 'targetPort', 'protocol', 'appProtocol'], ['nodePort']);
    const name = stringField(issues, entry, 'name', portPath, { check: checkDns1123Label });
    // Kubernetes: with more than one port every port needs a name, and names are unique within the service.
    if (items.length > 1 && !hasValue(entry, 'name')) issues.add([...portPath, 'name'], 'required when the service has more than one port');
    if (name !== undefined) {
      const first = seenNames.get(name);
      if (first !== undefined) issues.add([...portPath, 'name'], `${JSON.stringify(name)} is already the name of spec.ports[${first}]`);
      else seenNames.set(name, index);
    }
    const port = portField(issues, entry, 'port', portPath, true);
    const targetPort = targetPortField(issues, entry, portPath) ?? port;
    const protocol = enumField(issues, entry, 'protocol', portPath, PROTOCOLS) ?? 'TCP';
    const appProtocol = stringField(issues, entry, 'appProtocol', portPath);
    if (port !== undefined && targetPort !== undefined) ports.push({ name, port, targetPort, protocol, appProtocol });
  });
  return {
    type,
    selector: Object.keys(selector).length === 0 ? undefined : selector,
    ports,
    clusterIP,
    clusterIPs,
    externalName,
    publishNotReadyAddresses,
  };
}

function targetPortField(issues: FieldIssues, entry: Mapping, path: FieldPath): number | string | undefined {
  const value = entry['targetPort'];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return stringAt(issues, value, [...path, 'targetPort'], { check: checkPortName });
  return portAt(issues, value, [...path, 'targetPort']);
}

// ---- WorkloadEntry / ServiceEntry ----

const WORKLOAD_ENTRY_FIELDS = ['address', 'ports', 'labels', 'network', 'locality', 'weight', 'serviceAccount'];

interface EndpointFields {
  ports: Record<string, number>;
  labels: Labels;
  network: string | undefined;
  locality: string | undefined;
  weight: number | undefined;
  serviceAccount: string | undefined;
}

/** The fields WorkloadEntry.spec and ServiceEntry.spec.endpoints[] share (Istio's WorkloadEntry message). */
function endpointFields(issues: FieldIssues, entry: Mapping, path: FieldPath): EndpointFields {
  checkFields(issues, entry, path, WORKLOAD_ENTRY_FIELDS);
  const ports: Record<string, number> = {};
  const portMap = mappingField(issues, entry, 'ports', path);
  for (const [name, value] of Object.entries(portMap ?? {})) {
    const portPath = [...path, 'ports', name];
    const problem = checkPortName(name);
    if (problem !== undefined) issues.add(portPath, problem);
    const port = portAt(issues, value, portPath);
    if (problem === undefined && port !== undefined) ports[name] = port;
  }
  return {
    ports,
    labels: labelsField(issues, entry, 'labels', path),
    network: stringField(issues, entry, 'network', path),
    locality: stringField(issues, entry, 'locality', path, { check: checkLocality }),
    weight: integerField(issues, entry, 'weight', path, 0, 4_294_967_295),
    serviceAccount: stringField(issues, entry, 'serviceAccount', path, { check: checkDns1123Subdomain }),
  };
}

function validateWorkloadEntrySpec(issues: FieldIssues, spec: Mapping | undefined): WorkloadEntrySpec | undefined {
  if (spec === undefined) return undefined;
  const path = ['spec'];
  const fields = endpointFields(issues, spec, path);
  // Istio also allows a DNS name or a unix socket here; a mesh workload needs an IP that traffic is captured for.
  const address = stringField(issues, spec, 'address', path, { required: true, check: checkIp });
  if (address === undefined) return undefined;
  return { ...fields, address: canonicalIp(address) as string, serviceAccount: fields.serviceAccount ?? 'default' };
}

/** Istio protocols whose connections name their host (Host or :authority, TLS SNI): several hosts can share their port. */
const HOST_AWARE_PROTOCOLS: ReadonlySet<string> = new Set(['HTTP', 'HTTP2', 'HTTP_PROXY', 'HTTPS', 'GRPC', 'GRPC-WEB', 'TLS']);

const SERVICE_ENTRY_FIELDS = ['hosts', 'addresses', 'ports', 'location', 'resolution', 'endpoints', 'workloadSelector', 'exportTo', 'subjectAltNames'];
// Istio's protocol names (istio.io/istio pkg/config/protocol), matched case-insensitively as Istio does.
const ISTIO_PROTOCOLS = ['HTTP', 'HTTPS', 'GRPC', 'GRPC-WEB', 'HTTP2', 'HTTP_PROXY', 'MONGO', 'MYSQL', 'REDIS', 'TCP', 'TLS', 'UDP'];

function validateServiceEntrySpec(issues: FieldIssues, spec: Mapping | undefined): ServiceEntrySpec | undefined {
  if (spec === undefined) return undefined;
  const path = ['spec'];
  checkFields(issues, spec, path, SERVICE_ENTRY_FIELDS);
  const hostsGiven = Array.isArray(spec['hosts']) && spec['hosts'].length > 0;
  if (!hostsGiven && !hasValue(spec, 'hosts')) issues.add([...path, 'hosts'], 'required: at least one host');
  if (!hostsGiven && Array.isArray(spec['hosts'])) issues.add([...path, 'hosts'], 'must list at least one host');
  // Istio refuses `*` alone here: under REGISTRY_ONLY it would open egress to every name on the entry's ports.
  const hosts = stringListField(issues, spec, 'hosts', path, { check: (value) => (value === '*' ? '"*" alone is not a ServiceEntry host (Istio refuses it too): name the hosts, or a "*." domain' : checkHost(value)) });
  // Canonical, so a lookup by a connection's (canonical) destination address finds them.
  const addresses = stringListField(issues, spec, 'addresses', path, { check: checkIpBlock }).map((block) => (checkIpBlock(block) === undefined ? canonicalIpBlock(block) : block));
  const location = enumField(issues, spec, 'location', path, ['MESH_EXTERNAL', 'MESH_INTERNAL'] as const) ?? 'MESH_EXTERNAL';
  const resolution = enumField(issues, spec, 'resolution', path, ['NONE', 'STATIC', 'DNS', 'DNS_ROUND_ROBIN'] as const) ?? 'NONE';

  const ports: ServiceEntryPort[] = [];
  const seenNumbers = new Map<number, number>();
  (listField(issues, spec, 'ports', path) ?? []).forEach((item, index) => {
    const portPath = [...path, 'ports', index];
    const entry = mappingAt(issues, item, portPath);
    if (entry === undefined) return;
    checkFields(issues, entry, portPath, ['number', 'protocol', 'name', 'targetPort']);
    const number = portField(issues, entry, 'number', portPath, true);
    const protocolText = stringField(issues, entry, 'protocol', portPath, {
      check: (value) => (ISTIO_PROTOCOLS.includes(value.toUpperCase()) ? undefined : `${JSON.stringify(value)} is not one of ${ISTIO_PROTOCOLS.join(', ')}`),
    });
    const name = stringField(issues, entry, 'name', portPath, { check: checkDns1123Label });
    const targetPort = portField(issues, entry, 'targetPort', portPath);
    if (number === undefined) return;
    const first = seenNumbers.get(number);
    if (first !== undefined) issues.add([...portPath, 'number'], `port ${number} is already declared by spec.ports[${first}]`);
    seenNumbers.set(number, index);
    ports.push({ number, protocol: protocolText?.toUpperCase(), name, targetPort });
  });

  const endpoints: ServiceEntryEndpoint[] = [];
  (listField(issues, spec, 'endpoints', path) ?? []).forEach((item, index) => {
    const endpointPath = [...path, 'endpoints', index];
    const entry = mappingAt(issues, item, endpointPath);
    if (entry === undefined) return;
    const fields = endpointFields(issues, entry, endpointPath);
    // DNS resolution resolves endpoint names; every other mode needs IPs (unix sockets are not supported).
    const dns = resolution === 'DNS' || resolution === 'DNS_ROUND_ROBIN';
    const address = stringField(issues, entry, 'address', endpointPath, {
      required: true,
      // A name to resolve, never a wildcard: an endpoint is one destination.
      check: (value) => (canonicalIp(value) !== undefined ? undefined : !dns ? `${JSON.stringify(value)} is not an IP address (resolution ${resolution})` : value.startsWith('*') ? `${JSON.stringify(value)} is a wildcard: an endpoint is an IP address or a DNS name` : checkHost(value)),
    });
    if (address !== undefined) endpoints.push({ ...fields, address: canonicalIp(address) ?? address });
  });

  let workloadSelector: ServiceEntrySpec['workloadSelector'];
  const selector = mappingField(issues, spec, 'workloadSelector', path);
  if (selector !== undefined) {
    checkFields(issues, selector, [...path, 'workloadSelector'], ['labels']);
    workloadSelector = { labels: labelsField(issues, selector, 'labels', [...path, 'workloadSelector']) };
    if (endpoints.length > 0) issues.add([...path, 'workloadSelector'], 'cannot be combined with spec.endpoints');
  }
  if (resolution === 'STATIC' && endpoints.length === 0 && workloadSelector === undefined) {
    issues.add([...path, 'endpoints'], 'required for resolution STATIC (or a workloadSelector)');
  }
  // Istio's other rules of resolution (ValidateServiceEntry): a block of addresses has no name to resolve, and a plain
  // TCP port cannot tell several resolved hosts apart.
  if (resolution === 'DNS' || resolution === 'DNS_ROUND_ROBIN') {
    addresses.forEach((address, index) => {
      if (address.includes('/')) issues.add([...path, 'addresses', index], `${address}: CIDR blocks are allowed only with resolution NONE or STATIC (Istio refuses them too)`);
    });
  }
  if (resolution !== 'NONE' && hosts.length > 1 && ports.some((port) => !HOST_AWARE_PROTOCOLS.has(port.protocol ?? 'TCP'))) {
    issues.add([...path, 'hosts'], `several hosts with resolution ${resolution} and a port that is neither HTTP nor TLS: a connection cannot say which host it is for (Istio refuses it too); use one entry per host, or resolution NONE`);
  }
  endpoints.forEach((endpoint, index) => {
    for (const name of Object.keys(endpoint.ports)) {
      if (!ports.some((port) => port.name === name)) issues.add([...path, 'endpoints', index, 'ports', name], `no port of spec.ports is named ${JSON.stringify(name)}`);
    }
  });
  // Istio refuses them too ("no endpoints should be provided for resolution type none"): accepted, they were ignored,
  // and the traffic went wherever the client's own address or DNS pointed, not to the endpoints written here.
  if (resolution === 'NONE' && endpoints.length > 0) {
    issues.add([...path, 'endpoints'], 'not used with resolution NONE (traffic goes to the address the client asked for): use resolution STATIC for these endpoints, or remove them');
  }
  const exportTo = stringListField(issues, spec, 'exportTo', path, {
    check: (value) => (value === '.' || value === '*' ? undefined : checkDns1123Label(value)),
  });
  const subjectAltNames = stringListField(issues, spec, 'subjectAltNames', path);
  return { hosts, addresses, ports, location, resolution, endpoints, workloadSelector, exportTo, subjectAltNames };
}

// ---- MeshConfig ----

const MESH_FIELDS = ['trustDomain', 'rootNamespace', 'ports', 'egress', 'pathNormalization', 'federation', 'certificateTtl', 'nodeCertificateTtl', 'clusterId'];
// Goes into metric label values and the baggage header as it is: a token, as Kubernetes names and Istio's cluster IDs are.
const CLUSTER_ID = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;
const FEDERATION_FIELDS = ['trustDomain', 'bundleEndpoint', 'profile', 'endpointSpiffeId', 'bundleFile'];

function validateMeshConfigSpec(issues: FieldIssues, spec: Mapping | undefined): MeshConfigSpec | undefined {
  if (spec === undefined) return undefined;
  const path = ['spec'];
  checkFields(issues, spec, path, MESH_FIELDS);
  const trustDomain = stringField(issues, spec, 'trustDomain', path, { required: true, check: checkTrustDomain });
  const rootNamespace = stringField(issues, spec, 'rootNamespace', path, { check: checkDns1123Label }) ?? DEFAULT_ROOT_NAMESPACE;
  const ports = meshPorts(issues, mappingField(issues, spec, 'ports', path) ?? {});

  const egressMap = mappingField(issues, spec, 'egress', path) ?? {};
  checkFields(issues, egressMap, [...path, 'egress'], ['mode']);
  const mode = enumField(issues, egressMap, 'mode', [...path, 'egress'], ['ALLOW_ANY', 'REGISTRY_ONLY'] as const) ?? 'ALLOW_ANY';
  const pathNormalization = pathNormalizationOf(issues, mappingField(issues, spec, 'pathNormalization', path) ?? {}, [...path, 'pathNormalization']);

  const duration = (value: string) => (parseDurationMs(value) === undefined ? `${JSON.stringify(value)} is not a duration (examples: 1h, 30m, 2h30m)` : undefined);
  const certificateTtl = stringField(issues, spec, 'certificateTtl', path, { check: duration }) ?? DEFAULT_CERTIFICATE_TTL;
  const nodeCertificateTtl = stringField(issues, spec, 'nodeCertificateTtl', path, { check: duration }) ?? DEFAULT_NODE_CERTIFICATE_TTL;
  const clusterId =
    stringField(issues, spec, 'clusterId', path, {
      check: (value) => (CLUSTER_ID.test(value) ? undefined : `${JSON.stringify(value)} is not a cluster ID: 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit`),
    }) ?? DEFAULT_CLUSTER_ID;

  const federation: FederationPeer[] = [];
  const seenDomains = new Map<string, number>();
  (listField(issues, spec, 'federation', path) ?? []).forEach((item, index) => {
    const peerPath = [...path, 'federation', index];
    const entry = mappingAt(issues, item, peerPath);
    if (entry === undefined) return;
    checkFields(issues, entry, peerPath, FEDERATION_FIELDS);
    const peerDomain = stringField(issues, entry, 'trustDomain', peerPath, { required: true, check: checkTrustDomain });
    if (peerDomain !== undefined && peerDomain === trustDomain) {
      issues.add([...peerPath, 'trustDomain'], `${peerDomain} is this mesh's own trust domain`);
    } else if (peerDomain !== undefined) {
      const first = seenDomains.get(peerDomain);
      if (first !== undefined) issues.add([...peerPath, 'trustDomain'], `${peerDomain} is already federated by spec.federation[${first}]`);
      seenDomains.set(peerDomain, index);
    }
    const bundleEndpoint = stringField(issues, entry, 'bundleEndpoint', peerPath, { required: true, check: checkHttpsUrl });
    // SPIFFE Federation §5.1: the profile is always configured explicitly, never inferred.
    const profile = enumField(issues, entry, 'profile', peerPath, ['https_spiffe', 'https_web'] as const, true);
    const endpointSpiffeId = stringField(issues, entry, 'endpointSpiffeId', peerPath, { check: checkWorkloadSpiffeId });
    if (profile === 'https_spiffe' && !hasValue(entry, 'endpointSpiffeId')) {
      issues.add([...peerPath, 'endpointSpiffeId'], 'required for profile https_spiffe');
    }
    if (profile === 'https_web' && endpointSpiffeId !== undefined) {
      issues.add([...peerPath, 'endpointSpiffeId'], 'only for profile https_spiffe (https_web authenticates the endpoint with Web PKI)');
    }
    const bundleFile = stringField(issues, entry, 'bundleFile', peerPath, { check: (value) => (value === '' ? 'must not be empty' : undefined) });
    if (peerDomain !== undefined && bundleEndpoint !== undefined && profile !== undefined) {
      federation.push({ trustDomain: peerDomain, bundleEndpoint, profile, endpointSpiffeId, bundleFile });
    }
  });
  if (trustDomain === undefined) return undefined;
  return { trustDomain, rootNamespace, ports, egress: { mode }, pathNormalization, federation, certificateTtl, nodeCertificateTtl, clusterId };
}

/**
 * Istio's MeshConfig `pathNormalization: { normalization: ... }`. ambit always resolves dot segments and merges
 * slashes, so DEFAULT, BASE and MERGE_SLASHES all read as MERGE_SLASHES; NONE is refused, since rules would then be
 * dodged by `/./admin` or `//admin`.
 */
function pathNormalizationOf(issues: FieldIssues, map: Mapping, path: FieldPath): PathNormalization {
  checkFields(issues, map, path, ['normalization']);
  const value = enumField(issues, map, 'normalization', path, ['DEFAULT', 'NONE', 'BASE', 'MERGE_SLASHES', 'DECODE_AND_MERGE_SLASHES'] as const);
  if (value === 'NONE') {
    issues.add([...path, 'normalization'], 'NONE is not offered: path rules would be dodged by `/./admin`, `//admin` or `/%61dmin`; ambit always normalises paths (MERGE_SLASHES), and DECODE_AND_MERGE_SLASHES decodes %2F and %5C too');
  }
  return value === 'DECODE_AND_MERGE_SLASHES' ? value : 'MERGE_SLASHES';
}

function meshPorts(issues: FieldIssues, map: Mapping): MeshPorts {
  const path = ['spec', 'ports'];
  const names = Object.keys(DEFAULT_PORTS) as (keyof MeshPorts)[];
  checkFields(issues, map, path, names);
  const ports = { ...DEFAULT_PORTS };
  const owner = new Map<number, string>();
  for (const name of names) {
    ports[name] = portField(issues, map, name, path) ?? DEFAULT_PORTS[name];
    const other = owner.get(ports[name]);
    // Each port is a listener on the node; two on one port cannot both bind.
    if (other !== undefined) issues.add([...path, name], `${ports[name]} is already the ${other} port`);
    owner.set(ports[name], name);
  }
  return ports;
}
