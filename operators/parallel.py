"""`parallel`: run an inner operator on sub-batches with bounded concurrency, ordered or not.

Each incoming micro-batch is cut into chunks of `chunk` messages. With an async inner operator
(one whose `process` returns an awaitable: I/O such as lookups), up to `concurrency` chunks are in
flight at once, across incoming batches: `process` returns as soon as a slot is free, and finished
chunks are emitted then, on the next tick (every 20 ms) or at end of input. `ordered: true` emits
chunks in arrival order (a slow chunk holds back later ones, and counts against `concurrency`
until it is emitted); `ordered: false` emits them as they finish.
A synchronous inner operator runs its chunks one after the other (the event loop has one thread;
for CPU-bound work there is nothing to gain). Each slot has its own inner instance, so inner
state is never shared between concurrent calls. If the inner `process` raises, that chunk's
messages go to `errors` (the node's retry policy does not re-run chunks already in flight).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from engine import (
    ERRORS,
    CheckContext,
    CheckIssue,
    Msg,
    NodeConfig,
    Operator,
    Output,
    error_envelope,
    inner_outputs,
)
from operators.inner import InnerOperator, check_inner, load_inner

if TYPE_CHECKING:  # asyncio is imported where used: validating a graph loads this module, not asyncio
    import asyncio

__all__ = ["Parallel", "ParallelConfig"]

_Done = tuple[dict[str, list[Msg]], int]  # a finished chunk: its outputs per port, and how many it filtered


class ParallelConfig(NodeConfig):
    """Run `operator` on chunks of each batch, `concurrency` chunks at a time."""

    operator: InnerOperator = Field(
        description="The operator to run on each chunk: `type` and `config`, as a node has (no `inputs`).",
        examples=[{"type": "map", "config": {"expr": "msg"}}],
    )
    concurrency: int = Field(4, ge=1, le=1024, description="Chunks in flight at once.")
    chunk: int = Field(100, ge=1, le=100_000, description="Messages per chunk.")
    ordered: bool = Field(True, description="Keep input order in the output (else emit as chunks finish).")


class Parallel(Operator):
    """Run an operator on chunks with bounded concurrency; the node's ports are the inner operator's."""

    Config = ParallelConfig
    example = """\
version: 1
name: parallel_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  enrich:
    type: parallel
    inputs: [orders]
    config:
      concurrency: 4
      chunk: 100
      ordered: true
      operator:
        type: redis_lookup
        config: {connection: cache, key: '"user:" + msg.user', into: profile}
  show: {type: stdout, inputs: [enrich]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "<inner ports>": "the ports of `operator` (its `out` and any named ports, such as the `miss` port of "
            "`redis_lookup`)",
    }
    tick_interval = 0.02

    def __init__(self, node_id: str, config: ParallelConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        cls, inner_config = load_inner(config.operator)
        if cls is None:
            raise ValueError(
                f"parallel: invalid inner operator {config.operator.type!r} (run `streamdag validate`)"
            )
        self.inner_ports = tuple(dict.fromkeys((*cls.output_ports(inner_config), ERRORS)))
        self.free = [cls(f"{node_id}[{i}]", inner_config, ctx) for i in range(config.concurrency)]
        self.instances = list(self.free)
        self.pending: deque[asyncio.Future[_Done]] = deque()

    @classmethod
    def output_ports(cls, config: ParallelConfig) -> tuple[str, ...]:
        inner, inner_config = load_inner(config.operator)
        return inner.output_ports(inner_config) if inner is not None else ("out",)

    @classmethod
    def check(cls, config: ParallelConfig, ctx: CheckContext) -> Iterable[CheckIssue]:
        """The inner node's type and config, checked like a graph node's (codes E200-E203)."""
        return check_inner(config.operator, ctx, "parallel")

    async def start(self) -> None:
        for op in self.instances:
            await op.start()

    async def stop(self) -> None:
        for op in self.instances:
            await op.stop()

    async def _run_chunk(self, op: Operator, chunk: list[Msg]) -> _Done:
        outputs = inner_outputs(op.id, self.inner_ports, self.config.operator.type)
        try:
            result = op.process(chunk, outputs)
            if inspect.isawaitable(result):
                await result
            lists = outputs.take()
        except Exception as exc:  # noqa: BLE001 - one failing chunk must not stop the others
            reason = f"{type(exc).__name__}: {exc}"
            lists = {p: [] for p in self.inner_ports}
            lists[ERRORS] = [error_envelope(m, self.id, reason) for m in chunk]
        finally:
            self.free.append(op)
        return lists, outputs.stats.filtered

    async def process(self, batch: list[Msg], out: Output) -> None:
        import asyncio

        size, window = self.config.chunk, self.config.concurrency
        for i in range(0, len(batch), size):
            # at most `concurrency` chunks running or finished-but-held (ordered mode holds chunks
            # that finished behind a slow one), so memory stays bounded
            while len(self.pending) >= window:
                await self._wait_one()
                self._emit(out)
            op = self.free.pop()  # running <= pending < concurrency, so an instance is free
            self.pending.append(asyncio.ensure_future(self._run_chunk(op, batch[i : i + size])))
        await asyncio.sleep(0)  # let chunks that finish without waiting do so before emitting
        self._emit(out)

    async def _wait_one(self) -> None:
        import asyncio

        if self.config.ordered:
            await asyncio.wait([self.pending[0]])
        else:
            await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)

    def _emit(self, out: Output) -> None:
        """Move finished chunks' outputs to `out` (in order: only the finished head of the queue)."""
        if self.config.ordered:
            while self.pending and self.pending[0].done():
                self._merge(self.pending.popleft().result(), out)
        else:
            keep: deque[asyncio.Future[_Done]] = deque()
            for fut in self.pending:
                if fut.done():
                    self._merge(fut.result(), out)
                else:
                    keep.append(fut)
            self.pending = keep

    @staticmethod
    def _merge(done: _Done, out: Output) -> None:
        lists, filtered = done
        out.stats.filtered += filtered
        for port, msgs in lists.items():
            if msgs:
                out.lists[port].extend(msgs)

    async def tick(self, now: float, out: Output) -> None:
        self._emit(out)
        if self.instances[0].tick_interval:
            for op in self.instances:
                r = op.tick(now, out)
                if inspect.isawaitable(r):
                    await r

    async def flush(self, out: Output) -> None:
        import asyncio

        if self.pending:
            await asyncio.wait(self.pending)
        self._emit(out)
        for op in self.instances:
            r = op.flush(out)
            if inspect.isawaitable(r):
                await r
