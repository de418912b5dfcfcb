// One workload's connections through the node proxy are bounded (--max-workload-connections), so that it cannot take
// the descriptors its neighbours on the node need: past its bound its new connections are refused with a reset and
// an access line saying why, while another workload's still go through. Real proxy, real sockets on loopback.
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectionLimits } from '../../src/proxy/outbound.ts';
import { metricSum, nodeIp, podYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh, TestNode } from '../helpers/mesh.ts';

const P = 78;
const NOISY_IP = nodeIp(P, 0, 20);
const QUIET_IP = nodeIp(P, 0, 21);
const EXTERNAL_IP = nodeIp(P, 5, 9);
const LIMIT = 3;

let mesh: TestMesh;
let node: TestNode;
let external: Server;
let externalPort = 0;

beforeAll(async () => {
  external = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => external.listen(0, EXTERNAL_IP, resolve));
  externalPort = (external.address() as { port: number }).port;
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a'],
    // The operator's listeners (a workload's own annotation may not reach this host, where the test's server is).
    extraProxyArgs: () => ['--max-workload-connections', String(LIMIT), '--outbound', `${NOISY_IP}:9500=${EXTERNAL_IP}:${externalPort}@demo/noisy-1`, '--outbound', `${QUIET_IP}:9500=${EXTERNAL_IP}:${externalPort}@demo/quiet-1`],
    config: {
      'workloads.yaml': yamlDocuments(
        podYaml({ name: 'noisy-1', node: 'node-a', serviceAccount: 'noisy', ip: NOISY_IP }),
        podYaml({ name: 'quiet-1', node: 'node-a', serviceAccount: 'quiet', ip: QUIET_IP }),
      ),
    },
  });
  node = mesh.nodes.get('node-a')!;
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  await new Promise((resolve) => external?.close(resolve));
});

/** A connection through `ip`'s listener, echoing `text` once: resolves with what came back, or the error that ended it. */
function echoOnce(ip: string, text: string): Promise<{ socket: Socket; echoed: string; error?: string }> {
  return new Promise((resolve) => {
    const socket = connect({ host: ip, port: 9500 });
    let echoed = '';
    socket.on('data', (chunk: Buffer) => {
      echoed += chunk.toString();
      if (echoed === text) resolve({ socket, echoed });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve({ socket, echoed, error: error.code ?? error.message }));
    socket.on('close', () => resolve({ socket, echoed, error: 'closed' }));
    socket.write(text);
  });
}

describe("one workload's connections through the node proxy", () => {
  it('are refused past its bound, with a reset and an access line saying why, while another workload is served', async () => {
    const held: Socket[] = [];
    try {
      for (let i = 0; i < LIMIT; i++) {
        const open = await echoOnce(NOISY_IP, `held ${i}`);
        expect(open.error, `connection ${i}`).toBeUndefined();
        held.push(open.socket);
      }
      const since = node.proc.lines.length;
      const refused = await echoOnce(NOISY_IP, 'one too many');
      expect(refused.error).toBe('ECONNRESET');
      expect(refused.echoed).toBe('');
      await waitUntil('its access line', async () => node.proc.lines.slice(since).some((line) => line.msg === 'access' && line.error_code === 'CONNECTION_LIMIT' && line.response_flags === 'CONNECT'));
      expect(await metricSum(node, 'istio_tcp_connections_failed_total', { reporter: 'source', source_workload: 'noisy-1', response_flags: 'CONNECT' })).toBeGreaterThanOrEqual(1);
      // Its neighbour is not held to its bound.
      const quiet = await echoOnce(QUIET_IP, 'neighbour');
      expect(quiet.error).toBeUndefined();
      quiet.socket.destroy();
      // One of its own closed, it may open another.
      held.pop()?.destroy();
      await waitUntil('a connection free again', async () => (await echoOnce(NOISY_IP, 'again').then((again) => {
        again.socket.destroy();
        return again.error === undefined;
      })));
    } finally {
      for (const socket of held) socket.destroy();
    }
  });
});

describe('the bounds taken from the open-files limit', () => {
  it('leave 1,024 descriptors (or half a small limit) to the rest, and a quarter of the limit to one workload', () => {
    const limits = (soft: string) => `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft}                ${soft}                files\n`;
    expect(connectionLimits(undefined, limits('20000'))).toEqual({ perWorkload: 5_000, total: 18_976 });
    expect(connectionLimits(undefined, limits('1000'))).toEqual({ perWorkload: 250, total: 500 });
    expect(connectionLimits(10, limits('20000'))).toEqual({ perWorkload: 10, total: 18_976 });
    expect(connectionLimits(undefined, limits('unlimited'))).toEqual({ perWorkload: Number.POSITIVE_INFINITY, total: Number.POSITIVE_INFINITY });
    expect(connectionLimits(undefined, 'no such line')).toEqual({ perWorkload: Number.POSITIVE_INFINITY, total: Number.POSITIVE_INFINITY });
  });
});
