"""http_source over real loopback HTTP: bodies, encodings, every error status, acks, idempotency."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
from typing import Any

import aiohttp
import orjson
import pytest
import zstandard

from operators.connectors.http.body import IngestError, decode_body
from tests.connectors.http_harness import Gateway, aio, post


@aio
async def test_object_array_and_ndjson_are_accepted_after_commit(tmp_path: Any) -> None:
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        assert (await post(s, gw.ingest_url, b'{"n": 1}'))[:2] == (202, {"accepted": 1, "ack": "committed"})
        st, body, _ = await post(s, gw.ingest_url, orjson.dumps([{"n": 2}, {"n": 3}]))
        assert (st, body["accepted"]) == (202, 2)
        st, body, _ = await post(s, gw.ingest_url, b'{"n": 4}\n\n{"n": 5}\n', Content_Type="application/x-ndjson")
        assert (st, body["accepted"]) == (202, 2)
        lines = gw.lines()
        assert [line["body"]["n"] for line in lines] == [1, 2, 3, 4, 5]
        assert lines[0]["meta"]["source"] == "ingest" and "id" not in lines[0]["meta"]


@aio
async def test_gzip_and_zstd_bodies(tmp_path: Any) -> None:
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, gzip.compress(b'[{"z": "g"}]'), Content_Encoding="gzip")
        assert (st, body["accepted"]) == (202, 1)
        zs = zstandard.ZstdCompressor().compress(b'{"z": "s"}')
        st, body, _ = await post(s, gw.ingest_url, zs, Content_Encoding="zstd")
        assert (st, body["accepted"]) == (202, 1)
        assert [line["body"]["z"] for line in gw.lines()] == ["g", "s"]


@aio
async def test_bad_input_names_the_problem_and_nothing_enters(tmp_path: Any) -> None:
    async with Gateway(tmp_path, max_batch=3, max_body_bytes=10_000, max_decompressed_bytes=20_000) as gw, \
            aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, b'{"a": 1,\n "b": }')
        assert st == 400 and body["error"] == "invalid_json"
        assert (body["line"], body["column"], body["position"]) == (2, 7, 15)
        st, body, _ = await post(s, gw.ingest_url, b'{"a":1}\n{"a":\n', Content_Type="application/x-ndjson")
        assert st == 400 and body["line"] == 2
        st, body, _ = await post(s, gw.ingest_url, b"a=1", Content_Type="application/x-www-form-urlencoded")
        assert (st, body["error"]) == (415, "unsupported_media_type")
        st, body, _ = await post(s, gw.ingest_url, b"{}", Content_Encoding="br")
        assert (st, body["error"]) == (415, "unsupported_encoding")
        st, body, _ = await post(s, gw.ingest_url, b"not gzip at all", Content_Encoding="gzip")
        assert (st, body["error"]) == (400, "bad_encoding")
        st, body, _ = await post(s, gw.ingest_url, gzip.compress(b'[{"a":1}]')[:-6], Content_Encoding="gzip")
        assert (st, body["error"]) == (400, "bad_encoding")
        st, body, _ = await post(s, gw.ingest_url, b"[" + b"1," * 6000 + b"1]")
        assert (st, body["error"]) == (413, "too_large")  # Content-Length over max_body_bytes
        st, body, _ = await post(s, gw.ingest_url, b"[1,2,3,4]")
        assert (st, body["error"]) == (413, "batch_too_large")
        bomb = gzip.compress(b" " * 5_000_000)  # ~5 KB on the wire, 5 MB decoded
        st, body, _ = await post(s, gw.ingest_url, bomb, Content_Encoding="gzip")
        assert (st, body["error"]) == (413, "too_large")
        st, body, _ = await post(s, gw.ingest_url, b"[]")
        assert (st, body["error"]) == (400, "empty")
        # the server is still fine after all of that
        assert (await post(s, gw.ingest_url, b'{"ok": true}'))[0] == 202
        assert [line["body"] for line in gw.lines()] == [{"ok": True}]


def test_a_compression_bomb_is_refused_within_bounded_memory() -> None:
    zeros = b"\0" * (64 << 20)
    bomb = gzip.compress(zeros, 1)  # 64 MiB → ~280 KB
    zbomb = zstandard.ZstdCompressor().compress(zeros)  # 64 MiB → ~2 KB
    del zeros
    for data, enc in ((bomb, "gzip"), (zbomb, "zstd")):
        tracemalloc.start()
        with pytest.raises(IngestError) as info:
            decode_body(data, enc, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert info.value.status == 413
        assert peak < 4 << 20, f"{enc}: peak {peak} bytes while refusing a bomb"


@aio
async def test_schema_failures_are_422_per_item_and_the_whole_batch_is_refused(tmp_path: Any) -> None:
    schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    async with Gateway(tmp_path, schemas={"event": schema}, schema="event") as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, orjson.dumps([{"id": 1}, {"id": "x"}, {}, {"id": 4}]))
        assert st == 422 and body["error"] == "schema"
        assert [(e["index"], e["path"]) for e in body["items"]] == [(1, "/id"), (2, "/")]
        assert "required" in body["items"][1]["message"]
        assert gw.lines() == []  # valid items of a failing batch are not accepted either
        assert (await post(s, gw.ingest_url, b'[{"id": 1}, {"id": 2}]'))[0] == 202
        assert [line["body"]["id"] for line in gw.lines()] == [1, 2]


@aio
async def test_committed_mode_replies_only_after_the_sink_committed(tmp_path: Any) -> None:
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()  # the graph is stuck: the sink has not committed
        task = asyncio.ensure_future(post(s, gw.ingest_url, b'{"n": 1}'))
        while gw.source.counts["accepted"] == 0:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert not task.done() and gw.lines() == []
        gw.gate.set()
        st, body, _ = await task
        assert (st, body["ack"]) == (202, "committed") and len(gw.lines()) == 1


@aio
async def test_received_mode_replies_before_commit(tmp_path: Any) -> None:
    async with Gateway(tmp_path, ack="received") as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()
        st, body, _ = await post(s, gw.ingest_url, b'[{"n": 1}, {"n": 2}]')
        assert (st, body) == (202, {"accepted": 2, "ack": "received"})
        assert gw.lines() == []
        gw.gate.set()
        while len(gw.lines()) < 2:
            await asyncio.sleep(0.005)


@aio
async def test_received_mode_counts_failures_after_the_reply(tmp_path: Any) -> None:
    async with Gateway(tmp_path, ack="received", poison="bad") as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, b'[{"n": 1}, {"bad": 1}]')
        assert (st, body["accepted"]) == (202, 2)  # the weaker promise: said before the sink's verdict
        while gw.source.in_flight:
            await asyncio.sleep(0.005)
        assert gw.source.metrics()["late_failures"] == 1 and len(gw.lines()) == 1


@aio
async def test_items_the_sink_fails_are_reported_502_with_their_index(tmp_path: Any) -> None:
    async with Gateway(tmp_path, poison="bad") as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, b'[{"n": 1}, {"bad": 1}, {"n": 3}]')
        assert st == 502 and body["accepted"] == 2
        assert body["failed"] == [{"index": 1, "reason": "poison item refused by the sink"}]


@aio
async def test_ack_timeout_is_504(tmp_path: Any) -> None:
    async with Gateway(tmp_path, ack_timeout=0.2) as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()
        st, body, _ = await post(s, gw.ingest_url, b'{"n": 1}')
        assert (st, body["error"]) == (504, "ack_timeout")
        gw.gate.set()


@aio
async def test_idempotency_key_replays_and_becomes_the_message_id(tmp_path: Any) -> None:
    async with Gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        first = await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="k-1")
        again = await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="k-1")
        assert first[:2] == again[:2] == (202, {"accepted": 1, "ack": "committed"})
        assert again[2]["Idempotent-Replayed"] == "true"
        st, body, _ = await post(s, gw.ingest_url, b'{"n": 2}', Idempotency_Key="k-1")
        assert (st, body["error"]) == (422, "idempotency_key_reused")
        assert (await post(s, gw.ingest_url, b'[{"n": 3}, {"n": 4}]', Idempotency_Key="k-2"))[0] == 202
        assert [(line["body"]["n"], line["meta"]["id"]) for line in gw.lines()] == [
            (1, "k-1"), (3, "k-2:0"), (4, "k-2:1")]
        gw.gate.clear()  # a retry while the first is still waiting for its ack
        slow = asyncio.ensure_future(post(s, gw.ingest_url, b'{"n": 5}', Idempotency_Key="k-3"))
        while gw.source.counts["accepted"] < 4:
            await asyncio.sleep(0.005)
        async with aiohttp.ClientSession() as s2:
            st, body, _ = await post(s2, gw.ingest_url, b'{"n": 5}', Idempotency_Key="k-3")
        assert (st, body["error"]) == (409, "in_progress")
        gw.gate.set()
        assert (await slow)[0] == 202
        assert len(gw.lines()) == 4


@aio
async def test_a_failed_request_does_not_poison_its_key(tmp_path: Any) -> None:
    async with Gateway(tmp_path, ack_timeout=0.2) as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()
        assert (await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="t"))[0] == 504
        gw.gate.set()
        st, _, hdrs = await post(s, gw.ingest_url, b'{"n": 1}', Idempotency_Key="t")
        assert st == 202 and "Idempotent-Replayed" not in hdrs
        # the same id twice in the sink: a deduplicating sink (JetStream Nats-Msg-Id) keeps one
        assert [line["meta"]["id"] for line in gw.lines()] == ["t", "t"]


@aio
async def test_idempotency_expr_gives_each_item_its_id(tmp_path: Any) -> None:
    async with Gateway(tmp_path, idempotency_expr="msg.order") as gw, aiohttp.ClientSession() as s:
        assert (await post(s, gw.ingest_url, b'[{"order": "a"}, {"order": 7}]'))[0] == 202
        assert [line["meta"]["id"] for line in gw.lines()] == ["a", "7"]
        st, body, _ = await post(s, gw.ingest_url, b'[{"order": "b"}, {"x": 1}]')
        assert st == 422 and body["items"][0]["index"] == 1
        assert len(gw.lines()) == 2
