"""CEL standard functions the compiler supports: size, string tests, matches, type conversions.

Each function raises `CelFailure` for arguments CEL has no overload for, so the generated code can
call it without checking types first. `FUNCTIONS` maps (name, is_member, arity) to the function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from engine.celc.chrono import (
    ACCESSORS,
    Duration,
    Timestamp,
    format_duration,
    format_timestamp,
    to_duration,
    to_timestamp,
)
from engine.celc.regex import Matcher, PatternError, compile_matcher
from engine.celc.values import INT64_MAX, INT64_MIN, UINT64_MAX, CelFailure, UInt, _kind, no_overload, type_of

__all__ = ["FUNCTIONS", "compile_pattern", "format_double", "lookup", "matches"]

_BYTES = (bytes, bytearray)


def size(v: Any) -> int:
    """size() of a string (code points), bytes, list or map."""
    t = type(v)
    if t is str or t is list or t is dict or t is bytes or t is bytearray:
        return len(v)
    raise no_overload("size", v)


def _strings(fn: str, s: Any, x: Any) -> None:
    if type(s) is not str or type(x) is not str:
        raise no_overload(fn, s, x)


def contains(s: Any, x: Any) -> bool:
    _strings("contains", s, x)
    return x in s


def starts_with(s: Any, x: Any) -> bool:
    _strings("startsWith", s, x)
    return s.startswith(x)


def ends_with(s: Any, x: Any) -> bool:
    _strings("endsWith", s, x)
    return s.endswith(x)


_PATTERNS: dict[str, Matcher] = {}


def compile_pattern(pattern: str) -> Matcher:
    """A matcher for an RE2 pattern (CEL's regex dialect), cached; raises CelFailure if invalid."""
    m = _PATTERNS.get(pattern)
    if m is None:
        try:
            m = compile_matcher(pattern)
        except PatternError as exc:
            raise CelFailure(f"invalid regular expression {pattern!r}: {exc}") from None
        if len(_PATTERNS) < 1024:
            _PATTERNS[pattern] = m
    return m


def matches(s: Any, pattern: Any) -> bool:
    """`s.matches(pattern)`: does the RE2 pattern match anywhere in the string."""
    _strings("matches", s, pattern)
    return compile_pattern(pattern)(s)


_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_HEX_DOUBLE = re.compile(r"\s*[+-]?0[xX][0-9a-fA-F]*\.?[0-9a-fA-F]*(?:[pP][+-]?[0-9]+)?\s*", re.ASCII)


def to_int(v: Any) -> int:
    """int(): from int, uint (in range), double (truncated, in range), string (decimal), bool."""
    t = type(v)
    if t is bool:
        return int(v)
    if t is Timestamp:
        return v.ns // 1_000_000_000
    if t is float:
        if math.isnan(v) or not -9.223372036854775808e18 < v < 9.223372036854775808e18:
            raise CelFailure("double out of int64 range")
        return int(v)
    if t is str:
        if not _INT_TEXT.fullmatch(v):
            raise CelFailure("cannot convert string to int")
        r = int(v)
        if not INT64_MIN <= r <= INT64_MAX:
            raise CelFailure("cannot convert string to int")
        return r
    k = _kind(v)
    if k == "int":
        return int(v)
    if k == "uint":
        if v > INT64_MAX:
            raise CelFailure("uint64 out of int64 range")
        return int(v)
    raise no_overload("int", v)


def to_uint(v: Any) -> UInt:
    """uint(): from int (non-negative), uint, double (truncated, in range), string (decimal)."""
    t = type(v)
    if t is float:
        if math.isnan(v) or not 0.0 <= v < 1.8446744073709551616e19:
            raise CelFailure("double out of uint64 range")
        return UInt(int(v))
    if t is str:
        if not _INT_TEXT.fullmatch(v) or "-" in v:
            raise CelFailure("cannot convert string to uint")
        r = int(v)
        if not 0 <= r <= UINT64_MAX:
            raise CelFailure("cannot convert string to uint")
        return UInt(r)
    if t is bool:
        raise no_overload("uint", v)
    k = _kind(v)
    if k in ("int", "uint"):
        if v < 0:
            raise CelFailure("int64 out of uint64 range")
        return UInt(v)
    raise no_overload("uint", v)


def to_double(v: Any) -> float:
    """double(): from int, uint, double, string (decimal, hex, inf, nan)."""
    t = type(v)
    if t is float:
        return v
    if t is int and INT64_MIN <= v <= UINT64_MAX:
        return float(v)
    if t is str:
        if not v.isascii() or "_" in v:
            raise CelFailure("cannot convert string to double")
        try:
            return float(v)
        except ValueError:
            pass
        if _HEX_DOUBLE.fullmatch(v):
            try:
                return float.fromhex(v)
            except (ValueError, OverflowError):
                pass
        raise CelFailure("cannot convert string to double")
    if t is bool:
        raise no_overload("double", v)
    if _kind(v) in ("int", "uint"):
        return float(v)
    raise no_overload("double", v)


def format_double(d: float) -> str:
    """A double as CEL's string() writes it: shortest round-trip digits, %g-style exponent."""
    if math.isnan(d):
        return "-nan" if math.copysign(1.0, d) < 0 else "nan"
    if math.isinf(d):
        return "inf" if d > 0 else "-inf"
    if d == 0.0:
        return "-0" if math.copysign(1.0, d) < 0 else "0"
    r = repr(d)
    mantissa, _, exp_text = r.partition("e")
    exp = int(exp_text) if exp_text else 0
    sign = "-" if mantissa.startswith("-") else ""
    mantissa = mantissa.lstrip("-")
    int_part, _, frac = mantissa.partition(".")
    digits = (int_part + frac).lstrip("0")
    # decimal exponent of the first significant digit
    if int_part.strip("0"):
        x = len(int_part.lstrip("0")) - 1 + exp
    else:
        x = -(len(frac) - len(frac.lstrip("0"))) - 1 + exp
    digits = digits.rstrip("0") or "0"
    if x < -4 or x >= 6:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{body}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if x >= 0:
        if len(digits) <= x + 1:
            return sign + digits + "0" * (x + 1 - len(digits))
        return sign + digits[: x + 1] + "." + digits[x + 1 :]
    return sign + "0." + "0" * (-x - 1) + digits


def to_string(v: Any) -> str:
    """string(): from string, bool, int, uint, double, bytes (valid UTF-8)."""
    t = type(v)
    if t is str:
        return v
    if t is int and INT64_MIN <= v <= UINT64_MAX:
        return str(v)
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return format_double(v)
    if t in _BYTES:
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise CelFailure("malformed UTF-8 bytes") from None
    if t is Timestamp:
        return format_timestamp(v)
    if t is Duration:
        return format_duration(v)
    if _kind(v) in ("int", "uint"):
        return str(int(v))
    raise no_overload("string", v)


def to_bytes(v: Any) -> bytes:
    """bytes(): from bytes or string (UTF-8)."""
    t = type(v)
    if t is str:
        return v.encode("utf-8")
    if t in _BYTES:
        return bytes(v)
    raise no_overload("bytes", v)


_BOOL_TEXT = {
    "1": True,
    "t": True,
    "true": True,
    "TRUE": True,
    "True": True,
    "0": False,
    "f": False,
    "false": False,
    "FALSE": False,
    "False": False,
}


def to_bool(v: Any) -> bool:
    """bool(): from bool or one of the strings CEL accepts (1, t, true, TRUE, True and negatives)."""
    if type(v) is bool:
        return v
    if type(v) is str:
        r = _BOOL_TEXT.get(v)
        if r is None:
            raise CelFailure(f"type conversion error from string {v!r} to bool")
        return r
    raise no_overload("bool", v)


def dyn(v: Any) -> Any:
    """dyn(): the value itself (only the type checker sees a difference)."""
    return v


FUNCTIONS: dict[tuple[str, bool, int], Callable[..., Any]] = {
    ("size", False, 1): size,
    ("size", True, 0): size,
    ("contains", True, 1): contains,
    ("startsWith", True, 1): starts_with,
    ("endsWith", True, 1): ends_with,
    ("matches", True, 1): matches,
    ("matches", False, 2): matches,
    ("int", False, 1): to_int,
    ("uint", False, 1): to_uint,
    ("double", False, 1): to_double,
    ("string", False, 1): to_string,
    ("bytes", False, 1): to_bytes,
    ("bool", False, 1): to_bool,
    ("dyn", False, 1): dyn,
    ("type", False, 1): type_of,
    ("timestamp", False, 1): to_timestamp,
    ("duration", False, 1): to_duration,
    **{(name, True, n): fn for name, fn in ACCESSORS.items() for n in (0, 1)},
}


def lookup(name: str, member: bool, arity: int) -> Callable[..., Any] | None:
    """The implementation of `name` called with `arity` arguments (as a member function when
    `member`): the standard functions, cel-go's extensions (`engine.celc.ext`) and the pipeline
    library (`engine.celc.library`); None when there is none."""
    from engine.celc.ext import EXTENSIONS
    from engine.celc.library import LIBRARY

    for table in (FUNCTIONS, EXTENSIONS, LIBRARY):
        fn = table.get((name, member, arity)) or table.get((name, member, -1))
        if fn is not None:
            return fn
    return None
