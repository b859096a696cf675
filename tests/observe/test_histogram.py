"""The hot-path histogram: bucket counts like Prometheus' `le`, ages from meta, quantiles."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest

from engine.message import Msg
from engine.observe.histogram import LATENCY_BUCKETS, Histogram, quantile
from engine.observe.snapshot import histogram_quantile


def test_observe_ages_matches_one_by_one() -> None:
    rnd = random.Random(7)
    now = 1_795_000_000.0
    ages = [rnd.choice([0.0, 0.001, 0.05, 2.5]) if i % 3 == 0 else rnd.expovariate(20) for i in range(2000)]
    msgs = [Msg(i, {"timestamp": now - a}) for i, a in enumerate(ages)]
    msgs += [Msg("x", {}), Msg("y", {"timestamp": "2026-01-01T00:00:00Z"}), Msg("z", {"timestamp": None})]
    h = Histogram()
    h.observe_ages(now, msgs)
    naive = [0] * (len(LATENCY_BUCKETS) + 1)
    for m in msgs[:2000]:
        naive[bisect_left(LATENCY_BUCKETS, now - m.meta["timestamp"])] += 1
    assert h.counts == naive and h.count == 2000  # the three without a numeric stamp are left out
    assert h.sum == pytest.approx(sum(now - m.meta["timestamp"] for m in msgs[:2000]), abs=1e-6)


def test_observe_runs_counts_as_the_messages_of_its_bodies_would() -> None:
    # a `Bodies` (engine.message) reaches a sink as runs of (count, meta, ack, size)
    now = 1_795_000_000.0
    metas = [{"timestamp": now - 0.002}, {}, {"timestamp": now - 1.5}, {"timestamp": "soon"}, {"timestamp": now}]
    runs = [(n, meta, None, 0) for n, meta in zip([3, 4, 1, 2, 5], metas)]
    by_runs, by_msgs = Histogram(), Histogram()
    by_runs.observe_runs(now, runs)
    by_msgs.observe_ages(now, [Msg(0, meta) for n, meta, _, _ in runs for _ in range(n)])
    assert (by_runs.counts, by_runs.count, by_runs.sum) == (by_msgs.counts, by_msgs.count, by_msgs.sum)
    assert by_runs.count == 9
    nothing = Histogram()
    nothing.observe_runs(now, [(5, {}, None, 0)])
    assert nothing.count == 0


def test_observe_ages_of_nothing_measurable() -> None:
    h = Histogram()
    h.observe_ages(10.0, [])
    h.observe_ages(10.0, [Msg(1, {"timestamp": "soon"})])
    assert h.count == 0 and sum(h.counts) == 0


def test_cumulative_and_quantile() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 0.7, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert quantile(0.5, [(0.1, 2.0), (1.0, 4.0), (float("inf"), 5.0)]) == pytest.approx(0.1 + 0.9 * 0.5 / 2)
    assert histogram_quantile(0.99, h) == float("inf")  # beyond the last bound: above it, not capped at it
    assert histogram_quantile(0.99, Histogram()) is None


def test_latencies_beyond_a_minute_are_measured_and_beyond_the_buckets_say_so() -> None:
    """Buckets reach an hour; a quantile above the largest bucket is `inf` and reads `> 3600 s`,
    not the largest bound (which read like a cap at 60 s)."""
    from engine.observe.histogram import LATENCY_BUCKETS, seconds_text
    from engine.observe.snapshot import histogram_quantile

    h = Histogram(LATENCY_BUCKETS)
    for v in (0.02, 90.0, 90.0, 90.0):
        h.observe(v)
    p50 = histogram_quantile(0.5, h)
    assert p50 is not None and 60 < p50 <= 120
    assert seconds_text(p50).endswith(" s") and 60 < float(seconds_text(p50)[:-2]) <= 120
    for _ in range(10):
        h.observe(5000.0)
    assert histogram_quantile(0.99, h) == float("inf")
    assert seconds_text(histogram_quantile(0.99, h)) == "> 3600 s"
    assert seconds_text(0.0123) == "12.3 ms" and seconds_text(None) == "-"


def test_observe_ages_of_a_batch_under_one_meta_equals_one_meta_each() -> None:
    """A source batch shares one meta dict (one stamp read for all): counts and sum exactly as with a
    meta of its own per message; a shared meta without a stamp, or a batch of mixed metas, as before."""
    now, stamp = 1_795_000_000.0, 1_795_000_000.0 - 0.0123
    shared = {"timestamp": stamp}
    one, each = Histogram(), Histogram()
    one.observe_ages(now, [Msg(i, shared) for i in range(1001)])
    each.observe_ages(now, [Msg(i, {"timestamp": stamp}) for i in range(1001)])
    assert one.count == each.count == 1001 and one.counts == each.counts and one.sum == each.sum
    assert one.counts[bisect_left(LATENCY_BUCKETS, now - stamp)] == 1001
    plain = {"source": "read"}
    none = Histogram()
    none.observe_ages(now, [Msg(i, plain) for i in range(5)])
    assert none.count == 0 and sum(none.counts) == 0
    mixed = Histogram()  # first and last share a meta, one in the middle differs: read one by one
    mixed.observe_ages(now, [Msg(0, shared), Msg(1, {"timestamp": now - 5.0}), Msg(2, plain), Msg(3, shared)])
    assert mixed.count == 3 and mixed.counts[bisect_left(LATENCY_BUCKETS, 5.0)] == 1
    assert mixed.counts[bisect_left(LATENCY_BUCKETS, now - stamp)] == 2
    text = Histogram()  # a shared stamp that is not a number: nothing measured
    text.observe_ages(now, [Msg(i, {"timestamp": "soon"}) for i in range(3)])
    assert text.count == 0
