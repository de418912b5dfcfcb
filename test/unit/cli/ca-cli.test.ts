// `ambit ca` and `ambit agent` refusing bad command lines: the real CLI process, exit 2 and one stderr
// line ending in the code, before anything is created, served or contacted.
import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, it } from 'vitest';
import type { ExpectStatic } from 'vitest';
import { runAmbit } from '../../helpers/process.ts';
import type { RunResult } from '../../helpers/process.ts';
import { caStateFile, initCa } from '../../../src/identity/ca/store.ts';
import { encodePemBundle } from '../../../src/identity/bundle.ts';

const TD = 'cluster.local';
const WEB = `spiffe://${TD}/ns/default/sa/web`;

let dir: string;
let caDir: string;
let caState: string;
let bundleFile: string;
let otherDomainConfig: string;
let noMeshConfig: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ambit-ca-cli-'));
  caDir = join(dir, 'ca');
  const state = await initCa(caDir, TD);
  caState = await readFile(caStateFile(caDir), 'utf8');
  bundleFile = join(dir, 'bundle.pem');
  await writeFile(bundleFile, encodePemBundle(state.bundle));
  otherDomainConfig = join(dir, 'config-other');
  await mkdir(otherDomainConfig);
  await writeFile(join(otherDomainConfig, 'mesh.yaml'), 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  trustDomain: other.test\n');
  noMeshConfig = join(dir, 'config-no-mesh');
  await mkdir(noMeshConfig);
  await writeFile(join(noMeshConfig, 'pods.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: default }\nspec:\n  nodeName: node-a\n  serviceAccountName: web\nstatus:\n  podIP: 10.0.0.10\n');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Checks the bad-usage contract (exit 2, no stdout, exactly one stderr line) and returns the code in brackets. */
function failureCode(expect: ExpectStatic, result: RunResult): string | undefined {
  expect(result.status, result.stderr).toBe(2);
  expect(result.stdout).toBe('');
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  return /\[([A-Z_]+)\]$/.exec(result.stderr.trimEnd())?.[1];
}

function agentArgs(overrides: Record<string, string | undefined>, extra: string[] = []): string[] {
  const options: Record<string, string | undefined> = {
    ca: 'https://127.0.0.1:1',
    'trust-domain': TD,
    bundle: bundleFile,
    node: 'node-a',
    'state-dir': join(dir, 'agent-state'),
    out: join(dir, 'agent-out'),
    ...overrides,
  };
  const args = ['agent'];
  for (const [name, value] of Object.entries(options)) if (value !== undefined) args.push(`--${name}`, value);
  return [...args, ...extra, '--once'];
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

function proxyArgs(extra: string[]): string[] {
  return ['proxy', '--ca', 'https://127.0.0.1:1', '--trust-domain', TD, '--ca-bundle', bundleFile, '--node', 'node-a', '--config', noMeshConfig, '--state-dir', join(dir, 'proxy-state'), ...extra];
}

describe.concurrent('ambit proxy command line', () => {
  it.for([
    [['--hbone-port', '0'], '--hbone-port: "0" is not a port'],
    [['--hbone-port', 'abc'], '--hbone-port: "abc" is not a port'],
    [['--stream-window-budget', '0'], '--stream-window-budget: "0" is not a whole number of at least 1'],
    [['--stream-window-budget', '64MiB'], '--stream-window-budget: "64MiB" is not a whole number of at least 1'],
    [['--metrics', ''], '--metrics "": an empty value'],
    [['--admin', ''], '--admin "": an empty value'],
    // Read as no flag at all, and as a file named '', before.
    [['--svid-ttl', ''], '--svid-ttl "": an empty value'],
    [['--audit-log', ''], '--audit-log "": an empty value'],
    [['--outbound', '127.0.0.1:9000=web.shop:80@shop/client', '--outbound', ''], '--outbound "": an empty value'],
    // It had said the workload has no IP.
    [['--outbound', '9000=web.shop:80@shop/client'], '--outbound "9000=web.shop:80@shop/client": the flag needs the listen address too (LISTEN_IP:PORT, e.g. 127.0.0.1:9000)'],
  ] as Array<[string[], string]>)('refuses %j, naming the flag, before anything starts', async ([extra, message], { expect }) => {
    const result = await runAmbit(proxyArgs(extra));
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(message);
    expect(await exists(join(dir, 'proxy-state'))).toBe(false);
  });
});

describe('ambit proxy and its audit log', () => {
  it('refuses at start an --audit-log it cannot append to (a directory), naming it, as the CA does', async ({ expect }) => {
    const result = await runAmbit(['proxy', '--ca', 'https://127.0.0.1:1', '--trust-domain', TD, '--ca-bundle', bundleFile, '--node', 'node-a', '--config', noMeshConfig, '--join-token', 'never-spent', '--state-dir', join(dir, 'proxy-state-audit'), '--audit-log', dir, '--metrics', '127.0.0.1:0', '--readiness', '127.0.0.1:0', '--admin', '127.0.0.1:0'], { timeoutMs: 15_000 });
    expect(failureCode(expect, result)).toBe('FILE_WRITE');
    expect(result.stderr).toContain(`--audit-log ${dir}: cannot append (EISDIR: a directory, not a file)`);
  });
});

describe('ambit proxy and its trust domain', () => {
  // The bundle file names no trust domain (it is read as --trust-domain's): the message had blamed the bundle.
  it('names --trust-domain and the MeshConfig when they disagree, and exits', async ({ expect }) => {
    const result = await runAmbit(['proxy', '--ca', 'https://127.0.0.1:1', '--trust-domain', TD, '--ca-bundle', bundleFile, '--node', 'node-a', '--config', otherDomainConfig, '--join-token', 'never-spent', '--state-dir', join(dir, 'proxy-state-td'), '--metrics', '127.0.0.1:0', '--readiness', '127.0.0.1:0', '--admin', '127.0.0.1:0'], { timeoutMs: 15_000 });
    expect(result.status).not.toBe(0);
    expect(result.stderr + result.stdout).toContain(`MeshConfig spec.trustDomain is "other.test" but --trust-domain is "${TD}"`);
  });
});

// Each case is its own process; running them side by side keeps the file at a few seconds.
describe.concurrent('ambit ca command line', () => {
  it('prints its help and exits 0', async ({ expect }) => {
    const result = await runAmbit(['ca', '--help']);
    expect(result.status).toBe(0);
    expect(result.stderr).toBe('');
    expect(result.stdout).toContain('usage: ambit ca <subcommand>');
  });

  it('refuses no subcommand', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca']))).toBe('USAGE');
  });

  it.for(['token', 'node', 'root'])('says what is missing for ca %s alone, naming the subcommands it expects', async (group, { expect }) => {
    const result = await runAmbit(['ca', group]);
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(`missing ${group} subcommand (expected: `);
  });

  it('refuses an unknown subcommand', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'frobnicate', '--dir', caDir]))).toBe('USAGE');
  });

  it('refuses init without --trust-domain, creating nothing', async ({ expect }) => {
    const target = join(dir, 'init-no-td');
    expect(failureCode(expect, await runAmbit(['ca', 'init', '--dir', target]))).toBe('USAGE');
    expect(await exists(target)).toBe(false);
  });

  it('refuses init with --root-cert but no --root-key, creating nothing', async ({ expect }) => {
    const target = join(dir, 'init-half-parent');
    expect(failureCode(expect, await runAmbit(['ca', 'init', '--dir', target, '--trust-domain', TD, '--root-cert', bundleFile]))).toBe('USAGE');
    expect(await exists(target)).toBe(false);
  });

  it.for([
    ['activate', '--grace', '1h'],
    ['withdraw', '--ttl', '1h'],
    ['withdraw', '--root-cert', 'root.pem'],
    ['prepare', '--grace', '1h'],
  ] as Array<[string, string, string]>)('refuses root %s with a flag it does not read (%s), rather than ignore it, and leaves the CA as it was', async ([action, flag, value], { expect }) => {
    const result = await runAmbit(['ca', 'root', action, '--dir', caDir, flag, value]);
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(flag);
    expect(await readFile(caStateFile(caDir), 'utf8')).toBe(caState);
  });

  it('refuses token create without --node', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'token', 'create', '--dir', caDir]))).toBe('USAGE');
  });

  it('refuses a join token for a node name that cannot be a SPIFFE path segment, writing no token', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'token', 'create', '--dir', caDir, '--node', 'bad/name']))).toMatch(/^SPIFFE_ID_/);
    expect(await readdir(join(caDir, 'tokens')).catch(() => [])).toEqual([]);
  });

  it('refuses a CA certificate that would live less than a day, creating nothing (one of 1ms was already expired)', async ({ expect }) => {
    const fresh = join(caDir, '..', 'short-lived-ca');
    expect(failureCode(expect, await runAmbit(['ca', 'init', '--dir', fresh, '--trust-domain', 'short.test', '--ttl', '1ms']))).toBe('USAGE');
    expect(await readdir(fresh).catch(() => 'absent')).toBe('absent');
    expect(failureCode(expect, await runAmbit(['ca', 'root', 'prepare', '--dir', caDir, '--ttl', '23h']))).toBe('USAGE');
  });

  it('says there is no CA only when there is none; a CA state it cannot read is named with the reason', async ({ expect }) => {
    const none = await runAmbit(['ca', 'token', 'create', '--dir', join(caDir, '..', 'no-ca-here'), '--node', 'node-a']);
    expect(none.stderr).toContain('no CA state (run `ambit ca init` first)');
    // A directory where ca.json should be: unreadable as a file, even for root (where EACCES cannot be made).
    const odd = join(caDir, '..', 'odd-ca');
    await mkdir(join(odd, 'ca.json'), { recursive: true });
    const unreadable = await runAmbit(['ca', 'token', 'create', '--dir', odd, '--node', 'node-a']);
    expect(unreadable.stderr).toContain('cannot read CA state: EISDIR');
    expect(unreadable.stderr).not.toContain('ca init');
  });

  // Node's recursive mkdir spins a core forever on such a path (procfs answers ENOENT under an existing /proc).
  it.runIf(existsSync('/proc/self'))('refuses a --dir that cannot be created under /proc in one line, instead of spinning', async ({ expect }) => {
    const result = await runAmbit(['ca', 'init', '--dir', '/proc/ambit-no-such-dir/ca', '--trust-domain', TD], { timeoutMs: 10_000 });
    expect(failureCode(expect, result)).toBe('FILE_WRITE');
    expect(result.stderr).toContain('cannot mkdir /proc/ambit-no-such-dir');
  });

  // A 500 ms lifetime was issued as already expired, after the join token had been spent on it.
  it.for([['500ms', 'use at least 1s'], ['1500ms', 'use whole seconds']] as const)('refuses serve --svid-ttl %s before serving', async ([ttl, says], { expect }) => {
    const result = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', otherDomainConfig, '--listen', '127.0.0.1:0', '--svid-ttl', ttl], { timeoutMs: 10_000 });
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(`--svid-ttl ${ttl}: certificates are issued in whole seconds; ${says}`);
  });

  it.for([['--svid-ttl', 'abc'], ['--state-poll', '1.5s'], ['--federation-min-refresh', 'soon'], ['--node-sign-budget', '0']] as const)('refuses serve %s %s before it makes anything (its audit log among it)', async ([flag, value], { expect }) => {
    const audit = join(dir, `audit-${flag.slice(2)}.log`);
    const result = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', otherDomainConfig, '--listen', '127.0.0.1:0', '--audit-log', audit, flag, value], { timeoutMs: 10_000 });
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(flag);
    expect(await exists(audit)).toBe(false);
  });

  it('refuses init with a --root-cert that holds no certificate (a key), naming the flag, and leaves no directory behind', async ({ expect }) => {
    const key = join(dir, 'root-key-only.pem');
    await writeFile(key, '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOk=\n-----END PRIVATE KEY-----\n');
    const target = join(dir, 'init-refused', 'ca');
    const result = await runAmbit(['ca', 'init', '--dir', target, '--trust-domain', TD, '--root-cert', key, '--root-key', key]);
    expect(failureCode(expect, result)).toBe('SVID_PARSE');
    expect(result.stderr).toContain(`--root-cert ${key}: no CERTIFICATE PEM block found`);
    expect(await exists(join(dir, 'init-refused'))).toBe(false);
  });

  it.for(['500ms', '1500ms'])('refuses init --refresh-hint %s, which had been rounded silently, creating nothing', async (hint, { expect }) => {
    const target = join(dir, `hint-${hint}`);
    const result = await runAmbit(['ca', 'init', '--dir', target, '--trust-domain', TD, '--refresh-hint', hint]);
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain(`--refresh-hint ${hint}: a bundle's refresh hint is in whole seconds`);
    expect(existsSync(target)).toBe(false);
  });

  it('refuses a join token that lives less than a second', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'token', 'create', '--dir', caDir, '--node', 'node-a', '--ttl', '500ms']))).toBe('USAGE');
  });

  it('refuses root withdraw given both --audit-log and --grace, leaving the CA as it was', async ({ expect }) => {
    const before = await readFile(caStateFile(caDir), 'utf8');
    expect(failureCode(expect, await runAmbit(['ca', 'root', 'withdraw', '--dir', caDir, '--grace', '0s', '--audit-log', join(caDir, 'audit.log')]))).toBe('USAGE');
    expect(await readFile(caStateFile(caDir), 'utf8')).toBe(before);
  });

  it('refuses root with an unknown action, leaving the CA as it was', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'root', 'rotate', '--dir', caDir]))).toBe('USAGE');
    expect(await readFile(caStateFile(caDir), 'utf8')).toBe(caState);
  });

  it('refuses bundle --format xml', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'bundle', '--dir', caDir, '--format', 'xml']))).toBe('USAGE');
  });

  it.for([
    ['no port', 'localhost'],
    ['a port above 65535', '127.0.0.1:65536'],
  ])('refuses serve with a --listen that has %s', async ([, listen], { expect }) => {
    expect(failureCode(expect, await runAmbit(['ca', 'serve', '--dir', caDir, '--config', otherDomainConfig, '--listen', listen as string]))).toBe('USAGE');
  });

  it('refuses to serve a configuration whose MeshConfig names another trust domain, and exits', async ({ expect }) => {
    const result = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', otherDomainConfig, '--listen', '127.0.0.1:0'], { timeoutMs: 10_000 });
    expect(failureCode(expect, result)).toBe('CONFIG_FIELD');
  });

  it('refuses to serve a configuration without a MeshConfig, and exits', async ({ expect }) => {
    const result = await runAmbit(['ca', 'serve', '--dir', caDir, '--config', noMeshConfig, '--listen', '127.0.0.1:0'], { timeoutMs: 10_000 });
    // A configuration error lists every problem on its own line, so only the exit and the code are checked here.
    expect(result.status, result.stderr).toBe(2);
    expect(result.stdout).toBe('');
    expect(/\[([A-Z_]+)\]$/.exec(result.stderr.trimEnd())?.[1]).toBe('CONFIG_MESH_MISSING');
  });
});

