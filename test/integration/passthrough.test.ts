// Passthrough (a destination outside the mesh) through a real node proxy: an operator's --outbound may reach any
// address but the proxy's own ports on this host; a workload's own annotation may reach neither this host nor a
// link-local address, whether it names an address or a name that resolves to one. A refused destination is never
// connected to.
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, nodeIp, podYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';

const P = 67;
const NODE_ADDRESS = nodeIp(P, 0, 1); // node-a's own address: its admin, metrics and readiness bind here
const CLIENT_IP = nodeIp(P, 0, 20);
const OTHER_IP = nodeIp(P, 0, 21);
/** A workload added by configuration while the node runs, whose annotation points into the mesh. */
const ANNOTATED_IP = nodeIp(P, 0, 22);
/** A workload removed by configuration while one of its passthrough connections is open. */
const LEAVER_IP = nodeIp(P, 0, 23);
/** A second workload removed while its connection is half-closed, its server still talking. */
const HALF_LEAVER_IP = nodeIp(P, 0, 24);
/** A workload removed while its tunnel into the mesh is still being opened. */
const QUITTER_IP = nodeIp(P, 0, 25);
/** A workload on node-b (not running here): whatever listens on its HBONE port is the test's. */
const REMOTE_IP = nodeIp(P, 5, 20);
/** A server outside the mesh (no workload has its address). */
const EXTERNAL_IP = nodeIp(P, 5, 9);

let mesh: TestMesh;
let node: TestNode;
let external: Server;
let named: Server;
let externalConnections = 0;
let namedConnections = 0;
let externalPort = 0;
let namedPort = 0;
/** A server that writes to each connection until it is closed, and never ends its side by itself. */
let talker: Server;
let talkerPort = 0;
let talkersOpen = 0;

/** A connection through a passthrough listener, held open once its first bytes have come back; the error that ended it, if one did. */
async function echoingPassthrough(host: string, port: number): Promise<{ held: Socket; failure: () => NodeJS.ErrnoException | undefined }> {
  const held = connect({ host, port });
  let failure: NodeJS.ErrnoException | undefined;
  held.on('error', (error) => (failure = error));
  let echoed = '';
  held.on('data', (chunk: Buffer) => (echoed += chunk.toString()));
  held.write('before');
  await waitUntil('the passthrough echoing', () => echoed === 'before');
  return { held, failure: () => failure };
}

function echoServer(count: () => void): Server {
  return createServer({ allowHalfOpen: true }, (socket) => {
    count();
    // A connection the proxy cuts (its workload left, a policy withdrew it) is reset.
    socket.on('error', () => {});
    socket.pipe(socket);
  });
}

async function listen(server: Server, host: string): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return (server.address() as { port: number }).port;
}

