"""JSON Schema per message: `jsonschema` (pure Python) beside `jsonschema-rs` (Rust), and the operator.

    python -m pytest benchmarks/bench_validate.py --benchmark-only --benchmark-columns=mean,ops

Each round validates the same 1,000 order bodies (95% valid, 5% with two violations) against
schemas/examples/order.json, with a validator compiled once, as the `validate` operator does.
Divide the mean by 1,000 for the cost per message. The machine is shared: figures are noisy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.validate import Validate, ValidateConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "examples" / "order.json").read_text())
N = 1000


def bodies() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(N):
        body: dict[str, Any] = {"id": i, "user": f"u{i % 7}", "amount": float(i % 250), "tags": ["a", "b"]}
        if i % 20 == 0:
            body = {"id": -i, "user": "", "amount": i}
        out.append(body)
    return out


BODIES = bodies()
VALID = sum(1 for b in BODIES if b["id"] >= 0 and b["user"])


def test_jsonschema_python(benchmark: Any) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    ok = benchmark(lambda: sum(1 for b in BODIES if validator.is_valid(b)))
    assert ok == VALID


def test_jsonschema_rs(benchmark: Any) -> None:
    validator = jsonschema_rs.Draft202012Validator(SCHEMA)
    ok = benchmark(lambda: sum(1 for b in BODIES if validator.is_valid(b)))
    assert ok == VALID


@pytest.mark.parametrize("lib", ["python", "rs"])
def test_every_violation(benchmark: Any, lib: str) -> None:
    """What an invalid message costs: listing every violation (the errors port carries them all)."""
    invalid = [b for b in BODIES if b["id"] < 0]
    if lib == "python":
        v: Any = jsonschema.Draft202012Validator(SCHEMA)
        count = benchmark(lambda: sum(len(list(v.iter_errors(b))) for b in invalid))
    else:
        v = jsonschema_rs.Draft202012Validator(SCHEMA)
        count = benchmark(lambda: sum(len(list(v.iter_errors(b))) for b in invalid))
    assert count == 2 * len(invalid)


def test_validate_operator_batch(benchmark: Any) -> None:
    """The operator on a micro-batch of 1,000 (valid pass, invalid become error envelopes)."""
    op = Validate(
        "v", ValidateConfig.model_validate({"schema": SCHEMA}), NodeContext("v", {}, {}, Resources())
    )
    asyncio.run(op.start())
    msgs = [Msg(b) for b in BODIES]
    out = Outputs("v", ("out",), NodeStats("v", "operator", "validate"))

    def run() -> int:
        op.process(msgs, out)
        return len(out.take()["out"])

    assert benchmark(run) == VALID
