"""Scenario 4: Redis stream -> map -> Redis stream, and HTTP ingest -> JetStream.

Redis: `benchmarks/bench_redis.py`'s round (plain redis-py with pipelined XADD and one XACK per
batch, beside the engine graph with its sink's `script` method), BENCH_REDIS_N entries.
HTTP: a load generator process (keep-alive connections, BENCH_HTTP_ITEMS items per request) posts
to the engine graph `http_source (ack: committed) -> jetstream_sink`, and to two aiohttp servers
doing the same by hand: `baseline-plain` awaits `js.publish` per item, `baseline-tuned` uses
`publish_async` for the whole request and waits for all PubAcks before replying 202.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from typing import Any

import orjson

from benchmarks.machine import NATS_URL, load_average, peak_rss_mb, reset_peak_rss

__all__ = ["run_http", "run_redis"]

REDIS_N = int(os.environ.get("BENCH_REDIS_N", "50000"))
HTTP_ITEMS = int(os.environ.get("BENCH_HTTP_ITEMS", "100"))
HTTP_CONNS = int(os.environ.get("BENCH_HTTP_CONNS", "16"))
HTTP_SECONDS = float(os.environ.get("BENCH_HTTP_SECONDS", "3"))


def run_redis(n: int = REDIS_N) -> list[dict[str, Any]]:
    import uvloop

    from benchmarks import bench_redis

    bench_redis.N = n = max(n, 12_000)  # its check reads a capped stream of 10,000 entries
    gc.collect()
    reset_peak_rss()
    load = load_average()
    plain, script, _xadd = uvloop.run(bench_redis.one_round())
    rss = peak_rss_mb()  # both variants in one process: one peak for the pair
    base = {"scenario": "4a redis->map->redis", "messages": n, "peak_rss_mb": rss, "load_average": load}
    return [{**base, "variant": "engine", "msg_per_s": round(script)},
            {**base, "variant": "baseline-plain", "msg_per_s": round(plain)}]


HTTP_GRAPH = """
version: 1
name: perf_http
connections:
  nats: {{type: nats, url: "{nats}"}}
nodes:
  ingest: {{type: http_source, config: {{port: 0, ack: committed, max_batch: 1000}}}}
  publish: {{type: jetstream_sink, inputs: [ingest], config: {{connection: nats, subject: {subject}}}}}
  dead: {{type: drop, inputs: [ingest.errors, publish.errors]}}
"""


async def _load(port: int) -> dict[str, Any]:
    from benchmarks.bench_http import _body, load

    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: load("127.0.0.1", port, _body(HTTP_ITEMS), HTTP_CONNS, HTTP_SECONDS))


async def _http_engine(subject: str) -> dict[str, Any]:
    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    graph, diags = check_text(HTTP_GRAPH.format(nats=NATS_URL, subject=subject), "perf_http.yaml")
    assert graph is not None, diags
    runner = Runner(graph)
    task = asyncio.ensure_future(runner.run())
    source = runner.nodes["ingest"]
    await asyncio.wait([asyncio.ensure_future(source.listening.wait()), task], return_when=asyncio.FIRST_COMPLETED)
    try:
        return await _load(source.address[1])
    finally:
        runner.stop()
        report = await task
        assert report.error is None, report.error


async def _http_baseline(subject: str, tuned: bool) -> dict[str, Any]:
    import nats
    from aiohttp import web, web_server

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream(publish_async_max_pending=100_000)

    async def handler(request: Any) -> Any:
        items = orjson.loads(await request.read())
        if not isinstance(items, list):
            items = [items]
        if tuned:
            futs = [await js.publish_async(subject, orjson.dumps(it)) for it in items]
            await asyncio.gather(*futs)
        else:
            for it in items:
                await js.publish(subject, orjson.dumps(it))
        return web.Response(status=202, body=orjson.dumps({"accepted": len(items)}),
                            content_type="application/json")

    server = web_server.Server(handler)
    srv = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        return await _load(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        await server.shutdown(1)
        await nc.close()


def run_http() -> list[dict[str, Any]]:
    import uvloop

    async def one(variant: str) -> dict[str, Any]:
        import nats
        from nats.js.api import StreamConfig

        p = f"perf_http_{uuid.uuid4().hex[:8]}"
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=p.upper(), subjects=[p + ".in"]))
        try:
            if variant == "engine":
                res = await _http_engine(p + ".in")
            else:
                res = await _http_baseline(p + ".in", variant == "baseline-tuned")
            stored = (await js.stream_info(p.upper())).state.messages
            assert res["statuses"] == {"202": res["requests"]}, res["statuses"]
            assert stored >= res["requests"] * HTTP_ITEMS, (stored, res["requests"])
            return res
        finally:
            await js.delete_stream(p.upper())
            await nc.close()

    out = []
    for variant in ("engine", "baseline-plain", "baseline-tuned"):
        gc.collect()
        reset_peak_rss()
        load = load_average()
        res = uvloop.run(one(variant))
        out.append({"scenario": f"4b http({HTTP_ITEMS}/req)->jetstream", "variant": variant,
                    "messages": res["requests"] * HTTP_ITEMS, "msg_per_s": round(res["rps"] * HTTP_ITEMS),
                    "requests_per_s": res["rps"], "p50_ms": res["p50_ms"], "p95_ms": res["p95_ms"],
                    "p99_ms": res["p99_ms"], "peak_rss_mb": peak_rss_mb(), "load_average": load})
    return out


if __name__ == "__main__":
    import json

    for rec in run_http() + run_redis(int(os.environ.get("BENCH_REDIS_N", "20000"))):
        print(json.dumps(rec))
