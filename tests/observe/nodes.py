"""A test source with the optional observe hooks (`lag`, `connection_state`), driven by `STATE`."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from engine import registry
from engine.api import NodeConfig, Source
from engine.message import Msg
from engine.runtime.outputs import SourceOutput

__all__ = ["STATE", "HookSource"]

STATE: dict[str, Any] = {"lag": 7, "up": True}


class HookSourceConfig(NodeConfig):
    count: int = Field(10, ge=0)


class HookSource(Source):
    """Sends `count` stamped messages, then waits for stop; reports lag and one connection."""

    Config = HookSourceConfig

    async def run(self, out: SourceOutput) -> None:
        now = time.time()
        await out.send(
            [
                Msg({"i": i}, {"source": self.id, "seq": i, "timestamp": now}, out.tracker.new(i))
                for i in range(self.config.count)
            ]
        )
        await out.stopping.wait()

    async def lag(self) -> int | None:
        return STATE["lag"]

    def connection_state(self) -> dict[str, bool]:
        return {"primary": STATE["up"]}


registry.register("observe_hook_source", HookSource)
