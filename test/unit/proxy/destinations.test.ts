// Where passthrough may go: an operator's destination anywhere but into the proxy's own ports on this host; a
// workload's nowhere on this host and nowhere link-local, however the address is spelled or a name resolves.
import type { NetworkInterfaceInfo } from 'node:os';
import { describe, expect, it } from 'vitest';
import type { LookupAddress } from 'node:dns';
import { NameLookups, guardedLookup, passthroughRefusal } from '../../../src/proxy/destinations.ts';
import type { DestinationGuard, LookupAll } from '../../../src/proxy/destinations.ts';
import { LocalAddresses } from '../../../src/proxy/local-addresses.ts';

function iface(address: string, cidr: string, internal: boolean): NetworkInterfaceInfo {
  const family = address.includes(':') ? 'IPv6' : 'IPv4';
  return { address, cidr, internal, netmask: '', mac: '00:00:00:00:00:00', family, ...(family === 'IPv6' ? { scopeid: 0 } : {}) } as NetworkInterfaceInfo;
}

const guard: DestinationGuard = {
  local: new LocalAddresses(() => ({
    lo: [iface('127.0.0.1', '127.0.0.1/8', true), iface('::1', '::1/128', true)],
    eth0: [iface('10.0.0.5', '10.0.0.5/24', false), iface('fd00::5', 'fd00::5/64', false)],
  })),
  ownPort: (port) => port === 15000 || port === 15008 || port === 9080,
  meshAddress: (ip) => (ip === '10.0.1.10' ? 'the IP of Pod shop/web-1' : ip === '10.96.0.10' || ip === 'fd00:96::10' ? 'a Service address in the mesh' : null),
};

describe("an operator's passthrough destination", () => {
  it.each([
    ['a loopback service', '127.0.0.1', 5432],
    ['another loopback address', '127.70.1.9', 8443],
    ["this host's address on a port not the proxy's", '10.0.0.5', 5432],
    ['a link-local address', '169.254.169.254', 80],
    ["another host on the proxy's port numbers", '10.0.0.6', 15008],
    ['an IPv6 host elsewhere', '2001:db8::7', 443],
  ])('may be %s (%s:%i)', (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, false, guard)).toBeNull();
  });

  it.each([
    ['the admin on loopback', '127.0.0.1', 15000],
    ['HBONE on the host address', '10.0.0.5', 15008],
    ['an outbound listener, IPv4-mapped', '::ffff:127.0.0.1', 9080],
    ['the unspecified address (it connects to this host)', '0.0.0.0', 15000],
    ['IPv6 loopback', '::1', 15008],
    ['the unspecified IPv6 address', '::', 9080],
    ["the host's IPv6 address in another spelling", 'FD00:0:0::5', 15008],
  ])("may not be the proxy's own port: %s (%s:%i)", (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, false, guard)).toMatch(/proxy's own port on this host/);
  });
});

