"""`on_invalid_item: accept_valid`: the valid items of a mixed request go in, the reply lists the others.

The valid items are accepted exactly as with a clean request (202 only after the sink committed them,
Idempotency-Key ids by their index in the request, replays); the default, `reject_request`, still
refuses the whole request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson

from tests.connectors.http_harness import Gateway, aio, post

SCHEMA = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
MIXED = [{"id": 1}, {"id": "two"}, {"id": 3}, {"nope": 4}, {"id": 5}]


def _gateway(tmp_path: Path, **config: object) -> Gateway:
    return Gateway(tmp_path, schemas={"item": SCHEMA}, schema="item", on_invalid_item="accept_valid", **config)


@aio
async def test_mixed_array_accepts_the_valid_items_and_lists_the_refused(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, orjson.dumps(MIXED), Idempotency_Key="k1")
        assert st == 202
        assert (body["accepted"], body["ack"]) == (3, "committed")
        assert [(r["index"], r["error"], r["path"]) for r in body["refused"]] == [(1, "schema", "/id"), (3, "schema", "/")]
        assert all(r["message"] for r in body["refused"])
        lines = gw.lines()
        assert [line["body"]["id"] for line in lines] == [1, 3, 5]
        assert [line["meta"]["id"] for line in lines] == ["k1:0", "k1:2", "k1:4"]  # indexes in the request
        # a retry with the same key replays the reply; nothing enters twice
        st2, body2, headers = await post(s, gw.ingest_url, orjson.dumps(MIXED), Idempotency_Key="k1")
        assert (st2, body2, headers["Idempotent-Replayed"]) == (202, body, "true")
        assert len(gw.lines()) == 3
        assert gw.source.metrics()["refused_items"] == 2


@aio
async def test_ndjson_lines_that_are_not_json_or_fail_the_schema_are_refused_one_by_one(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        ndjson = b'{"id": 1}\n{"id": 2,\n\n{"id": "x"}\n{"id": 4}\n'
        st, body, _ = await post(s, gw.ingest_url, ndjson, Content_Type="application/x-ndjson")
        assert (st, body["accepted"]) == (202, 2)
        bad_json, bad_schema = body["refused"]
        assert (bad_json["index"], bad_json["error"], bad_json["line"]) == (1, "invalid_json", 2)
        assert (bad_schema["index"], bad_schema["error"]) == (2, "schema")
        assert [line["body"]["id"] for line in gw.lines()] == [1, 4]


@aio
async def test_no_valid_item_gets_422_and_nothing_enters(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, b'[{"id": "a"}, {"x": 1}]')
        assert (st, body["error"]) == (422, "no_valid_item")
        assert [r["index"] for r in body["refused"]] == [0, 1]
        st, body, _ = await post(s, gw.ingest_url, b'{"id": "a"}')  # a single object
        assert (st, body["error"], len(body["refused"])) == (422, "no_valid_item", 1)
        assert gw.lines() == []


@aio
async def test_idempotency_expr_failing_on_an_item_refuses_that_item(tmp_path: Path) -> None:
    async with Gateway(tmp_path, idempotency_expr="msg.order_id", on_invalid_item="accept_valid") as gw, \
            aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, b'[{"order_id": "a1"}, {"other": 1}, {"order_id": "a3"}]')
        assert (st, body["accepted"]) == (202, 2)
        assert [(r["index"], r["error"]) for r in body["refused"]] == [(1, "idempotency_expr")]
        assert [line["meta"]["id"] for line in gw.lines()] == ["a1", "a3"]


@aio
async def test_the_reply_waits_for_the_valid_items_to_be_committed(tmp_path: Path) -> None:
    async with _gateway(tmp_path) as gw, aiohttp.ClientSession() as s:
        gw.gate.clear()  # the graph has no room: nothing is committed
        reply = asyncio.ensure_future(post(s, gw.ingest_url, orjson.dumps(MIXED)))
        while gw.source.in_flight < 3:
            await asyncio.sleep(0.005)
        assert not reply.done() and gw.lines() == []
        gw.gate.set()
        st, body, _ = await reply
        assert (st, body["accepted"], len(body["refused"])) == (202, 3, 2)
        assert len(gw.lines()) == 3


@aio
async def test_a_valid_item_failed_downstream_is_reported_by_its_index_beside_the_refused(tmp_path: Path) -> None:
    async with _gateway(tmp_path, poison="poison") as gw, aiohttp.ClientSession() as s:
        items = [{"id": "bad"}, {"id": 1}, {"id": 2, "poison": True}]
        st, body, _ = await post(s, gw.ingest_url, orjson.dumps(items))
        assert (st, body["error"], body["accepted"]) == (502, "not_committed", 1)
        assert [f["index"] for f in body["failed"]] == [2]
        assert [r["index"] for r in body["refused"]] == [0]


@aio
async def test_reject_request_stays_the_default(tmp_path: Path) -> None:
    async with Gateway(tmp_path, schemas={"item": SCHEMA}, schema="item") as gw, aiohttp.ClientSession() as s:
        st, body, _ = await post(s, gw.ingest_url, orjson.dumps(MIXED))
        assert (st, body["error"], [e["index"] for e in body["items"]]) == (422, "schema", [1, 3])
        st, body, _ = await post(s, gw.ingest_url, b'{"id": 1}\n{"id": 2,\n', Content_Type="application/x-ndjson")
        assert (st, body["error"]) == (400, "invalid_json")
        assert gw.lines() == []
        doc = orjson.loads(gw.source.openapi)
        assert "refuses the whole request" in doc["paths"]["/api/v1/data/ingest"]["post"]["description"]
