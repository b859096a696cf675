"""`validate`: JSON Schema per message, every violation on the errors port, drafts, offline checks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import main
from engine.compile.validate import check_text
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.validate import Validate, ValidateConfig

ROOT = Path(__file__).resolve().parents[2]
ORDER = json.loads((ROOT / "schemas" / "examples" / "order.json").read_text())


def make(config: dict[str, Any], schemas: dict[str, Any] | None = None) -> Validate:
    ctx = NodeContext("v", {}, schemas or {}, Resources())
    op = Validate("v", ValidateConfig.model_validate(config), ctx)
    asyncio.run(op.start())
    return op


def run_batch(op: Validate, bodies: list[Any]) -> tuple[dict[str, list[Msg]], AckTracker]:
    tracker = AckTracker()
    out = Outputs("v", ("out",), NodeStats("v", "operator", "validate"))
    op.process([Msg(b, {"line": i}, tracker.new(i)) for i, b in enumerate(bodies)], out)
    return out.take(), tracker


def test_valid_pass_invalid_go_to_errors_with_every_violation() -> None:
    op = make({"schema": "order"}, {"order": ORDER})
    lists, tracker = run_batch(
        op,
        [
            {"id": 1, "user": "u1", "amount": 5},
            {"id": -1, "user": "", "amount": "x"},
            {"id": 2, "user": "u2", "amount": 9.5, "tags": ["a"]},
        ],
    )
    assert [m.body["id"] for m in lists["out"]] == [1, 2]
    [bad] = lists["errors"]
    assert bad.body["node"] == "v" and bad.body["payload"] == {"id": -1, "user": "", "amount": "x"}
    assert [v["path"] for v in bad.body["violations"]] == ["/id", "/user", "/amount"]
    assert [v["keyword"] for v in bad.body["violations"]] == ["minimum", "minLength", "type"]
    assert bad.body["error"].startswith(
        "schema: 3 violation(s): /id: -1 is less than the minimum of 0; /user:"
    )
    assert bad.ack is lists["errors"][0].ack and tracker.in_flight == 3  # nothing settled by validate itself


def test_a_batch_keeps_its_order_on_every_path() -> None:
    """All valid (one check of the whole batch), some invalid, one body no JSON value (one by one)."""
    op = make({"schema": {"type": "object", "required": ["id"]}})
    bodies: list[Any] = [{"id": i} for i in range(20)]
    lists, _ = run_batch(op, bodies)
    assert [m.body for m in lists["out"]] == bodies and lists["errors"] == []
    mixed = [*bodies[:5], {"no": 1}, *bodies[5:9], {"no": 2}]
    lists, _ = run_batch(op, mixed)
    assert [m.body for m in lists["out"]] == bodies[:9]
    assert [m.body["payload"] for m in lists["errors"]] == [{"no": 1}, {"no": 2}]
    lists, _ = run_batch(op, [*mixed, {2: "int key"}])
    assert [m.body for m in lists["out"]] == bodies[:9] and len(lists["errors"]) == 3
    assert lists["errors"][2].body["error"].startswith("schema: body is not a JSON value")


def test_violations_are_capped() -> None:
    schema = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(30)}}
    op = make({"schema": schema, "max_violations": 4})
    lists, _ = run_batch(op, [{f"f{i}": i for i in range(30)}])
    [bad] = lists["errors"]
    assert len(bad.body["violations"]) == 4 and bad.body["violations_truncated"] == 26
    assert bad.body["error"].startswith("schema: 30 violation(s):") and bad.body["error"].endswith(
        "and 26 more"
    )


def test_body_that_is_not_json_goes_to_errors() -> None:
    op = make({"schema": {"type": "object"}})
    lists, _ = run_batch(op, [b"\x1f\x8b raw", {1: "int key"}, {"ok": True}])
    assert [m.body for m in lists["out"]] == [{"ok": True}]
    reasons = [m.body["error"] for m in lists["errors"]]
    assert len(reasons) == 2 and all(r.startswith("schema: body is not a JSON value") for r in reasons)


@pytest.mark.parametrize(("draft", "valid"), [("2020-12", False), ("4", True)])
def test_draft_default_and_override(draft: str, valid: bool) -> None:
    # `prefixItems` exists since 2020-12; draft 4 ignores it, so [1] passes there
    op = make({"schema": {"type": "array", "prefixItems": [{"type": "string"}]}, "draft": draft})
    lists, _ = run_batch(op, [[1]])
    assert (len(lists["out"]) == 1) is valid


def test_dollar_schema_wins_over_draft() -> None:
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "prefixItems": [{"type": "string"}]}
    lists, _ = run_batch(make({"schema": schema, "draft": "2020-12"}), [[1]])
    assert len(lists["out"]) == 1


def test_formats_are_asserted_only_when_asked() -> None:
    schema = {"type": "string", "format": "email"}
    assert len(run_batch(make({"schema": schema}), ["nope"])[0]["out"]) == 1
    assert len(run_batch(make({"schema": schema, "formats": True}), ["nope"])[0]["errors"]) == 1


GRAPH = """\
version: 1
name: v
schemas:
  order: {order}
