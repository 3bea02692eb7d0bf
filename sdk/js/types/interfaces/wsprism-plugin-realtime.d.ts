/// <reference path="./wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/realtime@0.2.0' {
  /**
   * Sends `{"svc":<svc>,"type":type,"data":data}` to the calling session.
   */
  export function reply(type: string, data: string): void;
  /**
   * Publishes to every member of `room` (of this tenant).
   * `exclude-sender` leaves the calling session out.
   */
  export function publish(room: string, type: string, data: string, qos: Qos, excludeSender: boolean): void;
  /**
   * Publishes a lossy frame to every member of `room`, latest wins: in
   * each receiver's queue it replaces a still-queued frame published
   * under the same `svc` with the same `key` (1 to 256 bytes), so a
   * receiver that falls behind gets the newest state of each key
   * (positions, cursors, scores), never a backlog. `exclude-sender` leaves
   * the calling session out. Newer than the rest of 0.2.0: a plugin that
   * imports it needs a gateway that has it.
   */
  export function publishLatest(room: string, key: string, type: string, data: string, excludeSender: boolean): void;
  /**
   * Sends to every session of `user` (of this tenant), reliably.
   */
  export function sendToUser(user: string, type: string, data: string): void;
  /**
   * Makes the calling session join `room` (room limits apply; the client
   * receives `sys.joined`).
   */
  export function join(room: string): void;
  /**
   * Makes the calling session leave `room`.
   */
  export function leave(room: string): void;
  /**
   * Distinct users currently in `room`, sorted. Answers immediately.
   */
  export function members(room: string): Array<string>;
  export type Qos = import('wsprism:plugin/types@0.2.0').Qos;
  export type HostError = import('wsprism:plugin/types@0.2.0').HostError;
}
