// An inspected HTTP/1.1 tunnel whose workload answers before the client's upload has all come (413, 401, a
// redirect: an early answer, as RFC 9110 allows): the client gets the answer, and the tunnel is let go of, with its
// access line and its closed count. It had stayed open for ever, the upload's unread remainder held in memory, until
// the proxy was stopped: each such request cost the destination proxy its size. Real processes, real TLS.
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricSum, nodeIp, podYaml, serviceYaml, startTestMesh, waitUntil, yamlDocuments } from '../helpers/mesh.ts';
import type { TestMesh } from '../helpers/mesh.ts';

const P = 76;
const CLIENT_IP = nodeIp(P, 0, 10);
const WEB_IP = nodeIp(P, 1, 10);

let mesh: TestMesh;
let web: Server;

beforeAll(async () => {
  web = createServer((req, res) => {
    // Answered without reading the body, as a server refusing an upload by its size does.
    if (req.url === '/early') res.writeHead(413, { 'content-type': 'text/plain' }).end('too big\n');
    else if (req.url === '/drop') req.socket.destroy();
    else req.resume().on('end', () => res.end('ok\n'));
  });
  web.listen(8080, WEB_IP);
  await once(web, 'listening');
  mesh = await startTestMesh({
    prefix: P,
    nodes: ['node-a', 'node-b'],
    config: {
      'workloads.yaml': yamlDocuments(
        podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT_IP, outbound: '9080=web.demo:80' }),
        podYaml({ name: 'web-1', node: 'node-b', serviceAccount: 'web', ip: WEB_IP, labels: { app: 'web' } }),
        serviceYaml({ name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
      ),
      'policy.yaml': 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: web-posts, namespace: demo }\nspec:\n  selector: { matchLabels: { app: web } }\n  action: ALLOW\n  rules:\n    - to: [{ operation: { methods: ["POST", "GET"] } }]\n',
    },
  });
}, 60_000);

afterAll(async () => {
  await mesh?.stop();
  web?.close();
});

/**
 * POSTs `bytes` to `path` and returns the status line; reads the answer while still writing, as curl does.
 * `promised`: the Content-Length said, when the client stops short of it.
 */
function post(path: string, bytes: number, promised = bytes): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: CLIENT_IP, port: 9080 });
    let answer = '';
    socket.on('error', () => {}); // the proxy may stop the upload once answered
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('close', () => (answer === '' ? reject(new Error('no answer')) : resolve(answer.split('\r\n')[0] as string)));
    socket.on('connect', () => {
      socket.write(`POST ${path} HTTP/1.1\r\nHost: web.demo\r\nContent-Length: ${promised}\r\n\r\n`);
      const chunk = Buffer.alloc(64 * 1024, 'u');
      let sent = 0;
      const more = () => {
        while (sent < bytes && !socket.destroyed) {
          const part = chunk.subarray(0, Math.min(chunk.length, bytes - sent));
          sent += part.length;
          if (!socket.write(part)) return void socket.once('drain', more);
        }
      };
      more();
      // The client is done once it has its answer (curl closes after a 413 with no keep-alive).
      socket.once('data', () => setTimeout(() => socket.end(), 100));
    });
  });
}

