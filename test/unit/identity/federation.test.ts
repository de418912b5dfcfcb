// Federation client against real HTTPS bundle endpoints on loopback (https_spiffe profile): the bundle is taken
// only from the configured endpoint identity, proven by the bootstrap bundle or the last bundle fetched, and
// only when it is a 200 with a bounded, valid SPIFFE bundle; an older sequence replaces a newer one only with other roots.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBundle, encodeBundle } from '../../../src/identity/bundle.ts';
import { fingerprintOf } from '../../../src/identity/svid.ts';
import type { TrustBundle } from '../../../src/identity/bundle.ts';
import { FederationClient, MAX_FEDERATED_ROOTS } from '../../../src/identity/federation.ts';
import type { FederationClientOptions, FederationPeer } from '../../../src/identity/federation.ts';
import { silentLogger } from '../../../src/observe/log.ts';
import { AmbitError } from '../../../src/errors.ts';
import { createTestCa, issueTestSvid } from '../../helpers/certs.ts';
import type { TestCa } from '../../helpers/certs.ts';

const TD = 'remote.example';
const ENDPOINT_ID = `spiffe://${TD}/ambit/ca`;
const logger = silentLogger();

type Handler = (request: IncomingMessage, response: ServerResponse) => void;

const servers: Server[] = [];
const clients: FederationClient[] = [];

/** Stopped clients have finished writing their state files, so a test's directory can be removed after this. */
async function stopClients(): Promise<void> {
  await Promise.all(clients.splice(0).map((client) => client.stop()));
}

afterEach(async () => {
  await stopClients();
  await Promise.all(servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
});

/** A bundle endpoint presenting an SVID for `presentedId` from `issuer`, answering with `handler`. */
async function endpoint(issuer: TestCa, presentedId: string, handler: Handler): Promise<string> {
  const svid = await issueTestSvid(issuer, presentedId);
  const server = createServer({ cert: svid.certPem, key: svid.keyPem, minVersion: 'TLSv1.3' }, handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `https://127.0.0.1:${(server.address() as AddressInfo).port}/bundle`;
}

function serve(bundle: () => TrustBundle): Handler {
  return (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(encodeBundle(bundle()));
  };
}

function client(peer: Partial<FederationPeer> & { bundleEndpoint: string }, bootstrap: TrustBundle, extra: Partial<Pick<FederationClientOptions, 'logger' | 'minRefreshMs' | 'staleAfterMs'>> = {}): FederationClient {
  const created = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: bootstrap, ...peer }, logger, ...extra });
  clients.push(created);
  return created;
}

/** An endpoint that serves `remote`'s bundle once (hinting 0) and answers 503 ever after; how often it was asked. */
async function failingAfterFirstAnswer(remote: TestCa): Promise<{ url: string; fetches: () => number }> {
  let fetches = 0;
  const url = await endpoint(remote, ENDPOINT_ID, (request, response) => {
    if (fetches++ === 0) serve(() => createBundle(TD, [remote.root.cert], { sequence: 1n, refreshHintSeconds: 0 }))(request, response);
    else response.writeHead(503).end();
  });
  return { url, fetches: () => fetches };
}

async function refusal(promise: Promise<unknown>): Promise<AmbitError> {
  const error = await promise.then(() => null, (caught: unknown) => caught);
  expect(error).toBeInstanceOf(AmbitError);
  return error as AmbitError;
}

