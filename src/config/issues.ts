// Configuration problems as values (ConfigIssue) and the single coded error a failed load throws (ConfigError).
// Every issue names its file, line, object and field path so an operator can go straight to the mistake.
import { AmbitError } from '../errors.ts';
import type { ErrorCode } from '../errors.ts';

export interface ConfigIssue {
  readonly code: ErrorCode;
  /** Relative to the configuration directory; undefined only for problems of the whole set (no MeshConfig). */
  readonly file: string | undefined;
  readonly line: number | undefined;
  /** `Pod default/web` */
  readonly object: string | undefined;
  /** `spec.ports[1].port` */
  readonly field: string | undefined;
  readonly message: string;
}

/** `pods.yaml:12: Pod default/web: spec.nodeName: required` */
export function formatIssue(issue: ConfigIssue): string {
  let text = '';
  if (issue.file !== undefined) text += issue.line === undefined ? `${issue.file}: ` : `${issue.file}:${issue.line}: `;
  if (issue.object !== undefined) text += `${issue.object}: `;
  if (issue.field !== undefined && issue.field !== '') text += `${issue.field}: `;
  return text + issue.message;
}

/** Reading order: by file, then line; problems of the whole set last. Stable for issues on one line. */
export function sortIssues(issues: readonly ConfigIssue[]): ConfigIssue[] {
  return [...issues].sort((a, b) => {
    if (a.file !== b.file) {
      if (a.file === undefined) return 1;
      if (b.file === undefined) return -1;
      return a.file < b.file ? -1 : 1;
    }
    return (a.line ?? 0) - (b.line ?? 0);
  });
}

/** A message listing thousands of problems helps nobody; `details` keeps them all. */
export const MAX_ISSUES_IN_MESSAGE = 50;

/**
 * A rejected configuration. The code is the first issue's code; `details` holds every issue found, because
 * validation covers the whole directory before giving up.
 */
export class ConfigError extends AmbitError {
  readonly details: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[], where: string) {
    const sorted = sortIssues(issues);
    const first = sorted[0];
    if (first === undefined) throw new TypeError('ConfigError needs at least one issue');
    const lines = sorted.slice(0, MAX_ISSUES_IN_MESSAGE).map((issue) => `  ${formatIssue(issue)}`);
    if (sorted.length > MAX_ISSUES_IN_MESSAGE) lines.push(`  ... and ${sorted.length - MAX_ISSUES_IN_MESSAGE} more`);
    const heading = sorted.length === 1 ? `invalid configuration in ${where}:` : `invalid configuration in ${where} (${sorted.length} problems):`;
    super(first.code, `${heading}\n${lines.join('\n')}`);
    this.details = Object.freeze(sorted.map((issue) => Object.freeze(issue)));
  }

  override toJSON(): ReturnType<AmbitError['toJSON']> & { details: readonly ConfigIssue[] } {
    return { ...super.toJSON(), details: this.details };
  }
}
