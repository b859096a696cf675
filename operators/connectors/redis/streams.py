"""Redis Streams: `redis_stream_source` (consumer groups, recovery of stuck entries) and `redis_stream_sink`.

The source reads with XREADGROUP in batches and XACKs only the entries whose acks the runtime hands
back through `commit` (pipelined, one XACK per chunk of ids). Entries another consumer left pending
longer than `min_idle`, and this consumer's own pending entries at start (a crash before the ack),
are claimed (XPENDING for the delivery count, then XCLAIM) and delivered again; past `max_deliver`
deliveries they go to the `errors` port instead. Redis being unreachable is retried with backoff:
the group's position and pending list live in Redis, so nothing is lost across a restart.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import BeforeValidator, Field, model_validator

from engine import (
    CelExpr,
    CheckContext,
    CheckIssue,
    ConfigError,
    ConnectionLost,
    EvalError,
    Msg,
    NodeConfig,
    PayloadTooLarge,
    PositiveDuration,
    RetryPolicy,
    Sink,
    Size,
    Source,
    SourceSender,
    StopRetrying,
    Unavailable,
    codec,
    compile_expr,
    connection_field,
    encode_failure,
)
from operators.connectors.redis.connection import (
    connection_errors,
    first_refusal,
    raise_if_cancelled,
    redis_client,
)

if TYPE_CHECKING:  # asyncio is imported where used: validating a graph loads this module, not asyncio
    import asyncio

__all__ = ["XADD_SCRIPT", "RedisStreamSink", "RedisStreamSinkConfig", "RedisStreamSource", "RedisStreamSourceConfig"]

T = TypeVar("T")
_ACK_CHUNK = 2000  # ids per XACK command


class _LostGroup(Exception):
    """The consumer group is gone (a restart without persistence): created again, then retried."""


class _Stopped(Exception):
    """The source was asked to stop while waiting to reconnect."""


class RedisStreamSourceConfig(NodeConfig):
    """Read a Redis stream through a consumer group; XACK when the sinks have committed."""

    connection: str = connection_field("redis", "cache")
    stream: str = Field(description="Stream key.", examples=["events"])
    group: str = Field(description="Consumer group; created if missing.", examples=["etl"])
    consumer: str | None = Field(
        None, description="Consumer name; unique per process by default (host-pid-random). Set it to a "
        "stable name to take this consumer's own pending entries back immediately after a restart.")
    field: str = Field("body", description="Entry field holding the message body.")
    format: Literal["json", "text", "bytes"] = Field(
        "json", description="How the body field decodes: JSON (orjson), UTF-8 text, or raw bytes.")
    batch: int = Field(1000, ge=1, le=100_000, description="Entries per XREADGROUP / claim round.")
    block: PositiveDuration = Field(1.0, description="Longest wait of one XREADGROUP for new entries "
                            "(also bounds how long stopping takes).", examples=["1s", "200ms"])
    start: Annotated[Literal["$", "0"], BeforeValidator(lambda v: "0" if v == 0 and v is not False else v)] = Field(
        "$", description="Where a group created by this source starts: `$` new entries only, `0` the whole stream "
        "(`0` unquoted in YAML is accepted too).")
    min_idle: PositiveDuration = Field(5.0, description="Entries pending longer than this in any consumer "
                               "are claimed and delivered again (a dead worker's entries: takeover within min_idle + "
                               "claim_interval, docs/scale.md).", examples=["5s", "5m"])
    claim_interval: PositiveDuration = Field(
        1.0, description="Time between two reclaim passes (one runs at start). Each pass also resets the "
        "idle time of this consumer's own slow in-flight entries, so other consumers do not take them while "
        "they are being processed: keep it below half of `min_idle`.")
    max_deliver: int = Field(5, ge=1, description="Deliveries before an entry goes to the errors port "
                             "(dead letter) instead of being delivered again.")
    max_payload_bytes: Size = Field(
        codec.MAX_BYTES, ge=1, description="Largest body decoded as JSON; a larger one, or one nested deeper "
        "than 254 levels, goes to `errors` (docs/limits.md).")
    reconnect_max_backoff: PositiveDuration = Field(5.0, description="Longest wait between reconnection attempts.")
    exit_when_idle: bool = Field(False, description="Return once a read finds nothing new and nothing is in "
                                 "flight (backfills, tests); otherwise run until stopped.")


def _default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RedisStreamSource(Source):
    """XREADGROUP in batches; XACK on commit; XPENDING + XCLAIM for stuck entries; dead letters."""

    trace_context: ClassVar[bool] = True  # traceparent header -> meta["headers"] (docs/observe.md)

    Config: ClassVar[type[NodeConfig]] = RedisStreamSourceConfig
    example = """\
