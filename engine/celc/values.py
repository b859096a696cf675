"""CEL values in Python and the operations the generated code calls when no inline fast path applies.

Representation: int -> `int` (int64; an input int in [2**63, 2**64) is a CEL uint, as the runtime
reads it), uint -> `UInt`, double -> `float`, bool -> `bool`, string -> `str`, bytes -> `bytes`
(input `bytearray` too), null -> `None`, list -> `list`, map -> `dict`. Every failure raises
`CelFailure`; `Defer` asks the caller to evaluate the message on the full runtime instead (cases whose
result depends on the runtime's internals, such as its hash order when iterating a map).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "UINT64_MAX",
    "CelFailure",
    "CelType",
    "CostExceeded",
    "Defer",
    "ErrBox",
    "UInt",
    "add",
    "div",
    "eq",
    "ge",
    "gt",
    "index",
    "is_in",
    "iter_range",
    "le",
    "lt",
    "make_map",
    "mod",
    "mul",
    "ne",
    "neg",
    "no_overload",
    "not_",
    "pick_error",
    "plain",
    "select_has",
    "sub",
    "type_name",
    "type_of",
]

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
OPTIONAL_RESULT = "the result is an optional value: end the expression with .orValue(default) or .value()"


class CelFailure(Exception):
    """A CEL evaluation error (no matching overload, overflow, missing key...)."""


class CostExceeded(BaseException):
    """The evaluation went over its budget (limits `cel_iterations`, `cel_value_size`).

    Not an `Exception`: `&&`, `||` and the macros absorb errors, and must not absorb this one, or
    a message could get a result from an evaluation that was cut short. The generated function
    translates it into that message's `EvalError`."""


class Defer(Exception):
    """This message must be evaluated on the full runtime (the compiled code cannot match it exactly)."""


class UInt(int):
    """A CEL uint (distinct from int for overload resolution)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{int(self)}u"


class ErrBox:
    """An error held as a value, so `&&`, `||` and the macros can absorb it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


class CelType:
    """A CEL type value, such as the result of `type(1)` or the identifier `int`."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other: object) -> bool:
        return type(other) is CelType and other.name == self.name

    def __hash__(self) -> int:
        return hash(("type", self.name))

    def __repr__(self) -> str:
        return self.name


TYPE_NAMES = ("int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type")
_NUMERIC = (int, float, UInt)
_BYTES = (bytes, bytearray)


def type_name(v: Any) -> str:
    """The CEL type name of a Python value, for error messages."""
    t = type(v)
    if t is bool:
        return "bool"
    if t is int:
        return "int" if INT64_MIN <= v <= INT64_MAX else "uint"
    if t is CelType:
        return "type"
    return {
        UInt: "uint",
        float: "double",
        str: "string",
        bytes: "bytes",
        bytearray: "bytes",
        type(None): "null_type",
        list: "list",
        dict: "map",
    }.get(t) or _TIME_NAMES.get(t.__name__, t.__name__)


_TIME_NAMES = {"Timestamp": "google.protobuf.Timestamp", "Duration": "google.protobuf.Duration"}


def type_of(v: Any) -> CelType:
    """`type(v)`."""
    return CelType(type_name(v))


def no_overload(fn: str, *args: Any) -> CelFailure:
    """The error for a function applied to arguments of types it has no overload for."""
    return CelFailure(f"no matching overload for '{fn}' applied to ({', '.join(type_name(a) for a in args)})")


def _kind(v: Any) -> str:
    """Numeric kind with the runtime's reading of big input ints: int, uint, double or other."""
    t = type(v)
    if t is int:
        if INT64_MIN <= v <= INT64_MAX:
            return "int"
        if 0 <= v <= UINT64_MAX:
            return "uint"
        raise CelFailure(f"integer value {v} out of range")
    if t is UInt:
        return "uint"
    if t is float:
        return "double"
    return "other"


def _int_result(r: int) -> int:
    if INT64_MIN <= r <= INT64_MAX:
        return r
    raise CelFailure("integer overflow")


