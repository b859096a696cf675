"""The CEL compiler behind `engine.celc` (see that package's docstring)."""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from engine.celc import values as V
from engine.celc.codegen import generate
from engine.celc.parser import ParseError, Unsupported, parse
from engine.celc.sandbox import UnsafeCode, check_source

__all__ = ["StrictBatch", "compile_program", "compile_strict_batch", "explain", "python_source", "try_compile",
           "try_compile_batch", "try_compile_strict"]

Evaluator = Callable[..., Any]


def _eval_error(exc: BaseException) -> Exception:
    """Translate an exception raised while evaluating into `engine.expr.EvalError`."""
    from engine.expr import EvalError

    if isinstance(exc, EvalError):
        return exc
    if isinstance(exc, V.CelFailure | V.CostExceeded):
        return EvalError(str(exc))
    if isinstance(exc, KeyError):
        return EvalError(f"no such key: {exc.args[0]!r}" if exc.args else "no such key")
    if isinstance(exc, TypeError):
        return EvalError(_type_error_text(str(exc)))
    if isinstance(exc, IndexError):
        return EvalError("index out of range")
    if isinstance(exc, ZeroDivisionError):
        return EvalError("divide by zero")
    if isinstance(exc, RecursionError):
        return EvalError("value nested too deeply")
    return EvalError(f"{type(exc).__name__}: {exc}")


_TYPE_ERRORS = (  # Python's wording of a failed inline operation -> what it means in CEL
    (
        re.compile(r"'(\w+)' object is not subscriptable|(\w+) indices must be"),
        "field selection on {} (not a map)",
    ),
    (re.compile(r"object of type '(\w+)' has no len"), "no matching overload for 'size' applied to ({})"),
    (re.compile(r"descriptor '(startswith|endswith|__contains__)'"), "no matching overload for '{}'"),
    (re.compile(r"(startswith|endswith) first arg|'in <string>' requires"), "no matching overload for '{}'"),
)
_CEL_NAMES = {
    "startswith": "startsWith",
    "endswith": "endsWith",
    "__contains__": "contains",
    None: "contains",
    "NoneType": "null",
    "str": "string",
    "float": "double",
    "dict": "map",
    "string": "string",
}


def _type_error_text(text: str) -> str:
    for pattern, template in _TYPE_ERRORS:
        m = pattern.search(text)
        if m:
            name = next((g for g in m.groups() if g), None)
            return template.format(_CEL_NAMES.get(name, name))
    return f"no matching overload ({text})"


def python_source(source: str, variables: Sequence[str] = ("msg", "meta"), macros: bool = True) -> str:
    """The generated Python source for `source` (for inspection and tests), with the run-time limits
    as they are set now; raises if unsupported."""
    params = {name: f"_a{i}" for i, name in enumerate(variables)}
    budget, max_size = _limits()
    src, _ = generate(parse(source, macros), params, budget=budget, max_size=max_size)
    return src


def compile_program(
    source: str,
    variables: Sequence[str],
    runtime: Callable[..., Any] | None,
    macros: bool = True,
    batch: bool = False,
    budget: int | None = None,
    max_size: int | None = None,
    json_msg: bool = False,
) -> Evaluator:
    """Compile `source` to a function of the `variables` (positional, in order).

    `runtime` evaluates the same arguments on the full runtime; it is called for a message the
    generated code defers. With `batch` the function takes one sequence per variable and returns a
    list of results, an EvalError in place of each failed one. Raises ParseError, Unsupported or
    UnsafeCode. `budget` and `max_size`: the run-time limits; `json_msg`: every `msg` is a value as
    orjson decodes it (see `codegen.generate`).
    """
    params = {name: f"_a{i}" for i, name in enumerate(variables)}
    src, consts = generate(parse(source, macros), params, batch=batch, budget=budget, max_size=max_size,
                           json_msg=json_msg)

    def no_runtime(*_args: Any) -> Any:
        raise _eval_error(V.CelFailure("expression needs the full CEL runtime for this input"))

    run = runtime or no_runtime

    def runtime_or_error(*args: Any) -> Any:
        try:
            return run(*args)
        except Exception as exc:  # noqa: BLE001 - any failure is that message's error entry
            return _eval_error(exc)

    names = {**consts, "_Defer": V.Defer, "_runtime": run, "_fail": _eval_error}
    if batch:
        names["_runtime_or_error"] = runtime_or_error
    return _load(src, params, names)


def _load(src: str, params: dict[str, str], names: dict[str, Any]) -> Evaluator:
    """Check generated source against the whitelist, compile it and return its `_cel` function,
    which runs without builtins. Raises UnsafeCode or Unsupported."""
    check_source(src, [*params.values(), *(f"_b{i}" for i in range(len(params))), "_out"], names)
    scope: dict[str, Any] = {"__builtins__": {}, **names}
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for ''['x'], which CEL defines as an error
            warnings.simplefilter("ignore")
            code = compile(src, "<cel>", "exec")
    except (SyntaxError, MemoryError, RecursionError) as exc:  # e.g. more than 20 nested blocks
        raise Unsupported(f"generated code too deeply nested ({exc})") from None
    exec(code, scope)
    return scope["_cel"]  # type: ignore[no-any-return]


