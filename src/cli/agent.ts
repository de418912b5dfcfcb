// `ambit agent`: the rotation agent as a standalone program that writes certificate, key and bundle files
// atomically for software that reads files (as spiffe-helper does), and keeps them fresh.
import { unlink } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { Registry } from 'prom-client';
import { AmbitError, toAmbitError } from '../errors.ts';
import { joinTokenOption, parse, parseCaUrl, parseTtlSeconds, readBundleFlag, requireString } from './args.ts';
import type { Command } from './args.ts';
import { stopOnUncaughtError } from './fatal.ts';
import { ignoreHangup, stopSignal } from './hangup.ts';
import { parseListen } from './listen.ts';
import { IdentityAgent, requireNodeCredential } from '../identity/agent.ts';
import { writeFileAtomic } from '../identity/files.ts';
import { encodePemBundle } from '../identity/bundle.ts';
import type { BundleSet } from '../identity/bundle.ts';
import { isInfrastructurePath, parseSpiffeId, validateTrustDomain } from '../identity/spiffe-id.ts';
import type { Svid } from '../identity/svid.ts';
import { startMetricsServer } from '../observe/admin.ts';
import { createLogger } from '../observe/log.ts';
import type { Logger } from '../observe/log.ts';
import { makeDirs } from '../mkdir.ts';
import { StateDirLock } from '../identity/state-lock.ts';

const help = `usage: ambit agent --ca URL --trust-domain TD --bundle FILE --node NAME --state-dir DIR
                   --out DIR [--identity SPIFFE_ID ...] [--join-token TOKEN | --join-token-file FILE] [--ttl 1h]
                   [--metrics HOST:PORT] [--once]

Obtains this node's SVID (join token the first time, then renewal over mTLS), then one SVID per
--identity, renewing each at half its lifetime; while the CA is unreachable it backs off (1 s doubling
to 150 s) and the current files keep serving. Files in --out, each written atomically:
  <name>.pem, <name>-key.pem (0600)   certificate chain and key per --identity; <name> is the ID's path
                                      with "/" as "_" (ns_default_sa_web). The node SVID stays in
                                      --state-dir: its holder could ask for every identity on the node
  bundle.pem                          the roots of our own trust domain
  bundles.json                        SPIFFE bundle map of every trust domain the CA federates with
--bundle is the bootstrap trust bundle (PEM or SPIFFE JSON) used to authenticate the CA the first time.
--once writes the files once and exits. --metrics serves Prometheus /metrics (certificate expiry,
rotations, failures).
`;

export function fileStem(spiffeId: string): string {
  return parseSpiffeId(spiffeId).path.slice(1).replaceAll('/', '_');
}

async function writeSvid(out: string, svid: Svid): Promise<void> {
  const stem = fileStem(svid.id.id);
  // Key first: a reader that sees the new certificate must find its key already there.
  await writeFileAtomic(join(out, `${stem}-key.pem`), svid.privateKeyPem, 0o600);
  await writeFileAtomic(join(out, `${stem}.pem`), svid.certPem, 0o644);
}

