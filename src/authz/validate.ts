// Load-time validation of AuthorizationPolicy and PeerAuthentication specs: Istio's fields exactly as users write
// them, turned into the policy model of types.ts or refused field by field (CONFIG_FIELD, with the field path).
//
// What the compiler may trust in a returned spec, so that it never re-checks syntax:
// - Every match string (principals, namespaces, hosts, methods, paths and `when` values other than IPs and ports)
//   is non-empty and holds at most one "*", which is the whole value (presence), its first character (suffix
//   match) or its last (prefix match); anything else is an exact match. This is Istio's rule for every string
//   field of a Rule (authorization_policy.proto, `Rule`), written down once here.
// - principals are TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT, or a prefix or suffix of that shape.
// - ipBlocks (all four lists) and the values of the IP `when` keys are canonical: a single IP in canonicalIp's
//   spelling, or NETWORK/BITS with the host bits cleared and IPv4-mapped IPv6 blocks written as IPv4.
// - ports are integers 1-65535; destination.port values are their decimal spelling.
// - A list that is empty or absent is left out (Istio treats an empty list as unset), and a source, operation or
//   condition always has at least one non-empty list.
// - A `when` key is one ambit evaluates, parsed into parsedKey; a header name is lowercased.
// - A path holding "{" or "}" is a template path-template.ts accepts.
// Anything ambit does not evaluate (CUSTOM, targetRefs, JWT fields, unknown keys) is refused at
// load rather than ignored: an ignored field would widen a DENY or an ALLOW (STYLE rule 8).
import {
  canonicalIpBlock,
  checkPolicyIpBlock,
  checkDns1123Label,
  checkDns1123Subdomain,
  checkFields,
  checkLabelValue,
  checkQualifiedName,
  checkTrustDomain,
  enumField,
  hasValue,
  isMapping,
  listField,
  mappingAt,
  mappingField,
  MAX_PORT,
  stringField,
  stringListField,
  stringMapField,
} from '../config/fields.ts';
import type { FieldIssues, FieldPath, Mapping } from '../config/fields.ts';
import { normalizePath, slashDecodingStep } from './path.ts';
import type { PathNormalization } from '../config/objects.ts';
import { checkPathTemplate, isPathTemplate } from './path-template.ts';
import { ENFORCE_ANNOTATION } from './types.ts';
import type {
  AuthorizationPolicySpec,
  ConditionKey,
  MtlsMode,
  PeerAuthenticationSpec,
  PolicyAction,
  PolicyCondition,
  PolicyOperation,
  PolicyRule,
  PolicySource,
} from './types.ts';

/** Istio's annotation that logs a policy's decisions without enforcing them. */
export const DRY_RUN_ANNOTATION = 'istio.io/dry-run';

// ---- AuthorizationPolicy ----

const POLICY_FIELDS = ['selector', 'action', 'rules', 'provider', 'targetRef', 'targetRefs'];
const ACTIONS = ['ALLOW', 'DENY', 'AUDIT', 'CUSTOM'] as const;
const RULE_FIELDS = ['from', 'to', 'when'];
const SOURCE_LISTS = [
  'principals', 'notPrincipals', 'namespaces', 'notNamespaces',
  'ipBlocks', 'notIpBlocks', 'remoteIpBlocks', 'notRemoteIpBlocks',
  'serviceAccounts', 'notServiceAccounts', 'trustDomains', 'notTrustDomains',
] as const;
// Istio Source fields ambit knows but does not evaluate; each is refused with the reason, never ignored.
const SOURCE_UNSUPPORTED: Readonly<Record<string, string>> = {
  requestPrincipals: 'JWT request authentication is not supported yet',
  notRequestPrincipals: 'JWT request authentication is not supported yet',
};
/** istiod's bound on a serviceAccounts list (pkg/config/security CheckServiceAccount). */
const MAX_SERVICE_ACCOUNTS = 16;
const OPERATION_STRING_LISTS = ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'] as const;
const OPERATION_PORT_LISTS = ['ports', 'notPorts'] as const;
const CONDITION_FIELDS = ['key', 'values', 'notValues'];

