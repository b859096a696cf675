"""A real `streamdag run --metrics-port 0` in a subprocess, and waiting on conditions (no sleeps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RATE_GRAPH = """
    version: 1
    name: observed
    defaults: {capacity: 4000}
    nodes:
      gen:
        type: generate
        config: {rate: 3000, batch: 100}
      price:
        type: map
        inputs: [gen]
        config: {expr: '{"i": msg.i, "total": double(msg.i % 250) * 1.2}'}
      out:
        type: file_sink
        inputs: [price]
        config: {path: out.ndjson}
      dead:
        type: file_sink
        inputs: [gen.errors, price.errors, out.errors]
        config: {path: dead.ndjson}
"""


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


@dataclass
class LiveRun:
    """A running `streamdag run` with its stderr collected line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    port: int = 0
    dir: Path = Path(".")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def start_run(graph_dir: Path, yaml_text: str, *extra: str) -> LiveRun:
    path = graph_dir / "graph.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(path),
            "--metrics-port",
            "0",
            "--log-format",
            "json",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=graph_dir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    run = LiveRun(proc, dir=graph_dir)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            run.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()

    def listening() -> int | None:
        for ev in run.events():
            if ev.get("event") == "metrics_listening":
                return int(ev["port"])
        if proc.poll() is not None:
            raise AssertionError("run exited early:\n" + "\n".join(run.lines))
        return None

    run.port = wait_for(listening, 20, "the metrics server to listen")
    return run


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    """One rate-limited, unbounded graph for a module's tests to scrape; stopped at the end."""
    run = start_run(tmp_path_factory.mktemp("live"), RATE_GRAPH)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)