def _uint_result(r: int) -> UInt:
    if 0 <= r <= UINT64_MAX:
        return UInt(r)
    raise CelFailure("unsigned integer overflow")


def _arith(fn: str, a: Any, b: Any) -> tuple[str, Any, Any]:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka == "other":
        raise no_overload(fn, a, b)
    return ka, a, b


def add(a: Any, b: Any) -> Any:
    """CEL `+`: numbers of one kind, strings, bytes, lists."""
    ta, tb = type(a), type(b)
    if ta is int and tb is int and INT64_MIN <= a <= INT64_MAX and INT64_MIN <= b <= INT64_MAX:
        return _int_result(a + b)
    if ta is float and tb is float:
        return a + b
    if ta is str and tb is str:
        return a + b
    if ta is list and tb is list:
        return a + b
    if ta in _BYTES and tb in _BYTES:
        return bytes(a) + bytes(b)
    if ta.__name__ in _TIME_NAMES or tb.__name__ in _TIME_NAMES:
        return _time_arith("_+_", a, b)
    k, a, b = _arith("_+_", a, b)
    if k == "int":
        return _int_result(a + b)
    if k == "uint":
        return _uint_result(a + b)
    return a + b


def sub(a: Any, b: Any) -> Any:
    """CEL `-` on numbers of one kind."""
    if type(a) is int and type(b) is int and INT64_MIN <= a <= INT64_MAX and INT64_MIN <= b <= INT64_MAX:
        return _int_result(a - b)
    if type(a) is float and type(b) is float:
        return a - b
    if type(a).__name__ in _TIME_NAMES or type(b).__name__ in _TIME_NAMES:
        return _time_arith("_-_", a, b)
    k, a, b = _arith("_-_", a, b)
    if k == "int":
        return _int_result(a - b)
    if k == "uint":
        return _uint_result(a - b)
    return a - b


def _time_arith(fn: str, a: Any, b: Any) -> Any:
    """Timestamp and duration arithmetic (timestamp ± duration, timestamp - timestamp, duration ± duration)."""
    from engine.celc.chrono import Duration, Timestamp

    ta, tb = type(a), type(b)
    if fn == "_+_":
        if ta is Timestamp and tb is Duration:
            return Timestamp(a.ns + b.ns)
        if ta is Duration and tb is Timestamp:
            return Timestamp(a.ns + b.ns)
        if ta is Duration and tb is Duration:
            return Duration(_int_result(a.ns + b.ns))  # arithmetic stays within int64 nanoseconds
    else:
        if ta is Timestamp and tb is Duration:
            return Timestamp(a.ns - b.ns)
        if ta is Timestamp and tb is Timestamp:
            return Duration(_int_result(a.ns - b.ns))
        if ta is Duration and tb is Duration:
            return Duration(_int_result(a.ns - b.ns))
    raise no_overload(fn, a, b)


def mul(a: Any, b: Any) -> Any:
    """CEL `*` on numbers of one kind."""
    if type(a) is int and type(b) is int and INT64_MIN <= a <= INT64_MAX and INT64_MIN <= b <= INT64_MAX:
        return _int_result(a * b)
    if type(a) is float and type(b) is float:
        return a * b
    k, a, b = _arith("_*_", a, b)
    if k == "int":
        return _int_result(a * b)
    if k == "uint":
        return _uint_result(a * b)
    return a * b


def div(a: Any, b: Any) -> Any:
    """CEL `/`: integer division truncates toward zero; double division follows IEEE 754."""
    if type(a) is int and type(b) is int and 0 <= a <= INT64_MAX and 0 < b <= INT64_MAX:
        return a // b  # the common case, where floor division is truncation
    k, a, b = _arith("_/_", a, b)
    if k == "double":
        if b == 0.0:
            if a == 0.0 or math.isnan(a):
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    if b == 0:
        raise CelFailure("divide by zero")
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    return _int_result(q) if k == "int" else UInt(q)


