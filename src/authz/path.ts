// Request-path normalisation before path rules are matched, so `/admin` cannot be reached as `//admin`,
// `/./admin`, `/api/../admin`, `/%61dmin` or `/public\..\admin`: Istio's default (BASE: Envoy's normalize_path,
// RFC 3986 §6.2.2 and §5.2.4, with Chromium's URL canonicaliser reading `\` as `/` and escaping controls, space,
// `"<>^`{|}`, DEL and bytes from 0x80, so that a DENY of `/files/a%7Cb` denies `/files/a|b` too) plus merged slashes
// (Istio's MERGE_SLASHES, not its default: an ALLOW of `/a/b` admits `//a/b`, which the application receives as
// `/a/b`). The normalised path is also what the application receives, as with Envoy. A fragment (`#`) has no place
// in a request (RFC 9112 §3.2): it is refused, since an application that cuts it off would serve `/admin` for a
// `/admin#x` no rule matched.
//
// Escaped slashes (`%2F`, `%5C`) stay escaped by default, as in Istio's BASE: an application that decodes them before
// routing (Go's net/http, Spring) reads `/api/admin%2Fusers` as `/api/admin/users`, which a DENY of `/api/admin/*`
// does not match. The mesh's `pathNormalization: DECODE_AND_MERGE_SLASHES` (Istio's, Envoy's UNESCAPE_AND_FORWARD)
// decodes them first, before dot segments are resolved and then slashes merged (Envoy's order: unescape, canonicalise,
// merge), so rules and application read one path.
import type { PathNormalization } from '../config/objects.ts';

/** What DECODE_AND_MERGE_SLASHES adds to the normalisation, in the words refusals list its steps in ('' otherwise). */
export function slashDecodingStep(normalization: PathNormalization): string {
  return normalization === 'DECODE_AND_MERGE_SLASHES' ? ', %2F and %5C decoded to "/" (the mesh\'s pathNormalization DECODE_AND_MERGE_SLASHES)' : '';
}

function isHex(code: number): boolean {
  return (code >= 48 && code <= 57) || (code >= 65 && code <= 70) || (code >= 97 && code <= 102);
}

function hexValue(code: number): number {
  return code <= 57 ? code - 48 : (code | 0x20) - 87;
}

/** RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~" — the only escapes decoded. */
function isUnreserved(code: number): boolean {
  return (code >= 65 && code <= 90) || (code >= 97 && code <= 122) || (code >= 48 && code <= 57) || code === 45 || code === 46 || code === 95 || code === 126;
}

/**
 * The ASCII characters Chromium's path canonicaliser (as Envoy vendors it: url_canon_path.cc, kPathCharLookup) writes
 * percent-encoded: controls, space, `"`, `<`, `>`, `^`, `` ` ``, `{`, `|`, `}` and DEL; every byte from 0x80 too.
 */
const ESCAPED = new Uint8Array(128);
for (let code = 0; code <= 0x20; code++) ESCAPED[code] = 1;
for (const char of '"<>^`{|}\x7f') ESCAPED[char.charCodeAt(0)] = 1;

function escaped(code: number): boolean {
  return code >= 128 || ESCAPED[code] === 1;
}

const HEX = '0123456789ABCDEF';

/** Whether the path can need any change; most real paths do not, and then nothing is allocated. */
function needsWork(path: string): boolean {
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i);
    if (code === 37 /* % */ || code === 92 /* \ */ || escaped(code)) return true;
    if (code === 47 /* / */) {
      const next = path.charCodeAt(i + 1);
      if (next === 47 || next === 46 /* . */) return true;
    }
  }
  return false;
}

function removeDotSegments(path: string): string {
  const output: string[] = [];
  const segments = path.split('/');
  // segments[0] is '' for an absolute path.
  for (let i = 1; i < segments.length; i++) {
    const segment = segments[i] as string;
    if (segment === '.') {
      if (i === segments.length - 1) output.push('');
    } else if (segment === '..') {
      output.pop();
      if (i === segments.length - 1) output.push('');
    } else {
      output.push(segment);
    }
  }
  return '/' + output.join('/');
}

/**
 * The normalised form of an origin-form path (without query), or null when it is malformed (a bad
 * percent-escape, a fragment, a character past 0xFF: Node gives a request's path one character per byte): the
 * request is then refused rather than matched on a guess.
 */
export function normalizePath(path: string, normalization: PathNormalization = 'MERGE_SLASHES'): string | null {
  if (path.indexOf('#') >= 0) return null;
  const decodeSlashes = normalization === 'DECODE_AND_MERGE_SLASHES';
  if (path.charCodeAt(0) !== 47 /* / */) return path; // not a path: its callers refuse it before any rule
  if (!needsWork(path)) return path;
  let decoded = '';
  for (let i = 0; i < path.length; i++) {
    const code = path.charCodeAt(i);
    if (code === 92 /* \ */) {
      decoded += '/';
      continue;
    }
    if (code !== 37) {
      if (!escaped(code)) decoded += path[i];
      else if (code > 0xff) return null;
      else decoded += '%' + HEX[code >> 4] + HEX[code & 15];
      continue;
    }
    const high = path.charCodeAt(i + 1);
    const low = path.charCodeAt(i + 2);
    if (!isHex(high) || !isHex(low)) return null;
    const value = hexValue(high) * 16 + hexValue(low);
    if (decodeSlashes && (value === 47 /* / */ || value === 92 /* \ */)) decoded += '/';
    else decoded += isUnreserved(value) ? String.fromCharCode(value) : '%' + path.slice(i + 1, i + 3).toUpperCase();
    i += 2;
  }
  // Envoy's order: dot segments resolved on the path as it is (`/app//../admin` is `/app/admin`: `..` takes the empty
  // segment), then slashes merged.
  const resolved = removeDotSegments(decoded);
  if (resolved.indexOf('//') < 0) return resolved;
  let merged = '';
  for (let i = 0; i < resolved.length; i++) {
    if (resolved.charCodeAt(i) === 47 && merged.charCodeAt(merged.length - 1) === 47) continue;
    merged += resolved[i];
  }
  return merged;
}
