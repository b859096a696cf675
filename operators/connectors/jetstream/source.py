"""`jetstream_source`: a durable pull consumer whose acks follow the graph's end-to-end ack contract.

Lean path: the source sends its own pull requests (`$JS.API.CONSUMER.MSG.NEXT`) on one core
subscription and writes acks as raw protocol lines, one socket write per batch of acks, instead
of nats-py's `fetch()` + one `await msg.ack()` per message. It keeps at most `max_ack_pending`
messages unsettled: it asks the server only for as many as the graph has room for.

Outcomes: a completed message gets `+ACK`; a failed one `-NAK` with a delay from `retry`; once
failed on its `max_deliver`-th delivery it goes to the `errors` port (its delivery count in meta
and in `attempt`) and gets `+TERM` when the dead-letter sink has committed it. The server may
deliver a message once more than `max_deliver` (the consumer is created with one more): a message
never settled in `max_deliver` deliveries (the graph crashed or stopped while holding it) then goes
straight to `errors` and gets `+TERM`, instead of being dropped by the server without a dead
letter. A body beyond the payload limits (engine.codec) goes to `errors` with its bytes. Messages held
longer than a third of `ack_wait` get `+WPI` (in progress) so the server does not redeliver them.

Stopping loses nothing to `ack_wait`: no new pull request goes out, and the pull inbox stays
subscribed until every open request has ended (filled, or its 408 at `expires`; a request with no
end counts as lost 2 s after that), because a message the server sends into an open request after
the unsubscribe reaches nobody and would come back only after `ack_wait`. What the open requests
still bring was delivered to this consumer, so `run` sends it through the graph like the rest
before it returns. If `run` was cut short (a crash elsewhere cancelled it), `stop` waits for the
requests the same way, holding what arrives (a nak while our own requests are open would send it
straight back into them, spending its deliveries), then unsubscribes and naks every message not
handed to the graph, so the next consumer run gets it at once. A stop of an idle graph therefore
lasts up to `expires`: lower it for faster stops.

With `partitions: N` the source reads the N subjects `<subject>.<p>` (a `jetstream_sink` with
`partition` writes them), each through its own durable `<durable>-p<p>`, and pulls only the
partitions this worker owns; ownership and rebalancing live in NATS KV (`partitions.py`). Every
message carries `meta.partition`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from datetime import datetime
from functools import partial
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from engine import (
    CheckContext,
    CheckIssue,
    Duration,
    Msg,
    NodeConfig,
    PayloadTooLarge,
    RetryPolicy,
    Size,
    Source,
    SourceSender,
    connection_field,
)
from engine import codec as json_codec

from .connection import JetStreamConnectionError, NatsHandle, nats_handle
from .partitions import Ownership, lane_durable
from .sink import TIMESTAMP_HEADER
from .streams import subject_within
from .wire import write_acks, write_lines

__all__ = ["JetStreamSource", "JetStreamSourceConfig", "parse_ack_subject"]

log = logging.getLogger("streamdag.jetstream")

_STATUS_DONE = {"404", "408", "409"}
_LOST_AFTER = 2.0  # seconds past `expires` after which an open pull request with no end is counted lost


class JetStreamSourceConfig(NodeConfig):
    """Read a JetStream stream through a durable pull consumer (created if missing, else bound)."""

    connection: str = connection_field("nats", "nats")
    stream: str = Field(description="Stream to read.", examples=["ORDERS"])
    durable: str = Field(
        description="Durable consumer name; created if missing, else bound.", examples=["orders-etl"]
    )
    subjects: list[str] = Field(
        default_factory=list,
        description="Filter subjects (all of the stream if empty). "
        "Also the stream's subjects if the stream must be created.",
        examples=[["orders.>"]],
    )
    deliver: Literal["all", "new", "last", "by_start_sequence", "by_start_time"] = Field(
        "all", description="Where a new consumer starts."
    )
    start_sequence: int | None = Field(
        None, ge=1, description="First stream sequence (deliver: by_start_sequence)."
    )
    start_time: datetime | None = Field(
        None, description="First message time, ISO 8601 (deliver: by_start_time)."
    )
    ack_wait: Duration = Field(5.0, gt=0, description="Seconds before an unacked message is redelivered (to another "
                               "worker when its holder died: the takeover time, docs/scale.md).")
    max_deliver: int = Field(5, ge=1, description="Deliveries before a failing message is dead-lettered.")
    max_ack_pending: int | None = Field(
        None,
        ge=1,
        description="Unacked messages the server allows; default: "
        "the larger of 4 x batch and the graph's in-flight capacity.",
    )
    backoff: list[Duration] = Field(
        default_factory=list,
        description="Server-side redelivery delays by "
        "delivery count, e.g. [1s, 5s, 30s]; replaces ack_wait (the server waits "
        "backoff[0] for the first delivery).",
    )
    batch: int = Field(1000, ge=1, le=100_000, description="Messages asked for per pull request.")
    max_bytes: Size | None = Field(None, ge=1, description="Bytes asked for per pull request (e.g. 4MB).")
    pull_requests: int = Field(
        2,
        ge=1,
        le=16,
        description="Pull requests kept open at once, so the server fills one while the graph works.",
    )
    expires: Duration = Field(1.0, gt=0, description="Seconds a pull request waits for new messages; an idle "
                              "graph's graceful stop waits up to this long for its open requests to end.")
    codec: Literal["json", "text", "bytes"] = Field(
        "json", description="How a message's data becomes its body."
    )
    max_payload_bytes: Size = Field(
        json_codec.MAX_BYTES, ge=1, description="Largest data decoded as JSON; larger data, or data nested "
        "deeper than 254 levels, goes to `errors` (docs/limits.md)."
    )
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy.model_validate({"initial_backoff": 1.0, "max_backoff": 60.0}),
        description="Nak delay of a failed message, by delivery count.",
    )
    in_progress: bool = Field(
        True, description="Send `in progress` for messages held longer than ack_wait/3."
    )
    partitions: int | None = Field(
        None, ge=1, le=4096, description="Read the partition subjects `<subject>.0` .. `<subject>.<N-1>` of the "
        "one subject in `subjects`, each partition owned by one worker at a time (docs/scale.md)", examples=[8])
    partition_ttl: Duration = Field(
        3.0, ge=0.5, le=60, description="Seconds a partition's owner may go without renewing it before "
        "another worker takes it over (partitions only).")

    @model_validator(mode="after")
    def _check(self) -> JetStreamSourceConfig:
        if self.deliver == "by_start_sequence" and self.start_sequence is None:
            raise ValueError("deliver: by_start_sequence needs start_sequence")
        if self.deliver == "by_start_time" and self.start_time is None:
            raise ValueError("deliver: by_start_time needs start_time")
        if self.start_sequence is not None and self.deliver != "by_start_sequence":
            raise ValueError("start_sequence is only used with deliver: by_start_sequence")
        if self.start_time is not None and self.deliver != "by_start_time":
            raise ValueError("start_time is only used with deliver: by_start_time")
        if self.backoff and len(self.backoff) >= self.max_deliver:
            raise ValueError(f"backoff has {len(self.backoff)} delays; max_deliver must be larger")
        if self.max_ack_pending is not None and self.max_ack_pending < self.batch:
            raise ValueError(f"max_ack_pending ({self.max_ack_pending}) is smaller than batch ({self.batch})")
        if self.partitions is not None and (len(self.subjects) != 1 or any(
                t in ("*", ">") for t in self.subjects[0].split("."))):
            raise ValueError("partitions needs exactly one subject, without wildcards: the partitions are "
                             "<subject>.0 .. <subject>.<partitions-1>")
        if "." in self.durable or "*" in self.durable or ">" in self.durable:
            raise ValueError(f"durable {self.durable!r} may not contain '.', '*' or '>'")
        return self


def parse_ack_subject(reply: str) -> tuple[str, str, int, int, int, float]:
    """(stream, consumer, delivered, stream seq, consumer seq, timestamp) from a `$JS.ACK...` subject."""
    t = reply.split(".")
    o = 2 if len(t) == 9 else 4  # v1: $JS.ACK.<stream>...; v2 adds <domain>.<account hash>
    return t[o], t[o + 1], int(t[o + 2]), int(t[o + 3]), int(t[o + 4]), int(t[o + 5]) / 1e9


class _Seqs:
    """A partition lane's stream sequences: emitted and not acked yet (`open`), of those the ones
    naked back (`back`), and the last `KEEP` acked ones (`done`). A message acked already that comes
    again (a consumer leader change in a cluster can resend acked or held messages) is acked again
    and dropped; a second copy of a message still held (by a window) waits for the first and is acked
    with it. So a window downstream never counts one message twice."""

    KEEP = 200_000
    __slots__ = ("acks", "back", "behind", "copies", "done", "done_order", "dropped", "open", "top")

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.back: set[int] = set()
        self.done: set[int] = set()
        self.done_order: deque[int] = deque()
        self.copies: dict[int, list[str]] = {}  # seq -> reply subjects of extra copies of a held message
        self.acks: list[tuple[str, bytes]] = []  # +ACKs of dropped copies, written before the batch goes on
        self.dropped = 0  # copies not processed
        self.top = 0  # the highest sequence passed on
        self.behind = 0  # new messages that came after a higher sequence (a redelivery out of order)

    def filter(self, raw: list[tuple[str, str, bytes, dict[str, str] | None]]
               ) -> list[tuple[str, str, bytes, dict[str, str] | None]]:
        kept = []
        for frame in raw:
            seq = parse_ack_subject(frame[1])[3]
            if seq in self.open:
                if seq in self.back:  # our own nak came back: process it again
                    self.back.discard(seq)
                    kept.append(frame)
                else:
                    self.copies.setdefault(seq, []).append(frame[1])
                    self.dropped += 1
            elif seq in self.done:
                self.acks.append((frame[1], b"+ACK"))
                self.dropped += 1
            else:
                self.open.add(seq)
                if seq < self.top:
                    self.behind += 1
                else:
                    self.top = seq
                kept.append(frame)
        return kept

    def acked(self, seq: int) -> list[str]:
        """`seq` was acked: the reply subjects of its extra copies, to ack as well."""
        if seq in self.open:
            self.open.discard(seq)
            self.back.discard(seq)
            self.done.add(seq)
            self.done_order.append(seq)
            if len(self.done_order) > self.KEEP:
                self.done.discard(self.done_order.popleft())
        return self.copies.pop(seq, [])

    def naked(self, seq: int) -> None:
        if seq in self.open:
            self.back.add(seq)


_Frame = tuple[str, str, bytes, "dict[str, str] | None"]  # subject, reply, data, headers


class _CatchUp:
    """A partition lane's start: the messages earlier owners were delivered and did not ack come back
    first, but not in stream order (the server's redelivery queue keeps the order in which they were
    naked or their `ack_wait` ran out). An event-time window downstream would find a lower sequence
    that comes after higher ones late (its checkpoint folds it: coverage is exact): the lane holds
    the messages delivered before (sequence <= `last`, the consumer's last delivered one at takeover)
    until all `pending` of them came, a newer one came, or a pull request ended unfilled (the server
    had none left), then sends them in stream order ahead of the rest."""

    __slots__ = ("held", "last", "pending", "sent", "unfilled")

    def __init__(self, pending: int, last: int):
        self.pending = pending
        self.last = last
        self.held: list[_Frame] = []
        self.unfilled = False  # a pull request ended with a 404/408: nothing more was due
        self.sent = 0  # held messages sent on

    def take(self, frames: list[_Frame]) -> list[_Frame] | None:
        """Hold `frames`; the frames to send, in order, once caught up (else None: still holding)."""
        newer: list[_Frame] = []
        for frame in frames:
            (self.held if parse_ack_subject(frame[1])[3] <= self.last else newer).append(frame)
        if newer or self.unfilled or len(self.held) >= self.pending:
            return self.release() + newer
        return None

    def release(self) -> list[_Frame]:
        held, self.held = self.held, []
        self.sent += len(held)
        return sorted(held, key=lambda f: parse_ack_subject(f[1])[3])


class JetStreamSource(Source):
    """Acks a message once every sink it reached committed it, naks it with the retry delay when it failed,
    and terminates it (to `errors`) after `max_deliver` deliveries; see docs/jetstream.md."""

    trace_context = True  # traceparent header -> meta["headers"] (docs/observe.md)

    Config = JetStreamSourceConfig
    example = """\
version: 1
name: jetstream_source_example
connections:
  nats:
    type: nats
    url: "${NATS_URL:-nats://127.0.0.1:4222}"
    streams:
      ORDERS: {subjects: ["orders.>"], max_age: 7d}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders_in:
    type: jetstream_source
    config:
      connection: nats
      stream: ORDERS
      subjects: ["orders.>"]
      durable: orders-example
      max_deliver: 5
      ack_wait: 30s
  show: {type: stdout, inputs: [orders_in]}
  dead: {type: file_sink, inputs: [orders_in.errors], config: {path: out/dead.ndjson}}
"""
    connection_types = ("nats",)
    shared_by = "the durable pull consumer: the server hands each message to one puller"
    redelivers = True  # reject() naks with the retry delay; dead-letters at max_deliver
    durable_positions = True  # an ack moves the consumer on (docs/window.md: acks)

    def __init__(self, node_id: str, config: JetStreamSourceConfig, ctx: Any):
        import asyncio

        super().__init__(node_id, config, ctx)
        self.config: JetStreamSourceConfig = config
        self._h: NatsHandle | None = None
        self._sub: Any = None
        self._inbox = ""
        self._buf: list[tuple[str, str, bytes, dict[str, str] | None]] = []  # subject, reply, data, headers
        self._dead: list[Msg] = []
        self._wake = asyncio.Event()
        self._req_n = 0  # pull requests sent
        # open pull requests, oldest first: reply subject -> [messages it may still bring, time sent]
        self._open: dict[str, list[float]] = {}
        self._held: deque[tuple[float, list[Msg]]] = deque()
        self._held_n = 0
        self._held_pos = 0
        self._out: SourceSender | None = None
        self.max_ack_pending = config.max_ack_pending or max(1000, 4 * config.batch)
        self.acked = self.naked = self.termed = self.redeliveries = 0
        self._owner: Ownership | None = None  # partitions: which ones this worker reads
        self._seqs: _Seqs | None = None  # a partition's lane: what it emitted and not acked (duplicates)
        self._catchup: _CatchUp | None = None  # a partition's lane at its start: earlier owners' messages

    @classmethod
    def json_bodies(cls, config: JetStreamSourceConfig) -> bool:
        """codec json (orjson) or text (str); not bytes."""
        return config.codec in ("json", "text")

    @classmethod
    def redelivery_wait(cls, config: JetStreamSourceConfig) -> float:
        """`ack_wait`, or the longest `backoff` step when there is one."""
        return float(max([config.ack_wait, *config.backoff]))

    @classmethod
    def redelivery_horizon(cls, config: JetStreamSourceConfig) -> float:
        """`ack_wait` x `max_deliver` (the server waits `ack_wait`, or `backoff[n]`, before each
        redelivery, and delivers at most `max_deliver` times; `max_deliver` is always bounded here)."""
        if config.backoff:
            waits = [config.backoff[min(i, len(config.backoff) - 1)] for i in range(config.max_deliver)]
            return float(sum(waits))
        return float(config.ack_wait) * config.max_deliver

    @classmethod
    def partitioned(cls, config: JetStreamSourceConfig) -> int | None:
        return config.partitions

    def metrics(self) -> dict[str, int]:
        """Partitioned only: partitions taken and handed back, copies of messages dropped by the lanes."""
        owner = self._owner
        if owner is None:
            return {}
        return {"partition_takeovers": owner.takeovers, "partition_releases": owner.releases,
                "duplicates_dropped": owner.dropped + sum(lane.source._seqs.dropped for lane in owner.lanes.values()
                                                          if lane.source._seqs is not None)}

    @classmethod
    def check(cls, config: JetStreamSourceConfig, ctx: CheckContext) -> list[CheckIssue]:
        """E240: a filter subject outside the declared stream; W340: a stream nobody declares or creates."""
        conn = ctx.connections.get(config.connection)
        if conn is None or conn.get("type") != "nats":
            return []
        declared = (conn.get("streams") or {}).get(config.stream)
        if declared is None:
            if config.subjects:
                return []
            return [
                CheckIssue(
                    ("stream",),
                    "W340",
                    f"stream {config.stream!r} is not declared under connection "
                    f"{config.connection!r} and the source has no subjects to create it: it must exist",
                    "warning",
                )
            ]
        return [
            CheckIssue(
                ("subjects", i),
                "E240",
                f"filter subject {f!r} is outside stream {config.stream!r} (subjects {declared['subjects']})",
            )
            for i, f in enumerate(config.subjects)
            if not any(subject_within(f"{f}.*" if config.partitions else f, s) for s in declared["subjects"])
        ]

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def lag(self) -> int | None:
        """Messages in the stream this consumer has not been delivered yet (`num_pending`)."""
        if self._h is None:
            return None
        if self._owner is not None:
            return sum([int((await lane.source._h.js.consumer_info(self.config.stream, lane.source.config.durable)
                             ).num_pending or 0) for lane in list(self._owner.lanes.values())])
        info = await self._h.js.consumer_info(self.config.stream, self.config.durable)  # type: ignore[union-attr]
        return int(info.num_pending or 0)

    async def start(self) -> None:
        self._h = await nats_handle(self.ctx, self.config.connection)
        await self._ensure_stream()
        if self.config.partitions is not None:
            info = await self._h.js.stream_info(self.config.stream)
            self._owner = Ownership(self, self._lane, self.config.partitions, float(self.config.partition_ttl),
                                    info.config.num_replicas or 1)
            await self._owner.open(self._h.js)
            return
        info = await self._ensure_consumer()
        if self._seqs is None and info is not None and info.num_ack_pending:
            # a restart (or another process on the durable): what an earlier run was delivered and did not
            # ack comes back first, in the server's redelivery order: send it on in stream order (a
            # partition's lane is told the same by its `Ownership` when it takes the partition)
            self.catch_up(info.num_ack_pending, getattr(info.delivered, "stream_seq", 0) or 0)
        nc = self._h.nc
        self._inbox = nc.new_inbox()
        self._sub = await self._h.tap.subscribe(  # type: ignore[union-attr]
            self._inbox + ".*", self._on_msg, self._on_frames)
        self._h.listeners.append(self._on_reconnect)

    def _lane(self, p: int) -> JetStreamSource:
        """The source of partition p alone: its own durable, its one subject."""
        cfg = self.config.model_copy(update={"durable": lane_durable(self.config.durable, p), "partitions": None,
                                             "subjects": [f"{self.config.subjects[0]}.{p}"]})
        lane = JetStreamSource(self.id, cfg, self.ctx)
        lane._seqs = _Seqs()
        return lane

    async def _run_partitioned(self, out: SourceSender) -> None:
        """Own a fair share of the partitions, pull them, rebalance every `partition_ttl / 3`; at the end
        release every partition (module docstring of `partitions`)."""
        import asyncio
        import contextlib

        owner = self._owner
        assert owner is not None
        self._out = out
        period = float(self.config.partition_ttl) / 3
        try:
            while not out.stopping.is_set():
                began = time.monotonic()
                try:
                    await owner.tick(out)
                except Exception as exc:  # noqa: BLE001 - NATS away: the next tick tries again
                    log.warning("node %s: partition rebalance failed: %s", self.id, exc)
                with contextlib.suppress(TimeoutError):  # acks set `_wake`: wait for the stop only
                    async with asyncio.timeout(max(0.0, period - (time.monotonic() - began))):
                        await out.stopping.wait()
        finally:
            await owner.close()

    async def stop(self) -> None:
        if self._owner is not None:
            await self._owner.close()
            return
        if self._h is None:
            return
        if self._sub is not None and not self._h.nc.is_closed:
            await self._requests_ended()  # none left after a graceful `run`; some if it was cancelled
        if self._on_reconnect in self._h.listeners:
            self._h.listeners.remove(self._on_reconnect)
        if self._sub is not None:
            self._h.tap.forget(self._sub)  # type: ignore[union-attr]
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection already gone
                pass
            self._sub = None
        # Messages received but never emitted go back to the server at once.
        if self._catchup is not None:
            self._buf[:0], self._catchup = self._catchup.release(), None
        leftovers, self._buf = self._buf, []
        if leftovers and not self._h.nc.is_closed:
            await write_lines(self._h.nc, [(m[1], b"-NAK") for m in leftovers])
            await self._h.nc.flush()

    async def _ensure_stream(self) -> None:
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        js, cfg = self._h.js, self.config  # type: ignore[union-attr]
        try:
            await js.stream_info(cfg.stream)
        except NotFoundError:
            if not cfg.subjects:
                raise JetStreamConnectionError(
                    f"node {self.id!r}: stream {cfg.stream!r} does not exist; declare it under "
                    f"connections.{cfg.connection}.streams or give the source its subjects"
                ) from None
            subjects = [f"{cfg.subjects[0]}.*"] if cfg.partitions else list(cfg.subjects)
            await js.add_stream(StreamConfig(name=cfg.stream, subjects=subjects))
            log.info("node %s: created stream %s with subjects %s", self.id, cfg.stream, subjects)

    def _consumer_config(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = self.config
        policy = {
            "all": DeliverPolicy.ALL,
            "new": DeliverPolicy.NEW,
            "last": DeliverPolicy.LAST,
            "by_start_sequence": DeliverPolicy.BY_START_SEQUENCE,
            "by_start_time": DeliverPolicy.BY_START_TIME,
        }[cfg.deliver]
        return ConsumerConfig(
            durable_name=cfg.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=policy,
            opt_start_seq=cfg.start_sequence,
            opt_start_time=cfg.start_time.isoformat() if cfg.start_time else None,  # type: ignore[arg-type]
            ack_wait=cfg.ack_wait,
            max_deliver=cfg.max_deliver + 1,  # the last one only dead-letters a message never settled
            backoff=list(cfg.backoff) or None,
            filter_subject=cfg.subjects[0] if len(cfg.subjects) == 1 else None,
            filter_subjects=list(cfg.subjects) if len(cfg.subjects) > 1 else None,
            max_ack_pending=self.max_ack_pending,
        )

    async def _ensure_consumer(self) -> Any:
        """Create or bind the durable; its `ConsumerInfo` (pending and delivered counts)."""
        from nats.js.errors import Error as JsError

        version = self._h.nc.connected_server_version  # type: ignore[union-attr]
        if len(self.config.subjects) > 1 and (version.major, version.minor) < (2, 10):
            raise JetStreamConnectionError(
                f"node {self.id!r}: several filter subjects need nats-server 2.10 or later (this one is "
                f"{version.major}.{version.minor}.{version.patch}); an older server would ignore them and "
                f"deliver the whole stream"
            )
        try:
            return await self._h.js.add_consumer(self.config.stream, self._consumer_config())  # type: ignore[union-attr]
        except JsError as exc:
            raise JetStreamConnectionError(
                f"node {self.id!r}: cannot create or bind consumer {self.config.durable!r} on stream "
                f"{self.config.stream!r}: {exc} (an existing durable with another deliver policy or filter "
                f"cannot be changed: delete it or pick another name)"
            ) from exc

    # -- receiving -------------------------------------------------------------------------------------------

    def _on_msg(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None, status: str | None
    ) -> None:
        if reply:
            self._buf.append((subject, reply, data, headers))
            if self._open:  # the server fills pull requests in order
                first = next(iter(self._open.values()))
                first[0] -= 1
                if first[0] <= 0:
                    self._open.pop(next(iter(self._open)))
                    self._wake.set()
            if len(self._buf) == 1:
                self._wake.set()
            return
        if status in _STATUS_DONE and self._open.pop(subject, None) is not None:
            self._wake.set()
            if self._catchup is not None and status != "409":
                self._catchup.unfilled = True
            if status == "409":
                desc = (headers or {}).get("Description", "")
                log.warning("node %s: pull request ended: 409 %s", self.id, desc)
                if "Deleted" in desc:
                    import asyncio

                    self._recreating = asyncio.ensure_future(self._recreate_consumer())  # kept: not collected

    def _on_frames(self, frames: list[tuple[str, str, bytes, dict[str, str] | None]]) -> None:
        """`_on_msg` for a run of messages (each with a reply, none a status) read together."""
        was_empty = not self._buf
        self._buf += frames
        k = len(frames)
        open_ = self._open
        while k > 0 and open_:  # the server fills pull requests in order
            subject = next(iter(open_))
            first = open_[subject]
            if first[0] > k:
                first[0] -= k
                break
            k -= int(first[0])
            del open_[subject]
            self._wake.set()
        if was_empty:
            self._wake.set()

    async def _wait_open(self) -> bool:
        """Wait for a message or the end of an open pull request; False once none is open. Each ends
        when filled, with its 408 at `expires`, or counts as lost `_LOST_AFTER` seconds later."""
        limit = self.config.expires + _LOST_AFTER
        now = time.monotonic()
        for subject in [s for s, (_, sent) in self._open.items() if now - sent > limit]:
            log.warning("node %s: pull request %s gave no end; stopping without it", self.id, subject)
            del self._open[subject]
        if not self._open or self._h is None or self._h.nc.is_closed:
            return False
        await self._sleep_until_woken(min(s for _, s in self._open.values()) + limit - now)
        return True

    async def _sleep_until_woken(self, seconds: float) -> None:
        """Wait for `_wake` at most `seconds`. `asyncio.timeout`, not `wait_for`: on Python 3.11 a
        `wait_for` whose inner wait finishes as the task is cancelled swallows the cancellation, and
        a cancelled `run` then went on pulling (seen in the cut-short test)."""
        import asyncio

        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _requests_ended(self) -> None:
        """Return once no pull request is open; messages arriving meanwhile stay in `_buf`."""
        while await self._wait_open():
            pass

    async def _recreate_consumer(self) -> None:
        try:
            await self._ensure_consumer()
        except Exception:
            log.exception("node %s: re-creating consumer failed", self.id)

    async def _on_reconnect(self) -> None:
        self._open.clear()  # the open pull requests died with the old connection
        self._wake.set()

    def _limit(self) -> int:
        tracker = self._out.tracker if self._out is not None else None
        cap = getattr(tracker, "limit", 0) or 0
        return min(self.max_ack_pending, cap) if cap > 0 else self.max_ack_pending

    async def _request(self) -> None:
        """Keep up to `pull_requests` requests open, for as many messages as the graph has room for."""
        now = time.monotonic()
        for subject, (_, sent) in list(self._open.items()):
            if now - sent > self.config.expires + _LOST_AFTER:
                del self._open[subject]  # lost (no 408 came): forget it so another goes out
        while len(self._open) < self.config.pull_requests:
            if not await self._request_one():
                return

    async def _request_one(self) -> bool:
        tracker = self._out.tracker  # type: ignore[union-attr]
        limit = self._limit()
        room = limit - tracker.in_flight - len(self._buf) - int(sum(r[0] for r in self._open.values()))
        n = min(self.config.batch, room)
        if n <= 0 or n < min(self.config.batch, max(1, limit // 4)):
            return False
        self._req_n += 1
        reply = f"{self._inbox}.{self._req_n}"
        self._open[reply] = [n, time.monotonic()]
        req: dict[str, Any] = {"batch": n, "expires": int(self.config.expires * 1e9)}
        if self.config.max_bytes:
            req["max_bytes"] = self.config.max_bytes
        try:
            await self._h.nc.publish(  # type: ignore[union-attr]
                f"$JS.API.CONSUMER.MSG.NEXT.{self.config.stream}.{self.config.durable}",
                orjson.dumps(req),
                reply=reply,
            )
        except Exception as exc:  # noqa: BLE001 - connection closed or its buffer full while reconnecting
            log.warning("node %s: pull request not sent (%s); retrying after expires", self.id, exc)
            return False  # stays in _open until it counts as lost
        return True

    async def run(self, out: SourceSender) -> None:
        import asyncio

        if self._owner is not None:
            return await self._run_partitioned(out)
        self._out = out
        cap = getattr(out.tracker, "limit", 0) or 0
        if cap > self.max_ack_pending:
            if self.config.max_ack_pending is None:
                self.max_ack_pending = cap
                await self._ensure_consumer()
            else:
                log.warning(
                    "node %s: max_ack_pending %d is below the graph's capacity %d: operators that hold "
                    "messages (windows) may wait forever",
                    self.id,
                    self.max_ack_pending,
                    cap,
                )
        relay = asyncio.ensure_future(self._relay_stop(out))
        ticker = asyncio.ensure_future(self._tick_in_progress()) if self.config.in_progress else None
        watchdog = self.config.expires + _LOST_AFTER
        try:
            while not out.stopping.is_set():
                await self._request()
                if self._catchup is not None:
                    self._catch_up()
                if not self._buf and not self._dead:
                    await self._sleep_until_woken(watchdog)  # `_request` then forgets requests that got lost
                    continue
                raw, self._buf = self._buf, []
                await self._request()  # overlap the next round trips with this batch's work
                await self._emit(raw, out, ticker is not None)
            if self._catchup is not None:  # stopped while catching up: what it holds goes on, in order
                self._buf[:0], self._catchup = self._catchup.release(), None
            # Stopping: no new pull request, but what the open ones still bring was delivered to this
            # consumer: it goes through the graph like the rest until they have ended (a message the
            # server sends into an open request after the unsubscribe would wait for `ack_wait`).
            while self._buf or self._dead or await self._wait_open():
                if self._buf or self._dead:
                    raw, self._buf = self._buf, []
                    await self._emit(raw, out, ticker is not None)
        finally:
            relay.cancel()
            if ticker is not None:
                ticker.cancel()

    async def _emit(self, raw: list[tuple[str, str, bytes, dict[str, str] | None]], out: SourceSender,
                    hold: bool) -> None:
        """Send received frames (and pending dead letters) downstream as one batch."""
        if self._seqs is not None:
            behind = self._seqs.behind
            raw = self._seqs.filter(raw)
            if self._seqs.behind > behind:
                log.warning("node %s: %s: %d message(s) arrived after a newer one of the partition (a late "
                            "redelivery or a resend): an event-time window may find them late", self.id,
                            self.config.durable, self._seqs.behind - behind)
            if self._seqs.acks:
                lines, self._seqs.acks = self._seqs.acks, []
                await write_lines(self._h.nc, lines)  # type: ignore[union-attr]
        msgs, errors = self._decode(raw)
        if self._dead:
            errors.extend(self._dead)
            self._dead = []
        if hold:
            self._hold(msgs, errors)
        await out.send(msgs, errors)

    def catch_up(self, pending: int, last: int) -> None:
        """A partition lane, or a source starting on a durable with unacknowledged messages: send the
        `pending` messages delivered before (stream sequence <= `last`) in stream order, ahead of the rest
        (`_CatchUp`)."""
        self._catchup = _CatchUp(pending, last)

    def _catch_up(self) -> None:
        """A lane's start (`_CatchUp`): hold what `_buf` brought until caught up, then put it back in order."""
        catchup = self._catchup
        assert catchup is not None
        ready = catchup.take(self._buf)
        self._buf = ready or []
        if ready is not None:
            self._catchup = None
            log.info("node %s: %s: %d message(s) of earlier owners sent on in stream order", self.id,
                     self.config.durable, catchup.sent)

    async def _relay_stop(self, out: SourceSender) -> None:
        await out.stopping.wait()
        self._wake.set()

    def _decode(
        self, raw: list[tuple[str, str, bytes, dict[str, str] | None]]
    ) -> tuple[list[Msg], list[Msg]]:
        """Build messages (body, meta, ack) from raw frames in one tight loop (acks made batch-wise).

        JSON bodies are parsed first for the whole batch with `orjson.loads` mapped in C when no
        frame is long enough to break a payload limit (engine.codec: shorter than 2 x MAX_DEPTH + 2
        bytes and within `max_payload_bytes`); otherwise, or if some frame is not JSON, each frame
        is parsed in the loop, where a bad one becomes that message's error. The reply subject
        `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ns>.<pending>` (9 tokens; 11 or 12 with
        a domain and account hash first) is unpacked, not indexed. The usual batch (first deliveries,
        no headers, JSON) takes `_decode_plain` instead of the loop."""
        out: SourceSender = self._out  # type: ignore[assignment]
        codec = self.config.codec
        max_deliver = self.config.max_deliver
        limit = self.config.max_payload_bytes
        bodies: list[Any] | None = None
        if codec == "json" and raw:
            datas = [f[2] for f in raw]
            if max(map(len, datas)) <= min(limit, 2 * json_codec.MAX_DEPTH + 1):
                try:
                    bodies = list(map(orjson.loads, datas))
                except orjson.JSONDecodeError:  # some frame is not JSON: each is judged alone below
                    bodies = None
            if bodies is not None and [f[3] for f in raw].count(None) == len(raw):
                plain = self._decode_plain(raw, bodies)
                if plain is not None:
                    return plain, []
        acks = out.tracker.new_many([None] * len(raw))
        decode: Any = (partial(json_codec.loads, max_bytes=limit) if codec == "json"
                       else bytes.decode if codec == "text" else None)
        msgs: list[Msg] = []
        errors: list[Msg] = []
        append = msgs.append
        node_id = self.id
        redelivered = 0
        for i, ((subject, reply, data, headers), ack) in enumerate(zip(raw, acks)):
            t = reply.split(".")
            if len(t) == 9:
                _, _, stream, consumer, dlv, seq, cseq, ns, _ = t
            else:
                stream, consumer, dlv, seq, cseq, ns = t[4:10]
            delivered = int(dlv)
            meta = {
                "source": node_id,
                "subject": subject,
                "stream": stream,
                "consumer": consumer,
                "delivered": delivered,
                "seq": int(seq),
                "consumer_seq": int(cseq),
                "timestamp": int(ns) / 1e9,
                "headers": headers or {},
            }
            if headers and TIMESTAMP_HEADER in headers:  # from a jetstream_sink: latency from the origin
                try:
                    meta["timestamp"] = float(headers[TIMESTAMP_HEADER])
                except ValueError:
                    pass
            if delivered > 1:
                redelivered += 1
                if delivered > max_deliver:  # never settled in max_deliver deliveries: dead letter, +TERM
                    ack.token = (reply, None, None, 0)
                    reason = (f"delivered {delivered} times and never settled (max_deliver {max_deliver}): "
                              "the graph crashed, stopped or held it past ack_wait")
                    errors.append(out.error(Msg(data, meta, ack, len(data)), reason, delivered))
                    continue
            if bodies is not None:
                body = bodies[i]
            else:
                try:
                    body = decode(data) if decode is not None else data
                except (ValueError, PayloadTooLarge) as exc:
                    bad = Msg(data, meta, ack, len(data))
                    ack.token = (reply, meta, data, len(data))
                    errors.append(out.error(bad, f"cannot decode as {codec}: {exc}", delivered))
                    continue
            size = len(data)
            msg = Msg(body, meta, ack, size)
            # the body as read: map may rewrite msg.body in place, a dead letter carries the original.
            # Not `msg`: msg -> ack -> token -> msg would make every message cyclic garbage.
            ack.token = (reply, meta, body, size)
            append(msg)
        self.redeliveries += redelivered
        return msgs, errors

    def _decode_plain(self, raw: list[tuple[str, str, bytes, dict[str, str] | None]], bodies: list[Any]
                      ) -> list[Msg] | None:
        """`_decode` of the usual batch, with the per-message work in C where it can be: first deliveries
        without headers, JSON bodies parsed, every reply subject `<prefix><delivered>.<seq>.<cseq>.<ns>.
        <pending>` with one prefix `$JS.ACK.<stream>.<consumer>.`. The numbers of all reply subjects are
        parsed by one `orjson.loads` of the joined subjects (`int()` of each token cost more than the
        rest of the meta). None when the batch is not like that (then `_decode` goes frame by frame)."""
        out: SourceSender = self._out  # type: ignore[assignment]
        n = len(raw)
        replies = [f[1] for f in raw]
        t = replies[0].split(".")
        if len(t) != 9:
            return None
        prefix = f"{t[0]}.{t[1]}.{t[2]}.{t[3]}."
        joined = ",".join(replies)
        if joined.count(prefix) != n:
            return None
        numbers = joined.replace(prefix, "").replace(".", ",")
        if "e" in numbers or "E" in numbers or "-" in numbers:  # JSON numbers that are no tokens of digits
            return None
        try:
            nums = orjson.loads(f"[{numbers}]")
        except orjson.JSONDecodeError:
            return None
        if len(nums) != 5 * n or max(nums[0::5]) != 1:  # a redelivery: counted, maybe dead-lettered
            return None
        node_id, stream, consumer = self.id, t[2], t[3]
        metas = [{"source": node_id, "subject": f[0], "stream": stream, "consumer": consumer, "delivered": 1,
                  "seq": seq, "consumer_seq": cseq, "timestamp": ns / 1e9, "headers": {}}
                 for f, seq, cseq, ns in zip(raw, nums[1::5], nums[2::5], nums[3::5])]
        sizes = [len(f[2]) for f in raw]
        # the body as read in the token: map may rewrite msg.body in place, a dead letter carries the original
        acks = out.tracker.new_many(list(zip(replies, metas, bodies, sizes)))
        return list(map(Msg, bodies, metas, acks, sizes))

    # -- acks ------------------------------------------------------------------------------------------------

    async def commit(self, tokens: list[Any]) -> None:
        """`+ACK` each (`+TERM` a dead letter's original), all in one write."""
        terms = [t[1] for t in tokens].count(None)  # tokens (reply, meta, body as read, size); meta None: +TERM
        if terms:
            self.termed += terms
            await write_lines(self._h.nc, [(t[0], b"+ACK" if t[1] is not None else b"+TERM")  # type: ignore[union-attr]
                                           for t in tokens])
        else:
            await write_acks(self._h.nc, [t[0] for t in tokens])  # type: ignore[union-attr]
        self.acked += len(tokens)
        self._wake.set()
        if self._owner is not None:
            lanes = {lane.source.config.durable: lane.source for lane in
                     [*self._owner.lanes.values(), *self._owner.releasing.values()]}
            extra: list[tuple[str, bytes]] = []
            for reply, *_ in tokens:
                _, consumer, _, seq, _, _ = parse_ack_subject(reply)
                lane = lanes.get(consumer)
                if lane is not None and lane._seqs is not None:
                    extra.extend((r, b"+ACK") for r in lane._seqs.acked(seq))
            if extra:
                await write_lines(self._h.nc, extra)  # type: ignore[union-attr]
            for lane in self._owner.lanes.values():
                lane.source._wake.set()  # room again: the lanes may pull

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        if self._owner is not None:  # each lane naks, or dead-letters, its own
            by_lane: dict[str, list[tuple[Any, str]]] = {}
            for f in failures:
                by_lane.setdefault(parse_ack_subject(f[0][0])[1], []).append(f)
            lanes = {lane.source.config.durable: lane.source for lane in self._owner.lanes.values()}
            for durable, group in by_lane.items():
                lane = lanes.get(durable)
                if lane is not None:
                    if lane._seqs is not None:
                        for (reply, *_), _why in group:
                            lane._seqs.naked(parse_ack_subject(reply)[3])
                    await lane.reject(group)
                else:  # released meanwhile: back to the server for the partition's new owner
                    await write_lines(self._h.nc, [(r[0], b"-NAK") for r, _ in group])  # type: ignore[union-attr]
            return
        lines = []
        cfg = self.config
        tracker = self._out.tracker if self._out is not None else None
        for (reply, meta, body, size), reason in failures:
            if meta is None:
                log.error(
                    "node %s: dead-lettering a message failed (%s); terminating it: %s",
                    self.id,
                    reason,
                    reply,
                )
                lines.append((reply, b"+TERM"))
                self.termed += 1
                continue
            delivered = meta.get("delivered", 1)
            if delivered >= cfg.max_deliver and tracker is not None and self._out is not None:
                dead = Msg(body, meta, tracker.new((reply, None, None, 0)), size)
                self._dead.append(
                    self._out.error(
                        dead,
                        f"{reason} (delivered {delivered} times, max_deliver {cfg.max_deliver})",
                        delivered,
                    )
                )
                continue
            delay = int(cfg.retry.backoff(delivered, random.random()) * 1e9)
            lines.append((reply, b'-NAK {"delay":%d}' % delay))
            self.naked += 1
        if lines:
            await write_lines(self._h.nc, lines)  # type: ignore[union-attr]
        self._wake.set()

    # -- in progress -----------------------------------------------------------------------------------------

    def _hold(self, msgs: list[Msg], errors: list[Msg]) -> None:
        """Remember emitted messages for `+WPI`; drop settled batches from the front (acks mostly come
        back in order, so that is cheap), and compact the whole deque when settled ones pile up."""
        held = self._held
        held.append((time.monotonic(), msgs + errors))
        self._held_n += len(msgs) + len(errors)
        pos = self._held_pos  # settled prefix of the head batch, so it is not scanned again
        while held:
            head = held[0][1]
            n = len(head)
            while pos < n and head[pos].ack.pending <= 0:
                pos += 1
            if pos < n:
                break
            held.popleft()
            self._held_n -= n
            pos = 0
        self._held_pos = pos
        if self._held_n > 2 * self._limit() + self.config.batch:
            kept: deque[tuple[float, list[Msg]]] = deque()
            n = 0
            for t, batch in self._held:
                live = [m for m in batch if not m.ack.settled]
                if live:
                    kept.append((t, live))
                    n += len(live)
            self._held, self._held_n, self._held_pos = kept, n, 0

    async def _tick_in_progress(self) -> None:
        import asyncio

        cfg = self.config
        # with backoff, the server waits backoff[n] instead of ack_wait
        period = min([cfg.ack_wait, *cfg.backoff]) / 3
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - period
            lines: list[tuple[str, bytes]] = []
            for t, batch in self._held:
                if t > cutoff:
                    break
                lines.extend(
                    (m.ack.token[0], b"+WPI")
                    for m in batch
                    if not m.ack.settled and m.ack.token and m.ack.token[1] is not None
                )
            if lines:
                log.debug("node %s: %d messages in progress", self.id, len(lines))
                await write_lines(self._h.nc, lines)  # type: ignore[union-attr]
