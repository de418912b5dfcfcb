// Istio's `serviceAccounts` and `trustDomains` (and their `not` forms and `when` keys source.serviceAccount and
// source.trustDomain), matched against the peer's principal (its SPIFFE ID without `spiffe://`) as istiod's
// generators (pilot/pkg/security/authz/model/generator.go) have Envoy match them:
// - a service account `NS/SA` (or `SA`, in the policy's namespace) is the regex `spiffe://.+/ns/NS/(.+/|)sa/SA(/.+)?`:
//   any trust domain, other segments allowed before, between and after;
// - a trust domain is `*` (any peer with an identity), exact (`spiffe://TD/...`), or a prefix or suffix of the trust
//   domain (`spiffe://P[^/]*S/.*`).
// Scans, not regular expressions: linear in the principal whatever a peer presents, and nothing allocated.
import type { StringMatcher, ValueTest } from './match.ts';

/** One value of `serviceAccounts` (or source.serviceAccount), its namespace resolved. */
export class ServiceAccountTest implements ValueTest {
  /** `/ns/NS/` */
  readonly #namespaceMark: string;
  /** `sa/SA` */
  readonly #accountMark: string;

  constructor(written: string, policyNamespace: string) {
    const slash = written.indexOf('/');
    const namespace = slash < 0 ? policyNamespace : written.slice(0, slash);
    const account = slash < 0 ? written : written.slice(slash + 1);
    this.#namespaceMark = `/ns/${namespace}/`;
    this.#accountMark = `sa/${account}`;
  }

  test(principal: string): boolean {
    // `.+` before the namespace: the earliest mark leaves the most room for the account after it.
    const at = principal.indexOf(this.#namespaceMark, 1);
    if (at < 0) return false;
    const after = at + this.#namespaceMark.length;
    const mark = this.#accountMark;
    for (let j = principal.indexOf(mark, after); j >= 0; j = principal.indexOf(mark, j + 1)) {
      // `(.+/|)`: right after the namespace, or after at least one character and a "/".
      if (j !== after && (j - after < 2 || principal.charCodeAt(j - 1) !== 47)) continue;
      const end = j + mark.length;
      // `(/.+)?`: the end, or a "/" and at least one character.
      if (end === principal.length || (principal.charCodeAt(end) === 47 && principal.length - end >= 2)) return true;
    }
    return false;
  }
}

/** One value of `trustDomains` (or source.trustDomain): `*`, `TD`, `PREFIX*` or `*SUFFIX`. */
export class TrustDomainTest implements ValueTest {
  readonly #start: string;
  readonly #end: string;
  readonly #any: boolean;
  readonly #exact: boolean;

  constructor(written: string) {
    this.#any = written === '*';
    const star = written.indexOf('*');
    this.#exact = star < 0;
    this.#start = star < 0 ? `${written}/` : written.slice(0, star);
    this.#end = star < 0 ? '' : written.slice(star + 1);
  }

  test(principal: string): boolean {
    if (this.#any) return principal.length > 0;
    if (this.#exact) return principal.startsWith(this.#start);
    // The trust domain is what comes before the first "/", which must be there.
    const slash = principal.indexOf('/');
    if (slash < this.#start.length + this.#end.length) return false;
    return principal.startsWith(this.#start) && principal.startsWith(this.#end, slash - this.#end.length);
  }
}

/** Every one holds: a source's principals (or service accounts) and its trust domains, which Istio ANDs. */
export class AllTest implements ValueTest {
  readonly #matchers: readonly StringMatcher[];

  constructor(matchers: readonly StringMatcher[]) {
    this.#matchers = matchers;
  }

  test(principal: string): boolean {
    const matchers = this.#matchers;
    for (let i = 0; i < matchers.length; i++) if (!(matchers[i] as StringMatcher).matches(principal)) return false;
    return true;
  }
}
