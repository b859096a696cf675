"""Fixed-bucket histograms updated on the hot path with one bisect and two adds per observation.

prometheus_client's Histogram takes a lock per observation; these are plain lists read by the
metrics collector at scrape time (the scheduler is single-threaded, so no lock is needed)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from math import fsum
from typing import Any

__all__ = ["LATENCY_BUCKETS", "SIZE_BUCKETS", "Histogram", "quantile", "seconds_text"]

# seconds: 100 µs .. 1 h (a pipeline catching up on a backlog sees minutes); above: "> 3600 s"
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
# messages per batch
SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Histogram:
    """Counts per bucket (`le` upper bounds, +Inf last), a sum and a count."""

    __slots__ = ("bounds", "count", "counts", "exemplars", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        # bucket index -> (trace id, value, unix time): the latest traced observation of each bucket
        # (engine/observe/tracing.py sets them; None until then, and always when tracing is off)
        self.exemplars: dict[int, tuple[str, float, float]] | None = None

    def set_exemplar(self, value: float, trace_id: str, at: float) -> None:
        """Attach a trace to the bucket `value` falls in (the value itself is observed separately)."""
        if self.exemplars is None:
            self.exemplars = {}
        self.exemplars[bisect_left(self.bounds, value)] = (trace_id, value, at)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_ages(self, now: float, msgs: list[Any]) -> None:
        """Observe `now - meta["timestamp"]` for each message that has a numeric timestamp.

        One clock read serves the batch, and the cost is a sort of the stamps plus one bisect per
        bucket, not per message. Messages without a numeric timestamp are left out.

        Messages of one source batch share one `meta` dict (engine.message), so their stamps are
        equal: when the whole batch has one meta (a C-level identity count), its stamp is read once."""
        if not msgs:
            return
        metas = [m.meta for m in msgs]
        first = metas[0]
        if metas[-1] is first and metas.count(first) == len(metas):  # count: identity first, in C
            stamp = first.get("timestamp")
            if stamp is None:  # a source that stamps nothing (a file)
                return
            stamps = [stamp] * len(metas)
        else:
            stamps = [meta.get("timestamp") for meta in metas]
        self._observe_stamps(now, stamps)

    def observe_runs(self, now: float, runs: list[tuple[int, dict[str, Any], Any, int]]) -> None:
        """`observe_ages` for the runs of a `Bodies` (engine.message): `count` messages under each
        meta; runs without a numeric timestamp are left out."""
        stamps: list[Any] = []
        for n, meta, _, _ in runs:
            stamp = meta.get("timestamp")
            if stamp is not None:
                stamps += [stamp] * n
        if stamps:
            self._observe_stamps(now, stamps)

    def _observe_stamps(self, now: float, stamps: list[Any]) -> None:
        try:  # the sum of ages, rounded once (epoch-sized floats cancel exactly in fsum)
            negative_total = fsum([*stamps, *([-now] * len(stamps))])
        except TypeError:  # a stamp is missing or not a number: measure the others
            if stamps.count(None) == len(stamps):  # a source that stamps nothing: one C-level count
                return
            stamps = [t for t in stamps if isinstance(t, (int, float))]
            if not stamps:
                return
            negative_total = fsum([*stamps, *([-now] * len(stamps))])
        n = len(stamps)
        # age <= bound  <=>  stamp >= now - bound: on sorted stamps, one bisect per bucket per batch
        stamps.sort()
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            within = n - bisect_left(stamps, now - bound)
            counts[i] += within - below
            below = within
        counts[-1] += n - below
        self.sum -= negative_total
        self.count += n

    def cumulative(self) -> list[tuple[str, int]]:
        """(`le` label, cumulative count) pairs, +Inf last, as Prometheus exposes them."""
        out = []
        acc = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            acc += c
            out.append(("+Inf" if bound == float("inf") else _fmt(bound), acc))
        return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate the q-quantile from cumulative (upper bound, count) buckets, like PromQL's
    histogram_quantile: linear interpolation inside the bucket; None when empty; `inf` when it lies
    above the largest finite bound (PromQL answers that bound, which reads as a cap: `seconds_text`
    shows `> bound`)."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return float("inf")
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket
        prev_bound, prev_count = bound, count
    return prev_bound


def seconds_text(seconds: float | None, top: float = LATENCY_BUCKETS[-1]) -> str:
    """A duration for people: `-` (none), `0.25 ms`, `12.0 ms`, `3.4 s`, or `> 3600 s` above the
    largest bucket `top` (a quantile that is `inf`)."""
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return f"> {top:g} s"
    if seconds < 1:
        return f"{seconds * 1000:.2f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.1f} s"
