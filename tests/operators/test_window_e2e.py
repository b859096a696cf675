"""End to end through `streamdag run`: generate -> window -> file_sink, no services needed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

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
