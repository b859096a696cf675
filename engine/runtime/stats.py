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
    # a node retrying a batch because a service is unavailable (or an error of unknown kind):
    # since when (the run's clock), the error's class and text; None/"" when it is not stalled
    stalled_since: float | None = None
    stall_class: str = ""
    stall_reason: str = ""
    retries_by_class: dict[str, int] = field(default_factory=dict)
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

    def stalled_seconds(self, now: float) -> float:
        """Seconds this node has been retrying one batch (0 when it is not stalled)."""
        return 0.0 if self.stalled_since is None else max(0.0, now - self.stalled_since)
