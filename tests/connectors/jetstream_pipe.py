"""A minimal source -> step -> sink runner that follows the engine's ack contract (engine/message.py).

Used by the JetStream tests (and their crash subprocess) to drive the connectors exactly as the
scheduler does: bounded hand-off between nodes, acks released by the sink, settled acks handed
back to the source in batches through `commit` / `reject`, errors routed to a dead-letter sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from engine.message import DEAD_LETTERED, DELIVERED, AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput, error_envelope
from engine.runtime.stats import NodeStats

__all__ = ["FAIL", "Pipe", "make_ctx"]

FAIL = object()  # a step returns this to fail a message's ack (as a sink that gave up would)


def make_ctx(
    node_id: str, url: str, resources: Resources, streams: dict[str, Any] | None = None
) -> NodeContext:
    conn = {"type": "nats", "url": url, "streams": streams or {}}
    return NodeContext(node_id, {"nats": conn}, {}, resources)


class Pipe:
    """Runs `source` -> `step(body, meta)` -> `sink`; errors go to `dead` (a sink) when given."""

    def __init__(
        self,
        source: Any,
        sink: Any,
        step: Callable[[Any, dict], Any] | None = None,
        dead: Any = None,
        limit: int = 0,
        queue: int = 4,
    ):
        self.source, self.sink, self.step, self.dead = source, sink, step, dead
        self.tracker = AckTracker(limit)
        self.q: asyncio.Queue[dict[str, list[Msg]]] = asyncio.Queue(queue)
        self.out = SourceOutput(
            "src", self.tracker, self.q.put, NodeStats("src", "source", "jetstream_source")
        )
        self.sink_errors: list[tuple[Msg, str]] = []
        self.retries = 0
        self.hold_acks = asyncio.Event()  # set: acks stay in the tracker (crash tests)

    async def _work(self) -> None:
        while True:
            lists = await self.q.get()
            msgs, errors = lists.get("out", []), list(lists.get("errors", []))
            good = []
            for m in msgs:
                if self.step is None:
                    good.append(m)
                    continue
                try:
                    body = self.step(m.body, m.meta)
                except Exception as exc:  # noqa: BLE001 - the runtime sends these to errors
                    errors.append(error_envelope(m, "step", str(exc)))
                    continue
                if body is FAIL:
                    m.ack.fail("step gave up")
                elif body is not None:
                    good.append(m.derive(body))
                else:
                    m.ack.finish(2)
            if good:
                failed = await self._write(good)
                bad = {id(m) for m, _ in failed}
                for m in good:
                    if id(m) not in bad:
                        m.ack.finish(DELIVERED)
                for m, reason in failed:
                    self.sink_errors.append((m, reason))
                    errors.append(error_envelope(m, "sink", reason))
            if errors:
                if self.dead is None:
                    for e in errors:
                        e.ack.fail("unwired error: " + e.body["error"])
                else:
                    await self.dead.write(errors)
                    for e in errors:
                        e.ack.finish(DEAD_LETTERED)

    async def _write(self, good: list[Msg]) -> list[tuple[Msg, str]]:
        """The sink's write with retries, as the node's retry policy does (server restarts)."""
        for attempt in range(60):
            try:
                return await self.sink.write(good) or []
            except Exception:
                self.retries += 1
                if attempt == 59:
                    raise
                await asyncio.sleep(0.2)
        return []

    async def _acks(self) -> None:
        while True:
            await self.tracker.wait_settled()
            if self.hold_acks.is_set():
                await asyncio.Event().wait()
            done, failed = self.tracker.take()
            if done:
                await self.source.commit(done)
            if failed:
                await self.source.reject(failed)

    async def run(self, until: Callable[[], bool], timeout: float = 20.0) -> None:
        """Run until `until()` is true (polled on every settle) or `timeout` seconds pass."""
        for node in (self.source, self.sink, self.dead):
            if node is not None:
                await node.start()
        tasks = [
            asyncio.ensure_future(self._work()),
            asyncio.ensure_future(self._acks()),
            asyncio.ensure_future(self.source.run(self.out)),
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not until():
                if loop.time() > deadline:
                    raise TimeoutError("pipe did not reach its condition in time")
                if tasks[2].done():
                    tasks[2].result()
                await asyncio.sleep(0.01)
            self.out.stopping.set()
            await asyncio.wait_for(tasks[2], 10)
            # let the last acks reach the source
            while self.tracker.in_flight or self.tracker.completed or self.tracker.failed:
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.01)
        finally:
            for t in tasks:
                t.cancel()
            for node in (self.source, self.sink, self.dead):
                if node is not None:
                    await node.stop()
