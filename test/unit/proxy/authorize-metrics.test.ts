// ambit_authz_decisions_total as a scrape reads it: decisions counted by result and deciding policy, the
// counts kept across a configuration change, and re-checks of open connections not counted.
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { parseIp } from '../../../src/authz/match.ts';
import { parseSpiffeId } from '../../../src/identity/spiffe-id.ts';
import { silentLogger } from '../../../src/observe/log.ts';
import { InboundAuthorizer } from '../../../src/proxy/authorize.ts';
import type { InboundConnection } from '../../../src/proxy/inbound.ts';

const WORLD = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: cluster.local }
---
apiVersion: v1
kind: Pod
metadata: { name: db-1, namespace: data, labels: { app: db } }
spec: { nodeName: node-b, serviceAccountName: db }
status: { phase: Running, podIP: 10.0.2.20 }
`;

/** A policy of db's named `name`, `spec` its action and rules (indented). */
function dbPolicy(name: string, spec: string): string {
  return `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${name}, namespace: data }
spec:
  selector: { matchLabels: { app: db } }
${spec}`;
}

function policy(name: string, action: 'ALLOW' | 'DENY', namespace: string): string {
  return dbPolicy(name, `  action: ${action}\n  rules: [{ from: [{ source: { namespaces: [${namespace}] } }] }]\n`);
}

/** db's port 80 declared HTTP (to `targetPort`), and a policy of db's (dbPolicy). */
function httpPortWith(name: string, spec: string, targetPort = 80): string {
  return `---
apiVersion: v1
kind: Service
metadata: { name: db, namespace: data }
spec: { selector: { app: db }, ports: [{ name: http, port: 80, targetPort: ${targetPort} }] }
${dbPolicy(name, spec)}`;
}

function snapshotOf(yaml: string): ConfigSnapshot {
  return buildSnapshot(parseConfigText(yaml, 'test.yaml'));
}

function connectionFrom(snapshot: ConfigSnapshot, namespace: string): InboundConnection {
  const peer = parseSpiffeId(`spiffe://cluster.local/ns/${namespace}/sa/app`);
  return {
    peer,
    principal: peer.id.slice('spiffe://'.length),
    peerNamespace: namespace,
    peerAddress: '10.0.1.10',
    peerIp: parseIp('10.0.1.10'),
    claimedSource: null,
    destination: snapshot.workloadByIp('10.0.2.20')!,
    destinationIp: '10.0.2.20',
    destinationPort: 5432,
  };
}

async function decisionCounts(registry: Registry): Promise<Record<string, number>> {
  const metric = registry.getSingleMetric('ambit_authz_decisions_total');
  const counts: Record<string, number> = {};
  for (const value of (await metric!.get()).values) counts[`${String(value.labels.decision)} ${String(value.labels.policy)}`] = value.value;
  return counts;
}

describe('the warning of a denied connection', () => {
  it('is written for the first 20 denials in 10 s and at debug after, every one still counted', async () => {
    const snapshot = snapshotOf(WORLD + policy('deny-bad', 'DENY', 'bad'));
    const warned: Array<Record<string, unknown>> = [];
    const debugged: string[] = [];
    const logger = Object.assign(silentLogger(), { warn: (fields: Record<string, unknown>) => void warned.push(fields), debug: (_fields: unknown, message: string) => void debugged.push(message) });
    const registry = new Registry();
    const authorizer = new InboundAuthorizer(() => snapshot, registry, Object.assign(logger, { child: () => logger }));
    for (let i = 0; i < 50; i++) expect(authorizer.authorize(connectionFrom(snapshot, 'bad')).allow).toBe(false);
    expect(warned).toHaveLength(20);
    expect(warned[0]).toMatchObject({ decision: 'DENY', policy: 'data/deny-bad', port: 5432, source: 'spiffe://cluster.local/ns/bad/sa/app' });
    expect(await decisionCounts(registry)).toEqual({ 'DENY data/deny-bad': 50 });
    expect(debugged.filter((message) => message === 'connection denied by policy')).toHaveLength(30);
  });
});

