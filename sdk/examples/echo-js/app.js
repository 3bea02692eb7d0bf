// `echo` (JavaScript), the smallest plugin there is: one `reply` host call.
//
//   {"svc":S,"type":T,"data":D} -> the sender gets {"svc":S,"type":T,"data":D}
//
// `scripts/bench.sh` (cases `echo_js`, `echo_py`) measures what a JavaScript
// plugin adds per message with it; sdk/examples/echo-py is the same in Python.
// Built with sdk/js/build.sh (componentize-js), world `plugin`.
// @ts-check
/// <reference path="../../js/types/plugin.d.ts" />
import { reply } from 'wsprism:plugin/realtime@0.2.0';

/** @param {import('wsprism:plugin/types@0.2.0').Message} msg */
export function handle(msg) {
  reply(msg.type, msg.data);
}
