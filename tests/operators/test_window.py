"""The `window` operator driven directly: boundaries, lateness, idleness, acks, errors, config."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from typing import Any

import pytest
from pydantic import ValidationError

from engine.message import DELIVERED, AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from engine.spec.units import parse_duration
from operators.window import Window, WindowConfig, format_time, parse_event_time


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **config: Any) -> Window:
    ctx = NodeContext("win", {}, {}, Resources(), clock=clock or Clock())
    return Window("win", WindowConfig(**config), ctx)


def new_out() -> Outputs:
    return Outputs("win", Window.ports, NodeStats("win", "operator", "window"))


def event(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "tumbling",
        "size": 10,
        "time": "event",
        "timestamp": "msg.t",
        "aggregates": {"n": {"op": "count"}},
    }
    base.update(extra)
    return base


def feed(op: Window, bodies: list[dict[str, Any]], tracker: AckTracker | None = None) -> dict[str, list[Msg]]:
    out = new_out()
    # tokens number the items across calls: 0, 1, 2...
    msgs = [Msg(b, {}, tracker.new(tracker.entered) if tracker else None) for b in bodies]
    op.process(msgs, out)
    return out.take()


def spans(msgs: list[Msg]) -> list[tuple[Any, float, float, int]]:
    return [
        (
            m.body["key"],
            parse_event_time(m.body["start"]) / 1e6,
            parse_event_time(m.body["end"]) / 1e6,
            m.body["count"],
        )
        for m in msgs
    ]


# ----- assignment and boundaries ---------------------------------------------------------------


def test_item_exactly_at_window_end_belongs_to_the_next_window() -> None:
    op = make(**event())
    res = feed(op, [{"t": 0}, {"t": 9.999999}, {"t": 10}, {"t": 20}])
    # t=10 moves the watermark to 10: [0,10) closes with 2 items; 10 starts [10,20)
    assert spans(res["out"])[:1] == [(None, 0, 10, 2)]
    assert spans(res["out"]) == [(None, 0, 10, 2), (None, 10, 20, 1)]
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [(None, 20, 30, 1)]


def test_window_does_not_close_before_the_watermark_reaches_its_end() -> None:
    op = make(**event(max_out_of_orderness=2))
    assert feed(op, [{"t": 1}, {"t": 11.5}])["out"] == []  # watermark 9.5 < 10
    assert spans(feed(op, [{"t": 12}])["out"]) == [(None, 0, 10, 1)]  # watermark 10 == end


def test_offset_aligns_window_starts() -> None:
    op = make(**event(offset=3))
    assert spans(feed(op, [{"t": 2}, {"t": 3}, {"t": 12.9}])["out"]) == [(None, -7, 3, 1)]
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [(None, 3, 13, 2)]


def test_sliding_item_belongs_to_size_over_slide_windows_edges_included_once() -> None:
    op = make(**event(kind="sliding", size=10, slide=5))
    closed = feed(op, [{"t": 5}, {"t": 10}])["out"]  # watermark 10 closes [0,10)
    out = new_out()
    op.flush(out)
    # t=5 is in [0,10) and [5,15); t=10 in [5,15) and [10,20); never in [-5,5) or [0,10)
    assert spans(closed + out.take()["out"]) == [(None, 0, 10, 1), (None, 5, 15, 2), (None, 10, 20, 1)]


def test_empty_windows_produce_nothing() -> None:
    op = make(**event(key="msg.k"))
    res = feed(op, [{"t": 1, "k": "a"}, {"t": 95, "k": "a"}, {"t": 200, "k": "b"}])
    assert spans(res["out"]) == [("a", 0, 10, 1), ("a", 90, 100, 1)]


def test_session_gap_is_strict_and_a_bridging_item_merges_two_sessions() -> None:
    op = make(**event(kind="session", size=None, gap=10, key="msg.k", max_out_of_orderness=100))
    feed(op, [{"t": 0, "k": "a"}, {"t": 10, "k": "a"}, {"t": 28, "k": "a"}])  # 0 and 10: exactly gap apart
    feed(op, [{"t": 19, "k": "a"}])  # 19 is within 10 of 10 and of 28: bridges the two later sessions
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [("a", 0, 10, 1), ("a", 10, 38, 3)]


# ----- time: processing, idleness, flush ----------------------------------------------------


def test_processing_time_windows_follow_the_injected_clock() -> None:
    clock = Clock(100.0)
    op = make(clock, kind="tumbling", size=10, key="msg.k", aggregates={"n": {"op": "count"}})
    assert op.tick_interval == 0.5
    feed(op, [{"k": "a"}, {"k": "b"}])
    clock.now = 105.0
    feed(op, [{"k": "a"}])
    out = new_out()
    op.tick(109.999, out)
    assert out.take()["out"] == []
    op.tick(110.0, out)
    assert sorted(spans(out.take()["out"])) == [("a", 100, 110, 2), ("b", 100, 110, 1)]


def test_idle_stream_closes_windows_by_idle_timeout() -> None:
    clock = Clock(5000.0)
    op = make(clock, **event(idle_timeout=30, max_out_of_orderness=5))
    feed(op, [{"t": 1}, {"t": 4}])  # watermark -1: nothing closes, nothing more arrives
    out = new_out()
    op.tick(5029.0, out)  # idle 29 s < 30 s
    assert out.take()["out"] == []
    op.tick(5030.0, out)  # idle: event time moves with the wall clock, watermark 4 + 30 - 5 = 29
    assert spans(out.take()["out"]) == [(None, 0, 10, 2)]
    assert op.store.open_windows == 0


def test_event_time_without_idle_timeout_has_no_timer() -> None:
    assert make(**event()).tick_interval is None


def test_flush_emits_every_open_window() -> None:
    op = make(**event(kind="session", size=None, gap=5, key="msg.k"))
    feed(op, [{"t": 1, "k": "a"}, {"t": 2, "k": "b"}, {"t": 3, "k": "a"}])
    out = new_out()
    op.flush(out)
    assert sorted(spans(out.take()["out"])) == [("a", 1, 8, 2), ("b", 2, 7, 1)]
    op.flush(out)
    assert out.take()["out"] == []


# ----- lateness ---------------------------------------------------------------------------


def test_late_item_within_lateness_reemits_the_window_as_an_update() -> None:
    tracker = AckTracker()
    op = make(**event(allowed_lateness=20, aggregates={"s": {"op": "sum", "expr": "msg.v"}}))
    first = feed(op, [{"t": 1, "v": 1}, {"t": 2, "v": 2}, {"t": 15, "v": 0}], tracker)["out"]
    assert [m.body["aggregates"] for m in first] == [{"s": 3}] and first[0].body["update"] is False
    res = feed(op, [{"t": 3, "v": 4}, {"t": 4, "v": 8}], tracker)
    (update,) = res["out"]
    assert res["late"] == []
    assert update.body["update"] is True and update.body["aggregates"] == {"s": 15}
    assert update.body["replaces"] == [{"start": format_time(0), "end": format_time(10_000_000)}]
    assert update.body["count"] == 4
    # the update's ack carries only the two late items: the first two settle with the first emission
    update.ack.finish(DELIVERED)
    assert sorted(tracker.take()[0]) == [3, 4]
    first[0].ack.finish(DELIVERED)
    assert sorted(tracker.take()[0]) == [0, 1]
    assert tracker.in_flight == 1  # t=15 is still in the open window [10,20)


def test_too_late_item_goes_to_the_late_port_with_its_ack() -> None:
    tracker = AckTracker()
    op = make(**event(allowed_lateness=5))
    feed(op, [{"t": 1}, {"t": 16}], tracker)  # watermark 16: [0,10) closed, kept until 15
    res = feed(op, [{"t": 9}], tracker)
    assert res["out"] == []
    (late,) = res["late"]
    assert late.body == {"t": 9} and late.meta["window_late"] is True
    assert late.meta["window_watermark"] == format_time(16_000_000)
    late.ack.finish(DELIVERED)
    assert tracker.take()[0] == [2]


def test_sliding_item_too_late_for_its_oldest_window_is_counted_in_the_newer_and_sent_to_late() -> None:
    tracker = AckTracker()
    op = make(**event(kind="sliding", size=10, slide=5))
    feed(op, [{"t": 0}, {"t": 11}], tracker)  # watermark 11: [0,10) closed and purged
    res = feed(op, [{"t": 9}], tracker)  # 9 is in [0,10) (gone) and [5,15) (open)
    assert len(res["late"]) == 1
    res["late"][0].ack.finish(DELIVERED)
    assert tracker.take()[0] == []  # still held by [5,15)
    out = new_out()
    op.flush(out)
    emitted = out.take()["out"]
    assert spans(emitted) == [(None, 5, 15, 2), (None, 10, 20, 1)]
    for m in emitted:
        m.ack.finish(DELIVERED)
    assert sorted(tracker.take()[0]) == [1, 2]


def test_late_item_bridging_two_emitted_sessions_replaces_both() -> None:
    op = make(**event(kind="session", size=None, gap=10, allowed_lateness=100))
    first = feed(op, [{"t": 0}, {"t": 18}, {"t": 100}])["out"]
    assert spans(first) == [(None, 0, 10, 1), (None, 18, 28, 1)]
    (update,) = feed(op, [{"t": 9}])["out"]
    assert spans([update]) == [(None, 0, 28, 3)]
    assert update.body["replaces"] == [
        {"start": format_time(0), "end": format_time(10_000_000)},
        {"start": format_time(18_000_000), "end": format_time(28_000_000)},
    ]


def test_session_item_before_a_purged_session_end_is_too_late() -> None:
    op = make(**event(kind="session", size=None, gap=10, key="msg.k"))
    feed(op, [{"t": 0, "k": "a"}, {"t": 5, "k": "a"}, {"t": 40, "k": "a"}])  # [0,15) emitted and purged
    res = feed(op, [{"t": 14, "k": "a"}])  # would have joined [0,15): cannot be honoured any more
    assert len(res["late"]) == 1 and res["out"] == []
    res = feed(op, [{"t": 35, "k": "a"}])  # joins the open session [40,50)
    assert res["late"] == []


def test_window_state_is_purged_when_the_watermark_reaches_end_plus_lateness() -> None:
    """[0,10) with lateness 5 is kept while the watermark is below 15, and forgotten at 15 exactly."""
    op = make(**event(allowed_lateness=5))
    assert spans(feed(op, [{"t": 1}, {"t": 12}])["out"]) == [(None, 0, 10, 1)]
    assert op.store.open_windows == 2  # [0,10) fired and kept for late items, [10,20) open
    feed(op, [{"t": 14}])
    assert op.store.open_windows == 2 and feed(op, [{"t": 2}])["late"] == []  # 14 < 15: still kept
    feed(op, [{"t": 15}])
    assert op.store.open_windows == 1  # watermark 15 = end + lateness: [0,10) is gone
    assert len(feed(op, [{"t": 3}])["late"]) == 1


def test_pending_update_is_emitted_before_its_window_is_purged() -> None:
    op = make(**event(allowed_lateness=5))
    feed(op, [{"t": 1}, {"t": 12}])
    res = feed(op, [{"t": 2}, {"t": 100}])  # late item, then a jump that purges [0,10) in the same batch
    assert sorted((m.body["start"], m.body["count"], m.body["update"]) for m in res["out"]) == [
        (format_time(0), 2, True),
        (format_time(10_000_000), 1, False),
    ]


# ----- acks -------------------------------------------------------------------------------


def test_acks_resolve_only_after_the_window_output_is_committed() -> None:
    tracker = AckTracker()
    op = make(**event(key="msg.k"))
    feed(op, [{"t": 1, "k": "a"}, {"t": 2, "k": "b"}, {"t": 3, "k": "a"}], tracker)
    assert tracker.take() == ([], []) and tracker.in_flight == 3
    (wa, wb) = feed(op, [{"t": 30, "k": "c"}], tracker)["out"]
    assert tracker.take() == ([], [])  # emitted but not committed yet
    wa.ack.finish(DELIVERED)
    assert sorted(tracker.take()[0]) == [0, 2]
    wb.ack.fail("sink gave up")
    assert tracker.take() == ([], [(1, "sink gave up")])
    assert tracker.delivered == 2 and tracker.in_flight == 1


def test_sliding_ack_is_held_by_every_window_of_the_item() -> None:
    tracker = AckTracker()
    op = make(**event(kind="sliding", size=10, slide=5))
    feed(op, [{"t": 7}], tracker)
    out = new_out()
    op.flush(out)
    first, second = out.take()["out"]
    first.ack.finish(DELIVERED)
    assert tracker.take()[0] == []
    second.ack.finish(DELIVERED)
    assert tracker.take()[0] == [0]


# ----- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"k": "a"}, "(no such key|key not found).*t"),  # no timestamp
        ({"t": "yesterday", "k": "a"}, "not an RFC 3339 timestamp"),
        ({"t": "2024-01-01T00:00:00", "k": "a"}, "no UTC offset"),
        ({"t": True, "k": "a"}, "bool"),
        ({"t": 1, "k": {"x": 1}}, "window key must be"),
        ({"t": 1, "k": "a", "v": "ten"}, "needs a number"),
        ({"t": 1}, "(no such key|key not found).*k"),  # no key
    ],
)
def test_bad_items_go_to_errors_and_change_nothing(body: dict[str, Any], reason: str) -> None:
    op = make(**event(key="msg.k", aggregates={"s": {"op": "sum", "expr": "msg.v"}}))
    feed(op, [{"t": 1, "k": "a", "v": 1}])
    res = feed(op, [body])
    (err,) = res["errors"]
    assert re.search(reason, err.body["error"], re.IGNORECASE) and err.body["payload"] == body
    out = new_out()
    op.flush(out)
    assert [m.body["aggregates"] for m in out.take()["out"]] == [{"s": 1}]


def test_min_over_mixed_types_rejects_the_item_without_touching_the_window() -> None:
    op = make(**event(kind="sliding", size=10, slide=5, aggregates={"lo": {"op": "min", "expr": "msg.v"}}))
    res = feed(op, [{"t": 7, "v": 3}, {"t": 8, "v": "x"}, {"t": 9, "v": 1}])
    assert len(res["errors"]) == 1 and "cannot compare" in res["errors"][0].body["error"]
    out = new_out()
    op.flush(out)
    assert [(m.body["count"], m.body["aggregates"]) for m in out.take()["out"]] == [(2, {"lo": 1})] * 2


# ----- aggregates and time formats ----------------------------------------------------------


def test_every_aggregate_over_one_window() -> None:
    aggs = {
        "n": {"op": "count"},
        "nv": {"op": "count", "expr": "msg.v"},
        "s": {"op": "sum", "expr": "msg.v"},
        "lo": {"op": "min", "expr": "msg.v"},
        "hi": {"op": "max", "expr": "msg.v"},
        "avg": {"op": "avg", "expr": "msg.v"},
        "first": {"op": "first", "expr": "msg.id"},
        "last": {"op": "last", "expr": "msg.id"},
        "ids": {"op": "collect", "expr": "msg.id", "limit": 2},
        "tags": {"op": "count_distinct", "expr": "msg.tag"},
        "when": {"op": "max", "expr": "timestamp(msg.ts)"},
    }
    op = make(**event(timestamp="msg.ts", max_out_of_orderness=60, aggregates=aggs))
    feed(
        op,
        [
            {"id": "c", "ts": "2024-05-01T10:00:03Z", "v": 5, "tag": {"a": 1, "b": 2}},
            {"id": "a", "ts": "2024-05-01T12:00:01+02:00", "v": None, "tag": {"b": 2, "a": 1}},
            {"id": "b", "ts": "2024-05-01T10:00:02.5Z", "v": -1.5, "tag": "x"},
        ],
    )
    out = new_out()
    op.flush(out)
    (w,) = out.take()["out"]
    assert w.body["start"] == "2024-05-01T10:00:00Z" and w.body["end"] == "2024-05-01T10:00:10Z"
    assert w.body["count"] == 3
    assert w.body["aggregates"] == {
        "n": 3,
        "nv": 2,
        "s": 3.5,
        "lo": -1.5,
        "hi": 5,
        "avg": 1.75,
        "first": "a",
        "last": "c",
        "ids": ["a", "b"],
        "tags": 2,
        "when": "2024-05-01T10:00:03Z",
    }


def test_epoch_units_and_rfc3339_offsets() -> None:
    assert parse_event_time(1.5) == 1_500_000
    assert parse_event_time(1500, "ms") == 1_500_000
    assert parse_event_time(1_500_000_000, "ns") == 1_500_000
    assert parse_event_time("1970-01-01T01:00:01.5+01:00") == 1_500_000
    assert parse_event_time("1970-01-01t00:00:01z") == 1_000_000
    assert format_time(1_500_000) == "1970-01-01T00:00:01.500000Z"
    with pytest.raises(ValueError, match="finite"):
        parse_event_time(float("nan"))


# ----- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "tumbling"}, "needs 'size'"),
        ({"kind": "sliding", "size": 10}, "needs 'slide'"),
        ({"kind": "sliding", "size": 5, "slide": 10}, "must not exceed"),
        ({"kind": "tumbling", "size": 5, "slide": 1}, "sliding windows only"),
        ({"kind": "session"}, "needs 'gap'"),
        ({"kind": "session", "gap": 5, "size": 5}, "do not apply"),
        ({"kind": "tumbling", "size": 5, "gap": 5}, "session windows only"),
        ({"kind": "tumbling", "size": 0}, "greater than 0"),
        ({"kind": "tumbling", "size": "ten"}, "invalid duration"),
        ({"kind": "tumbling", "size": 5, "time": "event"}, "needs a 'timestamp'"),
        ({"kind": "tumbling", "size": 5, "allowed_lateness": 5}, "only for time: event"),
        ({"kind": "tumbling", "size": 5, "aggregates": {"s": {"op": "sum"}}}, "needs an 'expr'"),
        (
            {"kind": "tumbling", "size": 5, "aggregates": {"s": {"op": "sum", "expr": "1", "limit": 3}}},
            "collect' only",
        ),
        ({"kind": "tumbling", "size": 5, "bogus": 1}, "Extra inputs"),
    ],
)
def test_config_rules(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WindowConfig(**config)


def test_durations() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86400
    assert WindowConfig(kind="tumbling", size="2m").size == 120


def test_window_is_registered_as_a_node_type() -> None:
    (ep,) = [e for e in entry_points(group="streamdag.nodes") if e.name == "window"]
    assert ep.load() is Window
    assert Window.output_ports(WindowConfig(kind="tumbling", size=1)) == ("out", "late")


def test_idle_session_closes_when_the_wall_clock_passes_its_gap() -> None:
    clock = Clock(100.0)
    op = make(clock, **event(kind="session", size=None, gap=60, idle_timeout=10))
    feed(op, [{"t": 1_000}, {"t": 1_030}])  # session [1000, 1090)
    out = new_out()
    op.tick(150.0, out)  # idle 50 s: watermark 1080 < 1090, the session may still grow
    assert out.take()["out"] == []
    op.tick(160.0, out)  # idle 60 s: watermark 1090
    assert spans(out.take()["out"]) == [(None, 1_000, 1_090, 2)]


def test_processing_clock_going_backwards_never_makes_items_late() -> None:
    clock = Clock(100.0)
    op = make(clock, kind="tumbling", size=10, aggregates={"n": {"op": "count"}})
    feed(op, [{}])
    clock.now = 111.0
    assert spans(feed(op, [{}])["out"]) == [(None, 100, 110, 1)]
    clock.now = 95.0  # wall clock stepped back: items still count from the latest time seen
    res = feed(op, [{}])
    assert res["late"] == [] and res["out"] == []
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [(None, 110, 120, 2)]


def test_every_cel_expression_of_the_config_is_found_for_offline_checks() -> None:
    from engine.api import cel_fields

    config = WindowConfig(
        kind="session",
        gap=5,
        key="msg.user",
        time="event",
        timestamp="msg.ts",
        aggregates={"n": {"op": "count"}, "total": {"op": "sum", "expr": "msg.amount"}},
    )
    assert sorted(cel_fields(config)) == [
        (("aggregates", "total", "expr"), "msg.amount"),
        (("key",), "msg.user"),
        (("timestamp",), "msg.ts"),
    ]


def test_event_time_without_idle_timeout_is_warned_offline_when_it_holds_acks() -> None:
    from engine.api import CheckContext, Upstream
    from operators.connectors.jetstream.source import JetStreamSource
    from operators.generate import Generate

    durable = CheckContext(upstream=(Upstream("js", JetStreamSource, None),))
    (issue,) = Window.check_upstream(WindowConfig(**event()), durable)
    assert issue.code == "W320" and issue.severity == "warning" and issue.loc == ("time",)
    assert list(Window.check_upstream(WindowConfig(**event(idle_timeout=5)), durable)) == []
    assert list(Window.check_upstream(WindowConfig(kind="tumbling", size=5), durable)) == []
    # behind generate (no durable positions) the default is acks: release: nothing is held
    generated = CheckContext(upstream=(Upstream("gen", Generate, None),))
    assert list(Window.check_upstream(WindowConfig(**event()), generated)) == []
    assert [i.code for i in Window.check_upstream(WindowConfig(**event(acks="hold")), generated)] == ["W320"]


def test_output_with_an_integer_beyond_64_bits_still_goes_out() -> None:
    op = make(**event(aggregates={"s": {"op": "sum", "expr": "msg.v"}}))
    feed(op, [{"t": 1, "v": 2**62}, {"t": 2, "v": 2**62}])
    out = new_out()
    op.flush(out)
    (w,) = out.take()["out"]
    assert w.body["aggregates"] == {"s": 2**63} and w.size > 0


def test_session_extended_past_the_watermark_by_late_items_waits_for_it() -> None:
    op = make(**event(kind="session", size=None, gap=10, allowed_lateness=100))
    assert spans(feed(op, [{"t": 0}, {"t": 12}])["out"]) == [(None, 0, 10, 1)]  # watermark 12
    # t=1 updates the closed [0,11); t=8 then bridges it with [12,22): [0,22) is open again
    assert feed(op, [{"t": 1}, {"t": 8}])["out"] == []
    (update,) = feed(op, [{"t": 22}])["out"]  # watermark 22 closes [0,22)
    assert spans([update]) == [(None, 0, 22, 4)]
    assert update.body["replaces"] == [{"start": format_time(0), "end": format_time(10_000_000)}]


def test_session_purge_horizons_are_forgotten_without_losing_too_late_detection() -> None:
    op = make(**event(kind="session", size=None, gap=5, key="msg.k"))
    feed(op, [{"t": 0, "k": f"k{i}"} for i in range(3000)])
    feed(op, [{"t": 100, "k": "other"}, {"t": 200, "k": "other"}])  # purges 3000 sessions, then prunes
    assert len(op.store._purged_until) < 3000
    res = feed(op, [{"t": 3, "k": "k7"}, {"t": 198, "k": "k7"}])
    assert [m.body["t"] for m in res["late"]] == [3] and res["errors"] == []


def test_an_unexpected_exception_from_an_expression_is_that_items_error() -> None:
    op = make(**event(aggregates={"n": {"op": "count"}}))

    def broken(body: Any, meta: Any) -> Any:
        if body.get("boom"):
            raise RuntimeError("duplicate map key")
        return body["t"]

    op._time.fn = broken  # type: ignore[union-attr]  # stands in for a runtime that raises
    res = feed(op, [{"t": 1}, {"t": 2, "boom": True}, {"t": 3}])
    assert [e.body["error"] for e in res["errors"]] == ["window: RuntimeError: duplicate map key"]
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [(None, 0, 10, 2)]


@pytest.mark.parametrize("on_drain", ["flush", "redeliver"])
def test_a_stop_flushes_or_fails_open_windows_for_redelivery(on_drain: str) -> None:
    tracker = AckTracker()
    op = make(**event(kind="sliding", size=10, slide=5, on_drain=on_drain))
    closed = feed(op, [{"t": 1}, {"t": 7}, {"t": 11}], tracker)["out"]  # watermark 11
    assert spans(closed) == [(None, -5, 5, 1), (None, 0, 10, 2)]
    for m in closed:
        m.ack.finish(DELIVERED)
    assert tracker.take()[0] == [0]  # t=1 is done; t=7 and t=11 are still held by open windows
    op.ctx.draining = True  # what the scheduler sets on SIGTERM
    out = new_out()
    op.flush(out)
    emitted = out.take()["out"]
    if on_drain == "flush":
        assert spans(emitted) == [(None, 5, 15, 2), (None, 10, 20, 1)]
        for m in emitted:
            m.ack.finish(DELIVERED)
        assert sorted(tracker.take()[0]) == [1, 2]
    else:
        assert emitted == [] and op.store.open_windows == 0
        done, failed = tracker.take()
        assert done == [] and sorted(t for t, _ in failed) == [1, 2]
        assert "on_drain: redeliver" in failed[0][1] and tracker.in_flight == 0


def test_end_of_input_flushes_even_with_on_drain_redeliver() -> None:
    op = make(**event(on_drain="redeliver"))
    feed(op, [{"t": 1}])
    out = new_out()
    op.flush(out)
    assert spans(out.take()["out"]) == [(None, 0, 10, 1)]