def mod(a: Any, b: Any) -> Any:
    """CEL `%` on int or uint; the result takes the sign of the dividend."""
    if type(a) is int and type(b) is int and 0 <= a <= INT64_MAX and 0 < b <= INT64_MAX:
        return a % b  # the common case, where Python's % is CEL's
    k, a, b = _arith("_%_", a, b)
    if k == "double":
        raise no_overload("_%_", a, b)
    if b == 0:
        raise CelFailure("modulus by zero")
    if k == "int" and a == INT64_MIN and b == -1:
        raise CelFailure("integer overflow")  # as the runtime does (the quotient overflows)
    r = abs(a) % abs(b)
    if a < 0:
        r = -r
    return r if k == "int" else UInt(r)


def neg(a: Any) -> Any:
    """CEL unary `-` on int or double."""
    k = _kind(a)
    if k == "double":
        return -a
    if k == "int":
        return _int_result(-a)
    raise no_overload("-_", a)


def not_(a: Any) -> bool:
    """CEL `!` on bool."""
    if a is True:
        return False
    if a is False:
        return True
    raise no_overload("!_", a)


NOERR = object()  # "no error seen yet" in generated code (None is a CEL value, so it cannot mark that)


def pick_error(current: Any, new: Any) -> Any:
    """The error to keep when an operand fails: the first one, unless a later one must defer to
    the runtime (the runtime might find a deciding value there)."""
    if current is NOERR or (type(new) is ErrBox and type(new.exc) is Defer):
        return new
    return current


def _err_of(v: Any, fn: str) -> BaseException:
    return v.exc if type(v) is ErrBox else no_overload(fn, v)


def eq(a: Any, b: Any) -> bool:
    """CEL equality: numbers compare across int/uint/double, other kinds only with their own kind."""
    ta, tb = type(a), type(b)
    if ta is tb and ta is not list and ta is not dict:
        return bool(a == b)
    if ta in _NUMERIC and tb in _NUMERIC:
        if ta is float or tb is float:
            return float(a) == float(b)
        return bool(a == b)
    if ta in _BYTES and tb in _BYTES:
        return bytes(a) == bytes(b)
    if ta is list and tb is list:
        return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
    if ta is dict and tb is dict:
        if len(a) != len(b):
            return False
        for k, v in a.items():
            w = map_get(b, k)
            if w is _MISSING or not eq(v, w):
                return False
        return True
    return False


def ne(a: Any, b: Any) -> bool:
    """CEL `!=`."""
    return not eq(a, b)


def _ordered(fn: str, a: Any, b: Any) -> tuple[Any, Any]:
    """The operands as Python compares them like CEL: an int or uint meeting a double is converted
    to double first (so 2**63 - 1 is not less than 2.0**63)."""
    ta, tb = type(a), type(b)
    if ta in _NUMERIC and tb in _NUMERIC:
        _kind(a), _kind(b)
        if ta is float and tb is not float:
            return a, float(b)
        if tb is float and ta is not float:
            return float(a), b
        return a, b
    if (ta is tb and (ta in (str, bool) or ta.__name__ in _TIME_NAMES)) or (ta in _BYTES and tb in _BYTES):
        return a, b
    raise no_overload(fn, a, b)


def lt(a: Any, b: Any) -> bool:
    """CEL `<`."""
    a, b = _ordered("_<_", a, b)
    return bool(a < b)


def le(a: Any, b: Any) -> bool:
    """CEL `<=`."""
    a, b = _ordered("_<=_", a, b)
    return bool(a <= b)


def gt(a: Any, b: Any) -> bool:
    """CEL `>`."""
    a, b = _ordered("_>_", a, b)
    return bool(a > b)


def ge(a: Any, b: Any) -> bool:
    """CEL `>=`."""
    a, b = _ordered("_>=_", a, b)
    return bool(a >= b)


_MISSING = object()


def _key_kind(k: Any) -> str:
    t = type(k)
    if t is str:
        return "string"
    if t is bool:
        return "bool"
    if t is int or t is UInt:
        return "num"
    raise CelFailure(f"invalid map key type: {type_name(k)}")


