// How many certificates one node may have signed: a token bucket per node. A node's agent asks for one per local
// identity when it starts (a few hundred at most: a Kubernetes node runs 110 pods by default), each again at half its
// lifetime, and all again over a few minutes when the root changes; a compromised or looping node asks for thousands
// (1,681 in 15 s, each one signed, audited and written to its node record, while the CA's other work waited). Past
// its budget a node gets 429 with Retry-After, and the agent waits that long.

export interface SignBudgetLimits {
  /** Requests a node may make at once (the bucket's size). */
  readonly burst: number;
  /** Requests a node regains per minute. */
  readonly perMinute: number;
}

export const DEFAULT_SIGN_BUDGET: SignBudgetLimits = { burst: 256, perMinute: 256 };

interface Bucket {
  tokens: number;
  atMs: number;
  /** Requests refused since the node last got one through (0: not limited now). */
  refused: number;
}

export type SignBudgetAnswer =
  | { readonly allowed: true; /** Requests refused before this one, in the spell it ends (0: none). */ readonly refusedBefore: number }
  | { readonly allowed: false; readonly retryAfterSeconds: number; /** The first refusal of a spell. */ readonly first: boolean };

export class SignBudget {
  readonly #limits: SignBudgetLimits;
  readonly #buckets = new Map<string, Bucket>();
  readonly #now: () => number;

  constructor(limits: SignBudgetLimits = DEFAULT_SIGN_BUDGET, now: () => number = Date.now) {
    if (!(limits.burst >= 1) || !(limits.perMinute > 0)) throw new RangeError(`sign budget needs burst >= 1 and perMinute > 0, got ${limits.burst} and ${limits.perMinute}`);
    this.#limits = limits;
    this.#now = now;
  }

  take(node: string): SignBudgetAnswer {
    const now = this.#now();
    const { burst, perMinute } = this.#limits;
    let bucket = this.#buckets.get(node);
    if (bucket === undefined) this.#buckets.set(node, (bucket = { tokens: burst, atMs: now, refused: 0 }));
    bucket.tokens = Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.atMs) * perMinute) / 60_000);
    bucket.atMs = now;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      const refusedBefore = bucket.refused;
      bucket.refused = 0;
      return { allowed: true, refusedBefore };
    }
    bucket.refused++;
    return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil(((1 - bucket.tokens) * 60) / perMinute)), first: bucket.refused === 1 };
  }

  /** Drops the buckets that have refilled: a node that asks rarely holds no memory here. */
  sweep(): void {
    const now = this.#now();
    const { burst, perMinute } = this.#limits;
    for (const [node, bucket] of this.#buckets) {
      if (bucket.refused === 0 && bucket.tokens + ((now - bucket.atMs) * perMinute) / 60_000 >= burst) this.#buckets.delete(node);
    }
  }
}
