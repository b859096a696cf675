"""Property tests: the window operator against a brute-force reference computed here.

Streams are random (keys, event times on a 0.5 s grid so window edges are hit often, values with
nulls), delivered in random batches with random disorder. The operator's output is folded into a
"final view" (each update replaces the windows it names); that view must equal the reference.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.message import DELIVERED, AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig, parse_event_time

AGGREGATES = {
    "n": {"op": "count"},
    "nv": {"op": "count", "expr": "msg.v"},
    "sum": {"op": "sum", "expr": "msg.v"},
    "min": {"op": "min", "expr": "msg.v"},
    "max": {"op": "max", "expr": "msg.v"},
    "avg": {"op": "avg", "expr": "msg.v"},
    "first": {"op": "first", "expr": "msg.id"},
    "last": {"op": "last", "expr": "msg.id"},
    "ids": {"op": "collect", "expr": "msg.id", "limit": 3},
    "distinct": {"op": "count_distinct", "expr": "msg.v"},
}
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Key = tuple[Any, float, float]


# ----- reference -------------------------------------------------------------------------------


def ref_aggregates(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates of one window, from scratch; items ordered by (event time, arrival)."""
    items = sorted(items, key=lambda i: (i["t"], i["id"]))
    vs = [i["v"] for i in items if i["v"] is not None]
    return {
        "n": len(items),
        "nv": len(vs),
        "sum": sum(vs) if vs else None,
        "min": min(vs, default=None),
        "max": max(vs, default=None),
        "avg": sum(vs) / len(vs) if vs else None,
        "first": items[0]["id"],
        "last": items[-1]["id"],
        "ids": [i["id"] for i in items[:3]],
        "distinct": len(set(vs)),
    }


def ref_windows(
    cfg: dict[str, Any], arrivals: list[dict[str, Any]]
) -> tuple[dict[Key, dict[str, Any]], set[int]]:
    """Final windows and the ids of items that must reach `late`, by brute force.

    Tumbling/sliding: the watermark is simulated item by item; an item misses a window whose
    end + lateness <= watermark. Sessions: the too-late ids are taken as given (`late` below)."""
    size, offset = cfg.get("size"), cfg.get("offset", 0)
    slide = cfg.get("slide", size)
    ooo, lateness = cfg.get("max_out_of_orderness", 0), cfg.get("allowed_lateness", 0)
    members: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    late: set[int] = set()
    if cfg["kind"] == "session":
        raise AssertionError("use ref_sessions")
    wm = -math.inf
    for item in arrivals:
        t = item["t"]
        for k in range(math.floor((t - size - offset) / slide) - 2, math.floor((t - offset) / slide) + 3):
            start = offset + k * slide
            if start <= t < start + size:
                if start + size + lateness <= wm:
                    late.add(item["id"])
                else:
                    members[(item.get("k"), start, start + size)].append(item)
        wm = max(wm, t - ooo)
    return {key: ref_aggregates(items) for key, items in members.items()}, late


def ref_sessions(gap: float, items: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    by_key: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_key[item.get("k")].append(item)
    out: dict[Key, dict[str, Any]] = {}
    for key, group in by_key.items():
        group.sort(key=lambda i: (i["t"], i["id"]))
        runs = [[group[0]]]
        for item in group[1:]:
            if item["t"] - runs[-1][-1]["t"] < gap:
                runs[-1].append(item)
            else:
                runs.append([item])
        for run in runs:
            out[(key, run[0]["t"], run[-1]["t"] + gap)] = ref_aggregates(run)
    return out


# ----- running the operator ---------------------------------------------------------------


def run(cfg: dict[str, Any], batches: list[list[dict[str, Any]]]) -> tuple[list[Msg], list[Msg], AckTracker]:
    """Feed the batches then flush; return (window outputs, late items, tracker)."""
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 0.0)
    op = Window("win", WindowConfig(**cfg, aggregates=AGGREGATES), ctx)
    tracker = AckTracker()
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    emitted: list[Msg] = []
    late: list[Msg] = []
    closed_before_flush.clear()
    for batch in batches:
        op.process([Msg(b, {}, tracker.new(b["id"])) for b in batch], out)
        lists = out.take()
        assert lists["errors"] == []
        emitted += lists["out"]
        late += lists["late"]
    # before end of input, exactly the windows the watermark has passed are out, and they are final
    times = [b["t"] for batch in batches for b in batch]
    if times and cfg.get("time") == "event":
        closed_before_flush.append((final_view(emitted), max(times) - cfg.get("max_out_of_orderness", 0)))
    op.flush(out)
    emitted += out.take()["out"]
    return emitted, late, tracker


closed_before_flush: list[tuple[dict[Key, dict[str, Any]], float]] = []


