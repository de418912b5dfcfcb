import { appendFile, readFile, rename, rm, symlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../../src/config/audit.ts';
import type { ConfigDiff } from '../../../src/config/diff.ts';
import type { ConfigSnapshot } from '../../../src/config/snapshot.ts';
import { watchConfigDir } from '../../../src/config/watch.ts';
import type { ConfigWatcher, WatchOptions } from '../../../src/config/watch.ts';
import type { AmbitError } from '../../../src/errors.ts';
import { configDir, configError, meshYaml, podYaml, removeConfigDirs, replaceFiles, workloadEntryYaml, writeFiles } from './temp-config.ts';

type WatchEvent = { type: 'change'; next: ConfigSnapshot; prev: ConfigSnapshot; diff: ConfigDiff } | { type: 'error'; error: AmbitError };

/** Records the watcher's callbacks and lets a test await the next one. */
class Recorder {
  readonly events: WatchEvent[] = [];
  #waiters: ((event: WatchEvent) => void)[] = [];
  #read = 0;

  readonly callbacks: Pick<WatchOptions, 'onChange' | 'onError'> = {
    onChange: (next, prev, diff) => this.#push({ type: 'change', next, prev, diff }),
    onError: (error) => this.#push({ type: 'error', error }),
  };

  #push(event: WatchEvent): void {
    this.events.push(event);
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) {
      this.#read++;
      waiter(event);
    }
  }

  next(timeoutMs = 5000): Promise<WatchEvent> {
    const queued = this.events[this.#read];
    if (queued !== undefined) {
      this.#read++;
      return Promise.resolve(queued);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no watcher event within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push((event) => {
        clearTimeout(timer);
        resolve(event);
      });
    });
  }
}

const watchers: ConfigWatcher[] = [];
afterEach(async () => {
  await Promise.all(watchers.splice(0).map((watcher) => watcher.close()));
  await removeConfigDirs();
});

async function startWatching(dir: string, recorder: Recorder, options: Partial<WatchOptions> = {}): Promise<ConfigWatcher> {
  const watcher = await watchConfigDir(dir, { ...recorder.callbacks, debounceMs: 30, inPlaceSettleMs: 150, requireMesh: true, ...options });
  watchers.push(watcher);
  return watcher;
}

const validPod = (ip: string, node = 'node-a') => podYaml({ name: 'web', serviceAccount: 'web', node, ip });