export function validateAuthorizationPolicySpec(issues: FieldIssues, raw: Mapping, path: FieldPath): AuthorizationPolicySpec | undefined {
  const before = issues.list.length;
  checkFields(issues, raw, path, POLICY_FIELDS);
  for (const key of ['targetRef', 'targetRefs']) {
    if (!hasValue(raw, key)) continue;
    const refs = Array.isArray(raw[key]) ? (raw[key] as unknown[]) : [raw[key]];
    // Istio's egress authorization (a policy on a ServiceEntry, enforced by a waypoint or egress gateway): said for what
    // it is, with what ambit offers instead, so nobody takes the external service for guarded.
    const egress = refs.some((ref) => typeof ref === 'object' && ref !== null && (ref as Record<string, unknown>).kind === 'ServiceEntry');
    issues.add([...path, key], egress
      ? 'not supported: ambit does not authorize traffic leaving for a ServiceEntry (Istio does it in a waypoint or egress gateway, which ambit has not); which namespaces reach an external service is the entry\'s exportTo, under egress REGISTRY_ONLY'
      : 'not supported: use selector (ambit has no waypoints; policies attach to workloads by label)');
  }
  const selector = selectorField(issues, raw, path);
  const writtenAction = enumField(issues, raw, 'action', path, ACTIONS);
  if (writtenAction === 'CUSTOM') issues.add([...path, 'action'], 'CUSTOM (external authorization) is not supported by ambit');
  const action: PolicyAction = writtenAction === undefined || writtenAction === 'CUSTOM' ? 'ALLOW' : writtenAction;
  // Istio: "`provider` must not be with non CUSTOM action"; with CUSTOM the action itself is already refused.
  if (hasValue(raw, 'provider') && writtenAction !== 'CUSTOM') issues.add([...path, 'provider'], 'only for action CUSTOM, which ambit does not support');

  const rules: PolicyRule[] = [];
  const items = listField(issues, raw, 'rules', path);
  (items ?? []).forEach((item, index) => {
    const rule = ruleAt(issues, item, [...path, 'rules', index]);
    if (rule !== undefined) rules.push(rule);
  });
  // Istio refuses this too: a DENY policy without rules never matches, which is almost certainly not what was meant.
  if (action === 'DENY' && items !== undefined && items.length === 0) {
    issues.add([...path, 'rules'], 'a DENY policy without rules never denies anything; add an empty rule `- {}` to deny every request');
  }
  if (issues.list.length !== before) return undefined;
  return selector === undefined ? { action, rules } : { selector, action, rules };
}

function ruleAt(issues: FieldIssues, value: unknown, path: FieldPath): PolicyRule | undefined {
  const raw = mappingAt(issues, value, path);
  if (raw === undefined) return undefined;
  checkFields(issues, raw, path, RULE_FIELDS);
  const rule: { from?: PolicySource[]; to?: PolicyOperation[]; when?: PolicyCondition[] } = {};

  const fromItems = nonEmptyList(issues, raw, 'from', path, 'omit `from` to match any source');
  if (fromItems.length > 0) {
    rule.from = [];
    fromItems.forEach((item, index) => {
      const itemPath = [...path, 'from', index];
      const entry = mappingAt(issues, item, itemPath);
      if (entry === undefined) return;
      checkFields(issues, entry, itemPath, ['source']);
      const source = mappingField(issues, entry, 'source', itemPath, true);
      const parsed = source === undefined ? undefined : sourceAt(issues, source, [...itemPath, 'source']);
      if (parsed !== undefined) rule.from?.push(parsed);
    });
  }

  const toItems = nonEmptyList(issues, raw, 'to', path, 'omit `to` to match any operation');
  if (toItems.length > 0) {
    rule.to = [];
    toItems.forEach((item, index) => {
      const itemPath = [...path, 'to', index];
      const entry = mappingAt(issues, item, itemPath);
      if (entry === undefined) return;
      checkFields(issues, entry, itemPath, ['operation']);
      const operation = mappingField(issues, entry, 'operation', itemPath, true);
      const parsed = operation === undefined ? undefined : operationAt(issues, operation, [...itemPath, 'operation']);
      if (parsed !== undefined) rule.to?.push(parsed);
    });
  }

  // An empty `when` list is accepted, as Istio does: no conditions.
  const whenItems = listField(issues, raw, 'when', path) ?? [];
  if (whenItems.length > 0) {
    rule.when = [];
    whenItems.forEach((item, index) => {
      const condition = conditionAt(issues, item, [...path, 'when', index]);
      if (condition !== undefined) rule.when?.push(condition);
    });
  }
  return rule;
}

/** Istio refuses an explicitly empty `from: []` or `to: []` ("must not be empty"); absent means "any". */
function nonEmptyList(issues: FieldIssues, raw: Mapping, key: string, path: FieldPath, hint: string): readonly unknown[] {
  const items = listField(issues, raw, key, path) ?? [];
  if (items.length === 0 && hasValue(raw, key) && Array.isArray(raw[key])) issues.add([...path, key], `must not be empty; ${hint}`);
  return items;
}

