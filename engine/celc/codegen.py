"""Translate a CEL AST into the Python source of one function, with inline fast paths.

Every node becomes a Python expression string; control flow (`&&`, `||`, `?:`, macros) becomes
statements emitted before that expression, so a node's statements run only where CEL evaluates it.
Errors are Python exceptions; `&&`, `||` and the macros catch them into `ErrBox` values to absorb them
as CEL does. The source only ever names the function's parameters, its own temporaries and the
constants in `Gen.consts`; `engine.celc.sandbox` checks that before anything is compiled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.celc import values as V
from engine.celc.ext import ABSENT, NONE, Optional, opt_flat, opt_index, opt_of, opt_select, opt_unwrap
from engine.celc.functions import compile_pattern, lookup
from engine.celc.parser import (
    OPTIONAL_ENTRY,
    Bind,
    Call,
    Comprehension,
    Ident,
    ListLit,
    Lit,
    MapLit,
    Node,
    Select,
    Unsupported,
)

__all__ = ["Code", "Gen", "generate"]

_SCALARS = frozenset({"int", "double", "bool", "string", "null"})
_INLINE_CMP = {"_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">="}
_CMP_HELPER = {"_<_": V.lt, "_<=_": V.le, "_>_": V.gt, "_>=_": V.ge}
_ARITH = {
    "_+_": ("+", V.add),
    "_-_": ("-", V.sub),
    "_*_": ("*", V.mul),
    "_/_": ("/", V.div),
    "_%_": ("%", V.mod),
}


@dataclass(frozen=True, slots=True)
class Code:
    """A Python expression for a node: `type` is its CEL type when known statically (None: dyn);
    `safe` means evaluating it cannot raise."""

    expr: str
    type: str | None = None
    safe: bool = False


class Gen:
    """Emits the body of one function; `consts` are the names the body may use besides its locals."""

    def __init__(self, params: dict[str, str], budget: int | None = None, max_size: int | None = None):
        self.lines: list[str] = []
        # run-time limits: `budget` steps per evaluation, kept in the local `_t0` (set up by the
        # prologue when `charged`), and no value built in a loop above `max_size` elements
        self.budget, self.max_size, self.charged, self.loops = budget, max_size, False, 0
        self.over_fn = self.over  # one object, so `helper` binds one name for it
        self.sized_fn = _size_check(max_size if max_size is not None else budget or 0)
        self.level = 1
        self.count = 0
        self.params = params
        self.consts: dict[str, object] = {
            "_Exc": Exception,
            "_Err": V.ErrBox,
            "_pick": V.pick_error,
            "_float": float,
            "_int": int,
            "_str": str,
            "_list": list,
            "_dict": dict,
            "_bool": bool,
            "_len": len,
            "_append": list.append,
            "type": type,
            "_NOERR": V.NOERR,
        }
        self._by_id: dict[int, str] = {}
        # strict: the caller re-runs the message on the exact path when anything raises (a batch
        # comprehension, `_generate_strict`), so `&&` and `||` may be plain expressions that raise
        # where the exact code would have to absorb an error
        self.strict = False
        # the parameter holding `msg` when every body is a JSON value (str, bool, float, None, an int
        # orjson gives, lists, string-keyed maps): a field copied from it needs no conversion to plain
        self.json_msg: str | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def tmp(self) -> str:
        self.count += 1
        return f"_t{self.count}"

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.level + line)

    def const(self, obj: object, hint: str = "c") -> str:
        """A name bound to `obj` in the function's globals."""
        key = id(obj)
        if key in self._by_id:
            return self._by_id[key]
        name = f"_{hint}{len(self.consts)}"
        self.consts[name] = obj
        self._by_id[key] = name
        return name

    def helper(self, fn: object) -> str:
        return self.const(fn, "h")

    def once(self, code: Code) -> tuple[str, str]:
        """(binding, reference): evaluate `code` once inside an expression via `:=` unless trivial."""
        if code.expr.isidentifier():  # a parameter, temporary or constant: reading it is free
            return code.expr, code.expr
        t = self.tmp()
        return f"({t} := {code.expr})", t

    def sub_block(self, node: Node, scope: dict[str, str], level: int) -> tuple[list[str], Code]:
        """Generate `node` into a separate list of lines at indentation `level`."""
        saved_lines, saved_level = self.lines, self.level
        self.lines, self.level = [], level
        try:
            code = self.gen(node, scope)
            return self.lines, code
        finally:
            self.lines, self.level = saved_lines, saved_level

    def captured(self, node: Node, scope: dict[str, str]) -> str:
        """Emit statements evaluating `node` into a temporary, holding an error as `ErrBox`."""
        out = self.tmp()
        lines, code = self.sub_block(node, scope, self.level + 1)
        if code.safe and not lines:
            self.emit(f"{out} = {code.expr}")
            return out
        self.emit("try:")
        self.lines.extend(lines)
        self.emit(f"    {out} = {code.expr}")
        self.emit("except _Exc as _e:")
        self.emit(f"    {out} = _Err(_e)")
        return out

    # -- nodes --------------------------------------------------------------------------------
    def gen(self, node: Node, scope: dict[str, str]) -> Code:
        if isinstance(node, Lit):
            return self.literal(node)
        if isinstance(node, Ident):
            if node.name in scope:
                return Code(scope[node.name], None, True)
            if node.name in V.TYPE_NAMES:
                return Code(self.const(V.CelType(node.name), "y"), "type", True)
            raise Unsupported(f"identifier {node.name!r}")
        if isinstance(node, Select):
            operand = self.gen(node.operand, scope)
            if node.test:
                return Code(f"{self.helper(V.select_has)}({operand.expr}, {node.field!r})", "bool")
            return Code(f"{operand.expr}[{node.field!r}]")
        if isinstance(node, ListLit | MapLit) and any(
                _is_entry(n) for n in (node.items if isinstance(node, ListLit) else [v for _, v in node.entries])):
            return self.optional_literal(node, scope)
        if isinstance(node, ListLit):
            items = [self.gen(i, scope) for i in node.items]
            return Code("[" + ", ".join(i.expr for i in items) + "]", "list", all(i.safe for i in items))
        if isinstance(node, MapLit):
            return self.map_literal(node, scope)
        if isinstance(node, Comprehension):
            return self.comprehension(node, scope)
        if isinstance(node, Call):
            return self.call(node, scope)
        if isinstance(node, Bind):
            init = self.gen(node.init, scope)
            var = self.tmp()
            self.emit(f"{var} = {init.expr}")
            body = self.gen(node.body, {**scope, node.var: var})
            return Code(body.expr, body.type)
        raise Unsupported(type(node).__name__)

    def optional_literal(self, node: ListLit | MapLit, scope: dict[str, str]) -> Code:
        """A list or map literal with optional entries (`[?x]`, `{?k: x}`): built by a helper that
        keeps an entry whose optional has a value, unwrapped, and drops one that has none."""

        def value(n: Node) -> str:
            return self.gen(n.args[0] if _is_entry(n) else n, scope).expr  # type: ignore[attr-defined]

        if isinstance(node, ListLit):
            flags = self.const(tuple(_is_entry(n) for n in node.items), "k")
            items = ", ".join(value(n) for n in node.items)
            return Code(f"{self.helper(optional_list)}([{items}], {flags})", "list")
        flags = self.const(tuple(_is_entry(v) for _, v in node.entries), "k")
        pairs = ", ".join(f"({self.gen(k, scope).expr}, {value(v)})" for k, v in node.entries)
        return Code(f"{self.helper(optional_map)}([{pairs}], {flags})", "map")

    def literal(self, node: Lit) -> Code:
        v = node.value
        if node.kind == "int":
            return Code(f"({v})" if v < 0 else repr(v), "int", True)
        if node.kind == "uint":
            return Code(self.const(V.UInt(v), "u"), "uint", True)
        if node.kind == "double":
            if math.isfinite(v):
                return Code(f"({v!r})" if v < 0 or str(v).startswith("-") else repr(v), "double", True)
            return Code(self.const(v, "d"), "double", True)
        if node.kind == "string":
            return Code(repr(v), "string", True)
        if node.kind == "bytes":
            return Code(repr(v), "bytes", True)
        if node.kind == "bool":
            return Code("True" if v else "False", "bool", True)
        return Code("None", "null", True)

    def gen_plain_literal(self, node: MapLit | ListLit, scope: dict[str, str]) -> Code:
        """A list or string-keyed map literal whose elements are converted to plain values."""
        self.lines = []
        conv = self.helper(V.plain)

        def item(n: Node) -> str:
            c = self.gen(n, scope)
            return c.expr if c.type in _SCALARS or self.copied_json(n) else self.plain_inline(c, conv)

        if isinstance(node, ListLit):
            return Code("[" + ", ".join(item(i) for i in node.items) + "]", "list")
        body = ", ".join(f"{k.value!r}: {item(v)}" for k, v in node.entries)  # type: ignore[attr-defined]
        return Code("{" + body + "}", "map")

    def copied_json(self, node: Node) -> bool:
        """True when `node` is the body or a field path in it (`msg`, `msg.a.b`) and the body is known
        to be a JSON value (`json_msg`): `plain` would give it back equal (a copy, for a container),
        so the result may be the value itself."""
        if self.json_msg is None:
            return False
        while isinstance(node, Select) and not node.test:
            node = node.operand
        return isinstance(node, Ident) and node.name == "msg"  # the parameter: results are of the top scope

    def plain_inline(self, code: Code, conv: str) -> str:
        """`plain(x)` with the common JSON scalars (str, float, bool, in-range int) checked inline."""
        bind, ref = self.once(code)
        k = self.tmp()  # the type, read once
        scalar = (
            f"({k} := type({bind})) is _str or {k} is _int and {V.INT64_MIN} <= {ref} <= {V.UINT64_MAX}"
            f" or {k} is _float or {k} is _bool"
        )
        return f"({ref} if {scalar} else {conv}({ref}))"

    def map_literal(self, node: MapLit, scope: dict[str, str]) -> Code:
        keys = [k for k, _ in node.entries]
        if all(isinstance(k, Lit) and k.kind == "string" for k in keys):
            names = [k.value for k in keys]  # type: ignore[attr-defined]
            if len(set(names)) != len(names):
                raise Unsupported("duplicate keys in a map literal")
            vals = [self.gen(v, scope) for _, v in node.entries]
            body = ", ".join(f"{n!r}: {v.expr}" for n, v in zip(names, vals))
            return Code("{" + body + "}", "map", all(v.safe for v in vals))
        pairs = [(self.gen(k, scope), self.gen(v, scope)) for k, v in node.entries]
        body = ", ".join(f"({k.expr}, {v.expr})" for k, v in pairs)
        return Code(f"{self.helper(V.make_map)}([{body}])", "map")

    def comprehension(self, node: Comprehension, scope: dict[str, str]) -> Code:
        rng = self.gen(node.range, scope)
        if node.kind in ("optMap", "optFlatMap"):  # `opt.optMap(v, e)`: e of the value, if there is one
            opt, res = self.tmp(), self.tmp()
            self.emit(f"{opt} = {self.helper(opt_unwrap)}({rng.expr}, {node.kind!r})")
            self.emit(f"if {opt} is {self.const(ABSENT, 'n')}:")
            self.emit(f"    {res} = {self.const(NONE, 'n')}")
            self.emit("else:")
            lines, body = self.sub_block(node.body, {**scope, node.var: opt}, self.level + 1)
            self.lines.extend(lines)
            wrap = self.helper(opt_of if node.kind == "optMap" else opt_flat)
            self.emit(f"    {res} = {wrap}({body.expr})")
            return Code(res)
        items = self.tmp()
        keep_order = node.kind in ("map", "filter")
        self.emit(f"{items} = {self.helper(V.iter_range)}({rng.expr}, {keep_order})")
        if self.budget is not None and self.loops:
            # a loop inside a loop is charged its length once, on entry (nothing per element); an
            # outermost one is not: it runs once per evaluation over a range no longer than the
            # message's lists (or a literal's), and charging it would cost one-level `exists` ~15%
            self.charged = True
            self.emit(f"if (_t0 := _t0 - _len({items})) < 0:")
            self.emit(f"    {self.helper(self.over_fn)}()")
        self.loops += 1
        try:
            return self.comprehension_loop(node, scope, items)
        finally:
            self.loops -= 1

    def over(self) -> None:
        raise V.CostExceeded(
            f"CEL cost limit: more than {self.budget:,} comprehension iterations and loop-built elements in one "
            "evaluation (limit cel_iterations)"
        )

    def charge_size(self, code: Code) -> Code:
        """`code` (a `+` inside a loop, or the value `in` searches) charged its size against the budget."""
        if self.budget is None or self.loops == 0 or code.type in ("int", "uint", "double", "bool", "null"):
            return code
        self.charged = True
        t = self.tmp()
        return Code(f"({t} if (_t0 := _t0 - {self.helper(self.sized_fn)}({t} := {code.expr})) >= 0 "
                    f"else {self.helper(self.over_fn)}())", code.type)

    def comprehension_loop(self, node: Comprehension, scope: dict[str, str], items: str) -> Code:
        var = self.tmp().replace("_t", "_v")
        inner = {**scope, node.var: var}
        res = self.tmp()
        kind = node.kind
        if kind in ("all", "exists"):
            stop, keep = ("False", "True") if kind == "all" else ("True", "False")
            err = self.tmp()
            self.emit(f"{res} = {keep}")
            self.emit(f"{err} = _NOERR")
            self.emit(f"for {var} in {items}:")
            self.level += 1
            p = self.captured(node.body, inner)
            self.emit(f"if {p} is {stop}:")
            self.emit(f"    {res} = {stop}")
            self.emit("    break")
            self.emit(f"if {p} is not {keep}:")
            self.emit(f"    {err} = _pick({err}, {p})")
            self.level -= 1
            self.emit(f"if {err} is not _NOERR and {res} is {keep}:")
            self.emit(f"    {res} = {self.helper(_fail_from)}({err}, {kind!r})")
            return Code(res, "bool")
        if kind == "exists_one":
            self.emit(f"{res} = 0")
            self.emit(f"for {var} in {items}:")
            self.level += 1
            lines, body = self.sub_block(node.body, inner, self.level)
            self.lines.extend(lines)
            pt = self.tmp()
            self.emit(f"{pt} = {body.expr}")
            self.emit(f"if {pt} is True:")
            self.emit(f"    {res} += 1")
            self.emit(f"elif {pt} is not False:")
            self.emit(f"    {self.helper(_raise_overload)}('exists_one', {pt})")
            self.level -= 1
            return Code(f"({res} == 1)", "bool")
        # map / filter
        self.emit(f"{res} = []")
        self.emit(f"for {var} in {items}:")
        self.level += 1
        if node.pred is not None or kind == "filter":
            pred = node.pred if kind == "map" else node.body
            assert pred is not None
            lines, cond = self.sub_block(pred, inner, self.level)
            self.lines.extend(lines)
            pt = self.tmp()
            self.emit(f"{pt} = {cond.expr}")
            self.emit(f"if {pt} is not True:")
            self.emit(f"    if {pt} is False:")
            self.emit("        continue")
            self.emit(f"    {self.helper(_raise_overload)}({kind!r}, {pt})")
        if kind == "filter":
            self.emit(f"_append({res}, {var})")
        else:
            lines, e = self.sub_block(node.body, inner, self.level)
            self.lines.extend(lines)
            self.emit(f"_append({res}, {e.expr})")
        self.level -= 1
        return Code(res, "list")

    def call(self, node: Call, scope: dict[str, str]) -> Code:
        fn, args = node.fn, node.args
        if node.target is None:
            if fn == "_&&_" or fn == "_||_":
                return self.logic(fn, args[0], args[1], scope)
            if fn == "_?_:_":
                return self.ternary(args[0], args[1], args[2], scope)
            if fn in ("_==_", "_!=_"):
                return self.equality(fn, args, scope)
            if fn in _INLINE_CMP:
                return self.compare(fn, args, scope)
            if fn in _ARITH:
                return self.arith(fn, args, scope)
            if fn == "!_":
                a = self.gen(args[0], scope)
                if a.type == "bool" and a.safe:
                    return Code(f"(not {a.expr})", "bool", True)
                return Code(f"{self.helper(V.not_)}({a.expr})", "bool")
            if fn == "-_":
                a = self.gen(args[0], scope)
                return Code(
                    f"{self.helper(V.neg)}({a.expr})", a.type if a.type in ("int", "double") else None
                )
            if fn == "@in":
                return self.membership(args, scope)
            if fn == "_[_]":
                c, i = self.gen(args[0], scope), self.gen(args[1], scope)
                if isinstance(args[1], Lit) and args[1].kind == "string":
                    return Code(f"{c.expr}[{i.expr}]")
                return Code(f"{self.helper(V.index)}({c.expr}, {i.expr})")
            if fn in ("_?._", "_[?_]"):
                c, i = self.gen(args[0], scope), self.gen(args[1], scope)
                return Code(f"{self.helper(opt_select if fn == '_?._' else opt_index)}({c.expr}, {i.expr})")
        return self.function(node, scope)

    def logic(self, fn: str, left: Node, right: Node, scope: dict[str, str]) -> Code:
        """`a && b && ...` (or `||`) as flat statements: the first deciding operand wins, an error
        or non-bool operand is absorbed when another operand decides, else it is raised."""
        operands: list[Node] = []

        def flatten(n: Node) -> None:
            if isinstance(n, Call) and n.fn == fn and n.target is None:
                flatten(n.args[0])
                flatten(n.args[1])
            else:
                operands.append(n)

        flatten(left)
        flatten(right)
        decide, other = ("False", "True") if fn == "_&&_" else ("True", "False")
        if self.strict:
            return self.strict_logic(operands, decide, other, scope)
        res, err = self.tmp(), self.tmp()
        self.emit(f"{res} = None")
        self.emit(f"{err} = _NOERR")
        for i, operand in enumerate(operands):
            if i:
                self.emit(f"if {res} is None:")
                self.level += 1
            v = self.captured(operand, scope)
            self.emit(f"if {v} is {decide}:")
            self.emit(f"    {res} = {decide}")
            self.emit(f"elif {v} is not {other}:")
            self.emit(f"    {err} = _pick({err}, {v})")
            if i:
                self.level -= 1
        self.emit(f"if {res} is None:")
        self.emit(f"    {res} = {other} if {err} is _NOERR else {self.helper(_fail_from)}({err}, {fn!r})")
        return Code(res, "bool")

    def strict_logic(self, operands: list[Node], decide: str, other: str, scope: dict[str, str]) -> Code:
        """`a && b` (or `||`) in strict mode, one expression: the first operand that is `decide`
        decides, a bool goes on to the next, anything else raises (the exact path then absorbs it
        or not). Operands that need statements are evaluated up front, which can only raise."""
        codes = [self.gen(op, scope) for op in operands]
        acc = self.strict_bool(codes[-1])
        for code in reversed(codes[:-1]):
            if code.type == "bool":  # a bool decides or goes on to the next, as Python's `and`/`or` do
                acc = f"({code.expr} {'and' if decide == 'False' else 'or'} {acc})"
                continue
            x = self.tmp()
            acc = (f"({decide} if ({x} := {code.expr}) is {decide} else ({acc} if {x} is {other} "
                   f"else {self.helper(_not_bool)}({x})))")
        return Code(acc, "bool")

    def strict_bool(self, code: Code) -> str:
        """`code`'s value, which must be a bool: a bool-typed expression as it is, else checked."""
        if code.type == "bool":
            return code.expr
        y = self.tmp()
        return f"({y} if ({y} := {code.expr}) is True or {y} is False else {self.helper(_not_bool)}({y}))"

    def ternary(self, cond: Node, a: Node, b: Node, scope: dict[str, str]) -> Code:
        c = self.gen(cond, scope)
        la, ca = self.sub_block(a, scope, self.level + 1)
        lb, cb = self.sub_block(b, scope, self.level + 1)
        typ = ca.type if ca.type == cb.type else None
        bind, ref = self.once(c)
        bad = f"{self.helper(_raise_overload)}('?:', {ref})"
        if not la and not lb:
            return Code(f"({ca.expr} if {bind} is True else {cb.expr} if {ref} is False else {bad})", typ)
        res = self.tmp()
        self.emit(f"if {bind} is True:")
        self.lines.extend(la)
        self.emit(f"    {res} = {ca.expr}")
        self.emit(f"elif {ref} is False:")
        self.lines.extend(lb)
        self.emit(f"    {res} = {cb.expr}")
        self.emit("else:")
        self.emit(f"    {bad}")
        return Code(res, typ)

    def equality(self, fn: str, args: tuple[Node, ...], scope: dict[str, str]) -> Code:
        a, b = self.gen(args[0], scope), self.gen(args[1], scope)
        neg = fn == "_!=_"
        op = "!=" if neg else "=="
        for lit_node, lit, other in ((args[0], a, b), (args[1], b, a)):
            if not isinstance(lit_node, Lit):
                continue
            if lit_node.kind in ("string", "bytes"):  # Python never equates str/bytes with another type
                return Code(f"({other.expr} {op} {lit.expr})", "bool", other.safe)
            if lit_node.kind in ("bool", "null"):
                return Code(f"({other.expr} {'is not' if neg else 'is'} {lit.expr})", "bool", other.safe)
            if lit_node.kind in ("int", "uint", "double") and abs(lit_node.value) <= 2**53:
                # numbers equal across kinds (exactly, as the literal is small), never a bool
                ob, ref = self.once(other)
                if neg:
                    return Code(f"({ob} != {lit.expr} or type({ref}) is _bool)", "bool", other.safe)
                return Code(f"({ob} == {lit.expr} and type({ref}) is not _bool)", "bool", other.safe)
        if a.type == b.type and a.type in ("string", "int", "double", "bool"):
            return Code(f"({a.expr} {op} {b.expr})", "bool", a.safe and b.safe)
        return Code(f"{self.helper(V.ne if neg else V.eq)}({a.expr}, {b.expr})", "bool")

    def compare(self, fn: str, args: tuple[Node, ...], scope: dict[str, str]) -> Code:
        a, b = self.gen(args[0], scope), self.gen(args[1], scope)
        op, helper = _INLINE_CMP[fn], self.helper(_CMP_HELPER[fn])
        if a.type == b.type and a.type in ("int", "double", "string"):
            return Code(f"({a.expr} {op} {b.expr})", "bool", a.safe and b.safe)
        for lit_node, lit, other, lit_left in ((args[0], a, b, True), (args[1], b, a, False)):
            if not isinstance(lit_node, Lit) or lit_node.kind not in ("int", "double", "string"):
                continue
            ob, ref = self.once(other)
            # same kind only: an int meeting a double compares as double, in the helper
            test = f"type({ob}) is " + {"string": "_str", "double": "_float", "int": "_int"}[lit_node.kind]
            left, right = (lit.expr, ref) if lit_left else (ref, lit.expr)
            return Code(f"({left} {op} {right} if {test} else {helper}({left}, {right}))", "bool")
        return Code(f"{helper}({a.expr}, {b.expr})", "bool")

    def arith(self, fn: str, args: tuple[Node, ...], scope: dict[str, str]) -> Code:
        code = self.arith_code(fn, args, scope)
        return self.charge_size(code) if fn == "_+_" else code

    def arith_code(self, fn: str, args: tuple[Node, ...], scope: dict[str, str]) -> Code:
        a, b = self.gen(args[0], scope), self.gen(args[1], scope)
        op, helper_fn = _ARITH[fn]
        helper = self.helper(helper_fn)
        if fn != "_%_":
            for lit_node, lit, other, lit_left in ((args[0], a, b, True), (args[1], b, a, False)):
                if not (
                    isinstance(lit_node, Lit) and lit_node.kind == "double" and math.isfinite(lit_node.value)
                ):
                    continue
                if fn == "_/_" and (lit_left or lit_node.value == 0.0):
                    continue
                left, right = (lit.expr, "{}") if lit_left else ("{}", lit.expr)
                if other.type == "double":
                    expr = f"({left} {op} {right})".format(other.expr)
                    return Code(expr, "double", other.safe)
                ob, ref = self.once(other)
                inline = f"{left} {op} {right}".format(ref)
                slow = f"{helper}({left}, {right})".replace("{}", ref)
                return Code(f"({inline} if type({ob}) is _float else {slow})", "double")
            if fn == "_+_" and a.type == b.type == "string":
                return Code(f"({a.expr} + {b.expr})", "string", a.safe and b.safe)
            if fn != "_/_" and "double" in (a.type, b.type):
                return self.double_arith(op, a, b, helper)
        int_fast = self.int_literal_arith(fn, args, a, b, helper)
        if int_fast is not None:
            return int_fast
        typ = a.type if a.type == b.type and a.type in ("int", "uint", "double", "string", "list") else None
        return Code(f"{helper}({a.expr}, {b.expr})", typ)

    def double_arith(self, op: str, a: Code, b: Code, helper: str) -> Code:
        """`a op b` (+, -, *) with one side known to be a double: inline when the other is a float
        too (IEEE arithmetic is CEL's), else the helper, which raises CEL's no-overload error. The
        result is a double either way. `type(x) is type(y) is _float` evaluates both bindings."""
        if a.type == b.type == "double":
            return Code(f"({a.expr} {op} {b.expr})", "double", a.safe and b.safe)
        ab, ar = self.once(a)
        bb, br = self.once(b)
        return Code(f"({ar} {op} {br} if type({ab}) is type({bb}) is _float else {helper}({ar}, {br}))", "double")

    def int_literal_arith(
        self, fn: str, args: tuple[Node, ...], a: Code, b: Code, helper: str
    ) -> Code | None:
        """`x op 7` (or `7 op x`) inline for an int64 `x` when the result needs no overflow check
        beyond a range test; anything else goes to the helper, which raises CEL's errors."""
        lo, hi = V.INT64_MIN, V.INT64_MAX
        lit_left = isinstance(args[0], Lit) and args[0].kind == "int"
        lit_right = isinstance(args[1], Lit) and args[1].kind == "int"
        if lit_left == lit_right or (a.type if lit_right else b.type) not in (None, "int"):
            return None
        other = a if lit_right else b
        lit = b.expr if lit_right else a.expr
        op = _ARITH[fn][0]
        ob, ref = self.once(other)
        if fn in ("_%_", "_/_"):
            if not lit_right or args[1].value <= 0:  # type: ignore[attr-defined]
                return None
            py = "%" if fn == "_%_" else "//"  # equal to CEL's for a non-negative dividend
            return Code(
                f"({ref} {py} {lit} if type({ob}) is _int and 0 <= {ref} <= {hi} else {helper}({ref}, {lit}))",
                "int",
            )
        r = self.tmp()
        left, right = (ref, lit) if lit_right else (lit, ref)
        test = (
            f"type({ob}) is _int and {lo} <= {ref} <= {hi} and {lo} <= ({r} := {left} {op} {right}) <= {hi}"
        )
        return Code(f"({r} if {test} else {helper}({left}, {right}))", "int")

    def membership(self, args: tuple[Node, ...], scope: dict[str, str]) -> Code:
        x = self.gen(args[0], scope)
        node_c = args[1]
        if (
            isinstance(node_c, ListLit)
            and node_c.items
            and all(isinstance(i, Lit) and i.kind == "string" for i in node_c.items)
        ):
            options = tuple(i.value for i in node_c.items)  # type: ignore[attr-defined]
            return Code(f"({x.expr} in {self.const(options, 'k')})", "bool", x.safe)
        c = self.charge_size(self.gen(node_c, scope))  # in a loop, a search costs the size searched
        if x.type == "string":
            cb, cr = self.once(c)
            k = self.tmp()  # the type, read once
            return Code(
                f"({x.expr} in {cr} if ({k} := type({cb})) is _list or {k} is _dict "
                f"else {self.helper(V.is_in)}({x.expr}, {cr}))",
                "bool",
            )
        return Code(f"{self.helper(V.is_in)}({x.expr}, {c.expr})", "bool")

    def function(self, node: Call, scope: dict[str, str]) -> Code:
        target: Node | None = node.target
        name = node.fn
        if isinstance(target, Ident) and target.name not in scope:  # a namespaced function: math.greatest
            name = f"{target.name}.{name}"
            target = None
        member = target is not None
        impl = lookup(name, member, len(node.args))
        if impl is None:
            raise Unsupported(f"function {name!r}")
        args: list[Node] = ([target] if target is not None else []) + list(node.args)
        codes = [self.gen(a, scope) for a in args]
        if name == "matches" and isinstance(args[1], Lit) and args[1].kind == "string":
            pattern = compile_pattern(args[1].value)
            return Code(f"{self.const(_pattern_matcher(pattern), 'm')}({codes[0].expr})", "bool")
        if name == "size":
            # len() agrees with size() on every JSON-shaped value and raises TypeError otherwise
            return Code(f"_len({codes[0].expr})", "int")
        if name in ("contains", "startsWith", "endsWith"):
            impl = {"contains": str.__contains__, "startsWith": str.startswith, "endsWith": str.endswith}[
                name
            ]
            return Code(f"{self.const(impl, 's')}({codes[0].expr}, {codes[1].expr})", "bool")
        if name == "string" and codes[0].type == "string":
            return codes[0]
        if name == "double" and codes[0].type == "double":
            return codes[0]
        if name in ("string", "double") and codes[0].type in (None, "int"):  # the common int argument inline
            ob, ref = self.once(codes[0])
            conv = "_str" if name == "string" else "_float"
            test = f"type({ob}) is _int and {V.INT64_MIN} <= {ref} <= {V.UINT64_MAX}"
            return Code(f"({conv}({ref}) if {test} else {self.helper(impl)}({ref}))", name)
        result = {
            "int": "int",
            "uint": "uint",
            "double": "double",
            "string": "string",
            "bytes": "bytes",
            "bool": "bool",
            "matches": "bool",
        }.get(name)
        return Code(f"{self.helper(impl)}({', '.join(c.expr for c in codes)})", result)


