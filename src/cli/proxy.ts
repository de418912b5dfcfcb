// `ambit proxy`: the node proxy (a DaemonSet pod, or a service on a VM or bare-metal host).
import { joinTokenOption, parse, parseCaUrl, parseDurationMsAllowZero, parsePositiveCount, parseTtlSeconds, readBundleFlag, requireString } from './args.ts';
import type { Command } from './args.ts';
import type { AmbitError } from '../errors.ts';
import { stopOnUncaughtError } from './fatal.ts';
import { ignoreHangup, stopSignal } from './hangup.ts';
import { parseListen, parsePort } from './listen.ts';
import { validateTrustDomain } from '../identity/spiffe-id.ts';
import { createLogger } from '../observe/log.ts';
import { NodeProxy } from '../proxy/proxy.ts';
import { parseOutboundFlag } from '../proxy/outbound.ts';

const help = `usage: ambit proxy --node NAME --config DIR --ca URL --ca-bundle FILE --trust-domain TD
                   --state-dir DIR [--join-token TOKEN | --join-token-file FILE] [--outbound LISTEN_IP:PORT=HOST:PORT@[KIND:]NS/WORKLOAD ...]
                   [--metrics HOST:PORT] [--readiness HOST:PORT] [--admin 127.0.0.1:PORT]
                   [--hbone-listen HOST:PORT] [--hbone-port PORT] [--svid-ttl 1h] [--audit-log FILE]
                   [--drain-timeout 5s] [--max-workload-connections N] [--stream-window-budget MIB]

Runs the node proxy for the workloads the configuration places on node NAME:
  inbound   HBONE (HTTP/2 CONNECT over mutual TLS 1.3) on each local workload's IP, port 15008
            (the MeshConfig's ports.hbone), presenting that workload's SVID; --hbone-listen adds a
            shared listener for hosts that cannot bind workload IPs (a VM's node address)
  outbound  explicit listeners, from --outbound or the Pod or WorkloadEntry annotation
            ambit.dev/outbound: "[ADDRESS:]PORT=HOST:PORT,..." (ADDRESS defaults to the workload IP);
            the listener's owner is the source workload whose SVID the tunnel presents (an
            --outbound owner that names both a Pod and a WorkloadEntry on the node is refused unless
            the flag says which: @Pod:NS/NAME or @WorkloadEntry:NS/NAME)
            one workload carries at most N connections at once (--max-workload-connections; default a
            quarter of the open-files limit), and all of them together leave 1,024 descriptors of that
            limit to the proxy's sessions and servers: past either, new ones are refused (CONNECTION_LIMIT)
  windows   HBONE stream windows are 4 MiB, narrowed by halves (to 16 KiB) while the tunnels open across
            every session × window would exceed --stream-window-budget MiB (default 128): what tunnels to
            workloads that do not read can make the proxy hold, against what one tunnel moves per round trip
  metrics   Prometheus /metrics with Istio's names and labels (--metrics)
  readiness /healthz/ready: 200 once certificates are loaded and listeners bound, 503 naming what is
            pending or which certificate expired (--readiness); up before the first attestation
  admin     /config_dump and /logging on a loopback address only (--admin)
Identities: the node SVID comes from --join-token (or --join-token-file, which keeps the secret out of
the process list) the first time (retried while the CA is unreachable), then from --state-dir; every local
workload's SVID is obtained from the CA and rotated at half-life. The configuration directory is
watched: a valid change applies at once (and is recorded with its diff in --audit-log, default
STATE_DIR/audit.log), an invalid one is logged and the last good one stays.
SIGTERM or SIGINT drains, as ztunnel does: listeners close, every HBONE session is told GOAWAY, readiness
turns 503, and open connections have --drain-timeout (default 5s; 0 to stop at once) to finish before the
rest are cut (reset); a second SIGTERM or SIGINT cuts them at once, a third ends the process as it stands. SIGHUP is logged and ignored: the configuration is reloaded when its files change.
`;

/** A count flag: a whole number, at least one. */
/** ztunnel's default drain: open connections get this long to finish once the proxy is asked to stop. */
const DEFAULT_DRAIN_MS = 5_000;

