// The address a CONNECT's `forwarded` header names (RFC 7239 `for=`): only the first element's, only an IP
// literal, with or without a port; anything else names none (and the session's own address stands).
import { describe, expect, it } from 'vitest';
import { forwardedForAddress, forwardedHost } from '../../../src/proxy/inbound.ts';

describe("a forwarded header's for= address", () => {
  it.each([
    ['for="10.0.0.5:4711"', '10.0.0.5'],
    ['for=10.0.0.5', '10.0.0.5'],
    ['FOR="10.0.0.5"', '10.0.0.5'],
    ['for="[fd00::5]:4711"', 'fd00::5'],
    ['for="[fd00::5]"', 'fd00::5'],
    ['proto=https;for="10.0.0.5";host=web', '10.0.0.5'],
    ['for="10.0.0.5", for="10.0.0.6"', '10.0.0.5'],
    // Not bracketed as RFC 7239 asks, but an address all the same (the registry and host checks still decide).
    ['for="fd00::5:80"', 'fd00::5:80'],
  ])('reads %s as %s', (value, address) => {
    expect(forwardedForAddress(value)).toBe(address);
  });

  it.each([
    'for=unknown', 'for="_hidden"', 'for="[fd00::5"', 'for="[]"', 'for=""', 'for="10.0.0.5:"', 'for="web.demo:80"', 'for="300.1.1.1"',
    'xfor="10.0.0.5"', 'by="10.0.0.5"', '', 'for="[fd00::5]x"', 'for="[fd00::5]:"', 'for="[10.0.0.5]"', 'for="10.0.0.5:http"',
  ])('names no address in %j', (value) => {
    expect(forwardedForAddress(value)).toBeNull();
  });
});

describe("a forwarded header's host= (the Service the client addressed)", () => {
  it.each([
    ['for="10.0.0.5:4711";host=web.shop.svc.cluster.local', 'web.shop.svc.cluster.local'],
    ['for="10.0.0.5";host="web.shop.svc.cluster.local"', 'web.shop.svc.cluster.local'],
    ['host=web;for="10.0.0.5"', 'web'],
  ])('reads %s as %s', (value, host) => {
    expect(forwardedHost(value)).toBe(host);
  });

  it.each(['for="10.0.0.5"', 'for="10.0.0.5";host=', 'for="10.0.0.5";xhost=web', 'for="10.0.0.5";host=""', ''])('names no host in %j', (value) => {
    expect(forwardedHost(value)).toBeNull();
  });
});
