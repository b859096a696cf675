"""Window edge cases the docs settle (docs/window.md, "Edge cases"), and the session purge rule.

Each test drives the `window` operator directly with event time, so the watermark is exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig, parse_event_time

T = 1_000  # seconds; an arbitrary origin


def make(**config: Any) -> Window:
    base: dict[str, Any] = {"time": "event", "timestamp": "msg.t", "aggregates": {"n": {"op": "count"}}}
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 0.0)
    return Window("win", WindowConfig(**{**base, **config}), ctx)


def feed(op: Window, bodies: list[dict[str, Any]]) -> dict[str, list[Msg]]:
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    tracker = AckTracker()
    op.process([Msg(b, {}, tracker.new(i)) for i, b in enumerate(bodies)], out)
    return out.take()


def span(m: Msg) -> tuple[Any, float, float, int, bool]:
    b = m.body
    start, end = parse_event_time(b["start"]) / 1e6, parse_event_time(b["end"]) / 1e6
    return b["key"], start, end, b["count"], b["update"]


# ----- sessions: the purge rule does not depend on other keys -----------------------------------


@pytest.mark.parametrize("fillers", [5, 1100])
def test_a_late_session_item_is_late_whatever_the_number_of_other_keys(fillers: int) -> None:
    """The issue's reproduction: gap 10 s, no bound, no lateness; x at +100, fillers at +105..+109,
    x at +115, +120, +125, then x at +108. Its session [+108, +118) is past the watermark (+125),
    and it would have merged with x's purged [+100, +110): late, for 5 filler keys as for 1,100."""
    op = make(kind="session", gap=10, key="msg.k")
    feed(op, [{"t": T + 100, "k": "x"}])
    feed(op, [{"t": T + 105 + i % 5, "k": f"f{i}"} for i in range(fillers)])
    feed(op, [{"t": T + 115, "k": "x"}, {"t": T + 120, "k": "x"}, {"t": T + 125, "k": "x"}])
    res = feed(op, [{"t": T + 108, "k": "x"}])
    assert [m.body["t"] for m in res["late"]] == [T + 108] and res["out"] == []
    res = feed(op, [{"t": T + 140, "k": "x"}])  # x's open session is still [+115, +135): it closes alone
    assert [span(m) for m in res["out"]] == [("x", T + 115, T + 135, 3, False)]


def test_session_purge_horizons_stay_bounded_by_gap_plus_lateness_of_event_time() -> None:
    """Horizons are forgotten once wm >= horizon + gap + lateness: 20,000 keys passing through
    leave at most the keys purged in that span (plus the amortised slack), not all of them."""
    op = make(kind="session", gap=1, allowed_lateness=2, key="msg.k")
    for step in range(20):
        feed(op, [{"t": T + step * 10, "k": f"s{step}-{i}"} for i in range(1000)])
    assert len(op.store._purged_until) <= 2 * 1000 + 1024
    # s0-7's own session is long past lateness; s18-7's purged [+180, +181) is behind +189
    res = feed(op, [{"t": T + 0.5, "k": "s0-7"}, {"t": T + 189, "k": "s18-7"}])
    assert [m.body["t"] for m in res["late"]] == [T + 0.5]


# ----- documented edge cases ---------------------------------------------------------------------


def test_a_late_item_for_a_window_that_never_existed_opens_it_and_emits_it_at_once() -> None:
    """[10, 20) never held an item; at wm 22 it is closed but within lateness (20 + 5 > 22): the
    item opens it and it goes out at the end of the batch as a first emission, not an update."""
    op = make(kind="tumbling", size=10, allowed_lateness=5)
    feed(op, [{"t": 1}, {"t": 22}])  # emits [0, 10); wm 22
    res = feed(op, [{"t": 12}])
    assert res["late"] == [] and [span(m) for m in res["out"]] == [(None, 10, 20, 1, False)]
    assert "replaces" not in res["out"][0].body
    res = feed(op, [{"t": 13}])  # a second late item updates it
    assert [span(m) for m in res["out"]] == [(None, 10, 20, 2, True)]
    res = feed(op, [{"t": 25}, {"t": 14}])  # wm 25 = 20 + 5: purged, now too late
    assert [m.body["t"] for m in res["late"]] == [14]


def test_a_session_item_whose_own_session_is_past_lateness_is_late_even_next_to_a_kept_session() -> None:
    """x's session [+18, +27) is closed and kept (lateness 10, wm +30); an item at +14 would merge
    into it (14 + 5 > 18), but its own session [+14, +19) is past lateness (19 + 10 <= 30): late,
    and the session is unchanged. At +16 its own session [+16, +21) is within lateness: merged."""
    op = make(kind="session", gap=5, allowed_lateness=10, key="msg.k")
    first = feed(op, [{"t": T + 18, "k": "x"}, {"t": T + 22, "k": "x"}, {"t": T + 30, "k": "y"}])["out"]
    assert [span(m) for m in first] == [("x", T + 18, T + 27, 2, False)]
    res = feed(op, [{"t": T + 14, "k": "x"}])
    assert [m.body["t"] for m in res["late"]] == [T + 14] and res["out"] == []
    res = feed(op, [{"t": T + 16, "k": "x"}])
    assert res["late"] == [] and [span(m) for m in res["out"]] == [("x", T + 16, T + 27, 3, True)]


def test_a_window_closed_and_updated_in_one_batch_is_emitted_twice_like_in_two_batches() -> None:
    """Closing follows item order, not batch edges: t=12 closes [0, 10) with one item, then the
    late t=3 updates it. One batch gives the same two emissions as item-by-item batches."""
    bodies = [{"t": 1}, {"t": 12}, {"t": 3}]
    whole = feed(make(kind="tumbling", size=10, allowed_lateness=5), bodies)["out"]
    op = make(kind="tumbling", size=10, allowed_lateness=5)
    apart = [m for b in bodies for m in feed(op, [b])["out"]]
    assert [span(m) for m in whole] == [(None, 0, 10, 1, False), (None, 0, 10, 2, True)]
    assert [span(m) for m in apart] == [span(m) for m in whole]
    assert whole[1].body["replaces"] == apart[1].body["replaces"]


@pytest.mark.parametrize(("size", "slide", "offset"), [(10, 4, 0), (10, 3, 1), (7, 2, 0.5)])
def test_sliding_windows_whose_size_is_not_a_multiple_of_the_slide(
    size: float, slide: float, offset: float
) -> None:
    """Windows start at offset + k * slide and last `size`; an item is in floor(size / slide) or
    ceil(size / slide) of them depending on where it falls. Checked against brute force."""
    op = make(kind="sliding", size=size, slide=slide, offset=offset)
    times = [T + i / 2 for i in range(60)]
    emitted = feed(op, [{"t": t} for t in times])["out"]
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    op.flush(out)
    got = {span(m)[1:4] for m in emitted + out.take()["out"]}
    starts = [offset + k * slide for k in range(int((T - size) / slide) - 2, int((T + 30) / slide) + 2)]
    counts = {(s, s + size): sum(1 for t in times if s <= t < s + size) for s in starts}
    assert got == {(s, e, n) for (s, e), n in counts.items() if n}
    per_item = {sum(1 for s in starts if s <= t < s + size) for t in times}
    assert per_item == {size // slide, -(-size // slide)}
