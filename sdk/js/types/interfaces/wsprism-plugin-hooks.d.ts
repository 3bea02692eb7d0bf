/// <reference path="./wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/hooks@0.2.0' {
  /**
   * As `lifecycle.init`.
   */
  export function init(config: string): void;
  /**
   * As `lifecycle.on-disconnect`: `session.rooms()` is empty.
   */
  export function onDisconnect(): void;
  /**
   * As `lifecycle.on-join`: `session.rooms()` is the rooms before this join.
   */
  export function onJoin(room: string): void;
  /**
   * As `lifecycle.on-leave`.
   */
  export function onLeave(room: string): void;
  export type Refusal = import('wsprism:plugin/types@0.2.0').Refusal;
}
