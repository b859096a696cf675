"""`jetstream_sink`: publish to JetStream, acking upstream only after the server's PubAck.

Lean path: each chunk of up to `max_in_flight` messages is written as raw `HPUB` lines in one
socket write, each with its own reply subject under one wildcard inbox; `write` returns once
every PubAck of the batch is in. `Nats-Msg-Id` makes a replay after a crash a server-side
duplicate (counted in `duplicates`), not a second copy. A message the server rejects (too
large, no stream for the subject, CEL error) is returned as failed, so it goes to `errors`.
A message's `meta.timestamp` (where its end-to-end latency starts) travels in the
`Streamdag-Timestamp` header, so a graph reading the stream measures from the same origin.

With `partition: {key, count}` the sink appends the key's partition to the subject (`<subject>.<p>`),
p = FNV-1a 32 of the key's text modulo count (`engine.partition_of`): the same number nats-server's
subject mapping `partition(count, i)` gives, so other producers and server-side mappings agree, and
a `jetstream_source` with `partitions: count` reads them (docs/jetstream.md).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import (
    CelExpr,
    CheckContext,
    CheckIssue,
    ConnectionLost,
    Duration,
    EvalError,
    Msg,
    NodeConfig,
    OutcomeUnknown,
    Sink,
    Unavailable,
    compile_expr,
    connection_field,
    encode_failure,
    key_text,
    partition_of,
)

from .connection import NatsHandle, nats_handle
from .streams import subject_within

__all__ = ["TIMESTAMP_HEADER", "JetStreamPublishError", "JetStreamSink", "JetStreamSinkConfig", "PartitionSpec"]

log = logging.getLogger("streamdag.jetstream")

_SUBJECT = re.compile(r"^[^\s*>.]+(\.[^\s*>.]+)*$")
_HEADER_KEY = re.compile(r"^[!-9;-~]+$")
TIMESTAMP_HEADER = "Streamdag-Timestamp"  # meta.timestamp, epoch seconds: the start of end-to-end latency
_OWN_HEADERS = frozenset({"Nats-Msg-Id", TIMESTAMP_HEADER, "traceparent"})  # set by the sink, never copied


class JetStreamPublishError(OutcomeUnknown):
    """PubAcks did not come back in time (server down or restarting): whether the messages were
    stored is unknown, so the batch is retried with the same `Nats-Msg-Id`s (never dead-lettered)."""


class JetStreamUnavailable(Unavailable):
    """The server answered that it cannot store now (no responders while a stream leader is elected,
    storage or resource limits): the batch is retried."""


# Rejections that are about the message itself (the rest, such as "insufficient resources" or a
# full stream with discard: new, are the server's state, retried until it can store again).
_MESSAGE_REJECTS = ("message size", "maximum payload", "wrong last", "expected", "header", "invalid")


class PartitionSpec(BaseModel):
    """Publish to `<subject>.<p>`, p = the partition of a CEL key (docs/jetstream.md, "Partitions")."""

    model_config = ConfigDict(extra="forbid")
    key: CelExpr = Field(description="CEL expression of the partition key (its text is hashed).",
                         examples=["msg.user_id"])
    count: int = Field(ge=1, le=4096, description="Number of partitions; the same as the reading "
                       "jetstream_source's `partitions`.", examples=[8])


class JetStreamSinkConfig(NodeConfig):
    """Publish each message to a JetStream subject and wait for the stream to store it."""

    connection: str = connection_field("nats", "nats")
    subject: str | None = Field(None, description="Fixed subject to publish to.", examples=["clean.orders"])
    subject_expr: CelExpr | None = Field(
        None, description="CEL expression giving each message's subject.", examples=["'orders.' + msg.region"]
    )
    headers: dict[str, CelExpr] = Field(
        default_factory=dict,
        description="Headers to set, each a CEL expression.",
        examples=[{"X-Source": "meta.subject"}],
    )
    copy_headers: bool = Field(False, description="Copy the incoming message's headers (`meta.headers`).")
    msg_id: CelExpr | None = Field(
        None,
        description="CEL expression for `Nats-Msg-Id` (deduplication). Default: "
        "`<node>:<stream>:<seq>` of a JetStream source message, else `<node>:<meta.id>`.",
        examples=["string(msg.id)"],
    )
    partition: PartitionSpec | None = Field(
        None, description="Spread messages over `count` partition subjects `<subject>.<p>` by a key: "
        "p = FNV-1a 32 of the key's text mod count, as nats-server's `partition(count, i)` mapping.",
        examples=[{"key": "msg.user_id", "count": 8}])
    max_in_flight: int = Field(1000, ge=1, le=100_000, description="Publishes awaiting their PubAck at once.")
    ack_timeout: Duration = Field(
        5.0, gt=0, description="Seconds to wait for PubAcks before retrying the batch."
    )

    @model_validator(mode="after")
    def _check(self) -> JetStreamSinkConfig:
        if (self.subject is None) == (self.subject_expr is None):
            raise ValueError("set exactly one of subject and subject_expr")
        if self.subject is not None and not _SUBJECT.match(self.subject):
            raise ValueError(f"invalid subject {self.subject!r} (no spaces or wildcards, no empty tokens)")
        for key in self.headers:
            if not _HEADER_KEY.match(key):
                raise ValueError(f"invalid header name {key!r}")
        return self


def _published(config: JetStreamSinkConfig) -> str:
    """The subjects a fixed-subject sink publishes to (`<subject>.*` when partitioned)."""
    return f"{config.subject}.*" if config.partition is not None else str(config.subject)


class _Retry(str):
    """A PubAck saying the server could not store the message now (not the message's fault)."""


def _header_value(v: Any) -> bytes:
    text = (
        v if isinstance(v, str) else orjson.dumps(v).decode() if not isinstance(v, (int, float)) else str(v)
    )
    return text.replace("\r", " ").replace("\n", " ").strip().encode()


def _payload(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return orjson.dumps(body)


class JetStreamSink(Sink):
    """Publishes with `Nats-Msg-Id` (`msg_id`: the server drops a repeat within the stream's duplicate
    window) and commits a batch once the stream has stored it (PubAck); see docs/jetstream.md."""

    Config = JetStreamSinkConfig
    example = """\
version: 1
name: jetstream_sink_example
connections:
  nats:
    type: nats
    url: "${NATS_URL:-nats://127.0.0.1:4222}"
    streams:
      ORDERS: {subjects: ["orders.>"], max_age: 7d}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  publish:
    type: jetstream_sink
    inputs: [orders]
    config: {connection: nats, subject: orders.new, msg_id: string(msg.id)}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    connection_types = ("nats",)

    def __init__(self, node_id: str, config: JetStreamSinkConfig, ctx: Any):
        import asyncio

        super().__init__(node_id, config, ctx)
        self.config: JetStreamSinkConfig = config
        json = getattr(ctx, "json_bodies", False)  # bodies straight from a JSON decoder: no checks of copied fields
        self._subject_expr = compile_expr(config.subject_expr, json_bodies=json) if config.subject_expr else None
        self._msg_id = compile_expr(config.msg_id, json_bodies=json) if config.msg_id else None
        self._headers = [(k.encode(), compile_expr(v, json_bodies=json)) for k, v in config.headers.items()]
        self._subject = (config.subject or "").encode()
        part = config.partition
        self._part_key = compile_expr(part.key, json_bodies=json) if part is not None else None
        self._part_count = part.count if part is not None else 0
        self._part_of: dict[str, bytes] = {}  # key text -> b".<p>"
        self._plain = not self._headers and not config.copy_headers
        self._h: NatsHandle | None = None
        self._sub: Any = None
        self._prefix = ""
        self._seq = 0
        self._waiting: dict[int, int] = {}  # reply number -> position in the chunk
        self._results: list[str | None] = []
        self._left = 0
        self._done = asyncio.Event()
        self._lock = asyncio.Lock()  # one chunk in flight per sink: PubAcks are matched to it
        self.published = 0
        self.duplicates = 0
        self.rejected = 0

    @classmethod
    def check(cls, config: JetStreamSinkConfig, ctx: CheckContext) -> list[CheckIssue]:
        """W341: a fixed subject no declared stream stores (one may exist on the server; else 503 at run)."""
        conn = ctx.connections.get(config.connection)
        streams = (conn or {}).get("streams") or {}
        if not streams or config.subject is None:
            return []
        subject = _published(config)
        if any(subject_within(subject, s) for st in streams.values() for s in st["subjects"]):
            return []
        return [
            CheckIssue(
                ("subject",),
                "W341",
                f"no stream declared under connection {config.connection!r} "
                f"stores subject {subject!r}",
                "warning",
            )
        ]

    @classmethod
    def check_upstream(cls, config: JetStreamSinkConfig, ctx: CheckContext) -> list[CheckIssue]:
        """W342: the stream's `duplicate_window` is shorter than the time a source feeding this sink
        may redeliver a message: a copy republished after that is stored twice."""
        conn = ctx.connections.get(config.connection) or {}
        if config.subject is None:
            return []
        for name, stream in (conn.get("streams") or {}).items():  # noqa: B007 - `name` is read after the loop
            if any(subject_within(_published(config), s) for s in stream["subjects"]):
                break
        else:
            return []  # W341's case
        horizons = [(up.cls.redelivery_horizon(up.config), up.node) for up in ctx.upstream]
        horizon, source = max(((h, n) for h, n in horizons if h is not None), default=(None, ""))
        window = float(stream["duplicate_window"])
        if horizon is None or window >= horizon:
            return []
        return [CheckIssue(
            ("subject",), "W342",
            f"stream {name!r} deduplicates for {window:g}s (connections.{config.connection}.streams.{name}."
            f"duplicate_window) but source {source!r} may redeliver a message for up to {horizon:g}s "
            "(ack_wait x max_deliver, or its backoff): a message republished after a crash past the window is "
            f"stored twice; set duplicate_window to at least {horizon:g}s, or lower {source}'s ack_wait or max_deliver",
            "warning")]

    def metrics(self) -> dict[str, int]:
        """Counters beside the runtime's: stored, deduplicated by the server, rejected."""
        return {"published": self.published, "duplicates": self.duplicates, "rejected": self.rejected}

    async def start(self) -> None:
        self._h = await nats_handle(self.ctx, self.config.connection)
        self._prefix = self._h.nc.new_inbox()
        self._sub = await self._h.tap.subscribe(self._prefix + ".*", self._on_ack)  # type: ignore[union-attr]
        self._prefix_len = len(self._prefix) + 1
        self._h.on_disconnect.append(self._done.set)  # a chunk waiting for PubAcks stops waiting at once
        self._h.listeners.append(self._reconnected)

    async def _reconnected(self) -> None:
        self.ctx.retry_now.set()  # a batch held back while NATS was away is tried now

    async def stop(self) -> None:
        if self._h is not None and self._done.set in self._h.on_disconnect:
            self._h.on_disconnect.remove(self._done.set)
            self._h.listeners.remove(self._reconnected)
        if self._sub is not None:
            self._h.tap.forget(self._sub)  # type: ignore[union-attr]
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection already gone
                pass
            self._sub = None

    def _on_ack(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None, status: str | None
    ) -> None:
        pos = self._waiting.pop(int(subject[self._prefix_len :]), None)
        if pos is None:
            return  # a PubAck that came after its batch timed out
        if status == "503":
            # with a fixed subject the stream is missing or electing a leader: wait for it; a subject
            # computed from the message (`subject_expr`) that no stream listens on is the message's fault
            text = "no stream listens on this subject (503 no responders)"
            self._results[pos] = text if self._subject_expr is not None else _Retry(text)
        elif status is not None:
            self._results[pos] = _Retry(f"server answered {status} {(headers or {}).get('Description', '')}".strip())
        elif data.startswith(b'{"error"'):
            err = orjson.loads(data)["error"]
            text = f"server rejected the message: {err.get('description')} (code {err.get('err_code')})"
            desc = str(err.get("description", "")).lower()
            self._results[pos] = text if any(w in desc for w in _MESSAGE_REJECTS) else _Retry(text)
        elif b'"duplicate"' in data:
            self.duplicates += 1
        self._left -= 1
        if self._left <= 0:
            self._done.set()

    def _encode(self, msg: Msg, ids: dict[str, int]) -> tuple[bytes, bytes, bytes]:
        """(subject, header block, payload) of one message; raises ValueError / EvalError."""
        body, meta = msg.body, msg.meta
        if self._subject_expr is None:
            subject = self._subject
        else:
            value = self._subject_expr(body, meta)
            if not isinstance(value, str) or not _SUBJECT.match(value):
                raise ValueError(f"subject_expr gave {value!r}, not a valid subject")
            subject = value.encode()
        if self._part_key is not None:
            subject += self._partition_suffix(self._part_key(body, meta))
        if self._msg_id is not None:
            mid = str(self._msg_id(body, meta))
        elif "stream" in meta and "seq" in meta:
            mid = f"{self.id}:{meta['stream']}:{meta['seq']}"
        elif "id" in meta:
            mid = f"{self.id}:{meta['id']}"
        else:
            mid = ""
        if mid and self._msg_id is None:  # several outputs of one input: number them within the batch
            k = ids.get(mid, 0)
            ids[mid] = k + 1
            if k:
                mid = f"{mid}#{k}"
        ts = meta.get("timestamp")
        stamp = b"Streamdag-Timestamp: %.6f\r\n" % ts if isinstance(ts, (int, float)) else b""
        tp = meta.get("traceparent")  # set only on traced messages (engine/observe/tracing.py)
        if tp is not None:
            stamp += b"traceparent: %s\r\n" % _header_value(tp)
        if self._plain:  # the common case: only the message id (and the timestamp)
            hdr_block = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n" % _header_value(mid) if mid else b"NATS/1.0\r\n"
            return subject, hdr_block + stamp + b"\r\n", _payload(body)
        hdr = [b"NATS/1.0\r\n", stamp]
        if mid:
            hdr.append(b"Nats-Msg-Id: %s\r\n" % _header_value(mid))
        if self.config.copy_headers:
            for k, v in (meta.get("headers") or {}).items():
                if k not in _OWN_HEADERS and _HEADER_KEY.match(k):
                    hdr.append(b"%s: %s\r\n" % (k.encode(), _header_value(v)))
        for key, expr in self._headers:
            hdr.append(b"%s: %s\r\n" % (key, _header_value(expr(body, meta))))
        hdr.append(b"\r\n")
        return subject, b"".join(hdr), _payload(body)

    def _partition_suffix(self, key: Any) -> bytes:
        """`.<p>` of a partition key (cached by its text, bounded: keys repeat, such as users or ids)."""
        text = key if type(key) is str else key_text(key)
        suffix = self._part_of.get(text)
        if suffix is None:
            if len(self._part_of) >= 65_536:
                self._part_of.clear()
            suffix = self._part_of[text] = b".%d" % partition_of(text, self._part_count)
        return suffix

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        failed: list[tuple[Msg, str]] = []
        step = self.config.max_in_flight
        async with self._lock:
            for i in range(0, len(batch), step):
                await self._publish_chunk(batch[i : i + step], failed)
        self.rejected += len(failed)
        return failed

    async def _publish_chunk(self, chunk: list[Msg], failed: list[tuple[Msg, str]]) -> None:
        import asyncio

        nc = self._h.nc  # type: ignore[union-attr]
        if not nc.is_connected:
            # reconnecting (or closed): nats-py would keep what is sent now in its reconnect buffer and
            # send it later, while this batch waited ack_timeout for nothing; fail now, retry when back
            state = "closed" if nc.is_closed else "down (reconnecting)"
            raise ConnectionLost(f"the NATS connection is {state}")
        max_payload = nc.max_payload
        prefix = self._prefix.encode()
        ids: dict[str, int] = {}
        lines: list[bytes] = []
        sent: list[Msg] = []
        waiting: dict[int, int] = {}
        seq = self._seq
        for msg in chunk:
            try:
                subject, hdr, payload = self._encode(msg, ids)
            except (EvalError, ValueError, TypeError, orjson.JSONEncodeError) as exc:
                failed.append((msg, f"cannot build the message: {encode_failure(exc)}"))
                continue
            total = len(hdr) + len(payload)
            if total > max_payload:
                failed.append(
                    (msg, f"message of {total} bytes exceeds the server's max_payload of {max_payload}")
                )
                continue
            seq += 1
            waiting[seq] = len(sent)
            sent.append(msg)
            lines.append(
                b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (subject, prefix, seq, len(hdr), total, hdr, payload)
            )
        self._seq = seq
        if not sent:
            return
        self._waiting = waiting
        self._results = [None] * len(sent)
        self._left = len(sent)
        self._done.clear()
        await nc._send_command(b"".join(lines))
        await nc._flush_pending()
        try:
            await asyncio.wait_for(self._done.wait(), self.config.ack_timeout)
            if self._left > 0:  # woken by a disconnect (`on_disconnect`)
                missing = len(self._waiting)
                self._waiting = {}
                raise JetStreamPublishError(
                    f"{missing} of {len(sent)} PubAcks missing: the connection to NATS dropped")
        except TimeoutError:
            missing = len(self._waiting)
            self._waiting = {}
            raise JetStreamPublishError(
                f"{missing} of {len(sent)} PubAcks missing after {self.config.ack_timeout}s "
                f"(server down or restarting?)"
            ) from None
        stored = 0
        retry = None
        for msg, result in zip(sent, self._results, strict=True):
            if result is None:
                stored += 1
            elif type(result) is _Retry:
                retry = result
            else:
                failed.append((msg, result))
        self.published += stored
        if retry is not None:  # the whole batch again: stored ones come back as duplicates of their Msg-Id
            raise JetStreamUnavailable(f"{retry} ({len(sent) - stored} of {len(sent)} not stored)")
