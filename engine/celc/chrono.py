"""CEL timestamps and durations: nanosecond values, RFC 3339 / duration-string parsing, accessors.

`Timestamp` and `Duration` hold integer nanoseconds (CEL's precision; Python's datetime has only
microseconds). Ranges follow CEL: timestamps in years 0001..9999, durations within ±315576000000 s.
Results leave the compiled code as `datetime` (UTC) / `timedelta`, as cel-expr-python returns them.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from engine.celc.values import CelFailure, Defer, no_overload

__all__ = ["ACCESSORS", "Duration", "Timestamp", "to_duration", "to_timestamp"]

NS = 1_000_000_000
_MIN_TS = -62135596800 * NS  # 0001-01-01T00:00:00Z
_MAX_TS = 253402300799 * NS + NS - 1  # 9999-12-31T23:59:59.999999999Z
_MAX_DUR = 315576000000 * NS + NS - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Timestamp:
    """A point in time, as nanoseconds since the Unix epoch."""

    __slots__ = ("ns",)

    def __init__(self, ns: int):
        if not _MIN_TS <= ns <= _MAX_TS:
            raise CelFailure("timestamp overflow")
        self.ns = ns

    def __eq__(self, other: object) -> bool:
        return type(other) is Timestamp and other.ns == self.ns

    def __lt__(self, other: Timestamp) -> bool:
        return self.ns < other.ns

    def __le__(self, other: Timestamp) -> bool:
        return self.ns <= other.ns

    def __gt__(self, other: Timestamp) -> bool:
        return self.ns > other.ns

    def __ge__(self, other: Timestamp) -> bool:
        return self.ns >= other.ns

    def __hash__(self) -> int:
        return hash(("ts", self.ns))

    def __repr__(self) -> str:
        return f"timestamp({format_timestamp(self)!r})"

    def to_python(self) -> dt.datetime:
        seconds, nanos = divmod(self.ns, NS)
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)


class Duration:
    """A signed span of time, in nanoseconds."""

    __slots__ = ("ns",)

    def __init__(self, ns: int):
        if not -_MAX_DUR <= ns <= _MAX_DUR:
            raise CelFailure("duration out of range")
        self.ns = ns

    def __eq__(self, other: object) -> bool:
        return type(other) is Duration and other.ns == self.ns

    def __lt__(self, other: Duration) -> bool:
        return self.ns < other.ns

    def __le__(self, other: Duration) -> bool:
        return self.ns <= other.ns

    def __gt__(self, other: Duration) -> bool:
        return self.ns > other.ns

    def __ge__(self, other: Duration) -> bool:
        return self.ns >= other.ns

    def __hash__(self) -> int:
        return hash(("dur", self.ns))

    def __repr__(self) -> str:
        return f"duration({format_duration(self)!r})"

    def to_python(self) -> dt.timedelta:
        micros = abs(self.ns) // 1000
        return dt.timedelta(microseconds=micros if self.ns >= 0 else -micros)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_timestamp(text: str) -> Timestamp:
    """An RFC 3339 timestamp with a zone (Z or ±hh:mm) and up to nanosecond precision."""
    m = _RFC3339.fullmatch(text)
    if not m:
        raise Defer()  # the runtime's parser is lenient in ways not worth copying: let it decide
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        date = dt.date(year, month, day)
    except ValueError:
        raise Defer() from None
    if (
        hour > 23
        or minute > 59
        or second > 60
        or (m.group(9) and (int(m.group(10)) > 23 or int(m.group(11)) > 59))
    ):
        raise Defer()
    frac = (m.group(7) or "").ljust(9, "0")
    days = date.toordinal() - dt.date(1970, 1, 1).toordinal()
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return Timestamp(seconds * NS + int(frac))


_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(h|ms|us|ns|m|s)", re.ASCII)
_UNIT_NS = {"h": 3600 * NS, "m": 60 * NS, "s": NS, "ms": 1_000_000, "us": 1000, "ns": 1}


def parse_duration(text: str) -> Duration:
    """A Go-style duration string: optional sign, then number+unit parts (h, m, s, ms, us, ns)."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return Duration(0)
    if not s:
        raise Defer()
    total = 0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise Defer()  # invalid, or a form only the runtime's parser accepts
        whole, _, frac = m.group(1).partition(".")
        if len(frac) > 9:
            raise Defer()  # rounding below a nanosecond: the runtime's
        unit = _UNIT_NS[m.group(2)]
        value = int(whole or "0") * unit
        if frac:
            value += int(frac) * unit // 10 ** len(frac)
        total += value
        pos = m.end()
    return Duration(sign * total)


