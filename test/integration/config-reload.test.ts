// Configuration hot reload on a running two-node mesh, with a long-lived tunnel open throughout: an invalid
// change is refused and the last good snapshot keeps serving; a valid one takes effect without dropping
// open tunnels; the CA's audit log records what changed.
import { once } from 'node:events';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEchoServer } from '../helpers/hbone.ts';
import type { EchoServer } from '../helpers/hbone.ts';
import { metricSum, nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';
import type { LogLine } from '../helpers/process.ts';

const P = 64;
const CLIENT_IP = nodeIp(P, 0, 20);
const ECHO_1_IP = nodeIp(P, 1, 10);
const ECHO_2_IP = nodeIp(P, 1, 11);
// Workloads of the listener-removal scenarios, each in a file of its own so that adding and removing them
// is a file created or deleted, never a file replaced (see the watcher scenario at the end).
const CLIENT_4_IP = nodeIp(P, 0, 24);
const ECHO_4_IP = nodeIp(P, 1, 14);
const ECHO_5_IP = nodeIp(P, 1, 15);
const CLIENT_6_IP = nodeIp(P, 0, 26);
const CLIENT_7_IP = nodeIp(P, 0, 27);
const CLIENT_8_IP = nodeIp(P, 0, 28);
const ECHO_8_IP = nodeIp(P, 1, 18);
const ECHO_PORT = 7000;
const REJECTED = 'configuration change rejected; the last good configuration stays in force';

function workloads(options: { clientListeners: string; secondEcho: boolean }): string {
  const documents = [
    podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: options.clientListeners }),
    podYaml({ name: 'echo-1', node: 'node-b', serviceAccount: 'echo', ip: ECHO_1_IP, labels: { app: 'echo' } }),
    serviceYaml({ name: 'echo', selector: { app: 'echo' }, ports: [{ name: 'tcp', port: 7, targetPort: ECHO_PORT }] }),
  ];
  if (options.secondEcho) documents.push(podYaml({ name: 'echo-2', node: 'node-b', serviceAccount: 'echo-v2', ip: ECHO_2_IP, labels: { app: 'echo' } }));
  return yamlDocuments(...documents);
}

/** An application connection kept open across configuration changes, echoing line by line. */
class OpenTunnel {
  readonly socket: Socket;
  #received = '';

  private constructor(socket: Socket) {
    this.socket = socket;
    // A connection the proxy cuts (its listener removed) is reset: that is expected, not a test failure.
    socket.on('error', () => {});
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (this.#received += chunk));
  }

  static async open(host: string, port: number): Promise<OpenTunnel> {
    const socket = connect({ host, port });
    await once(socket, 'connect');
    return new OpenTunnel(socket);
  }

  /** Writes a line and waits for the same line to come back. */
  async echo(line: string): Promise<void> {
    const start = this.#received.length;
    this.socket.write(`${line}\n`);
    await waitUntil(`"${line}" echoed through the open tunnel`, () => {
      if (this.socket.destroyed) throw new Error('the open tunnel was closed');
      return this.#received.slice(start).includes(`${line}\n`);
    }, 5_000);
  }
}

/** One short connection through an outbound listener: sends, half-closes, resolves with what came back. */
function roundTrip(port: number, payload: string, host = CLIENT_IP): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let received = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (received += chunk));
    socket.on('error', () => {});
    socket.on('close', () => resolve(received));
    socket.on('connect', () => socket.end(payload));
  });
}

function logLinesAfter(node: TestNode, mark: number, predicate: (line: LogLine) => boolean): LogLine[] {
  return node.proc.lines.slice(mark).filter(predicate);
}

function podFile(name: string, node: string, ip: string, outbound?: string): string {
  return podYaml({ name, node, serviceAccount: node === 'node-a' ? 'client' : 'echo', ip, outbound });
}

/** Resolves once `node` has logged `count` more 'configuration accepted' lines than at `mark`. */
function accepted(node: TestNode, mark: number, count = 1, timeoutMs = 10_000): Promise<void> {
  return waitUntil(`${node.name} accepts change ${count}`, () => logLinesAfter(node, mark, (line) => line.msg === 'configuration accepted').length >= count, timeoutMs);
}

