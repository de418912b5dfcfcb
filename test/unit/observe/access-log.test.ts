// Access log (src/observe/access-log.ts): ztunnel's field names as flat keys, level by outcome, identities
// bound once per tunnel and never written twice.
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { accessLog } from '../../../src/observe/access-log.ts';
import type { AccessLogRecord } from '../../../src/observe/access-log.ts';

/** A logger writing into an array of raw JSON lines. */
function capture(level = 'info'): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const logger = pino({ level, base: null, timestamp: false }, { write: (line: string) => void lines.push(line) });
  return { logger, lines };
}

const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const API = 'spiffe://cluster.local/ns/shop/sa/api';

const RECORD: AccessLogRecord = {
  direction: 'outbound',
  src: { addr: '10.0.0.5:41000', workload: 'web-7d9f', namespace: 'shop', identity: WEB, cluster: 'east' },
  dst: { addr: '10.0.1.9:15008', hbone_addr: '10.0.1.9:8080', workload: 'api-5c4b', namespace: 'shop', identity: API, service: 'api.shop.svc.cluster.local', cluster: 'west' },
  bytesSent: 1200,
  bytesRecv: 34000,
  durationMs: 41.8,
  responseFlags: '-',
};

describe('accessLog', () => {
  it('writes one info line with ztunnel field names as flat keys and msg "access"', () => {
    const { logger, lines } = capture();
    accessLog(logger, RECORD);
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toEqual({
      level: 30,
      msg: 'access',
      'src.addr': '10.0.0.5:41000',
      'src.workload': 'web-7d9f',
      'src.namespace': 'shop',
      'src.identity': WEB,
      'src.cluster': 'east',
      'dst.addr': '10.0.1.9:15008',
      'dst.hbone_addr': '10.0.1.9:8080',
      'dst.service': 'api.shop.svc.cluster.local',
      'dst.workload': 'api-5c4b',
      'dst.namespace': 'shop',
      'dst.identity': API,
      'dst.cluster': 'west',
      direction: 'outbound',
      bytes_sent: 1200,
      bytes_recv: 34000,
      duration: '41ms',
      response_flags: '-',
    });
  });

  it('logs a connection that ended with an error at warn, with its message and code', () => {
    const { logger, lines } = capture();
    accessLog(logger, { ...RECORD, responseFlags: 'CONNECT', error: { code: 'UPSTREAM_CONNECT', message: 'connect ECONNREFUSED 10.0.1.9:8080' } });
    const line = JSON.parse(lines[0]!);
    expect(line.level).toBe(40);
    expect(line.error).toBe('connect ECONNREFUSED 10.0.1.9:8080');
    expect(line.error_code).toBe('UPSTREAM_CONNECT');
    expect(line.response_flags).toBe('CONNECT');
  });

  it('leaves out fields that are not known, such as identities on a plaintext connection', () => {
    const { logger, lines } = capture();
    accessLog(logger, { ...RECORD, direction: 'inbound', src: { addr: '10.0.0.5:41000' }, dst: { addr: '10.0.1.9:8080' } });
    const line = JSON.parse(lines[0]!);
    expect(Object.keys(line).filter((key) => key.startsWith('src.') || key.startsWith('dst.'))).toEqual(['src.addr', 'dst.addr']);
    expect(line.error).toBeUndefined();
  });

  it('writes nothing when the level is disabled, but still writes errors at warn', () => {
    const { logger, lines } = capture('warn');
    accessLog(logger, RECORD);
    expect(lines).toHaveLength(0);
    accessLog(logger, { ...RECORD, error: { code: 'UPSTREAM_CONNECT', message: 'refused' } });
    expect(lines).toHaveLength(1);
  });
});
