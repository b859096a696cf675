"""CEL expressions: compile once per node, evaluate per message.

An expression sees two variables: `msg` (the message body) and `meta` (its metadata).

JSON → CEL mapping (our choice, documented in the README): a JSON integer is a CEL `int`, a JSON
number with a fraction or exponent is a `double`, strings are `string`, arrays `list`, objects
`map`, `null` is `null_type`. CEL has no implicit int/double arithmetic, so `msg.amount * 1.2`
fails when `amount` arrives as `5` rather than `5.0`; write `double(msg.amount) * 1.2`. An
expression whose types are wrong for every input (`1 * 1.2`) is reported offline by `validate`.

The runtime is Google's CEL (cel-expr-python); `engine.celc`, when present, compiles an
expression to a Python closure with the same semantics and is preferred.

Every expression of every node gets one environment (`new_env`): CEL's standard library, cel-go's
extensions (strings, math, encoders, lists, sets, regex, optionals, `cel.bind`) and the pipeline
library (`engine.celc.library`: `ts.parse`, `crypto.hmac`, ...). The runtime has its own strings,
math, encoders, optionals and bindings extensions; the rest is declared to it with the compiler's
implementations. The runtime cannot return an optional from a Python function (`Unimplemented
type: 13`), so `regex.extract` evaluates only compiled; `sortBy` is a macro its parser lacks, so it
is type-checked as `map` and must compile.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["MIXED_HINT", "CelError", "EvalError", "Expr", "check_expr", "compile_expr", "new_env"]


class CelError(Exception):
    """An expression that does not parse or type-check. `line`/`col` are 1-based inside it."""

    def __init__(self, message: str, line: int = 1, col: int = 1):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


class EvalError(Exception):
    """Evaluating an expression failed for one message (missing field, no overload...). Arithmetic
    that mixes int and double carries the fix, as `validate` gives it for a typed field."""

    def __init__(self, message: str = ""):
        if _MIXED.search(message):
            message += f"; {MIXED_HINT}"
        super().__init__(message)


MIXED_HINT = "CEL does not mix int and double: convert the int, e.g. double(msg.amount) * 1.2"
_MIXED = re.compile(r"_[-+*/%]_'?(?: applied to)? ?\(?(?:(?:int|int64|uint|uint64), double|double, (?:int|int64|uint|uint64))\)")


@functools.cache
def _types() -> dict[str, Any]:
    from cel_expr_python import cel

    return {
    "dyn": cel.Type.DYN, "string": cel.Type.STRING, "int": cel.Type.INT, "bool": cel.Type.BOOL,
    "double": cel.Type.DOUBLE, "bytes": cel.Type.BYTES, "timestamp": cel.Type.TIMESTAMP,
    "list": cel.Type.List(cel.Type.DYN), "list_int": cel.Type.List(cel.Type.INT),
    "list_string": cel.Type.List(cel.Type.STRING), "map": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
    "optional": cel.Type.AbstractType("optional_type", [cel.Type.DYN]),
    }


def _runtime_impl(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` (a compiler implementation) as the runtime calls it: datetimes in and out as
    timestamps, failures as the function's error."""
    import datetime as dt

    from engine.celc.chrono import Timestamp
    from engine.celc.values import OPTIONAL_RESULT

    def impl(*args: Any) -> Any:
        args = tuple(_ts_in(a, Timestamp) if isinstance(a, dt.datetime) else a for a in args)
        out = fn(*args)
        if type(out) is Timestamp:
            return out.to_python()
        if type(out).__name__ == "Optional":
            raise EvalError(f"{name}: returns an optional, which only the compiled path evaluates; "
                            f"{OPTIONAL_RESULT.split(': ', 1)[1]}")
        return out

    return impl