function bound(node: TestNode, mark: number, kind: 'inbound' | 'outbound', prefix: string): boolean {
  return logLinesAfter(node, mark, (line) => line.msg === 'listeners bound' && ((line[kind] as string[] | undefined) ?? []).some((name) => name.startsWith(prefix))).length > 0;
}

interface ErrorDetail {
  code: string;
  file?: string;
  object?: string;
  field?: string;
}

/** Waits until every proxy logs the rejection of a change in `file` (after its log position `marks`). */
async function expectRejectedEverywhere(nodes: TestNode[], marks: number[], file: string, code: string): Promise<void> {
  await Promise.all(
    nodes.map(async (node, index) => {
      const mark = marks[index] as number;
      await waitUntil(`${node.name} rejects ${file}`, () => logLinesAfter(node, mark, (line) => line.msg === REJECTED).length > 0, 10_000);
      const [line] = logLinesAfter(node, mark, (candidate) => candidate.msg === REJECTED);
      const err = line?.err as { code: string; message: string; details: ErrorDetail[] };
      expect(err.code).toBe(code);
      expect(err.details).toContainEqual(expect.objectContaining({ code, file }));
      expect(err.message).toContain(file);
    }),
  );
}

let mesh: TestMesh;
let echo1: EchoServer;
let echo2: EchoServer;
let echo4: EchoServer;
let nodeA: TestNode;
let nodeB: TestNode;
let tunnel: OpenTunnel;
/** Opened by the outbound listener-removal scenario; closed before shutdown, which would otherwise wait on it. */
let removedListenerTunnel: OpenTunnel | undefined;
let auditFile: string;
/** Audit lines written before the tests change anything (node attestations, SVIDs, ...). */
let auditLinesAtStart: number;

async function auditLines(): Promise<string[]> {
  return (await readFile(auditFile, 'utf8').catch(() => '')).split('\n').filter(Boolean);
}

beforeAll(async () => {
  echo1 = await startEchoServer(ECHO_1_IP, ECHO_PORT);
  echo2 = await startEchoServer(ECHO_2_IP, ECHO_PORT);
  echo4 = await startEchoServer(ECHO_4_IP, ECHO_PORT);
  mesh = await startTestMesh({ prefix: P, nodes: ['node-a', 'node-b'], config: { 'workloads.yaml': workloads({ clientListeners: '9007=echo.demo:7', secondEcho: false }) } });
  nodeA = mesh.nodes.get('node-a')!;
  nodeB = mesh.nodes.get('node-b')!;
  tunnel = await OpenTunnel.open(CLIENT_IP, 9007);
  await tunnel.echo('hello before any change');
  auditFile = join(mesh.caDir, 'audit.log');
  auditLinesAtStart = (await auditLines()).length;
}, 60_000);

afterAll(async () => {
  tunnel?.socket.destroy();
  removedListenerTunnel?.socket.destroy();
  await mesh?.stop();
  await Promise.all([echo1?.close(), echo2?.close(), echo4?.close()]);
});

