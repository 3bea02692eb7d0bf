/// <reference path="./wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/lifecycle@0.2.0' {
  /**
   * Called once on every new instance before its first message, with a
   * JSON object `{"tenant":..,"plugin":..}` (`tenant` is `""` for the
   * load-time smoke test, where `kv` is a throwaway store). An `err` fails
   * the load (at smoke test) or the call that needed the instance.
   */
  export function init(config: string): void;
  /**
   * Called when a session of a tenant that routes to this plugin has
   * closed; `session.rooms()` is empty (it has left every room). `kv`,
   * `backend`, `log` and `members` work, and `publish` / `send-to-user`
   * effects are applied after it returns, wrapped in the `svc` of the
   * tenant's first route to this plugin (e.g. a "player left" notice).
   * `reply`, `join` and `leave` answer `not-allowed`.
   */
  export function onDisconnect(session: Session): void;
  /**
   * Asked before a session joins `room` through the built-in `room`
   * service (`{"svc":"room","type":"join","room":..}`), for every plugin
   * the tenant routes to that exports it, in route order; the first `err`
   * refuses the join (the client gets `SERVICE_ERROR` with its code and
   * message and is not joined). A hook that traps or times out refuses the
   * join too (`SERVICE_UNAVAILABLE`): a gatekeeper fails closed. Hooks are
   * asked even while the plugin backs off after crashes elsewhere. Room limits
   * are checked after the hooks agree. `session.rooms()` is the rooms
   * before this join. `reply`, `publish` and `send-to-user` effects are
   * applied once the join has succeeded (wrapped in the `svc` of the
   * tenant's first route to this plugin); `join` and `leave` answer
   * `not-allowed`. Calls for one room run in that room's order with its
   * messages.
   */
  export function onJoin(session: Session, room: string): void;
  /**
   * Told after a session left `room` through the built-in `room` service.
   * Effects as in `on-join`; failures are logged, the leave stands. Not
   * called when a session closes (see `on-disconnect`).
   */
  export function onLeave(session: Session, room: string): void;
  export type Session = import('wsprism:plugin/types@0.2.0').Session;
  export type Refusal = import('wsprism:plugin/types@0.2.0').Refusal;
}
