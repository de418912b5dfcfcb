// Reads a configuration directory of Kubernetes-shaped YAML files into a ConfigSnapshot. All files are read and
// every object validated before anything is accepted: one load either yields a whole snapshot or throws one
// ConfigError listing every problem (file, line, object, field), never a partial configuration.
import { createHash } from 'node:crypto';
import { open, readdir, realpath, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LineCounter, isAlias, isMap, isNode, isScalar, isSeq, parseAllDocuments, visit } from 'yaml';
import type { Document } from 'yaml';
import { formatPath, isMapping } from './fields.ts';
import type { FieldPath } from './fields.ts';
import { AmbitError } from '../errors.ts';
import { ConfigError } from './issues.ts';
import type { ConfigIssue } from './issues.ts';
import type { ConfigObject } from './objects.ts';
import { buildSnapshot } from './snapshot.ts';
import type { ConfigSnapshot } from './snapshot.ts';
import { validateObject } from './validate.ts';

export interface LoadOptions {
  /** Refuse a configuration without a MeshConfig; the CA and the proxy ask for this. */
  requireMesh?: boolean;
  /** Filled with the files this load read empty or blank (the watcher holds the objects of a file emptied in place). */
  emptyFiles?: Set<string>;
  /** What earlier loads of this directory made of each file: one whose bytes are the same is not parsed again. */
  cache?: ParsedFiles;
}

/** One file's bytes as a load read them, and what they parsed and validated to. */
interface ParsedFile {
  /** SHA-256 of the file's bytes: size and mtime say too little (`cp -p`, coarse clocks on network file systems). */
  readonly hash: string;
  /** A `.json` file that is no configuration (a trust bundle, other data): left alone. */
  readonly skipped: boolean;
  readonly empty: boolean;
  readonly objects: readonly ConfigObject[];
  readonly issues: readonly ConfigIssue[];
}

/**
 * Each file of a directory as the last load read it, for the watcher's reloads: a change of one file among many
 * parses that one file, where every reload parsed them all (5,000 pods and 2,000 policies in 51 files: YAML parsing
 * alone held each proxy's event loop ~2 s per change). A parse depends only on the bytes and the file's path (which
 * its objects' source and its issues name), so the entry stands whether the change was taken or refused.
 */
export class ParsedFiles {
  #files = new Map<string, ParsedFile>();
  #next = new Map<string, ParsedFile>();

  /** The entry for `file` when its bytes hash to `hash`. */
  get(file: string, hash: string): ParsedFile | undefined {
    const entry = this.#files.get(file);
    return entry?.hash === hash ? entry : undefined;
  }

  /** Noted for the load under way; kept once it ends (files it did not see are forgotten). */
  note(file: string, entry: ParsedFile): void {
    this.#next.set(file, entry);
  }

  /** The load ended: what it saw is what the next one compares with. */
  settle(): void {
    this.#files = this.#next;
    this.#next = new Map();
  }

  /** A load that failed part way (a thrown error): nothing of it is kept. */
  abandon(): void {
    this.#next = new Map();
  }
}

/** Larger than any sane configuration file, small enough that a mistaken path cannot exhaust memory. */
export const MAX_CONFIG_FILE_BYTES = 32 * 1024 * 1024;
/**
 * Lines and flow-list items (newlines and commas) one file may have: a 150,000-Service list has ~1,050,000; below what
 * exhausts the parser's heap (~500 bytes per item).
 */
export const MAX_CONFIG_ITEMS = 1_500_000;
/** yaml's default; bounds the expansion of aliases ("billion laughs"). */
const MAX_ALIAS_COUNT = 100;
/** `.json` too, as `kubectl apply -f DIR` reads it: a DENY policy kept in one was skipped without a word. JSON is YAML. */
const CONFIG_FILE = /\.(ya?ml|json)$/i;

export async function loadConfigDir(dir: string, options: LoadOptions = {}): Promise<ConfigSnapshot> {
  const root = resolve(dir);
  const { files, issues } = await listConfigFiles(root);
  const objects: ConfigObject[] = [];
  const cache = options.cache;
  try {
    // One file at a time: configuration directories are small, and this keeps open descriptors at one.
    for (const file of files) {
      const bytes = await readConfigFile(root, file, issues);
      if (bytes === undefined) continue;
      const hash = cache === undefined ? '' : createHash('sha256').update(bytes).digest('base64');
      let parsed = cache?.get(file, hash);
      if (parsed === undefined) {
        parsed = parseFile(bytes, file, hash, issues);
        if (parsed === undefined) continue;
      }
      cache?.note(file, parsed);
      if (parsed.skipped) continue;
      if (parsed.empty) options.emptyFiles?.add(file);
      // One push each: spread as arguments, a file of ~100,000 objects or issues overflowed the stack.
      for (const object of parsed.objects) objects.push(object);
      for (const issue of parsed.issues) issues.push(issue);
    }
  } catch (error) {
    cache?.abandon();
    throw error;
  }
  cache?.settle();
  try {
    return buildSnapshot(objects, { dir: root, requireMesh: options.requireMesh ?? false, issues, where: root });
  } catch (error) {
    if (error instanceof AmbitError) throw error;
    throw new ConfigError([{ code: 'CONFIG_FIELD', file: undefined, line: undefined, object: undefined, field: undefined, message: `the configuration cannot be built: ${reason(error)}` }], root);
  }
}

