// Routing decisions on in-memory snapshots built from YAML text: (table, host, port) → Route, no sockets.
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { buildRoutingTable, decideRoute, externalEntry, inboundService, meshAddressOf, routingTableOf } from '../../../src/proxy/routes.ts';
import type { HboneRoute, Route, RoutingTable } from '../../../src/proxy/routes.ts';
import { passthroughRevoked } from '../../../src/proxy/outbound.ts';

function meshConfig(spec: string): string {
  return `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec:
  trustDomain: cluster.local
${spec}`;
}

// Five pods labelled app=web in shop (two ready with the named port, one Pending, one without the named
// port, one phase-less), one in another namespace, and a VM; three Services over them.
const WORKLOADS = `apiVersion: v1
kind: Pod
metadata: { name: web-1, namespace: shop, labels: { app: web } }
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: app, ports: [{ name: http, containerPort: 8080 }] }]
status: { phase: Running, podIP: 10.0.1.10 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-2, namespace: shop, labels: { app: web } }
spec:
  nodeName: node-b
  serviceAccountName: web
  containers:
    - name: app
      ports: [{ name: http, containerPort: 8081 }, { name: grpc, containerPort: 9000 }]
status: { podIP: 10.0.2.10 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-pending, namespace: shop, labels: { app: web } }
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: app, ports: [{ name: http, containerPort: 8080 }] }]
status: { phase: Pending, podIP: 10.0.1.11 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-unnamed, namespace: shop, labels: { app: web } }
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: app, ports: [{ containerPort: 8080 }] }]
status: { phase: Running, podIP: 10.0.1.12 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-elsewhere, namespace: billing, labels: { app: web } }
spec:
  nodeName: node-a
  serviceAccountName: web
  containers: [{ name: app, ports: [{ name: http, containerPort: 8080 }] }]
status: { phase: Running, podIP: 10.0.3.10 }
---
apiVersion: v1
kind: Pod
metadata: { name: db-6, namespace: data, labels: { app: db } }
spec: { nodeName: node-b, serviceAccountName: db }
status: { phase: Running, podIP: "fd00:10::6" }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: web-vm
  namespace: shop
  annotations: { ambit.dev/node: vm-1 }
spec:
  address: 10.0.9.9
  serviceAccount: web-vm
  labels: { app: web }
  ports: { http: 9090 }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  selector: { app: web }
  clusterIP: 10.96.0.10
  ports:
    - { name: http, port: 80, targetPort: http }
    - { name: grpc, port: 90, targetPort: grpc }
    - { name: proto, port: 91, targetPort: constructor }
    - { name: metrics, port: 9100 }
    - { name: dns, port: 53, protocol: UDP }
---
apiVersion: v1
kind: Service
metadata: { name: empty, namespace: shop }
spec:
  selector: { app: nothing }
  clusterIP: 10.96.0.11
  ports: [{ port: 80, targetPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: data }
spec:
  selector: { app: db }
  clusterIP: None
  ports: [{ port: 5432 }]
`;

function snapshotOf(...texts: string[]): ConfigSnapshot {
  return buildSnapshot(texts.flatMap((text, index) => parseConfigText(text, `file-${index}.yaml`)), { requireMesh: true });
}

function tableOf(meshSpec = ''): RoutingTable {
  return routingTableOf(snapshotOf(meshConfig(meshSpec), WORKLOADS));
}

const table = tableOf();

function expectHbone(route: Route): HboneRoute {
  expect(route.kind).toBe('hbone');
  return route as HboneRoute;
}

/** Every endpoint authority a Service route can choose, by sweeping the injected random over [0, 1). */
function reachable(routes: RoutingTable, host: string, port: number): string[] {
  const seen = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const route = decideRoute(routes, host, port, () => i / 100);
    seen.add(expectHbone(route).endpoint.authority);
  }
  return [...seen].sort();
}

