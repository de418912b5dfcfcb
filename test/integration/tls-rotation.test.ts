// A TLS server's certificate rotated by the identity agent, five times, while a client keeps connecting.
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';
import { IdentityAgent } from '../../src/identity/agent.ts';
import { followRotation, serverTlsOptions, verifyPeer } from '../../src/identity/spiffe-tls.ts';
import { silentLogger } from '../../src/observe/log.ts';
import type { Svid } from '../../src/identity/svid.ts';

const TD = 'rotation.test';
const WEB = `spiffe://${TD}/ns/default/sa/web`;

let ca: InProcessCa;
let agent: IdentityAgent;

beforeAll(async () => {
  ca = await startInProcessCa(TD, { 'node-a': [WEB] });
  // Two-second certificates: renewed about every second.
  agent = new IdentityAgent({ caUrl: ca.server.url, trustDomain: TD, nodeName: 'node-a', bootstrapBundle: ca.server.ownBundle(), joinToken: await ca.joinToken('node-a'), ttlSeconds: 2, logger: silentLogger() });
  await agent.start();
});

afterAll(async () => {
  await agent?.stop();
  await ca?.close();
});

function connectOnce(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const node = agent.nodeSvid() as Svid;
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3', cert: node.certPem, key: node.privateKeyPem });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      const result = verifyPeer(socket, agent.bundles(), WEB);
      if (!result.valid) {
        socket.destroy();
        reject(result.error);
        return;
      }
      const serial = socket.getPeerX509Certificate()?.serialNumber ?? '';
      socket.write('ping');
      socket.once('data', (data) => {
        socket.end();
        if (data.toString() !== 'ping') reject(new Error(`echo mismatch: ${data.toString()}`));
        else resolve(serial);
      });
    });
  });
}

describe('certificate rotation on a live TLS server', () => {
  it('swaps the certificate five times while every new connection succeeds and later ones see the new certificate', async () => {
    const first = await agent.ensure(WEB);
    const server = tls.createServer(serverTlsOptions(first, ['http/1.1']), (socket) => socket.pipe(socket));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const rotatedSerials: string[] = [first.chain[0]?.serialNumber.toUpperCase() ?? ''];
    const stopFollowing = followRotation(server, agent, WEB, ['http/1.1']);
    agent.on('rotated', (svid) => {
      if (svid.id.id === WEB) rotatedSerials.push(svid.chain[0]?.serialNumber.toUpperCase() ?? '');
    });
    // A long-lived connection opened before any rotation must survive all of them.
    const longLived = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    await new Promise((resolve) => longLived.once('secureConnect', resolve));

    const seen: Array<{ serial: string; rotationsBefore: number }> = [];
    const failures: unknown[] = [];
    const deadline = Date.now() + 20_000;
    while (rotatedSerials.length < 6 && Date.now() < deadline) {
      const rotationsBefore = rotatedSerials.length;
      try {
        seen.push({ serial: (await connectOnce(port)).toUpperCase(), rotationsBefore });
      } catch (error) {
        failures.push(error);
      }
    }
    stopFollowing();

    expect(failures).toEqual([]);
    expect(rotatedSerials.length).toBeGreaterThanOrEqual(6);
    // Every connection saw the certificate current when it started, or a newer one, never an older one.
    for (const { serial, rotationsBefore } of seen) {
      const index = rotatedSerials.indexOf(serial);
      expect(index).toBeGreaterThanOrEqual(rotationsBefore - 1);
    }
    expect(new Set(seen.map((s) => s.serial)).size).toBeGreaterThanOrEqual(5);

    const echoed = await new Promise<string>((resolve) => {
      longLived.once('data', (data) => resolve(data.toString()));
      longLived.write('still here');
    });
    expect(echoed).toBe('still here');
    longLived.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});
