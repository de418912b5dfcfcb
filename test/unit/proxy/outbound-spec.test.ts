// Outbound listener specs: the `[ADDRESS:]PORT=HOST:PORT` entry, the --outbound flag, and the workload annotation,
// from the accept and the reject side; which declarations become listeners, and which workload owns one. Pure
// decisions; nothing is bound.
import { describe, expect, it } from 'vitest';
import { isAmbitError } from '../../../src/errors.ts';
import { parseConfigText } from '../../../src/config/loader.ts';
import { buildSnapshot } from '../../../src/config/snapshot.ts';
import { OUTBOUND_ANNOTATION, annotatedListeners, ownerOf, parseListenerEntry, parseOutboundFlag, planListeners } from '../../../src/proxy/outbound.ts';
import type { OutboundListenerSpec } from '../../../src/proxy/outbound.ts';

describe('parseListenerEntry accepts', () => {
  const accepted: Array<[string, string, string | undefined, { listenHost: string; listenPort: number; targetHost: string; targetPort: number }]> = [
    ['a port, listening on the workload\'s IP', '9007=echo.demo:7', '10.0.0.5', { listenHost: '10.0.0.5', listenPort: 9007, targetHost: 'echo.demo', targetPort: 7 }],
    ['an explicit IPv4 listen address', '127.0.0.1:9007=echo.demo:7', '10.0.0.5', { listenHost: '127.0.0.1', listenPort: 9007, targetHost: 'echo.demo', targetPort: 7 }],
    ['an explicit IPv4 listen address with no default', '127.0.0.1:9007=echo.demo:7', undefined, { listenHost: '127.0.0.1', listenPort: 9007, targetHost: 'echo.demo', targetPort: 7 }],
    ['a bracketed IPv6 listen address', '[::1]:9007=10.0.0.9:80', undefined, { listenHost: '::1', listenPort: 9007, targetHost: '10.0.0.9', targetPort: 80 }],
    ['an IPv6 workload IP as the default', '9007=[fd00::9]:80', 'fd00::5', { listenHost: 'fd00::5', listenPort: 9007, targetHost: 'fd00::9', targetPort: 80 }],
    ['spaces around the sides', ' 9007 = echo.demo:7 ', '10.0.0.5', { listenHost: '10.0.0.5', listenPort: 9007, targetHost: 'echo.demo', targetPort: 7 }],
    ['the highest listen port', '65535=echo.demo:7', '10.0.0.5', { listenHost: '10.0.0.5', listenPort: 65_535, targetHost: 'echo.demo', targetPort: 7 }],
  ];
  it.each(accepted)('%s', (_, entry, defaultHost, expected) => {
    expect(parseListenerEntry(entry, defaultHost)).toEqual(expected);
  });
});

describe('parseListenerEntry rejects, saying why', () => {
  const rejected: Array<[string, string, string | undefined]> = [
    ['an entry without "="', '9007', '10.0.0.5'],
    ['an entry with nothing before "="', '=echo.demo:7', '10.0.0.5'],
    ['an empty target', '9007=', '10.0.0.5'],
    ['a target without a port', '9007=echo.demo', '10.0.0.5'],
    ['a target with port 0', '9007=echo.demo:0', '10.0.0.5'],
    ['a target with an unbracketed IPv6 address', '9007=fd00::9:80', '10.0.0.5'],
    ['a second "=" in the target', '9007=a=b:7', '10.0.0.5'],
    ['listen port 0', '0=echo.demo:7', '10.0.0.5'],
    ['listen port 65536', '65536=echo.demo:7', '10.0.0.5'],
    ['a very long listen port', '99999999999999999999=echo.demo:7', '10.0.0.5'],
    ['a hostname as the listen address', 'localhost:9007=echo.demo:7', '10.0.0.5'],
    ['a listen address without a port', '127.0.0.1=echo.demo:7', '10.0.0.5'],
    ['a negative listen port', '-1=echo.demo:7', '10.0.0.5'],
    ['a bare port when there is no default address', '9007=echo.demo:7', undefined],
  ];
  it.each(rejected)('%s', (_, entry, defaultHost) => {
    const result = parseListenerEntry(entry, defaultHost);
    expect(typeof result).toBe('string');
    expect((result as string).length).toBeGreaterThan(0);
  });
});

