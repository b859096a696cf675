"""redis_stream_source / redis_stream_sink against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis
from pydantic import ValidationError

from engine.errors import ConfigError, ConnectorError
from engine.message import Msg
from engine.runtime.context import Resources
from operators.connectors.redis.streams import (
    RedisStreamSink,
    RedisStreamSinkConfig,
    RedisStreamSource,
    RedisStreamSourceConfig,
)

sys.path.insert(0, str(Path(__file__).parent))  # the harness, whether or not tests/connectors is a package
from redis_harness import (
    REDIS_URL,
    PrivateRedis,
    Run,
    aio,
    free_port,
    group_exists,
    make_ctx,
    redis_keys,
    unique,
)

pytestmark = pytest.mark.services


@pytest.fixture
def keys():
    yield from redis_keys()


def connect() -> aredis.Redis:
    return aredis.Redis.from_url(REDIS_URL)


async def fill(r, stream: str, bodies: list[bytes]) -> None:
    pipe = r.pipeline(transaction=False)
    for b in bodies:
        pipe.xadd(stream, {"body": b})
    await pipe.execute()


def source(stream: str, resources: Resources, **cfg) -> RedisStreamSource:
    config = RedisStreamSourceConfig(connection="cache", stream=stream, group="g", **cfg)
    return RedisStreamSource("events_in", config, make_ctx("events_in", resources, cfg.pop("url", REDIS_URL)))


def test_config_durations_and_fields() -> None:
    cfg = RedisStreamSourceConfig(connection="c", stream="s", group="g", min_idle="5m", block="250ms", start=0)
    assert (cfg.min_idle, cfg.block, cfg.start) == (300.0, 0.25, "0")
    with pytest.raises(ValidationError, match="invalid duration"):
        RedisStreamSourceConfig(connection="c", stream="s", group="g", min_idle="soon")
    with pytest.raises(ValidationError, match="greater than 0"):
        RedisStreamSourceConfig(connection="c", stream="s", group="g", block="0s")
    with pytest.raises(ValidationError, match="overwrite the body field"):
        RedisStreamSinkConfig(connection="c", stream="s", fields={"body": "msg.x"})


@aio
async def test_unreachable_redis_fails_at_start_with_a_clear_error() -> None:
    res = Resources()
    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    src = RedisStreamSource("events_in", RedisStreamSourceConfig(connection="cache", stream="s", group="g"),
                            make_ctx("events_in", res, url))
    with pytest.raises(ConnectorError, match=r"redis connection 'cache' \(redis://user:\*\*\*@127.0.0.1:\d+/0\)"):
        await src.start()
    await res.close()


@aio
async def test_reads_every_entry_once_and_acks_after_commit(keys) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(2500)])
    await r.xadd(stream, {"other": b"x"})  # no body field
    await r.xadd(stream, {"body": b"{not json"})
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(2500, 2600)])
    res = Resources()
    src = source(stream, res, start="0", batch=1000, block="50ms", exit_when_idle=True)
    run = Run(src)
    pending_seen: list[int] = []

    async def sink(msgs: list[Msg]):
        # nothing of this batch is acked before the sink returns
        pending_seen.append((await r.xpending(stream, "g"))["pending"])
        return []

    task = await run.start(sink)
    await asyncio.wait_for(task, 10)
    await run.finish()
    assert [m.body["n"] for m in run.delivered] == list(range(2600))
    assert all(m.meta["stream"] == stream and m.meta["delivery"] == 1 for m in run.delivered)
    reasons = sorted(m.body["error"] for m in run.dead)
    assert reasons[0].startswith("body is not valid JSON") and reasons[1] == "entry has no field 'body'"
    assert run.dead[0].body["node"] == "events_in"
    assert min(pending_seen) > 0
    assert (await r.xpending(stream, "g"))["pending"] == 0
    assert run.tracker.delivered == 2600 and run.tracker.dead_lettered == 2
    assert await r.xinfo_consumers(stream, "g") == []  # a generated consumer name holding nothing is removed
    await res.close()


@aio
async def test_group_from_dollar_skips_history(keys) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    await fill(r, stream, [b'{"old": 1}'] * 5)
    res = Resources()
    run = Run(source(stream, res, block="20ms"))
    await run.start(None)
    await run.wait_for(lambda: group_exists(stream))
    await fill(r, stream, [b'{"new": 1}'] * 3)
    await run.wait_for(lambda: len(run.delivered) == 3)
    await run.finish()
    assert [m.body for m in run.delivered] == [{"new": 1}] * 3
    await res.close()


@aio
async def test_destroyed_group_is_recreated_and_a_wrong_key_type_is_a_config_error(keys) -> None:
    r = connect()
    stream, wrong = unique(), unique()
    keys += [stream, wrong]
    res = Resources()
    run = Run(source(stream, res, block="10ms"))
    await run.start(None)
    await run.wait_for(lambda: group_exists(stream))
    await fill(r, stream, [b'{"n": 1}'])
    await run.wait_for(lambda: len(run.delivered) == 1)
    await r.xgroup_destroy(stream, "g")
    await run.wait_for(lambda: group_exists(stream))  # NOGROUP on the next read: created again from $
    await fill(r, stream, [b'{"n": 2}'])
    await run.wait_for(lambda: len(run.delivered) == 2)
    await run.finish()
    assert [m.body["n"] for m in run.delivered] == [1, 2]
    await r.set(wrong, "not a stream")
    bad = Run(source(wrong, res))
    with pytest.raises(ConfigError, match=f"redis stream '{wrong}', group 'g': .*WRONGTYPE"):
        await asyncio.wait_for(await bad.start(None), 10)
    await res.close()


@aio
async def test_claims_stuck_entries_of_a_dead_consumer(keys) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    await r.xgroup_create(stream, "g", id="0", mkstream=True)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(10)])
    got = await r.xreadgroup("g", "dead-consumer", {stream: ">"}, count=10)  # read, never acked
    assert len(got[0][1]) == 10
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(10, 15)])
    res = Resources()
    src = source(stream, res, min_idle="1ms", block="20ms", exit_when_idle=True)
    run = Run(src)
    await asyncio.wait_for(await run.start(lambda msgs: _ok()), 10)
    await run.finish()
    assert sorted(m.body["n"] for m in run.delivered) == list(range(15))
    assert sorted(m.meta["delivery"] for m in run.delivered) == [1] * 5 + [2] * 10
    assert src.reclaimed == 10
    assert (await r.xpending(stream, "g"))["pending"] == 0
    await res.close()


async def _ok():
    return []


@aio
async def test_failing_entry_is_dead_lettered_after_max_deliver(keys) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(20)])
    res = Resources()
    src = source(stream, res, start="0", min_idle="1ms", claim_interval="5ms", block="10ms", max_deliver=3)
    run = Run(src)
    attempts: list[int] = []

    async def sink(msgs: list[Msg]):
        failed = []
        for m in msgs:
            if m.body["n"] == 7:
                attempts.append(m.meta["delivery"])
                failed.append((m, "poison"))
        return failed

    await run.start(sink)
    await run.wait_for(lambda: len(run.dead) == 1)
    await run.finish()
    assert attempts == [1, 2, 3]
    assert sorted(m.body["n"] for m in run.delivered) == [n for n in range(20) if n != 7]
    dead = run.dead[0].body
    assert dead["error"] == "delivered 4 times, more than max_deliver=3" and dead["attempt"] == 4
    assert orjson.loads(dead["payload"]["body"]) == {"n": 7}
    assert (await r.xpending(stream, "g"))["pending"] == 0
    await res.close()


class DeadLetterFails(Run):
    """A run whose dead-letter sink gives up: every message on `errors` has its ack failed."""

    async def _send(self, lists: dict[str, list[Msg]]) -> None:
        await super()._send({"out": lists.get("out", [])})
        for m in lists.get("errors", []):
            self.dead.append(m)
            m.ack.fail("dead-letter sink unavailable")
        self.changed.set()


@aio
async def test_entry_dead_lettered_by_the_source_is_acked_even_when_its_dead_letter_fails(keys) -> None:
    """Past max_deliver the source sends the entry to `errors`; if that fails too, it still XACKs
    it (and logs), rather than leave it pending to be claimed and dead-lettered forever."""
    r = connect()
    stream = unique()
    keys.append(stream)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(5)])
    res = Resources()
    src = source(stream, res, start="0", min_idle="1ms", claim_interval="5ms", block="10ms", max_deliver=1)
    run = DeadLetterFails(src)

    async def sink(msgs: list[Msg]) -> list[tuple[Msg, str]]:
        return [(m, "poison") for m in msgs if m.body["n"] == 3]

    await run.start(sink)
    await run.wait_for(lambda: len(run.dead) == 1 and len(run.delivered) == 4)
    deadline = asyncio.get_running_loop().time() + 10
    while (await r.xpending(stream, "g"))["pending"]:
        assert asyncio.get_running_loop().time() < deadline, "the dead-lettered entry stays pending"
        await asyncio.sleep(0.01)
    await run.finish()
    assert len(run.dead) == 1 and orjson.loads(run.dead[0].body["payload"]["body"]) == {"n": 3}
    await res.close()


@aio
async def test_slow_in_flight_entries_are_kept_from_other_consumers(keys) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(5)])
    res = Resources()
    src = source(stream, res, start="0", min_idle="800ms", claim_interval="30ms", block="10ms")
    run = Run(src)
    run.hold = True  # the downstream takes its time: entries stay in flight
    await run.start(None)
    t0 = asyncio.get_running_loop().time()
    await run.wait_for(lambda: src.kept_alive >= 15 and asyncio.get_running_loop().time() - t0 > 1.0)
    # in flight longer than min_idle, yet never idle that long: another consumer cannot take them
    assert await r.xautoclaim(stream, "g", "thief", 800, "0-0", count=10) == [b"0-0", [], []]
    info = await r.xpending_range(stream, "g", "-", "+", 10)
    assert {p["consumer"] for p in info} == {src.consumer.encode()} and len(info) == 5
    assert all(p["times_delivered"] == 1 for p in info)
    run.release_held()
    await run.finish()
    assert sorted(m.body["n"] for m in run.delivered) == list(range(5))
    assert (await r.xpending(stream, "g"))["pending"] == 0


WORKER = textwrap.dedent("""
    import asyncio, sys
    import redis.asyncio as aredis
    sys.path.insert(0, sys.argv[4])
    from redis_harness import Run, make_ctx, REDIS_URL
    from engine.runtime.context import Resources
    from operators.connectors.redis.streams import RedisStreamSource, RedisStreamSourceConfig

    async def main(stream, seen, hang):
        r = aredis.Redis.from_url(REDIS_URL)
        res = Resources()
        cfg = RedisStreamSourceConfig(connection="cache", stream=stream, group="g", consumer="worker-1",
                                      start="0", batch=100, block="20ms", exit_when_idle=True)
        run = Run(RedisStreamSource("src", cfg, make_ctx("src", res)))

        async def sink(msgs):  # a deduplicating sink: HSETNX by entry id, and a count of raw writes
            pipe = r.pipeline(transaction=False)
            for m in msgs:
                pipe.hsetnx(seen, m.meta["id"], m.body["n"])
                pipe.hincrby(seen + ":writes", m.meta["id"], 1)
            await pipe.execute()
            if hang == "1":
                print("WRITTEN", flush=True)
                await asyncio.Event().wait()  # killed here: written, never acked
            return []

        await asyncio.wait_for(await run.start(sink), 30)
        await run.finish()
        await res.close()
        await r.aclose()
        print("DONE", len(run.delivered), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
""")


@aio
async def test_kill_9_between_read_and_ack_then_restart(keys) -> None:
    r = connect()
    stream, seen = unique(), unique()
    keys += [stream, seen, seen + ":writes"]
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(350)])
    here = os.path.dirname(__file__)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, str(Path(__file__).parents[2])])}
    args = [sys.executable, "-c", WORKER, stream, seen]
    proc = await asyncio.create_subprocess_exec(*args, "1", here, stdout=subprocess.PIPE, env=env)
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.strip() == b"WRITTEN"
    proc.kill()  # SIGKILL between the sink's write and the XACK
    await proc.wait()
    assert (await r.xpending(stream, "g"))["pending"] == 100
    proc = await asyncio.create_subprocess_exec(*args, "0", here, stdout=subprocess.PIPE, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.split() == [b"DONE", b"350"]
    values = await r.hgetall(seen)
    assert sorted(int(v) for v in values.values()) == list(range(350))
    writes = [int(v) for v in (await r.hgetall(seen + ":writes")).values()]
    assert sorted(writes).count(2) == 100 and writes.count(1) == 250  # the first batch was redelivered
    assert (await r.xpending(stream, "g"))["pending"] == 0


@aio
async def test_survives_a_redis_restart_without_losing_its_place() -> None:
    server = PrivateRedis()
    server.start()
    try:
        stream = "redis-restart"
        client = aredis.Redis.from_url(server.url)
        await fill(client, stream, [orjson.dumps({"n": i}) for i in range(500)])
        await client.aclose()
        res = Resources()
        config = RedisStreamSourceConfig(connection="cache", stream=stream, group="g", start="0", batch=100,
                                         block="20ms", reconnect_max_backoff="100ms")
        src = RedisStreamSource("src", config, make_ctx("src", res, server.url))
        run = Run(src)
        await run.start(None)
        await run.wait_for(lambda: len(run.delivered) == 500)
        server.kill()
        server.start()
        client = aredis.Redis.from_url(server.url)
        await fill(client, stream, [orjson.dumps({"n": i}) for i in range(500, 1000)])
        await run.wait_for(lambda: len(run.delivered) == 1000, timeout=20)
        await run.finish()
        assert sorted(m.body["n"] for m in run.delivered) == list(range(1000))
        assert src.reconnects >= 1
        assert (await client.xpending(stream, "g"))["pending"] == 0
        await client.aclose()
        await res.close()
    finally:
        server.kill()


@aio
async def test_connections_killed_mid_run_lose_and_repeat_nothing(keys) -> None:
    """CLIENT KILL of the source's own connections (by its client name) between a write and its XACK."""
    r = connect()
    stream, name = unique(), unique("redis-client")
    keys.append(stream)
    await fill(r, stream, [orjson.dumps({"n": i}) for i in range(300)])
    res = Resources()
    config = RedisStreamSourceConfig(connection="cache", stream=stream, group="g", start="0", batch=100,
                                     block="10ms", reconnect_max_backoff="50ms")
    src = RedisStreamSource("src", config, make_ctx("src", res, client_name=name))
    run = Run(src)
    killed: list[int] = []

    async def sink(msgs: list[Msg]):
        if not killed:
            clients = await r.client_list()
            for c in clients:
                if c["name"] == name:
                    await r.client_kill_filter(_id=c["id"])
                    killed.append(int(c["id"]))
        return []

    await run.start(sink)
    await run.wait_for(lambda: len(run.delivered) == 300)
    await run.finish()
    assert killed and [m.body["n"] for m in run.delivered] == list(range(300))
    assert (await r.xpending(stream, "g"))["pending"] == 0
    await res.close()


@pytest.mark.parametrize("method", ["script", "xadd"])
@aio
async def test_stream_sink_writes_exact_entries_and_trims(keys, method) -> None:
    r = connect()
    stream = unique()
    keys.append(stream)
    res = Resources()
    cfg = RedisStreamSinkConfig(connection="cache", stream=stream, maxlen=1000, fields={"user": "msg.user"},
                                method=method)
    sink = RedisStreamSink("out", cfg, make_ctx("out", res))
    await sink.start()
    batch = [Msg({"user": f"u{i}", "n": i}) for i in range(3000)]
    assert await sink.write(batch) == []
    length = await r.xlen(stream)
    assert 1000 <= length < 3000  # MAXLEN ~ trims whole macro nodes
    last = await r.xrevrange(stream, count=1)
    assert orjson.loads(last[0][1][b"body"]) == {"user": "u2999", "n": 2999} and last[0][1][b"user"] == b"u2999"
    bad = [Msg({"n": 1}), Msg({"user": "x", "v": {1, 2}}), Msg(b"raw"), Msg({"user": 5})]
    failed = await sink.write(bad)
    assert [(m.body, reason.split(":")[0]) for m, reason in failed] == [
        ({"n": 1}, "fields"), ({"user": "x", "v": {1, 2}}, "body does not encode as JSON"), (b"raw", "fields")]
    last = await r.xrevrange(stream, count=1)
    assert last[0][1] == {b"body": b'{"user":5}', b"user": b"5"}
    exact = RedisStreamSink("out2", RedisStreamSinkConfig(connection="cache", stream=stream + "x", maxlen=None,
                                                          method=method), make_ctx("out2", res))
    keys.append(stream + "x")
    await exact.start()
    assert await exact.write([Msg(i) for i in range(2233)] + [Msg(b"raw-bytes")]) == []
    assert await r.xlen(stream + "x") == 2234
    assert (await r.xrevrange(stream + "x", count=1))[0][1] == {b"body": b"raw-bytes"}
    assert [int(e[1][b"body"]) for e in await r.xrange(stream + "x", count=5)] == [0, 1, 2, 3, 4]
    exact._sha = "0" * 40  # as after a server restart: NOSCRIPT, so the script is loaded again
    await r.set(stream + "x", "not a stream")  # every XADD fails alone with WRONGTYPE
    failed = await exact.write([Msg(1), Msg(2)])
    assert [m.body for m, _ in failed] == [1, 2] and all("WRONGTYPE" in reason for _, reason in failed)
    await res.close()


@pytest.mark.parametrize("method", ["script", "xadd"])
@aio
async def test_stream_sink_writes_the_trace_context_of_traced_messages_only(keys, method) -> None:
    """A message with `meta.traceparent` (a traced run) gets a `traceparent` field; one without, and
    every entry of an untraced batch, are written exactly as before; a graph's own field wins."""
    r = connect()
    stream = unique()
    keys.extend([stream, stream + "u", stream + "own"])
    res = Resources()

    def sink(key: str, **cfg) -> RedisStreamSink:
        return RedisStreamSink(key, RedisStreamSinkConfig(connection="cache", stream=key, maxlen=None, method=method,
                                                          **cfg), make_ctx(key, res))

    traced, untraced, own = sink(stream, fields={"n": "string(msg.n)"}), sink(stream + "u"), \
        sink(stream + "own", fields={"traceparent": '"mine"'})
    for s in (traced, untraced, own):
        await s.start()

    def tp(i: int) -> str:
        return f"00-{i:032x}-{i:016x}-01"

    # 2500 entries: three script chunks, every third message traced
    batch = [Msg({"n": i}, {"traceparent": tp(i + 1)} if i % 3 == 0 else {}) for i in range(2500)]
    assert await traced.write(batch) == []
    entries = [e[1] for e in await r.xrange(stream)]
    assert entries == [{b"body": b'{"n":%d}' % i, b"n": b"%d" % i,
                        **({b"traceparent": tp(i + 1).encode()} if i % 3 == 0 else {})} for i in range(2500)]
    assert await untraced.write([Msg(i) for i in range(3)]) == []
    assert [e[1] for e in await r.xrange(stream + "u")] == [{b"body": b"%d" % i} for i in range(3)]
    assert await own.write([Msg(1, {"traceparent": tp(9)})]) == []
    assert [e[1] for e in await r.xrange(stream + "own")] == [{b"body": b"1", b"traceparent": b"mine"}]
    await res.close()
