"""JetStream source and sink against the real server at 127.0.0.1:4222 (unique streams per test)."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from jetstream_fixtures import NATS_URL, MemorySink, add_stream, connect, unique, wait_for
from jetstream_pipe import FAIL, Pipe, make_ctx

from engine.api import RetryPolicy
from engine.message import Msg
from engine.runtime.context import Resources
from operators.connectors.jetstream.sink import JetStreamSink, JetStreamSinkConfig
from operators.connectors.jetstream.source import (
    JetStreamSource,
    JetStreamSourceConfig,
    parse_ack_subject,
)

pytestmark = pytest.mark.services


def arun(coro):
    return asyncio.run(coro)


class Env:
    """A unique input stream IN (`<p>.in.>`) and output stream OUT (`<p>.out.>`), deleted afterwards."""

    def __init__(self, **out_kw):
        self.p = unique()
        self.out_kw = out_kw
        self.resources = Resources()

    async def __aenter__(self) -> Env:
        self.nc = await connect()
        self.js = self.nc.jetstream()
        await add_stream(self.js, self.p + "_IN", subjects=[self.p + ".in.>"])
        await add_stream(self.js, self.p + "_OUT", subjects=[self.p + ".out.>"], **self.out_kw)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.resources.close()
        for s in ("_IN", "_OUT"):
            try:
                await self.js.delete_stream(self.p + s)
            except Exception:  # noqa: BLE001
                pass
        await self.nc.close()

    async def publish(self, bodies: list[bytes], subject: str = "in.a") -> None:
        for b in bodies:
            await self.nc.publish(f"{self.p}.{subject}", b)
        await self.nc.flush()
        await wait_for(lambda: self._count(self.p + "_IN", len(bodies)), what="input stored")

    async def _count(self, stream: str, n: int) -> bool:
        return (await self.js.stream_info(stream)).state.messages >= n

    def source(self, **kw) -> JetStreamSource:
        cfg = JetStreamSourceConfig(connection="nats", stream=self.p + "_IN", durable="d", **kw)
        return JetStreamSource("src", cfg, make_ctx("src", NATS_URL, self.resources))

    def sink(self, **kw) -> JetStreamSink:
        kw.setdefault("subject", self.p + ".out.x")
        cfg = JetStreamSinkConfig(connection="nats", **kw)
        return JetStreamSink("snk", cfg, make_ctx("snk", NATS_URL, self.resources))

    async def out_bodies(self) -> list[dict]:
        """Every message stored in OUT, in order."""
        info = await self.js.stream_info(self.p + "_OUT")
        got = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            got.append(orjson.loads((await self.js.get_msg(self.p + "_OUT", seq)).data))
        return got

    async def consumer(self):
        return await self.js.consumer_info(self.p + "_IN", "d")


def test_exact_delivery_with_meta_and_no_pending():
    async def main() -> None:
        async with Env() as env:
            n = 2500
            await env.publish([orjson.dumps({"id": i}) for i in range(n)])
            seen: list[dict] = []

            def step(body, meta):
                if not seen:
                    seen.append(dict(meta))
                return {"id": body["id"], "twice": body["id"] * 2}

            src, snk = env.source(batch=300), env.sink()
            pipe = Pipe(src, snk, step)
            await pipe.run(lambda: snk.published >= n and src.acked >= n)
            out = await env.out_bodies()
            assert sorted(b["id"] for b in out) == list(range(n))
            assert all(b["twice"] == 2 * b["id"] for b in out)
            assert snk.duplicates == 0 and src.redeliveries == 0
            meta = seen[0]
            assert meta["stream"] == env.p + "_IN" and meta["consumer"] == "d"
            assert meta["subject"] == env.p + ".in.a" and meta["delivered"] == 1
            assert meta["seq"] == 1 and meta["consumer_seq"] == 1 and meta["timestamp"] > 1e9
            await wait_for(lambda: _settled(env), what="consumer fully acked")
            info = await env.consumer()
            assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0
            assert info.delivered.stream_seq == n

    arun(main())


async def _settled(env: Env) -> bool:
    info = await env.consumer()
    return info.num_ack_pending == 0 and info.ack_floor.stream_seq == info.delivered.stream_seq


def test_pulls_only_what_the_graph_has_room_for():
    async def main() -> None:
        async with Env() as env:
            await env.publish([orjson.dumps({"id": i}) for i in range(600)])
            src, snk = env.source(batch=50, max_ack_pending=100), env.sink()
            peak = [0]

            def step(body, meta):
                peak[0] = max(peak[0], pipe.tracker.in_flight)
                return body

            pipe = Pipe(src, snk, step)
            await pipe.run(lambda: src.acked >= 600)
            assert 0 < peak[0] <= 100
            assert (await env.consumer()).config.max_ack_pending == 100

    arun(main())


def test_poison_message_dead_lettered_after_max_deliver_then_termed():
    async def main() -> None:
        async with Env() as env:
            await env.publish([orjson.dumps({"id": i}) for i in range(20)])
            tries: dict[int, int] = {}

            def step(body, meta):
                tries[body["id"]] = tries.get(body["id"], 0) + 1
                return FAIL if body["id"] == 7 else body

            dead = MemorySink()
            src = env.source(batch=10, max_deliver=3, retry=RetryPolicy(initial_backoff=0.01, jitter=0))
            snk = env.sink()
            # the server's word that it was terminated (+TERM), not merely acknowledged
            terminated = await env.nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{env.p}_IN.d")
            pipe = Pipe(src, snk, step, dead=dead)
            await pipe.run(lambda: len(dead.got) == 1 and src.termed == 1 and snk.published == 19)
            assert tries[7] == 3 and all(tries[i] == 1 for i in range(20) if i != 7)
            env_body = dead.got[0].body
            assert env_body["attempt"] == 3 and env_body["meta"]["delivered"] == 3
            assert env_body["payload"] == {"id": 7} and "max_deliver 3" in env_body["error"]
            assert src.naked == 2
            await wait_for(lambda: _settled(env), what="poison message terminated")
            assert (await env.consumer()).num_ack_pending == 0
            advisory = orjson.loads((await terminated.next_msg(timeout=5)).data)
            assert (advisory["stream_seq"], advisory["deliveries"]) == (8, 3)  # {"id": 7}, the 8th stored

    arun(main())


def test_undecodable_message_goes_to_errors_and_is_acked_once_dead_lettered():
    async def main() -> None:
        async with Env() as env:
            await env.publish([b'{"id": 1}', b"not json", b'{"id": 3}'])
            dead = MemorySink()
            src, snk = env.source(), env.sink()
            pipe = Pipe(src, snk, None, dead=dead)
            await pipe.run(lambda: src.acked >= 3)
            assert [b["id"] for b in await env.out_bodies()] == [1, 3]
            assert len(dead.got) == 1 and "cannot decode as json" in dead.got[0].body["error"]
            assert dead.got[0].body["payload"] == "not json"
            await wait_for(lambda: _settled(env), what="all acked")

    arun(main())


def test_oversized_and_unroutable_messages_go_to_errors_with_reason():
    async def main() -> None:
        async with Env(max_msg_size=200) as env:
            await env.publish(
                [
                    orjson.dumps({"id": 1, "pad": ""}),
                    orjson.dumps({"id": 2, "pad": "x" * 500}),
                    orjson.dumps({"id": 3, "pad": "", "nowhere": True}),
                ]
            )
            dead = MemorySink()
            src = env.source()
            snk = env.sink(
                subject=None,
                subject_expr=f"has(msg.nowhere) ? 'jetstream_nostream.{env.p}' : '{env.p}.out.x'",
            )
            pipe = Pipe(src, snk, None, dead=dead)
            await pipe.run(lambda: src.acked >= 3)
            assert [b["id"] for b in await env.out_bodies()] == [1]
            reasons = {e.body["payload"]["id"]: e.body["error"] for e in dead.got}
            assert "maximum" in reasons[2] and "10054" in reasons[2]
            assert "no stream" in reasons[3]
            assert snk.rejected == 2 and snk.published == 1

    arun(main())


def test_payload_over_server_max_is_refused_before_sending():
    async def main() -> None:
        async with Env() as env:
            snk = env.sink()
            await snk.start()
            big = Msg({"pad": "x" * (2 << 20)}, {"id": "big"})
            small = Msg({"ok": 1}, {"id": "small"})
            failed = await snk.write([big, small])
            assert [m.meta["id"] for m, _ in failed] == ["big"] and "max_payload" in failed[0][1]
            assert snk.published == 1 and not snk._h.nc.is_closed
            await snk.stop()

    arun(main())


def test_sink_deduplicates_replays_by_msg_id_and_sets_headers():
    async def main() -> None:
        async with Env() as env:
            snk = env.sink(msg_id="string(msg.id)", headers={"X-Kind": "'order-' + string(msg.id)"})
            await snk.start()
            batch = [Msg({"id": i}, {}) for i in range(50)]
            assert await snk.write(batch) == []
            assert await snk.write(batch[:20]) == []  # a replay after a crash
            assert snk.published == 70 and snk.duplicates == 20
            bodies = await env.out_bodies()
            assert [b["id"] for b in bodies] == list(range(50))
            m = await env.js.get_msg(env.p + "_OUT", 3)
            assert m.headers["Nats-Msg-Id"] == "2" and m.headers["X-Kind"] == "order-2"
            await snk.stop()

    arun(main())


def test_default_msg_id_comes_from_source_identity():
    async def main() -> None:
        async with Env() as env:
            snk = env.sink()
            await snk.start()
            a = Msg({"v": 1}, {"stream": "S", "seq": 5})
            b = Msg({"v": 2}, {"stream": "S", "seq": 5})  # a second output of the same input
            assert await snk.write([a, b]) == []
            assert await snk.write([Msg({"v": 1}, {"stream": "S", "seq": 5})]) == []
            assert snk.duplicates == 1
            ids = [(await env.js.get_msg(env.p + "_OUT", s)).headers["Nats-Msg-Id"] for s in (1, 2)]
            assert ids == ["snk:S:5", "snk:S:5#1"]
            await snk.stop()

    arun(main())


def test_long_running_work_sends_in_progress():
    class SlowSink(MemorySink):
        async def write(self, batch):
            await asyncio.sleep(2.2)  # work that outlasts ack_wait (1s)
            self.got.extend(batch)

    async def main() -> None:
        async with Env() as env:
            await env.publish([orjson.dumps({"id": i}) for i in range(5)])
            src, snk = env.source(ack_wait=1.0), SlowSink()
            pipe = Pipe(src, snk, None)
            await pipe.run(lambda: src.acked >= 5)
            assert len(snk.got) == 5 and src.redeliveries == 0
            assert (await env.consumer()).num_redelivered == 0

    arun(main())


def test_parse_ack_subject_v1_and_v2():
    assert parse_ack_subject("$JS.ACK.S.C.2.10.7.1700000000000000000.3") == ("S", "C", 2, 10, 7, 1.7e9)
    assert parse_ack_subject("$JS.ACK.dom.hash.S.C.1.11.8.1700000000000000000.0.tok")[:5] == (
        "S",
        "C",
        1,
        11,
        8,
    )


@pytest.mark.parametrize("fast", [True, False])
def test_tap_gives_the_same_frames_on_the_fast_and_the_public_path(fast):
    from operators.connectors.jetstream.wire import Tap

    async def main() -> None:
        nc = await connect()
        p = unique()
        got: list = []
        try:
            tap = Tap(nc, fast=fast)
            assert tap.fast is fast
            done = asyncio.Event()

            def handler(subject, reply, data, headers, status):
                got.append((subject, reply, data, headers, status))
                if len(got) == 3:
                    done.set()

            await tap.subscribe(p + ".*", handler)
            await nc.publish(p + ".a", b"one", reply="r.1")
            await nc.publish(p + ".b", b"two", headers={"K": "v 1", "Nats-Msg-Id": "x"})
            await nc.publish("jetstream_nobody." + p, b"", reply=p + ".c")  # 503 no responders comes back
            await asyncio.wait_for(done.wait(), 5)
            assert got[0] == (p + ".a", "r.1", b"one", None, None)
            assert got[1] == (p + ".b", "", b"two", {"K": "v 1", "Nats-Msg-Id": "x"}, None)
            assert got[2][0] == p + ".c" and got[2][4] == "503"
        finally:
            await nc.close()

    arun(main())
