"""`counter` (Python): a per-room counter kept in kv.

  {"svc":"counter","type":"incr","room":R}  (sender in R)
      -> kv incr, then every member of R gets
         {"svc":"counter","type":"count","room":R,"data":{"room":R,"count":N}}
  {"svc":"counter","type":"get","room":R}   -> the sender gets the same payload
  joining a room named `closed-*` is refused (ROOM_CLOSED) by the on-join hook

Built with sdk/python/build.sh (componentize-py), world `plugin-with-hooks`
(it exports the `hooks`).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv, realtime, session
from wit_world.imports.types import Message, Qos, Refusal


def refuse(code: str, message: str) -> Err:
    """A refusal the gateway answers with SERVICE_ERROR."""
    return Err(Refusal(code=code, message=message))


# One encoder for the module: `json.dumps(x, separators=...)` would build a
# new JSONEncoder on every call (sdk/python/README.md). Same output.
_compact = json.JSONEncoder(separators=(",", ":")).encode


def key(room: str) -> str:
    return f"count:{room}"


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> None:
        room = msg.room
        if room is None:
            raise refuse("NO_ROOM", "counter messages need a room")
        if room not in session.rooms():
            raise refuse("NOT_IN_ROOM", "join the room first")
        if msg.type == "incr":
            count = kv.incr(key(room), 1)
            payload = _compact({"room": room, "count": count})
            realtime.publish(room, "count", payload, Qos.RELIABLE, False)
        elif msg.type == "get":
            count = int(kv.get(key(room)) or "0")
            realtime.reply("count", _compact({"room": room, "count": count}))
        else:
            raise refuse("UNKNOWN_TYPE", f"unknown type {msg.type}")


class Hooks(exports.Hooks):
    """Hooks: every function of the interface is defined; only on_join does
    something here (the joining session is `session`, as in `handle`)."""

    def init(self, config: str) -> None:
        pass

    def on_disconnect(self) -> None:
        pass

    def on_join(self, room: str) -> None:
        if room.startswith("closed-"):
            raise refuse("ROOM_CLOSED", f"{room} is closed")

    def on_leave(self, room: str) -> None:
        pass