describe('an invalid configuration change', () => {
  const cases: Array<[string, string, string, string]> = [
    ['a file that is not YAML', 'broken.yaml', 'apiVersion: v1\nkind: Pod\nmetadata: { name: [unclosed\n', 'CONFIG_YAML'],
    [
      'a Pod with an IP that is not an IP',
      'bad-ip.yaml',
      'apiVersion: v1\nkind: Pod\nmetadata: { name: bad-ip, namespace: demo }\nspec: { nodeName: node-b, serviceAccountName: echo }\nstatus: { phase: Running, podIP: 10.0.0.300 }\n',
      'CONFIG_FIELD',
    ],
  ];

  it.each(cases)('(%s) is rejected by every proxy with its code and file, and the last good snapshot keeps serving', async (_, file, yaml, code) => {
    const nodes = [nodeA, nodeB];
    const marks = nodes.map((node) => node.proc.lines.length);
    const caMark = mesh.ca.lines.length;
    const rejectedBefore = await Promise.all(nodes.map((node) => metricSum(node, 'ambit_config_reloads_total', { result: 'rejected' })));
    const acceptedBefore = await Promise.all(nodes.map((node) => metricSum(node, 'ambit_config_reloads_total', { result: 'accepted' })));
    const connectionsBefore = echo1.connections;

    await mesh.writeConfig(file, yaml);
    await expectRejectedEverywhere(nodes, marks, file, code);
    // The CA refuses it too: it must not authorize identities from a configuration the proxies refused.
    await waitUntil('the CA rejects the change', () => mesh.ca.lines.slice(caMark).some((line) => line.msg === REJECTED && (line.err as { code?: string } | undefined)?.code === code), 10_000);
    for (const [index, node] of nodes.entries()) {
      expect(await metricSum(node, 'ambit_config_reloads_total', { result: 'rejected' })).toBeGreaterThan(rejectedBefore[index] as number);
      expect(await metricSum(node, 'ambit_config_reloads_total', { result: 'accepted' })).toBe(acceptedBefore[index]);
    }
    // The previous snapshot still serves: the open tunnel echoes and a new connection gets through.
    await tunnel.echo(`still here after ${file}`);
    expect(await roundTrip(9007, `new connection after ${file}`)).toBe(`new connection after ${file}`);
    expect(echo1.connections).toBe(connectionsBefore + 1);
    // The admin dump says the directory holds a refused change, until it is gone: then each proxy says so too.
    const rejected = async (node: TestNode) => ((await (await fetch(`${node.adminUrl}/config_dump`)).json()) as { configurationRejected: { error: { code: string } } | null }).configurationRejected;
    for (const node of nodes) expect((await rejected(node))?.error.code).toBe(code);
    const settledMarks = nodes.map((node) => node.proc.lines.length);
    await rm(join(mesh.configDir, file));
    for (const [index, node] of nodes.entries()) {
      await waitUntil(`${node.name} says the rejected change is gone`, () => node.proc.lines.slice(settledMarks[index]).some((line) => line.msg === 'the configuration directory holds what is in force again: the rejected change is gone'), 10_000);
      expect(await rejected(node)).toBeNull();
    }
  });
});

describe('a valid configuration change', () => {
  it('takes effect (new listener, new endpoint) without dropping the open tunnel, and the CA audits it', async () => {
    const marks = { a: nodeA.proc.lines.length, b: nodeB.proc.lines.length };
    // A replaced file: this relies on the watcher noticing the temporary file writeConfig renames from
    // (see the watcher scenario at the end); a timeout below on every node at once points there.
    await mesh.writeConfig('workloads.yaml', workloads({ clientListeners: '9007=echo.demo:7,9008=echo.demo:7', secondEcho: true }));

    // node-b serves echo-2 once the CA (which reloads the same directory) has signed its new identity.
    await waitUntil('node-b binds echo-2\'s HBONE listener', () => bound(nodeB, marks.b, 'inbound', `${ECHO_2_IP}:15008`), 15_000);
    await waitUntil('node-a binds the new outbound listener', () => bound(nodeA, marks.a, 'outbound', `${CLIENT_IP}:9008=`), 10_000);
    for (const node of [nodeA, nodeB]) expect(logLinesAfter(node, marks[node === nodeA ? 'a' : 'b'], (line) => line.msg === 'configuration accepted')).toHaveLength(1);

    // The open tunnel, set up before the change, still carries bytes.
    await tunnel.echo('still here after a valid change');

    // The new listener accepts, and the Service's new endpoint receives traffic (random pick over two).
    const before = { echo1: echo1.connections, echo2: echo2.connections };
    for (let i = 0; i < 24; i++) expect(await roundTrip(9008, `via the new listener ${i}`)).toBe(`via the new listener ${i}`);
    expect(echo2.connections - before.echo2).toBeGreaterThan(0);
    expect(echo1.connections - before.echo1).toBeGreaterThan(0);
    expect(echo1.connections - before.echo1 + echo2.connections - before.echo2).toBe(24);
    // The listener that did not change was not rebound: it is not among those bound after the change.
    expect(bound(nodeA, marks.a, 'outbound', `${CLIENT_IP}:9007=`)).toBe(false);
    await tunnel.echo('and still here after new traffic');

    // The CA's audit log: one config_change record since the mesh started, naming what was added and
    // changed; none for the rejected changes (removing their files left the content as it was).
    let records: Array<Record<string, unknown>> = [];
    await waitUntil('the CA audits the change', async () => {
      records = (await auditLines()).slice(auditLinesAtStart).map((line) => JSON.parse(line) as Record<string, unknown>).filter((record) => record.event === 'config_change');
      return records.length > 0;
    }, 10_000);
    expect(records).toHaveLength(1);
    // The same format as the proxy's audit log.
    expect(records[0]).toMatchObject({ event: 'config_change', version: expect.stringMatching(/^[0-9a-f]{16}$/), previousVersion: expect.stringMatching(/^[0-9a-f]{16}$/), time: expect.any(String) });
    const record = records[0] as { version: string; added: unknown[]; removed: unknown[]; changed: Array<{ object: string; file: string; fields: string[] }> };
    expect(record.added).toEqual([{ object: 'Pod demo/echo-2', file: 'workloads.yaml' }]);
    expect(record.removed).toEqual([]);
    expect(record.changed).toEqual([{ object: 'Pod demo/client-1', file: 'workloads.yaml', fields: ['metadata.annotations["ambit.dev/outbound"]'] }]);
    // The proxies and the CA agree on the version of the configuration in force.
    const acceptedLine = logLinesAfter(nodeA, marks.a, (line) => line.msg === 'configuration accepted')[0];
    expect(acceptedLine?.version).toBe(record.version);
  });
});