/** One file's bytes parsed and validated; undefined when they are not UTF-8 (said in `issues`, never kept). */
function parseFile(bytes: Buffer, file: string, hash: string, issues: ConfigIssue[]): ParsedFile | undefined {
  let text: string;
  try {
    // Strict: readFile('utf8') turned a Latin-1 byte into U+FFFD, so `paths: ["/caf\xe9/*"]` validated and never matched.
    text = UTF8.decode(bytes);
  } catch {
    issues.push(fileIssue(file, 'is not UTF-8 text: ambit reads configuration as UTF-8 only; re-save it as UTF-8'));
    return undefined;
  }
  if (isOtherJson(file, text)) return { hash, skipped: true, empty: false, objects: [], issues: [] };
  let parsed: ParsedText;
  try {
    parsed = parseDocuments(text, file);
  } catch (error) {
    // Out of memory or stack while reading one file's objects (aliases that expand a thousandfold): named, with the
    // file, not an 'unexpected error'.
    if (error instanceof AmbitError) throw error;
    parsed = { objects: [], issues: [{ code: 'CONFIG_YAML', file, line: undefined, object: undefined, field: undefined, message: `cannot be read as configuration: ${reason(error)}` }] };
  }
  // Whitespace alone, as `printf '\n' > f.yaml` leaves it, is as empty. (Comments alone are a file's own words,
  // commented out in an editor: the watcher applies them once the file holds still.)
  return { hash, skipped: false, empty: text.trim() === '', objects: parsed.objects, issues: parsed.issues };
}

/**
 * Parses and validates one file's objects (no checks across objects). `file` names the file in errors and in
 * each object's source. Throws a ConfigError listing every problem in the text.
 */
export function parseConfigText(text: string, file: string): ConfigObject[] {
  const { objects, issues } = parseDocuments(text, file);
  if (issues.length > 0) throw new ConfigError(issues, file);
  return objects;
}

export interface ConfigFileList {
  /** Relative to the directory, with "/" separators, sorted. */
  readonly files: string[];
  /** Unreadable subdirectories and broken links: reported, not skipped silently. */
  readonly issues: ConfigIssue[];
}

/**
 * A `.json` file that is not configuration: data kept beside it (a federation's trust bundle, its `bundleFile`), any
 * JSON that is neither an object naming a `kind` or an `apiVersion` nor a list holding one, or a file that is not JSON
 * and has neither as a key. Left alone, as every `.json` file was before they were read: one refused would refuse the
 * whole directory. A file meant as configuration is read, and what is wrong with it said: a list of policies (which
 * kubectl refuses too) had been skipped without a word, the DENY policies in it with it, and so had JSON with a
 * mistake in it, or YAML's flow style (`{kind: ...}`), unless it named both keys in quotes.
 */
function isOtherJson(file: string, text: string): boolean {
  if (!/\.json$/i.test(file)) return false;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return !CONFIG_KEY.test(text);
  }
  return !(Array.isArray(value) ? value.some(namesKind) : namesKind(value));
}

