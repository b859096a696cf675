"""`generate`: a built-in source of synthetic messages (demos, tests, benchmarks)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from engine import CelExpr, EvalError, Msg, NodeConfig, Source, SourceSender, compile_expr

__all__ = ["Generate", "GenerateConfig"]


class GenerateConfig(NodeConfig):
    """Emit `count` messages (or run until stopped), optionally at a fixed rate."""

    count: int | None = Field(None, ge=0, description="Messages in all; unset runs until stopped.")
    rate: float | None = Field(None, gt=0, description="Messages per second; unset is as fast as possible.")
    template: CelExpr | None = Field(
        None,
        description="CEL expression for each body; `msg.i` is the message number (0-based). "
        'Default: {"i": i, "ts": <epoch seconds>}.',
        examples=['{"id": msg.i, "user": "u" + string(msg.i % 5), "amount": double(msg.i % 200)}'],
    )
    batch: int = Field(500, ge=1, le=100_000, description="Messages per emitted batch; with `rate`, at most a tenth "
                       "of a second's messages (`rate: 100`: 10 every 0.1 s, not 500 after 5 s).")


class Generate(Source):
    Config = GenerateConfig
    example = """\
version: 1
name: generate_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 200
      rate: 1000                     # messages per second; unset: as fast as possible
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7)}'
  show: {type: stdout, inputs: [orders]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    shared_by = "message numbers: worker i of N makes the numbers i, i+N, i+2N... at rate/N"

    def __init__(self, node_id: str, config: GenerateConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.expr = compile_expr(config.template) if config.template else None

    def total(self) -> int | None:
        return self._share()[0]

    def _share(self) -> tuple[int | None, float | None]:
        """This worker's count and rate (all of them without `--workers`)."""
        cfg, w = self.config, self.ctx.worker
        count = None if cfg.count is None else len(range(w.index, cfg.count, w.count))
        return count, None if cfg.rate is None else cfg.rate / w.count

    async def run(self, out: SourceSender) -> None:
        import asyncio

        cfg = self.config
        count, rate = self._share()
        most = cfg.batch if rate is None else max(1, min(cfg.batch, int(rate / 10)))  # no wait for a full batch
        step, first = self.ctx.worker.count, self.ctx.worker.index
        i = 0
        started = time.monotonic()
        fn = self.expr.fn if self.expr else None
        tracker = out.tracker
        while not out.stopping.is_set() and (count is None or i < count):
            await out.wait_room()
            n = most if count is None else min(most, count - i)
            if rate is not None:
                due = started + (i + n) / rate
                delay = due - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(out.stopping.wait(), delay)
                        break
                    except TimeoutError:
                        pass
            now = time.time()
            msgs: list[Msg] = []
            errors: list[Msg] = []
            ack = tracker.new_batch(n, first + i * step)  # one ack a batch: nothing to acknowledge per message
            for j in range(first + i * step, first + (i + n) * step, step):
                meta = {"source": self.id, "seq": j, "timestamp": now}
                if fn is None:
                    msgs.append(Msg({"i": j, "ts": now}, meta, ack, 32))
                    continue
                try:
                    msgs.append(Msg(fn({"i": j}, meta), meta, ack, 64))
                except EvalError as exc:
                    errors.append(out.error(Msg({"i": j}, meta, ack), f"template: {exc}"))
            i += n
            await out.send(msgs, errors)
