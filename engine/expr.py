"""CEL expressions: compile once per node, evaluate per message.

An expression sees two variables: `msg` (the message body) and `meta` (its metadata).

JSON → CEL mapping (our choice, documented in the README): a JSON integer is a CEL `int`, a JSON
number with a fraction or exponent is a `double`, strings are `string`, arrays `list`, objects
`map`, `null` is `null_type`. CEL has no implicit int/double arithmetic, so `msg.amount * 1.2`
fails when `amount` arrives as `5` rather than `5.0`; write `double(msg.amount) * 1.2`. An
expression whose types are wrong for every input (`1 * 1.2`) is reported offline by `validate`.

The runtime is Google's CEL (cel-expr-python); `engine.celc`, when present, compiles an
expression to a Python closure with the same semantics and is preferred (see issue 10).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["CelError", "EvalError", "Expr", "check_expr", "compile_expr"]


class CelError(Exception):
    """An expression that does not parse or type-check. `line`/`col` are 1-based inside it."""

    def __init__(self, message: str, line: int = 1, col: int = 1):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


class EvalError(Exception):
    """Evaluating an expression failed for one message (missing field, no overload...)."""


_POS = re.compile(r"<input>:(\d+):(\d+): (.*)")


@functools.cache
def _cel() -> tuple[Any, Any, Any]:
    """The runtime's environment and its ERROR and NULL types, on first use: a graph without CEL
    (and `run` of a graph whose expressions all compile) never loads the runtime (issue 20)."""
    import ctypes

    from cel_expr_python import cel

    # cel-expr-python 0.1.3 drops a reference to None for every null it returns or converts; on
    # Python 3.11 the interpreter aborts once None's count reaches zero ("none_dealloc", after ~10**4
    # nulls). Give None the effectively endless count that Python 3.12+ gives it (immortal objects).
    if sys.version_info < (3, 12):
        ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40
    return cel.NewEnv(variables={"msg": cel.Type.DYN, "meta": cel.Type.DYN}), cel.Type.ERROR, cel.Type.NULL


def _parse_error(exc: Exception) -> CelError:
    text = str(exc)
    m = _POS.search(text)
    if not m:
        return CelError(text.removeprefix("INVALID_ARGUMENT: ").strip())
    message = m.group(3).strip()
    return CelError(message, int(m.group(1)), int(m.group(2)))  # CEL's <input>:line:col is 1-based already


class Expr:
    """A compiled expression. Call it with `(body, meta)`; raises `EvalError` on failure.

    `many(msgs)` evaluates a whole batch in one generated comprehension when the compiler covers
    the expression, and returns None when it does not or when any message in the batch fails or
    needs the runtime: the caller then evaluates message by message with `fn`, which gives each
    message its own result or error. The results are the same either way."""

    __slots__ = ("_batch", "_columns", "compiled", "fn", "source")

    def __init__(self, source: str, fn: Callable[[Any, Any], Any], compiled: bool, batch: Any = None):
        self.source = source
        self.fn = fn
        self.compiled = compiled  # True when running as generated Python, False on the runtime
        self._batch = batch.fn if batch is not None else None
        self._columns = batch.columns if batch is not None else ()

    def many(self, msgs: list[Any]) -> list[Any] | None:
        """One value per message (objects with `.body` and `.meta`), or None: see the class."""
        fn = self._batch
        if fn is None or not msgs:
            return None
        columns = self._columns
        try:
            if columns == (0,):
                return fn([m.body for m in msgs])  # type: ignore[no-any-return]
            if columns == (1,):
                return fn([m.meta for m in msgs])  # type: ignore[no-any-return]
            return fn([m.body for m in msgs], [m.meta for m in msgs])  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - some message fails or defers: the caller goes one by one
            return None

    def __call__(self, body: Any, meta: Any = None) -> Any:
        return self.fn(body, meta if meta is not None else {})

    def __repr__(self) -> str:
        return f"Expr({self.source!r}, compiled={self.compiled})"


def _cost_guard(source: str) -> Callable[[Any, Any], None] | None:
    """The runtime's cost limit, checked before it evaluates (it cannot be interrupted): None when
    no message can take `source` over `cel_iterations` steps, else a check that raises `EvalError`
    for a message whose largest list, map or string makes the estimate (engine/celc/cost.py) go over."""
    from engine.celc.cost import has_loops, largest_size, max_assumed_size
    from engine.limits import Limits

    if not has_loops(source):  # linear in the message: bounded by the payload limits
        return None
    bound = Limits.from_env().cel_iterations
    most = max_assumed_size(source, bound)
    if most >= 2**40:
        return None

    def check(body: Any, meta: Any) -> None:
        largest = max(largest_size(body, most), largest_size(meta, most))
        if largest > most:
            raise EvalError(f"CEL cost limit: with a list, map or string of {largest:,} elements in the message the "
                            f"estimated cost is above {bound:,} steps (limit cel_iterations; at most {max(most, 0):,} "
                            "elements fit)")

    return check


def _runtime_fn(program: Any, source: str) -> Callable[[Any, Any], Any]:
    guard = _cost_guard(source)
    _, error_type, null_type = _cel()

    def evaluate(body: Any, meta: Any) -> Any:
        if guard is not None:
            guard(body, meta)
        try:
            value = program.eval(data={"msg": body, "meta": meta})
        except RuntimeError as exc:  # e.g. "Iteration budget exceeded": the runtime's own 10,000 iterations
            raise EvalError(str(exc).removeprefix("INTERNAL: ")) from None
        kind = value.type()
        if kind == error_type:
            raise EvalError(str(value.value()))
        if kind == null_type:  # plain_value() of a null drops a reference to None (cel-expr-python 0.1.3)
            return None
        return value.plain_value()

    return evaluate


def check_expr(source: str) -> None:
    """Parse and type-check `source` only (what `validate` needs); raise `CelError` like `compile_expr`."""
    try:
        _cel()[0].compile(source)
    except RuntimeError as exc:
        raise _parse_error(exc) from None


def compile_expr(source: str, allow_compiler: bool = True, boolean: bool = False) -> Expr:
    """Parse and type-check `source`; raise `CelError` with its position if it is not valid CEL.

    `boolean`: the caller wants a bool (a filter, a route condition); `many` then returns None
    for a batch in which some result is not a bool, so its fast path needs no type check."""
    try:
        program = _cel()[0].compile(source)
    except RuntimeError as exc:
        raise _parse_error(exc) from None
    if allow_compiler:
        try:
            from engine import celc
        except ImportError:  # the compiler is optional: the runtime covers every expression
            celc = None  # type: ignore[assignment]
        if celc is not None:
            fn = celc.try_compile(source)
            if fn is not None:
                return Expr(source, fn, compiled=True, batch=celc.try_compile_strict(source, boolean))
    return Expr(source, _runtime_fn(program, source), compiled=False)
