/// <reference path="./wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/kv@0.2.0' {
  /**
   * The value of `key`, or `none` when unset or expired.
   */
  export function get(key: string): string | undefined;
  /**
   * Sets `key`; with `ttl-ms` the key expires after that many milliseconds.
   */
  export function set(key: string, value: string, ttlMs: bigint | undefined): void;
  /**
   * Removes `key`; `true` when it existed.
   */
  export { _delete as delete };
  function _delete(key: string): boolean;
  /**
   * Atomically adds `delta` to the integer stored at `key` (absent = 0) and
   * returns the new value. The value is stored as decimal text, so `get`
   * reads it back as e.g. `"3"`. Fails with `invalid-argument` when the
   * current value is not an integer. Keeps an existing TTL.
   */
  export function incr(key: string, delta: bigint): bigint;
  export type HostError = import('wsprism:plugin/types@0.2.0').HostError;
}
