"""Handing settled acks back to the sources: `commit(tokens)` and `reject(failures)`.

One loop per source waits for its tracker to have settled acks and hands them over. A hand-over in
progress is never cut short when the run ends (the loop is cancelled then): it runs in its own
task, which the end of the run waits for, so tokens a source took (an XACK in flight, say) are not
lost. A failed hand-over is logged; the source redelivers those messages later.
"""

from __future__ import annotations

import asyncio
import logging

from engine.api import Source
from engine.runtime.state import RunState

__all__ = ["AckPump"]

log = logging.getLogger("streamdag.runtime")


class AckPump:
    def __init__(self, state: RunState):
        self.s = state
        self._in_progress: set[asyncio.Future[None]] = set()

    async def loop(self, node_id: str) -> None:
        tracker = self.s.trackers[node_id]
        while True:
            await tracker.wait_settled()
            drain = asyncio.ensure_future(self.drain(node_id))
            self._in_progress.add(drain)
            drain.add_done_callback(self._in_progress.discard)
            try:
                await asyncio.shield(drain)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed upstream ack means redelivery, not a dead loop
                log.error("source %s: acknowledging upstream failed (%s: %s); those messages will be "
                          "redelivered by the source", node_id, type(exc).__name__, exc)

    async def drain(self, node_id: str) -> None:
        """Hand what has settled so far to the source."""
        src: Source = self.s.nodes[node_id]
        done, failed = self.s.trackers[node_id].take()
        if done:
            await src.commit(done)
        if failed:
            await src.reject(failed)

    async def finish(self) -> None:
        """At the end of the run (the loops cancelled): wait for hand-overs in progress, then hand
        over the rest."""
        await asyncio.gather(*self._in_progress, return_exceptions=True)
        for node_id in self.s.trackers:
            try:
                await self.drain(node_id)
            except Exception as exc:  # noqa: BLE001
                log.error("source %s failed to acknowledge: %s", node_id, exc)
