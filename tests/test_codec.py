"""engine.codec: the decoder's limits sit exactly at the encoder's, and dead letters always encode."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from engine import codec
from engine.errors import PayloadTooLarge, classify
from engine.message import Msg
from engine.runtime.outputs import error_envelope


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def text(depth: int) -> bytes:
    """`{"a":` x depth: the shape of the report's request."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def test_max_depth_is_orjsons_encoder_limit() -> None:
    """If orjson ever encodes deeper (or less deep), MAX_DEPTH must follow: this pins it."""
    orjson.dumps(nested(codec.MAX_DEPTH))
    with pytest.raises(orjson.JSONEncodeError, match="Recursion limit"):
        orjson.dumps(nested(codec.MAX_DEPTH + 1))
    assert orjson.loads(b"[" * 1000 + b"]" * 1000)  # the decoder alone goes much deeper


@pytest.mark.parametrize("form", ["bytes", "str"])
def test_loads_accepts_the_deepest_writable_payload_and_refuses_one_level_more(form: str) -> None:
    ok, deep = text(codec.MAX_DEPTH), text(codec.MAX_DEPTH + 1)
    if form == "str":
        ok, deep = ok.decode(), deep.decode()  # type: ignore[assignment]
    value = codec.loads(ok)
    orjson.dumps(value)  # what loads lets in, a sink can write
    with pytest.raises(PayloadTooLarge, match=r"^nesting deeper than 254 levels$"):
        codec.loads(deep)


@pytest.mark.parametrize("depth", [1000, 1024, 1025, 5000])
def test_loads_refuses_deep_payloads_also_beyond_orjsons_own_limit(depth: int) -> None:
    with pytest.raises(PayloadTooLarge, match="nesting deeper than 254 levels"):
        codec.loads(b"[" * depth + b"]" * depth)
    if depth == 5000:  # unclosed too: far beyond orjson's limit, it stops at the depth before the end
        with pytest.raises(PayloadTooLarge, match="nesting deeper than 254 levels"):
            codec.loads(b"[" * depth)


def test_brackets_inside_strings_and_wide_payloads_are_not_depth() -> None:
    wide = orjson.dumps([{"note": "[[[[{{{{", "q": [i]} for i in range(500)])
    assert len(codec.loads(wide)) == 500
    escaped = orjson.dumps(['\\"[' * 300])
    assert codec.loads(escaped) == ['\\"[' * 300]


def test_a_lower_depth_limit_and_a_container_of_writable_values() -> None:
    assert codec.loads(text(100), max_depth=100)
    with pytest.raises(PayloadTooLarge, match="deeper than 100 levels"):
        codec.loads(text(101), max_depth=100)
    items = b"[" + text(codec.MAX_DEPTH) + b"," + text(3) + b"]"  # an array of items, each writable alone
    assert len(codec.loads(items, max_depth=codec.MAX_DEPTH + 1)) == 2
    with pytest.raises(PayloadTooLarge):
        codec.loads(b"[" + text(codec.MAX_DEPTH + 1) + b"]", max_depth=codec.MAX_DEPTH + 1)


def test_size_limit_names_both_sizes() -> None:
    with pytest.raises(PayloadTooLarge, match=r"^payload of 23 bytes over the limit 10$"):
        codec.loads(b'{"k": "0123456789abc"}\n', max_bytes=10)
    assert codec.loads(b'{"k": 1}', max_bytes=8) == {"k": 1}


def test_invalid_json_is_still_a_decode_error_and_too_large_is_a_message_error() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        codec.loads(b"{nope" + b"[" * 300)
    assert classify(PayloadTooLarge("x")) == "message"


UNENCODABLE = [
    pytest.param(nested(300), "nesting deeper than 254 levels", "json", id="deep"),
    pytest.param(nested(2000), "nesting deeper than 254 levels", "repr", id="deeper-than-python-recursion"),
    pytest.param({"n": 1 << 70}, "Integer exceeds 64-bit range", "json", id="big-int"),
    pytest.param(b"\xff\xfe", "payload is not UTF-8 text", "bytes", id="binary"),
]


@pytest.mark.parametrize(("payload", "reason", "form"), UNENCODABLE)
def test_an_error_envelope_encodes_whatever_its_payload(payload: Any, reason: str, form: str) -> None:
    env = error_envelope(Msg(payload, {"big": 1 << 70, "subject": "s"}), "node", "why")
    # plain orjson (jetstream_sink, redis_stream_sink), inside {"body", ...} (file_sink with_meta)
    orjson.dumps(env.body)
    orjson.dumps({"body": env.body, "meta": {"subject": "s"}})
    body = env.body
    assert "payload" not in body and body["error"] == "why" and body["meta"] == {"subject": "s"}
    assert reason in body["payload_error"] and body["payload_format"] == form
    raw = base64.b64decode(body["payload_base64"])
    if form == "bytes":
        assert raw == payload
    elif form == "json":
        assert json.loads(raw) == payload  # the original, losslessly
    else:
        assert raw.startswith(b"[[[[") and len(raw) < 64 * 1024


def test_an_error_envelope_keeps_a_payload_that_encodes() -> None:
    assert error_envelope(Msg({"a": [1, 2]}), "n", "r").body["payload"] == {"a": [1, 2]}
    assert error_envelope(Msg(b'{"a": 1}'), "n", "r").body["payload"] == '{"a": 1}'
    # non-string keys and nested bytes are written as text, as the sinks would
    assert error_envelope(Msg({1: b"\x00"}), "n", "r").body["payload"] == {"1": "AA=="}
    # the deepest payload a source lets in still fits in an envelope written with_meta... one level less
    env = error_envelope(Msg(nested(codec.MAX_DEPTH - codec.ENVELOPE_HEADROOM)), "n", "r")
    orjson.dumps({"body": env.body, "meta": {}})
    assert "payload" in env.body
    assert "payload_base64" in error_envelope(Msg(nested(codec.MAX_DEPTH)), "n", "r").body


class Hostile:
    """A value whose str and repr both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


@pytest.mark.parametrize(
    "value", [nested(300), {"n": 1 << 70}, {1: object()}, b"\xff", {"ok": [1]}, [Hostile()]]
)
def test_dumps_safe_never_raises(value: Any) -> None:
    out = orjson.loads(codec.dumps_safe(value, orjson.OPT_APPEND_NEWLINE))
    if value == {"ok": [1]}:
        assert out == value
    else:
        assert isinstance(out, (dict, str))


def test_encode_failure_uses_the_decoders_words() -> None:
    with pytest.raises(orjson.JSONEncodeError) as info:
        orjson.dumps(nested(300))
    assert codec.encode_failure(info.value) == "nesting deeper than 254 levels"