/** `kind:` or `apiVersion:` as a key, quoted or not. */
const CONFIG_KEY = /(?:^|[\s{,])["']?(?:kind|apiVersion)["']?\s*:/;

function namesKind(value: unknown): boolean {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && ('kind' in value || 'apiVersion' in value);
}

/**
 * The `.yaml`/`.yml`/`.json` files under dir, at any depth, following symbolic links. Names starting with "." are skipped,
 * which also skips the `..data` and `..2024_...` directories of a Kubernetes ConfigMap volume (their files are
 * reached through the top-level links, once). Throws ConfigError (FILE_READ) when dir itself cannot be read.
 */
export async function listConfigFiles(dir: string): Promise<ConfigFileList> {
  const root = resolve(dir);
  const result: ConfigFileList = { files: [], issues: [] };
  try {
    const info = await stat(root);
    if (!info.isDirectory()) throw new Error('not a directory');
  } catch (error) {
    const issue = fileIssue(undefined, `cannot read configuration directory: ${reason(error)}`);
    throw new ConfigError([issue], root);
  }
  await walk(root, '', new Set([await realpath(root)]), result);
  result.files.sort();
  return result;
}

async function walk(root: string, relativeDir: string, visited: Set<string>, result: ConfigFileList): Promise<void> {
  let entries;
  try {
    entries = await readdir(join(root, relativeDir), { withFileTypes: true });
  } catch (error) {
    result.issues.push(fileIssue(relativeDir, `cannot read directory: ${reason(error)}`));
    return;
  }
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue;
    // An ext4 volume's root holds lost+found (root's, mode 0700): a non-root proxy pointed at the volume cannot read it.
    if (relativeDir === '' && entry.name === 'lost+found' && entry.isDirectory()) continue;
    const relative = relativeDir === '' ? entry.name : `${relativeDir}/${entry.name}`;
    const full = join(root, relative);
    let isDirectory = entry.isDirectory();
    let isFile = entry.isFile();
    if (entry.isSymbolicLink()) {
      try {
        const target = await stat(full);
        isDirectory = target.isDirectory();
        isFile = target.isFile();
      } catch (error) {
        if (CONFIG_FILE.test(entry.name)) result.issues.push(fileIssue(relative, `cannot read: ${reason(error)}`));
        continue;
      }
    }
    if (isDirectory) {
      // Links can make cycles; each real directory is read once.
      const real = await realpath(full).catch(() => full);
      if (visited.has(real)) continue;
      visited.add(real);
      await walk(root, relative, visited, result);
    } else if (isFile && CONFIG_FILE.test(entry.name)) {
      result.files.push(relative);
    }
  }
}

async function readConfigFile(root: string, file: string, issues: ConfigIssue[]): Promise<Buffer | undefined> {
  let handle;
  try {
    handle = await open(join(root, file), 'r');
    const { size } = await handle.stat();
    if (size > MAX_CONFIG_FILE_BYTES) {
      issues.push(fileIssue(file, `file is ${size} bytes, more than the ${MAX_CONFIG_FILE_BYTES} a configuration file may have`));
      return undefined;
    }
    return await handle.readFile();
  } catch (error) {
    issues.push(fileIssue(file, `cannot read: ${reason(error)}`));
    return undefined;
  } finally {
    await handle?.close();
  }
}

/** Refuses invalid UTF-8 rather than replacing it; a byte-order mark is dropped, as YAML allows one. */
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function fileIssue(file: string | undefined, message: string): ConfigIssue {
  return { code: 'FILE_READ', file, line: undefined, object: undefined, field: undefined, message };
}

function reason(error: unknown): string {
  // Node's own messages begin with their code already ("ENOENT: no such file or directory, ...").
  if (error instanceof Error) return 'code' in error && typeof error.code === 'string' && !error.message.startsWith(error.code) ? `${error.code}: ${error.message}` : error.message;
  return String(error);
}

interface ParsedText {
  readonly objects: ConfigObject[];
  readonly issues: ConfigIssue[];
}

function isCyclic(value: unknown, ancestors = new Set<object>()): boolean {
  if (typeof value !== 'object' || value === null) return false;
  if (ancestors.has(value)) return true;
  ancestors.add(value);
  for (const child of Object.values(value)) if (isCyclic(child, ancestors)) return true;
  ancestors.delete(value);
  return false;
}

/**
 * The values `value` holds, a node that aliases repeat counted each time it appears; counting stops past `limit`
 * (the answer is then limit + 1).
 */
function countItems(value: unknown, limit: number): number {
  let count = 0;
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const next = pending.pop();
    if (++count > limit) return count;
    if (typeof next !== 'object' || next === null) continue;
    for (const child of Array.isArray(next) ? next : Object.values(next)) pending.push(child);
  }
  return count;
}

