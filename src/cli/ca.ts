// `ambit ca`: create a CA directory, run the CA server, mint join tokens, rotate roots, print the bundle.
import { appendFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AmbitError, toAmbitError } from '../errors.ts';
import { parse, parseDurationMs, parseDurationMsAllowZero, parsePositiveCount, parseTtlSeconds, parseWholeSeconds, readText, requireString } from './args.ts';
import type { Command } from './args.ts';
import { stopOnUncaughtError } from './fatal.ts';
import { ignoreHangup, stopSignal } from './hangup.ts';
import { activateAuthority, initCa, loadCa, prepareAuthority, withdrawAuthorities } from '../identity/ca/store.ts';
import { createJoinToken } from '../identity/ca/tokens.ts';
import { evictNode } from '../identity/ca/nodes.ts';
import { CaServer } from '../identity/ca/server.ts';
import type { NodeRegistry } from '../identity/ca/server.ts';
import { nodeId } from '../identity/spiffe-id.ts';
import { decodeBundleText, encodeBundle, encodePemBundle } from '../identity/bundle.ts';
import type { FederationPeer } from '../identity/federation.ts';
import { createLogger } from '../observe/log.ts';
import { WATCH_ERROR_MESSAGES, watchConfigDir } from '../config/watch.ts';
import { AuditLog } from '../config/audit.ts';
import type { ConfigSnapshot } from '../config/snapshot.ts';
import { parseListen } from './listen.ts';

const help = `usage: ambit ca <subcommand> [options]

Runs ambit's certificate authority and manages its state directory.

subcommands:
  init   --dir DIR --trust-domain TD [--root-cert FILE --root-key FILE] [--ttl 8760h] [--refresh-hint 5m]
         Create a CA: a self-signed root, or an intermediate signed by the root you give (several
         clusters' CAs under one shared root). Private keys are written 0600.
  serve  --dir DIR --config CONFIG_DIR [--listen 127.0.0.1:15012] [--svid-ttl 1h] [--audit-log FILE]
         [--federation-min-refresh 15s] [--state-poll 1s] [--node-sign-budget 256]
         Serve the CA over HTTPS (TLS 1.3): join-token attestation (POST /v1/attest), CSR signing for
         the workloads the registry places on the caller's node (POST /v1/sign), the SPIFFE bundle
         endpoint (GET /bundle) and the bundle set with federated trust domains (GET /v1/bundles).
         Federation peers come from the MeshConfig object in CONFIG_DIR. Audit log: DIR/audit.log.
         A federated bundle endpoint is polled at most every --federation-min-refresh; DIR/ca.json is
         checked for root changes every --state-poll. One node may have --node-sign-budget certificates
         signed at once and as many again each minute (past it: 429 with Retry-After, audited).
  token create --dir DIR --node NAME [--ttl 1h]
         Print a single-use join token for NAME. Presenting it once with a CSR yields the node SVID
         spiffe://TD/ambit/node/NAME.
  node evict --dir DIR --node NAME
         Refuse NAME's node SVID from now on (a lost or decommissioned host, a leaked certificate): the
         CA signs nothing more for it until it attests again with a new join token. The CA accepts
         only the node certificate it issued last (and a renewal's new one until first used), so a
         copy of an older node SVID is refused without this.
  root prepare  --dir DIR [--root-cert FILE --root-key FILE] [--ttl 8760h]
         Publish a new authority in the trust bundle without signing with it yet.
  root activate --dir DIR   Sign with the prepared authority; the old root stays trusted.
  root withdraw --dir DIR [--audit-log FILE | --grace DURATION]
         Remove roots that no longer sign from the bundle. Refused while a certificate they signed
         can still be in use, node SVIDs included: while the CA's audit log (DIR/audit.log, or the
         --audit-log ca serve was given) shows a holder whose newest certificate is an old root's and
         has not expired; with --grace, until the active authority has signed for that long.
  bundle --dir DIR [--format spiffe|pem]
         Print this trust domain's bundle (a bootstrap file for agents and federation peers).

A running CA notices root changes within a second; agents pick them up at their next bundle refresh.
`;

const DEFAULT_LISTEN = '127.0.0.1:15012';

/** A CA certificate's --ttl: at least a day, the node SVIDs' default life, which no certificate it signs may outlive. */
const MIN_AUTHORITY_TTL_MS = 24 * 3_600_000;

function authorityTtlMs(text: string): number {
  const ms = parseDurationMs(text, 'ttl');
  // `--ttl 1ms` made a root already expired, and every command after it went on as if it were not.
  if (ms < MIN_AUTHORITY_TTL_MS) throw new AmbitError('USAGE', `--ttl ${text}: a CA certificate must live at least 24h (it caps every certificate it signs, node SVIDs of 24h included)`);
  return ms;
}

