"""The loop each node's task runs: a source's `run`, an operator's and a sink's batch loops.

An operator takes batches from its channel (up to its `batch_size`), calls `process` through the
retrier and dispatches what it emitted; on a timer it calls `tick`; at end of input, `flush`. A
sink calls `write` through the retrier, releases the acks of what committed with the sink's
outcome (dead-lettered for what came by an `errors` edge, else delivered) and sends what failed alone to its
`errors` port. A node whose own code raises outside a batch crashes the run (`NodeCrash`); either
way its task closes the channels it writes to, so the nodes downstream see end of input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from engine.api import Operator, Sink, Source
from engine.compile.validate import ResolvedNode
from engine.errors import UnhandledError
from engine.message import DEAD_LETTERED, DELIVERED, Bodies, DeadLetter, Msg, finish_all
from engine.observe.events import deadletter_log
from engine.observe.events import log_dead_letters as _log_dead_letters
from engine.runtime.outputs import ERRORS, Outputs, error_envelope
from engine.runtime.retry import FAILED
from engine.runtime.router import Router, retrier_only
from engine.runtime.state import RunState

__all__ = ["NodeCrash", "NodeLoops"]

log = logging.getLogger("streamdag.runtime")


class NodeCrash(UnhandledError):
    """A node's own code raised outside of a batch (a bug or a lost resource)."""


class NodeLoops:
    def __init__(self, state: RunState, router: Router, drain_acks: Callable[[str], Awaitable[None]]):
        self.s = state
        self.router = router
        self.retrier = router.retrier
        self.drain_acks = drain_acks

    def task_for(self, rn: ResolvedNode) -> Coroutine[Any, Any, None]:
        loop = {"source": self.run_source, "operator": self.run_operator, "sink": self.run_sink}[rn.kind]
        return self._guard(rn, loop)

    async def _guard(self, rn: ResolvedNode, loop: Callable[[ResolvedNode], Awaitable[None]]) -> None:
        try:
            await loop(rn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("node %s crashed", rn.id)
            self.s.set_fatal(NodeCrash(f"node '{rn.id}' ({rn.type}) crashed: {type(exc).__name__}: {exc}"))
        finally:
            for target in self.s.plan.closes[rn.id]:
                self.s.channels[target].close_writer()

    async def run_source(self, rn: ResolvedNode) -> None:
        src: Source = self.s.nodes[rn.id]
        try:
            await src.run(self.s.outputs[rn.id])
        finally:
            await self.drain_acks(rn.id)

    async def run_operator(self, rn: ResolvedNode) -> None:
        s = self.s
        op: Operator = s.nodes[rn.id]
        stats = s.stats[rn.id]
        inbox = s.channels[rn.id]
        outputs = Outputs(rn.id, rn.ports, stats)
        dispatch, clock = self.router.dispatch, s.clock
        tick = op.tick_interval
        next_tick = clock() + tick if tick else None
        while True:
            timeout = max(0.0, next_tick - clock()) if next_tick is not None else None
            batch = await inbox.get(rn.batch_size, timeout)
            if batch is None:
                break
            if batch:
                await self.router.process(rn, batch, outputs)
            if next_tick is not None and clock() >= next_tick:
                r = op.tick(clock(), outputs)
                if r is not None:
                    await r
                await dispatch(rn.id, outputs.take())
                next_tick = clock() + tick  # type: ignore[operator]
        r = op.flush(outputs)
        if r is not None:
            await r
        await dispatch(rn.id, outputs.take())

    async def _bodies_written(self, rn: ResolvedNode, sink: Sink, batch: Bodies) -> bool:
        """`sink.write_bodies(batch)` when nothing stands against it (see `Router.bodies_processed`);
        False: the batch goes through `write` and the retrier as messages."""
        if retrier_only(self.s, rn.id) or not sink.takes_bodies:
            return False
        try:
            return await sink.write_bodies(batch)
        except Exception:  # noqa: BLE001 - `write` is tried next, with its retries and errors
            return False

    async def run_sink(self, rn: ResolvedNode) -> None:
        s = self.s
        sink: Sink = s.nodes[rn.id]
        stats = s.stats[rn.id]
        inbox = s.channels[rn.id]
        outcome = DEAD_LETTERED if rn.id in s.plan.dead_letter_sinks else DELIVERED
        mixed = rn.id in s.plan.mixed_sinks  # per message: a DeadLetter (by an errors edge) or delivered
        while True:
            batch = await inbox.get(rn.batch_size)
            if batch is None:
                break
            stats.received += len(batch)
            stats.batches += 1
            t0 = time.perf_counter()
            if isinstance(batch, Bodies):
                if await self._bodies_written(rn, sink, batch):
                    stats.observe_batch(len(batch), time.perf_counter() - t0)
                    batch.finish(outcome)  # only a sink that delivers takes bodies (Router.takes_bodies)
                    stats.committed += len(batch)
                    stats.end_to_end.observe_runs(s.clock(), batch.runs)
                    continue
                batch = batch.msgs()
            call = lambda b=batch: sink.write(b)  # noqa: E731
            if s.tracer is None:
                failures: Any = await self.retrier.run(rn, call, batch, None)
            else:
                failures = await s.tracer.run(rn, self.retrier.run, call, batch, None, FAILED)
            stats.observe_batch(len(batch), time.perf_counter() - t0)
            if failures is FAILED:
                continue
            routed = sink.routed()
            if failures or routed:
                failed_ids = {id(m) for m, _ in failures or ()}
                failed_ids.update(id(m) for sent in routed.values() for m, _ in sent)
                done = [m for m in batch if id(m) not in failed_ids]
            else:
                done = batch
            letters = done if outcome == DEAD_LETTERED else None
            if mixed:
                letters = [m for m in done if type(m) is DeadLetter]
                delivered = [m.ack for m in done if type(m) is not DeadLetter]
                if letters:
                    finish_all([m.ack for m in letters], DEAD_LETTERED)
                if delivered:
                    finish_all(delivered, DELIVERED)
            elif done:
                finish_all([m.ack for m in done], outcome)
            stats.committed += len(done)
            # end-to-end latency: one clock read per batch, ages from each message's meta
            stats.end_to_end.observe_ages(s.clock(), done)
            if letters:
                stats.dead_lettered += len(letters)
                if deadletter_log.isEnabledFor(logging.WARNING):
                    _log_dead_letters(rn.id, letters)
            if failures:
                await self.router.dispatch(rn.id, {ERRORS: [error_envelope(m, rn.id, reason) for m, reason in failures]})
            if routed:
                await self.router.dispatch(rn.id, {port: [Msg(body, m.meta, m.ack, m.size) for m, body in sent]
                                                   for port, sent in routed.items()})
