"""`streamdag test`: the example graphs' test files pass; failing expectations are reported with
file:line and a diff; JUnit output; lookup stubs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from engine.cli import main
from engine.testing.runner import run_file
from engine.testing.spec import check_test_file

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ROOT / "graphs" / "orders.yaml"

FAILING = """\
graph: {graph}
cases:
  - name: wrong body
    inputs:
      read: [{{body: {{id: 1, user: u1, amount: 100}}}}]
    expect:
      vip:
        bodies: [{{id: 1, user: u1, total: 121.0}}]
  - name: missing message
    inputs:
      read: [{{body: {{id: 1, user: u1, amount: 100}}}}]
    expect:
      vip: {{bodies: [{{id: 1, user: u1, total: 120.0}}, {{id: 2, user: u1, total: 130.0}}]}}
  - name: extra message
    inputs:
      read: [{{body: {{id: 1, user: u1, amount: 100}}}}, {{body: {{id: 2, user: u2, amount: 100}}}}]
    expect:
      vip: {{count: 1}}
  - name: wrong port
    inputs:
      read: [{{body: {{id: 1, user: u7, amount: 100}}}}]
    expect:
      split.vip: {{count: 1}}
  - name: dead letter reason
    inputs:
      read: [{{body: {{id: 5, user: u3}}}}]
    dead_letters:
      - {{node: check, reason: "not the reason"}}
  - name: unexpected dead letter
    inputs:
      read: [{{raw: "nope"}}]
  - name: passes
    inputs:
      read: [{{body: {{id: 1, user: u1, amount: 100}}, meta: {{line: 7}}}}]
    expect:
      vip: {{bodies: [{{id: 1, user: u1, total: 120.0}}]}}
      check: {{contains: {{user: u1}}, meta: {{line: 7, source: read}}}}
  - name: wrong field and meta
    inputs:
      read: [{{body: {{id: 1, user: u1, amount: 100}}}}]
    expect:
      check:
        contains: {{user: u2}}
        meta: {{line: 7}}
