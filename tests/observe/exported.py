"""The metric names and labels the engine exports, read from a real `GraphCollector`, and the
metric/label names a PromQL expression uses, for checking generated rules and dashboards."""

from __future__ import annotations

import os
import re
import tempfile

from prometheus_client.parser import text_string_to_metric_families

from engine.compile.validate import Graph
from engine.observe.metrics import GraphCollector
from engine.runtime.scheduler import Runner

# labels Prometheus adds at scrape time, and the one `run --workers N` adds
SCRAPE_LABELS = {"instance", "job", "worker"}


def exported(graph: Graph) -> dict[str, set[str]]:
    """{sample name: label names} of every family a Runner of `graph` exports."""
    out = consistency_metrics()
    for fam in GraphCollector(Runner(graph)).collect():
        labels = set(getattr(fam, "_labelnames", ()))
        for s in fam.samples:
            labels |= set(s.labels) - {"le"}
        names = {"counter": [fam.name + "_total"],
                 "histogram": [fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"]}.get(fam.type, [fam.name])
        for name in names:
            out[name] = labels | ({"le"} if name.endswith("_bucket") else set()) | SCRAPE_LABELS
    return out


def consistency_metrics() -> dict[str, set[str]]:
    """What `streamdag check-consistency --metrics-file` writes (operators/connectors/redis/consistency.py)."""
    from operators.connectors.redis.consistency import ConsistencyReport, write_metrics_file

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "consistency.prom")
        write_metrics_file(ConsistencyReport(table="t", key_prefix="p:"), path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    return {s.name: set(s.labels) | SCRAPE_LABELS for fam in text_string_to_metric_families(text) for s in fam.samples}


_SELECTOR = re.compile(r"\b(streamdag_[a-z0-9_]+)(\{([^}]*)\})?")
_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def unknown_names(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Metric names in `expr` that are not exported, and selector labels a metric does not have."""
    problems = []
    used = set()
    for m in _SELECTOR.finditer(expr):
        name = m.group(1)
        used.add(name)
        if name not in known:
            problems.append(f"metric {name}")
            continue
        for label in _LABEL.findall(m.group(3) or ""):
            if label[0] not in known[name]:
                problems.append(f"label {label[0]} of {name}")
    if not used:
        problems.append("no streamdag metric")
    labels_of_used = set().union(*(known.get(u, set()) for u in used)) | {"le"}
    for group in _BY.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in labels_of_used:
                problems.append(f"aggregation label {label}")
    return problems


