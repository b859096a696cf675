"""cel-go's extension libraries, compiled: strings, math, encoders, lists, sets, regex, optionals.

Semantics follow cel-go's `ext` package (`ext/strings.go`, `math.go`, `encoders.go`, `lists.go`,
`sets.go`, `regex.go`) and `common/types/optional.go`; every index is in code points. Each function
raises `CelFailure` for arguments it has no overload for or cannot evaluate, with the reason, and
`Defer` for the few inputs whose exact result only the runtime gives (`format` of a value kind
other than the common ones). `EXTENSIONS` maps (name, is_member, arity) to the function like
`functions.FUNCTIONS`; arity -1 is variadic. Namespaced functions (`math.greatest`) are keyed by
their full name as globals.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import re2

from engine.celc import values as V
from engine.celc.regex import translate
from engine.celc.values import INT64_MAX, INT64_MIN, UINT64_MAX, CelFailure, UInt, no_overload, type_name

__all__ = ["EXTENSIONS", "Optional", "opt_index", "opt_select"]


# -- optionals -----------------------------------------------------------------------------------
class Optional:
    """CEL's `optional_type(T)`: a value or none. Selecting a field of an optional gives an optional."""

    __slots__ = ("has", "value")

    def __init__(self, has: bool, value: Any = None):
        self.has, self.value = has, value

    def __eq__(self, other: object) -> bool:
        if type(other) is not Optional:
            return False
        return self.has == other.has and (not self.has or V.eq(self.value, other.value))

    def __hash__(self) -> int:
        return hash(self.has)

    def __getitem__(self, field: Any) -> Optional:  # `opt.field` / `opt["field"]`: chains optionally
        return opt_select(self, field)

    def __repr__(self) -> str:
        return f"optional.of({self.value!r})" if self.has else "optional.none()"


NONE = Optional(False)


def opt_select(v: Any, field: Any) -> Optional:
    """`v.?field` (and `v[?key]` on a map): optional.of(v.field) when present, else optional.none()."""
    if type(v) is Optional:
        if not v.has:
            return NONE
        v = v.value
    if type(v) is dict:
        hit = V.map_get(v, field)
        return NONE if hit is V._MISSING else Optional(True, hit)
    raise CelFailure(f"optional selection on {type_name(v)} (not a map)")


def opt_index(v: Any, i: Any) -> Optional:
    """`v[?i]`: the element or entry, as an optional; none when out of range or missing."""
    if type(v) is Optional:
        if not v.has:
            return NONE
        v = v.value
    if type(v) is list:
        if type(i) is float and i.is_integer():
            i = int(i)
        if type(i) not in (int, UInt):
            raise no_overload("_[?_]", v, i)
        return Optional(True, v[i]) if 0 <= i < len(v) else NONE
    if type(v) is dict:
        if type(i) not in (str, bool, int, UInt, float):  # no such key can exist (the runtime: none)
            return NONE
        return opt_select(v, i)
    raise no_overload("_[?_]", v, i)


def _zero(v: Any) -> bool:
    return v is None or v is False or (type(v) in (int, UInt, float) and v == 0) or (
        type(v) in (str, bytes, bytearray, list, dict) and len(v) == 0)


def _optional(fn: str, o: Any) -> Optional:
    if type(o) is not Optional:
        raise no_overload(fn, o)
    return o


ABSENT = object()  # what `opt_unwrap` returns for optional.none()


def opt_unwrap(o: Any, fn: str) -> Any:
    """The value of optional `o`, or `ABSENT` when it has none (for optMap, optFlatMap)."""
    o = _optional(fn, o)
    return o.value if o.has else ABSENT


def opt_flat(o: Any) -> Optional:
    return _optional("optFlatMap", o)


def opt_value(o: Any) -> Any:
    o = _optional("value", o)
    if not o.has:
        raise CelFailure("optional.none() dereference")
    return o.value


def opt_or(o: Any, other: Any) -> Any:
    o = _optional("or", o)
    if o.has:
        return o
    return _optional("or", other)


