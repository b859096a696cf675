"""`streamdag dashboard`: a Grafana model whose every query names metrics and labels the engine exports
and parses as PromQL (promtool), covering rates, queue fill, latency percentiles, lag, dead letters
and workers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from engine.cli import main
from engine.compile.validate import load_graph
from engine.observe.dashboard import dashboard, panel_queries
from tests.observe.exported import exported, unknown_names
from tests.observe.test_alerts import PROMTOOL, needs_promtool, shop  # noqa: F401 - fixture


def test_dashboard_queries_use_exported_metrics(shop: Path, tmp_path: Path) -> None:
    out = tmp_path / "dash.json"
    assert main(["dashboard", str(shop), "-o", str(out), "--datasource", "prom1"]) == 0
    model = json.loads(out.read_text())
    graph = load_graph(str(shop))
    assert model == dashboard(graph, datasource="prom1")
    known = exported(graph)
    queries = panel_queries(model)
    assert len(queries) >= 15
    for q in queries:
        assert unknown_names(q, known) == [], q
        assert 'graph="shop"' in q
    used = " ".join(queries)
    for metric in ("streamdag_node_messages_in_total", "streamdag_edge_queue_depth",
                   "streamdag_node_batch_seconds_bucket", "streamdag_end_to_end_latency_seconds_bucket",
                   "streamdag_source_lag_messages", "streamdag_node_dead_lettered_total"):
        assert metric in used
    assert "histogram_quantile(0.99" in used and "by (worker, instance)" in used
    node_var = model["templating"]["list"][0]
    assert node_var["query"].split(",") == sorted(graph.nodes)
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "prom1" for p in model["panels"])


@needs_promtool
def test_dashboard_queries_parse_as_promql(shop: Path, tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule for `promtool check rules`."""
    queries = panel_queries(dashboard(load_graph(str(shop))))
    queries = [re.sub(r"^label_values\((.*), \w+\)$", r"\1", q) for q in queries]  # Grafana's, not PromQL
    rules = [{"record": f"q{i}", "expr": q.replace("$__rate_interval", "1m").replace("$node", ".*")
              .replace("$worker", ".*")} for i, q in enumerate(queries)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
