// Coded errors: one class, one stable code per cause. Codes are the contract with logs, tests and the
// README's error table (test/unit/errors.test.ts keeps the two in step); messages are for people.

/** Every code ambit can report, with the likely cause shown as a hint to operators. */
export const ERROR_CODES = {
  USAGE: 'the command line is malformed: see --help',
  FILE_READ: 'a file named on the command line or in configuration cannot be read',
  FILE_WRITE: 'a file cannot be written: check the directory exists and is writable',
  STATE_DIR_LOCKED: 'another ambit process holds this state directory (one proxy or agent per directory): stop it, or give this one its own --state-dir',
  STATE_DIR_UNSAFE: 'the state directory is another user\'s (its owner, or the owner of a symbolic link to it): whoever owns it could plant trust roots or keys',

  SPIFFE_ID_EMPTY: 'an empty string was given where a SPIFFE ID belongs',
  SPIFFE_ID_SCHEME: 'a SPIFFE ID must start with exactly "spiffe://" (lowercase)',
  SPIFFE_ID_TRUST_DOMAIN_MISSING: 'nothing between "spiffe://" and the first "/"',
  SPIFFE_ID_TRUST_DOMAIN_CHARS: 'trust domains use only lowercase a-z, 0-9, ".", "-" and "_" (no port, userinfo or percent-encoding)',
  SPIFFE_ID_TRUST_DOMAIN_TOO_LONG: 'a trust domain name is at most 255 bytes',
  SPIFFE_ID_TOO_LONG: 'a SPIFFE ID is at most 2048 bytes',
  SPIFFE_ID_EMPTY_SEGMENT: 'the path has an empty segment ("//")',
  SPIFFE_ID_DOT_SEGMENT: 'the path has a "." or ".." segment',
  SPIFFE_ID_PATH_CHARS: 'path segments use only letters, digits, ".", "-" and "_" (no query, fragment or percent-encoding)',
  SPIFFE_ID_TRAILING_SLASH: 'the path ends with "/"',
  SPIFFE_ID_NOT_WORKLOAD: 'a workload identity has the form spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT',

  SVID_PARSE: 'the input is not a PEM or DER X.509 certificate (or key)',
  SVID_NO_URI_SAN: 'an X.509-SVID carries its SPIFFE ID as a URI SAN and this certificate has none',
  SVID_MULTIPLE_URI_SANS: 'an X.509-SVID must carry exactly one URI SAN',
  SVID_NO_PATH: 'a leaf SVID names a workload: its SPIFFE ID needs a path',
  SVID_LEAF_IS_CA: 'a CA certificate was presented as an identity',
  SVID_KEY_USAGE: 'a leaf SVID needs a critical keyUsage with digitalSignature and without keyCertSign/cRLSign',
  SVID_EXT_KEY_USAGE: 'when extKeyUsage is present it must allow both serverAuth and clientAuth',
  SVID_EXPIRED: 'a certificate in the chain is past its notAfter: check rotation and the CA',
  SVID_NOT_YET_VALID: 'a certificate in the chain is before its notBefore: check clocks',
  SVID_CHAIN_INVALID: 'no valid signature path from the leaf to a root of its trust domain\'s bundle',
  SVID_CA_INVALID: 'a signing certificate in the chain is not a valid SPIFFE CA (cA, keyCertSign, ID without path)',
  SVID_CRITICAL_EXTENSION: 'a certificate in the chain carries a critical extension ambit does not evaluate, or a CA carries name constraints on URIs: refused rather than ignored (RFC 5280 §4.2)',
  SVID_KEY_MISMATCH: 'the private key does not belong to the certificate',
  SVID_KEY_REFUSED: 'a certificate\'s key or signature is refused: RSA below 2048 or above 4096 bits or with a public exponent above 32 bits, an EC curve other than P-256/P-384/P-521, or a signature over MD5 or SHA-1',
  TRUST_DOMAIN_UNKNOWN: 'there is no bundle for the trust domain named in the SPIFFE ID (federate with it first)',
  TRUST_DOMAIN_MISMATCH: 'the certificate is signed by another trust domain\'s CA than the one its SPIFFE ID names',
  IDENTITY_MISMATCH: 'the peer presented a valid SVID, but not the identity expected for this destination',
  SVID_MISSING: 'the proxy holds no certificate yet for the source workload: the CA has not issued it (is it reachable, and does the registry place the workload on this node? see /healthz/ready)',

  BUNDLE_INVALID: 'the trust bundle is not a SPIFFE bundle (JWKS) or PEM list of CA certificates',
  BUNDLE_DUPLICATE_TRUST_DOMAIN: 'a bundle map names the same trust domain twice',

  CA_STATE: 'the CA directory is missing, incomplete or already initialised',
  CA_CSR_INVALID: 'the certificate signing request is malformed or its signature does not verify',
  CA_NOT_AUTHORIZED: 'the caller may not obtain this identity: the registry does not place the workload on its node',
  CA_UNAUTHENTICATED: 'the caller presented no valid node SVID',
  CA_RATE_LIMITED: 'the node asked the CA for more certificates than its signing budget allows: it asks again after the Retry-After the CA gave',
  JOIN_TOKEN_INVALID: 'the join token is unknown or was already used: create a new one with `ambit ca token create`',
  JOIN_TOKEN_EXPIRED: 'the join token expired before it was used: create a new one',
  JOIN_TOKEN_WRONG_NODE: 'the join token was created for another node name',
  JOIN_TOKEN_BUSY: 'the attestation that spent this join token is still being answered: the node asks again shortly',
  CA_UNREACHABLE: 'the CA could not be reached: the agent keeps serving its valid certificates and retries',
  CA_REJECTED: 'the CA refused the request: see the CA\'s audit log for the reason',
  CA_NODE_REFUSED: 'the CA no longer accepts this node\'s certificate (evicted, replaced, expired): the node must attest again with a new join token',
  FEDERATION_FETCH: 'a federated trust domain\'s bundle endpoint could not be fetched or returned an invalid bundle',

  UPSTREAM_CONNECT: 'the destination (a workload, or a peer node proxy on 15008) could not be reached in time',
  DNS_LOOKUP: "a passthrough destination's name was not resolved in time: the resolver did not answer, or the source workload already had too many lookups waiting",
  TLS_HANDSHAKE: 'the TLS handshake with a peer failed: it sent an alert (it refused our certificate, or shares no TLS 1.3 suite or group with us) or does not speak TLS',
  DOWNSTREAM_RESET: 'the application closed its own connection abruptly (RST, EPIPE) mid-transfer',
  UPSTREAM_RESET: 'the destination closed its connection abruptly (RST, EPIPE) mid-transfer',
  POLICY_DENIED: 'an authorization policy denied the connection (401 on its CONNECT, flag DENY)',
  POLICY_REVOKED: 'an open connection was closed because a configuration change no longer allows it',
  SOURCE_DEPARTED: 'an open outbound connection was closed because its source workload left the node (deleted, moved, or another identity)',
  TUNNEL_RESET: 'the peer reset the tunnel (RST_STREAM, GOAWAY or a dropped connection) before it finished',
  HBONE_REFUSED: 'the destination node proxy answered the CONNECT with an error status (400 bad request, 401 policy, 503 unreachable), or ended the session as one past its limits (GOAWAY ENHANCE_YOUR_CALM: too many sessions of one identity from one address)',
  CONNECTION_LIMIT: 'an outbound connection was refused: its source workload holds --max-workload-connections already, or all workloads together hold what the open-files limit allows beside the proxy\'s own descriptors',
  EGRESS_BLOCKED: 'the destination is not in the mesh registry (no Service, workload, or ServiceEntry exported to the source\'s namespace names it on that port) and the mesh locks egress down (REGISTRY_ONLY)',
  DESTINATION_REFUSED: "a passthrough destination is the proxy's own port on this host (a loop), or this host or a link-local address named by a workload's listener",
  NO_HEALTHY_UPSTREAM: 'the Service has no ready endpoint for this port',
  SERVICE_PORT_UNKNOWN: "the destination names a Service of the mesh (or a mesh ServiceEntry's host the source sees), by name or address, on a port it does not have: refused, never sent where the name resolves, or to the address, outside the mesh",
  PROXY_BIND: 'a listener address could not be bound: in use, or not an address of this host',

  CONFIG_YAML: 'a configuration file is not valid YAML',
  CONFIG_UNKNOWN_KIND: 'an object\'s apiVersion/kind is not one ambit reads',
  CONFIG_FIELD: 'an object has a missing, mistyped or invalid field',
  CONFIG_DUPLICATE: 'two objects share kind, namespace and name',
  CONFIG_CONFLICT: 'two objects claim the same thing (for example one IP for two workloads)',
  CONFIG_MESH_MISSING: 'the configuration has no ambit.dev/v1alpha1 MeshConfig, which the CA and the proxy need for the trust domain',
  CONFIG_FILE_EMPTIED: 'a configuration file that held objects was rewritten in place and is now empty (0 bytes, or blank): most likely still being written (`>` truncates first), so its objects stay in force until it has objects again or is removed',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface AmbitErrorOptions {
  /** Overrides the code's default hint when the likely cause is known more precisely. */
  hint?: string;
  cause?: unknown;
}

export class AmbitError extends Error {
  override readonly name = 'AmbitError';
  readonly code: ErrorCode;
  readonly hint: string;

  constructor(code: ErrorCode, message: string, options: AmbitErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint ?? ERROR_CODES[code];
  }

  /** The shape logs and JSON outputs carry. */
  toJSON(): { code: ErrorCode; message: string; hint: string } {
    return { code: this.code, message: this.message, hint: this.hint };
  }
}

export function isAmbitError(value: unknown, code?: ErrorCode): value is AmbitError {
  return value instanceof AmbitError && (code === undefined || value.code === code);
}

/** Wraps anything thrown into an AmbitError so callers deal with one shape. */
export function toAmbitError(value: unknown, fallback: ErrorCode): AmbitError {
  if (value instanceof AmbitError) return value;
  const message = value instanceof Error ? value.message : String(value);
  return new AmbitError(fallback, message, { cause: value });
}

/** What a file error means, for a message a person reads (the code stays beside it for a search). */
const FILE_FAILURES: Readonly<Record<string, string>> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'a directory, not a file',
  ENOTDIR: 'a part of the path is a file, not a directory',
  ELOOP: 'too many symbolic links',
};

/** Why a file could not be read or written, as `ENOENT: no such file`. */
export function fileFailure(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === undefined) return (error as Error).message;
  const meaning = Object.hasOwn(FILE_FAILURES, code) ? FILE_FAILURES[code] : undefined;
  return meaning === undefined ? code : `${code}: ${meaning}`;
}