def opt_or_value(o: Any, default: Any) -> Any:
    o = _optional("orValue", o)
    return o.value if o.has else default


# -- strings -------------------------------------------------------------------------------------
def _str(fn: str, *args: Any) -> None:
    for a in args:
        if type(a) is not str:
            raise no_overload(fn, *args)


def _int(fn: str, *args: Any) -> None:
    for a in args:
        if type(a) is not int or not INT64_MIN <= a <= INT64_MAX:  # a bigger input int is a uint
            raise no_overload(fn, *args)


def char_at(s: Any, i: Any) -> str:
    _str("charAt", s)
    _int("charAt", i)
    if not 0 <= i <= len(s):
        raise CelFailure(f"index out of range: {i}")
    return s[i : i + 1]


def index_of(s: Any, sub: Any, offset: Any = 0) -> int:
    _str("indexOf", s, sub)
    _int("indexOf", offset)
    if not 0 <= offset <= len(s):
        raise CelFailure(f"index out of range: {offset}")
    return s.find(sub, offset)


def last_index_of(s: Any, sub: Any, offset: Any = None) -> int:
    _str("lastIndexOf", s, sub)
    if offset is None:
        return s.rfind(sub)
    _int("lastIndexOf", offset)
    if not 0 <= offset <= len(s):  # as the runtime (cel-go now clamps an offset past the end)
        raise CelFailure(f"index out of range: {offset}")
    return s.rfind(sub, 0, offset + len(sub))


def _ascii(s: Any, fn: str, upper: bool) -> str:
    _str(fn, s)
    if s.isascii():
        return s.upper() if upper else s.lower()
    return s.translate(_UPPER if upper else _LOWER)


_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_UPPER = {c + 32: c for c in range(ord("A"), ord("Z") + 1)}


def replace(s: Any, old: Any, new: Any, n: Any = -1) -> str:
    _str("replace", s, old, new)
    _int("replace", n)
    return s.replace(old, new, n if n >= 0 else -1)


def split(s: Any, sep: Any, n: Any = -1) -> list[str]:
    _str("split", s, sep)
    _int("split", n)
    if n == 0:
        return []
    if n == 1:
        return [s]
    if sep == "":
        chars = list(s) or [""]
        if 0 < n < len(chars):
            return [*chars[: n - 1], "".join(chars[n - 1 :])]
        return chars
    return s.split(sep, n - 1 if n > 0 else -1)


def substring(s: Any, start: Any, end: Any = None) -> str:
    _str("substring", s)
    if end is None:
        end = len(s)
    _int("substring", start, end)
    if not 0 <= start <= len(s):
        raise CelFailure(f"index out of range: {start}")
    if not 0 <= end <= len(s):
        raise CelFailure(f"index out of range: {end}")
    if end < start:
        raise CelFailure(f"invalid substring range. start: {start}, end: {end}")
    return s[start:end]


_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def trim(s: Any) -> str:
    _str("trim", s)
    return s.strip(_SPACE)  # Go's unicode.IsSpace, not Python's isspace (which adds \x1c-\x1f)


def join(items: Any, sep: Any = "") -> str:
    if type(items) is not list:
        raise no_overload("join", items, sep)
    _str("join", sep)
    for x in items:
        if type(x) is not str:
            raise CelFailure(f"join: list element is {type_name(x)}, not string")
    return sep.join(items)


_QUOTE = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
          "\\": "\\\\", '"': '\\"'}


def quote(s: Any) -> str:
    _str("strings.quote", s)
    return '"' + "".join(_QUOTE.get(c, c) for c in s) + '"'


def reverse(v: Any) -> Any:
    if type(v) is str or type(v) is list:
        return v[::-1]
    raise no_overload("reverse", v)


