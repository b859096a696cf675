"""The progress bar of finite runs: rendered from a real run, and on a real terminal under tmux."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from engine.compile.validate import load_graph
from engine.observe.progress import known_total, show_progress
from engine.runtime.scheduler import Runner
from tests.observe.conftest import wait_for

FINITE = """
    version: 1
    name: finite
    nodes:
      gen: {type: generate, config: {count: 3000, rate: 6000, batch: 100}}
      out: {type: file_sink, inputs: [gen], config: {path: out.ndjson}}
      dead: {type: file_sink, inputs: [gen.errors, out.errors], config: {path: dead.ndjson}}
"""


def test_progress_counts_to_the_known_total(write_graph) -> None:
    runner = Runner(load_graph(str(write_graph(FINITE))))
    assert known_total(runner) == 3000
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)

    async def scenario() -> None:
        bar = asyncio.create_task(show_progress(runner, console, interval=0.05))
        report = await runner.run()
        bar.cancel()
        await asyncio.gather(bar, return_exceptions=True)
        assert report.balanced

    asyncio.run(scenario())
    text = buf.getvalue()
    assert "finite" in text and "3000/3000" in text and "100%" in text and "msg/s" in text
    assert "0/3000" in text or any(
        f"{n}/3000" in text for n in range(100, 3000, 100)
    )  # it moved along the way


def _screen_of_run(tmp_path: Path, graph: str) -> str:
    """Run the graph with `streamdag run` on a real terminal (tmux, 150x20); the screen at the end."""
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(graph))
    sock = f"operate-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "done"
    cmd = f"env -u COLUMNS -u LINES {sys.executable} -m engine.cli run {path}; touch {done}; sleep 30"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-x", "150", "-y", "20", cmd], check=True)
    try:
        wait_for(done.exists, 30, "the run to finish")
        return subprocess.run(
            ["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True, check=False
        ).stdout
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_run_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    screen = _screen_of_run(tmp_path, FINITE)
    assert "3000/3000" in screen and "100%" in screen, screen
    assert "integrity OK: 3000 in" in screen


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_log_line_during_the_progress_bar_gets_its_own_line(tmp_path: Path) -> None:
    """The first log line of a run on a terminal used to be written onto the bar's line."""
    screen = _screen_of_run(tmp_path, """
        version: 1
        name: finite
        defaults: {dead_letter: dead}
        nodes:
          gen: {type: generate, config: {count: 3000, rate: 6000, batch: 100}}
          m: {type: map, inputs: [gen], config: {expr: '{"x": 6 / (msg.i - 1500)}'}}
          out: {type: file_sink, inputs: [m], config: {path: out.ndjson}}
          dead: {type: file_sink, config: {path: dead.ndjson}}
    """)
    [logged] = [line for line in screen.splitlines() if "dead-lettered by m" in line]
    assert logged.split()[2] == "WARNING" and "/3000" not in logged and "msg/s" not in logged, screen
    assert "3000/3000" in screen