function sourceAt(issues: FieldIssues, raw: Mapping, path: FieldPath): PolicySource | undefined {
  // A misspelt field (principles) is the cause; "must not be empty" as well would only bury it.
  let explained = hasUnknownFields(issues, raw, path, [...SOURCE_LISTS, ...Object.keys(SOURCE_UNSUPPORTED)]);
  for (const [key, reason] of Object.entries(SOURCE_UNSUPPORTED)) {
    if (!hasValue(raw, key)) continue;
    issues.add([...path, key], reason);
    explained = true;
  }
  const source: Record<string, readonly string[]> = {};
  setList(source, 'principals', stringListField(issues, raw, 'principals', path, { check: checkPrincipal }));
  setList(source, 'notPrincipals', stringListField(issues, raw, 'notPrincipals', path, { check: checkPrincipal }));
  setList(source, 'namespaces', stringListField(issues, raw, 'namespaces', path, { check: checkNamespace }));
  setList(source, 'notNamespaces', stringListField(issues, raw, 'notNamespaces', path, { check: checkNamespace }));
  for (const key of ['ipBlocks', 'notIpBlocks', 'remoteIpBlocks', 'notRemoteIpBlocks']) {
    setList(source, key, stringListField(issues, raw, key, path, { check: checkPolicyIpBlock }).map(canonicalIpBlock));
  }
  for (const key of ['serviceAccounts', 'notServiceAccounts']) {
    const accounts = stringListField(issues, raw, key, path, { check: checkServiceAccount });
    if (accounts.length > MAX_SERVICE_ACCOUNTS) issues.add([...path, key], `has ${accounts.length} values; Istio allows at most ${MAX_SERVICE_ACCOUNTS} (write another source for the rest)`);
    setList(source, key, accounts);
  }
  setList(source, 'trustDomains', stringListField(issues, raw, 'trustDomains', path, { check: checkTrustDomainMatch }));
  setList(source, 'notTrustDomains', stringListField(issues, raw, 'notTrustDomains', path, { check: checkTrustDomainMatch }));
  // Istio's rule: a service account names its namespace and principal already.
  const accountsSet = nonEmptyValue(raw, 'serviceAccounts') || nonEmptyValue(raw, 'notServiceAccounts');
  const clashing = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces'].filter((key) => nonEmptyValue(raw, key));
  if (accountsSet && clashing.length > 0) {
    issues.add([...path, nonEmptyValue(raw, 'serviceAccounts') ? 'serviceAccounts' : 'notServiceAccounts'], `cannot be set with ${clashing.join(' or ')} (Istio refuses it: a service account names its namespace; write another source)`);
  }
  if (!explained && !SOURCE_LISTS.some((key) => nonEmptyValue(raw, key))) {
    issues.add(path, `must not be empty: set at least one of ${SOURCE_LISTS.join(', ')} (or omit this entry)`);
  }
  return source as PolicySource;
}

function operationAt(issues: FieldIssues, raw: Mapping, path: FieldPath): PolicyOperation | undefined {
  const explained = hasUnknownFields(issues, raw, path, [...OPERATION_STRING_LISTS, ...OPERATION_PORT_LISTS]);
  const operation: Record<string, readonly (string | number)[]> = {};
  setList(operation, 'hosts', stringListField(issues, raw, 'hosts', path, { check: checkHostMatch }));
  setList(operation, 'notHosts', stringListField(issues, raw, 'notHosts', path, { check: checkHostMatch }));
  setList(operation, 'ports', portList(issues, raw, 'ports', path));
  setList(operation, 'notPorts', portList(issues, raw, 'notPorts', path));
  setList(operation, 'methods', stringListField(issues, raw, 'methods', path, { check: checkMethod }));
  setList(operation, 'notMethods', stringListField(issues, raw, 'notMethods', path, { check: checkMethod }));
  setList(operation, 'paths', stringListField(issues, raw, 'paths', path, { check: checkPath }));
  setList(operation, 'notPaths', stringListField(issues, raw, 'notPaths', path, { check: checkPath }));
  if (!explained && ![...OPERATION_STRING_LISTS, ...OPERATION_PORT_LISTS].some((key) => nonEmptyValue(raw, key))) {
    issues.add(path, `must not be empty: set at least one of ${[...OPERATION_STRING_LISTS, ...OPERATION_PORT_LISTS].join(', ')} (or omit this entry)`);
  }
  return operation as PolicyOperation;
}

/** checkFields, telling whether it found a field it does not know. */
function hasUnknownFields(issues: FieldIssues, raw: Mapping, path: FieldPath, known: readonly string[]): boolean {
  const before = issues.list.length;
  checkFields(issues, raw, path, known);
  return issues.list.length !== before;
}

function setList<T>(target: Record<string, readonly T[]>, key: string, values: readonly T[]): void {
  if (values.length > 0) target[key] = values;
}

/** A field that is set to something other than an empty list (a wrong type counts: it is reported elsewhere). */
function nonEmptyValue(raw: Mapping, key: string): boolean {
  return hasValue(raw, key) && !(Array.isArray(raw[key]) && raw[key].length === 0);
}

/** Ports are strings in Istio's schema ("8080"); YAML users also write numbers, so both are read. */
function portList(issues: FieldIssues, raw: Mapping, key: string, path: FieldPath): number[] {
  const ports: number[] = [];
  (listField(issues, raw, key, path) ?? []).forEach((item, index) => {
    const port = portValue(item);
    if (port === undefined) issues.add([...path, key, index], `${describeValue(item)} is not a port number (1-${MAX_PORT})`);
    else ports.push(port);
  });
  return ports;
}