function parseDocuments(text: string, file: string): ParsedText {
  const result: ParsedText = { objects: [], issues: [] };
  const lineCounter = new LineCounter();
  const lineAt = (offset: number): number => lineCounter.linePos(offset).line;
  // The yaml library's own uniqueKeys check compares every key with every earlier one (a 40,000-key mapping took
  // ~24 s, synchronously, in a reload); duplicateKeys does the same check in one pass. Merge keys (`<<: *base`) are
  // read as kubectl's YAML reads them, a mapping's own keys winning: they were refused as an unknown field `<<`.
  // What the parser holds costs up to ~260 bytes of heap per byte of input on line-dense text (a file of `---`, a list of
  // one-letter items): 32 MiB of that exhausted the heap, and the process aborted. Counted before parsing.
  // Lines and flow-list items both: `[a,a,a,...]` on one line costs as much per item.
  let items = 0;
  for (let i = 0; i < text.length && items <= MAX_CONFIG_ITEMS; i++) {
    const code = text.charCodeAt(i);
    if (code === 10 /* \n */ || code === 44 /* , */) items++;
  }
  if (items > MAX_CONFIG_ITEMS) {
    result.issues.push({ code: 'CONFIG_YAML', file, line: undefined, object: undefined, field: undefined, message: `more than ${MAX_CONFIG_ITEMS} lines and list items: split it into several files` });
    return result;
  }
  let documents: ReturnType<typeof parseAllDocuments>;
  try {
    documents = parseAllDocuments(text, { lineCounter, prettyErrors: false, uniqueKeys: false, merge: true });
  } catch (error) {
    // The parser recurses per level of nesting: a file of 100,000 `[` overflows the stack. Named, not a crash.
    result.issues.push({ code: 'CONFIG_YAML', file, line: undefined, object: undefined, field: undefined, message: `cannot be parsed: ${reason(error)}` });
    return result;
  }
  // What the file's documents hold with their aliases expanded, all of them together.
  let expanded = 0;
  for (const document of documents) {
    if (document.errors.length > 0) {
      for (const error of document.errors) {
        result.issues.push({ code: 'CONFIG_YAML', file, line: lineAt(error.pos[0]), object: undefined, field: undefined, message: error.message });
      }
      continue;
    }
    // YAML 1.2 keys are unique: a repeated key (two `nodeName:` lines) is an error, not "the last one wins".
    const duplicates = duplicateKeys(document);
    if (duplicates.length > 0) {
      for (const duplicate of duplicates) {
        result.issues.push({ code: 'CONFIG_YAML', file, line: lineAt(duplicate.offset), object: undefined, field: undefined, message: `key "${duplicate.key}" appears more than once in the same mapping` });
      }
      continue;
    }
    if (document.contents === null) continue;
    let value: unknown;
    try {
      value = document.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (error) {
      // The parser's own errors here (a merge of a scalar, too many aliases) carry no place: the first merge key whose
      // value is not a mapping is the likely one, else the document's first line.
      result.issues.push({ code: 'CONFIG_YAML', file, line: badMergeLine(document, lineAt) ?? nodeLine(document.contents, lineAt), object: undefined, field: undefined, message: reason(error) });
      continue;
    }
    if (value === null || value === undefined) continue;
    // An alias to a node that contains it (`spec: &a {self: *a}`) makes a cyclic value: every later walk
    // (hashing, diffing) would recurse forever.
    if (isCyclic(value)) {
      result.issues.push({ code: 'CONFIG_YAML', file, line: nodeLine(document.contents, lineAt), object: undefined, field: undefined, message: 'an alias refers to a node that contains it (a cycle)' });
      continue;
    }
    // Counted before parsing, the items did not count what aliases repeat: a 100,000-principal list named by 100 rules
    // (3.5 MB) took 17 s of validation and 2.2 GB. Counted again as every later walk sees it, over the whole file.
    expanded = countItems(value, MAX_CONFIG_ITEMS - expanded) + expanded;
    if (expanded > MAX_CONFIG_ITEMS) {
      result.issues.push({ code: 'CONFIG_YAML', file, line: nodeLine(document.contents, lineAt), object: undefined, field: undefined, message: `its aliases expand it to more than ${MAX_CONFIG_ITEMS} values (this document and those before it): write the repeated parts out, or split it into several files` });
      continue;
    }
    detachStrings(value);
    // `kubectl get pods -o yaml` writes a v1 List; its items are objects like any other.
    if (isMapping(value) && value['kind'] === 'List' && value['apiVersion'] === 'v1' && Array.isArray(value['items'])) {
      value['items'].forEach((item, index) => addObject(result, item, ['items', index], document, file, lineAt));
    } else if (Array.isArray(value)) {
      result.issues.push({ code: 'CONFIG_FIELD', file, line: nodeLine(document.contents, lineAt), object: undefined, field: undefined, message: 'is a list, not a configuration object: write each object as its own document (separated by ---), or wrap them in a v1 List (apiVersion: v1, kind: List, items: [...]), as kubectl takes them' });
    } else {
      addObject(result, value, [], document, file, lineAt);
    }
  }
  return result;
}

/**
 * Replaces every string value of 13 characters or more by a copy of its own. V8 makes such a substring a slice that
 * keeps the whole text it was cut from: each pod IP or name kept in the configuration would keep the file's whole
 * text alive (370 KB for the benchmark's 1,000 workloads) for as long as the configuration is in force.
 */
function detachStrings(value: unknown): void {
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (typeof item === 'string') value[i] = detached(item);
      else detachStrings(item);
    }
  } else if (isMapping(value)) {
    for (const key of Object.keys(value)) {
      const item = value[key];
      if (typeof item === 'string') value[key] = detached(item);
      else detachStrings(item);
    }
  }
}

