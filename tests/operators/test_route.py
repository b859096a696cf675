"""`route`: first / all / multicast / round_robin / consistent_hash, unmatched, fan-out acks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from engine.compile.validate import check_text
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.route import Route, RouteConfig, jump_hash


def make(config: dict[str, Any]) -> tuple[Route, Outputs]:
    cfg = RouteConfig.model_validate(config)
    op = Route("r", cfg, NodeContext("r", {}, {}, Resources()))
    ports = tuple(dict.fromkeys((*Route.output_ports(cfg), "errors")))
    return op, Outputs("r", ports, NodeStats("r", "operator", "route"))


def feed(op: Route, out: Outputs, bodies: list[Any]) -> tuple[dict[str, list[Msg]], AckTracker]:
    tracker = AckTracker()
    op.process([Msg(b, {}, tracker.new(i)) for i, b in enumerate(bodies)], out)
    return out.take(), tracker


def test_first_match_wins_and_unmatched_port() -> None:
    op, out = make({"routes": {"big": "msg.n > 10", "even": "msg.n % 2 == 0"}})
    assert Route.output_ports(op.config) == ("big", "even", "unmatched")
    lists, _ = feed(op, out, [{"n": n} for n in (12, 4, 3, 11)])
    assert [m.body["n"] for m in lists["big"]] == [12, 11]
    assert [m.body["n"] for m in lists["even"]] == [4]
    assert [m.body["n"] for m in lists["unmatched"]] == [3]


def test_literal_true_route_means_no_unmatched_port() -> None:
    cfg = RouteConfig.model_validate({"routes": {"vip": "msg.vip", "rest": "true"}})
    assert Route.output_ports(cfg) == ("vip", "rest")


def test_all_mode_fans_out_and_retains_the_ack() -> None:
    op, out = make({"mode": "all", "routes": {"a": "msg.n > 0", "b": "msg.n > 5", "c": "msg.n > 100"}})
    lists, tracker = feed(op, out, [{"n": 7}, {"n": 1}, {"n": -1}])
    assert [m.body["n"] for m in lists["a"]] == [7, 1] and [m.body["n"] for m in lists["b"]] == [7]
    assert lists["c"] == [] and [m.body["n"] for m in lists["unmatched"]] == [-1]
    seven_a, seven_b = lists["a"][0], lists["b"][0]
    assert seven_a is not seven_b and seven_a.ack is seven_b.ack and seven_a.ack.pending == 2
    seven_a.ack.release()
    assert tracker.in_flight == 3
    seven_b.ack.release()
    assert tracker.in_flight == 2 and tracker.completed == [0]


def test_condition_errors_and_non_bool_go_to_errors() -> None:
    op, out = make({"routes": {"a": "msg.n > 1", "b": "msg.n"}})
    lists, _ = feed(op, out, [{"n": 5}, {"x": 1}, {"n": 0}])
    assert [m.body["n"] for m in lists["a"]] == [5]
    errs = [m.body["error"] for m in lists["errors"]]
    assert len(errs) == 2 and errs[0].startswith("route: ") and "not bool" in errs[1]


def test_first_match_order_holds_on_the_per_message_path() -> None:
    """One message makes the first condition fail, so the batch goes message by message: a message
    matching both routes still goes to the first one only, and the others are unaffected."""
    op, out = make({"routes": {"big": "msg.n > 10", "even": "msg.n % 2 == 0"}})
    tracker = AckTracker()
    bodies = [{"n": 12}, {"x": 1}, {"n": 4}, {"n": 3}, {"n": 11}]
    batch = [Msg(b, {}, tracker.new(i)) for i, b in enumerate(bodies)]
    assert op.exprs[0].many(batch) is None  # the batch-wide evaluation gives up: the fallback path runs
    op.process(batch, out)
    lists = out.take()
    assert [m.body["n"] for m in lists["big"]] == [12, 11]  # 12 matches `even` too: first match wins
    assert [m.body["n"] for m in lists["even"]] == [4]
    assert [m.body["n"] for m in lists["unmatched"]] == [3]
    assert [m.body["payload"] for m in lists["errors"]] == [{"x": 1}]
    assert sum(len(v) for v in lists.values()) == len(batch)  # each message on one port, once


def test_multicast_gives_every_port_a_copy() -> None:
    op, out = make({"mode": "multicast", "ports": ["x", "y", "z"]})
    lists, tracker = feed(op, out, [{"n": 1}, {"n": 2}])
    assert all([m.body["n"] for m in lists[p]] == [1, 2] for p in "xyz")
    for p in "xyz":
        for m in lists[p]:
            m.ack.release()
    assert tracker.in_flight == 0 and sorted(tracker.completed) == [0, 1]


def test_round_robin_takes_turns_across_batches() -> None:
    op, out = make({"mode": "round_robin", "ports": ["a", "b", "c"]})
    first, _ = feed(op, out, [{"n": n} for n in range(4)])
    second, _ = feed(op, out, [{"n": n} for n in range(4, 6)])
    assert [m.body["n"] for m in first["a"]] == [0, 3] and [m.body["n"] for m in second["b"]] == [4]
    assert [m.body["n"] for m in second["c"]] == [5]


def test_consistent_hash_is_stable_and_spreads_keys() -> None:
    op, out = make({"mode": "consistent_hash", "ports": ["p0", "p1", "p2", "p3"], "key": "msg.user"})
    bodies = [{"user": f"u{i % 50}", "i": i} for i in range(1000)]
    lists, _ = feed(op, out, bodies)
    where = {m.body["user"]: p for p in ("p0", "p1", "p2", "p3") for m in lists[p]}
    for p in ("p0", "p1", "p2", "p3"):  # every message of a user lands on that user's one port
        assert all(where[m.body["user"]] == p for m in lists[p])
    assert min(Counter(where.values()).values()) >= 5  # 50 keys over 4 ports: none starves
    # jump hash: growing from 4 to 5 ports moves only the keys that go to the new port
    moved = [k for k in range(2000) if jump_hash(str(k).encode(), 4) != jump_hash(str(k).encode(), 5)]
    assert all(jump_hash(str(k).encode(), 5) == 4 for k in moved) and 250 < len(moved) < 550


def test_consistent_hash_key_error_goes_to_errors() -> None:
    op, out = make({"mode": "consistent_hash", "ports": ["a", "b"], "key": "msg.user"})
    lists, _ = feed(op, out, [{"nouser": 1}, {"user": 7}])
    assert len(lists["errors"]) == 1 and len(lists["a"]) + len(lists["b"]) == 1


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "first"},
        {"mode": "all", "routes": {"a": "true"}, "ports": ["a"]},
        {"mode": "multicast", "routes": {"a": "true"}},
        {"mode": "consistent_hash", "ports": ["a", "b"]},
        {"mode": "round_robin", "ports": ["a"], "key": "msg.k"},
    ],
)
def test_config_rules(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RouteConfig.model_validate(config)


GRAPH = """\
version: 1
name: r
defaults: {dead_letter: dead}
nodes:
  src:
    type: generate
    config: {count: 1000, template: '{"n": msg.i}'}
  split:
    type: route
    inputs: [src]
    config:
      mode: all
      routes: {small: 'msg.n < 500', even: 'msg.n % 2 == 0', huge: 'msg.n > 5000'}
  small:
    type: file_sink
    inputs: [split.small]
    config: {path: small.ndjson}
  evens:
    type: file_sink
    inputs: [split.even, split.unmatched]
    config: {path: even.ndjson}
  dead:
    type: file_sink
    inputs: [src.errors, split.errors, small.errors, evens.errors]
    config: {path: dead.ndjson}