function portValue(value: unknown): number | undefined {
  let port: number | undefined;
  if (typeof value === 'number' && Number.isInteger(value)) port = value;
  else if (typeof value === 'string' && /^\d{1,5}$/.test(value)) port = Number(value);
  return port !== undefined && port >= 1 && port <= MAX_PORT ? port : undefined;
}

function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (isMapping(value)) return 'a mapping';
  return String(value);
}

// ---- when ----

const EVALUATED_KEYS = 'request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, destination.ip, destination.port';
const SIMPLE_KEYS: Readonly<Record<string, ConditionKey>> = {
  'source.ip': { kind: 'source.ip' },
  'remote.ip': { kind: 'remote.ip' },
  'source.namespace': { kind: 'source.namespace' },
  'source.principal': { kind: 'source.principal' },
  'source.serviceAccount': { kind: 'source.serviceAccount' },
  'source.trustDomain': { kind: 'source.trustDomain' },
  'destination.ip': { kind: 'destination.ip' },
  'destination.port': { kind: 'destination.port' },
};
// Keys Istio knows that ambit does not evaluate, with what to write instead where there is something.
const UNSUPPORTED_KEYS: Readonly<Record<string, string>> = {
  // HBONE carries the application's bytes inside ambit's own TLS: the node proxy never sees the SNI the
  // application sent, so a DENY on it would never fire (fail open) and an ALLOW never match.
  'connection.sni': 'is not visible to the node proxy (the application\'s TLS is inside the tunnel): not supported',
  'destination.namespace': 'is replaced by the policy\'s metadata.namespace (as in Istio)',
  'destination.name': 'is deprecated (Istio v1alpha1 only): use the selector',
  'destination.user': 'is deprecated (Istio v1alpha1 only): use the selector',
};
const HEADER_KEY = /^request\.headers\[(.*)\]$/;
// RFC 9110 §5.6.2 token: header field names and methods.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** The HTTP/2 request pseudo-headers (RFC 9113 §8.3.1) a condition may name; an HTTP/1.1 request has them too in Envoy. */
const PSEUDO_HEADERS: ReadonlySet<string> = new Set([':authority', ':method', ':path', ':scheme']);

function conditionAt(issues: FieldIssues, value: unknown, path: FieldPath): PolicyCondition | undefined {
  const raw = mappingAt(issues, value, path);
  if (raw === undefined) return undefined;
  const explained = hasUnknownFields(issues, raw, path, CONDITION_FIELDS);
  const key = stringField(issues, raw, 'key', path, { required: true });
  const parsedKey = key === undefined ? undefined : conditionKey(issues, key, [...path, 'key']);
  const check = parsedKey === undefined ? undefined : conditionValueCheck(parsedKey);
  const values = stringListField(issues, raw, 'values', path, { check });
  const notValues = stringListField(issues, raw, 'notValues', path, { check });
  if (parsedKey?.kind === 'source.serviceAccount') {
    for (const [field, list] of [['values', values], ['notValues', notValues]] as const) {
      if (list.length > MAX_SERVICE_ACCOUNTS) issues.add([...path, field], `has ${list.length} values; Istio allows at most ${MAX_SERVICE_ACCOUNTS} service accounts in one condition (split them over several rules)`);
    }
  }
  if (!explained && !nonEmptyValue(raw, 'values') && !nonEmptyValue(raw, 'notValues')) {
    issues.add(path, 'needs values or notValues (at least one value to compare the key with)');
  }
  if (key === undefined || parsedKey === undefined) return undefined;
  const normalise = conditionValueNormaliser(parsedKey);
  const condition: { key: string; parsedKey: ConditionKey; values?: readonly string[]; notValues?: readonly string[] } = { key, parsedKey };
  if (values.length > 0) condition.values = values.map(normalise);
  if (notValues.length > 0) condition.notValues = notValues.map(normalise);
  return condition;
}

