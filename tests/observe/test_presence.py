"""The worker registry in NATS KV: every worker of `run --workers` registers and heartbeats,
`streamdag workers G` lists them with their sum, `/api/stats` and `top --graph` see them all,
metrics carry the `worker` label, and a worker killed with kill -9 drops out after the TTL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.observe.presence import HEARTBEAT, TTL, list_workers, sum_totals
from tests.connectors.jetstream_fixtures import NATS_URL
from tests.workers_harness import Supervised

pytestmark = pytest.mark.services


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, timeout=60)


def _workers(graph: Path) -> dict[str, Any]:
    """What `streamdag workers G --format json` prints (in-process, to poll cheaply)."""
    records = asyncio.run(list_workers({"url": NATS_URL}, graph.read_text().split("name: ", 1)[1].split()[0]))
    return {"workers": records, "sum": sum_totals(records)}


def test_workers_register_heartbeat_and_leave(tmp_path: Path) -> None:
    name = f"presence_{uuid.uuid4().hex[:8]}"
    graph = tmp_path / "g.yaml"
    graph.write_text(f"""\
version: 1
name: {name}
connections:
  nats: {{type: nats, url: "{NATS_URL}"}}
defaults: {{dead_letter: dead}}
nodes:
  gen: {{type: generate, config: {{rate: 2000, batch: 100}}}}
  out: {{type: drop, inputs: [gen]}}
  dead: {{type: drop, inputs: [gen.errors]}}
""")
    run = Supervised(graph, 2, "--metrics-port", "0")
    try:
        run.wait_until(lambda: len(_workers(graph)["workers"]) == 2, 30, "two registered workers")
        run.wait_until(lambda: _workers(graph)["sum"]["entered"] > 0, 10, "a heartbeat with counts")
        proc = _cli("workers", str(graph), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        listed = json.loads(proc.stdout)
        pids = {pid for _, pid in run.started()}
        assert {w["pid"] for w in listed["workers"]} == pids
        assert sorted((w["index"], w["count"]) for w in listed["workers"]) == [(0, 2), (1, 2)]
        assert all(w["graph"] == name and w["version"] and w["metrics"].startswith("http://") for w in listed["workers"])
        assert listed["sum"]["entered"] == sum(w["totals"]["entered"] for w in listed["workers"]) > 0

        first = listed["workers"][0]
        with urllib.request.urlopen(first["metrics"] + "/metrics", timeout=5) as resp:
            assert f'worker="{first["worker"]}"' in resp.read().decode()
        with urllib.request.urlopen(first["metrics"] + "/api/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
        assert stats["worker"]["id"] == first["worker"]
        assert {w["worker"] for w in stats["workers"]["list"]} == {w["worker"] for w in listed["workers"]}

        text = _cli("top", "--graph", str(graph), "--once", "--interval", "0.5")
        assert text.returncode == 0 and "2 workers" in text.stdout, text.stdout + text.stderr

        killed = run.kill_worker(1)
        run.wait_until(lambda: len(run.started()) == 3, 30, "worker 1 restarted")
        t0 = time.monotonic()
        run.wait_until(lambda: killed not in {w["pid"] for w in _workers(graph)["workers"]}, TTL + HEARTBEAT + 5,
                       "the killed worker's record to expire")
        assert time.monotonic() - t0 <= TTL + HEARTBEAT + 5
        run.wait_until(lambda: run.started()[-1][1] in {w["pid"] for w in _workers(graph)["workers"]}, 30,
                       "the restarted worker registered")
    finally:
        run.signal()
        code, _, _ = run.finish()
    assert code == 0, run.text
    assert _workers(graph)["workers"] == []  # a clean stop deregisters at once
