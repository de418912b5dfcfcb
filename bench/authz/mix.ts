// The request mix: L4 connections (moment 'tcp', on the plain TCP port) and HTTP requests (moment 'request', on the
// HTTP port), half allowed and half denied, aimed at the end of each destination's policy lists: an allowed request
// is built to match the last ALLOW rule that can admit it, a denied one either matches the last DENY rule or matches
// no ALLOW rule at all (both scan every rule before deciding). The reference evaluator labels every request; the
// engines are then checked against each other on the whole mix.
import type { Workload } from '../../src/config/snapshot.ts';
import type { PolicyOperation, PolicyRule } from '../../src/authz/types.ts';
import type { Moment, ReferenceDecision, ReferenceDestination, ReferenceHttp, ReferenceRequest, ReferenceWorld } from '../../test/unit/authz/reference.ts';
import { applicablePolicies, referenceDecide, ruleHasHttp, ruleMatches } from '../../test/unit/authz/reference.ts';
import { HTTP_PORT, METHODS, Picker, RESOURCES, TCP_PORT, TENANTS } from './generate.ts';

export type Layer = 'L4' | 'L7';

/** How the request was aimed; for the record, the decision is the reference's. */
export type Aim = 'last-allow-rule' | 'last-deny-rule' | 'no-allow-matches' | 'no-allow-policy';

export interface BenchRequest {
  readonly layer: Layer;
  readonly moment: Moment;
  readonly destination: Workload;
  readonly request: ReferenceRequest;
  readonly aim: Aim;
  /** The reference evaluator's answer, the label every engine is checked against. */
  readonly expected: ReferenceDecision;
}

export function destinationOf(workload: Workload): ReferenceDestination {
  return { namespace: workload.namespace, labels: workload.labels };
}

