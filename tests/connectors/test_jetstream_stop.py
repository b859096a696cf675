"""A graceful stop of `jetstream_source` hands back every message it received or was about to receive.

The stop comes in the middle of a burst, while pull requests are open on the server and it is filling
them. Whatever the graph did not commit must reach the next run at once (naked), not after `ack_wait`
(30 s here): the next run is given a few seconds to see every message, far below `ack_wait`.
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
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, add_stream, connect, unique, wait_for  # noqa: E402

from engine.compile.validate import load_graph  # noqa: E402
from engine.runtime.scheduler import Runner  # noqa: E402

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
    if not path.exists():
        return []
    return [orjson.loads(line)["meta"]["seq"] for line in path.read_bytes().splitlines() if line.strip()]


async def _burst(nc, subject: str, n: int) -> None:  # noqa: ANN001
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


def test_stop_in_the_middle_of_a_burst_hands_every_message_back(tmp_path: Path) -> None:
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        try:
            for attempt in range(3):
                stream = unique("STOP").upper()
                await add_stream(js, stream, subjects=[stream + ".in"])
                try:
                    work = tmp_path / str(attempt)
                    work.mkdir()
                    runner = Runner(load_graph(str(_graph(work, stream, "first"))))
                    task = asyncio.ensure_future(runner.run())
                    publisher = asyncio.ensure_future(_burst(nc, stream + ".in", BURST))
                    # stop at some instant of the burst, once messages flow through the graph
                    at = random.randint(50, BURST // 2)
                    await wait_for(lambda: len(_seqs(work / "first.ndjson")) >= at, what="burst flowing")
                    t0 = time.monotonic()
                    runner.stop()
                    report = await asyncio.wait_for(task, 10)
                    stopped = time.monotonic() - t0
                    await publisher
                    assert report.error is None and report.balanced
                    committed = _seqs(work / "first.ndjson")
                    assert 0 < len(committed) < BURST
                    took = await _rest_arrives_at_once(work, stream, committed)
                    print(f"stop {attempt}: {len(committed)} committed, stop took {stopped:.2f}s, "
                          f"the rest arrived in {took:.2f}s")
                finally:
                    await js.delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(main())


async def _sigterm_round(js, nc, tmp_path: Path, env: dict[str, str]) -> None:  # noqa: ANN001
    """`streamdag run` in a subprocess, SIGTERM while the burst flows, then the rest must come at once."""
    tmp_path.mkdir()
    stream = unique("STOP").upper()
    await add_stream(js, stream, subjects=[stream + ".in"])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.cli", "run", "-q", str(_graph(tmp_path, stream, "first")),
            env=env, cwd=str(ROOT), stderr=subprocess.PIPE)
        publisher = asyncio.ensure_future(_burst(nc, stream + ".in", BURST))
        at = random.randint(BURST // 10, BURST // 3)
        await wait_for(lambda: len(_seqs(tmp_path / "first.ndjson")) >= at, timeout=20,
                       what="burst flowing through the subprocess")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        stopped = time.monotonic() - t0
        await publisher
        assert proc.returncode == 0, err.decode()
        committed = _seqs(tmp_path / "first.ndjson")
        assert 0 < len(committed) < BURST
        took = await _rest_arrives_at_once(tmp_path, stream, committed)
        print(f"SIGTERM: {len(committed)} committed, exit {stopped:.2f}s after the signal, "
              f"the rest arrived in {took:.2f}s")
    finally:
        await js.delete_stream(stream)


def test_sigterm_to_streamdag_run_in_the_middle_of_a_burst_hands_every_message_back(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    async def main() -> None:
        nc = await connect()
        try:
            for attempt in range(2):
                await _sigterm_round(nc.jetstream(), nc, tmp_path / str(attempt), env)
        finally:
            await nc.close()

    asyncio.run(main())
