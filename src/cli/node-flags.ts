// The Node flags ambit's long-running processes (proxy, CA) are started with: `ambit mesh` and the benchmark
// start them so, and a deployment should too (`node --max-semi-space-size=1 --expose-gc bin/ambit.js proxy ...`).
// V8 reads them only at startup (v8.setFlagsFromString is too late for the heap's layout), so they cannot be
// set from inside the process.
//
// --max-semi-space-size=1 (MiB): V8 otherwise grows the young generation to 16 MiB semi-spaces under load. A
// proxy's young objects are short-lived (chunks, streams, requests), so small semi-spaces cost no throughput
// and bound each scavenge: measured with `npm run bench` on 2026-11-23, ambit L4 at 2,000 req/s had a p99 of
// 6.4 ms instead of 16–36 ms (scavenges of up to 14 ms), ~50 MiB less RSS per proxy, and the same or higher
// max throughput (20.0k against 18.4k req/s).
import { fileURLToPath } from 'node:url';

// --expose-gc: the proxy collects once after loading or reloading its configuration, returning the pages parsing and
// compiling grew the heap to (src/proxy/heap.ts); nothing else calls it.
export const LONG_RUNNING_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--expose-gc'];

/**
 * The CLI a child process (the CA, a proxy) runs: the compiled main.js beside this module when this process runs
 * the build (dist/, `npm run build`), else the TypeScript source with type stripping.
 */
export const CLI_ENTRY: string = fileURLToPath(new URL(import.meta.url.endsWith('.js') ? './main.js' : './main.ts', import.meta.url));
