"""What the payload limits cost on the hot path: `engine.codec.loads` against bare `orjson.loads`.

    python -m pytest benchmarks/bench_codec.py --benchmark-only --benchmark-columns=median,ops

Each round decodes 1,000 payloads; divide the median by 1,000 for the cost per message. `order` is a
typical small message (fewer brackets than the depth limit: only the two `count` calls are added);
`wide` holds 300 objects, so the depth is measured too (string stripping and bracket passes in C).
The machine is shared with other work: figures are noisy.
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
WIDE = orjson.dumps([{"sku": f"s{i}", "qty": i % 5, "note": "[{"} for i in range(300)])
PAYLOADS = {"order": [ORDER] * N, "wide": [WIDE] * N}


def decode_all(loads: Any, payloads: list[bytes]) -> int:
    return len([loads(p) for p in payloads])


@pytest.mark.parametrize("payload", ["order", "wide"])
@pytest.mark.parametrize("decoder", ["orjson", "codec"])
def test_loads(benchmark: Any, decoder: str, payload: str) -> None:
    loads = orjson.loads if decoder == "orjson" else codec.loads
    assert benchmark(decode_all, loads, PAYLOADS[payload]) == N
