"""Runs a checked graph: one task per node, bounded channels between them, acks back to sources.

Finite sources end the run when drained; `stop()` (SIGTERM/SIGINT) makes every source return,
after which in-flight messages drain through the graph, sinks commit, acks reach the sources, and
the run ends. A message on an `errors` port that nothing consumes (and no `defaults.dead_letter`)
stops the graph with `UnhandledError`; its ack fails, so the source does not acknowledge it.

`Runner` is the lifecycle: it builds the nodes from the plan (engine.compile.plan), starts them
(sinks first), runs their tasks in one `asyncio.TaskGroup` and stops them. The rest is in parts,
each with one job: `router` (where output goes), `retry` (a failing batch, by the error's class),
`loops` (each node's task), `acks` (settled acks back to the sources), `gc` (collection on a timer);
`state` holds what they share and the read-only `RunView` that the observe layer reads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from engine.api import Upstream
from engine.compile.plan import Plan, build_plan
from engine.compile.validate import Graph
from engine.errors import NodeStartError, RunError
from engine.message import AckTracker, materialize
from engine.runtime.acks import AckPump
from engine.runtime.channel import Channel
from engine.runtime.context import NodeContext, Resources, WorkerInfo
from engine.runtime.gc import collect_garbage
from engine.runtime.loops import NodeCrash, NodeLoops
from engine.runtime.memory import tune_malloc
from engine.runtime.outputs import Outputs, SourceOutput
from engine.runtime.router import Router
from engine.runtime.state import RunState, RunView
from engine.runtime.stats import NodeStats

__all__ = ["NodeCrash", "RunReport", "Runner"]

log = logging.getLogger("streamdag.runtime")
STOP_GRACE = 2.0  # seconds past `defaults.stop_timeout` before a stopped run cancels what still runs


@dataclass
class RunReport:
    graph: str
    seconds: float
    stats: dict[str, NodeStats]
    sources: dict[str, AckTracker]
    error: BaseException | None = None
    stopped_by_signal: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Every message that entered is delivered, filtered, dead-lettered or explicitly failed."""
        return all(
            t.entered == t.delivered + t.filtered + t.dead_lettered + t.nacked + t.in_flight and t.in_flight == 0
            for t in self.sources.values()
        )

    def totals(self) -> dict[str, int]:
        keys = ("entered", "delivered", "filtered", "dead_lettered", "nacked", "in_flight")
        return {k: sum(getattr(t, k) for t in self.sources.values()) for k in keys}


