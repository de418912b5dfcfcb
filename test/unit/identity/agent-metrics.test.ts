// The identity agent's Prometheus metrics against an in-process CA: rotations, expiry and bundle sequence
// while the CA answers, then failures by code while it is gone and the old certificate keeps serving.
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcessCa } from '../../helpers/ca.ts';
import type { InProcessCa } from '../../helpers/ca.ts';
import { IdentityAgent } from '../../../src/identity/agent.ts';
import { verifySvid } from '../../../src/identity/svid.ts';
import type { Svid } from '../../../src/identity/svid.ts';
import { silentLogger } from '../../../src/observe/log.ts';

const TD = 'metrics.test';
const WEB = `spiffe://${TD}/ns/default/sa/web`;

/** Metric name → its series, copied: prom-client hands out its live value objects, which later updates mutate. */
type MetricsJson = ReadonlyArray<{ name: string; values: ReadonlyArray<{ value: number; labels: Record<string, string | number> }> }>;

/** Reads the registry now. The agent updates its metrics synchronously before it emits, and this read takes only microtasks, so no renewal can land between an event and its snapshot. */
async function snapshot(): Promise<MetricsJson> {
  const metrics = await registry.getMetricsAsJSON();
  return metrics.map((metric) => ({ name: metric.name, values: metric.values.map((value) => ({ value: value.value, labels: { ...value.labels } as Record<string, string | number> })) }));
}

let ca: InProcessCa;
let agent: IdentityAgent;
const registry = new Registry();

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [WEB] });
  // Two-second certificates renew about every second; retries start at 100 ms.
  agent = new IdentityAgent({
    caUrl: ca.server.url,
    trustDomain: TD,
    nodeName: 'node-a',
    bootstrapBundle: ca.server.ownBundle(),
    joinToken: await ca.joinToken('node-a'),
    ttlSeconds: 2,
    backoffInitialMs: 100,
    metrics: registry,
    logger: silentLogger(),
  });
  await agent.start();
});

afterAll(async () => {
  await agent?.stop();
  await ca?.close();
});

/** The value of one series, or undefined when the series does not exist. */
function valueOf(metrics: MetricsJson, name: string, labels: Record<string, string>): number | undefined {
  const metric = metrics.find((candidate) => candidate.name === name);
  const series = metric?.values.find((value) => Object.entries(labels).every(([key, wanted]) => value.labels[key] === wanted));
  return series?.value;
}

/** Resolves after `count` events for WEB, with the metrics snapshot taken in each event's handler. */
function collect<T>(event: 'rotated' | 'failed', count: number, timeoutMs: number, take: (value: T) => { metrics: Promise<MetricsJson>; extra: Record<string, unknown> } | null) {
  return new Promise<Array<{ metrics: MetricsJson; extra: Record<string, unknown> }>>((resolve, reject) => {
    const pending: Array<Promise<{ metrics: MetricsJson; extra: Record<string, unknown> }>> = [];
    const emitter = agent as unknown as { on(e: string, l: (v: T) => void): void; off(e: string, l: (v: T) => void): void };
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`saw ${pending.length} of ${count} '${event}' events for ${WEB}`));
    }, timeoutMs);
    const listener = (value: T) => {
      const taken = take(value);
      if (taken === null || pending.length >= count) return;
      pending.push(taken.metrics.then((metrics) => ({ metrics, extra: taken.extra })));
      if (pending.length === count) {
        clearTimeout(timer);
        emitter.off(event, listener);
        resolve(Promise.all(pending));
      }
    };
    emitter.on(event, listener);
  });
}

