#!/usr/bin/env node
// Entry for the package bin: runs the TypeScript CLI with Node 24's type stripping.
import { runCli } from '../src/cli/main.ts';

runCli();
