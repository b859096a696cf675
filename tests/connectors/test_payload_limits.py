"""No payload can stop a graph (issue 14): a message nested beyond what the encoders write is
dead-lettered at its source with the reason and its bytes, acknowledged, and the graph goes on.

Real services: files, HTTP, NATS JetStream, Redis streams and PostgreSQL, each test with its own
names, cleaned up afterwards. The boundary is the encoder's: 254 levels go through, 255 do not.
"""

from __future__ import annotations

import asyncio
import base64
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from engine.compile.validate import load_graph
from engine.message import DEAD_LETTERED, AckTracker, Msg
from engine.runtime.context import Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.scheduler import Runner, RunReport
from engine.runtime.stats import NodeStats
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig
from tests.connectors.jetstream_fixtures import NATS_URL, temporary_stream, wait_for
from tests.connectors.jetstream_pipe import make_ctx as nats_ctx
from tests.connectors.postgres_harness import DSN, sql
from tests.connectors.redis_harness import REDIS_URL, aio

pytestmark = pytest.mark.services

DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000  # the report's request, deeper
JUST_TOO_DEEP = b"[" * 255 + b"]" * 255
DEEPEST = b"[" * 254 + b"]" * 254  # the deepest body every sink can write alone
TOO_DEEP = "nesting deeper than 254 levels"


