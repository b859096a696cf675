"""The progress bar of `streamdag run` on a terminal (rich): settled messages out of the sources'
announced total when every source knows it (`Source.total()`), else a running count and rate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engine.runtime.state import as_view

__all__ = ["known_total", "show_progress"]


def known_total(runner: Any) -> int | None:
    runner = as_view(runner)
    """The messages a finite run will read, if every source says; None otherwise."""
    totals = [runner.nodes[nid].total() for nid, rn in runner.graph.nodes.items() if rn.kind == "source"]
    return sum(totals) if totals and all(t is not None for t in totals) else None


def _settled(runner: Any) -> int:
    return sum(t.entered - t.in_flight for t in list(runner.trackers.values()))


async def show_progress(runner: Any, console: Console | None = None, interval: float = 0.25) -> None:
    runner = as_view(runner)
    """Refresh until cancelled; the last state stays on screen."""
    console = console or Console(stderr=True)
    total = known_total(runner)
    columns: list[Any] = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn(), TaskProgressColumn()]
    else:
        columns += [TextColumn("{task.completed:,.0f} settled")]
    columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    t0 = time.perf_counter()
    with Progress(*columns, console=console, transient=False, refresh_per_second=4) as progress:
        task = progress.add_task(runner.graph.spec.name, total=total, rate="")

        def update() -> None:
            done = _settled(runner)
            rate = done / max(1e-9, time.perf_counter() - t0)
            progress.update(task, completed=done, rate=f"{rate:,.0f} msg/s")

        try:
            while True:
                update()
                await asyncio.sleep(interval)
        finally:
            update()
