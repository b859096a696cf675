"""`http_source`: the HTTP ingest gateway (`POST /api/v1/data/ingest`).

A request goes: head check (route, auth → 401, declared size → 413, before the body is read) →
body (rate limit → 429, room → 503, decode → 400/413/415, items → 400/413, schema → 422) →
admitted. With `on_invalid_item: accept_valid` an invalid item (schema, `idempotency_expr`, an
NDJSON line that is not JSON) is left out instead of refusing the request, and the reply lists it.
Admitted items are appended to one list that a pump task sends downstream in batches (many small
requests become one micro-batch; there is no await per message). Every item's ack
token is `(request, index)`; `commit`/`reject` count them down and resolve the request's future,
and only then (`ack: committed`, the default) does the client get 202. Admission is bounded by
`max_in_flight` unsettled items, so memory is bounded whatever the load: past it, 503.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson

from engine import CheckContext, CheckIssue, Msg, PayloadTooLarge, Source, error_envelope
from operators.connectors.http.auth import Authenticator, BucketSet, load_credentials
from operators.connectors.http.body import IngestError, SchemaCheck, decode_body, media_type, parse_items
from operators.connectors.http.config import HttpSourceConfig, check_config
from operators.connectors.http.openapi import openapi_document

if TYPE_CHECKING:  # asyncio is imported where used: validating a graph loads this module, not asyncio
    import asyncio

__all__ = ["HttpSource"]

_JSON = "application/json"


def _reply(status: int, payload: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> Any:
    from operators.connectors.http.server import Response

    return Response(status, orjson.dumps(payload), _JSON, headers or [])


class _Request:
    """One admitted request waiting for its items' acks; `(self, index)` is each item's token."""

    __slots__ = ("failures", "future", "remaining")

    def __init__(self, n: int, future: asyncio.Future[None]):
        self.remaining = n
        self.failures: list[tuple[int, str]] = []
        self.future = future


class _Idem:
    """A remembered Idempotency-Key: the body's digest and, once done, the reply to replay."""

    __slots__ = ("digest", "expires", "payload", "status")

    def __init__(self, digest: bytes, expires: float):
        self.digest = digest
        self.status = 0  # 0 while in progress
        self.payload: dict[str, Any] = {}
        self.expires = expires


