"""JetStream -> map -> JetStream: streamdag's connectors beside a plain nats-py loop, same run, same work.

Both read N JSON messages from a stream through a durable pull consumer, add a field, publish the
result with `Nats-Msg-Id` to a second stream, and ack each input only after its PubAck.
Run: `python -m pytest benchmarks/bench_jetstream.py -s` (or `python benchmarks/bench_jetstream.py [N]`).
Figures are noisy on a shared 2-core machine: client and server share the cores with other work.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import nats
import orjson
from nats.js.api import ConsumerConfig, StreamConfig

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "connectors"))

from jetstream_pipe import Pipe, make_ctx  # noqa: E402

from engine.runtime.context import Resources  # noqa: E402
from operators.connectors.jetstream.sink import JetStreamSink, JetStreamSinkConfig  # noqa: E402
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig  # noqa: E402

URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
BODY = {"id": 0, "customer": "c-1234", "amount": 12.5, "items": [1, 2, 3], "note": "x" * 40}


def enrich(body: dict) -> dict:
    return {**body, "total": body["amount"] * 1.2}


async def _setup(nc, n: int) -> str:  # noqa: ANN001
    js = nc.jetstream()
    p = f"jetstream_bench_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=p + "_IN", subjects=[p + ".in.>"]))
    await js.add_stream(StreamConfig(name=p + "_OUT", subjects=[p + ".out.>"]))
    for i in range(n):
        await nc.publish(p + ".in.a", orjson.dumps({**BODY, "id": i}))
    await nc.flush()
    while (await js.stream_info(p + "_IN")).state.messages < n:
        await asyncio.sleep(0.05)
    return p


async def _teardown(nc, p: str) -> None:  # noqa: ANN001
    js = nc.jetstream()
    for s in ("_IN", "_OUT"):
        await js.delete_stream(p + s)


async def plain_loop(n: int, batch: int = 1000) -> float:
    """nats-py as documented: fetch(batch), publish_async per message, await PubAcks, ack per message."""
    nc = await nats.connect(URL)
    p = await _setup(nc, n)
    js = nc.jetstream(publish_async_max_pending=batch)
    try:
        sub = await js.pull_subscribe(
            p + ".in.>", durable="plain", stream=p + "_IN", config=ConsumerConfig(max_ack_pending=4 * batch)
        )
        t0 = time.perf_counter()
        done = 0
        while done < n:
            msgs = await sub.fetch(batch, timeout=5)
            futs = []
            for m in msgs:
                out = orjson.dumps(enrich(orjson.loads(m.data)))
                md = m.metadata
                futs.append(
                    await js.publish_async(
                        p + ".out.x", out, headers={"Nats-Msg-Id": f"{md.stream}:{md.sequence.stream}"}
                    )
                )
            await asyncio.gather(*futs)
            for m in msgs:
                await m.ack()
            done += len(msgs)
        await nc.flush()
        return n / (time.perf_counter() - t0)
    finally:
        await _teardown(nc, p)
        await nc.close()


async def streamdag_pipeline(n: int, batch: int = 1000) -> float:
    """The same work through jetstream_source -> map -> jetstream_sink with the engine's ack contract."""
    nc = await nats.connect(URL)
    p = await _setup(nc, n)
    resources = Resources()
    try:
        src = JetStreamSource(
            "src",
            JetStreamSourceConfig(connection="nats", stream=p + "_IN", durable="sd", batch=batch),
            make_ctx("src", URL, resources),
        )
        snk = JetStreamSink(
            "snk",
            JetStreamSinkConfig(connection="nats", subject=p + ".out.x", max_in_flight=batch),
            make_ctx("snk", URL, resources),
        )
        pipe = Pipe(src, snk, lambda body, meta: enrich(body), limit=4 * batch)
        t0 = time.perf_counter()
        await pipe.run(lambda: src.acked >= n, timeout=300)
        rate = n / (time.perf_counter() - t0)
        assert snk.published == n
        return rate
    finally:
        await resources.close()
        await _teardown(nc, p)
        await nc.close()


def measure(n: int) -> dict[str, float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    plain = asyncio.run(plain_loop(n))
    engine = asyncio.run(streamdag_pipeline(n))
    return {
        "plain_msgs_per_s": round(plain),
        "streamdag_msgs_per_s": round(engine),
        "ratio": round(engine / plain, 2),
    }


def test_jetstream_map_jetstream(benchmark):  # noqa: ANN001
    n = int(os.environ.get("BENCH_N", "50000"))
    figures = benchmark.pedantic(measure, args=(n,), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\nJetStream -> map -> JetStream, {n} messages: {figures}")
    assert figures["streamdag_msgs_per_s"] > 0


if __name__ == "__main__":
    print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50000))