function conditionKey(issues: FieldIssues, key: string, path: FieldPath): ConditionKey | undefined {
  // Own keys only: `constructor` or `__proto__` would otherwise read Object.prototype and load as a condition.
  const simple = Object.hasOwn(SIMPLE_KEYS, key) ? SIMPLE_KEYS[key] : undefined;
  if (simple !== undefined) return simple;
  const header = HEADER_KEY.exec(key);
  if (header !== null) {
    const name = header[1] as string;
    if (TOKEN.test(name)) return { kind: 'request.headers', header: name.toLowerCase() };
    // Envoy keeps a request's pseudo-headers with its fields, so Istio's conditions on them match; the request's own
    // method, authority, path (with its query) and scheme answer them here.
    if (PSEUDO_HEADERS.has(name)) return { kind: 'request.headers', header: name };
    if (name.startsWith(':')) {
      issues.add(path, `${JSON.stringify(name)} is not a request pseudo-header (a condition may name ${[...PSEUDO_HEADERS].join(', ')})`);
      return undefined;
    }
    issues.add(path, `${JSON.stringify(name)} is not an HTTP header name (write request.headers[NAME], for example request.headers[x-user])`);
    return undefined;
  }
  if (key.startsWith('request.auth.')) {
    issues.add(path, `${key}: JWT request authentication is not supported yet`);
    return undefined;
  }
  const unsupported = (Object.hasOwn(UNSUPPORTED_KEYS, key) ? UNSUPPORTED_KEYS[key] : undefined) ?? (key.startsWith('destination.labels[') ? 'is replaced by the selector (as in Istio)' : undefined);
  if (unsupported !== undefined) {
    issues.add(path, `${key} ${unsupported}`);
    return undefined;
  }
  issues.add(path, `${JSON.stringify(key)} is not a key ambit evaluates (${EVALUATED_KEYS})`);
  return undefined;
}

function conditionValueCheck(key: ConditionKey): (value: string) => string | undefined {
  switch (key.kind) {
    case 'source.ip':
    case 'remote.ip':
    case 'destination.ip':
      return checkPolicyIpBlock;
    case 'destination.port':
      return (value) => (portValue(value) === undefined ? `${JSON.stringify(value)} is not a port number (1-${MAX_PORT})` : undefined);
    case 'source.namespace':
      return checkNamespace;
    case 'source.principal':
      return checkPrincipal;
    case 'source.serviceAccount':
      return checkServiceAccount;
    case 'source.trustDomain':
      return checkTrustDomainMatch;
    case 'request.headers':
      return (value) => matchProblem(value);
  }
}

function conditionValueNormaliser(key: ConditionKey): (value: string) => string {
  switch (key.kind) {
    case 'source.ip':
    case 'remote.ip':
    case 'destination.ip':
      return canonicalIpBlock;
    case 'destination.port':
      return (value) => String(portValue(value));
    case 'request.headers':
      // The request's authority is read in lower case (DNS names are case-insensitive, and `hosts` compare so): a
      // DENY's `Admin.Shop` had never matched, where Envoy matches a client that sends it so.
      return key.header === 'host' || key.header === ':authority' ? (value) => value.toLowerCase() : (value) => value;
    default:
      return (value) => value;
  }
}

// ---- match syntax ----

type MatchForm = 'exact' | 'prefix' | 'suffix' | 'presence';

interface Match {
  readonly form: MatchForm;
  /** The value without its "*". */
  readonly text: string;
}

const WILDCARD_RULE = 'a "*" may only be the whole value (*), its start (*suffix) or its end (prefix*)';

/** Istio's four forms; undefined when a "*" is misplaced (then matchProblem says why). */
function parseMatch(value: string): Match | undefined {
  if (value === '*') return { form: 'presence', text: '' };
  const first = value.indexOf('*');
  if (first === -1) return { form: 'exact', text: value };
  if (first !== value.lastIndexOf('*')) return undefined;
  if (first === 0) return { form: 'suffix', text: value.slice(1) };
  if (first === value.length - 1) return { form: 'prefix', text: value.slice(0, -1) };
  return undefined;
}

function matchProblem(value: string): string | undefined {
  if (parseMatch(value) !== undefined) return undefined;
  const count = value.split('*').length - 1;
  return count > 1 ? `${JSON.stringify(value)} has more than one "*": ${WILDCARD_RULE}` : `${JSON.stringify(value)} has a "*" in the middle: ${WILDCARD_RULE}`;
}

// ---- principals ----

const PRINCIPAL_FORM = 'TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT (for example cluster.local/ns/shop/sa/web)';
// The five segments of a principal and the characters each may hold, for checking prefixes and suffixes of one.
const PRINCIPAL_SEGMENT_CHARS = [/^[a-z0-9._-]*$/, /^ns$/, /^[a-z0-9-]*$/, /^sa$/, /^[a-z0-9.-]*$/];

