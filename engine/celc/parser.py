"""A small CEL parser (Pratt): source text -> AST of plain nodes, with macros expanded.

It accepts the CEL grammar the compiler translates, with the optional syntax `x.?f` (the call
`_?._`), `x[?i]` (`_[?_]`) and optional entries `[?x]`, `{?k: x}` (the value wrapped in a call of
`OPTIONAL_ENTRY`), and the macros `cel.bind` (a `Bind` node) and `sortBy` (cel-go's
expansion, `@sortByAssociatedKeys` of the list and its mapped keys); anything else (message
construction, leading-dot names) raises `Unsupported`, and the
caller falls back to the full runtime. Malformed text raises `ParseError` (the runtime reports it better).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Bind",
    "Call",
    "Comprehension",
    "Ident",
    "ListLit",
    "Lit",
    "MapLit",
    "Node",
    "ParseError",
    "Select",
    "Unsupported",
    "parse",
]

OPTIONAL_ENTRY = "@optional_entry"  # wraps the value of `[?x]` and `{?k: x}`: its optional decides
MAX_DEPTH = 200  # nesting limit: keeps both the parser and the generated code well inside recursion limits


class ParseError(Exception):
    """The text is not valid CEL."""


class Unsupported(Exception):
    """Valid (or possibly valid) CEL that this compiler does not translate."""


class Node:
    """Base of AST nodes."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Lit(Node):
    """A literal; `kind` is one of int, uint, double, string, bytes, bool, null."""

    kind: str
    value: Any


@dataclass(frozen=True, slots=True)
class Ident(Node):
    name: str


@dataclass(frozen=True, slots=True)
class Select(Node):
    """`operand.field`; with `test` it is `has(operand.field)`."""

    operand: Node
    field: str
    test: bool = False


