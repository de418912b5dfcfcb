// The HAProxy pairs ambit is compared with: per layer, a client-side haproxy (plain TCP in, mTLS out with
// a client certificate) and a server-side haproxy (mTLS in, verifying the client certificate, plain TCP
// to the upstream), one thread each. Same TLS as ambit as far as HAProxy's OpenSSL allows: TLS 1.3 only,
// AES-GCM suites in ambit's order, ECDSA P-256 certificates signed by the ambit CA's root, the peer
// verified on both sides (the server also by name, as ambit checks the expected identity).
// L4: `mode tcp` both sides. L7: the server side in `mode http` with the same 1,000 method/path rules
// the ambit L7 row has as AuthorizationPolicies, in the same order.
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HAPROXY, POLICY_COUNT, TRUST_DOMAIN, NAMESPACE, UPSTREAM, policyName } from './layout.ts';
import { waitForPort } from './processes.ts';
import { TLS_CIPHERS } from '../../src/proxy/settings.ts';
import type { Processes, Spawned } from './processes.ts';

/** ambit's TLS 1.3 suites, in ambit's order. */
const CIPHERSUITES = TLS_CIPHERS;
/** The server name the client side checks, standing in for ambit's expected-identity check. */
export const SERVER_NAME = `web.${NAMESPACE}.svc`;

export interface HaproxyPair {
  readonly client: Spawned;
  readonly server: Spawned;
  stop(): Promise<void>;
}

export interface HaproxyCertificates {
  readonly caFile: string;
  readonly clientPem: string;
  readonly serverPem: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** P-256 leaf certificates with SPIFFE IDs, signed by the ambit CA's root key (openssl, one day). */
export async function issueCertificates(dir: string, caDir: string): Promise<HaproxyCertificates> {
  await mkdir(dir, { recursive: true });
  const rootCert = join(caDir, 'authorities', 'a1', 'cert.pem');
  const rootKey = join(caDir, 'authorities', 'a1', 'key.pem');
  const issue = async (name: string, spiffePath: string, dns: string | null): Promise<string> => {
    await writeFile(join(dir, `${name}.ext`), [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth,clientAuth',
      `subjectAltName=URI:spiffe://${TRUST_DOMAIN}${spiffePath}${dns ? `,DNS:${dns}` : ''}`,
    ].join('\n') + '\n');
    openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', `${name}.key`], dir);
    openssl(['req', '-new', '-key', `${name}.key`, '-subj', `/O=ambit-bench/CN=${name}`, '-out', `${name}.csr`], dir);
    openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', rootCert, '-CAkey', rootKey, '-CAcreateserial', '-days', '1', '-sha256', '-extfile', `${name}.ext`, '-out', `${name}.crt`], dir);
    const pem = join(dir, `${name}.pem`);
    await writeFile(pem, (await readFile(join(dir, `${name}.crt`), 'utf8')) + (await readFile(join(dir, `${name}.key`), 'utf8')));
    return pem;
  };
  return {
    caFile: rootCert,
    clientPem: await issue('client', `/ns/${NAMESPACE}/sa/client`, null),
    serverPem: await issue('server', `/ns/${NAMESPACE}/sa/web`, SERVER_NAME),
  };
}

function globalSection(maxConnections: number): string {
  return `global
  nbthread 1
  maxconn ${maxConnections}
  ssl-default-bind-ciphersuites ${CIPHERSUITES}
  ssl-default-server-ciphersuites ${CIPHERSUITES}
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
  tune.ssl.default-dh-param 2048

defaults
  mode tcp
  timeout connect 10s
  timeout client 1h
  timeout server 1h
  timeout http-request 1h
  timeout http-keep-alive 1h
  maxconn ${maxConnections}
`;
}

function clientConfig(layer: 'l4' | 'l7', certs: HaproxyCertificates, maxConnections: number): string {
  const addresses = HAPROXY[layer];
  const targets: Array<keyof typeof HAPROXY.listen> = layer === 'l4' ? ['web', 'bulk', 'hold'] : ['web'];
  let config = globalSection(maxConnections);
  for (const target of targets) {
    config += `
frontend in-${target}
  bind ${addresses.client}:${HAPROXY.listen[target]}
  default_backend mtls-${target}

backend mtls-${target}
  server peer ${addresses.server}:${HAPROXY.tls[target]} ssl crt ${certs.clientPem} ca-file ${certs.caFile} verify required verifyhost ${SERVER_NAME} sni str(${SERVER_NAME})
`;
  }
  return config;
}

function serverConfig(layer: 'l4' | 'l7', certs: HaproxyCertificates, maxConnections: number): string {
  const addresses = HAPROXY[layer];
  const bind = (target: keyof typeof HAPROXY.tls) => `bind ${addresses.server}:${HAPROXY.tls[target]} ssl crt ${certs.serverPem} ca-file ${certs.caFile} verify required`;
  let config = globalSection(maxConnections);
  if (layer === 'l4') {
    const upstream = { web: UPSTREAM.webL4, bulk: UPSTREAM.bulk, hold: UPSTREAM.hold };
    for (const target of ['web', 'bulk', 'hold'] as const) {
      config += `
frontend mtls-${target}
  ${bind(target)}
  default_backend up-${target}

backend up-${target}
  server up ${upstream[target].host}:${upstream[target].port}
`;
    }
    return config;
  }
  const rules: string[] = [];
  for (let i = 0; i < POLICY_COUNT; i++) rules.push(`  http-request allow if METH_GET { path_beg /api/v1/${policyName(i)}/ }`);
  return config + `
frontend mtls-web
  mode http
  option http-keep-alive
  ${bind('web')}
${rules.join('\n')}
  http-request deny deny_status 403
  default_backend up-web

backend up-web
  mode http
  http-reuse safe
  server up ${UPSTREAM.webL7.host}:${UPSTREAM.webL7.port}
`;
}

export async function startHaproxyPair(processes: Processes, binary: string, layer: 'l4' | 'l7', dir: string, certs: HaproxyCertificates, maxConnections: number): Promise<HaproxyPair> {
  await mkdir(dir, { recursive: true });
  const started: Spawned[] = [];
  const stop = async () => {
    await Promise.all(started.map((spawned) => processes.stop(spawned)));
  };
  try {
    for (const side of ['server', 'client'] as const) {
      const file = join(dir, `haproxy-${layer}-${side}.cfg`);
      await writeFile(file, side === 'server' ? serverConfig(layer, certs, maxConnections) : clientConfig(layer, certs, maxConnections));
      execFileSync(binary, ['-c', '-q', '-f', file], { stdio: ['ignore', 'ignore', 'pipe'] });
      started.push(processes.spawn(`haproxy-${layer}-${side}`, binary, ['-db', '-f', file], { cpu: 'proxy' }));
    }
    const [server, client] = started as [Spawned, Spawned];
    await waitForPort(HAPROXY[layer].server, HAPROXY.tls.web, 10_000, () => processes.assertRunning(server));
    await waitForPort(HAPROXY[layer].client, HAPROXY.listen.web, 10_000, () => processes.assertRunning(client));
    return { client, server, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

export function haproxyVersion(binary: string): string {
  try {
    return execFileSync(binary, ['-v'], { encoding: 'utf8' }).split('\n')[0]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The OpenSSL HAProxy runs on (it may differ from Node's, which ambit uses). */
export function haproxyOpenssl(binary: string): string {
  try {
    const text = execFileSync(binary, ['-vv'], { encoding: 'utf8' });
    return /Running on OpenSSL version : (.*)/.exec(text)?.[1]?.trim() ?? 'unknown';
  } catch {
    return 'unknown';
  }
}
