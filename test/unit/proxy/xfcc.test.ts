// The x-forwarded-client-cert element the node proxy appends on inspected ports reads as Envoy's (Istio's
// sidecars): By, Hash, Subject in RFC 2253 form as OpenSSL writes it, URI and DNS; and no certificate field can
// end the element early or add one of its own.
import { createHash, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { clientCertElement, peerCertDetails, rfc2253Subject } from '../../../src/proxy/xfcc.ts';
import { craftCertificate } from '../../helpers/certs.ts';

describe('x-forwarded-client-cert element', () => {
  it("writes a subject as OpenSSL's RFC 2253 form does: reversed, escaped, multi-valued RDNs with +, bytes past ASCII as \\XX", async () => {
    const { cert } = await craftCertificate(null, { uris: ['spiffe://td/ns/a/sa/b'], subject: 'CN=x\\"y\\\\z, OU=a\\+b+CN=multi, O=café, C=US' });
    // `openssl x509 -noout -subject -nameopt RFC2253` of this certificate.
    expect(rfc2253Subject(new X509Certificate(Buffer.from(cert.rawData)).subject)).toBe('C=US,O=caf\\C3\\A9,CN=multi+OU=a\\+b,CN=x\\"y\\\\z');
    expect(rfc2253Subject('')).toBe('');
  });

  it('names the peer certificate by its SHA-256, its subject, its SPIFFE ID and its DNS names, after the local identity', async () => {
    const { cert } = await craftCertificate(null, { uris: ['spiffe://td/ns/shop/sa/client'], dnsNames: ['client.shop.svc'], subject: 'O=ambit' });
    const der = new Uint8Array(cert.rawData);
    const hash = createHash('sha256').update(der).digest('hex');
    expect(clientCertElement('spiffe://td/ns/shop/sa/web', peerCertDetails(der, 'spiffe://td/ns/shop/sa/client'))).toBe(
      `By=spiffe://td/ns/shop/sa/web;Hash=${hash};Subject="O=ambit";URI=spiffe://td/ns/shop/sa/client;DNS=client.shop.svc`,
    );
  });

  it('quotes a DNS name that holds a separator, so a crafted certificate cannot append an element of its own', async () => {
    const { cert } = await craftCertificate(null, { uris: ['spiffe://td/ns/shop/sa/client'], dnsNames: ['x,By=spiffe://td/ns/shop/sa/web;URI=spiffe://td/ns/shop/sa/admin', 'q"\\'], subject: 'O=ambit' });
    const details = peerCertDetails(new Uint8Array(cert.rawData), 'spiffe://td/ns/shop/sa/client');
    expect(details.endsWith(';URI=spiffe://td/ns/shop/sa/client;DNS="x,By=spiffe://td/ns/shop/sa/web;URI=spiffe://td/ns/shop/sa/admin";DNS="q\\"\\\\"')).toBe(true);
    // Read as an application splits it, outside quotes: one element, whose URI is the certificate's own.
    expect(splitOutsideQuotes(details, ',')).toHaveLength(1);
    expect(splitOutsideQuotes(details, ';').filter((pair) => pair.startsWith('URI='))).toEqual(['URI=spiffe://td/ns/shop/sa/client']);
  });

  it('writes no control character or byte past ASCII raw into the header value', async () => {
    const { cert } = await craftCertificate(null, { uris: ['spiffe://td/ns/shop/sa/client'], subject: 'CN=a\u0001b\u007fcé' });
    const details = peerCertDetails(new Uint8Array(cert.rawData), 'spiffe://td/ns/shop/sa/client');
    expect(details).toMatch(/^[\x20-\x7e]+$/);
    expect(details).toContain('Subject="CN=a\\01b\\7Fc\\C3\\A9"');
  });

  it('names only the identity when the session has no certificate to read', () => {
    expect(peerCertDetails(null, 'spiffe://td/ns/shop/sa/client')).toBe('Subject="";URI=spiffe://td/ns/shop/sa/client');
  });
});

/** Splits on a separator outside double quotes (a backslash escapes the next character), as XFCC parsers do. */
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i] as string;
    if (char === '\\' && quoted) {
      current += char + (text[++i] ?? '');
      continue;
    }
    if (char === '"') quoted = !quoted;
    if (char === separator && !quoted) {
      parts.push(current);
      current = '';
    } else current += char;
  }
  parts.push(current);
  return parts;
}
