// Where a passthrough connection (a destination outside the mesh) may not go. The proxy runs with the host's
// network and privileges, so a destination chosen by a workload (its own annotation; transparent capture later)
// must not reach what only the host can: its loopback services (the proxy's admin among them), its own addresses,
// link-local ones (a cloud's metadata service). An operator's --outbound may, except into the proxy's own ports
// on this host, where the connection would come back to the proxy and loop (ztunnel's "self call").
import { lookup as dnsLookup } from 'node:dns';
import type { LookupAddress, LookupOptions } from 'node:dns';
import { canonicalIp } from '../config/fields.ts';
import { AmbitError } from '../errors.ts';
import { CidrSet, parseIp } from '../authz/match.ts';
import { formatAuthority } from './authority.ts';
import type { LocalAddresses } from './local-addresses.ts';

/** Addresses that are this host whatever its interfaces: loopback, "this network" (0.0.0.0 connects to the host), unspecified. */
const HOST_ITSELF = new CidrSet(['127.0.0.0/8', '0.0.0.0/8', '::1/128', '::/128']);
/** Link-local: never routed off the link, and where clouds put their metadata service (169.254.169.254). */
const LINK_LOCAL = new CidrSet(['169.254.0.0/16', 'fe80::/10']);
/**
 * Cloud metadata services outside link-local: AWS's over IPv6 (fd00:ec2::254) and Alibaba Cloud's (100.100.100.200).
 * They answer with the node's own credentials, which a workload must not reach through the host-network proxy.
 */
const METADATA = new CidrSet(['fd00:ec2::254/128', '100.100.100.200/32']);

export interface DestinationGuard {
  /** This host's addresses (its interfaces, a loopback prefix whole). */
  readonly local: LocalAddresses;
  /** True for a port the proxy itself listens on (HBONE, admin, metrics, readiness, its outbound listeners). */
  readonly ownPort: (port: number) => boolean;
  /**
   * What a canonical IP is in the mesh (a workload's IP, a Service's or a mesh ServiceEntry's address), or null: it
   * is reached over HBONE, so plain TCP to it would skip the destination's authorization.
   */
  readonly meshAddress: (ip: string) => string | null;
}

/**
 * Why a passthrough connection to ip:port is refused, or null when it may go. `byWorkload`: the destination was
 * chosen by a workload, not by the operator.
 */
export function passthroughRefusal(ip: string, port: number, byWorkload: boolean, guard: DestinationGuard): string | null {
  const canonical = canonicalIp(ip);
  const parsed = canonical === undefined ? null : parseIp(canonical);
  // Not an IP literal: nothing here can vouch for it (the caller resolves names first).
  if (canonical === undefined || parsed === null) return `${ip} is not an IP address`;
  const onHost = HOST_ITSELF.contains(parsed) || guard.local.has(canonical);
  if (onHost && guard.ownPort(port)) return `${formatAuthority(canonical, port)} is the proxy's own port on this host: the connection would loop through the proxy`;
  if (!byWorkload) return null;
  if (onHost) return `${formatAuthority(canonical, port)} is this host: a workload's listener may not reach the host's own services through the proxy (an operator's --outbound may)`;
  if (LINK_LOCAL.contains(parsed)) return `${formatAuthority(canonical, port)} is link-local: a workload's listener may not reach it through the proxy (an operator's --outbound may)`;
  if (METADATA.contains(parsed)) return `${formatAuthority(canonical, port)} is a cloud's metadata service: a workload's listener may not reach it through the proxy (an operator's --outbound may)`;
  // A name (or a ServiceEntry's endpoint) that leads into the mesh: its address or Service name goes over HBONE.
  const mesh = guard.meshAddress(canonical);
  if (mesh !== null) return `${formatAuthority(canonical, port)} is ${mesh}: reached over HBONE when dialled by its address or Service name, never as plain TCP`;
  return null;
}

type LookupCallback = (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/**
 * A `lookup` for net.connect that keeps only the addresses a name may be connected to, so a name that resolves to
 * a refused address (`localhost`, a DNS entry pointing at 169.254.169.254) is refused before any connection.
 */
export function guardedLookup(port: number, byWorkload: boolean, guard: DestinationGuard): (hostname: string, options: LookupOptions, callback: LookupCallback) => void {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
      if (error !== null) return callback(error, []);
      let refusal: string | null = null;
      const allowed = addresses.filter((entry) => {
        const why = passthroughRefusal(entry.address, port, byWorkload, guard);
        refusal ??= why;
        return why === null;
      });
      if (allowed.length === 0) {
        const refused = new AmbitError('DESTINATION_REFUSED', `${hostname} resolves only to refused addresses: ${refusal ?? 'no address'}`) as AmbitError & NodeJS.ErrnoException;
        return callback(refused, []);
      }
      if (options.all === true) return callback(null, allowed);
      const first = allowed[0] as LookupAddress;
      callback(null, first.address, first.family);
    });
  };
}
