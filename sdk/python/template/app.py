"""Template for a wsPrism plugin in Python. Copy this directory, edit, then:
sdk/python/build.sh <this dir> plugins/<name>.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, realtime, session
from wit_world.imports.types import Message, Refusal


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> None:
        data = json.loads(msg.data)
        if msg.type == "ping":
            realtime.reply("pong", json.dumps({"user": session.user(), "data": data}))
            return
        log.log(log.Level.DEBUG, f"unknown type {msg.type}")
        raise Err(Refusal(code="UNKNOWN_TYPE", message=f"unknown type {msg.type}"))
