"""`JetStreamSource._decode` without a server: the batch-parsed path and the frame-by-frame path
(a batch with a bad or a long frame) give the same messages; both reply-subject forms are read."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.message import AckTracker
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.stats import NodeStats
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig

NS = 1765000000123456789


def source() -> JetStreamSource:
    cfg = JetStreamSourceConfig(connection="nats", stream="ORDERS", durable="d", max_deliver=3)
    src = JetStreamSource("read", cfg, NodeContext("read", {}, {}, Resources()))
    src._out = SourceOutput("read", AckTracker(), None, NodeStats("read", "source", "jetstream_source"))  # type: ignore[arg-type]
    return src


def frame(i: int, data: bytes, delivered: int = 1, domain: bool = False) -> tuple[str, str, bytes, Any]:
    head = "$JS.ACK.hub.ACCHASH" if domain else "$JS.ACK"
    return (
        "orders.eu",
        f"{head}.ORDERS.d.{delivered}.{10 + i}.{i + 1}.{NS + i}.7" + (".tok" if domain else ""),
        data,
        None,
    )


def view(msgs: list[Any]) -> list[tuple[Any, dict[str, Any], int]]:
    return [(m.body, m.meta, m.size) for m in msgs]


def test_batch_parse_and_frame_by_frame_give_the_same_messages() -> None:
    good = [frame(i, orjson.dumps({"id": i, "pad": "x" * 10}), domain=i % 2 == 1) for i in range(4)]
    fast, errors = source()._decode(good)  # every frame short: parsed as one batch
    assert errors == []
    long = frame(4, orjson.dumps({"id": 4, "pad": "y" * 600}))  # longer than 2 * MAX_DEPTH + 1 bytes
    slow, errors = source()._decode([*good, long])  # frame by frame through engine.codec
    assert errors == [] and view(slow[:4]) == view(fast)
    assert slow[4].body["id"] == 4
    first, second = fast[0].meta, fast[1].meta
    assert first == {
        "source": "read",
        "subject": "orders.eu",
        "stream": "ORDERS",
        "consumer": "d",
        "delivered": 1,
        "seq": 10,
        "consumer_seq": 1,
        "timestamp": NS / 1e9,
        "headers": {},
    }
    assert (second["stream"], second["consumer"], second["seq"], second["consumer_seq"]) == (
        "ORDERS",
        "d",
        11,
        2,
    )
    assert [m.ack.token[2] for m in fast] == [m.body for m in fast]  # the body as read, for dead letters


def test_a_bad_frame_fails_alone_and_an_overdelivered_one_is_dead_lettered() -> None:
    frames = [
        frame(0, b'{"id": 0}'),
        frame(1, b"not json"),
        frame(2, b'{"id": 2}'),
        frame(3, b'{"id": 3}', delivered=4),
    ]
    src = source()
    msgs, errors = src._decode(frames)
    assert [m.body for m in msgs] == [{"id": 0}, {"id": 2}]
    assert len(errors) == 2 and "cannot decode as json" in errors[0].body["error"]
    assert "delivered 4 times" in errors[1].body["error"] and src.redeliveries == 1


def plain_and_per_frame(frames: list[Any]) -> tuple[Any, Any, JetStreamSource]:
    """`_decode` as it runs (plain batch path where it applies) and with that path turned off."""
    fast_src, slow_src = source(), source()
    slow_src._decode_plain = lambda raw, bodies: None  # type: ignore[method-assign]
    return fast_src._decode(frames), slow_src._decode(frames), fast_src


def tokens(msgs: list[Any]) -> list[Any]:
    return [m.ack.token for m in msgs]


def test_the_plain_batch_path_gives_what_the_per_frame_path_gives() -> None:
    frames = [frame(i, orjson.dumps({"id": i})) for i in range(50)]
    (fast, ferr), (slow, serr), src = plain_and_per_frame(frames)
    assert ferr == serr == []
    assert view(fast) == view(slow) and tokens(fast) == tokens(slow)
    assert [type(m.meta["seq"]) for m in fast] == [int] * 50 and fast[7].meta["timestamp"] == (NS + 7) / 1e9
    assert fast[0].ack.token == (frames[0][1], fast[0].meta, {"id": 0}, len(frames[0][2]))
    assert src._out.tracker.in_flight == 50  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["redelivered", "domain", "headers", "other consumer"])
def test_a_batch_unlike_the_usual_goes_frame_by_frame_with_the_same_result(case: str) -> None:
    frames = [frame(i, orjson.dumps({"id": i})) for i in range(6)]
    if case == "redelivered":
        frames[3] = frame(3, b'{"id": 3}', delivered=2)
    elif case == "domain":
        frames[2] = frame(2, b'{"id": 2}', domain=True)
    elif case == "headers":
        frames[4] = (*frames[4][:3], {"K": "v"})
    else:
        frames[5] = (frames[5][0], frames[5][1].replace(".d.", ".e."), frames[5][2], None)
    (fast, ferr), (slow, serr), src = plain_and_per_frame(frames)
    assert view(fast) == view(slow) and tokens(fast) == tokens(slow) and ferr == serr == []
    assert src.redeliveries == (1 if case == "redelivered" else 0)
    if case == "redelivered":
        assert fast[3].meta["delivered"] == 2
    if case == "other consumer":
        assert fast[5].meta["consumer"] == "e"