version: 1
name: redis_stream_source_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  events_in:
    type: redis_stream_source
    config: {connection: cache, stream: events, group: etl, field: body, max_deliver: 5}
  show: {type: stdout, inputs: [events_in]}
  dead: {type: redis_stream_sink, inputs: [events_in.errors], config: {connection: cache, stream: events.dead}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)
    shared_by: ClassVar[str] = "the consumer group: each worker is a consumer of its own name"
    redelivers = True  # reject() leaves the entry pending; reclaimed after min_idle; dead letter at max_deliver
    durable_positions = True  # XACK moves the group on
    config: RedisStreamSourceConfig

    @classmethod
    def json_bodies(cls, config: RedisStreamSourceConfig) -> bool:
        """format json (orjson) or text (str); not bytes."""
        return config.format in ("json", "text")

    @classmethod
    def redelivery_wait(cls, config: RedisStreamSourceConfig) -> float:
        """`min_idle`: a crashed consumer's pending entries are claimed once they are that old."""
        return float(config.min_idle)

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        if config.claim_interval * 2 > config.min_idle:
            yield CheckIssue(("claim_interval",), "W351", f"claim_interval ({config.claim_interval:g}s) should be "
                             f"below half of min_idle ({config.min_idle:g}s): slow in-flight entries may otherwise "
                             "be claimed by other consumers while still being processed", "warning")

    def __init__(self, node_id: str, config: RedisStreamSourceConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.consumer = config.consumer or _default_consumer()
        self._client: Any = None
        self._field = config.field.encode()
        self._inflight: set[bytes] = set()  # ids emitted and not yet acked (never claimed twice)
        self._dead: set[bytes] = set()  # ids sent to errors by this source (acked even if that fails)
        self._to_ack: list[bytes] = []  # commits that could not reach Redis yet
        self._stopping: asyncio.Event | None = None
        self.reclaimed = 0
        self.dead_lettered = 0
        self.reconnects = 0
        self._up: bool | None = None  # last Redis call reached the server (None: no call yet)
        self._reconnected = False  # a call failed on the connection and then went through
        self._lost_group = False  # NOGROUP seen: create the group again before the next call
        # reconnecting: from a quick first retry up to `reconnect_max_backoff`, until Redis answers
        self._reconnect = RetryPolicy(initial_backoff=0.1, max_backoff=config.reconnect_max_backoff)
        self.kept_alive = 0

    def connection_state(self) -> dict[str, bool]:
        """Up/down of this source's Redis connection, from its last call (no I/O; for the metrics)."""
        return {} if self._up is None else {self.config.connection: self._up}

    async def lag(self) -> int | None:
        """Entries not yet delivered to the group (XINFO GROUPS `lag`, Redis 7+), else None."""
        if self._client is None:
            return None
        for group in await self._client.xinfo_groups(self.config.stream):
            name = group.get("name", group.get(b"name"))
            if name in (self.config.group, self.config.group.encode()):
                lag = group.get("lag", group.get(b"lag"))
                return int(lag) if lag is not None else None
        return None

    async def start(self) -> None:
        self._client = await redis_client(self.ctx, self.config.connection)

    # -- reading -------------------------------------------------------------------------------
    async def run(self, out: SourceSender) -> None:
        cfg = self.config
        self._stopping = out.stopping
        try:
            await self._retrying(self._ensure_group)
            await self._recover(out, own=True)
            await self._recover(out, own=False)
            next_claim = time.monotonic() + cfg.claim_interval
            block_ms = max(1, int(cfg.block * 1000))
            streams = {cfg.stream: ">"}
            while not out.stopping.is_set():
                if self._to_ack:
                    await self._flush_acks()
                if time.monotonic() >= next_claim:
                    await self._keep_alive()
                    await self._recover(out, own=False)
                    next_claim = time.monotonic() + cfg.claim_interval
                await out.wait_room()
                resp = await self._retrying(partial(
                    self._client.xreadgroup, cfg.group, self.consumer, streams, count=cfg.batch, block=block_ms))
                entries = resp[0][1] if resp else []
                if entries:
                    await self._emit(entries, None, out)
                if self._reconnected:
                    # an XREADGROUP whose reply was lost (Redis went down after it ran) left entries
                    # pending on this consumer that were never emitted: take them back now (after
                    # emitting this read's entries, which are pending too)
                    self._reconnected = False
                    await self._recover(out, own=True)
                elif not entries and cfg.exit_when_idle and not self._inflight and not self._to_ack:
                    return
        except _Stopped:
            return

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self._client.xgroup_create(self.config.stream, self.config.group, id=self.config.start,
                                             mkstream=True)
            self.ctx.log.info("created group %s on %s from %s", self.config.group, self.config.stream,
                              self.config.start)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call; on connection loss retry with backoff (`RetryPolicy.call`) until it goes
        through or the run stops; a group lost with the server's data is created again first."""
        from redis.exceptions import ResponseError

        attempts = 0

        async def once() -> T:
            nonlocal attempts
            attempts += 1
            try:
                if self._lost_group:
                    await self._ensure_group()
                    self._lost_group = False
                result = await call()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) or self._lost_group:
                    raise ConfigError(f"redis stream {self.config.stream!r}, group {self.config.group!r}: "
                                      f"{exc}") from exc
                self.ctx.log.warning("group %s is gone from %s (a restart without persistence?): recreating "
                                     "it from %s", self.config.group, self.config.stream, self.config.start)
                self._lost_group = True
                raise _LostGroup from exc
            except connection_errors():
                self.reconnects += 1
                self._up = False
                raise
            raise_if_cancelled()
            return result

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, (_LostGroup, *connection_errors()))

        try:
            result = await self._reconnect.call(once, what=f"redis_stream_source {self.id}", log=self.ctx.log,
                                                retry_if=retryable, stopping=self._stopping)
        except StopRetrying as exc:
            raise _Stopped from exc
        self._up = True
        if attempts > 1:
            self._reconnected = True
        return result

    async def _recover(self, out: SourceSender, own: bool) -> None:
        """Claim pending entries (own: all of this consumer's; else: anyone's idle > min_idle), page by page."""
        cfg = self.config
        min_idle = 0 if own else int(cfg.min_idle * 1000)
        start = "-"
        while not out.stopping.is_set():
            kwargs: dict[str, Any] = {"consumername": self.consumer} if own else {"idle": min_idle}
            pending = await self._retrying(partial(
                self._client.xpending_range, cfg.stream, cfg.group, start, "+", cfg.batch, **kwargs))
            if not pending:
                return
            start = "(" + pending[-1]["message_id"].decode()
            counts = {p["message_id"]: p["times_delivered"] for p in pending
                      if p["message_id"] not in self._inflight}
            if counts:
                await out.wait_room()
                claimed = await self._retrying(partial(
                    self._client.xclaim, cfg.stream, cfg.group, self.consumer, min_idle, list(counts)))
                claimed = [e for e in claimed if e[0] is not None]
                if claimed:
                    self.reclaimed += len(claimed)
                    self.ctx.log.info("claimed %d pending entries of %s", len(claimed), cfg.stream)
                    await self._emit(claimed, counts, out)
            if len(pending) < cfg.batch:
                return

    async def _keep_alive(self) -> None:
        """Reset the idle time of our in-flight entries idle >= claim_interval (XCLAIM JUSTID: no count)."""
        cfg = self.config
        if not self._inflight:
            return
        idle = int(cfg.claim_interval * 1000)
        start = "-"
        while True:
            pending = await self._retrying(partial(
                self._client.xpending_range, cfg.stream, cfg.group, start, "+", cfg.batch,
                consumername=self.consumer, idle=idle))
            if not pending:
                return
            start = "(" + pending[-1]["message_id"].decode()
            ids = [p["message_id"] for p in pending if p["message_id"] in self._inflight]
            if ids:
                await self._retrying(partial(self._client.xclaim, cfg.stream, cfg.group, self.consumer, 0, ids,
                                             justid=True))
                self.kept_alive += len(ids)
            if len(pending) < cfg.batch:
                return

    async def _emit(self, entries: list[tuple[bytes, dict[bytes, bytes]]], counts: dict[bytes, int] | None,
                    out: SourceSender) -> None:
        """Turn entries into messages (errors for undecodable or over-delivered ones) and send them."""
        cfg = self.config
        new_ack = out.tracker.new
        fmt = cfg.format
        field = self._field
        stream = cfg.stream
        max_deliver = cfg.max_deliver
        limit = cfg.max_payload_bytes
        msgs: list[Msg] = []
        errors: list[Msg] = []
        for eid, fields in entries:
            delivery = 1 if counts is None else counts.get(eid, 0) + 1
            meta = {"source": self.id, "stream": stream, "id": eid.decode(), "delivery": delivery}
            raw = fields.get(field) if fields else None
            if fields and fields.get(b"traceparent"):  # trace context (docs/observe.md)
                meta["headers"] = {"traceparent": fields[b"traceparent"].decode("latin-1")}
            reason = None
            body: Any = None
            if raw is None:
                reason = f"entry has no field {cfg.field!r}"
            elif delivery > max_deliver:
                reason = f"delivered {delivery} times, more than max_deliver={max_deliver}"
            elif fmt == "json":
                try:
                    body = codec.loads(raw, limit)
                except orjson.JSONDecodeError as exc:
                    reason = f"body is not valid JSON: {exc}"
                except PayloadTooLarge as exc:
                    reason = f"body beyond the payload limits: {exc}"
            elif fmt == "text":
                try:
                    body = raw.decode()
                except UnicodeDecodeError as exc:
                    reason = f"body is not valid UTF-8: {exc}"
            else:
                body = raw
            msg = Msg(body, meta, new_ack(eid), len(raw) if raw is not None else 0)
            if reason is None:
                msgs.append(msg)
            else:
                if raw is None or body is None:
                    msg.body = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                                for k, v in (fields or {}).items()}
                self._dead.add(eid)
                self.dead_lettered += 1
                errors.append(out.error(msg, reason, delivery))
        self._inflight.update(eid for eid, _ in entries)
        await out.send(msgs, errors)

    # -- acks ----------------------------------------------------------------------------------
    async def commit(self, tokens: list[Any]) -> None:
        """XACK the ids, pipelined; if Redis is unreachable they are kept and sent with the next ones."""
        self._to_ack.extend(tokens)
        await self._flush_acks()
        raise_if_cancelled()

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        """Failed entries stay pending and are claimed again after `min_idle` (counting toward max_deliver).

        Entries this source already sent to `errors` (poison, over-delivered) are acked even so: they are
        never left pending forever, and they remain readable in the stream by id until trimmed."""
        dead = [t for t, _ in failures if t in self._dead]
        for token, reason in failures:
            if token in self._dead:
                self.ctx.log.error("dead letter of entry %s could not be delivered (%s); acking it anyway",
                                   token.decode(), reason)
            else:
                self.ctx.log.warning("entry %s failed (%s); it stays pending and is redelivered after %ss",
                                     token.decode(), reason, self.config.min_idle)
                self._inflight.discard(token)
        if dead:
            await self.commit(dead)

    async def _flush_acks(self) -> None:
        ids, self._to_ack = self._to_ack, []
        if not ids or self._client is None:
            self._to_ack[:0] = ids
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for i in range(0, len(ids), _ACK_CHUNK):
                pipe.execute_command("XACK", self.config.stream, self.config.group, *ids[i:i + _ACK_CHUNK])
            results = await pipe.execute(raise_on_error=False)
        except connection_errors() as exc:
            self.ctx.log.warning("XACK of %d entries postponed: %s", len(ids), exc)
            self._to_ack[:0] = ids
            return
        refused = first_refusal(results)
        if refused is not None:  # read-only, out of memory...: the same ids again with the next ones
            self.ctx.log.warning("XACK of %d entries postponed: %s", len(ids), refused)
            self._to_ack[:0] = ids
            return
        for res in results:  # NOGROUP (group destroyed): nothing is pending any more; other errors: report
            if isinstance(res, Exception):
                self.ctx.log.error("XACK on %s/%s failed: %s", self.config.stream, self.config.group, res)
        self._inflight.difference_update(ids)
        if self._dead:
            self._dead.difference_update(ids)

    async def stop(self) -> None:
        """Send the last acks; forget a generated consumer name that holds nothing (no pile of dead names)."""
        if self._client is None:
            return
        from redis.exceptions import ResponseError

        try:
            if self._to_ack:
                await self._flush_acks()
            if self.config.consumer is None and not self._to_ack:
                cfg = self.config
                mine = await self._client.xpending_range(cfg.stream, cfg.group, "-", "+", 1,
                                                         consumername=self.consumer)
                if not mine:
                    await self._client.xgroup_delconsumer(cfg.stream, cfg.group, self.consumer)
        except (*connection_errors(), ResponseError) as exc:  # type: ignore[misc]  # a tuple of exception classes
            self.ctx.log.warning("could not clean up consumer %s: %s", self.consumer, exc)


