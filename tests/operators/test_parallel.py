"""`parallel`: bounded concurrency over chunks, ordered and unordered output, inner config checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from engine import registry
from engine.api import NodeConfig, Operator
from engine.compile.validate import check_text
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.parallel import Parallel, ParallelConfig


class GatedConfig(NodeConfig):
    fail_on: int | None = None


class Gated(Operator):
    """Async test operator: each chunk waits for GATES[first i] (when set up), tracks concurrency."""

    Config = GatedConfig
    gates: ClassVar[dict[int, asyncio.Event]] = {}
    running = 0
    peak = 0
    started: ClassVar[list[int]] = []

    async def process(self, batch: list[Msg], out: Outputs) -> None:
        cls = type(self)
        first = batch[0].body["i"]
        cls.started.append(first)
        cls.running += 1
        cls.peak = max(cls.peak, cls.running)
        try:
            gate = cls.gates.get(first)
            if gate is not None:
                await gate.wait()
            else:
                await asyncio.sleep(0)  # yield, as real I/O would
            if self.config.fail_on is not None and any(m.body["i"] == self.config.fail_on for m in batch):
                raise ConnectionError("lookup service down")
            for m in batch:
                out.send(m.derive({**m.body, "seen_by": self.id}))
        finally:
            cls.running -= 1


registry.register("ops_gated", Gated)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Gated.gates.clear()
    Gated.running = Gated.peak = 0
    Gated.started.clear()


def make(config: dict[str, Any]) -> tuple[Parallel, Outputs]:
    cfg = ParallelConfig.model_validate(config)
    op = Parallel("p", cfg, NodeContext("p", {}, {}, Resources()))
    ports = tuple(dict.fromkeys((*Parallel.output_ports(cfg), "errors")))
    return op, Outputs("p", ports, NodeStats("p", "operator", "parallel"))


def batch(tracker: AckTracker, start: int, n: int) -> list[Msg]:
    return [Msg({"i": i}, {}, tracker.new(i)) for i in range(start, start + n)]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_sync_inner_operator_keeps_order_and_ports() -> None:
    op, out = make(
        {"operator": {"type": "route", "config": {"routes": {"even": "msg.i % 2 == 0"}}}, "chunk": 3}
    )
    assert op.inner_ports == ("even", "unmatched", "errors")

    async def go() -> dict[str, list[Msg]]:
        tracker = AckTracker()
        await op.process(batch(tracker, 0, 10), out)
        await op.flush(out)
        return out.take()

    lists = asyncio.run(go())
    assert [m.body["i"] for m in lists["even"]] == [0, 2, 4, 6, 8]
    assert [m.body["i"] for m in lists["unmatched"]] == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("ordered", [True, False])
def test_bounded_concurrency_and_order(ordered: bool) -> None:
    op, out = make({"operator": {"type": "ops_gated"}, "chunk": 2, "concurrency": 3, "ordered": ordered})

    async def go() -> tuple[list[int], list[int]]:
        Gated.gates.update({i: asyncio.Event() for i in (0, 2, 4, 6)})
        tracker = AckTracker()
        task = asyncio.create_task(op.process(batch(tracker, 0, 8), out))
        await _settle()
        # three chunks run (0, 2, 4); the fourth waits for room
        assert Gated.started == [0, 2, 4] and not task.done()
        Gated.gates[2].set()  # the second chunk finishes first
        await _settle()
        if ordered:  # the head (0) still runs: nothing moves, the window is full
            assert Gated.started == [0, 2, 4] and not task.done()
            Gated.gates[0].set()
        await _settle()
        assert task.done() and Gated.started == [0, 2, 4, 6]
        early = [m.body["i"] for m in out.take()["out"]]
        for g in Gated.gates.values():
            g.set()
        await op.flush(out)
        return early, [m.body["i"] for m in out.take()["out"]]

    early, rest = asyncio.run(go())
    assert Gated.peak == 3
    if ordered:
        assert early == [0, 1, 2, 3] and early + rest == list(range(8))
    else:
        assert early == [2, 3] and sorted(early + rest) == list(range(8)) and early + rest != list(range(8))


def test_failing_chunk_goes_to_errors_alone() -> None:
    op, out = make(
        {"operator": {"type": "ops_gated", "config": {"fail_on": 5}}, "chunk": 4, "concurrency": 2}
    )

    async def go() -> dict[str, list[Msg]]:
        await op.process(batch(AckTracker(), 0, 12), out)
        await op.flush(out)
        return out.take()

    lists = asyncio.run(go())
    assert [m.body["i"] for m in lists["out"]] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [m.body["payload"]["i"] for m in lists["errors"]] == [4, 5, 6, 7]
    assert all("ConnectionError: lookup service down" in m.body["error"] for m in lists["errors"])


def test_end_to_end_unordered_with_inner_map(write_graph: Any, run: Any, tmp_path: Path) -> None:
    path = write_graph("""\
        version: 1
        name: par
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 3000, batch: 256, template: '{"n": msg.i, "i": msg.i}'}}
          work:
            type: parallel
            inputs: [src]
            config:
              operator: {type: ops_gated}
              concurrency: 4
              chunk: 50
              ordered: false
          check:
            type: parallel
            inputs: [work]
            config: {operator: {type: filter, config: {expr: 'msg.n % 3 != 0'}}, concurrency: 2}
          out: {type: file_sink, inputs: [check], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run(path)
    assert report.error is None and report.balanced
    assert report.totals() == {
        "entered": 3000,
        "delivered": 2000,
        "filtered": 1000,
        "dead_lettered": 0,
        "nacked": 0,
        "in_flight": 0,
    }
    assert report.stats["check"].filtered == 1000
    rows = [orjson.loads(x) for x in (tmp_path / "out.ndjson").read_bytes().splitlines()]
    assert sorted(r["n"] for r in rows) == [n for n in range(3000) if n % 3]
    assert {r["seen_by"] for r in rows} <= {f"work[{i}]" for i in range(4)} and Gated.peak <= 4


def test_offline_checks_of_the_inner_node(write_graph: Any) -> None:
    path = write_graph("""\
        version: 1
        name: par2
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 3}}
          a: {type: parallel, inputs: [src], config: {operator: {type: mapp}}}
          b: {type: parallel, inputs: [src], config: {operator: {type: map, config: {exprr: msg}}}}
          c: {type: parallel, inputs: [src], config: {operator: {type: map, config: {expr: 'msg +'}}}}
          d: {type: parallel, inputs: [src], config: {operator: {type: file_sink, config: {path: x}}}}
          e:
            type: parallel
            inputs: [src]
            config: {operator: {type: route, config: {routes: {hi: 'msg.i > 1'}}}}
          dead: {type: file_sink, inputs: [a, b, c, d, e.hi, e.nope], config: {path: dead.ndjson}}
    """)
    graph, diags = check_text(path.read_text(), str(path))
    assert graph is None
    got = [(d.code, d.line, d.col) for d in diags if d.severity == "error"]
    assert got == [
        ("E200", 6, 64),
        ("E202", 7, 77),
        ("E201", 7, 78),
        ("E203", 8, 90),
        ("E202", 9, 64),
        ("E211", 14, 54),
    ]
    msgs = {d.code: d.message for d in diags}
    assert "inner" not in msgs["E201"] and msgs["E201"].endswith(
        "operator.config.exprr: unknown field (did you mean 'expr'?)"
    )
    assert "did you mean 'map'" in msgs["E200"] and "ports: hi, unmatched, errors" in msgs["E211"]
    assert [d.code for d in diags if d.severity == "warning"] == ["W301"]  # e.unmatched