def _format_value(verb: str, v: Any, precision: int | None) -> str:
    t = type(v)
    if verb == "s":
        if t is str:
            return v  # type: ignore[no-any-return]
        if t is bool:
            return "true" if v else "false"
        if t is int or t is UInt:
            return str(int(v))
        if t is float:
            raise V.Defer()  # the runtime writes doubles its own way (%g-like, 6 digits)
        if v is None:
            return "null"
        if t is bytes or t is bytearray:
            try:
                return bytes(v).decode()
            except UnicodeDecodeError:
                raise V.Defer() from None
        raise V.Defer()  # lists, maps, timestamps: the runtime's rendering
    if verb == "d":
        if t is int or t is UInt:
            return str(int(v))
        if t is float:
            raise V.Defer()  # cel-go fails, the runtime writes it as %f: the engine's result is the runtime's
        raise CelFailure(f"error during formatting: decimal clause can only be used on integers, was given {type_name(v)}")
    if verb in "fe":
        if t is int or t is UInt:
            v = float(v)
        elif t is not float:
            what = "fixed-point" if verb == "f" else "scientific"
            raise CelFailure(f"error during formatting: {what} clause can only be used on doubles, was given "
                             f"{type_name(v)}")
        if not math.isfinite(v):
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        return f"{v:.{6 if precision is None else precision}{verb}}"
    if verb in "xXob":
        if t is str and verb in "xX":
            out = v.encode().hex()
        elif t is bytes or t is bytearray:
            if verb not in "xX":
                raise CelFailure(f"error during formatting: only integers and bools can be formatted as {verb}")
            out = bytes(v).hex()
        elif t is int or t is UInt or (t is bool and verb == "b"):
            n = int(v)
            body = format(abs(n), {"x": "x", "X": "x", "o": "o", "b": "b"}[verb])
            out = ("-" if n < 0 else "") + body
        else:
            raise CelFailure(f"error during formatting: integer clause can only be used on integers, was given "
                             f"{type_name(v)}")
        return out.upper() if verb == "X" else out
    raise CelFailure(f"could not parse formatting clause: unrecognized formatting clause \"{verb}\"")


def format_(fmt: Any, args: Any) -> str:
    """`"%s-%d".format([a, b])`: %s %d %f %e %x %X %o %b, `%.Nf`/`%.Ne`, `%%`."""
    _str("format", fmt)
    if type(args) is not list:
        raise no_overload("format", fmt, args)
    out: list[str] = []
    i, n, k = 0, len(fmt), 0
    while i < n:
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        i += 1
        if i < n and fmt[i] == "%":
            out.append("%")
            i += 1
            continue
        precision = None
        if i < n and fmt[i] == ".":
            j = i + 1
            while j < n and fmt[j].isdigit():
                j += 1
            precision = int(fmt[i + 1 : j] or 0)
            i = j
        if i >= n:
            raise CelFailure("could not parse formatting clause: unexpected end of string")
        if k >= len(args):
            raise CelFailure(f"index {k} out of range")
        out.append(_format_value(fmt[i], args[k], precision))
        k += 1
        i += 1
    return "".join(out)


# -- math ----------------------------------------------------------------------------------------
def _numbers(fn: str, args: tuple[Any, ...]) -> list[Any]:
    items = list(args[0]) if len(args) == 1 and type(args[0]) is list else list(args)
    if not items:
        raise CelFailure(f"{fn}(list) argument must not be empty")
    for x in items:
        if type(x) not in (int, UInt, float):
            raise CelFailure(f"{fn}(list) argument must be numeric, got {type_name(x)}" if len(args) == 1
                             else str(no_overload(fn, *args)))
    return items


def greatest(*args: Any) -> Any:
    items = _numbers("math.greatest", args)
    best = items[0]
    for x in items[1:]:
        if V.gt(x, best):
            best = x
    return best


def least(*args: Any) -> Any:
    items = _numbers("math.least", args)
    best = items[0]
    for x in items[1:]:
        if V.lt(x, best):
            best = x
    return best


def _double(fn: str, x: Any) -> float:
    if type(x) is not float:
        raise no_overload(fn, x)
    return x  # type: ignore[no-any-return]


