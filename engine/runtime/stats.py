"""Per-node counters, kept as plain ints on the hot path; metrics exporters read them."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NodeStats"]


@dataclass
class NodeStats:
    node_id: str
    kind: str
    type: str
    received: int = 0  # messages in
    emitted: int = 0  # messages out (all ports but errors)
    errors: int = 0  # messages sent to the errors port
    filtered: int = 0
    committed: int = 0  # sinks: messages committed
    dead_lettered: int = 0  # sinks fed by errors ports: messages committed there
    retries: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)  # recent per-batch seconds

    def as_dict(self) -> dict[str, int | float | str]:
        return {
            "node": self.node_id,
            "kind": self.kind,
            "type": self.type,
            "in": self.received,
            "out": self.emitted,
            "errors": self.errors,
            "filtered": self.filtered,
            "committed": self.committed,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
        }
