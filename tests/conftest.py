"""Shared fixtures: graphs written to a temp folder and run in-process."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner, RunReport


@pytest.fixture
def write_graph(tmp_path: Path) -> Callable[[str], Path]:
    """Write a graph YAML (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "graph.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def run_graph(path: Path | str, overrides: list[str] | None = None, runner_hook: Callable[[Runner], Any] | None = None
              ) -> RunReport:
    """Run a graph to completion on a fresh event loop and return its report."""
    graph = load_graph(str(path), overrides=overrides)
    runner = Runner(graph)
    if runner_hook:
        runner_hook(runner)
    return asyncio.run(runner.run())


@pytest.fixture
def run() -> Callable[..., RunReport]:
    return run_graph
