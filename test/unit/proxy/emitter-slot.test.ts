// EmitterSlot: per-connection state that shared listeners find through `this`.
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { EmitterSlot } from '../../../src/proxy/emitter-slot.ts';

describe('EmitterSlot', () => {
  it('gives a shared listener the state of the emitter it was called on', () => {
    const slot = new EmitterSlot<{ name: string }>('test.state');
    const seen: string[] = [];
    function shared(this: EventEmitter): void {
      seen.push(slot.of(this).name);
    }
    const a = new EventEmitter();
    const b = new EventEmitter();
    slot.set(a, { name: 'a' });
    slot.set(b, { name: 'b' });
    a.on('data', shared);
    b.on('data', shared);
    b.emit('data');
    a.emit('data');
    expect(seen).toEqual(['b', 'a']);
  });

  it('keeps two slots of the same name on one emitter apart, and out of its string-keyed properties', () => {
    const first = new EmitterSlot<{ n: number }>('same');
    const second = new EmitterSlot<{ n: number }>('same');
    const emitter = new EventEmitter();
    first.set(emitter, { n: 1 });
    second.set(emitter, { n: 2 });
    expect(first.of(emitter).n).toBe(1);
    expect(second.of(emitter).n).toBe(2);
    expect(Object.keys(emitter)).not.toContain('same');
  });
});
