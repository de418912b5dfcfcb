// Which IPs this host can dial from: an outbound HBONE session leaves from the source workload's IP when the host
// has it (a loopback mesh, a VM or bare-metal host with one address per workload), so the destination's policies
// see the workload's address. A pod IP seen from the host's network namespace is not one of them: binding to it
// fails, or with ip_nonlocal_bind succeeds and the answers go to the pod, so it is never tried.
import { networkInterfaces } from 'node:os';
import { CidrSet, parseIp } from '../authz/match.ts';

/** How long a reading of the interfaces holds: addresses come and go with workloads, but not per connection. */
const REFRESH_MS = 10_000;
/** Answers kept between readings: a workload dialling many addresses must not grow the memo with its connection rate. */
const MAX_ANSWERS = 4_096;

export class LocalAddresses {
  readonly #read: () => ReturnType<typeof networkInterfaces>;
  #readAtMs = -Infinity;
  /** Each IP asked since the last reading, and the answer: one Map lookup per connection. */
  readonly #answers = new Map<string, boolean>();
  #exact = new Set<string>();
  /** Loopback interfaces own their whole prefix (127.0.0.0/8 on Linux), others only their own address. */
  #loopback = new CidrSet([]);

  constructor(read: () => ReturnType<typeof networkInterfaces> = networkInterfaces) {
    this.#read = read;
  }

  has(ip: string, nowMs: number = Date.now()): boolean {
    if (nowMs - this.#readAtMs >= REFRESH_MS) this.#refresh(nowMs);
    let answer = this.#answers.get(ip);
    if (answer === undefined) {
      const parsed = parseIp(ip);
      answer = this.#exact.has(ip) || (parsed !== null && this.#loopback.contains(parsed));
      if (this.#answers.size >= MAX_ANSWERS) this.#answers.clear();
      this.#answers.set(ip, answer);
    }
    return answer;
  }

  #refresh(nowMs: number): void {
    const exact = new Set<string>();
    const loopback: string[] = [];
    for (const addresses of Object.values(this.#read())) {
      for (const address of addresses ?? []) {
        exact.add(address.address);
        if (address.internal && address.cidr !== null) loopback.push(address.cidr);
      }
    }
    this.#exact = exact;
    this.#loopback = new CidrSet(loopback);
    this.#answers.clear();
    this.#readAtMs = nowMs;
  }
}
