"""The engine-facing API: try_compile, try_compile_batch, explain, and compile_expr's use of them."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.celc import explain, python_source, try_compile, try_compile_batch
from engine.expr import EvalError, compile_expr


def test_engine_prefers_the_compiler() -> None:
    expr = compile_expr('msg.amount > 10.0 && "a" in msg.tags')
    assert expr.compiled is True
    assert expr({"amount": 11.0, "tags": ["a"]}) is True
    assert expr({"amount": 1.0, "tags": ["a"]}) is False


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        ("[1, 2].unknownFn(x, x)", "function"),
        ("type(optional.none()) == optional_type", "identifier"),
        ("google.protobuf.Timestamp{seconds: 1}", "message"),
        ("foo + 1", "identifier"),
    ],
)
def test_unsupported_expressions_fall_back_with_a_reason(src: str, reason: str) -> None:
    assert try_compile(src) is None
    why = explain(src)
    assert why is not None and reason in why


def test_explain_is_none_when_compiled() -> None:
    assert explain("size(msg.name) > 3") is None


def test_results_are_plain_values_like_the_runtime() -> None:
    fn = try_compile("[1u, b'a', timestamp('2020-01-01T00:00:00.5Z'), duration('1.5s'), {'k': 2u}]")
    assert fn is not None
    out = fn({}, {})
    assert out == [
        1,
        bytearray(b"a"),
        dt.datetime(2020, 1, 1, 0, 0, 0, 500000, tzinfo=dt.UTC),
        dt.timedelta(seconds=1.5),
        {"k": 2},
    ]
    assert type(out[0]) is int and type(out[1]) is bytearray and type(out[4]["k"]) is int


def test_type_results_come_from_the_runtime() -> None:
    fn = try_compile("type(msg.a)")
    assert fn is not None
    runtime = compile_expr("type(msg.a)", allow_compiler=False)
    assert fn({"a": 1}, {}) == runtime({"a": 1})


def test_json_ints_are_ints_and_bools_are_not() -> None:
    fn = try_compile("msg.a + 1")
    assert fn is not None
    assert fn({"a": 1}, {}) == 2
    with pytest.raises(EvalError):
        fn({"a": True}, {})
    with pytest.raises(EvalError):
        fn({"a": 1.0}, {})
    with pytest.raises(EvalError, match="overflow"):
        fn({"a": 2**63 - 1}, {})


def test_absorption_in_both_orders() -> None:
    for src in ("msg.missing > 1 && false", "false && msg.missing > 1"):
        fn = try_compile(src)
        assert fn is not None and fn({}, {}) is False
    for src in ("msg.missing > 1 || true", "true || msg.missing > 1"):
        fn = try_compile(src)
        assert fn is not None and fn({}, {}) is True
    fn = try_compile("msg.missing > 1 || false")
    assert fn is not None
    with pytest.raises(EvalError, match="no such key"):
        fn({}, {})


def test_map_macro_over_a_map_defers_to_the_runtime_order() -> None:
    src = "msg.m.map(k, k)"
    fn = try_compile(src)
    assert fn is not None
    body = {"m": {"b": 1, "a": 2, "c": 3, "zz": 4}}
    assert fn(body, {}) == compile_expr(src, allow_compiler=False)(body)


def test_batch_reports_errors_in_place() -> None:
    fn = try_compile_batch("msg.x * 2")
    assert fn is not None
    out = fn([{"x": 1}, {"x": "a"}, {}, {"x": 2**62}], [{}] * 4)
    assert out[0] == 2
    assert all(isinstance(e, EvalError) for e in out[1:])


def test_generated_source_is_inspectable() -> None:
    src = python_source("msg.a.b > 1.5")
    assert src.startswith("def _cel(")
    assert "['a']['b']" in src


@pytest.mark.parametrize(
    ("src", "body", "message"),
    [
        ("msg.a.b", {"a": 1}, "field selection on int"),
        ("msg.a.b", {"a": None}, "field selection on null"),
        ("msg.a.b", {}, "no such key: 'a'"),
        ("size(msg.a)", {"a": 1}, "no matching overload for 'size'"),
        ("msg.a.startsWith('x')", {"a": 1}, "no matching overload for 'startsWith'"),
        ("msg.a + 1", {"a": "x"}, "no matching overload for '_+_' applied to (string, int)"),
        ("msg.a / 0", {"a": 1}, "divide by zero"),
    ],
)
def test_error_messages_speak_cel(src: str, body: dict, message: str) -> None:
    fn = try_compile(src)
    assert fn is not None
    with pytest.raises(EvalError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        fn(body, {})


def test_runtime_nulls_cannot_exhaust_none() -> None:
    """cel-expr-python drops a reference to None per null; engine.expr gives None a reserve."""
    import sys

    runtime = compile_expr("msg.a", allow_compiler=False)
    before = sys.getrefcount(None)
    for _ in range(2000):
        assert runtime({"a": None}) is None
    if sys.version_info < (3, 12):
        assert sys.getrefcount(None) > 2**39  # far from zero whatever the runtime drops
        assert before - sys.getrefcount(None) < 10**6


def test_strings_keep_nul_characters() -> None:
    """The runtime truncates strings at U+0000; CEL strings (and the compiled code) do not."""
    fn = try_compile("[size(msg.s), msg.s == 'a', msg.s + '!']")
    assert fn is not None
    assert fn({"s": "a\x00b"}, {}) == [3, False, "a\x00b!"]
