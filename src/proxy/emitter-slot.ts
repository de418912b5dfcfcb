// Per-connection state for listeners shared by every connection (undici's module-level handlers reading `this`):
// the state rides on the socket or stream under a symbol, so a tunnel costs one object, not a closure per listener
// holding the scope that made it. Ten thousand idle tunnels keep every listener they have.

/** One symbol-keyed slot on emitters, holding a T that their shared listeners look up through `this`. */
export class EmitterSlot<T extends object> {
  readonly #key: symbol;

  constructor(name: string) {
    this.#key = Symbol(name);
  }

  set(emitter: object, value: T): void {
    (emitter as Record<symbol, T>)[this.#key] = value;
  }

  /** The value set on this emitter; only for emitters whose listeners were added after `set`. */
  of(emitter: object): T {
    return (emitter as Record<symbol, T>)[this.#key] as T;
  }
}
