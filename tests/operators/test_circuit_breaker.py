"""`circuit_breaker`: closed → open after N failed calls → half-open trial → closed or open again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from pydantic import Field

from engine import registry
from engine.api import NodeConfig, Operator
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.circuit_breaker import CircuitBreaker, CircuitBreakerConfig


class FlakyConfig(NodeConfig):
    fail_calls: int = Field(0, ge=0, description="Fail the first N calls.")


class Flaky(Operator):
    """Fails while `Flaky.down` is set (or for its first `fail_calls` calls); counts calls."""

    Config = FlakyConfig
    down: ClassVar[bool] = False
    calls: ClassVar[int] = 0

    def process(self, batch: list[Msg], out: Outputs) -> None:
        type(self).calls += 1
        if type(self).down or type(self).calls <= self.config.fail_calls:
            raise ConnectionError("service unavailable")
        for m in batch:
            out.send(m)


registry.register("ops_flaky", Flaky)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Flaky.down = False
    Flaky.calls = 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(config: dict[str, Any], clock: Any) -> tuple[CircuitBreaker, Outputs]:
    cfg = CircuitBreakerConfig.model_validate({"operator": {"type": "ops_flaky"}, **config})
    op = CircuitBreaker("cb", cfg, NodeContext("cb", {}, {}, Resources(), clock=clock))
    return op, Outputs("cb", ("out",), NodeStats("cb", "operator", "circuit_breaker"))


def call(op: CircuitBreaker, out: Outputs, n: int = 3) -> tuple[str, dict[str, list[Msg]]]:
    """Run one batch; 'ok' or 'raised' (what the scheduler's retry policy would see)."""
    tracker = AckTracker()
    try:
        asyncio.run(op.process([Msg({"i": i}, {}, tracker.new(i)) for i in range(n)], out))
        outcome = "ok"
    except ConnectionError:
        outcome = "raised"
    return outcome, out.take()


def test_opens_refuses_then_trial_closes_or_reopens() -> None:
    clock = Clock()
    op, out = make({"failures": 3, "reset_after": 10, "when_open": "errors"}, clock)
    Flaky.down = True
    assert [call(op, out)[0] for _ in range(3)] == ["raised"] * 3
    assert op.state == "open" and Flaky.calls == 3
    outcome, lists = call(op, out)  # open: the inner operator is not called
    assert outcome == "ok" and Flaky.calls == 3 and lists["out"] == []
    assert (
        len(lists["errors"]) == 3
        and "circuit open after 3 failed call(s)" in lists["errors"][0].body["error"]
    )
    clock.now = 10.0  # half-open: one trial, which fails -> open again at once
    assert call(op, out)[0] == "raised" and op.state == "open" and op.opened == 2 and Flaky.calls == 4
    clock.now = 15.0
    assert call(op, out)[1]["errors"] != [] and Flaky.calls == 4
    Flaky.down = False
    clock.now = 20.0  # the trial goes through: closed
    outcome, lists = call(op, out)
    assert outcome == "ok" and op.state == "closed" and op.failed == 0 and len(lists["out"]) == 3


def test_a_success_resets_the_count() -> None:
    op, out = make({"failures": 2}, Clock())
    Flaky.down = True
    call(op, out)
    Flaky.down = False
    call(op, out)
    Flaky.down = True
    call(op, out)
    assert op.state == "closed" and op.failed == 1


def test_wait_mode_holds_the_batch_until_the_trial() -> None:
    op, out = make({"failures": 1, "reset_after": 0.05, "when_open": "wait"}, _monotonic)
    Flaky.down = True
    assert call(op, out)[0] == "raised" and op.state == "open"
    Flaky.down = False
    t0 = _monotonic()
    outcome, lists = call(op, out)
    assert outcome == "ok" and len(lists["out"]) == 3 and lists["errors"] == []
    assert _monotonic() - t0 >= 0.04 and op.state == "closed"


def _monotonic() -> float:
    import time

    return time.monotonic()


def test_end_to_end_open_circuit_dead_letters_without_calling(
    write_graph: Any, run: Any, tmp_path: Path
) -> None:
    path = write_graph("""\
        version: 1
        name: cb
        defaults: {dead_letter: dead, retry: {max_attempts: 1}}
        nodes:
          src: {type: generate, config: {count: 100, batch: 10}}
          guard:
            type: circuit_breaker
            inputs: [src]
            batch_size: 10
            capacity: 10
            config: {operator: {type: ops_flaky, config: {fail_calls: 2}}, failures: 2, reset_after: 60,
                     when_open: errors}
          out: {type: file_sink, inputs: [guard], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run(path)
    assert report.error is None and report.balanced
    assert report.totals()["dead_lettered"] == 100 and Flaky.calls == 2
    dead = [orjson.loads(x)["error"] for x in (tmp_path / "dead.ndjson").read_bytes().splitlines()]
    # the two failed calls' ConnectionErrors are an outage, never a dead letter: their batches are
    # retried, meet the open circuit and go to errors as `when_open: errors` asks, like every other
    assert sum("ConnectionError" in e for e in dead) == 0
    assert sum("circuit open" in e for e in dead) == 100


def test_offline_checks_the_inner_operator(write_graph: Any) -> None:
    from engine.compile.validate import check_text

    path = write_graph("""\
        version: 1
        name: cb2
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 1}}
          guard: {type: circuit_breaker, inputs: [src], config: {operator: {type: filter, config: {expr: 'msg.'}}}}
          dead: {type: file_sink, inputs: [guard], config: {path: dead.ndjson}}
    """)
    graph, diags = check_text(path.read_text(), str(path))
    assert graph is None and [d.code for d in diags] == ["E203"]
