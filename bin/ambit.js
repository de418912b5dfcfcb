#!/usr/bin/env node
// Entry for the package bin: the compiled CLI (dist/, which `npm install` and `npm run build` make). Without a
// build, the TypeScript source with Node 24's type stripping (which costs each process about 20 MiB more).
import { existsSync } from 'node:fs';
import { URL } from 'node:url';

const built = new URL('../dist/cli/main.js', import.meta.url);
const { runCli } = await import(existsSync(built) ? built.href : new URL('../src/cli/main.ts', import.meta.url).href);
runCli();
