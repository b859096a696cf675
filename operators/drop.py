"""`drop`: a sink that commits every message at once and keeps nothing (benchmarks, discards)."""

from __future__ import annotations

from engine import Msg, NodeConfig, Sink

__all__ = ["Drop", "DropConfig"]


class DropConfig(NodeConfig):
    """No settings: every message is committed and discarded."""


class Drop(Sink):
    Config = DropConfig
    example = """\
version: 1
name: drop_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  discard: {type: drop, inputs: [orders]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""

    async def write(self, batch: list[Msg]) -> None:
        return None