async function readParent(options: { 'root-cert'?: string | boolean; 'root-key'?: string | boolean }) {
  const certFile = options['root-cert'];
  const keyFile = options['root-key'];
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (typeof certFile !== 'string' || typeof keyFile !== 'string') throw new AmbitError('USAGE', '--root-cert and --root-key go together');
  return { certPem: await readText(certFile, '--root-cert'), keyPem: await readText(keyFile, '--root-key'), certFrom: `--root-cert ${certFile}`, keyFrom: `--root-key ${keyFile}` };
}


async function init(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    dir: { type: 'string' },
    'trust-domain': { type: 'string' },
    'root-cert': { type: 'string' },
    'root-key': { type: 'string' },
    ttl: { type: 'string' },
    'refresh-hint': { type: 'string' },
  }, false);
  const dir = requireString(values.dir, 'dir');
  const trustDomain = requireString(values['trust-domain'], 'trust-domain');
  const state = await initCa(dir, trustDomain, {
    parent: await readParent(values),
    ttlMs: values.ttl ? authorityTtlMs(values.ttl) : undefined,
    refreshHintSeconds: values['refresh-hint'] ? parseWholeSeconds(values['refresh-hint'], 'refresh-hint', 'a bundle\'s refresh hint is in whole seconds') : undefined,
  });
  const kind = state.active.cert === state.active.root || state.active.cert.serialNumber === state.active.root.serialNumber ? 'self-signed root' : 'intermediate';
  process.stdout.write(`created CA for trust domain ${state.trustDomain} in ${dir} (${kind}, valid until ${state.active.cert.notAfter.toISOString()})\n`);
  return 0;
}

/** The CA's view of the registry: identities by node, from the current configuration snapshot. */
function registryOf(snapshot: ConfigSnapshot): NodeRegistry {
  return { identitiesOnNode: (node) => snapshot.identitiesOnNode(node) };
}

async function federationPeers(snapshot: ConfigSnapshot, configDir: string): Promise<FederationPeer[]> {
  const peers: FederationPeer[] = [];
  for (const peer of snapshot.mesh.federation) {
    let bootstrapBundle;
    if (peer.bundleFile) {
      const file = resolve(configDir, peer.bundleFile);
      bootstrapBundle = decodeBundleText(peer.trustDomain, await readText(file, `MeshConfig spec.federation[${peer.trustDomain}].bundleFile`));
    }
    peers.push({ trustDomain: peer.trustDomain, bundleEndpoint: peer.bundleEndpoint, profile: peer.profile, endpointSpiffeId: peer.endpointSpiffeId, bootstrapBundle });
  }
  return peers;
}

