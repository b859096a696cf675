"""`streamdag run` with JetStream nodes: the example graph, and kill -9 of a running graph then a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, connect, unique, wait_for

from engine.compile.validate import check_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "graphs" / "jetstream_etl.yaml"
STREAMDAG = [sys.executable, "-m", "engine.cli"]


def test_example_graph_validates_offline():
    graph, diags = check_file(str(EXAMPLE), env={})
    assert graph is not None, diags
    assert not [d for d in diags if d.severity == "error"]
    streams = graph.connections["nats"]["streams"]
    assert streams["ORDERS"]["max_age"] == 7 * 86400 and streams["ORDERS"]["max_msg_size"] == 1 << 20


def _graph(p: str) -> str:
    """The example graph with this test's own stream, subject and consumer names."""
    text = EXAMPLE.read_text()
    for old, new in (
        ("ORDERS", p + "_IN"),
        ("CLEAN", p + "_OUT"),
        ("DEAD", p + "_DEAD"),
        ("orders.>", p + ".in.>"),
        ("clean.>", p + ".out.>"),
        ("dead.>", p + ".dead.>"),
        ("clean.orders", p + ".out.orders"),
        ("dead.orders", p + ".dead.orders"),
    ):
        text = text.replace(old, new)
    return text.replace("batch: 1000", "batch: 200").replace("ack_wait: 30s", "ack_wait: 3s")


async def _ids(js, stream: str) -> list:
    info = await js.stream_info(stream)
    return [
        orjson.loads((await js.get_msg(stream, s)).data).get("id")
        for s in range(info.state.first_seq, info.state.last_seq + 1)
    ]


@pytest.mark.services
def test_streamdag_run_killed_with_sigkill_then_restarted_delivers_everything_once(tmp_path):
    p = unique()
    graph = tmp_path / "graph.yaml"
    graph.write_text(_graph(p))
    env = {**os.environ, "NATS_URL": NATS_URL, "PYTHONPATH": str(ROOT)}
    n = 6000

    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        procs: list[asyncio.subprocess.Process] = []

        async def start() -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                *STREAMDAG, "run", "-q", str(graph), env=env, cwd=str(ROOT), stderr=subprocess.PIPE
            )
            procs.append(proc)
            return proc

        async def consumer():
            try:
                return await js.consumer_info(p + "_IN", "orders-etl")
            except Exception:  # noqa: BLE001 - not created yet
                return None

        try:
            first = await start()
            await wait_for(lambda: _exists(js, p + "_IN"), 20, "streams provisioned by streamdag run")
            for i in range(n):
                amount = "not a number" if i == 77 else i % 250  # id 77 fails in the map -> DEAD
                await nc.publish(
                    f"{p}.in.new", orjson.dumps({"id": i, "customer": f"c{i % 9}", "amount": amount})
                )
            await nc.flush()

            async def mid_flight() -> bool:
                c = await consumer()
                out = (await js.stream_info(p + "_OUT")).state.messages
                return c is not None and c.num_ack_pending > 0 and 0 < out < n - 1

            await wait_for(mid_flight, 30, "messages fetched but not yet acked")
            first.send_signal(signal.SIGKILL)
            await first.wait()
            at_kill = await consumer()
            unacked = at_kill.delivered.stream_seq - at_kill.ack_floor.stream_seq
            assert unacked > 0  # the killed run had fetched messages it never acked
            second = await start()

            async def done() -> bool:
                c = await consumer()
                return (
                    c is not None
                    and c.num_pending == 0
                    and c.num_ack_pending == 0
                    and c.delivered.stream_seq >= n
                )

            await wait_for(done, 60, "every message acked after the restart")
            second.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 0, err.decode()[-2000:]
            # max_ack_pending follows the graph's capacity (defaults.max_in_flight: 50000)
            assert (await consumer()).config.max_ack_pending == 50_000
            out = await _ids(js, p + "_OUT")
            assert sorted(out) == [i for i in range(n) if i != 77]  # all delivered, none twice
            dead = (await js.get_msg(p + "_DEAD", 1)).data
            assert (
                orjson.loads(dead)["payload"]["id"] == 77
                and (await js.stream_info(p + "_DEAD")).state.messages == 1
            )
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for s in ("_IN", "_OUT", "_DEAD"):
                try:
                    await js.delete_stream(p + s)
                except Exception:  # noqa: BLE001
                    pass
            await nc.close()

    asyncio.run(main())


async def _exists(js, stream: str) -> bool:
    try:
        await js.stream_info(stream)
        return True
    except Exception:  # noqa: BLE001
        return False
