"""The window core (`operators/windowing.py`) on its own, without the operator: per-key state,
assignment of items to windows, firing and purging by watermark, late items, sessions, flush,
discard and the `Watermark`. Times are integer microseconds; acks are counting stand-ins."""

from __future__ import annotations

from typing import Any

from operators.window_aggregates import make_aggregate
from operators.windowing import NEG_INF, Emission, Watermark, WindowStore


class Ack:
    """Counts the references a window store takes on an item's ack."""

    def __init__(self, name: str):
        self.name = name
        self.retained = 0

    def retain(self, n: int = 1) -> None:
        self.retained += n

    def __repr__(self) -> str:
        return self.name


def store(kind: str = "tumbling", **kw: Any) -> WindowStore:
    aggregates = [make_aggregate("n", "count", False), make_aggregate("total", "sum", True)]
    return WindowStore(kind, aggregates, **kw)


def put(s: WindowStore, key: Any, t: int, value: Any = 1, ack: Ack | None = None) -> bool:
    """`check` then `add`, as the operator does; False when the item is too late for every window."""
    targets, late, error = s.check(key, t, [None, value])
    assert error is None
    if targets or not late:  # a new session has no target yet
        s.add(key, t, [None, value], ack or Ack(f"{key}@{t}"), targets)
        return True
    return False


def spans(out: list[Emission]) -> list[tuple[Any, int, int, int, Any]]:
    return [(e.key, e.start, e.end, e.items, e.results["total"]) for e in out]


def test_tumbling_windows_are_half_open_and_start_at_the_offset() -> None:
    s = store(size=10, offset=3)
    for t in (3, 12, 13, 22):  # [3, 13) holds 3 and 12; 13 opens [13, 23)
        put(s, "k", t, t)
    assert s.open_windows == 2
    assert spans(s.advance(13)) == [("k", 3, 13, 2, 15)]
    assert spans(s.advance(23)) == [("k", 13, 23, 2, 35)]


def test_each_key_has_its_own_windows() -> None:
    s = store(size=10)
    put(s, "a", 1, 5)
    put(s, "b", 2, 7)
    put(s, "a", 9, 1)
    assert s.open_windows == 2
    out = sorted(spans(s.advance(10)))
    assert out == [("a", 0, 10, 2, 6), ("b", 0, 10, 1, 7)]


def test_check_says_where_an_item_goes_before_anything_changes() -> None:
    s = store(size=10)
    targets, late, error = s.check("k", 4, [None, 1])
    assert targets == [(0, 10)] and not late and error is None  # no window yet: its bounds
    assert s.open_windows == 0
    s.add("k", 4, [None, 1], Ack("a"), targets)
    (window,), _, _ = s.check("k", 5, [None, 1])
    assert not isinstance(window, tuple)
    assert (window.start, window.end, window.count) == (0, 10, 1)  # the open window itself
    _, _, error = s.check("k", 5, [None, "x"])  # sum of a string: refused, nothing folded
    assert error is not None and "sum" in error and window.count == 1


def test_a_window_fires_only_when_the_watermark_reaches_its_end() -> None:
    s = store(size=10)
    put(s, "k", 5)
    assert s.advance(9) == []
    assert s.advance(9) == [] and s.advance(8) == []  # the watermark never goes back
    assert s.wm == 9
    (e,) = s.advance(10)
    assert (e.start, e.end, e.items, e.replaces) == (0, 10, 1, [])
    assert [repr(a) for a in e.acks] == ["k@5"]


def test_sliding_item_is_in_every_window_that_contains_it_and_holds_its_ack_once_per_window() -> None:
    s = store("sliding", size=30, slide=10)
    ack = Ack("x")
    put(s, "k", 25, 1, ack)  # [0, 30), [10, 40), [20, 50)
    assert s.open_windows == 3 and ack.retained == 2
    put(s, "k", 30, 1)  # 30 is not in [0, 30)
    out = s.advance(50)
    assert [(e.start, e.end, e.items) for e in out] == [(0, 30, 1), (10, 40, 2), (20, 50, 2)]
    assert all(ack in e.acks for e in out)


def test_windows_are_purged_once_past_the_allowed_lateness() -> None:
    s = store(size=10, lateness=5)
    put(s, "k", 1)
    s.advance(10)
    assert s.open_windows == 1  # fired, kept for late items
    s.advance(14)
    assert s.open_windows == 1
    assert s.advance(15) == [] and s.open_windows == 0  # purged, nothing new to send


