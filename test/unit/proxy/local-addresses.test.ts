// Which source workload IPs an outbound HBONE session may leave from: the host's own addresses, and on a loopback
// interface its whole prefix (127.0.0.0/8 on Linux), never a pod IP the host only routes to.
import type { NetworkInterfaceInfo } from 'node:os';
import { describe, expect, it } from 'vitest';
import { LocalAddresses } from '../../../src/proxy/local-addresses.ts';

function iface(address: string, cidr: string, internal: boolean): NetworkInterfaceInfo {
  const family = address.includes(':') ? 'IPv6' : 'IPv4';
  return { address, cidr, internal, netmask: '', mac: '00:00:00:00:00:00', family, ...(family === 'IPv6' ? { scopeid: 0 } : {}) } as NetworkInterfaceInfo;
}

describe('the addresses this host can dial from', () => {
  let interfaces: Record<string, NetworkInterfaceInfo[]> = {
    lo: [iface('127.0.0.1', '127.0.0.1/8', true), iface('::1', '::1/128', true)],
    eth0: [iface('10.0.0.5', '10.0.0.5/24', false)],
  };
  const local = new LocalAddresses(() => interfaces);

  it("has its interfaces' addresses and all of a loopback prefix", () => {
    expect(local.has('10.0.0.5', 0)).toBe(true);
    expect(local.has('127.70.1.20', 0)).toBe(true);
    expect(local.has('::1', 0)).toBe(true);
  });

  it("does not have another address of an interface's subnet (a pod IP the host routes to), nor an unknown one", () => {
    expect(local.has('10.0.0.6', 0)).toBe(false);
    expect(local.has('192.0.2.7', 0)).toBe(false);
    expect(local.has('fd00::5', 0)).toBe(false);
  });

  it('reads the interfaces again after ten seconds, not before', () => {
    interfaces = { ...interfaces, eth1: [iface('10.0.1.9', '10.0.1.9/24', false)] };
    expect(local.has('10.0.1.9', 5_000)).toBe(false);
    expect(local.has('10.0.1.9', 10_000)).toBe(true);
  });
});
