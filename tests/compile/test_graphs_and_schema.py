"""Every example graph validates; the committed graph schema is current; pictures render."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.cli import main
from engine.compile import render
from engine.compile.schema import graph_schema
from engine.compile.validate import check_file, check_text, load_graph

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))


@pytest.mark.parametrize("path", GRAPHS, ids=[p.name for p in GRAPHS])
def test_example_graph_validates(path: Path) -> None:
    graph, diags = check_file(str(path))
    assert graph is not None, "\n".join(d.format() for d in diags)
    assert [d for d in diags if d.severity == "error"] == []
    # the examples are the safe configurations: no lost-deduplication or replay-conflict warning
    assert [d.format() for d in diags if d.code in ("W342", "W360")] == []
    # the generated schema accepts it too (editors check graph files with it)
    jsonschema.validate(yaml.safe_load(path.read_text()), graph_schema())


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "schemas" / "graph.schema.json").read_text())
    assert committed == graph_schema(), "run: streamdag schema > schemas/graph.schema.json"


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(graph_schema())


def test_schema_rejects_unknown_config_field() -> None:
    doc = {"version": 1, "name": "x", "nodes": {"m": {"type": "map", "inputs": ["a"], "config": {"exp": "1"}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, graph_schema())


def test_pictures_include_ports_and_error_edges() -> None:
    graph = load_graph(str(ROOT / "graphs" / "demo.yaml"))
    mermaid = render.to_mermaid(graph)
    ids = {name: f"n{i}" for i, name in enumerate(render.to_networkx(graph).nodes)}
    assert f"{ids['orders']} --> {ids['price']}" in mermaid and f"{ids['price']} -. errors .-> {ids['dead']}" in mermaid
    dot = render.to_dot(graph)
    assert '"price" -> "dead" [style=dashed, color=red, label="errors"]' in dot
    svg = render.to_svg(graph)
    assert svg.startswith("<svg") and svg.count('class="node"') == len(graph.nodes)


def test_mermaid_ids_are_safe_whatever_the_node_names() -> None:
    """`end` (and `graph`, `o1`, quotes in a port) would break Mermaid as ids: ids are n0, n1...,
    the names are quoted labels."""
    graph, diags = check_text(textwrap.dedent("""\
        version: 1
        name: reserved
        defaults: {dead_letter: end}
        nodes:
          graph: {type: generate, config: {count: 1}}
          o1: {type: route, inputs: [graph], config: {routes: {class: 'msg.i > 0'}}}
          end: {type: stdout, inputs: [o1.class, o1.unmatched]}
    """), "g.yaml", {})
    assert graph is not None, diags
    mermaid = render.to_mermaid(graph)
    lines = mermaid.splitlines()
    assert lines[0] == "flowchart LR"
    node_lines = [ln.strip() for ln in lines[1:] if "<br/>" in ln]
    assert {re.match(r"(n\d+)[\[(]", ln).group(1) for ln in node_lines} == {"n0", "n1", "n2"}
    assert any('"end<br/><small>stdout</small>"' in ln for ln in node_lines)
    edges = [ln.strip() for ln in lines[1:] if "<br/>" not in ln]
    assert all(re.fullmatch(r'n\d+ (-->|-- "[^"]+" -->|-\. errors \.->) n\d+', e) for e in edges), edges
    assert not re.search(r"\b(end|graph|o1)\b(?![^\"]*\")", "\n".join(edges))


def test_cli_validate_reports_every_error_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nnodes:\n  a:\n    type: generat\n  b:\n    type: map\n    inputs: [zz]\n"
                   "    config: {expr: 'msg +'}\n")
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    codes = [line.split(": ")[1].split()[0] for line in out if line.startswith(str(bad)) and "warning:" not in line]
    assert codes == ["E200", "E210", "E203"]
    assert out[0].startswith(f"{bad}:5:11: E200") and "did you mean 'generate'" in out[0]
    assert main(["validate", str(ROOT / "graphs" / "demo.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("ok (5 nodes)")


def test_cli_validate_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nnodes:\n  a:\n    type: generate\n  b:\n    type: map\n    inputs: [a]\n"
                   "    config: {expr: 'msg +'}\n")
    assert main(["validate", "--format", "json", str(bad), str(ROOT / "graphs" / "demo.yaml")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in report] == [False, True]
    codes = [(d["code"], d["line"], d["severity"]) for d in report[0]["diagnostics"]]
    assert ("E203", 9, "error") in codes and ("W300", 4, "warning") in codes
    assert {c["node"] for c in report[1]["cel"]} == {"orders", "price", "big_only"}


def test_cli_explain_cel_says_why_an_expression_is_not_compiled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import celc

    # every expression the base environment accepts compiles today; pretend one does not
    monkeypatch.setattr(celc, "try_compile", lambda source: None)
    monkeypatch.setattr(celc, "explain", lambda source: "not covered: test")
    assert main(["validate", "--explain-cel", str(ROOT / "graphs" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.strip().startswith("price:")][0]
    assert "runtime" in line and "(not covered: test)" in line


def test_cli_explain_cel_says_which_expressions_run_a_batch_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--explain-cel", str(ROOT / "graphs" / "demo.yaml")]) == 0
    lines = {x.split(":")[0].strip(): x for x in capsys.readouterr().out.splitlines() if x.startswith("  ")}
    assert "compiled, whole batches" in lines["price"] and "compiled, whole batches" in lines["big_only"]
    assert "compiled  " in lines["orders"] and "whole batches" not in lines["orders"]  # a generate template
    assert main(["validate", "--explain-cel", "--format", "json", str(ROOT / "graphs" / "demo.yaml")]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    cel = {c["node"]: c for c in report["cel"]}
    assert cel["price"]["whole_batches"] is True and cel["orders"]["whole_batches"] is False