"""


def _write(tmp_path: Path, text: str, name: str = "t.test.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_every_example_graph_has_a_passing_test_file(capsys: pytest.CaptureFixture[str]) -> None:
    graphs = sorted(p.stem for p in (ROOT / "graphs").glob("*.yaml"))
    tests = sorted(p.name.removesuffix(".test.yaml") for p in (ROOT / "graphs" / "tests").glob("*.test.yaml"))
    assert graphs == tests
    assert main(["test", str(ROOT / "graphs" / "tests")]) == 0
    out = capsys.readouterr().out
    assert out.count("PASSED") >= len(graphs) and "FAILED" not in out


def test_failures_name_the_expectation_line_and_show_a_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, FAILING.format(graph=ORDERS))
    tf, diags = check_test_file(str(path))
    assert tf is not None, diags
    results = {r.name: r for r in run_file(tf)}
    assert results["passes"].passed
    wrong = results["wrong body"].failures
    assert [(f.line, f.message.split(" (")[0]) for f in wrong] == [(8, "vip: bodies differ")]
    assert "-{\"id\":1,\"total\":121,\"user\":\"u1\"}" in wrong[0].diff
    assert "+{\"id\":1,\"total\":120,\"user\":\"u1\"}" in wrong[0].diff
    missing = results["missing message"].failures
    assert missing[0].line == 13 and "expected 2, got 1" in missing[0].message
    assert "-{\"id\":2" in missing[0].diff
    extra = results["extra message"].failures
    assert extra[0].line == 18 and extra[0].message == "vip: expected 1 message(s), got 2"
    port = results["wrong port"].failures
    assert port[0].line == 23 and port[0].message == "split.vip: expected 1 message(s), got 0"
    reason = results["dead letter reason"].failures
    assert reason[0].line == 28 and reason[0].message == "dead letter not found: node='check', reason='not the reason'"
    assert "amount" in reason[0].diff  # the actual reason is shown
    assert "1 unexpected dead letter(s)" in [f.message for f in reason]
    unexpected = results["unexpected dead letter"].failures
    assert unexpected[0].line == 29 and "invalid JSON" in unexpected[0].diff
    field = results["wrong field and meta"].failures
    assert [(f.line, f.message) for f in field] == [
        (43, 'check: message 0 does not contain {"user":"u2"}'),
        (44, """check: message 0's meta does not have {"line":7}""")]

    assert main(["test", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:8: vip: bodies differ" in out
    assert "7 failed, 1 passed" in out


def test_junit_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, FAILING.format(graph=ORDERS))
    bad = _write(tmp_path, "graph: nowhere.yaml\ncases: [{name: x}]\n", "bad.test.yaml")
    xml_path = tmp_path / "junit.xml"
    assert main(["test", str(tmp_path), "--format", "junit", "-o", str(xml_path)]) == 1
    root = ET.parse(xml_path).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    suite = suites[str(path)]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("8", "7", "0")
    case = next(c for c in suite.iter("testcase") if c.get("name") == "wrong body")
    failure = case.find("failure")
    assert failure is not None and f"{path}:8:" in (failure.text or "")
    assert next(c for c in suite.iter("testcase") if c.get("name") == "passes").find("failure") is None
    assert suites[str(bad)].get("errors") == "1"
    assert "E401" in (suites[str(bad)].find("testcase/error").text or "")  # type: ignore[union-attr]
    assert "7 failed, 1 passed, 1 invalid file(s)" in capsys.readouterr().out


def test_lookup_stubs_answer_as_the_lookup_would(tmp_path: Path) -> None:
    _write(tmp_path, """\
        version: 1
        name: enrich
        connections:
          pg: {type: postgres, dsn: "postgresql://nobody@127.0.0.1:1/none"}
          r: {type: redis, url: "redis://127.0.0.1:1/0"}
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 1}}
          customer:
            type: pg_lookup
            inputs: [src]
            config: {connection: pg, table: customers, key_column: id, key: msg.customer, into: c, on_miss: missing}
          tier:
            type: redis_lookup
            inputs: [customer]
            config: {connection: r, key: '"tier:" + string(msg.customer)', into: tier, on_miss: error}
          out: {type: stdout, inputs: [tier]}
          unknown: {type: stdout, inputs: [customer.missing]}
          dead: {type: stdout, inputs: [src.errors]}
        """, "graph.yaml")
    path = _write(tmp_path, """\
        graph: graph.yaml
        cases:
          - name: hit, miss and no value
            inputs:
              src: [{body: {customer: 1}}, {body: {customer: 2}}, {body: {customer: 3}}]
            stubs:
              customer: {"1": {name: Ann}, "3": {name: Cy}}
              tier: {"tier:1": gold}
            expect:
              out: {bodies: [{customer: 1, c: {name: Ann}, tier: gold}]}
              unknown: {bodies: [{customer: 2}]}
            dead_letters:
              - {node: tier, reason: "no value for key 'tier:3'"}
        """)
    tf, diags = check_test_file(str(path))
    assert tf is not None, diags
    [result] = run_file(tf)
    assert result.passed, result.failures


def test_the_fixed_clock_places_processing_time_windows(tmp_path: Path) -> None:
    _write(tmp_path, """\
        version: 1
        name: clocked
        nodes:
          src: {type: generate, config: {count: 1}}
          per_minute:
            type: window
            inputs: [src]
            config: {kind: tumbling, size: 1m, aggregates: {n: {op: count}}}
          out: {type: stdout, inputs: [per_minute]}
        """, "graph.yaml")
    path = _write(tmp_path, """\
        graph: graph.yaml
        cases:
          - name: every message in the clock's minute
            clock: 1700000100
            inputs:
              src: [{body: {a: 1}}, {body: {a: 2}}]
            expect:
              out: {count: 1, each: 'msg.start == "2023-11-14T22:15:00Z" && msg.aggregates.n == 2'}
        """)
    tf, diags = check_test_file(str(path))
    assert tf is not None, diags
    [result] = run_file(tf)
    assert result.passed, result.failures
