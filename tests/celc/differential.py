"""Compare the compiler with cel-expr-python on one expression and input: same value (and kind) or
both an error."""

from __future__ import annotations

import math
from typing import Any

from engine.celc import try_compile
from engine.expr import CelError, EvalError, compile_expr

__all__ = ["outcome_of_compiled", "outcome_of_runtime", "same_outcome", "same_value"]


def same_value(a: Any, b: Any) -> bool:
    """Equality that also requires the same Python type (bool is not int, int is not float)."""
    ta, tb = type(a), type(b)
    if {ta, tb} <= {bytes, bytearray}:
        return bytes(a) == bytes(b)
    if ta is not tb:
        return False
    if ta is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if ta is list:
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if ta is dict:
        if len(a) != len(b):
            return False
        for k, v in a.items():
            match = [k2 for k2 in b if same_value(k, k2)]
            if len(match) != 1 or not same_value(v, b[match[0]]):
                return False
        return True
    return bool(a == b)


def outcome_of_runtime(src: str, msg: Any, meta: Any = None) -> tuple[str, Any] | None:
    """('value', v) or ('error', text) from the runtime; None when the expression does not compile."""
    try:
        expr = compile_expr(src, allow_compiler=False)
    except CelError:
        return None
    try:
        return "value", expr(msg, meta)
    except (EvalError, RuntimeError) as exc:  # the runtime raises RuntimeError for duplicate map keys
        return "error", str(exc)


def outcome_of_compiled(src: str, msg: Any, meta: Any = None) -> tuple[str, Any] | None:
    fn = try_compile(src)
    if fn is None:
        return None
    try:
        return "value", fn(msg, meta if meta is not None else {})
    except EvalError as exc:
        return "error", str(exc)


def same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    return a[0] == "error" or same_value(a[1], b[1])
