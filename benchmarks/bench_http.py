"""HTTP ingest benchmarks: which server library, and what the gateway sustains on loopback.

Two parts, each a pytest-benchmark test (`pytest benchmarks/bench_http.py -s`) and a plain run
(`python benchmarks/bench_http.py`, prints a table):

1. Server choice: the same minimal ingest handler (read body, orjson-parse it, reply 202 JSON) on
   - `httptools`: our asyncio.Protocol + httptools (llhttp) server, `operators/connectors/http/server.py`;
   - `aiohttp`: aiohttp's low-level `web_server.Server` (no router, no middlewares);
   - `granian`: granian's embedded RSGI server (Rust HTTP in a thread, handler on our loop),
     skipped if granian is not installed (it is not a project dependency).
2. The gateway itself (`http_source`, ack: committed) feeding an in-memory sink that commits
   every batch: 1-message and 1,000-message requests; requests/s, messages/s, p50/p95/p99.

The load generator is a separate process (raw sockets, keep-alive, C connections each sending its
next request when the previous reply arrived); server and client are pinned to a core each
(`BENCH_PIN=0` to turn off), so each server is measured on the one core our engine runs on.
Figures on this shared 2-core machine are noisy when other work runs: compare within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["load", "run_gateway_case", "run_server_case"]

# Server on one core, load generator on the other (BENCH_PIN=0 to turn off): granian runs its HTTP
# in extra threads, so unpinned it borrows the client's core and looks faster per core than it is.
PIN = (0, 1) if os.environ.get("BENCH_PIN", "1") != "0" and len(os.sched_getaffinity(0)) >= 2 else None
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ---------------------------------------------------------------- load generator (client process)
async def _client(host: str, port: int, request: bytes, deadline: float, lat: list[float],
                  statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    perf = time.perf_counter
    try:
        while perf() < deadline:
            t0 = perf()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            i = head.find(b"Content-Length: ")
            if i < 0:
                i = head.lower().find(b"content-length: ")
            n = int(head[i + 16:head.index(b"\r\n", i)])
            await reader.readexactly(n)
            lat.append(perf() - t0)
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


def load(host: str, port: int, body: bytes, conns: int, seconds: float, path: str = "/api/v1/data/ingest",
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the load generator in a child process; returns rps, percentiles (ms) and status counts."""
    spec = {"host": host, "port": port, "body": body.decode(), "conns": conns, "seconds": seconds,
            "path": path, "headers": headers or {}}
    cmd = [sys.executable, __file__, "--load", json.dumps(spec)]
    if PIN and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(PIN[1]), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(proc.stdout)


def _load_main(spec: dict[str, Any]) -> None:
    import uvloop

    extra = "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    body = spec["body"].encode()
    request = (f"POST {spec['path']} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{extra}"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    lat: list[float] = []
    statuses: dict[int, int] = {}

    async def main() -> float:
        t0 = time.perf_counter()
        deadline = t0 + spec["seconds"]
        await asyncio.gather(*(_client(spec["host"], spec["port"], request, deadline, lat, statuses)
                               for _ in range(spec["conns"])))
        return time.perf_counter() - t0

    elapsed = uvloop.run(main())
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

    print(json.dumps({"requests": len(lat), "seconds": round(elapsed, 3), "rps": round(len(lat) / elapsed),
                      "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
                      "statuses": {str(k): v for k, v in statuses.items()}}))


@contextlib.contextmanager
def _pinned() -> Any:
    """Run the server (this process and the threads it starts) on core PIN[0] only."""
    if not PIN:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {PIN[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------- servers under test
def _minimal_reply(body: bytes) -> bytes:
    items = orjson.loads(body)
    return orjson.dumps({"accepted": len(items) if isinstance(items, list) else 1})


async def _serve_httptools() -> tuple[int, Callable[[], Awaitable[None]]]:
    from operators.connectors.http.server import HttpServer, Response

    async def handler(req: Any) -> Response:
        return Response(202, _minimal_reply(req.body))

    server = HttpServer(handler, max_body=4 << 20)
    _, port = await server.start("127.0.0.1", 0)
    return port, server.stop


async def _serve_aiohttp() -> tuple[int, Callable[[], Awaitable[None]]]:
    from aiohttp import web, web_server

    async def handler(request: Any) -> Any:
        body = await request.read()
        return web.Response(status=202, body=_minimal_reply(body), content_type="application/json")

    server = web_server.Server(handler)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]

    async def stop() -> None:
        srv.close()
        await server.shutdown(1)

    return port, stop


async def _serve_granian() -> tuple[int, Callable[[], Awaitable[None]]]:
    import socket

    from granian.constants import Interfaces
    from granian.server.embed import Server

    async def app(scope: Any, proto: Any) -> None:
        body = await proto()
        proto.response_bytes(202, [("content-type", "application/json")], _minimal_reply(body))

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.RSGI, log_enabled=False)
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(200):  # wait until it accepts
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.02)

    async def stop() -> None:
        server.stop()
        await asyncio.wait_for(task, 10)

    return port, stop


