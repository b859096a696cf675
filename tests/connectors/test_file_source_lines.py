"""`file_source` on the lines a user's files really have: where a bad line is (the file's line and the
column within it), bytes that are not UTF-8 kept as they were, and a byte order mark that is not data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

GRAPH = """
    version: 1
    name: lines
    defaults: {dead_letter: dead}
    nodes:
      r: {type: file_source, config: {path: in.txt, format: FORMAT, batch: 10}}
      out: {type: file_sink, inputs: [r], config: {path: out.ndjson}}
      dead: {type: file_sink, config: {path: dead.ndjson}}
"""


def _run(write_graph, run, tmp_path: Path, data: bytes, fmt: str = "ndjson") -> tuple[list, list]:
    (tmp_path / "in.txt").write_bytes(data)
    report = run(write_graph(GRAPH.replace("FORMAT", fmt)))
    assert report.balanced and report.error is None
    read = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
    return read("out.ndjson"), read("dead.ndjson")


def test_a_bad_line_deep_in_the_file_names_its_line_and_column(write_graph, run, tmp_path: Path) -> None:
    good = b"".join(b'{"i": %d}\n' % i for i in range(1000))
    out, dead = _run(write_graph, run, tmp_path, good + b'{"c": 1, x}\n')
    assert len(out) == 1000
    assert [d["error"] for d in dead] == ["line 1001 column 10: invalid JSON: unexpected character, expected a string key"]


def test_bytes_that_are_not_utf8_are_kept_and_located(write_graph, run, tmp_path: Path) -> None:
    line = b'{"b": "\xff\xfe"}'
    out, dead = _run(write_graph, run, tmp_path, b'{"a": 1}\n' + line + b"\n")
    assert out == [{"a": 1}]
    [d] = dead
    assert d["error"].startswith("line 2 byte 8: not UTF-8")
    assert base64.b64decode(d["payload_base64"]) == line  # the original bytes, not U+FFFD

    out, dead = _run(write_graph, run, tmp_path, b"ok\n\xc3(bad\n", "lines")
    assert out == ["ok"]
    assert [base64.b64decode(d["payload_base64"]) for d in dead] == [b"\xc3(bad"]
    assert dead[0]["error"].startswith("line 2 byte 1: not UTF-8")


def test_a_byte_order_mark_at_the_start_is_not_an_error(write_graph, run, tmp_path: Path) -> None:
    out, dead = _run(write_graph, run, tmp_path, b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert out == [{"a": 1}, {"a": 2}] and dead == []
    out, dead = _run(write_graph, run, tmp_path, "\ufeffhello\nworld\n".encode(), "lines")
    assert out == ["hello", "world"] and dead == []


def test_a_missing_input_file_leaves_the_previous_output_alone(write_graph, run, tmp_path: Path) -> None:
    (tmp_path / "out.ndjson").write_text('{"previous": 1}\n')
    (tmp_path / "dead.ndjson").write_text('{"previous": 2}\n')
    report = run(write_graph(GRAPH.replace("FORMAT", "ndjson")))
    assert "file_source r: cannot read" in str(report.error) and "No such file" in str(report.error)
    assert (tmp_path / "out.ndjson").read_text() == '{"previous": 1}\n'
    assert (tmp_path / "dead.ndjson").read_text() == '{"previous": 2}\n'
    # a run that does run, with nothing to write, still replaces the output (mode overwrite)
    out, dead = _run(write_graph, run, tmp_path, b"")
    assert out == [] and dead == []


def test_blank_lines_are_skipped_wherever_they_fall(write_graph, run, tmp_path: Path) -> None:
    # a batch (10 lines here) of nothing but blank lines; whitespace-only lines with and without a
    # plain empty line in their batch; and a bad line after them keeps its own line number
    lines = [b"\n"] * 25 + [b'{"i": 1}\n', b"   \n", b'{"i": 2}\n'] + [b'{"i": %d}\n' % i for i in range(3, 12)]
    lines += [b" \t\r\n", b'{"i": 12}\n', b"{bad\n", b"  "]
    out, dead = _run(write_graph, run, tmp_path, b"".join(lines))
    assert out == [{"i": i} for i in range(1, 13)]
    assert [d["error"].split(":")[0] for d in dead] == [f"line {len(lines) - 1} column 2"]
    out, dead = _run(write_graph, run, tmp_path, b"\n" * 30)  # only blank lines: nothing, and no crash
    assert out == [] and dead == []
    out, dead = _run(write_graph, run, tmp_path, b"a\n\n  \nb\n" + b"\n" * 12 + b"c\n  \n", "lines")
    assert (out, dead) == (["a", "b", "c"], [])
