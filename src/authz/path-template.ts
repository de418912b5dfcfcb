// Istio's path templates (`paths: ["/api/{*}/items", "/static/{**}"]`, Istio 1.23 and later): checked at load as
// istiod checks them (pkg/config/security CheckValidPathTemplate) and matched as Envoy's uri_template matcher matches
// the normalised path istiod hands it: `{*}` is one whole segment, `{**}` the rest of the path, zero or more segments,
// and may be followed by literal segments but by no other operator. A template is always whole segments: `/a{*}` or
// a named variable `{id}` is refused, as istiod refuses it.
//
// Envoy's `{*}` matches one or more of the characters an RFC 3986 path segment may hold, `*` excepted
// ([A-Za-z0-9-._~%!$&'()+,;:@=]); `{**}` the same and "/". A normalised request path can also hold `*`, `[` and
// `]` (the canonicaliser leaves them as sent), which Envoy's template then does not match. ambit keeps that where it
// lets fewer requests through, and where it would let more through it does not: a DENY's `paths` and an ALLOW's
// `notPaths` read `{*}` as any characters but "/" and `{**}` as anything (`wide`), so `/admin/a*b` is not a way
// past a DENY of `/admin/{*}`; an ALLOW's `paths` and a DENY's `notPaths` read them as Envoy does.
import { normalizePath, slashDecodingStep } from './path.ts';
import type { PathNormalization } from '../config/objects.ts';
import type { ValueTest } from './match.ts';

const ONE = '{*}';
const ANY = '{**}';

/** What Envoy lets a literal segment of a template hold (uri_template_internal kLiteral; istiod's validLiteral). */
const LITERAL = /^[A-Za-z0-9\-._~%!$&'()+,;:@=]+$/;
const LITERAL_CHARS = "letters, digits and -._~%!$&'()+,;:@=";

/** Whether a `paths` value is a template (it holds a brace; checkPathTemplate refuses any other use of one). */
export function isPathTemplate(value: string): boolean {
  return value.includes('{') || value.includes('}');
}

/** Why a template cannot be used, or undefined. */
export function checkPathTemplate(value: string, normalization: PathNormalization = 'MERGE_SLASHES'): string | undefined {
  const quoted = JSON.stringify(value);
  if (!value.startsWith('/')) return `${quoted}: a path template must start with "/"`;
  const segments = value.slice(1).split('/');
  let operators = 0;
  let afterAny = false;
  for (let index = 0; index < segments.length; index++) {
    const segment = segments[index] as string;
    if (segment === ONE || segment === ANY) {
      if (afterAny) return `${quoted}: {**} must be the last operator of a template (literal segments may follow it, no {*} or {**})`;
      afterAny = segment === ANY;
      operators++;
      continue;
    }
    if (segment === '') {
      // A trailing "/" is a segment of its own in Envoy (the path must end with one); "//" anywhere else matches no
      // request, whose repeated slashes are merged before any rule.
      if (index === segments.length - 1 && index > 0) continue;
      return `${quoted} has an empty segment ("//"): it matches no request (request paths have repeated slashes merged)`;
    }
    if (segment.includes('{') || segment.includes('}')) {
      return `${quoted}: "{" and "}" may only stand in a whole segment {*} (one segment) or {**} (the rest of the path); named variables and partial segments are not templates Istio accepts`;
    }
    if (!LITERAL.test(segment)) return `${quoted}: the segment ${JSON.stringify(segment)} of a path template may hold only ${LITERAL_CHARS}`;
    const normalized = normalizePath(`/${segment}`, normalization);
    if (normalized !== `/${segment}`) {
      const hint = normalized === null || normalized.includes('/', 1) || normalized === '/' ? '' : `; write ${JSON.stringify(normalized.slice(1))}`;
      return `${quoted}: the segment ${JSON.stringify(segment)} matches no request: request paths are normalised first (%-escapes of letters, digits and -._~ decoded${slashDecodingStep(normalization)}, other escapes upper-cased, "." and ".." segments resolved)${hint}`;
    }
  }
  if (operators === 0) return `${quoted}: "{" and "}" may only stand in a whole segment {*} or {**}`;
  return undefined;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
}

const NARROW_ONE = "[A-Za-z0-9\\-._~%!$&'()+,;:@=]+";
const NARROW_ANY = "[A-Za-z0-9\\-._~%!$&'()+,;:@=/]*";
const WIDE_ONE = '[^/]+';
const WIDE_ANY = '[^]*';

/** A checked template, compiled once per configuration change. */
export class PathTemplate implements ValueTest {
  readonly #pattern: RegExp;

  /** `wide`: `{*}` and `{**}` match every character but "/" (and "/" for `{**}`), not only Envoy's (see above). */
  constructor(template: string, wide: boolean) {
    const one = wide ? WIDE_ONE : NARROW_ONE;
    const any = wide ? WIDE_ANY : NARROW_ANY;
    const body = template.slice(1).split('/').map((segment) => (segment === ONE ? one : segment === ANY ? any : escapeRegExp(segment))).join('/');
    // Character classes without "/" and at most one `{**}`: matching is linear in the path.
    this.#pattern = new RegExp(`^/${body}$`);
  }

  test(path: string): boolean {
    return this.#pattern.test(path);
  }
}
