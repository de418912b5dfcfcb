// Where everything of the system benchmark lives on loopback (127.70.x.y: Linux routes all of 127/8 to
// lo, and no test mesh uses 127.70), and the shared facts every row is measured with.

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** Every HTTP response of every row: the same 1 KiB body from the same upstream. */
export const BODY_BYTES = 1024;
/** Authorization policies in force on the L7 rows (ambit AuthorizationPolicies, HAProxy ACL rules). */
export const POLICY_COUNT = 1000;
/** The request is allowed by this one, near the end: a linear matcher pays for nearly every rule. */
export const ALLOWING_POLICY = 998;
export const policyName = (index: number): string => `svc-${String(index).padStart(4, '0')}`;
/** Every row sends the same request; on the L7 rows only policy ALLOWING_POLICY allows it. */
export const REQUEST_PATH = `/api/v1/${policyName(ALLOWING_POLICY)}/items`;

export const TRUST_DOMAIN = 'cluster.local';
export const NAMESPACE = 'bench';

/** The upstream workloads (all on ambit's node-b): nginx (or the Node fallback) and the TCP bulk/hold server. */
export const UPSTREAM = {
  webL4: { host: '127.70.2.10', port: 8080 },
  webL7: { host: '127.70.2.11', port: 8080 },
  bulk: { host: '127.70.2.12', port: 9000 },
  hold: { host: '127.70.2.12', port: 9001 },
} as const;

/** ambit: the CA, node-a (client side, explicit outbound listeners on the client pod's IP) and node-b. */
export const AMBIT = {
  ca: { host: '127.70.0.1', port: 15012 },
  nodeA: { name: 'node-a', address: '127.70.1.1' },
  nodeB: { name: 'node-b', address: '127.70.2.1' },
  clientIp: '127.70.1.20',
  listen: { webL4: 9080, webL7: 9081, bulk: 9090, hold: 9091 },
} as const;

/** HAProxy pairs: a client-side process (plain TCP in) and a server-side one (mTLS in), per layer. */
export const HAPROXY = {
  l4: { client: '127.70.3.20', server: '127.70.4.1' },
  l7: { client: '127.70.5.20', server: '127.70.6.1' },
  listen: { web: 9080, bulk: 9090, hold: 9091 },
  tls: { web: 8443, bulk: 8444, hold: 8445 },
} as const;

/** The Node floor pair (bench/system/node-floor.ts): plain TCP in on the client side, HBONE to the server side. */
export const NODE_FLOOR = {
  client: '127.70.8.20',
  server: '127.70.8.1',
  hbonePort: 15008,
  listen: { web: 9080, bulk: 9090, hold: 9091 },
} as const;

/** The idle-footprint proxy (its own CA and registry): 1,000 workloads, 100 of them on node-c. */
export const FOOTPRINT = {
  ca: { host: '127.70.0.2', port: 15012 },
  node: { name: 'node-c', address: '127.70.7.1' },
  workloads: 1000,
  local: 100,
  localIp: (index: number): string => `127.70.7.${10 + index}`,
  remoteIp: (index: number): string => `127.70.${10 + Math.floor(index / 200)}.${(index % 200) + 1}`,
} as const;

/** Churn clients take their source address from here, so 4-tuples (and TIME_WAIT) spread over many IPs. */
export const CHURN_SOURCES = Array.from({ length: 64 }, (_, i) => `127.70.9.${i + 1}`);
