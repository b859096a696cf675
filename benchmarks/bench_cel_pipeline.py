"""file -> parse -> filter -> map -> file in memory: where CEL's cost shows in a whole pipeline.

The same pipeline as plain Python, with compiled CEL (per message and batched), with the runtime
(cel-expr-python) and in Bytewax 0.21 (skipped if not installed), in one run. It measures the CEL
stages inside a plain loop, not the engine's scheduler. Run:
`python -m pytest benchmarks/bench_cel_pipeline.py --benchmark-columns=min,median` and read
`msgs_per_s` in `--benchmark-json` output, or the printed summary with `-s`. Shared machine: noisy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.celc import try_compile, try_compile_batch
from engine.expr import EvalError, compile_expr

N = int(os.environ.get("CEL_PIPELINE_N", "200000"))
FILTER = 'msg.amount > 10.0 && "a" in msg.tags'
MAP = '{"id": msg.id, "total": msg.amount * 1.2}'
BATCH = 1000


@pytest.fixture(scope="module")
def input_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cel") / "in.jsonl"
    with path.open("w") as f:
        for i in range(N):
            tags = ["a", "b"] if i % 3 else ["c"]
            f.write(json.dumps({"id": i, "amount": float(i % 40), "tags": tags, "note": "x" * 20}) + "\n")
    return path


def _plain(src: Path, dst: Path) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        for line in f:
            m = orjson.loads(line)
            if m["amount"] > 10.0 and "a" in m["tags"]:
                g.write(orjson.dumps({"id": m["id"], "total": m["amount"] * 1.2}) + b"\n")


def _per_message(keep: Callable[..., Any], make: Callable[..., Any]) -> Callable[[Path, Path], None]:
    def run(src: Path, dst: Path) -> None:
        meta: dict[str, Any] = {}
        with src.open("rb") as f, dst.open("wb") as g:
            for line in f:
                m = orjson.loads(line)
                if keep(m, meta) is True:
                    g.write(orjson.dumps(make(m, meta)) + b"\n")

    return run


def _batched(src: Path, dst: Path) -> None:
    keep, make = try_compile_batch(FILTER), try_compile_batch(MAP)
    assert keep is not None and make is not None
    with src.open("rb") as f, dst.open("wb") as g:
        while lines := f.readlines(BATCH * 64):
            batch = [orjson.loads(line) for line in lines]
            metas = [{}] * len(batch)
            flags = keep(batch, metas)
            kept = [m for m, ok in zip(batch, flags) if ok is True]
            out = make(kept, metas[: len(kept)])
            g.write(b"".join(orjson.dumps(v) + b"\n" for v in out if not isinstance(v, EvalError)))


def _bytewax(src: Path, dst: Path) -> None:
    bytewax_ops = pytest.importorskip("bytewax.operators")
    from bytewax.connectors.files import FileSink, FileSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    flow = Dataflow("cel_bench")
    lines = bytewax_ops.input("in", flow, FileSource(src, batch_size=BATCH))
    parsed = bytewax_ops.map("parse", lines, orjson.loads)
    kept = bytewax_ops.filter("filter", parsed, lambda m: m["amount"] > 10.0 and "a" in m["tags"])
    out = bytewax_ops.map(
        "map", kept, lambda m: ("all", orjson.dumps({"id": m["id"], "total": m["amount"] * 1.2}).decode())
    )
    bytewax_ops.output("out", out, FileSink(dst))  # a keyed sink: one key, one file
    run_main(flow)


def _variants() -> dict[str, Callable[[Path, Path], None]]:
    compiled_keep, compiled_make = try_compile(FILTER), try_compile(MAP)
    assert compiled_keep is not None and compiled_make is not None
    return {
        "plain-python": _plain,
        "cel-compiled": _per_message(compiled_keep, compiled_make),
        "cel-compiled-batch": _batched,
        "cel-expr-python": _per_message(
            compile_expr(FILTER, allow_compiler=False).fn, compile_expr(MAP, allow_compiler=False).fn
        ),
        "bytewax-0.21": _bytewax,
    }


@pytest.mark.parametrize("variant", list(_variants()))
def test_pipeline(benchmark: Any, variant: str, input_file: Path, tmp_path: Path) -> None:
    run = _variants()[variant]
    dst = tmp_path / "out.jsonl"
    benchmark.pedantic(run, args=(input_file, dst), rounds=3, iterations=1)
    expected = sum(1 for i in range(N) if i % 40 > 10 and i % 3)
    assert sum(1 for _ in dst.open("rb")) == expected
    first = orjson.loads(dst.open("rb").readline())
    assert first == {"id": 11 if 11 % 3 else 13, "total": pytest.approx(first["total"])}
    rate = N / benchmark.stats.stats.min
    benchmark.extra_info["msgs_per_s"] = round(rate)
    print(f"\n{variant:20} {rate:12,.0f} msg/s")
