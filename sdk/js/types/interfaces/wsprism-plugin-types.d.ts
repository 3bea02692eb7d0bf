declare module 'wsprism:plugin/types@0.2.0' {
  /**
   * One Ext Lane message as the client sent it.
   */
  export interface Message {
    /**
     * The routed service name (`svc`).
     */
    svc: string,
    /**
     * The message `type`.
     */
    type: string,
    /**
     * `room`, when the client named one.
     */
    room?: string,
    /**
     * `seq`, when the client sent one (the gateway acks it).
     */
    seq?: bigint,
    /**
     * `data` as JSON text (`null` when absent).
     */
    data: string,
  }
  /**
   * A deliberate "no": reaches the client as
   * `sys.error {"code":"SERVICE_ERROR","msg":"<code>: <message>"}`.
   */
  export interface Refusal {
    /**
     * Plugin-defined machine-readable code, e.g. `POLL_CLOSED`.
     */
    code: string,
    /**
     * Human-readable text; it is shown to the client, keep secrets out.
     */
    message: string,
  }
  /**
   * Delivery class of a room publication.
   * # Variants
   * 
   * ## `"reliable"`
   * 
   * In order; a receiver that cannot keep up is disconnected.
   * ## `"lossy"`
   * 
   * May be dropped under load (positions, cursors).
   */
  export type Qos = 'reliable' | 'lossy';
  /**
   * Why a host call failed. The call itself goes on unless a limit says
   * otherwise (see the package docs).
   */
  export type HostError = HostErrorInvalidJson | HostErrorTooLarge | HostErrorInvalidArgument | HostErrorUnknownUpstream | HostErrorUnavailable | HostErrorNotAllowed;
  /**
   * `data` is not valid JSON text.
   */
  export interface HostErrorInvalidJson {
    tag: 'invalid-json',
  }
  /**
   * The payload is over the tenant's `max_frame_bytes` (the call will
   * fail with `PAYLOAD_TOO_LARGE`), or a kv value/key is over its cap.
   */
  export interface HostErrorTooLarge {
    tag: 'too-large',
  }
  /**
   * An argument is not acceptable (empty room name, bad method or path).
   */
  export interface HostErrorInvalidArgument {
    tag: 'invalid-argument',
    val: string,
  }
  /**
   * No such backend upstream for this tenant.
   */
  export interface HostErrorUnknownUpstream {
    tag: 'unknown-upstream',
    val: string,
  }
  /**
   * The backend did not answer in time or could not be reached.
   */
  export interface HostErrorUnavailable {
    tag: 'unavailable',
    val: string,
  }
  /**
   * Not available in this context (e.g. `reply` during `init`).
   */
  export interface HostErrorNotAllowed {
    tag: 'not-allowed',
    val: string,
  }
  
  export class Session implements Disposable {
    /**
     * This type does not have a public constructor.
     */
    private constructor();
    /**
    * Tenant id (the instance only ever sees one).
    */
    tenant(): string;
    /**
    * Authenticated user id.
    */
    user(): string;
    /**
    * Session id: the number clients see as 16 lowercase hex digits
    * (`sid` in `sys.authed`, lifecycle events, the server API), i.e.
    * `format!("{sid:016x}")`. Unique within a gateway process; each
    * process starts its sequence at a random point.
    */
    sid(): bigint;
    /**
    * Rooms the session has joined, in join order (the last is active).
    * Empty in `on-disconnect`: the session has left them all.
    */
    rooms(): Array<string>;
    [Symbol.dispose](): void;
  }
}