describe('identity agent metrics', () => {
  it('count every certificate obtained and publish the current notAfter and bundle sequence', async () => {
    // The first issue and two renewals.
    const rotations = collect<Svid>('rotated', 3, 15_000, (svid) => (svid.id.id === WEB ? { metrics: snapshot(), extra: { svid } } : null));
    await agent.ensure(WEB);
    const seen = await rotations;
    seen.forEach(({ metrics, extra }, index) => {
      const svid = extra.svid as Svid;
      expect(valueOf(metrics, 'ambit_certificate_rotations_total', { identity: WEB })).toBe(index + 1);
      expect(valueOf(metrics, 'ambit_certificate_expiry_timestamp_seconds', { identity: WEB })).toBe(svid.notAfter.getTime() / 1000);
    });
    expect(new Set(seen.map(({ extra }) => (extra.svid as Svid).chain[0]?.serialNumber)).size).toBe(3);

    const last = seen[2] as (typeof seen)[number];
    expect(valueOf(last.metrics, 'ambit_certificate_rotations_total', { identity: WEB })).toBeGreaterThanOrEqual(2);
    expect(valueOf(last.metrics, 'ambit_trust_bundle_sequence', { trust_domain: TD })).toBe(Number(ca.server.ownBundle().sequence));
    expect(valueOf(last.metrics, 'ambit_trust_bundle_sequence', { trust_domain: TD })).toBeGreaterThanOrEqual(1);
    // The node identity is counted on its own series, and nothing has failed yet.
    const node = agent.nodeSvid() as Svid;
    expect(valueOf(last.metrics, 'ambit_certificate_rotations_total', { identity: agent.nodeId })).toBeGreaterThanOrEqual(1);
    expect(valueOf(last.metrics, 'ambit_certificate_expiry_timestamp_seconds', { identity: agent.nodeId })).toBe(node.notAfter.getTime() / 1000);
    expect(valueOf(last.metrics, 'ambit_certificate_rotation_failures_total', { identity: WEB })).toBeUndefined();

    // The text exposition carries the same series.
    expect(await registry.getSingleMetricAsString('ambit_certificate_rotations_total')).toContain(`ambit_certificate_rotations_total{identity="${WEB}"}`);
  });

  it('count failures by code while the CA is gone, and keep serving the valid certificate', async () => {
    const failures = collect<{ spiffeId: string }>('failed', 3, 10_000, ({ spiffeId }) => {
      if (spiffeId !== WEB) return null;
      return { metrics: snapshot(), extra: { serving: agent.current(WEB), at: Date.now() } };
    });
    await ca.close();
    const seen = await failures;

    const first = seen[0] as (typeof seen)[number];
    const serving = first.extra.serving as Svid;
    const rotations = valueOf(first.metrics, 'ambit_certificate_rotations_total', { identity: WEB }) as number;
    expect(rotations).toBeGreaterThanOrEqual(3);
    let previous = 0;
    for (const { metrics, extra } of seen) {
      const failed = valueOf(metrics, 'ambit_certificate_rotation_failures_total', { identity: WEB, code: 'CA_UNREACHABLE' }) ?? 0;
      expect(failed).toBeGreaterThan(previous);
      previous = failed;
      const codes = metrics.find((metric) => metric.name === 'ambit_certificate_rotation_failures_total')?.values.filter((value) => value.labels.identity === WEB).map((value) => value.labels.code);
      expect(codes).toEqual(['CA_UNREACHABLE']);
      // The same certificate keeps serving; failed renewals change neither the rotation count nor the published expiry.
      expect((extra.serving as Svid).chain[0]?.serialNumber).toBe(serving.chain[0]?.serialNumber);
      expect(valueOf(metrics, 'ambit_certificate_rotations_total', { identity: WEB })).toBe(rotations);
      expect(valueOf(metrics, 'ambit_certificate_expiry_timestamp_seconds', { identity: WEB })).toBe(serving.notAfter.getTime() / 1000);
    }
    // The first failure comes while that certificate is still valid (renewal starts at half its lifetime).
    expect(serving.notAfter.getTime()).toBeGreaterThan(first.extra.at as number);
    expect(verifySvid(serving.chain, agent.bundles(), { at: new Date(first.extra.at as number) }).valid).toBe(true);
    expect(agent.current(WEB)?.chain[0]?.serialNumber).toBe(serving.chain[0]?.serialNumber);
  });
});
