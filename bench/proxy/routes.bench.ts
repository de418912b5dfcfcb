// Per-connection cost of the routing decision (src/proxy/routes.ts decideRoute): what every new outbound connection
// pays before it is dialled, on a mesh of 1,000 Services with 2 pods each and 200 ServiceEntries outside the mesh.
import { bench, describe } from 'vitest';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import { decideRoute, routingTableOf } from '../../src/proxy/routes.ts';

const SERVICES = 1_000;
const ENTRIES = 200;

function yaml(registryOnly: boolean): string {
  const docs: string[] = [`apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n${registryOnly ? '  egress: { mode: REGISTRY_ONLY }\n' : ''}`];
  for (let i = 0; i < SERVICES; i++) {
    const a = Math.floor(i / 250);
    const b = i % 250;
    docs.push(`apiVersion: v1\nkind: Service\nmetadata: { name: svc-${i}, namespace: ns-${i % 20} }\nspec:\n  clusterIP: 10.96.${a}.${b + 1}\n  selector: { app: svc-${i} }\n  ports: [{ port: 80, targetPort: 8080 }]`);
    for (const replica of [0, 1]) {
      docs.push(`apiVersion: v1\nkind: Pod\nmetadata: { name: svc-${i}-${replica}, namespace: ns-${i % 20}, labels: { app: svc-${i} } }\nspec: { nodeName: node-${i % 10}, serviceAccountName: svc-${i}, containers: [{ name: app }] }\nstatus: { phase: Running, podIP: 10.${replica + 1}.${a}.${b + 1} }`);
    }
  }
  for (let i = 0; i < ENTRIES; i++) {
    // Half named exactly, a quarter by wildcard, a quarter STATIC with endpoints.
    const host = i % 4 === 1 ? `"*.partner-${i}.example"` : `api-${i}.partner.example`;
    const routed = i % 4 === 3 ? `  resolution: STATIC\n  endpoints: [{ address: 198.51.${Math.floor(i / 250)}.${(i % 250) + 1} }, { address: 203.0.113.${(i % 250) + 1}, weight: 3 }]\n` : '  resolution: DNS\n';
    docs.push(`apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: entry-${i}, namespace: ns-${i % 20} }\nspec:\n  hosts: [${host}]\n  ports: [{ number: 443, name: tls, protocol: TLS }]\n${routed}`);
  }
  return docs.join('\n---\n');
}

const open = routingTableOf(buildSnapshot(parseConfigText(yaml(false), 'mesh.yaml')));
const locked = routingTableOf(buildSnapshot(parseConfigText(yaml(true), 'mesh.yaml')));
let draw = 0;
const random = () => (draw = (draw + 0.618033988749895) % 1);

describe('decideRoute (one new outbound connection)', () => {
  bench('a Service by its hostname', () => {
    decideRoute(open, 'svc-517.ns-17.svc.cluster.local', 80, random, 'ns-3');
  });
  bench("a Service by its cluster IP", () => {
    decideRoute(open, '10.96.2.18', 80, random, 'ns-3');
  });
  bench("a pod's IP", () => {
    decideRoute(open, '10.2.1.100', 8080, random, 'ns-3');
  });
  bench('a name outside the mesh, ALLOW_ANY (entries with endpoints exist, so it is looked up)', () => {
    decideRoute(open, 'www.example.com', 443, random, 'ns-3');
  });
  bench('a STATIC ServiceEntry host, to one of its weighted endpoints', () => {
    decideRoute(open, 'api-3.partner.example', 443, random, 'ns-3');
  });
  bench('REGISTRY_ONLY: a host under a wildcard entry', () => {
    decideRoute(locked, 'eu.api.partner-5.example', 443, random, 'ns-5');
  });
  bench('REGISTRY_ONLY: a name no entry admits (refused)', () => {
    decideRoute(locked, 'a.b.c.unknown.example', 443, random, 'ns-5');
  });
});
