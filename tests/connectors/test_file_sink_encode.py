"""The file sink's NDJSON encoding: the fast path (orjson mapped with no options) writes the same
bytes as orjson with the sink's options, and batches it cannot take fall back without a change."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from engine.message import Msg
from operators.connectors.file import _default, _encode

OPT = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _reference(bodies: list[object]) -> bytes:
    return b"".join(orjson.dumps(b, default=_default, option=OPT) for b in bodies)


@pytest.mark.parametrize("bodies", [
    [{"id": 1, "user": "u1", "total": 1.2}, [1, "a", None, True], "text", 3, None, {"n": {"deep": [1.5]}}],
    [{"id": 1}, b"\x00raw bytes", {"id": 2}],  # bytes: written as base64 by the option path
    [{"id": 1}, {1: "int key", False: "bool key"}],  # non-string keys: written as strings
    [{"at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}, bytearray(b"ba")],
    [{"only": "one"}],
])
def test_fast_path_writes_what_the_option_path_writes(bodies: list[object]) -> None:
    data, failed = _encode([Msg(b) for b in bodies], with_meta=False)
    assert failed == [] and data == _reference(bodies)
    assert data.count(b"\n") == len(bodies)


def test_an_unencodable_body_is_reported_and_the_others_written() -> None:
    msgs = [Msg({"a": 1}), Msg({"big": 1 << 70}), Msg("ok")]
    data, failed = _encode(msgs, with_meta=False)
    assert data == _reference([{"a": 1}, "ok"])
    assert [m for m, _ in failed] == [msgs[1]] and "encode" in failed[0][1]


def test_an_empty_batch_writes_nothing() -> None:
    assert _encode([], with_meta=False) == (b"", [])
    assert _encode([], with_meta=True) == (b"", [])
