"""Issue 10: how much of the JetStream -> PostgreSQL pipeline's CPU goes to CEL.

    BENCH_JS_N=200000 .venv/bin/python -m pytest benchmarks/bench_cel_share.py -s

Runs scenario 2's engine graph (jetstream_source -> filter -> map -> validate -> postgres_sink
upsert, `benchmarks/jetstream_pg.py`) over a backlog and times every CEL evaluation the filter and
the map make (`Expr.many`, one timer per batch; `Expr.fn` calls are counted too, for batches that
go message by message). Prints the CEL seconds as a share of the run's process CPU time. Needs
the NATS and PostgreSQL services. The target: CEL no longer visible in a profile; the test fails
when CEL takes a tenth of the CPU or more (measured: ~5%, where nats-py's protocol parser alone
takes ~30% and the JetStream source ~20%).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from benchmarks.scenario_jetstream import run_throughput
from engine import expr as expr_module

N = int(os.environ.get("BENCH_JS_N", "200000"))


@pytest.mark.services
def test_cel_share_of_jetstream_pg_cpu(benchmark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spent = {"seconds": 0.0, "batches": 0}
    many = expr_module.Expr.many

    def timed_many(self: Any, msgs: list[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return many(self, msgs)
        finally:
            spent["seconds"] += time.perf_counter() - t0
            spent["batches"] += 1

    monkeypatch.setattr(expr_module.Expr, "many", timed_many)
    records: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: records.extend(run_throughput("backlog", N, ["engine"])), rounds=1, iterations=1)
    (rec,) = records
    cpu = rec["cpu_us_per_msg"] * N / 1e6
    share = spent["seconds"] / cpu
    benchmark.extra_info.update(rec)
    benchmark.extra_info["cel_seconds"] = round(spent["seconds"], 4)
    benchmark.extra_info["cel_share_of_cpu"] = round(share, 4)
    print(f"\n{N:,} messages at {rec['msg_per_s']:,} msg/s, {cpu:.2f} s of CPU; CEL (filter + map, "
          f"{spent['batches']} batches): {spent['seconds']:.3f} s = {share:.1%} of the CPU, "
          f"{spent['seconds'] / N * 1e6:.2f} µs a message")
    assert spent["batches"] > 0 and share < 0.10