def _uint(x: Any) -> Any:
    """`x` as `UInt` when CEL reads it as a uint (an input int above int64), else `x`."""
    return UInt(x) if type(x) is int and x > INT64_MAX and V._kind(x) == "uint" else x


def m_abs(x: Any) -> Any:
    x = _uint(x)
    t = type(x)
    if t is float:
        return abs(x)
    if t is UInt:
        return x
    if t is int:
        if x == INT64_MIN:
            raise CelFailure("integer overflow")
        return abs(x)
    raise no_overload("math.abs", x)


def _signed(r: float, x: float) -> float:
    return r if r else math.copysign(0.0, x)  # ceil(-0.5) is -0.0, as in C


def m_ceil(x: Any) -> float:
    x = _double("math.ceil", x)
    return _signed(float(math.ceil(x)), x) if math.isfinite(x) else x


def m_floor(x: Any) -> float:
    x = _double("math.floor", x)
    return _signed(float(math.floor(x)), x) if math.isfinite(x) else x


def m_round(x: Any) -> float:
    x = _double("math.round", x)
    if not math.isfinite(x):
        return x
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # exact (Sterbenz): half away from zero, as C's round()
        r += 1
    return math.copysign(float(r), x)


def m_trunc(x: Any) -> float:
    x = _double("math.trunc", x)
    return _signed(float(math.trunc(x)), x) if math.isfinite(x) else x


def m_sign(x: Any) -> Any:
    x = _uint(x)
    t = type(x)
    if t is float:
        return x if math.isnan(x) else (1.0 if x > 0 else -1.0 if x < 0 else 0.0)
    if t is UInt:
        return UInt(1 if x else 0)
    if t is int:
        return (x > 0) - (x < 0)
    raise no_overload("math.sign", x)


def m_is_nan(x: Any) -> bool:
    return math.isnan(_double("math.isNaN", x))


def m_is_inf(x: Any) -> bool:
    return math.isinf(_double("math.isInf", x))


def m_is_finite(x: Any) -> bool:
    return math.isfinite(_double("math.isFinite", x))


def m_sqrt(x: Any) -> float:
    if type(x) not in (int, UInt, float):
        raise no_overload("math.sqrt", x)
    x = float(x)
    return math.sqrt(x) if x >= 0 else math.nan


def _bits(fn: str, op: Callable[[int, int], int]) -> Callable[[Any, Any], Any]:
    def bit(a: Any, b: Any) -> Any:
        a, b = _uint(a), _uint(b)
        if type(a) is int and type(b) is int:
            return op(a, b)
        if type(a) is UInt and type(b) is UInt:
            return UInt(op(a, b))
        raise no_overload(fn, a, b)

    return bit


def bit_not(a: Any) -> Any:
    a = _uint(a)
    if type(a) is int:
        return ~a
    if type(a) is UInt:
        return UInt(a ^ UINT64_MAX)
    raise no_overload("math.bitNot", a)


def _shift(fn: str, left: bool) -> Callable[[Any, Any], Any]:
    def shift(a: Any, n: Any) -> Any:
        a, n = _uint(a), _uint(n)
        if type(n) is not int or type(a) not in (int, UInt):
            raise no_overload(fn, a, n)
        if n < 0:
            raise CelFailure(f"{fn}() negative offset: {n}")
        if n >= 64:
            return UInt(0) if type(a) is UInt else 0
        u = int(a) & UINT64_MAX
        r = (u << n) & UINT64_MAX if left else u >> n  # a logical shift, on int too (cel-go)
        if type(a) is UInt:
            return UInt(r)
        return r - (1 << 64) if r > INT64_MAX else r

    return shift


# -- encoders ------------------------------------------------------------------------------------
def b64_encode(b: Any) -> str:
    if type(b) not in (bytes, bytearray):
        raise no_overload("base64.encode", b)
    return base64.b64encode(bytes(b)).decode("ascii")


