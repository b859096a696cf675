"""End to end through `streamdag run`: generate -> window -> file_sink, no services needed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("engine.cli") is None, reason="runtime not merged yet"
)

GRAPH = """
version: 1
name: window_e2e
defaults:
  dead_letter: dead
nodes:
  orders:
    type: generate
    config:
      count: 300
      template: '{"i": msg.i, "user": "u" + string(msg.i % 3), "ts": double(msg.i) / 10.0}'
  per_user:
    type: window
    inputs: [orders]
    config:
      kind: tumbling
      size: 10s
      key: msg.user
      time: event
      timestamp: msg.ts
      idle_timeout: 1s
      aggregates:
        n: {op: count}
        total: {op: sum, expr: msg.i}
  windows:
    type: file_sink
    inputs: [per_user]
    config: {path: windows.ndjson}
  late:
    type: file_sink
    inputs: [per_user.late]
    config: {path: late.ndjson}
  dead:
    type: file_sink
    inputs: [orders.errors, per_user.errors]
    config: {path: dead.ndjson}
"""


def test_streamdag_run_writes_one_line_per_window(tmp_path: Path) -> None:
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "-q", str(graph)],
        check=False,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "windows.ndjson").read_text().splitlines()]
    got = {(w["key"], w["start"]): (w["count"], w["aggregates"]["total"]) for w in lines}
    expected_n: Counter[tuple[str, str]] = Counter()
    expected_total: Counter[tuple[str, str]] = Counter()
    for i in range(300):
        key = (f"u{i % 3}", f"1970-01-01T00:00:{(i // 100) * 10:02d}Z")
        expected_n[key] += 1
        expected_total[key] += i
    assert got == {k: (expected_n[k], expected_total[k]) for k in expected_n}
    assert len(lines) == 9 and not any(w["update"] for w in lines)
    assert (tmp_path / "late.ndjson").read_text() == ""
    assert (tmp_path / "dead.ndjson").read_text() == ""


STOPPED = """
version: 1
name: window_stop
defaults: {dead_letter: dead}
nodes:
  gen:
    type: generate
    config: {rate: 2000, batch: 50}
  hourly:
    type: window
    inputs: [gen]
    config: {kind: tumbling, size: 1h, on_drain: ON_DRAIN, aggregates: {n: {op: count}}}
  out:
    type: file_sink
    inputs: [hourly]
    config: {path: out.ndjson}
  dead:
    type: file_sink
    inputs: [gen.errors, hourly.errors]
    config: {path: dead.ndjson}
"""


@pytest.mark.parametrize("on_drain", ["flush", "redeliver"])
def test_a_stopped_graph_flushes_or_fails_the_open_window(tmp_path: Path, on_drain: str) -> None:
    import asyncio
    import time

    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    path = tmp_path / "graph.yaml"
    path.write_text(STOPPED.replace("ON_DRAIN", on_drain))
    runner = Runner(load_graph(str(path)))

    async def run_then_stop() -> Any:
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 30
        while runner.stats["hourly"].received < 100:  # the hour-long window holds items
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
        runner.stop()  # what SIGTERM does
        return await task

    report = asyncio.run(run_then_stop())
    totals = report.totals()
    held = runner.stats["hourly"].received
    assert report.balanced and totals["in_flight"] == 0 and totals["entered"] == held
    lines = (tmp_path / "out.ndjson").read_text().splitlines()
    if on_drain == "flush":
        assert sum(json.loads(line)["count"] for line in lines) == held and totals["delivered"] == held
    else:
        assert lines == [] and totals["nacked"] == held  # JetStream would redeliver them after a restart