# One EVALSHA appends a whole chunk. KEYS: stream, the sink's mark key. ARGV: maxlen ('' for none),
# '~' or '=', number of field names k, this chunk's mark ("<batch token>:<chunk number>", '' for
# none), the k names (body field first), then k values per entry. Returns one id or error per entry.
# A chunk whose every entry went in leaves its mark in the mark key, atomically with the entries: a
# chunk sent again because its reply was lost (Redis went down just after running it) finds its
# mark, or a later one of the same batch, and appends nothing ("written" for each entry). ARGV:
# maxlen, op ('~' or '='), k fields per entry, the mark, opt ('1': the last field is left out of an
# entry whose value for it is empty: the trace context), the k field names, then k values per entry.
XADD_SCRIPT = """
local maxlen, op, k, mark, opt = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local first = 6 + k
if mark ~= '' then
  local last = redis.call('GET', KEYS[2])
  if last then
    local lb, lc = string.match(last, '^(.*):(%d+)$')
    local mb, mc = string.match(mark, '^(.*):(%d+)$')
    if lb == mb and tonumber(lc) >= tonumber(mc) then
      local out = {}
      for j = 1, (#ARGV - first + 1) / k do out[j] = 'written' end
      return out
    end
  end
end
local head = {'XADD', KEYS[1]}
if maxlen ~= '' then head = {'XADD', KEYS[1], 'MAXLEN', op, maxlen} end
head[#head + 1] = '*'
local h = #head
local out = {}
local failed = false
local i = first
while i <= #ARGV do
  local cmd = {unpack(head)}
  local n = h
  for f = 1, k do
    local v = ARGV[i + f - 1]
    if not (f == k and opt == '1' and v == '') then
      cmd[n + 1] = ARGV[5 + f]
      cmd[n + 2] = v
      n = n + 2
    end
  end
  local ok, res = pcall(redis.call, unpack(cmd))
  if ok then out[#out + 1] = res else out[#out + 1] = {err = tostring(res.err or res)}; failed = true end
  i = i + k
end
if mark ~= '' and not failed then redis.call('SET', KEYS[2], mark, 'PX', 86400000) end
return out
"""
_SCRIPT_CHUNK = 1000  # entries per EVALSHA: bounds how long one call holds the server
TRACE_FIELD = "traceparent"  # the entry field of the W3C trace context (written and read: docs/observe.md)