def _is_entry(node: Node) -> bool:
    return isinstance(node, Call) and node.fn == OPTIONAL_ENTRY


def _entry(value: object) -> tuple[bool, object]:
    if type(value) is not Optional:
        raise V.CelFailure(f"an optional entry ([?x], {{?k: x}}) needs an optional value, got {V.type_name(value)}")
    return value.has, value.value


def optional_list(items: list[object], flags: tuple[bool, ...]) -> list[object]:
    out = []
    for item, optional in zip(items, flags):
        if not optional:
            out.append(item)
            continue
        has, inner = _entry(item)
        if has:
            out.append(inner)
    return out


def optional_map(pairs: list[tuple[object, object]], flags: tuple[bool, ...]) -> dict:
    kept = []
    for (k, v), optional in zip(pairs, flags):
        if not optional:
            kept.append((k, v))
            continue
        has, inner = _entry(v)
        if has:
            kept.append((k, inner))
    return V.make_map(kept)


def _size_check(cap: int) -> Callable[[object], int]:
    """The size of a value a `+` built or `in` searches in a loop (0 for a number), raising above `cap`."""

    def sized(value: object) -> int:
        t = type(value)
        n = len(value) if t is str or t is list or t is dict or t is bytes else 0  # type: ignore[arg-type]
        if n > cap:
            raise V.CostExceeded(f"CEL value size limit: a value of {n:,} elements or characters in a loop, above "
                                 f"{cap:,} (limit cel_value_size)")
        return n

    return sized