describe("a workload's passthrough destination", () => {
  it.each([
    ['a host elsewhere', '10.0.0.6', 5432],
    ['a public address', '192.0.2.7', 443],
    ['an IPv6 host elsewhere', '2001:db8::7', 443],
    ['a host on the proxy port numbers elsewhere', '10.0.0.6', 15000],
  ])('may be %s (%s:%i)', (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, true, guard)).toBeNull();
  });

  it.each([
    ['a loopback service', '127.0.0.1', 5432],
    ['anywhere in the loopback prefix', '127.255.0.3', 22],
    ['loopback, IPv4-mapped', '::ffff:127.0.0.1', 22],
    ['loopback, IPv4-mapped in hex', '::ffff:7f00:1', 22],
    ['IPv6 loopback', '::1', 22],
    ["the host's own address", '10.0.0.5', 10250],
    ["the host's own IPv6 address", 'fd00::5', 10250],
    ['the unspecified address', '0.0.0.0', 22],
    ['"this network"', '0.1.2.3', 22],
  ])('may not be this host: %s (%s:%i)', (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, true, guard)).toMatch(/is this host/);
  });

  it.each([
    ['the metadata service', '169.254.169.254', 80],
    ['IPv4 link-local, mapped', '::ffff:169.254.1.1', 80],
    ['IPv6 link-local', 'fe80::1', 80],
  ])('may not be link-local: %s (%s:%i)', (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, true, guard)).toMatch(/link-local/);
  });

  it.each([
    ["AWS's over IPv6", 'fd00:ec2::254', 80],
    ["AWS's over IPv6, in another spelling", 'FD00:EC2:0:0:0:0:0:254', 80],
    ["Alibaba Cloud's", '100.100.100.200', 80],
    ["Alibaba Cloud's, IPv4-mapped", '::ffff:100.100.100.200', 80],
    ["EKS Pod Identity's agent", 'fd00:ec2::23', 80],
    ["Azure's WireServer", '168.63.129.16', 80],
    ["Azure's WireServer host agent", '168.63.129.16', 32526],
  ])("may not be a cloud's metadata service outside link-local: %s (%s:%i), which the operator's --outbound may", (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, true, guard)).toMatch(/metadata service/);
    expect(passthroughRefusal(ip, port, false, guard)).toBeNull();
  });

  it('lets a workload reach the neighbours of those metadata addresses', () => {
    for (const ip of ['fd00:ec2::253', '100.100.100.201', '100.64.0.1', '168.63.129.17']) expect(passthroughRefusal(ip, 80, true, guard), ip).toBeNull();
    // Azure's WireServer is every Azure VM's DNS resolver too.
    expect(passthroughRefusal('168.63.129.16', 53, true, guard)).toBeNull();
  });

  it.each([
    ["a mesh workload's IP", '10.0.1.10', 8080],
    ["a Service's cluster IP", '10.96.0.10', 80],
    ["a Service's cluster IP on a port it does not have", '10.96.0.10', 5432],
    ["a Service's IPv6 cluster IP in another spelling", 'FD00:96:0::10', 80],
  ])('may not be an address in the mesh, as plain TCP: %s (%s:%i)', (_what, ip, port) => {
    expect(passthroughRefusal(ip, port, true, guard)).toMatch(/in the mesh|of Pod shop\/web-1.*never as plain TCP/);
    // The operator's own listener may.
    expect(passthroughRefusal(ip, port, false, guard)).toBeNull();
  });

  it("is refused first as the proxy's own port when it is both", () => {
    expect(passthroughRefusal('127.0.0.1', 15000, true, guard)).toMatch(/proxy's own port/);
  });

  it('is refused when it is not an address at all (names are judged as they resolve)', () => {
    expect(passthroughRefusal('localhost', 80, true, guard)).toMatch(/not an IP address/);
    expect(passthroughRefusal('127.0.0.1%lo', 80, false, guard)).toMatch(/not an IP address/);
  });
});

const OWNER = 'spiffe://cluster.local/ns/shop/sa/web';

function resolve(lookup: ReturnType<typeof guardedLookup>, name: string, all: boolean): Promise<{ error: NodeJS.ErrnoException | null; address: unknown }> {
  return new Promise((done) => lookup(name, { all }, (error, address) => done({ error, address })));
}

