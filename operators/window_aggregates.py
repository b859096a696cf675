"""Window aggregates: per-window state that folds item values, merges (sessions) and reports.

Each aggregate keeps one small state per window. `check` says, before anything is mutated,
whether a value can be folded (so a bad item goes to `errors` without half-updating a window);
`add` folds it, `merge` joins two states (session merges), `result` reports a JSON-safe value.

Nulls (CEL `null`) are skipped by count-with-expression, sum, min, max, avg and count_distinct
(as in SQL), and kept by first, last and collect. first/last/collect order items by event time,
then by arrival.
"""

from __future__ import annotations

import heapq
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = ["AGGREGATE_OPS", "Aggregate", "json_safe", "make_aggregate"]

AGGREGATE_OPS = ("count", "sum", "min", "max", "avg", "first", "last", "collect", "count_distinct")


_PLAIN = frozenset((int, float, str, bool, type(None)))


def json_safe(value: Any) -> Any:
    """A value any JSON encoder accepts: CEL timestamps become RFC 3339, durations seconds."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _order_class(value: Any) -> str | None:
    """Values min/max can compare with each other share a class; None if not orderable."""
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, timedelta):
        return "duration"
    return None


class Aggregate:
    """One declared aggregate; subclasses define its state."""

    op = ""
    uses_value = True  # False for a bare `count`: no expression is evaluated
    checks_value = False  # True when `check` can refuse a value (so it must be called)
    checks_state = False  # True when the refusal depends on the window's state (min/max)

    def __init__(self, name: str):
        self.name = name

    def new(self) -> Any:
        return None

    def check(self, state: Any, value: Any) -> str | None:
        """Why `value` cannot be folded into `state`, or None if it can."""
        return None

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def result(self, state: Any) -> Any:
        return json_safe(state)


class Count(Aggregate):
    op = "count"

    def __init__(self, name: str, has_expr: bool):
        super().__init__(name)
        self.uses_value = has_expr

    def new(self) -> int:
        return 0

    def add(self, state: int, value: Any, t: int, seq: int) -> int:
        return state + 1 if value is not None else state

    def merge(self, a: int, b: int) -> int:
        return a + b


class Sum(Aggregate):
    op = "sum"
    checks_value = True

    def check(self, state: Any, value: Any) -> str | None:
        if value is None or _is_number(value):
            return None
        return f"aggregate {self.name!r} ({self.op}) needs a number, got {type(value).__name__}"

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if value is None:
            return state
        return value if state is None else state + value

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        return a if b is None else a + b


class Avg(Sum):
    op = "avg"

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if value is None:
            return state
        return (value, 1) if state is None else (state[0] + value, state[1] + 1)

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        return a if b is None else (a[0] + b[0], a[1] + b[1])

    def result(self, state: Any) -> Any:
        return None if state is None else state[0] / state[1]


class Min(Aggregate):
    op = "min"
    checks_value = True
    checks_state = True

    def check(self, state: Any, value: Any) -> str | None:
        if value is None:
            return None
        cls = _order_class(value)
        if cls is None:
            return f"aggregate {self.name!r} ({self.op}) cannot order a {type(value).__name__}"
        if state is not None and _order_class(state) != cls:
            return f"aggregate {self.name!r} ({self.op}) cannot compare a {cls} with a {_order_class(state)}"
        return None

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if value is None:
            return state
        return value if state is None or value < state else state

    def merge(self, a: Any, b: Any) -> Any:
        return self.add(a, b, 0, 0)


class Max(Min):
    op = "max"

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if value is None:
            return state
        return value if state is None or value > state else state


class First(Aggregate):
    """State: (time, arrival seq, value) of the earliest item."""

    op = "first"

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if state is None or (t, seq) < (state[0], state[1]):
            return (t, seq, value)
        return state

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        return self.add(a, b[2], b[0], b[1]) if b is not None else a

    def result(self, state: Any) -> Any:
        return None if state is None else json_safe(state[2])


class Last(First):
    op = "last"

    def add(self, state: Any, value: Any, t: int, seq: int) -> Any:
        if state is None or (t, seq) > (state[0], state[1]):
            return (t, seq, value)
        return state


class Collect(Aggregate):
    """The `limit` earliest values by event time, kept in a bounded max-heap."""

    op = "collect"

    def __init__(self, name: str, limit: int):
        super().__init__(name)
        self.limit = limit

    def new(self) -> list[Any]:
        return []

    def add(self, state: list[Any], value: Any, t: int, seq: int) -> list[Any]:
        entry = (-t, -seq, value)
        if len(state) < self.limit:
            heapq.heappush(state, entry)
        elif (entry[0], entry[1]) > (state[0][0], state[0][1]):  # earlier than the latest kept
            heapq.heapreplace(state, entry)
        return state

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        for neg_t, neg_seq, value in b:
            a = self.add(a, value, -neg_t, -neg_seq)
        return a

    def result(self, state: list[Any]) -> list[Any]:
        return [json_safe(v) for _, _, v in sorted(state, key=lambda e: (-e[0], -e[1]))]


class CountDistinct(Aggregate):
    op = "count_distinct"

    def new(self) -> set[Any]:
        return set()

    def add(self, state: set[Any], value: Any, t: int, seq: int) -> set[Any]:
        if value is None:
            return state
        if isinstance(value, (dict, list)):
            value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
        state.add(value)
        return state

    def merge(self, a: set[Any], b: set[Any]) -> set[Any]:
        a |= b
        return a

    def result(self, state: set[Any]) -> int:
        return len(state)


def make_aggregate(name: str, op: str, has_expr: bool, limit: int = 100) -> Aggregate:
    """The aggregate for a declared `op` (one of AGGREGATE_OPS)."""
    if op == "count":
        return Count(name, has_expr)
    if op == "collect":
        return Collect(name, limit)
    classes: dict[str, type[Aggregate]] = {
        "sum": Sum,
        "avg": Avg,
        "min": Min,
        "max": Max,
        "first": First,
        "last": Last,
        "count_distinct": CountDistinct,
    }
    return classes[op](name)
