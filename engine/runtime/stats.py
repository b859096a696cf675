"""Per-node counters, kept as plain ints on the hot path; metrics exporters read them."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.observe.histogram import SIZE_BUCKETS, Histogram

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
    # read by engine.observe at scrape time: per-batch processing seconds and sizes, and (sinks)
    # seconds from a message's meta["timestamp"] to its commit
    batch_seconds: Histogram = field(default_factory=Histogram, repr=False)
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS), repr=False)
    end_to_end: Histogram = field(default_factory=Histogram, repr=False)

    def observe_batch(self, n: int, seconds: float) -> None:
        """One processed batch: counts, busy time and the two histograms (once per batch)."""
        self.busy_seconds += seconds
        self.batch_seconds.observe(seconds)
        self.batch_sizes.observe(n)

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