def check_closed_before_flush(expected: dict[Key, dict[str, Any]]) -> None:
    """The last `run` emitted, before its flush, every expected window ending at or before the watermark.

    (Not only those: a closed session that a late item later merged past the watermark is out too.)"""
    if not closed_before_flush:
        return
    view, wm = closed_before_flush.pop()
    assert all(end <= wm for _, _, end in view), f"window emitted before the watermark {wm} reached its end"
    closed = {k: v for k, v in expected.items() if k[2] <= wm}
    assert {k: view.get(k) for k in closed} == closed


def final_view(emitted: list[Msg]) -> dict[Key, dict[str, Any]]:
    """Apply emissions in order: an update replaces the windows it names."""
    view: dict[Key, dict[str, Any]] = {}
    for m in emitted:
        body = m.body
        for old in body.get("replaces", []):
            del view[(body["key"], parse_event_time(old["start"]) / 1e6, parse_event_time(old["end"]) / 1e6)]
        key = (body["key"], parse_event_time(body["start"]) / 1e6, parse_event_time(body["end"]) / 1e6)
        assert key not in view, f"window {key} emitted twice without being an update"
        assert body["count"] == body["aggregates"]["n"]
        view[key] = body["aggregates"]
    return view


def check_acks(emitted: list[Msg], late: list[Msg], tracker: AckTracker, n: int) -> None:
    """No item settles before its windows are committed; then every item settles exactly once."""
    assert tracker.take() == ([], []) and tracker.in_flight == n
    for m in emitted + late:
        m.ack.finish(DELIVERED)
    done, failed = tracker.take()
    assert sorted(done) == list(range(n)) and failed == [] and tracker.in_flight == 0


# ----- strategies ---------------------------------------------------------------------------


@st.composite
def window_configs(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"kind": kind, "time": "event", "timestamp": "msg.t"}
    if kind == "session":
        cfg["gap"] = draw(st.sampled_from([1, 3, 7.5]))
    else:
        cfg["size"] = draw(st.sampled_from([2, 5, 10]))
        cfg["offset"] = draw(st.sampled_from([0, 1.5]))
        if kind == "sliding":
            cfg["slide"] = draw(st.sampled_from([s for s in (0.5, 1, 2, 2.5, 5, 10) if s <= cfg["size"]]))
    cfg["max_out_of_orderness"] = draw(st.sampled_from([0, 3]))
    cfg["allowed_lateness"] = draw(st.sampled_from([0, 4]))
    if draw(st.booleans()):
        cfg["key"] = "msg.k"
    return cfg


@st.composite
def streams(draw: st.DrawFn, disorder: float) -> list[list[dict[str, Any]]]:
    """Items in arrival order, split into batches; each arrives at most `disorder` s after a later one."""
    n = draw(st.integers(0, 40))
    items = [
        {
            "id": i,
            "k": draw(st.sampled_from("abc")),
            "t": draw(st.integers(0, 120)) / 2,
            "v": draw(st.one_of(st.none(), st.integers(-5, 5))),
        }
        for i in range(n)
    ]
    jitter = [draw(st.integers(0, int(disorder * 2))) / 2 for _ in range(n)]
    order = sorted(range(n), key=lambda i: (items[i]["t"] + jitter[i], i))
    arrivals = [items[i] for i in order]
    for seq, item in enumerate(arrivals):  # ids follow arrival, as the operator's tie-breaker does
        item["id"] = seq
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    bounds = [0, *cuts, n]
    return [arrivals[a:b] for a, b in itertools.pairwise(bounds)]