describe('an inspected tunnel whose workload answers before the upload has come', () => {
  it('gives the client the answer and lets the tunnel go, counted and logged', async () => {
    const nodeB = mesh.nodes.get('node-b')!;
    const closedBefore = await metricSum(nodeB, 'istio_tcp_connections_closed_total', { reporter: 'destination', destination_workload: 'web-1' });
    const since = nodeB.proc.lines.length;
    const answers = await Promise.all([post('/early', 2 * 1024 * 1024), post('/early', 2 * 1024 * 1024), post('/early', 2 * 1024 * 1024)]);
    expect(answers).toEqual(['HTTP/1.1 413 Payload Too Large', 'HTTP/1.1 413 Payload Too Large', 'HTTP/1.1 413 Payload Too Large']);
    await waitUntil('the three tunnels closed at the destination', async () => (await metricSum(nodeB, 'istio_tcp_connections_closed_total', { reporter: 'destination', destination_workload: 'web-1' })) === closedBefore + 3, 15_000);
    // The access line is written as the tunnel is counted closed, but read from the proxy's output a moment later.
    const accessLines = () => nodeB.proc.lines.slice(since).filter((line) => line.msg === 'access' && line.direction === 'inbound');
    await waitUntil('the three access lines', () => accessLines().length >= 3, 5_000);
    expect(accessLines()).toHaveLength(3);
    // A whole upload on the same path is still answered.
    expect(await post('/whole', 64 * 1024)).toBe('HTTP/1.1 200 OK');
  }, 40_000);

  // The client's end closes each tunnel, but Node held it, and its place among the session's 200 concurrent streams,
  // until the 5 s grace ran out: its unread upload kept it. Under 50 such clients 4 new tunnels in 10 were refused.
  it('lets each tunnel go once its client has ended, so a busy run of early answers has no new tunnel refused', async () => {
    const statuses = new Map<string, number>();
    let left = 300;
    const client = async () => {
      while (left-- > 0) {
        const status = await post('/early', 256 * 1024).catch((error: unknown) => (error as Error).message);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    };
    await Promise.all(Array.from({ length: 30 }, client));
    expect(Object.fromEntries(statuses)).toEqual({ 'HTTP/1.1 413 Payload Too Large': 300 });
  }, 60_000);

  // An upload larger than the stream window: the client's END_STREAM waits behind bytes the destination never reads,
  // so the grace runs out and the destination asks it to stop (RST_STREAM NO_ERROR). Node's HTTP server, still
  // holding the stream for the body nobody takes, paused it again, and Node kept the closed stream for the session's
  // life: 299 of them after a busy minute, and the session refused every new tunnel.
  it('lets go of tunnels whose early-answered upload outgrew the window once the grace has run out', async () => {
    const nodeB = mesh.nodes.get('node-b')!;
    const closed = () => metricSum(nodeB, 'istio_tcp_connections_closed_total', { reporter: 'destination', destination_workload: 'web-1' });
    const opened = () => metricSum(nodeB, 'istio_tcp_connections_opened_total', { reporter: 'destination', destination_workload: 'web-1' });
    // The tests before may still be closing tunnels (a loaded machine): counted here, they had made the count overshoot.
    await waitUntil('the tunnels of the tests before closed', async () => (await closed()) === (await opened()), 20_000);
    const before = await closed();
    // More is promised than is sent, and what is sent outgrows the windows between the proxies.
    const answers = await Promise.all(Array.from({ length: 20 }, () => post('/early', 6 * 1024 * 1024, 100_000_000)));
    expect(new Set(answers)).toEqual(new Set(['HTTP/1.1 413 Payload Too Large']));
    await waitUntil('every tunnel closed at the destination', async () => (await closed()) === before + 20, 20_000);
  }, 60_000);

  // The 502 had said keep-alive, and the tunnel closed right after: a pooled client sent its next request into it.
  it('answers 502 to a request the workload dropped, saying the connection closes, in Envoy\'s words', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = net.connect({ host: CLIENT_IP, port: 9080 });
      let text = '';
      socket.on('error', reject);
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
      socket.on('close', () => resolve(text));
      socket.on('connect', () => socket.write('GET /drop HTTP/1.1\r\nHost: web.demo\r\n\r\n'));
    });
    const [head, body] = answer.split('\r\n\r\n');
    expect(head).toMatch(/^HTTP\/1\.1 502 /);
    expect(head).toMatch(/\r\nconnection: close/i);
    expect(head).not.toMatch(/keep-alive/i);
    expect(body).toBe('upstream connect error or disconnect/reset before headers. reset reason: connection termination\n');
  }, 20_000);
});
