"""`window` keeps one set of windows per partition and gives a revoked partition's items back."""

from __future__ import annotations

from typing import Any

from engine.message import AckTracker, Msg
from engine.partitions import PartitionEvents
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig


def make(events: PartitionEvents) -> Window:
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 1_000.0, partitions=events)
    config = WindowConfig(kind="tumbling", size=10, time="event", timestamp="msg.t", key="msg.k",
                          aggregates={"n": {"op": "count"}})
    return Window("win", config, ctx)


def feed(op: Window, tracker: AckTracker, items: list[tuple[int, Any, float]]) -> dict[str, list[Msg]]:
    """items: (partition, key, event time); the tracker's tokens number them 0, 1, 2..."""
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    msgs = [Msg({"k": k, "t": t}, {"partition": p}, tracker.new(tracker.entered)) for p, k, t in items]
    op.process(msgs, out)
    return out.take()


def test_partitions_keep_their_own_windows_and_watermarks() -> None:
    events = PartitionEvents()
    op = make(events)
    tracker = AckTracker()
    res = feed(op, tracker, [(0, "a", 1), (1, "a", 2), (0, "a", 3), (0, "a", 12)])
    # partition 0's watermark (12) closes its [0,10) with 2 items; partition 1's window stays open
    assert [(m.body["key"], m.body["count"]) for m in res["out"]] == [("a", 2)]
    assert op.parts[1].store.open_windows == 1 and op.parts[0].store.open_windows == 1


def test_revoking_a_partition_drops_its_windows_and_fails_exactly_its_held_acks() -> None:
    events = PartitionEvents()
    op = make(events)
    tracker = AckTracker()
    events.assigned("src", 0)
    events.assigned("src", 1)
    res = feed(op, tracker, [(0, "a", 1), (1, "b", 2), (1, "b", 3), (0, "a", 12), (1, "c", 4)])
    (closed,) = res["out"]  # partition 0's [0,10): holds item 0
    events.revoked("src", 1)
    assert 1 not in op.parts and 0 in op.parts
    done, failed = tracker.take()
    assert done == []
    assert sorted(token for token, _ in failed) == [1, 2, 4]  # partition 1's items, nothing else
    assert all("partition 1 of src was revoked" in reason for _, reason in failed)
    closed.ack.release()  # partition 0 is untouched: its window's item completes when committed
    assert tracker.take() == ([0], [])
    assert op.parts[0].store.open_windows == 1  # [10,20) of partition 0, holding item 3
    # items of partition 1 still in flight towards the window when it was revoked go back too
    feed(op, tracker, [(1, "b", 4.5), (0, "a", 13)])
    done, failed = tracker.take()
    assert done == [] and [t for t, _ in failed] == [5] and "no longer owned" in failed[0][1]
    assert 1 not in op.parts
    # the partition comes back (or another is assigned): it starts empty
    events.assigned("src", 1)
    assert feed(op, tracker, [(1, "b", 5)])["out"] == [] and op.parts[1].store.open_windows == 1
    assert tracker.take() == ([], [])