// Removing a listener must not wait for the connections it accepted (net.Server#close's callback does):
// otherwise every later change would queue behind one open connection or pooled session.
describe('removing listeners while connections through them are open', () => {
  let nodeBMark = 0;
  let nodeAMark = 0;

  it('(inbound) node-b accepts the removal of a workload node-a holds a pooled HBONE session to, then a new workload', async () => {
    let mark = { a: nodeA.proc.lines.length, b: nodeB.proc.lines.length };
    await mesh.writeConfig('echo-4.yaml', podFile('echo-4', 'node-b', ECHO_4_IP));
    await mesh.writeConfig('client-4.yaml', podFile('client-4', 'node-a', CLIENT_4_IP, `9040=${ECHO_4_IP}:${ECHO_PORT}`));
    await waitUntil('echo-4 served and client-4\'s listener bound', () => bound(nodeB, mark.b, 'inbound', `${ECHO_4_IP}:`) && bound(nodeA, mark.a, 'outbound', `${CLIENT_4_IP}:9040=`), 10_000);
    // One finished tunnel: node-a's pool keeps its session to echo-4's 15008 open (idle, for minutes).
    expect(await roundTrip(9040, 'to echo-4', CLIENT_4_IP)).toBe('to echo-4');

    mark = { a: nodeA.proc.lines.length, b: nodeB.proc.lines.length };
    await rm(join(mesh.configDir, 'echo-4.yaml'));
    await accepted(nodeB, mark.b);
    nodeBMark = nodeB.proc.lines.length;
    await mesh.writeConfig('echo-5.yaml', podFile('echo-5', 'node-b', ECHO_5_IP));
    await accepted(nodeB, nodeBMark);
  });

  it('(inbound) node-b serves the new workload promptly, not once the peer\'s idle session ends', async () => {
    await waitUntil('node-b binds echo-5', () => bound(nodeB, nodeBMark, 'inbound', `${ECHO_5_IP}:`), 5_000);
  });

  it('(inbound) node-b closes the open tunnel of a workload removed from it, and says the workload left (no denial)', async () => {
    const echo8 = await startEchoServer(ECHO_8_IP, ECHO_PORT);
    let open: OpenTunnel | undefined;
    try {
      let mark = { a: nodeA.proc.lines.length, b: nodeB.proc.lines.length };
      await mesh.writeConfig('echo-8.yaml', podFile('echo-8', 'node-b', ECHO_8_IP));
      await mesh.writeConfig('client-8.yaml', podFile('client-8', 'node-a', CLIENT_8_IP, `9080=${ECHO_8_IP}:${ECHO_PORT}`));
      await waitUntil("echo-8 served and client-8's listener bound", () => bound(nodeB, mark.b, 'inbound', `${ECHO_8_IP}:`) && bound(nodeA, mark.a, 'outbound', `${CLIENT_8_IP}:9080=`), 10_000);
      open = await OpenTunnel.open(CLIENT_8_IP, 9080);
      await open.echo('to echo-8');
      mark = { a: nodeA.proc.lines.length, b: nodeB.proc.lines.length };
      await rm(join(mesh.configDir, 'echo-8.yaml'));
      await waitUntil('the revocation line', () => logLinesAfter(nodeB, mark.b, (line) => line.msg === 'closed open connections the new configuration no longer allows').length > 0, 10_000);
      const [line] = logLinesAfter(nodeB, mark.b, (candidate) => candidate.msg === 'closed open connections the new configuration no longer allows');
      expect(line).toMatchObject({ closed: 1, workloadLeft: 1, notAllowed: 0 });
    } finally {
      open?.socket.destroy();
      await rm(join(mesh.configDir, 'client-8.yaml'), { force: true });
      await echo8.close();
    }
  });

  it('(outbound) node-a accepts the removal of a listener that has an open connection, then a new listener', async () => {
    const mark = nodeA.proc.lines.length;
    await mesh.writeConfig('client-6.yaml', podFile('client-6', 'node-a', CLIENT_6_IP, '9060=echo.demo:7'));
    await waitUntil('client-6\'s listener bound', () => bound(nodeA, mark, 'outbound', `${CLIENT_6_IP}:9060=`), 10_000);
    removedListenerTunnel = await OpenTunnel.open(CLIENT_6_IP, 9060);
    await removedListenerTunnel.echo('through client-6');

    const removed = nodeA.proc.lines.length;
    await rm(join(mesh.configDir, 'client-6.yaml'));
    await accepted(nodeA, removed);
    // client-6 is gone from the node: its open connection, which left with its certificate, is closed with it (by
    // node-a, or first by node-b's re-check of the forwarded claim; passthrough.test.ts has one only node-a closes);
    // client-1's, whose workload stays, lives on (checked above and below).
    await waitUntil("client-6's open connection closed", () => removedListenerTunnel?.socket.closed === true, 5_000);
    nodeAMark = nodeA.proc.lines.length;
    await mesh.writeConfig('client-7.yaml', podFile('client-7', 'node-a', CLIENT_7_IP, '9070=echo.demo:7'));
    await accepted(nodeA, nodeAMark);
  });

  it('(outbound) node-a binds the new listener promptly, not once the old listener\'s connection ends', async () => {
    await waitUntil('node-a binds client-7\'s listener', () => bound(nodeA, nodeAMark, 'outbound', `${CLIENT_7_IP}:9070=`), 5_000);
  });
});