// `TD/ns/NS/sa/SA`, `*`, or a prefix (`cluster.local/ns/shop/*`) or suffix (`*/ns/shop/sa/web`) of that shape.
export function checkPrincipal(value: string): string | undefined {
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (text.startsWith('spiffe://') || (form === 'suffix' && text.includes('spiffe://'))) {
    return `${JSON.stringify(value)}: Istio principals omit the spiffe:// scheme; write ${PRINCIPAL_FORM}`;
  }
  const invalid = `${JSON.stringify(value)} is not a principal: write ${PRINCIPAL_FORM}, with "*" only at the start or end`;
  if (form === 'presence') return undefined;
  const segments = text.split('/');
  if (segments.length > 5) return invalid;
  if (form === 'exact') {
    if (segments.length !== 5) return invalid;
    const [trustDomain, ns, namespace, sa, serviceAccount] = segments as [string, string, string, string, string];
    const ok = checkTrustDomain(trustDomain) === undefined && ns === 'ns' && checkDns1123Label(namespace) === undefined
      && sa === 'sa' && checkDns1123Subdomain(serviceAccount) === undefined;
    return ok ? undefined : invalid;
  }
  // A prefix covers segments 0..n-1 (the last one possibly cut short); a suffix covers the last n (the first cut).
  const offset = form === 'prefix' ? 0 : 5 - segments.length;
  const partial = form === 'prefix' ? segments.length - 1 : 0;
  for (let index = 0; index < segments.length; index++) {
    const segment = segments[index] as string;
    const position = offset + index;
    if (index === partial) {
      if (!partialSegmentFits(segment, position, form)) return invalid;
    } else if (!wholeSegmentFits(segment, position)) {
      return invalid;
    }
  }
  return undefined;
}

function wholeSegmentFits(segment: string, position: number): boolean {
  switch (position) {
    case 0: return checkTrustDomain(segment) === undefined;
    case 1: return segment === 'ns';
    case 2: return checkDns1123Label(segment) === undefined;
    case 3: return segment === 'sa';
    default: return checkDns1123Subdomain(segment) === undefined;
  }
}

function partialSegmentFits(segment: string, position: number, form: MatchForm): boolean {
  if (position === 1 || position === 3) {
    const literal = position === 1 ? 'ns' : 'sa';
    return form === 'prefix' ? literal.startsWith(segment) : literal.endsWith(segment);
  }
  return (PRINCIPAL_SEGMENT_CHARS[position] as RegExp).test(segment) && segment.length <= 253;
}

// ---- service accounts, trust domains ----

/** `SERVICE_ACCOUNT` (in the policy's namespace) or `NAMESPACE/SERVICE_ACCOUNT`, as istiod's CheckServiceAccount reads it. */
export function checkServiceAccount(value: string): string | undefined {
  const form = 'write SERVICE_ACCOUNT (in the policy\'s namespace) or NAMESPACE/SERVICE_ACCOUNT';
  if (value.includes('*')) return `${JSON.stringify(value)}: a service account takes no wildcard (Istio refuses one); ${form}, or use principals`;
  const parts = value.split('/');
  if (parts.length > 2) return `${JSON.stringify(value)} is not a service account: ${form} (not a principal)`;
  const [namespace, account] = parts.length === 2 ? (parts as [string, string]) : [undefined, parts[0] as string];
  if (namespace !== undefined && checkDns1123Label(namespace) !== undefined) return `${JSON.stringify(value)}: ${JSON.stringify(namespace)} is not a namespace (a DNS-1123 label); ${form}`;
  if (checkDns1123Subdomain(account) !== undefined) return `${JSON.stringify(value)}: ${JSON.stringify(account)} is not a service account name (a DNS-1123 subdomain); ${form}`;
  return undefined;
}

/** `*`, a trust domain, or a prefix or suffix of one (`*.example.com`). */
export function checkTrustDomainMatch(value: string): string | undefined {
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (form === 'presence') return undefined;
  if (text.includes('/')) return `${JSON.stringify(value)}: a trust domain has no "/" (write the trust domain only, as in cluster.local)`;
  if (form === 'exact') return checkTrustDomain(text);
  if (/^[a-z0-9._-]+$/.test(text) && text.length <= 255) return undefined;
  return `${JSON.stringify(value)} cannot match a trust domain (one holds only a-z, 0-9, ".", "_" and "-")`;
}

// ---- namespaces, hosts, methods, paths ----

export function checkNamespace(value: string): string | undefined {
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (form === 'presence') return undefined;
  if (form === 'exact') return checkDns1123Label(value);
  if (text.length <= 63 && /^[a-z0-9-]+$/.test(text)) return undefined;
  return `${JSON.stringify(value)} cannot match a namespace (a namespace is a DNS-1123 label: a-z, 0-9 and "-")`;
}

// An HTTP Host / :authority value: a DNS name or IP literal, optionally with a port.
const HOST_EXACT = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?)(?::\d{1,5})?$/;
const HOST_CHARS = /^[A-Za-z0-9_.:[\]-]+$/;

/** Hosts as the HTTP request names them (matched case-insensitively by the compiler): `example.com`, `*.example.com`, `api:8080`. */
export function checkHostMatch(value: string): string | undefined {
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (form === 'presence') return undefined;
  if (form === 'exact' ? HOST_EXACT.test(text) : HOST_CHARS.test(text)) return undefined;
  return `${JSON.stringify(value)} is not a host (a DNS name or IP address, optionally with :PORT)`;
}

export function checkMethod(value: string): string | undefined {
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (form === 'presence' || TOKEN.test(text)) return undefined;
  return `${JSON.stringify(value)} is not an HTTP method (a token such as GET or POST)`;
}

