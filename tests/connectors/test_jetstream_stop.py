"""A stop of `jetstream_source` loses nothing to `ack_wait`, whenever it comes.

The stop comes in the middle of a burst, while pull requests are open on the server and it is filling
them: in-process (`Runner.stop()`), as SIGTERM to `streamdag run`, and as a run cut short (cancelled,
as a crash elsewhere does). Whatever the graph did not commit (what the open requests brought is
either committed before the run ends or naked) must reach the next run at once, not after
`ack_wait` (30 s here): the next run is given a few seconds to see every message.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, MemorySink, add_stream, connect, unique, wait_for
from jetstream_pipe import Pipe, make_ctx

from engine.compile.validate import load_graph
from engine.runtime.context import Resources
from engine.runtime.scheduler import Runner
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]
BURST = 3000
HAND_BACK = 6.0  # seconds the next run gets to see every message; ack_wait is 30 s


def _graph(tmp_path: Path, stream: str, out: str) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: stop_{stream.lower()}
        connections:
          nats: {{type: nats, url: "{NATS_URL}"}}
        nodes:
          src:
            type: jetstream_source
            config: {{connection: nats, stream: {stream}, durable: d, batch: 50, pull_requests: 2,
                      ack_wait: 30s, expires: 0.5s}}
          out: {{type: file_sink, inputs: [src], config: {{path: {out}.ndjson, mode: append, with_meta: true}}}}
    """))
    return path


def _seqs(path: Path) -> list[int]:
    """The sequences written so far: a line the sink is still writing (no newline yet) is left out."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # after the last newline: nothing, or a line being written
    return [orjson.loads(line)["meta"]["seq"] for line in lines if line.strip()]


async def _burst(nc, subject: str, n: int) -> None:
    """Publish `n` messages in small bursts (10 every millisecond or so), so that the stop falls while
    the server is filling the source's open pull requests."""
    for i in range(0, n, 10):
        for j in range(i, min(n, i + 10)):
            await nc.publish(subject, orjson.dumps({"n": j}))
        await nc.flush()
        await asyncio.sleep(0.001)


async def _rest_arrives_at_once(tmp_path: Path, stream: str, committed: list[int]) -> float:
    """Run the graph again until every message of the burst was committed once by one of the runs;
    returns how long that took. Fails if it takes longer than HAND_BACK (a stranded message)."""
    everything = set(range(1, BURST + 1))
    runner = Runner(load_graph(str(_graph(tmp_path, stream, "second"))))
    t0 = time.monotonic()
    task = asyncio.ensure_future(runner.run())
    try:
        await wait_for(lambda: set(committed).union(_seqs(tmp_path / "second.ndjson")) >= everything,
                       timeout=HAND_BACK, what="every message after the stop")
    except TimeoutError:
        pass
    took = time.monotonic() - t0
    runner.stop()
    report = await asyncio.wait_for(task, 10)
    assert report.error is None
    second = _seqs(tmp_path / "second.ndjson")
    missing = everything.difference(committed, second)
    assert not missing, f"{len(missing)} message(s) not back within {HAND_BACK}s: {sorted(missing)[:20]}"
    assert sorted(committed + second) == sorted(everything), "duplicated messages"
    return took


async def _in_process(path: Path) -> Callable[[], Awaitable[None]]:
    """Run the graph with `Runner`; the returned stop is `Runner.stop()` and the end of the run."""
    runner = Runner(load_graph(str(path)))
    task = asyncio.ensure_future(runner.run())

    async def stop() -> None:
        runner.stop()
        report = await asyncio.wait_for(task, 10)
        assert report.error is None and report.balanced

    return stop


async def _subprocess(path: Path) -> Callable[[], Awaitable[None]]:
    """Run the graph with `streamdag run`; the returned stop is SIGTERM and the process's clean exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "run", "-q", str(path), cwd=str(ROOT), stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})

    async def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()

    return stop


async def _stop_round(nc, work: Path, start: Callable[[Path], Awaitable[Any]], label: str) -> None:
    """Start the graph, stop it at some instant of a burst, then the rest must come at once."""
    js = nc.jetstream()
    work.mkdir()
    stream = unique("STOP").upper()
    await add_stream(js, stream, subjects=[stream + ".in"])
    try:
        stop = await start(_graph(work, stream, "first"))
        publisher = asyncio.ensure_future(_burst(nc, stream + ".in", BURST))
        at = random.randint(BURST // 20, BURST // 3)  # once messages flow through the graph
        await wait_for(lambda: len(_seqs(work / "first.ndjson")) >= at, timeout=20, what="burst flowing")
        t0 = time.monotonic()
        await stop()
        stopped = time.monotonic() - t0
        await publisher
        committed = _seqs(work / "first.ndjson")
        assert 0 < len(committed) < BURST
        took = await _rest_arrives_at_once(work, stream, committed)
        print(f"{label}: {len(committed)} committed, stopped in {stopped:.2f}s, the rest arrived in {took:.2f}s")
    finally:
        await js.delete_stream(stream)


def _rounds(tmp_path: Path, start: Callable[[Path], Awaitable[Any]], label: str, n: int) -> None:
    async def main() -> None:
        nc = await connect()
        try:
            for attempt in range(n):
                await _stop_round(nc, tmp_path / str(attempt), start, f"{label} {attempt}")
        finally:
            await nc.close()

    asyncio.run(main())


def test_stop_in_the_middle_of_a_burst_hands_every_message_back(tmp_path: Path) -> None:
    _rounds(tmp_path, _in_process, "Runner.stop()", 3)


def test_sigterm_to_streamdag_run_in_the_middle_of_a_burst_hands_every_message_back(tmp_path: Path) -> None:
    _rounds(tmp_path, _subprocess, "SIGTERM", 2)


def test_a_run_cut_short_still_hands_back_what_its_open_requests_bring(tmp_path: Path) -> None:
    """A crash elsewhere cancels the source's `run` mid-burst: `stop` waits for the open requests, then
    naks what they brought, so the next run gets every message not committed at once."""

    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        stream = unique("STOP").upper()
        await add_stream(js, stream, subjects=[stream + ".in"])
        resources = Resources()
        try:
            config = JetStreamSourceConfig(connection="nats", stream=stream, durable="d", batch=50,
                                           ack_wait=30.0, expires=0.5)
            src = JetStreamSource("src", config, make_ctx("src", NATS_URL, resources))
            sink = MemorySink()
            pipe = Pipe(src, sink)
            await src.start()
            tasks = [asyncio.ensure_future(t) for t in (pipe._work(), pipe._acks(), src.run(pipe.out))]
            publisher = asyncio.ensure_future(_burst(nc, stream + ".in", BURST))
            await wait_for(lambda: len(sink.got) >= BURST // 5, what="burst flowing")
            tasks[2].cancel()
            await asyncio.gather(tasks[2], return_exceptions=True)
            tracker = pipe.tracker
            await wait_for(lambda: not (tracker.in_flight or tracker.completed), what="acks of what was sent")
            for t in tasks[:2]:
                t.cancel()
            await src.stop()
            await publisher
            committed = [m.meta["seq"] for m in sink.got]
            assert 0 < len(committed) < BURST
            tmp_path.joinpath("w").mkdir()
            await _rest_arrives_at_once(tmp_path / "w", stream, committed)
        finally:
            await resources.close()
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(main())
