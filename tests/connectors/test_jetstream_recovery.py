"""Crash and restart: kill -9 of a running pipeline between fetch and ack; nats-server restart mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import orjson
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, PrivateServer, add_stream, connect, unique, wait_for
from jetstream_pipe import Pipe, make_ctx

from engine.runtime.context import Resources
from operators.connectors.jetstream.sink import JetStreamSink, JetStreamSinkConfig
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig

pytestmark = pytest.mark.services
CHILD = os.path.join(os.path.dirname(__file__), "jetstream_crash_child.py")


async def stored_ids(js, stream: str) -> list[int]:
    info = await js.stream_info(stream)
    return [
        orjson.loads((await js.get_msg(stream, s)).data)["id"]
        for s in range(info.state.first_seq, info.state.last_seq + 1)
    ]


def test_kill_9_between_fetch_and_ack_then_restart_loses_and_duplicates_nothing():
    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p + "_IN", subjects=[p + ".in.>"])
        await add_stream(js, p + "_OUT", subjects=[p + ".out.>"])
        n = 3000
        try:
            for i in range(n):
                await nc.publish(f"{p}.in.a", orjson.dumps({"id": i}))
            await nc.flush()
            args = [sys.executable, CHILD, NATS_URL, p + "_IN", p + ".out.x", str(n)]
            child = await asyncio.create_subprocess_exec(*args, "3", stdout=subprocess.PIPE)
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line.strip() == b"holding"
            info = await js.consumer_info(p + "_IN", "d")
            assert info.num_ack_pending > 0  # fetched, published, not acked
            published_before = (await js.stream_info(p + "_OUT")).state.messages
            assert published_before > 0
            child.send_signal(signal.SIGKILL)
            await child.wait()
            again = await asyncio.create_subprocess_exec(*args, "0", stdout=subprocess.PIPE)
            out, _ = await asyncio.wait_for(again.communicate(), 60)
            assert again.returncode == 0
            stats = json.loads(out.decode().strip().splitlines()[-1])
            assert stats["redeliveries"] > 0 and stats["duplicates"] > 0  # replays were deduplicated
            ids = await stored_ids(js, p + "_OUT")
            assert sorted(ids) == list(range(n))  # every message once
            await wait_for(lambda: _all_acked(js, p + "_IN"), what="consumer fully acked")
        finally:
            for s in ("_IN", "_OUT"):
                await js.delete_stream(p + s)
            await nc.close()

    asyncio.run(main())


async def _all_acked(js, stream: str, n: int = 0) -> bool:
    try:
        info = await js.consumer_info(stream, "d")
    except Exception:  # noqa: BLE001 - server restarting
        return False
    return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq >= n


def test_server_restart_mid_run_resumes_without_loss_or_duplicates():
    server = PrivateServer()
    server.start()

    async def main() -> None:
        await server.wait_ready()
        nc = await connect(server.url)
        js = nc.jetstream()
        p = unique()
        await add_stream(js, p + "_IN", subjects=[p + ".in.>"])
        await add_stream(js, p + "_OUT", subjects=[p + ".out.>"])
        n = 2000
        for i in range(n // 2):
            await js.publish(f"{p}.in.a", orjson.dumps({"id": i}))
        resources = Resources()
        src = JetStreamSource(
            "src",
            JetStreamSourceConfig(
                connection="nats", stream=p + "_IN", durable="d", batch=100, ack_wait=2.0, expires=1.0
            ),
            make_ctx("src", server.url, resources),
        )
        snk = JetStreamSink(
            "snk",
            JetStreamSinkConfig(connection="nats", subject=p + ".out.x", ack_timeout=1.0),
            make_ctx("snk", server.url, resources),
        )
        restarted = asyncio.Event()

        def step(body, meta):
            if body["id"] == 300 and not restarted.is_set():
                restarted.set()
                server.proc.send_signal(signal.SIGKILL)
                server.proc.wait(5)
                server.start()
            return body

        pipe = Pipe(src, snk, step, limit=500)

        async def feed_rest() -> None:
            await restarted.wait()
            await server.wait_ready()
            await wait_for(lambda: nc.is_connected, what="test client reconnected")
            for i in range(n // 2, n):
                while True:
                    try:
                        await js.publish(
                            f"{p}.in.a", orjson.dumps({"id": i}), headers={"Nats-Msg-Id": str(i)}
                        )
                        break
                    except Exception:  # noqa: BLE001 - JetStream not ready yet after the restart
                        await asyncio.sleep(0.1)

        feeder = asyncio.ensure_future(feed_rest())
        finished = asyncio.Event()

        async def watch() -> None:
            await feeder
            await wait_for(lambda: _all_acked(js, p + "_IN", n), timeout=50, what="consumer fully acked")
            finished.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await pipe.run(finished.is_set, timeout=60)
            ids = await stored_ids(js, p + "_OUT")
            assert sorted(set(ids)) == list(range(n))
            assert len(ids) == n  # replays after the restart were deduplicated by Nats-Msg-Id
            assert pipe.retries > 0 or src.redeliveries > 0
        finally:
            feeder.cancel()
            watcher.cancel()
            await resources.close()
            await nc.close()

    try:
        asyncio.run(main())
    finally:
        server.cleanup()