async function serve(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    dir: { type: 'string' },
    config: { type: 'string' },
    listen: { type: 'string' },
    'svid-ttl': { type: 'string' },
    'audit-log': { type: 'string' },
    'federation-min-refresh': { type: 'string' },
    'state-poll': { type: 'string' },
    'node-sign-budget': { type: 'string' },
  }, false);
  const dir = requireString(values.dir, 'dir');
  const configDir = requireString(values.config, 'config');
  const listen = parseListen(values.listen ?? DEFAULT_LISTEN, 'listen');
  // Every flag judged before anything is made (the audit log): a typo must leave nothing behind.
  const fixedTtlMs = values['svid-ttl'] ? parseTtlSeconds(values['svid-ttl'], 'svid-ttl') * 1000 : undefined;
  const federationMinRefreshMs = values['federation-min-refresh'] ? parseDurationMs(values['federation-min-refresh'], 'federation-min-refresh') : undefined;
  const statePollMs = values['state-poll'] ? parseDurationMs(values['state-poll'], 'state-poll') : undefined;
  const signs = values['node-sign-budget'] === undefined ? undefined : parsePositiveCount(values['node-sign-budget'], 'node-sign-budget');
  const logger = createLogger({ name: 'ambit-ca' });
  // From the start, as the proxy and the agent: a HUP during startup must not kill it either.
  ignoreHangup(logger, 'the configuration directory and CA state are watched');
  stopOnUncaughtError(logger);
  // From the start too: a large configuration takes seconds to load, and a SIGTERM meanwhile killed the CA (exit 143,
  // nothing said) where one after it stops it in order.
  const stopping = stopSignal();
  const auditFile = values['audit-log'] ?? join(dir, 'audit.log');
  // The same audit log format as the proxy's: one JSON line per configuration change and per issuance decision.
  const auditLog = new AuditLog(auditFile);
  // Resolves once the line is written; rejects (logged) when it cannot be: the CA then refuses the issuance.
  const audit = (record: Record<string, unknown>): Promise<void> =>
    auditLog.write(record).catch((error: unknown) => {
      logger.error({ err: toAmbitError(error, 'FILE_WRITE').toJSON(), event: record.event }, 'audit record not written');
      throw error;
    });
  const state = await loadCa(dir);
  // Judged before serving: a CA that cannot audit refuses every issuance, and started anyway it answered each node 500.
  try {
    await appendFile(auditFile, '', { mode: 0o600 });
  } catch (error) {
    throw new AmbitError('FILE_WRITE', `${values['audit-log'] === undefined ? 'audit log' : '--audit-log'} ${auditFile}: cannot append: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
  }
  let server: CaServer | undefined;
  // Reloads apply in order; a federation list that cannot be applied keeps the one in force.
  let applying = Promise.resolve();
  const apply = (next: ConfigSnapshot) => {
    applying = applying.then(async () => {
      if (server === undefined) return;
      if (fixedTtlMs === undefined) {
        server.setSvidTtl(next.mesh.certificateTtlMs);
        server.setNodeSvidTtl(next.mesh.nodeCertificateTtlMs);
      }
      await server.setFederation(await federationPeers(next, configDir));
    }).catch((error: unknown) => {
      logger.error({ err: toAmbitError(error, 'FEDERATION_FETCH').toJSON() }, 'federation change not applied; the previous federation stays in force');
    });
  };
  const config = await watchConfigDir(configDir, {
    requireMesh: true,
    auditLog,
    onChange: (next, _previous, diff) => {
      logger.info({ version: next.version, diff }, 'configuration reloaded');
      apply(next);
    },
    onError: (error, kind) => {
      if (kind === 'rejected') logger.error({ err: error }, WATCH_ERROR_MESSAGES[kind]);
      else logger.warn({ err: error }, WATCH_ERROR_MESSAGES[kind]);
    },
    // The CA signs for the trust domain of its directory: another one in the configuration would refuse every node.
    accept: (next, prev) => (next.mesh.trustDomain === prev.mesh.trustDomain ? undefined : `MeshConfig spec.trustDomain changed from "${prev.mesh.trustDomain}" to "${next.mesh.trustDomain}" (restart to change it)`),
  });
  if (stopping.aborted) {
    await config.close();
    logger.info('CA stopped before it had started');
    return 0;
  }
  try {
    const snapshot = config.current();
    if (snapshot.mesh.trustDomain !== state.trustDomain) {
      throw new AmbitError('CONFIG_FIELD', `${configDir}: MeshConfig spec.trustDomain is "${snapshot.mesh.trustDomain}" but the CA in ${dir} serves "${state.trustDomain}"`);
    }
    const svidTtlMs = fixedTtlMs ?? snapshot.mesh.certificateTtlMs;
    server = await CaServer.start({
      dir,
      host: listen.host,
      port: listen.port,
      registry: () => registryOf(config.current()),
      svidTtlMs,
      // --svid-ttl fixes both (tests and benchmarks rotate everything fast); otherwise the MeshConfig's.
      nodeSvidTtlMs: fixedTtlMs ?? snapshot.mesh.nodeCertificateTtlMs,
      federation: await federationPeers(snapshot, configDir),
      federationMinRefreshMs,
      statePollMs,
      signBudget: signs === undefined ? undefined : { burst: signs, perMinute: signs },
      logger,
      audit,
    });
  } catch (error) {
    // The configuration watcher keeps the event loop alive: without closing it a refused start never exits.
    await config.close();
    throw error;
  }
  const running = server;
  const stop = async () => {
    logger.info('CA shutting down');
    await running.close();
    await config.close();
    process.exit(0);
  };
  if (stopping.aborted) await stop();
  stopping.addEventListener('abort', () => void stop(), { once: true });
  await new Promise<never>(() => {});
  return 0;
}

async function token(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'create') throw new AmbitError('USAGE', action === undefined ? 'missing token subcommand (expected: create)' : `unknown token subcommand "${action}" (expected: create)`);
  const { values } = parse(rest, { dir: { type: 'string' }, node: { type: 'string' }, ttl: { type: 'string' } }, false);
  const dir = requireString(values.dir, 'dir');
  const node = requireString(values.node, 'node');
  const state = await loadCa(dir);
  // Validate the node name now: a token for a name that cannot be a SPIFFE ID could never be used.
  nodeId(state.trustDomain, node);
  const created = await createJoinToken(dir, node, parseDurationMs(values.ttl ?? '1h', 'ttl'));
  process.stdout.write(`${created.token}\n`);
  process.stderr.write(`join token for node ${node} (spiffe://${state.trustDomain}/ambit/node/${node}), single use, expires ${created.expiresAt.toISOString()}\n`);
  return 0;
}

async function node(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  if (action !== 'evict') throw new AmbitError('USAGE', action === undefined ? 'missing node subcommand (expected: evict)' : `unknown node subcommand "${action}" (expected: evict)`);
  const { values } = parse(rest, { dir: { type: 'string' }, node: { type: 'string' } }, false);
  const dir = requireString(values.dir, 'dir');
  const name = requireString(values.node, 'node');
  const state = await loadCa(dir);
  nodeId(state.trustDomain, name);
  const known = await evictNode(dir, name);
  process.stdout.write(`node ${name} evicted: its node SVID is refused until it attests again with a new join token${known ? '' : ' (the CA had no record of it)'}\n`);
  return 0;
}

async function root(argv: string[]): Promise<number> {
  const [action, ...rest] = argv;
  // Each subcommand parses its own flags: one it does not read (`activate --grace 1h`) is refused, never ignored.
  switch (action) {
    case 'prepare': {
      const { values } = parse(rest, { dir: { type: 'string' }, 'root-cert': { type: 'string' }, 'root-key': { type: 'string' }, ttl: { type: 'string' } }, false);
      const dir = requireString(values.dir, 'dir');
      const name = await prepareAuthority(dir, { parent: await readParent(values), ttlMs: values.ttl ? authorityTtlMs(values.ttl) : undefined });
      process.stdout.write(`prepared authority ${name}: published in the bundle, not yet signing\n`);
      return 0;
    }
    case 'activate': {
      const { values } = parse(rest, { dir: { type: 'string' } }, false);
      process.stdout.write(`authority ${await activateAuthority(requireString(values.dir, 'dir'))} now signs; previous roots stay in the bundle until withdrawn\n`);
      return 0;
    }
    case 'withdraw': {
      const { values } = parse(rest, { dir: { type: 'string' }, grace: { type: 'string' }, 'audit-log': { type: 'string' } }, false);
      const dir = requireString(values.dir, 'dir');
      if (values.grace !== undefined && values['audit-log'] !== undefined) throw new AmbitError('USAGE', 'root withdraw takes --audit-log or --grace, not both');
      const when = values.grace !== undefined ? { graceMs: parseDurationMsAllowZero(values.grace, 'grace') } : { auditLog: values['audit-log'] ?? join(dir, 'audit.log') };
      const { withdrawn, stillTrusted } = await withdrawAuthorities(dir, when);
      const removed = withdrawn.filter((name) => !stillTrusted.some((kept) => kept.name === name));
      process.stdout.write(removed.length > 0 ? `withdrew ${removed.join(', ')} from the bundle\n` : '');
      if (stillTrusted.length > 0) process.stdout.write(`retired ${stillTrusted.map((kept) => kept.name).join(', ')}; still trusted (see the warning)\n`);
      for (const { name, until } of stillTrusted) {
        process.stderr.write(`warning: ${name} is an intermediate under the root the authority in force also uses: that root stays in the bundle, so what ${name} signed still verifies until ${until.toISOString()}; rotate to a new root to withdraw trust in it\n`);
      }
      return 0;
    }
    default:
      throw new AmbitError('USAGE', action === undefined ? 'missing root subcommand (expected: prepare, activate, withdraw)' : `unknown root subcommand "${action}" (expected: prepare, activate, withdraw)`);
  }
}

async function bundle(argv: string[]): Promise<number> {
  const { values } = parse(argv, { dir: { type: 'string' }, format: { type: 'string' } }, false);
  const state = await loadCa(requireString(values.dir, 'dir'));
  const format = values.format ?? 'spiffe';
  if (format === 'spiffe') process.stdout.write(encodeBundle(state.bundle) + '\n');
  else if (format === 'pem') process.stdout.write(encodePemBundle(state.bundle));
  else throw new AmbitError('USAGE', `--format must be spiffe or pem, got "${format}"`);
  return 0;
}

export const command: Command = {
  summary: 'certificate authority: init, serve, join tokens, node eviction, root rotation, bundle',
  help,
  async run(argv) {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'init':
        return init(rest);
      case 'serve':
        return serve(rest);
      case 'token':
        return token(rest);
      case 'node':
        return node(rest);
      case 'root':
        return root(rest);
      case 'bundle':
        return bundle(rest);
      default:
        throw new AmbitError('USAGE', sub === undefined ? 'missing subcommand (init, serve, token, node, root, bundle)' : `unknown subcommand "${sub}" (init, serve, token, node, root, bundle)`);
    }
  },
};