def map_get(m: dict, k: Any) -> Any:
    """Look `k` up in map `m` with CEL key equality (1 == 1u == 1.0, but true != 1)."""
    if type(k) is str:
        return m.get(k, _MISSING)
    if type(k) is float:
        if not k.is_integer():
            return _MISSING
        k = int(k)
    kk = _key_kind(k)
    for key, value in m.items():
        if _key_kind(key) == kk and key == k:
            return value
    return _MISSING


def index(c: Any, i: Any) -> Any:
    """CEL `c[i]` on a list (int/uint index, or an integral double) or a map."""
    tc = type(c)
    if tc is list:
        ti = type(i)
        if ti is float:
            if not i.is_integer():
                raise CelFailure("index error: expected integer type, got double")
            i = int(i)
        elif ti is not int and ti is not UInt:
            raise no_overload("_[_]", c, i)
        if 0 <= i < len(c):
            return c[i]
        raise CelFailure(f"index out of range: index={i} size={len(c)}")
    if tc is dict:
        if type(i) not in (str, bool, int, UInt, float):
            raise no_overload("_[_]", c, i)
        v = map_get(c, i)
        if v is _MISSING:
            raise CelFailure(f"no such key: {i!r}")
        return v
    if tc.__name__ == "Optional":  # opt[i]: an optional of the element
        from engine.celc.ext import opt_index

        return opt_index(c, i)
    raise no_overload("_[_]", c, i)


def is_in(x: Any, c: Any) -> bool:
    """CEL `x in c`: element of a list, or key of a map."""
    tc = type(c)
    if tc is list:
        return any(eq(x, y) for y in c)
    if tc is dict:
        if type(x) not in (str, bool, int, UInt, float):
            raise no_overload("@in", x, c)
        return map_get(c, x) is not _MISSING
    raise no_overload("@in", x, c)


def select_has(m: Any, field: str) -> bool:
    """`has(m.field)` on a map."""
    if type(m) is dict:
        return field in m
    if type(m).__name__ == "Optional":  # has(opt.f): a value, and it has the field
        return bool(m.has) and select_has(m.value, field)
    raise CelFailure("has() applied to a value that is not a map")


def make_map(pairs: list[tuple[Any, Any]]) -> dict:
    """A CEL map literal: keys must be int, uint, bool or string and distinct."""
    out: dict = {}
    for k, v in pairs:
        if type(k) is str:
            if k in out:
                raise CelFailure(f"duplicate key in map: {k!r}")
            out[k] = v
            continue
        if type(k) is float:
            raise CelFailure("invalid map key type: double")
        kind = _key_kind(k)
        if k in out:  # Python equates 1, 1u and True; CEL only 1 and 1u (a duplicate key)
            if any(_key_kind(o) != kind for o in out if o == k):
                raise Defer()
            raise CelFailure(f"duplicate key in map: {k!r}")
        out[k] = v
    return out


def iter_range(r: Any, keep_order: bool) -> Any:
    """What a macro iterates: a list's elements or a map's keys. Map order is the runtime's hash
    order, so macros whose result depends on order (map, filter) defer maps to the runtime."""
    if type(r) is list:
        return r
    if type(r) is dict:
        if keep_order and len(r) > 1:
            raise Defer()
        return list(r)
    raise no_overload("<iter_range>", r)


def plain(v: Any) -> Any:
    """The result as cel-expr-python's plain_value() gives it (uint -> int, bytes -> bytearray)."""
    t = type(v)
    if t is str or t is bool or t is float or v is None:
        return v
    if t is int:
        if INT64_MIN <= v <= UINT64_MAX:
            return v
        raise CelFailure(f"integer value {v} out of range")
    if t is UInt:
        return int(v)
    if t is list:
        return [plain(x) for x in v]
    if t is dict:
        out = {}
        for k, x in v.items():
            _key_kind(k)
            out[plain(k)] = plain(x)
        return out
    if t is bytes or t is bytearray:
        return bytearray(v)
    if t.__name__ in _TIME_NAMES:
        return v.to_python()
    if t is CelType:
        raise Defer()  # the runtime's own type objects are the result
    if t.__name__ == "Optional":
        raise CelFailure(OPTIONAL_RESULT)
    raise CelFailure(f"non-CEL value of type {t.__name__}")
