// node:http loaded with require, not an ESM import. To build a builtin's ESM namespace Node reads every export, and
// node:http's lazy WebSocket, CloseEvent and MessageEvent getters load Node's bundled undici (fetch, WebSocket, ...):
// 2 MiB of V8 heap and a 760 KB source kept for lazy compilation in a process that uses none of it (Node 24).
// Type-only imports of node:http stay as they are: they are erased.
import { createRequire } from 'node:module';
import type * as NodeHttp from 'node:http';

export const http = createRequire(import.meta.url)('node:http') as typeof NodeHttp;
