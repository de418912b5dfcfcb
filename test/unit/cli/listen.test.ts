import { describe, expect, it } from 'vitest';
import { parseListen } from '../../../src/cli/listen.ts';
import { AmbitError } from '../../../src/errors.ts';

describe('a listen address on the command line', () => {
  it.for([
    ['127.0.0.1:15020', { host: '127.0.0.1', port: 15020 }],
    [':15020', { host: '127.0.0.1', port: 15020 }],
    ['[::1]:0', { host: '::1', port: 0 }],
    ['0.0.0.0:80', { host: '0.0.0.0', port: 80 }],
    ['localhost:9000', { host: 'localhost', port: 9000 }],
    ['node-a.internal.:9000', { host: 'node-a.internal.', port: 9000 }],
  ] as const)('takes %s', ([text, expected]) => {
    expect(parseListen(text, 'metrics')).toEqual(expected);
  });

  it.for([
    ['[zz]:1', 'is neither an IP address nor a host name'],
    ['host name:80', 'is neither an IP address nor a host name'],
    ['-bad.example:80', 'is neither an IP address nor a host name'],
    ['a..b:80', 'is neither an IP address nor a host name'],
    ['300.1.1.1:80', 'is neither an IP address nor a host name'],
    ['127.1:80', 'is neither an IP address nor a host name'],
    ['::1:80', 'is not HOST:PORT'],
    ['127.0.0.1:70000', 'is not HOST:PORT'],
    ['127.0.0.1', 'is not HOST:PORT'],
    ['[1.2.3.4]:80', 'is not an IPv6 address'],
  ] as const)('refuses %s as usage, naming the flag', ([text, message]) => {
    let error: unknown;
    try {
      parseListen(text, 'hbone-listen');
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(AmbitError);
    expect((error as AmbitError).code).toBe('USAGE');
    expect((error as AmbitError).message).toContain('--hbone-listen');
    expect((error as AmbitError).message).toContain(message);
  });
});