beforeAll(async () => {
  external = echoServer(() => externalConnections++);
  externalPort = await listen(external, EXTERNAL_IP);
  // `localhost` names this one (127.0.0.1); a name is judged by what it resolves to.
  named = echoServer(() => namedConnections++);
  namedPort = await listen(named, '127.0.0.1');
  talker = createServer({ allowHalfOpen: true }, (socket) => {
    talkersOpen++;
    socket.on('error', () => {});
    socket.resume();
    const timer = setInterval(() => socket.write(Buffer.alloc(1024, 't')), 20);
    socket.once('close', () => {
      clearInterval(timer);
      talkersOpen--;
    });
  });
  talkerPort = await listen(talker, EXTERNAL_IP);
  const annotation = [
    `9201=${NODE_ADDRESS}:15000`, // the proxy's admin
    `9202=${EXTERNAL_IP}:${externalPort}`, // another service on this host's loopback
    `9203=localhost:${namedPort}`,
    '9204=169.254.169.254:80', // a cloud's metadata service
    `9205=[::ffff:${EXTERNAL_IP}]:${externalPort}`, // the same host address, IPv4-mapped
  ].join(',');
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a'],
    config: {
      'workloads.yaml': yamlDocuments(
        podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: annotation }),
        // Another workload whose listener points at client-1's: through HBONE it would leave with client-1's identity.
        podYaml({ name: 'other-1', node: 'node-a', serviceAccount: 'other', ip: OTHER_IP, outbound: `9401=${CLIENT_IP}:9301` }),
      ),
      'leaver.yaml': podYaml({ name: 'leaver-1', node: 'node-a', serviceAccount: 'leaver', ip: LEAVER_IP }),
      'half-leaver.yaml': podYaml({ name: 'leaver-2', node: 'node-a', serviceAccount: 'leaver', ip: HALF_LEAVER_IP }),
      'quitter.yaml': podYaml({ name: 'quitter-1', node: 'node-a', serviceAccount: 'quitter', ip: QUITTER_IP }),
      'remote.yaml': podYaml({ name: 'remote-1', node: 'node-b', serviceAccount: 'remote', ip: REMOTE_IP }),
    },
    extraProxyArgs: () => [
      '--outbound', `${CLIENT_IP}:9301=${EXTERNAL_IP}:${externalPort}@demo/client-1`,
      '--outbound', `${CLIENT_IP}:9302=${NODE_ADDRESS}:15000@demo/client-1`,
      '--outbound', `${CLIENT_IP}:9303=localhost:${namedPort}@demo/client-1`,
      '--outbound', `${CLIENT_IP}:9304=${NODE_ADDRESS}:15008@demo/client-1`,
      '--outbound', `${CLIENT_IP}:9305=${CLIENT_IP}:9305@demo/client-1`, // the listener itself, through HBONE
      '--outbound', `${CLIENT_IP}:9306=db.static.invalid:5432@demo/client-1`, // a name DNS cannot answer
      '--outbound', `${LEAVER_IP}:9310=${EXTERNAL_IP}:${externalPort}@demo/leaver-1`,
      '--outbound', `${HALF_LEAVER_IP}:9311=${EXTERNAL_IP}:${talkerPort}@demo/leaver-2`,
      '--outbound', `${QUITTER_IP}:9312=${REMOTE_IP}:7000@demo/quitter-1`,
      // A shared HBONE listener besides the configuration's 15008: its port is the proxy's too.
      '--hbone-listen', `${NODE_ADDRESS}:15118`,
      '--outbound', `${CLIENT_IP}:9307=${NODE_ADDRESS}:15118@demo/client-1`,
    ],
  });
  node = mesh.nodes.get('node-a') as TestNode;
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  await new Promise((resolve) => external?.close(resolve));
  await new Promise((resolve) => named?.close(resolve));
  talker?.close();
});

/** Sends `payload` through the listener on `port`, half-closes, and returns what came back before the close. */
function exchange(port: number, payload: string, host = CLIENT_IP): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'ECONNRESET' && error.code !== 'EPIPE') reject(error);
    });
    socket.on('close', () => resolve(received));
    socket.on('connect', () => socket.end(payload));
  });
}

async function refusedWith(port: number, reason: RegExp): Promise<void> {
  const before = node.proc.lines.length;
  expect(await exchange(port, 'GET /config_dump HTTP/1.1\r\nHost: admin\r\n\r\n')).toBe('');
  // Its access line, as every connection's (the warning beside it keeps to a budget other tests may have spent).
  await waitUntil(`the access line of listener ${port}'s refusal`, () => node.proc.lines.slice(before).some((line) => line.msg === 'access' && line.error_code === 'DESTINATION_REFUSED' && line.response_flags === 'DENY' && reason.test(String(line.error))));
}

