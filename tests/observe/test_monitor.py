"""The monitor in-process: lag and connection hooks, connection lost/regained lines, integrity alarm."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine.compile.validate import load_graph
from engine.observe.metrics import render_metrics
from engine.observe.session import Observers
from engine.runtime.scheduler import Runner
from tests.observe.nodes import STATE

GRAPH = """
    version: 1
    name: hooks
    nodes:
      src: {type: observe_hook_source, config: {count: 25}}
      out: {type: file_sink, inputs: [src], config: {path: out.ndjson}}
      dead: {type: file_sink, inputs: [src.errors, out.errors], config: {path: dead.ndjson}}
"""


async def until(cond: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.fixture(autouse=True)
def _state() -> None:
    STATE.update(lag=7, up=True)


def test_lag_and_connection_hooks(write_graph, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamdag")
    runner = Runner(load_graph(str(write_graph(GRAPH))))

    async def scenario() -> str:
        obs = await Observers.start(runner, metrics_port=0, interval=0.02)
        run = asyncio.create_task(runner.run())
        mon = obs.monitor
        await until(
            lambda: mon.lag.get("src") == 7 and runner.trackers and runner.trackers["src"].delivered == 25,
            "lag and delivery",
        )
        STATE.update(up=False, lag=3)
        await until(lambda: mon.connections.get(("src", "primary")) is False and mon.lag["src"] == 3, "lost")
        down = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
        STATE["up"] = True
        await until(lambda: mon.connections.get(("src", "primary")) is True, "regained")
        runner.stop()
        report = await run
        await obs.close()
        assert report.balanced and report.error is None
        return down

    text = asyncio.run(scenario())
    assert 'streamdag_connection_up{connection="primary",graph="hooks",node="src"} 0.0' in text
    assert 'streamdag_source_lag_messages{graph="hooks",source="src"} 3.0' in text
    lost, regained = events(caplog, "connection_lost"), events(caplog, "connection_regained")
    assert len(lost) == 1 and lost[0].levelno == logging.ERROR and lost[0].node == "src"  # type: ignore[attr-defined]
    assert len(regained) == 1 and lost[0].created <= regained[0].created
    assert len(events(caplog, "drain_started")) == 1 and len(events(caplog, "drain_finished")) == 1


def test_integrity_alarm_raises_and_clears(write_graph, caplog: pytest.LogCaptureFixture) -> None:
    """A connector that counts a message it never tracks (simulated on the tracker) trips the alarm."""
    caplog.set_level(logging.INFO, logger="streamdag")
    runner = Runner(load_graph(str(write_graph(GRAPH))))

    async def scenario() -> tuple[str, str]:
        obs = await Observers.start(runner, metrics_port=0, interval=0.02)
        run = asyncio.create_task(runner.run())
        await until(lambda: runner.trackers and runner.trackers["src"].delivered == 25, "delivery")
        tracker = runner.trackers["src"]
        tracker.entered += 1  # one message counted in but neither settled nor in flight: lost
        await until(lambda: obs.monitor.mismatched == ["src"], "the alarm")
        bad = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
        tracker.entered -= 1
        await until(lambda: not obs.monitor.mismatched, "the alarm to clear")
        good = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
        runner.stop()
        await run
        await obs.close()
        return bad, good

    bad, good = asyncio.run(scenario())
    assert 'streamdag_integrity_mismatch{graph="hooks",source="src"} 1.0' in bad
    assert 'streamdag_integrity_unaccounted{graph="hooks",source="src"} 1.0' in bad
    assert 'streamdag_integrity_mismatch{graph="hooks",source="src"} 0.0' in good
    mismatch = events(caplog, "integrity_mismatch")
    assert len(mismatch) == 1 and mismatch[0].levelno == logging.ERROR
    assert mismatch[0].unaccounted == 1 and mismatch[0].entered == 26  # type: ignore[attr-defined]
    assert "26 in != 25 delivered" in mismatch[0].getMessage()
    assert len(events(caplog, "integrity_restored")) == 1


def test_a_failing_hook_does_not_stop_the_run(write_graph) -> None:
    STATE["lag"] = "not a number"
    runner = Runner(load_graph(str(write_graph(GRAPH))))

    async def scenario() -> None:
        obs = await Observers.start(runner, metrics_port=0, interval=0.02)
        run = asyncio.create_task(runner.run())
        await until(lambda: obs.monitor.passes >= 3 and runner.trackers["src"].delivered == 25, "passes")
        assert "src" not in obs.monitor.lag
        runner.stop()
        assert (await run).balanced
        await obs.close()

    asyncio.run(scenario())


STALL = """
    version: 1
    name: stall
    nodes:
      src: {type: generate, config: {count: 40, batch: 40}}
      held: {type: test_sink, inputs: [src], config: {gate: operate_stall}}
      dead: {type: file_sink, inputs: [src.errors, held.errors], config: {path: dead.ndjson}}
"""


def test_stalled_seconds_grow_while_nothing_settles(write_graph) -> None:
    from tests.runtime.test_nodes import GATES, RECORD

    RECORD.clear()
    runner = Runner(load_graph(str(write_graph(STALL))))

    async def scenario() -> str:
        GATES["operate_stall"] = asyncio.Event()
        obs = await Observers.start(runner, metrics_port=0, interval=0.02)
        run = asyncio.create_task(runner.run())
        await until(lambda: obs.monitor.stalled.get("src", 0) > 0.2, "the stall gauge to grow")
        text = render_metrics(obs.server.registry).decode()  # type: ignore[union-attr]
        GATES["operate_stall"].set()
        await until(
            lambda: runner.trackers["src"].delivered == 40 and obs.monitor.stalled["src"] == 0, "recovery"
        )
        assert (await run).balanced
        await obs.close()
        return text

    text = asyncio.run(scenario())
    line = next(
        x for x in text.splitlines() if x.startswith('streamdag_source_stalled_seconds{graph="stall"')
    )
    assert float(line.split()[-1]) > 0.2
    assert 'streamdag_source_in_flight{graph="stall",source="src"} 40.0' in text
