// Run by test/integration/dns-hang.test.ts inside a mount namespace whose /etc/resolv.conf names a resolver that never
// answers (127.0.0.153): a workload's passthrough to a name, 40 connections at once, and meanwhile another workload's
// passthrough to `localhost` (from /etc/hosts). Prints one JSON line of what each saw.
import dgram from 'node:dgram';
import { connect, createServer } from 'node:net';
import { nodeIp, podYaml, startTestMesh, yamlDocuments } from './mesh.ts';

const P = 191;
const CLIENT = nodeIp(P, 0, 20);
const OTHER = nodeIp(P, 0, 21);

const resolver = dgram.createSocket('udp4');
let queries = 0;
resolver.on('message', () => queries++);
await new Promise<void>((resolve) => resolver.bind(53, '127.0.0.153', resolve));
const echo = createServer((socket) => {
  socket.on('error', () => {});
  socket.pipe(socket);
});
await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
const echoPort = (echo.address() as { port: number }).port;

const mesh = await startTestMesh({
  prefix: P,
  nodes: ['node-a'],
  config: {
    'w.yaml': yamlDocuments(
      podYaml({ name: 'client-1', node: 'node-a', serviceAccount: 'client', ip: CLIENT, outbound: '9001=slow.example:80' }),
      podYaml({ name: 'other-1', node: 'node-a', serviceAccount: 'other', ip: OTHER }),
    ),
  },
  extraProxyArgs: () => ['--outbound', `${OTHER}:9003=localhost:${echoPort}@demo/other-1`],
});
const node = mesh.nodes.get('node-a');

function exchange(host: string, port: number): Promise<{ got: string; ms: number; how: string }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let got = '';
    let how = 'fin';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (got += chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => (how = error.code ?? 'error'));
    socket.on('close', () => resolve({ got, ms: Date.now() - started, how }));
    socket.on('connect', () => socket.end('hello'));
  });
}

try {
  const slow = Array.from({ length: 40 }, () => exchange(CLIENT, 9001));
  await new Promise((resolve) => setTimeout(resolve, 500));
  const during = await exchange(OTHER, 9003);
  const results = await Promise.all(slow);
  // The proxy writes the access line as it resets the connection; its stdout reaches this process a moment later
  // (longer under load): waited for, up to 5 s.
  const accessLine = () => node?.proc.lines.find((line) => line.msg === 'access' && line['dst.addr'] === 'slow.example:80');
  for (let waited = 0; accessLine() === undefined && waited < 5_000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
  const access = accessLine() ?? null;
  console.log(JSON.stringify({ during, slow: results.map((result) => result.how), queries, access }));
} finally {
  await mesh.stop();
  resolver.close();
  echo.close();
}
