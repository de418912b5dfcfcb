// Parses listen addresses given on the command line: HOST:PORT, [V6]:PORT, or :PORT (loopback).
import { isIP } from 'node:net';
import { AmbitError } from '../errors.ts';

export interface ListenAddress {
  host: string;
  port: number;
}

/** A DNS host name (RFC 1123 labels), as `localhost` or `node-a.internal`. */
const HOSTNAME = /^(?=.{1,253}\.?$)[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*\.?$/;

export function parseListen(text: string, flag: string): ListenAddress {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65_535) throw new AmbitError('USAGE', `--${flag}: "${text}" is not HOST:PORT (port 0-65535)`);
  const host = match[1] ?? (match[2] || '127.0.0.1');
  if (match[1] !== undefined && isIP(host) !== 6) throw new AmbitError('USAGE', `--${flag}: "${host}" is not an IPv6 address`);
  // Anything else reached the bind, which failed later and elsewhere (a proxy waiting not ready for ever).
  // All digits and dots is an IPv4 address or nothing (300.1.1.1, 127.1): no top-level domain is numeric.
  if (match[1] === undefined && isIP(host) === 0 && (!HOSTNAME.test(host) || /^[\d.]+$/.test(host))) throw new AmbitError('USAGE', `--${flag}: "${host}" is neither an IP address nor a host name (an IPv6 address goes in brackets: [::1]:${port})`);
  return { host, port };
}


/** A port flag (`--hbone-port 15008`): 1-65535, since 0 would bind a random port no peer can know. */
export function parsePort(text: string, flag: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65_535) throw new AmbitError('USAGE', `--${flag}: "${text}" is not a port (1-65535)`);
  return Number(text);
}
