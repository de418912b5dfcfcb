// Authorization in the inbound path: builds the decision context of an HBONE stream, decides with the
// current snapshot's compiled policies, logs denials (allows at debug) with the deciding policy, counts
// decisions by action and policy, and re-checks open connections after a policy change.
import { Counter } from 'prom-client';
import type { Registry } from 'prom-client';
import type { ConfigSnapshot, Workload } from '../config/snapshot.ts';
import { LogBudget } from '../observe/log.ts';
import type { Logger } from '../observe/log.ts';
import { requestLog } from '../observe/access-log.ts';
import type { RequestLogRecord } from '../observe/access-log.ts';
import { formatAuthority } from './authority.ts';
import { authorizationOf, DENY_ON_ERROR } from '../authz/compile.ts';
import type { CompiledRule, Decision, WorkloadPolicies } from '../authz/compile.ts';
import { auditMatches, authzContext, decideSafely } from '../authz/decide.ts';
import type { AuditMatches, AuthzContext, DecisionMoment, HttpRequestFacts } from '../authz/decide.ts';
import { parseIp } from '../authz/match.ts';
import { canonicalIp } from '../config/fields.ts';
import { forwardedClaimHolds } from './inbound.ts';
import type { InboundConnection, RequestInspection } from './inbound.ts';

/** The decision context of an inbound connection (its L4 facts; `request` is filled per HTTP request). */
function contextOf(connection: InboundConnection): AuthzContext {
  return authzContext({
    sourcePrincipal: connection.principal,
    sourceNamespace: connection.peerNamespace,
    sourceIp: connection.peerIp,
    destinationIp: parseIp(connection.destinationIp),
    destinationPort: connection.destinationPort,
    request: null,
  });
}

/** The AUDIT rule that matches, for the log; a failure to tell is no match (AUDIT never decides). */
/** The audit matches of a decision into `out`; none when matching throws (logging must never deny). */
function auditSafely(policies: WorkloadPolicies, ctx: AuthzContext, moment: DecisionMoment, out: AuditMatches): AuditMatches {
  try {
    return auditMatches(policies, ctx, moment, out);
  } catch {
    out.audit = null;
    out.dryRunDeny = null;
    out.dryRunAllow = null;
    out.dryRunUnjudged = null;
    return out;
  }
}

