"""http_source in real graphs run by the scheduler: file sink, dead letters, a stuck sink, validation."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.compile.validate import check_file, load_graph
from engine.runtime.scheduler import Runner, RunReport
from tests.connectors.http_harness import aio, post
from tests.runtime.test_nodes import GATES, RECORD  # registers test_sink (a sink held shut by a gate)

ROOT = Path(__file__).resolve().parents[2]


class Running:
    """`async with Running(path) as (runner, url):` runs the graph until the block ends, then stops it."""

    def __init__(self, path: Path):
        self.runner = Runner(load_graph(str(path)))

    async def __aenter__(self) -> tuple[Runner, str]:
        self.task = asyncio.ensure_future(self.runner.run())
        while "ingest" not in self.runner.nodes or self.runner.nodes["ingest"].address is None:
            await asyncio.sleep(0.005)
            assert not self.task.done(), self.task.result().error
        source = self.runner.nodes["ingest"]
        await source.listening.wait()
        host, port = source.address
        return self.runner, f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.runner.stop()
        self.report: RunReport = await asyncio.wait_for(self.task, 10)


def graph(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def read(path: Path) -> list[Any]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@aio
async def test_http_to_file_sink_through_the_scheduler(tmp_path: Path) -> None:
    path = graph(tmp_path, """
        version: 1
        name: http_file
        nodes:
          ingest: {type: http_source, config: {port: 0}}
          price:
            type: map
            inputs: [ingest]
            config: {expr: '{"id": msg.id, "total": double(msg.qty) * 2.5}'}
          out: {type: file_sink, inputs: [price], config: {path: out.ndjson, with_meta: true}}
          dead: {type: file_sink, inputs: [price.errors], config: {path: dead.ndjson}}
    """)
    run = Running(path)
    async with run as (_, url), aiohttp.ClientSession() as s:
        ingest = url + "/api/v1/data/ingest"
        assert (await post(s, ingest, b'{"id": 1, "qty": 2}', Idempotency_Key="r1"))[:2] == (
            202, {"accepted": 1, "ack": "committed"})
        st, body, _ = await post(s, ingest, b'{"id": 2, "qty": 1}\n{"id": 3, "qty": 4}\n',
                                 Content_Type="application/x-ndjson")
        assert (st, body["accepted"]) == (202, 2)
        # an item the map cannot price goes to the dead-letter file: committed there, so 202
        st, body, _ = await post(s, ingest, b'[{"id": 4, "qty": 1}, {"id": 5}]')
        assert (st, body["accepted"]) == (202, 2)
        assert (await post(s, ingest, b'{"id": 1, "qty": 2}', Idempotency_Key="r1"))[2]["Idempotent-Replayed"]
        assert (await post(s, ingest, b"{nope"))[0] == 400
    out = read(tmp_path / "out.ndjson")
    assert [(o["body"]["id"], o["body"]["total"]) for o in out] == [(1, 5.0), (2, 2.5), (3, 10.0), (4, 2.5)]
    assert out[0]["meta"]["id"] == "r1" and out[0]["meta"]["source"] == "ingest"
    dead = read(tmp_path / "dead.ndjson")
    assert [d["payload"]["id"] for d in dead] == [5]
    assert run.report.error is None and run.report.balanced


@pytest.mark.parametrize("limit", ["node", "graph"])
@aio
async def test_a_stuck_sink_gives_503_and_nothing_is_lost(tmp_path: Path, limit: str) -> None:
    """The bound is the node's `max_in_flight`, or the graph's `defaults.max_in_flight`."""
    RECORD.clear()
    GATES["http_stuck"] = asyncio.Event()
    node_cap = "max_in_flight: 40, " if limit == "node" else ""
    graph_cap = "" if limit == "node" else ", max_in_flight: 40"
    path = graph(tmp_path, f"""
        version: 1
        name: http_stuck
        defaults: {{capacity: 20{graph_cap}}}
        nodes:
          ingest: {{type: http_source, config: {{port: 0, {node_cap}retry_after: 3}}}}
          sink: {{type: test_sink, inputs: [ingest], config: {{gate: http_stuck}}, batch_size: 20}}
    """)
    results: dict[tuple[int, int], int] = {}
    run = Running(path)
    async with run as (runner, url), aiohttp.ClientSession() as s:
        ingest = url + "/api/v1/data/ingest"

        async def client(c: int) -> None:
            for r in range(8):
                items = [{"i": c * 1000 + r * 10 + k} for k in range(5)]
                st, _, hdrs = await post(s, ingest, orjson.dumps(items))
                results[(c, r)] = st
                if st == 503:
                    assert hdrs["Retry-After"] == "3"

        clients = [asyncio.ensure_future(client(c)) for c in range(12)]
        while list(results.values()).count(503) < 10:
            await asyncio.sleep(0.005)
        assert runner.nodes["ingest"].in_flight <= 40 + 5  # bounded while the sink is stuck (+1 request)
        GATES["http_stuck"].set()
        await asyncio.gather(*clients)
    ok = {k for k, v in results.items() if v == 202}
    assert set(results.values()) == {202, 503}
    got = sorted(b["i"] for b in RECORD["sink"]["bodies"])
    want = sorted(c * 1000 + r * 10 + k for c, r in ok for k in range(5))
    assert got == want  # every item of every 202 once, none of any 503
    assert run.report.balanced


def test_example_graph_and_the_open_listener_check(tmp_path: Path) -> None:
    g, diags = check_file(str(ROOT / "graphs" / "http_ingest.yaml"))
    assert g is not None and [d for d in diags if d.severity == "error"] == [], [d.format() for d in diags]
    bad = graph(tmp_path, """
        version: 1
        name: open
        nodes:
          ingest: {type: http_source, config: {host: 0.0.0.0, schema: evnt}}
          out: {type: file_sink, inputs: [ingest], config: {path: out.ndjson}}
        schemas:
          event: {type: object}
    """)
    _, diags = check_file(str(bad))
    found = sorted((d.code, d.line, d.col) for d in diags if d.severity == "error")
    assert found == [("E217", 5, 63), ("E250", 5, 46)], [d.format() for d in diags]  # at the values