class RedisStreamSinkConfig(NodeConfig):
    """Append each message to a Redis stream (XADD, capped with MAXLEN ~ N)."""

    connection: str = connection_field("redis", "cache")
    stream: str = Field(description="Stream key.", examples=["events.clean"])
    field: str = Field("body", description="Entry field holding the body (JSON by orjson; bytes as is).")
    maxlen: int | None = Field(10_000, ge=1, description="Cap on the stream length; null for no cap.")
    approximate: bool = Field(True, description="Trim with `MAXLEN ~` (much cheaper; may keep a few more).")
    fields: dict[str, CelExpr] = Field(
        default_factory=dict, description="More entry fields, each a CEL expression (rendered as text).",
        examples=[{"user": "msg.user"}])
    method: Literal["script", "xadd"] = Field(
        "script", description="`script`: one pipeline of EVALSHA per batch, each appending up to 1000 entries "
        "server-side (about 3x faster: redis-py spends most of its time packing commands); `xadd`: one "
        "pipeline of XADD commands. Same entries and per-message errors either way.")

    @model_validator(mode="after")
    def _distinct_fields(self) -> RedisStreamSinkConfig:
        if self.field in self.fields:
            raise ValueError(f"fields.{self.field} would overwrite the body field {self.field!r}")
        return self


