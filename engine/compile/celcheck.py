"""A quick offline check of the common CEL expressions, without loading the CEL runtime.

`validate` must say of every expression what the runtime's type checker says (E203, with its
message and position). Loading the runtime and building its environment costs ~20 ms of a
start, more than the rest of the check of a small graph, so `surely_valid` first types the
expression with the compiler's parser (`engine.celc.parser`, loaded anyway for the cost
estimate) under a small set of rules, each one what CEL's checker does with `msg` and `meta`
of type dyn: literals, field selection and indexing of dyn, the arithmetic, comparison and logic
operators, `in`, `has()`, the conversions `string`, `int`, `uint`, `double`, `dyn`, `size`, a few
string methods, and list and map literals as values. An expression it types is one the runtime
accepts; anything else (an unknown function, mixed int and double, a macro, an escape in a
string, a type it is not sure of) gives False, and the caller asks the runtime, whose answer
and message are then the ones `validate` reports, as before.

It never says True of an expression the runtime rejects: tests/compile/test_celcheck.py checks
it against the runtime on generated, mistyped and deeply nested expressions.
"""

from __future__ import annotations

import re
from typing import Any

from engine.celc.parser import (
    RESERVED,
    Call,
    Ident,
    ListLit,
    Lit,
    MapLit,
    ParseError,
    Select,
    Unsupported,
    parse,
)

__all__ = ["surely_valid"]

DYN = "dyn"
AGG = "aggregate"  # a list or map literal: fine as a value, not typed further here
_NUMBERS = ("int", "uint", "double")
_ORDERED = ("int", "uint", "double", "string", "bytes", "bool")
_ARITH = {  # operator -> the operand types whose overload returns the same type
    "_+_": ("int", "uint", "double", "string", "bytes"),
    "_-_": _NUMBERS, "_*_": _NUMBERS, "_/_": _NUMBERS, "_%_": ("int", "uint"),
}
_CONVERSIONS = {  # global function of one argument -> (argument types, result)
    "string": (("int", "uint", "double", "string"), "string"),
    "int": (("int", "uint", "double", "string"), "int"),
    "uint": (("int", "uint", "double", "string"), "uint"),
    "double": (("int", "uint", "double", "string"), "double"),
    "size": (("string", "bytes", AGG), "int"),
}
_METHODS = {  # member function of a string (or dyn) -> (argument types, result)
    "startsWith": (("string",), "bool"), "endsWith": (("string",), "bool"),
    "contains": (("string",), "bool"), "size": ((), "int"),
}
# words the runtime's grammar does not take as a field name (the parser refuses the reserved ones)
_KEYWORDS = frozenset({"in", "true", "false", "null"})
# `!` and `-` in a row (the runtime's grammar takes one kind of unary operator at a time), an
# upper-case hex prefix, a raw prefix before a bytes one
_LEXICAL = re.compile(r"[!-]\s*[!-]|0X|[rR][bB]['\"]")
_MAX_LENGTH = 2000
_MAX_DEPTH = 24  # AST depth plus opening brackets
_MAX_BRACKETS = 16


class _Unsure(Exception):
    """The rules do not cover this expression: ask the runtime."""


def surely_valid(source: str) -> bool:
    """True when the CEL runtime certainly parses and type-checks `source` (msg and meta dyn);
    False when it may not (then ask it)."""
    if len(source) > _MAX_LENGTH or "\\" in source or "`" in source or "//" in source or not source.isascii():
        return False  # escapes, quoted fields, comments, other alphabets: the runtime's to judge
    if _LEXICAL.search(source):
        return False  # `!-x`, `0X1f`, `rb"x"`: the compiler's parser takes them, the runtime's does not
    # the runtime's parser stops at a nesting depth of ~32, counting brackets and operators (`((x))`
    # and `1 + 1 + ...` alike): keep well below it, each opening bracket counted as a level
    opened = source.count("(") + source.count("[") + source.count("{")
    if opened > _MAX_BRACKETS:
        return False
    try:
        tree = parse(source)
        _type(tree, opened)
    except (ParseError, Unsupported, RecursionError, _Unsure):
        return False
    return True