describe('parseOutboundFlag', () => {
  it('reads LISTEN_IP:PORT=HOST:PORT@NAMESPACE/WORKLOAD', () => {
    expect(parseOutboundFlag('127.0.0.1:9007=echo.demo:7@demo/client-1')).toEqual({
      listenHost: '127.0.0.1',
      listenPort: 9007,
      targetHost: 'echo.demo',
      targetPort: 7,
      owner: 'demo/client-1',
      origin: '--outbound',
    });
  });

  it('reads an owner kind, Pod or WorkloadEntry, before the namespace', () => {
    expect(parseOutboundFlag('127.0.0.1:9007=echo.demo:7@Pod:demo/client-1')).toMatchObject({ owner: 'demo/client-1', ownerKind: 'Pod' });
    expect(parseOutboundFlag('127.0.0.1:9007=echo.demo:7@WorkloadEntry:demo/vm-1')).toMatchObject({ owner: 'demo/vm-1', ownerKind: 'WorkloadEntry' });
    expect(parseOutboundFlag('127.0.0.1:9007=echo.demo:7@demo/client-1')).not.toHaveProperty('ownerKind');
    expect(parseOutboundFlag('[::1]:9007=[fd00::9]:80@Pod:demo/client-1')).toMatchObject({ listenHost: '::1', targetHost: 'fd00::9', owner: 'demo/client-1', ownerKind: 'Pod' });
  });

  it('names the name, not a kind, when a ":" follows the namespace', () => {
    expect(() => parseOutboundFlag('127.0.0.1:9007=echo.demo:7@demo/client:1')).toThrow('owner "demo/client:1" is not NAMESPACE/WORKLOAD');
  });

  it('takes the last "@" as the owner separator', () => {
    expect(parseOutboundFlag('[::1]:9007=[fd00::9]:80@demo/vm.web').owner).toBe('demo/vm.web');
  });

  const rejected: Array<[string, string]> = [
    ['no owner', '127.0.0.1:9007=echo.demo:7'],
    ['an owner without a namespace', '127.0.0.1:9007=echo.demo:7@client-1'],
    ['an empty owner', '127.0.0.1:9007=echo.demo:7@'],
    ['an upper-case owner', '127.0.0.1:9007=echo.demo:7@Demo/client'],
    ['an owner with a third segment', '127.0.0.1:9007=echo.demo:7@demo/client/x'],
    ['no listen address (a flag has no workload IP to default to)', '9007=echo.demo:7@demo/client'],
    ['a malformed target', '127.0.0.1:9007=echo.demo@demo/client'],
    ['an empty flag', ''],
    ['an owner kind that is not Pod or WorkloadEntry', '127.0.0.1:9007=echo.demo:7@Service:demo/client'],
    ['a lower-case owner kind', '127.0.0.1:9007=echo.demo:7@pod:demo/client'],
    ['an empty owner kind', '127.0.0.1:9007=echo.demo:7@:demo/client'],
    ['an owner kind without a name', '127.0.0.1:9007=echo.demo:7@Pod:'],
    ['a ":" in the name', '127.0.0.1:9007=echo.demo:7@demo/client:1'],
  ];
  it.each(rejected)('rejects %s with USAGE', (_, text) => {
    let thrown: unknown;
    try {
      parseOutboundFlag(text);
    } catch (error) {
      thrown = error;
    }
    expect(isAmbitError(thrown, 'USAGE')).toBe(true);
  });
});

const MESH = `apiVersion: ambit.dev/v1alpha1
kind: MeshConfig
metadata: { name: mesh }
spec: { trustDomain: cluster.local }
`;

function pod(name: string, node: string, ip: string, annotation: string | undefined): string {
  const annotations = annotation === undefined ? '' : `\n  annotations: { ${OUTBOUND_ANNOTATION}: ${JSON.stringify(annotation)} }`;
  return `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: demo${annotations}
spec: { nodeName: ${node}, serviceAccountName: ${name} }
status: { phase: Running, podIP: "${ip}" }
`;
}