describe.concurrent('ambit agent command line', () => {
  it('refuses a missing --ca', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(agentArgs({ ca: undefined })))).toBe('USAGE');
  });

  it('refuses a CA URL that is not https', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(agentArgs({ ca: 'http://127.0.0.1:15012' })))).toBe('USAGE');
  });

  it('refuses an --identity of another trust domain', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(agentArgs({}, ['--identity', WEB, '--identity', 'spiffe://other.test/ns/default/sa/web'])))).toBe('USAGE');
  });

  it("refuses an --identity that is one of ambit's own (the node's), which is never written to --out", async ({ expect }) => {
    const result = await runAmbit(agentArgs({}, ['--identity', `spiffe://${TD}/ambit/node/node-a`]));
    expect(failureCode(expect, result)).toBe('USAGE');
    expect(result.stderr).toContain("one of ambit's own identities");
  });

  it('refuses an --identity that is not a SPIFFE ID', async ({ expect }) => {
    expect(failureCode(expect, await runAmbit(agentArgs({}, ['--identity', 'web'])))).toBe('SPIFFE_ID_SCHEME');
  });

  it('refuses a --state-dir that is --out, or inside it: the node SVID would sit where workloads read', async ({ expect }) => {
    for (const stateDir of [join(dir, 'shared-out'), join(dir, 'shared-out', 'state'), `${join(dir, 'shared-out')}/`, join(dir, 'shared-out', '..state')]) {
      const result = await runAmbit(agentArgs({ out: join(dir, 'shared-out'), 'state-dir': stateDir }));
      expect(failureCode(expect, result), stateDir).toBe('USAGE');
      expect(result.stderr).toContain('which workloads read');
    }
    expect(await exists(join(dir, 'shared-out'))).toBe(false);
    // Beside it is fine: judged further (the CA is not there), not refused as usage.
    expect(failureCode(expect, await runAmbit(agentArgs({ out: join(dir, 'shared-out'), 'state-dir': join(dir, 'shared-out-state') })))).not.toBe('USAGE');
  });

  it('refuses to start with neither a join token nor a node SVID kept, before it makes --out or --state-dir', async ({ expect }) => {
    const out = join(dir, 'tokenless-out');
    const stateDir = join(dir, 'tokenless-state');
    const result = await runAmbit(agentArgs({ out, 'state-dir': stateDir }));
    expect(failureCode(expect, result)).toBe('JOIN_TOKEN_INVALID');
    expect(result.stderr).toContain(`no valid node SVID in ${stateDir} (none stored) and no join token given`);
    expect(await exists(out)).toBe(false);
    expect(await exists(stateDir)).toBe(false);
    const proxy = await runAmbit(['proxy', '--ca', 'https://127.0.0.1:1', '--trust-domain', TD, '--ca-bundle', bundleFile, '--node', 'node-a', '--config', noMeshConfig, '--state-dir', stateDir]);
    expect(failureCode(expect, proxy)).toBe('JOIN_TOKEN_INVALID');
    expect(await exists(stateDir)).toBe(false);
  });

  it('names the flag, the file and why when a file it was given cannot be read', async ({ expect }) => {
    const absent = join(dir, 'absent.pem');
    const agent = await runAmbit(agentArgs({ bundle: absent }));
    expect(failureCode(expect, agent)).toBe('FILE_READ');
    expect(agent.stderr).toContain(`--bundle ${absent}: cannot be read (ENOENT: no such file)`);
    const init = await runAmbit(['ca', 'init', '--dir', join(dir, 'ca-absent-parent'), '--trust-domain', TD, '--root-cert', absent, '--root-key', absent]);
    expect(failureCode(expect, init)).toBe('FILE_READ');
    expect(init.stderr).toContain(`--root-cert ${absent}: cannot be read (ENOENT: no such file)`);
    const request = await runAmbit(['authz', 'check', '--config', noMeshConfig, '--request', dir]);
    expect(failureCode(expect, request)).toBe('FILE_READ');
    expect(request.stderr).toContain(`--request ${dir}: cannot be read (EISDIR: a directory, not a file)`);
  });

  it('refuses a --bundle with no root certificate (a key, an empty file), naming the flag and the file', async ({ expect }) => {
    const key = join(dir, 'a-key.pem');
    await writeFile(key, '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOk=\n-----END PRIVATE KEY-----\n');
    const empty = join(dir, 'empty-bundle.pem');
    await writeFile(empty, '');
    for (const file of [key, empty]) {
      const result = await runAmbit(agentArgs({ bundle: file }));
      expect(failureCode(expect, result), file).toBe('BUNDLE_INVALID');
      expect(result.stderr).toContain(`--bundle ${file}: holds no root certificate`);
      const proxy = await runAmbit(['proxy', '--ca', 'https://127.0.0.1:1', '--trust-domain', TD, '--ca-bundle', file, '--node', 'node-a', '--config', noMeshConfig, '--state-dir', join(dir, 'proxy-state-bundle')]);
      expect(failureCode(expect, proxy), file).toBe('BUNDLE_INVALID');
      expect(proxy.stderr).toContain(`--ca-bundle ${file}: holds no root certificate`);
    }
  });
});
