"""`echo` (Python), the smallest plugin there is: one `reply` host call.

  {"svc":S,"type":T,"data":D} -> the sender gets {"svc":S,"type":T,"data":D}

`scripts/bench.sh` (cases `echo_js`, `echo_py`) measures what a Python plugin
adds per message with it; sdk/examples/echo-js is the same in JavaScript.
Built with sdk/python/build.sh (componentize-py), world `plugin`.
"""

import wit_world
from wit_world.imports import realtime
from wit_world.imports.types import Message


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> None:
        realtime.reply(msg.type, msg.data)
