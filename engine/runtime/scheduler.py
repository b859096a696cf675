"""Runs a checked graph: one task per node, bounded channels between them, acks back to sources.

Finite sources end the run when drained; `stop()` (SIGTERM/SIGINT) makes every source return,
after which in-flight messages drain through the graph, sinks commit, acks reach the sources, and
the run ends. A message on an `errors` port that nothing consumes (and no `defaults.dead_letter`)
stops the graph with `UnhandledError`; its ack fails, so the source does not acknowledge it.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import random
import time
from dataclasses import dataclass, field
from itertools import groupby
from types import CoroutineType
from typing import Any

from engine.api import Operator, Sink, Source
from engine.compile.validate import Graph, ResolvedNode
from engine.errors import MESSAGE, UNAVAILABLE, UNKNOWN, NodeStartError, UnhandledError, classify
from engine.message import DEAD_LETTERED, DELIVERED, AckTracker, BatchAck, Msg, own_ack
from engine.observe.events import deadletter_log
from engine.observe.events import log_dead_letters as _log_dead_letters
from engine.runtime.channel import Channel
from engine.runtime.context import NodeContext, Resources
from engine.runtime.memory import tune_malloc
from engine.runtime.outputs import ERRORS, Outputs, SourceOutput, error_envelope
from engine.runtime.stats import NodeStats

__all__ = ["RunReport", "Runner"]

log = logging.getLogger("streamdag.runtime")


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
    """Instantiates the nodes of a graph and runs them."""

    def __init__(self, graph: Graph, clock: Any = time.time):
        self.graph = graph
        self.resources = Resources()
        self.clock = clock
        self.nodes: dict[str, Any] = {}
        self.stats: dict[str, NodeStats] = {}
        self.channels: dict[str, Channel] = {}
        self.routes: dict[tuple[str, str], list[str]] = {}
        self.trackers: dict[str, AckTracker] = {}
        self.outputs: dict[str, SourceOutput] = {}
        self.dead_letter_sinks: set[str] = set()
        self._redeliver = graph.spec.defaults.on_error == "redeliver"
        self._fatal: BaseException | None = None
        self._fatal_event = asyncio.Event()
        self._stopping = False
        self._stopped_at = 0.0  # time.monotonic() of the first stop()
        self._stop_event = asyncio.Event()
        self._stall_alerted: set[str] = set()
        self._gave_up: set[str] = set()  # nodes the drain gave up on: their next batches go back untried
        self._ack_drains: set[asyncio.Future[None]] = set()
        self._wire()

    # -- set-up -----------------------------------------------------------------------------------
    def _wire(self) -> None:
        g = self.graph
        dl = g.spec.defaults.dead_letter
        for node_id, rn in g.nodes.items():
            ctx = NodeContext(node_id, g.connections, g.schemas, self.resources, g.base_dir, self.clock)
            self.nodes[node_id] = rn.cls(node_id, rn.config, ctx)
            self.stats[node_id] = NodeStats(node_id, rn.kind, rn.type)
            if rn.kind != "source":
                self.channels[node_id] = Channel(rn.capacity, rn.capacity_bytes, len(rn.inputs))
            for up, port in rn.inputs:
                self.routes.setdefault((up, port), []).append(node_id)
            if rn.kind == "sink" and (node_id == dl or (rn.inputs and all(p == ERRORS for _, p in rn.inputs))):
                self.dead_letter_sinks.add(node_id)
        if dl is not None:
            for node_id in g.nodes:
                if node_id != dl and (node_id, ERRORS) not in self.routes:
                    self.routes[(node_id, ERRORS)] = [dl]
                    self.channels[dl]._writers += 1
        self.inline = {n: Outputs(n, g.nodes[n].ports, self.stats[n]) for n in g.nodes if self._can_inline(n)}

    def _can_inline(self, node_id: str) -> bool:
        """An `inline` operator that is the only consumer of its one input runs in its upstream's
        task: the upstream calls `process` on each batch it sends, with no queue and no task switch
        in between, so a batch goes source -> filter -> map while it is still in the CPU's cache."""
        rn = self.graph.nodes[node_id]
        op = self.nodes[node_id]
        if rn.kind != "operator" or not getattr(op, "inline", False) or len(rn.inputs) != 1:
            return False
        if type(op).flush is not Operator.flush or type(op).tick is not Operator.tick or op.tick_interval:
            return False
        feeds = [key for key, targets in self.routes.items() if node_id in targets]
        return feeds == [rn.inputs[0]] and self.routes[rn.inputs[0]] == [node_id]

    # -- dispatch ---------------------------------------------------------------------------------
    async def _dispatch(self, node_id: str, lists: dict[str, list[Msg]]) -> None:
        stats = self.stats[node_id]
        for port, msgs in lists.items():
            if not msgs:
                continue
            if port == ERRORS:
                stats.errors += len(msgs)
            else:
                stats.emitted += len(msgs)
            if port == ERRORS and self._redeliver and self.graph.nodes[node_id].kind != "source":
                msgs = self._redeliver_failed(msgs)
                if not msgs:
                    continue
            targets = self.routes.get((node_id, port))
            if not targets:
                if port == ERRORS:
                    self._unhandled(node_id, msgs)
                    continue
                for m in msgs:  # an unconsumed port (validate warns): nothing waits for these
                    m.ack.finish(0)
                stats.filtered += len(msgs)
                continue
            if len(targets) > 1:
                extra = len(targets) - 1
                for m in msgs:
                    own_ack(m).retain(extra)
                # a Msg has one holder (map rewrites its body in place): each further target gets copies
                for target in targets[1:]:
                    await self.channels[target].put([Msg(m.body, m.meta, m.ack, m.size) for m in msgs])
            target = targets[0]
            if target in self.inline:
                await self._run_inline(self.graph.nodes[target], msgs)
            else:
                await self.channels[target].put(msgs)

    def _redeliver_failed(self, msgs: list[Msg]) -> list[Msg]:
        """`defaults.on_error: redeliver`: a failed message whose source can redeliver it is handed back
        (its ack fails, the source naks it or leaves it pending); the source dead-letters it itself once
        it was delivered `max_deliver` times. The others go on to the errors port as usual."""
        keep = []
        for m in msgs:
            owner = m.ack.owner
            if isinstance(owner, AckTracker) and owner.redelivers:
                reason = m.body.get("error") if isinstance(m.body, dict) else "failed"
                m.ack.fail(str(reason))
            else:
                keep.append(m)
        return keep

    def _unhandled(self, node_id: str, msgs: list[Msg]) -> None:
        reason = msgs[0].body.get("error") if isinstance(msgs[0].body, dict) else "error"
        for m in msgs:
            m.ack.fail(f"unhandled error in {node_id}: {m.body.get('error') if isinstance(m.body, dict) else ''}")
        self._set_fatal(UnhandledError(
            f"node '{node_id}' sent {len(msgs)} message(s) to its errors port, which nothing consumes "
            f"(first: {reason}); wire '{node_id}.errors' to a sink or set defaults.dead_letter"))

    def _set_fatal(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.error("graph stopping: %s", exc)
        self._fatal_event.set()
        self.stop()

    def stop(self) -> None:
        """Stop reading from sources; what is in flight drains and is acknowledged."""
        if not self._stopping:
            self._stopped_at = time.monotonic()
            self._stop_event.set()
            log.info("drain started: sources stop reading, in-flight messages drain",
                     extra={"event": "drain_started", "graph": self.graph.spec.name})
        self._stopping = True
        for out in self.outputs.values():
            out.stopping.set()
        for node in self.nodes.values():  # nodes that hold messages (window) tell a drain from end of input
            ctx = getattr(node, "ctx", None)
            if ctx is not None:
                ctx.draining = True

    # -- node loops -------------------------------------------------------------------------------
    async def _retrying(self, rn: ResolvedNode, call: Any, batch: list[Msg], outputs: Outputs | None) -> Any:
        """Run `call()` until it succeeds, as the error's class says (`engine.errors.classify`):

        - `message`: the batch goes to `errors` at once (the message is at fault; retrying changes nothing);
        - `unavailable`: retried with backoff until the service is back, however long (the node is
          stalled meanwhile: logged once, in metrics, an alert after `stall_alert_after`);
        - `unknown`: retried the same way, up to `retry.max_attempts` when that is set, then `errors`.

        While the run drains (SIGTERM), a node still stalled `stop_timeout` seconds after the stop
        gives up: its batch's acks fail, so the sources redeliver them later (never dead-lettered)."""
        attempt = 1
        stats = self.stats[rn.id]
        if self._stopping and rn.id in self._gave_up:  # still unavailable, most likely: no new attempt
            self._hand_back(rn, stats, batch, "the drain gave up on this node")
            return _FAILED
        while True:
            try:
                result = call()
                # CoroutineType first: `inspect.isawaitable` is an ABC isinstance check, costly per batch
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
                if stats.stalled_since is not None:
                    self._recovered(rn, stats, attempt)
                return result
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing batch must not stop the graph
                kind = classify(exc)
                reason = f"{type(exc).__name__}: {exc}"
                if outputs is not None:
                    outputs.take()  # discard what the failed attempt emitted
                stats.retries_by_class[kind] = stats.retries_by_class.get(kind, 0) + 1
                if kind == MESSAGE or (kind == UNKNOWN and rn.retry.exhausted(attempt)):
                    if stats.stalled_since is not None:
                        self._recovered(rn, stats, attempt)
                    log.warning("node %s: %d message(s) to errors after %d attempt(s) (%s error): %s",
                                rn.id, len(batch), attempt, kind, reason,
                                extra={"event": "retries_exhausted", "node": rn.id, "attempts": attempt,
                                       "class": kind, "reason": reason, "messages": len(batch)})
                    await self._dispatch(rn.id, {ERRORS: [error_envelope(m, rn.id, reason, attempt) for m in batch]})
                    return _FAILED
                if stats.stalled_since is None:
                    self._stalled(rn, stats, kind, reason)
                elif reason != stats.stall_reason:
                    stats.stall_reason = reason
                if self._stopping and time.monotonic() - self._stopped_at >= self.graph.spec.defaults.stop_timeout:
                    self._hand_back(rn, stats, batch, reason)
                    return _FAILED
                stats.retries += 1
                delay = rn.retry.backoff(attempt, random.random())
                log.debug("node %s: attempt %d failed (%s); retrying in %.2fs", rn.id, attempt, reason, delay)
                self._check_stall_alert(rn, stats)
                await self._sleep_unless_stopping(delay, getattr(getattr(self.nodes[rn.id], "ctx", None),
                                                                 "retry_now", None))
                attempt += 1

    def _stalled(self, rn: ResolvedNode, stats: NodeStats, kind: str, reason: str) -> None:
        stats.stalled_since = self.clock()
        stats.stall_class, stats.stall_reason = kind, reason
        self._stall_alerted.discard(rn.id)
        log.warning("node %s: stalled (%s): %s; retrying with backoff until it succeeds", rn.id,
                    "service unavailable" if kind == UNAVAILABLE else "error of unknown kind", reason,
                    extra={"event": "node_stalled", "node": rn.id, "class": kind, "reason": reason})

    def _recovered(self, rn: ResolvedNode, stats: NodeStats, attempt: int) -> None:
        seconds = stats.stalled_seconds(self.clock())
        log.warning("node %s: recovered after %.1fs and %d attempt(s)", rn.id, seconds, attempt,
                    extra={"event": "node_recovered", "node": rn.id, "class": stats.stall_class,
                           "stalled_seconds": round(seconds, 3), "attempts": attempt})
        stats.stalled_since, stats.stall_class, stats.stall_reason = None, "", ""

    def _check_stall_alert(self, rn: ResolvedNode, stats: NodeStats) -> None:
        seconds = stats.stalled_seconds(self.clock())
        if rn.id not in self._stall_alerted and seconds >= self.graph.spec.defaults.stall_alert_after:
            self._stall_alerted.add(rn.id)
            log.error("node %s: stalled for %.0fs (%s): %s", rn.id, seconds, stats.stall_class, stats.stall_reason,
                      extra={"event": "stall_alert", "node": rn.id, "class": stats.stall_class,
                             "stalled_seconds": round(seconds, 3), "reason": stats.stall_reason})

    def _hand_back(self, rn: ResolvedNode, stats: NodeStats, batch: list[Msg], reason: str) -> None:
        """The drain gave up on a stalled node: its messages go back to their sources unacknowledged,
        and so do those of every batch it takes after this one (trying each would hold the end of the
        run up by one more failed attempt per batch queued)."""
        for m in batch:
            m.ack.fail(f"{rn.id}: unavailable at shutdown: {reason}")
        stats.stalled_since, stats.stall_class, stats.stall_reason = None, "", ""
        if rn.id in self._gave_up:
            return
        self._gave_up.add(rn.id)
        log.warning("node %s: still stalled %.0fs into the drain; %d message(s) handed back to their sources "
                    "unacknowledged: %s", rn.id, self.graph.spec.defaults.stop_timeout, len(batch), reason,
                    extra={"event": "drain_hand_back", "node": rn.id, "messages": len(batch), "reason": reason})

    async def _sleep_unless_stopping(self, delay: float, wake: asyncio.Event | None = None) -> None:
        """Sleep `delay` seconds, or until the drain's `stop_timeout` runs out, or until `wake` (the
        node's `ctx.retry_now`: its connector saw the service come back), whichever is first."""
        if self._stopping:
            left = self.graph.spec.defaults.stop_timeout - (time.monotonic() - self._stopped_at)
            delay = max(0.0, min(delay, left))
        waits = [asyncio.ensure_future(e.wait()) for e in (None if self._stopping else self._stop_event, wake)
                 if e is not None]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if wake is not None:
            wake.clear()

    async def _run_operator(self, rn: ResolvedNode) -> None:
        op: Operator = self.nodes[rn.id]
        stats = self.stats[rn.id]
        inbox = self.channels[rn.id]
        outputs = Outputs(rn.id, rn.ports, stats)
        tick = op.tick_interval
        next_tick = self.clock() + tick if tick else None
        while True:
            timeout = max(0.0, next_tick - self.clock()) if next_tick is not None else None
            batch = await inbox.get(rn.batch_size, timeout)
            if batch is None:
                break
            if batch:
                stats.received += len(batch)
                stats.batches += 1
                t0 = time.perf_counter()
                result = await self._retrying(rn, lambda b=batch: op.process(b, outputs), batch, outputs)
                stats.observe_batch(len(batch), time.perf_counter() - t0)
                if result is not _FAILED:
                    await self._dispatch(rn.id, outputs.take())
            if next_tick is not None and self.clock() >= next_tick:
                r = op.tick(self.clock(), outputs)
                if r is not None:
                    await r
                await self._dispatch(rn.id, outputs.take())
                next_tick = self.clock() + tick  # type: ignore[operator]
        r = op.flush(outputs)
        if r is not None:
            await r
        await self._dispatch(rn.id, outputs.take())

    async def _run_inline(self, rn: ResolvedNode, batch: list[Msg]) -> None:
        """One batch through an inlined operator, in the task of the node that sent it."""
        op: Operator = self.nodes[rn.id]
        stats = self.stats[rn.id]
        outputs = self.inline[rn.id]
        stats.received += len(batch)
        stats.batches += 1
        t0 = time.perf_counter()
        result = await self._retrying(rn, lambda: op.process(batch, outputs), batch, outputs)
        stats.observe_batch(len(batch), time.perf_counter() - t0)
        if result is not _FAILED:
            await self._dispatch(rn.id, outputs.take())

    async def _run_sink(self, rn: ResolvedNode) -> None:
        sink: Sink = self.nodes[rn.id]
        stats = self.stats[rn.id]
        inbox = self.channels[rn.id]
        outcome = DEAD_LETTERED if rn.id in self.dead_letter_sinks else DELIVERED
        while True:
            batch = await inbox.get(rn.batch_size)
            if batch is None:
                break
            stats.received += len(batch)
            stats.batches += 1
            t0 = time.perf_counter()
            failures = await self._retrying(rn, lambda b=batch: sink.write(b), batch, None)
            stats.observe_batch(len(batch), time.perf_counter() - t0)
            if failures is _FAILED:
                continue
            failed_ids: set[int] = set()
            if failures:
                failed_ids = {id(m) for m, _ in failures}
                done = [m for m in batch if id(m) not in failed_ids]
            else:
                done = batch
            if done:
                _commit(done, outcome)
            committed = len(done)
            stats.committed += committed
            # end-to-end latency: one clock read per batch, ages from each message's meta
            stats.end_to_end.observe_ages(self.clock(), done)
            if outcome == DEAD_LETTERED:
                stats.dead_lettered += committed
                if deadletter_log.isEnabledFor(logging.WARNING):
                    _log_dead_letters(rn.id, done)
            if failures:
                await self._dispatch(rn.id, {ERRORS: [error_envelope(m, rn.id, reason) for m, reason in failures]})

    async def _run_source(self, rn: ResolvedNode) -> None:
        src: Source = self.nodes[rn.id]
        out = self.outputs[rn.id]
        try:
            await src.run(out)
        finally:
            await self._drain_acks(rn.id, src, wait=False)

    async def _ack_loop(self, node_id: str) -> None:
        """Hand settled acks to the source as they come. A hand-over in progress is never cut short
        when the run ends (the loop is cancelled then): it runs in its own task, which the end of
        the run waits for, so tokens a source took (XACK in flight, say) are not lost."""
        src: Source = self.nodes[node_id]
        tracker = self.trackers[node_id]
        while True:
            await tracker.wait_settled()
            drain = asyncio.ensure_future(self._drain_acks(node_id, src, wait=False))
            self._ack_drains.add(drain)
            drain.add_done_callback(self._ack_drains.discard)
            try:
                await asyncio.shield(drain)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed upstream ack means redelivery, not a dead loop
                log.error("source %s: acknowledging upstream failed (%s: %s); those messages will be "
                          "redelivered by the source", node_id, type(exc).__name__, exc)

    async def _drain_acks(self, node_id: str, src: Source, wait: bool) -> None:
        tracker = self.trackers[node_id]
        done, failed = tracker.take()
        if done:
            await src.commit(done)
        if failed:
            await src.reject(failed)

    # -- the run ----------------------------------------------------------------------------------
    async def run(self) -> RunReport:
        t0 = time.perf_counter()
        tune_malloc()
        g = self.graph
        error: BaseException | None = None
        started: list[str] = []
        try:
            for node_id in _start_order(g):
                try:
                    await self.nodes[node_id].start()
                except Exception as exc:
                    raise NodeStartError(f"node '{node_id}' ({g.nodes[node_id].type}) failed to start: {exc}") from exc
                started.append(node_id)
            error = await self._run_tasks()
        except NodeStartError as exc:
            error = exc
        finally:
            for node_id in reversed(started):
                try:
                    await self.nodes[node_id].stop()
                except Exception:  # noqa: BLE001
                    log.exception("node %s failed to stop cleanly", node_id)
            await self.resources.close()
        if self._stopping:
            log.info("drain finished", extra={"event": "drain_finished", "graph": g.spec.name,
                                              "in_flight": sum(t.in_flight for t in self.trackers.values())})
        return RunReport(g.spec.name, time.perf_counter() - t0, self.stats, self.trackers,
                         error or self._fatal, self._stopping and self._fatal is None)

    async def _collect_garbage(self, interval: float) -> None:
        """Automatic GC is off during a run (in-flight messages would make every young-generation
        pass re-scan thousands of live objects); cycles are collected here on a timer instead.

        A pass costs time in proportion to the objects in flight, not to the time since the last
        one, so the next pass waits at least `_GC_SHARE` times as long as this one took: GC stays
        under about 2% of the run however full the edges are (measured: 50-200 ms per pass with
        full 8192-message edges, 10-20% of the run at a fixed 1 s interval). A pass that finds much
        cyclic garbage brings the interval back to the minimum, so such garbage stays bounded."""
        full_every = 60.0  # seconds between full (generation 2) collections
        since_full = 0.0
        while True:
            await asyncio.sleep(interval)
            since_full += interval
            t0 = time.perf_counter()
            if since_full >= full_every:
                found = gc.collect(2)
                since_full = 0.0
            else:
                found = gc.collect(1)
            took = time.perf_counter() - t0
            if found > _GC_FOUND_MANY:  # cyclic garbage is piling up: keep memory bounded, collect often
                interval = _GC_MIN_INTERVAL
            else:
                interval = min(_GC_MAX_INTERVAL, max(_GC_MIN_INTERVAL, took * _GC_SHARE))

    async def _run_tasks(self) -> BaseException | None:
        g = self.graph
        node_tasks: dict[str, asyncio.Task[None]] = {}
        ack_tasks: list[asyncio.Task[None]] = []
        for node_id, rn in g.nodes.items():
            if rn.kind == "source":
                tracker = AckTracker(limit=g.spec.defaults.max_in_flight)
                tracker.redelivers = bool(getattr(self.nodes[node_id], "redelivers", False))
                self.trackers[node_id] = tracker
                self.outputs[node_id] = SourceOutput(
                    node_id, tracker, lambda lists, n=node_id: self._dispatch(n, lists), self.stats[node_id])
                if self._stopping:
                    self.outputs[node_id].stopping.set()
        for node_id, rn in g.nodes.items():
            if node_id in self.inline:
                continue  # runs in its upstream's task (see `_can_inline`)
            runner = {"source": self._run_source, "operator": self._run_operator, "sink": self._run_sink}[rn.kind]
            node_tasks[node_id] = asyncio.create_task(self._guard(rn, runner), name=f"node:{node_id}")
            if rn.kind == "source":
                ack_tasks.append(asyncio.create_task(self._ack_loop(node_id), name=f"acks:{node_id}"))
        fatal_wait = asyncio.create_task(self._fatal_event.wait())
        gc_was_enabled = gc.isenabled()
        gc.disable()
        ack_tasks.append(asyncio.create_task(self._collect_garbage(1.0), name="gc"))
        pending: set[asyncio.Task[Any]] = set(node_tasks.values())
        while pending:
            done, pending = await asyncio.wait(pending | {fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(fatal_wait)
            if fatal_wait in done and self._fatal is not None and isinstance(self._fatal, NodeCrash):
                break
            if fatal_wait in done:
                fatal_wait = asyncio.create_task(asyncio.Event().wait())
        # every node finished (or a node crashed): hand the last acks to the sources
        for t in pending:
            t.cancel()
        for t in ack_tasks:
            t.cancel()
        fatal_wait.cancel()
        await asyncio.gather(*pending, *ack_tasks, fatal_wait, return_exceptions=True)
        await asyncio.gather(*self._ack_drains, return_exceptions=True)  # hand-overs in progress finish
        if gc_was_enabled:
            gc.enable()
        for node_id in self.trackers:
            try:
                await self._drain_acks(node_id, self.nodes[node_id], wait=False)
            except Exception as exc:  # noqa: BLE001
                log.error("source %s failed to acknowledge: %s", node_id, exc)
        return self._fatal

    async def _guard(self, rn: ResolvedNode, runner: Any) -> None:
        try:
            await runner(rn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("node %s crashed", rn.id)
            self._set_fatal(NodeCrash(f"node '{rn.id}' ({rn.type}) crashed: {type(exc).__name__}: {exc}"))
        finally:
            for target in self._targets_of(rn.id):
                self.channels[target].close_writer()

    def _targets_of(self, node_id: str) -> list[str]:
        """The nodes whose input `node_id` writes to, looking through inlined operators (they run
        in `node_id`'s task, so their own targets lose a writer when `node_id` ends)."""
        out = []
        for (up, _port), targets in self.routes.items():
            if up == node_id:
                for t in targets:
                    out.extend(self._targets_of(t) if t in self.inline else [t])
        return out


class NodeCrash(UnhandledError):
    """A node's own code raised outside of a batch (a bug or a lost resource)."""


_FAILED = object()
_GC_SHARE = 50  # a GC pass may take 1/50 of the time between passes
_GC_MIN_INTERVAL = 1.0
_GC_MAX_INTERVAL = 10.0
_GC_FOUND_MANY = 10_000  # unreachable objects found by one pass


def _commit(done: list[Msg], outcome: int) -> None:
    """Release the acks of the messages a sink committed, with its outcome (Ack.finish, inlined:
    this runs once per committed message). Runs of messages sharing a source batch's `BatchAck`
    are released with one call each."""
    acks = [m.ack for m in done]
    settled = []
    if type(acks[0]) is BatchAck:
        for a, run in groupby(acks):  # C-level runs: consecutive messages of one source batch
            k = len(list(run))
            if type(a) is BatchAck:
                a.finish_many(outcome, k)
                continue
            for _ in range(k):
                a.outcome |= outcome
                a.pending -= 1
                if a.pending == 0:
                    settled.append(a)
    else:
        for a in acks:
            if type(a) is BatchAck:
                a.finish(outcome)
                continue
            a.outcome |= outcome
            a.pending -= 1
            if a.pending == 0:
                settled.append(a)
    if settled:
        _settle(settled)


def _settle(acks: list[Any]) -> None:
    """Hand acks whose last reference a sink released to their owners: runs of acks with the same
    tracker (the usual batch) in one `settle_many`, anything else (a composite) one by one."""
    i, n = 0, len(acks)
    first = acks[0].owner
    if type(first) is AckTracker and [a.owner for a in acks].count(first) == n:  # C-level check
        first.settle_many(acks)
        return
    while i < n:
        owner = acks[i].owner
        j = i + 1
        while j < n and acks[j].owner is owner:
            j += 1
        if owner is None:
            pass
        elif type(owner) is AckTracker:
            owner.settle_many(acks[i:j])
        else:
            for a in acks[i:j]:
                owner.settle(a)
        i = j


def _start_order(g: Graph) -> list[str]:
    """Sinks first, then operators, then sources, so nothing reads before its consumers are ready."""
    order = {"sink": 0, "operator": 1, "source": 2}
    return sorted(g.nodes, key=lambda n: order[g.nodes[n].kind])
