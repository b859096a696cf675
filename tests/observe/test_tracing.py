"""Traces in-process (the SDK's in-memory exporter): sampling ratio, spans per node per batch with
their parents and links, dead letters and retries as events and attributes, nothing when off."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.compile.validate import load_graph
from engine.observe.tracing import Tracing
from engine.runtime.scheduler import Runner, RunReport

# gen feeds two nodes, so `price` has a queue of its own (the operator loop, not inline)
GRAPH = """
    version: 1
    name: traced
    defaults: {{dead_letter: dead, retry: {{initial_backoff: 0.001, max_backoff: 0.002}}}}
    nodes:
      gen: {{type: generate, config: {{count: {count}, batch: 10}}}}
      price:
        type: map
        inputs: [gen]
        config: {{expr: '{{"i": msg.i, "share": 100 / ((msg.i + 1) % {modulo})}}'}}
      out: {{type: file_sink, inputs: [price], config: {{path: out.ndjson}}}}
      tally: {{type: drop, inputs: [gen]}}
      dead: {{type: file_sink, inputs: [gen.errors], config: {{path: dead.ndjson}}}}
"""


def _run(tmp_path: Path, ratio: float | None, count: int, modulo: int = 1000000) -> tuple[RunReport, list[Any]]:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRAPH.format(count=count, modulo=modulo)))
    exporter = InMemorySpanExporter()
    tracer = Tracing.configure("traced", ratio, exporter=exporter) if ratio is not None else None
    report = asyncio.run(Runner(load_graph(str(path)), tracer=tracer).run())
    if tracer is not None:
        tracer.shutdown()
    return report, list(exporter.get_finished_spans())


def _attr(span: Any, key: str) -> Any:
    return span.attributes[key]


def test_sampling_ratio_and_one_trace_per_sampled_source_batch(tmp_path: Path) -> None:
    report, spans = _run(tmp_path, 0.1, count=20000)
    assert report.error is None and report.balanced
    by_node = Counter(_attr(s, "streamdag.node") for s in spans)
    sources = [s for s in spans if _attr(s, "streamdag.node") == "gen"]
    # 2000 source batches at 10 %: binomial, sd 13.4; 4.5 sd either way
    assert 140 <= len(sources) <= 260, len(sources)
    assert all(not s.parent for s in sources)  # roots: nothing came with a context
    sampled = {s.context.trace_id for s in sources}
    assert len(sampled) == len(sources)
    spans_by_id = {s.context.span_id: s for s in spans}
    traced_in = {"price": 0, "out": 0, "tally": 0}
    for s in spans:
        node = _attr(s, "streamdag.node")
        if node == "gen":
            assert _attr(s, "streamdag.batch.traced") == 10
            continue
        # every downstream span is in a sampled trace, the child of its batch's first traced message
        assert s.context.trace_id in sampled and s.parent is not None
        parent = spans_by_id[s.parent.span_id]
        assert _attr(parent, "streamdag.node") == {"price": "gen", "out": "price", "tally": "gen"}[node]
        assert {link.context.trace_id for link in s.links} <= sampled  # other traced messages of the batch
        traced_in[node] += _attr(s, "streamdag.batch.traced")
        assert _attr(s, "streamdag.outcome") == "ok" and _attr(s, "streamdag.retries") == 0
    # exactly the sampled messages were followed through each node, however the batches regrouped
    assert traced_in == {"price": 10 * len(sources), "out": 10 * len(sources), "tally": 10 * len(sources)}
    # price's queue regroups gen's batches: one span per batch it took, parent + links = the source batches in it
    price = [s for s in spans if _attr(s, "streamdag.node") == "price"]
    assert len(price) == by_node["price"] <= len(sources)
    assert sum(1 + len(s.links) for s in price) == len(sources)
    kinds = {_attr(s, "streamdag.node"): s.kind.name for s in spans}
    assert kinds == {"gen": "CONSUMER", "price": "INTERNAL", "out": "PRODUCER", "tally": "PRODUCER"}


def test_dead_letters_are_span_events_and_the_dead_letter_sink_continues_the_trace(tmp_path: Path) -> None:
    report, spans = _run(tmp_path, 1.0, count=20, modulo=7)  # i = 6, 13: division by zero
    assert report.error is None and report.balanced
    price = [s for s in spans if _attr(s, "streamdag.node") == "price"]
    events = [e for s in price for e in s.events if e.name == "dead_letter"]
    assert len(events) == 2 and all("divide by zero" in e.attributes["streamdag.reason"] for e in events)
    assert {_attr(s, "streamdag.outcome") for s in price} == {"partial"}
    dead = [s for s in spans if _attr(s, "streamdag.node") == "dead"]
    assert dead and {s.context.trace_id for s in dead} <= {s.context.trace_id for s in price}
    rows = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    # the dead letter names its trace in its meta: a row leads to its trace
    assert {r["meta"]["traceparent"].split("-")[1] for r in rows} <= {f"{s.context.trace_id:032x}" for s in spans}


def test_tracing_off_leaves_no_trace_in_messages(tmp_path: Path) -> None:
    report, spans = _run(tmp_path, None, count=50, modulo=7)
    assert report.error is None and spans == []
    rows = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert rows and not any("traceparent" in r["meta"] for r in rows)


def test_ratio_zero_samples_nothing_and_bad_ratio_is_refused(tmp_path: Path) -> None:
    _, spans = _run(tmp_path, 0.0, count=200)
    assert [s for s in spans if s.attributes["streamdag.node"] != "gen"] == []
    with pytest.raises(ValueError, match="between 0 and 1"):
        Tracing.configure("x", 1.5, exporter=InMemorySpanExporter())


def test_close_is_bounded_when_the_collector_hangs() -> None:
    """An exporter that never returns cannot hold the end of a run up longer than `close`'s timeout."""
    import threading
    import time

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    release = threading.Event()

    class Hanging(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            release.wait(10)
            return SpanExportResult.SUCCESS

    tracer = Tracing.configure("hang", 1.0, exporter=Hanging())
    tracer._tracer.start_span("one").end()

    async def close() -> tuple[bool, float]:
        t0 = time.perf_counter()
        ok = await tracer.close(0.3)
        return ok, time.perf_counter() - t0

    try:
        ok, seconds = asyncio.run(close())
    finally:
        release.set()
    assert not ok and seconds < 1.5


def test_run_trace_option_rejects_a_bad_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRAPH.format(count=3, modulo=7)))
    assert main(["run", str(path), "-q", "--trace", "often"]) == 1
    assert "--trace 'often': expected a sampling ratio between 0 and 1" in capsys.readouterr().err
    assert main(["run", str(path), "-q", "--trace", "2"]) == 1
    assert "trace sampling ratio 2.0 is not between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "out.ndjson").exists()  # refused before anything ran


