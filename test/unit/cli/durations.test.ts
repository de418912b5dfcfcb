// Durations on the command line: the configuration's syntax (1h, 30m, 2h30m, 1d, 500ms), plus a plain number of seconds.
import { describe, expect, it } from 'vitest';
import { parse, parseDurationMs, parseDurationMsAllowZero } from '../../../src/cli/args.ts';
import { AmbitError } from '../../../src/errors.ts';

describe('command-line durations', () => {
  it.each([
    ['90', 90_000],
    ['90s', 90_000],
    ['2h30m', 9_000_000],
    ['1d', 86_400_000],
    ['500ms', 500],
  ])('reads %s', (text, ms) => {
    expect(parseDurationMs(text, 'ttl')).toBe(ms);
  });

  it.each(['', '0', '0s', '1x', '-5', '1.5h', 'h', '10 m', '99999999999999999999d'])('refuses %j naming the flag', (text) => {
    let caught: unknown;
    try {
      parseDurationMs(text, 'svid-ttl');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(AmbitError);
    expect((caught as AmbitError).code).toBe('USAGE');
    expect((caught as AmbitError).message).toContain('--svid-ttl');
  });

  it.each(['1.5h', '0.5s', '.5m', '1h0.5m'])('refuses %s saying that each unit takes a whole number', (text) => {
    expect(() => parseDurationMs(text, 'ttl')).toThrow(`--ttl: "${text}": a duration is written in whole numbers of each unit`);
  });

  // Zero in any unit is not a positive duration; it was once called longer than 100 years.
  it.each(['0s', '0d', '0h0m', '000ms'])('refuses %s as not positive, not as too long', (text) => {
    expect(() => parseDurationMs(text, 'ttl')).toThrow('--ttl: "' + text + '" is not a positive duration');
  });

  it.each(['0', '0s', '0d', '0h0m', '0ms'])('takes %s as zero where zero turns a timer off', (text) => {
    expect(parseDurationMsAllowZero(text, 'grace')).toBe(0);
  });

  it.each(['876001h', '99999999h', '99999999999999h'])('refuses %s as longer than 100 years', (text) => {
    expect(() => parseDurationMs(text, 'ttl')).toThrow('--ttl: "' + text + '" is longer than 100 years');
  });

  it('says in one line that a negative value is taken for an option, naming the flag and the value', () => {
    let caught: unknown;
    try {
      parse(['--ttl', '-1s'], { ttl: { type: 'string' } });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(AmbitError);
    expect((caught as AmbitError).code).toBe('USAGE');
    expect((caught as AmbitError).message).toBe('--ttl -1s: a value starting with "-" is taken for an option (negative values are never valid here; a value that must start with "-" is written --ttl=-1s)');
  });

  it.each([
    [['--ca', '--trust-domain', 'x'], '--ca is missing its value (the next argument, --trust-domain, is an option)'],
    [['--ttl', '1h', '--ttl', '-1s'], '--ttl -1s: a value starting with "-" is taken for an option'],
  ])('names what is wrong with %j', (argv, says) => {
    expect(() => parse(argv, { ca: { type: 'string' }, 'trust-domain': { type: 'string' }, ttl: { type: 'string', multiple: true } })).toThrow(says);
  });
});
