"""`JetStreamSource._decode` alone: CPU per message for frames as the server delivers them (issue 24).

    .venv/bin/python benchmarks/bench_js_decode.py [N]

Builds N raw frames (subject, reply `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ns>.<pending>`,
a 100-byte JSON body, no headers) and decodes them in batches of 1,000, as `run` does; prints the
best of 7 rounds in µs per message (process CPU time, with the
collector off as during a run). No services needed. To compare two trees,
run it under each with PYTHONPATH=<tree> (see docs/perf.md).
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


def main(n: int = 200_000) -> float:
    cfg = JetStreamSourceConfig(connection="nats", stream="ORDERS", durable="perf")
    src = JetStreamSource("read", cfg, NodeContext("read", {}, {}, Resources()))
    raw = frames(n)
    best = float("inf")
    gc.disable()  # as during a run (engine.runtime.gc collects on a timer instead)
    for _ in range(7):
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
    print(f"_decode: {best / n * 1e6:.3f} µs/msg (best of 7, {n:,} frames)")
    return best / n


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
