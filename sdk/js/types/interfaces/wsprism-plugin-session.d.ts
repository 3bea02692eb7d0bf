declare module 'wsprism:plugin/session@0.2.0' {
  /**
   * Tenant id (the instance only ever sees one).
   */
  export function tenant(): string;
  /**
   * Authenticated user id.
   */
  export function user(): string;
  /**
   * Session id: the number clients see as 16 lowercase hex digits
   * (`sid` in `sys.authed`, lifecycle events, the server API). Unique
   * within a gateway process; each process starts its sequence at a
   * random point.
   */
  export function sid(): bigint;
  /**
   * Rooms the session has joined, in join order (the last is active).
   * Empty in `hooks.on-disconnect`: the session has left them all.
   */
  export function rooms(): Array<string>;
}
