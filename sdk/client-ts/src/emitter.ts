/**
 * A small typed event emitter.
 *
 * Owns: the listener sets of one object (client or room).
 * Must not: let one throwing listener stop the others or the client; an error
 * thrown by a listener is re-thrown on a fresh task (`queueMicrotask`), where the
 * host reports it as an uncaught error, instead of unwinding the client's
 * message loop.
 */

/** A listener for one event's payload. */
export type Listener<T> = (payload: T) => void;

/** Removes the listener it was returned for; calling it twice is harmless. */
export type Unsubscribe = () => void;

/** Typed `on` / `once` / `emit` over an event map `{ name: payload }`. */
export class Emitter<Events extends object> {
  readonly #listeners = new Map<keyof Events, Set<Listener<never>>>();
  readonly #onListenerError: (err: unknown) => void;

  /** `onListenerError` receives what a listener throws; by default it is re-thrown on a microtask. */
  constructor(onListenerError: (err: unknown) => void = rethrowLater) {
    this.#onListenerError = onListenerError;
  }

  /** Calls `fn` for every `event` until the returned function is called. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): Unsubscribe {
    let set = this.#listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(fn as Listener<never>);
    return () => {
      set.delete(fn as Listener<never>);
    };
  }

  /** Calls `fn` for the next `event` only. */
  once<K extends keyof Events>(event: K, fn: Listener<Events[K]>): Unsubscribe {
    const off = this.on(event, (payload) => {
      off();
      fn(payload);
    });
    return off;
  }

  /** Number of listeners of `event`. */
  listenerCount(event: keyof Events): number {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /** Calls every listener of `event` with `payload`, in the order they were added. */
  emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.#listeners.get(event);
    if (set === undefined) return;
    // Copy: a listener may unsubscribe itself (or others) while we iterate.
    for (const fn of [...set]) {
      try {
        (fn as Listener<Events[K]>)(payload);
      } catch (err) {
        this.#onListenerError(err);
      }
    }
  }

  /** Drops every listener. */
  clear(): void {
    this.#listeners.clear();
  }
}

function rethrowLater(err: unknown): void {
  queueMicrotask(() => {
    throw err;
  });
}
