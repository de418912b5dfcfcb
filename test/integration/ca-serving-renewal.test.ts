// The CA's own serving certificate after the host slept: timers stand still while a host is suspended, the wall
// clock does not. A real CaServer on loopback, its certificate read from real TLS handshakes.
import { connect } from 'node:tls';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { startInProcessCa } from '../helpers/ca.ts';
import type { InProcessCa } from '../helpers/ca.ts';

let ca: InProcessCa | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await ca?.close();
});

/** The serial and end of the certificate the CA serves now. */
function servingCertificate(port: number): Promise<{ serial: string; validTo: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      resolve({ serial: cert.serialNumber, validTo: Date.parse(cert.valid_to) });
    });
    socket.once('error', reject);
  });
}

describe('the CA serving certificate', () => {
  it('is renewed once the wall clock says it is due, though the host slept through its renewal timer', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    ca = await startInProcessCa('cluster.local', {});
    const port = ca.server.port;
    const before = await servingCertificate(port);
    // A day and an hour asleep: the 24 h certificate has expired, its 12 h timer has not fired.
    vi.setSystemTime(Date.now() + 25 * 3_600_000);
    expect(before.validTo).toBeLessThan(Date.now());
    let after = before;
    for (let i = 0; i < 100 && after.serial === before.serial; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      after = await servingCertificate(port);
    }
    expect(after.serial).not.toBe(before.serial);
    expect(after.validTo).toBeGreaterThan(Date.now());
  }, 30_000);
});