def write_graph(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def source_graph(tmp_path: Path, connection: str, source: str) -> Path:
    """source `src` -> file out.ndjson, its errors and the sink's -> dead.ndjson."""
    return write_graph(
        tmp_path,
        f"""
        version: 1
        name: deep_payloads
        connections: {{{connection}}}
        nodes:
          src: {{{source}}}
          out: {{type: file_sink, inputs: [src], config: {{path: out.ndjson}}}}
          dead: {{type: file_sink, inputs: [src.errors, out.errors], config: {{path: dead.ndjson}}}}
    """,
    )


def lines(path: Path) -> list[Any]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def run_until(path: Path, done: Callable[[], bool], timeout: float = 20.0) -> RunReport:
    """Run the graph until `done()` holds (or it ends by itself), then stop it and return its report."""
    runner = Runner(load_graph(str(path)))
    task = asyncio.ensure_future(runner.run())
    try:
        await wait_for(lambda: task.done() or done(), timeout, "the graph's output")
    finally:
        runner.stop()
        report = await asyncio.wait_for(task, 15)
    return report


def assert_dead_letter(letter: dict[str, Any], reason: str, original: bytes) -> None:
    assert reason in letter["error"], letter["error"]
    assert letter["payload"] == original.decode(), "the dead letter carries the original bytes"


# -- files ------------------------------------------------------------------------------------------


def test_file_deep_lines_are_dead_lettered_and_the_graph_goes_on(tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(
        b"\n".join([b'{"n": 1}', DEEP, JUST_TOO_DEEP, DEEPEST, b'{"n": 2}']) + b"\n"
    )
    path = write_graph(
        tmp_path,
        """
        version: 1
        name: deep_file
        nodes:
          src: {type: file_source, config: {path: in.ndjson}}
          out: {type: file_sink, inputs: [src], config: {path: out.ndjson}}
          wrapped: {type: file_sink, inputs: [src], config: {path: wrapped.ndjson, with_meta: true}}
          dead:
            type: file_sink
            inputs: [src.errors, out.errors, wrapped.errors]
            config: {path: dead.ndjson, with_meta: true}
    """,
    )
    report = asyncio.run(run_until(path, lambda: False))
    assert report.error is None and report.balanced, report.error
    out = lines(tmp_path / "out.ndjson")
    assert out[0] == {"n": 1} and out[2] == {"n": 2} and orjson.dumps(out[1]) == DEEPEST  # 254 levels pass
    assert [m["body"] for m in lines(tmp_path / "wrapped.ndjson")] == [{"n": 1}, {"n": 2}]
    dead = [d["body"] for d in lines(tmp_path / "dead.ndjson")]
    assert sorted(d["node"] for d in dead) == ["src", "src", "wrapped"], dead
    src_dead = sorted((d for d in dead if d["node"] == "src"), key=lambda d: d["error"])
    assert_dead_letter(src_dead[0], f"line 2: {TOO_DEEP}", DEEP)
    assert_dead_letter(src_dead[1], f"line 3: {TOO_DEEP}", JUST_TOO_DEEP)
    # 254 levels inside {"body": ...} are 255: the sink's encoder fails on that message alone, and the
    # dead-letter sink (with_meta too) writes it, its payload as base64 JSON text
    (wrapped,) = (d for d in dead if d["node"] == "wrapped")
    assert wrapped["error"] == f"body does not encode as JSON: {TOO_DEEP}" and "payload" not in wrapped
    assert (base64.b64decode(wrapped["payload_base64"]), wrapped["payload_format"]) == (DEEPEST, "json")


# -- HTTP -------------------------------------------------------------------------------------------


@aio
async def test_http_deep_body_is_dead_lettered_refused_and_the_gateway_goes_on(tmp_path: Path) -> None:
    path = source_graph(tmp_path, "", "type: http_source, config: {port: 0}")
    runner = Runner(load_graph(str(path)))
    task = asyncio.ensure_future(runner.run())
    try:
        await wait_for(lambda: getattr(runner.nodes["src"], "address", None) is not None or task.done(), 10)
        host, port = runner.nodes["src"].address
        url = f"http://{host}:{port}/api/v1/data/ingest"
        report_request = b'{"a":' * 260 + b"1" + b"}" * 260
        ndjson = b'{"n": 9}\n' + DEEP + b"\n"
        async with aiohttp.ClientSession() as s:
            for body, ctype in (
                (DEEP, "application/json"),
                (report_request, "application/json"),
                (ndjson, "application/x-ndjson"),
            ):
                async with s.post(url, data=body, headers={"Content-Type": ctype}) as r:
                    reply = await r.json()
                    assert r.status == 422, reply
                    assert reply["error"] == "too_deep" and reply["dead_lettered"] is True
                    assert TOO_DEEP in reply["message"]
            # the gateway is alive; an array of the deepest writable items is accepted whole
            for body in (b'{"n": 1}', b"[" + DEEPEST + b', {"n": 2}]'):
                async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 202, await r.text()
    finally:
        runner.stop()
        report = await asyncio.wait_for(task, 15)
    assert report.error is None and report.balanced
    out = lines(tmp_path / "out.ndjson")
    assert out[0] == {"n": 1} and orjson.dumps(out[1]) == DEEPEST and out[2] == {"n": 2} and len(out) == 3
    dead = lines(tmp_path / "dead.ndjson")
    assert [d["payload"].encode() for d in dead] == [
        DEEP,
        report_request,
        ndjson,
    ]  # none of the NDJSON's items
    assert all(d["error"] == TOO_DEEP and d["node"] == "src" for d in dead)


# -- JetStream --------------------------------------------------------------------------------------


@aio
async def test_jetstream_deep_message_is_dead_lettered_and_the_stream_drains(tmp_path: Path) -> None:
    async with temporary_stream("deep") as (p, js):
        path = source_graph(
            tmp_path,
            f'nats: {{type: nats, url: "{NATS_URL}"}}',
            f"type: jetstream_source, config: {{connection: nats, stream: {p}, durable: d, "
            "ack_wait: 2s, max_deliver: 3, expires: 1s}",
        )
        for body in (b'{"n": 1}', DEEP, JUST_TOO_DEEP, b'{"n": 2}'):
            await js.publish(f"{p}.in", body)
        report = await run_until(
            path,
            lambda: len(lines(tmp_path / "out.ndjson")) == 2 and len(lines(tmp_path / "dead.ndjson")) == 2,
        )
        assert report.error is None
        assert lines(tmp_path / "out.ndjson") == [{"n": 1}, {"n": 2}]
        dead = lines(tmp_path / "dead.ndjson")
        assert_dead_letter(dead[0], f"cannot decode as json: {TOO_DEEP}", DEEP)
        assert_dead_letter(dead[1], f"cannot decode as json: {TOO_DEEP}", JUST_TOO_DEEP)
        info = await js.consumer_info(p, "d")
        assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
        assert info.ack_floor.stream_seq == 4  # every message settled: nothing comes back


@aio
async def test_jetstream_message_never_settled_is_dead_lettered_after_max_deliver() -> None:
    """The graph holds a message and never settles it (a crash loop looks the same to the server):
    after max_deliver deliveries it is dead-lettered and terminated, not dropped or redelivered."""
    resources = Resources()
    held: list[Msg] = []
    dead: list[Msg] = []

    async def send(lists: dict[str, list[Msg]]) -> None:
        held.extend(lists["out"])  # never settled
        for m in lists["errors"]:
            dead.append(m)
            m.ack.finish(DEAD_LETTERED)

    async with temporary_stream("unsettled") as (p, js):
        cfg = JetStreamSourceConfig(
            connection="nats",
            stream=p,
            subjects=[f"{p}.>"],
            durable="d",
            ack_wait=0.5,
            max_deliver=2,
            in_progress=False,
            expires=0.5,
            batch=10,
        )
        src = JetStreamSource("src", cfg, nats_ctx("src", NATS_URL, resources))
        tracker = AckTracker()
        out = SourceOutput("src", tracker, send, NodeStats("src", "source", "jetstream_source"))
        try:
            await src.start()
            await js.publish(f"{p}.in", b'{"n": 1}')
            run = asyncio.ensure_future(src.run(out))

            async def settled() -> bool:
                done, failed = tracker.take()
                if done:
                    await src.commit(done)
                if failed:
                    await src.reject(failed)
                return bool(dead) and src.termed == 1

            await wait_for(settled, 15, "the dead letter")
            assert [m.meta["delivered"] for m in held] == [1, 2]
            assert dead[0].body["payload"] == '{"n": 1}' and dead[0].body["attempt"] == 3
            assert "delivered 3 times and never settled (max_deliver 2)" in dead[0].body["error"]

            async def drained() -> bool:  # +TERM is one protocol line: the server takes it a moment later
                info = await js.consumer_info(p, "d")
                return (info.num_ack_pending, info.num_pending, info.ack_floor.stream_seq) == (0, 0, 1)

            await wait_for(drained, 5, "the consumer to drain")
            await asyncio.sleep(1.2)  # two ack_waits: nothing is redelivered any more
            assert [m.meta["delivered"] for m in held] == [1, 2] and len(dead) == 1
            out.stopping.set()
            await asyncio.wait_for(run, 10)
        finally:
            await src.stop()
            await resources.close()


# -- Redis streams ----------------------------------------------------------------------------------


def test_redis_deep_entry_is_dead_lettered_and_acked(tmp_path: Path) -> None:
    stream = f"deep-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for body in (b'{"n": 1}', DEEP, JUST_TOO_DEEP, b'{"n": 2}'):
            client.xadd(stream, {"body": body})
        path = source_graph(
            tmp_path,
            f'cache: {{type: redis, url: "{REDIS_URL}"}}',
            f"type: redis_stream_source, config: {{connection: cache, stream: {stream}, group: g, "
            'start: "0", exit_when_idle: true, block: 100ms}',
        )
        report = asyncio.run(run_until(path, lambda: False))
        assert report.error is None and report.balanced
        assert lines(tmp_path / "out.ndjson") == [{"n": 1}, {"n": 2}]
        dead = lines(tmp_path / "dead.ndjson")
        assert [d["payload"]["body"].encode() for d in dead] == [DEEP, JUST_TOO_DEEP]
        assert all(d["error"] == f"body beyond the payload limits: {TOO_DEEP}" for d in dead)
        assert client.xpending(stream, "g")["pending"] == 0  # acked: never claimed again
    finally:
        client.delete(stream)
        client.close()


# -- PostgreSQL -------------------------------------------------------------------------------------


def test_postgres_source_deep_jsonb_row_is_dead_lettered_and_the_position_moves_on(tmp_path: Path) -> None:
    table, positions = f"deep_{uuid.uuid4().hex[:10]}", f"pos_{uuid.uuid4().hex[:10]}"
    deep = "[" * 300 + "]" * 300  # PostgreSQL nests jsonb that deep; orjson could not write it back
    asyncio.run(sql(f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, payload jsonb)'))
    try:
        asyncio.run(
            sql(
                f'INSERT INTO "{table}" (payload) VALUES (\'{{"n": 1}}\'), ($1::jsonb), (\'{{"n": 2}}\')',
                deep,
            )
        )
        path = source_graph(
            tmp_path,
            f'pg: {{type: postgres, dsn: "{DSN}"}}',
            f"type: postgres_source, config: {{connection: pg, table: {table}, cursor: id, "
            f"position_table: {positions}, stop_at_end: true}}",
        )
        report = asyncio.run(run_until(path, lambda: False))
        assert report.error is None and report.balanced
        assert [r["payload"] for r in lines(tmp_path / "out.ndjson")] == [{"n": 1}, {"n": 2}]
        (dead,) = lines(tmp_path / "dead.ndjson")
        assert dead["error"] == TOO_DEEP and dead["payload"]["id"] == 2
        assert dead["payload"]["payload"].replace(" ", "") == deep  # the column's text, as PostgreSQL gave it
        assert asyncio.run(sql(f'SELECT position FROM "{positions}"'))[0]["position"] == "3"
    finally:
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}", "{positions}"'))
