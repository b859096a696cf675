"""Node types used only by the runtime tests (registered with engine.registry.register)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from engine import registry
from engine.api import NodeConfig, Operator, Sink, Source
from engine.errors import MessageError
from engine.message import Msg
from engine.runtime.outputs import Outputs, SourceOutput

__all__ = ["GATES", "PERMITS", "RECORD", "FlakyInline", "GatedSink", "RecordingSource"]

RECORD: dict[str, Any] = {}
GATES: dict[str, asyncio.Event] = {}
PERMITS: dict[str, asyncio.Semaphore] = {}  # a sink with `permits: name` takes one per write


class RecordingSourceConfig(NodeConfig):
    count: int = Field(100, ge=0)
    batch: int = Field(10, ge=1)
    commit_delay: float = Field(0.0, ge=0, description="Seconds each commit takes (an upstream ack round trip).")
    size: int = Field(100, ge=0, description="Size in bytes each message counts for on the edges.")


class RecordingSource(Source):
    """Emits {"i": n}; records what the runtime commits and rejects."""

    Config = RecordingSourceConfig

    async def run(self, out: SourceOutput) -> None:
        RECORD.setdefault(self.id, {"committed": [], "rejected": [], "max_in_flight": 0})
        i = 0
        while i < self.config.count and not out.stopping.is_set():
            await out.wait_room()
            n = min(self.config.batch, self.config.count - i)
            size = self.config.size
            await out.send([Msg({"i": j}, {"seq": j}, out.tracker.new(j), size) for j in range(i, i + n)])
            rec = RECORD[self.id]
            rec["max_in_flight"] = max(rec["max_in_flight"], out.tracker.in_flight)
            i += n

    async def commit(self, tokens: list[Any]) -> None:
        if self.config.commit_delay:
            await asyncio.sleep(self.config.commit_delay)
        RECORD[self.id]["committed"].extend(tokens)

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        RECORD[self.id]["rejected"].extend(failures)


FailWith = Literal["unavailable", "unknown", "message"]


def _failure(kind: str, what: str) -> Exception:
    """An exception of each class `engine.errors.classify` knows."""
    if kind == "unavailable":
        return ConnectionError(f"{what} unavailable")
    if kind == "message":
        return MessageError(f"{what} rejects the message")
    return RuntimeError(f"{what} failed oddly")


class GatedSinkConfig(NodeConfig):
    gate: str | None = None
    permits: str | None = Field(None, description="Take one permit of PERMITS[name] before each write.")
    fail_first: int = Field(0, ge=0, description="Raise on the first N write calls.")
    fail_with: FailWith = "unavailable"
    reject_if_odd: bool = False
    delay: float = 0.0


class GatedSink(Sink):
    """Waits on GATES[gate] (or one permit of PERMITS[permits]) before each write; records committed
    bodies and the input queue depth."""

    Config = GatedSinkConfig

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        rec = RECORD.setdefault(self.id, {"bodies": [], "calls": 0})
        rec["calls"] += 1
        if self.config.gate:
            await GATES[self.config.gate].wait()
        if self.config.permits:
            await PERMITS[self.config.permits].acquire()
        if self.config.delay:
            await asyncio.sleep(self.config.delay)
        if rec["calls"] <= self.config.fail_first:
            raise _failure(self.config.fail_with, "store")
        failures = [(m, "odd") for m in batch if self.config.reject_if_odd and m.body["i"] % 2]
        bad = {id(m) for m, _ in failures}
        rec["bodies"].extend(m.body for m in batch if id(m) not in bad)
        return failures


class FlakyInlineConfig(NodeConfig):
    fail_first: int = Field(0, ge=0, description="Raise on the first N process calls.")
    fail_with: FailWith = "unavailable"


class FlakyInline(Operator):
    """An inline operator (runs in its upstream's task) that raises on its first N batches and
    records the task each batch ran in."""

    Config = FlakyInlineConfig
    inline = True

    def process(self, batch: list[Msg], out: Outputs) -> None:
        rec = RECORD.setdefault(self.id, {"calls": 0, "tasks": set()})
        rec["calls"] += 1
        task = asyncio.current_task()
        rec["tasks"].add(task.get_name() if task else None)
        if rec["calls"] <= self.config.fail_first:
            out.port("out").append(batch[0])  # emitted by the failed attempt: must be discarded
            raise _failure(self.config.fail_with, "lookup")
        out.port("out").extend(batch)


registry.register("test_inline", FlakyInline)
registry.register("test_source", RecordingSource)
registry.register("test_sink", GatedSink)
