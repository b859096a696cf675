"""JSON in and out of the graph, within the limits the encoders support.

Every source decodes JSON through `loads`, so whatever enters the graph can also leave it: orjson
parses 1,024 levels of nesting but encodes only 254 (`Recursion limit reached` beyond), so a
message decoded deeper would pass every operator and then fail in each sink, dead-letter sink
included. `loads` refuses, with `PayloadTooLarge` and a reason a user can act on, a payload
nested deeper than `MAX_DEPTH` or longer than the caller's size limit; the source sends it to its
`errors` port with the original bytes, so it is dead-lettered and acknowledged like any bad message.

The check costs almost nothing on the hot path: a payload shorter than `2 * max_depth + 2` bytes
cannot nest deeper (one length test); a longer one is counted (two `count` calls in C); the depth is
measured only when it holds more than `max_depth` opening brackets, and then by the encoder
itself (`_depth_exceeds`), so the limit is exactly the one the sinks meet.

Dead letters must be writable whatever they carry: `safe_payload` gives the fields that stand for a
payload in an error envelope (the value itself when it encodes with room to spare, else its bytes in
base64 and why), and `dumps_safe` encodes any value without ever raising.
"""

from __future__ import annotations

import base64
import json
import reprlib
from typing import Any

import orjson

from engine.errors import PayloadTooLarge

__all__ = [
    "ENVELOPE_HEADROOM",
    "MAX_BYTES",
    "MAX_DEPTH",
    "dumps_safe",
    "encode_failure",
    "loads",
    "safe_payload",
]

# orjson's encoder refuses a 255th level of containers (its recursion limit; tests/test_codec.py
# holds it at the boundary): deeper values cannot be written by any sink.
MAX_DEPTH = 254
MAX_BYTES = 16 << 20  # default size limit of one payload (as http_source's max_decompressed_bytes)
# Levels a dead letter adds around a payload: the envelope's "payload" key, and a sink's
# {"body": ..., "meta": ...} (file_sink and stdout `with_meta`).
ENVELOPE_HEADROOM = 2
_REPR_LIMIT = 64 * 1024  # characters of a repr standing for a payload that cannot be encoded


def loads(
    data: bytes | bytearray | memoryview | str, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse JSON like `orjson.loads`, refusing with `PayloadTooLarge` a payload longer than
    `max_bytes` or nested deeper than `max_depth`. Invalid JSON raises `orjson.JSONDecodeError` (a
    ValueError). A `max_depth` above `MAX_DEPTH` fits a container of writable values (an HTTP array
    of items, each written alone)."""
    n = len(data)
    if n > max_bytes:
        raise PayloadTooLarge(f"payload of {n} bytes over the limit {max_bytes}")
    if n <= 2 * max_depth + 1:  # the hot path: too short to nest deeper (each level takes 2 bytes)
        return orjson.loads(data)
    # then: too few opening brackets to nest deeper (two counts in C)
    if isinstance(data, bytes):
        if data.count(b"[") + data.count(b"{") <= max_depth:
            return orjson.loads(data)
    elif isinstance(data, str) and data.count("[") + data.count("{") <= max_depth:
        return orjson.loads(data)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # beyond orjson's own 1,024 levels
        if "depth limit" in exc.msg:
            raise PayloadTooLarge(f"nesting deeper than {max_depth} levels") from None
        raise
    if _depth_exceeds(value, max_depth):
        raise PayloadTooLarge(f"nesting deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests containers more than `limit` deep. The encoder is the judge: a value
    that orjson (limit: `MAX_DEPTH`) cannot write `MAX_DEPTH - limit` levels further down is too deep.
    Costs one encode (about a quarter of the decode), only for payloads with many brackets."""
    if limit > MAX_DEPTH:  # deeper than the encoder goes: judge what the containers hold
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return any(_depth_exceeds(v, limit - 1) for v in inner)
    for _ in range(MAX_DEPTH - limit):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:  # a decoded value holds only JSON types: only its depth can fail
        return True
    return False


def encode_failure(exc: BaseException) -> str:
    """Why a value does not encode, in the words `loads` uses for the same limit."""
    text = str(exc)
    if "Recursion limit" in text:
        return f"nesting deeper than {MAX_DEPTH} levels"
    return text or type(exc).__name__


def _jsonable(value: Any) -> Any:
    """orjson's `default` for dead letters: bytes as base64 text, anything else as its str."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _fallback(value: Any, reason: str) -> dict[str, Any]:
    """The fields that stand for a payload that cannot be written as JSON: its bytes in base64
    (the original bytes if it is bytes, else its JSON text if the standard library can write it,
    else a bounded repr), what those bytes are, and why."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw, form = bytes(value), "bytes"
    else:
        try:
            raw, form = json.dumps(value, default=repr, ensure_ascii=False).encode(), "json"
        except Exception:  # noqa: BLE001 - too deep even for it, or a __repr__ that raises
            raw, form = _REPR.repr(value).encode("utf-8", "replace"), "repr"
    return {
        "payload_base64": base64.b64encode(raw).decode("ascii"),
        "payload_format": form,
        "payload_error": reason,
    }


_REPR = reprlib.Repr()
_REPR.maxlevel = 64
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = _REPR_LIMIT // 4
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 1000


def safe_payload(value: Any) -> dict[str, Any]:
    """The fields of an error envelope that carry `value`: `{"payload": value}` when it encodes as
    plain JSON `ENVELOPE_HEADROOM` levels deeper than it is (so the envelope, written by any sink,
    encodes too); bytes as UTF-8 text when they are; else the fallback of `_fallback`. Costs one
    encode of the payload, on the error path only."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return {"payload": bytes(value).decode("utf-8")}
        except UnicodeDecodeError:
            return _fallback(value, "payload is not UTF-8 text")
    try:
        _check_fits(value)
        return {"payload": value}
    except TypeError:  # orjson.JSONEncodeError: too deep, an int over 64 bits, a non-JSON type...
        pass
    try:  # non-string keys, bytes, timestamps: written as text, as the sinks would
        plain = orjson.loads(orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS))
        _check_fits(plain)
        return {"payload": plain}
    except TypeError as exc:
        return _fallback(value, encode_failure(exc))


def _check_fits(value: Any) -> None:
    """Raise TypeError unless `value` encodes as plain JSON `ENVELOPE_HEADROOM` levels down."""
    for _ in range(ENVELOPE_HEADROOM):
        value = [value]
    orjson.dumps(value)


def dumps_safe(value: Any, option: int = 0) -> bytes:
    """`value` as JSON, never raising: non-JSON types as text; a value that still does not encode
    (too deep, an int over 64 bits) becomes `{"payload_base64", "payload_format", "payload_error"}`."""
    try:
        return orjson.dumps(value, default=_jsonable, option=option | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        return orjson.dumps(_fallback(value, encode_failure(exc)), option=option)
