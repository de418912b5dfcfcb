// SPIFFE authentication over node:tls: reading a peer's chain, verifying it against the bundle of its
// own trust domain, and an undici connector that does this before any request byte is sent.
//
// Node's verifier has one CA store and matches hostnames, which is wrong for SPIFFE (bundles are per
// trust domain; identity is the URI SAN), so, like go-spiffe's tlsconfig, we turn the library check
// off and verify the raw chain ourselves right after the handshake, before any application data.
import { isIP } from 'node:net';
import * as tls from 'node:tls';
import type { buildConnector } from 'undici';
import { AmbitError } from '../errors.ts';
import type { SpiffeId } from './spiffe-id.ts';
import { MAX_CHAIN_DEPTH, failPresented, parseCertificates, verifySvid } from './svid.ts';
import type { BundleSource, Certificate, Svid, VerifyOptions, VerifyResult } from './svid.ts';

/** TLS 1.3 only, as ztunnel: no downgrade surface, and every peer in the mesh speaks it. */
export const MIN_TLS_VERSION = 'TLSv1.3';

/**
 * The peer's chain as presented, leaf first. Node links the chain through issuerCertificate.
 *
 * Read the peer certificate only through getPeerCertificate(true), never getPeerX509Certificate():
 * in Node 24.21, calling getPeerX509Certificate() on a client socket first makes a later
 * getPeerCertificate(true) return {} and the X509 object vanish (checked here), so a verifier that
 * mixed the two would see "no certificate".
 */
export function peerChain(socket: tls.TLSSocket): Certificate[] {
  const leaf = socket.getPeerCertificate(true);
  return leaf ? chainOf(leaf) : [];
}

/** The chain of an already-read DetailedPeerCertificate. */
export function chainOf(leaf: tls.DetailedPeerCertificate): Certificate[] {
  if (!leaf.raw) return [];
  const chain: Certificate[] = [];
  const seen = new Set<string>();
  let current: tls.DetailedPeerCertificate | undefined = leaf;
  while (current && current.raw && !seen.has(current.fingerprint256)) {
    // Refused before parsing: a peer may link hundreds of certificates, and each costs a parse and signature checks.
    if (seen.size > MAX_CHAIN_DEPTH) throw new AmbitError('SVID_CHAIN_INVALID', `peer presented a chain of more than ${MAX_CHAIN_DEPTH + 1} certificates`);
    seen.add(current.fingerprint256);
    chain.push(...parseCertificates(current.raw));
    current = current.issuerCertificate;
  }
  return chain;
}

/** What the verifier expects of the peer: any valid SVID, one exact ID, or a predicate. */
export type ExpectedPeer = string | ((id: SpiffeId) => boolean) | null;

/** Verifies the peer of an established TLS socket; never throws. */
export function verifyPeer(socket: tls.TLSSocket, bundles: BundleSource, expected: ExpectedPeer): VerifyResult {
  const leaf = socket.getPeerCertificate(true);
  return verifyPeerCertificate(leaf ?? null, bundles, expected);
}

/** Verifies a peer certificate already read from a socket (getPeerCertificate(true)); never throws. */
export function verifyPeerCertificate(leaf: tls.DetailedPeerCertificate | null, bundles: BundleSource, expected: ExpectedPeer, options: VerifyOptions = {}): VerifyResult {
  let chain: Certificate[];
  try {
    chain = leaf ? chainOf(leaf) : [];
  } catch (error) {
    return failPresented(error instanceof AmbitError ? error : new AmbitError('SVID_PARSE', `peer certificate unreadable: ${(error as Error).message}`), null);
  }
  if (chain.length === 0) return failPresented(new AmbitError('CA_UNAUTHENTICATED', 'peer presented no certificate'), null);
  const result = verifySvid(chain, bundles, options);
  if (!result.valid || expected === null) return result;
  return matchExpected(result, expected);
}

/** Applies an identity expectation to a valid verification result. */
export function matchExpected(result: VerifyResult & { valid: true }, expected: string | ((id: SpiffeId) => boolean)): VerifyResult {
  const allowed = typeof expected === 'string' ? result.id.id === expected : expected(result.id);
  if (allowed) return result;
  const wanted = typeof expected === 'string' ? expected : 'an allowed identity';
  return { valid: false, id: result.id, error: new AmbitError('IDENTITY_MISMATCH', `peer presented ${result.id.id}, expected ${wanted}`) };
}

/** Server options that ask for a client certificate but let the application decide (the bundle endpoint must not require one). */
export function serverTlsOptions(svid: Svid, alpn: string[]): tls.TlsOptions {
  return {
    cert: svid.certPem,
    key: svid.privateKeyPem,
    minVersion: MIN_TLS_VERSION,
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: alpn,
  };
}

export interface SpiffeConnectorOptions {
  /** The SVID to present, read at each dial so rotation takes effect on the next connection. */
  clientSvid: () => Svid | undefined;
  /** The bundles to verify the server with, read at each dial. */
  bundles: () => BundleSource;
  expectedServer: ExpectedPeer;
  connectTimeoutMs?: number;
}

/** An undici connector that dials TLS 1.3, presents our SVID and accepts only a server with a valid SVID of the expected identity. */
export function spiffeConnector(options: SpiffeConnectorOptions): buildConnector.connector {
  const timeoutMs = options.connectTimeoutMs ?? 10_000;
  return (target, callback) => {
    const svid = options.clientSvid();
    const port = Number(target.port) || 443;
    const socket = tls.connect({
      host: target.hostname,
      port,
      // SNI only for names: Node refuses an IP as servername, and SPIFFE peers do not need it.
      servername: isIP(target.hostname) === 0 ? target.hostname : undefined,
      minVersion: MIN_TLS_VERSION,
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
      ...(svid ? { cert: svid.certPem, key: svid.privateKeyPem } : {}),
    });
    let settled = false;
    const finish = (error: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) {
        socket.destroy();
        callback(error, null);
      } else {
        callback(null, socket);
      }
    };
    const timer = setTimeout(() => finish(new AmbitError('CA_UNREACHABLE', `TLS connect to ${target.hostname}:${port} timed out after ${timeoutMs} ms`)), timeoutMs);
    socket.once('secureConnect', () => {
      const result = verifyPeer(socket, options.bundles(), options.expectedServer);
      finish(result.valid ? null : result.error);
    });
    socket.once('error', (error) => finish(error));
  };
}

/** Anything that announces rotated SVIDs (the identity agent). */
export interface RotationSource {
  on(event: 'rotated', listener: (svid: Svid) => void): unknown;
  off(event: 'rotated', listener: (svid: Svid) => void): unknown;
}

/**
 * Keeps a TLS server presenting the current SVID of `spiffeId`: each rotation swaps the server's secure
 * context in place, so new handshakes use the new certificate and open connections keep theirs.
 * Returns a function that stops following rotations.
 */
export function followRotation(server: tls.Server, source: RotationSource, spiffeId: string, alpn: string[]): () => void {
  const listener = (svid: Svid) => {
    if (svid.id.id !== spiffeId) return;
    const options = serverTlsOptions(svid, alpn);
    server.setSecureContext({ cert: options.cert, key: options.key, minVersion: options.minVersion });
  };
  source.on('rotated', listener);
  return () => source.off('rotated', listener);
}