describe('a Service addressed by name or cluster IP', () => {
  const names: Array<[string, string]> = [
    ['full hostname', 'web.shop.svc.cluster.local'],
    ['name.namespace', 'web.shop'],
    ['name.namespace.svc', 'web.shop.svc'],
    ['cluster IP', '10.96.0.10'],
  ];
  it.each(names)('routes the %s to one of its ready endpoints, naming the Service', (_, host) => {
    const route = expectHbone(decideRoute(table, host, 80, () => 0));
    expect(route.service?.hostname).toBe('web.shop.svc.cluster.local');
    expect(['10.0.1.10:8080', '10.0.2.10:8081', '10.0.9.9:9090']).toContain(route.endpoint.authority);
  });

  it('does not know a bare Service name without its namespace (no search domains)', () => {
    expect(decideRoute(table, 'web', 80)).toEqual({ kind: 'passthrough', host: 'web', port: 80 });
  });

  it("refuses a Service's name on a port it does not declare: where the name resolves is outside the mesh, in plain text", () => {
    for (const host of ['web.shop', 'web.shop.svc', 'web.shop.svc.cluster.local', 'WEB.shop.', 'web.shop.svc.cluster.local.']) {
      const route = decideRoute(table, host, 81);
      expect(route, host).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
      expect((route as { message: string }).message).toContain('web.shop.svc.cluster.local, which has no TCP port 81 (its ports: 80');
    }
    // Another name is not the Service's.
    expect(decideRoute(table, 'web.other', 81)).toEqual({ kind: 'passthrough', host: 'web.other', port: 81 });
  });

  it("refuses its cluster IP on a port it does not declare, as its name, for every listener: sent to the address as plain TCP it would pass the mesh by", () => {
    for (const source of [undefined, 'shop', 'front']) {
      const route = decideRoute(table, '10.96.0.10', 81, Math.random, source);
      expect(route, source).toEqual({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN', message: '10.96.0.10 is an address of Service web.shop.svc.cluster.local, which has no TCP port 81 (its ports: 80, 90, 91, 9100): not sent outside the mesh' });
    }
    // In another spelling too (IPv4-mapped), and the port it declares still goes over HBONE.
    expect(decideRoute(table, '::ffff:10.96.0.10', 81)).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
    expect(decideRoute(table, '10.96.0.10', 80, () => 0)).toMatchObject({ kind: 'hbone' });
    // An address that is no Service's stays outside the mesh.
    expect(decideRoute(table, '10.96.0.99', 81)).toEqual({ kind: 'passthrough', host: '10.96.0.99', port: 81 });
  });

  describe('an ExternalName Service\'s name, an alias of where it points (as Kubernetes\' DNS, and Istio since 1.21)', () => {
    const externalName = (name: string, target: string, ports = '') => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: shop }
spec: { type: ExternalName, externalName: ${target}${ports} }
---
`;
    const apiEntry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api, namespace: shop }
spec:
  hosts: [api.example.com]
  ports: [{ number: 443, name: https, protocol: TLS }]
`;
    const open = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, externalName('ext', 'API.example.com.', ', ports: [{ port: 443 }]')));

    it('goes outside the mesh to its target on any port, its ports having no say, the Service named as the configuration that chose it', () => {
      for (const [host, port] of [['ext.shop', 443], ['ext.shop.svc.cluster.local', 8443], ['EXT.shop.svc', 22]] as const) {
        expect(decideRoute(open, host, port, Math.random, 'shop'), `${host}:${port}`).toEqual({ kind: 'passthrough', host: 'api.example.com', port, entry: 'Service shop/ext' });
      }
    });

    it('is refused under REGISTRY_ONLY unless an entry admits its target on that port: the alias is no entry of the registry', () => {
      const locked = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, externalName('ext', 'api.example.com', ', ports: [{ port: 443 }]')));
      const refused = decideRoute(locked, 'ext.shop', 443, Math.random, 'shop');
      expect(refused).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
      expect((refused as { message: string }).message).toMatch(/^ext\.shop is Service shop\/ext, an alias of api\.example\.com: api\.example\.com:443 is not in the mesh registry/);
      const admitted = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, externalName('ext', 'api.example.com'), apiEntry));
      expect(decideRoute(admitted, 'ext.shop', 443, Math.random, 'shop')).toMatchObject({ kind: 'passthrough', host: 'api.example.com', port: 443, entry: 'Service shop/ext', serviceLabels: { hostname: 'api.example.com' } });
      expect(decideRoute(admitted, 'ext.shop', 8443, Math.random, 'shop')).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    });

    it('pointing at a Service of the mesh, reaches its endpoints over HBONE, and refuses a port the Service lacks', () => {
      const aliased = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, externalName('web-alias', 'web.shop.svc.cluster.local')));
      expect(reachable(aliased, 'web-alias.shop', 80)).toEqual(reachable(aliased, 'web.shop', 80));
      expect(reachable(aliased, 'web-alias.shop', 80).length).toBeGreaterThan(0);
      const lacking = decideRoute(aliased, 'web-alias.shop', 81, Math.random, 'shop');
      expect(lacking).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
      expect((lacking as { message: string }).message).toContain('web-alias.shop is Service shop/web-alias, an alias of web.shop.svc.cluster.local: web.shop.svc.cluster.local is Service');
    });

    it('follows a chain of ExternalNames to its end, and refuses one that loops or runs past eight', () => {
      const chained = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, externalName('a', 'b.shop.svc.cluster.local') + externalName('b', 'web.shop')));
      expect(reachable(chained, 'a.shop', 80)).toEqual(reachable(chained, 'web.shop', 80));
      const looped = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, externalName('a', 'b.shop') + externalName('b', 'a.shop.svc.cluster.local') + externalName('self', 'self.shop')));
      for (const host of ['a.shop', 'b.shop.svc', 'self.shop']) {
        const route = decideRoute(looped, host, 80, Math.random, 'shop');
        expect(route, host).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
        expect((route as { message: string }).message, host).toContain('loops or passes more than 8');
      }
      const long = Array.from({ length: 10 }, (_, index) => externalName(`n${index}`, index === 9 ? 'api.example.com' : `n${index + 1}.shop`)).join('');
      const longTable = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, long));
      // n1 → … → n9 → api.example.com is nine hops; n2's is eight.
      expect(decideRoute(longTable, 'n1.shop', 443, Math.random, 'shop')).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
      expect(decideRoute(longTable, 'n2.shop', 443, Math.random, 'shop')).toEqual({ kind: 'passthrough', host: 'api.example.com', port: 443, entry: 'Service shop/n2' });
    });
  });

  it('routes a headless Service (clusterIP None) by hostname only', () => {
    const route = expectHbone(decideRoute(table, 'db.data', 5432));
    expect(route.endpoint.authority).toBe('[fd00:10::6]:5432');
    expect(route.endpoint.hboneAuthority).toBe('[fd00:10::6]:15008');
    expect(table.byVip.has('None')).toBe(false);
  });
});