function detached(text: string): string {
  return text.length < 13 ? text : (JSON.parse(JSON.stringify(text)) as string);
}

/** The line of the first `<<` whose value is neither a mapping nor an alias of one, if any. */
function badMergeLine(document: Document, lineAt: (offset: number) => number): number | undefined {
  let line: number | undefined;
  visit(document, {
    Pair(_key, pair) {
      // A merge key is read as a Scalar whose value is a symbol (`<<` quoted is an ordinary key).
      if (!isScalar(pair.key) || typeof pair.key.value !== 'symbol') return undefined;
      const values = isSeq(pair.value) ? pair.value.items : [pair.value];
      for (const value of values) {
        const target = isAlias(value) ? value.resolve(document) : value;
        if (!isMap(target)) {
          line = nodeLine(pair.key, lineAt);
          return visit.BREAK;
        }
      }
      return undefined;
    },
  });
  return line;
}

/** Keys repeated within one mapping, compared as the strings they become in the object (so `1` and `"1"` collide). */
function duplicateKeys(document: Document): { offset: number; key: string }[] {
  const found: { offset: number; key: string }[] = [];
  visit(document, {
    Map(_key, map) {
      const seen = new Set<string>();
      for (const pair of map.items) {
        // A key written through an alias (`*k :`) is the scalar it names: `&k nodeName: a, *k : b` repeats nodeName.
        const node = isAlias(pair.key) ? pair.key.resolve(document) : pair.key;
        if (!isScalar(node)) continue;
        const key = String(node.value);
        const offset = (isNode(pair.key) ? pair.key.range?.[0] : undefined) ?? 0;
        if (seen.has(key)) found.push({ offset, key });
        else seen.add(key);
      }
    },
  });
  return found;
}

/**
 * Problems reported per object, the rest summed up: finding each one's line walks the object's mappings, so a
 * document of 200,000 unknown keys would otherwise keep the proxy's event loop (every tunnel on the node) busy for
 * minutes on each reload.
 */
const MAX_ISSUES_PER_OBJECT = 100;

function addObject(result: ParsedText, value: unknown, prefix: FieldPath, document: Document, file: string, lineAt: (offset: number) => number): void {
  const line = lineOfPath(document, prefix, lineAt);
  const { object, label, issues } = validateObject(value, { file, line });
  if (issues.length > MAX_ISSUES_PER_OBJECT) {
    const first = issues[0] as (typeof issues)[number];
    result.issues.push({ code: first.code, file, line, object: label, field: undefined, message: `${issues.length - MAX_ISSUES_PER_OBJECT} more problems in this object (only the first ${MAX_ISSUES_PER_OBJECT} are listed)` });
  }
  for (const issue of issues.slice(0, MAX_ISSUES_PER_OBJECT)) {
    result.issues.push({
      code: issue.code,
      file,
      line: lineOfPath(document, [...prefix, ...issue.path], lineAt) ?? line,
      object: label,
      field: issue.path.length === 0 ? undefined : formatPath(issue.path),
      message: issue.message,
    });
  }
  if (object !== undefined) result.objects.push(object);
}

function nodeLine(node: unknown, lineAt: (offset: number) => number): number | undefined {
  return isNode(node) && node.range ? lineAt(node.range[0]) : undefined;
}

/**
 * The line of the deepest part of `path` that exists in the document: the key's line for a mapping entry, the
 * item's line for a list entry. For a missing field that is the line of its parent, where it belongs.
 */
function lineOfPath(document: Document, path: FieldPath, lineAt: (offset: number) => number): number | undefined {
  let node: unknown = document.contents;
  let line = nodeLine(node, lineAt);
  for (const segment of path) {
    if (isAlias(node)) node = node.resolve(document);
    if (isMap(node)) {
      const pair = node.items.find((item) => isScalar(item.key) && String(item.key.value) === String(segment));
      if (pair === undefined) break;
      line = nodeLine(pair.key, lineAt) ?? line;
      node = pair.value;
    } else if (isSeq(node) && typeof segment === 'number') {
      node = node.items[segment];
      if (node === undefined) break;
      line = nodeLine(node, lineAt) ?? line;
    } else {
      break;
    }
  }
  return line;
}