class Runner:
    """Instantiates the nodes of a graph and runs them as its `Plan` says."""

    def __init__(self, graph: Graph | Plan, clock: Any = time.time, worker: WorkerInfo | None = None,
                 tracer: Any = None):
        plan = graph if isinstance(graph, Plan) else build_plan(graph)
        self._s = s = RunState(plan, clock)
        s.tracer = tracer  # engine.observe.tracing.Tracing, or None: tracing off
        if tracer is not None:
            tracer.stats = s.stats  # for exemplars on the latency histograms
        s.worker = worker or WorkerInfo()
        self.view = RunView(s)
        g = plan.graph
        for node_id, rn in g.nodes.items():
            upstream = tuple(Upstream(u, g.nodes[u].cls, g.nodes[u].config)  # type: ignore[arg-type]
                             for u in plan.upstream.get(node_id, ()))
            ctx = NodeContext(node_id, g.connections, g.schemas, s.resources, g.base_dir, clock, s.worker,
                              s.partitions, upstream, s.channel_load, node_id in plan.json_inputs)
            ctx.retry = rn.retry
            s.nodes[node_id] = rn.cls(node_id, rn.config, ctx)
            s.stats[node_id] = NodeStats(node_id, rn.kind, rn.type)
            if rn.kind != "source" and node_id not in plan.inline:
                s.channels[node_id] = Channel(rn.capacity, rn.capacity_bytes, plan.writers[node_id])
        for node_id in plan.inline:
            if getattr(s.nodes[node_id], "tick_interval", None):
                raise RunError(f"node '{node_id}' ({g.nodes[node_id].type}) sets tick_interval but its class "
                               "says inline = True: an inline operator has no timer")
            s.inline[node_id] = Outputs(node_id, g.nodes[node_id].ports, s.stats[node_id])
        self.router = Router(s)
        self.acks = AckPump(s)
        self.loops = NodeLoops(s, self.router, self.acks.drain)

    # what tests and embedders read (the observe layer reads `view`)
    plan = property(lambda self: self._s.plan)
    graph = property(lambda self: self._s.graph)
    routes = property(lambda self: self._s.plan.routes)
    nodes = property(lambda self: self._s.nodes)
    stats = property(lambda self: self._s.stats)
    channels = property(lambda self: self._s.channels)
    inline = property(lambda self: self._s.inline)
    trackers = property(lambda self: self._s.trackers)
    resources: Resources = property(lambda self: self._s.resources)  # type: ignore[assignment]
    clock = property(lambda self: self._s.clock)

    def stop(self) -> None:
        """Stop reading from sources; what is in flight drains and is acknowledged."""
        self._s.stop()

    async def run(self) -> RunReport:
        s = self._s
        t0 = time.perf_counter()
        tune_malloc()
        g = s.graph
        error: BaseException | None = None
        started: list[str] = []
        body = asyncio.ensure_future(self._start_and_run(started))
        try:
            await self._bounded_by_stop(body)
        except NodeStartError as exc:
            error = exc
        finally:
            for node_id in reversed(started):
                try:
                    await self._within_grace(s.nodes[node_id].stop(), f"stopping node {node_id}")
                except Exception:
                    log.exception("node %s failed to stop cleanly", node_id)
            await self._within_grace(s.resources.close(), "closing the run's connections")
        if s.stopping:
            log.info("drain finished", extra={"event": "drain_finished", "graph": g.spec.name,
                                              "in_flight": sum(t.in_flight for t in s.trackers.values())})
        return RunReport(g.spec.name, time.perf_counter() - t0, s.stats, s.trackers,
                         error or s.fatal, s.stopping and s.fatal is None)

    async def _start_and_run(self, started: list[str]) -> None:
        s = self._s
        g = s.graph
        for node_id in s.plan.start_order:
            s.starting = node_id
            try:
                await s.nodes[node_id].start()
            except Exception as exc:
                raise NodeStartError(f"node '{node_id}' ({g.nodes[node_id].type}) failed to start: {exc}") from exc
            started.append(node_id)
        s.starting = None
        for node in s.nodes.values():
            ctx = getattr(node, "ctx", None)
            if ctx is not None:
                ctx.started = True
        await self._run_tasks()

    async def _bounded_by_stop(self, body: asyncio.Future[None]) -> None:
        """Await the run's `body`, which a stop (SIGTERM) bounds whatever a node is doing. A stop before
        every node has started (a connector retrying an unreachable server) cancels the start at once:
        nothing is in flight yet. A drain that outlasts `defaults.stop_timeout` plus STOP_GRACE is
        cancelled, and says so."""
        s = self._s
        stop: asyncio.Future[Any] = asyncio.ensure_future(s.stop_event.wait())
        try:
            await asyncio.wait({body, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not body.done() and s.starting is not None:
                log.warning("stopped while node %s was starting; nothing had entered the graph", s.starting or "-",
                            extra={"event": "stopped_while_starting", "node": s.starting})
                body.cancel()
            elif not body.done():
                await asyncio.wait({body}, timeout=max(0.0, s.drain_seconds_left()) + STOP_GRACE)
                if not body.done():
                    log.error("drain still running %.1fs after the stop: cancelled (what is in flight stays "
                              "unacknowledged: sources that can redeliver it will)",
                              s.graph.spec.defaults.stop_timeout + STOP_GRACE,
                              extra={"event": "drain_cancelled"})
                    body.cancel()
            await asyncio.gather(body, return_exceptions=True)
            if not body.cancelled() and body.exception() is not None:
                raise body.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            body.cancel()
            await asyncio.gather(body, return_exceptions=True)
            raise
        finally:
            stop.cancel()

    async def _within_grace(self, aw: Any, what: str) -> None:
        """`aw` (a node's stop, closing connections), given what is left of the drain plus a grace
        once stopping, so a connector that hangs there cannot keep a stopped run alive."""
        s = self._s
        if not s.stopping:
            await aw
            return
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, s.drain_seconds_left()) + STOP_GRACE)
        if not done:
            log.error("%s did not finish within the drain: abandoned", what, extra={"event": "stop_abandoned"})
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            task.result()

    async def _run_tasks(self) -> None:
        """Every node's task, one ack loop per source and the GC timer, in one TaskGroup. The run
        ends when every node's task has (a node's crash ends it at once); then the ack loops stop
        and the last acks reach their sources."""
        s = self._s
        g = s.graph
        for node_id, rn in g.nodes.items():
            if rn.kind == "source":
                tracker = AckTracker(limit=g.spec.defaults.max_in_flight)
                tracker.redelivers = bool(getattr(s.nodes[node_id], "redelivers", False))
                s.trackers[node_id] = tracker
                send: Any = lambda lists, n=node_id: self.router.dispatch(n, lists)  # noqa: E731
                if s.tracer is not None:  # spans per message: Msg objects from the start
                    traced = s.tracer.wrap_source(rn, send)
                    send = lambda lists, t=traced: t(materialize(lists))  # noqa: E731
                s.outputs[node_id] = SourceOutput(node_id, tracker, send, s.stats[node_id])
                if s.stopping:
                    s.outputs[node_id].stopping.set()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            async with asyncio.TaskGroup() as tg:
                node_tasks = [tg.create_task(self.loops.task_for(rn), name=f"node:{node_id}")
                              for node_id, rn in g.nodes.items() if node_id not in s.inline]
                helpers = [tg.create_task(self.acks.loop(n), name=f"acks:{n}") for n in s.trackers]
                helpers.append(tg.create_task(collect_garbage(), name="gc"))
                await self._until_done(node_tasks)
                for t in (*node_tasks, *helpers):
                    t.cancel()
        finally:
            if gc_was_enabled:
                gc.enable()
        await self.acks.finish()

    async def _until_done(self, node_tasks: list[asyncio.Task[None]]) -> None:
        """Until every node task has ended, or a node crashed (`NodeCrash`: the others are cancelled)."""
        s = self._s
        pending: set[asyncio.Future[Any]] = set(node_tasks)
        while pending:
            crash = asyncio.ensure_future(s.fatal_event.wait())
            _, pending = await asyncio.wait(pending | {crash}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(crash)
            crash.cancel()
            if s.fatal_event.is_set() and isinstance(s.fatal, NodeCrash):
                return
            if s.fatal_event.is_set():
                s.fatal_event.clear()  # an unhandled error: the graph drains (stop() was called); go on waiting
