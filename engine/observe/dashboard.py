"""A Grafana dashboard for one graph (`streamdag dashboard G`), as JSON to import.

Panels read only the metric families of `engine/observe/metrics.py` (a test checks every query's
metric and label names against what a `Runner` exports): message rates, queue fill, batch and
end-to-end latency percentiles, source lag and in-flight, dead letters and retries per node, and
rates and in-flight per worker. Two template variables: `node` (the graph's node ids) and `worker`
(`label_values` of the `worker` label that `run --workers N` adds; "All" also matches a single
process, whose samples have no `worker` label).
"""

from __future__ import annotations

from typing import Any

__all__ = ["dashboard", "panel_queries"]

_RATE = "$__rate_interval"


def _q(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend}


def dashboard(graph: Any, datasource: str = "${DS_PROMETHEUS}") -> dict[str, Any]:
    """The dashboard model (Grafana schema 39) of a checked `Graph`."""
    name = graph.spec.name
    g = f'graph="{name}", worker=~"$worker"'
    n = f'{g}, node=~"$node"'
    s = f'{g}, source=~"$node"'
    k = f'{g}, sink=~"$node"'
    quantiles = [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)]
    panels: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("Messages in / s", "ops", [
            _q(f"sum by (node) (rate(streamdag_node_messages_in_total{{{n}}}[{_RATE}]))", "{{node}}")]),
        ("Messages out / s", "ops", [
            _q(f"sum by (node) (rate(streamdag_node_messages_out_total{{{n}}}[{_RATE}]))", "{{node}}")]),
        ("Committed / s (sinks)", "ops", [
            _q(f"sum by (node) (rate(streamdag_node_committed_total{{{n}}}[{_RATE}]))", "{{node}}")]),
        ("Errors and dead letters / s", "ops", [
            _q(f"sum by (node) (rate(streamdag_node_errors_total{{{n}}}[{_RATE}]))", "errors {{node}}"),
            _q(f"sum by (node) (rate(streamdag_node_dead_lettered_total{{{n}}}[{_RATE}]))", "dead-lettered {{node}}")]),
        ("Queue fill", "percentunit", [
            _q(f"max by (node) (streamdag_edge_queue_depth{{{n}}} / streamdag_edge_queue_capacity{{{n}}})", "{{node}}"),
            _q(f"max by (node) (streamdag_edge_queue_bytes{{{n}}} / streamdag_edge_queue_capacity_bytes{{{n}}})",
               "bytes {{node}}")]),
        ("Batch latency", "s", [
            _q(f"histogram_quantile({q}, sum by (node, le) (rate(streamdag_node_batch_seconds_bucket{{{n}}}[{_RATE}])))",
               f"{label} {{{{node}}}}") for label, q in quantiles]),
        ("End-to-end latency (source timestamp to commit)", "s", [
            _q(f"histogram_quantile({q}, sum by (sink, le) "
               f"(rate(streamdag_end_to_end_latency_seconds_bucket{{{k}}}[{_RATE}])))", f"{label} {{{{sink}}}}")
            for label, q in quantiles]),
        ("Source lag (messages upstream)", "short", [
            _q(f"sum by (source) (streamdag_source_lag_messages{{{s}}})", "{{source}}")]),
        ("In flight (unacknowledged)", "short", [
            _q(f"sum by (source) (streamdag_source_in_flight{{{s}}})", "{{source}}")]),
        ("Retries / s and stalls", "short", [
            _q(f"sum by (node) (rate(streamdag_node_retries_total{{{n}}}[{_RATE}]))", "retries {{node}}"),
            _q(f"max by (node, class) (streamdag_node_stalled_seconds{{{n}}})", "stalled s {{node}} ({{class}})")]),
        ("Connections up", "short", [
            _q(f"min by (node, connection) (streamdag_connection_up{{{g}}})", "{{node}} {{connection}}")]),
        ("Integrity (unaccounted messages)", "short", [
            _q(f"sum by (source) (streamdag_integrity_unaccounted{{{s}}})", "{{source}}"),
            _q(f"max by (source) (streamdag_integrity_mismatch{{{s}}})", "mismatch {{source}}")]),
        ("Per worker: messages in / s", "ops", [
            _q(f"sum by (worker, instance) (rate(streamdag_source_messages_total{{{g}}}[{_RATE}]))",
               "{{worker}} {{instance}}")]),
        ("Per worker: in flight", "short", [
            _q(f"sum by (worker, instance) (streamdag_source_in_flight{{{g}}})", "{{worker}} {{instance}}")]),
        ("Per worker: busy share", "percentunit", [
            _q(f"sum by (worker, instance) (rate(streamdag_node_busy_seconds_total{{{g}}}[{_RATE}]))",
               "{{worker}} {{instance}}")]),
    ]
    ds = {"type": "prometheus", "uid": datasource}
    out = []
    for i, (title, unit, targets) in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{**t, "refId": chr(ord("A") + j), "datasource": ds, "exemplar": unit == "s"}
                        for j, t in enumerate(targets)],  # latency panels: trace ids of a traced run
        })
    nodes = sorted(graph.nodes)
    return {
        "title": f"streamdag: {name}",
        "uid": f"streamdag-{name}"[:40],
        "tags": ["streamdag"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "node", "type": "custom", "label": "node", "multi": True, "includeAll": True,
             "allValue": ".*", "query": ",".join(nodes), "current": {"text": "All", "value": "$__all"},
             "options": []},
            {"name": "worker", "type": "query", "label": "worker", "datasource": ds, "multi": True,
             "includeAll": True, "allValue": ".*", "refresh": 2,
             "query": {"query": f'label_values(streamdag_run_info{{graph="{name}"}}, worker)', "refId": "worker"},
             "definition": f'label_values(streamdag_run_info{{graph="{name}"}}, worker)',
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": out,
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus"}],
    }


def panel_queries(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard (its panels' targets and its query variables)."""
    exprs = [t["expr"] for p in model["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in model["templating"]["list"] if v["type"] == "query"]
    return exprs
