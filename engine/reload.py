"""Reloading a running graph: `streamdag run --watch` (the file changes) or SIGHUP.

The changed file is checked as `validate` checks it, off the event loop. Invalid: every error is
logged with file:line:col and the running graph goes on untouched. Valid and different: the change
is logged (nodes added, removed, changed; settings changed), then the running graph drains as on
SIGTERM (sources stop reading, in-flight messages reach the sinks, acks reach the sources) and the
new graph starts. Sources that keep their position on the server (a JetStream durable, a Redis
consumer group, `postgres_source`'s cursor) go on from where the drain left them: nothing acked is
read again and nothing unacked is lost (a JetStream source naks what it fetched but had not sent
on, so the new graph gets it at once). A source whose position lives in the process (`generate`,
`file_source`, `http_source`'s port) starts again: the log says so for each.

Under `--workers` N the supervisor does not reload; `run` refuses `--watch` with N > 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from engine.compile.validate import Graph, check_file

__all__ = ["GraphChange", "Reloader", "graph_change"]

log = logging.getLogger("streamdag.reload")

# sources whose read position survives a restart of the graph (kept by the server or the table)
_RESUMING = {"jetstream_source", "redis_stream_source", "postgres_source"}


@dataclass(frozen=True)
class GraphChange:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()  # top-level sections other than nodes: connections, defaults...

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.settings)

    def describe(self) -> str:
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed),
            ("settings changed", self.settings)) if names]
        return "; ".join(parts) or "no change"


def graph_change(old: Graph, new: Graph) -> GraphChange:
    """What differs between two checked graphs, node by node (as written, after `--set`)."""
    a, b = old.spec.model_dump(), new.spec.model_dump()
    na, nb = a.pop("nodes"), b.pop("nodes")
    return GraphChange(
        added=tuple(n for n in nb if n not in na),
        removed=tuple(n for n in na if n not in nb),
        changed=tuple(n for n in nb if n in na and na[n] != nb[n]),
        settings=tuple(k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)),
    )


@dataclass
class Reloader:
    """Waits for a reason to reload (a file change with `watch`, or SIGHUP), checks the file, and
    hands back the next graph; `wait` returns None when the run ends first."""

    path: str
    overrides: list[str]
    workers: int
    current: Graph
    watch: bool = False
    interval: float = 0.5
    _hup: asyncio.Event = field(default_factory=asyncio.Event)
    _stamp: tuple[int, int] | None = None

    def install(self) -> None:
        """SIGHUP asks for a reload (a run with no reload keeps its default: terminate)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hup.set)
        self._stamp = self._file_stamp()

    def uninstall(self) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    async def _reason(self) -> str:
        while True:
            try:
                await asyncio.wait_for(self._hup.wait(), self.interval if self.watch else None)
            except TimeoutError:
                stamp = self._file_stamp()
                if stamp is not None and stamp != self._stamp:
                    self._stamp = stamp
                    return "file changed"
                continue
            self._hup.clear()
            self._stamp = self._file_stamp()
            return "SIGHUP"

    async def next_graph(self) -> Graph:
        """The next valid, different graph; invalid or unchanged files are logged and waited past."""
        while True:
            reason = await self._reason()
            graph, diags = await asyncio.to_thread(check_file, self.path, None, self.overrides, self.workers)
            if graph is None:
                errors = [d for d in diags if d.severity == "error"]
                for d in errors:
                    log.error("%s", d.format(), extra={"event": "reload_error", "code": d.code, "line": d.line,
                                                       "col": d.col})
                log.error("reload refused (%s): %s has %d error(s); the running graph goes on", reason, self.path,
                          len(errors), extra={"event": "reload_refused", "errors": len(errors)})
                continue
            change = graph_change(self.current, graph)
            if not change:
                log.info("reload (%s): %s is unchanged", reason, self.path, extra={"event": "reload_unchanged"})
                continue
            log.warning("reload (%s): %s; draining the running graph, then starting the new one", reason,
                        change.describe(), extra={"event": "reload", "added": list(change.added),
                                                  "removed": list(change.removed), "changed": list(change.changed),
                                                  "settings": list(change.settings)})
            for node_id, rn in graph.nodes.items():
                if rn.kind == "source" and rn.type not in _RESUMING:
                    log.warning("reload: source %s (%s) keeps no position outside the process: it starts again "
                                "from its beginning", node_id, rn.type, extra={"event": "reload_restarts_source",
                                                                              "node": node_id})
            self.current = graph
            return graph

    async def during(self, runner: Any) -> Graph | None:
        """While `runner` runs: the next graph (having told `runner` to drain), or None if it ends first."""
        try:
            graph = await self.next_graph()
        except asyncio.CancelledError:
            return None
        runner.stop()
        return graph
