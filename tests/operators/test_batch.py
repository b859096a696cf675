"""`batch`: flush on count, bytes, period (driven by an injected clock) and end of input; composite acks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from engine.message import FILTERED, AckTracker, CompositeAck, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.batch import Batch, BatchConfig


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(config: dict[str, Any], clock: Clock | None = None) -> tuple[Batch, Outputs]:
    ctx = NodeContext("b", {}, {}, Resources(), clock=clock or Clock())
    return Batch("b", BatchConfig.model_validate(config), ctx), Outputs(
        "b", ("out",), NodeStats("b", "operator", "batch")
    )


def msgs(tracker: AckTracker, n: int, size: int = 10, start: int = 0) -> list[Msg]:
    return [Msg({"i": i}, {"source": "s", "seq": i}, tracker.new(i), size) for i in range(start, start + n)]


def test_count_flush_and_remainder_at_end() -> None:
    op, out = make({"count": 4})
    tracker = AckTracker()
    op.process(msgs(tracker, 6), out)
    op.process(msgs(tracker, 3, start=6), out)
    groups = out.take()["out"]
    assert [[b["i"] for b in g.body] for g in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    op.flush(out)
    [last] = out.take()["out"]
    assert last.body == [{"i": 8}] and last.meta["batch_count"] == 1 and last.meta["first_meta"]["seq"] == 8
    assert op.items == []


def test_bytes_limit_and_an_oversized_message_goes_alone() -> None:
    op, out = make({"count": None, "bytes": 100})
    tracker = AckTracker()
    batch = (
        msgs(tracker, 3, size=40)
        + [Msg({"big": 1}, {}, tracker.new("big"), 500)]
        + msgs(tracker, 2, size=40, start=3)
    )
    op.process(batch, out)
    op.flush(out)
    groups = out.take()["out"]
    assert [g.meta["batch_bytes"] for g in groups] == [80, 40, 500, 80]
    assert [len(g.body) for g in groups] == [2, 1, 1, 2]
    assert all(g.size == g.meta["batch_bytes"] for g in groups)


def test_period_flush_uses_the_injected_clock() -> None:
    clock = Clock()
    op, out = make({"count": 1000, "period": 2.0}, clock)
    assert op.tick_interval == 0.5
    tracker = AckTracker()
    op.process(msgs(tracker, 3), out)
    clock.now += 1.0
    op.process(msgs(tracker, 2, start=3), out)
    op.tick(clock.now + 0.9, out)  # the group's first message is 1.9 s old: keep it
    assert out.take()["out"] == []
    op.tick(clock.now + 1.0, out)  # 2.0 s: emit
    [group] = out.take()["out"]
    assert len(group.body) == 5
    op.tick(clock.now + 100, out)  # nothing held: nothing emitted
    assert out.take()["out"] == []


def test_group_ack_settles_every_item_with_the_group_outcome() -> None:
    op, out = make({"count": 3})
    tracker = AckTracker()
    op.process(msgs(tracker, 3), out)
    [group] = out.take()["out"]
    assert isinstance(group.ack, CompositeAck) and tracker.in_flight == 3
    group.ack.finish(FILTERED)
    assert tracker.in_flight == 0 and sorted(tracker.completed) == [0, 1, 2] and tracker.filtered == 3


def test_failed_group_fails_every_item() -> None:
    op, out = make({"count": 2})
    tracker = AckTracker()
    op.process(msgs(tracker, 2), out)
    [group] = out.take()["out"]
    group.ack.fail("sink gave up")
    assert [reason for _, reason in tracker.failed] == ["sink gave up", "sink gave up"]


def test_needs_some_limit() -> None:
    with pytest.raises(ValidationError):
        BatchConfig.model_validate({"count": None})


def test_end_to_end_groups_are_written_and_every_item_acked(
    write_graph: Any, run: Any, tmp_path: Path
) -> None:
    path = write_graph("""\
        version: 1
        name: b
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 1050, batch: 64, template: '{"n": msg.i}'}}
          group: {type: batch, inputs: [src], config: {count: 100, period: 5}}
          out: {type: file_sink, inputs: [group], config: {path: groups.ndjson}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run(path)
    assert report.error is None and report.balanced
    assert report.totals()["delivered"] == 1050 and report.totals()["in_flight"] == 0
    groups = [orjson.loads(x) for x in (tmp_path / "groups.ndjson").read_bytes().splitlines()]
    assert [len(g) for g in groups] == [100] * 10 + [50]
    assert [b["n"] for g in groups for b in g] == list(range(1050))
    assert report.stats["group"].received == 1050 and report.stats["group"].emitted == 11


def test_end_to_end_period_flush_through_the_scheduler_tick(
    write_graph: Any, run: Any, tmp_path: Path
) -> None:
    """A slow source (one message every 4 ms) and a 10 ms period: groups leave long before count."""
    path = write_graph("""\
        version: 1
        name: b2
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 40, rate: 250, batch: 1, template: '{"n": msg.i}'}}
          group: {type: batch, inputs: [src], config: {count: 1000, period: 0.01}}
          out: {type: file_sink, inputs: [group], config: {path: groups.ndjson}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run(path)
    assert report.error is None and report.balanced and report.totals()["delivered"] == 40
    groups = [orjson.loads(x) for x in (tmp_path / "groups.ndjson").read_bytes().splitlines()]
    assert len(groups) >= 4 and max(len(g) for g in groups) < 40
    assert [b["n"] for g in groups for b in g] == list(range(40))
