"""`route`: send each message to named ports chosen by CEL conditions, or spread it over ports.

Modes:
* `first` (default): `routes` maps port → boolean CEL; the first true condition (in file order) wins.
* `all`: every port whose condition is true gets the message (fan-out: the ack waits for each copy).
* `multicast`: every port in `ports` gets every message.
* `round_robin`: ports in `ports` take turns, message by message.
* `consistent_hash`: a CEL `key` picks the port, the same key always the same port (jump consistent
  hash, so appending a port moves only ~1/n of the keys).
* `weighted`: `weights` maps port → positive integer weight; each port gets its share exactly over
  every run of sum(weights) messages, interleaved (smooth weighted round-robin, as nginx does).
* `least_loaded`: each message goes to the port in `ports` whose downstream channel is least full
  (held / capacity, read from `ctx.channel_load` at the start of the batch and counted up as the
  batch is spread), so a slow branch gets less; ties go in turn. Nothing is dropped: when every
  branch is full, the runtime's backpressure holds the batch as for any other mode.

A message that matches no route in `first`/`all` goes to the `unmatched` port. That port exists only
when no route's condition is the literal `true`; if nothing consumes it, such messages are counted
as filtered (acknowledged) and `streamdag validate` warns about it (W301). A condition that fails to
evaluate or gives a non-boolean sends the message to `errors`.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Iterable
from itertools import compress
from operator import not_
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from engine import (
    CelExpr,
    CheckContext,
    CheckIssue,
    EvalError,
    Msg,
    NodeConfig,
    Operator,
    Output,
    compile_expr,
    own_ack,
)

__all__ = ["UNMATCHED", "Route", "RouteConfig", "jump_hash"]

UNMATCHED = "unmatched"
_RESERVED = ("errors", UNMATCHED)
_PORT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class RouteConfig(NodeConfig):
    """Choose output ports per message: by condition (`first`, `all`) or over a list of `ports`."""

    mode: Literal["first", "all", "multicast", "round_robin", "consistent_hash", "weighted", "least_loaded"] = Field(
        "first", description="first: the first route whose condition is true; all: every route whose "
        "condition is true; multicast: every port; round_robin: ports in turn; consistent_hash: `key` picks the "
        "port; weighted: ports in proportion to `weights` (smooth weighted round robin); least_loaded: the port "
        "whose downstream channel is least full."
    )
    routes: dict[str, CelExpr] | None = Field(
        None,
        description="Port name → boolean CEL condition (modes `first` and `all`), in order.",
        examples=[{"vip": 'msg.user in ["u1", "u2"]', "rest": "true"}],
    )
    ports: list[str] | None = Field(
        None,
        min_length=1,
        description="Port names (modes `multicast`, `round_robin`, `consistent_hash`, `least_loaded`).",
        examples=[["p0", "p1", "p2"]],
    )
    weights: dict[str, int] | None = Field(
        None,
        description="Port name → weight, a positive integer (mode `weighted`): a port's share of messages.",
        examples=[{"big": 3, "small": 1}],
    )
    key: CelExpr | None = Field(None, description="CEL key for `consistent_hash`.", examples=["msg.user"])

    @model_validator(mode="after")
    def _fields_for_mode(self) -> RouteConfig:
        by_condition = self.mode in ("first", "all")
        if (self.mode == "weighted") != (self.weights is not None):
            raise ValueError("`weights` (port: weight) is required by mode 'weighted' and only used there")
        if self.weights is not None:
            if not self.weights:
                raise ValueError("mode 'weighted' needs at least one port in `weights`")
            if self.ports or self.routes or self.key:
                raise ValueError("mode 'weighted' takes `weights`, not `ports`, `routes` or `key`")
            if any(w < 1 for w in self.weights.values()):
                raise ValueError("every weight must be a positive integer")
            return self
        if by_condition and not self.routes:
            raise ValueError(f"mode '{self.mode}' needs `routes` (port: condition)")
        if by_condition and (self.ports or self.key):
            raise ValueError(f"mode '{self.mode}' takes `routes`, not `ports` or `key`")
        if not by_condition and not self.ports:
            raise ValueError(f"mode '{self.mode}' needs `ports`")
        if not by_condition and self.routes:
            raise ValueError(f"mode '{self.mode}' takes `ports`, not `routes`")
        if (self.mode == "consistent_hash") != (self.key is not None):
            raise ValueError("`key` is required by mode 'consistent_hash' and only used there")
        return self

    def port_names(self) -> list[str]:
        return list(self.routes or self.weights or self.ports or ())

    def has_catch_all(self) -> bool:
        return bool(self.routes) and any(c.strip() == "true" for c in self.routes.values())  # type: ignore[union-attr]


def jump_hash(key: bytes, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach 2014) of a stable 64-bit digest of `key`."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
    b, j = -1, 0
    while j < buckets:
        b = j
        h = (h * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((h >> 33) + 1)))
    return b


def _key_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


class Route(Operator):
    """Send each message to ports chosen by CEL conditions, or spread messages over `ports`."""

    Config = RouteConfig
    preserves_bodies = True  # every port but `errors` sends messages it received, bodies unchanged
    example = """\