// `/exact`, `/prefix/*`, `*suffix`, `*`, or a template (`/api/{*}/items`). The compiler matches paths without their
// query string, as Envoy's url_path does.
export function checkPath(value: string, normalization: PathNormalization = 'MERGE_SLASHES'): string | undefined {
  if (isPathTemplate(value)) return checkPathTemplate(value, normalization);
  const problem = matchProblem(value);
  if (problem !== undefined) return problem;
  const { form, text } = parseMatch(value) as Match;
  if (form === 'presence') return undefined;
  // eslint-disable-next-line no-control-regex
  if (/[\s\x00-\x1f\x7f]/.test(text)) return `${JSON.stringify(value)} contains whitespace or a control character`;
  if (text.includes('?') || text.includes('#')) {
    return `${JSON.stringify(value)}: paths are matched without the query string and fragment; remove the part from "${text.includes('?') ? '?' : '#'}"`;
  }
  if (form !== 'suffix' && !text.startsWith('/')) return `${JSON.stringify(value)} must start with "/" (or "*" for a suffix match)`;
  return unnormalizedPathProblem(value, form, text, normalization);
}

/**
 * Requests are matched by their normalised path (path.ts): a value with what normalising takes out (`%61`, a
 * lower-case escape, `\`, `//`, a `.` or `..` segment) matches no request at all, so a DENY written with one denies
 * nothing. Refused, with the form that matches. A prefix is judged as a path that goes on after it (`/a/..*` may
 * match `/a/..b`), a suffix as the end of one. Refusing it fails closed (the whole change with it), where Istio accepts the
 * value and it never matches.
 */
function unnormalizedPathProblem(value: string, form: Match['form'], text: string, normalization: PathNormalization): string | undefined {
  let tail = '';
  if (form === 'prefix') {
    // A prefix may end inside an escape (`/files/%2*` matches `/files/%2F...`): judged without it, its digits as
    // requests have them (upper case).
    const partial = /%([0-9A-Fa-f]?)$/.exec(text);
    if (partial !== null) {
      if (/[a-f]/.test(partial[1] as string)) return `${JSON.stringify(value)} matches no request: request paths have their escapes upper-cased; write ${JSON.stringify(`${text.slice(0, partial.index)}%${(partial[1] as string).toUpperCase()}*`)}`;
      tail = partial[0];
      text = text.slice(0, partial.index);
    }
  }
  const [before, after] = form === 'exact' ? ['', ''] : form === 'prefix' ? ['', 'x'] : ['/x', ''];
  const path = before + text + after;
  // A request's path holds bytes (what a client sends for `é` is UTF-8's two): judged, and the form to write given,
  // with the value's other characters as their UTF-8 escapes.
  let bytes: string;
  try {
    bytes = path.replace(/[\u0080-\u{10ffff}]+/gu, (characters) => encodeURIComponent(characters));
  } catch {
    return `${JSON.stringify(value)} is not valid Unicode text (a lone surrogate): it matches no request`;
  }
  const normalized = normalizePath(bytes, normalization);
  if (normalized === path) return undefined;
  if (normalized === null) return `${JSON.stringify(value)} has a "%" not followed by two hex digits: it matches no request`;
  // No hint for a suffix: a `..` in it may have taken out the part it was written after.
  const written = normalized.slice(0, normalized.length - after.length);
  const hint = form === 'suffix' || !normalized.endsWith(after) ? '' : `; write ${JSON.stringify(form === 'exact' ? written : `${written}${tail}*`)}`;
  return `${JSON.stringify(value)} matches no request: request paths are normalised first (%-escapes of letters, digits and -._~ decoded${slashDecodingStep(normalization)}, other escapes upper-cased, controls, space, the characters " < > ^ \` { | }, DEL and non-ASCII bytes escaped, "\\" read as "/", "." and ".." segments resolved, "//" merged)${hint}`;
}

// ---- selector ----

/** `selector.matchLabels`; an absent or empty selector selects every workload in scope (undefined). */
function selectorField(issues: FieldIssues, raw: Mapping, path: FieldPath): Readonly<Record<string, string>> | undefined {
  const selector = mappingField(issues, raw, 'selector', path);
  if (selector === undefined) return undefined;
  const selectorPath = [...path, 'selector'];
  checkFields(issues, selector, selectorPath, ['matchLabels']);
  // Kubernetes label syntax, which also refuses the "*" Istio refuses in selectors.
  const labels = stringMapField(issues, selector, 'matchLabels', selectorPath, checkQualifiedName, checkLabelValue);
  return Object.keys(labels).length === 0 ? undefined : labels;
}

// ---- PeerAuthentication ----

const MTLS_MODES: readonly MtlsMode[] = ['STRICT', 'PERMISSIVE', 'DISABLE', 'UNSET'];