for (const mode of ['fs.watch', 'polling'] as const) {
  describe(`watchConfigDir (${mode})`, () => {
    const options: Partial<WatchOptions> = mode === 'polling' ? { poll: true, pollIntervalMs: 40 } : {};

    it('swaps in a valid change and reports it with its diff', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      const initial = watcher.current();
      expect(initial.workloadByIp('10.0.0.1')?.name).toBe('web');

      await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.2', 'node-b') });
      const event = await recorder.next();
      expect(event.type).toBe('change');
      if (event.type !== 'change') return;
      expect(event.prev).toBe(initial);
      expect(event.next).toBe(watcher.current());
      expect(event.diff.changed).toEqual([{ object: 'Pod default/web', file: 'pod.yaml', fields: ['spec.nodeName', 'status.podIP'] }]);
      expect(watcher.current().workloadByIp('10.0.0.1')).toBeUndefined();
      expect(watcher.current().identitiesOnNode('node-b').has('spiffe://cluster.local/ns/default/sa/web')).toBe(true);
    });

    it('keeps the last good snapshot when a change is invalid, reports the coded error, and recovers once it is fixed', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      const good = watcher.current();

      await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.1').replace('spec:\n', 'spec:\n  nodeName: node-b\n') });
      const rejected = await recorder.next();
      expect(rejected.type).toBe('error');
      if (rejected.type !== 'error') return;
      expect(rejected.error.code).toBe('CONFIG_YAML');
      expect(rejected.error.message).toContain('pod.yaml:');
      expect(watcher.current()).toBe(good);
      expect(watcher.current().identitiesOnNode('node-a').has('spiffe://cluster.local/ns/default/sa/web')).toBe(true);

      await replaceFiles(dir, { 'other.yaml': validPod('10.0.0.9').replace('name: web', 'name: other') });
      const stillBroken = await recorder.next();
      expect(stillBroken.type).toBe('error');
      expect(watcher.current()).toBe(good);

      await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.1', 'node-b') });
      const recovered = await recorder.next();
      expect(recovered.type).toBe('change');
      if (recovered.type !== 'change') return;
      expect(recovered.prev).toBe(good);
      expect(recovered.diff.added).toEqual([{ object: 'Pod default/other', file: 'other.yaml' }]);
      expect(watcher.current().workloadsOnNode('node-b').map((workload) => workload.name)).toEqual(['web']);
    });

    it('reports a rejected change once: the poll that follows does not report it again', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      await startWatching(dir, recorder, { pollIntervalMs: 40, ...options });
      await replaceFiles(dir, { 'pod.yaml': 'apiVersion: v1\nkind: Pod\nmetadata: { name: [unclosed\n' });
      expect((await recorder.next()).type).toBe('error');
      await new Promise((resolve) => setTimeout(resolve, 600));
      expect(recorder.events.map((event) => event.type)).toEqual(['error']);
    });

    it('holds the objects of a file emptied in place (as `>` does before the writer is done), and lets a removed file take its objects with it', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1'), 'other.yaml': validPod('10.0.0.9').replace('name: web', 'name: other') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      const good = watcher.current();

      await writeFiles(dir, { 'pod.yaml': '' });
      const held = await recorder.next();
      expect(held.type).toBe('error');
      if (held.type !== 'error') return;
      expect(held.error.code).toBe('CONFIG_FILE_EMPTIED');
      expect(held.error.message).toContain(join(dir, 'pod.yaml'));
      expect(watcher.current()).toBe(good);

      // The writer finishes: its content is what counts.
      await writeFiles(dir, { 'pod.yaml': validPod('10.0.0.2') });
      const written = await recorder.next();
      expect(written.type).toBe('change');
      expect(watcher.current().workloadByIp('10.0.0.2')?.name).toBe('web');

      // Blank is as empty: held too.
      await writeFiles(dir, { 'pod.yaml': '\n\n' });
      const stillHeld = await recorder.next();
      expect(stillHeld.type === 'error' && stillHeld.error.code).toBe('CONFIG_FILE_EMPTIED');
      expect(watcher.current().workloadByIp('10.0.0.2')?.name).toBe('web');
      // Commented out (an editor saving in place): applied once the file has held still.
      await writeFiles(dir, { 'pod.yaml': `# ${validPod('10.0.0.2').split('\n').join('\n# ')}` });
      const commented = await recorder.next();
      expect(commented.type === 'change' && commented.diff.removed).toEqual([{ object: 'Pod default/web', file: 'pod.yaml' }]);
      // A removed file takes its objects away.
      await rm(join(dir, 'other.yaml'));
      const removed = await recorder.next();
      expect(removed.type === 'change' && removed.diff.removed).toEqual([{ object: 'Pod default/other', file: 'other.yaml' }]);
    });

    it('says once that a file is emptied in place while it stays so (blank, then truncated by the next write), again when another file changes meanwhile, and after a change was applied', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      const good = watcher.current();

      await writeFiles(dir, { 'pod.yaml': '\n\n' });
      const held = await recorder.next();
      expect(held.type === 'error' && held.error.code).toBe('CONFIG_FILE_EMPTIED');
      // The next in-place write truncates it first; a load at that moment finds the same hold.
      await writeFiles(dir, { 'pod.yaml': '' });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(recorder.events.map((event) => event.type === 'error' && event.error.code)).toEqual(['CONFIG_FILE_EMPTIED']);
      expect(watcher.current()).toBe(good);

      // Another file changed meanwhile: what it adds applies (a new DENY is never held back), and the hold is said again.
      await replaceFiles(dir, { 'other.yaml': validPod('10.0.0.9').replace('name: web', 'name: other') });
      const added = await recorder.next();
      expect(added.type === 'change' && added.diff).toEqual({ added: [{ object: 'Pod default/other', file: 'other.yaml' }], removed: [], changed: [] });
      const waiting = await recorder.next();
      expect(waiting.type === 'error' && waiting.error.code).toBe('CONFIG_FILE_EMPTIED');
      expect(waiting.type === 'error' && waiting.error.message).toContain('the objects this change adds in other files are applied, the rest of it waits');
      expect(watcher.current().workloadByIp('10.0.0.1')?.name).toBe('web');
      expect(watcher.current().workloadByIp('10.0.0.9')?.name).toBe('other');

      await writeFiles(dir, { 'pod.yaml': validPod('10.0.0.2') });
      expect((await recorder.next()).type).toBe('change');
      await writeFiles(dir, { 'pod.yaml': '' });
      const again = await recorder.next();
      expect(again.type === 'error' && again.error.code).toBe('CONFIG_FILE_EMPTIED');
      expect(watcher.current().workloadByIp('10.0.0.2')?.name).toBe('web');
    });

    it('applies a change that takes objects away from a file written in place only once it has held still, so a write paused between two documents drops nothing', async () => {
      const web = validPod('10.0.0.1');
      const other = validPod('10.0.0.9').replace('name: web', 'name: other');
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pods.yaml': `${web}---\n${other}` });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, { ...options, inPlaceSettleMs: 800 });
      const good = watcher.current();

      // The writer has written the first document and pauses (a download, a slow mount), then finishes.
      await writeFiles(dir, { 'pods.yaml': `${web}---\n` });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(watcher.current()).toBe(good);
      await writeFiles(dir, { 'pods.yaml': `${web}---\n${other}` });
      await new Promise((resolve) => setTimeout(resolve, 1200));
      expect(recorder.events).toEqual([]);
      expect(watcher.current().workloadByIp('10.0.0.9')?.name).toBe('other');

      // Left that way, it was meant: applied once it has held still.
      const started = Date.now();
      await writeFiles(dir, { 'pods.yaml': web });
      const applied = await recorder.next();
      expect(applied.type === 'change' && applied.diff.removed).toEqual([{ object: 'Pod default/other', file: 'pods.yaml' }]);
      expect(Date.now() - started).toBeGreaterThanOrEqual(700);

      // Written by rename, a file is whole when it appears: applied at once.
      await writeFiles(dir, { '.pods.tmp': `${web}---\n${other}` });
      await rename(join(dir, '.pods.tmp'), join(dir, 'pods.yaml'));
      expect((await recorder.next()).type).toBe('change');
      const renamed = Date.now();
      await writeFiles(dir, { '.pods.tmp': web });
      await rename(join(dir, '.pods.tmp'), join(dir, 'pods.yaml'));
      const removed = await recorder.next();
      expect(removed.type === 'change' && removed.diff.removed).toEqual([{ object: 'Pod default/other', file: 'pods.yaml' }]);
      expect(Date.now() - renamed).toBeLessThan(700);
      // And one that holds nothing but a comment says so: its objects go.
      await writeFiles(dir, { '.pods.tmp': '# no pods here any more\n' });
      await rename(join(dir, '.pods.tmp'), join(dir, 'pods.yaml'));
      const cleared = await recorder.next();
      expect(cleared.type === 'change' && cleared.diff.removed).toEqual([{ object: 'Pod default/web', file: 'pods.yaml' }]);

      // Held still is judged by this host's own clock: a file server an hour ahead does not hold a change for an hour.
      await writeFiles(dir, { 'pods.yaml': `${web}---\n${other}` });
      expect((await recorder.next()).type).toBe('change');
      await writeFiles(dir, { 'pods.yaml': web });
      const ahead = new Date(Date.now() + 3_600_000);
      await utimes(join(dir, 'pods.yaml'), ahead, ahead);
      const afterSettle = await recorder.next(5_000);
      expect(afterSettle.type === 'change' && afterSettle.diff.removed).toEqual([{ object: 'Pod default/other', file: 'pods.yaml' }]);
    });

    it('applies at once what a change adds in other files while a file written in place waits, but nothing it removes or changes there', async () => {
      const web = validPod('10.0.0.1');
      const other = validPod('10.0.0.9').replace('name: web', 'name: other');
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pods.yaml': `${web}---\n${other}`, 'extra.yaml': validPod('10.0.0.5').replace('name: web', 'name: extra') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, { ...options, inPlaceSettleMs: 1500 });

      // pods.yaml half rewritten in place (its second document not yet there); meanwhile a new file arrives by rename
      // and extra.yaml loses its pod by rename: only the new file's object applies before pods.yaml holds still (a new
      // file adding no policy is not held: below).
      await writeFiles(dir, { 'pods.yaml': `${web}---\n` });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await replaceFiles(dir, { 'new.yaml': validPod('10.0.0.7').replace('name: web', 'name: fresh'), 'extra.yaml': '# moved\n' });
      const added = await recorder.next(1000);
      expect(added.type === 'change' && added.diff).toEqual({ added: [{ object: 'Pod default/fresh', file: 'new.yaml' }], removed: [], changed: [] });
      expect(watcher.current().workloadByIp('10.0.0.9')?.name).toBe('other');
      expect(watcher.current().workloadByIp('10.0.0.5')?.name).toBe('extra');
      // Then the rest, once pods.yaml has held still.
      const rest = await recorder.next(5000);
      expect(rest.type === 'change' && rest.diff.removed.map((ref) => ref.object).sort()).toEqual(['Pod default/extra', 'Pod default/other']);
      expect(recorder.events.filter((event) => event.type === 'error')).toEqual([]);

      // An object that only stands with the rest of the change (a pod moving out of the emptied file, its IP taken
      // twice until that file is read again) waits with it; a DENY beside it does not.
      await writeFiles(dir, { 'pods.yaml': '' });
      const held = await recorder.next();
      expect(held.type === 'error' && held.error.code).toBe('CONFIG_FILE_EMPTIED');
      await replaceFiles(dir, { 'moved.yaml': validPod('10.0.0.1').replace('name: web', 'name: moved') });
      const waiting = await recorder.next();
      expect(waiting.type === 'error' && waiting.error.message).toContain('this change waits');
      expect(watcher.current().workloadByIp('10.0.0.1')?.name).toBe('web');
      const deny = 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: new-deny, namespace: default }\nspec:\n  action: DENY\n  rules:\n    - to: [{ operation: { paths: ["/admin"] } }]\n';
      await replaceFiles(dir, { 'moved.yaml': `${validPod('10.0.0.1').replace('name: web', 'name: moved')}---\n${deny}` });
      const denied = await recorder.next();
      expect(denied.type === 'change' && denied.diff.added).toEqual([{ object: 'AuthorizationPolicy default/new-deny', file: 'moved.yaml' }]);
      expect(watcher.current().workloadByIp('10.0.0.1')?.name).toBe('web');
    });

    it('applies what a file written in place adds, and what a new file adds but Pods and Services, only once it has held still: an ALLOW cut before its operations and selector is never in force', async () => {
      // kubectl's order (`rules` before `selector`, `from` before `to`): cut after the sources, the policy reads as an
      // ALLOW of every operation from them to every workload of the namespace.
      const allow = (name: string) => `apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ${name}\n  namespace: default\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces:\n        - partner\n`;
      const rest = '    to:\n    - operation:\n        methods:\n        - GET\n  selector:\n    matchLabels:\n      app: web\n';
      const whole = (name: string, policy: ConfigSnapshot) => {
        const found = policy.objects.find((object) => object.kind === 'AuthorizationPolicy' && object.metadata.name === name);
        return found?.kind === 'AuthorizationPolicy' && found.spec.selector !== undefined && found.spec.rules?.[0]?.to !== undefined;
      };
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1'), 'policies.yaml': `${allow('allow-old')}${rest}` });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, { ...options, inPlaceSettleMs: 800 });
      const good = watcher.current();

      // Appended to a file in place (`cat >> policies.yaml`), the writer pausing after the sources.
      await appendFile(join(dir, 'policies.yaml'), `---\n${allow('allow-partner')}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(recorder.events).toEqual([]);
      expect(watcher.current()).toBe(good);
      await appendFile(join(dir, 'policies.yaml'), rest);
      const finished = Date.now();
      const appended = await recorder.next();
      expect(appended.type === 'change' && appended.diff).toEqual({ added: [{ object: 'AuthorizationPolicy default/allow-partner', file: 'policies.yaml' }], removed: [], changed: [] });
      expect(Date.now() - finished).toBeGreaterThanOrEqual(700);
      expect(whole('allow-partner', watcher.current())).toBe(true);

      // A new name written in place (`curl ... > late.yaml`): the same.
      await writeFiles(dir, { 'late.yaml': allow('allow-late') });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(recorder.events).toHaveLength(1);
      await appendFile(join(dir, 'late.yaml'), rest);
      const created = await recorder.next();
      expect(created.type === 'change' && created.diff.added).toEqual([{ object: 'AuthorizationPolicy default/allow-late', file: 'late.yaml' }]);
      expect(whole('allow-late', watcher.current())).toBe(true);
      expect(recorder.events).toHaveLength(2);

      // A WorkloadEntry in a new file too: kubectl writes its address first, and cut there it is a workload of the
      // namespace's default identity, without the labels its policies select it by.
      const vm = workloadEntryYaml('vm-1', '10.0.0.50', 'node-a');
      const cut = vm.indexOf('  serviceAccount:');
      await writeFiles(dir, { 'vm.yaml': vm.slice(0, cut) });
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(recorder.events).toHaveLength(2);
      await appendFile(join(dir, 'vm.yaml'), vm.slice(cut));
      const entered = await recorder.next();
      expect(entered.type === 'change' && entered.diff.added).toEqual([{ object: 'WorkloadEntry default/vm-1', file: 'vm.yaml' }]);
      expect(watcher.current().workloadByIp('10.0.0.50')?.identity).toBe('spiffe://cluster.local/ns/default/sa/vm-1');

      // Replaced by rename, a file is whole when it appears: what it adds applies at once.
      const renamed = Date.now();
      await replaceFiles(dir, { 'late.yaml': `${allow('allow-late')}${rest}---\n${allow('allow-later')}${rest}` });
      const later = await recorder.next();
      expect(later.type === 'change' && later.diff.added).toEqual([{ object: 'AuthorizationPolicy default/allow-later', file: 'late.yaml' }]);
      expect(Date.now() - renamed).toBeLessThan(700);
    });

    it('loads again when a broken link that was refused is removed, without waiting for another edit', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      // A ConfigMap update half done by hand: the new file in place, a link to a file that is gone beside it.
      await replaceFiles(dir, { 'other.yaml': validPod('10.0.0.9').replace('name: web', 'name: other') });
      await symlink(join(dir, 'missing.yaml'), join(dir, 'dangling.yaml'));
      const refused = await recorder.next();
      expect(refused.type === 'error' && refused.error.message).toContain('dangling.yaml');
      await rm(join(dir, 'dangling.yaml'));
      const loaded = await recorder.next();
      expect(loaded.type).toBe('change');
      expect(watcher.current().workloadByIp('10.0.0.9')?.name).toBe('other');
    });

    it('keeps the last good snapshot when the MeshConfig is deleted or the directory vanishes', async () => {
      const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
      const recorder = new Recorder();
      const watcher = await startWatching(dir, recorder, options);
      const good = watcher.current();

      await rm(join(dir, 'mesh.yaml'));
      const event = await recorder.next();
      expect(event.type === 'error' && event.error.code).toBe('CONFIG_MESH_MISSING');
      expect(watcher.current()).toBe(good);
    });
  });
}

describe('watchConfigDir', () => {
  it('refuses to start on an invalid directory', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml('Not_Valid') });
    const error = await configError(watchConfigDir(dir, { ...new Recorder().callbacks }));
    expect(error.code).toBe('CONFIG_FIELD');
  });

  it('does not report edits that change nothing, such as comments', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
    const recorder = new Recorder();
    const watcher = await startWatching(dir, recorder);
    const initial = watcher.current();
    await replaceFiles(dir, { 'pod.yaml': `# reviewed\n${validPod('10.0.0.1')}` });
    await replaceFiles(dir, { 'mesh.yaml': `${meshYaml()}  # a trailing comment\n` });
    await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.3') });
    const event = await recorder.next();
    expect(event.type === 'change' && event.diff.changed.map((change) => change.fields)).toEqual([['status.podIP']]);
    expect(event.type === 'change' && event.prev).toBe(initial);
    expect(recorder.events).toHaveLength(1);
  });

  it('coalesces a burst of writes into one reload', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
    const recorder = new Recorder();
    await startWatching(dir, recorder, { debounceMs: 150 });
    for (let index = 2; index <= 6; index++) await replaceFiles(dir, { 'pod.yaml': validPod(`10.0.0.${index}`) });
    const event = await recorder.next();
    expect(event.type === 'change' && event.next.workloadByIp('10.0.0.6')?.name).toBe('web');
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(recorder.events).toHaveLength(1);
  });

  it('writes the initial load and every accepted change to the audit log, and nothing for a rejected one', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
    const logDir = await configDir({});
    const auditLog = new AuditLog(join(logDir, 'audit.log'));
    const recorder = new Recorder();
    const watcher = await startWatching(dir, recorder, { auditLog });
    const initial = watcher.current();

    await replaceFiles(dir, { 'pod.yaml': 'kind: [' });
    expect((await recorder.next()).type).toBe('error');
    await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.1', 'node-b') });
    expect((await recorder.next()).type).toBe('change');
    await auditLog.flush();

    const lines = (await readFile(auditLog.path, 'utf8')).trimEnd().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.map((line) => [line['previousVersion'], line['version']])).toEqual([
      [null, initial.version],
      [initial.version, watcher.current().version],
    ]);
    expect(lines[1]?.['changed']).toEqual([{ object: 'Pod default/web', file: 'pod.yaml', fields: ['spec.nodeName'] }]);
  });

  it('parses again only the files whose bytes changed: the others\' objects are the very same, a renamed file\'s name their new file', async () => {
    const podA = podYaml({ name: 'a', serviceAccount: 'a', node: 'node-a', ip: '10.0.0.1' });
    const podB = podYaml({ name: 'b', serviceAccount: 'b', node: 'node-a', ip: '10.0.0.2' });
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'a.yaml': podA, 'b.yaml': podB });
    const recorder = new Recorder();
    const watcher = await startWatching(dir, recorder);
    const pod = (snapshot: ConfigSnapshot, name: string) => snapshot.objects.find((object) => object.kind === 'Pod' && object.metadata.name === name);
    const initial = watcher.current();

    await replaceFiles(dir, { 'b.yaml': podB.replace('10.0.0.2', '10.0.0.3') });
    const changed = await recorder.next();
    if (changed.type !== 'change') throw new Error(`expected a change, got ${changed.type}`);
    expect(pod(changed.next, 'a')).toBe(pod(initial, 'a'));
    expect(pod(changed.next, 'b')).not.toBe(pod(initial, 'b'));
    expect(changed.next.workloadByIp('10.0.0.3')?.name).toBe('b');
    expect(changed.diff.changed).toEqual([{ object: 'Pod default/b', file: 'b.yaml', fields: ['status.podIP'] }]);

    // The same bytes under another name: read again, so that its objects and errors name the file they are in.
    await rename(join(dir, 'a.yaml'), join(dir, 'c.yaml'));
    const moved = await recorder.next();
    if (moved.type !== 'change') throw new Error(`expected a change, got ${moved.type}`);
    expect(pod(moved.next, 'a')?.source.file).toBe('c.yaml');
    expect(moved.diff.changed).toEqual([{ object: 'Pod default/a', file: 'c.yaml', fields: [], previousFile: 'a.yaml' }]);

    // Back to its first bytes: what the file holds now, whatever was parsed before.
    await replaceFiles(dir, { 'b.yaml': podB });
    const back = await recorder.next();
    if (back.type !== 'change') throw new Error(`expected a change, got ${back.type}`);
    expect(back.next.workloadByIp('10.0.0.2')?.name).toBe('b');
    expect(back.next.workloadByIp('10.0.0.3')).toBeUndefined();
    // The same content as at first (where it is kept is no part of it), with objects made again and objects kept.
    expect(back.next.version).toBe(initial.version);
  });

  it('stops reporting once closed', async () => {
    const dir = await configDir({ 'mesh.yaml': meshYaml(), 'pod.yaml': validPod('10.0.0.1') });
    const recorder = new Recorder();
    const watcher = await watchConfigDir(dir, { ...recorder.callbacks, debounceMs: 20 });
    const last = watcher.current();
    await watcher.close();
    await replaceFiles(dir, { 'pod.yaml': validPod('10.0.0.2') });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(recorder.events).toEqual([]);
    expect(watcher.current()).toBe(last);
  });
});