describe('Service endpoints', () => {
  it('resolves a named targetPort from each Pod\'s container ports and a WorkloadEntry\'s ports map', () => {
    expect(reachable(table, 'web.shop', 80)).toEqual(['10.0.1.10:8080', '10.0.2.10:8081', '10.0.9.9:9090']);
  });

  it('leaves out a ready Pod that has no container port of the targetPort\'s name', () => {
    // web-unnamed is Running and selected, but its port 8080 has no name.
    expect(reachable(table, 'web.shop', 80)).not.toContain('10.0.1.12:8080');
    expect(reachable(table, 'web.shop', 90)).toEqual(['10.0.2.10:9000']);
  });

  it('reads a named targetPort from a WorkloadEntry\'s own ports only: a name like "constructor" is no port there', () => {
    // No workload has a port of that name, so the Service port has no endpoint at all (not one at port "[Function]").
    expect(decideRoute(table, 'web.shop', 91, () => 0).kind).toBe('deny');
  });

  it('uses a numeric targetPort (defaulting to the port) on every ready selected workload', () => {
    expect(reachable(table, 'web.shop', 9100)).toEqual(['10.0.1.10:9100', '10.0.1.12:9100', '10.0.2.10:9100', '10.0.9.9:9100']);
  });

  it('counts only Running or phase-less Pods as endpoints, never Pending ones', () => {
    const authorities = reachable(table, 'web.shop', 9100);
    expect(authorities).toContain('10.0.1.10:9100'); // Running
    expect(authorities).toContain('10.0.2.10:9100'); // no phase
    expect(authorities).not.toContain('10.0.1.11:9100'); // Pending
  });

  it('sends no new connection to a Pod its readiness probe marks not ready, nor to one terminating', () => {
    const pod = (name: string, ip: string, extra: string) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: api }${extra.startsWith('deletion') ? `, ${extra}` : ''} }
spec: { nodeName: node-a, serviceAccountName: api }
status: { phase: Running, podIP: ${ip}${extra.startsWith('conditions') ? `, ${extra}` : ''} }
`;
    const routes = routingTableOf(snapshotOf(meshConfig(''), [
      pod('api-ready', '10.0.5.1', 'conditions: [{ type: PodScheduled, status: "True" }, { type: Ready, status: "True" }]'),
      pod('api-probe-failing', '10.0.5.2', 'conditions: [{ type: Ready, status: "False" }]'),
      pod('api-unknown', '10.0.5.3', 'conditions: [{ type: Ready, status: "Unknown" }]'),
      pod('api-terminating', '10.0.5.4', 'deletionTimestamp: "2026-12-05T16:00:00Z"'),
      pod('api-by-hand', '10.0.5.5', ''),
      'apiVersion: v1\nkind: Service\nmetadata: { name: api, namespace: shop }\nspec: { selector: { app: api }, clusterIP: 10.96.0.50, ports: [{ port: 80 }] }\n',
    ].join('---\n')));
    expect(reachable(routes, 'api.shop', 80)).toEqual(['10.0.5.1:80', '10.0.5.5:80']);
    // A Service that publishes addresses not ready (StatefulSet peer discovery) has them all, as in Kubernetes.
    const published = routingTableOf(snapshotOf(meshConfig(''), [
      pod('api-ready', '10.0.5.1', 'conditions: [{ type: Ready, status: "True" }]'),
      pod('api-probe-failing', '10.0.5.2', 'conditions: [{ type: Ready, status: "False" }]'),
      'apiVersion: v1\nkind: Service\nmetadata: { name: api, namespace: shop }\nspec: { selector: { app: api }, clusterIP: 10.96.0.50, publishNotReadyAddresses: true, ports: [{ port: 80 }] }\n',
    ].join('---\n')));
    expect(reachable(published, 'api.shop', 80)).toEqual(['10.0.5.1:80', '10.0.5.2:80']);
    // Its own address still reaches each of them.
    expect(expectHbone(decideRoute(routes, '10.0.5.2', 80, () => 0)).endpoint.authority).toBe('10.0.5.2:80');
    expect(expectHbone(decideRoute(routes, '10.0.5.4', 80, () => 0)).endpoint.authority).toBe('10.0.5.4:80');
  });

  it('names a Ready condition whose status is not True, False or Unknown', () => {
    expect(() => snapshotOf(meshConfig(''), `apiVersion: v1
kind: Pod
metadata: { name: odd, namespace: shop }
spec: { nodeName: node-a }
status: { phase: Running, podIP: 10.0.5.9, conditions: [{ type: Ready, status: yes }] }
`)).toThrow(/status\.conditions\[0\]\.status: "yes" is not True, False or Unknown/);
  });

  it('selects only workloads in the Service\'s own namespace', () => {
    expect(reachable(table, 'web.shop', 9100)).not.toContain('10.0.3.10:9100');
  });

  it('carries the endpoint workload\'s SPIFFE identity and its node\'s HBONE address', () => {
    const route = expectHbone(decideRoute(table, 'web.shop', 80, () => 0.99));
    const byIp = new Map([
      ['10.0.1.10', 'spiffe://cluster.local/ns/shop/sa/web'],
      ['10.0.2.10', 'spiffe://cluster.local/ns/shop/sa/web'],
      ['10.0.9.9', 'spiffe://cluster.local/ns/shop/sa/web-vm'],
    ]);
    expect(route.endpoint.identity).toBe(byIp.get(route.endpoint.ip));
    expect(route.endpoint.hboneAuthority).toBe(`${route.endpoint.ip}:15008`);
    expect(route.endpoint.hbonePort).toBe(15008);
  });

  it('ignores UDP Service ports: no route is built for them', () => {
    expect(table.byHost.get('web.shop')?.has(53)).toBe(false);
    expect(decideRoute(table, 'web.shop', 53)).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
    expect(decideRoute(table, '10.96.0.10', 53)).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
  });

  it('refuses a Service with no ready endpoint with NO_HEALTHY_UPSTREAM', () => {
    for (const host of ['empty.shop', 'empty.shop.svc.cluster.local', '10.96.0.11']) {
      expect(decideRoute(table, host, 80)).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
    }
  });
});

describe('picking among endpoints', () => {
  it('maps the injected random number onto the endpoints in equal slices', () => {
    const picks = [0, 0.2, 0.34, 0.5, 0.67, 0.999].map((r) => expectHbone(decideRoute(table, 'web.shop', 80, () => r)).endpoint.ip);
    expect(picks[0]).toBe(picks[1]);
    expect(picks[2]).toBe(picks[3]);
    expect(picks[4]).toBe(picks[5]);
    expect(new Set(picks).size).toBe(3);
  });

  it('spreads many connections evenly over the endpoints', () => {
    // mulberry32: a seeded generator, so the spread is the same on every run.
    let seed = 0x5eed;
    const random = () => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
    };
    const counts = new Map<string, number>();
    const total = 30_000;
    for (let i = 0; i < total; i++) {
      const route = decideRoute(table, 'web.shop', 9100, random);
      const ip = route.kind === 'hbone' ? route.endpoint.ip : route.kind;
      counts.set(ip, (counts.get(ip) ?? 0) + 1);
    }
    expect(counts.size).toBe(4);
    for (const count of counts.values()) expect(Math.abs(count / total - 0.25)).toBeLessThan(0.02);
  });

  it('returns the same frozen route object for the same endpoint (no allocation per decision)', () => {
    const first = decideRoute(table, 'web.shop', 80, () => 0);
    expect(decideRoute(table, 'web.shop', 80, () => 0)).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
  });
});

describe('a workload addressed by IP', () => {
  it('routes straight to that workload over HBONE, expecting its SPIFFE ID, with no Service', () => {
    const route = expectHbone(decideRoute(table, '10.0.2.10', 7000));
    expect(route.service).toBeUndefined();
    expect(route.endpoint).toMatchObject({
      ip: '10.0.2.10',
      port: 7000,
      authority: '10.0.2.10:7000',
      hboneHost: '10.0.2.10',
      hbonePort: 15008,
      hboneAuthority: '10.0.2.10:15008',
      identity: 'spiffe://cluster.local/ns/shop/sa/web',
    });
    expect(route.endpoint.workload.name).toBe('web-2');
  });

  it('routes to a WorkloadEntry by its address with the WorkloadEntry\'s service account', () => {
    const route = expectHbone(decideRoute(table, '10.0.9.9', 22));
    expect(route.endpoint.identity).toBe('spiffe://cluster.local/ns/shop/sa/web-vm');
    expect(route.endpoint.hboneAuthority).toBe('10.0.9.9:15008');
  });

  it('brackets an IPv6 workload address in both authorities', () => {
    const route = expectHbone(decideRoute(table, 'fd00:10::6', 5432));
    expect(route.endpoint.authority).toBe('[fd00:10::6]:5432');
    expect(route.endpoint.hboneAuthority).toBe('[fd00:10::6]:15008');
  });

  it('uses the MeshConfig\'s ports.hbone for the peer proxy address', () => {
    const custom = tableOf('  ports: { hbone: 15108 }\n');
    expect(expectHbone(decideRoute(custom, '10.0.2.10', 7000)).endpoint.hboneAuthority).toBe('10.0.2.10:15108');
    expect(expectHbone(decideRoute(custom, 'web.shop', 80, () => 0)).endpoint.hbonePort).toBe(15108);
  });

  it('refuses a Pod that is not ready with NO_HEALTHY_UPSTREAM', () => {
    expect(decideRoute(table, '10.0.1.11', 8080)).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
  });

  // The CONNECT :authority must use the canonical IP: the destination's inbound compares against it, and
  // transparent capture on a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
  it('uses the workload\'s canonical IP when the caller spells it differently (IPv4-mapped, upper-case IPv6)', () => {
    expect(expectHbone(decideRoute(table, '::ffff:10.0.2.10', 7000)).endpoint.authority).toBe('10.0.2.10:7000');
    expect(expectHbone(decideRoute(table, 'FD00:10::6', 5432)).endpoint.authority).toBe('[fd00:10::6]:5432');
  });

  it('keeps one frozen route per workload IP and port, under any spelling, and keeps no more than a bounded number', () => {
    const fresh = tableOf('');
    const first = expectHbone(decideRoute(fresh, '::ffff:10.0.2.10', 7000));
    expect(decideRoute(fresh, '10.0.2.10', 7000)).toBe(first);
    expect(Object.isFrozen(first) && Object.isFrozen(first.endpoint)).toBe(true);
    expect(expectHbone(decideRoute(fresh, '10.0.2.10', 7001)).endpoint.port).toBe(7001);
    const notReady = decideRoute(fresh, '10.0.1.11', 8080);
    expect(decideRoute(fresh, '10.0.1.11', 8080)).toBe(notReady);
    // A workload dialling every port of a pod: past the bound each decision is made afresh, and still right.
    for (let port = 1; port <= 5_000; port++) expect(expectHbone(decideRoute(fresh, '10.0.2.10', port)).endpoint.authority).toBe(`10.0.2.10:${port}`);
    expect(decideRoute(fresh, '10.0.2.10', 4_999)).not.toBe(decideRoute(fresh, '10.0.2.10', 4_999));
    expect(decideRoute(fresh, '10.0.2.10', 7000)).toBe(first);
  });

  it('finds a Service by a non-canonical spelling of its cluster IP', () => {
    expect(decideRoute(table, '::ffff:10.96.0.10', 80, () => 0).kind).toBe('hbone');
  });
});

describe('destinations outside the mesh', () => {
  it('pass through with ALLOW_ANY (the default)', () => {
    expect(decideRoute(table, '192.0.2.7', 443)).toEqual({ kind: 'passthrough', host: '192.0.2.7', port: 443 });
    expect(decideRoute(table, 'example.com', 443)).toEqual({ kind: 'passthrough', host: 'example.com', port: 443 });
    expect(decideRoute(table, 'web.other', 80)).toEqual({ kind: 'passthrough', host: 'web.other', port: 80 });
  });

  it('are refused with EGRESS_BLOCKED when egress is REGISTRY_ONLY', () => {
    const locked = tableOf('  egress: { mode: REGISTRY_ONLY }\n');
    expect(locked.egressLocked).toBe(true);
    for (const host of ['192.0.2.7', 'example.com', 'fd00:99::1']) {
      expect(decideRoute(locked, host, 443)).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    }
  });

  it('under REGISTRY_ONLY, Services and workload IPs still route', () => {
    const locked = tableOf('  egress: { mode: REGISTRY_ONLY }\n');
    expect(decideRoute(locked, 'web.shop', 80, () => 0).kind).toBe('hbone');
    expect(decideRoute(locked, '10.0.2.10', 7000).kind).toBe('hbone');
    expect(decideRoute(locked, 'empty.shop', 80)).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
  });
});

describe('destinations outside the mesh that a ServiceEntry names, under REGISTRY_ONLY', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: payments-api, namespace: shop }
spec:
  hosts: [api.payments.example, "*.cdn.example"]
  ports: [{ number: 443, name: https, protocol: HTTPS }]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: database, namespace: shop }
spec:
  hosts: [db.shop.internal]
  addresses: [192.0.2.0/28, "fd00:db::5"]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: no-ports, namespace: shop }
spec:
  hosts: [portless.example]
`;
  const locked = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, entries));

  it('pass through when a host, a wildcard subdomain or an address matches on a declared port', () => {
    for (const [host, port] of [['api.payments.example', 443], ['API.Payments.Example.', 443], ['img.cdn.example', 443], ['a.b.cdn.example', 443], ['192.0.2.9', 5432], ['fd00:db::5', 5432], ['db.shop.internal', 5432]] as const) {
      expect(decideRoute(locked, host, port, Math.random, 'shop'), `${host}:${port}`).toMatchObject({ kind: 'passthrough', host, port, serviceLabels: { namespace: 'shop' } });
    }
  });

  it('stay refused on another port, the apex of a wildcard, an address outside the blocks, or a namespace the entry is not exported to', () => {
    for (const [host, port, namespace] of [
      ['api.payments.example', 80, 'shop'],
      ['cdn.example', 443, 'shop'],
      ['evilcdn.example', 443, 'shop'],
      ['api.payments.example.evil.test', 443, 'shop'],
      ['192.0.2.16', 5432, 'shop'],
      ['db.shop.internal', 5432, 'billing'],
      ['192.0.2.9', 5432, 'billing'],
      ['portless.example', 443, 'shop'],
    ] as const) {
      expect(decideRoute(locked, host, port, Math.random, namespace), `${host}:${port} from ${namespace}`).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    }
    // The payments entry is exported everywhere (no exportTo).
    expect(decideRoute(locked, 'api.payments.example', 443, Math.random, 'billing').kind).toBe('passthrough');
    // A caller that does not say whose connection it is gets no ServiceEntry's leave.
    expect(decideRoute(locked, 'api.payments.example', 443)).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
  });
});