_B64_SPACE = {ord(c): None for c in " \t\n\r\v\f"}


def b64_decode(s: Any) -> bytes:
    _str("base64.decode", s)
    s = s.translate(_B64_SPACE)  # ASCII whitespace is skipped, as the runtime does
    try:
        if len(s) % 4 and "=" not in s:  # cel-go accepts unpadded input too
            s = s + "=" * (-len(s) % 4)
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CelFailure(f"base64.decode: invalid base64 input ({exc})") from None


# -- lists and sets ------------------------------------------------------------------------------
def _list(fn: str, v: Any, *rest: Any) -> list[Any]:
    if type(v) is not list:
        raise no_overload(fn, v, *rest)
    return v  # type: ignore[no-any-return]


def l_slice(v: Any, start: Any, end: Any) -> list[Any]:
    v = _list("slice", v, start, end)
    _int("slice", start, end)
    if start < 0 or end < 0:
        raise CelFailure(f"cannot slice({start}, {end}), negative indexes not supported")
    if start > end:
        raise CelFailure(f"cannot slice({start}, {end}), start index must be less than or equal to end index")
    if end > len(v):
        raise CelFailure(f"cannot slice({start}, {end}), list is length {len(v)}")
    return v[start:end]


def l_flatten(v: Any, depth: Any = 1) -> list[Any]:
    v = _list("flatten", v)
    _int("flatten", depth)
    if depth < 0:
        raise CelFailure("level must be non-negative")
    out: list[Any] = []
    for x in v:
        if type(x) is list and depth > 0:
            out.extend(l_flatten(x, depth - 1))
        else:
            out.append(x)
    return out


def l_range(n: Any) -> list[int]:
    from engine.limits import Limits

    _int("lists.range", n)
    bound = Limits.from_env().cel_value_size
    if n > bound:
        raise CelFailure(f"lists.range({n:,}): more than {bound:,} elements (limit cel_value_size)")
    return list(range(max(n, 0)))


_SORTABLE = (int, UInt, float, str, bool, bytes, bytearray)


def _sort_key_check(fn: str, keys: list[Any]) -> None:
    if not keys:
        return
    first = type_name(keys[0])
    for k in keys:
        t = type(k)
        if t not in _SORTABLE and t.__name__ not in ("Timestamp", "Duration"):
            raise CelFailure(f"{fn}: list elements must be comparable, got {type_name(k)}")
        if type_name(k) != first:  # as cel-go: one type, so [1, 2u] and [1, 2.0] do not sort
            raise CelFailure(f"{fn}: list elements must have the same type ({first} and {type_name(k)})")


def _cmp(a: Any, b: Any) -> int:
    return -1 if V.lt(a, b) else (1 if V.gt(a, b) else 0)


def l_sort(v: Any) -> list[Any]:
    v = _list("sort", v)
    _sort_key_check("sort", v)
    return sorted(v, key=functools.cmp_to_key(_cmp))


def l_sort_by_keys(v: Any, keys: Any) -> list[Any]:
    v = _list("sortBy", v)
    _sort_key_check("sortBy", keys)
    order = sorted(range(len(v)), key=functools.cmp_to_key(lambda i, j: _cmp(keys[i], keys[j])))
    return [v[i] for i in order]


class _NoKey(Exception):
    """A value with no hashable form whose equality is CEL's (a list, a map, a huge int...)."""


def _key(v: Any) -> Any:
    """A hashable stand-in for `v` that is equal exactly where CEL's equality is (1 == 1u == 1.0,
    but true != 1 and NaN != NaN); raises _NoKey for values compared one by one instead."""
    t = type(v)
    if t is str or v is None:
        return v
    if t is bool:
        return (bool, v)
    if t is int or t is UInt:
        if -(2**53) <= v <= 2**53:  # beyond, an int meets a double as a double: compare one by one
            return int(v)
        raise _NoKey
    if t is float:
        return object() if v != v else v  # NaN equals nothing
    if t is bytes or t is bytearray:
        return (bytes, bytes(v))
    raise _NoKey