function snapshotOf(workloads: string) {
  return buildSnapshot([...parseConfigText(MESH, 'mesh.yaml'), ...parseConfigText(workloads, 'apps/pods.yaml')], { requireMesh: true });
}

describe('annotatedListeners', () => {
  it('declares one listener per entry on the Pod\'s IP, owned by the Pod, with where it came from', () => {
    const snapshot = snapshotOf(pod('client', 'node-a', '10.0.0.5', '9007=echo.demo:7, 127.0.0.1:9008=10.0.0.9:80'));
    const { specs, issues } = annotatedListeners(snapshot, 'node-a');
    expect(issues).toEqual([]);
    const origin = `apps/pods.yaml: Pod demo/client: metadata.annotations["${OUTBOUND_ANNOTATION}"]`;
    expect(specs).toEqual([
      { listenHost: '10.0.0.5', listenPort: 9007, targetHost: 'echo.demo', targetPort: 7, owner: 'demo/client', ownerKind: 'Pod', origin, annotation: true },
      { listenHost: '127.0.0.1', listenPort: 9008, targetHost: '10.0.0.9', targetPort: 80, owner: 'demo/client', ownerKind: 'Pod', origin, annotation: true },
    ]);
  });

  it("refuses an annotation's listener on another workload's address or a wildcard one, naming the workload's own", () => {
    const snapshot = snapshotOf(`${pod('client', 'node-a', '10.0.0.5', '10.0.0.6:9007=evil.example:5432, 0.0.0.0:9008=echo.demo:7, [::1]:9009=echo.demo:7')}---\n${pod('api', 'node-a', '10.0.0.6', undefined)}`);
    const { specs, issues } = annotatedListeners(snapshot, 'node-a');
    expect(specs.map((spec) => `${spec.listenHost}:${spec.listenPort}`)).toEqual(['::1:9009']);
    expect(issues.map((issue) => issue.message)).toEqual([
      "listen address 10.0.0.6 is not one of the workload's IPs (10.0.0.5) nor a loopback address; only an operator's --outbound may use another",
      "listen address 0.0.0.0 is not one of the workload's IPs (10.0.0.5) nor a loopback address; only an operator's --outbound may use another",
    ]);
  });

  it("refuses an annotation's listener on another workload's loopback address (a mesh on loopback), and takes its own", () => {
    const snapshot = snapshotOf(`${pod('peer', 'node-a', '127.193.1.21', '127.193.1.20:9014=evil.example:80, 127.193.1.21:9015=echo.demo:7, 127.0.0.1:9016=echo.demo:7')}---\n${pod('client', 'node-a', '127.193.1.20', undefined)}`);
    const { specs, issues } = annotatedListeners(snapshot, 'node-a');
    expect(specs.map((spec) => `${spec.listenHost}:${spec.listenPort}`)).toEqual(['127.193.1.21:9015', '127.0.0.1:9016']);
    expect(issues.map((issue) => issue.message)).toEqual(["listen address 127.193.1.20 is workload demo/client's IP; only an operator's --outbound may use another"]);
  });

  it('reads only the workloads of the node asked about', () => {
    const snapshot = snapshotOf(`${pod('client', 'node-a', '10.0.0.5', '9007=echo.demo:7')}---\n${pod('other', 'node-b', '10.0.1.5', '9007=echo.demo:7')}`);
    expect(annotatedListeners(snapshot, 'node-a').specs.map((spec) => spec.owner)).toEqual(['demo/client']);
    expect(annotatedListeners(snapshot, 'node-b').specs.map((spec) => spec.listenHost)).toEqual(['10.0.1.5']);
    expect(annotatedListeners(snapshot, 'node-z')).toEqual({ specs: [], issues: [] });
  });

  it('ignores Pods without the annotation and empty entries', () => {
    const snapshot = snapshotOf(`${pod('plain', 'node-a', '10.0.0.4', undefined)}---\n${pod('client', 'node-a', '10.0.0.5', ',9007=echo.demo:7,, ')}`);
    const { specs, issues } = annotatedListeners(snapshot, 'node-a');
    expect(issues).toEqual([]);
    expect(specs.map((spec) => `${spec.owner} ${spec.listenPort}`)).toEqual(['demo/client 9007']);
  });

  it('reports each bad entry naming the file, the object and the annotation field, and keeps the good ones', () => {
    const snapshot = snapshotOf(pod('client', 'node-a', '10.0.0.5', '9007=echo.demo:7,nonsense,70000=echo.demo:7,9009=Echo.demo:7'));
    const { specs, issues } = annotatedListeners(snapshot, 'node-a');
    expect(specs.map((spec) => spec.listenPort)).toEqual([9007]);
    expect(issues).toHaveLength(3);
    for (const issue of issues) {
      expect(issue.origin).toBe(`apps/pods.yaml: Pod demo/client: metadata.annotations["${OUTBOUND_ANNOTATION}"]`);
      expect(issue.message.length).toBeGreaterThan(0);
    }
  });

  it('listens on a WorkloadEntry\'s address by default', () => {
    const snapshot = snapshotOf(`apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: vm
  namespace: demo
  annotations: { ambit.dev/node: vm-1, ${OUTBOUND_ANNOTATION}: "9007=echo.demo:7" }
spec: { address: 192.168.50.7, serviceAccount: vm }
`);
    expect(annotatedListeners(snapshot, 'vm-1').specs).toEqual([
      expect.objectContaining({ listenHost: '192.168.50.7', listenPort: 9007, owner: 'demo/vm', origin: expect.stringContaining('WorkloadEntry demo/vm') }),
    ]);
  });
});