describe('the ServiceEntry egress registry, indexed', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: everything-example, namespace: ops }
spec:
  hosts: ["*.example"]
  addresses: [198.51.100.0/24]
  ports: [{ number: 443, name: https, protocol: HTTPS }]
  exportTo: [ops]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: cdn, namespace: shop }
spec:
  hosts: ["*.cdn.example"]
  addresses: [198.51.100.7/32, "2001:db8::7"]
  ports: [{ number: 443, name: https, protocol: HTTPS }]
  exportTo: [shop]
`;
  const locked = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, entries));
  const entryFor = (host: string, namespace: string) => externalEntry(locked, host, 443, namespace);

  it('names the most specific wildcard that is exported to the source, else a wider one', () => {
    expect(entryFor('img.cdn.example', 'shop')).toBe('shop/cdn');
    expect(entryFor('img.cdn.example', 'ops')).toBe('ops/everything-example');
    expect(entryFor('a.b.cdn.example', 'shop')).toBe('shop/cdn');
    expect(entryFor('cdn.example', 'shop')).toBeUndefined();
    expect(entryFor('cdn.example', 'ops')).toBe('ops/everything-example');
    expect(entryFor('example', 'ops')).toBeUndefined();
    expect(entryFor('.example', 'ops')).toBeUndefined();
    expect(entryFor('img.cdn.example.evil', 'shop')).toBeUndefined();
  });

  it('finds a single address in any spelling, and falls back to the blocks for an address exported elsewhere', () => {
    expect(entryFor('198.51.100.7', 'shop')).toBe('shop/cdn');
    expect(entryFor('::ffff:198.51.100.7', 'shop')).toBe('shop/cdn');
    expect(entryFor('2001:DB8:0:0::7', 'shop')).toBe('shop/cdn');
    expect(entryFor('2001:db8::7%eth0', 'shop')).toBe('shop/cdn');
    expect(entryFor('198.51.100.7', 'ops')).toBe('ops/everything-example');
    expect(entryFor('198.51.100.8', 'shop')).toBeUndefined();
    expect(entryFor('198.51.101.7', 'ops')).toBeUndefined();
    expect(entryFor('2001:db8::8', 'shop')).toBeUndefined();
  });
});

describe('a STATIC ServiceEntry outside the mesh', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: static-db, namespace: shop }
spec:
  hosts: [db.static.example]
  addresses: [192.0.2.80]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP, targetPort: 15432 }]
  resolution: STATIC
  endpoints: [{ address: 198.51.100.21, ports: { tcp-pg: 6432 } }, { address: 198.51.100.22 }]
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: everyones-db, namespace: ops }
spec:
  hosts: [db.static.example]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: 203.0.113.9 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: everyones-cache, namespace: ops }
spec:
  hosts: [cache.static.example]
  ports: [{ number: 6379, name: redis, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: 203.0.113.9 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: into-the-mesh, namespace: shop }
spec:
  hosts: [sneaky.static.example]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.96.0.10 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: dns-api, namespace: shop }
spec:
  hosts: [api.dns.example]
  ports: [{ number: 443, name: https, protocol: HTTPS }]
  resolution: DNS
`;
  const open = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));
  const locked = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, entries));

  it("sends its host and addresses to its endpoints, on the endpoint's port of the entry port's name, else the targetPort", () => {
    for (const table of [open, locked]) {
      for (const host of ['db.static.example', 'DB.Static.Example.', '192.0.2.80']) {
        expect(decideRoute(table, host, 5432, () => 0, 'shop'), host).toEqual({ kind: 'passthrough', host: '198.51.100.21', port: 6432, entry: 'shop/static-db', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'static-db' }) });
        expect(decideRoute(table, host, 5432, () => 0.99, 'shop'), host).toEqual({ kind: 'passthrough', host: '198.51.100.22', port: 15432, entry: 'shop/static-db', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'static-db' }) });
      }
    }
  });

  it("prefers the source namespace's own entry for a host, whatever the order, and keeps the port dialled without a mapping", () => {
    expect(decideRoute(open, 'db.static.example', 5432, () => 0, 'billing')).toEqual({ kind: 'passthrough', host: '203.0.113.9', port: 5432, entry: 'ops/everyones-db', serviceLabels: expect.objectContaining({ namespace: 'ops', name: 'everyones-db' }) });
    expect(decideRoute(open, 'cache.static.example', 6379, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: '203.0.113.9', port: 6379, entry: 'ops/everyones-cache', serviceLabels: expect.objectContaining({ namespace: 'ops', name: 'everyones-cache' }) });
    expect(decideRoute(open, 'db.static.example', 5432, () => 0, 'shop')).toMatchObject({ host: '198.51.100.21', entry: 'shop/static-db', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'static-db' }) });
  });

  it("never sends a connection as plain TCP to a Service's cluster IP named as an endpoint", () => {
    expect(decideRoute(open, 'sneaky.static.example', 80, () => 0, 'shop')).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM', message: expect.stringMatching(/shop\/into-the-mesh has no endpoint outside the mesh/) });
  });

  it('leaves a namespace it is not exported to, and a DNS entry, to the name dialled (or to the egress rules)', () => {
    // Only shop's entry has the address: another namespace dials it as it is (or is refused under REGISTRY_ONLY).
    expect(decideRoute(open, '192.0.2.80', 5432, () => 0, 'data')).toEqual({ kind: 'passthrough', host: '192.0.2.80', port: 5432 });
    expect(decideRoute(locked, '192.0.2.80', 5432, () => 0, 'data')).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    // Labelled with the entry that names it (its destination_service), though it goes where the name resolves.
    const dnsApi = { hostname: 'api.dns.example', name: 'dns-api', namespace: 'shop' };
    expect(decideRoute(open, 'api.dns.example', 443, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'api.dns.example', port: 443, serviceLabels: dnsApi });
    expect(decideRoute(locked, 'api.dns.example', 443, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'api.dns.example', port: 443, serviceLabels: dnsApi });
  });
});