def _pattern_matcher(match: Callable[[str], bool]) -> Callable[[object], bool]:
    def matches(s: object) -> bool:
        if type(s) is not str:
            raise V.no_overload("matches", s)
        return match(s)

    return matches


def _raise_overload(fn: str, value: object) -> None:
    raise V.no_overload(fn, value)


def _fail_from(err: object, fn: str) -> None:
    if type(err) is V.ErrBox:
        raise err.exc
    raise V.no_overload(fn, err)


def generate(
    node: Node, params: dict[str, str], plain: bool = True, batch: bool = False, strict: bool = False,
    boolean: bool = False, budget: int | None = None, max_size: int | None = None, json_msg: bool = False,
) -> tuple[str, dict[str, object]]:
    """Python source of `def _cel(<params>)` evaluating `node`, and the constants it needs.

    With `batch`, `_cel` takes one sequence per parameter and returns a list with one entry per
    position: the value, or the EvalError for that message (one bad message does not stop the rest).

    With `batch` and `strict`, `_cel` takes a sequence for each parameter the expression uses (in
    order), evaluates all in one comprehension (or one loop, for expressions that need statements)
    and raises on the first message that fails or needs the runtime: the caller then evaluates that
    batch message by message. The common batch, where every message evaluates, costs the
    expression and nothing else. With `boolean` too, a result that is not a bool also raises (a
    filter's fast path then needs no type check of its own).

    With `budget`, each evaluation (each message of a batch) may run that many iterations of
    comprehensions nested in another, and build (`+`) or search (`in`) that many elements inside
    loops; a nested loop is charged its length once, when it starts. Going over is that message's
    EvalError. `max_size` caps the size of one value a `+` builds or `in` searches inside a loop.

    With `json_msg`, every `msg` is a value as orjson decodes it (the plan's `json_inputs`): the
    result keeps the body's fields it copies (`msg.a`, `{"x": msg.a}`) as they are, with no check or
    conversion to plain values, which could neither fail nor change them (a copy for a container).
    """
    if batch and strict:
        return _generate_strict(node, params, plain, boolean, budget, max_size, json_msg)
    g = Gen(params, budget, max_size)
    g.json_msg = params.get("msg") if json_msg else None
    if batch:
        g.level = 2
    _, result = _result(g, node, params, plain)
    args = ", ".join(params.values())
    over = ""
    if g.charged:
        g.lines.insert(0, "    " * g.level + f"_t0 = {budget}")
        g.consts["_Over"] = V.CostExceeded
        over = "_Over, "
    if not batch:
        g.emit(f"return {result}")
        body = "\n".join("    " + line for line in g.lines)
        src = (
            f"def _cel({args}):\n"
            "    try:\n"
            f"{body}\n"
            "    except _Defer:\n"
            f"        return _runtime({args})\n"
            f"    except ({over}_Exc) as _e:\n"
            "        raise _fail(_e) from None\n"
        )
        return src, g.consts
    g.emit(f"_append(_out, {result})")
    body = "\n".join("    " + line for line in g.lines)
    columns = ", ".join(f"_b{i}" for i in range(len(params)))
    g.consts.update({"_zip": zip, "_runtime_or_error": None})
    src = (
        f"def _cel({columns}):\n"
        "    _out = []\n"
        f"    for {args}{',' if len(params) == 1 else ''} in _zip({columns}):\n"
        "        try:\n"
        f"{body}\n"
        "        except _Defer:\n"
        f"            _append(_out, _runtime_or_error({args}))\n"
        f"        except ({over}_Exc) as _e:\n"
        "            _append(_out, _fail(_e))\n"
        "    return _out\n"
    )
    return src, g.consts


