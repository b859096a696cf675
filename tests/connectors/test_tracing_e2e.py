"""One trace across two graphs and three services, received by a real OTLP/HTTP endpoint in the test
(decoding the protobuf with `opentelemetry-proto`): an HTTP request with a `traceparent` through
http_source → map → jetstream_sink, then jetstream_source → postgres_sink in a second graph."""

from __future__ import annotations

import asyncio
import os
import secrets
import textwrap
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import orjson
import pytest
import redis.asyncio as aredis

pytest.importorskip("opentelemetry.proto", reason="the [otel] extra is not installed")
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from engine.compile.validate import load_graph
from engine.observe.tracing import Tracing
from engine.runtime.scheduler import Runner
from tests.connectors.http_harness import aio, post, serve_post

pytestmark = pytest.mark.services
NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
DSN = "postgresql://root@127.0.0.1:5432/test"


class OtlpReceiver:
    """POST /v1/traces: decodes each ExportTraceServiceRequest into plain dicts, one per span."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.content_types: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        req = ExportTraceServiceRequest.FromString(await request.read())
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    self.spans.append({"service": service, "name": s.name, "trace": s.trace_id.hex(),
                                       "span": s.span_id.hex(), "parent": s.parent_span_id.hex(), "attrs": attrs,
                                       "links": [link.trace_id.hex() for link in s.links]})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


@aio
async def test_one_trace_from_http_request_to_postgres_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid.uuid4().hex[:10]
    stream, subject, table = f"TRACE_{tag.upper()}", f"trace_{tag}.in", f"traced_{tag}"
    receiver = OtlpReceiver()
    web_runner, port = await serve_post("/v1/traces", receiver.handle)
    # the standard variables only: the SDK's OTLP exporter reads them
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    connection = f"""
        connections:
          nats:
            type: nats
            url: {NATS_URL}
            streams:
              {stream}: {{subjects: ["{subject}"]}}
          pg: {{type: postgres, dsn: "{DSN}"}}
    """
    (tmp_path / "front.yaml").write_text(textwrap.dedent(connection + f"""
        version: 1
        name: front
        nodes:
          ingest: {{type: http_source, config: {{port: 0}}}}
          price:
            type: map
            inputs: [ingest]
            config: {{expr: '{{"id": msg.id, "total": double(msg.amount) * 1.2}}'}}
          publish: {{type: jetstream_sink, inputs: [price], config: {{connection: nats, subject: {subject}}}}}
    """))
    (tmp_path / "back.yaml").write_text(textwrap.dedent(connection + f"""
        version: 1
        name: back
        nodes:
          read:
            type: jetstream_source
            config: {{connection: nats, stream: {stream}, subjects: ["{subject}"], durable: d_{tag}}}
          rows:
            type: postgres_sink
            inputs: [read]
            config:
              connection: pg
              table: {table}
              create_table: true
              columns: {{id: {{expr: msg.id, type: bigint}}, total: {{expr: msg.total, type: float8}}}}
    """))
    tracers = [Tracing.configure("front", 1.0), Tracing.configure("back", 1.0)]
    front = Runner(load_graph(str(tmp_path / "front.yaml")), tracer=tracers[0])
    back = Runner(load_graph(str(tmp_path / "back.yaml")), tracer=tracers[1])
    tasks = [asyncio.ensure_future(front.run()), asyncio.ensure_future(back.run())]
    pg = await asyncpg.connect(DSN)
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        while "ingest" not in front.nodes or front.nodes["ingest"].address is None:
            await asyncio.sleep(0.005)
        await front.nodes["ingest"].listening.wait()
        host, http_port = front.nodes["ingest"].address
        async with aiohttp.ClientSession() as s:
            st, body, _ = await post(s, f"http://{host}:{http_port}/api/v1/data/ingest",
                                     orjson.dumps([{"id": 1, "amount": 10}, {"id": 2, "amount": 20}]),
                                     traceparent=f"00-{trace_id}-{client_span}-01")
            assert st == 202, body
            # an untraced request, sampled on its own (ratio 1.0): a trace of its own
            st, _, _ = await post(s, f"http://{host}:{http_port}/api/v1/data/ingest",
                                  orjson.dumps([{"id": 3, "amount": 30}]))
            assert st == 202
        for _ in range(400):
            exists = await pg.fetchval("SELECT to_regclass($1)", table)
            if exists and await pg.fetchval(f"SELECT count(*) FROM {table}") == 3:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the rows did not arrive")
    finally:
        front.stop()
        back.stop()
        reports = await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await asyncio.gather(*(asyncio.to_thread(t.shutdown) for t in tracers))
        await pg.execute(f"DROP TABLE IF EXISTS {table}")
        await pg.close()
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
        await web_runner.cleanup()
    assert all(r.error is None and r.balanced for r in reports)
    assert receiver.content_types == {"application/x-protobuf"}
    ours = {s["attrs"]["streamdag.node"]: s for s in receiver.spans if s["trace"] == trace_id}
    assert set(ours) == {"ingest", "price", "publish", "read", "rows"}, receiver.spans
    # the chain of parents: the client's span → each node's batch span, across the JetStream hop
    assert ours["ingest"]["parent"] == client_span
    for child, parent in (("price", "ingest"), ("publish", "price"), ("read", "publish"), ("rows", "read")):
        assert ours[child]["parent"] == ours[parent]["span"], (child, parent)
    assert {s["service"] for s in ours.values()} == {"streamdag.front", "streamdag.back"}
    assert ours["ingest"]["name"] == "http_source ingest" and ours["rows"]["name"] == "postgres_sink rows"
    for s in ours.values():
        assert s["attrs"]["streamdag.outcome"] == "ok" and s["attrs"]["streamdag.retries"] == 0
        assert s["attrs"]["streamdag.node.type"] == s["name"].split()[0]
    assert ours["ingest"]["attrs"]["streamdag.batch.size"] == 2
    # the second request: a root trace of its own through the same nodes
    other = [s for s in receiver.spans if s["trace"] != trace_id and s["attrs"]["streamdag.node"] == "ingest"]
    assert len(other) == 1 and other[0]["parent"] == ""


@aio
async def test_trace_crosses_a_redis_stream(tmp_path: Path) -> None:
    """redis_stream_sink writes the span's context as a `traceparent` field of its own (the graph says
    nothing about it); redis_stream_source in another graph continues that trace."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.connectors.redis_harness import REDIS_URL, unique

    stream = f"{unique('trace')}.events"
    (tmp_path / "a.yaml").write_text(textwrap.dedent(f"""
        version: 1
        name: a
        connections: {{cache: {{type: redis, url: "{REDIS_URL}"}}}}
        nodes:
          gen: {{type: generate, config: {{count: 5, batch: 5}}}}
          put:
            type: redis_stream_sink
            inputs: [gen]
            config:
              connection: cache
              stream: "{stream}"
    """))
    (tmp_path / "b.yaml").write_text(textwrap.dedent(f"""
        version: 1
        name: b
        connections: {{cache: {{type: redis, url: "{REDIS_URL}"}}}}
        nodes:
          get:
            type: redis_stream_source
            config: {{connection: cache, stream: "{stream}", group: g, start: 0, exit_when_idle: true, block: 50ms}}
          out: {{type: file_sink, inputs: [get], config: {{path: out.ndjson}}}}
    """))
    exporters = {"a": InMemorySpanExporter(), "b": InMemorySpanExporter()}  # a shut down one takes no more
    r = aredis.Redis.from_url(REDIS_URL)
    try:
        for name in ("a", "b"):
            tracer = Tracing.configure(name, 1.0, exporter=exporters[name])
            report = await Runner(load_graph(str(tmp_path / f"{name}.yaml")), tracer=tracer).run()
            await asyncio.to_thread(tracer.shutdown)
            assert report.error is None and report.balanced
            if name == "a":
                entries = await r.xrange(stream)
                assert len(entries) == 5 and all(set(f) == {b"body", b"traceparent"} for _, f in entries)
    finally:
        await r.delete(stream)
        await r.aclose()
    spans = {s.attributes["streamdag.node"]: s for e in exporters.values() for s in e.get_finished_spans()}
    assert set(spans) == {"gen", "put", "get", "out"}
    assert spans["get"].parent.span_id == spans["put"].context.span_id
    assert spans["out"].parent.span_id == spans["get"].context.span_id
    assert len({s.context.trace_id for s in spans.values()}) == 1