describe('authorization decision counts', () => {
  it('counts each decision under its result and deciding policy, and keeps the counts across a configuration change', async () => {
    let snapshot = snapshotOf(WORLD + policy('allow-web', 'ALLOW', 'web') + policy('deny-bad', 'DENY', 'bad'));
    const registry = new Registry();
    const authorizer = new InboundAuthorizer(() => snapshot, registry, silentLogger());
    expect(await decisionCounts(registry)).toEqual({});

    expect(authorizer.authorize(connectionFrom(snapshot, 'web')).allow).toBe(true);
    expect(authorizer.authorize(connectionFrom(snapshot, 'web')).allow).toBe(true);
    expect(authorizer.authorize(connectionFrom(snapshot, 'bad')).allow).toBe(false);
    // No ALLOW policy matches: denied by default, with no deciding policy.
    expect(authorizer.authorize(connectionFrom(snapshot, 'other')).allow).toBe(false);
    expect(await decisionCounts(registry)).toEqual({ 'ALLOW data/allow-web': 2, 'DENY data/deny-bad': 1, 'DENY none': 1 });

    // A new snapshot compiles new decisions; the same policy's decisions go on counting in the same series.
    snapshot = snapshotOf(WORLD + policy('allow-web', 'ALLOW', 'web'));
    expect(authorizer.authorize(connectionFrom(snapshot, 'web')).allow).toBe(true);
    expect(await decisionCounts(registry)).toEqual({ 'ALLOW data/allow-web': 3, 'DENY data/deny-bad': 1, 'DENY none': 1 });
    // A scrape reads the counts, it does not add them up again.
    expect(await decisionCounts(registry)).toEqual({ 'ALLOW data/allow-web': 3, 'DENY data/deny-bad': 1, 'DENY none': 1 });

    // Re-checking an open connection after a change is not a new decision.
    expect(authorizer.stillAllowed(connectionFrom(snapshot, 'bad'), false, snapshot, 'node-b')).toBe(false);
    expect(await decisionCounts(registry)).toEqual({ 'ALLOW data/allow-web': 3, 'DENY data/deny-bad': 1, 'DENY none': 1 });
  });

  it('counts a request it cannot decide (its workload is gone) as a denial under policy "error"', async () => {
    const http = httpPortWith('get-only', '  rules: [{ to: [{ operation: { methods: [GET] } }] }]\n');
    let snapshot = snapshotOf(WORLD + http);
    const registry = new Registry();
    const authorizer = new InboundAuthorizer(() => snapshot, registry, silentLogger());
    const inspection = authorizer.requestInspection({ ...connectionFrom(snapshot, 'web'), destinationPort: 80 }, 'node-b');
    expect(inspection).not.toBeNull();
    const facts = { method: 'GET', path: '/', host: 'db', header: () => undefined, remoteIp: null };
    expect(inspection?.decide(facts).allow).toBe(true);
    // The workload leaves that address; the tunnel's next request cannot be decided for it.
    snapshot = snapshotOf(WORLD.replace('10.0.2.20', '10.0.2.99') + http);
    expect(inspection?.decide(facts).allow).toBe(false);
    expect(await decisionCounts(registry)).toEqual({ 'ALLOW data/get-only': 1, 'DENY error': 1 });
  });

  it("judges an open tunnel's requests by its own workload's policies, never by those of another that took its address in the same change", () => {
    const http = httpPortWith('deny-admin', '  action: DENY\n  rules: [{ to: [{ operation: { paths: [/admin] } }] }]\n');
    const first = snapshotOf(WORLD + http);
    let snapshot = first;
    const authorizer = new InboundAuthorizer(() => snapshot, new Registry(), silentLogger());
    const connection = { ...connectionFrom(first, 'web'), destinationPort: 80 };
    const inspection = authorizer.requestInspection(connection, 'node-b');
    const admin = { method: 'GET', path: '/admin', host: 'db', header: () => undefined, remoteIp: null };
    const home = { ...admin, path: '/' };
    expect(inspection?.decide(admin).allow).toBe(false);
    expect(inspection?.decide(home).allow).toBe(true);
    // Another change, the workload untouched: its own policies still judge.
    snapshot = snapshotOf(`${WORLD + http}---\napiVersion: v1\nkind: Pod\nmetadata: { name: other-1, namespace: data }\nspec: { nodeName: node-a, serviceAccountName: other }\nstatus: { phase: Running, podIP: 10.0.2.30 }\n`);
    expect(inspection?.decide(admin).allow).toBe(false);
    expect(inspection?.decide(home).allow).toBe(true);
    // db-1 deleted and its address given to a pod of another identity, on another node, with no policy: the requests
    // still reach db-1 until the tunnel is closed, and are refused meanwhile, /admin above all.
    for (const [pod, node] of [['web-1', 'node-a'], ['db-2', 'node-a']] as const) {
      snapshot = snapshotOf(`${WORLD.replace('name: db-1', `name: ${pod}`).replace('app: db', pod === 'web-1' ? 'app: web' : 'app: db').replace('nodeName: node-b', `nodeName: ${node}`).replace('serviceAccountName: db', pod === 'web-1' ? 'serviceAccountName: web' : 'serviceAccountName: db')}${http}`);
      expect(inspection?.decide(admin).allow, pod).toBe(false);
      expect(inspection?.decide(home).allow, pod).toBe(false);
    }
    // A tunnel whose workload is gone when its inspection is asked for is inspected, and refuses each request.
    const late = authorizer.requestInspection(connection, 'node-b');
    expect(late).not.toBeNull();
    expect(late?.decide(home).allow).toBe(false);
    // Back as it was: judged by its policies again.
    snapshot = first;
    expect(inspection?.decide(home).allow).toBe(true);
    expect(inspection?.decide(admin).allow).toBe(false);
  });
});