def test_a_late_item_within_lateness_updates_the_fired_window() -> None:
    s = store(size=10, lateness=5)
    put(s, "k", 1, 10)
    (first,) = s.advance(12)
    assert put(s, "k", 8, 5)  # late (wm 12 >= 10) but within lateness
    (update,) = s.take_updates()
    assert (update.start, update.end, update.items, update.results["total"]) == (0, 10, 2, 15)
    assert update.replaces == [(0, 10)] and [repr(a) for a in update.acks] == ["k@8"]  # only the new ack
    assert first.replaces == [] and s.take_updates() == []


def test_an_item_too_late_for_its_window_changes_nothing() -> None:
    s = store(size=10, lateness=5)
    put(s, "k", 1, 10)
    s.advance(15)  # [0, 10) purged at 10 + 5
    targets, late, _ = s.check("k", 9, [None, 1])
    assert late and targets == []
    assert s.open_windows == 0 and s.flush() == []


def test_a_pending_update_goes_out_before_its_window_is_purged() -> None:
    s = store(size=10, lateness=5)
    put(s, "k", 1, 1)
    s.advance(10)
    put(s, "k", 2, 2)  # late, not yet taken as an update
    (update,) = s.advance(20)
    assert (update.start, update.items, update.results["total"], update.replaces) == (0, 2, 3, [(0, 10)])


def test_sessions_split_at_the_gap_and_a_bridging_item_merges_them() -> None:
    s = store("session", gap=10)
    put(s, "k", 0, 1)
    put(s, "k", 10, 2)  # exactly the gap after 0: a new session (closer than the gap, strictly)
    assert s.open_windows == 2
    put(s, "k", 25, 4)
    assert s.open_windows == 3
    put(s, "k", 18, 8)  # within 10 of both 10 and 25: merges them into [10, 35)
    assert s.open_windows == 2
    out = spans(s.advance(100))
    assert out == [("k", 0, 10, 1, 1), ("k", 10, 35, 3, 14)]


def test_a_session_item_before_a_purged_session_of_its_key_is_too_late() -> None:
    s = store("session", gap=10, lateness=0)
    put(s, "k", 100)
    assert len(s.advance(110)) == 1 and s.open_windows == 0
    targets, late, _ = s.check("k", 101, [None, 1])  # would have merged with k's purged [100, 110)
    assert late and targets == []
    targets, late, _ = s.check("other", 101, [None, 1])  # the same time for another key: on time
    assert not late and targets == []


def test_flush_emits_every_window_with_items_and_forgets_all_state() -> None:
    s = store(size=10)
    for key, t in (("a", 1), ("a", 15), ("b", 3)):
        put(s, key, t)
    out = s.flush()
    assert sorted((e.key, e.start) for e in out) == [("a", 0), ("a", 10), ("b", 0)]
    assert s.open_windows == 0 and s.wm == NEG_INF
    assert s.flush() == []


def test_discard_returns_the_acks_no_emission_carries() -> None:
    s = store("sliding", size=20, slide=10, lateness=100)
    ack = Ack("x")
    put(s, "k", 15, 1, ack)  # in [0, 20) and [10, 30)
    s.advance(20)  # [0, 20) emitted with its hold of the ack
    held = s.discard()
    assert held == [ack]  # one hold left: the one of [10, 30)
    assert s.open_windows == 0


def test_watermark_follows_the_largest_event_time_minus_out_of_orderness() -> None:
    wm = Watermark(ooo=5, idle_timeout=None)
    assert wm.value == NEG_INF
    assert wm.observe(100) and wm.value == 95
    assert not wm.observe(90) and wm.value == 95  # an older item does not move it back
    assert wm.max_event == 100  # nor the largest event time the idle timer counts from
    assert not wm.observe(100)
    assert wm.observe(101) and wm.value == 96
    assert not wm.on_idle(1e9)  # no idle timeout: wall clock never moves it


def test_watermark_moves_with_the_wall_clock_after_idle_timeout() -> None:
    wm = Watermark(ooo=1_000_000, idle_timeout=2.0)
    assert not wm.on_idle(100.0)  # nothing seen yet
    wm.observe(50_000_000)
    wm.last_arrival = 100.0
    assert wm.value == 49_000_000
    assert not wm.on_idle(101.5)  # idle for less than the timeout
    assert wm.on_idle(103.0)  # 3 s idle: event time assumed to have gone on 3 s
    assert wm.value == 50_000_000 + 3_000_000 - 1_000_000
    assert not wm.on_idle(102.0)  # a clock going back does not move it back


