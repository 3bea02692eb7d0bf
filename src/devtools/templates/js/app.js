// `{{name}}`: a wsPrism plugin in JavaScript. It echoes: a client's
// {"svc":..,"type":T,"data":D} comes back to that client as
// {"v":1,"svc":..,"type":T,"data":D}.
//
// Imports are the WIT interfaces in wit/ (`wsprism:plugin/realtime@0.2.0`,
// `kv`, `backend`, `log`, and `session` for the calling session:
// `import * as session from 'wsprism:plugin/session@0.2.0'`, then
// `session.user()`); types/ has their TypeScript declarations for editors and
// `tsc --checkJs`. Throw {code, message} to refuse a message.
// @ts-check
/// <reference path="../types/plugin.d.ts" />
import { reply } from 'wsprism:plugin/realtime@0.2.0';

/** @param {import('wsprism:plugin/types@0.2.0').Message} msg */
export function handle(msg) {
  // `msg.data` is JSON text; JSON.parse it to read it.
  reply(msg.type, msg.data);
}
