"""`validate`'s quick CEL check (engine/compile/celcheck.py) never accepts what the runtime rejects.

An expression `surely_valid` accepts is not shown to the CEL runtime by `validate`; one it is unsure
of is, and its diagnostic is the runtime's as before."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine.compile.celcheck import surely_valid
from engine.expr import _KEY_NAMESPACES, CelError, check_expr

_LEAVES = ["1", "0", "-3", "2u", "1.5", "-2.0", "0x1F", ".5", "1e3", "'a'", '"b"', "r'c'", "b'x'", "true", "false",
           "null", "msg", "meta", "msg.a", "msg.b.c", "meta.key", "msg['k']", "msg[0]", "msg[1u]", "msg[true]",
           "msg[1.0]", "[1, 2]", "[1, 'a']", "{'a': 1}", "{'a': 1, 'b': 'x'}", "{'a': 1, 'a': 2}", "{1: 2}", "[]",
           "{}", "x", "msg.type", "[1,]", "0X1f", "0x1F", "rb'x'", "Rb'x'", "bR'x'", "1e400", "0x8000000000000000"]
_BINARY = ["+", "-", "*", "/", "%", "<", "<=", ">", ">=", "==", "!=", "&&", "||", "in"]
_FUNCTIONS = ["string", "int", "uint", "double", "size", "dyn", "bool", "bytes", "type", "duration", "timestamp"]
_METHODS = ["startsWith", "endsWith", "contains", "size", "matches", "lowerAscii", "exists"]
_UNARY = ["-", "!", "!-", "- -", "!!", "-!"]


def _expression(r: random.Random, depth: int) -> str:
    """A random expression over what the rules cover and what they do not."""
    if depth <= 0 or r.random() < 0.25:
        return r.choice(_LEAVES)
    k, sub = r.random(), depth - 1
    if k < 0.45:
        return f"({_expression(r, sub)} {r.choice(_BINARY)} {_expression(r, sub)})"
    if k < 0.6:
        fn = r.choice([*_FUNCTIONS, "has"])
        return f"has({r.choice(['msg.a', 'msg.a.b', 'meta.x'])})" if fn == "has" else f"{fn}({_expression(r, sub)})"
    if k < 0.7:
        method = r.choice(_METHODS)
        arg = "" if method == "size" and r.random() < 0.8 else _expression(r, sub)
        return f"{_expression(r, sub)}.{method}({arg})"
    if k < 0.78:
        return f"({_expression(r, sub)} ? {_expression(r, sub)} : {_expression(r, sub)})"
    if k < 0.84:
        return r.choice(_UNARY) + _expression(r, sub)
    if k < 0.9:
        return f"{{'x': {_expression(r, sub)}, 'y': {_expression(r, sub)}}}"
    if k < 0.95:
        return f"[{_expression(r, sub)}, {_expression(r, sub)}]"
    return f"{_expression(r, sub)}[{_expression(r, sub)}]"


def test_what_it_accepts_the_runtime_accepts() -> None:
    r = random.Random(20)
    accepted = unsure = 0
    for _ in range(3000):
        source = _expression(r, r.randint(1, 4))
        if surely_valid(source):
            accepted += 1
            check_expr(source)  # raises CelError if the runtime rejects it
        else:
            unsure += 1
    assert accepted > 500 and unsure > 500  # both sides are exercised


_NESTED = [  # n -> an expression nested n deep, in each way the runtime's parser counts (it stops at ~32)
    lambda n: "(" * n + "msg" + ")" * n, lambda n: " + ".join(["1"] * n), lambda n: "[" * n + "]" * n,
    lambda n: "msg" + ".a" * n, lambda n: "msg" + "[0]" * n, lambda n: "string(" * n + "msg" + ")" * n,
    lambda n: "-(" * n + "msg" + ")" * n, lambda n: "true ? 1 : " * n + "2", lambda n: '{"a": ' * n + "1" + "}" * n,
    lambda n: " + ".join(["1"] * n) + " + " + "(" * n + "1" + ")" * n, lambda n: "(" * n + " + ".join(["1"] * n) + ")" * n,
]


_SEEDS = ['{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}', "msg.total > 100.0",
          "has(msg.a) && msg.a.startsWith('x')", "size(msg.items) > 3 || 'vip' in msg.tags", "-msg.x + 1",
          'msg.user in ["u1", "u2"]', "b'ab' + b'c'", "0x1F + 12u * 3u", "1.5e3 - .5", "r'x' + \"\"\"y\"\"\""]
_CHARACTERS = [*"()[]{}.,:?!-+*/%<>=&|'\"` \t\n\r\f\vxXeEuUrRbB0123456789_a", "in", "&&", "==", "msg", "null",
               "'" * 3, "0x", "1e", "\\"]


def test_what_it_accepts_of_mistyped_expressions_the_runtime_accepts() -> None:
    """Characters inserted, deleted or replaced: the lexical corners (prefixes, numbers, operators)."""
    r = random.Random(24)
    accepted = 0
    for _ in range(4000):
        source = r.choice(_SEEDS)
        for _ in range(r.randint(1, 3)):
            i, k = r.randrange(len(source) + 1), r.random()
            insert = r.choice(_CHARACTERS) if k < 0.4 or k >= 0.7 else ""
            source = source[:i] + insert + source[i + (k >= 0.4):]
        if surely_valid(source):
            accepted += 1
            check_expr(source)
    assert accepted > 200


def test_what_it_accepts_is_nested_less_deeply_than_the_runtime_allows() -> None:
    for nested in _NESTED:
        accepted = [n for n in range(1, 60) if surely_valid(nested(n))]
        assert accepted, nested(3)
        for n in accepted:
            check_expr(nested(n))  # raises CelError past the runtime's limit


@pytest.mark.parametrize("source", [
    '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}',
    '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}',
    "msg.total > 100.0", "has(msg.a) && msg.a.startsWith('x')", "msg.n % 2 == 0 ? 'even' : 'odd'",
    "size(msg.items) > 3 || 'vip' in msg.tags", "-msg.x + 1", "int(msg.s) * 2 == int(3u)",
])
def test_common_expressions_need_no_runtime(source: str) -> None:
    assert surely_valid(source)


@pytest.mark.parametrize("source", [
    "1 + 1.0", "msg.a * 1 + 1.5", "x", "msg.in", "!-msg", "-!msg", "size('a',)", "1.", "1 < 2 < 3",
    "true ? 1 : 'a'", "msg.all(x, x > 0)", "crypto.hmac('sha256', 'k', msg.b)", "msg.a.lowerAscii()",
    "'é' + msg.a", "msg.`a-b`", "'a\\n'", "msg.?a", "{'a': 1, 'a': 2}", "1 == 1u", "0X1f", "rb'x'",
    "(" * 40 + "msg" + ")" * 40, " + ".join(["1"] * 40),
])
def test_what_it_leaves_to_the_runtime(source: str) -> None:
    assert not surely_valid(source)


def test_the_key_argument_check_still_runs_on_an_accepted_expression() -> None:
    from engine.celc.library import KEY_FUNCTIONS

    assert {name.partition(".")[0] for name, _ in KEY_FUNCTIONS} <= set(_KEY_NAMESPACES)
    with pytest.raises(CelError, match="crypto.hmac"):
        check_expr("crypto.hmac('sha256', 'not-a-reference', msg.b)", typed=True)


def test_run_compiles_what_the_check_types_without_the_runtime() -> None:
    """`compile_expr` (what `run` builds its nodes' expressions with) skips the runtime's environment
    for an expression the check types and the compiler covers; the rest still go through it."""
    code = """
import json, sys
from engine.expr import CelError, compile_expr
typed = compile_expr('{"total": msg.amount * 1.2, "vip": msg.user in ["u1", "u2"]}', boolean=False)
first = [typed.compiled, typed({"amount": 2.0, "user": "u1"}), "cel_expr_python" in sys.modules]
try:
    compile_expr("crypto.hmac('sha256', 'not-a-reference', msg.b)")
    key = None
except CelError as exc:
    key = exc.message
other = compile_expr("msg.name.lowerAscii()")
print(json.dumps([first, "crypto.hmac" in key, other({"name": "AB"}), "cel_expr_python" in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        [True, {"total": 2.4, "vip": True}, False], True, "ab", True]