export function validatePeerAuthenticationSpec(issues: FieldIssues, raw: Mapping, path: FieldPath): PeerAuthenticationSpec | undefined {
  const before = issues.list.length;
  checkFields(issues, raw, path, ['selector', 'mtls', 'portLevelMtls']);
  const selector = selectorField(issues, raw, path);
  const mtls = modeOf(issues, mappingField(issues, raw, 'mtls', path), [...path, 'mtls']);

  const portLevelMtls = new Map<number, MtlsMode>();
  const portMap = mappingField(issues, raw, 'portLevelMtls', path);
  if (portMap !== undefined) {
    const portPath = [...path, 'portLevelMtls'];
    const entries = Object.entries(portMap);
    // Both are Istio's rules: port-level modes need a workload (a port means nothing mesh- or namespace-wide).
    if (entries.length === 0) issues.add(portPath, 'must list at least one port (or be omitted)');
    else if (selector === undefined) issues.add(portPath, 'requires a selector with matchLabels: a mesh-wide or namespace-wide PeerAuthentication cannot set port-level modes');
    for (const [key, value] of entries) {
      const entryPath = [...portPath, key];
      const port = portValue(key);
      if (port === undefined) issues.add(entryPath, `${JSON.stringify(key)} is not a port number (1-${MAX_PORT})`);
      else if (portLevelMtls.has(port)) issues.add(entryPath, `port ${port} is listed twice`);
      const mode = modeOf(issues, mappingAt(issues, value, entryPath), entryPath);
      if (port !== undefined) portLevelMtls.set(port, mode);
    }
  }
  if (issues.list.length !== before) return undefined;
  return selector === undefined ? { mtls, portLevelMtls } : { selector, mtls, portLevelMtls };
}

/** `{ mode: STRICT }`; absent, empty or `mode: UNSET` all mean UNSET (inherit), as in Istio. */
function modeOf(issues: FieldIssues, raw: Mapping | undefined, path: FieldPath): MtlsMode {
  if (raw === undefined) return 'UNSET';
  checkFields(issues, raw, path, ['mode']);
  return enumField(issues, raw, 'mode', path, MTLS_MODES) ?? 'UNSET';
}

// ---- annotations ----

/**
 * The annotations these kinds give meaning to. `ambit.dev/enforce` must be "true" or "false" on a PeerAuthentication
 * (whether it is mesh-wide is a question of the root namespace, checked with the whole snapshot) and is refused on an
 * AuthorizationPolicy. Istio's `istio.io/dry-run: "true"` is refused: ambit would enforce a policy meant only to be
 * logged, denying what the author expected to pass.
 */
export function checkPolicyAnnotations(issues: FieldIssues, kind: 'AuthorizationPolicy' | 'PeerAuthentication', annotations: Readonly<Record<string, string>>): void {
  const enforce = annotations[ENFORCE_ANNOTATION];
  const enforcePath = ['metadata', 'annotations', ENFORCE_ANNOTATION];
  if (enforce !== undefined) {
    if (kind !== 'PeerAuthentication') issues.add(enforcePath, 'only means something on a mesh-wide PeerAuthentication (root namespace, no selector)');
    else if (enforce !== 'true' && enforce !== 'false') issues.add(enforcePath, `must be "true" or "false", got ${JSON.stringify(enforce)}`);
  }
  const dryRun = annotations[DRY_RUN_ANNOTATION];
  if (dryRun !== undefined && kind === 'AuthorizationPolicy' && isDryRun(dryRun) === null) {
    issues.add(['metadata', 'annotations', DRY_RUN_ANNOTATION], `must be true or false (as Go's strconv.ParseBool reads it: 1, t, T, TRUE, true, True, or 0, f, F, FALSE, false, False), got ${JSON.stringify(dryRun)}`);
  }
}

/** The `istio.io/dry-run` value as Istio reads it (Go's strconv.ParseBool); null for anything else. */
export function isDryRun(value: string | undefined): boolean | null {
  if (value === undefined) return false;
  if (PARSE_BOOL_TRUE.has(value)) return true;
  if (PARSE_BOOL_FALSE.has(value)) return false;
  return null;
}

const PARSE_BOOL_TRUE: ReadonlySet<string> = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const PARSE_BOOL_FALSE: ReadonlySet<string> = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

/**
 * Where `ambit.dev/enforce` may stand: on a mesh-wide PeerAuthentication, the one in the root namespace without a
 * selector. Returns the problem for any other, or undefined. Called by the snapshot, which knows the root namespace.
 */
export function enforceAnnotationProblem(namespace: string, spec: PeerAuthenticationSpec, rootNamespace: string): string | undefined {
  if (namespace !== rootNamespace) {
    return `only means something on a mesh-wide PeerAuthentication (root namespace ${rootNamespace}, no selector); this one is in namespace ${namespace}`;
  }
  if (spec.selector !== undefined) {
    return `only means something on a mesh-wide PeerAuthentication (root namespace ${rootNamespace}, no selector); this one has a selector`;
  }
  return undefined;
}