SERVERS = {"httptools": _serve_httptools, "aiohttp": _serve_aiohttp, "granian": _serve_granian}


def _body(n: int) -> bytes:
    item = {"device": "sensor-17", "ts": 1764370000.123, "temp": 21.5, "tags": ["a", "b"]}
    return orjson.dumps(item if n == 1 else [item] * n)


async def _with_load(port: int, n: int, conns: int, seconds: float, **kw: Any) -> dict[str, Any]:
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: load("127.0.0.1", port, _body(n), conns, seconds, **kw))


def run_server_case(name: str, n: int = 1, conns: int = 32, seconds: float = 3.0) -> dict[str, Any]:
    """One library with the minimal handler under load."""
    import uvloop

    async def main() -> dict[str, Any]:
        port, stop = await SERVERS[name]()
        try:
            return await _with_load(port, n, conns, seconds)
        finally:
            await stop()

    with _pinned():
        return {"server": name, "items": n, **uvloop.run(main())}


def run_gateway_case(n: int, conns: int = 32, seconds: float = 3.0, ack: str = "committed") -> dict[str, Any]:
    """The full http_source, in-memory sink committing every batch, acks back through commit()."""
    import uvloop

    from engine.message import DELIVERED, AckTracker
    from engine.runtime.context import NodeContext, Resources
    from engine.runtime.outputs import SourceOutput
    from engine.runtime.stats import NodeStats
    from operators.connectors.http.config import HttpSourceConfig
    from operators.connectors.http.source import HttpSource

    async def main() -> dict[str, Any]:
        cfg = HttpSourceConfig(port=0, ack=ack, max_in_flight=max(20000, 2 * n * conns))
        source = HttpSource("ingest", cfg, NodeContext("ingest", {}, {}, Resources()))
        committed = 0
        batches = 0

        async def send(lists: dict[str, Any]) -> None:
            nonlocal committed, batches
            msgs = lists["out"]
            batches += 1
            committed += len(msgs)
            for m in msgs:
                m.ack.finish(DELIVERED)

        out = SourceOutput("ingest", AckTracker(), send, NodeStats("ingest", "source", "http_source"))

        async def acks() -> None:
            while True:
                await out.tracker.wait_settled()
                done, failed = out.tracker.take()
                await source.commit(done)
                await source.reject(failed)

        await source.start()
        tasks = [asyncio.create_task(source.run(out)), asyncio.create_task(acks())]
        await source.listening.wait()
        try:
            result = await _with_load(source.address[1], n, conns, seconds)  # type: ignore[index]
        finally:
            out.stopping.set()
            await tasks[0]
            tasks[1].cancel()
            await source.stop()
        result["msgs_per_s"] = round(result["rps"] * n)
        result["committed"] = committed
        result["mean_batch"] = round(committed / max(1, batches), 1)
        return result

    with _pinned():
        return {"server": f"gateway({ack})", "items": n, **uvloop.run(main())}


# ---------------------------------------------------------------- pytest-benchmark entry points
def _available(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def _bench(benchmark: Any, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    result = benchmark.pedantic(fn, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(result)
    return result


def test_server_httptools(benchmark: Any) -> None:
    r = _bench(benchmark, lambda: run_server_case("httptools"))
    assert r["statuses"] == {"202": r["requests"]}


def test_server_aiohttp(benchmark: Any) -> None:
    r = _bench(benchmark, lambda: run_server_case("aiohttp"))
    assert r["statuses"] == {"202": r["requests"]}


def test_server_granian(benchmark: Any) -> None:
    import pytest

    if not _available("granian"):
        pytest.skip("granian is not installed (pip install granian to include it)")
    r = _bench(benchmark, lambda: run_server_case("granian"))
    assert r["statuses"] == {"202": r["requests"]}


def test_gateway_single_message(benchmark: Any) -> None:
    r = _bench(benchmark, lambda: run_gateway_case(1))
    assert r["statuses"] == {"202": r["requests"]} and r["committed"] == r["requests"]


def test_gateway_1000_message_batches(benchmark: Any) -> None:
    r = _bench(benchmark, lambda: run_gateway_case(1000, conns=8))
    assert r["statuses"] == {"202": r["requests"]} and r["committed"] == 1000 * r["requests"]


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--load":
        _load_main(json.loads(sys.argv[2]))
        sys.exit(0)
    secs = float(os.environ.get("BENCH_SECONDS", "3"))
    rows = []
    for name in SERVERS:
        if name == "granian" and not _available("granian"):
            continue
        for n, c in ((1, 32), (1000, 8)):
            rows.append(run_server_case(name, n, c, secs))
    rows.append(run_gateway_case(1, 32, secs))
    rows.append(run_gateway_case(1000, 8, secs))
    rows.append(run_gateway_case(1, 32, secs, ack="received"))
    print(f"{'server':20} {'items':>5} {'req/s':>8} {'msg/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['server']:20} {r['items']:>5} {r['rps']:>8} {r['rps'] * r['items']:>9} {r['p50_ms']:>8} "
              f"{r['p95_ms']:>8} {r['p99_ms']:>8}  {r['statuses']}")