describe('ServiceEntry endpoints by DNS name and by weight', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: replicas, namespace: shop }
spec:
  hosts: [db.replicas.example]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: DNS
  endpoints: [{ address: db-1.region-a.example.net }, { address: DB-2.region-b.example.net., ports: { tcp-pg: 6432 } }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: round-robin, namespace: shop }
spec:
  hosts: [api.rr.example]
  ports: [{ number: 443, name: tls, protocol: TLS }]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{ address: api.backend.example.net }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: multi, namespace: shop }
spec:
  hosts: [a.multi.example, b.multi.example]
  ports: [{ number: 443, name: tls, protocol: TLS }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: vip, namespace: shop }
spec:
  hosts: [vip.dns.example]
  addresses: [198.51.100.200]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: none, namespace: shop }
spec:
  hosts: [plain.none.example]
  ports: [{ number: 80, name: tcp, protocol: TCP }]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: weighted, namespace: shop }
spec:
  hosts: [db.weighted.example]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: 198.51.100.31, weight: 1 }, { address: 198.51.100.32, weight: 3 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: unweighted, namespace: shop }
spec:
  hosts: [db.unweighted.example]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: 198.51.100.41, weight: 0 }, { address: 198.51.100.42, weight: 1 }]
`;
  const table = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));
  const hostAt = (host: string, port: number, draw: number) => (decideRoute(table, host, port, () => draw, 'shop') as { host: string }).host;

  // Istio makes a service of each host: every host had been counted as the entry's first.
  it('labels a connection to each host of an entry naming several with that host', () => {
    expect(decideRoute(table, 'b.multi.example', 443, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'b.multi.example', port: 443, serviceLabels: { hostname: 'b.multi.example', name: 'multi', namespace: 'shop' } });
    expect(decideRoute(table, 'a.multi.example', 443, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'a.multi.example', port: 443, serviceLabels: { hostname: 'a.multi.example', name: 'multi', namespace: 'shop' } });
  });

  // Istio: with no endpoints, "the host field will be used as the DNS name of the endpoint". It had gone to the address.
  it("sends a connection to a DNS entry's address (a virtual IP), with no endpoints, to its host", () => {
    expect(decideRoute(table, '198.51.100.200', 5432, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'vip.dns.example', port: 5432, entry: 'shop/vip', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'vip' }) });
    expect(decideRoute(table, 'vip.dns.example', 5432, () => 0, 'shop')).toMatchObject({ kind: 'passthrough', host: 'vip.dns.example', port: 5432 });
  });

  it("sends a DNS entry's host to its endpoints' names, which are resolved as they are dialled", () => {
    expect(decideRoute(table, 'db.replicas.example', 5432, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'db-1.region-a.example.net', port: 5432, entry: 'shop/replicas', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'replicas' }) });
    expect(decideRoute(table, 'db.replicas.example', 5432, () => 0.99, 'shop')).toEqual({ kind: 'passthrough', host: 'DB-2.region-b.example.net.', port: 6432, entry: 'shop/replicas', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'replicas' }) });
    expect(decideRoute(table, 'api.rr.example', 443, () => 0.5, 'shop')).toEqual({ kind: 'passthrough', host: 'api.backend.example.net', port: 443, entry: 'shop/round-robin', serviceLabels: expect.objectContaining({ namespace: 'shop', name: 'round-robin' }) });
  });

  it('leaves an entry of resolution NONE to the address dialled (endpoints with it are refused at load)', () => {
    expect(decideRoute(table, 'plain.none.example', 80, () => 0, 'shop')).toEqual({ kind: 'passthrough', host: 'plain.none.example', port: 80, serviceLabels: { hostname: 'plain.none.example', name: 'none', namespace: 'shop' } });
  });

  it('shares connections among endpoints by weight, a weight of 0 or none counting as 1', () => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 1000; i++) {
      const host = hostAt('db.weighted.example', 5432, i / 1000);
      counts.set(host, (counts.get(host) ?? 0) + 1);
    }
    expect(Object.fromEntries(counts)).toEqual({ '198.51.100.31': 250, '198.51.100.32': 750 });
    expect(hostAt('db.weighted.example', 5432, 0.2499)).toBe('198.51.100.31');
    expect(hostAt('db.weighted.example', 5432, 0.25)).toBe('198.51.100.32');
    expect(hostAt('db.weighted.example', 5432, 0.999999)).toBe('198.51.100.32');
    expect(hostAt('db.unweighted.example', 5432, 0.4999)).toBe('198.51.100.41');
    expect(hostAt('db.unweighted.example', 5432, 0.5)).toBe('198.51.100.42');
  });
});

describe("a ServiceEntry naming mesh workloads (Istio's VM pattern)", () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: legacy, namespace: shop }
spec:
  hosts: [legacy.shop.internal]
  addresses: [10.97.0.5]
  ports: [{ number: 80, name: http, protocol: HTTP }, { number: 81, name: other, protocol: TCP, targetPort: 8081 }]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: { labels: { app: web } }
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: pinned, namespace: data }
spec:
  hosts: [db.pinned.internal]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: "fd00:10::6" }, { address: 203.0.113.50 }, { address: 10.96.0.10 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: shadow, namespace: shop }
spec:
  hosts: [web.shop.svc.cluster.local]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.0.9.9 }]
`;
  const withEntries = routingTableOf(snapshotOf(meshConfig('  egress: { mode: REGISTRY_ONLY }\n'), WORKLOADS, entries));
  const reach = (host: string, port: number, namespace: string) => {
    const seen = new Set<string>();
    for (let i = 0; i < 100; i++) seen.add(expectHbone(decideRoute(withEntries, host, port, () => i / 100, namespace)).endpoint.authority);
    return [...seen].sort();
  };

  it('routes its hosts and addresses over HBONE to the selected ready workloads, a WorkloadEntry on its port of the same name', () => {
    // web-1, web-2 and web-unnamed on the entry port (80), the VM on its `http` port (9090); not the Pending pod.
    expect(reach('legacy.shop.internal', 80, 'shop')).toEqual(['10.0.1.10:80', '10.0.1.12:80', '10.0.2.10:80', '10.0.9.9:9090']);
    expect(reach('10.97.0.5', 80, 'shop')).toEqual(['10.0.1.10:80', '10.0.1.12:80', '10.0.2.10:80', '10.0.9.9:9090']);
    expect(reach('Legacy.Shop.Internal.', 81, 'shop')).toEqual(['10.0.1.10:8081', '10.0.1.12:8081', '10.0.2.10:8081', '10.0.9.9:8081']);
    const route = expectHbone(decideRoute(withEntries, 'legacy.shop.internal', 80, () => 0, 'shop'));
    expect(route.endpoint.identity).toBe('spiffe://cluster.local/ns/shop/sa/web');
    expect(route.serviceLabels).toEqual({ hostname: 'legacy.shop.internal', name: 'legacy', namespace: 'shop' });
  });

  it('routes endpoints that are mesh workloads over HBONE, and draws its endpoints outside the mesh alongside, as plain TCP', () => {
    const seen = new Map<string, number>();
    for (let i = 0; i < 100; i++) {
      const route = decideRoute(withEntries, 'db.pinned.internal', 5432, () => i / 100, 'billing');
      const key = route.kind === 'hbone' ? `hbone ${route.endpoint.authority}` : route.kind === 'passthrough' ? `tcp ${route.host}:${route.port} ${route.entry}` : route.kind;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    // Not the endpoint at the Service's cluster IP: that is reached over HBONE by its own name, never as plain TCP.
    expect(Object.fromEntries(seen)).toEqual({ 'hbone [fd00:10::6]:5432': 50, 'tcp 203.0.113.50:5432 data/pinned': 50 });
  });

  it('lets an open connection to its endpoint outside the mesh go on at a configuration change, whatever a new one would draw; one whose address is in the mesh now is closed', () => {
    const outside = { host: 'db.pinned.internal', port: 5432, reached: '203.0.113.50' };
    for (let i = 0; i < 100; i++) expect(passthroughRevoked(withEntries, outside, () => i / 100, 'billing')).toBeNull();
    // Reached at what is a workload's address now (a VM brought into the mesh): HBONE and its policy from now on.
    expect(passthroughRevoked(withEntries, { ...outside, reached: '10.0.1.10' }, Math.random, 'billing')).toEqual({ code: 'POLICY_REVOKED', message: 'closed by a configuration change: db.pinned.internal:5432, reached at 10.0.1.10, is the IP of Pod shop/web-1 now, reached over HBONE under its policy; this connection went as plain TCP' });
    // Not connected yet: judged by its route alone.
    expect(passthroughRevoked(withEntries, { ...outside, reached: undefined }, Math.random, 'billing')).toBeNull();
  });

  it("is the service the destination reports for its workloads: by the client's host=, else by the port dialled", () => {
    const at = (ip: string) => withEntries.snapshot.workloadByIp(ip)!;
    const legacy = { hostname: 'legacy.shop.internal', name: 'legacy', namespace: 'shop' };
    // On 8080, which the Service web targets too: only the host= can make it the entry, from a namespace it is exported to.
    expect(inboundService(withEntries, at('10.0.1.10'), 'legacy.shop.internal', 8080, 'shop')).toEqual(legacy);
    expect(inboundService(withEntries, at('10.0.1.10'), 'legacy.shop.internal', 8080, 'billing').name).toBe('web');
    expect(inboundService(withEntries, at('10.0.1.10'), 'legacy.shop.internal', 8080).name).toBe('web');
    expect(inboundService(withEntries, at('10.0.9.9'), 'legacy.shop.internal', 9090, 'shop')).toEqual(legacy);
    // The workload's own Services come first for a port both name; the entry's other port is the entry's.
    expect(inboundService(withEntries, at('10.0.1.10'), null, 8080).name).toBe('web');
    expect(inboundService(withEntries, at('10.0.1.10'), null, 8081).name).toBe('legacy');
    expect(inboundService(withEntries, at('fd00:10::6'), 'db.pinned.internal', 5432)).toEqual({ hostname: 'db.pinned.internal', name: 'pinned', namespace: 'data' });
    expect(inboundService(withEntries, at('fd00:10::6'), null, 5432).name).toBe('db');
    // An entry's host claimed for a workload it does not name is not believed.
    expect(inboundService(withEntries, at('fd00:10::6'), 'legacy.shop.internal', 5432).name).toBe('db');
  });

  it('is not routed for a namespace it is not exported to, nor over a Service of the same name', () => {
    expect(decideRoute(withEntries, 'legacy.shop.internal', 80, Math.random, 'billing')).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    expect(decideRoute(withEntries, 'legacy.shop.internal', 80)).toMatchObject({ kind: 'deny', reason: 'EGRESS_BLOCKED' });
    // The Kubernetes Service keeps its own name: the shadowing entry adds nothing there.
    expect(reach('web.shop.svc.cluster.local', 80, 'shop')).toEqual(['10.0.1.10:8080', '10.0.2.10:8081', '10.0.9.9:9090']);
  });
});