version: 1
name: route_example
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  split:
    type: route
    inputs: [orders]
    config:
      mode: first
      routes:
        vip: 'msg.user in ["u1", "u2"]'
        big: 'msg.amount > 200.0'      # no `true` route: the `unmatched` port exists
  vip: {type: file_sink, inputs: [split.vip], config: {path: out/vip.ndjson}}
  big: {type: file_sink, inputs: [split.big], config: {path: out/big.ndjson}}
  rest: {type: drop, inputs: [split.unmatched]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "<route name>": "modes `first` and `all`: one port per key of `routes`, named by it; `first` sends a "
            "message to the first route whose condition is true (in file order), `all` to every route "
            "whose condition is true",
        "unmatched": "modes `first` and `all`, when no route's condition is the literal `true`: messages no "
            "route matched (acknowledged as filtered if nothing consumes it, with warning W301)",
        "<port name>": "modes `multicast` (every port gets every message), `round_robin` (ports take turns) and "
            "`consistent_hash` (the CEL `key` picks the port, the same key always the same port): one "
            "port per name in `ports`",
    }
    inline = True

    def __init__(self, node_id: str, config: RouteConfig, ctx: Any) -> None:
        super().__init__(node_id, config, ctx)
        self.names = config.port_names()
        exprs = [(p, compile_expr(c, boolean=True)) for p, c in (config.routes or {}).items()]
        self.conditions = [(p, e.fn) for p, e in exprs]
        self.exprs = [e for _, e in exprs]
        json = getattr(ctx, "json_bodies", False)  # bodies straight from a JSON decoder: no checks of copied fields
        self.key_expr = compile_expr(config.key, json_bodies=json) if config.key else None
        self.key = self.key_expr.fn if self.key_expr else None
        self.turn = 0
        self.slots: dict[bytes, int] = {}  # consistent_hash: key -> port index, keys repeat (users, ids)
        self.weights = list((config.weights or {}).values())
        self.current = [0] * len(self.weights)  # weighted: smooth weighted round-robin state
        self.last_given = list(range(-len(self.names), 0))  # least_loaded: when each port last got one
        self.expected = [0] * len(self.names)  # least_loaded: what each channel held after the last batch
        self.drain_rate = [0.0] * len(self.names)  # least_loaded: messages drained per batch, averaged

    @classmethod
    def output_ports(cls, config: RouteConfig) -> tuple[str, ...]:
        names = tuple(config.port_names())
        if config.mode in ("first", "all") and not config.has_catch_all():
            return (*names, UNMATCHED)
        return names

    @classmethod
    def check(cls, config: RouteConfig, ctx: CheckContext) -> Iterable[CheckIssue]:
        field = "routes" if config.routes else "weights" if config.weights else "ports"
        seen: set[str] = set()
        for i, name in enumerate(config.port_names()):
            loc: tuple[str | int, ...] = (field, i) if field == "ports" else (field, name)
            if name in _RESERVED:
                yield CheckIssue(loc, "E202", f"'{name}' is a reserved port name")
            elif not _PORT.match(name):
                yield CheckIssue(loc, "E202", f"port name '{name}' must be letters, digits, '_' and '-'")
            elif name in seen:
                yield CheckIssue(loc, "E202", f"port '{name}' is listed twice")
            seen.add(name)
        if config.mode == "first" and config.routes:
            conditions = list(config.routes.items())
            for i, (name, cond) in enumerate(conditions[:-1]):
                if cond.strip() == "true":
                    later = ", ".join(n for n, _ in conditions[i + 1 :])
                    yield CheckIssue(
                        ("routes", name),
                        "W302",
                        f"route '{name}' matches everything, so {later} can never match (mode: first)",
                        severity="warning",
                    )
                    break

    def process(self, batch: list[Msg], out: Output) -> None:
        mode = self.config.mode
        if mode == "first":
            self._first(batch, out)
        elif mode == "all":
            self._all(batch, out)
        elif mode == "multicast":
            lists = [out.port(p) for p in self.names]
            extra = len(lists) - 1
            for m in batch:
                ack = own_ack(m) if extra else m.ack
                if extra:
                    ack.retain(extra)
                for lst in lists:
                    lst.append(Msg(m.body, m.meta, ack, m.size))
        elif mode == "round_robin":
            lists = [out.port(p) for p in self.names]
            n, turn = len(lists), self.turn
            for m in batch:
                lists[turn % n].append(m)
                turn += 1
            self.turn = turn % n
        elif mode == "weighted":
            self._weighted(batch, out)
        elif mode == "least_loaded":
            self._least_loaded(batch, out)
        else:
            self._hash(batch, out)

    def _weighted(self, batch: list[Msg], out: Output) -> None:
        """Smooth weighted round-robin: each message, every port gains its weight and the richest
        port takes the message and pays the total. Exact shares per sum(weights) messages."""
        lists = [out.port(p) for p in self.names]
        weights, current = self.weights, self.current
        total = sum(weights)
        ports = range(len(lists))
        for m in batch:
            for i in ports:
                current[i] += weights[i]
            best = max(ports, key=current.__getitem__)
            current[best] -= total
            lists[best].append(m)

    def _least_loaded(self, batch: list[Msg], out: Output) -> None:
        """Each message to the port whose channel is least full, counting what this batch already
        gave it (a heap of (would overflow, fill, last given, port)); equal fills go to the port
        served longest ago. Once one more message would overflow every port's channel (the runtime
        will wait on one), the rest of the batch goes to the port that has been draining fastest
        (a moving average of what left its channel between batches: a stalled branch drains
        nothing), so the wait is on a branch that moves."""
        n = len(self.names)
        lists = [out.port(p) for p in self.names]
        loads = [self.ctx.channel_load(p) for p in self.names]
        held = [h for h, _ in loads]
        caps = [cap or 1 << 62 for _, cap in loads]  # (0, 0): no channel, never full
        rate = self.drain_rate
        for i in range(n):
            rate[i] = (rate[i] + max(0, self.expected[i] - held[i])) / 2
        last, seq = self.last_given, self.turn

        def key(i: int) -> tuple[bool, float, int, int]:
            return held[i] + 1 > caps[i], held[i] / caps[i], last[i], i

        heap = [key(i) for i in range(n)]
        heapq.heapify(heap)
        for k, m in enumerate(batch):
            if heap[0][0]:  # every channel is full
                i = max(range(n), key=lambda j: (rate[j], -held[j] / caps[j]))
                lists[i].extend(batch[k:])
                held[i] += len(batch) - k
                break
            i = heap[0][-1]
            lists[i].append(m)
            held[i] += 1
            last[i] = seq = seq + 1
            heapq.heapreplace(heap, key(i))
        self.turn = seq
        self.expected = held

    def _first(self, batch: list[Msg], out: Output) -> None:
        """Condition by condition over the batch (one comprehension each, `Expr.many`): what a
        condition does not take goes on to the next. If some message makes a condition fail, the
        messages still undecided go message by message from that condition on."""
        remaining = batch
        for i, ((port, _fn), expr) in enumerate(zip(self.conditions, self.exprs)):
            if not remaining:
                return
            flags = expr.many(remaining)
            if flags is None:
                self._first_each(remaining, out, i)
                return
            out.port(port).extend(compress(remaining, flags))
            if not flags.count(False):
                return
            remaining = list(compress(remaining, map(not_, flags)))
        if remaining:
            (out.lists.get(UNMATCHED) or out.port(UNMATCHED)).extend(remaining)

    def _first_each(self, batch: list[Msg], out: Output, start: int = 0) -> None:
        conds = [(out.port(p), fn) for p, fn in self.conditions[start:]]
        unmatched = out.lists.get(UNMATCHED)
        for m in batch:
            body, meta = m.body, m.meta
            try:
                for lst, fn in conds:
                    hit = fn(body, meta)
                    if hit is True:
                        lst.append(m)
                        break
                    if hit is not False:
                        raise EvalError(f"condition gave {type(hit).__name__}, not bool")
                else:
                    (unmatched if unmatched is not None else out.port(UNMATCHED)).append(m)
            except EvalError as exc:
                out.error(m, f"route: {exc}")

    def _all(self, batch: list[Msg], out: Output) -> None:
        conds = [(out.port(p), fn) for p, fn in self.conditions]
        flags = [e.many(batch) for e in self.exprs]  # every condition over the batch, or None
        together = None if any(f is None for f in flags) else list(zip(*flags))
        for i, m in enumerate(batch):
            hits: list[list[Msg]] = []
            if together is not None:
                hits = [lst for (lst, _fn), hit in zip(conds, together[i]) if hit]
            else:
                try:
                    for lst, fn in conds:
                        hit = fn(m.body, m.meta)
                        if hit is True:
                            hits.append(lst)
                        elif hit is not False:
                            raise EvalError(f"condition gave {type(hit).__name__}, not bool")
                except EvalError as exc:
                    out.error(m, f"route: {exc}")
                    continue
            if not hits:
                out.port(UNMATCHED).append(m)
                continue
            ack = m.ack
            if len(hits) > 1:
                ack = own_ack(m)
                ack.retain(len(hits) - 1)
            for lst in hits:  # one Msg per copy: a sink fed by two of the ports commits each copy
                lst.append(Msg(m.body, m.meta, ack, m.size))

    def _hash(self, batch: list[Msg], out: Output) -> None:
        lists = [out.port(p) for p in self.names]
        n = len(lists)
        key = self.key
        assert key is not None
        slots = self.slots
        keys = self.key_expr.many(batch) if self.key_expr is not None else None  # one comprehension
        for i, m in enumerate(batch):
            try:
                k = _key_bytes(keys[i] if keys is not None else key(m.body, m.meta))
            except (EvalError, TypeError) as exc:
                out.error(m, f"route key: {exc}")
                continue
            slot = slots.get(k)
            if slot is None:
                if len(slots) >= 65_536:  # bounded: many distinct keys just lose the cache
                    slots.clear()
                slot = slots[k] = jump_hash(k, n)
            lists[slot].append(m)
