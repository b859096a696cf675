"""Retrying a failing batch, as the error's class says, and the stall it causes.

`Retrier.run(rn, call, batch, outputs)` calls `call()` until it succeeds:

- `message` (`engine.errors.classify`): the batch goes to `errors` at once (the message is at fault;
  retrying changes nothing);
- `unavailable`: retried with the node's backoff until the service is back, however long (the node
  is stalled meanwhile: logged once, in metrics, an alert after `stall_alert_after`);
- `unknown`: retried the same way, up to `retry.max_attempts` when that is set, then `errors`.

While the run drains (SIGTERM), a node still stalled `stop_timeout` seconds after the stop gives
up: its batch's acks fail, so the sources redeliver them later (never dead-lettered).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any

from engine.compile.validate import ResolvedNode
from engine.errors import MESSAGE, UNAVAILABLE, UNKNOWN, classify
from engine.message import Msg
from engine.runtime.outputs import ERRORS, Outputs, error_envelope
from engine.runtime.state import RunState
from engine.runtime.stats import NodeStats

__all__ = ["FAILED", "Retrier"]

log = logging.getLogger("streamdag.runtime")

FAILED = object()  # what `Retrier.run` returns when the batch went to errors or back to its sources

Dispatch = Callable[[str, dict[str, list[Msg]]], Awaitable[None]]


class Retrier:
    def __init__(self, state: RunState, dispatch: Dispatch):
        self.s = state
        self.dispatch = dispatch
        self._alerted: set[str] = set()
        self._gave_up: set[str] = set()  # nodes the drain gave up on: their next batches go back untried

    async def run(self, rn: ResolvedNode, call: Any, batch: list[Msg], outputs: Outputs | None) -> Any:
        """`call()`'s result once it succeeds, or FAILED (see the module docstring)."""
        attempt = 1
        stats = self.s.stats[rn.id]
        if self.s.stopping and rn.id in self._gave_up:  # still unavailable, most likely: no new attempt
            self._hand_back(rn, stats, batch, "the drain gave up on this node")
            return FAILED
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
                    await self.dispatch(rn.id, {ERRORS: [error_envelope(m, rn.id, reason, attempt) for m in batch]})
                    return FAILED
                if stats.stalled_since is None:
                    self._stalled(rn, stats, kind, reason)
                elif reason != stats.stall_reason:
                    stats.stall_reason = reason
                if self.s.drain_seconds_left() <= 0:
                    self._hand_back(rn, stats, batch, reason)
                    return FAILED
                stats.retries += 1
                delay = rn.retry.backoff(attempt, random.random())
                log.debug("node %s: attempt %d failed (%s); retrying in %.2fs", rn.id, attempt, reason, delay)
                self._check_alert(rn, stats)
                await self._sleep(delay, self.s.nodes[rn.id].ctx.retry_now)
                attempt += 1

    def _stalled(self, rn: ResolvedNode, stats: NodeStats, kind: str, reason: str) -> None:
        stats.stalled_since = self.s.clock()
        stats.stall_class, stats.stall_reason = kind, reason
        self._alerted.discard(rn.id)
        log.warning("node %s: stalled (%s): %s; retrying with backoff until it succeeds", rn.id,
                    "service unavailable" if kind == UNAVAILABLE else "error of unknown kind", reason,
                    extra={"event": "node_stalled", "node": rn.id, "class": kind, "reason": reason})

    def _recovered(self, rn: ResolvedNode, stats: NodeStats, attempt: int) -> None:
        seconds = stats.stalled_seconds(self.s.clock())
        log.warning("node %s: recovered after %.1fs and %d attempt(s)", rn.id, seconds, attempt,
                    extra={"event": "node_recovered", "node": rn.id, "class": stats.stall_class,
                           "stalled_seconds": round(seconds, 3), "attempts": attempt})
        stats.stalled_since, stats.stall_class, stats.stall_reason = None, "", ""

    def _check_alert(self, rn: ResolvedNode, stats: NodeStats) -> None:
        seconds = stats.stalled_seconds(self.s.clock())
        if rn.id not in self._alerted and seconds >= self.s.graph.spec.defaults.stall_alert_after:
            self._alerted.add(rn.id)
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
                    "unacknowledged: %s", rn.id, self.s.graph.spec.defaults.stop_timeout, len(batch), reason,
                    extra={"event": "drain_hand_back", "node": rn.id, "messages": len(batch), "reason": reason})

    async def _sleep(self, delay: float, wake: asyncio.Event | None = None) -> None:
        """Sleep `delay` seconds, or until the drain's `stop_timeout` runs out, or until `wake` (the
        node's `ctx.retry_now`: its connector saw the service come back), whichever is first."""
        stopping = self.s.stopping
        if stopping:
            delay = max(0.0, min(delay, self.s.drain_seconds_left()))
        waits = [asyncio.ensure_future(e.wait()) for e in (None if stopping else self.s.stop_event, wake)
                 if e is not None]
        if not waits:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if wake is not None:
            wake.clear()
