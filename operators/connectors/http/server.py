"""A small HTTP/1.1 server: asyncio.Protocol + httptools (llhttp), chosen by measurement
(`benchmarks/bench_http.py`; see docs/http.md).

It does what the gateway needs and no more: keep-alive and pipelining (requests on one connection
are answered in order, reading pauses while one is being handled, so a connection holds at most one
body), `Expect: 100-continue`, a 64 KiB cap on request line + headers (431), a body cap checked on
`Content-Length` before the body is read and again while it streams in (chunked), a budget of body
bytes held over all connections (503 past it), a connection cap, and timeouts for idle connections
and for clients that trickle a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools

__all__ = ["HttpServer", "Request", "Response"]

log = logging.getLogger("streamdag.http")


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps the last value
    body: bytes
    peer: str
    arrived: float = 0.0  # wall-clock time (epoch seconds) of the request's first byte


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # close the connection after this response

    def encode(self, keep_alive: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(self.body)}\r\n"]
        if self.body:
            lines.append(f"Content-Type: {self.content_type}\r\n")
        for k, v in self.headers:
            lines.append(f"{k}: {v}\r\n")
        if not keep_alive or self.close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + self.body


MAX_HEAD = 64 * 1024  # request line + headers; llhttp itself sets no limit
Handler = Callable[[Request], Awaitable[Response]]
# Called with (method, path, headers) before the body is read; a Response refuses the request early.
HeadCheck = Callable[[str, str, dict[str, str]], Response | None]


def _error(status: int, code: str, message: str) -> Response:
    import orjson

    return Response(status, orjson.dumps({"error": code, "message": message}), close=True)


class _Conn(asyncio.Protocol):
    __slots__ = (
        "arrived",
        "body",
        "body_size",
        "busy",
        "closing",
        "head_bytes",
        "head_size",
        "headers",
        "held",
        "last_active",
        "parser",
        "peer",
        "queue",
        "reading_since",
        "refused",
        "server",
        "transport",
        "url",
        "worker",
    )

    def __init__(self, server: HttpServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head_size = 0  # while a head is being read: 1 + its bytes so far (capped: MAX_HEAD); else 0
        self.head_bytes = 0  # URL and header bytes the parser handed over (a head that came in one read)
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.queue: list[tuple[Request, bool]] = []
        self.worker: asyncio.Task[None] | None = None
        self.peer = ""
        self.last_active = time.monotonic()
        self.busy = False
        self.closing = False
        self.refused: Response | None = None
        self.held = 0  # body bytes this connection counts against the server's buffer budget
        self.reading_since = 0.0  # when the request being received began (0: none)
        self.arrived = 0.0  # the same instant, wall clock: the messages' end-to-end latency starts there

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        server = self.server
        if len(server.conns) >= server.max_connections:
            resp = _error(503, "too_many_connections", "connection limit reached; retry later")
            resp.headers.append(("Retry-After", str(server.retry_after)))
            transport.write(resp.encode(False))
            transport.close()
            return
        server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A handler still running is not cancelled: it finishes (bounded by the gateway's
        # ack_timeout) so its outcome is recorded, e.g. for an Idempotency-Key retry.
        self.server.conns.discard(self)
        self.closing = True
        if not self.busy:
            self._release()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
            if self.head_size and not self.closing:  # headers still incomplete after this chunk
                self.head_size += len(data)
                if self.head_size > MAX_HEAD:
                    self._fail(_error(431, "headers_too_large",
                                      f"request line and headers exceed {MAX_HEAD} bytes"))
        except httptools.HttpParserUpgrade:
            self._fail(_error(400, "bad_request", "protocol upgrade is not supported"))
        except httptools.HttpParserError as exc:
            if self.refused is not None:
                self._fail(self.refused)
            else:
                self._fail(_error(400, "bad_request", f"malformed HTTP request: {exc}"))

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.reading_since = time.monotonic()
        self.arrived = time.time()
        self.head_size = 1  # in the head: data_received counts it (httptools buffers header values)
        self.head_bytes = 0
        self.url = b""
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.refused = None

    def on_url(self, url: bytes) -> None:
        if not self.url:  # the rest of the request line: method, space, " HTTP/1.1\r\n"; the head's last CRLF
            self.head_bytes += len(self.parser.get_method()) + 1 + 11 + 2
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count_head(len(name) + len(value) + 4)  # name: value\r\n

    def _count_head(self, n: int) -> None:
        """431 as soon as the head is known to exceed MAX_HEAD, even when it came in one read (then
        data_received's count comes too late). The count is exact for a head without optional
        whitespace: request line, `name: value` lines and the blank line. Raising stops the parser;
        data_received answers."""
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD:
            self.refused = _error(431, "headers_too_large",
                                  f"request line and headers exceed {MAX_HEAD} bytes")
            raise ValueError(self.refused.body)

    def on_headers_complete(self) -> None:
        self.head_size = 0
        parsed = httptools.parse_url(self.url)
        path = parsed.path.decode("latin-1") if parsed.path else "/"
        method = self.parser.get_method().decode("latin-1")
        resp = self.server.head_check(method, path, self.headers) if self.server.head_check else None
        if resp is None:
            cl = self.headers.get("content-length")
            if cl is not None and cl.isdigit() and int(cl) > self.server.max_body:
                resp = _error(413, "too_large", f"body exceeds max_body_bytes ({self.server.max_body} bytes)")
        if resp is not None:
            resp.close = True  # the body stays unread, so the connection cannot be reused
            self.refused = resp
            self._fail(resp)
            return
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refused is not None:
            return
        server = self.server
        self.body_size += len(body)
        if self.body_size > server.max_body:
            resp = _error(413, "too_large", f"body exceeds max_body_bytes ({server.max_body} bytes)")
            self.refused = resp
            self._fail(resp)
            return
        if server.buffered + len(body) > server.max_buffered:
            resp = _error(503, "busy", "too many request bodies in memory; retry later")
            resp.headers.append(("Retry-After", str(server.retry_after)))
            self.refused = resp
            self._fail(resp)
            return
        server.buffered += len(body)
        self.held += len(body)
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.reading_since = 0.0
        if self.refused is not None or self.closing:
            return
        parsed = httptools.parse_url(self.url)
        req = Request(
            self.parser.get_method().decode("latin-1"),
            parsed.path.decode("latin-1") if parsed.path else "/",
            parsed.query.decode("latin-1") if parsed.query else "",
            self.headers,
            b"".join(self.body),
            self.peer,
            self.arrived,
        )
        self.body = []
        self.queue.append((req, self.parser.should_keep_alive()))
        if self.transport is not None:
            self.transport.pause_reading()  # one request at a time per connection: memory stays bounded
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._work())

    # -- internals
    async def _work(self) -> None:
        handler = self.server.handler
        while self.queue and not self.closing:
            req, keep_alive = self.queue.pop(0)
            self.busy = True
            try:
                resp = await handler(req)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("http handler failed on %s %s", req.method, req.path)
                resp = _error(500, "internal", "internal error")
            finally:
                self.busy = False
                self._release()
            self.last_active = time.monotonic()
            if self.transport is None or self.transport.is_closing():
                return
            self.transport.write(resp.encode(keep_alive))
            if resp.close or not keep_alive:
                self.closing = True
                self.transport.close()
                return
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def _release(self) -> None:
        """Give this connection's body bytes back to the buffer budget."""
        self.server.buffered -= self.held
        self.held = 0

    def _fail(self, resp: Response) -> None:
        """Answer and close: the stream cannot be trusted (parse error) or is left unread (413)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.queue.clear()
        self.transport.write(resp.encode(False))
        self.transport.close()


class HttpServer:
    """Serve `handler` on host:port. `start()` returns the bound (host, port)."""

    def __init__(self, handler: Handler, *, max_body: int, max_connections: int = 1024,
                 max_buffered: int = 64 << 20, head_check: HeadCheck | None = None, idle_timeout: float = 30.0,
                 retry_after: int = 1):
        self.handler = handler
        self.max_body = max_body
        self.max_buffered = max_buffered  # request body bytes held at once, all connections together
        self.buffered = 0
        self.max_connections = max_connections
        self.head_check = head_check
        self.idle_timeout = idle_timeout
        self.retry_after = retry_after
        self.conns: set[_Conn] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> tuple[str, int]:
        """Listen; with `reuse_port` (workers of one graph), beside other processes on the same port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), host, port, backlog=1024,
                                                reuse_address=True, reuse_port=reuse_port or None)
        self._sweeper = loop.create_task(self._sweep())
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def _sweep(self) -> None:
        """Close connections idle (no bytes, no request in progress) longer than `idle_timeout`, and
        those taking longer than that to send one request (slow clients trickling bytes)."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 2))
            limit = time.monotonic() - self.idle_timeout
            for conn in list(self.conns):
                if conn.transport is None or conn.busy or conn.queue:
                    continue
                if conn.last_active < limit or 0 < conn.reading_since < limit:
                    conn.transport.close()

    async def stop(self) -> None:
        """Stop accepting, then close every connection (in-flight handlers are cancelled)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.conns)}
