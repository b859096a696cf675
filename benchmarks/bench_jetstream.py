"""JetStream -> map -> JetStream: streamdag's connectors beside a plain nats-py loop, same run, same work.

Both read N JSON messages from a stream through a durable pull consumer, add a field, publish the
result with `Nats-Msg-Id` to a second stream, and ack each input only after its PubAck. The engine
side is a real graph (YAML -> check -> Runner) with a CEL map; the clock stops when the consumer's
ack floor reaches N. Each figure comes with the client process's CPU time per message (the
engine's includes its consumer-info polling), which is steadier than msg/s on a busy machine.
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

URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
BODY = {"id": 0, "customer": "c-1234", "amount": 12.5, "items": [1, 2, 3], "note": "x" * 40}


def enrich(body: dict) -> dict:
    return {**body, "total": body["amount"] * 1.2}


async def _setup(nc, n: int, out: bool = True) -> str:
    js = nc.jetstream()
    p = f"jetstream_bench_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=p + "_IN", subjects=[p + ".in.>"]))
    if out:
        await js.add_stream(StreamConfig(name=p + "_OUT", subjects=[p + ".out.>"]))
    for i in range(n):
        await nc.publish(p + ".in.a", orjson.dumps({**BODY, "id": i}))
    await nc.flush()
    while (await js.stream_info(p + "_IN")).state.messages < n:
        await asyncio.sleep(0.05)
    return p


async def _teardown(nc, p: str, out: bool = True) -> None:
    js = nc.jetstream()
    for s in ("_IN", "_OUT") if out else ("_IN",):
        await js.delete_stream(p + s)


async def plain_loop(n: int, batch: int = 1000) -> tuple[float, float]:
    """nats-py as documented: fetch(batch), publish_async per message, await PubAcks, ack per message."""
    nc = await nats.connect(URL)
    p = await _setup(nc, n)
    js = nc.jetstream(publish_async_max_pending=batch)
    try:
        sub = await js.pull_subscribe(
            p + ".in.>", durable="plain", stream=p + "_IN", config=ConsumerConfig(max_ack_pending=4 * batch)
        )
        t0, c0 = time.perf_counter(), time.process_time()
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
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    finally:
        await _teardown(nc, p)
        await nc.close()


GRAPH = """
version: 1
name: bench_jetstream
defaults: {{max_in_flight: {inflight}, batch_size: {batch}}}
connections:
  nats: {{type: nats, url: "{url}"}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {p}_IN, durable: sd, batch: {batch}}}
  enrich:
    type: map
    inputs: [read]
    config: {{expr: '{{"id": msg.id, "customer": msg.customer, "amount": msg.amount, "items": msg.items,
                      "note": msg.note, "total": msg.amount * 1.2}}'}}
  write:
    type: jetstream_sink
    inputs: [enrich]
    config: {{connection: nats, subject: {p}.out.x, max_in_flight: {batch}}}
"""


async def streamdag_pipeline(n: int, batch: int = 1000) -> tuple[float, float]:
    """The same work as a graph run by the engine: jetstream_source -> map (CEL) -> jetstream_sink."""
    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    nc = await nats.connect(URL)
    p = await _setup(nc, n)
    js = nc.jetstream()
    try:
        graph, diags = check_text(GRAPH.format(p=p, url=URL, batch=batch, inflight=8 * batch), "bench.yaml")
        assert graph is not None, diags
        runner = Runner(graph)
        t0, c0 = time.perf_counter(), time.process_time()
        run = asyncio.ensure_future(runner.run())
        while True:
            await asyncio.sleep(0.02)
            if run.done():
                raise RuntimeError(f"the graph stopped early: {run.result().error}")
            try:
                info = await js.consumer_info(p + "_IN", "sd")
            except Exception:  # noqa: BLE001 - not created yet
                continue
            if info.ack_floor.stream_seq >= n:
                break
        rate = n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
        runner.stop()
        report = await run
        assert report.error is None and (await js.stream_info(p + "_OUT")).state.messages == n
        return rate
    finally:
        await _teardown(nc, p)
        await nc.close()


CONSUME = """
version: 1
name: bench_jetstream_consume
defaults: {{max_in_flight: {inflight}, batch_size: {batch}}}
connections:
  nats: {{type: nats, url: "{url}"}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {p}_IN, durable: sd, batch: {batch}}}
  write:
    type: file_sink
    inputs: [read]
    config: {{path: /dev/null}}
