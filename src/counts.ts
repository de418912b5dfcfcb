// Counts by key (connections per address, sessions per peer, lookups per identity) that drop a key at zero: a map of
// counts that kept its zeros would grow with every address or identity ever seen.

/** One less for `key`; the key is dropped once none is left. */
export function countDown<K>(counts: Map<K, number>, key: K): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left <= 0) counts.delete(key);
  else counts.set(key, left);
}
