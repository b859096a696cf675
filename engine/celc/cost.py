"""An upper estimate of what evaluating a CEL expression costs, from its text alone (pure).

Modelled on cel-go's checker (`checker/cost.go`): every node has a cost in evaluation steps and
an estimated size (elements of a list or map, characters of a string), and a comprehension costs
its range plus the range's size times its body. The rules, as `docs/limits.md` states them:

- a literal, an identifier, a field selection, an index and a function call cost 1 step each, plus
  the cost of their operands; a list or map literal 1 plus 1 per entry;
- `+` also costs the size of its result (a list or string concatenation copies both sides);
  `==`, `!=` cost the smaller operand's size, `in`, `contains`, `startsWith`, `endsWith`,
  `matches` the size of the value searched;
- `r.map(x, e)`, `r.filter(x, e)`, `r.all(x, e)`, `r.exists(x, e)`, `r.exists_one(x, e)` cost
  `cost(r) + size(r) * (cost(e) + 1)` (with the filter of a three-argument map added to `e`);
  `map` and `filter` build a list of `size(r)` elements; `map`'s elements are sized like `e`;
- a list or map literal has its number of entries as size, its elements sized like the largest
  one; a string or bytes literal its length; `msg`, `meta`, and anything read from them (fields,
  indexes, elements) have the assumed size `assumed` (limit `cel_assumed_size`, default 100);
- `?:` costs its condition plus the dearer branch.

The runtime evaluator uses the same estimate with `assumed` set to the largest list, map or string
in the message at hand, so it refuses a message before evaluating it rather than mid-way.
Expressions the parser here does not read (leading-dot names, message construction) are estimated
crudely: `length * assumed ** macros`, where `macros` counts the comprehension macros in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.celc.parser import (
    Bind,
    Call,
    Comprehension,
    Ident,
    ListLit,
    Lit,
    MapLit,
    Node,
    ParseError,
    Select,
    Unsupported,
    parse,
)

__all__ = ["CAP", "Size", "estimate", "has_loops", "largest_size", "max_assumed_size"]

CAP = 10**30  # estimates are clamped here: big enough for any bound, small enough to stay cheap ints


@dataclass(frozen=True, slots=True)
class Size:
    """Cost in steps and size of a value, with the size of its elements (None: `assumed`)."""

    cost: int
    size: int
    item: Size | None = None


_SEARCH = {"@in": 1, "contains": 0, "startsWith": 0, "endsWith": 0, "matches": 0}  # arg index searched
_SCALAR_RESULT = frozenset({
    "size", "int", "uint", "double", "bool", "type", "_<_", "_<=_", "_>_", "_>=_", "_==_", "_!=_", "!_", "-_",
    "_-_", "_*_", "_/_", "_%_", "_&&_", "_||_", "@in", "contains", "startsWith", "endsWith", "matches",
    "timestamp", "duration", "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
    "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds",
})
_MACRO = re.compile(r"\.\s*(?:map|filter|all|exists|exists_one)\s*\(")


def _clamp(n: int) -> int:
    return min(CAP, n)


class _Estimator:
    def __init__(self, assumed: int):
        self.unknown = Size(1, assumed)

    def of(self, node: Node, scope: dict[str, Size]) -> Size:
        if isinstance(node, Lit):
            return Size(1, len(node.value) if node.kind in ("string", "bytes") else 1)
        if isinstance(node, Ident):
            return Size(1, scope[node.name].size, scope[node.name].item) if node.name in scope else self.unknown
        if isinstance(node, Select):
            operand = self.of(node.operand, scope)
            return Size(_clamp(operand.cost + 1), 1 if node.test else self.unknown.size)
        if isinstance(node, ListLit | MapLit):
            parts = [self.of(n, scope) for n in node.items] if isinstance(node, ListLit) else \
                [self.of(n, scope) for pair in node.entries for n in pair]
            cost = 1 + len(parts) + sum(p.cost for p in parts)
            item = max(parts, key=lambda p: p.size, default=None)
            return Size(_clamp(cost), len(node.items if isinstance(node, ListLit) else node.entries), item)
        if isinstance(node, Comprehension):
            return self.comprehension(node, scope)
        if isinstance(node, Call):
            return self.call(node, scope)
        if isinstance(node, Bind):  # cel.bind(x, init, body): init once, body with x its size
            init = self.of(node.init, scope)
            body = self.of(node.body, {**scope, node.var: init})
            return Size(_clamp(init.cost + body.cost), body.size, body.item)
        raise Unsupported(type(node).__name__)

    def comprehension(self, node: Comprehension, scope: dict[str, Size]) -> Size:
        rng = self.of(node.range, scope)
        if node.kind in ("optMap", "optFlatMap"):  # once, on the optional's value
            body = self.of(node.body, {**scope, node.var: rng})
            return Size(_clamp(rng.cost + body.cost + 1), body.size, body.item)
        var = rng.item or self.unknown
        inner = {**scope, node.var: var}
        body = self.of(node.body, inner)
        step = body.cost + 1 + (self.of(node.pred, inner).cost if node.pred is not None else 0)
        cost = _clamp(rng.cost + rng.size * step)
        if node.kind == "map":
            return Size(cost, rng.size, body)
        if node.kind == "filter":
            return Size(cost, rng.size, var)
        return Size(cost, 1)

    def call(self, node: Call, scope: dict[str, Size]) -> Size:
        args = [self.of(a, scope) for a in ((node.target,) if node.target is not None else ()) + node.args]
        cost = 1 + sum(a.cost for a in args)
        fn = node.fn
        if fn == "_?_:_":
            a, b = args[1], args[2]
            big = a if a.size >= b.size else b
            return Size(_clamp(args[0].cost + max(a.cost, b.cost)), big.size, big.item)
        if fn == "_+_":
            size = _clamp(args[0].size + args[1].size)
            items = [a.item for a in args if a.item is not None]
            return Size(_clamp(cost + size), size, max(items, key=lambda s: s.size) if items else None)
        if fn in ("_==_", "_!=_"):
            return Size(_clamp(cost + min(args[0].size, args[1].size)), 1)
        if fn in _SEARCH and len(args) > _SEARCH[fn]:
            return Size(_clamp(cost + args[_SEARCH[fn]].size), 1)
        if fn == "_[_]":
            item = args[0].item or self.unknown
            return Size(_clamp(cost), item.size, item.item)
        if fn in _SCALAR_RESULT:
            return Size(_clamp(cost), 1)
        if fn in ("dyn", "string", "bytes") and args:  # the argument's size (a number prints in < 32)
            return Size(_clamp(cost), max(args[0].size, 32), args[0].item)
        widest = max(args, key=lambda s: s.size, default=self.unknown)
        return Size(_clamp(cost), widest.size, widest.item)


def estimate(source: str, assumed: int) -> int:
    """The estimated cost of `source` in steps, unknown sizes taken as `assumed` (see the module)."""
    try:
        return _Estimator(assumed).of(parse(source), {}).cost
    except (ParseError, Unsupported, RecursionError):  # a long `a + b + ...` chain nests deeply too
        macros = len(_MACRO.findall(source))
        return _clamp(max(len(source), 1) * max(assumed, 1) ** min(macros, 64))


def has_loops(source: str) -> bool:
    """Whether `source` has a comprehension (or cannot be read here, so might): without one, an
    evaluation's cost is linear in the expression's length and the message's size."""
    try:
        node = parse(source)
    except (ParseError, Unsupported, RecursionError):
        return True
    pending: list[Any] = [node]
    while pending:
        n = pending.pop()
        if isinstance(n, Comprehension):
            return True
        if isinstance(n, Bind):
            pending.extend((n.init, n.body))
        elif isinstance(n, Select):
            pending.append(n.operand)
        elif isinstance(n, Call):
            pending.extend(n.args)
            if n.target is not None:
                pending.append(n.target)
        elif isinstance(n, ListLit):
            pending.extend(n.items)
        elif isinstance(n, MapLit):
            pending.extend(x for pair in n.entries for x in pair)
    return False


def max_assumed_size(source: str, bound: int) -> int:
    """The largest assumed size for which `estimate(source, size) <= bound` (-1: none, not even 0)."""
    if estimate(source, 0) > bound:
        return -1
    lo, hi = 0, 1
    while hi < 2**40 and estimate(source, hi) <= bound:
        lo, hi = hi, hi * 2
    if hi >= 2**40:
        return hi
    while hi - lo > 1:  # estimate(lo) <= bound < estimate(hi): the estimate grows with the size
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if estimate(source, mid) <= bound else (lo, mid)
    return lo


def largest_size(value: Any, stop: int) -> int:
    """The largest length of a list, map, string or bytes inside `value` (walking it), or a number
    above `stop` as soon as one is found that is longer."""
    largest = 0
    pending = [value]
    while pending:
        v = pending.pop()
        t = type(v)
        if t is dict:
            n = len(v)
            pending.extend(v.values())
            pending.extend(k for k in v if type(k) is str)
        elif t is list or t is tuple:
            n = len(v)
            pending.extend(v)
        elif t is str or t is bytes or t is bytearray:
            n = len(v)
        else:
            continue
        if n > largest:
            largest = n
            if n > stop:
                return n
    return largest
