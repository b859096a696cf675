"""`FrameReader` without a server: nats-py's real parser fed a byte stream cut at every place gives
the same frames, in the same order, whether the reader takes the tapped ones or nats-py parses all."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from operators.connectors.jetstream.wire import FrameReader, parse_headers

STREAM = (
    b"MSG in.1 1 $JS.ACK.S.C.1.1.1.1700000000000000000.3 7\r\n{\"a\":1}\r\n"
    b"MSG in.1b 1 r.1b 1\r\nz\r\n"
    b"MSG in.2 1 2\r\nhi\r\n"
    b"HMSG in.3 1 r.3 20 23\r\nNATS/1.0\r\nK: v 1\r\n\r\nabc\r\n"
    b"MSG other 2 r.x 3\r\nxyz\r\n"  # not tapped: nats-py's own path
    b"PING\r\n"
    b"MSG in.4 1 0\r\n\r\n"
    b"+OK\r\n"
    b"HMSG in.5 1 32 32\r\nNATS/1.0 408 Request Timeout\r\n\r\n\r\n"
    b"MSG in.6 1 r.6 5\r\nfirst\r\n"
    b"MSG in.7 1 r.7 6\r\nsecond\r\n"
)


class FakeClient:
    """What nats-py's Parser calls back; `_process_msg` plays the Tap's fallback for sid 1."""

    def __init__(self, handler: Any) -> None:
        self.events: list[Any] = []
        self.handler = handler

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if sid == 1:
            hdrs, status = parse_headers(headers) if headers else (None, None)
            self.handler(subject.decode(), reply.decode(), data, hdrs, status)
        else:
            self.events.append(("other", sid, subject, reply, data))

    async def _process_ping(self) -> None:
        self.events.append("PING")

    async def _process_pong(self) -> None:
        self.events.append("PONG")


RUNS: list[int] = []  # lengths of the lists given to the batch handler


def feed(chunks: list[bytes], fast: bool, batch: bool = False) -> tuple[list[Any], int]:
    from nats.protocol.parser import Parser

    events: list[Any] = []
    nc = FakeClient(lambda *frame: events.append(frame))
    nc.events = events
    ps = Parser(nc)

    def on_run(frames: list[Any]) -> None:
        RUNS.append(len(frames))
        events.extend((*f, None) for f in frames)

    reader = FrameReader(ps, {1: nc.handler}, {1: on_run} if batch else None)
    taken = 0
    original_take = reader.take

    def counting_take(buf: bytearray) -> int:
        nonlocal taken
        k = original_take(buf)
        taken += k
        return k

    reader.take = counting_take  # type: ignore[method-assign]
    parse = reader.parse if fast else ps.parse

    async def run() -> None:
        for c in chunks:
            await parse(c)

    asyncio.run(run())
    assert not ps.buf
    return events, taken


@pytest.mark.parametrize("batch", [False, True])
def test_every_cut_gives_nats_pys_frames_in_order(batch: bool) -> None:
    expected, _ = feed([STREAM], fast=False)
    assert expected[0] == ("in.1", "$JS.ACK.S.C.1.1.1.1700000000000000000.3", b'{"a":1}', None, None)
    assert expected[3] == ("in.3", "r.3", b"abc", {"K": "v 1"}, None)
    assert expected[4] == ("other", 2, b"other", b"r.x", b"xyz") and expected[5] == "PING"
    assert expected[7][4] == "408" and expected[7][2] == b""
    assert len(expected) == 10
    RUNS.clear()
    whole, taken = feed([STREAM], fast=True, batch=batch)
    assert whole == expected
    assert taken == 4  # up to the untapped frame; nats-py's parser then reads the rest of the chunk
    assert RUNS == ([2, 1] if batch else [])  # in.1, in.1b | in.2 has no reply: alone | in.3 (headers, a reply)
    for cut in range(1, len(STREAM)):
        got, _ = feed([STREAM[:cut], STREAM[cut:]], fast=True, batch=batch)
        assert got == expected, cut


@pytest.mark.parametrize("size", [1, 3, 17, 64])
@pytest.mark.parametrize("batch", [False, True])
def test_small_reads_give_the_same_frames(size: int, batch: bool) -> None:
    """A tapped frame cut by a read waits for the rest; the reader takes it then, not nats-py."""
    expected, _ = feed([STREAM], fast=False)
    got, taken = feed([STREAM[i : i + size] for i in range(0, len(STREAM), size)], fast=True, batch=batch)
    assert got == expected
    assert taken >= 3


def test_a_frame_cut_inside_its_payload_waits_for_the_rest() -> None:
    from nats.protocol.parser import Parser

    got: list[Any] = []
    ps = Parser(FakeClient(lambda *f: got.append(f)))
    reader = FrameReader(ps, {1: lambda *f: got.append(f)})
    frame = b"MSG in.1 1 r.1 10\r\n0123456789\r\n"
    asyncio.run(reader.parse(frame[:25]))
    assert reader.partial and bytes(ps.buf) == frame[:25] and ps.state == 1  # nats-py's parser not called
    assert asyncio.run(reader.parse(frame[25:] + frame)) is None
    assert not reader.partial and not ps.buf
    assert got == [("in.1", "r.1", b"0123456789", None, None)] * 2


def test_a_large_frame_is_not_copied_while_it_arrives() -> None:
    from nats.protocol.parser import Parser

    got: list[Any] = []
    ps = Parser(FakeClient(lambda *f: got.append(f)))
    reader = FrameReader(ps, {1: lambda *f: got.append(f)})
    body = b"x" * (3 << 20)
    frame = b"MSG in.1 1 r.1 %d\r\n%s\r\n" % (len(body), body)
    for i in range(0, len(frame), 1 << 20):
        assert not got
        asyncio.run(reader.parse(frame[i : i + (1 << 20)]))
    assert got == [("in.1", "r.1", body, None, None)] and not ps.buf


def test_a_run_of_frames_counts_down_the_open_pull_requests_as_one_by_one() -> None:
    """`JetStreamSource._on_frames` (runs from the reader) leaves the same state as `_on_msg` per frame."""
    from engine.runtime.context import NodeContext, Resources
    from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig

    def fresh() -> JetStreamSource:
        cfg = JetStreamSourceConfig(connection="nats", stream="S", durable="d")
        src = JetStreamSource("read", cfg, NodeContext("read", {}, {}, Resources()))
        src._open = {"in.1": [3, 0.0], "in.2": [4, 0.0], "in.3": [5, 0.0]}
        return src

    frames = [("s", f"$JS.ACK.S.d.1.{i}.{i}.1.0", b"{}", None) for i in range(1, 9)]
    one = fresh()
    for f in frames:
        one._on_msg(*f, None)
    for cut in ([8], [2, 6], [3, 1, 4], [1] * 8):
        runs = fresh()
        i = 0
        for k in cut:
            runs._on_frames(frames[i : i + k])
            i += k
        assert runs._buf == one._buf == frames
        assert runs._open == one._open == {"in.3": [4, 0.0]}, cut
        assert runs._wake.is_set()


def test_write_acks_writes_what_write_lines_writes() -> None:
    from operators.connectors.jetstream.wire import write_acks, write_lines

    class Sink:
        is_closed = False

        def __init__(self) -> None:
            self.out: list[bytes] = []

        async def _send_command(self, data: bytes) -> None:
            self.out.append(data)

        async def _flush_pending(self) -> None:
            self.out.append(b"|flush")

    subjects = [f"$JS.ACK.S.d.1.{i}.{i}.1700000000000000000.0" for i in range(3)]
    for payload in ("+ACK", "+TERM"):
        a, b = Sink(), Sink()
        asyncio.run(write_acks(a, subjects, payload))
        asyncio.run(write_lines(b, [(s, payload.encode()) for s in subjects]))
        assert a.out == b.out and len(a.out) == 2  # one write, one flush
        assert a.out[0].count(b"PUB ") == 3 and a.out[0].startswith(b"PUB $JS.ACK.S.d.1.0.0.")
    empty = Sink()
    asyncio.run(write_acks(empty, []))
    assert empty.out == []


@pytest.mark.parametrize("line", [b"MSG in.1 1 r.1 -3\r\n", b"MSG in.1  1 r.1 3\r\n", b"HMSG in.1 1 r.1 9 3\r\n",
                                  b"MSG in.1 x r.1 3\r\n", b"MSG in.1 1 r.1 3 4 5\r\n"])
def test_a_line_the_reader_does_not_know_goes_to_nats_py(line: bytes) -> None:
    from nats.protocol.parser import Parser

    got: list[Any] = []
    ps = Parser(FakeClient(lambda *f: got.append(f)))
    reader = FrameReader(ps, {1: lambda *f: got.append(f)})
    ps.buf.extend(line + b"abc\r\n")
    assert reader.take(ps.buf) == 0 and not reader.partial and bytes(ps.buf) == line + b"abc\r\n"