const TWINS = `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: twin
  namespace: demo
  annotations: { ambit.dev/node: node-a, ${OUTBOUND_ANNOTATION}: "127.0.0.1:9009=echo.demo:7" }
spec: { address: 10.0.0.6, serviceAccount: vm }
---
${pod('twin', 'node-a', '10.0.0.5', '127.0.0.1:9009=echo.demo:7')}---
${pod('solo', 'node-a', '10.0.0.7', undefined)}`;

describe('ownerOf', () => {
  const snapshot = snapshotOf(TWINS);
  const twins = snapshot.workloadsOnNodeByName('node-a', 'demo/twin');
  const solo = snapshot.workloadsOnNodeByName('node-a', 'demo/solo');

  it('gives a listener the workload of its own kind, whichever comes first in the files', () => {
    expect(twins.map((w) => w.kind)).toEqual(['WorkloadEntry', 'Pod']);
    expect(ownerOf(twins, 'Pod')?.identity).toBe('spiffe://cluster.local/ns/demo/sa/twin');
    expect(ownerOf(twins, 'WorkloadEntry')?.identity).toBe('spiffe://cluster.local/ns/demo/sa/vm');
    expect(ownerOf([...twins].reverse(), 'WorkloadEntry')?.identity).toBe('spiffe://cluster.local/ns/demo/sa/vm');
  });

  it('gives a listener without a kind the only workload of its name', () => {
    expect(ownerOf(solo, undefined)?.name).toBe('solo');
    expect(ownerOf(solo, 'Pod')?.name).toBe('solo');
  });

  it('gives no owner when the name is missing, the kind does not match, or two workloads share the name and no kind decides', () => {
    expect(ownerOf([], undefined)).toBeUndefined();
    expect(ownerOf([], 'Pod')).toBeUndefined();
    expect(ownerOf(solo, 'WorkloadEntry')).toBeUndefined();
    expect(ownerOf(twins, undefined)).toBeUndefined();
  });
});