nodes:
  read:
    type: file_source
    config: {{path: in.ndjson, line_numbers: true}}
  check:
    type: validate
    inputs: [read]
    config: {{schema: {schema}}}
  ok:
    type: file_sink
    inputs: [check]
    config: {{path: ok.ndjson}}
  dead:
    type: file_sink
    inputs: [read.errors, check.errors, ok.errors]
    config: {{path: dead.ndjson}}
"""


def test_end_to_end_every_message_accounted_for(tmp_path: Path, run: Any) -> None:
    lines = [{"id": i, "user": f"u{i}", "amount": i * 1.5} for i in range(200)]
    lines[17] = {"id": 17, "user": "u17"}
    lines[99] = {"id": "x", "user": "", "amount": -1}
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines) + b"not json\n")
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.format(order=json.dumps(str(ROOT / "schemas/examples/order.json")), schema="order"))
    report = run(path)
    assert report.error is None and report.balanced
    assert report.totals() == {
        "entered": 201,
        "delivered": 198,
        "filtered": 0,
        "dead_lettered": 3,
        "nacked": 0,
        "in_flight": 0,
    }
    ok = [orjson.loads(x) for x in (tmp_path / "ok.ndjson").read_bytes().splitlines()]
    assert [o["id"] for o in ok] == [i for i in range(200) if i not in (17, 99)]
    dead = [orjson.loads(x) for x in (tmp_path / "dead.ndjson").read_bytes().splitlines()]
    by_node = sorted((d["node"], d["meta"]["line"]) for d in dead)
    assert by_node == [("check", 18), ("check", 100), ("read", 201)]
    assert {v["path"] for d in dead if d["node"] == "check" for v in d["violations"]} == {
        "/",
        "/id",
        "/user",
        "/amount",
    }


def test_offline_unknown_schema_name_and_invalid_inline_schema(tmp_path: Path) -> None:
    text = GRAPH.format(order=json.dumps(str(ROOT / "schemas/examples/order.json")), schema="ordr")
    graph, diags = check_text(text, str(tmp_path / "g.yaml"))
    assert graph is None
    [d] = [d for d in diags if d.severity == "error"]
    assert (d.code, d.line, d.col) == ("E217", 12, 22) and "did you mean 'order'" in d.message
    text = GRAPH.format(order=json.dumps(str(ROOT / "schemas/examples/order.json")), schema="{type: 12}")
    graph, diags = check_text(text, str(tmp_path / "g.yaml"))
    assert graph is None and [d.code for d in diags if d.severity == "error"] == ["E218"]


def test_orders_example_graph_runs_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """graphs/orders.yaml end to end: 44 lines in, each one delivered, filtered or dead-lettered."""
    out = {name: tmp_path / f"{name}.ndjson" for name in ("vip", "out", "dead")}
    sets = [a for name, p in out.items() for a in ("--set", f"nodes.{name}.config.path={p}")]
    assert main(["run", str(ROOT / "graphs" / "orders.yaml"), *sets]) == 0
    summary = capsys.readouterr().err
    assert "integrity OK: 44 in = 27 delivered + 13 filtered + 4 dead-lettered + 0 failed" in summary
    rows = {k: [orjson.loads(x) for x in p.read_bytes().splitlines()] for k, p in out.items()}
    assert {r["user"] for r in rows["vip"]} <= {"u1", "u2"} and len(rows["vip"]) == 10
    assert all(r["user"] not in ("u1", "u2") and r["total"] > 100.0 for r in rows["out"])
    assert sorted(d["node"] for d in rows["dead"]) == ["check", "check", "check", "read"]


def test_remote_refs_are_never_fetched(tmp_path: Path, run: Any) -> None:
    """Inline: E218 offline. From a schema file: the node fails to start with a clear error, no data flows."""
    remote = {"$ref": "https://schemas.example.invalid/order.json"}
    (tmp_path / "remote.json").write_text(json.dumps(remote))
    (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
    path = tmp_path / "g.yaml"
    path.write_text(GRAPH.format(order='"remote.json"', schema="order"))
    report = run(path)
    assert "failed to start: schema does not compile" in str(report.error) and "Retrieval is disabled" in str(
        report.error
    )
    assert report.totals()["entered"] == 0
    text = GRAPH.format(order='"remote.json"', schema=json.dumps(remote))
    graph, diags = check_text(text, str(path))
    assert graph is None and [d.code for d in diags if d.severity == "error"] == ["E218"]
    assert "Retrieval is disabled" in diags[0].message
