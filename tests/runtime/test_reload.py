"""Reload pieces that need no service: what changed between two graphs, and `--watch` with `--workers`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.compile.validate import load_graph
from engine.reload import graph_change

BASE = """\
version: 1
name: g
nodes:
  a: {type: generate, config: {count: 1}}
  b: {type: map, inputs: [a], config: {expr: 'msg'}}
  c: {type: stdout, inputs: [b]}
"""


def test_graph_change_names_added_removed_changed_and_settings(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(BASE)
    new.write_text(BASE.replace("expr: 'msg'", "expr: '{\"x\": 1}'").replace("  c: {type: stdout, inputs: [b]}\n",
                   "  d: {type: stdout, inputs: [b]}\ndefaults: {batch_size: 10}\n"))
    change = graph_change(load_graph(str(old)), load_graph(str(new)))
    assert (change.added, change.removed, change.changed, change.settings) == (("d",), ("c",), ("b",), ("defaults",))
    assert change.describe() == "added: d; removed: c; changed: b; settings changed: defaults"
    assert not graph_change(load_graph(str(old)), load_graph(str(old)))


def test_watch_is_refused_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(BASE)
    assert main(["run", str(path), "--watch", "--workers", "2"]) == 1
    assert "--watch is not supported with --workers > 1" in capsys.readouterr().err


def test_sighup_reloads_without_watch(tmp_path: Path) -> None:
    import signal

    from tests.observe.conftest import RATE_GRAPH, start_run, wait_for

    run = start_run(tmp_path, RATE_GRAPH)
    try:
        path = tmp_path / "graph.yaml"
        path.write_text(path.read_text().replace("* 1.2", "* 1.5"))
        run.proc.send_signal(signal.SIGHUP)
        ev = wait_for(lambda: next((e for e in run.events() if e.get("event") == "reload"), None), 15, "the reload")
        assert ev["changed"] == ["price"]
        wait_for(lambda: sum(e.get("event") == "drain_finished" for e in run.events()) == 1, 15, "the first drain")
        assert run.proc.poll() is None  # the new graph runs
        assert run.stop() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)


def test_a_supervisor_ignores_sighup_and_says_why(tmp_path: Path) -> None:
    import signal

    from tests.workers_harness import Supervised

    path = tmp_path / "g.yaml"
    path.write_text(BASE.replace("count: 1", "rate: 500"))
    run = Supervised(path, 2)
    run.wait_until(lambda: len(run.started()) == 2, 30, "both workers")
    run.signal(signal.SIGHUP)
    run.wait_until(lambda: any(e.get("event") == "reload_refused" for e in run.events), 15, "the refusal")
    assert run.proc.poll() is None and len(run.started()) == 2  # nobody died or restarted
    run.signal()
    code, _, integrity = run.finish()
    assert code == 0 and integrity.startswith("integrity OK")
