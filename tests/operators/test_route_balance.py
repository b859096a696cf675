"""`route` modes `weighted` and `least_loaded`: the distribution, and nothing lost when a branch stalls."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

import tests.runtime.test_nodes  # noqa: F401 - registers test_source / test_sink
from engine.compile.validate import load_graph
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.scheduler import Runner
from engine.runtime.stats import NodeStats
from operators.route import Route, RouteConfig
from tests.runtime.test_nodes import GATES, RECORD


def make(config: dict[str, Any], load: Any = None) -> tuple[Route, Outputs]:
    cfg = RouteConfig.model_validate(config)
    op = Route("r", cfg, NodeContext("r", {}, {}, Resources(), load=load))
    ports = tuple(dict.fromkeys((*Route.output_ports(cfg), "errors")))
    return op, Outputs("r", ports, NodeStats("r", "operator", "route"))


def spread(op: Route, out: Outputs, n: int, batch: int) -> list[str]:
    """Feed n messages in batches; the port each went to, in order."""
    tracker, where = AckTracker(), {}
    for lo in range(0, n, batch):
        op.process([Msg({"i": i}, {}, tracker.new(i)) for i in range(lo, min(n, lo + batch))], out)
        for port, msgs in out.take().items():
            where.update({m.body["i"]: port for m in msgs})
    return [where[i] for i in range(n)]


def test_weighted_gives_each_port_its_exact_share_interleaved() -> None:
    op, out = make({"mode": "weighted", "weights": {"a": 3, "b": 1, "c": 2}})
    assert Route.output_ports(op.config) == ("a", "b", "c")
    ports = spread(op, out, 600, batch=7)  # batches that do not divide the cycle of 6
    assert Counter(ports) == {"a": 300, "b": 100, "c": 200}
    for lo in range(0, 600, 6):  # every cycle of sum(weights) messages holds the exact shares
        assert Counter(ports[lo : lo + 6]) == {"a": 3, "b": 1, "c": 2}
    assert ports[:6] == ["a", "c", "a", "b", "c", "a"]  # interleaved, not a run of a's


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mode": "weighted", "ports": ["a"]}, "is required by mode 'weighted'"),
        ({"mode": "round_robin", "ports": ["a"], "weights": {"a": 1}}, "only used there"),
        ({"mode": "weighted", "weights": {"a": 0}}, "positive integer"),
        ({"mode": "weighted", "weights": {"a": 1}, "ports": ["a"]}, "not `ports`"),
        ({"mode": "least_loaded"}, "needs `ports`"),
    ],
)
def test_config_rules_of_the_balancing_modes(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouteConfig.model_validate(config)


def test_least_loaded_fills_the_emptier_channel_until_the_fills_are_equal() -> None:
    """a is 90 % full, b 10 %: b takes messages until both are at 90 %, then they alternate."""
    loads = {"a": (90, 100), "b": (10, 100)}
    op, out = make({"mode": "least_loaded", "ports": ["a", "b"]}, load=lambda node, port: loads[port])
    ports = spread(op, out, 100, batch=100)
    assert ports[:80] == ["b"] * 80
    assert Counter(ports[80:]) == {"a": 10, "b": 10} and ports[80] != ports[81]


def test_least_loaded_outside_a_run_takes_turns() -> None:
    op, out = make({"mode": "least_loaded", "ports": ["a", "b", "c"]})
    assert spread(op, out, 9, batch=4) == ["a", "b", "c"] * 3


def test_least_loaded_sends_around_a_stalled_branch_and_loses_nothing(write_graph: Any) -> None:
    """`slow` (behind an inline map) is stalled by a gate: its channel fills, and everything else
    goes to `fast`. Once the gate opens every message is delivered exactly once."""
    path = write_graph("""
        version: 1
        name: balance
        defaults: {capacity: 100, dead_letter: dead}
        nodes:
          src: {type: test_source, config: {count: 3000, batch: 50}}
          r: {type: route, inputs: [src], config: {mode: least_loaded, ports: [fast, slow]}}
          m: {type: map, inputs: [r.slow], config: {expr: 'msg'}}
          fast: {type: test_sink, inputs: [r.fast], batch_size: 50}
          slow: {type: test_sink, inputs: [m], config: {gate: stall}, batch_size: 50}
          dead: {type: drop, inputs: [src.errors, m.errors, fast.errors, slow.errors]}
    """)

    async def scenario() -> Any:
        GATES["stall"] = asyncio.Event()
        RECORD.pop("fast", None)
        RECORD.pop("slow", None)
        runner = Runner(load_graph(str(path)))
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(10):
            while len(RECORD.get("fast", {}).get("bodies", [])) < 2500:
                await asyncio.sleep(0.005)
        assert RECORD["slow"]["bodies"] == []  # stalled: it holds one batch, its channel the rest
        assert runner.channels["slow"].count <= 100
        # what went to the stalled branch: its channel + the batch its sink holds + one in flight
        assert 0 < runner.stats["m"].received <= 100 + 50 + 50
        GATES["stall"].set()
        return await task

    report = asyncio.run(scenario())
    fast = [b["i"] for b in RECORD["fast"]["bodies"]]
    slow = [b["i"] for b in RECORD["slow"]["bodies"]]
    assert report.error is None and report.balanced and report.totals()["delivered"] == 3000
    assert sorted(fast + slow) == list(range(3000))  # each exactly once