// Recursive fs.watch on Linux (Node 24.21) watches file inodes and misses a file replaced by rename after
// the first time — how mv, editors and ConfigMap swaps write; the watcher's poll backstop catches it.
describe('a file replaced by a rename from outside the directory', () => {
  it('is picked up every time it is replaced', async () => {
    const mark = nodeA.proc.lines.length;
    for (let generation = 1; generation <= 3; generation++) {
      const outside = join(mesh.dir, `client-8.${generation}.yaml`);
      await writeFile(outside, podYaml({ name: 'client-8', node: 'node-a', serviceAccount: 'client', ip: nodeIp(P, 0, 28), labels: { generation: `g${generation}` } }));
      await rename(outside, join(mesh.configDir, 'client-8.yaml'));
      await accepted(nodeA, mark, generation, 3_000);
    }
  });
});

describe('a change the running mesh cannot take', () => {
  it('(another trust domain, another HBONE port) is refused by every proxy and the CA, and the open tunnel goes on', async () => {
    const original = await readFile(join(mesh.configDir, 'mesh.yaml'), 'utf8');
    try {
      for (const [what, yaml] of [
        ['trustDomain', original.replace(/trustDomain: .*/, 'trustDomain: cluster.locl')],
        ['ports.hbone', `${original.trimEnd()}\n  ports: { hbone: 15009 }\n`],
      ] as const) {
        const marks = [nodeA, nodeB].map((node) => node.proc.lines.length);
        const caMark = mesh.ca.lines.length;
        await mesh.writeConfig('mesh.yaml', yaml);
        for (const [index, node] of [nodeA, nodeB].entries()) {
          await waitUntil(`${node.name} refuses the ${what} change`, () => logLinesAfter(node, marks[index] as number, (line) => line.msg === REJECTED && String((line.err as { message?: string }).message).includes(`spec.${what} changed`)).length > 0, 10_000);
        }
        if (what === 'trustDomain') await waitUntil('the CA refuses it', () => mesh.ca.lines.slice(caMark).some((line) => line.msg === REJECTED), 10_000);
        await tunnel.echo(`still here after a ${what} change`);
        await mesh.writeConfig('mesh.yaml', original);
      }
      expect(await roundTrip(9007, 'a new connection')).toBe('a new connection');
    } finally {
      await mesh.writeConfig('mesh.yaml', original);
    }
  });
});
