"""The HTTP endpoint of a running graph, an asyncio server inside the run's own loop.

`GET /metrics` Prometheus text, `GET /api/stats` JSON, `GET /` the status page, `GET /healthz`,
`GET /api/tap` an NDJSON stream of sampled messages when the run allows it (engine.observe.tap).
It speaks just enough HTTP/1.1 for Prometheus, curl and browsers: one request per connection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from engine.observe.metrics import CONTENT_TYPE, make_registry, render_metrics, render_openmetrics
from engine.observe.monitor import Monitor
from engine.observe.page import status_page
from engine.observe.snapshot import stats_snapshot
from engine.runtime.state import as_view

__all__ = ["MetricsServer"]

log = logging.getLogger("streamdag.observe")

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


class MetricsServer:
    """Serves one runner's metrics; `port=0` picks a free port (see `.port` after `start`)."""

    def __init__(self, runner: Any, monitor: Monitor | None = None, host: str = "127.0.0.1", port: int = 0,
                 tap: bool = False):
        self.runner = runner = as_view(runner)
        self.tap = tap  # whether /api/tap may show payloads (run --tap, or `tap: true` in the graph)
        self._closing = asyncio.Event()  # ends the tap streams when the server closes
        self.monitor = monitor
        self.host = host
        self.port = port
        self.registry = make_registry(runner, monitor)
        self._page = status_page(runner.graph).encode()
        self._server: asyncio.Server | None = None
        self.presence: Any = None  # engine.observe.presence.Presence, when the run is registered

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "metrics on http://%s:%d/metrics, status page on http://%s:%d/",
            self.host,
            self.port,
            self.host,
            self.port,
            extra={"event": "metrics_listening", "port": self.port},
        )

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def stats(self) -> dict[str, Any]:
        """`/api/stats`: this worker's snapshot, its id, and (registered) every worker of the graph and their sum."""
        snap = stats_snapshot(self.runner, self.monitor)
        w = self.runner.worker
        snap["worker"] = {"id": w.id, "index": w.index, "count": w.count}
        if self.presence is not None:
            from engine.observe.presence import sum_totals

            peers = self.presence.peers
            snap["workers"] = {"list": peers, "sum": sum_totals(peers)}
        return snap

    def respond(self, method: str, path: str, accept: str = "") -> tuple[int, str, bytes]:
        """Status, content type and body for one request (no I/O: tests call it directly too)."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            if "application/openmetrics-text" in accept:  # with exemplars (engine/observe/tracing.py)
                return (200, *render_openmetrics(self.registry))
            return 200, CONTENT_TYPE, render_metrics(self.registry)
        if path == "/api/stats":
            return 200, "application/json", orjson.dumps(self.stats())
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", self._page
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /api/stats or /\n"

    async def _tap(self, writer: asyncio.StreamWriter, query: str) -> None:
        """`/api/tap`: a 200 and NDJSON lines until the client or the run goes; or a 4xx with why."""
        from engine.observe.tap import TapRefused, tap_stream

        started = False

        def write(data: bytes) -> None:
            nonlocal started
            if not started:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\n"
                             b"Connection: close\r\n\r\n")
                started = True
            writer.write(data)

        try:
            await tap_stream(self.runner, query, self.tap, write, writer.drain, self._closing)
        except TapRefused as exc:
            if not started:
                body = f"{exc}\n".encode()
                writer.write(f"HTTP/1.1 {exc.status} {_REASONS[exc.status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1") + body)
                await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) == 3 and parts[0] == "GET" and parts[1].split("?", 1)[0] == "/api/tap":
                await self._tap(writer, parts[1].partition("?")[2])
                return
            if len(parts) != 3:
                status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request line\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.respond(method, parts[1], _accept(head))
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass  # the client went away or sent garbage: nothing to answer
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


def _accept(head: bytes) -> str:
    """The request's Accept header (lower case), or ''."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"accept":
            return value.strip().decode("latin-1").lower()
    return ""
