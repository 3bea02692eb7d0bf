/// <reference path="./interfaces/wsprism-plugin-backend.d.ts" />
/// <reference path="./interfaces/wsprism-plugin-kv.d.ts" />
/// <reference path="./interfaces/wsprism-plugin-log.d.ts" />
/// <reference path="./interfaces/wsprism-plugin-realtime.d.ts" />
/// <reference path="./interfaces/wsprism-plugin-session.d.ts" />
/// <reference path="./interfaces/wsprism-plugin-types.d.ts" />
declare module 'wsprism:plugin/plugin@0.2.0' {
  export type Message = import('wsprism:plugin/types@0.2.0').Message;
  export type Refusal = import('wsprism:plugin/types@0.2.0').Refusal;
  export type * as WsprismPluginBackend020 from 'wsprism:plugin/backend@0.2.0'; // import wsprism:plugin/backend@0.2.0
  export type * as WsprismPluginKv020 from 'wsprism:plugin/kv@0.2.0'; // import wsprism:plugin/kv@0.2.0
  export type * as WsprismPluginLog020 from 'wsprism:plugin/log@0.2.0'; // import wsprism:plugin/log@0.2.0
  export type * as WsprismPluginRealtime020 from 'wsprism:plugin/realtime@0.2.0'; // import wsprism:plugin/realtime@0.2.0
  export type * as WsprismPluginSession020 from 'wsprism:plugin/session@0.2.0'; // import wsprism:plugin/session@0.2.0
  export type * as WsprismPluginTypes020 from 'wsprism:plugin/types@0.2.0'; // import wsprism:plugin/types@0.2.0
  /**
  * Handles one client message. `ok` applies the queued effects (and the
  * gateway acks `seq`); `err` discards them and answers `SERVICE_ERROR`.
  */
  export function handle(msg: Message): void;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
