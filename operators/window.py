"""The `window` operator: tumbling, sliding and session windows on processing or event time.

Per item: evaluate the key and the event time (failures go to `errors`), fold the aggregates into
the item's windows (`operators.windowing.WindowStore`), and move the watermark. A window closed by
the watermark becomes one message on `out`. Items too late for every window they belong to go to
`late`, unchanged but for `meta.window_late`; nothing is dropped. State is kept per partition of a
partitioned source (`meta.partition`); a revoked partition's state is dropped and the acks it holds
failed, so the new owner gets those items again. Time comes from `ctx.clock` (wall clock, seconds)
so tests drive it exactly.

When an item's ack is released (`acks`, docs/window.md):

* `hold`: when the window it belongs to is committed downstream (the window's message carries its
  items' acks). Open windows hold acks, so they count against `max_in_flight`.
* `release`: as soon as it is folded into the state, counted as delivered. For sources without
  durable positions (file_source, generate): holding their acks protects nothing. The window's
  message carries no ack.
* `checkpoint`: once a checkpoint covering it is durable (`operators.window_checkpoint`). The
  window's message carries an ack of its own: until it is committed, it is part of the checkpoint.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate, islice, repeat
from operator import attrgetter, lt, methodcaller, mul
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import (
    DELIVERED,
    NOOP_ACK,
    CelExpr,
    CheckContext,
    CheckIssue,
    CompositeAck,
    Context,
    Duration,
    EvalError,
    Expr,
    Msg,
    NodeConfig,
    Operator,
    Output,
    PositiveDuration,
    compile_expr,
    finish_all,
    own_ack,
)
from operators.window_aggregates import make_aggregate
from operators.window_checkpoint import CheckpointConfig, Checkpointer, KeyChunks, Outbox
from operators.window_coverage import Covered
from operators.windowing import Emission, Watermark, WindowStore

__all__ = [
    "AggregateSpec",
    "Window",
    "WindowConfig",
    "format_time",
    "parse_event_time",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_EPOCH_SCALE = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_KEY_TYPES = frozenset((str, int, float, bool, type(None)))  # keys the batch path takes as they are
_NUMBER_TYPES = frozenset((int, float))  # event times and sum/avg/min/max values it takes
_META, _PARTITION = attrgetter("meta"), methodcaller("get", "partition")
_GET = dict.get  # `map(_GET, metas, repeat(k))`: 3x faster than a `methodcaller("get", k)`
_INT, _NONE = frozenset((int,)), frozenset((type(None),))
_I64 = 1 << 63


def _us(seconds: float | None) -> int:
    return 0 if seconds is None else round(seconds * 1_000_000)


def parse_event_time(value: Any, epoch_unit: str = "s") -> int:
    """Microseconds since the epoch from an RFC 3339 string, an epoch number or a CEL timestamp."""
    if isinstance(value, bool):
        raise TypeError("event time is a bool, not a timestamp")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"event time {value!r} is not a finite number")
        return round(value * _EPOCH_SCALE[epoch_unit])
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError(f"event time {value!r} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError(f"event time {value!r} has no UTC offset (RFC 3339 needs 'Z' or '+hh:mm')")
        return (parsed - _EPOCH) // _US
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _US
    raise TypeError(f"event time must be an RFC 3339 string or an epoch number, got {type(value).__name__}")


@lru_cache(maxsize=4096)  # windows of many keys share their edges
def format_time(us: int) -> str:
    """RFC 3339 in UTC with a `Z`, microseconds only when not zero."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