describe('a ServiceEntry naming mesh workloads and endpoints outside the mesh, weighted', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: mixed, namespace: data }
spec:
  hosts: [db.mixed.internal]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: "fd00:10::6", weight: 1 }, { address: 203.0.113.60, weight: 3 }, { address: 10.97.0.77 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: later, namespace: data }
spec:
  hosts: [later.internal]
  addresses: [10.97.0.77]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  workloadSelector: { labels: { app: db } }
`;
  const table = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));

  it("draws by the endpoints' weights, and never an endpoint at another mesh entry's address, whatever the order", () => {
    const seen = new Map<string, number>();
    for (let i = 0; i < 1000; i++) {
      const route = decideRoute(table, 'db.mixed.internal', 5432, () => i / 1000, 'data');
      const key = route.kind === 'hbone' ? route.endpoint.authority : route.kind === 'passthrough' ? `${route.host}:${route.port}` : route.kind;
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }
    expect(Object.fromEntries(seen)).toEqual({ '[fd00:10::6]:5432': 250, '203.0.113.60:5432': 750 });
  });
});

describe("a mesh ServiceEntry's host on a port it does not declare", () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: vm-db, namespace: data }
spec:
  hosts: [vm-db.internal]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: STATIC
  workloadSelector: { labels: { app: db } }
  exportTo: ["."]
`;
  const table = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));

  it('is refused on its address too, and an address its own namespace sends outside the mesh on that port, by an entry naming it, is that namespace\'s', () => {
    const addressed = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, `${entries.replace('hosts: [vm-db.internal]', 'hosts: [vm-db.internal]\n  addresses: [10.97.0.40]')}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: direct, namespace: data }
spec:
  hosts: [direct.example]
  addresses: [10.97.0.40]
  ports: [{ number: 6432, name: tcp-bouncer, protocol: TCP }]
  location: MESH_EXTERNAL
  resolution: NONE
`));
    expect(decideRoute(addressed, '10.97.0.40', 5432, Math.random, 'data')).toMatchObject({ kind: 'hbone' });
    expect(decideRoute(addressed, '10.97.0.40', 5433, Math.random, 'data')).toEqual({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN', message: '10.97.0.40 is an address of ServiceEntry data/vm-db, which has no TCP port 5433 (its ports: 5432): not sent outside the mesh' });
    expect(decideRoute(addressed, '10.97.0.40', 6432, Math.random, 'data')).toMatchObject({ kind: 'passthrough', host: '10.97.0.40', port: 6432 });
    // A namespace the mesh entry is not exported to: the address is nothing of the mesh for it.
    expect(decideRoute(addressed, '10.97.0.40', 5433, Math.random, 'front')).toMatchObject({ kind: 'passthrough', host: '10.97.0.40', port: 5433 });
  });

  it('is refused, as a Service is, rather than sent as plain TCP to where its name resolves (its workloads)', () => {
    expect(decideRoute(table, 'vm-db.internal', 5432, Math.random, 'data')).toMatchObject({ kind: 'hbone' });
    expect(decideRoute(table, 'vm-db.internal', 5433, Math.random, 'data')).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN', message: 'vm-db.internal is ServiceEntry data/vm-db, which has no TCP port 5433 (its ports: 5432): not sent outside the mesh' });
    expect(decideRoute(table, 'VM-DB.internal.', 5433, Math.random, 'data')).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
  });

  it('takes nothing from a namespace the entry is not exported to: another namespace cannot black-hole a name for it', () => {
    const shared = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, `${entries.replaceAll('vm-db.internal', 'db.example.com')}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: stripe, namespace: shop }
spec:
  hosts: [db.example.com]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }, { number: 6432, name: tcp-bouncer, protocol: TCP }]
  location: MESH_EXTERNAL
  resolution: DNS
`));
    // For shop the name is its own entry's, outside the mesh, on both ports.
    expect(decideRoute(shared, 'db.example.com', 5432, Math.random, 'shop')).toMatchObject({ kind: 'passthrough', host: 'db.example.com', port: 5432 });
    expect(decideRoute(shared, 'db.example.com', 6432, Math.random, 'shop')).toMatchObject({ kind: 'passthrough', host: 'db.example.com', port: 6432 });
    // For data, the mesh entry it sees: over HBONE, and on another port nowhere (shop's entry, exported to all, does
    // not send data's mesh name outside the mesh).
    expect(decideRoute(shared, 'db.example.com', 5432, Math.random, 'data')).toMatchObject({ kind: 'hbone' });
    expect(decideRoute(shared, 'db.example.com', 6432, Math.random, 'data')).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
    // A namespace that sees neither: where the name resolves, as any name outside the registry under ALLOW_ANY.
    expect(decideRoute(table, 'vm-db.internal', 5432, Math.random, 'front')).toMatchObject({ kind: 'passthrough', host: 'vm-db.internal' });
  });

  it("is not sent outside the mesh by another namespace's entry, nor by a wildcard, and a Service's name never is", () => {
    const others = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, `${entries.replaceAll('exportTo: ["."]', 'exportTo: ["*"]')}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: grab, namespace: other }
spec:
  hosts: [vm-db.internal, "*.svc.cluster.local"]
  ports: [{ number: 9999, name: tcp-x, protocol: TCP }]
  location: MESH_EXTERNAL
  resolution: NONE
`));
    expect(decideRoute(others, 'vm-db.internal', 9999, Math.random, 'shop')).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
    expect(decideRoute(others, 'web.shop.svc.cluster.local', 9999, Math.random, 'front')).toMatchObject({ kind: 'deny', reason: 'SERVICE_PORT_UNKNOWN' });
  });
});

