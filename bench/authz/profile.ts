// Decides the benchmark's mix in a loop for a while, without the peers, so a profiler sees only ambit's decision:
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/authz/profile.ts [--quick] [--seconds S] [--layer L4|L7]
// and, after the loop: --per-request (the slowest requests, each repeated), --lookup (the matcher lookup apart from
// the decision), --warm (each request repeated 1,000 times), --alloc (heap growth over a million decisions: ~0).
import { compileAuthorization } from '../../src/authz/compile.ts';
import { decide } from '../../src/authz/decide.ts';
import { parseConfigText } from '../../src/config/loader.ts';
import { buildSnapshot } from '../../src/config/snapshot.ts';
import { worldOf } from '../../test/unit/authz/harness.ts';
import { FULL_SCALE, QUICK_SCALE, generateConfig } from './generate.ts';
import { buildMix } from './mix.ts';
import { contextOf } from './context.ts';

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const seconds = Number(argv[argv.indexOf('--seconds') + 1] ?? 10) || 10;
const layerArg = argv.includes('--layer') ? argv[argv.indexOf('--layer') + 1] : null;
const seed = 20_240_605;
const generated = generateConfig(quick ? QUICK_SCALE : FULL_SCALE, seed);
const snapshot = buildSnapshot(parseConfigText(generated.yaml, 'generated.yaml'));
const compiled = compileAuthorization(snapshot);
const mix = buildMix(worldOf(snapshot), snapshot.workloads, 300, seed + 1).filter((item) => layerArg === null || item.layer === layerArg);
const workloads = mix.map((item) => item.destination);
const contexts = mix.map((item) => contextOf(item.request));
const moments = mix.map((item) => item.moment);
let allowed = 0;
function loop(): { decisions: number; elapsed: number } {
  let decisions = 0;
  const started = performance.now();
  while (performance.now() - started < seconds * 1000) {
    for (let i = 0; i < mix.length; i++) if (decide(compiled.forWorkload(workloads[i]!), contexts[i]!, moments[i]!).allow) allowed++;
    decisions += mix.length;
  }
  return { decisions, elapsed: performance.now() - started };
}
const { decisions, elapsed } = loop();
process.stdout.write(`${decisions} decisions in ${(elapsed / 1000).toFixed(1)} s: ${((elapsed * 1e6) / decisions).toFixed(0)} ns each (mean, in mix order); ${allowed} allowed\n`);
if (argv.includes('--per-request')) {
  const costs = mix.map((item, i) => {
    const t0 = process.hrtime.bigint();
    for (let k = 0; k < 200; k++) if (decide(compiled.forWorkload(workloads[i]!), contexts[i]!, moments[i]!).allow) allowed++;
    return { i, ns: Number(process.hrtime.bigint() - t0) / 200, item };
  }).sort((a, b) => b.ns - a.ns);
  for (const { i, ns, item } of costs.slice(0, 8)) {
    const p = compiled.forWorkload(workloads[i]!);
    const lists = p.byPort.get(item.request.port) ?? p.otherPorts;
    process.stdout.write(`${ns.toFixed(0)} ns #${i} ${item.layer} ${item.aim} ${item.destination.namespace}/${item.destination.name} deny ${lists.deny.length} allow ${lists.allow.length} → ${item.expected.allow}\n`);
  }
  process.stdout.write(`median ${costs[Math.floor(costs.length / 2)]!.ns.toFixed(0)} ns\n`);
}
if (argv.includes('--outliers')) {
  const sums = new Float64Array(mix.length);
  for (let pass = 0; pass < 200; pass++) {
    for (let i = 0; i < mix.length; i++) {
      const t0 = process.hrtime.bigint();
      if (decide(compiled.forWorkload(workloads[i]!), contexts[i]!, moments[i]!).allow) allowed++;
      sums[i]! += Number(process.hrtime.bigint() - t0);
    }
  }
  const order = [...sums.keys()].sort((a, b) => sums[b]! - sums[a]!);
  let total = 0;
  for (const s of sums) total += s;
  for (const i of order.slice(0, 10)) process.stdout.write(`${(sums[i]! / 200).toFixed(0)} ns mean #${i} ${mix[i]!.layer} ${mix[i]!.aim} ${JSON.stringify(mix[i]!.request).slice(0, 300)}\n`);
  process.stdout.write(`mean of all ${(total / 200 / mix.length).toFixed(0)} ns\n`);
}
if (argv.includes('--lookup')) {
  const policies = workloads.map((w) => compiled.forWorkload(w));
  let t0 = process.hrtime.bigint();
  for (let pass = 0; pass < 200; pass++) for (let i = 0; i < mix.length; i++) if (compiled.forWorkload(workloads[i]!) === policies[i]) allowed++;
  process.stdout.write(`lookup ${(Number(process.hrtime.bigint() - t0) / 200 / mix.length).toFixed(0)} ns\n`);
  t0 = process.hrtime.bigint();
  for (let pass = 0; pass < 200; pass++) for (let i = 0; i < mix.length; i++) if (decide(policies[i]!, contexts[i]!, moments[i]!).allow) allowed++;
  process.stdout.write(`decide only ${(Number(process.hrtime.bigint() - t0) / 200 / mix.length).toFixed(0)} ns\n`);
}
if (argv.includes('--warm')) {
  // Each request repeated: the decision's own cost with warm caches.
  const t0 = process.hrtime.bigint();
  let n = 0;
  while (Number(process.hrtime.bigint() - t0) < seconds * 1e9) {
    for (let i = 0; i < mix.length; i++) for (let k = 0; k < 1000; k++) if (decide(compiled.forWorkload(workloads[i]!), contexts[i]!, moments[i]!).allow) allowed++;
    n += mix.length * 1000;
  }
  process.stdout.write(`warm: ${(Number(process.hrtime.bigint() - t0) / n).toFixed(0)} ns per decision\n`);
}
if (argv.includes('--alloc')) {
  // Decisions should not allocate: heap growth over a million of them, in mix order.
  const before = process.memoryUsage().heapUsed;
  let n = 0;
  for (let pass = 0; n < 1_000_000; pass++) for (let i = 0; i < mix.length; i++, n++) if (decide(compiled.forWorkload(workloads[i]!), contexts[i]!, moments[i]!).allow) allowed++;
  process.stdout.write(`heap growth over ${n} decisions: ${((process.memoryUsage().heapUsed - before) / 1024).toFixed(0)} KiB\n`);
}
