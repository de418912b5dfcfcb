// The client TLS context of each identity the proxy serves is built when a dial first needs it (an idle workload that
// only accepts holds none), then kept for that certificate; a rotation's certificate gets a context of its own.
// Real TLS 1.3 handshakes on loopback: what the server is shown is what a peer proxy would be.
import * as tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityContexts } from '../../../src/proxy/tls.ts';
import { loadSvid } from '../../../src/identity/svid.ts';
import { createTestCa, issueTestSvid } from '../../helpers/certs.ts';

const TD = 'contexts.test';
const ID = `spiffe://${TD}/ns/demo/sa/client`;
let server: tls.Server;

beforeAll(async () => {
  const ca = await createTestCa(TD);
  const serverSvid = await issueTestSvid(ca, `spiffe://${TD}/ns/demo/sa/server`);
  server = tls.createServer({ cert: serverSvid.certPem, key: serverSvid.keyPem, minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: false });
  server.on('secureConnection', (socket: tls.TLSSocket) => socket.end(socket.getPeerCertificate().fingerprint256 ?? 'none'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

afterAll(() => {
  server.close();
});

/** The fingerprint of the certificate the server was shown by a client dialling with `context`. */
async function presented(context: tls.SecureContext): Promise<string> {
  const socket = tls.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, secureContext: context, rejectUnauthorized: false });
  let answer = '';
  socket.setEncoding('utf8').on('data', (chunk: string) => (answer += chunk));
  await once(socket, 'end');
  socket.destroy();
  return answer;
}

describe('client TLS contexts of served identities', () => {
  it('presents the identity\'s certificate from its first dial on, the same context for every later dial, and the rotated certificate once it arrives', async () => {
    const ca = await createTestCa(TD);
    const first = await issueTestSvid(ca, ID);
    const contexts = new IdentityContexts();
    const entry = contexts.set(loadSvid(first.certPem, first.keyPem));
    expect(contexts.get(ID)).toBe(entry);
    const context = entry.context;
    expect(entry.context).toBe(context);
    expect(await presented(context)).toBe(new X509Certificate(first.certPem).fingerprint256);

    const rotated = await issueTestSvid(ca, ID);
    const next = contexts.set(loadSvid(rotated.certPem, rotated.keyPem));
    expect(contexts.get(ID)).toBe(next);
    expect(await presented(next.context)).toBe(new X509Certificate(rotated.certPem).fingerprint256);
    // Sessions dialled before the rotation keep the context they were made with.
    expect(entry.context).toBe(context);
    expect(await presented(entry.context)).toBe(new X509Certificate(first.certPem).fingerprint256);
  });
});