"""


def test_end_to_end_fan_out_settles_each_message_once(write_graph: Any, run: Any, tmp_path: Path) -> None:
    path = write_graph(GRAPH)
    _, diags = check_text(path.read_text(), str(path))
    # `huge` is declared but nothing consumes it: validate warns (its messages would count as filtered)
    assert [(d.code, d.line) for d in diags] == [("W301", 8)] and "'huge'" in diags[0].message
    report = run(path)
    assert report.error is None and report.balanced
    assert report.totals() == {
        "entered": 1000,
        "delivered": 1000,
        "filtered": 0,
        "dead_lettered": 0,
        "nacked": 0,
        "in_flight": 0,
    }
    small = [orjson.loads(x)["n"] for x in (tmp_path / "small.ndjson").read_bytes().splitlines()]
    evens = [orjson.loads(x)["n"] for x in (tmp_path / "even.ndjson").read_bytes().splitlines()]
    assert small == list(range(500))
    # evens: the even numbers, plus the unmatched (odd >= 500)
    assert sorted(evens) == [n for n in range(1000) if n % 2 == 0 or n >= 500]


def test_unconsumed_unmatched_port_counts_as_filtered(write_graph: Any, run: Any) -> None:
    path = write_graph("""\
        version: 1
        name: r2
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 300, template: '{"n": msg.i}'}}
          split: {type: route, inputs: [src], config: {routes: {low: 'msg.n < 100'}}}
          low: {type: file_sink, inputs: [split.low], config: {path: low.ndjson}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    _, diags = check_text(path.read_text(), str(path))
    assert [(d.code, d.line) for d in diags] == [("W301", 6)] and "'unmatched'" in diags[0].message
    report = run(path)
    assert report.balanced and report.totals()["delivered"] == 100 and report.totals()["filtered"] == 200
    assert report.stats["split"].filtered == 200


def test_offline_reserved_port_name_and_bad_cel(write_graph: Any) -> None:
    path = write_graph("""\
        version: 1
        name: r3
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 3}}
          split:
            type: route
            inputs: [src]
            config:
              routes: {errors: 'true', ok: 'msg.i >'}
          dead: {type: file_sink, inputs: [split.ok], config: {path: dead.ndjson}}
    """)
    graph, diags = check_text(path.read_text(), str(path))
    assert graph is None
    assert [(d.code, d.line, d.col) for d in diags if d.severity == "error"] == [
        ("E202", 10, 24),
        ("E203", 10, 44),
    ]
