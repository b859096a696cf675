"""Moving a node's output to where the plan says: channels, inline operators, errors.

`Router.dispatch(node_id, lists)` takes what one `process` call (or a source batch, or a sink's
failures) put on each port and sends it on: to each target's channel (the first target gets the
list itself, each further one copies, since a `Msg` has one holder), or straight into an inline
operator's `process` in this same task. An `errors` port with no target stops the graph
(`UnhandledError`) without acknowledging the message; any other port with no target settles its
messages as filtered. With `defaults.on_error: redeliver`, a failed message whose source can
redeliver it goes back to that source instead.
"""

from __future__ import annotations

import time
from typing import Any

from engine.compile.validate import ResolvedNode
from engine.errors import UnhandledError
from engine.message import AckTracker, Bodies, DeadLetter, Msg, materialize, own_ack
from engine.runtime.outputs import ERRORS, Outputs
from engine.runtime.retry import FAILED, Retrier
from engine.runtime.state import RunState

__all__ = ["Router"]


class Router:
    def __init__(self, state: RunState):
        self.s = state
        self.routes = state.plan.routes
        self.retrier = Retrier(state, self.dispatch)
        self._redeliver = state.graph.spec.defaults.on_error == "redeliver"
        self._mixed = state.plan.mixed_sinks  # an errors edge into one of these marks its messages
        plan = state.plan
        # the nodes a `Bodies` goes to as it is (engine.message): those that take one, but for sinks
        # that count what they commit as dead-lettered (per message, logged)
        self.takes_bodies = frozenset(
            n for n, node in state.nodes.items()
            if getattr(node, "takes_bodies", False) and n not in plan.mixed_sinks and n not in plan.dead_letter_sinks)

    async def dispatch(self, node_id: str, lists: dict[str, list[Msg]] | dict[str, Any]) -> None:
        s = self.s
        stats = s.stats[node_id]
        if s.taps:  # `streamdag tap` (engine.observe.tap): one check per batch when nobody taps
            lists = materialize(lists)
            _offer_taps(s.taps, node_id, lists)
        for port, msgs in lists.items():
            if not msgs:
                continue
            if isinstance(msgs, Bodies):  # as it is only to one target that takes it: Msg objects otherwise
                targets = self.routes.get((node_id, port))
                if port != ERRORS and targets and len(targets) == 1 and targets[0] in self.takes_bodies and s.tracer is None:
                    stats.emitted += len(msgs)
                    if targets[0] in s.inline:
                        await self.run_inline(s.graph.nodes[targets[0]], msgs)
                    else:
                        await s.channels[targets[0]].put(msgs)
                    continue
                msgs = msgs.msgs()
            if port == ERRORS:
                stats.errors += len(msgs)
            else:
                stats.emitted += len(msgs)
            if port == ERRORS and self._redeliver and s.graph.nodes[node_id].kind != "source":
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
            letters = port == ERRORS and self._mixed
            if len(targets) > 1:
                extra = len(targets) - 1
                for m in msgs:
                    own_ack(m).retain(extra)
                # a Msg has one holder (map rewrites its body in place): each further target gets copies
                for target in targets[1:]:
                    cls = DeadLetter if letters and target in self._mixed else Msg
                    await s.channels[target].put([cls(m.body, m.meta, m.ack, m.size) for m in msgs])
            target = targets[0]
            if target in s.inline:
                await self.run_inline(s.graph.nodes[target], msgs)
            else:
                if letters and target in self._mixed:  # counted dead-lettered there, unlike its other input
                    msgs = [DeadLetter(m.body, m.meta, m.ack, m.size) for m in msgs]
                await s.channels[target].put(msgs)

    async def run_inline(self, rn: ResolvedNode, batch: list[Msg] | Bodies) -> None:
        """One batch through an inline operator, in the task of the node that sent it."""
        await self.process(rn, batch, self.s.inline[rn.id])

    async def process(self, rn: ResolvedNode, batch: list[Msg] | Bodies, outputs: Outputs) -> None:
        """One batch through an operator (inline, or in its own task: `NodeLoops.run_operator`): a
        `Bodies` through `process_bodies` when it takes it, else messages through `process` and the
        retrier; what it emitted is dispatched."""
        s = self.s
        op = s.nodes[rn.id]
        stats = s.stats[rn.id]
        stats.received += len(batch)
        stats.batches += 1
        t0 = time.perf_counter()
        if isinstance(batch, Bodies):
            if self.bodies_processed(rn, op, batch, outputs):
                stats.observe_batch(len(batch), time.perf_counter() - t0)
                await self.dispatch(rn.id, outputs.take())
                return
            batch = batch.msgs()
        call = lambda b=batch: op.process(b, outputs)  # noqa: E731
        if s.tracer is None:
            result = await self.retrier.run(rn, call, batch, outputs)
        else:
            result = await s.tracer.run(rn, self.retrier.run, call, batch, outputs, FAILED)
        stats.observe_batch(len(batch), time.perf_counter() - t0)
        if result is not FAILED:
            await self.dispatch(rn.id, outputs.take())

    def bodies_processed(self, rn: ResolvedNode, op: Any, batch: Bodies, outputs: Outputs) -> bool:
        """`op.process_bodies(batch)` when nothing stands against it (a node stalled or given up on
        goes through the retrier, as does a batch `process_bodies` declines or raises on: it is then
        given to `process` as messages, its output so far discarded)."""
        if retrier_only(self.s, rn.id) or not op.takes_bodies:
            return False
        try:
            if op.process_bodies(batch, outputs):
                return True
        except Exception:  # noqa: BLE001 - the message path gives each message its own result or error
            pass
        outputs.take()
        return False

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
        self.s.set_fatal(UnhandledError(
            f"node '{node_id}' sent {len(msgs)} message(s) to its errors port, which nothing consumes "
            f"(first: {reason}); wire '{node_id}.errors' to a sink or set defaults.dead_letter"))


def retrier_only(s: RunState, node_id: str) -> bool:
    """The node is stalled, or the drain gave up on it: its batches go through the retrier only."""
    return s.stats[node_id].stalled_since is not None or s.stopping


def _offer_taps(taps: dict[tuple[str, str], list[Any]], node_id: str, lists: dict[str, list[Msg]]) -> None:
    for port, msgs in lists.items():
        if msgs:
            for tap in taps.get((node_id, port), ()):
                tap.offer(node_id, port, msgs)
