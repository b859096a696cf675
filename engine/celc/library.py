"""The pipeline function library: timestamps, HTML sanitizing, hashing, encryption, redaction,
UUIDs, JSON, URLs, `coalesce`.

Naming convention (docs/cel.md): a namespace per area, lower case, and a lowerCamel verb, as
cel-go's own extensions (`math.greatest`, `base64.encode`): `ts.parse`, `html.sanitize`,
`crypto.hmac`. Functions of no area are bare globals (`now`, `coalesce`, `redact`, `mask`).

Keys never appear in the graph text: a key argument is a *reference*, a string literal
`"env:NAME"` (the environment variable NAME) or `"file:/path"` (the file's content). `validate`
rejects anything else (`key_reference_issues`). An encryption key reference names a key ring: one
or more `id=base64key` entries separated by commas or newlines; the first encrypts, any decrypts,
so keys rotate by putting a new one first and keeping the old ones until no data needs them.

Every function raises `CelFailure` with the reason for an input it cannot handle, which becomes
the node's error for that message (its `errors` port). `LIBRARY` maps (name, is_member, arity) to
the implementation (arity -1: variadic); `SIGNATURES` gives the CEL types the runtime's checker
declares for each (see `engine.expr`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac as _hmac
import json as _json
import os
import re
import secrets
import time
import urllib.parse
import uuid as _uuid
from collections.abc import Callable
from typing import Any

from engine.celc.chrono import Timestamp, format_timestamp, parse_timestamp
from engine.celc.values import CelFailure, Defer, UInt, type_name

__all__ = ["KEY_FUNCTIONS", "LIBRARY", "SIGNATURES", "key_reference_issue"]

_NS = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TS_MIN, _TS_MAX = -62135596800 * _NS, 253402300799 * _NS + _NS - 1  # years 0001-9999, as CEL


def _need(fn: str, v: Any, *types: type) -> None:
    if type(v) not in types:
        want = " or ".join(type_name(t()) if t is not Timestamp else "timestamp" for t in types)
        raise CelFailure(f"{fn}: expected {want}, got {type_name(v)}")


# -- timestamps ----------------------------------------------------------------------------------
def _from_ns(ns: int, fn: str) -> Timestamp:
    if not _TS_MIN <= ns <= _TS_MAX:
        raise CelFailure(f"{fn}: timestamp out of range (years 0001-9999)")
    return Timestamp(ns)


def _from_datetime(d: dt.datetime, zone: dt.tzinfo = dt.UTC) -> Timestamp:
    if d.tzinfo is None:  # no offset in the text: the zone given (UTC by default)
        d = d.replace(tzinfo=zone)
    delta = d - _EPOCH
    return _from_ns((delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000, "ts.parse")


def _iso(text: str, zone: dt.tzinfo = dt.UTC) -> Timestamp:
    s = text.strip()
    try:
        return parse_timestamp(s)  # strict RFC 3339 keeps nanoseconds
    except (CelFailure, ValueError, Defer):
        pass
    t = s.replace(" ", "T", 1) if len(s) > 10 and s[10] == " " else s
    if t.endswith(("z", "Z")):
        t = t[:-1] + "+00:00"
    try:
        return _from_datetime(dt.datetime.fromisoformat(t), zone)
    except ValueError:
        pass
    if _EPOCH_TEXT.fullmatch(s):  # epoch seconds as text (a CSV column), after ISO's 20240501
        return ts_parse(float(s) if "." in s else int(s))
    raise CelFailure(f"ts.parse: {text!r} is not an ISO 8601 / RFC 3339 timestamp or epoch seconds")


def _tz(zone: Any) -> dt.tzinfo:
    from engine.celc.chrono import _zone

    _need("ts.parse", zone, str)
    try:
        return _zone(zone)
    except Defer:
        raise CelFailure(f"ts.parse: unknown time zone {zone[:64]!r} (an IANA name or ±hh:mm)") from None


def ts_parse(v: Any, fmt: Any = None, zone: Any = None) -> Timestamp:
    """A timestamp from ISO 8601 text, epoch seconds (int, double or numeric text), or with `fmt`: "unix",
    "unix_ms", "unix_us", "unix_ns" (a number or numeric string) or a strftime format ("" for the
    automatic reading). Text without an offset is in `zone` (an IANA name or ±hh:mm), else UTC."""
    tz = dt.UTC if zone is None else _tz(zone)
    if fmt == "":
        fmt = None
    if fmt is None:
        if type(v) is str:
            return _iso(v, tz)
        if type(v) is int or type(v) is UInt:
            return _from_ns(int(v) * _NS, "ts.parse")
        if type(v) is float:
            if v != v or v in (float("inf"), float("-inf")):
                raise CelFailure("ts.parse: epoch seconds must be finite")
            return _from_ns(round(v * 1_000_000) * 1000, "ts.parse")  # microseconds: what a double holds
        if type(v) is Timestamp:
            return v
        raise CelFailure(f"ts.parse: expected a string or epoch seconds, got {type_name(v)}")
    _need("ts.parse", fmt, str)
    scale = {"unix": _NS, "unix_ms": 1_000_000, "unix_us": 1000, "unix_ns": 1}.get(fmt)
    if scale is not None:
        n: Any = v
        if type(v) is str:
            try:
                n = int(v.strip()) if v.strip().lstrip("-").isdigit() else float(v)
            except ValueError:
                raise CelFailure(f"ts.parse: {v!r} is not a number ({fmt})") from None
        if type(n) not in (int, UInt, float) or n != n:
            raise CelFailure(f"ts.parse: expected a number for {fmt}, got {type_name(v)}")
        ns = int(n) * scale if type(n) is not float else round(n * scale / 1000) * 1000
        return _from_ns(ns, "ts.parse")
    _need("ts.parse", v, str)
    try:
        return _from_datetime(dt.datetime.strptime(v, fmt), tz)
    except (ValueError, re.error) as exc:  # re.error: a format strptime cannot compile (%Y twice)
        raise CelFailure(f"ts.parse: {v[:100]!r} does not match {fmt[:100]!r} ({exc})") from None


def ts_format(t: Any, fmt: Any = None) -> str:
    """RFC 3339 in UTC (`2024-05-01T12:00:00Z`), or `fmt` (strftime) in UTC."""
    if type(t) is not Timestamp:
        t = ts_parse(t)
    if fmt is None:
        return format_timestamp(t)
    _need("ts.format", fmt, str)
    d = _EPOCH + dt.timedelta(microseconds=t.ns // 1000)
    try:
        return d.strftime(fmt)
    except ValueError as exc:
        raise CelFailure(f"ts.format: invalid format {fmt[:100]!r} ({exc})") from None


def now() -> Timestamp:
    """The current time (UTC), read once per call."""
    return Timestamp(time.time_ns())


# -- html ----------------------------------------------------------------------------------------
def html_sanitize(s: Any, tags: Any = None) -> str:
    """`s` with every tag, attribute and URL scheme outside nh3's safe defaults removed (scripts,
    event handlers, `javascript:` links); text is kept and escaped. `tags`: the only tags to keep
    (a list of names, within nh3's safe set: `script`, `style` are never kept)."""
    import nh3

    _need("html.sanitize", s, str)
    if tags is None:
        return nh3.clean(s)
    if type(tags) is not list or any(type(t) is not str for t in tags):
        raise CelFailure("html.sanitize: the tags to keep must be a list of tag names (strings)")
    keep = {t.lower() for t in tags} & set(nh3.ALLOWED_TAGS)
    return nh3.clean(s, tags=keep)


def html_text(s: Any) -> str:
    """The text of an HTML fragment, every tag removed (entities stay escaped)."""
    import nh3

    _need("html.text", s, str)
    return nh3.clean(s, tags=set())


# -- keys ----------------------------------------------------------------------------------------
KEY_FUNCTIONS = {("crypto.hmac", 1), ("crypto.encrypt", 1), ("crypto.decrypt", 1)}  # (name, key argument)
_FILE_CACHE: dict[str, tuple[float, bytes]] = {}


def key_reference_issue(ref: Any) -> str | None:
    """Why `ref` is not a valid key reference (None when it is)."""
    if type(ref) is not str:
        return "a key argument must be a string literal \"env:NAME\" or \"file:/path\""
    kind, _, name = ref.partition(":")
    if kind not in ("env", "file") or not name:
        return (f"key reference {ref!r} is not \"env:NAME\" or \"file:/path\": keys come from the environment "
                "or a file, never from the graph text")
    return None


def _key_material(ref: Any, fn: str) -> bytes:
    issue = key_reference_issue(ref)
    if issue:
        raise CelFailure(f"{fn}: {issue}")
    kind, _, name = ref.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise CelFailure(f"{fn}: environment variable {name} (key) is not set")
        return value.encode()
    now_s = time.monotonic()
    hit = _FILE_CACHE.get(name)
    if hit is not None and now_s - hit[0] < 5.0:  # re-read at most every 5 s, so a rotated file is seen
        return hit[1]
    try:
        with open(name, "rb") as f:
            data = f.read().strip()
    except OSError as exc:
        raise CelFailure(f"{fn}: cannot read key file {name}: {exc.strerror}") from None
    if not data:
        raise CelFailure(f"{fn}: key file {name} is empty")
    _FILE_CACHE[name] = (now_s, data)
    return data


_RINGS: dict[bytes, list[tuple[str, Any]]] = {}
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _ring(ref: Any, fn: str) -> list[tuple[str, Any]]:
    """The key ring `ref` names: [(id, AESGCM)], the current key first."""
    raw = _key_material(ref, fn)
    ring = _RINGS.get(raw)
    if ring is not None:
        return ring
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    out: list[tuple[str, Any]] = []
    entries = [e.strip() for e in raw.decode(errors="replace").replace("\n", ",").split(",") if e.strip()]
    for n, entry in enumerate(entries, 1):  # messages name an entry by number: never echo the file
        kid, sep, b64 = entry.partition("=")
        kid = kid.strip()
        if not sep or not kid or not _KEY_ID.fullmatch(kid):
            raise CelFailure(f"{fn}: key ring {ref}: entry {n} is not id=base64key (an id of letters, digits, "
                             "'_', '-', '.')")
        try:
            key = base64.b64decode(b64.strip() + "=" * (-len(b64.strip()) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise CelFailure(f"{fn}: key ring {ref}: the key of entry {n} is not base64") from None
        if len(key) not in (16, 24, 32):
            raise CelFailure(f"{fn}: key ring {ref}: the key of entry {n} has {len(key)} bytes, not 16, 24 or 32")
        out.append((kid, AESGCM(key)))
    if not out:
        raise CelFailure(f"{fn}: key ring {ref} is empty")
    if len(_RINGS) > 64:
        _RINGS.clear()
    _RINGS[raw] = out
    return out


# -- crypto --------------------------------------------------------------------------------------
def _data(v: Any, fn: str) -> bytes:
    if type(v) is str:
        return v.encode()
    if type(v) in (bytes, bytearray):
        return bytes(v)
    raise CelFailure(f"{fn}: expected a string or bytes, got {type_name(v)}")


def sha256(v: Any) -> str:
    """Hex SHA-256 of a string (its UTF-8) or bytes."""
    return hashlib.sha256(_data(v, "crypto.sha256")).hexdigest()


def hmac_sha256(v: Any, ref: Any) -> str:
    """Hex HMAC-SHA256 of a string or bytes with the key `ref` names."""
    key = _key_material(ref, "crypto.hmac")
    return _hmac.new(key, _data(v, "crypto.hmac"), hashlib.sha256).hexdigest()


_PREFIX = "sd1"


def encrypt(v: Any, ref: Any) -> str:
    """`sd1:<key id>:<base64url(nonce + AES-GCM ciphertext and tag)>` of a string (UTF-8) or bytes;
    the key id and prefix are authenticated too."""
    kid, aead = _ring(ref, "crypto.encrypt")[0]
    nonce = secrets.token_bytes(12)
    header = f"{_PREFIX}:{kid}"
    sealed = aead.encrypt(nonce, _data(v, "crypto.encrypt"), header.encode())
    return f"{header}:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"


def decrypt(token: Any, ref: Any) -> str:
    """The string `encrypt` sealed, with whichever key of the ring its id names; fails on any change."""
    from cryptography.exceptions import InvalidTag

    _need("crypto.decrypt", token, str)
    prefix, _, rest = token.partition(":")
    kid, _, body = rest.partition(":")
    if prefix != _PREFIX or not kid or not body:
        raise CelFailure("crypto.decrypt: not a value crypto.encrypt produced (sd1:<key id>:<data>)")
    aead = dict(_ring(ref, "crypto.decrypt")).get(kid)
    if aead is None:
        raise CelFailure(f"crypto.decrypt: key id {kid!r} is not in the key ring {ref} (keep retired keys in the "
                         "ring until no data needs them)")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise CelFailure("crypto.decrypt: the data is not base64url") from None
    if len(raw) < 12 + 16:
        raise CelFailure("crypto.decrypt: the data is too short")
    try:
        plain = aead.decrypt(raw[:12], raw[12:], f"{_PREFIX}:{kid}".encode())
    except InvalidTag:
        raise CelFailure("crypto.decrypt: authentication failed (the value was changed, or the key is wrong)") from None
    try:
        return plain.decode()  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise CelFailure("crypto.decrypt: the plaintext is not UTF-8 text") from None


# -- redaction -----------------------------------------------------------------------------------
REDACTED = "[REDACTED]"


def redact(v: Any, fields: Any) -> Any:
    """`v` with the value of every map key in `fields` (a list of strings), at any depth,
    replaced by "[REDACTED]"."""
    if type(fields) is not list or any(type(f) is not str for f in fields):
        raise CelFailure("redact: the second argument must be a list of field names (strings)")
    names = frozenset(fields)

    def walk(x: Any, depth: int) -> Any:
        if depth > 100:
            raise CelFailure("redact: value nested too deeply")
        if type(x) is dict:
            return {k: (REDACTED if k in names else walk(y, depth + 1)) for k, y in x.items()}
        if type(x) is list:
            return [walk(y, depth + 1) for y in x]
        return x

    return walk(v, 0)


def mask(s: Any, keep: Any = 4) -> str:
    """`s` with all but its last `keep` characters replaced by `*` (all of them when it is shorter)."""
    _need("mask", s, str)
    _need("mask", keep, int)
    if keep < 0:
        raise CelFailure(f"mask: keep must be >= 0, got {keep}")
    visible = s[len(s) - keep :] if 0 < keep < len(s) else ""
    return "*" * (len(s) - len(visible)) + visible


# -- uuids, json, urls, coalesce -------------------------------------------------------------------
def uuid_v4() -> str:
    return str(_uuid.uuid4())


def uuid_v7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return str(_uuid.UUID(int=value))


def _jsonable(v: Any, depth: int = 0) -> Any:
    if depth > 100:
        raise CelFailure("json.encode: value nested too deeply")
    t = type(v)
    if t is dict:
        out = {}
        for k, x in v.items():
            if type(k) is not str:
                raise CelFailure(f"json.encode: map keys must be strings, got {type_name(k)}")
            out[k] = _jsonable(x, depth + 1)
        return out
    if t is list:
        return [_jsonable(x, depth + 1) for x in v]
    if t is UInt:
        return int(v)
    if (t is float and v != v) or (t is float and v in (float("inf"), float("-inf"))):
        raise CelFailure("json.encode: NaN and infinity have no JSON form")
    if t is Timestamp:
        return format_timestamp(v)
    if t in (bytes, bytearray):
        return base64.b64encode(bytes(v)).decode()
    if v is None or t in (str, int, float, bool):
        return v
    raise CelFailure(f"json.encode: {type_name(v)} has no JSON form")


def json_encode(v: Any) -> str:
    """Compact JSON text (bytes as base64, timestamps as RFC 3339)."""
    return _json.dumps(_jsonable(v), ensure_ascii=False, separators=(",", ":"))


def json_decode(s: Any) -> Any:
    _need("json.decode", s, str)
    try:
        return _json.loads(s, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise CelFailure(f"json.decode: invalid JSON ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def url_parse(s: Any) -> dict[str, Any]:
    """{scheme, host, port (int, or 0), path, query (map of the first value per key), fragment, user}."""
    _need("url.parse", s, str)
    try:
        u = urllib.parse.urlsplit(s.strip())
        port = u.port or 0
    except ValueError as exc:
        raise CelFailure(f"url.parse: {s!r} is not a URL ({exc})") from None
    query: dict[str, str] = {}
    for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True):
        query.setdefault(k, v)
    return {"scheme": u.scheme, "host": u.hostname or "", "port": port, "path": u.path, "query": query,
            "fragment": u.fragment, "user": u.username or ""}


def coalesce(*args: Any) -> Any:
    """The first argument that is not null (null when all are)."""
    for a in args:
        if a is not None:
            return a
    return None


LIBRARY: dict[tuple[str, bool, int], Callable[..., Any]] = {
    ("ts.parse", False, 1): ts_parse,
    ("ts.parse", False, 2): ts_parse,
    ("ts.parse", False, 3): ts_parse,
    ("ts.format", False, 1): ts_format,
    ("ts.format", False, 2): ts_format,
    ("now", False, 0): now,
    ("html.sanitize", False, 1): html_sanitize,
    ("html.sanitize", False, 2): html_sanitize,
    ("html.text", False, 1): html_text,
    ("crypto.sha256", False, 1): sha256,
    ("crypto.hmac", False, 2): hmac_sha256,
    ("crypto.encrypt", False, 2): encrypt,
    ("crypto.decrypt", False, 2): decrypt,
    ("redact", False, 2): redact,
    ("mask", False, 1): mask,
    ("mask", False, 2): mask,
    ("uuid.v4", False, 0): uuid_v4,
    ("uuid.v7", False, 0): uuid_v7,
    ("json.encode", False, 1): json_encode,
    ("json.decode", False, 1): json_decode,
    ("url.parse", False, 1): url_parse,
    ("coalesce", False, -1): coalesce,
}

# name -> [(is_member, parameter types, result type)] for the runtime's checker ("dyn" accepts anything)
SIGNATURES: dict[str, list[tuple[bool, tuple[str, ...], str]]] = {
    "ts.parse": [(False, ("dyn",), "timestamp"), (False, ("dyn", "string"), "timestamp"),
                 (False, ("dyn", "string", "string"), "timestamp")],
    "ts.format": [(False, ("dyn",), "string"), (False, ("dyn", "string"), "string")],
    "now": [(False, (), "timestamp")],
    "html.sanitize": [(False, ("string",), "string"), (False, ("string", "list"), "string")],
    "html.text": [(False, ("string",), "string")],
    "crypto.sha256": [(False, ("dyn",), "string")],
    "crypto.hmac": [(False, ("dyn", "string"), "string")],
    "crypto.encrypt": [(False, ("dyn", "string"), "string")],
    "crypto.decrypt": [(False, ("string", "string"), "string")],
    "redact": [(False, ("dyn", "list"), "dyn")],
    "mask": [(False, ("string",), "string"), (False, ("string", "int"), "string")],
    "uuid.v4": [(False, (), "string")],
    "uuid.v7": [(False, (), "string")],
    "json.encode": [(False, ("dyn",), "string")],
    "json.decode": [(False, ("string",), "dyn")],
    "url.parse": [(False, ("string",), "map")],
    "coalesce": [(False, ("dyn",) * n, "dyn") for n in range(1, 17)],
}