def _type(node: Any, depth: int) -> str:
    """The type CEL's checker gives `node`, or `_Unsure`."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    depth += 1
    if isinstance(node, Lit):
        return str(node.kind)
    if isinstance(node, Ident):
        if node.name in ("msg", "meta"):
            return DYN
        raise _Unsure
    if isinstance(node, Select):
        if node.field in _KEYWORDS or node.field in RESERVED or _type(node.operand, depth) != DYN:
            raise _Unsure
        return "bool" if node.test else DYN
    if isinstance(node, ListLit):
        for item in node.items:
            _type(item, depth)
        return AGG
    if isinstance(node, MapLit):
        keys = set()
        for key, value in node.entries:
            if not isinstance(key, Lit) or key.kind != "string" or key.value in keys:
                raise _Unsure  # a duplicate key, or keys of several types: the runtime decides
            keys.add(key.value)
            _type(value, depth)
        return AGG
    if isinstance(node, Call):
        return _call(node, depth)
    raise _Unsure  # comprehensions, cel.bind


def _call(node: Any, depth: int) -> str:
    fn, args = node.fn, node.args
    if node.target is not None:
        target = _type(node.target, depth)
        sig = _METHODS.get(fn)
        if sig is None or target not in (DYN, "string") or len(args) != len(sig[0]):
            raise _Unsure
        for arg, want in zip(args, sig[0], strict=True):
            if _type(arg, depth) != want:
                raise _Unsure
        return sig[1]
    if fn == "@in" and isinstance(args[1], ListLit) and args[1].items:  # `msg.user in ["u1", "u2"]`
        items = {_type(item, depth) for item in args[1].items}
        needle = _type(args[0], depth)
        if len(items) != 1 or AGG in items or needle not in (*items, DYN):
            raise _Unsure
        return "bool"
    types = [_type(arg, depth) for arg in args]
    if fn in _ARITH:
        return _binary(types, _ARITH[fn])
    if fn in ("_<_", "_<=_", "_>_", "_>=_"):
        _binary(types, _ORDERED)
        return "bool"
    if fn in ("_==_", "_!=_"):
        a, b = types
        if AGG in types or (a != b and DYN not in types):
            raise _Unsure
        return "bool"
    if fn in ("_&&_", "_||_", "!_"):
        if any(t not in ("bool", DYN) for t in types):
            raise _Unsure
        return "bool"
    if fn == "-_":
        if types[0] not in ("int", "double", DYN):
            raise _Unsure
        return types[0]
    if fn == "_?_:_":
        cond, a, b = types
        if cond not in ("bool", DYN) or a != b or a == AGG:
            raise _Unsure
        return a
    if fn == "_[_]":
        if types[0] != DYN or types[1] not in ("int", "uint", "string", "bool", DYN):
            raise _Unsure
        return DYN
    if fn == "@in":
        if types[1] != DYN or types[0] == AGG:
            raise _Unsure
        return "bool"
    if fn == "dyn" and len(types) == 1 and types[0] != AGG:
        return DYN
    sig = _CONVERSIONS.get(fn)
    if sig is not None and len(types) == 1 and types[0] in (*sig[0], DYN):
        return sig[1]
    raise _Unsure


def _binary(types: list[str], allowed: tuple[str, ...]) -> str:
    """An operator whose overloads take two operands of one type out of `allowed` and (for
    arithmetic) return it: dyn with such a type gives that type, dyn with dyn gives dyn."""
    a, b = types
    if a == DYN and b == DYN:
        return DYN
    known = b if a == DYN else a
    if known not in allowed or (a != b and DYN not in (a, b)):
        raise _Unsure
    return known
