"""When `window` releases its items' acks (`acks`): hold, release (no durable positions), checkpoint."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

from engine.compile.validate import load_graph
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.scheduler import Runner
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig

KEYS = 10_000
ITEMS = 66_000  # 1,000 a second of event time: the first 60 s window holds 60,000 > max_in_flight

GRAPH = """
version: 1
name: keyed_minute
defaults: {dead_letter: dead}
nodes:
  orders: {type: file_source, config: {path: orders.ndjson}}
  per_user:
    type: window
    inputs: [orders]
    config:
      kind: tumbling
      size: 60s
      key: msg.user
      time: event
      timestamp: msg.ts
      aggregates: {n: {op: count}, total: {op: sum, expr: msg.amount}}
  out: {type: file_sink, inputs: [per_user], config: {path: windows.ndjson}}
  dead: {type: file_sink, inputs: [orders.errors, per_user.errors, per_user.late], config: {path: dead.ndjson}}
"""


def test_10k_key_minute_window_over_a_file_finishes_at_the_default_max_in_flight(tmp_path: Path) -> None:
    """With acks held, the first minute's 60,000 items would stop the file at max_in_flight (50,000)
    before any item of the next minute could move the watermark: the run would never end."""
    rng = random.Random(16)
    expected: Counter[tuple[str, int]] = Counter()
    sums: Counter[tuple[str, int]] = Counter()
    with (tmp_path / "orders.ndjson").open("w") as f:
        for i in range(ITEMS):
            user, ts, amount = f"u{rng.randrange(KEYS)}", i / 1000, rng.randrange(100)
            f.write(json.dumps({"user": user, "ts": ts, "amount": amount}) + "\n")
            expected[(user, int(ts // 60) * 60)] += 1
            sums[(user, int(ts // 60) * 60)] += amount
    (tmp_path / "graph.yaml").write_text(GRAPH)
    graph = load_graph(str(tmp_path / "graph.yaml"))
    assert graph.spec.defaults.max_in_flight == 50_000
    runner = Runner(graph)
    assert runner.nodes["per_user"].mode == "release"  # file_source has no durable positions

    report = asyncio.run(asyncio.wait_for(runner.run(), 60))
    totals = report.totals()
    assert report.balanced and totals["delivered"] == ITEMS and totals["in_flight"] == 0
    got: Counter[tuple[str, int]] = Counter()
    got_sums: Counter[tuple[str, int]] = Counter()
    for line in (tmp_path / "windows.ndjson").read_text().splitlines():
        w = json.loads(line)
        start = int(w["start"][11:13]) * 3600 + int(w["start"][14:16]) * 60 + int(w["start"][17:19])
        assert (w["key"], start) not in got  # one message per window
        got[(w["key"], start)] = w["count"]
        got_sums[(w["key"], start)] = w["aggregates"]["total"]
    assert got == expected and got_sums == sums
    assert (tmp_path / "dead.ndjson").read_text() == ""


def make(acks: str | None, upstream: tuple = ()) -> Window:
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 1_000.0, upstream=upstream)
    config = {"kind": "tumbling", "size": 10, "time": "event", "timestamp": "msg.t", "aggregates": {"n": {"op": "count"}}}
    if acks:
        config["acks"] = acks
    return Window("win", WindowConfig(**config), ctx)


def test_release_counts_an_item_delivered_once_folded_and_the_window_carries_no_ack() -> None:
    op = make(None)  # upstream known and without durable positions: release
    assert op.mode == "release"
    tracker = AckTracker()
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    batch_ack = tracker.new_batch(3)
    op.process([Msg({"t": t}, {}, batch_ack) for t in (1, 2, 11)], out)
    (closed,) = out.take()["out"]
    assert closed.body["count"] == 2
    assert tracker.delivered == 3 and tracker.in_flight == 0  # folded = delivered, nothing held
    closed.ack.fail("sink gave up")  # the window's message stands for no source message
    assert tracker.nacked == 0 and tracker.take() == ([None], [])


def test_hold_is_the_default_behind_a_source_with_durable_positions_and_when_unknown() -> None:
    from engine.api import Upstream
    from operators.connectors.jetstream.source import JetStreamSource

    assert make(None, (Upstream("js", JetStreamSource, None),)).mode == "hold"
    ctx = NodeContext("win", {}, {}, Resources())  # made outside a run: upstream unknown
    assert Window("win", WindowConfig(kind="tumbling", size=10), ctx).mode == "hold"
    assert make("hold").mode == "hold"
