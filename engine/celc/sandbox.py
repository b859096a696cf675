"""Check generated source before it is compiled: it may only do what the CEL expression says.

The check is structural (a whitelist over Python's AST): no attribute access, no imports, no
lambdas, f-strings or starred calls, and comprehensions only as a plain loop over a batch (no
conditions); names are limited to the function's own parameters and temporaries and to the
constants the generator bound. The code then runs with empty
`__builtins__`, so even a generator bug cannot reach `open`, `__import__` or an object's attributes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable

__all__ = ["UnsafeCode", "check_source"]

_NODES = (
    ast.Module,
    ast.FunctionDef,
    ast.arguments,
    ast.arg,
    ast.Return,
    ast.Try,
    ast.ExceptHandler,
    ast.Raise,
    ast.If,
    ast.For,
    ast.Break,
    ast.Continue,
    ast.Assign,
    ast.AugAssign,
    ast.Expr,
    ast.Name,
    ast.Constant,
    ast.BinOp,
    ast.BoolOp,
    ast.Compare,
    ast.UnaryOp,
    ast.IfExp,
    ast.Call,
    ast.Subscript,
    ast.List,
    ast.Dict,
    ast.Tuple,
    ast.NamedExpr,
    ast.ListComp,
    ast.comprehension,
    ast.Load,
    ast.Store,
    ast.operator,
    ast.boolop,
    ast.cmpop,
    ast.unaryop,
)
_LOCAL = re.compile(r"_[tv][0-9]+|_e")
_CONSTANT_TYPES = (str, bytes, int, float, bool, type(None))


class UnsafeCode(Exception):
    """Generated code failed the whitelist (a bug in the generator; the expression falls back)."""


def check_source(src: str, params: Iterable[str], names: Iterable[str]) -> None:
    """Raise UnsafeCode unless `src` is one function using only whitelisted syntax and names."""
    tree = ast.parse(src)
    allowed = set(params) | set(names)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise UnsafeCode("expected exactly one function")
    fn = tree.body[0]
    if fn.decorator_list or fn.returns or fn.args.vararg or fn.args.kwarg or fn.args.defaults:
        raise UnsafeCode("unexpected function signature")
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise UnsafeCode(f"disallowed syntax: {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id not in allowed and not _LOCAL.fullmatch(node.id):
            raise UnsafeCode(f"disallowed name: {node.id}")
        if isinstance(node, ast.Constant) and type(node.value) not in _CONSTANT_TYPES:
            raise UnsafeCode(f"disallowed constant: {node.value!r}")
        if isinstance(node, ast.Call) and node.keywords:
            raise UnsafeCode("keyword arguments")
        if isinstance(node, ast.comprehension) and (
            node.ifs or node.is_async or not isinstance(node.target, ast.Name | ast.Tuple)
            or not isinstance(node.iter, ast.Name | ast.Call)
        ):
            raise UnsafeCode("unexpected comprehension")
        if isinstance(node, ast.ExceptHandler) and node.name not in (None, "_e"):
            raise UnsafeCode("unexpected exception binding")
