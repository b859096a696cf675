"""`--set PATH=VALUE`: the rules of `streamdag run --help`, and a one-line error for every mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.compile.validate import check_text

GRAPH = textwrap.dedent("""\
    version: 1
    name: sets
    defaults: {dead_letter: out}
    nodes:
      users: {type: generate, config: {count: 3}}
      f: {type: filter, inputs: [users], config: {expr: 'true'}}
      out: {type: stdout, inputs: [f]}
""")


def _check(*overrides: str):
    return check_text(GRAPH, "g.yaml", {}, list(overrides))


@pytest.mark.parametrize(("item", "expected"), [
    ("nodes.users", "--set nodes.users: expected PATH=VALUE"),
    ("nodes.users.config.count.x=1", "nodes.users.config.count is int 3, not a mapping, so it has no key 'x'"),
    ("nodes..users=1", "PATH 'nodes..users' has an empty key"),
    ("=1", "PATH '' has an empty key"),
])
def test_a_bad_set_is_one_clear_line_not_a_traceback(item: str, expected: str) -> None:
    graph, diags = _check(item)
    assert graph is None and len(diags) == 1
    assert expected in diags[0].message
    assert diags[0].format().startswith("g.yaml: E101 --set ") and "\n" not in diags[0].format()


def test_values_parse_as_yaml_scalars_and_otherwise_stay_text() -> None:
    graph, diags = _check('nodes.f.config.expr="a" == string(msg.i)', "nodes.users.config.count=7",
                          "defaults.max_in_flight=1_000", "nodes.users.config.rate=null")
    assert graph is not None, [d.format() for d in diags]
    assert graph.nodes["f"].config.expr == '"a" == string(msg.i)'  # YAML cannot read it: the text as written
    assert graph.nodes["users"].config.count == 7
    assert graph.spec.defaults.max_in_flight == 1000
    assert graph.nodes["users"].config.rate is None
    _, diags = _check("name=nc_dedupe:")  # block YAML (a mapping) is not what a command line means: text
    assert [d.message for d in diags] == [
        "name: String should match pattern '^[A-Za-z0-9_.-]+$' (set by --set name=nc_dedupe:)"]


def test_set_string_keeps_text_that_yaml_would_read_as_a_number(tmp_path: Path, capsys) -> None:
    (tmp_path / "g.yaml").write_text(GRAPH)
    assert main(["validate", str(tmp_path / "g.yaml"), "--set-string", "name=12"]) == 0
    assert main(["validate", str(tmp_path / "g.yaml"), "--set", "name=12"]) == 1  # a number is not a name
    err = capsys.readouterr().out
    assert "E101 name: Input should be a valid string (set by --set name=12)" in err


def test_an_error_in_a_set_value_names_the_set_and_the_key_it_replaced() -> None:
    graph, diags = _check("nodes.users.config.count=abc")
    assert graph is None
    [d] = [d for d in diags if d.severity == "error"]
    assert (d.line, d.col) == (5, 43)  # the value it replaced, not an unrelated line
    assert d.message.endswith("(set by --set nodes.users.config.count=abc)")


def test_run_help_states_the_rules_and_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--set-string" in out and "VALUE is read as one YAML value" in out and "exit codes:" in out