describe('the federation client', () => {
  it('takes the bundle from an endpoint presenting the configured ID, proven by the bootstrap bundle', async () => {
    const remote = await createTestCa(TD);
    const served = createBundle(TD, [remote.root.cert], { sequence: 7n, refreshHintSeconds: 60 });
    const url = await endpoint(remote, ENDPOINT_ID, serve(() => served));
    const fetched = await client({ bundleEndpoint: url }, remote.bundle).fetchOnce();
    expect(fetched.trustDomain).toBe(TD);
    expect(fetched.sequence).toBe(7n);
    expect(fetched.roots.map((root) => root.serialNumber)).toEqual([remote.root.cert.serialNumber]);
  });

  it('refuses an endpoint presenting another SPIFFE ID of the same trust domain', async () => {
    const remote = await createTestCa(TD);
    const url = await endpoint(remote, `spiffe://${TD}/not/the/ca`, serve(() => remote.bundle));
    const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
    expect(error.code).toBe('FEDERATION_FETCH');
  });

  it('refuses an endpoint whose certificate the bootstrap bundle does not vouch for', async () => {
    const remote = await createTestCa(TD);
    const impostor = await createTestCa(TD);
    const url = await endpoint(impostor, ENDPOINT_ID, serve(() => impostor.bundle));
    const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
    expect(error.code).toBe('FEDERATION_FETCH');
    expect(error.message.startsWith(`${TD}: ${url}: `)).toBe(true);
  });

  it('refuses an answer other than 200, naming the status', async () => {
    const remote = await createTestCa(TD);
    const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
      response.writeHead(404, { 'content-type': 'text/html' });
      response.end('<html>not here</html>');
    });
    const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
    expect(error.code).toBe('FEDERATION_FETCH');
    expect(error.message).toContain('404');
  });

  it('follows a redirect to another endpoint presenting the same ID, each fetch from the configured URL again', async () => {
    const remote = await createTestCa(TD);
    const served = createBundle(TD, [remote.root.cert], { sequence: 3n });
    const target = await endpoint(remote, ENDPOINT_ID, serve(() => served));
    const asked: string[] = [];
    const url = await endpoint(remote, ENDPOINT_ID, (request, response) => {
      asked.push(request.url ?? '');
      // Relative first, then absolute to the other server.
      if (request.url === '/bundle') response.writeHead(307, { location: '/moved' }).end();
      else response.writeHead(302, { location: target }).end();
    });
    const fetcher = client({ bundleEndpoint: url }, remote.bundle);
    expect((await fetcher.fetchOnce()).sequence).toBe(3n);
    expect((await fetcher.fetchOnce()).sequence).toBe(3n);
    // Not remembered: the second fetch starts at the configured URL.
    expect(asked).toEqual(['/bundle', '/moved', '/bundle', '/moved']);
  });

  it('refuses a redirect to an endpoint presenting another ID, to plain http, or past three hops', async () => {
    const remote = await createTestCa(TD);
    const served = createBundle(TD, [remote.root.cert]);
    const impostor = await endpoint(remote, `spiffe://${TD}/ns/other/sa/other`, serve(() => served));
    const toImpostor = await endpoint(remote, ENDPOINT_ID, (_request, response) => response.writeHead(307, { location: impostor }).end());
    const impostorError = await refusal(client({ bundleEndpoint: toImpostor }, remote.bundle).fetchOnce());
    expect(impostorError.message).toContain(`[IDENTITY_MISMATCH] peer presented spiffe://${TD}/ns/other/sa/other, expected ${ENDPOINT_ID}`);
    const toHttp = await endpoint(remote, ENDPOINT_ID, (_request, response) => response.writeHead(302, { location: 'http://127.0.0.1:1/bundle' }).end());
    expect((await refusal(client({ bundleEndpoint: toHttp }, remote.bundle).fetchOnce())).message).toContain('redirects to http://127.0.0.1:1/bundle, which is not an https URL');
    const loop = await endpoint(remote, ENDPOINT_ID, (_request, response) => response.writeHead(307, { location: '/bundle' }).end());
    expect((await refusal(client({ bundleEndpoint: loop }, remote.bundle).fetchOnce())).message).toContain('redirected more than 3 times');
  });

  it('refuses a body larger than a bundle can be, also when it is chunked without a length', async () => {
    const remote = await createTestCa(TD);
    // A valid bundle after 4 MiB of JSON whitespace: only the size limit can refuse it.
    const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      let sent = 0;
      const more = (): void => {
        while (sent < 4 * 1024 * 1024) {
          sent += chunk.length;
          if (!response.write(chunk)) {
            response.once('drain', more);
            return;
          }
        }
        response.end(encodeBundle(remote.bundle));
      };
      more();
    });
    const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
    expect(error.code).toBe('FEDERATION_FETCH');
    // Which peer, which endpoint, which limit: the HTTP client's own words named none of them.
    expect(error.message).toBe(`${TD}: ${url}: its answer exceeds 1048576 bytes`);
  });

  it('refuses a 200 whose body is not a bundle of the peer trust domain', async () => {
    const remote = await createTestCa(TD);
    const other = await createTestCa('other.example');
    for (const body of ['{"keys": "nope"}', 'not json', encodeBundle(other.bundle).replace('"keys"', '"keyz"')]) {
      const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(body);
      });
      const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
      expect(error.code, body).toBe('FEDERATION_FETCH');
    }
  });

  /**
   * A client of an endpoint serving `sequence` one bundle per fetch (then the last one again), started and watched
   * (every 50 ms, 10 s at most) until `done`; with the sequences of its 'update' events.
   */
  async function following(remote: Awaited<ReturnType<typeof createTestCa>>, sequence: TrustBundle[], done: (served: number, federation: FederationClient) => boolean) {
    let served = 0;
    const url = await endpoint(remote, ENDPOINT_ID, serve(() => sequence[Math.min(served++, sequence.length - 1)] as TrustBundle));
    const federation = client({ bundleEndpoint: url }, remote.bundle, { minRefreshMs: 50 });
    const updates: bigint[] = [];
    federation.on('update', (bundle) => updates.push(bundle.sequence));
    await federation.start();
    const deadline = Date.now() + 10_000;
    while (!done(served, federation) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    return { federation, updates };
  }

  it('keeps its bundle when the endpoint later serves an older sequence of the same roots, and follows a newer one', async () => {
    const remote = await createTestCa(TD);
    const rotated = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [remote.root.cert], { sequence: 5n, refreshHintSeconds: 1 }),
      createBundle(TD, [remote.root.cert], { sequence: 3n, refreshHintSeconds: 1 }),
      createBundle(TD, [remote.root.cert, rotated.root.cert], { sequence: 9n, refreshHintSeconds: 1 }),
    ];
    // The older one (3) is fetched and ignored; the newer one (9) replaces 5.
    const { federation, updates } = await following(remote, sequence, (served, federation) => served >= 3 && federation.current()?.sequence === 9n);
    expect(federation.current()?.sequence).toBe(9n);
    expect(updates).toEqual([5n, 9n]);
  });

  // The refused answer's hint had been taken: a day, and the withdrawal that followed went unseen meanwhile.
  it('keeps to the hint of the bundle in force when it refuses a stale answer hinting a day', async () => {
    const remote = await createTestCa(TD);
    const rotated = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [remote.root.cert], { sequence: 5n, refreshHintSeconds: 1 }),
      createBundle(TD, [remote.root.cert], { sequence: 3n, refreshHintSeconds: 86_400 }),
      createBundle(TD, [rotated.root.cert], { sequence: 9n, refreshHintSeconds: 1 }),
    ];
    const { federation } = await following(remote, sequence, (_served, federation) => federation.current()?.sequence === 9n);
    expect(federation.current()?.sequence).toBe(9n);
  });

  it('refuses a bundle of more roots than a trust domain has, before checking them one by one', async () => {
    const remote = await createTestCa(TD);
    const one = JSON.parse(encodeBundle(createBundle(TD, [remote.root.cert], { sequence: 1n }))) as { keys: unknown[] };
    const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ ...one, keys: Array.from({ length: MAX_FEDERATED_ROOTS + 1 }, () => one.keys[0]) }));
    });
    const error = await refusal(client({ bundleEndpoint: url }, remote.bundle).fetchOnce());
    expect(error.code).toBe('FEDERATION_FETCH');
    expect(error.message).toContain(`it holds ${MAX_FEDERATED_ROOTS + 1} keys; a trust domain's bundle is taken with at most ${MAX_FEDERATED_ROOTS}`);
  });

  it("takes other roots served under an older sequence (the peer's CA re-initialised), rather than keep trusting the old ones", async () => {
    const remote = await createTestCa(TD);
    const reinitialised = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [remote.root.cert], { sequence: 5n, refreshHintSeconds: 1 }),
      createBundle(TD, [reinitialised.root.cert], { sequence: 1n, refreshHintSeconds: 1 }),
    ];
    const { federation, updates } = await following(remote, sequence, (_served, federation) => federation.current()?.sequence === 1n);
    expect(updates).toEqual([5n, 1n]);
    expect(federation.current()?.roots.map((root) => root.serialNumber)).toEqual([reinitialised.root.cert.serialNumber]);
  });

  it('never takes back a root a newer bundle withdrew, when a stale replica serves the older sequence', async () => {
    const remote = await createTestCa(TD);
    const compromised = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [compromised.root.cert, remote.root.cert], { sequence: 7n, refreshHintSeconds: 1 }),
      createBundle(TD, [remote.root.cert], { sequence: 8n, refreshHintSeconds: 1 }),
      createBundle(TD, [compromised.root.cert, remote.root.cert], { sequence: 7n, refreshHintSeconds: 1 }),
    ];
    const { federation, updates } = await following(remote, sequence, (served) => served >= 5);
    expect(updates).toEqual([7n, 8n]);
    expect(federation.current()?.sequence).toBe(8n);
    expect(federation.current()?.roots.map((root) => root.serialNumber)).toEqual([remote.root.cert.serialNumber]);
  });

  it('keeps its bundle when a stale replica serves an older sequence that lacks a root it holds (a rotation half-seen)', async () => {
    const remote = await createTestCa(TD);
    const next = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [remote.root.cert, next.root.cert], { sequence: 8n, refreshHintSeconds: 1 }),
      createBundle(TD, [remote.root.cert], { sequence: 7n, refreshHintSeconds: 1 }),
    ];
    const { federation, updates } = await following(remote, sequence, (served) => served >= 4);
    expect(updates).toEqual([8n]);
    expect(federation.current()?.roots.map((root) => root.serialNumber).sort()).toEqual([remote.root.cert.serialNumber, next.root.cert.serialNumber].sort());
  });

  it('never takes back a root withdrawn by a re-initialisation, even under a higher sequence than the new bundle', async () => {
    const remote = await createTestCa(TD);
    const reinitialised = await createTestCa(TD);
    const sequence = [
      createBundle(TD, [remote.root.cert], { sequence: 5n, refreshHintSeconds: 1 }),
      createBundle(TD, [reinitialised.root.cert], { sequence: 1n, refreshHintSeconds: 1 }),
      // A cache still holding the compromised bundle, served by an endpoint the bootstrap bundle still vouches for.
      createBundle(TD, [remote.root.cert], { sequence: 5n, refreshHintSeconds: 1 }),
    ];
    const { federation, updates } = await following(remote, sequence, (served) => served >= 5);
    expect(updates).toEqual([5n, 1n]);
    expect(federation.current()?.roots.map((root) => root.serialNumber)).toEqual([reinitialised.root.cert.serialNumber]);
  });

  it('stops at once while a fetch is under way, not when the endpoint finally answers (a reload waits for it)', async () => {
    const remote = await createTestCa(TD);
    const held: ServerResponse[] = [];
    const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
      held.push(response);
      response.writeHead(200, { 'content-type': 'application/json' });
      response.write('{'); // and nothing more
    });
    const federation = client({ bundleEndpoint: url }, remote.bundle);
    const starting = federation.start();
    await expect.poll(() => held.length).toBe(1);
    const stopping = Date.now();
    await federation.stop();
    expect(Date.now() - stopping).toBeLessThan(2_000);
    await starting;
    for (const response of held) response.destroy();
  });

  it("does not poll an endpoint more often than every 15 s, whatever its bundle's refresh hint says", async () => {
    const remote = await createTestCa(TD);
    let fetches = 0;
    const url = await endpoint(remote, ENDPOINT_ID, (request, response) => {
      fetches++;
      serve(() => createBundle(TD, [remote.root.cert], { sequence: 1n, refreshHintSeconds: 0 }))(request, response);
    });
    const federation = client({ bundleEndpoint: url }, remote.bundle);
    await federation.start();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(fetches).toBe(1);
  });

  it('backs off from an endpoint that hinted 0 and then fails, rather than poll it every second for good', async () => {
    const remote = await createTestCa(TD);
    const { url, fetches } = await failingAfterFirstAnswer(remote);
    // A 2 s floor: the failures that follow are retried after 1 s, then 2 s, then 2 s (before: every second).
    const federation = client({ bundleEndpoint: url }, remote.bundle, { minRefreshMs: 2_000 });
    await federation.start();
    await new Promise((resolve) => setTimeout(resolve, 6_500));
    // Fetched at 0, 2, 3, 5 (and 7) s; every second after 2 s would be 6.
    expect(fetches()).toBeLessThanOrEqual(4);
    expect(federation.current()?.sequence).toBe(1n);
  }, 15_000);

  it('says how long the endpoint has not answered, and past the stale bound says it as an error', async () => {
    const remote = await createTestCa(TD);
    const { url } = await failingAfterFirstAnswer(remote);
    const lines: Array<{ level: number; msg: string; unconfirmedForS?: number }> = [];
    const recording = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
    const federation = client({ bundleEndpoint: url }, remote.bundle, { logger: recording, minRefreshMs: 1_000, staleAfterMs: 2_500 });
    await federation.start();
    await expect.poll(() => lines.filter((line) => line.level === 50).length, { timeout: 10_000 }).toBeGreaterThan(0);
    const failures = lines.filter((line) => line.unconfirmedForS !== undefined);
    // Warnings while the bundle is fresh enough, then errors naming the time it has gone unanswered.
    expect(failures[0]).toMatchObject({ level: 40, msg: 'federated bundle fetch failed; keeping the last good bundle' });
    const error = failures.find((line) => line.level === 50);
    expect(error?.msg).toMatch(/^federated bundle endpoint has not answered for \d+s: roots the peer has rotated in since are not trusted/);
    expect(error?.unconfirmedForS).toBeGreaterThanOrEqual(2);
    expect(federation.current()?.sequence).toBe(1n);
  }, 15_000);

  it('refuses at construction what it could never fetch safely', async () => {
    const remote = await createTestCa(TD);
    const build = (peer: Partial<FederationPeer>) => () => new FederationClient({ peer: { trustDomain: TD, bundleEndpoint: 'https://127.0.0.1:1/bundle', profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, ...peer }, logger });
    const code = (make: () => unknown) => {
      try {
        make();
        return null;
      } catch (error) {
        return (error as AmbitError).code;
      }
    };
    expect(code(build({ bundleEndpoint: 'http://127.0.0.1:1/bundle' }))).toBe('FEDERATION_FETCH');
    expect(code(build({ bundleEndpoint: 'https://user:secret@127.0.0.1:1/bundle' }))).toBe('FEDERATION_FETCH');
    expect(code(build({ bootstrapBundle: undefined }))).toBe('FEDERATION_FETCH');
    expect(code(build({ endpointSpiffeId: undefined }))).toBe('FEDERATION_FETCH');
    expect(code(build({ endpointSpiffeId: 'not-a-spiffe-id' }))).not.toBeNull();
    // A bootstrap is optional when the endpoint belongs to another trust domain: its bundle comes from there.
    const other = new FederationClient({ peer: { trustDomain: TD, bundleEndpoint: 'https://127.0.0.1:1/bundle', profile: 'https_spiffe', endpointSpiffeId: 'spiffe://broker.example/bundles' }, logger });
    await other.stop();
  });
});