def _ts_in(d: Any, timestamp: type) -> Any:
    import datetime as dt

    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    delta = d - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return timestamp((delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000)


def _declarations() -> list[Any]:
    """The functions the runtime lacks (extensions it has no library for, the pipeline library)."""
    from cel_expr_python import cel

    from engine.celc.ext import RUNTIME_SIGNATURES
    from engine.celc.functions import lookup
    from engine.celc.library import SIGNATURES

    types = _types()
    decls = []
    for name, sigs in {**RUNTIME_SIGNATURES, **SIGNATURES}.items():
        overloads = []
        for i, (member, params, result) in enumerate(sigs):
            fn = lookup(name, member, len(params) - member)
            assert fn is not None, name
            overloads.append(cel.Overload(f"streamdag_{name}_{i}", types[result], [types[p] for p in params],
                                          is_member=member, impl=_runtime_impl(fn, name)))
        decls.append(cel.FunctionDecl(name, overloads))
    return decls


def new_env(variables: dict[str, Any] | None = None, container: str | None = None) -> Any:
    """The CEL environment every node's expressions get (`variables`: name -> cel.Type; by
    default `msg` and `meta`, both dyn)."""
    from cel_expr_python import cel
    from cel_expr_python.ext import ext_bindings, ext_encoders, ext_math, ext_optional, ext_strings

    _immortal_none()
    if variables is None:
        variables = {"msg": cel.Type.DYN, "meta": cel.Type.DYN}
    extensions = [ext_strings.ExtStrings(), ext_math.ExtMath(), ext_encoders.ExtEncoders(),
                  ext_bindings.ExtBindings(), ext_optional.ExtOptional(), cel.CelExtension("streamdag", _declarations())]
    return cel.NewEnv(variables=variables, extensions=extensions, container=container)

_POS = re.compile(r"<input>:(\d+):(\d+): (.*)")


@functools.cache
def _cel() -> tuple[Any, Any, Any]:
    """The runtime's environment and its ERROR and NULL types, on first use: a graph without CEL
    (and `run` of a graph whose expressions all compile) never loads the runtime."""

    from cel_expr_python import cel

    return new_env(), cel.Type.ERROR, cel.Type.NULL


@functools.cache
def _immortal_none() -> None:
    """cel-expr-python 0.1.3 drops a reference to None for every null it returns or converts; on
    Python 3.11 the interpreter aborts once None's count reaches zero ("none_dealloc", after ~10**4
    nulls). Give None the effectively endless count that Python 3.12+ gives it (immortal objects)."""
    import ctypes

    if sys.version_info < (3, 12):
        ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40


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

    def many(self, msgs: list[Any], bodies: list[Any] | None = None) -> list[Any] | None:
        """One value per message (objects with `.body` and `.meta`), or None: see the class.
        `bodies`: the messages' bodies, when the caller has them (several expressions over one
        batch share the list)."""
        fn = self._batch
        if fn is None or not msgs:
            return None
        columns = self._columns
        try:
            if columns == (0,):
                return fn([m.body for m in msgs] if bodies is None else bodies)  # type: ignore[no-any-return]
            if columns == (1,):
                return fn([m.meta for m in msgs])  # type: ignore[no-any-return]
            return fn([m.body for m in msgs] if bodies is None else bodies,  # type: ignore[no-any-return]
                      [m.meta for m in msgs])
        except Exception:  # noqa: BLE001 - some message fails or defers: the caller goes one by one
            return None

    def many_bodies(self, batch: Any) -> list[Any] | None:
        """`many` for an `engine.message.Bodies`: one value per message, or None."""
        fn = self._batch
        if fn is None or not batch.bodies:
            return None
        columns = self._columns
        try:
            if columns == (0,):
                return fn(batch.bodies)  # type: ignore[no-any-return]
            if columns == (1,):
                return fn(batch.metas())  # type: ignore[no-any-return]
            return fn(batch.bodies, batch.metas())  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - as in `many`
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
        try:
            if kind == error_type:
                raise EvalError(str(value.value()).removeprefix("UNKNOWN: "))
            if kind == null_type:  # plain_value() of a null drops a reference to None (cel-expr-python 0.1.3)
                return None
            return value.plain_value()
        except TypeError:  # an optional (which also compares equal to ERROR) has no Python form
            from engine.celc.values import OPTIONAL_RESULT

            raise EvalError(OPTIONAL_RESULT) from None

    return evaluate


def check_expr(source: str, typed: bool = False) -> None:
    """Parse and type-check `source` only (what `validate` needs); raise `CelError` like `compile_expr`.
    `typed`: the caller knows the runtime accepts it (`engine.compile.celcheck`), so only the checks
    beyond its type checker run, and the runtime is not loaded."""
    check = source.replace(".sortBy(", ".map(") if ".sortBy(" in source else source  # a macro only celc has
    try:
        if not typed:
            _cel()[0].compile(check)
    except RuntimeError as exc:
        err = _parse_error(exc)
        raise _offline_issue(source, rejected=True) or err from None
    issue = _offline_issue(source, rejected=False)
    if issue is not None:
        raise issue


def compile_expr(source: str, allow_compiler: bool = True, boolean: bool = False, json_bodies: bool = False) -> Expr:
    """Parse and type-check `source`; raise `CelError` with its position if it is not valid CEL.

    `boolean`: the caller wants a bool (a filter, a route condition); `many` then returns None
    for a batch in which some result is not a bool, so its fast path needs no type check.

    `json_bodies`: every body is a value as orjson decodes it (a node's `ctx.json_bodies`, from the
    plan): the compiled code returns the body's fields it copies as they are, without the checks
    that convert a result to plain values (they cannot fail or change such a value)."""
    if allow_compiler:
        typed = _compiled_if_typed(source, boolean, json_bodies)
        if typed is not None:
            return typed
    check = source.replace(".sortBy(", ".map(") if ".sortBy(" in source else source  # a macro only celc has
    try:
        program = _cel()[0].compile(check)
    except RuntimeError as exc:
        err = _parse_error(exc)
        raise _offline_issue(source, rejected=True) or err from None
    issue = _offline_issue(source, rejected=False)
    if issue is not None:
        raise issue
    if check is not source:  # the runtime cannot evaluate sortBy: compiled or not at all
        from engine import celc

        fn = celc.try_compile(source, json_bodies)
        if fn is None:
            raise CelError(f"sortBy is only available compiled, and this expression is not: {celc.explain(source)}")
        return Expr(source, fn, compiled=True, batch=celc.try_compile_strict(source, boolean, json_bodies))
    if allow_compiler:
        try:
            from engine import celc
        except ImportError:  # the compiler is optional: the runtime covers every expression
            celc = None  # type: ignore[assignment]
        if celc is not None:
            fn = celc.try_compile(source, json_bodies)
            if fn is not None:
                return Expr(source, fn, compiled=True, batch=celc.try_compile_strict(source, boolean, json_bodies))
    return Expr(source, _runtime_fn(program, source), compiled=False)


def _compiled_if_typed(source: str, boolean: bool, json_bodies: bool = False) -> Expr | None:
    """The compiled `Expr` of an expression `validate`'s quick check types (the runtime would accept
    it: engine/compile/celcheck.py) and the compiler covers, without building the runtime's
    environment (~20 ms of a start; a message the compiled code defers builds it then); None for
    any other, which `compile_expr` checks on the runtime as before. Raises what `check_expr` raises."""
    try:
        from engine import celc
        from engine.compile.celcheck import surely_valid
    except ImportError:  # the compiler is optional
        return None
    if not surely_valid(source):
        return None
    fn = celc.try_compile(source, json_bodies)
    if fn is None:
        return None
    check_expr(source, typed=True)  # the checks beyond the type checker (key arguments)
    return Expr(source, fn, compiled=True, batch=celc.try_compile_strict(source, boolean, json_bodies))


_STANDARD = {  # (name, is_member) -> arities of what the runtime has that no table of the compiler lists
    ("has", False): {1}, ("all", True): {2}, ("exists", True): {2}, ("exists_one", True): {2},
    ("map", True): {2, 3}, ("filter", True): {2}, ("cel.bind", False): {3}, ("sortBy", True): {2},
    ("@sortByAssociatedKeys", True): {1}, ("optMap", True): {2}, ("optFlatMap", True): {2}, ("getDayOfYear", True): {0, 1}, ("getDayOfMonth", True): {0, 1},
}


def _known() -> dict[tuple[str, bool], set[int]]:
    from engine.celc.ext import EXTENSIONS
    from engine.celc.functions import FUNCTIONS
    from engine.celc.library import LIBRARY

    known: dict[tuple[str, bool], set[int]] = {k: set(v) for k, v in _STANDARD.items()}
    for table in (FUNCTIONS, EXTENSIONS, LIBRARY):
        for name, member, arity in table:
            known.setdefault((name, member), set()).add(arity)
    return known


# the namespaces of `engine.celc.library.KEY_FUNCTIONS` (a test checks): an expression that names
# none of them has no key argument to check
_KEY_NAMESPACES = ("crypto",)


def _offline_issue(source: str, rejected: bool) -> CelError | None:
    """What `validate` reports beyond the type checker: when the checker `rejected` the expression,
    an unknown function (with did-you-mean) or a known one with the wrong number of arguments (its
    own message says only "undeclared reference"); always, a key argument that is not an env/file
    reference."""
    if not rejected and not any(ns in source for ns in _KEY_NAMESPACES):
        return None  # no key argument to check: the function tables need not be loaded
    try:
        from engine.celc.library import KEY_FUNCTIONS, key_reference_issue
        from engine.celc.parser import (
            Bind,
            Call,
            Comprehension,
            Ident,
            Lit,
            Node,
            ParseError,
            Unsupported,
            parse,
        )

        tree = parse(source)
    except (ImportError, ParseError, Unsupported, RecursionError):
        return None
    known = _known()
    namespaces = {name.rpartition(".")[0] for name, _ in known if "." in name}
    issues: list[str] = []

    def visit(node: Node, bound: frozenset[str]) -> None:
        if isinstance(node, Call) and not node.fn.startswith(("_", "@", "!", "-")):
            target: Node | None = node.target
            name = node.fn
            if isinstance(target, Ident) and target.name not in bound and target.name in namespaces:
                name = f"{target.name}.{name}"
                target = None
            member, arity = target is not None, len(node.args)
            arities = known.get((name, member))
            if rejected and arities is None:
                from engine.registry import closest

                options = [n + ("()" if not m else "") for n, m in known if m == member and not n.startswith("@")]
                hint = closest(name + ("()" if not member else ""), options)
                what = f"function '{name}'" if not member else f"member function '.{name}()'"
                issues.append(f"unknown {what}" + (f" (did you mean '{hint.removesuffix('()')}'?)" if hint else ""))
            elif rejected and arities is not None and arity not in arities and -1 not in arities:
                counts = " or ".join(str(a) for a in sorted(arities))
                issues.append(f"'{name}' takes {counts} argument{'s' if counts != '1' else ''}, got {arity}")
            key_at = next((i for fn, i in KEY_FUNCTIONS if fn == name and not member), None)
            if key_at is not None and key_at < arity:
                key = node.args[key_at]
                problem = key_reference_issue(key.value if isinstance(key, Lit) and key.kind == "string" else None)
                if problem:
                    issues.append(f"{name}: {problem}")
        if isinstance(node, Comprehension | Bind):
            inner = bound | {node.var}
            visit(node.range if isinstance(node, Comprehension) else node.init, bound)
            for child in (node.body, getattr(node, "pred", None)):
                if child is not None:
                    visit(child, inner)
            return
        for child in _children(node):
            visit(child, bound)

    visit(tree, frozenset({"msg", "meta"}))
    return CelError("; ".join(dict.fromkeys(issues))) if issues else None


def _children(node: Any) -> list[Any]:
    from dataclasses import fields

    out: list[Any] = []
    for f in fields(node):
        v = getattr(node, f.name)
        if isinstance(v, tuple):
            for x in v:
                out.extend(x if isinstance(x, tuple) else (x,))
        elif v is not None and hasattr(v, "__dataclass_fields__"):
            out.append(v)
    return out
