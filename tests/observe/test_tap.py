"""`streamdag tap` on a live run: filter, count and rate limit through the metrics server; off unless
the run opts in; no subscriber left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.message import Msg
from engine.observe.tap import Tap
from tests.observe.conftest import RATE_GRAPH, LiveRun, start_run


@pytest.fixture(scope="module")
def tapped_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    run = start_run(tmp_path_factory.mktemp("tap"), RATE_GRAPH, "--tap")
    try:
        yield run
    finally:
        run.stop()


def _tap(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", "tap", url, *args], capture_output=True, text=True,
                          timeout=30)


def test_filter_and_count_as_ndjson(tapped_run: LiveRun) -> None:
    done = _tap(tapped_run.url, "price.out", "-n", "5", "--filter", "msg.i % 7 == 0", "--rate", "1000",
                "--format", "ndjson")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert len(lines) == 5
    assert all(rec["node"] == "price" and rec["port"] == "out" and rec["body"]["i"] % 7 == 0 for rec in lines)
    assert all(rec["meta"]["source"] == "gen" for rec in lines)


def test_a_sink_shows_what_reaches_it_in_a_readable_view(tapped_run: LiveRun) -> None:
    done = _tap(tapped_run.url, "out", "-n", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(" price.out  {\"i\":" in line for line in lines)


def test_rate_limit_spreads_the_sample(tapped_run: LiveRun) -> None:
    # 3,000 msg/s pass `gen`; at rate 20 the first 20 come at once (one second's burst), 10 more take 0.5 s
    t0 = time.monotonic()
    with urllib.request.urlopen(f"{tapped_run.url}/api/tap?node=gen&port=out&rate=20&limit=30", timeout=10) as resp:
        lines = resp.read().splitlines()
    assert len(lines) == 30
    assert time.monotonic() - t0 >= 0.4


def test_off_unless_the_run_opts_in(live_run: LiveRun) -> None:
    done = _tap(live_run.url, "price", "-n", "1")
    assert done.returncode == 1
    assert "tap is off" in done.stderr and "--tap" in done.stderr and done.stdout == ""


def test_unknown_node_or_port(tapped_run: LiveRun) -> None:
    done = _tap(tapped_run.url, "price.nope", "-n", "1")
    assert done.returncode == 1 and "node 'price' has no port 'nope' (ports: out, errors)" in done.stderr


def test_token_bucket_and_filter_unit() -> None:
    now = [0.0]
    tap = Tap(rate=10, filter_source="msg.i % 2 == 0", clock=lambda: now[0])
    batch = [Msg({"i": i}, {}) for i in range(100)]
    tap.offer("n", "out", batch)
    assert [json.loads(x)["body"]["i"] for x in tap.take()] == list(range(0, 20, 2))  # 10 tokens
    tap.offer("n", "out", batch)
    assert tap.take() == []  # no token left
    now[0] = 0.5
    tap.offer("n", "out", batch)
    assert len(tap.take()) == 5


def test_the_router_sees_no_tap_once_the_client_is_gone(tmp_path: Path) -> None:
    import asyncio

    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    path = tmp_path / "g.yaml"
    path.write_text("version: 1\nname: g\nnodes:\n  a: {type: generate, config: {count: 1}}\n"
                    "  b: {type: stdout, inputs: [a]}\n")

    async def main() -> None:
        runner = Runner(load_graph(str(path)))
        remove = runner.view.add_tap([("a", "out"), ("a", "errors")], Tap())
        assert set(runner._s.taps) == {("a", "out"), ("a", "errors")}
        remove()
        assert runner._s.taps == {}

    asyncio.run(main())
