"""Types from a JSON Schema: check an expression against the schema its input is known to match.

`schema_issues(source, schema)` walks the expression with `msg` typed by `schema` (the schema of a
`validate` node's valid output, or of a source that declares one) and returns what is certainly
wrong for every message that schema admits:

- arithmetic mixing an `integer` field (a CEL int: JSON integers arrive as int) with a double,
  which CEL has no overload for (`msg.amount * 1.2`), with the fix (`use double(msg.amount)`);
- a field the schema does not declare, with did-you-mean, when the schema forbids other fields
  (`additionalProperties: false`) or the name is close to a declared one (a typo).

A `number` field may arrive as int or double, so it is not an error on its own; anything the
walk cannot type is left alone (no false alarms). Local `$ref`s (`#/...`) are followed.
"""

from __future__ import annotations

import difflib
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

__all__ = ["schema_issues"]

_JSON_TYPES = {"integer": "int", "string": "string", "boolean": "bool", "array": "list", "object": "map",
               "null": "null"}
_ARITH = {"_+_": "+", "_-_": "-", "_*_": "*", "_/_": "/", "_%_": "%"}
_CONVERSIONS = {"double": "double", "int": "int", "string": "string", "size": "int", "uint": "uint",
                "bool": "bool", "bytes": "bytes"}


class _Typed:
    """What the walk knows of a node: its CEL type (None: unknown), the schema fragment its value
    matches (None: unknown) and, for `msg.a.b` chains, its text."""

    __slots__ = ("schema", "text", "type")

    def __init__(self, type_: str | None = None, schema: Any = None, text: str | None = None):
        self.type, self.schema, self.text = type_, schema, text


_UNKNOWN = _Typed()


class _Walk:
    def __init__(self, root: Any):
        self.root = root
        self.issues: list[str] = []

    def resolve(self, schema: Any, depth: int = 0) -> Any:
        """`schema` with a local `$ref` followed (None when it cannot be)."""
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth < 20:
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return None
            target: Any = self.root
            for part in filter(None, ref[1:].split("/")):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    return None
                target = target[part]
            schema, depth = target, depth + 1
        return schema if isinstance(schema, dict) else None

    def typed(self, schema: Any, text: str | None) -> _Typed:
        schema = self.resolve(schema)
        kind = schema.get("type") if schema else None
        return _Typed(_JSON_TYPES.get(kind) if isinstance(kind, str) else None, schema, text)

    def field(self, operand: _Typed, name: str, has: bool) -> _Typed:
        schema = operand.schema
        text = f"{operand.text}.{name}" if operand.text else None
        if not isinstance(schema, dict) or schema.get("type") not in (None, "object"):
            return _Typed(text=text)
        props = schema.get("properties")
        if not isinstance(props, dict):
            return _Typed(text=text)
        if name in props:
            return self.typed(props[name], text)
        if not has and "patternProperties" not in schema:  # a pattern may admit the name: say nothing
            close = difflib.get_close_matches(name, [str(p) for p in props], n=1, cutoff=0.75)
            if schema.get("additionalProperties") is False or close:
                where = operand.text or "the value"
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.issues.append(f"{where} has no field '{name}' in the input's schema{hint}")
        return _Typed(text=text)

    def walk(self, node: Node, scope: dict[str, _Typed]) -> _Typed:
        if isinstance(node, Lit):
            return _Typed(node.kind, None, None)
        if isinstance(node, Ident):
            return scope.get(node.name, _UNKNOWN)
        if isinstance(node, Select):
            return self.field(self.walk(node.operand, scope), node.field, node.test)
        if isinstance(node, ListLit | MapLit):
            for child in node.items if isinstance(node, ListLit) else [x for kv in node.entries for x in kv]:
                self.walk(child, scope)
            return _Typed("list" if isinstance(node, ListLit) else "map")
        if isinstance(node, Bind):
            value = self.walk(node.init, scope)
            return self.walk(node.body, {**scope, node.var: value})
        if isinstance(node, Comprehension):
            rng = self.walk(node.range, scope)
            items = rng.schema.get("items") if isinstance(rng.schema, dict) and rng.type == "list" else None
            var = self.typed(items, node.var) if isinstance(items, dict) else _Typed(text=None)
            inner = {**scope, node.var: var}
            if node.pred is not None:
                self.walk(node.pred, inner)
            body = self.walk(node.body, inner)
            return _Typed("list") if node.kind in ("map", "filter") else _Typed(
                "bool" if node.kind in ("all", "exists", "exists_one") else body.type)
        if isinstance(node, Call):
            return self.call(node, scope)
        return _UNKNOWN

    def call(self, node: Call, scope: dict[str, _Typed]) -> _Typed:
        args = [self.walk(a, scope) for a in node.args]
        if node.target is not None and not (isinstance(node.target, Ident) and node.target.name not in scope):
            self.walk(node.target, scope)
        if node.fn in _ARITH and len(args) == 2:
            a, b = args
            kinds = {a.type, b.type}
            if kinds == {"int", "double"}:
                side = a if a.type == "int" else b
                what = side.text or "the int operand"
                self.issues.append(
                    f"'{_ARITH[node.fn]}' of an int and a double: {what} is an integer in the input's schema and "
                    f"CEL does not mix int and double; use double({side.text or '...'})")
                return _UNKNOWN
            if a.type == b.type and a.type in ("int", "double", "string", "list"):
                return _Typed(a.type)
            return _UNKNOWN
        if node.fn == "_?_:_" and len(args) == 3:
            return _Typed(args[1].type) if args[1].type == args[2].type else _UNKNOWN
        if node.fn == "-_" and args:
            return _Typed(args[0].type) if args[0].type in ("int", "double") else _UNKNOWN
        if node.target is None and node.fn in _CONVERSIONS:
            return _Typed(_CONVERSIONS[node.fn])
        if node.fn in ("_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "@in", "_&&_", "_||_", "!_"):
            return _Typed("bool")
        return _UNKNOWN


def schema_issues(source: str, schema: Any) -> list[str]:
    """What is certainly wrong in `source` for every message matching `schema` (see the module)."""
    if not isinstance(schema, dict):
        return []
    try:
        tree = parse(source)
    except (ParseError, Unsupported, RecursionError):
        return []
    walk = _Walk(schema)
    try:
        walk.walk(tree, {"msg": walk.typed(schema, "msg")})
    except RecursionError:
        return []
    return list(dict.fromkeys(walk.issues))
