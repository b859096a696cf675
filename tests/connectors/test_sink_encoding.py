"""A value a sink cannot encode (nested deeper than orjson writes) fails that message alone: `write`
returns it with the reason, for the `errors` port, and the rest of the batch is written. Lookups
that read a value beyond the payload limits send that message to `errors`. And two HTTP codes.

Real services, unique names, cleaned up afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
import zstandard

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs, error_envelope
from engine.runtime.stats import NodeStats
from operators.connectors.file import FileSink, Stdout
from operators.connectors.jetstream.sink import JetStreamSink
from operators.connectors.postgres.lookup import PgLookup
from operators.connectors.postgres.sink import PostgresSink
from operators.connectors.redis.cache import RedisCacheSink
from operators.connectors.redis.lookup import RedisLookup
from operators.connectors.redis.streams import RedisStreamSink
from tests.connectors.http_harness import Gateway
from tests.connectors.jetstream_fixtures import NATS_URL, temporary_stream
from tests.connectors.postgres_harness import DSN, sql
from tests.connectors.redis_harness import REDIS_URL, aio

pytestmark = pytest.mark.services

TOO_DEEP = "nesting deeper than 254 levels"
CONNECTIONS = {
    "nats": {"type": "nats", "url": NATS_URL},
    "cache": {"type": "redis", "url": REDIS_URL},
    "pg": {"type": "postgres", "dsn": DSN},
}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def node(cls: Any, config: dict[str, Any], resources: Resources, base_dir: str = ".") -> Any:
    return cls("n", cls.Config.model_validate(config), NodeContext("n", CONNECTIONS, {}, resources, base_dir))


async def write_one_bad(sink: Any, good: dict[str, Any], bad: dict[str, Any]) -> None:
    """`write([good, bad, good])`: exactly `bad` comes back, with the encoder's reason."""
    msgs = [Msg(good), Msg(bad), Msg(good)]
    failed = await sink.write(msgs)
    assert [(m is msgs[1], TOO_DEEP in reason) for m, reason in failed or []] == [(True, True)], failed


@aio
async def test_file_sink_and_stdout(tmp_path: Path, capfdbinary: Any) -> None:
    resources = Resources()
    for with_meta in (False, True):
        sink = node(
            FileSink, {"path": f"out{with_meta}.ndjson", "with_meta": with_meta}, resources, str(tmp_path)
        )
        await sink.start()
        await write_one_bad(sink, {"n": 1}, {"deep": nested(254)})
        await sink.stop()
        written = [
            orjson.loads(line) for line in (tmp_path / f"out{with_meta}.ndjson").read_bytes().splitlines()
        ]
        assert [w["body"] if with_meta else w for w in written] == [{"n": 1}, {"n": 1}]
    await write_one_bad(node(Stdout, {}, resources), {"n": 2}, {2: nested(254)})  # non-string keys too
    assert capfdbinary.readouterr().out == b'{"n":2}\n{"n":2}\n'


@aio
async def test_jetstream_sink() -> None:
    resources = Resources()
    async with temporary_stream("enc") as (p, js):
        try:
            sink = node(JetStreamSink, {"connection": "nats", "subject": f"{p}.out"}, resources)
            await sink.start()
            await write_one_bad(sink, {"n": 1}, {"deep": nested(254)})
            await sink.stop()
            assert (await js.stream_info(p)).state.messages == 2
        finally:
            await resources.close()


@aio
async def test_redis_stream_sink_and_cache_sink() -> None:
    key = f"enc-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL)
    resources = Resources()
    try:
        for method in ("script", "xadd"):
            sink = node(RedisStreamSink, {"connection": "cache", "stream": key, "method": method}, resources)
            await sink.start()
            await write_one_bad(sink, {"n": 1}, {"deep": nested(254)})
        # a field computed by CEL that does not encode fails its message too
        sink = node(
            RedisStreamSink, {"connection": "cache", "stream": key, "fields": {"d": "msg.d"}}, resources
        )
        await sink.start()
        await write_one_bad(sink, {"d": 1}, {"d": nested(254)})
        assert client.xlen(key) == 6
        for mode, bad in (("value", {"k": "b", "v": nested(254)}), ("hash", {"k": "b", "v": nested(255)})):
            sink = node(
                RedisCacheSink, {"connection": "cache", "key": f'"{key}:" + msg.k', "mode": mode}, resources
            )
            await sink.start()
            await write_one_bad(sink, {"k": "a", "v": 1}, bad)
            assert client.exists(f"{key}:a") and not client.exists(f"{key}:b")
            client.delete(f"{key}:a")
    finally:
        await resources.close()
        client.delete(key, f"{key}:a", f"{key}:b")
        client.close()


@aio
async def test_postgres_sink_jsonb_column() -> None:
    table = f"enc_{uuid.uuid4().hex[:10]}"
    await sql(f'CREATE TABLE "{table}" (n int, doc jsonb)')
    resources = Resources()
    try:
        sink = node(
            PostgresSink,
            {"connection": "pg", "table": table, "columns": {"n": "msg.n", "doc": "msg.doc"}},
            resources,
        )
        await sink.start()
        await write_one_bad(sink, {"n": 1, "doc": {"a": 1}}, {"n": 2, "doc": nested(255)})
        assert [r["n"] for r in await sql(f'SELECT n FROM "{table}"')] == [1, 1]
    finally:
        await resources.close()
        await sql(f'DROP TABLE IF EXISTS "{table}"')


