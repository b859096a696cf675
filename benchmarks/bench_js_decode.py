"""`JetStreamSource._decode` alone: CPU per message for frames as the server delivers them (issue 24).

    .venv/bin/python benchmarks/bench_js_decode.py [N] [ROUNDS] [decode|reader]

Builds N raw frames (subject, reply `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ns>.<pending>`,
a 100-byte JSON body, no headers) and decodes them in batches of 1,000, as `run` does; prints the
best of 7 rounds in µs per message (process CPU time, with the
collector off as during a run). No services needed. To compare two trees,
run it under each with PYTHONPATH=<tree> (see docs/perf.md). `reader`: the same frames as bytes
off the socket through `wire.FrameReader.take` instead. Instructions a frame:
`valgrind --tool=callgrind --callgrind-out-file=/dev/null` with ROUNDS 11 and 1, N 1000, difference
over 10,000.
"""

from __future__ import annotations

import gc
import sys
import time

import orjson

from engine.message import AckTracker
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.stats import NodeStats
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig

BODY = {"id": 0, "customer": "c-1234", "amount": 12.5, "qty": 3, "ts": 1765000000.25, "note": "x" * 20}


def frames(n: int) -> list[tuple[str, str, bytes, dict[str, str] | None]]:
    return [
        (
            "orders.eu",
            f"$JS.ACK.ORDERS.perf.1.{i + 1}.{i + 1}.{1765000000123456789 + i}.{n - i - 1}",
            orjson.dumps({**BODY, "id": i}),
            None,
        )
        for i in range(n)
    ]


def wire_bytes(n: int) -> bytes:
    """The frames as nats-server writes them into the pull inbox subscription (sid 5)."""
    return b"".join(b"MSG %s 5 %s %d\r\n%s\r\n" % (s.encode(), r.encode(), len(d), d) for s, r, d, _ in frames(n))


def reader(n: int, rounds: int) -> float:
    from nats.protocol.parser import Parser

    from operators.connectors.jetstream.wire import FrameReader

    data = wire_bytes(n)
    got: list = []
    ps = Parser(None)
    fr = FrameReader(ps, {5: lambda *f: None}, {5: got.extend})
    best = float("inf")
    gc.disable()
    for _ in range(rounds):
        got.clear()
        c0 = time.process_time()
        for lo in range(0, len(data), 32768):  # reads of nats-py's size
            ps.buf.extend(data[lo : lo + 32768])
            fr.take(ps.buf)
        best = min(best, time.process_time() - c0)
        assert len(got) == n and not ps.buf
    print(f"FrameReader.take: {best / n * 1e6:.3f} µs/frame (best of {rounds}, {n:,} frames)")
    return best / n


def main(n: int = 200_000, rounds: int = 7) -> float:
    cfg = JetStreamSourceConfig(connection="nats", stream="ORDERS", durable="perf")
    src = JetStreamSource("read", cfg, NodeContext("read", {}, {}, Resources()))
    raw = frames(n)
    best = float("inf")
    gc.disable()  # as during a run (engine.runtime.gc collects on a timer instead)
    for _ in range(rounds):
        tracker = AckTracker()
        src._out = SourceOutput("read", tracker, None, NodeStats("read", "source", "jetstream_source"))  # type: ignore[arg-type]
        c0 = time.process_time()
        for lo in range(0, n, 1000):
            msgs, errors = src._decode(raw[lo : lo + 1000])
            assert len(msgs) == min(1000, n - lo) and not errors
        best = min(best, time.process_time() - c0)
        gc.collect()
    first = src._decode(raw[:1])[0][0]
    assert first.body["id"] == 0 and first.meta["seq"] == 1 and first.meta["delivered"] == 1
    print(f"_decode: {best / n * 1e6:.3f} µs/msg (best of {rounds}, {n:,} frames)")
    return best / n


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    (reader if sys.argv[3:] == ["reader"] else main)(*args)  # type: ignore[operator]