class RedisStreamSink(Sink):
    """XADD per message, in one pipeline per batch; the batch is committed when the pipeline returns."""

    Config: ClassVar[type[NodeConfig]] = RedisStreamSinkConfig
    example = """\
version: 1
name: redis_stream_sink_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  append:
    type: redis_stream_sink
    inputs: [orders]
    config: {connection: cache, stream: orders, maxlen: 100000, field: body}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)
    config: RedisStreamSinkConfig

    def __init__(self, node_id: str, config: RedisStreamSinkConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self._client: Any = None
        self._sha = ""
        self._extra = [(name, compile_expr(src)) for name, src in config.fields.items()]
        trim: tuple[Any, ...] = ()
        if config.maxlen is not None:
            trim = ("MAXLEN", "~", config.maxlen) if config.approximate else ("MAXLEN", config.maxlen)
        self._prefix = ("XADD", config.stream, *trim, "*", config.field)
        self._names = [config.field, *config.fields]
        # KEYS of the script: the stream, and this sink's mark key (one per process, kept a day)
        self._script_keys = (config.stream, f"{config.stream}:streamdag-sink:{uuid.uuid4().hex}")
        self._script_args = ("" if config.maxlen is None else config.maxlen, "~" if config.approximate else "=")
        # a traced message's context goes in a `traceparent` field, unless the graph writes one itself
        self._trace = TRACE_FIELD not in self._names
        # the batch being written (the runtime retries a batch with the same list), its token (the
        # chunks' marks: see XADD_SCRIPT) and the ids of its messages already appended before the
        # server refused the rest (read-only, out of memory): those are not appended again
        self._attempt: tuple[list[Msg], str, set[int]] | None = None

    async def start(self) -> None:
        self._client = await redis_client(self.ctx, self.config.connection)
        if self.config.method == "script":
            self._sha = await self._client.script_load(XADD_SCRIPT)

    def _encode(self, batch: list[Msg], failed: list[tuple[Msg, str]]) -> tuple[list[Msg], list[Any]]:
        """The messages that encode and, for each, its field values (body first)."""
        sent: list[Msg] = []
        values: list[Any] = []
        dumps = orjson.dumps
        extra = self._extra
        for msg in batch:
            body = msg.body
            try:
                data = body if isinstance(body, bytes) else dumps(body)
            except TypeError as exc:
                failed.append((msg, f"body does not encode as JSON: {encode_failure(exc)}"))
                continue
            if extra:
                try:
                    more = [_text(expr(body, msg.meta)) for _, expr in extra]
                except (EvalError, TypeError) as exc:  # TypeError: a value JSON cannot encode
                    failed.append((msg, f"fields: {encode_failure(exc)}"))
                    continue
                values.append(data)
                values.extend(more)
            else:
                values.append(data)
            sent.append(msg)
        return sent, values

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        failed: list[tuple[Msg, str]] = []
        if self._attempt is not None and self._attempt[0] is batch:  # a retry: same token, same marks
            _, token, done = self._attempt
        else:
            token, done = uuid.uuid4().hex, set()
            self._attempt = (batch, token, done)
        sent, values = self._encode([m for m in batch if id(m) not in done] if done else batch, failed)
        if not sent:
            self._attempt = None
            return failed
        contexts = self._contexts(sent) if self._trace else None
        try:
            if self.config.method == "script":
                results = await self._run_script(values, token, contexts)
            else:
                results = await self._run_xadd(values, contexts)
        except connection_errors() as exc:
            raise ConnectionLost(f"redis {self.config.connection}: XADD to {self.config.stream} failed: {exc}") from exc
        raise_if_cancelled()
        refused = first_refusal(results)
        if refused is not None:  # the server's state, not the messages': keep what went in, retry the rest
            done = done | {id(m) for m, res in zip(sent, results) if not isinstance(res, Exception)}
            self._attempt = (batch, uuid.uuid4().hex, done)  # other chunks next time: other marks
            left = len(batch) - len(done)
            raise Unavailable(f"redis {self.config.connection}: XADD to {self.config.stream} refused "
                              f"({left} of {len(batch)} not appended): {refused}") from refused
        self._attempt = None
        for msg, res in zip(sent, results):
            if isinstance(res, Exception):
                failed.append((msg, f"XADD failed: {res}"))
        return failed

    @staticmethod
    def _contexts(sent: list[Msg]) -> list[str] | None:
        """Each message's `meta.traceparent` ("" for one without), or None when none has one (an
        untraced run: its entries are written exactly as before)."""
        found = [m.meta.get(TRACE_FIELD) for m in sent]
        if not any(found):
            return None
        return [tp if isinstance(tp, str) else "" for tp in found]

    async def _run_xadd(self, values: list[Any], contexts: list[str] | None) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        command = pipe.execute_command
        prefix = self._prefix
        k = 1 + len(self._extra)
        if k == 1 and contexts is None:
            for data in values:
                command(*prefix, data)
        else:
            names = self._names
            for j, i in enumerate(range(0, len(values), k)):
                more = [p for f in range(1, k) for p in (names[f], values[i + f])]
                if contexts is not None and contexts[j]:
                    more += (TRACE_FIELD, contexts[j])
                command(*prefix, values[i], *more)
        result: list[Any] = await pipe.execute(raise_on_error=False)
        return result

    async def _run_script(self, values: list[Any], token: str, contexts: list[str] | None) -> list[Any]:
        from redis.exceptions import NoScriptError

        k = 1 + len(self._extra)
        names, optional = self._names, ""
        if contexts is not None:  # one more field per entry, left out where it is empty
            values = [v for j, tp in enumerate(contexts) for v in (*values[j * k:(j + 1) * k], tp)]
            k, names, optional = k + 1, [*names, TRACE_FIELD], "1"
        step = _SCRIPT_CHUNK * k
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for c, i in enumerate(range(0, len(values), step)):
                pipe.execute_command("EVALSHA", self._sha, 2, *self._script_keys, *self._script_args, k,
                                     f"{token}:{c}", optional, *names, *values[i:i + step])
            chunks = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(c, NoScriptError) for c in chunks):
                self._sha = await self._client.script_load(XADD_SCRIPT)  # the server restarted: load it again
                continue
            break
        results: list[Any] = []
        for i, chunk in zip(range(0, len(values), step), chunks):
            n = min(step, len(values) - i) // k
            results.extend(chunk if isinstance(chunk, list) else [chunk] * n)
        return results


def _text(value: Any) -> str | bytes:
    if isinstance(value, (str, bytes)):
        return value
    return orjson.dumps(value)
