"""Hostile graph files: `streamdag validate` answers with a diagnostic, in bounded time and memory.

Each hostile input runs `streamdag validate` in a child process under an address-space limit
(`tests/bounded.py`), and the child reports its own peak RSS; before the limits, billion laughs took 47 s
and 3.95 GB, 100,000-deep nesting was a RecursionError and a 50 MB file took 120 s and 2.9 GB.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from engine.compile.validate import check_file, check_text
from engine.limits import Limits, set_limit
from engine.spec.source_map import YamlError, check_yaml_limits, load_yaml
from tests.bounded import run_cli_bounded

MAX_SECONDS = 10.0  # measured at well under 1 s alone; the machine is shared
MAX_RSS_KB = 200 * 1024


def _validate_bounded(path: Path) -> tuple[str, float, int]:
    """(stdout+stderr, seconds, peak RSS in KB) of `streamdag validate path` in a bounded child."""
    code, out, seconds, rss = run_cli_bounded(["validate", str(path)])
    assert code == 1, out  # invalid, not a crash
    return out, seconds, rss


def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_e005_in_bounded_time_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(_billion_laughs())
    assert path.stat().st_size < 1024
    out, seconds, rss = _validate_bounded(path)
    assert f"{path}:" in out and " E005 " in out and "limit yaml_nodes" in out, out
    assert seconds < MAX_SECONDS and rss < MAX_RSS_KB, (seconds, rss)


@pytest.mark.parametrize("shape", ["flow_list", "flow_map", "block_list"])
def test_100000_deep_nesting_is_e004_in_bounded_time_and_memory(tmp_path: Path, shape: str) -> None:
    n = 100_000
    text = {
        "flow_list": "a: " + "[" * n + "]" * n,
        "flow_map": "a: " + "{b: " * n + "1" + "}" * n,
        "block_list": "- " * n + "x",
    }[shape]
    path = tmp_path / "deep.yaml"
    path.write_text(text + "\n")
    out, seconds, rss = _validate_bounded(path)
    assert " E004 " in out and "limit yaml_depth" in out, out
    assert seconds < MAX_SECONDS and rss < MAX_RSS_KB, (seconds, rss)


def test_50_mb_graph_file_is_e003_in_bounded_time_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    line = b"  n: {type: map, inputs: [read], config: {expr: 'msg'}}  # padding padding padding\n"
    with path.open("wb") as fh:
        fh.write(b"version: 1\nname: big\nnodes:\n")
        fh.write(line * (50 * 1024 * 1024 // len(line) + 1))
    assert path.stat().st_size > 50 * 1024 * 1024
    out, seconds, rss = _validate_bounded(path)
    assert f"{path}:1:1: E003 " in out and "limit graph_bytes" in out, out
    assert seconds < MAX_SECONDS and rss < MAX_RSS_KB, (seconds, rss)


def test_the_dearest_file_within_every_limit_is_still_bounded(tmp_path: Path) -> None:
    """As many nodes as `yaml_nodes` allows, each with its own CEL expression: the YAML node limit
    and `cel_expressions` (E205) bound what validate does with a file that passes the others."""
    path = tmp_path / "many.yaml"
    lines = ["version: 1", "name: many", "defaults: {dead_letter: dead}", "nodes:",
             "  read: {type: file_source, config: {path: in.ndjson}}",
             "  dead: {type: file_sink, inputs: [read.errors], config: {path: d.ndjson}}"]
    lines += [f'  m{i}: {{type: map, inputs: [read], config: {{expr: "msg.a + {i}"}}}}' for i in range(4500)]
    path.write_text("\n".join(lines) + "\n")
    out, seconds, rss = _validate_bounded(path)
    assert " E205 " in out and " E005 " not in out, out[:2000]
    assert seconds < 3 * MAX_SECONDS and rss < 2 * MAX_RSS_KB, (seconds, rss)


def test_a_file_just_under_the_size_limit_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "version: 1\nname: small\nnodes:\n  read: {type: file_source, config: {path: in.ndjson}}\n"
    path = tmp_path / "g.yaml"
    path.write_text(text)
    monkeypatch.setenv("STREAMDAG_LIMIT_GRAPH_BYTES", str(len(text)))
    assert not [d for d in check_file(str(path))[1] if d.code == "E003"]
    monkeypatch.setenv("STREAMDAG_LIMIT_GRAPH_BYTES", str(len(text) - 1))
    assert [d.code for d in check_file(str(path))[1]] == ["E003"]


def test_depth_limit_is_exact() -> None:
    limits = Limits(yaml_depth=3)
    check_yaml_limits("a: {b: [1]}", limits)  # mapping, mapping, sequence: 3 levels
    with pytest.raises(YamlError) as err:
        check_yaml_limits("a: {b: [[1]]}", limits)
    assert (err.value.code, err.value.line, err.value.col) == ("E004", 1, 9)


def test_alias_expansion_counts_every_use_of_an_anchor() -> None:
    text = "a: &x [1, 2, 3]\nb: [*x, *x, *x]\n"  # 1 map + 2 keys + (1 + 3) + 1 + 3 * 4 = 20 nodes expanded
    check_yaml_limits(text, Limits(yaml_nodes=20))
    with pytest.raises(YamlError) as err:
        check_yaml_limits(text, Limits(yaml_nodes=19))
    assert err.value.code == "E005" and err.value.line == 2
    assert load_yaml(text, Limits(yaml_nodes=20)).data == {"a": [1, 2, 3], "b": [[1, 2, 3]] * 3}


def test_a_syntax_error_is_still_e001_with_its_position() -> None:
    graph, diags = check_text("version: 1\nnodes: [a\n", "g.yaml")
    assert graph is None and [d.code for d in diags] == ["E001"] and diags[0].line == 3


def test_a_schema_file_is_read_under_the_same_limits(tmp_path: Path) -> None:
    (tmp_path / "laughs.yaml").write_text(_billion_laughs())
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: schemas
        schemas: {evil: laughs.yaml}
        defaults: {dead_letter: dead}
        nodes:
          read: {type: file_source, config: {path: in.ndjson}}
          check: {type: validate, inputs: [read], config: {schema: evil}}
          out: {type: file_sink, inputs: [check], config: {path: out.ndjson}}
          dead: {type: file_sink, inputs: [read.errors], config: {path: dead.ndjson}}
    """))
    start = time.perf_counter()
    graph, diags = check_file(str(path))
    assert time.perf_counter() - start < MAX_SECONDS
    e219 = [d for d in diags if d.code == "E219"]
    assert graph is None and e219 and "E005" in e219[0].message, [d.format() for d in diags]


def test_limits_come_from_the_environment_and_reject_bad_values() -> None:
    env = {"STREAMDAG_LIMIT_CEL_COST": "5_000", "STREAMDAG_LIMIT_YAML_DEPTH": "10"}
    assert (Limits.from_env(env).cel_cost, Limits.from_env(env).yaml_depth) == (5000, 10)
    assert Limits.from_env({}) == Limits()
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="cel_cost"):
            Limits.from_env({"STREAMDAG_LIMIT_CEL_COST": bad})
    target: dict[str, str] = {}
    set_limit("yaml_nodes=123", target)
    assert target == {"STREAMDAG_LIMIT_YAML_NODES": "123"}
    with pytest.raises(ValueError, match="NAME one of"):
        set_limit("no_such_limit=1", target)
