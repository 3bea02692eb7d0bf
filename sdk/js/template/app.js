// Template for a wsPrism plugin in JavaScript. Copy, edit, then:
//   sdk/js/build.sh app.js plugins/<name>.wasm
import { reply } from 'wsprism:plugin/realtime@0.2.0';
import { log } from 'wsprism:plugin/log@0.2.0';

export function onMessage(session, msg) {
  const data = JSON.parse(msg.data);
  if (msg.type === 'ping') {
    reply('pong', JSON.stringify({ user: session.user(), data }));
    return;
  }
  log('debug', `unknown type ${msg.type}`);
  throw { code: 'UNKNOWN_TYPE', message: `unknown type ${msg.type}` };
}