function logAuditedConnection(logger: Logger, match: CompiledRule, connection: InboundConnection): void {
  logger.info({ audit: match.policy.name, rule: match.index, dryRun: match.policy.dryRun, source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, match.policy.dryRun === undefined ? 'audited connection' : `dry-run ${match.policy.dryRun} policy matched a connection`);
}

function logAuditedRequest(logger: Logger, match: CompiledRule, decision: Decision, facts: HttpRequestFacts, connection: InboundConnection): void {
  logger.info({ audit: match.policy.name, rule: match.index, dryRun: match.policy.dryRun, decision: decision.allow ? 'ALLOW' : 'DENY', method: facts.method, host: facts.host, path: facts.path, source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, match.policy.dryRun === undefined ? 'audited request' : `dry-run ${match.policy.dryRun} policy matched a request`);
}

/**
 * Why a rule with HTTP fields decided a connection on a port not declared HTTP as it did: a DENY applied without them
 * (denying the whole connection), an ALLOW that could never match. Istio says as much in the policy's status; here the
 * denial says it (only on the denial path: one scan of the workload's rules).
 */
function httpFieldsNote(policies: WorkloadPolicies, decision: Decision, port: number): string | undefined {
  const notHttp = `port ${port} is not declared HTTP (no Service port named http, http2, grpc... or with such an appProtocol targets it)`;
  const rules = policies.byPort.get(port) ?? policies.otherPorts;
  if (decision.rule !== null) {
    const rule = rules.deny.find((candidate) => candidate.decision === decision);
    return rule?.l7 === true ? `the rule has HTTP fields (methods, paths, hosts, request headers or remote IPs) and ${notHttp}: it applied without them, to the whole connection` : undefined;
  }
  if (decision === policies.noMatch && rules.allow.some((rule) => rule.l7)) return `ALLOW rules with HTTP fields (methods, paths, hosts, request headers or remote IPs) never match here: ${notHttp}`;
  return undefined;
}

/**
 * The workload an open inbound connection reaches, under `snapshot`, when it is still there: at the same IP, on this
 * node, with the same identity. undefined when it left (deleted, moved, another identity).
 */
export function destinationStays(connection: InboundConnection, snapshot: ConfigSnapshot, nodeName: string): Workload | undefined {
  const destination = snapshot.workloadByIp(connection.destinationIp);
  return destination === undefined || destination.node !== nodeName || destination.identity !== connection.destination.identity ? undefined : destination;
}

export class InboundAuthorizer {
  readonly #snapshot: () => ConfigSnapshot;
  readonly #logger: Logger;
  /**
   * Each denied connection has its access line; this warning, which says why, is kept to 20 every 10 s (the rest at
   * debug, their number on the next): a mesh peer opening denied connections as fast as it can wrote three lines each.
   */
  readonly #denialLogBudget = new LogBudget(10_000, 20);
  /** Reused by every decision (they run one at a time): what it found to log, with nothing allocated. */
  readonly #audited: AuditMatches = { audit: null, dryRunDeny: null, dryRunAllow: null, dryRunUnjudged: null };
  // Decisions are preallocated per rule, so a decision's count can hang off the decision itself: counting is one
  // WeakMap lookup and an increment, where prom-client's child inc() hashes its label object on every call. The
  // counts are copied into the counter when it is scraped; a cell outlives the snapshot whose decision made it.
  readonly #cellOf = new WeakMap<Decision, DecisionCount>();
  readonly #cells = new Map<string, DecisionCount>();

  constructor(snapshot: () => ConfigSnapshot, registry: Registry, logger: Logger) {
    this.#snapshot = snapshot;
    this.#logger = logger.child({ component: 'authz' });
    const cells = this.#cells;
    new Counter({
      name: 'ambit_authz_decisions_total',
      help: 'Authorization decisions by result and deciding policy ("none" for defaults, "error" for a failure to decide, denied)',
      labelNames: ['decision', 'policy'],
      registers: [registry],
      collect(this: Counter<'decision' | 'policy'>) {
        this.reset();
        for (const cell of cells.values()) this.inc(cell.labels, cell.count);
      },
    });
  }

  /** The L4 decision when a stream opens ('tcp' on plain ports, 'connect' on ports declared HTTP). */
  authorize(connection: InboundConnection): Decision {
    const policies = this.#policiesOf(this.#snapshot(), connection.destination);
    if (policies === null) {
      this.#count(DENY_ON_ERROR);
      return DENY_ON_ERROR;
    }
    const moment = policies.httpPorts.has(connection.destinationPort) ? 'connect' : 'tcp';
    const ctx = contextOf(connection);
    const decision = decideSafely(policies, ctx, moment, DENY_ON_ERROR);
    this.#count(decision);
    if (!decision.allow) {
      const note = moment === 'tcp' ? httpFieldsNote(policies, decision, connection.destinationPort) : undefined;
      this.#denialLogBudget.warn(this.#logger, 'denied', { decision: 'DENY', policy: decision.policy, rule: decision.rule, reason: decision.reason, ...(note === undefined ? {} : { note }), source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'connection denied by policy');
    } else if (this.#logger.isLevelEnabled('debug')) {
      this.#logger.debug({ decision: 'ALLOW', policy: decision.policy, rule: decision.rule, reason: decision.reason, source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'connection allowed');
    }
    // A connection whose requests are inspected is audited per request (requestInspection), as Envoy's HTTP RBAC does.
    if ((policies.audit.length > 0 || policies.dryRunAllow.length > 0) && !(moment === 'connect' && policies.hasEnforcingL7Rules)) {
      // An AUDIT policy's line and a dry-run policy's, each its own: one must not hide the other.
      const found = auditSafely(policies, ctx, moment, this.#audited);
      if (found.audit !== null) logAuditedConnection(this.#logger, found.audit, connection);
      if (found.dryRunDeny !== null) logAuditedConnection(this.#logger, found.dryRunDeny, connection);
      if (found.dryRunAllow !== null) logAuditedConnection(this.#logger, found.dryRunAllow, connection);
      else if (found.dryRunUnjudged !== null) {
        const rule = found.dryRunUnjudged;
        this.#logger.info({ audit: rule.policy.name, rule: rule.index, dryRun: 'ALLOW', source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'dry-run ALLOW policy cannot judge this connection\'s requests: the proxy reads none on this port, no HTTP rule in force applying to it');
      } else if (policies.dryRunAllow.length > 0) {
        this.#logger.info({ dryRun: 'ALLOW', audit: policies.dryRunAllow.join(', '), decision: decision.allow ? 'ALLOW' : 'DENY', source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'dry-run ALLOW policies would deny a connection');
      }
    }
    return decision;
  }

  /**
   * For a connection to a port declared HTTP whose workload has HTTP rules in force: the per-request decision.
   * null otherwise: a workload without them never has its HTTP parsed (AUDIT and dry-run rules only log, and parsing
   * would change what reaches it: refused malformed requests, added headers, converted versions).
   */
  requestInspection(connection: InboundConnection, nodeName: string): RequestInspection | null {
    // Asked after the upstream connect: the configuration may have changed since the stream opened.
    const snapshot = this.#snapshot();
    // The workload the connection reaches, not whichever holds its IP now: another workload's policies (its address
    // given to a pod elsewhere in the same change) would judge requests that still go to this one.
    const current = destinationStays(connection, snapshot, nodeName);
    const policies = current === undefined ? null : this.#policiesOf(snapshot, current);
    // Uninspected would let every request through: with no policies to judge them by (the workload gone, or a
    // configuration that does not compile), each one is refused until they are there again (decide looks again at
    // every change; the connection is closed meanwhile if the workload has left).
    if (policies !== null && (!policies.hasEnforcingL7Rules || !policies.httpPorts.has(connection.destinationPort))) return null;
    // One context per tunnel; each request only swaps in its facts.
    const ctx = contextOf(connection);
    const logger = this.#logger;
    // The policies in force (a change applies to the next request) for the workload the connection reaches: looked up
    // again only when the snapshot changed.
    let seen = snapshot;
    let inForce: WorkloadPolicies | null = policies;
    return {
      decide: (facts, again = false) => {
        const now = this.#snapshot();
        if (now !== seen) {
          const destination = destinationStays(connection, now, nodeName);
          inForce = destination === undefined ? null : this.#policiesOf(now, destination);
          seen = now;
        }
        if (inForce === null) {
          if (!again) this.#count(DENY_ON_ERROR);
          return DENY_ON_ERROR;
        }
        ctx.request = facts;
        const decision = decideSafely(inForce, ctx, 'request', DENY_ON_ERROR);
        // Decided again (a request that waited its turn, a WebSocket open across a change): counted and audited when it arrived.
        if (again) {
          ctx.request = null;
          return decision;
        }
        const found = inForce.audit.length > 0 || inForce.dryRunAllow.length > 0 ? auditSafely(inForce, ctx, 'request', this.#audited) : null;
        ctx.request = null;
        this.#count(decision);
        // An AUDIT policy's line and a dry-run policy's, each its own: one must not hide the other.
        if (found?.audit) logAuditedRequest(logger, found.audit, decision, facts, connection);
        if (found?.dryRunDeny) logAuditedRequest(logger, found.dryRunDeny, decision, facts, connection);
        if (found?.dryRunAllow) logAuditedRequest(logger, found.dryRunAllow, decision, facts, connection);
        else if (found !== null && inForce.dryRunAllow.length > 0) {
          logger.info({ dryRun: 'ALLOW', audit: inForce.dryRunAllow.join(', '), decision: decision.allow ? 'ALLOW' : 'DENY', method: facts.method, host: facts.host, path: facts.path, source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'dry-run ALLOW policies would deny a request');
        }
        if (decision.allow && logger.isLevelEnabled('debug')) {
          logger.debug({ decision: 'ALLOW', policy: decision.policy, rule: decision.rule, method: facts.method, host: facts.host, path: facts.path, source: connection.peer.id, destination: connection.destination.identity }, 'request allowed');
        }
        return decision;
      },
      inForce: this.#snapshot,
      pathNormalization: () => this.#snapshot().mesh.pathNormalization,
      upstreamVersion: policies?.httpVersions.get(connection.destinationPort) ?? null,
      // A line per request where connections get theirs (log level info); the tunnel's part built once.
      logRequest: logger.isLevelEnabled('info') ? requestLogger(logger, connection) : null,
      onDenied: (decision, facts) => {
        logger.warn({ decision: 'DENY', policy: decision.policy, rule: decision.rule, reason: decision.reason, method: facts.method, host: facts.host, path: facts.path, source: connection.peer.id, destination: connection.destination.identity, port: connection.destinationPort }, 'request denied by policy');
      },
    };
  }

  /** After a configuration change: is this open connection still allowed under the new snapshot? */
  stillAllowed(connection: InboundConnection, inspected: boolean, snapshot: ConfigSnapshot, nodeName: string): boolean {
    const destination = destinationStays(connection, snapshot, nodeName);
    if (destination === undefined) return false;
    // A source address taken from the CONNECT's `forwarded` claim must still be believed: the claimed workload may
    // have left, moved to another node or changed identity. Closed rather than re-judged with the session's address,
    // so every later request of an inspected tunnel is not decided on a source that no longer holds.
    const claimed = connection.claimedSource;
    if (claimed !== null && !forwardedClaimHolds(snapshot, claimed, connection.peer.id, canonicalIp(connection.peerAddress) ?? connection.peerAddress)) return false;
    // A byte tunnel to a port that now has HTTP rules in force would escape them: close it, the client reconnects into
    // inspection. AUDIT and dry-run rules only log, and cut no open connection.
    const policies = this.#policiesOf(snapshot, destination);
    if (policies === null) return false;
    if (!inspected && policies.hasEnforcingL7Rules && policies.httpPorts.has(connection.destinationPort)) return false;
    // A re-check, not a new connection: neither counted as a decision nor logged as a denied connection (the
    // caller logs how many it closed); the reason is kept at debug.
    const moment = policies.httpPorts.has(connection.destinationPort) ? 'connect' : 'tcp';
    const decision = decideSafely(policies, contextOf(connection), moment, DENY_ON_ERROR);
    if (!decision.allow && this.#logger.isLevelEnabled('debug')) {
      this.#logger.debug({ policy: decision.policy, rule: decision.rule, reason: decision.reason, source: connection.peer.id, destination: destination.identity, port: connection.destinationPort }, 'open connection no longer allowed');
    }
    return decision.allow;
  }

  /** A workload's compiled policies, or null when they cannot be compiled: a failure to decide, for which every caller denies (fail closed). */
  #policiesOf(snapshot: ConfigSnapshot, workload: Workload): WorkloadPolicies | null {
    try {
      return authorizationOf(snapshot).forWorkload(workload);
    } catch {
      // The node proxy logs the failure once, when the configuration is applied; here it is counted, per decision.
      return null;
    }
  }

  #count(decision: Decision): void {
    let cell = this.#cellOf.get(decision);
    if (cell === undefined) {
      // A failure while deciding (fail closed) has a policy label of its own: an operator alerts on it.
      const labels = { decision: decision.allow ? 'ALLOW' : 'DENY', policy: decision === DENY_ON_ERROR ? 'error' : decision.policy ?? 'none' };
      const key = `${labels.decision} ${labels.policy}`;
      cell = this.#cells.get(key);
      if (cell === undefined) this.#cells.set(key, (cell = { labels, count: 0 }));
      this.#cellOf.set(decision, cell);
    }
    cell.count++;
  }
}

interface DecisionCount {
  readonly labels: { decision: string; policy: string };
  count: number;
}

/** Writes the access lines of one inspected tunnel's requests, its identities and addresses shared by all. */
function requestLogger(logger: Logger, connection: InboundConnection): (record: RequestLogRecord) => void {
  const fields = {
    'src.addr': connection.peerAddress,
    'src.identity': connection.peer.id,
    'dst.addr': formatAuthority(connection.destinationIp, connection.destinationPort),
    'dst.workload': connection.destination.name,
    'dst.namespace': connection.destination.namespace,
    'dst.identity': connection.destination.identity,
    direction: 'inbound',
  };
  return (record) => requestLog(logger, fields, record);
}