class StrictBatch:
    """A whole batch in one comprehension: `fn(*columns)`, one list per variable it reads, in
    `columns` order (0: bodies, 1: metas), e.g. `fn(bodies)` for an expression of `msg` only.

    It raises on the first message that fails or needs the runtime; the caller then evaluates that
    batch message by message with the per-message function, which gives each message its own
    result or error. The results are the same either way; only the cost differs."""

    __slots__ = ("columns", "fn", "source")

    def __init__(self, fn: Callable[..., list[Any]], columns: tuple[int, ...], source: str):
        self.fn, self.columns, self.source = fn, columns, source


def compile_strict_batch(
    source: str, macros: bool = True, boolean: bool = False, variables: Sequence[str] = ("msg", "meta"),
    budget: int | None = None, max_size: int | None = None, json_msg: bool = False,
) -> StrictBatch:
    """Compile `source` to a `StrictBatch` over `variables` (column i is variable i); raises like
    `compile_program`. With `boolean`, a message whose result is not a bool also makes the batch raise."""
    params = {name: f"_a{i}" for i, name in enumerate(variables)}
    src, consts = generate(parse(source, macros), params, batch=True, strict=True, boolean=boolean,
                           budget=budget, max_size=max_size, json_msg=json_msg)
    signature = src[: src.index(")")]
    columns = tuple(i for i in range(len(params)) if re.search(rf"\b_b{i}\b", signature))
    return StrictBatch(_load(src, params, {**consts, "_Defer": V.Defer}), columns, src)


def _limits() -> tuple[int, int]:
    """The run-time limits (`cel_iterations`, `cel_value_size`) as they are set now."""
    from engine.limits import Limits

    limits = Limits.from_env()
    return limits.cel_iterations, limits.cel_value_size


def try_compile_strict(source: str, boolean: bool = False, json_msg: bool = False) -> StrictBatch | None:
    """The `StrictBatch` for `source`, or None when the compiler does not cover it. `json_msg`: every
    body is a value as orjson decodes it (see `codegen.generate`)."""
    return _strict_cached(source, boolean, *_limits(), json_msg)


@functools.lru_cache(maxsize=1024)
def _strict_cached(source: str, boolean: bool, budget: int, max_size: int, json_msg: bool = False
                   ) -> StrictBatch | None:
    if _compile_cached(source, False, budget, max_size, json_msg)[0] is None:  # the one compile_expr made
        return None
    try:
        return compile_strict_batch(source, boolean=boolean, budget=budget, max_size=max_size, json_msg=json_msg)
    except (ParseError, Unsupported, UnsafeCode, RecursionError, V.CelFailure):
        return None


def _lazy_runtime(source: str) -> Callable[[Any, Any], Any]:
    """The runtime evaluator for `source`, built on first use (only deferred messages need it)."""
    holder: list[Callable[[Any, Any], Any]] = []

    def evaluate(body: Any, meta: Any) -> Any:
        if not holder:
            from engine.expr import compile_expr

            holder.append(compile_expr(source, allow_compiler=False).fn)
        try:
            return holder[0](body, meta)
        except (
            RuntimeError
        ) as exc:  # the runtime raises instead of returning some errors (duplicate map keys)
            raise _eval_error(V.CelFailure(str(exc))) from None

    return evaluate


@functools.lru_cache(maxsize=1024)
def _compile_cached(source: str, batch: bool, budget: int, max_size: int, json_msg: bool = False
                    ) -> tuple[Evaluator | None, str | None]:
    try:
        fn = compile_program(source, ("msg", "meta"), _lazy_runtime(source), batch=batch, budget=budget,
                             max_size=max_size, json_msg=json_msg)
    except (ParseError, Unsupported, UnsafeCode, RecursionError, V.CelFailure) as exc:
        kind = (
            "the compiler's parser rejects it"
            if isinstance(exc, ParseError)
            else "not supported by the compiler"
        )
        return None, f"{kind}: {exc}"
    return fn, None


def try_compile(source: str, json_msg: bool = False) -> Evaluator | None:
    """A compiled `(body, meta) -> value` for `source`, or None when the runtime must evaluate it.
    `json_msg`: every body is a value as orjson decodes it (see `codegen.generate`)."""
    return _compile_cached(source, False, *_limits(), json_msg)[0]


def try_compile_batch(source: str) -> Callable[[Sequence[Any], Sequence[Any]], list[Any]] | None:
    """A compiled `(bodies, metas) -> results` evaluating `source` over a whole batch in one loop,
    or None when the runtime must evaluate it. `results[i]` is the value for `bodies[i]` (with
    `metas[i]`), or the `engine.expr.EvalError` that message raised."""
    return _compile_cached(source, True, *_limits())[0]


def explain(source: str) -> str | None:
    """Why `source` is not compiled to Python (None when it is)."""
    return _compile_cached(source, False, *_limits())[1]
