"""`/metrics`, `/api/stats` and `/` scraped from a real `streamdag run` while it runs, then drained."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.observe.conftest import RATE_GRAPH, LiveRun, get, start_run, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(sm: dict[Any, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    found = [v for (n, lab), v in sm.items() if n == name and want <= set(lab)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def scrape(run: LiveRun) -> dict[Any, float]:
    return samples(get(run.url + "/metrics").decode())


def test_metrics_while_running(live_run: LiveRun) -> None:
    sm = wait_for(
        lambda: (
            (s := scrape(live_run)) and value(s, "streamdag_node_committed_total", node="out") >= 300 and s
        ),
        what="the sink to commit 300 messages",
    )
    node = {"graph": "observed"}
    assert value(sm, "streamdag_run_info", graph="observed") == 1
    assert value(sm, "streamdag_run_draining", **node) == 0
    gen_out = value(sm, "streamdag_node_messages_out_total", node="gen", kind="source", type="generate")
    price_in = value(sm, "streamdag_node_messages_in_total", node="price", type="map")
    price_out = value(sm, "streamdag_node_messages_out_total", node="price")
    committed = value(sm, "streamdag_node_committed_total", node="out", type="file_sink")
    # counters along the chain never run ahead of what fed them
    assert gen_out >= price_in >= price_out >= committed >= 300
    for metric in ("errors", "retries", "dead_lettered", "filtered"):
        assert value(sm, f"streamdag_node_{metric}_total", node="price") == 0
    # per-edge queue: depth within capacity, capacity as configured (defaults.capacity)
    # (price is a map fed by gen alone: it runs inline in gen's task, with no queue of its own)
    assert not [k for k in sm if k[0] == "streamdag_edge_queue_capacity" and ("node", "price") in k[1]]
    for n in ("out", "dead"):
        assert value(sm, "streamdag_edge_queue_capacity", node=n) == 4000
        assert 0 <= value(sm, "streamdag_edge_queue_depth", node=n) <= 4000
    # histograms: batch sizes bounded by the generate batch (100), processing time and end-to-end latency
    batches = value(sm, "streamdag_node_batch_size_count", node="price")
    assert batches >= 3 and value(sm, "streamdag_node_batch_size_sum", node="price") == price_in
    assert value(sm, "streamdag_node_batch_size_bucket", node="price", le="+Inf") == batches
    assert value(sm, "streamdag_node_batch_seconds_count", node="out") >= 1
    e2e = value(sm, "streamdag_end_to_end_latency_seconds_count", sink="out")
    assert e2e == committed  # generate stamps every message's meta.timestamp
    mean = value(sm, "streamdag_end_to_end_latency_seconds_sum", sink="out") / e2e
    assert 0 <= mean < 5.0
    # the source ledger balances while running
    ledger = {
        o: value(sm, "streamdag_source_settled_total", source="gen", outcome=o)
        for o in ("delivered", "filtered", "dead_lettered", "failed")
    }
    entered = value(sm, "streamdag_source_messages_total", source="gen")
    in_flight = value(sm, "streamdag_source_in_flight", source="gen")
    assert entered == sum(ledger.values()) + in_flight and ledger["delivered"] >= 300
    assert value(sm, "streamdag_integrity_mismatch", source="gen") == 0
    assert value(sm, "streamdag_integrity_unaccounted", source="gen") == 0
    assert value(sm, "process_resident_memory_bytes") > 0


def test_rates_move_between_scrapes(live_run: LiveRun) -> None:
    first = value(scrape(live_run), "streamdag_node_committed_total", node="out")
    wait_for(
        lambda: value(scrape(live_run), "streamdag_node_committed_total", node="out") > first + 100,
        what="more commits",
    )


def test_api_stats_and_status_page(live_run: LiveRun) -> None:
    stats = json.loads(get(live_run.url + "/api/stats"))
    assert stats["graph"] == "observed" and not stats["draining"]
    assert set(stats["nodes"]) == {"gen", "price", "out", "dead"}
    assert stats["nodes"]["out"]["queue"]["capacity"] == 4000 and stats["nodes"]["gen"]["queue"] is None
    assert {"from": "gen", "port": "out", "to": "price"} in stats["edges"]
    assert stats["sources"]["gen"]["balanced"] is True
    page = get(live_run.url + "/").decode()
    assert "<svg" in page and 'id="node-price"' in page and "api/stats" in page
    assert get(live_run.url + "/healthz") == b"ok\n"


def test_unknown_path_is_404(live_run: LiveRun) -> None:
    import urllib.error

    try:
        get(live_run.url + "/nope")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404 and b"/metrics" in exc.read()
    else:
        raise AssertionError("expected 404")


def test_sigterm_drains_and_logs_json(tmp_path) -> None:
    run = start_run(tmp_path, RATE_GRAPH)
    wait_for(
        lambda: value(scrape(run), "streamdag_node_committed_total", node="out") > 0, what="first commits"
    )
    assert run.stop() == 0
    events = run.events()
    kinds = [e.get("event") for e in events]
    assert "drain_started" in kinds and "drain_finished" in kinds
    assert kinds.index("drain_started") < kinds.index("drain_finished")
    finished = next(e for e in events if e.get("event") == "drain_finished")
    assert finished["in_flight"] == 0 and finished["level"] == "info" and finished["graph"] == "observed"
    assert any(line.startswith("integrity OK:") for line in run.lines)
    assert any(line.startswith("latency out: p50") for line in run.lines)
    lines = (tmp_path / "out.ndjson").read_text().splitlines()
    assert lines and json.loads(lines[-1])["i"] == len(lines) - 1  # every message delivered, in order


def test_port_in_use_is_a_clear_error(tmp_path, live_run: LiveRun) -> None:
    import subprocess
    import sys

    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(RATE_GRAPH))
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", str(path), "--metrics-port", str(live_run.port)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{live_run.port}" in proc.stderr
    assert not (tmp_path / "out.ndjson").exists() or (tmp_path / "out.ndjson").read_text() == ""


def test_levels_are_gauges_not_counters(write_graph) -> None:
    """http_source's `in_flight` and `connections` go down: they are `streamdag_node_level` (a gauge),
    and `streamdag_node_events_total` (a counter) keeps only what grows."""
    from prometheus_client.parser import text_string_to_metric_families

    from engine.compile.validate import load_graph
    from engine.observe.metrics import make_registry, render_metrics
    from engine.runtime.scheduler import Runner

    path = write_graph("""
        version: 1
        name: levels
        defaults: {dead_letter: out}
        nodes:
          gw: {type: http_source, config: {port: 0}}
          out: {type: drop, inputs: [gw]}
    """)
    runner = Runner(load_graph(str(path)))
    runner.nodes["gw"].in_flight = 7
    text = render_metrics(make_registry(runner, process=False)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    level = families["streamdag_node_level"]
    assert level.type == "gauge"
    assert {s.labels["level"]: s.value for s in level.samples if s.labels["node"] == "gw"} == {
        "in_flight": 7, "connections": 0}
    events = families["streamdag_node_events"]
    assert events.type == "counter"
    assert {s.labels["event"] for s in events.samples} >= {"accepted", "requests"}
    assert not {s.labels["event"] for s in events.samples} & {"in_flight", "connections"}
