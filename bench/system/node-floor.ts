// The Node floor pair: two Node processes doing the least that carries a TCP connection over HBONE
// (bench/system/node-floor-proxy.ts), on the same Node, flags, TLS and HTTP/2 settings as ambit's proxies and the
// HAProxy pairs' certificates. A reference, not a product: where ambit trails HAProxy, this row says how much of
// the gap any Node process of this shape has, and how much is ambit's own work.
import { fileURLToPath } from 'node:url';
import { NODE_FLOOR, UPSTREAM } from './layout.ts';
import { SERVER_NAME } from './haproxy.ts';
import type { HaproxyCertificates } from './haproxy.ts';
import { waitForPort } from './processes.ts';
import type { Processes, Spawned } from './processes.ts';
import type { FloorClientConfig, FloorServerConfig } from './node-floor-proxy.ts';
import { LONG_RUNNING_NODE_FLAGS, longRunningEnv } from '../../src/cli/node-flags.ts';
import { formatAuthority } from '../../src/proxy/authority.ts';

const SCRIPT = fileURLToPath(new URL('./node-floor-proxy.ts', import.meta.url));

export interface NodeFloorPair {
  readonly client: Spawned;
  readonly server: Spawned;
  stop(): Promise<void>;
}

export async function startNodeFloorPair(processes: Processes, certs: HaproxyCertificates, nodeFlags: readonly string[]): Promise<NodeFloorPair> {
  const server: FloorServerConfig = { role: 'server', listen: { host: NODE_FLOOR.server, port: NODE_FLOOR.hbonePort }, caFile: certs.caFile, pemFile: certs.serverPem };
  const client: FloorClientConfig = {
    role: 'client',
    listeners: [
      { host: NODE_FLOOR.client, port: NODE_FLOOR.listen.web, authority: formatAuthority(UPSTREAM.webL4.host, UPSTREAM.webL4.port) },
      { host: NODE_FLOOR.client, port: NODE_FLOOR.listen.bulk, authority: formatAuthority(UPSTREAM.bulk.host, UPSTREAM.bulk.port) },
      { host: NODE_FLOOR.client, port: NODE_FLOOR.listen.hold, authority: formatAuthority(UPSTREAM.hold.host, UPSTREAM.hold.port) },
    ],
    server: { host: NODE_FLOOR.server, port: NODE_FLOOR.hbonePort, name: SERVER_NAME },
    caFile: certs.caFile,
    pemFile: certs.clientPem,
  };
  const started: Spawned[] = [];
  const stop = async () => {
    await Promise.all(started.map((spawned) => processes.stop(spawned)));
  };
  try {
    for (const config of [server, client]) {
      started.push(processes.spawn(`node-floor-${config.role}`, process.execPath, [...LONG_RUNNING_NODE_FLAGS, ...nodeFlags, SCRIPT, JSON.stringify(config)], { cpu: 'proxy', env: longRunningEnv(process.env) }));
    }
    const [serverProcess, clientProcess] = started as [Spawned, Spawned];
    await waitForPort(NODE_FLOOR.server, NODE_FLOOR.hbonePort, 15_000, () => processes.assertRunning(serverProcess));
    for (const port of Object.values(NODE_FLOOR.listen)) await waitForPort(NODE_FLOOR.client, port, 15_000, () => processes.assertRunning(clientProcess));
    return { client: clientProcess, server: serverProcess, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