def _keys(items: list[Any]) -> list[Any] | None:
    try:
        return [_key(x) for x in items]
    except _NoKey:
        return None


def _pairs_bounded(fn: str, a: list[Any], b: list[Any]) -> None:
    """Comparing one by one costs len(a) * len(b): bounded by the limit `cel_iterations`."""
    from engine.limits import Limits

    bound = Limits.from_env().cel_iterations
    if len(a) * len(b) > bound:
        raise CelFailure(f"{fn}: {len(a):,} x {len(b):,} comparisons of lists or maps, above {bound:,} "
                         "(limit cel_iterations)")


def l_distinct(v: Any) -> list[Any]:
    v = _list("distinct", v)
    keys = _keys(v)
    if keys is not None:
        seen: set[Any] = set()
        out = []
        for x, k in zip(v, keys):
            if k not in seen:
                seen.add(k)
                out.append(x)
        return out
    _pairs_bounded("distinct", v, v)
    out = []
    for x in v:
        if not any(V.eq(x, y) for y in out):
            out.append(x)
    return out


def l_first(v: Any) -> Optional:
    v = _list("first", v)
    return Optional(True, v[0]) if v else NONE


def l_last(v: Any) -> Optional:
    v = _list("last", v)
    return Optional(True, v[-1]) if v else NONE


def _sets(fn: str, a: Any, b: Any) -> tuple[set[Any] | None, list[Any] | None]:
    """The keys of `a` as a set and of `b` as a list, or (None, None) to compare one by one."""
    _list(fn, a, b), _list(fn, b, a)
    if len(a) * len(b) <= 32:  # small: comparing pairs is cheaper than hashing
        return None, None
    ka, kb = _keys(a), _keys(b)
    if ka is None or kb is None:
        _pairs_bounded(fn, a, b)
        return None, None
    return set(ka), kb


def s_contains(a: Any, b: Any) -> bool:
    ka, kb = _sets("sets.contains", a, b)
    if ka is not None and kb is not None:
        return all(k in ka for k in kb)
    return all(any(V.eq(x, y) for y in a) for x in b)


def s_equivalent(a: Any, b: Any) -> bool:
    return s_contains(a, b) and s_contains(b, a)


def s_intersects(a: Any, b: Any) -> bool:
    ka, kb = _sets("sets.intersects", a, b)
    if ka is not None and kb is not None:
        return any(k in ka for k in kb)
    return any(any(V.eq(x, y) for y in a) for x in b)


# -- regex (RE2) ---------------------------------------------------------------------------------
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> Any:
    """A compiled pattern with RE2's meaning: Python's `re` where `regex.translate` proves the
    meaning identical and backtracking bounded (~5x faster per call), else RE2 (linear time)."""
    try:
        rx = re2.compile(pattern, options=_RE2_OPTIONS)  # validates the pattern with RE2 in every case
    except re2.error as exc:
        raise CelFailure(f"invalid regular expression {pattern!r}: {exc}") from None
    py = translate(pattern)
    if py is not None:
        try:
            return re.compile(py, re.ASCII)
        except re.error:
            pass
    return rx


def _finditer(rx: Any, s: str) -> Any:
    """The matches of `rx` in `s` as Go's regexp finds them (cel-go): an empty match right after
    the previous match is skipped (Python and the re2 binding keep it: `a*` in "baaac")."""
    pos, prev_end, n = 0, -1, len(s)
    while pos <= n:
        m = rx.search(s, pos)
        if m is None:
            return
        a, b = m.span()
        if a == b == prev_end:
            pos = a + 1
            continue
        yield m
        prev_end = b
        pos = b if b > a else b + 1


