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


def test_a_sink_that_is_also_the_dead_letter_sink_counts_normal_messages_as_delivered(
        write_graph, run, tmp_path: Path, caplog) -> None:
    """`out` takes `inv` by a normal edge and every errors port through `defaults.dead_letter`: what
    came by the normal edge is delivered (no dead-letter line), only the error envelope is a dead letter."""
    import logging

    from engine.observe.events import dead_letter_policy

    path = write_graph("""
        version: 1
        name: dl_mixed
        defaults: {dead_letter: out}
        nodes:
          gen: {type: generate, config: {count: 6}}
          inv: {type: map, inputs: [gen], config: {expr: '{"x": 6 / (msg.i % 3 - 1)}'}}
          out: {type: file_sink, inputs: [inv], config: {path: out.ndjson}}
    """)
    dead_letter_policy.reset()
    with caplog.at_level(logging.WARNING, logger="streamdag.deadletter"):
        report = run(path)
    assert report.balanced and report.error is None
    t = report.totals()
    assert (t["entered"], t["delivered"], t["dead_lettered"]) == (6, 4, 2)
    assert (report.stats["out"].committed, report.stats["out"].dead_lettered) == (6, 2)
    logged = [r for r in caplog.records if getattr(r, "event", None) == "dead_lettered"]
    assert sorted((r.node, r.seq) for r in logged) == [("inv", 1), ("inv", 4)], [r.getMessage() for r in logged]
    assert all("None" not in r.getMessage() for r in logged)


def test_a_sink_wired_to_a_port_and_to_its_errors_port_counts_each_by_its_edge(write_graph, run) -> None:
    path = write_graph("""
        version: 1
        name: dl_both_ports
        nodes:
          gen: {type: generate, config: {count: 6}}
          inv: {type: map, inputs: [gen], config: {expr: '{"x": 6 / (msg.i % 3 - 1)}'}}
          both: {type: drop, inputs: [inv, inv.errors]}
    """)
    report = run(path)
    t = report.totals()
    assert report.balanced and (t["delivered"], t["dead_lettered"]) == (4, 2)
    assert report.stats["both"].dead_lettered == 2
