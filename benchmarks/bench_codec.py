"""What the payload limits cost on the hot path: `engine.codec.loads` against bare `orjson.loads`.

    python -m pytest benchmarks/bench_codec.py --benchmark-only --benchmark-columns=min,median \
        --benchmark-min-rounds=30

Each round decodes 1,000 payloads; divide by 1,000 for the cost per message. `order` (110 bytes)
is too short to nest 255 levels: one length test is added. `lines` (1 KB, 31 objects) is counted
(two `count` calls in C). `wide` (10 KB, 300 objects) has enough brackets for its depth to be
measured: one encode of the decoded value. The machine is shared with other work: figures are noisy.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine import codec

N = 1000
ORDER = orjson.dumps(
    {
        "id": 12345,
        "user": "u7",
        "amount": 249.5,
        "currency": "EUR",
        "tags": ["a", "b"],
        "ship": {"city": "Lyon", "zip": "69001"},
    }
)
LINES = orjson.dumps({"id": 7, "lines": [{"sku": f"s{i}", "qty": i % 5, "price": 9.5} for i in range(30)]})
WIDE = orjson.dumps([{"sku": f"s{i}", "qty": i % 5, "note": "[{"} for i in range(300)])
PAYLOADS = {"order": [ORDER] * N, "lines": [LINES] * N, "wide": [WIDE] * N}


def decode_all(loads: Any, payloads: list[bytes]) -> int:
    return len([loads(p) for p in payloads])


@pytest.mark.parametrize("payload", ["order", "lines", "wide"])
@pytest.mark.parametrize("decoder", ["orjson", "codec"])
def test_loads(benchmark: Any, decoder: str, payload: str) -> None:
    loads = orjson.loads if decoder == "orjson" else codec.loads
    assert benchmark(decode_all, loads, PAYLOADS[payload]) == N
