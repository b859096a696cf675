"""A test file is checked offline like a graph: every problem at once, each with its code and line:col."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.testing.spec import check_test_file

ROOT = Path(__file__).resolve().parents[2]
ORDERS = ROOT / "graphs" / "orders.yaml"

CASES = {
    "E001": ("graph: [unclosed\n", (2, 1)),
    "E100": (f"graph: {ORDERS}\ncases:\n  - name: a\n    expects: {{}}\n", (4, 5)),
    "E101": (f"graph: {ORDERS}\ncases:\n  - name: a\n    expect: {{out: {{count: -1}}}}\n", (4, 27)),
    "E102": (f"graph: {ORDERS}\ncases:\n  - inputs: {{}}\n", (3, 5)),
    "E401": ("graph: missing.yaml\ncases: [{name: a}]\n", (1, 8)),
    "E402": (f"graph: {ORDERS}\ncases:\n  - name: a\n    inputs:\n      reed: []\n", (5, 7)),
    "E403": (f"graph: {ORDERS}\ncases:\n  - name: a\n    expect:\n      split.vipp: {{count: 1}}\n", (5, 7)),
    "E404": (f"graph: {ORDERS}\ncases:\n  - name: a\n    stubs:\n      price: {{}}\n", (5, 7)),
    "E405": (f"graph: {ORDERS}\ncases:\n  - name: a\n    expect:\n      out: {{each: 'msg.x +'}}\n", (5, 19)),
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_code_with_its_position(tmp_path: Path, code: str) -> None:
    text, (line, col) = CASES[code]
    path = tmp_path / "x.test.yaml"
    path.write_text(text)
    tf, diags = check_test_file(str(path))
    assert tf is None
    first = diags[0]
    assert (first.code, first.line, first.col) == (code, line, col), [d.format() for d in diags]
    assert first.format().startswith(f"{path}:{line}:{col}: {code} ")


def test_body_and_raw_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.test.yaml"
    path.write_text(f"graph: {ORDERS}\ncases:\n  - name: a\n    inputs:\n      read:\n        - {{body: 1, raw: '1'}}\n")
    _, diags = check_test_file(str(path))
    assert [(d.code, d.line) for d in diags] == [("E101", 6)] and "not both" in diags[0].message


def test_every_code_the_module_emits_is_tested() -> None:
    import re

    text = (ROOT / "engine" / "testing" / "spec.py").read_text()
    assert set(re.findall(r"[\"']([EW]4\d\d)[\"']", text)) <= set(CASES)


def test_every_problem_at_once_with_hints(tmp_path: Path) -> None:
    path = tmp_path / "x.test.yaml"
    path.write_text(textwrap.dedent(f"""\
        graph: {ORDERS}
        cases:
          - name: a
            inputs: {{reed: []}}
            expect:
              split.vipp: {{count: 1}}
              nowhere: {{count: 1}}
    """))
    _, diags = check_test_file(str(path))
    text = [d.format() for d in diags]
    assert [d.code for d in diags] == ["E402", "E403", "E403"]
    assert "did you mean 'read'?" in text[0]
    assert "did you mean 'vip'?" in text[1]


def test_a_graph_error_is_shown_in_the_graph_file(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("version: 1\nname: g\nnodes:\n  a: {type: generat}\n")
    path = tmp_path / "x.test.yaml"
    path.write_text("graph: g.yaml\ncases: [{name: a}]\n")
    _, diags = check_test_file(str(path))
    assert [(d.code, d.file.endswith(n)) for d, n in zip(diags, ["x.test.yaml", "g.yaml"])] == [
        ("E401", True), ("E200", True)]
    assert diags[1].line == 4
