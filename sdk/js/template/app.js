// Template for a wsPrism plugin in JavaScript. Copy, edit, then:
//   sdk/js/build.sh app.js plugins/<name>.wasm
// Types: sdk/js/types/ (generated from wit/); editors and `tsc --checkJs`
// pick them up through the reference below.
// @ts-check
/// <reference path="../types/plugin.d.ts" />
import { reply } from 'wsprism:plugin/realtime@0.2.0';
import { log } from 'wsprism:plugin/log@0.2.0';
import * as session from 'wsprism:plugin/session@0.2.0';

/** @param {import('wsprism:plugin/types@0.2.0').Message} msg */
export function handle(msg) {
  const data = JSON.parse(msg.data);
  if (msg.type === 'ping') {
    reply('pong', JSON.stringify({ user: session.user(), data }));
    return;
  }
  log('debug', `unknown type ${msg.type}`);
  throw { code: 'UNKNOWN_TYPE', message: `unknown type ${msg.type}` };
}