def flat(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [item for batch in batches for item in batch]


def unkeyed(cfg: dict[str, Any], items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items if "key" in cfg else [{**i, "k": None} for i in items]


# ----- properties ---------------------------------------------------------------------------


@PROPS
@given(st.sampled_from(["tumbling", "sliding"]).flatmap(window_configs), st.data())
def test_tumbling_and_sliding_equal_the_reference_for_disorder_within_lateness(
    cfg: dict[str, Any], data: st.DataObject
) -> None:
    bound = cfg["max_out_of_orderness"] + cfg["allowed_lateness"]
    batches = data.draw(streams(bound))
    emitted, late, tracker = run(cfg, batches)
    items = unkeyed(cfg, flat(batches))
    expected, expected_late = ref_windows(cfg, items)
    assert expected_late == set() and late == []
    assert final_view(emitted) == expected
    check_closed_before_flush(expected)
    if cfg["allowed_lateness"] == 0:
        assert not any(m.body["update"] for m in emitted)  # disorder within the bound: no updates
    check_acks(emitted, late, tracker, len(items))


@PROPS
@given(st.sampled_from(["tumbling", "sliding"]).flatmap(window_configs), st.data())
def test_too_late_items_reach_the_late_port_and_the_rest_still_matches(
    cfg: dict[str, Any], data: st.DataObject
) -> None:
    batches = data.draw(streams(disorder=20))
    emitted, late, tracker = run(cfg, batches)
    items = unkeyed(cfg, flat(batches))
    expected, expected_late = ref_windows(cfg, items)
    assert sorted(m.body["id"] for m in late) == sorted(expected_late)
    assert all(m.meta["window_late"] for m in late)
    assert final_view(emitted) == expected
    check_closed_before_flush(expected)
    check_acks(emitted, late, tracker, len(items))


@PROPS
@given(window_configs("session"), st.data())
def test_sessions_equal_the_reference_for_disorder_within_lateness(
    cfg: dict[str, Any], data: st.DataObject
) -> None:
    bound = cfg["max_out_of_orderness"] + cfg["allowed_lateness"]
    batches = data.draw(streams(bound))
    emitted, late, tracker = run(cfg, batches)
    items = unkeyed(cfg, flat(batches))
    assert late == []
    expected = ref_sessions(cfg["gap"], items) if items else {}
    assert final_view(emitted) == expected
    check_closed_before_flush(expected)
    check_acks(emitted, late, tracker, len(items))


@PROPS
@given(window_configs("session"), st.data())
def test_sessions_with_too_late_items_equal_the_reference_over_the_accepted_items(
    cfg: dict[str, Any], data: st.DataObject
) -> None:
    batches = data.draw(streams(disorder=20))
    emitted, late, tracker = run(cfg, batches)
    items = unkeyed(cfg, flat(batches))
    late_ids = {m.body["id"] for m in late}
    accepted = [i for i in items if i["id"] not in late_ids]
    expected = ref_sessions(cfg["gap"], accepted) if accepted else {}
    assert final_view(emitted) == expected
    check_closed_before_flush(expected)
    if cfg["max_out_of_orderness"] + cfg["allowed_lateness"] >= 20:
        assert late_ids == set()
    check_acks(emitted, late, tracker, len(items))


@PROPS
@given(window_configs("session"), st.data())
def test_sessions_are_the_same_for_any_arrival_order_within_lateness(
    cfg: dict[str, Any], data: st.DataObject
) -> None:
    bound = cfg["max_out_of_orderness"] + cfg["allowed_lateness"]
    first = flat(data.draw(streams(bound)))
    # the same items in another order within the bound, in other batches
    jitter = [data.draw(st.integers(0, int(bound * 2))) / 2 for _ in first]
    order = sorted(range(len(first)), key=lambda i: (first[i]["t"] + jitter[i], -i))
    second = [dict(first[i]) for i in order]
    views = []
    for arrivals in (first, second):
        for seq, item in enumerate(arrivals):
            item["id"] = seq  # arrival numbers differ between the two orders
        emitted, late, _ = run(cfg, [arrivals[: len(arrivals) // 2], arrivals[len(arrivals) // 2 :]])
        assert late == []
        views.append(
            {k: (a["n"], a["sum"], a["min"], a["max"], a["distinct"]) for k, a in final_view(emitted).items()}
        )
    assert views[0] == views[1]


@PROPS
@given(st.sampled_from(["tumbling", "sliding", "session"]), st.data())
def test_processing_time_windows_equal_the_reference_by_arrival_clock(kind: str, data: st.DataObject) -> None:
    cfg: dict[str, Any] = {"kind": kind, "key": "msg.k"}
    if kind == "session":
        cfg["gap"] = data.draw(st.sampled_from([1, 3]))
    else:
        cfg["size"] = data.draw(st.sampled_from([2, 5]))
        if kind == "sliding":
            cfg["slide"] = data.draw(st.sampled_from([1, 2]))
    clock = [1000.0]
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: clock[0])
    op = Window("win", WindowConfig(**cfg, aggregates=AGGREGATES), ctx)
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    emitted: list[Msg] = []
    items: list[dict[str, Any]] = []
    for _ in range(data.draw(st.integers(0, 25))):
        clock[0] += data.draw(st.integers(0, 6)) / 2
        if data.draw(st.booleans()):
            op.tick(clock[0], out)
        else:
            batch = [
                {
                    "id": len(items) + j,
                    "k": data.draw(st.sampled_from("ab")),
                    "v": data.draw(st.integers(0, 3)),
                    "t": clock[0],
                }
                for j in range(data.draw(st.integers(1, 3)))
            ]
            items += batch
            op.process([Msg(b) for b in batch], out)
        emitted += out.take()["out"]
        # nothing is emitted before its window has ended on the clock
        assert all(parse_event_time(m.body["end"]) <= clock[0] * 1e6 for m in emitted)
    op.flush(out)
    emitted += out.take()["out"]
    assert not any(m.body["update"] for m in emitted)
    if kind == "session":
        expected = ref_sessions(cfg["gap"], items) if items else {}
    else:
        expected = ref_windows({**cfg, "offset": 0}, items)[0]
    assert final_view(emitted) == expected