"""


async def lean_consume(n: int, batch: int = 1000) -> tuple[float, float]:
    """The issue's lean nats-py consumer: own pull requests on a core subscription, AckAll per batch."""
    from nats.js.api import AckPolicy

    nc = await nats.connect(URL)
    p = await _setup(nc, n, out=False)
    js = nc.jetstream()
    try:
        await js.add_consumer(
            p + "_IN",
            ConsumerConfig(durable_name="lean", ack_policy=AckPolicy.ALL, max_ack_pending=4 * batch),
        )
        inbox = nc.new_inbox()
        buf: list = []
        ready = asyncio.Event()
        want = [0]

        async def on_msg(m) -> None:
            buf.append(m)
            if len(buf) >= want[0]:
                ready.set()

        await nc.subscribe(inbox, cb=on_msg)
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < n:
            want[0] = min(batch, n - done)
            ready.clear()
            request = orjson.dumps({"batch": want[0], "expires": 2_000_000_000})
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{p}_IN.lean", request, reply=inbox)
            await ready.wait()
            msgs = buf[:]
            buf.clear()
            for m in msgs:
                orjson.loads(m.data)
            await nc.publish(msgs[-1].reply, b"+ACK")
            done += len(msgs)
        await nc.flush()
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
    finally:
        await _teardown(nc, p, out=False)
        await nc.close()


async def streamdag_consume(n: int, batch: int = 1000) -> tuple[float, float]:
    """jetstream_source -> file_sink(/dev/null) through the Runner: the source's consuming speed."""
    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    nc = await nats.connect(URL)
    p = await _setup(nc, n, out=False)
    js = nc.jetstream()
    try:
        graph, diags = check_text(CONSUME.format(p=p, url=URL, batch=batch, inflight=8 * batch), "bench.yaml")
        assert graph is not None, diags
        runner = Runner(graph)
        t0, c0 = time.perf_counter(), time.process_time()
        run = asyncio.ensure_future(runner.run())
        while True:
            await asyncio.sleep(0.02)
            if run.done():
                raise RuntimeError(f"the graph stopped early: {run.result().error}")
            try:
                info = await js.consumer_info(p + "_IN", "sd")
            except Exception:  # noqa: BLE001 - not created yet
                continue
            if info.ack_floor.stream_seq >= n:
                break
        rate = n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6
        runner.stop()
        report = await run
        assert report.error is None
        return rate
    finally:
        await _teardown(nc, p, out=False)
        await nc.close()


def measure(n: int) -> dict[str, float]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    plain, plain_cpu = asyncio.run(plain_loop(n))
    engine, engine_cpu = asyncio.run(streamdag_pipeline(n))
    lean, lean_cpu = asyncio.run(lean_consume(n))
    consume, consume_cpu = asyncio.run(streamdag_consume(n))
    return {
        "plain_msgs_per_s": round(plain),
        "streamdag_msgs_per_s": round(engine),
        "ratio": round(engine / plain, 2),
        "plain_cpu_us_per_msg": round(plain_cpu, 1),
        "streamdag_cpu_us_per_msg": round(engine_cpu, 1),
        "lean_consume_msgs_per_s": round(lean),
        "streamdag_consume_msgs_per_s": round(consume),
        "consume_ratio": round(consume / lean, 2),
        "lean_consume_cpu_us_per_msg": round(lean_cpu, 1),
        "streamdag_consume_cpu_us_per_msg": round(consume_cpu, 1),
    }


def test_jetstream_map_jetstream(benchmark):
    n = int(os.environ.get("BENCH_N", "50000"))
    figures = benchmark.pedantic(measure, args=(n,), rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print(f"\nJetStream -> map -> JetStream, {n} messages: {figures}")
    assert figures["streamdag_msgs_per_s"] > 0


if __name__ == "__main__":
    print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 50000))