def _replacement(repl: str, groups: int) -> list[tuple[bool, Any]]:
    """`repl` as (is_group, text or group number) parts: `\\N` a group (0-9), `\\\\` a backslash."""
    parts: list[tuple[bool, Any]] = []
    i = 0
    while i < len(repl):
        c = repl[i]
        if c != "\\":
            parts.append((False, c))
            i += 1
            continue
        if i + 1 >= len(repl):
            raise CelFailure(f"regex.replace: invalid replacement string: '{repl}' \\ not allowed at end")
        d = repl[i + 1]
        if d == "\\":
            parts.append((False, "\\"))
        elif d.isdigit() and d.isascii():
            if int(d) > groups:
                raise CelFailure(f"regex.replace: replacement string references group {d} but regex has only "
                                 f"{groups} group(s)")
            parts.append((True, int(d)))
        else:
            raise CelFailure(f"regex.replace: invalid replacement string: '{repl}' \\ must be followed by a digit "
                             "or \\")
        i += 2
    return parts


def rx_replace(s: Any, pattern: Any, repl: Any, count: Any = -1) -> str:
    _str("regex.replace", s, pattern, repl)
    _int("regex.replace", count)
    if count == 0:  # before the pattern is even compiled, as cel-go
        return s  # type: ignore[no-any-return]
    rx = _regex(pattern)
    parts: list[tuple[bool, Any]] | None = None  # checked at the first match: no match, no error (cel-go)
    literal: str | None = None
    out: list[str] = []
    last = 0
    for k, m in enumerate(_finditer(rx, s)):
        if k == count:
            break
        if parts is None:
            parts = _replacement(repl, rx.groups)
            literal = None if any(g for g, _ in parts) else "".join(p for _, p in parts)
        a, b = m.span()
        out.append(s[last:a])
        out.append(literal if literal is not None else "".join((m.group(p) or "") if g else p for g, p in parts))
        last = b
    out.append(s[last:])
    return "".join(out)


def _one_group(rx: Any) -> None:
    if rx.groups > 1:
        raise CelFailure("regex.extract: the pattern may have at most one capture group")


def rx_extract(s: Any, pattern: Any) -> Optional:
    _str("regex.extract", s, pattern)
    rx = _regex(pattern)
    _one_group(rx)
    m = rx.search(s)
    if m is None:
        return NONE
    if not rx.groups:
        return Optional(True, m.group(0))
    g = m.group(1)
    return Optional(True, g) if g else NONE  # an empty or unmatched group is none (cel-go)


def rx_extract_all(s: Any, pattern: Any) -> list[str]:
    _str("regex.extractAll", s, pattern)
    rx = _regex(pattern)
    _one_group(rx)
    out = []
    for m in _finditer(rx, s):
        if not rx.groups:
            out.append(m.group(0))
        elif m.group(1):  # an empty or unmatched group is left out (cel-go)
            out.append(m.group(1))
    return out


def opt_of(v: Any) -> Optional:
    return Optional(True, v)


def opt_none() -> Optional:
    return NONE


def opt_of_non_zero(v: Any) -> Optional:
    return NONE if _zero(v) else Optional(True, v)


def has_value(o: Any) -> bool:
    return _optional("hasValue", o).has


def _strs(fn: str, f: Callable[[str], str]) -> Callable[[Any], str]:
    def g(s: Any) -> str:
        _str(fn, s)
        return f(s)

    return g