export const command: Command = {
  summary: 'node proxy: HBONE inbound/outbound with SPIFFE mTLS, metrics, admin',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      node: { type: 'string' },
      config: { type: 'string' },
      ca: { type: 'string' },
      'ca-bundle': { type: 'string' },
      'trust-domain': { type: 'string' },
      'state-dir': { type: 'string' },
      'join-token': { type: 'string' },
      'join-token-file': { type: 'string' },
      outbound: { type: 'string', multiple: true },
      metrics: { type: 'string' },
      readiness: { type: 'string' },
      admin: { type: 'string' },
      'hbone-listen': { type: 'string' },
      'hbone-port': { type: 'string' },
      'svid-ttl': { type: 'string' },
      'audit-log': { type: 'string' },
      'drain-timeout': { type: 'string' },
      'max-workload-connections': { type: 'string' },
      'stream-window-budget': { type: 'string' },
    }, false);
    const caUrl = parseCaUrl(values.ca);
    const trustDomain = validateTrustDomain(requireString(values['trust-domain'], 'trust-domain'));
    const bundleFile = requireString(values['ca-bundle'], 'ca-bundle');
    const outbound = (values.outbound ?? []).map(parseOutboundFlag);
    const hbonePort = values['hbone-port'] === undefined ? undefined : parsePort(values['hbone-port'], 'hbone-port');
    // Every flag judged before anything is read or started; `--metrics ""` is a mistake to name, not a flag to drop.
    const metricsListen = values.metrics !== undefined ? parseListen(values.metrics, 'metrics') : undefined;
    const readinessListen = values.readiness !== undefined ? parseListen(values.readiness, 'readiness') : undefined;
    const adminListen = values.admin !== undefined ? parseListen(values.admin, 'admin') : undefined;
    const sharedHboneListen = values['hbone-listen'] !== undefined ? parseListen(values['hbone-listen'], 'hbone-listen') : undefined;
    const maxWorkloadConnections = values['max-workload-connections'] === undefined ? undefined : parsePositiveCount(values['max-workload-connections'], 'max-workload-connections');
    const streamWindowBudgetMiB = values['stream-window-budget'] === undefined ? undefined : parsePositiveCount(values['stream-window-budget'], 'stream-window-budget');
    const drainMs = values['drain-timeout'] !== undefined ? parseDurationMsAllowZero(values['drain-timeout'], 'drain-timeout') : DEFAULT_DRAIN_MS;
    const logger = createLogger({ name: 'ambit-proxy' });
    // From the start: the first attestation may wait minutes for the CA.
    ignoreHangup(logger, 'the configuration directory is watched and certificates renew by themselves');
    stopOnUncaughtError(logger);
    // From before the start: a SIGTERM while the start waits (for the CA, for the state directory) stops it and lets go
    // of the state directory, where the default action had left its lock behind.
    let proxy: NodeProxy | undefined;
    // A second one during the drain (an impatient Ctrl-C, a supervisor's repeat) cuts it short: what is open is cut now,
    // and the process still stops in order (its state directory let go), where the default action killed it at once.
    const stopping = stopSignal((signal) => {
      logger.warn({ signal }, 'asked again to stop: cutting the drain short');
      proxy?.cutDrainShort();
    });
    try {
      proxy = await NodeProxy.start({
        signal: stopping,
        nodeName: requireString(values.node, 'node'),
        configDir: requireString(values.config, 'config'),
        caUrl,
        caBundle: await readBundleFlag(bundleFile, trustDomain, 'ca-bundle'),
        stateDir: requireString(values['state-dir'], 'state-dir'),
        joinToken: await joinTokenOption(values['join-token'], values['join-token-file']),
        outbound,
        metricsListen,
        readinessListen,
        adminListen,
        sharedHboneListen,
        hbonePort,
        certificateTtlSeconds: values['svid-ttl'] ? parseTtlSeconds(values['svid-ttl'], 'svid-ttl') : undefined,
        auditLogFile: values['audit-log'],
        maxWorkloadConnections,
        streamWindowBudgetBytes: streamWindowBudgetMiB === undefined ? undefined : streamWindowBudgetMiB * 1024 * 1024,
        logger,
      });
    } catch (error) {
      if (!stopping.aborted) throw error;
      logger.info('proxy stopped before it had started');
      return 0;
    }
    const started = proxy;
    const observability = started.observability;
    logger.info({ metrics: observability?.metricsUrl, readiness: observability?.readinessUrl, admin: observability?.adminUrl, ready: started.readiness() }, 'proxy started');
    const lost = await new Promise<AmbitError | null>((resolve) => {
      if (stopping.aborted) resolve(null);
      stopping.addEventListener('abort', () => resolve(null), { once: true });
      void started.stateLockLost.then(resolve);
    });
    if (lost !== null) {
      // Another process renews the node's certificates now: this one stops at once, and says why.
      await started.close();
      throw lost;
    }
    logger.info('proxy shutting down');
    await started.close({ drainMs });
    return 0;
  },
};
