// `counter` (JavaScript): a per-room counter kept in kv.
//
//   {"svc":"counter","type":"incr","room":R}  (sender in R)
//       -> kv incr, then every member of R gets
//          {"svc":"counter","type":"count","room":R,"data":{"room":R,"count":N}}
//   {"svc":"counter","type":"get","room":R}   -> the sender gets the same payload
//   joining a room named `closed-*` is refused (ROOM_CLOSED) by the on-join hook
//
// Built with sdk/js/build.sh (componentize-js), world `plugin-with-hooks`
// (it exports the `hooks`).
// @ts-check
/// <reference path="../../js/types/plugin-with-hooks.d.ts" />
import { reply, publish } from 'wsprism:plugin/realtime@0.2.0';
import { get, incr } from 'wsprism:plugin/kv@0.2.0';
import * as session from 'wsprism:plugin/session@0.2.0';

/**
 * @param {string} code
 * @param {string} message
 * @returns {never}
 */
function refuse(code, message) {
  // Throwing from an export that returns `result<_, refusal>` answers `err`.
  throw { code, message };
}

/** @param {string} room */
function key(room) {
  return `count:${room}`;
}

/** @param {import('wsprism:plugin/types@0.2.0').Message} msg */
export function handle(msg) {
  const room = msg.room;
  if (room === undefined || room === null) refuse('NO_ROOM', 'counter messages need a room');
  if (!session.rooms().includes(room)) refuse('NOT_IN_ROOM', 'join the room first');
  switch (msg.type) {
    case 'incr': {
      const count = incr(key(room), 1n);
      publish(room, 'count', JSON.stringify({ room, count: Number(count) }), 'reliable', false);
      return;
    }
    case 'get': {
      const count = Number(get(key(room)) ?? '0');
      reply('count', JSON.stringify({ room, count }));
      return;
    }
    default:
      refuse('UNKNOWN_TYPE', `unknown type ${msg.type}`);
  }
}

// Hooks: every function of the interface is exported; only on-join does
// something here (the joining session is `session`, as in `handle`).
export const hooks = {
  /** @param {string} _config */
  init(_config) {},
  onDisconnect() {},
  /** @param {string} room */
  onJoin(room) {
    if (room.startsWith('closed-')) refuse('ROOM_CLOSED', `${room} is closed`);
  },
  /** @param {string} _room */
  onLeave(_room) {},
};
