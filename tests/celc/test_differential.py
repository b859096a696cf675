"""Differential tests: the compiled code against cel-expr-python on many expressions and inputs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.celc.differential import outcome_of_compiled, outcome_of_runtime, same_outcome, same_value

INPUTS: list[Any] = [
    {
        "amount": 12.5,
        "tags": ["a", "b"],
        "id": 7,
        "name": "héllo",
        "ok": True,
        "n": None,
        "items": [{"price": 1.5, "qty": 2}, {"price": 3.0, "qty": 1}],
        "m": {"x": 1, "y": "z"},
        "ts": "2024-02-29T23:59:59.123456789+01:00",
        "d": "1h30m0.5s",
    },
    {
        "amount": 3,
        "tags": [],
        "id": -9223372036854775808,
        "name": "",
        "ok": False,
        "n": 1,
        "items": [],
        "m": {},
        "ts": "1969-12-31T23:59:59.5Z",
        "d": "-1.000000001s",
    },
    {
        "amount": "12",
        "tags": "a",
        "id": 9223372036854775807,
        "name": "abc",
        "ok": 1,
        "items": [{"price": "x"}],
        "m": [],
        "ts": "2020-13-01T00:00:00Z",
        "d": "1d",
    },
    {
        "amount": float("nan"),
        "tags": ["a", 1, 1.0, True, None],
        "id": 2**63,
        "name": "ABC\n",
        "ok": None,
        "items": [1, 2],
        "m": {"x": [1, 2]},
        "ts": 1700000000,
        "d": 5,
    },
    {"amount": -0.0, "id": 2**64 - 1, "name": "x" * 50, "tags": [["a"]], "items": {"k": 1}},
    {},
    {"amount": 1e308, "id": 0, "name": "0x10", "tags": ["a"], "items": [{"price": 2.0, "qty": 2**62}]},
    {"amount": 10.0, "id": 3, "name": "  42 ", "tags": ["b", "a"], "ok": True, "m": {"x": 2}},
]

EXPRESSIONS = [
    'msg.amount > 10.0 && "a" in msg.tags',
    'msg.amount > 10.0 || "a" in msg.tags',
    '{"id": msg.id, "total": msg.amount * 1.2}',
    "msg.amount * 1.2",
    "1.2 * msg.amount",
    "msg.amount + 1.0",
    "msg.amount - 1.0",
    "msg.amount / 2.0",
    "msg.amount / 0.0",
    "2.0 / msg.amount",
    "msg.id + 1",
    "msg.id - 1",
    "msg.id * 2",
    "msg.id / 2",
    "msg.id % 3",
    "-msg.id",
    "-msg.amount",
    "msg.id / 0",
    "msg.id % 0",
    "msg.amount > 10",
    "msg.amount >= 10",
    "msg.amount < 10.0",
    "msg.amount <= 12.5",
    "10 < msg.amount",
    "msg.id > 5",
    "msg.id < 9223372036854775807",
    "msg.id > 1.5",
    "msg.name < 'b'",
    "'b' > msg.name",
    "msg.amount == 12.5",
    "msg.amount != 12.5",
    "msg.id == 7",
    "msg.id != 7",
    "msg.ok == true",
    "msg.ok != false",
    "msg.n == null",
    "msg.n != null",
    "msg.name == 'abc'",
    "msg.name != 'abc'",
    "msg.id == msg.amount",
    "msg.tags == ['a', 'b']",
    "msg.m == {'x': 1, 'y': 'z'}",
    "msg.id == 1u",
    "msg.ok",
    "!msg.ok",
    "msg.ok ? 'yes' : 'no'",
    "msg.ok ? msg.missing : 1",
    "msg.ok && msg.missing",
    "msg.missing || msg.ok",
    "msg.missing && false",
    "false && msg.missing",
    "msg.missing || true",
    "msg.ok || msg.ok || msg.missing",
    "msg.ok && msg.ok && msg.missing && false",
    "has(msg.amount)",
    "has(msg.m.x)",
    "has(msg.missing)",
    "has(msg.m.x.y)",
    "msg.items[0].price",
    "msg.items[1]",
    "msg.items[-1]",
    "msg.tags[0]",
    "msg.m['x']",
    "msg.m.x",
    "msg.m[msg.name]",
    "msg.tags[msg.id]",
    "'a' in msg.tags",
    "1 in msg.tags",
    "msg.id in [1, 2, 7]",
    "msg.name in ['abc', 'héllo']",
    "'x' in msg.m",
    "msg.name in msg.m",
    "size(msg.name)",
    "msg.name.size()",
    "size(msg.tags)",
    "size(msg.m)",
    "size(msg.id)",
    "msg.name.contains('l')",
    "msg.name.startsWith('h')",
    "msg.name.endsWith('c')",
    "msg.name.matches('^[a-z]+$')",
    "msg.name.matches('l+')",
    "matches(msg.name, 'b')",
    "msg.name.matches('^h.llo$')",
    "msg.name.matches('(?i)abc')",
    "msg.name.matches('\\\\d')",
    "int(msg.amount)",
    "int(msg.name)",
    "int(msg.id)",
    "uint(msg.id)",
    "double(msg.id)",
    "double(msg.name)",
    "string(msg.amount)",
    "string(msg.id)",
    "string(msg.ok)",
    "string(msg.name)",
    "bool(msg.name)",
    "bytes(msg.name)",
    "string(bytes(msg.name))",
    "dyn(msg.amount)",
    "msg.items.exists(i, i.price > 2.0)",
    "msg.items.all(i, i.price > 1.0)",
    "msg.items.exists_one(i, i.qty == 1)",
    "msg.items.map(i, i.price * 2.0)",
    "msg.items.filter(i, i.price > 2.0)",
    "msg.items.map(i, i.price > 2.0, i.qty)",
    "msg.tags.filter(t, t == 'a').size() > 0",
    "msg.m.map(k, k)",
    "msg.m.filter(k, k == 'x')",
    "msg.m.all(k, k != '')",
    "msg.tags.map(t, [t, t])",
    "[1, 2, 3].map(x, x * msg.id)",
    "msg.items.map(i, i.price).exists(p, p > 2.0)",
    "[msg.id, msg.amount]",
    "{'a': msg.tags, 'b': [msg.m]}",
    "{msg.name: 1}",
    "{1: 'a', 2: msg.id}",
    "msg.tags + ['c']",
    "msg.name + '!'",
    "'!' + msg.name",
    "msg.name + msg.name",
    "msg",
    "meta",
    "msg.n",
    "msg.items",
    "b'ab' + bytes(msg.name)",
    "msg.id + msg.id",
    "msg.amount + msg.amount",
    "msg.id * msg.id",
    "msg.amount < msg.id",
    "msg.amount == msg.id",
    "[msg.amount] == [msg.amount]",
    "msg.m == msg.m",
    "msg == msg",
    "msg.tags.exists(t, t == 'a') ? msg.amount * 2.0 : 0.0",
    "msg.id > 0 ? msg.id : -msg.id",
    "(msg.amount > 1.0) == (msg.id > 1)",
    "!(msg.ok || msg.ok)",
    "1u + uint(msg.id)",
    "msg.id == 9223372036854775807",
    "msg.amount == 9007199254740993",
    "timestamp(msg.ts)",
    "duration(msg.d)",
    "timestamp(msg.id)",
    "string(timestamp(msg.ts))",
    "string(duration(msg.d))",
    "int(timestamp(msg.ts))",
    "timestamp(msg.ts) > timestamp('2020-01-01T00:00:00Z')",
    "timestamp(msg.ts) + duration('1h')",
    "duration('1h') + timestamp(msg.ts)",
    "timestamp(msg.ts) - duration(msg.d)",
    "timestamp(msg.ts) - timestamp('2020-01-01T00:00:00Z')",
    "duration(msg.d) + duration(msg.d)",
    "duration(msg.d) < duration('1s')",
    "timestamp(msg.ts) == timestamp(msg.ts)",
    "timestamp(msg.ts).getFullYear()",
    "timestamp(msg.ts).getMonth()",
    "timestamp(msg.ts).getDate()",
    "timestamp(msg.ts).getDayOfMonth()",
    "timestamp(msg.ts).getDayOfWeek()",
    "timestamp(msg.ts).getDayOfYear()",
    "timestamp(msg.ts).getHours()",
    "timestamp(msg.ts).getMinutes()",
    "timestamp(msg.ts).getSeconds()",
    "timestamp(msg.ts).getMilliseconds()",
    "timestamp(msg.ts).getHours('Europe/Paris')",
    "timestamp(msg.ts).getDayOfWeek('America/St_Johns')",
    "timestamp(msg.ts).getHours('-09:30')",
    "timestamp(msg.ts).getHours(msg.name)",
    "duration(msg.d).getHours()",
    "duration(msg.d).getMinutes()",
    "duration(msg.d).getSeconds()",
    "duration(msg.d).getMilliseconds()",
    "type(msg.id) == int",
    "type(msg.amount) == double",
    "type(msg.m) == map",
    "type(msg.id)",
    "type(msg.tags) == list ? 1 : 2",
    "type(timestamp(msg.ts)) == type(timestamp(0))",
    "msg.id % 7",
    "msg.id / 7",
    "msg.id + 1",
    "1 - msg.id",
    "msg.id * -3",
    "-9223372036854775808 % msg.n",
    "-9223372036854775808 / msg.n",
    "msg.id % -1",
    "msg.n % 7 + msg.id / 2",
]


@pytest.mark.parametrize("src", EXPRESSIONS)
def test_compiled_matches_runtime_on_table(src: str) -> None:
    compiled_any = False
    for msg in INPUTS:
        want = outcome_of_runtime(src, msg, {"source": "t"})
        got = outcome_of_compiled(src, msg, {"source": "t"})
        if want is None:
            pytest.skip("the runtime rejects this expression")
        if got is None:
            continue
        compiled_any = True
        assert same_outcome(want, got), (src, msg, want, got)
    assert compiled_any, f"{src} did not compile"


# -- random expressions ------------------------------------------------------------------------
_LEAVES = st.sampled_from(
    [
        "msg.a",
        "msg.b",
        "msg.s",
        "msg.l",
        "msg.m",
        "msg.t",
        "msg.n",
        "msg.m.k",
        "msg.l[0]",
        "msg.x",
        "1",
        "-3",
        "0",
        "9223372036854775807",
        "2u",
        "0u",
        "1.5",
        "-0.0",
        "0.0",
        "1e300",
        "'a'",
        "''",
        "'ab'",
        "true",
        "false",
        "null",
        "[]",
        "[1, 'a']",
        "{}",
        "{'k': 1}",
        "b'a'",
        "int",
        "string",
        "timestamp('2020-01-01T00:00:00Z')",
        "duration('-1.5s')",
        "'1h'",
        "'2001-02-03T04:05:06.7-08:00'",
    ]
)
_UNARY = [
    "!{}",
    "-{}",
    "size({})",
    "int({})",
    "double({})",
    "string({})",
    "uint({})",
    "dyn({})",
    "has({}.k)",
    "[{}]",
    "{{'k': {}}}",
    "bool({})",
    "{}.size()",
    "type({})",
    "timestamp({})",
    "duration({})",
    "{}.getHours()",
    "string({}.getSeconds())",
]
_BINARY = [
    "{} + {}",
    "{} - {}",
    "{} * {}",
    "{} / {}",
    "{} % {}",
    "{} == {}",
    "{} != {}",
    "{} < {}",
    "{} <= {}",
    "{} > {}",
    "{} >= {}",
    "{} && {}",
    "{} || {}",
    "{} in {}",
    "[{}, {}]",
    "{}[{}]",
    "{}.contains({})",
    "{}.startsWith({})",
    "{}.exists(x, x == {})",
    "{}.all(x, {})",
    "{}.map(x, {})",
    "{}.filter(x, {})",
    "{}.exists_one(x, {})",
]


def _expr(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return _LEAVES
    sub = _expr(depth - 1)
    return st.one_of(
        _LEAVES,
        st.tuples(st.sampled_from(_UNARY), sub).map(lambda t: t[0].format(f"({t[1]})")),
        st.tuples(st.sampled_from(_BINARY), sub, sub).map(lambda t: t[0].format(f"({t[1]})", f"({t[2]})")),
        st.tuples(sub, sub, sub).map(lambda t: f"({t[0]}) ? ({t[1]}) : ({t[2]})"),
    )


# No U+0000 or lone surrogates: the runtime mishandles those (see docs/cel.md), the compiled code not.
_SCALAR = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=4),
    st.booleans(),
    st.none(),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["k", "j"]), c, max_size=2),
    max_leaves=6,
)
_MSG = st.fixed_dictionaries({}, optional={k: _VALUE for k in ["a", "b", "s", "l", "m", "t", "n"]})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=_expr(3), msgs=st.lists(_MSG, min_size=1, max_size=3))
def test_compiled_matches_runtime_on_random_expressions(src: str, msgs: list[dict]) -> None:
    for msg in itertools.chain(msgs, INPUTS[:2]):
        want = outcome_of_runtime(src, msg)
        if want is None:
            return
        got = outcome_of_compiled(src, msg)
        if got is None:
            return
        assert same_outcome(want, got), (src, msg, want, got)


@pytest.mark.parametrize("src", EXPRESSIONS)
def test_batch_matches_one_by_one(src: str) -> None:
    from engine.celc import try_compile, try_compile_batch
    from engine.expr import EvalError

    one, batch = try_compile(src), try_compile_batch(src)
    if one is None or batch is None:
        pytest.skip("not compiled")
    metas = [{"source": "t"}] * len(INPUTS)
    results = batch(INPUTS, metas)
    assert len(results) == len(INPUTS)
    for msg, meta, got in zip(INPUTS, metas, results):
        try:
            want: tuple[str, Any] = ("value", one(msg, meta))
        except EvalError:
            want = ("error", None)
        got_outcome = ("error", None) if isinstance(got, EvalError) else ("value", got)
        assert same_outcome(want, got_outcome), (msg, want, got)


class _M:
    __slots__ = ("body", "meta")

    def __init__(self, body: Any, meta: Any):
        self.body, self.meta = body, meta


def _strict_agrees(src: str, msgs: list[Any], boolean: bool) -> int:
    """`Expr.many` (one comprehension per batch) against the per-message function: when it returns,
    every value equals the per-message value; when any message errs, it must not return. Returns
    how many batches (each message alone, then all together) took the fast path."""
    from engine.expr import EvalError, compile_expr

    expr = compile_expr(src, boolean=boolean)
    if expr._batch is None:
        return 0
    fast = 0
    meta = {"source": "t"}
    for group in [[m] for m in msgs] + [msgs]:
        got = expr.many([_M(m, meta) for m in group])
        want = []
        for m in group:
            try:
                want.append(("value", expr.fn(m, meta)))
            except EvalError as exc:
                want.append(("error", str(exc)))
        if got is None:
            continue
        fast += 1
        assert len(got) == len(group)
        for w, g in zip(want, got):
            assert w[0] == "value" and same_value(w[1], g), (src, group, want, got)
            assert not boolean or type(g) is bool, (src, g)
    return fast


@pytest.mark.parametrize("src", EXPRESSIONS)
def test_strict_batch_matches_one_by_one(src: str) -> None:
    for boolean in (False, True):
        _strict_agrees(src, INPUTS, boolean)


def test_strict_batch_takes_the_fast_path_for_typical_expressions() -> None:
    rows = [{"amount": float(i), "id": i, "user": f"u{i}", "tags": ["a"] if i % 2 else []} for i in range(50)]
    for src, boolean in [('msg.amount > 10.0 && "a" in msg.tags', True), ("msg.amount > 10.0", True),
                         ('{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}', False),
                         ('msg.tags.exists(t, t == "a") || meta.source == "t"', True)]:
        assert _strict_agrees(src, rows, boolean) == len(rows) + 1, src


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=_expr(3), msgs=st.lists(_MSG, min_size=1, max_size=3), boolean=st.booleans())
def test_strict_batch_matches_one_by_one_on_random_expressions(src: str, msgs: list[dict], boolean: bool) -> None:
    from engine.expr import CelError

    try:
        _strict_agrees(src, [*msgs, *INPUTS[:2]], boolean)
    except CelError:
        return


def test_strict_logic_with_bool_typed_operands_agrees() -> None:
    """A bool-typed operand of `&&`/`||` is Python's `and`/`or` in a strict batch: the value where
    every operand is a bool, and the batch declines (the exact path absorbs or raises) otherwise."""
    from engine.celc import compile_strict_batch

    rows: list[Any] = [{"a": a, "b": b, "c": c} for a in (0, 5, 5.0, "x", None) for b in (True, False, 1, None)
                       for c in ([1], {"k": 1}, [], "s")]
    for src in ("msg.a > 1 && msg.b", "msg.a > 1 || msg.b", "msg.a > 1 && 1 in msg.c || msg.b",
                "msg.b || msg.a > 1 && msg.a < 9"):
        source = compile_strict_batch(src, boolean=True).source
        assert " and " in source or " or " in source, source
        assert _strict_agrees(src, rows, True) > 1, src  # and some batches took the fast path


def test_map_literal_field_checks_at_the_int_bounds() -> None:
    """A copied field is checked as a CEL value: ints at the 64-bit bounds pass as they are, one past
    them is that message's error (the strict batch declines), other kinds as `plain` gives them."""
    from engine.expr import EvalError, compile_expr

    expr = compile_expr('{"id": msg.id, "v": msg.v}')
    for ok in (-(2**63), 2**64 - 1, 0, "s", 1.5, True, None):
        assert expr.many([_M({"id": ok, "v": [1]}, {})]) == [{"id": ok, "v": [1]}]
    for bad in (-(2**63) - 1, 2**64):
        assert expr.many([_M({"id": bad, "v": 1}, {})]) is None
        with pytest.raises(EvalError, match="out of range"):
            expr.fn({"id": bad, "v": 1}, {})
    assert _strict_agrees('{"id": msg.id, "v": msg.v}', [{"id": i, "v": v} for i in (2**63, -1) for v in (b"x", [2])],
                          False) > 1