@aio
async def test_dead_letter_sinks_write_the_envelope_of_any_payload(tmp_path: Path, capfdbinary: Any) -> None:
    """What reaches a dead-letter sink is an error envelope; its payload was made safe when it was
    built, so every sink writes it, whatever the payload was (and whether it wraps it: with_meta)."""
    payloads = [nested(2000), nested(254), {"n": 1 << 70}, {1: b"\xff"}, b"\xff\xfe", object()]
    resources = Resources()
    async with temporary_stream("dead") as (p, js):
        sinks = [
            node(FileSink, {"path": "dead.ndjson", "with_meta": True}, resources, str(tmp_path)),
            node(Stdout, {"with_meta": True}, resources),
            node(JetStreamSink, {"connection": "nats", "subject": f"{p}.dead"}, resources),
            node(RedisStreamSink, {"connection": "cache", "stream": f"{p}-dead"}, resources),
        ]
        try:
            for sink in sinks:
                await sink.start()
                letters = [error_envelope(Msg(x, {"seq": i}), "src", "why") for i, x in enumerate(payloads)]
                assert not await sink.write(letters), type(sink).__name__
                await sink.stop()
            assert len((tmp_path / "dead.ndjson").read_bytes().splitlines()) == len(payloads)
            assert capfdbinary.readouterr().out.count(b'{"body":{"error":"why"') == len(payloads)
            assert (await js.stream_info(p)).state.messages == len(payloads)
            assert redis.Redis.from_url(REDIS_URL).xlen(f"{p}-dead") == len(payloads)
        finally:
            await resources.close()
            redis.Redis.from_url(REDIS_URL).delete(f"{p}-dead")


def outputs(op: Any) -> Outputs:
    return Outputs("n", ("out", "missing", "miss"), NodeStats("n", "operator", "lookup"))


@aio
async def test_lookups_send_a_message_whose_value_is_too_deep_to_errors() -> None:
    key = f"enc-{uuid.uuid4().hex[:10]}"
    table = f"enc_{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{key}:deep", b"[" * 1000 + b"]" * 1000)
    client.set(f"{key}:ok", b'{"a": 1}')
    await sql(f'CREATE TABLE "{table}" (id text PRIMARY KEY, doc jsonb)')
    await sql(
        f"INSERT INTO \"{table}\" VALUES ('ok', '{{\"a\": 1}}'), ('deep', $1::jsonb)", "[" * 300 + "]" * 300
    )
    resources = Resources()
    try:
        lookups = [
            node(RedisLookup, {"connection": "cache", "key": f'"{key}:" + msg.id'}, resources),
            node(
                PgLookup, {"connection": "pg", "table": table, "key_column": "id", "key": "msg.id"}, resources
            ),
        ]
        for op in lookups:
            await op.start()
            out = outputs(op)
            await op.process([Msg({"id": "ok"}), Msg({"id": "deep"})], out)
            lists = out.take()
            assert [m.body["lookup"] for m in lists["out"]] in ([{"a": 1}], [{"id": "ok", "doc": {"a": 1}}])
            (err,) = lists["errors"]
            assert err.body["payload"] == {"id": "deep"} and TOO_DEEP in err.body["error"], err.body
    finally:
        await resources.close()
        client.delete(f"{key}:deep", f"{key}:ok")
        client.close()
        await sql(f'DROP TABLE IF EXISTS "{table}"')


# -- HTTP codes -------------------------------------------------------------------------------------


@aio
async def test_zstd_frame_followed_by_garbage_is_400_bad_encoding(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor().compress(b'{"n": 1}')
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        for tail in (b"garbage", b"\xff" * 40, b"\x28\xb5\x2f\xfd" + b"\x00\x01" * 20, b"\x00"):
            async with s.post(
                gw.ingest_url,
                data=frame + tail,
                headers={"Content-Encoding": "zstd", "Content-Type": "application/json"},
            ) as r:
                assert (r.status, (await r.json())["error"]) == (400, "bad_encoding"), tail
        # two frames are one stream, as two gzip members are
        async with s.post(
            gw.ingest_url,
            data=frame + frame,
            headers={"Content-Encoding": "zstd", "Content-Type": "application/x-ndjson"},
        ) as r:
            assert (
                r.status == 400 and (await r.json())["error"] == "invalid_json"
            )  # {"n": 1}{"n": 1} on one line
        async with s.post(
            gw.ingest_url,
            data=frame,
            headers={"Content-Encoding": "zstd", "Content-Type": "application/json"},
        ) as r:
            assert r.status == 202


@aio
async def test_a_100_kb_url_is_431(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        host, port = gw.source.address
        for head in (
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # in one write
            b"POST /api/v1/data/ingest HTTP/1.1\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head)
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
            assert b"headers_too_large" in reply


@aio
async def test_the_64_kib_head_limit_is_exact_when_the_head_comes_in_one_read(tmp_path: Path) -> None:
    """A head of exactly 64 KiB (request line, headers, blank line) is served; one byte more is 431."""
    async with Gateway(tmp_path) as gw:
        host, port = gw.source.address
        start = b"POST /api/v1/data/ingest HTTP/1.1\r\nContent-Length: 0\r\nX-Pad: "
        for size, status in ((64 * 1024, b"HTTP/1.1 4"), (64 * 1024 + 1, b"HTTP/1.1 431")):
            head = start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"
            assert len(head) == size
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(head)  # one write: the parser gets the whole head at once
            await writer.drain()
            reply = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            writer.close()
            assert reply.startswith(status), (size, reply)
            assert (b"431" in reply) == (size > 64 * 1024), (size, reply)
