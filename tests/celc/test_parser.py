"""The CEL parser: precedence, literals, macros, and what it declines."""

from __future__ import annotations

import pytest

from engine.celc.parser import Call, Comprehension, Ident, Lit, ParseError, Select, Unsupported, parse


def test_precedence_and_associativity() -> None:
    assert parse("1 + 2 * 3") == Call(
        "_+_", None, (Lit("int", 1), Call("_*_", None, (Lit("int", 2), Lit("int", 3))))
    )
    assert parse("a - b - c") == Call("_-_", None, (Call("_-_", None, (Ident("a"), Ident("b"))), Ident("c")))
    assert parse("!a == b") == Call("_==_", None, (Call("!_", None, (Ident("a"),)), Ident("b")))
    assert parse("a || b && c") == Call(
        "_||_", None, (Ident("a"), Call("_&&_", None, (Ident("b"), Ident("c"))))
    )
    t = parse("a ? b : c ? d : e")
    assert isinstance(t, Call) and t.fn == "_?_:_" and isinstance(t.args[2], Call) and t.args[2].fn == "_?_:_"
    assert parse("x in y == z") == Call(
        "_==_", None, (Call("@in", None, (Ident("x"), Ident("y"))), Ident("z"))
    )


def test_literals() -> None:
    assert parse("-9223372036854775808") == Lit("int", -(2**63))
    assert parse("18446744073709551615u") == Lit("uint", 2**64 - 1)
    assert parse("0x1F") == Lit("int", 31)
    assert parse(".5e1") == Lit("double", 5.0)
    assert parse("'\\x41\\u00e9\\101\\n'") == Lit("string", "Aé\x41\n")
    assert parse("b'\\xff\\377é'") == Lit("bytes", b"\xff\xff\xc3\xa9")
    assert parse("r'\\n'") == Lit("string", "\\n")
    assert parse("'''a\nb'''") == Lit("string", "a\nb")
    assert parse("null") == Lit("null", None)


def test_macros_and_selection() -> None:
    assert parse("has(msg.a)") == Select(Ident("msg"), "a", test=True)
    m = parse("msg.l.map(x, x > 1, x * 2)")
    assert isinstance(m, Comprehension) and m.kind == "map" and m.pred is not None
    assert parse("msg.`content-type`") == Select(Ident("msg"), "content-type")
    assert isinstance(parse("msg.l.all(x, x)", macros=False), Call)


@pytest.mark.parametrize(
    "src", ["1 +", "(1", "9223372036854775808", "'abc", "1 ? 2", "has(1)", "a.if", "'\\q'", "#"]
)
def test_malformed_text(src: str) -> None:
    with pytest.raises(ParseError):
        parse(src)


@pytest.mark.parametrize(
    "src", ["T{a: 1}", ".a", "(" * 300 + "1" + ")" * 300]
)
def test_unsupported_syntax(src: str) -> None:
    with pytest.raises(Unsupported):
        parse(src)