/** Istio's principal form of a workload identity: the SPIFFE ID without its scheme. */
export function principalOf(workload: Workload): string {
  return workload.identity.replace(/^spiffe:\/\//, '');
}

function sourceRequest(source: Workload, port: number, http: ReferenceHttp | null): ReferenceRequest {
  return { principal: principalOf(source), namespace: source.namespace, sourceIp: source.ips[0] as string, destinationIp: null, port, http };
}

/** A concrete value for an Istio pattern: `x*` gets a tail, `*x` a head, `*` anything. */
function valueFor(pattern: string, pick: Picker): string {
  if (pattern === '*') return `v${pick.int(1000)}`;
  if (pattern.endsWith('*')) return `${pattern.slice(0, -1)}${pick.int(10_000)}`;
  if (pattern.startsWith('*')) return `x${pick.int(1000)}${pattern.slice(1)}`;
  return pattern;
}

function hostOf(destination: Workload): string {
  return `${destination.labels.app}.${destination.namespace}.svc.cluster.local`;
}

function baseHeaders(pick: Picker): Record<string, string> {
  return { 'user-agent': 'bench/1', 'x-request-id': `req-${pick.int(1_000_000)}`, 'x-tenant': pick.one(TENANTS) };
}

/** An operation of the rule (or none) that a request of this layer can satisfy: its port list must admit the layer's port. */
function usableOperation(rule: PolicyRule, layer: Layer, pick: Picker): PolicyOperation | null | undefined {
  const port = layer === 'L4' ? TCP_PORT : HTTP_PORT;
  if (rule.to === undefined || rule.to.length === 0) return null;
  const usable = rule.to.filter((operation) => operation.ports === undefined || operation.ports.includes(port));
  return usable.length === 0 ? undefined : pick.one(usable);
}

/** A request built to match `rule` (a DENY policy's when `deny`) on `destination`, or null when the rule cannot admit this layer. */
function requestMatching(rule: PolicyRule, deny: boolean, destination: Workload, layer: Layer, sources: readonly Workload[], pick: Picker, ignoreHttp: boolean): ReferenceRequest | null {
  const operation = usableOperation(rule, layer, pick);
  if (operation === undefined) return null;
  let http: ReferenceHttp | null = null;
  if (layer === 'L7') {
    const headers = baseHeaders(pick);
    for (const condition of rule.when ?? []) {
      if (condition.parsedKey.kind === 'request.headers' && condition.values !== undefined) headers[condition.parsedKey.header] = valueFor(pick.one(condition.values), pick);
    }
    http = {
      method: operation?.methods ? pick.one(operation.methods) : pick.one(METHODS),
      path: operation?.paths ? valueFor(pick.one(operation.paths), pick) : `/api/v1/${pick.one(RESOURCES)}`,
      host: operation?.hosts ? valueFor(pick.one(operation.hosts), pick).toLowerCase() : hostOf(destination),
      headers,
    };
  }
  const port = layer === 'L4' ? TCP_PORT : HTTP_PORT;
  const mode = ignoreHttp ? 'ignoreHttp' : 'full';
  // Sources: a sample first, then every workload, so a rule naming one caller still finds it. The generated policies
  // name no service accounts, for which the policy's namespace would matter: the destination's stands in.
  for (let attempt = 0; attempt < 40; attempt++) {
    const candidate = sourceRequest(pick.one(sources), port, http);
    if (ruleMatches(rule, candidate, mode, deny, destination.namespace)) return candidate;
  }
  for (const source of sources) {
    const candidate = sourceRequest(source, port, http);
    if (ruleMatches(rule, candidate, mode, deny, destination.namespace)) return candidate;
  }
  return null;
}

/** A request that no rule in particular aims at: a random caller, a random API call. */
function arbitraryRequest(destination: Workload, layer: Layer, sources: readonly Workload[], pick: Picker): ReferenceRequest {
  const http: ReferenceHttp | null = layer === 'L4' ? null : {
    method: pick.one(METHODS),
    path: pick.chance(0.5) ? `/api/v1/${pick.one(RESOURCES)}` : `/static/${pick.int(100)}.js`,
    host: hostOf(destination),
    headers: baseHeaders(pick),
  };
  return sourceRequest(pick.one(sources), layer === 'L4' ? TCP_PORT : HTTP_PORT, http);
}

interface RuleRef {
  readonly rule: PolicyRule;
  readonly http: boolean;
}

/**
 * `size` requests per layer, half allowed and half denied (a quarter by a DENY rule where the configuration lets
 * one be found, the rest by no ALLOW rule matching). Deterministic for a seed.
 */
export function buildMix(world: ReferenceWorld, workloads: readonly Workload[], sizePerLayer: number, seed: number): BenchRequest[] {
  const pick = new Picker(seed);
  const mix: BenchRequest[] = [];
  for (const layer of ['L4', 'L7'] as const) {
    const moment: Moment = layer === 'L4' ? 'tcp' : 'request';
    let allowed = 0;
    let deniedByRule = 0;
    let deniedNoMatch = 0;
    const wantAllowed = Math.ceil(sizePerLayer / 2);
    const wantDenied = sizePerLayer - wantAllowed;
    const wantDeniedByRule = Math.floor(wantDenied / 2);
    const destinations = pick.shuffle([...workloads]);
    let attempts = 0;
    for (let d = 0; allowed + deniedByRule + deniedNoMatch < sizePerLayer; d = (d + 1) % destinations.length) {
      if (++attempts > sizePerLayer * 200) throw new Error(`could not build the ${layer} mix: ${allowed} allowed, ${deniedByRule} + ${deniedNoMatch} denied after ${attempts} attempts`);
      const destination = destinations[d] as Workload;
      const target = destinationOf(destination);
      const policies = applicablePolicies(world, target);
      const allowRules: RuleRef[] = [];
      const denyRules: RuleRef[] = [];
      for (const policy of policies) {
        for (const rule of policy.spec.rules) (policy.spec.action === 'DENY' ? denyRules : policy.spec.action === 'ALLOW' ? allowRules : []).push({ rule, http: ruleHasHttp(rule) });
      }
      const hasAllowPolicy = policies.some((policy) => policy.spec.action === 'ALLOW');
      const accept = (request: ReferenceRequest | null, aim: Aim, wantAllow: boolean): boolean => {
        if (request === null) return false;
        const expected = referenceDecide(world, target, request, moment);
        if (expected.allow !== wantAllow) return false;
        mix.push({ layer, moment, destination, request, aim: !hasAllowPolicy && wantAllow ? 'no-allow-policy' : aim, expected });
        return true;
      };

      if (allowed < wantAllowed) {
        // Walk back from the last ALLOW rule a request of this layer can satisfy (HTTP rules never admit L4).
        let done = false;
        for (let i = allowRules.length - 1, tries = 0; i >= 0 && tries < 4 && !done; i--) {
          const ref = allowRules[i] as RuleRef;
          if (layer === 'L4' && ref.http) continue;
          tries++;
          done = accept(requestMatching(ref.rule, false, destination, layer, workloads, pick, false), 'last-allow-rule', true);
        }
        if (!done && !hasAllowPolicy) done = accept(arbitraryRequest(destination, layer, workloads, pick), 'no-allow-policy', true);
        if (done) {
          allowed++;
          continue;
        }
      }
      if (deniedByRule < wantDeniedByRule && pick.chance(0.5)) {
        let done = false;
        for (let i = denyRules.length - 1, tries = 0; i >= 0 && tries < 4 && !done; i--) {
          tries++;
          const ref = denyRules[i] as RuleRef;
          const request = requestMatching(ref.rule, true, destination, layer, workloads, pick, layer === 'L4');
          // Only the rule we aimed at: an earlier DENY deciding would not scan to the end.
          if (request !== null && referenceDecide(world, target, request, moment).rule === null) continue;
          done = accept(request, 'last-deny-rule', false);
        }
        if (done) {
          deniedByRule++;
          continue;
        }
      }
      // When DENY rules are hard to hit, no-match denials fill their share after a while.
      if (deniedByRule + deniedNoMatch < wantDenied && (deniedNoMatch < wantDenied - wantDeniedByRule || attempts > sizePerLayer * 20)) {
        const request = arbitraryRequest(destination, layer, workloads, pick);
        const expected = referenceDecide(world, target, request, moment);
        // "No ALLOW rule matched": denied with no deciding policy, after every DENY and ALLOW rule was tried.
        if (!expected.allow && expected.policy === null && accept(request, 'no-allow-matches', false)) deniedNoMatch++;
      }
    }
  }
  return mix;
}