describe('policies that fail to compile', () => {
  /** A snapshot's member, its methods bound to the snapshot itself (they use its private fields). */
  function bound(target: ConfigSnapshot, key: string | symbol): unknown {
    const value = Reflect.get(target, key) as unknown;
    return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
  }

  /** The same world, but reading its objects throws, as a compile that runs out of memory or stack does. */
  function uncompilable(snapshot: ConfigSnapshot): ConfigSnapshot {
    return new Proxy(snapshot, {
      get(target, key) {
        if (key === 'objects') throw new RangeError('Invalid array length');
        return bound(target, key);
      },
    });
  }

  it('deny every connection, inspected request and open connection until the configuration compiles again, and are compiled once, not once per connection', async () => {
    const HTTP_WORLD = WORLD + httpPortWith('allow-get', '  rules: [{ from: [{ source: { namespaces: [web] } }], to: [{ operation: { methods: [GET] } }] }]\n', 5432);
    const good = snapshotOf(HTTP_WORLD);
    const bad = uncompilable(snapshotOf(HTTP_WORLD));
    let reads = 0;
    const counted = new Proxy(bad, {
      get(target, key) {
        if (key === 'objects') reads++;
        return Reflect.get(target, key) as unknown;
      },
    });
    let snapshot: ConfigSnapshot = good;
    const registry = new Registry();
    const authorizer = new InboundAuthorizer(() => snapshot, registry, silentLogger());
    const open = connectionFrom(good, 'web');
    const inspection = authorizer.requestInspection(open, 'node-b');

    snapshot = counted;
    const connection = connectionFrom(snapshot, 'web');
    expect(authorizer.authorize(connection).allow).toBe(false);
    expect(authorizer.authorize(connection).allow).toBe(false);
    expect(reads).toBe(1);
    // A tunnel opened now is inspected all the same, and refuses each request rather than let it through unjudged.
    const fresh = authorizer.requestInspection(connection, 'node-b');
    expect(fresh).not.toBeNull();
    const facts = { method: 'GET', path: '/', host: 'db' } as unknown as Parameters<NonNullable<typeof fresh>['decide']>[0];
    expect(fresh!.decide(facts).allow).toBe(false);
    // One opened under the good snapshot denies its next request instead of throwing.
    expect(inspection).not.toBeNull();
    expect(inspection!.decide(facts).allow).toBe(false);
    expect(authorizer.stillAllowed(open, false, snapshot, 'node-b')).toBe(false);
    // Once a configuration that compiles is in force, the tunnel opened meanwhile decides by it again.
    snapshot = good;
    expect(fresh!.decide(facts).allow).toBe(true);
    snapshot = counted;
    expect((await decisionCounts(registry))['DENY error']).toBeGreaterThanOrEqual(3);
  });
});