@dataclass(frozen=True, slots=True)
class Call(Node):
    """A function or operator call. Operators use CEL's internal names (`_+_`, `_[_]`, `!_`...)."""

    fn: str
    target: Node | None
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ListLit(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class MapLit(Node):
    entries: tuple[tuple[Node, Node], ...]


@dataclass(frozen=True, slots=True)
class Comprehension(Node):
    """A macro: `kind` in all, exists, exists_one, map, filter, optMap, optFlatMap (whose range is
    an optional); `pred` is the filter of 3-arg map."""

    kind: str
    range: Node
    var: str
    body: Node
    pred: Node | None = None


@dataclass(frozen=True, slots=True)
class Bind(Node):
    """`cel.bind(var, init, body)`: `body` with `var` bound to the value of `init`."""

    var: str
    init: Node
    body: Node


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\n\r\f]+|//[^\n]*)
  | (?P<num>0[xX][0-9a-fA-F]+[uU]? | (?:[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)? | [0-9]+[eE][+-]?[0-9]+ | \.[0-9]+(?:[eE][+-]?[0-9]+)?) | [0-9]+[uU]?)
  | (?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"|'''|"|'))
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>+\-*/%!?:.,()\[\]{}])
  | (?P<quoted>`[A-Za-z0-9_.\-/ ]+`)
    """,
    re.VERBOSE,
)

RESERVED = frozenset(
    [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)
_SIMPLE_ESC = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "`": "`",
    "?": "?",
}
_MACROS = {"all": 2, "exists": 2, "exists_one": 2, "filter": 2}
_BINARY = {  # token -> (left binding power, CEL function)
    "||": (1, "_||_"),
    "&&": (2, "_&&_"),
    "==": (3, "_==_"),
    "!=": (3, "_!=_"),
    "<": (3, "_<_"),
    "<=": (3, "_<=_"),
    ">": (3, "_>_"),
    ">=": (3, "_>=_"),
    "in": (3, "@in"),
    "+": (4, "_+_"),
    "-": (4, "_-_"),
    "*": (5, "_*_"),
    "/": (5, "_/_"),
    "%": (5, "_%_"),
}
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _decode_string(body: str, raw: bool, is_bytes: bool) -> str | bytes:
    """Decode the escapes of a CEL string or bytes literal body."""
    if raw:
        return body.encode() if is_bytes else body
    out: list[int] | list[str] = []
    parts: list[Any] = out
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            parts.extend(c.encode() if is_bytes else c)
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("trailing backslash in string literal")
        e = body[i + 1]
        if e in _SIMPLE_ESC:
            s = _SIMPLE_ESC[e]
            parts.extend(s.encode() if is_bytes else s)
            i += 2
        elif e in "xX":
            h = body[i + 2 : i + 4]
            if len(h) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise ParseError("bad \\x escape")
            parts.append(int(h, 16) if is_bytes else chr(int(h, 16)))
            i += 4
        elif e in "uU":
            if is_bytes:
                raise Unsupported("\\u escape in bytes literal")
            width = 4 if e == "u" else 8
            h = body[i + 2 : i + 2 + width]
            if len(h) != width or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise ParseError("bad \\u escape")
            cp = int(h, 16)
            if 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
                raise ParseError("invalid code point in escape")
            parts.append(chr(cp))
            i += 2 + width
        elif e in "0123":
            o = body[i + 1 : i + 4]
            if len(o) != 3 or not all(ch in "01234567" for ch in o):
                raise ParseError("bad octal escape")
            parts.append(int(o, 8) if is_bytes else chr(int(o, 8)))
            i += 4
        else:
            raise ParseError(f"invalid escape \\{e}")
    return bytes(out) if is_bytes else "".join(out)  # type: ignore[arg-type]


def _tokenize(src: str) -> list[tuple[str, Any, int]]:
    """Split `src` into (kind, value, offset) tokens; kind in num, str, ident, op, eof."""
    toks: list[tuple[str, Any, int]] = []
    i, n = 0, len(src)
    while i < n:
        m = _TOKEN.match(src, i)
        if not m:
            raise ParseError(f"unexpected character {src[i]!r} at {i}")
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            i = m.end()
            continue
        if kind == "quoted":  # a field name such as `content-type`, only valid after '.'
            toks.append(("qident", text[1:-1], i))
            i = m.end()
            continue
        if kind == "str":
            prefix = text.rstrip("\"'").lower()
            quote = text[len(prefix) :]
            start = m.end()
            j = start
            while True:
                if j >= n:
                    raise ParseError("unterminated string literal")
                if src.startswith(quote, j):
                    break
                if src[j] == "\\" and "r" not in prefix:
                    j += 2
                    continue
                if len(quote) == 1 and src[j] in "\r\n":
                    raise ParseError("newline in string literal")
                j += 1
            body = src[start:j]
            is_bytes = "b" in prefix
            toks.append(("bytes" if is_bytes else "str", _decode_string(body, "r" in prefix, is_bytes), i))
            i = j + len(quote)
            continue
        toks.append((kind, text, i))  # type: ignore[arg-type]
        i = m.end()
    toks.append(("eof", None, n))
    return toks


def _number(text: str, negative: bool) -> Lit:
    """An int, uint or double literal from its token text."""
    sign = -1 if negative else 1
    if text[-1] in "uU":
        if negative:
            raise ParseError("negative uint literal")
        body = text[:-1]
        v = int(body, 16) if body[:2] in ("0x", "0X") else int(body)
        if v > UINT64_MAX:
            raise ParseError("uint literal out of range")
        return Lit("uint", v)
    if text[:2] in ("0x", "0X"):
        v = sign * int(text, 16)
    elif any(c in text for c in ".eE"):
        return Lit("double", sign * float(text))
    else:
        v = sign * int(text)
    if not INT64_MIN <= v <= INT64_MAX:
        raise ParseError("int literal out of range")
    return Lit("int", v)


class _Parser:
    def __init__(self, src: str, macros: bool):
        self.toks = _tokenize(src)
        self.pos = 0
        self.depth = 0
        self.macros = macros

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.pos]

    def next(self) -> tuple[str, Any, int]:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def expect(self, op: str) -> None:
        kind, val, off = self.next()
        if kind != "op" or val != op:
            raise ParseError(f"expected {op!r} at {off}, found {val!r}")

    def at(self, op: str) -> bool:
        kind, val, _ = self.peek()
        return kind == "op" and val == op

    def expr(self) -> Node:
        """Expr = ConditionalOr ['?' ConditionalOr ':' Expr]."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise Unsupported("expression nested too deeply")
        cond = self.binary(1)
        if self.at("?"):
            self.next()
            a = self.binary(1)
            self.expect(":")
            b = self.expr()
            cond = Call("_?_:_", None, (cond, a, b))
        self.depth -= 1
        return cond

    def binary(self, min_bp: int) -> Node:
        left = self.unary()
        while True:
            kind, val, _ = self.peek()
            if kind not in ("op", "ident") or val not in _BINARY:
                return left
            bp, fn = _BINARY[val]
            if bp < min_bp:
                return left
            self.next()
            right = self.binary(bp + 1)
            left = Call(fn, None, (left, right))

    def unary(self) -> Node:
        kind, val, _ = self.peek()
        if kind == "op" and val in ("!", "-"):
            self.next()
            if val == "-" and self.peek()[0] == "num":
                lit = _number(self.next()[1], negative=True)
                return self.member_suffix(lit)
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise Unsupported("expression nested too deeply")
            operand = self.unary()
            self.depth -= 1
            return Call("!_" if val == "!" else "-_", None, (operand,))
        return self.member_suffix(self.primary())

    def args(self, close: str) -> list[Node]:
        items: list[Node] = []
        if self.at(close):
            self.next()
            return items
        while True:
            if close == "]" and self.at("?"):  # `[?x]`: an optional element, kept when it has a value
                self.next()
                items.append(Call(OPTIONAL_ENTRY, None, (self.expr(),)))
            else:
                items.append(self.expr())
            if self.at(","):
                self.next()
                if self.at(close) and close != ")":
                    self.next()
                    return items
                continue
            self.expect(close)
            return items

    def member_suffix(self, node: Node) -> Node:
        while True:
            if self.at("."):
                self.next()
                kind, name, off = self.next()
                if kind == "op" and name == "?":
                    kind, name, off = self.next()
                    if kind not in ("ident", "qident"):
                        raise ParseError(f"expected field name at {off}")
                    node = Call("_?._", None, (node, Lit("string", name)))
                    continue
                if kind == "qident" and not self.at("("):
                    node = Select(node, name)
                    continue
                if kind != "ident":
                    raise ParseError(f"expected field name at {off}")
                if self.at("("):
                    self.next()
                    node = self.call(name, node, self.args(")"))
                else:
                    if name in RESERVED:
                        raise ParseError(f"reserved identifier {name!r}")
                    node = Select(node, name)
            elif self.at("["):
                self.next()
                optional = self.at("?")
                if optional:
                    self.next()
                index = self.expr()
                self.expect("]")
                node = Call("_[?_]" if optional else "_[_]", None, (node, index))
            elif self.at("{"):
                raise Unsupported("message construction")
            else:
                return node

    def call(self, name: str, target: Node | None, args: list[Node]) -> Node:
        if self.macros:
            if target is None and name == "has":
                if len(args) != 1 or not isinstance(args[0], Select):
                    raise ParseError("has() needs a field selection")
                sel = args[0]
                return Select(sel.operand, sel.field, test=True)
            if isinstance(target, Ident) and target.name == "cel" and name == "bind" and len(args) == 3:
                if not isinstance(args[0], Ident):
                    raise ParseError("cel.bind() needs an identifier as first argument")
                return Bind(args[0].name, args[1], args[2])
            if target is not None and name in ("optMap", "optFlatMap") and len(args) == 2:
                if not isinstance(args[0], Ident):
                    raise ParseError(f"{name}() needs an identifier as first argument")
                return Comprehension(name, target, args[0].name, args[1])
            if target is not None and name == "sortBy" and len(args) == 2:
                if not isinstance(args[0], Ident):
                    raise ParseError("sortBy() needs an identifier as first argument")
                keys = Comprehension("map", target, args[0].name, args[1])
                return Call("@sortByAssociatedKeys", target, (keys,))
            if target is not None and (name in _MACROS or name == "map") and len(args) >= 2:
                if not isinstance(args[0], Ident):
                    raise ParseError(f"{name}() needs an identifier as first argument")
                var = args[0].name
                if name == "map" and len(args) == 3:
                    return Comprehension("map", target, var, args[2], args[1])
                if len(args) == 2:
                    return Comprehension(name, target, var, args[1])
        return Call(name, target, tuple(args))

    def primary(self) -> Node:
        kind, val, off = self.next()
        if kind == "num":
            return _number(val, negative=False)
        if kind == "str":
            return Lit("string", val)
        if kind == "bytes":
            return Lit("bytes", val)
        if kind == "ident":
            if val in ("true", "false"):
                return Lit("bool", val == "true")
            if val == "null":
                return Lit("null", None)
            if val in RESERVED or val == "in":
                raise ParseError(f"reserved identifier {val!r}")
            if self.at("("):
                self.next()
                return self.call(val, None, self.args(")"))
            if self.at("{"):
                raise Unsupported("message construction")
            return Ident(val)
        if kind == "op":
            if val == "(":
                e = self.expr()
                self.expect(")")
                return e
            if val == "[":
                return ListLit(tuple(self.args("]")))
            if val == "{":
                return self.map_lit()
            if val == ".":
                raise Unsupported("leading-dot identifier")
        raise ParseError(f"unexpected {val!r} at {off}")

    def map_lit(self) -> Node:
        entries: list[tuple[Node, Node]] = []
        if self.at("}"):
            self.next()
            return MapLit(())
        while True:
            optional = self.at("?")  # `{?k: v}`: an entry only when the optional v has a value
            if optional:
                self.next()
            k = self.expr()
            self.expect(":")
            v = self.expr()
            entries.append((k, Call(OPTIONAL_ENTRY, None, (v,)) if optional else v))
            if self.at(","):
                self.next()
                if self.at("}"):
                    self.next()
                    break
                continue
            self.expect("}")
            break
        return MapLit(tuple(entries))


def parse(src: str, macros: bool = True) -> Node:
    """Parse CEL `src` into an AST; raise ParseError or Unsupported."""
    p = _Parser(src, macros)
    node = p.expr()
    kind, val, off = p.peek()
    if kind != "eof":
        raise ParseError(f"unexpected {val!r} at {off}")
    return node
