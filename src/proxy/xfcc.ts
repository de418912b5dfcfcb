// x-forwarded-client-cert on the ports whose HTTP the node proxy inspects, as Istio's sidecars set it (Envoy's
// APPEND_FORWARD with Subject, URI and DNS): an application that moved off a sidecar reads its caller from the
// header's last element, and no client can forge that element, because the proxy appends it itself.
import { createHash, X509Certificate } from 'node:crypto';
import { dnsSansOf, parseCertificates } from '../identity/svid.ts';

export const XFCC = 'x-forwarded-client-cert';

/**
 * What the peer certificate of a session contributes to its element, in Envoy's order: `Hash=` the SHA-256 of its
 * DER (hex), `Subject="..."` its subject in RFC 2253 form (empty for most SVIDs), `URI=` its SPIFFE ID, and `DNS=`
 * each DNS name it carries. Computed once per session, not per request.
 */
export function peerCertDetails(der: Uint8Array | null, spiffeId: string): string {
  // A verified session always has its peer's certificate; without one, the element names only the identity.
  if (der === null) return `Subject="";URI=${spiffeId}`;
  let subject = '';
  let dnsNames: string[] = [];
  try {
    subject = rfc2253Subject(new X509Certificate(der).subject);
    const [cert] = parseCertificates(der);
    if (cert !== undefined) dnsNames = dnsSansOf(cert);
  } catch {
    // The handshake already parsed this certificate; should a library read it otherwise, the element names less.
  }
  let details = `Hash=${createHash('sha256').update(der).digest('hex')};Subject="${subject}";URI=${spiffeId}`;
  for (const name of dnsNames) details += `;DNS=${quotedValue(name)}`;
  return details;
}

/** The element a proxy appends for one tunnel: `By=` the identity the workload's certificate presented, then the peer's. */
export function clientCertElement(localSpiffeId: string, peerDetails: string): string {
  return `By=${localSpiffeId};${peerDetails}`;
}

/**
 * Node renders a subject in OpenSSL's multiline form: its RDNs first to last, the values of a multi-valued RDN
 * joined by " + ", each value already escaped as RFC 2253 asks (`,+"\<>;=` and control characters; a `+` in a value
 * is `\+`, so " + " only ever separates). Reversed and joined with "," and "+" this is OpenSSL's XN_FLAG_RFC2253,
 * which Envoy writes, once characters past ASCII are written as Envoy's OpenSSL writes them: `\XX` per UTF-8 byte.
 */
export function rfc2253Subject(multiline: string): string {
  if (multiline === '') return '';
  const rdns = multiline.split('\n').reverse();
  for (let i = 0; i < rdns.length; i++) rdns[i] = (rdns[i] as string).split(' + ').reverse().join('+');
  return escapeBytes(rdns.join(','));
}

/** A value as XFCC carries it: double-quoted, with `"` and `\` escaped, when it holds `,`, `;`, `=`, `"` or `\`. */
function quotedValue(value: string): string {
  if (!/[,;="\\]/.test(value)) return escapeBytes(value);
  return `"${escapeBytes(value.replace(/["\\]/g, (c) => `\\${c}`))}"`;
}

/** Control characters, DEL and anything past ASCII as `\XX` per UTF-8 byte: a header value carries none of them raw. */
function escapeBytes(text: string): string {
  // eslint-disable-next-line no-control-regex
  if (!/[\u0000-\u001f\u007f-\uffff]/.test(text)) return text;
  let out = '';
  for (const char of text) {
    const code = char.codePointAt(0) as number;
    if (code >= 0x20 && code < 0x7f) {
      out += char;
      continue;
    }
    for (const byte of Buffer.from(char, 'utf8')) out += `\\${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
