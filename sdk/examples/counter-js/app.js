// `counter` (JavaScript): a per-room counter kept in kv.
//
//   {"svc":"counter","type":"incr","room":R}  (sender in R)
//       -> kv incr, then every member of R gets
//          {"svc":"counter","type":"count","room":R,"data":{"room":R,"count":N}}
//   {"svc":"counter","type":"get","room":R}   -> the sender gets the same payload
//   joining a room named `closed-*` is refused (ROOM_CLOSED) by the on-join hook
//
// Built with sdk/js/build.sh (componentize-js), world
// `ext-lane-plugin-lifecycle` (it exports the `lifecycle` hooks).
// @ts-check
/// <reference path="../../js/types/ext-lane-plugin-lifecycle.d.ts" />
import { reply, publish } from 'wsprism:plugin/realtime@0.2.0';
import { get, incr } from 'wsprism:plugin/kv@0.2.0';

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

/**
 * @param {import('wsprism:plugin/types@0.2.0').Session} session
 * @param {import('wsprism:plugin/types@0.2.0').Message} msg
 */
export function onMessage(session, msg) {
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

// Lifecycle hooks: every function of the interface is exported; only on-join
// does something here.
export const lifecycle = {
  /** @param {string} _config */
  init(_config) {},
  /** @param {import('wsprism:plugin/types@0.2.0').Session} _session */
  onDisconnect(_session) {},
  /**
   * @param {import('wsprism:plugin/types@0.2.0').Session} _session
   * @param {string} room
   */
  onJoin(_session, room) {
    if (room.startsWith('closed-')) refuse('ROOM_CLOSED', `${room} is closed`);
  },
  /**
   * @param {import('wsprism:plugin/types@0.2.0').Session} _session
   * @param {string} _room
   */
  onLeave(_session, _room) {},
};
