// Explanations for dry runs (`ambit authz check --explain`): for each policy that applies, each rule,
// whether it matched and, if not, the first clause that failed. Not on the data path: it may allocate.
import type { CompiledRule, WorkloadPolicies } from './compile.ts';
import { ruleMatches } from './decide.ts';
import type { AuthzContext, DecisionMoment } from './decide.ts';

export interface RuleExplanation {
  readonly rule: number;
  readonly matched: boolean;
  readonly why: string;
}

export interface PolicyExplanation {
  readonly policy: string;
  readonly action: string;
  /** For a dry-run policy (compiled as AUDIT): the action it would take. */
  readonly dryRun?: string;
  readonly source: string;
  readonly rules: readonly RuleExplanation[];
  readonly note?: string;
}

function explainRule(rule: CompiledRule, ctx: AuthzContext, moment: DecisionMoment): RuleExplanation {
  const action = rule.policy.action;
  if (rule.l7 && moment === 'tcp' && action !== 'DENY') {
    return { rule: rule.index, matched: false, why: 'has HTTP fields (hosts, methods, paths, request headers or the remote IP) and the port is not HTTP: an ALLOW/AUDIT rule with HTTP fields never matches a plain TCP connection' };
  }
  if (rule.l7 && moment === 'connect') {
    const l4 = ruleMatches(rule, ctx, true);
    return { rule: rule.index, matched: false, why: l4 ? 'its connection-level part matches; its HTTP fields are decided per request' : `its connection-level part does not match (${firstFailure(rule, ctx, true)})` };
  }
  const ignoreL7 = rule.l7 && moment === 'tcp';
  if (ruleMatches(rule, ctx, ignoreL7)) {
    return { rule: rule.index, matched: true, why: ignoreL7 ? 'matched with its HTTP fields ignored (a DENY on a plain TCP port denies more, never less)' : 'every clause matched' };
  }
  return { rule: rule.index, matched: false, why: firstFailure(rule, ctx, ignoreL7) };
}

function firstFailure(rule: CompiledRule, ctx: AuthzContext, ignoreL7: boolean): string {
  // Re-run each clause alone to name the one that failed.
  const probe = (part: Partial<Pick<CompiledRule, 'from' | 'to' | 'when'>>) => ruleMatches({ ...rule, from: null, to: null, when: null, ...part }, ctx, ignoreL7);
  if (rule.from !== null && !probe({ from: rule.from })) {
    return `no "from" source matched (principal ${ctx.sourcePrincipal ?? 'none'}, namespace ${ctx.sourceNamespace ?? 'none'})`;
  }
  if (rule.to !== null && !probe({ to: rule.to })) {
    const request = ctx.request;
    return `no "to" operation matched (port ${ctx.destinationPort}${request ? `, ${request.method} ${request.host}${request.path}` : ', no HTTP request'})`;
  }
  if (rule.when !== null) {
    for (let i = 0; i < rule.when.length; i++) {
      const condition = rule.when[i];
      if (condition && !probe({ when: [condition] })) return `"when" condition ${i} (${condition.key.kind}${condition.header ? `[${condition.header}]` : ''}) does not hold`;
    }
  }
  return 'did not match';
}

export function explain(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment): PolicyExplanation[] {
  return policies.policies.map((policy) => {
    // A dry-run policy is shown with the action it would take, and said to decide nothing.
    const action = policy.dryRun ?? policy.action;
    const note = policy.rules.length === 0 ? (action === 'ALLOW' ? 'an ALLOW policy with no rules allows nothing' : `a ${action} policy with no rules matches nothing`) : undefined;
    return {
      policy: policy.name,
      action: policy.action,
      ...(policy.dryRun === undefined ? {} : { dryRun: policy.dryRun }),
      source: policy.source,
      rules: policy.rules.map((rule) => explainRule(rule, ctx, moment)),
      ...(note === undefined && policy.dryRun === undefined ? {} : { note: [note, policy.dryRun === undefined ? undefined : 'dry run (istio.io/dry-run): logged, never enforced'].filter(Boolean).join('; ') }),
    };
  });
}
