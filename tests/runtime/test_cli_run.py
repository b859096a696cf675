"""`streamdag run` as a user runs it: a finite file-to-file run, and SIGTERM on an endless one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main


def test_file_to_file_run_with_bad_line_and_summary(write_graph, tmp_path: Path, capsys) -> None:
    (tmp_path / "in.ndjson").write_text('{"id": 1, "amount": 150.0}\nnot json\n{"id": 2, "amount": 5.0}\n\n'
                                       '{"id": 3, "amount": 99}\n')
    path = write_graph("""
        version: 1
        name: files
        nodes:
          read: {type: file_source, config: {path: in.ndjson}}
          price: {type: map, inputs: [read], config: {expr: '{"id": msg.id, "total": msg.amount * 1.2}'}}
          big: {type: filter, inputs: [price], config: {expr: 'msg.total > 100.0'}}
          out: {type: file_sink, inputs: [big], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [read.errors, price.errors, big.errors, out.errors], config: {path: dead.ndjson}}
    """)
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    assert "integrity OK: 4 in = 1 delivered + 1 filtered + 2 dead-lettered" in err
    assert [json.loads(x) for x in (tmp_path / "out.ndjson").read_text().splitlines()] == [{"id": 1, "total": 180.0}]
    dead = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
    dead.sort(key=lambda d: d["node"], reverse=True)  # no order between two nodes' dead letters
    assert [(d["node"], d["payload"]) for d in dead] == [("read", "not json"), ("price", {"id": 3, "amount": 99})]
    assert "invalid JSON" in dead[0]["error"] and "line 2" in dead[0]["error"]


def test_set_overrides_a_setting(write_graph, tmp_path: Path) -> None:
    path = write_graph("""
        version: 1
        name: gen
        defaults: {dead_letter: out}
        nodes:
          g: {type: generate, config: {count: 10}}
          out: {type: file_sink, inputs: [g], config: {path: out.ndjson}}
    """)
    assert main(["run", "-q", str(path), "--set", "nodes.g.config.count=25"]) == 0
    assert len((tmp_path / "out.ndjson").read_text().splitlines()) == 25


def test_sigterm_drains_acks_and_exits_zero(write_graph, tmp_path: Path) -> None:
    path = write_graph("""
        version: 1
        name: endless
        defaults: {dead_letter: dead}
        nodes:
          g: {type: generate, config: {rate: 20000, batch: 200}}
          m: {type: map, inputs: [g], config: {expr: '{"i": msg.i}'}}
          out: {type: file_sink, inputs: [m], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [g.errors], config: {path: dead.ndjson}}
    """)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(path)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = tmp_path / "out.ndjson"
    deadline = time.monotonic() + 30
    while (not out.exists() or out.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    written = [json.loads(x)["i"] for x in out.read_text().splitlines()]
    assert written == list(range(len(written))) and len(written) > 1000
    assert f"integrity OK: {len(written)} in = {len(written)} delivered" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_drains_with_sigint_inherited_ignored(write_graph, tmp_path: Path, sig: int) -> None:
    """A shell starts `streamdag run g.yaml &` with SIGINT ignored; SIGINT and SIGTERM must still drain
    (exit 0, the integrity line), both while it starts (after the graph's warnings are printed, before the
    event loop exists: SIGINT was lost, SIGTERM killed it with 143) and while it runs."""
    runs = {}
    for when in ("starting", "running"):
        path = write_graph(f"""
            version: 1
            name: endless
            nodes:
              g: {{type: generate, config: {{rate: 20000, batch: 200}}}}
              out: {{type: file_sink, inputs: [g], config: {{path: {when}.ndjson}}}}
        """, name=f"{when}.yaml")  # no dead letter: a W300 warning on stderr says compiling is done
        runs[when] = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", str(path)], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    starting = runs["starting"]
    assert starting.stderr is not None
    first = starting.stderr.readline()
    assert "W300 warning" in first, first
    starting.send_signal(sig)
    out = tmp_path / "running.ndjson"
    deadline = time.monotonic() + 30
    while (not out.exists() or out.stat().st_size < 2_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    runs["running"].send_signal(sig)
    for when, proc in runs.items():
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"{signal.Signals(sig).name} did not stop the run while {when}") from None
        assert proc.returncode == 0, (when, proc.returncode, err)
        written = len((tmp_path / f"{when}.ndjson").read_text().splitlines())
        assert f"integrity OK: {written} in = {written} delivered" in err, (when, err)
        assert written > 0 if when == "running" else written == 0
