"""`batch`: group messages into one message whose body is the list of their bodies.

A group is emitted when it holds `count` messages, when adding one more would pass `bytes`
(message sizes as the source measured them), when its first message is `period` seconds old, and
at end of input. The emitted message carries a `CompositeAck` of the items' acks, so the items are
acknowledged when the group is (delivered, filtered or dead-lettered as one).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from engine import CompositeAck, Msg, NodeConfig, Operator, Output

__all__ = ["Batch", "BatchConfig"]


class BatchConfig(NodeConfig):
    """Emit a list of bodies per group; flush on count, bytes or age (whichever comes first)."""

    count: int | None = Field(100, ge=1, le=1_000_000, description="Messages per group.", examples=[500])
    bytes: int | None = Field(
        None,
        ge=1,
        description="Largest group size in bytes (one larger message goes alone).",
        examples=[1_048_576],
    )
    period: float | None = Field(
        None, gt=0, le=86_400, description="Seconds after which a group is emitted anyway.", examples=[1.0]
    )

    @model_validator(mode="after")
    def _some_limit(self) -> BatchConfig:
        if self.count is None and self.bytes is None and self.period is None:
            raise ValueError("set at least one of count, bytes or period")
        return self


class Batch(Operator):
    """Meta of a group: `batch_count`, `batch_bytes`, and `source`/`first_meta` of its first message."""

    Config = BatchConfig
    example = """\
version: 1
name: batch_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  groups:
    type: batch
    inputs: [orders]
    config: {count: 100, period: 1.0}
  out: {type: file_sink, inputs: [groups], config: {path: out/groups.ndjson}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""

    def __init__(self, node_id: str, config: BatchConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.items: list[Msg] = []
        self.size = 0
        self.opened = 0.0  # clock time of the group's first message
        # Check age four times a period, so a group is at most 1.25 periods old when emitted.
        self.tick_interval = max(0.005, config.period / 4) if config.period else None
        self.max_count = config.count or 0
        self.max_bytes = config.bytes or 0

    def process(self, batch: list[Msg], out: Output) -> None:
        emit = out.port("out")
        max_count, max_bytes = self.max_count, self.max_bytes
        items = self.items
        for m in batch:
            if max_bytes and items and self.size + m.size > max_bytes:
                emit.append(self._group())
                items = self.items
            if not items:
                self.opened = self.ctx.clock()
            items.append(m)
            self.size += m.size
            if (max_count and len(items) >= max_count) or (max_bytes and self.size >= max_bytes):
                emit.append(self._group())
                items = self.items

    def tick(self, now: float, out: Output) -> None:
        if self.items and self.config.period is not None and now - self.opened >= self.config.period:
            out.port("out").append(self._group())

    def flush(self, out: Output) -> None:
        if self.items:
            out.port("out").append(self._group())

    def _group(self) -> Msg:
        items, size = self.items, self.size
        self.items, self.size = [], 0
        first = items[0].meta
        meta = {
            "source": first.get("source"),
            "batch_count": len(items),
            "batch_bytes": size,
            "first_meta": first,
        }
        return Msg([m.body for m in items], meta, CompositeAck(m.ack for m in items), size)
