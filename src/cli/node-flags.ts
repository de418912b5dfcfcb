// The Node flags ambit's long-running processes (proxy, CA) are started with: `ambit mesh` and the benchmark
// start them so, and a deployment should too (`MALLOC_ARENA_MAX=2 node --max-semi-space-size=1 --initial-old-space-size=64 --expose-gc
// bin/ambit.js proxy ...`).
// V8 reads them only at startup (v8.setFlagsFromString is too late for the heap's layout), so they cannot be
// set from inside the process.
//
// --max-semi-space-size=1 (MiB): V8 otherwise grows the young generation to 16 MiB semi-spaces under load. A
// proxy's young objects are short-lived (chunks, streams, requests), so small semi-spaces cost L4 no throughput
// and bound each scavenge: measured with `npm run bench` on 2026-11-23, ambit L4 at 2,000 req/s had a p99 of
// 6.4 ms instead of 16–36 ms (scavenges of up to 14 ms), ~50 MiB less RSS per proxy, and the same or higher
// max throughput (20.0k against 18.4k req/s). Not 2, nor 4: every chunk of a byte stream is a new Buffer whose
// backing store lives until the scavenge that finds it dead, and with 2 MiB semi-spaces a bulk transfer made
// 17–19 full collections per proxy per GiB (`--trace-gc`: "external memory pressure" and "allocation limit"
// with 21 of 64 MiB used) against 0–1 with 1 MiB, and moved 226–230 / 235–269 MiB/s against 288–300 / 333–370
// (down / up, alternated 1 GiB `--scenario bulk --rows ambit-l4` runs, 2026-12-04). Under churn, 2 MiB had
// looked better in five pairs of runs the same morning; three more pairs that afternoon put the two within the
// VM's spread (3.16–3.32× against 3.02–3.46× HAProxy's pair). What 1 MiB costs is L7's: its per-request objects
// (Node's HTTP parser, undici) are scavenged twice as often: 6,301–6,935 against 6,507–8,344 req/s at full load
// in four alternated pairs (each pair better with 2), and L7 stays 1.21–2.17× HAProxy's L7 pair (its target is 1×).
import { fileURLToPath } from 'node:url';

// --initial-old-space-size=64 (MiB): the old generation's collection limit never falls below 64 MiB. Otherwise V8
// sets it ~9 MiB above the ~20 MiB a proxy keeps live, and under a byte stream (every chunk a new Buffer, some
// promoted while in flight) incremental marking restarted within ~100 ms of each full collection: 53–64 full
// collections per proxy for 512 MiB each way, a third of the proxy core (`--trace-gc`, `perf`). With 64 MiB: 2–3.
// Bulk went from 105–135 to 222–224 MiB/s down and 101–131 to 241–277 MiB/s up (alternated `npm run bench --
// --scenario throughput,latency,bulk` runs, 2026-11-24), throughput and RSS at 2,000 req/s the same; 10,000 idle
// connections cost the same per connection (8.3 / 5.7 KiB), where 128 MiB made it 10.5 KiB (garbage from opening
// them left uncollected). The limit is not committed memory: the idle proxy is the same size.
// --expose-gc: the proxy collects once after loading or reloading its configuration, when its event loop is quiet,
// returning the pages parsing and compiling grew the heap to (src/proxy/heap.ts); nothing else calls it.
export const LONG_RUNNING_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--initial-old-space-size=64', '--expose-gc'];

// MALLOC_ARENA_MAX=2: glibc gives every thread that mallocs an arena of its own, and keeps what it frees there.
// V8's compiler and GC threads and libuv's pool made five of them in an idle proxy with 1,000 workloads,
// holding 24 MiB that startup had used once (/proc/PID/smaps: the 64 MiB-aligned rw-p maps). Two arenas:
// the idle proxy 129.5 -> 117.2 MiB (one: 114.6–116.2), RSS at 2,000 req/s 107 + 105 against 109 + 110 MiB,
// throughput, bulk and idle connections the same within the run-to-run spread (alternated `npm run bench --
// --scenario throughput,latency,bulk,idle --rows ambit-l4` and `--scenario footprint`, 2026-11-24). The data path
// mallocs on the main thread, so two arenas leave it one of its own in practice.
/** Environment for the same processes: these defaults under whatever the caller's environment already sets. */
export function longRunningEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { MALLOC_ARENA_MAX: '2', ...env };
}

/**
 * The CLI a child process (the CA, a proxy) runs: the compiled main.js beside this module when this process runs
 * the build (dist/, `npm run build`), else the TypeScript source with type stripping.
 */
export const CLI_ENTRY: string = fileURLToPath(new URL(import.meta.url.endsWith('.js') ? './main.js' : './main.ts', import.meta.url));