describe("an operator's --outbound passthrough", () => {
  it('reaches a server outside the mesh on this host, bytes intact', async () => {
    const before = externalConnections;
    expect(await exchange(9301, 'hello outside')).toBe('hello outside');
    expect(externalConnections).toBe(before + 1);
  });

  it('keeps its upstream connection under TCP keepalive, and counts it without a source principal (no TLS, as ztunnel)', async () => {
    const before = externalConnections;
    const held = connect({ host: CLIENT_IP, port: 9301 });
    held.on('error', () => {});
    try {
      await waitUntil('the passthrough connection reaching the server', () => externalConnections > before);
      // /proc/net/tcp: the proxy's socket to EXTERNAL_IP:externalPort, its timer 2 (keepalive) while idle.
      const remote = `${EXTERNAL_IP.split('.').map((part) => Number(part).toString(16).toUpperCase().padStart(2, '0')).reverse().join('')}:${externalPort.toString(16).toUpperCase().padStart(4, '0')}`;
      const established = async () => (await readFile('/proc/net/tcp', 'utf8')).split('\n').map((line) => line.trim().split(/\s+/)).filter((fields) => fields[2] === remote && fields[3] === '01');
      // The proxy turns keepalive on in its 'connect' handler, which may run a moment after the server accepted.
      await waitUntil('keepalive on the proxy\'s upstream socket', async () => {
        const rows = await established();
        return rows.length > 0 && rows.every((fields) => fields[5]?.split(':')[0] === '02');
      }, 5_000);
      await waitUntil('the passthrough counted as opened', async () => (await metricSum(node, 'istio_tcp_connections_opened_total', { reporter: 'source', connection_security_policy: 'unknown', destination_workload: 'unknown' })) > 0);
      expect(await metricSum(node, 'istio_tcp_connections_opened_total', { reporter: 'source', connection_security_policy: 'unknown', destination_workload: 'unknown', source_principal: 'unknown' })).toBe(await metricSum(node, 'istio_tcp_connections_opened_total', { reporter: 'source', connection_security_policy: 'unknown', destination_workload: 'unknown' }));
    } finally {
      held.destroy();
    }
  });

  it('is reset when its workload leaves the node, rather than go on under the identity of a workload that is gone', async () => {
    const { held, failure } = await echoingPassthrough(LEAVER_IP, 9310);
    try {
      const since = node.proc.lines.length;
      await rm(join(mesh.configDir, 'leaver.yaml'));
      await waitUntil('the departed workload\'s connection closed', () => held.closed, 10_000);
      // A reset, not a FIN: an application still there must not take what it got for the whole of it.
      expect(failure()?.code).toBe('ECONNRESET');
      // Its log lines come through the proxy's stdout, which may trail the socket's close.
      await waitUntil('the closing logged', () => node.proc.lines.slice(since).some((line) => line.msg === 'closed outbound connections of workloads no longer on this node' && line.closed === 1));
      await waitUntil('its access line, saying why', () => node.proc.lines.slice(since).some((line) => line.msg === 'access' && line.error_code === 'SOURCE_DEPARTED' && line['src.workload'] === 'leaver-1'));
    } finally {
      held.destroy();
    }
  });

  it("says a tunnel let go while it was being opened was closed because its workload left, not what the open met afterwards", async () => {
    // node-b's HBONE port takes the connection and answers nothing until told.
    const held: Socket[] = [];
    const hbone = createServer((socket) => {
      socket.on('error', () => {});
      held.push(socket);
    });
    await new Promise<void>((resolve) => hbone.listen(15008, REMOTE_IP, resolve));
    const app = connect({ host: QUITTER_IP, port: 9312 });
    app.on('error', () => {});
    try {
      app.write('waiting');
      await waitUntil('the tunnel being opened', () => held.length > 0, 10_000);
      const since = node.proc.lines.length;
      await rm(join(mesh.configDir, 'quitter.yaml'));
      await waitUntil("the departed workload's connection closed", () => app.closed, 10_000);
      // Now the open fails (the handshake cut): the access line still says why the connection went.
      for (const socket of held) socket.destroy();
      const accessLine = () => node.proc.lines.slice(since).find((candidate) => candidate.msg === 'access' && candidate['src.workload'] === 'quitter-1');
      await waitUntil('its access line', () => accessLine() !== undefined, 15_000);
      expect(accessLine()?.error_code).toBe('SOURCE_DEPARTED');
    } finally {
      app.destroy();
      hbone.close();
      for (const socket of held) socket.destroy();
    }
  });

  it('closes its upstream too when its workload leaves the node after half-closing, rather than keep it open forever', async () => {
    const held = connect({ host: HALF_LEAVER_IP, port: 9311 });
    held.on('error', () => {});
    held.resume();
    try {
      await waitUntil('the talking server connected', () => talkersOpen === 1);
      held.end();
      await new Promise((resolve) => setTimeout(resolve, 200));
      // Half-closed is not closed: the server goes on talking.
      expect(talkersOpen).toBe(1);
      await rm(join(mesh.configDir, 'half-leaver.yaml'));
      await waitUntil('the upstream connection closed with it', () => talkersOpen === 0, 10_000);
    } finally {
      held.destroy();
    }
  });

  it('reaches a name that resolves to this host, its access line naming the address it reached', async () => {
    const before = namedConnections;
    const since = node.proc.lines.length;
    expect(await exchange(9303, 'by name')).toBe('by name');
    expect(namedConnections).toBe(before + 1);
    // Which of the name's addresses answered: the line had only the name (forensics of an egress by name).
    await waitUntil('its access line', () => node.proc.lines.slice(since).some((line) => line.msg === 'access' && line['dst.addr'] === `localhost:${namedPort}`), 5_000);
    const access = node.proc.lines.slice(since).find((line) => line.msg === 'access' && line['dst.addr'] === `localhost:${namedPort}`);
    expect(access?.upstream_host).toMatch(new RegExp(`^(127\\.0\\.0\\.1|\\[::1\\]):${namedPort}$`));
  });

  it("is refused into the proxy's own admin port (a loop)", async () => {
    await refusedWith(9302, /proxy's own port/);
  });

  it("is refused into the proxy's HBONE port on this host (a loop)", async () => {
    await refusedWith(9304, /proxy's own port/);
  });

  it("is refused into the port of the proxy's shared HBONE listener (--hbone-listen)", async () => {
    await refusedWith(9307, /proxy's own port/);
  });

});

describe("a workload annotation's passthrough", () => {
  it("is refused into the proxy's admin", async () => {
    await refusedWith(9201, /proxy's own port/);
  });

  it("is refused into another service on this host, however the address is spelled, without connecting to it", async () => {
    const before = externalConnections;
    await refusedWith(9202, /is this host/);
    await refusedWith(9205, /is this host/);
    expect(externalConnections).toBe(before);
  });

  it('is refused into a name that resolves to this host, without connecting to it', async () => {
    const before = namedConnections;
    await refusedWith(9203, /localhost resolves only to refused addresses/);
    expect(namedConnections).toBe(before);
  });

  it('is refused into a link-local address (a cloud metadata service)', async () => {
    await refusedWith(9204, /link-local/);
  });

  it('warns of connections refused one after another 20 times in 10 s, with an access line for every one', async () => {
    const before = node.proc.lines.length;
    await Promise.all(Array.from({ length: 40 }, () => exchange(9204, 'x')));
    await waitUntil('40 access lines', () => node.proc.lines.slice(before).filter((line) => line.msg === 'access' && line.error_code === 'DESTINATION_REFUSED').length === 40);
    const warned = node.proc.lines.slice(before).filter((line) => line.msg === 'outbound connection refused' && line.level === 40);
    expect(warned.length).toBeLessThanOrEqual(20);
  });

  it("is refused as plain TCP into an address in the mesh: a Service's cluster IP on a port it does not have", async () => {
    const accepted = () => node.proc.lines.filter((line) => line.msg === 'configuration accepted').length;
    const seen = accepted();
    // A Service's address is routed over HBONE by its ports; another port of it is no way around HBONE and policy.
    await mesh.writeConfig('vip.yaml', yamlDocuments(
      `apiVersion: v1\nkind: Service\nmetadata: { name: vip, namespace: demo }\nspec: { clusterIP: 10.255.0.1, selector: { app: nothing }, ports: [{ name: http, port: 80, targetPort: 8080 }] }\n`,
      podYaml({ name: 'annotated-1', node: 'node-a', serviceAccount: 'annotated', ip: ANNOTATED_IP, outbound: '9451=10.255.0.1:81' }),
    ));
    try {
      await waitUntil('node-a accepts vip.yaml', () => accepted() > seen, 10_000);
      await waitUntil('the annotated listener', () => new Promise<boolean>((resolve) => {
        const probe = connect({ host: ANNOTATED_IP, port: 9451 });
        probe.on('connect', () => resolve(true)).on('error', () => resolve(false));
        probe.on('connect', () => probe.destroy());
      }), 10_000);
      const before = node.proc.lines.length;
      expect(await exchange(9451, 'into the mesh', ANNOTATED_IP)).toBe('');
      // Refused as its name would be: the Service has no such port.
      await waitUntil('the refusal', () => node.proc.lines.slice(before).some((line) => line.msg === 'access' && line.error_code === 'SERVICE_PORT_UNKNOWN' && /10\.255\.0\.1 is an address of Service vip\.demo\.svc\.cluster\.local, which has no TCP port 81 \(its ports: 80\)/.test(String(line.error))));
    } finally {
      const reset = accepted();
      await mesh.writeConfig('vip.yaml', '# none\n');
      await waitUntil('node-a accepts the reset', () => accepted() > reset, 10_000);
    }
  });
});

describe("a CONNECT to one of the proxy's own outbound listeners", () => {
  async function refusedInbound(port: number, host: string): Promise<void> {
    const before = node.proc.lines.length;
    expect(await exchange(port, 'anything', host)).toBe('');
    await waitUntil(`the inbound refusal behind listener ${port}`, () => node.proc.lines.slice(before).some((line) => line.msg === 'HBONE CONNECT refused' && /belongs to the proxy itself/.test(String(line.reason))));
  }

  it('is refused: a listener pointing at itself does not loop', async () => {
    await refusedInbound(9305, CLIENT_IP);
  });

  it("is refused: another workload cannot leave through it with the listener owner's identity", async () => {
    const before = externalConnections;
    await refusedInbound(9401, OTHER_IP);
    expect(externalConnections).toBe(before);
  });
});

describe('passthrough under egress REGISTRY_ONLY', () => {
  const accepted = () => node.proc.lines.filter((line) => line.msg === 'configuration accepted').length;
  async function apply(file: string, yaml: string): Promise<void> {
    const seen = accepted();
    await mesh.writeConfig(file, yaml);
    await waitUntil(`node-a accepts ${file}`, () => accepted() > seen, 10_000);
  }
  const entry = (exportTo: string) => `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: outside, namespace: demo }
spec:
  hosts: [outside.example]
  addresses: ["${EXTERNAL_IP}"]
  ports: [{ number: ${externalPort}, name: tcp, protocol: TCP }]
  exportTo: [${exportTo}]
`;

  it('reaches a destination outside the mesh only while a ServiceEntry exported to the workload names it', async () => {
    try {
      await apply('mesh.yaml', 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n  egress: { mode: REGISTRY_ONLY }\n');
      const before = node.proc.lines.length;
      expect(await exchange(9301, 'locked')).toBe('');
      await waitUntil('the EGRESS_BLOCKED refusal', () => node.proc.lines.slice(before).some((line) => line.msg === 'access' && line.error_code === 'EGRESS_BLOCKED'));
      await waitUntil('its access line', () => node.proc.lines.slice(before).some((line) => line.msg === 'access' && line.error_code === 'EGRESS_BLOCKED' && line.response_flags === 'DENY'));
      // Exported only to another namespace: still refused.
      await apply('entry.yaml', entry('"billing"'));
      expect(await exchange(9301, 'still locked')).toBe('');
      const connections = externalConnections;
      await apply('entry.yaml', entry('"."'));
      expect(await exchange(9301, 'registered')).toBe('registered');
      expect(externalConnections).toBe(connections + 1);
      // Counted under the entry that let it out: a managed database told apart from any other passthrough.
      expect(await metricSum(node, 'istio_tcp_connections_opened_total', { reporter: 'source', destination_service: 'outside.example', destination_service_name: 'outside', destination_service_namespace: 'demo' })).toBe(1);
    } finally {
      await apply('entry.yaml', '# none\n');
      await apply('mesh.yaml', 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n');
    }
  });
});

describe('an open passthrough connection when egress is locked down', () => {
  it('is reset when REGISTRY_ONLY comes into force, as new ones are refused, its access line saying why', async () => {
    const accepted = () => node.proc.lines.filter((line) => line.msg === 'configuration accepted').length;
    const { held, failure } = await echoingPassthrough(CLIENT_IP, 9301);
    try {
      const since = node.proc.lines.length;
      const seen = accepted();
      await mesh.writeConfig('mesh.yaml', 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n  egress: { mode: REGISTRY_ONLY }\n');
      await waitUntil('node-a accepts REGISTRY_ONLY', () => accepted() > seen, 10_000);
      await waitUntil('the passthrough connection closed', () => held.closed, 10_000);
      expect(failure()?.code).toBe('ECONNRESET');
      await waitUntil('its access line', () => node.proc.lines.slice(since).some((line) => line.msg === 'access' && line.error_code === 'EGRESS_BLOCKED' && String(line.error).startsWith('closed by a configuration change')));
      expect(node.proc.lines.slice(since).some((line) => line.msg === 'closed passthrough connections the new configuration no longer lets out as plain TCP')).toBe(true);
    } finally {
      held.destroy();
      const seen = accepted();
      await mesh.writeConfig('mesh.yaml', 'apiVersion: ambit.dev/v1alpha1\nkind: MeshConfig\nmetadata: { name: mesh }\nspec:\n  trustDomain: cluster.local\n');
      await waitUntil('node-a accepts the mesh back', () => accepted() > seen, 10_000);
    }
  });
});

describe('an open passthrough connection whose destination joins the mesh', () => {
  it('is reset, its access line saying why: the address is reached over HBONE and its policy now, not as plain TCP', async () => {
    const accepted = () => node.proc.lines.filter((line) => line.msg === 'configuration accepted').length;
    const { held, failure } = await echoingPassthrough(CLIENT_IP, 9301);
    try {
      const since = node.proc.lines.length;
      const seen = accepted();
      // A workload at the address the connection goes to (a VM brought into the mesh).
      await mesh.writeConfig('joined.yaml', podYaml({ name: 'joined-1', node: 'node-b', serviceAccount: 'joined', ip: EXTERNAL_IP }));
      await waitUntil('node-a accepts joined.yaml', () => accepted() > seen, 10_000);
      await waitUntil('the passthrough connection closed', () => held.closed, 10_000);
      expect(failure()?.code).toBe('ECONNRESET');
      await waitUntil('its access line', () => node.proc.lines.slice(since).some((line) => line.msg === 'access' && line.error_code === 'POLICY_REVOKED' && String(line.error).includes(`${EXTERNAL_IP}:${externalPort}, reached at ${EXTERNAL_IP}, is the IP of Pod demo/joined-1 now`)));
    } finally {
      held.destroy();
      const seen = accepted();
      await mesh.writeConfig('joined.yaml', '# none\n');
      await waitUntil('node-a accepts its removal', () => accepted() > seen, 10_000);
    }
  });
});

describe('a ServiceEntry outside the mesh with endpoints', () => {
  const accepted = () => node.proc.lines.filter((line) => line.msg === 'configuration accepted').length;

  /**
   * With an entry for db.static.invalid (which the operator's listener 9306 dials) whose one endpoint is `address`,
   * a connection through 9306 is refused at `target`, named in the log, and nothing connects to it.
   */
  async function expectEndpointRefused(resolution: 'STATIC' | 'DNS', address: string, port: number, target: string, connections: () => number): Promise<void> {
    const seen = accepted();
    await mesh.writeConfig('static.yaml', `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: db, namespace: demo }
spec:
  hosts: [db.static.invalid]
  ports: [{ number: 5432, name: tcp-pg, protocol: TCP }]
  resolution: ${resolution}
  endpoints: [{ address: "${address}", ports: { tcp-pg: ${port} } }]
`);
    try {
      await waitUntil('node-a accepts static.yaml', () => accepted() > seen, 10_000);
      const before = connections();
      const lines = node.proc.lines.length;
      expect(await exchange(9306, 'to the endpoint')).toBe('');
      // The refusal names the entry's endpoint on the endpoint's port: the entry, not DNS, chose it.
      await waitUntil('the refusal of the endpoint', () => node.proc.lines.slice(lines).some((line) => line.msg === 'access' && line.error_code === 'DESTINATION_REFUSED' && line['dst.addr'] === target));
      expect(connections()).toBe(before);
    } finally {
      const reset = accepted();
      await mesh.writeConfig('static.yaml', '# none\n');
      await waitUntil('node-a accepts the reset', () => accepted() > reset, 10_000);
    }
  }

  it("sends its host to its endpoint, judged as a workload's choice: an endpoint on this host is refused, never dialled", async () => {
    // Without the entry the name resolves to nothing (.invalid, RFC 6761): the connection fails.
    expect(await exchange(9306, 'unresolved')).toBe('');
    // The operator's listener may reach this host's loopback; an entry, which any namespace's configuration may
    // hold, must not turn that into a way to this host's own services.
    await expectEndpointRefused('STATIC', EXTERNAL_IP, externalPort, `${EXTERNAL_IP}:${externalPort}`, () => externalConnections);
  });

  it("sends a DNS entry's host to its endpoint's name, judged by what that resolves to: localhost is refused, never dialled", async () => {
    await expectEndpointRefused('DNS', 'localhost', namedPort, `localhost:${namedPort}`, () => namedConnections);
  });
});
