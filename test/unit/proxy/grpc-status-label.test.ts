// grpc_response_status of istio_requests_total from what a workload sent: one of gRPC's codes as Envoy reads it, else
// -1 (InvalidCode), so a workload cannot grow the series store with values of its own.
import { describe, expect, it } from 'vitest';
import { grpcStatusLabel } from '../../../src/proxy/l7.ts';

describe('grpc_response_status', () => {
  it.each([
    [undefined, ''],
    ['0', '0'],
    ['7', '7'],
    ['07', '7'],
    ['16', '16'],
    ['0016', '16'],
    ['17', '-1'],
    ['99999999999', '-1'],
    ['bogus-1', '-1'],
    ['-1', '-1'],
    [' 7', '-1'],
    ['', '-1'],
  ])('reads %j as %j', (sent, label) => {
    expect(grpcStatusLabel(sent)).toBe(label);
  });
});