def _result(g: Gen, node: Node, params: dict[str, str], plain: bool) -> tuple[Code, str]:
    """Generate `node` and the expression of its result, converted to a plain value if `plain`."""
    code = g.gen(node, dict(params))
    result = code.expr
    if plain and isinstance(node, MapLit | ListLit) and code.expr[:1] in "[{":
        code = g.gen_plain_literal(node, dict(params))  # convert element by element, not the whole
        result = code.expr
    elif plain and code.type not in _SCALARS and not g.copied_json(node):
        conv = g.helper(V.plain)
        result = g.plain_inline(code, conv) if code.type is None else f"{conv}({result})"
    return code, result


def _not_bool(value: object) -> None:
    raise V.CelFailure(f"expected a bool, got {type(value).__name__}")


def _generate_strict(
    node: Node, params: dict[str, str], plain: bool, boolean: bool, budget: int | None, max_size: int | None,
    json_msg: bool = False,
) -> tuple[str, dict[str, object]]:
    g = Gen(params, budget, max_size)
    g.strict = True
    g.json_msg = params.get("msg") if json_msg else None
    code, result = _result(g, node, params, plain)
    if boolean:
        result = g.strict_bool(Code(result, code.type))
    text = "\n".join([*g.lines, result])
    used = [(i, name) for i, name in enumerate(params.values()) if re.search(rf"\b{name}\b", text)]
    if not used:  # a constant: still one value per message
        used = [(0, next(iter(params.values())))]
    columns = ", ".join(f"_b{i}" for i, _ in used)
    targets = ", ".join(name for _, name in used)
    source = f"_zip({columns})" if len(used) > 1 else columns
    g.consts["_zip"] = zip
    if not g.lines:
        return f"def _cel({columns}):\n    return [{result} for {targets} in {source}]\n", g.consts
    if g.charged:  # over budget: the batch goes message by message, where it is that message's error
        g.consts["_Over"] = V.CostExceeded
        body = "\n".join("        " + line for line in [f"    _t0 = {budget}", *g.lines])
        src = (
            f"def _cel({columns}):\n"
            "    _out = []\n"
            "    try:\n"
            f"        for {targets} in {source}:\n"
            f"{body}\n"
            f"            _append(_out, {result})\n"
            "    except _Over:\n"
            "        raise _Defer() from None\n"
            "    return _out\n"
        )
        return src, g.consts
    body = "\n".join("    " + line for line in g.lines)
    src = (
        f"def _cel({columns}):\n"
        "    _out = []\n"
        f"    for {targets} in {source}:\n"
        f"{body}\n"
        f"        _append(_out, {result})\n"
        "    return _out\n"
    )
    return src, g.consts