class AggregateSpec(BaseModel):
    """One aggregate of each window: an operation over a CEL expression."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["count", "sum", "min", "max", "avg", "first", "last", "collect", "count_distinct"] = Field(
        description="count (items, or non-null values of `expr`), sum, min, max, avg, first and last "
        "(by event time), collect (values in event-time order, at most `limit`), "
        "count_distinct. Null values are skipped except by first, last and collect.",
        examples=["sum"],
    )
    expr: CelExpr | None = Field(
        None, description="Value to aggregate; optional for count only.", examples=["double(msg.amount)"]
    )
    limit: int = Field(100, ge=1, le=1_000_000, description="collect: most values kept (the earliest).")

    @model_validator(mode="after")
    def _rules(self) -> AggregateSpec:
        if self.expr is None and self.op != "count":
            raise ValueError(f"aggregate op {self.op!r} needs an 'expr'")
        if self.op != "collect" and "limit" in self.model_fields_set:
            raise ValueError("'limit' applies to op 'collect' only")
        return self


class WindowConfig(NodeConfig):
    """Group items into windows per key and emit one message of aggregates per closed window."""

    kind: Literal["tumbling", "sliding", "session"] = Field(
        description="tumbling (size), sliding (size and slide) or session (gap).", examples=["tumbling"]
    )
    size: PositiveDuration | None = Field(
        None, description="Window length (tumbling, sliding).", examples=["1m"]
    )
    slide: PositiveDuration | None = Field(
        None, description="Distance between sliding window starts; at most `size`.", examples=["10s"]
    )
    gap: PositiveDuration | None = Field(
        None, description="Session: inactivity that ends a session.", examples=["30m"]
    )
    offset: Duration = Field(
        0,
        description="Alignment of window starts (tumbling, sliding): starts are "
        "offset + k*slide from the epoch.",
        examples=["0s"],
    )
    key: CelExpr | None = Field(
        None,
        description="Key of the window (a string, number, bool or null); unset: one global window.",
        examples=["msg.user"],
    )
    time: Literal["processing", "event"] = Field(
        "processing", description="processing: arrival wall clock; event: the `timestamp` expression."
    )
    timestamp: CelExpr | None = Field(
        None,
        description="Event time: an RFC 3339 string, an epoch number (see epoch_unit) or a CEL timestamp.",
        examples=["msg.ts"],
    )
    epoch_unit: Literal["s", "ms", "us", "ns"] = Field("s", description="Unit of numeric event times.")
    max_out_of_orderness: Duration = Field(
        0, description="Event time: watermark = highest event time seen minus this.", examples=["5s"]
    )
    allowed_lateness: Duration = Field(
        0,
        description="Event time: how long a closed window is kept for "
        "late items (each re-emits it as an update).",
        examples=["1m"],
    )
    idle_timeout: PositiveDuration | None = Field(
        None,
        description="Event time: after this much wall "
        "clock with no items, the watermark advances with the wall "
        "clock so windows close on a quiet stream.",
        examples=["30s"],
    )
    tick_interval: PositiveDuration = Field(
        0.5,
        description="How often (seconds) the wall clock is checked (processing time, idle_timeout).",
    )
    on_drain: Literal["flush", "redeliver"] = Field(
        "flush",
        description="When the graph is stopped (SIGTERM) rather than at end of input: flush emits the "
        "open windows as they are; redeliver fails their items' acks, so a source that redelivers "
        "(JetStream) hands them again after the restart and the windows are rebuilt whole.",
    )
    acks: Literal["hold", "release", "checkpoint"] | None = Field(
        None,
        description="When an item's source ack is released: hold (when its window is committed "
        "downstream), release (once folded into the state), checkpoint (once a durable checkpoint "
        "covers it). Unset: checkpoint with a `checkpoint` store, release when no upstream source has "
        "durable positions (file_source, generate), else hold.",
        examples=["checkpoint"],
    )
    checkpoint: CheckpointConfig | None = Field(
        None,
        description="Where and how often the state is checkpointed (with acks: checkpoint).",
        examples=[{"connection": "pg", "interval": "2s"}],
    )
    aggregates: dict[str, AggregateSpec] = Field(
        default_factory=dict,
        description="Name -> aggregate; the output's `aggregates` map.",
        examples=[{"n": {"op": "count"}, "total": {"op": "sum", "expr": "msg.amount"}}],
    )

    @model_validator(mode="after")
    def _rules(self) -> WindowConfig:
        if self.kind in ("tumbling", "sliding") and self.size is None:
            raise ValueError(f"a {self.kind} window needs 'size'")
        if self.kind != "sliding" and self.slide is not None:
            raise ValueError("'slide' applies to sliding windows only")
        if self.kind == "sliding":
            if self.slide is None:
                raise ValueError("a sliding window needs 'slide'")
            if self.size is not None and self.slide > self.size:
                raise ValueError(
                    "'slide' must not exceed 'size' (items between windows would belong to none)"
                )
        if self.kind == "session":
            if self.gap is None:
                raise ValueError("a session window needs 'gap'")
            if self.size is not None or "offset" in self.model_fields_set:
                raise ValueError("'size' and 'offset' do not apply to session windows")
        elif self.gap is not None:
            raise ValueError("'gap' applies to session windows only")
        if self.acks == "checkpoint" and self.checkpoint is None:
            raise ValueError("acks: checkpoint needs a 'checkpoint' store")
        if self.on_drain == "redeliver" and (self.acks in ("release", "checkpoint") or self.checkpoint):
            raise ValueError("on_drain: redeliver fails the acks open windows hold: it needs acks: hold "
                             "(with checkpoints a stop saves the state instead)")
        if self.checkpoint is not None and self.acks in ("hold", "release"):
            raise ValueError(f"'checkpoint' applies with acks: checkpoint, not acks: {self.acks}")
        if self.time == "event" and self.timestamp is None:
            raise ValueError("time: event needs a 'timestamp' expression")
        if self.time == "processing":
            extra = [
                f
                for f in (
                    "timestamp",
                    "max_out_of_orderness",
                    "allowed_lateness",
                    "idle_timeout",
                    "epoch_unit",
                )
                if f in self.model_fields_set
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for time: event")
        return self


def ack_mode(config: WindowConfig, upstream: tuple[Any, ...] | None) -> str:
    """The `acks` mode in effect: as set, else from the store and the upstream sources (None: not
    known, as for a node made outside a run: hold, today's behaviour)."""
    if config.acks is not None:
        return config.acks
    if config.checkpoint is not None:
        return "checkpoint"
    if config.on_drain == "redeliver":  # it fails the acks the open windows hold: they must hold them
        return "hold"
    if upstream is not None and not any(getattr(u.cls, "durable_positions", False) for u in upstream):
        return "release"
    return "hold"


def _batch_seqs(batch: list[Msg], covered: Covered) -> tuple[str | None, list[int] | None, list[Any] | None] | None:
    """acks: checkpoint: how the batch's sequences are recorded once folded, or None when some item
    is covered (counting the items before it in the batch as folded: a copy within the batch).
    (stream, seqs, None): one stream, int sequences strictly increasing above what is covered (a
    run appends in C, `Coverage.extend`); ("", None, None): no item has a sequence; (None, None,
    metas): anything else, recorded item by item (`Covered.add_metas`)."""
    metas = list(map(_META, batch))
    seqs: list[Any] = list(map(_GET, metas, repeat("seq")))
    types = set(map(type, seqs))
    if types == _INT:
        streams = list(map(_GET, metas, repeat("stream")))
        stream = streams[0]
        if streams.count(stream) == len(streams):
            stream = stream or ""
            if seqs[0] > covered.top(stream) and seqs[-1] < _I64 and all(map(lt, seqs, islice(seqs, 1, None))):
                return stream, seqs, None
    elif types == _NONE:
        return "", None, None
    seen: set[tuple[str, int]] = set()
    for meta, seq in zip(metas, seqs):
        if type(seq) is int:
            stream = meta.get("stream") or ""
            if (stream, seq) in seen or covered.covers(stream, seq):
                return None
            seen.add((stream, seq))
    return None, None, metas


def _cut(seqs: tuple[str | None, list[int] | None, list[Any] | None], i: int, j: int
         ) -> tuple[str | None, list[int] | None, list[Any] | None]:
    """`_batch_seqs` of items i..j-1 of the batch."""
    stream, run, metas = seqs
    return stream, None if run is None else run[i:j], None if metas is None else metas[i:j]


class _Part:
    """One partition's windows and watermark, and (acks: checkpoint) what its next checkpoint covers."""

    __slots__ = ("chunks", "covered", "outbox", "pending", "resend", "store", "watermark")

    def __init__(self, store: WindowStore, watermark: Watermark, tracked: int = 0):
        self.store = store
        self.watermark = watermark
        self.pending: list[Any] = []  # acks of folded items the next checkpoint covers
        self.covered = Covered(tracked)  # stream -> the sequences folded (`operators.window_coverage`)
        self.outbox: Outbox | None = None  # emitted windows not yet committed downstream
        self.resend: list[tuple[Any, dict[str, Any], int]] = []  # restored outbox: emit again
        self.chunks: KeyChunks | None = None  # which checkpoint record holds each key


class Window(Operator):
    """Watermarks, lateness, the `late` port and what a stop does to open windows: docs/window.md."""

    Config = WindowConfig
    example = """\
version: 1
name: window_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"user": "u" + string(msg.i % 3), "amount": msg.i % 50, "ts": 1700000000.0 + double(msg.i)}'
  per_user:
    type: window
    inputs: [orders]
    config:
      kind: tumbling
      size: 1m
      key: msg.user
      time: event
      timestamp: msg.ts
      max_out_of_orderness: 2s
      idle_timeout: 5s               # a quiet stream still closes its windows
      aggregates:
        orders: {op: count}
        total: {op: sum, expr: msg.amount}
  windows: {type: stdout, inputs: [per_user]}
  late: {type: file_sink, inputs: [per_user.late], config: {path: out/late.ndjson}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "out": "one message per closed window: its key, start, end and `aggregates` (again, as an "
            "update, for each late item within `allowed_lateness`)",
        "late": "event time: items that arrived after their window closed and after `allowed_lateness`",
    }
    ports = ("out", "late")
    per_process_state = "keeps its open windows and their aggregates in this process"

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """The checkpoint store's connection: declared, and of a type with a checkpoint backend."""
        if config.checkpoint is not None:
            conn = config.checkpoint.connection
            if conn not in ctx.connections:
                yield CheckIssue(("checkpoint", "connection"), "E215", f"unknown connection '{conn}'")
            elif ctx.connections[conn].get("type") not in Checkpointer.backends:
                yield CheckIssue(
                    ("checkpoint", "connection"),
                    "E216",
                    f"'{conn}' is a {ctx.connections[conn].get('type')} connection; checkpoints need "
                    + " or ".join(Checkpointer.backends),
                )

    @classmethod
    def check_upstream(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """Warn when event-time windows holding acks could wait forever for a watermark that cannot move."""
        if ack_mode(config, ctx.upstream) == "hold" and config.time == "event" and config.idle_timeout is None:
            yield CheckIssue(
                ("time",),
                "W320",
                "event-time window without idle_timeout: it holds its items' acks, so if the source "
                "stops (max_in_flight / max_ack_pending reached, or a quiet stream) no newer item moves "
                "the watermark and open windows close only at end of input",
                severity="warning",
            )

    def __init__(self, node_id: str, config: WindowConfig, ctx: Context):
        super().__init__(node_id, config, ctx)
        json = getattr(ctx, "json_bodies", False)  # bodies straight from a JSON decoder: no checks of copied fields
        self._key: Expr | None = compile_expr(config.key, json_bodies=json) if config.key else None
        self._time: Expr | None = compile_expr(config.timestamp, json_bodies=json) if config.timestamp else None
        self._event = config.time == "event"
        specs = list(config.aggregates.values())
        self._aggs = [
            make_aggregate(n, s.op, s.expr is not None, s.limit) for n, s in config.aggregates.items()
        ]
        self._exprs: list[Expr | None] = [compile_expr(s.expr, json_bodies=json) if s.expr else None for s in specs]
        self._fns = [e.fn if e is not None else None for e in self._exprs]  # skip a call layer per item
        # the batch path's value columns: (expression, must be a number) per aggregate
        self._columns_of = [
            (e if a.uses_value else None, a.checks_value) for e, a in zip(self._exprs, self._aggs)
        ]
        # each expression's batch form stands for its `fn`: if one is swapped (a wrapper, a test's
        # stand-in), item by item
        self._fns_seen = [(e, e.fn) for e in (self._key, self._time, *self._exprs) if e is not None]
        # per partition of a partitioned source (`meta.partition`; None when unpartitioned)
        self.parts: dict[int | None, _Part] = {}
        self.gone: set[int] = set()  # partitions revoked (and not assigned again): their items go back
        self.mode = ack_mode(config, getattr(ctx, "upstream", None))
        self._hold = self.mode == "hold"
        self.checkpoints = Checkpointer(self, config.checkpoint) if config.checkpoint is not None else None
        ctx.partitions.subscribe(self._on_partition)
        self._last_now = float("-inf")
        self.late_items = 0  # items sent to `late` so far
        needs_clock = not self._event or config.idle_timeout is not None or self.checkpoints is not None
        self.tick_interval = config.tick_interval if needs_clock else None
        if self.checkpoints is not None:
            self.tick_interval = min(config.tick_interval, config.checkpoint.interval)  # type: ignore[union-attr]

    async def start(self) -> None:
        if self.checkpoints is not None:
            await self.checkpoints.start()

    def metrics(self) -> dict[str, int]:
        return self.checkpoints.metrics() if self.checkpoints is not None else {}

    def _now(self, now: float | None = None) -> float:
        """Wall clock, never going backwards."""
        now = self.ctx.clock() if now is None else now
        self._last_now = max(self._last_now, now)
        return self._last_now

    def new_part(self) -> _Part:
        c = self.config
        store = WindowStore(
            c.kind,
            self._aggs,
            size=_us(c.size),
            slide=_us(c.slide),
            gap=_us(c.gap),
            offset=_us(c.offset),
            lateness=_us(c.allowed_lateness),
        )
        part = _Part(store, Watermark(_us(c.max_out_of_orderness), c.idle_timeout),
                     c.checkpoint.max_tracked if c.checkpoint is not None else 0)
        if self.checkpoints is not None:
            store.track_keys()
            part.outbox = Outbox()
            part.chunks = KeyChunks()
        return part

    def _part(self, partition: int | None) -> _Part:
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = self.new_part()
        return part

    @property
    def store(self) -> WindowStore:
        """The windows of an unpartitioned input (partition None)."""
        return self._part(None).store

    @property
    def watermark(self) -> Watermark:
        return self._part(None).watermark

    def _on_partition(self, source: str, partition: int, owned: bool) -> None:
        """A partition went elsewhere: forget its windows and fail the acks they hold, so the source
        redelivers those items to the new owner, which rebuilds the windows whole."""
        if owned:
            self.gone.discard(partition)
            if self.checkpoints is not None:
                self.checkpoints.assigned(partition)
            return
        self.gone.add(partition)
        if self.checkpoints is not None:
            self.checkpoints.revoked(partition)
        part = self.parts.pop(partition, None)
        if part is None:
            return
        held = part.store.discard() + part.pending
        part.pending = []
        reason = f"window {self.id}: partition {partition} of {source} was revoked"
        for ack in held:
            ack.fail(reason)
        if held:
            self.ctx.log.info("window %s: partition %d revoked; %d held item(s) failed for redelivery",
                              self.id, partition, len(held))

    def process(self, batch: list[Msg], out: Output) -> Any:
        """Assign each item to its windows, emitting windows as the watermark passes them."""
        if self.checkpoints is not None:  # restore partitions first, checkpoint when due: awaits
            return self.checkpoints.process(batch, out)
        self.fold(batch, out)
        return None

    def fold(self, batch: list[Msg], out: Output) -> None:
        """`process` without the checkpoint's I/O (every partition of `batch` is restored)."""
        now = self._now()
        emit = out.port("out")
        if not self._event:
            t_now = int(now * 1_000_000)
            for part in self.parts.values():
                self._send(part.store.advance(t_now), emit, part)
        start, n = 0, len(batch)
        partitions = list(map(_PARTITION, map(_META, batch)))
        single = partitions.count(partitions[0]) == n if n else True  # one partition: one run
        while start < n:  # runs of one partition (the whole batch when unpartitioned)
            partition = partitions[start]
            end = n if single else start + 1
            while end < n and partitions[end] == partition:
                end += 1
            run = batch[start:end] if start or end < n else batch
            if partition in self.gone:  # in flight when it was revoked: the new owner gets them again
                for msg in run:
                    msg.ack.fail(f"window {self.id}: partition {partition} is no longer owned here")
                start = end
                continue
            part = self._part(partition)
            self._fold_run(part, run, out, now)
            self._send(part.store.take_updates(), emit, part)
            start = end

    def _fold_run(self, part: _Part, batch: list[Msg], out: Output, now: float) -> None:
        """Fold items of one partition into its windows."""
        t_now = int(now * 1_000_000)
        if not self._event:
            self._send(part.store.advance(t_now), out.port("out"), part)
        elif batch:
            part.watermark.last_arrival = now
        if part.store.batch_ready and self._fold_batch(part, batch, out, t_now):
            return
        self._fold_items(part, batch, out, t_now)

    def _fold_items(self, part: _Part, batch: list[Msg], out: Output, t_now: int) -> None:
        """Fold items one by one (each evaluated, checked and added on its own)."""
        emit = out.port("out")
        store, watermark, key_expr, time_expr, event = (
            part.store,
            part.watermark,
            self._key,
            self._time,
            self._event,
        )
        fns, unit = self._fns, self.config.epoch_unit
        hold, pending = self._hold, part.pending if self.checkpoints is not None else None
        covered = part.covered
        for msg in batch:
            body, meta = msg.body, msg.meta
            if pending is not None:  # a replayed item the checkpoint covers: its state is in already
                seq = meta.get("seq")
                if type(seq) is int and covered.covers(meta.get("stream") or "", seq):
                    self.checkpoints.replayed += 1  # type: ignore[union-attr]
                    msg.ack.finish(DELIVERED)
                    continue
            try:
                key = key_expr(body, meta) if key_expr is not None else None
                if isinstance(key, (dict, list)):
                    raise TypeError(
                        f"window key must be a string, number, bool or null, got {type(key).__name__}"
                    )
                t = parse_event_time(time_expr(body, meta), unit) if event else t_now  # type: ignore[misc]
                values = [f(body, meta) if f is not None else True for f in fns]
            except (EvalError, ValueError, TypeError) as exc:
                out.error(msg, f"window: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a bad item must not fail (and replay) the batch
                out.error(msg, f"window: {type(exc).__name__}: {exc}")
                continue
            targets, late, error = store.check(key, t, values)
            if error is not None:
                out.error(msg, f"window: {error}")
                continue
            if late:
                self.late_items += 1
                if self.late_items == 1:
                    self.ctx.log.warning(
                        "window %s: items arrive too late (beyond allowed_lateness); they go to port 'late'",
                        self.id,
                    )
                ack = own_ack(msg)  # held by the late port and maybe by windows (or the checkpoint)
                if targets and (hold or pending is not None):
                    ack.retain(1)
                out.port("late").append(
                    Msg(
                        body,
                        {**meta, "window_late": True, "window_watermark": format_time(store.wm)},
                        ack,
                        msg.size,
                    )
                )
            if targets or not late:  # a new session has no targets yet
                if hold:
                    store.add(key, t, values, own_ack(msg), targets)  # held once per window
                else:
                    store.add(key, t, values, None, targets)
                    if pending is not None:  # released once a checkpoint covers it
                        pending.append(msg.ack)
                        seq = meta.get("seq")
                        if type(seq) is int:  # a JetStream stream sequence
                            covered.add(meta.get("stream") or "", seq)
                    elif not late:
                        msg.ack.finish(DELIVERED)  # release: folded is delivered
            if event and watermark.observe(t):
                self._send(store.advance(watermark.value), emit, part)

    def _fold_batch(self, part: _Part, batch: list[Msg], out: Output, t_now: int) -> bool:
        """The common case, in runs (`WindowStore.fold_batch`): every expression evaluates on the
        whole batch, keys are plain, times and values numbers, and no item is replayed. A run ends
        with the item that moves the watermark to a window's end; an item that is late or updates
        a fired window goes alone, item by item. False when the batch is not such a case (nothing
        has changed): then it goes item by item. The outcome is the same either way
        (tests/operators/test_window_batch.py)."""
        store, n = part.store, len(batch)
        if not all(e.fn is fn for e, fn in self._fns_seen):
            return False
        bodies = [m.body for m in batch]  # one list for every expression
        keys = self._key.many(batch, bodies) if self._key is not None else [None] * n
        if keys is None or not _KEY_TYPES.issuperset(map(type, keys)):
            return False
        watermark = part.watermark
        if self._event:
            times = self._event_times(batch, bodies)
            if times is None:
                return False
        else:
            times = [t_now] * n
        seqs = None
        if self.checkpoints is not None:
            seqs = _batch_seqs(batch, part.covered)
            if seqs is None:  # a replay: item by item skips what is covered
                return False
        plan = store.plan_batch(keys, times)
        if plan is None:
            return False
        columns = self._columns(batch, bodies)
        if columns is None:
            return False
        starts, ends = plan
        acks = [own_ack(m) for m in batch] if self._hold else None
        emit = out.port("out")
        wm0 = max(watermark.value, store.wm)
        t_max = max(times)
        wm_end = wm0  # the watermark once the batch is in (`Watermark.observe`, then the store's)
        if self._event and t_max > watermark.max_event:
            wm_end = max(wm0, t_max - watermark.ooo)
        if min(ends) > wm_end and wm_end < store.next_close() and store.first_purged(keys, times, 0, n) == n:
            # the common case: no item is late or for a fired window, nothing closes before the end
            self._fold_columns(part, batch, keys, starts, columns, acks, t_max, emit, seqs)
            return True
        # the watermark before and after each item
        if not self._event:
            highest = after = [wm0] * n
        else:
            highest = list(accumulate(times, max))
            ooo, floor = watermark.ooo, watermark.max_event
            after = [max(wm0, h - ooo) if h > floor else wm0 for h in highest]
        # items late, or for a fired window, go alone
        alone = [i for i, (e, w) in enumerate(zip(ends, [wm0, *after])) if e <= w]
        alone.append(n)
        i = next_alone = 0
        while i < n:
            if i == alone[next_alone]:
                next_alone += 1
                self._fold_items(part, batch[i : i + 1], out, t_now)
                i += 1
                continue
            # the run ends with the item that makes the store close something, or before one alone
            j = min(bisect_left(after, store.next_close(), i) + 1, alone[next_alone])
            if j - i > 1 and min(ends[i : j - 1]) <= after[j - 2]:  # a window opened in the run closes
                low = ends[i]
                for k in range(i, j - 1):
                    low = min(low, ends[k])
                    if after[k] >= low:
                        j = k + 1
                        break
            j = store.first_purged(keys, times, i, j)
            if j == i:  # too late for a purged session: alone
                self._fold_items(part, batch[i : i + 1], out, t_now)
                i += 1
                continue
            self._fold_columns(
                part,
                batch[i:j],
                keys[i:j],
                starts[i:j],
                [c if c is None else c[i:j] for c in columns],
                None if acks is None else acks[i:j],
                highest[j - 1],
                emit,
                None if seqs is None else _cut(seqs, i, j),
            )
            i = j
        return True

    def _fold_columns(
        self,
        part: _Part,
        run: list[Msg],
        keys: list[Any],
        starts: list[int],
        columns: list[list[Any] | None],
        acks: list[Any] | None,
        t_max: int,
        emit: list[Msg],
        seqs: tuple[str | None, list[int] | None, list[Any] | None] | None = None,
    ) -> None:
        """Fold a run of the batch path, release or keep its acks, then move the watermark."""
        part.store.fold_batch(keys, starts, columns, acks)
        if seqs is not None:  # acks: checkpoint: released once a checkpoint covers them
            part.pending.extend([m.ack for m in run])
            stream, run_seqs, metas = seqs
            if run_seqs is not None:
                part.covered[stream].extend(run_seqs)  # type: ignore[index]
            elif metas is not None:
                part.covered.add_metas(metas)
        elif acks is None:
            finish_all([m.ack for m in run], DELIVERED)  # release: folded is delivered
        if self._event and part.watermark.observe(t_max):
            self._send(part.store.advance(part.watermark.value), emit, part)

    def _event_times(self, batch: list[Msg], bodies: list[Any]) -> list[int] | None:
        """Event times of a batch (as `parse_event_time`), or None if some item has none."""
        raw = self._time.many(batch, bodies)  # type: ignore[union-attr]
        if raw is None:
            return None
        unit = self.config.epoch_unit
        try:
            if _NUMBER_TYPES.issuperset(map(type, raw)):
                return list(map(round, map(mul, raw, repeat(_EPOCH_SCALE[unit]))))
            return [parse_event_time(v, unit) for v in raw]
        except (ValueError, TypeError, OverflowError):  # not finite, not a time: item by item says why
            return None

    def _columns(self, batch: list[Msg], bodies: list[Any]) -> list[list[Any] | None] | None:
        """Each aggregate's values over the batch (None: a bare count), or None when some item
        fails or has a value its aggregate must check (not a number for sum/avg/min/max)."""
        columns: list[list[Any] | None] = []
        done: dict[str, list[Any]] = {}  # aggregates of one expression share its column
        for expr, numeric in self._columns_of:
            if expr is None:
                columns.append(None)
                continue
            column = done.get(expr.source)
            if column is None:
                column = expr.many(batch, bodies)
                if column is None:
                    return None
                done[expr.source] = column
            if numeric and not _NUMBER_TYPES.issuperset(map(type, column)):
                return None
            columns.append(column)
        return columns

    def tick(self, now: float, out: Output) -> Any:
        """Wall clock: close processing-time windows, or advance an idle event-time watermark."""
        self.advance_clock(now, out)
        if self.checkpoints is not None:
            return self.checkpoints.tick(out)
        return None

    def advance_clock(self, now: float, out: Output) -> None:
        now = self._now(now)
        emit = out.port("out")
        for part in self.parts.values():
            if not self._event:
                self._send(part.store.advance(int(now * 1_000_000)), emit, part)
            elif part.watermark.on_idle(now):
                self._send(part.store.advance(part.watermark.value), emit, part)

    def flush(self, out: Output) -> Any:
        """End of input: emit every open window (and pending updates); see `on_drain` for a stop.
        With checkpoints, a stop saves one last checkpoint instead (the restart restores it)."""
        if self.checkpoints is not None:
            return self.checkpoints.flush(out)
        self.flush_windows(out)
        return None

    def flush_windows(self, out: Output) -> None:
        if self.config.on_drain == "redeliver" and getattr(self.ctx, "draining", False):
            held = [ack for part in self.parts.values() for ack in part.store.discard()]
            reason = f"window {self.id}: graph stopped with the window open (on_drain: redeliver)"
            for ack in held:
                ack.fail(reason)
            if held:
                self.ctx.log.warning(
                    "window %s: stopped with %d open item(s); their acks failed for redelivery",
                    self.id,
                    len(held),
                )
            return
        for part in self.parts.values():
            self._send(part.store.flush(), out.port("out"), part)

    def _send(self, emissions: list[Emission], emit: list[Msg], part: _Part | None = None) -> None:
        if not emissions:
            return
        hold, outbox, fmt, append = self._hold, part.outbox if part is not None else None, format_time, emit.append
        dumps, new = orjson.dumps, Msg.__new__
        start_us = end_us = None  # the previous emission's edges (windows closing together share them)
        start = end = ""
        for e in emissions:
            key, replaces = e.key, e.replaces
            if e.start != start_us:
                start_us, start = e.start, fmt(e.start)
            if e.end != end_us:
                end_us, end = e.end, fmt(e.end)
            body: dict[str, Any] = {
                "key": key,
                "start": start,
                "end": end,
                "count": e.items,
                "aggregates": e.results,
                "update": bool(replaces),
            }
            if replaces:
                body["replaces"] = [{"start": fmt(s), "end": fmt(x)} for s, x in replaces]
            meta = {"window_key": key, "window_start": start, "window_end": end}
            try:  # approximate encoded size (for byte-bounded edges)
                size = len(dumps(body, default=str))
            except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits: estimate
                size = len(repr(body))
            if hold:
                acks = e.acks
                ack = acks[0] if len(acks) == 1 else CompositeAck(acks)
            elif outbox is not None:
                ack = outbox.add(body, meta, size)
            else:
                ack = NOOP_ACK
            msg = new(Msg)  # `Msg(body, meta, ack, size)` without its `__init__` frame
            msg.body, msg.meta, msg.ack, msg.size = body, meta, ack, size
            append(msg)