describe('ServiceEntries that conflict with workloads or each other', () => {
  const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: grab, namespace: billing }
spec:
  hosts: [shared.internal]
  addresses: [10.0.1.10, 10.97.0.9/32]
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  resolution: STATIC
  workloadSelector: { labels: { app: web } }
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: shared, namespace: data }
spec:
  hosts: [shared.internal]
  addresses: [10.97.0.9]
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  resolution: STATIC
  workloadSelector: { labels: { app: db } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: idle, namespace: data }
spec:
  hosts: [idle.internal]
  addresses: ["FD00:DB::7"]
  ports: [{ number: 5432, name: tcp, protocol: TCP }]
  resolution: STATIC
  workloadSelector: { labels: { app: nothing-here } }
`;
  const conflicts = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));

  it("never takes over a workload's own IP: the workload is reached, not the entry's selection", () => {
    for (let i = 0; i < 10; i++) {
      // From billing, where the entry is visible and selects web-elsewhere.
      expect(expectHbone(decideRoute(conflicts, '10.0.1.10', 8080, () => i / 10, 'billing')).endpoint.workload.name).toBe('web-1');
    }
  });

  it("gives each namespace the entry it may see, its own first, so one exported to itself hides nothing from the rest", () => {
    const target = (host: string, namespace: string) => expectHbone(decideRoute(conflicts, host, 8080, () => 0, namespace)).endpoint.workload.namespace;
    expect(target('shared.internal', 'shop')).toBe('data');
    expect(target('shared.internal', 'billing')).toBe('billing');
    expect(target('10.97.0.9', 'shop')).toBe('data');
    expect(target('10.97.0.9', 'billing')).toBe('billing');
  });

  it('answers NO_HEALTHY_UPSTREAM for an entry of mesh workloads with none ready, never plain passthrough', () => {
    expect(decideRoute(conflicts, 'idle.internal', 5432, Math.random, 'data')).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
    expect(decideRoute(conflicts, 'fd00:db::7', 5432, Math.random, 'data')).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
  });
});

describe('meshAddressOf', () => {
  const table = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS));
  it("names a workload's IP and a Service's cluster IP, and nothing else", () => {
    expect(meshAddressOf(table, '10.0.1.10')).toBe('the IP of Pod shop/web-1');
    expect(meshAddressOf(table, '10.96.0.10')).toBe('a Service address in the mesh');
    expect(meshAddressOf(table, '198.51.100.7')).toBeNull();
  });

  it("names a mesh ServiceEntry's address even when none of its ports is routed (UDP only), and no entry sends plain TCP there", () => {
    const entries = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: dns-only, namespace: shop }
spec:
  hosts: [dns.shop.internal]
  addresses: [10.97.0.53]
  ports: [{ number: 53, name: dns, protocol: UDP }]
  resolution: STATIC
  workloadSelector: { labels: { app: web } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: pointing-in, namespace: shop }
spec:
  hosts: [in.static.example]
  ports: [{ number: 53, name: tcp-dns, protocol: TCP }]
  resolution: STATIC
  endpoints: [{ address: 10.97.0.53 }]
`;
    const table = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, entries));
    expect(meshAddressOf(table, '10.97.0.53')).toBe('a Service address in the mesh');
    expect(decideRoute(table, 'in.static.example', 53, () => 0, 'shop')).toMatchObject({ kind: 'deny', reason: 'NO_HEALTHY_UPSTREAM' });
  });
});

