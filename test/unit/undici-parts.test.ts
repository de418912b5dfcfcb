import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe("the long-running processes' modules", () => {
  it("load undici's dispatchers and request API without undici's index (fetch, WebSocket, caches)", () => {
    // A fresh process: what the proxy's own modules pull in, not what the test runner already loaded.
    const script = `
      import { createRequire } from 'node:module';
      await import('./src/identity/agent.ts');
      await import('./src/identity/federation.ts');
      await import('./src/proxy/l7.ts');
      await import('./src/cli/proxy.ts');
      await import('./src/cli/ca.ts');
      await import('./src/cli/agent.ts');
      await import('./src/cli/mesh.ts');
      const { Agent, Client } = await import('./src/undici.ts');
      const loaded = Object.keys(createRequire(import.meta.url).cache).filter((path) => path.includes('/undici/'));
      console.log(JSON.stringify({ loaded, request: typeof new Agent().request, clientRequest: typeof Client.prototype.request }));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
    const { loaded, request, clientRequest } = JSON.parse(out) as { loaded: string[]; request: string; clientRequest: string };
    expect(loaded.some((path) => path.endsWith('/undici/lib/dispatcher/agent.js'))).toBe(true);
    expect(loaded.filter((path) => path.endsWith('/undici/index.js') || path.includes('/undici/lib/web/'))).toEqual([]);
    expect([request, clientRequest]).toEqual(['function', 'function']);
  });

  it("start the proxy and the CA without Node's own bundled undici (node:http's WebSocket getters load it into an ESM namespace)", () => {
    const script = `
      await import('./src/cli/proxy.ts');
      await import('./src/cli/ca.ts');
      await import('./src/cli/agent.ts');
      await import('./src/cli/mesh.ts');
      await new Promise((resolve) => setTimeout(resolve, 100));
      console.log(JSON.stringify(process.moduleLoadList.filter((name) => name.includes('deps/undici'))));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual([]);
    // The control: an ESM import of node:http does load it on this Node, so the check above can fail.
    const control = `await import('node:http'); console.log(JSON.stringify(process.moduleLoadList.filter((name) => name.includes('deps/undici'))));`;
    expect(JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', control], { encoding: 'utf8' }))).not.toEqual([]);
  });

  it('refuse a URL that is not http or https before dialling anything', async () => {
    const { Agent, request } = await import('../../src/undici.ts');
    const dispatcher = new Agent();
    try {
      for (const url of ['file:///etc/passwd', 'ftp://127.0.0.1/x', 'javascript:alert(1)']) {
        await expect(request(url, { dispatcher, method: 'GET' }), url).rejects.toThrow(/not an http or https URL/);
      }
      await expect(request('not a url', { dispatcher, method: 'GET' })).rejects.toThrow(TypeError);
    } finally {
      await dispatcher.close();
    }
  });
});
