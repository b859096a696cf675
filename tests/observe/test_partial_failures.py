"""Metrics when a sink fails a batch once (retry) and rejects some messages one by one (dead letters)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from engine.compile.validate import load_graph
from engine.observe.metrics import make_registry, render_metrics
from engine.runtime.scheduler import Runner
from tests.runtime.test_nodes import RECORD

GRAPH = """
    version: 1
    name: partial
    defaults: {dead_letter: dead, retry: {max_attempts: 3, initial_backoff: 0.001}}
    nodes:
      gen: {type: generate, config: {count: 200, batch: 50}}
      picky: {type: test_sink, inputs: [gen], config: {reject_if_odd: true, fail_first: 1}}
      dead: {type: file_sink, inputs: [picky.errors], config: {path: dead.ndjson}}
"""


def test_retries_rejections_and_latency_counts(write_graph) -> None:
    RECORD.clear()
    runner = Runner(load_graph(str(write_graph(GRAPH))))
    report = asyncio.run(runner.run())
    assert report.error is None and report.balanced
    got = {}
    for fam in text_string_to_metric_families(render_metrics(make_registry(runner, process=False)).decode()):
        for s in fam.samples:
            got[
                (
                    s.name,
                    s.labels.get("node") or s.labels.get("sink") or s.labels.get("source"),
                    s.labels.get("outcome"),
                )
            ] = s.value
    assert got[("streamdag_node_retries_total", "picky", None)] == 1
    assert got[("streamdag_node_committed_total", "picky", None)] == 100
    assert got[("streamdag_node_errors_total", "picky", None)] == 100
    assert got[("streamdag_node_dead_lettered_total", "dead", None)] == 100
    # end-to-end latency counts exactly the committed messages of each sink
    assert got[("streamdag_end_to_end_latency_seconds_count", "picky", None)] == 100
    assert got[("streamdag_end_to_end_latency_seconds_count", "dead", None)] == 100
    assert got[("streamdag_source_settled_total", "gen", "delivered")] == 100
    assert got[("streamdag_source_settled_total", "gen", "dead_lettered")] == 100
    assert got[("streamdag_integrity_mismatch", "gen", None)] == 0
    # the failed first attempt is part of that batch's processing time
    batches = got[("streamdag_node_batches_total", "picky", None)]
    assert batches >= 1 and got[("streamdag_node_batch_seconds_count", "picky", None)] == batches


EXHAUST = """
    version: 1
    name: exhaust
    defaults: {dead_letter: dead, retry: {max_attempts: 2, initial_backoff: 0.001}}
    nodes:
      gen: {type: generate, config: {count: 30, batch: 30}}
      down: {type: test_sink, inputs: [gen], config: {fail_first: 1000, fail_with: unknown}}
      dead: {type: file_sink, inputs: [down.errors], config: {path: dead.ndjson}}
"""


def test_retries_exhausted_is_one_event_line(write_graph, caplog) -> None:
    import logging

    from engine.observe.events import dead_letter_policy

    RECORD.clear()
    caplog.set_level(logging.INFO, logger="streamdag")
    dead_letter_policy.reset()
    report = asyncio.run(Runner(load_graph(str(write_graph(EXHAUST)))).run())
    dead_letter_policy.flush()
    assert report.balanced and report.totals()["dead_lettered"] == 30
    (ev,) = [r for r in caplog.records if getattr(r, "event", None) == "retries_exhausted"]
    assert ev.node == "down" and ev.attempts == 2 and ev.messages == 30  # type: ignore[attr-defined]
    assert "RuntimeError: store failed oddly" in ev.reason  # type: ignore[attr-defined]
    dead = [r for r in caplog.records if getattr(r, "event", None) == "dead_lettered"]
    assert len(dead) == 20 and {r.node for r in dead} == {"down"}  # type: ignore[attr-defined]
    (held,) = [r for r in caplog.records if getattr(r, "event", None) == "dead_lettered_suppressed"]
    assert held.count == 10  # type: ignore[attr-defined]  # 20 lines a second at most, the rest counted
