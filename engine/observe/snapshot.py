"""The JSON of `/api/stats`: the whole graph's counters at one moment (the status page polls it)."""

from __future__ import annotations

import time
from typing import Any

from engine.observe.histogram import Histogram, quantile
from engine.observe.monitor import Monitor, reconcile
from engine.runtime.state import as_view

__all__ = ["histogram_quantile", "stats_snapshot"]


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """The q-quantile of a histogram since the start of the run."""
    acc = 0
    buckets = []
    for bound, c in zip((*h.bounds, float("inf")), h.counts, strict=True):
        acc += c
        buckets.append((bound, float(acc)))
    return quantile(q, buckets)


def stats_snapshot(runner: Any, monitor: Monitor | None = None) -> dict[str, Any]:
    """Counters per node, queue per channel, ledger per source; rates are left to the reader
    (two snapshots and `time`)."""
    runner = as_view(runner)
    nodes: dict[str, Any] = {}
    now = runner.clock()
    for node_id, s in runner.stats.items():
        ch = runner.channels.get(node_id)
        nodes[node_id] = {
            **s.as_dict(),
            "stalled_seconds": s.stalled_seconds(now),
            "stall": {"class": s.stall_class, "reason": s.stall_reason} if s.stalled_since is not None else None,
            "batches": s.batches,
            "busy_seconds": s.busy_seconds,
            "p99_batch_seconds": histogram_quantile(0.99, s.batch_seconds),
            "p99_end_to_end_seconds": histogram_quantile(0.99, s.end_to_end) if s.kind == "sink" else None,
            "queue": None
            if ch is None
            else {
                "depth": ch.count,
                "capacity": ch.capacity,
                "bytes": ch.bytes,
                "capacity_bytes": ch.capacity_bytes,
                "high_water": ch.high_water,
                "high_water_bytes": ch.high_water_bytes,
            },
        }
    sources = {}
    for source, tracker in list(runner.trackers.items()):
        sources[source] = {
            **reconcile(source, tracker).as_dict(),
            "lag": monitor.lag.get(source) if monitor is not None else None,
            "stalled_seconds": monitor.stalled.get(source, 0.0) if monitor is not None else None,
        }
    edges = [
        {"from": up, "port": port, "to": down}
        for (up, port), downs in runner.routes.items()
        for down in downs
    ]
    return {
        "graph": runner.graph.spec.name,
        "time": time.time(),
        "draining": runner.draining,
        "nodes": nodes,
        "edges": edges,
        "sources": sources,
        "connections": [
            {"node": n, "connection": c, "up": up}
            for (n, c), up in (monitor.connections.items() if monitor is not None else ())
        ],
    }