class HttpSource(Source):
    """HTTP ingest gateway; see docs/http.md."""

    trace_context: ClassVar[bool] = True  # traceparent header -> meta["headers"] (docs/observe.md)

    Config: ClassVar[type[HttpSourceConfig]] = HttpSourceConfig
    example = """\
version: 1
name: http_source_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  ingest:
    type: http_source
    config: {host: 127.0.0.1, port: 8080, max_batch: 1000}
  out: {type: file_sink, inputs: [ingest], config: {path: out/ingested.ndjson, mode: append}}
  dead: {type: file_sink, inputs: [ingest.errors], config: {path: out/dead.ndjson}}
"""
    shared_by: ClassVar[str] = "the port: every worker listens on it (SO_REUSEPORT), the kernel spreads connections"
    durable_positions: ClassVar[bool] = True  # a client waits for its answer until the ack

    def __init__(self, node_id: str, config: HttpSourceConfig, ctx: Any):
        import asyncio

        super().__init__(node_id, config, ctx)
        cfg = config
        self.auth: Authenticator | None = None
        self.buckets: BucketSet | None = None
        if cfg.rate_limit is not None:
            self.buckets = BucketSet(cfg.rate_limit.global_, cfg.rate_limit.per_credential)
        schema = ctx.schemas.get(cfg.schema_) if isinstance(cfg.schema_, str) else cfg.schema_
        self.item_schema: dict[str, Any] | None = schema
        self.schema = SchemaCheck(schema) if schema is not None else None
        self.id_expr = None
        if cfg.idempotency_expr:
            from engine import compile_expr

            self.id_expr = compile_expr(cfg.idempotency_expr)
        self.openapi = orjson.dumps(openapi_document(cfg, schema))
        self.in_flight = 0  # admitted items not yet settled
        self.queue: list[Msg] = []  # admitted, not yet handed to the graph
        self.dead: list[Msg] = []  # bodies beyond the payload limits, for the errors port
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # set when no admitted item is unsettled (for a clean stop)
        self.idem: OrderedDict[tuple[str, str], _Idem] = OrderedDict()
        self.seq = itertools.count(1)
        self.server: Any = None
        self.tracker: Any = None  # the SourceSender's AckTracker, set by `run`
        self.address: tuple[str, int] | None = None  # bound (host, port), set once listening
        self.listening = asyncio.Event()
        self.accepting = False
        self.counts = {"accepted": 0, "requests": 0, "rejected": 0, "late_failures": 0, "refused_items": 0}
        self._ready_cache: tuple[float, int, dict[str, Any]] = (0.0, 0, {})

    @classmethod
    def json_bodies(cls, config: Any) -> bool:
        return True  # each item as engine.codec.loads (orjson) parsed it; a refused one never leaves

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        return check_config(config, ctx)

    def metrics(self) -> dict[str, int]:
        """Counters beside the runtime's: requests, items accepted, requests refused..."""
        return dict(self.counts)

    def levels(self) -> dict[str, float]:
        """Levels (they go down too): items in flight, open connections."""
        conns = len(self.server.conns) if self.server is not None else 0
        return {"in_flight": self.in_flight, "connections": conns}

    # -- lifecycle
    async def start(self) -> None:
        from operators.connectors.http.server import HttpServer

        cfg = self.config
        if cfg.auth is not None:
            self.auth = Authenticator(cfg.auth, load_credentials(cfg.auth, self.ctx.path))
        self.server = HttpServer(self.handle, max_body=cfg.max_body_bytes, max_connections=cfg.max_connections,
                                 max_buffered=max(cfg.max_buffered_bytes, cfg.max_body_bytes),
                                 head_check=self.head_check, retry_after=cfg.retry_after,
                                 idle_timeout=cfg.idle_timeout)
        self.address = await self.server.start(cfg.host, cfg.port, reuse_port=self.ctx.worker.count > 1)
        self.ctx.log.info("http_source %s listening on http://%s:%d%s", self.id, *self.address, cfg.path)

    async def run(self, out: Any) -> None:
        import asyncio

        self.tracker = out.tracker
        self.accepting = True
        self.listening.set()
        pump = asyncio.get_running_loop().create_task(self._pump(out))
        try:
            await out.stopping.wait()
        finally:
            self.accepting = False  # new ingest requests get 503 from here on
            await self._drain(pump)

    async def _drain(self, pump: asyncio.Task[None]) -> None:
        """Let admitted requests finish (queue sent, acks back) for up to `ack_timeout` seconds."""
        import asyncio

        if self.in_flight and not pump.done():
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), self.config.ack_timeout)
            except TimeoutError:
                self.ctx.log.warning("http_source %s stopped with %d item(s) unacknowledged", self.id,
                                     self.in_flight)
        pump.cancel()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _pump(self, out: Any) -> None:
        """Hand admitted items to the graph in batches; waits while the graph has no room."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue or self.dead:
                    batch, self.queue = self.queue, []
                    dead, self.dead = self.dead, []
                    await out.send(batch, dead)
        except Exception:
            # the graph is gone: refuse new requests; waiting ones get 504 at their ack_timeout
            self.accepting = False
            self.ctx.log.exception("http_source %s cannot hand items to the graph", self.id)
            raise

    # -- acks from the runtime
    async def commit(self, tokens: list[Any]) -> None:
        for req, _ in tokens:
            req.remaining -= 1
            if req.remaining == 0 and not req.future.done():
                req.future.set_result(None)
        self.in_flight -= len(tokens)
        if self.in_flight == 0:
            self.idle.set()

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        for (req, index), reason in failures:
            req.failures.append((index, reason))
            req.remaining -= 1
            if req.remaining == 0 and not req.future.done():
                req.future.set_result(None)
        self.in_flight -= len(failures)
        if self.in_flight == 0:
            self.idle.set()
        if self.config.ack == "received" and failures:  # the client already got 202: say so here
            self.counts["late_failures"] += len(failures)
            self.ctx.log.warning("http_source %s: %d item(s) acknowledged to clients (ack: received) then "
                                 "failed downstream; first: %s", self.id, len(failures), failures[0][1])

    # -- HTTP
    def head_check(self, method: str, path: str, headers: dict[str, str]) -> Any:
        """Before the body is read: refuse what needs no body to judge (auth), and close."""
        if path != self.config.path or method != "POST" or self.auth is None:
            return None
        name = self.auth.identify(headers)
        if name is None:
            self.counts["rejected"] += 1
            return _reply(401, {"error": "unauthorized", "message": "missing or invalid credentials"},
                          [("WWW-Authenticate", self.auth.challenge)])
        headers[":credential"] = name  # not a legal header name, so a client cannot set it
        return None

    async def handle(self, req: Any) -> Any:
        from operators.connectors.http.server import Response

        cfg = self.config
        if req.path == cfg.path:
            if req.method != "POST":
                return _reply(405, {"error": "method_not_allowed", "message": "use POST"}, [("Allow", "POST")])
            try:
                return await self.ingest(req)
            except IngestError as exc:
                self.counts["rejected"] += 1
                headers = [("Retry-After", str(exc.extra.pop("retry_after")))] if "retry_after" in exc.extra else []
                return _reply(exc.status, exc.body(), headers)
        if req.method != "GET":
            if req.path in ("/healthz", "/readyz", "/openapi.json"):
                return _reply(405, {"error": "method_not_allowed", "message": "use GET"}, [("Allow", "GET")])
            return _reply(404, {"error": "not_found", "message": f"{req.method} {req.path} is not served"})
        if req.path == "/healthz":
            return _reply(200, {"status": "ok"})
        if req.path == "/readyz":
            status, body = await self.readiness()
            return _reply(status, body)
        if req.path == "/openapi.json":
            return Response(200, self.openapi, _JSON)
        return _reply(404, {"error": "not_found", "message": f"no route {req.path}"})

    def _credential(self, req: Any) -> str:
        return req.headers.get(":credential") or req.peer

    async def ingest(self, req: Any) -> Any:
        cfg = self.config
        self.counts["requests"] += 1
        cred = self._credential(req)
        if self.buckets is not None:
            wait = self.buckets.admit(cred)
            if wait:
                raise IngestError(429, "rate_limited", f"rate limit exceeded; retry in {wait} s",
                                  {"retry_after": wait})
        if not self.accepting or self.in_flight >= cfg.max_in_flight or not self.tracker.has_room():
            raise self._busy()  # the tracker's limit is the graph's `defaults.max_in_flight`
        mtype = media_type(req.headers.get("content-type"))
        data = decode_body(req.body, req.headers.get("content-encoding"), cfg.max_decompressed_bytes)
        # accept_valid: invalid items are collected here (index -> reason) instead of refusing the request
        refused: dict[int, dict[str, Any]] | None = {} if cfg.on_invalid_item == "accept_valid" else None
        try:
            items, single = parse_items(data, mtype, cfg.max_batch, cfg.max_decompressed_bytes, refused)
        except PayloadTooLarge as exc:  # dead-lettered with its bytes, and refused: 422 once committed
            status, payload = await self._admit(req, [data], True, None, cred, dead_letter=str(exc))
            if status == 202:
                status, payload = 422, {"error": "too_deep", "message": f"{exc}; the body was dead-lettered",
                                        "dead_lettered": True}
            return _reply(status, payload)
        if self.schema is not None:
            if refused is not None:
                for err in self.schema.errors(items, limit=len(items)):
                    refused.setdefault(err["index"], {"error": "schema", **err})
            else:
                errors = self.schema.errors(items)
                if errors:
                    raise IngestError(422, "schema", f"{len(errors)} item(s) fail the schema; none was accepted",
                                      {"items": errors})
        key = req.headers.get("idempotency-key")
        entry = None
        if key is not None and cfg.idempotency_cache:
            replay, entry = self._idempotency(cred, key, hashlib.blake2b(data, digest_size=16).digest())
            if replay is not None:
                return replay
        del data  # the items are what stays in memory from here on
        try:
            status, payload = await self._admit(req, items, single, key, cred, refused)
        except BaseException:
            if entry is not None:
                self.idem.pop((cred, key), None)  # type: ignore[arg-type]
            raise
        if entry is not None:
            if status == 202:
                entry.status, entry.payload = status, payload
            else:  # not done: a retry must be free to try again
                self.idem.pop((cred, key), None)  # type: ignore[arg-type]
        return _reply(status, payload)

    def _busy(self) -> IngestError:
        return IngestError(503, "unavailable", "the graph has no room; retry later",
                           {"retry_after": self.config.retry_after})

    def _idempotency(self, cred: str, key: str, digest: bytes) -> tuple[Any, _Idem | None]:
        """A reply to replay (or a conflict) for a known key; else the new entry to fill in."""
        now = time.monotonic()
        idem = self.idem
        while idem:  # expire from the oldest
            first = next(iter(idem.values()))
            if first.expires > now and len(idem) < self.config.idempotency_cache:
                break
            idem.popitem(last=False)
        found = idem.get((cred, key))
        if found is not None:
            if found.digest != digest:
                return _reply(422, {"error": "idempotency_key_reused",
                                    "message": "Idempotency-Key was used with a different body"}), None
            if found.status == 0:
                return _reply(409, {"error": "in_progress",
                                    "message": "a request with this Idempotency-Key is in progress"}), None
            return _reply(found.status, found.payload, [("Idempotent-Replayed", "true")]), None
        entry = idem[(cred, key)] = _Idem(digest, now + self.config.idempotency_ttl)
        return None, entry

    async def _admit(self, req: Any, items: list[Any], single: bool, key: str | None, cred: str,
                     refused: dict[int, dict[str, Any]] | None = None, dead_letter: str | None = None
                     ) -> tuple[int, dict[str, Any]]:
        """Queue the items (to the errors port with `dead_letter` as the reason, if given) and wait
        for their acks (`ack: committed`); `refused` items (accept_valid) stay out and are listed."""
        import asyncio

        cfg = self.config
        if self.in_flight + len(items) > cfg.max_in_flight and self.in_flight > 0:
            raise self._busy()
        ids = self._ids(items, single, key, refused) if dead_letter is None else None
        keep: Any = range(len(items))  # indexes of the items that enter the graph
        if refused:
            keep = [i for i in keep if i not in refused]
            if not keep:
                raise IngestError(422, "no_valid_item", f"none of the {len(items)} item(s) is valid; none was "
                                  "accepted", {"refused": [refused[i] for i in sorted(refused)]})
            self.counts["refused_items"] += len(refused)
        n = len(keep)
        loop = asyncio.get_running_loop()
        pending = _Request(n, loop.create_future())
        new_ack = self.tracker.new
        now = req.arrived or time.time()  # wall clock at the request's first byte
        rid = req.headers.get("x-request-id") or f"{self.id}-{next(self.seq)}"
        size = max(1, len(req.body) // len(items))
        # `timestamp` starts the end-to-end latency the sinks measure (and jetstream_sink carries on)
        base = {"source": self.id, "received_at": now, "timestamp": now, "request_id": rid}
        if req.headers.get(":credential"):
            base["credential"] = cred
        tp = req.headers.get("traceparent")
        if tp is not None:  # W3C trace context: a traced run continues the caller's trace
            base["headers"] = {"traceparent": tp}
        queue = self.queue if dead_letter is None else []
        for i in keep:  # an item's token keeps its index in the request, as the replies report it
            meta = dict(base)
            if ids is not None:
                meta["id"] = ids[i]
            queue.append(Msg(items[i], meta, new_ack((pending, i)), size))
        if dead_letter is not None:
            self.dead += [error_envelope(m, self.id, dead_letter) for m in queue]
        self.in_flight += n
        self.wake.set()
        self.counts["accepted" if dead_letter is None else "rejected"] += n
        status, payload = await self._outcome(pending, n)
        if refused:  # accept_valid: the items left out, with their reasons, beside the outcome of the rest
            payload["refused"] = [refused[i] for i in sorted(refused)]
        return status, payload

    async def _outcome(self, pending: _Request, n: int) -> tuple[int, dict[str, Any]]:
        """The reply for `n` admitted items: at once (`ack: received`) or once their acks resolved."""
        import asyncio

        cfg = self.config
        if cfg.ack == "received":
            return 202, {"accepted": n, "ack": "received"}
        try:
            await asyncio.wait_for(asyncio.shield(pending.future), cfg.ack_timeout)
        except TimeoutError:
            return 504, {"error": "ack_timeout",
                         "message": f"items not acknowledged within {cfg.ack_timeout} s; the outcome is "
                                    "unknown: retry with the same Idempotency-Key"}
        if pending.failures:
            failed = sorted(pending.failures)
            return 502, {"error": "not_committed",
                         "message": f"{len(failed)} of {n} item(s) were not committed downstream",
                         "accepted": n - len(failed),
                         "failed": [{"index": i, "reason": r} for i, r in failed[:100]]}
        return 202, {"accepted": n, "ack": "committed"}

    def _ids(self, items: list[Any], single: bool, key: str | None,
             refused: dict[int, dict[str, Any]] | None = None) -> list[str] | None:
        """Message ids: the CEL expression per item, else the key (`key:index` inside a batch). With
        `refused` (accept_valid), an item the expression fails on is refused there, not the request."""
        if self.id_expr is not None:
            from engine import EvalError

            ids: list[str] = []
            errors: list[dict[str, Any]] = []
            for i, item in enumerate(items):
                if refused and i in refused:
                    ids.append("")
                    continue
                try:
                    ids.append(str(self.id_expr(item, {})))
                except EvalError as exc:
                    error = {"index": i, "path": "/", "message": f"idempotency_expr: {exc}"}
                    if refused is None:
                        errors.append(error)
                    else:
                        refused[i] = {"error": "idempotency_expr", **error}
                        ids.append("")
            if errors:
                raise IngestError(422, "idempotency_expr", "idempotency_expr failed on some items; none was "
                                  "accepted", {"items": errors[:100]})
            return ids
        if key is None:
            return None
        return [key] if single else [f"{key}:{i}" for i in range(len(items))]

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 when accepting and every connection of the graph answers a TCP connect (cached 1 s)."""
        import asyncio

        now = time.monotonic()
        stamp, status, body = self._ready_cache
        if now - stamp < 1.0:
            return status, body
        results: dict[str, str] = {}
        targets = {name: _endpoint(c) for name, c in self.ctx.connections.items()}

        async def probe(name: str, hp: tuple[str, int] | None) -> None:
            if hp is None:
                results[name] = "unknown address"
                return
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(*hp), self.config.readiness_timeout)
                w.close()
                results[name] = "ok"
            except (OSError, TimeoutError) as exc:
                results[name] = f"unreachable: {exc.__class__.__name__}"

        await asyncio.gather(*(probe(n, hp) for n, hp in targets.items()))
        ok = self.accepting and all(v == "ok" for v in results.values())
        body = {"ready": ok, "accepting": self.accepting, "connections": results}
        status = 200 if ok else 503
        self._ready_cache = (now, status, body)
        return status, body


_PORTS = {"nats": 4222, "redis": 6379, "rediss": 6379, "postgres": 5432, "postgresql": 5432, "http": 80,
          "https": 443, "tls": 4222}


def _endpoint(conn: dict[str, Any]) -> tuple[str, int] | None:
    """host:port of a connection's (first) URL or DSN."""
    url = conn.get("url") or conn.get("dsn")
    if not isinstance(url, str):
        return None
    url = url.split(",")[0].strip()
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or _PORTS.get(parts.scheme, 80)