describe('planListeners', () => {
  const flag = (text: string): OutboundListenerSpec => parseOutboundFlag(text);

  it("binds a listener declared by an annotation and again by a flag once, the flag's with the kind the annotation names", () => {
    const annotated = annotatedListeners(snapshotOf(pod('client', 'node-a', '10.0.0.5', '127.0.0.1:9008=echo.demo:7')), 'node-a').specs;
    const plan = planListeners([...annotated, flag('127.0.0.1:9008=echo.demo:7@demo/client')]);
    expect(plan.conflicts).toEqual([]);
    expect(plan.listeners).toEqual([{ ...flag('127.0.0.1:9008=echo.demo:7@demo/client'), ownerKind: 'Pod' }]);
  });

  it("lets the operator's flag win over a workload's annotation for the same address, whichever comes first", () => {
    const annotated = annotatedListeners(snapshotOf(pod('x', 'node-a', '10.0.0.5', '127.0.0.1:9007=evil.example:5432')), 'node-a').specs;
    const operator = flag('127.0.0.1:9007=db.prod:5432@prod/api');
    const plan = planListeners([...annotated, operator]);
    expect(plan.listeners).toEqual([operator]);
    expect(plan.conflicts).toEqual([{ origin: expect.stringContaining('Pod demo/x'), message: 'listen address 127.0.0.1:9007 is already declared by --outbound (to db.prod:5432 for prod/api)', annotation: true }]);
  });

  it('binds neither of two workloads\' annotations on one address (one could take a loopback address the other\'s application uses), reporting both', () => {
    const annotated = annotatedListeners(snapshotOf(`${pod('x', 'node-a', '10.0.0.5', '127.0.0.1:9007=evil.example:5432')}---\n${pod('api', 'node-a', '10.0.0.6', '127.0.0.1:9007=db.prod:5432')}---\n${pod('late', 'node-a', '10.0.0.7', '127.0.0.1:9007=db.prod:5432')}`), 'node-a').specs;
    const plan = planListeners(annotated);
    expect(plan.listeners).toEqual([]);
    const origin = (name: string) => expect.stringContaining(`Pod demo/${name}:`);
    expect(plan.conflicts).toEqual([
      { origin: origin('api'), message: expect.stringMatching(/^listen address 127\.0\.0\.1:9007 is already declared by .*Pod demo\/x.* \(to evil\.example:5432 for Pod demo\/x\)$/), annotation: true },
      { origin: origin('x'), message: expect.stringMatching(/^listen address 127\.0\.0\.1:9007 is also declared by .*Pod demo\/api.*: not bound$/), annotation: true },
      { origin: origin('late'), message: "listen address 127.0.0.1:9007 is declared by more than one workload's annotation: not bound", annotation: true },
    ]);
  });

  it('keeps listeners on different addresses, also of one owner', () => {
    const plan = planListeners([flag('127.0.0.1:9001=echo.demo:7@demo/client'), flag('127.0.0.1:9002=echo.demo:7@demo/client'), flag('[::1]:9001=echo.demo:7@demo/client')]);
    expect(plan.listeners.map((spec) => `${spec.listenHost}:${spec.listenPort}`)).toEqual(['127.0.0.1:9001', '127.0.0.1:9002', '::1:9001']);
    expect(plan.conflicts).toEqual([]);
  });

  it('refuses a second, different declaration of an address, naming the first: another target, another owner, another kind', () => {
    const first = flag('127.0.0.1:9001=echo.demo:7@demo/client');
    const plan = planListeners([first, flag('127.0.0.1:9001=echo.demo:8@demo/client'), flag('127.0.0.1:9001=echo.demo:7@demo/other')]);
    expect(plan.listeners).toEqual([first]);
    expect(plan.conflicts).toEqual([
      // The operator's own flags against each other: the node's problem (readiness), not a workload's.
      { origin: '--outbound', message: 'listen address 127.0.0.1:9001 is already declared by --outbound (to echo.demo:7 for demo/client)', annotation: false },
      { origin: '--outbound', message: 'listen address 127.0.0.1:9001 is already declared by --outbound (to echo.demo:7 for demo/client)', annotation: false },
    ]);
    // A Pod and a WorkloadEntry of one name declaring the same address and target: two owners, one address, neither bound.
    const twins = planListeners(annotatedListeners(snapshotOf(TWINS), 'node-a').specs);
    expect(twins.listeners).toEqual([]);
    expect(twins.conflicts).toEqual([
      { origin: expect.stringContaining('Pod demo/twin'), message: expect.stringContaining('already declared by apps/pods.yaml: WorkloadEntry demo/twin'), annotation: true },
      { origin: expect.stringContaining('WorkloadEntry demo/twin'), message: expect.stringContaining('also declared by apps/pods.yaml: Pod demo/twin'), annotation: true },
    ]);
  });
});
