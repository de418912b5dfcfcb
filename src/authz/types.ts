// The authorization policy model: Istio's security.istio.io/v1 (and v1beta1) AuthorizationPolicy and
// PeerAuthentication as users write them, after validation at load. Strings are kept as written; the
// compiler (compile.ts) turns them into matchers. https://istio.io/latest/docs/reference/config/security/

export type PolicyAction = 'ALLOW' | 'DENY' | 'AUDIT';

/** One `from[].source`: every present field must match (AND); each list matches if any element does (OR). */
export interface PolicySource {
  readonly principals?: readonly string[];
  readonly notPrincipals?: readonly string[];
  readonly namespaces?: readonly string[];
  readonly notNamespaces?: readonly string[];
  /** CIDRs or single IPs, canonical spelling. */
  readonly ipBlocks?: readonly string[];
  readonly notIpBlocks?: readonly string[];
  readonly remoteIpBlocks?: readonly string[];
  readonly notRemoteIpBlocks?: readonly string[];
  /** `NS/SA` or `SA` (the policy's namespace), as written; never with principals or namespaces (Istio's rule). */
  readonly serviceAccounts?: readonly string[];
  readonly notServiceAccounts?: readonly string[];
  /** `*`, `TD`, `PREFIX*` or `*SUFFIX`. */
  readonly trustDomains?: readonly string[];
  readonly notTrustDomains?: readonly string[];
}

/** One `to[].operation`. hosts/methods/paths are L7 (per HTTP request); ports is L4. */
export interface PolicyOperation {
  readonly hosts?: readonly string[];
  readonly notHosts?: readonly string[];
  readonly ports?: readonly number[];
  readonly notPorts?: readonly number[];
  readonly methods?: readonly string[];
  readonly notMethods?: readonly string[];
  readonly paths?: readonly string[];
  readonly notPaths?: readonly string[];
}

/**
 * `when` keys ambit evaluates. request.headers[NAME] and remote.ip are L7 (HTTP fields); the others are L4.
 * source.serviceAccount and source.trustDomain are matched against the principal (identity-match.ts).
 */
export type ConditionKey =
  | { readonly kind: 'request.headers'; readonly header: string }
  | { readonly kind: 'source.ip' }
  | { readonly kind: 'remote.ip' }
  | { readonly kind: 'source.namespace' }
  | { readonly kind: 'source.principal' }
  | { readonly kind: 'source.serviceAccount' }
  | { readonly kind: 'source.trustDomain' }
  | { readonly kind: 'destination.ip' }
  | { readonly kind: 'destination.port' };

export interface PolicyCondition {
  /** As written, e.g. `request.headers[x-user]`. */
  readonly key: string;
  readonly parsedKey: ConditionKey;
  readonly values?: readonly string[];
  readonly notValues?: readonly string[];
}

export interface PolicyRule {
  readonly from?: readonly PolicySource[];
  readonly to?: readonly PolicyOperation[];
  readonly when?: readonly PolicyCondition[];
}

export interface AuthorizationPolicySpec {
  /** matchLabels of spec.selector; undefined = every workload in the policy's namespace (or the mesh, in the root namespace). */
  readonly selector?: Readonly<Record<string, string>>;
  /** ALLOW when absent, as in Istio. */
  readonly action: PolicyAction;
  /** An ALLOW policy with no rules allows nothing; a DENY with no rules denies nothing. */
  readonly rules: readonly PolicyRule[];
}

export type MtlsMode = 'STRICT' | 'PERMISSIVE' | 'DISABLE' | 'UNSET';

export interface PeerAuthenticationSpec {
  readonly selector?: Readonly<Record<string, string>>;
  readonly mtls: MtlsMode;
  /** port number → mode */
  readonly portLevelMtls: ReadonlyMap<number, MtlsMode>;
}

/** The annotation that makes a mesh-wide PeerAuthentication a floor no namespace or workload can lower. */
export const ENFORCE_ANNOTATION = 'ambit.dev/enforce';
