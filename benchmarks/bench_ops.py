"""Per-message cost of route, batch, compress and decompress on one micro-batch (no scheduler).

    python -m pytest benchmarks/bench_ops.py --benchmark-only --benchmark-columns=median,ops

Each round processes 1,000 order bodies; divide the median by 1,000 for the cost per message.
CEL conditions run on whatever `engine.expr` picks (compiled Python when engine.celc covers them).
The machine is shared with other work: figures are noisy.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.batch import Batch
from operators.compress import Compress, Decompress
from operators.route import Route

N = 1000
BODIES = [{"id": i, "user": f"u{i % 7}", "amount": float(i % 250), "tags": ["a", "b"]} for i in range(N)]


def build(cls: Any, config: dict[str, Any]) -> tuple[Any, Outputs]:
    cfg = cls.Config.model_validate(config)
    op = cls("n", cfg, NodeContext("n", {}, {}, Resources()))
    ports = cls.output_ports(cfg) if hasattr(cls, "output_ports") else ("out",)
    return op, Outputs("n", (*ports, "errors"), NodeStats("n", "operator", cls.__name__))


def run_batch(op: Any, out: Outputs, msgs: list[Msg]) -> int:
    op.process(msgs, out)
    op.flush(out)
    return sum(len(v) for v in out.take().values())


@pytest.mark.parametrize(
    "config",
    [
        {"routes": {"vip": 'msg.user in ["u1", "u2"]', "big": "msg.amount > 200.0", "rest": "true"}},
        {"mode": "all", "routes": {"vip": 'msg.user in ["u1", "u2"]', "big": "msg.amount > 200.0"}},
        {"mode": "round_robin", "ports": ["a", "b", "c"]},
        {"mode": "consistent_hash", "ports": ["a", "b", "c", "d"], "key": "msg.user"},
    ],
    ids=["first", "all", "round_robin", "consistent_hash"],
)
def test_route(benchmark: Any, config: dict[str, Any]) -> None:
    op, out = build(Route, config)
    msgs = [Msg(b) for b in BODIES]
    assert benchmark(run_batch, op, out, msgs) >= N


def test_batch(benchmark: Any) -> None:
    op, out = build(Batch, {"count": 100})
    msgs = [Msg(b, {}, None, 64) for b in BODIES]
    assert benchmark(run_batch, op, out, msgs) == N // 100


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compress_and_decompress(benchmark: Any, codec: str) -> None:
    pack, pout = build(Compress, {"codec": codec})
    unpack, uout = build(Decompress, {"parse": "json"})
    msgs = [Msg(b) for b in BODIES]

    def round_trip() -> int:
        pack.process(msgs, pout)
        unpack.process(pout.take()["out"], uout)
        return len(uout.take()["out"])

    assert benchmark(round_trip) == N
