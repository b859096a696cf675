"""A dead-letter sink fed only through `defaults.dead_letter` (no `inputs:`) is valid and receives."""

from __future__ import annotations

import json
from pathlib import Path


def test_a_sink_fed_only_by_defaults_dead_letter_is_valid_and_receives(write_graph, run, tmp_path: Path) -> None:
    path = write_graph("""
        version: 1
        name: dl_only
        defaults: {dead_letter: dead}
        nodes:
          gen: {type: generate, config: {count: 4}}
          inv: {type: map, inputs: [gen], config: {expr: '{"x": 6 / (msg.i - 1)}'}}
          out: {type: file_sink, inputs: [inv], config: {path: out.ndjson}}
          dead: {type: file_sink, config: {path: dead.ndjson}}
    """)
    report = run(path)
    assert report.balanced and report.error is None
    dead = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert [(d["node"], d["payload"]["i"]) for d in dead] == [("inv", 1)]
    assert len((tmp_path / "out.ndjson").read_text().splitlines()) == 3