EXTENSIONS: dict[tuple[str, bool, int], Callable[..., Any]] = {
    # strings
    ("charAt", True, 1): char_at,
    ("indexOf", True, 1): index_of,
    ("indexOf", True, 2): index_of,
    ("lastIndexOf", True, 1): last_index_of,
    ("lastIndexOf", True, 2): last_index_of,
    ("lowerAscii", True, 0): lambda s: _ascii(s, "lowerAscii", False),
    ("upperAscii", True, 0): lambda s: _ascii(s, "upperAscii", True),
    ("replace", True, 2): replace,
    ("replace", True, 3): replace,
    ("split", True, 1): split,
    ("split", True, 2): split,
    ("substring", True, 1): substring,
    ("substring", True, 2): substring,
    ("trim", True, 0): trim,
    ("join", True, 0): join,
    ("join", True, 1): join,
    ("strings.quote", False, 1): quote,
    ("format", True, 1): format_,
    ("reverse", True, 0): reverse,
    # math
    ("math.greatest", False, -1): greatest,
    ("math.least", False, -1): least,
    ("math.abs", False, 1): m_abs,
    ("math.ceil", False, 1): m_ceil,
    ("math.floor", False, 1): m_floor,
    ("math.round", False, 1): m_round,
    ("math.trunc", False, 1): m_trunc,
    ("math.sign", False, 1): m_sign,
    ("math.isNaN", False, 1): m_is_nan,
    ("math.isInf", False, 1): m_is_inf,
    ("math.isFinite", False, 1): m_is_finite,
    ("math.sqrt", False, 1): m_sqrt,
    ("math.bitAnd", False, 2): _bits("math.bitAnd", lambda a, b: a & b),
    ("math.bitOr", False, 2): _bits("math.bitOr", lambda a, b: a | b),
    ("math.bitXor", False, 2): _bits("math.bitXor", lambda a, b: a ^ b),
    ("math.bitNot", False, 1): bit_not,
    ("math.bitShiftLeft", False, 2): _shift("math.bitShiftLeft", True),
    ("math.bitShiftRight", False, 2): _shift("math.bitShiftRight", False),
    # encoders
    ("base64.encode", False, 1): b64_encode,
    ("base64.decode", False, 1): b64_decode,
    # lists
    ("slice", True, 2): l_slice,
    ("flatten", True, 0): l_flatten,
    ("flatten", True, 1): l_flatten,
    ("lists.range", False, 1): l_range,
    ("sort", True, 0): l_sort,
    ("@sortByAssociatedKeys", True, 1): l_sort_by_keys,
    ("distinct", True, 0): l_distinct,
    ("first", True, 0): l_first,
    ("last", True, 0): l_last,
    # sets
    ("sets.contains", False, 2): s_contains,
    ("sets.equivalent", False, 2): s_equivalent,
    ("sets.intersects", False, 2): s_intersects,
    # regex
    ("regex.replace", False, 3): rx_replace,
    ("regex.replace", False, 4): rx_replace,
    ("regex.extract", False, 2): rx_extract,
    ("regex.extractAll", False, 2): rx_extract_all,
    # optionals
    ("optional.of", False, 1): opt_of,
    ("optional.none", False, 0): opt_none,
    ("optional.ofNonZeroValue", False, 1): opt_of_non_zero,
    ("hasValue", True, 0): has_value,
    ("value", True, 0): opt_value,
    ("orValue", True, 1): opt_or_value,
    ("or", True, 1): opt_or,
}

# What the runtime (cel-expr-python 0.1.3) lacks of the above and gets declared with these
# implementations (`engine.expr`): name -> [(is_member, parameter types, result type)]. Its own
# extensions cover strings, math, encoders, optionals (with lists' `first`, `last`) and `cel.bind`.
RUNTIME_SIGNATURES: dict[str, list[tuple[bool, tuple[str, ...], str]]] = {
    "slice": [(True, ("list", "int", "int"), "list")],
    "flatten": [(True, ("list",), "list"), (True, ("list", "int"), "list")],
    "lists.range": [(False, ("int",), "list_int")],
    "sort": [(True, ("list",), "list")],
    "distinct": [(True, ("list",), "list")],
    "reverse": [(True, ("list",), "list")],
    "sets.contains": [(False, ("list", "list"), "bool")],
    "sets.equivalent": [(False, ("list", "list"), "bool")],
    "sets.intersects": [(False, ("list", "list"), "bool")],
    "regex.replace": [(False, ("string", "string", "string"), "string"),
                      (False, ("string", "string", "string", "int"), "string")],
    "regex.extract": [(False, ("string", "string"), "optional")],
    "regex.extractAll": [(False, ("string", "string"), "list_string")],
}
