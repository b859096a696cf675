"""The watcher of a running graph: integrity per source, source lag, connection state.

It runs beside the scheduler (one task, once a second by default), so the hot path never pays
for it. Each pass reconciles every source's ack counters,

    entered = delivered + filtered + dead-lettered + failed + in flight,   in flight >= 0,

keeps the result for the metrics, and logs an error the moment a source stops balancing (and a
line when it balances again). It also asks sources for their lag (`async def lag() -> int | None`,
optional) and nodes for their connections (`def connection_state() -> dict[str, bool]`, optional),
and logs connection lost / regained on each change.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from engine.hooks import HasConnectionState, HasLag
from engine.runtime.state import RunView, as_view

__all__ = ["Monitor", "Reconciliation", "reconcile", "resource_up"]

log = logging.getLogger("streamdag.monitor")


@dataclass
class Reconciliation:
    """One source's ledger at one moment."""

    source: str
    entered: int
    delivered: int
    filtered: int
    dead_lettered: int
    failed: int
    in_flight: int

    @property
    def unaccounted(self) -> int:
        """Messages that entered but are neither settled nor in flight (negative: settled twice)."""
        return self.entered - (
            self.delivered + self.filtered + self.dead_lettered + self.failed + self.in_flight
        )

    @property
    def balanced(self) -> bool:
        return self.unaccounted == 0 and self.in_flight >= 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "entered": self.entered,
            "delivered": self.delivered,
            "filtered": self.filtered,
            "dead_lettered": self.dead_lettered,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "unaccounted": self.unaccounted,
            "balanced": self.balanced,
        }


def reconcile(source: str, tracker: Any) -> Reconciliation:
    """The ledger of one `AckTracker` (read in one go: the scheduler is single-threaded)."""
    return Reconciliation(
        source,
        tracker.entered,
        tracker.delivered,
        tracker.filtered,
        tracker.dead_lettered,
        tracker.nacked,
        tracker.in_flight,
    )


def resource_up(resource: Any) -> bool | None:
    """Whether a shared client is connected, when it can tell without I/O: its own
    `connection_up()`, or an `is_connected` flag on it or on its `.nc` (a NATS client); else None."""
    hook = getattr(resource, "connection_up", None)
    try:
        if callable(hook):
            return bool(hook())
        for obj in (resource, getattr(resource, "nc", None)):
            flag = getattr(obj, "is_connected", None) if obj is not None else None
            if isinstance(flag, bool):
                return flag
    except Exception:  # noqa: BLE001 - a probe must not stop the watcher
        return None
    return None


@dataclass
class Monitor:
    """Watches a run (a `RunView`, or a Runner for its view); `start()` launches the loop, `stop()`
    ends it after a last pass."""

    runner: RunView
    interval: float = 1.0
    lag_timeout: float = 1.0
    ledgers: dict[str, Reconciliation] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    connections: dict[tuple[str, str], bool] = field(default_factory=dict)
    # seconds a source has had messages in flight without any of them settling (0 when idle or moving);
    # a window operator holds messages on purpose, so this is a gauge to watch, not an alarm
    stalled: dict[str, float] = field(default_factory=dict)
    _progress: dict[str, tuple[int, float]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    passes: int = 0
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.runner = as_view(self.runner)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="observe:monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.check_integrity()

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("monitor pass failed")
            await asyncio.sleep(self.interval)

    async def check(self) -> None:
        """One pass: integrity, connections, lag."""
        self.check_integrity()
        self.check_connections()
        await self.refresh_lag()
        self.passes += 1

    def check_integrity(self) -> None:
        t = time.monotonic()
        for source, tracker in list(self.runner.trackers.items()):
            now = reconcile(source, tracker)
            before = self.ledgers.get(source)
            self.ledgers[source] = now
            settled = now.entered - now.in_flight
            last = self._progress.get(source)
            if last is None or last[0] != settled or now.in_flight <= 0:
                self._progress[source] = (settled, t)
                self.stalled[source] = 0.0
            else:
                self.stalled[source] = t - last[1]
            if not now.balanced and (before is None or before.balanced):
                log.error(
                    "integrity mismatch at source %s: %d in != %d delivered + %d filtered + %d dead-lettered "
                    "+ %d failed + %d in flight (%+d unaccounted)",
                    source,
                    now.entered,
                    now.delivered,
                    now.filtered,
                    now.dead_lettered,
                    now.failed,
                    now.in_flight,
                    now.unaccounted,
                    extra={"event": "integrity_mismatch", "node": source, **now.as_dict()},
                )
            elif now.balanced and before is not None and not before.balanced:
                log.warning(
                    "integrity at source %s balances again",
                    source,
                    extra={"event": "integrity_restored", "node": source, **now.as_dict()},
                )

    def check_connections(self) -> None:
        states: dict[tuple[str, str], bool] = {}
        for node_id, node in self.runner.nodes.items():
            if not isinstance(node, HasConnectionState):
                continue
            try:
                for name, up in (node.connection_state() or {}).items():
                    states[(node_id, str(name))] = bool(up)
            except Exception as exc:  # noqa: BLE001 - a broken hook must not stop the watcher
                log.debug("node %s: connection_state() failed: %s", node_id, exc)
        # shared clients (one per `connections` entry) say it themselves when they can
        for rkey, resource in list(self.runner.shared_clients.items()):
            shared_up = resource_up(resource)
            if shared_up is not None:
                states[("", str(rkey))] = shared_up
        for key, up in states.items():
            before = self.connections.get(key)
            self.connections[key] = up
            if before is None or before == up:
                continue
            node_id, name = key
            where = f"of node {node_id}" if node_id else "(shared)"
            extra = {"connection": name, **({"node": node_id} if node_id else {})}
            if up:
                log.warning(
                    "connection %s %s regained", name, where, extra={"event": "connection_regained", **extra}
                )
            else:
                log.error("connection %s %s lost", name, where, extra={"event": "connection_lost", **extra})

    async def refresh_lag(self) -> None:
        for node_id, rn in self.runner.graph.nodes.items():
            if rn.kind != "source":
                continue
            node = self.runner.nodes[node_id]
            if not isinstance(node, HasLag):
                continue
            try:
                found: Any = node.lag()
                if inspect.isawaitable(found):  # a sync lag() is accepted too
                    found = await asyncio.wait_for(found, self.lag_timeout)
                value = None if found is None else int(found)
            except Exception as exc:  # noqa: BLE001 - lag is best effort (a lost connection, a timeout)
                log.debug("source %s: lag() failed: %s", node_id, exc)
                self.lag.pop(node_id, None)
                continue
            if value is None:
                self.lag.pop(node_id, None)
            else:
                self.lag[node_id] = value

    @property
    def mismatched(self) -> list[str]:
        return [s for s, r in self.ledgers.items() if not r.balanced]
