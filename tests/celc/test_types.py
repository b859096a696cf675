"""Types from the schema: CEL downstream of a `validate` node checked offline against its schema (E206)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.celc.types import schema_issues
from engine.compile.validate import check_file

SCHEMA = {
    "type": "object",
    "properties": {
        "amount": {"type": "integer"},
        "price": {"type": "number"},
        "name": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
    },
    "$defs": {"item": {"type": "object", "properties": {"qty": {"type": "integer"}}}},
}


@pytest.mark.parametrize(("src", "want"), [
    ("msg.amount * 1.2", "use double(msg.amount)"),
    ("1.5 + msg.amount", "use double(msg.amount)"),
    ('{"t": msg.amount / 2.0}', "use double(msg.amount)"),
    ("msg.items.map(i, i.qty * 0.5)", "use double(i.qty)"),
    ("msg.ammount + 1", "no field 'ammount' in the input's schema (did you mean 'amount'?)"),
])
def test_certain_errors_are_found_with_the_fix(src: str, want: str) -> None:
    issues = schema_issues(src, SCHEMA)
    assert len(issues) == 1 and want in issues[0], issues


@pytest.mark.parametrize("src", [
    "double(msg.amount) * 1.2", "msg.amount * 2", "msg.price * 1.2",  # a number may be int or double
    "has(msg.ammount)", "msg.other + 1",  # not close to a declared field, extra fields allowed
    "msg.amount > 1.5", "msg.name + 'x'", "msg.?amount.orValue(0) * 2",
])
def test_no_false_alarms(src: str) -> None:
    assert schema_issues(src, SCHEMA) == []


def test_pattern_properties_may_admit_a_name() -> None:
    patterned = {**SCHEMA, "patternProperties": {"^amount_": {"type": "integer"}}, "additionalProperties": False}
    assert schema_issues("msg.amount_2 + 1", patterned) == []


def test_closed_schema_reports_any_unknown_field() -> None:
    closed = {**SCHEMA, "additionalProperties": False}
    assert schema_issues("msg.zzz", closed) == ["msg has no field 'zzz' in the input's schema"]


def test_validate_reports_e206_downstream_of_a_validate_node(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("""\
version: 1
name: typed
defaults: {dead_letter: dead}
schemas:
  order: {type: object, properties: {amount: {type: integer}, name: {type: string}}}
nodes:
  src: {type: generate, config: {count: 2, template: '{"amount": msg.i, "name": "x"}'}}
  check: {type: validate, inputs: [src], config: {schema: order}}
  price: {type: map, inputs: [check], config: {expr: '{"total": msg.amount * 1.2, "n": msg.nmae}'}}
  untyped: {type: map, inputs: [src], config: {expr: '{"total": msg.amount * 1.2}'}}
  fixed: {type: map, inputs: [check], config: {expr: '{"total": double(msg.amount) * 1.2, "n": msg.name}'}}
  out: {type: stdout, inputs: [price, untyped, fixed]}
  dead: {type: stdout, inputs: []}
""")
    graph, diags = check_file(str(path))
    e206 = [d for d in diags if d.code == "E206"]
    assert graph is None and len(e206) == 2, diags
    assert all(d.line == 9 for d in e206)  # the `price` node only: `untyped` has no schema, `fixed` is right
    assert "use double(msg.amount)" in e206[0].message and "did you mean 'name'" in e206[1].message


def test_a_source_with_a_declared_schema_types_its_consumers(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text("""\
version: 1
name: h
defaults: {dead_letter: dead}
nodes:
  ingest:
    type: http_source
    config: {port: 8080, schema: {type: object, properties: {qty: {type: integer}}}}
  m: {type: map, inputs: [ingest], config: {expr: 'msg.qty * 0.5'}}
  dead: {type: stdout, inputs: [m]}
""")
    _, diags = check_file(str(path))
    assert [(d.code, d.line) for d in diags if d.severity == "error"] == [("E206", 8)], diags
    assert "use double(msg.qty)" in diags[0].message
