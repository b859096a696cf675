"""`drop`: a sink that commits every message at once and keeps nothing (benchmarks, discards)."""

from __future__ import annotations

from engine import Msg, NodeConfig, Sink

__all__ = ["Drop", "DropConfig"]


class DropConfig(NodeConfig):
    """No settings: every message is committed and discarded."""


class Drop(Sink):
    Config = DropConfig

    async def write(self, batch: list[Msg]) -> None:
        return None