describe('a name given as a passthrough destination', () => {
  it("resolves for an operator to this host's addresses", async () => {
    const { error, address } = await resolve(guardedLookup(5432, false, guard, OWNER), 'localhost', false);
    expect(error).toBeNull();
    expect(['127.0.0.1', '::1']).toContain(address);
  });

  it('resolves to every allowed address when all are asked for (happy eyeballs)', async () => {
    const { error, address } = await resolve(guardedLookup(5432, false, guard, OWNER), 'localhost', true);
    expect(error).toBeNull();
    expect((address as Array<{ address: string }>).length).toBeGreaterThan(0);
  });

  it("is refused for an operator when it resolves only to the proxy's own port on this host", async () => {
    const { error } = await resolve(guardedLookup(15000, false, guard, OWNER), 'localhost', false);
    expect(error?.code).toBe('DESTINATION_REFUSED');
    expect(error?.message).toMatch(/localhost resolves only to refused addresses: .*proxy's own port/);
  });

  it('is refused for a workload when it resolves only to this host', async () => {
    for (const all of [false, true]) {
      const { error } = await resolve(guardedLookup(5432, true, guard, OWNER), 'localhost', all);
      expect(error?.code).toBe('DESTINATION_REFUSED');
      expect(error?.message).toMatch(/is this host/);
    }
  });

  it('passes on a resolution failure as it is', async () => {
    const { error } = await resolve(guardedLookup(80, true, guard, OWNER), 'no-such-host.invalid', false);
    expect(error?.code).toMatch(/ENOTFOUND|EAI_AGAIN/);
  });
});

/** A resolver whose answers the test gives: each lookup waits until `answer(name)` (or never). */
class HeldResolver {
  readonly asked: string[] = [];
  readonly #pending = new Map<string, Array<(error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void>>();
  readonly lookup: LookupAll = (hostname, _options, callback) => {
    this.asked.push(hostname);
    const list = this.#pending.get(hostname) ?? [];
    list.push(callback);
    this.#pending.set(hostname, list);
  };

  answer(hostname: string, address = '192.0.2.10'): void {
    const list = this.#pending.get(hostname) ?? [];
    this.#pending.delete(hostname);
    for (const callback of list) callback(null, [{ address, family: 4 }]);
  }
}

function lookupWith(lookups: NameLookups, owner: string, name: string): Promise<{ error: NodeJS.ErrnoException | null; addresses: LookupAddress[] }> {
  return new Promise((done) => lookups.lookup(owner, name, {}, (error, addresses) => done({ error, addresses })));
}

describe('name lookups of passthrough destinations', () => {
  it("share one lookup per name, and keep one workload's hung lookups from holding the others' turns", async () => {
    const resolver = new HeldResolver();
    const lookups = new NameLookups(resolver.lookup, { running: 3, perOwner: 2, queuedPerOwner: 64, maxWaitMs: 10_000 });
    const slow = Array.from({ length: 40 }, () => lookupWith(lookups, 'hostile', 'slow.example'));
    // Forty connections to one name: one lookup.
    expect(resolver.asked).toEqual(['slow.example']);
    // Distinct names: two of this workload run, the rest wait their turn.
    const many = Array.from({ length: 5 }, (_, i) => lookupWith(lookups, 'hostile', `n${i}.example`));
    expect(resolver.asked).toEqual(['slow.example', 'n0.example']);
    // Another workload still gets the third.
    const other = lookupWith(lookups, 'other', 'localhost');
    expect(resolver.asked.at(-1)).toBe('localhost');
    resolver.answer('localhost', '127.0.0.1');
    expect((await other).addresses).toEqual([{ address: '127.0.0.1', family: 4 }]);
    // An answer lets the next of the hostile workload's run, and reaches every connection that waited for the name.
    resolver.answer('slow.example');
    const answered = await Promise.all(slow);
    expect(answered.every((result) => result.error === null && result.addresses[0]?.address === '192.0.2.10')).toBe(true);
    expect(resolver.asked).toEqual(['slow.example', 'n0.example', 'localhost', 'n1.example']);
    for (let i = 0; i < 5; i++) resolver.answer(`n${i}.example`);
    await Promise.all(many);
    expect(resolver.asked).toHaveLength(7);
  });

  it("run another identity's lookup of a name the first has only queued, rather than hold it behind the first's turn", async () => {
    const resolver = new HeldResolver();
    const lookups = new NameLookups(resolver.lookup, { running: 3, perOwner: 2, queuedPerOwner: 64, maxWaitMs: 10_000 });
    void lookupWith(lookups, 'hostile', 'hung1.example');
    void lookupWith(lookups, 'hostile', 'hung2.example');
    const queued = lookupWith(lookups, 'hostile', 'api.example.com');
    const victim = lookupWith(lookups, 'victim', 'api.example.com');
    expect(resolver.asked).toEqual(['hung1.example', 'hung2.example', 'api.example.com']);
    resolver.answer('api.example.com');
    expect((await victim).addresses).toEqual([{ address: '192.0.2.10', family: 4 }]);
    // The first's, once its turn comes, joins the lookup under way or asks again: either way it is answered.
    resolver.answer('hung1.example');
    resolver.answer('api.example.com');
    expect((await queued).error).toBeNull();
  });

  it('refuse past the queue a workload may have, and give up on a queued lookup older than the wait', async () => {
    const resolver = new HeldResolver();
    const lookups = new NameLookups(resolver.lookup, { running: 1, perOwner: 1, queuedPerOwner: 1, maxWaitMs: 50 });
    void lookupWith(lookups, 'hostile', 'hung.example');
    const queued = lookupWith(lookups, 'hostile', 'second.example');
    const refused = await lookupWith(lookups, 'hostile', 'third.example');
    expect(refused.error).toMatchObject({ code: 'DNS_LOOKUP' });
    expect(refused.error?.message).toContain('third.example: hostile already has 1 name lookup waiting');
    // Past its wait it fails, though the running lookup still holds the only slot, and is never asked.
    const late = await queued;
    resolver.answer('hung.example');
    expect(late.error?.message).toContain('second.example: waited more than 50 ms for the resolver');
    expect(resolver.asked).toEqual(['hung.example']);
  });
});