def format_timestamp(t: Timestamp) -> str:
    """RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as CEL's string() writes it."""
    seconds, nanos = divmod(t.ns, NS)
    days, rem = divmod(seconds, 86400)
    d = _fromordinal(_EPOCH_ORDINAL + days)  # not strftime: it writes year 1 as "1" (glibc), and is slower
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{h:02d}:{m:02d}:{s:02d}{_fraction(nanos)}Z"


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_fromordinal = dt.date.fromordinal


def _fraction(nanos: int) -> str:
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1000 == 0:
        return f".{nanos // 1000:06d}"
    return f".{nanos:09d}"


def format_duration(d: Duration) -> str:
    """Seconds with 0, 3, 6 or 9 fractional digits, as CEL's string() writes a duration."""
    sign = "-" if d.ns < 0 else ""
    seconds, nanos = divmod(abs(d.ns), NS)
    return f"{sign}{seconds}{_fraction(nanos)}s"


def to_timestamp(v: Any) -> Timestamp:
    """timestamp(): from a timestamp, an RFC 3339 string or seconds since the epoch (int)."""
    t = type(v)
    if t is Timestamp:
        return v
    if t is str:
        return parse_timestamp(v)
    if t is int:
        return Timestamp(v * NS)
    raise no_overload("timestamp", v)


def to_duration(v: Any) -> Duration:
    """duration(): from a duration or a duration string such as "1h30m" or "-1.5s"."""
    if type(v) is Duration:
        return v
    if type(v) is str:
        return parse_duration(v)
    raise no_overload("duration", v)


_OFFSET = re.compile(r"([+-]?)(\d{2}):(\d{2})", re.ASCII)


@lru_cache(maxsize=256)
def _zone(name: str) -> dt.tzinfo:
    if name == "":
        return dt.UTC
    m = _OFFSET.fullmatch(name)
    if m and int(m.group(2)) < 24 and int(m.group(3)) < 60:
        minutes = int(m.group(2)) * 60 + int(m.group(3))
        return dt.timezone(dt.timedelta(minutes=-minutes if m.group(1) == "-" else minutes))
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise Defer() from None  # unknown here; the runtime's zone rules decide (error or value)


def _local(t: Any, zone: Any, fn: str) -> dt.datetime:
    if type(t) is not Timestamp or (zone is not None and type(zone) is not str):
        raise no_overload(fn, t) if zone is None else no_overload(fn, t, zone)
    seconds = t.ns // NS
    utc = _EPOCH + dt.timedelta(seconds=seconds)
    if zone is None:
        return utc
    try:
        return utc.astimezone(_zone(zone))
    except OverflowError:  # local time before year 1 or after 9999
        raise Defer() from None


def _accessor(fn: str, of_time: Any, of_duration: Any = None) -> Any:
    def access(t: Any, zone: Any = None) -> int:
        if type(t) is Duration and of_duration is not None and zone is None:
            return int(of_duration(t.ns))
        return int(of_time(_local(t, zone, fn), t))

    access.__name__ = fn
    return access


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // b
    return q if a >= 0 else -q


ACCESSORS = {
    "getFullYear": _accessor("getFullYear", lambda d, t: d.year),
    "getMonth": _accessor("getMonth", lambda d, t: d.month - 1),
    "getDate": _accessor("getDate", lambda d, t: d.day),
    "getDayOfMonth": _accessor("getDayOfMonth", lambda d, t: d.day - 1),
    "getDayOfWeek": _accessor("getDayOfWeek", lambda d, t: (d.weekday() + 1) % 7),
    "getDayOfYear": _accessor("getDayOfYear", lambda d, t: d.timetuple().tm_yday - 1),
    "getHours": _accessor("getHours", lambda d, t: d.hour, lambda ns: _trunc_div(ns, 3600 * NS)),
    "getMinutes": _accessor("getMinutes", lambda d, t: d.minute, lambda ns: _trunc_div(ns, 60 * NS)),
    "getSeconds": _accessor("getSeconds", lambda d, t: d.second, lambda ns: _trunc_div(ns, NS)),
    "getMilliseconds": _accessor(
        "getMilliseconds",
        lambda d, t: (t.ns % NS) // 1_000_000,
        lambda ns: _trunc_div(abs(ns) % NS, 1_000_000) * (1 if ns >= 0 else -1),
    ),
}