describe("the federation client's state file", () => {
  it('serves the last bundle after a restart before any fetch, and authenticates an endpoint that rotated past its bootstrap bundle', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-federation-'));
    try {
      const stateFile = join(dir, `${TD}.json`);
      const original = await createTestCa(TD);
      const rotated = await createTestCa(TD);
      // The endpoint first serves both roots (a rotation in progress), presenting a certificate of the original root.
      let served = createBundle(TD, [original.root.cert, rotated.root.cert], { sequence: 4n, refreshHintSeconds: 1 });
      let presenter = original;
      const handler: Handler = (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(encodeBundle(served));
      };
      const firstUrl = await endpoint(presenter, ENDPOINT_ID, handler);
      const first = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: original.bundle, bundleEndpoint: firstUrl }, logger, stateFile });
      clients.push(first);
      await first.start();
      expect(first.current()?.sequence).toBe(4n);
      await first.stop();

      // Taken back at construction, before the endpoint is asked.
      const again = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: original.bundle, bundleEndpoint: firstUrl }, logger, stateFile });
      clients.push(again);
      expect(again.current()?.sequence).toBe(4n);
      await again.stop();

      // The same settings, but now the peer has withdrawn the original root and its endpoint presents the rotated one:
      // the bootstrap bundle alone could not authenticate it; the kept bundle does.
      served = createBundle(TD, [rotated.root.cert], { sequence: 5n, refreshHintSeconds: 1 });
      presenter = rotated;
      const server = servers[0]!;
      const port = (server.address() as AddressInfo).port;
      await new Promise<void>((resolve) => server.close(() => resolve()));
      servers.splice(0, 1);
      const svid = await issueTestSvid(presenter, ENDPOINT_ID);
      const moved = createServer({ cert: svid.certPem, key: svid.keyPem, minVersion: 'TLSv1.3' }, handler);
      servers.push(moved);
      await new Promise<void>((resolve) => moved.listen(port, '127.0.0.1', resolve));
      const third = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: original.bundle, bundleEndpoint: firstUrl }, logger, stateFile });
      clients.push(third);
      await third.start();
      expect(third.current()?.sequence).toBe(5n);
      const fresh = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: original.bundle, bundleEndpoint: firstUrl }, logger });
      clients.push(fresh);
      await expect(fresh.fetchOnce()).rejects.toMatchObject({ code: 'FEDERATION_FETCH' });
    } finally {
      await stopClients(); // a running client refreshes every second and may be writing the state file
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps refusing a root withdrawn before the restart when a stale replica serves it again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-federation-'));
    try {
      const stateFile = join(dir, `${TD}.json`);
      const remote = await createTestCa(TD);
      const compromised = await createTestCa(TD);
      let served = createBundle(TD, [compromised.root.cert, remote.root.cert], { sequence: 7n, refreshHintSeconds: 1 });
      const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(encodeBundle(served));
      });
      const peer = { trustDomain: TD, profile: 'https_spiffe' as const, endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, bundleEndpoint: url };
      const before = new FederationClient({ peer, logger, stateFile });
      clients.push(before);
      await before.start();
      served = createBundle(TD, [remote.root.cert], { sequence: 8n, refreshHintSeconds: 1 });
      await before.start();
      expect(before.current()?.sequence).toBe(8n);
      await before.stop();
      // After the restart a stale replica serves 7 again, with the withdrawn root: not taken.
      served = createBundle(TD, [compromised.root.cert, remote.root.cert], { sequence: 7n, refreshHintSeconds: 1 });
      const after = new FederationClient({ peer, logger, stateFile });
      clients.push(after);
      await after.start();
      expect(after.current()?.sequence).toBe(8n);
      expect(after.current()?.roots.map((root) => root.serialNumber)).toEqual([remote.root.cert.serialNumber]);
      // Another bootstrap bundle is another relationship: nothing is taken back.
      const other = new FederationClient({ peer: { ...peer, bootstrapBundle: compromised.bundle }, logger, stateFile });
      clients.push(other);
      expect(other.current()).toBeUndefined();
    } finally {
      await stopClients(); // a running client refreshes every second and may be writing the state file
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('bounds the roots it keeps as withdrawn: a peer serving new roots on every poll is refused past the bound, its state file kept small', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-federation-'));
    try {
      const stateFile = join(dir, `${TD}.json`);
      const remote = await createTestCa(TD);
      // Each answer: the endpoint's own root and three throwaway ones, new every time.
      const throwaway = await Promise.all(Array.from({ length: 12 }, () => createTestCa(TD)));
      let round = 0;
      const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
        const roots = [remote.root.cert, ...throwaway.slice(3 * round, 3 * round + 3).map((ca) => ca.root.cert)];
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(encodeBundle(createBundle(TD, roots, { sequence: BigInt(round + 1), refreshHintSeconds: 1 })));
      });
      const peer = { trustDomain: TD, profile: 'https_spiffe' as const, endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, bundleEndpoint: url };
      const client = new FederationClient({ peer, logger, stateFile, maxWithdrawnRoots: 7 });
      clients.push(client);
      await client.start();
      for (round = 1; round < 4; round++) await client.start();
      // Rounds 1 and 2 withdrew 3 roots each (6 kept); round 3 would make 9: refused, round 2's bundle kept.
      expect(client.current()?.sequence).toBe(3n);
      await client.stop();
      const stored = JSON.parse(await readFile(stateFile, 'utf8')) as { withdrawnRoots: { fingerprint: string; notAfterMs: number }[]; withdrawn?: unknown };
      expect(stored.withdrawn).toBeUndefined();
      expect(stored.withdrawnRoots.map((entry) => entry.fingerprint).sort()).toEqual(throwaway.slice(0, 6).map((ca) => fingerprintOf(ca.root.cert)).sort());
      expect(stored.withdrawnRoots.every((entry) => entry.notAfterMs > Date.now())).toBe(true);
    } finally {
      await stopClients();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps its bundle when the endpoint serves one with no X.509 root, and takes the next good one', async () => {
    const remote = await createTestCa(TD);
    let served = encodeBundle(createBundle(TD, [remote.root.cert], { sequence: 2n, refreshHintSeconds: 1 }));
    const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(served);
    });
    const client = new FederationClient({ peer: { trustDomain: TD, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, bundleEndpoint: url }, logger });
    clients.push(client);
    await client.start();
    expect(client.current()?.sequence).toBe(2n);
    served = JSON.stringify({ keys: [], spiffe_sequence: 3, spiffe_refresh_hint: 1 });
    await client.start();
    expect(client.current()?.sequence).toBe(2n);
    expect(client.current()?.roots).toHaveLength(1);
    // The endpoint is still authenticated by the root kept: the next good bundle is taken.
    served = encodeBundle(createBundle(TD, [remote.root.cert], { sequence: 4n, refreshHintSeconds: 1 }));
    await client.start();
    expect(client.current()?.sequence).toBe(4n);
  });

  it('reads the withdrawn roots of a state file written before fingerprints, still refuses them, and forgets those expired', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-federation-'));
    try {
      const stateFile = join(dir, `${TD}.json`);
      const remote = await createTestCa(TD);
      const withdrawn = await createTestCa(TD);
      const expired = await createTestCa(TD, { ttlMs: 60_000, now: new Date(Date.now() - 3_600_000) });
      let served = createBundle(TD, [remote.root.cert, withdrawn.root.cert], { sequence: 9n, refreshHintSeconds: 1 });
      const url = await endpoint(remote, ENDPOINT_ID, (_request, response) => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(encodeBundle(served));
      });
      const peer = { trustDomain: TD, profile: 'https_spiffe' as const, endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, bundleEndpoint: url };
      const settings = JSON.stringify([peer.bundleEndpoint, peer.profile, peer.endpointSpiffeId, remote.bundle.roots.map((root) => fingerprintOf(root))]);
      const hex = (ca: TestCa) => Buffer.from(ca.root.cert.rawData).toString('hex');
      const kept = createBundle(TD, [remote.root.cert], { sequence: 8n });
      await writeFile(stateFile, JSON.stringify({ trustDomain: TD, settings, bundle: encodeBundle(kept), withdrawn: [hex(withdrawn), hex(expired)] }));
      const client = new FederationClient({ peer, logger, stateFile });
      clients.push(client);
      expect(client.current()?.sequence).toBe(8n);
      // A replica serving the withdrawn root again, under a higher sequence: refused, as before.
      await client.start();
      expect(client.current()?.sequence).toBe(8n);
      served = createBundle(TD, [remote.root.cert], { sequence: 10n, refreshHintSeconds: 1 });
      await client.start();
      expect(client.current()?.sequence).toBe(10n);
      await client.stop();
      // Saved in the new form, without the root that has expired.
      const stored = JSON.parse(await readFile(stateFile, 'utf8')) as { withdrawnRoots: { fingerprint: string }[] };
      expect(stored.withdrawnRoots.map((entry) => entry.fingerprint)).toEqual([fingerprintOf(withdrawn.root.cert)]);
    } finally {
      await stopClients();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('takes nothing back from a state file that is not what it writes, and fetches afresh', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ambit-federation-'));
    try {
      const stateFile = join(dir, `${TD}.json`);
      const remote = await createTestCa(TD);
      const peer = { trustDomain: TD, profile: 'https_spiffe' as const, endpointSpiffeId: ENDPOINT_ID, bootstrapBundle: remote.bundle, bundleEndpoint: 'https://127.0.0.1:1/bundle' };
      const settings = JSON.stringify([peer.bundleEndpoint, peer.profile, peer.endpointSpiffeId, remote.bundle.roots.map((root) => fingerprintOf(root))]);
      const bundle = encodeBundle(remote.bundle);
      for (const text of [
        'not json',
        JSON.stringify({ trustDomain: TD, settings, bundle: '{"keys": 7}', withdrawn: [] }),
        JSON.stringify({ trustDomain: TD, settings, bundle, withdrawn: ['zz'] }),
        JSON.stringify({ trustDomain: TD, settings, bundle }),
        JSON.stringify({ trustDomain: 'other.example', settings, bundle, withdrawn: [] }),
      ]) {
        await writeFile(stateFile, text);
        const client = new FederationClient({ peer, logger, stateFile });
        clients.push(client);
        expect(client.current(), text).toBeUndefined();
      }
      // The same settings and well-formed fields: taken back (the check above is about the content, not the file).
      await writeFile(stateFile, JSON.stringify({ trustDomain: TD, settings, bundle, withdrawn: [] }));
      const taken = new FederationClient({ peer, logger, stateFile });
      clients.push(taken);
      expect(taken.current()?.trustDomain).toBe(TD);
    } finally {
      await stopClients(); // a running client refreshes every second and may be writing the state file
      await rm(dir, { recursive: true, force: true });
    }
  });
});