# ----- checkpoints: export and restore --------------------------------------------------------


def _checkpoint_roundtrip(kind: str, **kw: Any) -> None:
    """Half the items, export the dirty keys (sealed and unsealed), restore into a fresh store, the
    other half: the same emissions as one store fed everything (late updates and purges included)."""
    import random

    from engine import seal, unseal

    rng = random.Random(kind)
    items = [(f"k{rng.randrange(5)}", i * 700_000 + rng.randrange(-2_000_000, 2_000_000)) for i in range(400)]

    def feed(s: WindowStore, part: list[tuple[str, int]], out: list[Emission]) -> None:
        for key, t in part:
            targets, late, _ = s.check(key, t, [None, 1])
            if targets or not late:
                s.add(key, t, [None, 1], None, targets)
            out += s.advance(max(t - 1_500_000, s.wm))
        out += s.take_updates()

    def view(out: list[Emission]) -> list[tuple[Any, ...]]:
        return sorted((e.key, e.start, e.end, e.items, e.results["total"], tuple(e.replaces)) for e in out)

    whole, ref = store(kind, **kw), []
    feed(whole, items, ref)
    ref += whole.flush()

    first, got = store(kind, **kw), []
    first.track_keys()
    feed(first, items[:150], got)
    rows = {key: seal(first.export_key(key)) for key in first.dirty or ()}  # every key changed once
    first.dirty = set()
    feed(first, items[150:250], got)  # a second, incremental checkpoint: only these keys change
    rows.update({key: seal(first.export_key(key)) for key in first.dirty or ()})
    meta = seal(first.export_meta())
    second = store(kind, **kw)
    second.track_keys()
    second.restore_meta(unseal(meta, "meta"))
    restored = [(key, unseal(record, str(key))) for key, record in rows.items()]
    second.restore_keys((key, row) for key, row in restored if row is not None)  # tumbling/sliding: lazily
    assert second.dirty == set() and second.open_windows == first.open_windows
    feed(second, items[250:], got)
    got += second.flush()
    assert view(got) == view(ref)


def test_checkpoint_roundtrip_tumbling() -> None:
    _checkpoint_roundtrip("tumbling", size=5_000_000, lateness=2_000_000)


def test_checkpoint_roundtrip_sliding() -> None:
    _checkpoint_roundtrip("sliding", size=6_000_000, slide=2_000_000, lateness=1_000_000)


def test_checkpoint_roundtrip_session() -> None:
    _checkpoint_roundtrip("session", gap=3_000_000, lateness=2_000_000)


def test_lazily_restored_keys_fire_and_purge_without_being_touched() -> None:
    """Keys restored as rows (`restore_keys`) and never given another item: the watermark still
    fires their windows, late updates pending at the save are re-emitted, and purges forget them."""
    kw: dict[str, Any] = {"size": 6_000_000, "slide": 2_000_000, "lateness": 3_000_000}
    first = store("sliding", **kw)
    first.track_keys()
    for i in range(40):
        put(first, f"k{i % 8}", i * 300_000, i)
    first.advance(7_000_000)
    put(first, "k1", 1_000_000, 100)  # a late item: a pending update of a fired window
    rows = [(key, first.export_key(key)) for key in sorted(first.dirty or ())]
    second = store("sliding", **kw)
    second.track_keys()
    second.restore_meta(first.export_meta())
    second.restore_keys((key, row) for key, row in rows if row is not None)
    assert second._lazy and second.open_windows == first.open_windows

    def view(out: list[Emission]) -> list[tuple[Any, ...]]:
        return sorted((e.key, e.start, e.end, e.items, e.results["total"], tuple(e.replaces)) for e in out)

    for s in (first, second):
        assert len(s.take_updates()) == 1  # k1's update, rebuilt at the restore
    assert view(second.advance(12_000_000)) == view(first.advance(12_000_000))
    assert view(second.advance(30_000_000)) == view(first.advance(30_000_000))
    assert second.open_windows == first.open_windows == 0 and not second._lazy
    third = store("sliding", **kw)  # a revoked partition: its unbuilt keys hold no acks and are dropped
    third.track_keys()
    third.restore_meta(first.export_meta())
    third.restore_keys((key, row) for key, row in rows if row is not None)
    assert third.discard() == [] and third.open_windows == 0 and (third.dirty or set()) >= {"k0", "k7"}