describe('routingTableOf', () => {
  it('builds a snapshot\'s table once and hands back the same one after', () => {
    const snapshot = snapshotOf(meshConfig(''), WORKLOADS);
    const first = routingTableOf(snapshot);
    expect(routingTableOf(snapshot)).toBe(first);
    expect(first.snapshot).toBe(snapshot);
  });

  it('builds a new table for a new snapshot, even of equal content', () => {
    const a = snapshotOf(meshConfig(''), WORKLOADS);
    const b = snapshotOf(meshConfig(''), WORKLOADS);
    expect(a.version).toBe(b.version);
    expect(routingTableOf(b)).not.toBe(routingTableOf(a));
    expect(routingTableOf(b).snapshot).toBe(b);
  });

  it('answers exactly what a freshly built table answers', () => {
    const snapshot = snapshotOf(meshConfig(''), WORKLOADS);
    const fresh = buildRoutingTable(snapshot);
    for (const [host, port] of [['web.shop', 80], ['10.96.0.10', 9100], ['10.0.2.10', 1], ['empty.shop', 80], ['example.com', 1]] as const) {
      expect(decideRoute(routingTableOf(snapshot), host, port, () => 0.5)).toEqual(decideRoute(fresh, host, port, () => 0.5));
    }
  });
});

describe("the Service a destination reports for an inbound connection (ztunnel's guess_inbound_service)", () => {
  const other = `apiVersion: v1
kind: Service
metadata: { name: admin, namespace: shop }
spec:
  selector: { app: web }
  ports: [{ port: 8443, targetPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: billing, namespace: billing }
spec:
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080 }]
`;
  const both = routingTableOf(snapshotOf(meshConfig(''), WORKLOADS, other));
  const workload = (ip: string) => both.snapshot.workloadByIp(ip)!;

  it("is the Service the client's forwarded host= names, among those selecting the workload", () => {
    expect(inboundService(both, workload('10.0.1.10'), 'admin.shop.svc.cluster.local', 8080)).toEqual({ hostname: 'admin.shop.svc.cluster.local', name: 'admin', namespace: 'shop' });
    expect(inboundService(both, workload('10.0.1.10'), 'web.shop.svc.cluster.local', 8080)).toEqual({ hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' });
  });

  it('is otherwise the first Service whose target port, named or numbered, is the port dialled', () => {
    expect(inboundService(both, workload('10.0.1.10'), null, 8080).name).toBe('web');
    expect(inboundService(both, workload('10.0.2.10'), null, 9000).name).toBe('web');
    expect(inboundService(both, workload('10.0.9.9'), null, 9090).name).toBe('web');
    // A Service selecting the workload by a port only another pod's container names still counts for that pod alone.
    expect(inboundService(both, workload('10.0.1.12'), null, 8080).name).toBe('admin');
  });

  it('never reports a Service that does not select the workload, whatever the client names', () => {
    // billing's Service lives in another namespace: it selects web-elsewhere, not web-1.
    expect(inboundService(both, workload('10.0.1.10'), 'billing.billing.svc.cluster.local', 1234)).toEqual({ hostname: 'unknown', name: 'unknown', namespace: 'unknown' });
    expect(inboundService(both, workload('10.0.1.10'), 'evil.example.com', 1234).hostname).toBe('unknown');
    expect(inboundService(both, workload('10.0.3.10'), null, 8080).name).toBe('billing');
    // A port no Service selecting the workload targets.
    expect(inboundService(both, workload('fd00:10::6'), null, 1).hostname).toBe('unknown');
    expect(inboundService(both, workload('fd00:10::6'), null, 5432).hostname).toBe('db.data.svc.cluster.local');
  });

  it('carries the Service labels on every route to it, and none on a route to a workload IP', () => {
    expect(expectHbone(decideRoute(table, 'web.shop.svc.cluster.local', 80, () => 0)).serviceLabels).toEqual({ hostname: 'web.shop.svc.cluster.local', name: 'web', namespace: 'shop' });
    expect(expectHbone(decideRoute(table, '10.0.1.10', 8080)).serviceLabels.hostname).toBe('unknown');
  });
});