async function removeNodeSvidFiles(out: string, nodeId: string, logger: Logger): Promise<void> {
  const stem = fileStem(nodeId);
  for (const name of [`${stem}-key.pem`, `${stem}.pem`]) {
    try {
      await unlink(join(out, name));
      logger.info({ file: join(out, name) }, 'removed the node SVID file an earlier version wrote to --out: it stays in --state-dir only');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
}

async function writeBundles(out: string, trustDomain: string, bundles: BundleSet): Promise<void> {
  const own = bundles.get(trustDomain);
  if (own) await writeFileAtomic(join(out, 'bundle.pem'), encodePemBundle(own), 0o644);
  await writeFileAtomic(join(out, 'bundles.json'), bundles.toMapJson() + '\n', 0o644);
}

export const command: Command = {
  summary: 'rotation agent: keeps SVID and bundle files fresh for programs that read files',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      ca: { type: 'string' },
      'trust-domain': { type: 'string' },
      bundle: { type: 'string' },
      node: { type: 'string' },
      'state-dir': { type: 'string' },
      out: { type: 'string' },
      identity: { type: 'string', multiple: true },
      'join-token': { type: 'string' },
      'join-token-file': { type: 'string' },
      ttl: { type: 'string' },
      metrics: { type: 'string' },
      once: { type: 'boolean' },
    }, false);
    const caUrl = parseCaUrl(values.ca);
    const trustDomain = validateTrustDomain(requireString(values['trust-domain'], 'trust-domain'));
    const bundleFile = requireString(values.bundle, 'bundle');
    const out = requireString(values.out, 'out');
    const stateDir = requireString(values['state-dir'], 'state-dir');
    // Workloads read --out: the node SVID in --state-dir lets its holder ask the CA for every identity on the node.
    const within = relative(resolve(out), resolve(stateDir));
    if (within === '' || (within !== '..' && !within.startsWith(`..${sep}`) && !isAbsolute(within))) {
      throw new AmbitError('USAGE', `--state-dir ${stateDir} is ${within === '' ? '' : 'inside '}--out ${out}, which workloads read: the node SVID kept there must stay out of their reach; give the state its own directory`);
    }
    const identities = values.identity ?? [];
    const stems = new Map<string, string>();
    for (const id of identities) {
      const parsed = parseSpiffeId(id);
      if (parsed.trustDomain !== trustDomain || parsed.path === '') throw new AmbitError('USAGE', `--identity ${id} is not a workload identity in ${trustDomain}`);
      // The node SVID (or the CA's) is never written to --out, which workloads read: asked for, --once wrote nothing.
      if (isInfrastructurePath(parsed.path)) throw new AmbitError('USAGE', `--identity ${id} is one of ambit's own identities (a node's or the CA's), not a workload's: the node SVID stays in --state-dir`);
      // Two identities must never share file names: one would overwrite the other's key.
      const other = stems.get(fileStem(id));
      if (other !== undefined && other !== id) throw new AmbitError('USAGE', `--identity ${id} and ${other} would both be written as ${fileStem(id)}.pem`);
      stems.set(fileStem(id), id);
    }
    // Judged before the join token is spent on an attestation: a bad flag must not cost the node its token.
    if (values.once && values.metrics !== undefined) throw new AmbitError('USAGE', '--metrics serves while the agent runs; with --once it exits at once, so the two do not go together');
    const metricsListen = values.metrics === undefined ? null : parseListen(values.metrics, 'metrics');
    const bootstrapBundle = await readBundleFlag(bundleFile, trustDomain, 'bundle');
    const joinToken = await joinTokenOption(values['join-token'], values['join-token-file']);
    await requireNodeCredential(stateDir, joinToken);
    const logger = createLogger({ name: 'ambit-agent' });
    // From the start: the first certificates may wait minutes for the CA, and a refused identity for ever.
    ignoreHangup(logger, 'certificates and bundles renew by themselves');
    stopOnUncaughtError(logger);
    const metrics = new Registry();
    const agent = new IdentityAgent({
      caUrl,
      trustDomain,
      nodeName: requireString(values.node, 'node'),
      bootstrapBundle,
      stateDir,
      joinToken,
      ttlSeconds: values.ttl ? parseTtlSeconds(values.ttl, 'ttl') : undefined,
      logger,
      metrics,
    });
    await makeDirs(out);
    // Serialise writes so an older rotation never lands after a newer one.
    let writing = Promise.resolve();
    // The first write that failed: --once must not exit 0 with files missing (the token spent for nothing).
    let writeFailure: AmbitError | undefined;
    const enqueue = (job: () => Promise<void>) => {
      writing = writing.then(job).catch((error: unknown) => {
        const failure = toAmbitError(error, 'FILE_WRITE');
        writeFailure ??= failure;
        logger.error({ err: failure.toJSON(), out }, 'cannot write SVID files');
      });
    };
    agent.on('rotated', (svid) => {
      if (svid.id.id !== agent.nodeId) enqueue(() => writeSvid(out, svid));
    });
    agent.on('bundles', (bundles) => enqueue(() => writeBundles(out, trustDomain, bundles)));
    // The agent's own timers do not hold the process (a proxy's servers do): without this handle, `ambit agent` exited 0
    // as soon as it was running, or while it backed off from a CA it could not reach, and renewed nothing.
    const alive = setInterval(() => {}, 2 ** 30);
    let lock: StateDirLock | undefined;
    let lostLock: AmbitError | undefined;
    // From before the start: a SIGTERM while the agent waits (for the state directory, for the CA) stops it and lets go
    // of the state directory, where the default action had left its lock behind.
    // ...or once another process has taken the lease (this one was stopped or stalled): it stops renewing at once.
    const lostLease = new AbortController();
    const stopping = AbortSignal.any([stopSignal(), lostLease.signal]);
    stopping.addEventListener('abort', () => void agent.stop(), { once: true });
    try {
      // One process per state directory (a proxy's or another agent's would renew the node SVID under this one), made
      // before the token is spent. --once fails at once, as it does when no CA answers: a script must not wait on a
      // running agent or proxy.
      lock = await StateDirLock.acquire(requireString(values['state-dir'], 'state-dir'), logger, { signal: stopping, wait: values.once !== true });
      void lock.lost.then((error) => {
        lostLock = error;
        lostLease.abort();
      });
      const code = await runAgent();
      if (lostLock !== undefined) throw lostLock;
      return code;
    } catch (error) {
      if (lostLock !== undefined) throw lostLock;
      // Stopped while it started (a SIGTERM during the wait for the CA or the directory): an orderly end.
      if (stopping.aborted) {
        logger.info('agent stopped before it had started');
        return 0;
      }
      throw error;
    } finally {
      clearInterval(alive);
      await lock?.release();
    }

    async function runAgent(): Promise<number> {
      try {
        await agent.start({ failFast: values.once === true });
        enqueue(() => writeBundles(out, trustDomain, agent.bundles()));
        // The node SVID stays in --state-dir: it lets its holder ask the CA for every identity placed on the node, and
        // --out is what workloads read. One written there by an earlier version is removed.
        enqueue(() => removeNodeSvidFiles(out, agent.nodeId, logger));
        await Promise.all(identities.map((id) => agent.ensure(id, { failFast: values.once === true })));
        await writing;
      } catch (error) {
        await agent.stop();
        throw error;
      }
      if (values.once) {
        await agent.stop();
        if (writeFailure !== undefined) throw new AmbitError('FILE_WRITE', `--out ${out}: ${writeFailure.message}`, { cause: writeFailure });
        return 0;
      }
      let metricsServer: { close(): Promise<void> } | null = null;
      if (metricsListen !== null) {
        // Serving before the agent says it runs: a scrape right after that line found nothing. An address it cannot
        // bind ends it, as it ends `ambit proxy`: an agent without the metrics it was asked for goes unwatched. The
        // proxy's hardened server (timeouts, connections per client): a plain one let idle clients take the
        // descriptors the agent writes its files with.
        try {
          metricsServer = await startMetricsServer(metricsListen, metrics, logger);
        } catch (error) {
          await agent.stop();
          throw new AmbitError('PROXY_BIND', `--metrics ${values.metrics}: cannot listen: ${(error as Error).message}`, { cause: error, hint: "another process holds the port, or the address is not one of this host's" });
        }
      }
      logger.info({ identities: agent.identities(), out }, 'agent running');
      await new Promise<void>((resolve) => {
        if (stopping.aborted) resolve();
        stopping.addEventListener('abort', () => resolve(), { once: true });
      });
      // Closed, or its listening socket would keep the process alive after SIGTERM until the kubelet's SIGKILL.
      await metricsServer?.close();
      await agent.stop();
      await writing;
      return 0;
    }
  },
};