def test_only_well_formed_contexts_are_continued() -> None:
    """A malformed or all-zero `traceparent` is ignored: the batch is a root, sampled by the ratio."""
    from engine.message import Msg
    from engine.observe.tracing import _incoming

    good = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    msgs = [Msg({}, {"headers": {"traceparent": tp}}) for tp in (
        good, good, "00-" + "0" * 32 + "-" + "b" * 16 + "-01", "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
        "garbage", "00-" + "A" * 32 + "-" + "b" * 16 + "-01", "")] + [Msg({}, {})]
    assert _incoming(msgs) == [good]


def test_latency_histograms_carry_exemplars_with_the_trace_id(tmp_path: Path) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    from engine.observe.metrics import make_registry, render_metrics, render_openmetrics
    from engine.observe.server import MetricsServer, _accept

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(GRAPH.format(count=200, modulo=1000000)))
    exporter = InMemorySpanExporter()
    tracer = Tracing.configure("traced", 1.0, exporter=exporter)
    runner = Runner(load_graph(str(path)), tracer=tracer)
    assert asyncio.run(runner.run()).balanced
    tracer.shutdown()
    traces = {f"{s.context.trace_id:032x}" for s in exporter.get_finished_spans()}
    registry = make_registry(runner, process=False)
    ctype, body = render_openmetrics(registry)
    assert ctype.startswith("application/openmetrics-text")
    found: dict[str, set[str]] = {}
    for fam in parse_openmetrics(body.decode()):
        for s in fam.samples:
            if s.exemplar is not None:
                found.setdefault(f"{s.name}{{{s.labels.get('node') or s.labels.get('sink')}}}", set()).add(
                    s.exemplar.labels["trace_id"])
    assert {"streamdag_node_batch_seconds_bucket{price}", "streamdag_node_batch_seconds_bucket{out}",
            "streamdag_end_to_end_latency_seconds_bucket{out}"} <= set(found)
    assert set().union(*found.values()) <= traces
    assert b"trace_id" not in render_metrics(registry)  # the Prometheus text format has no exemplars
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    server = MetricsServer(runner)  # what /metrics answers, by the scraper's Accept header
    status, ctype, body = server.respond("GET", "/metrics", _accept(head))
    assert status == 200 and ctype.startswith("application/openmetrics-text") and b"trace_id" in body
    status, ctype, body = server.respond("GET", "/metrics")
    assert ctype.startswith("text/plain; version=0.0.4") and b"trace_id" not in body
