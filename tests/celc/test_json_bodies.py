"""The unchecked variant for JSON-decoded bodies (`compile_expr(..., json_bodies=True)`): on any body
orjson gives, it returns what the checked variant returns and fails where and as it fails."""

from __future__ import annotations

import random

import orjson
import pytest

from engine import codec
from engine.expr import EvalError, compile_expr
from engine.message import Msg

BIG = [2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1, -(2**63), -(2**63) + 1, 2**62, -(2**62), 0, -1]
# JSON numbers past orjson's integers: it gives floats for them (tested below), never an int out of range
HUGE = ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e308, -1e-308, 5e-324, 0.1, 2.0**63, 2.0**64]
TEXT = ["", "a", "é", "日本語", "😀", "\u0000", "line\nbreak", '"quoted"', "\\"]


def _value(rng: random.Random, depth: int) -> object:
    kind = rng.randrange(9 if depth < 3 else 5)
    if kind == 0:
        v = rng.choice(BIG) + rng.choice([0, 0, 0, -1, 1])
        return v if -(2**63) <= v < 2**64 else rng.choice(BIG)  # what orjson writes (and reads) as an int
    if kind == 1:
        return rng.choice(FLOATS + [rng.uniform(-1e6, 1e6)])
    if kind == 2:
        return rng.choice(TEXT) + rng.choice(TEXT)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.randrange(-1000, 1000)
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "b", "a", "b", "c", "é"]): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _bodies(n: int) -> list[object]:
    rng = random.Random(20261206)
    out: list[object] = []
    for i in range(n):
        raw = orjson.dumps({k: _value(rng, 1) for k in ("a", "b", "c", "n") if rng.random() < 0.85})
        if i % 10 == 0:  # an integer orjson cannot hold as one, spliced into the text
            raw = raw[:-1] + (b"," if len(raw) > 2 else b"") + b'"h":' + rng.choice(HUGE).encode() + b"}"
        out.append(codec.loads(raw))  # what a source hands on: the decoder's own values
    out += [codec.loads(b) for b in (b"[1,2]", b'"text"', b"18446744073709551615", b"null", b"1.5", b"{}")]
    return out


EXPRESSIONS = [
    '{"id": msg.a, "user": msg.b, "total": msg.c}',
    '{"deep": msg.a.b, "n": msg.n}',
    "msg.b.a",
    "msg",
    "msg.a",
    "msg.h",
    "[msg.a, msg.n, msg.b.c]",
    '{"a": msg.a, "more": msg.n + 1, "meta": meta.k}',
    '{"sum": [msg.a, msg.c], "x": msg.a}',
]


def _outcome(fn, body: object) -> tuple[str, object]:
    try:
        return "ok", fn(body, {"k": 1})
    except EvalError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("src", EXPRESSIONS)
def test_checked_and_unchecked_agree_on_json_bodies(src: str) -> None:
    checked, unchecked = compile_expr(src), compile_expr(src, json_bodies=True)
    assert checked.compiled and unchecked.compiled
    bodies = _bodies(300)
    good = []
    for body in bodies:
        a, b = _outcome(checked.fn, body), _outcome(unchecked.fn, body)
        assert repr(a) == repr(b), (src, body)  # not ==: 1 == 1.0 == True, 0.0 == -0.0
        if a[0] == "ok":
            good.append(body)
    if src != "msg":
        assert 0 < len(good) < len(bodies), src  # both outcomes are exercised
    # the batch path: one comprehension for the whole batch, or None for both (then message by message)
    for i in range(0, len(bodies), 5):
        chunk = [Msg(b, {"k": 1}) for b in bodies[i:i + 5]]
        assert repr(checked.many(chunk)) == repr(unchecked.many(chunk)), (src, i)
    for i in range(0, len(good), 5):  # batches in which every message evaluates
        chunk = [Msg(b, {"k": 1}) for b in good[i:i + 5]]
        expected = [checked.fn(b, {"k": 1}) for b in good[i:i + 5]]
        assert repr(checked.many(chunk)) == repr(unchecked.many(chunk)) == repr(expected), (src, i)


def test_orjson_never_gives_an_int_outside_int64_or_uint64() -> None:
    # the premise: what the checks guard against (an int out of range, uint, bytes, non-JSON types)
    # cannot come out of the decoder
    for text in HUGE:
        assert type(codec.loads(text.encode())) is float
    assert codec.loads(b"18446744073709551615") == 2**64 - 1 and codec.loads(b"-9223372036854775808") == -(2**63)


def test_the_checked_variant_still_converts_what_is_not_json() -> None:
    # a body that did not come from a JSON decoder keeps the checked path; here the difference shows
    body = {"a": 2**70, "b": b"x"}
    with pytest.raises(EvalError, match="out of range"):
        compile_expr("msg.a")(body)
    assert compile_expr("msg.b")(body) == bytearray(b"x")
    assert compile_expr("msg.b", json_bodies=True)(body) == b"x"  # what json_bodies must never see
