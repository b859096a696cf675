"""Prometheus metrics of a running graph, read from the runtime's plain counters at scrape time.

The scheduler only increments ints (`NodeStats`, `AckTracker`) and fills fixed-bucket histograms;
`GraphCollector` turns them into metric families when Prometheus (or `streamdag top`) scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from engine.hooks import HasLevels, HasMetrics
from engine.observe.histogram import Histogram
from engine.observe.monitor import Monitor, reconcile
from engine.runtime.state import as_view

__all__ = ["CONTENT_TYPE", "GraphCollector", "make_registry", "render_metrics", "render_openmetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# (metric suffix, NodeStats attribute, help)
_NODE_COUNTERS = (
    ("messages_in", "received", "Messages a node received."),
    ("messages_out", "emitted", "Messages a node sent on its output ports (errors port excluded)."),
    ("errors", "errors", "Messages a node sent to its errors port."),
    ("filtered", "filtered", "Messages a node dropped on purpose (filter, unconsumed port)."),
    ("committed", "committed", "Messages a sink committed."),
    ("dead_lettered", "dead_lettered", "Messages a dead-letter sink committed."),
    ("retries", "retries", "Batch attempts that failed and were retried."),
    ("batches", "batches", "Batches a node processed."),
)


class GraphCollector(Collector):
    """Collects one `Runner` (and its `Monitor`, for lag, connections and integrity)."""

    def __init__(self, runner: Any, monitor: Monitor | None = None):
        self.runner = as_view(runner)
        self.monitor = monitor
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        """Every family; under `run --workers N` (N > 1) each sample labelled with the `worker` id
        (`<host>-<pid>`), so the workers add up in Prometheus: `sum without (worker) (...)`. A single
        process (one per host) is told apart by Prometheus' own `instance` label."""
        if self.runner.worker.count == 1:
            yield from self._collect()
            return
        worker = self.runner.worker.id
        for fam in self._collect():
            fam.samples = [s._replace(labels={**s.labels, "worker": worker}) for s in fam.samples]
            yield fam

    def _collect(self) -> Iterator[Metric]:
        r = self.runner
        graph = r.graph.spec.name
        yield from self._nodes(r, graph)
        yield from self._edges(r, graph)
        yield from self._sources(r, graph)
        info = GaugeMetricFamily("streamdag_run_info", "The graph this process runs.", labels=["graph"])
        info.add_metric([graph], 1)
        yield info
        up = GaugeMetricFamily(
            "streamdag_run_uptime_seconds", "Seconds since the run started.", labels=["graph"]
        )
        up.add_metric([graph], time.time() - self.started)
        yield up
        draining = GaugeMetricFamily(
            "streamdag_run_draining", "1 while the graph drains after a stop.", labels=["graph"]
        )
        draining.add_metric([graph], 1 if r.draining else 0)
        yield draining

    def _nodes(self, r: Any, graph: str) -> Iterator[Metric]:
        labels = ["graph", "node", "kind", "type"]
        stats = list(r.stats.values())
        for suffix, attr, doc in _NODE_COUNTERS:
            fam = CounterMetricFamily(f"streamdag_node_{suffix}", doc, labels=labels)
            for s in stats:
                fam.add_metric([graph, s.node_id, s.kind, s.type], getattr(s, attr))
            yield fam
        busy = CounterMetricFamily(
            "streamdag_node_busy_seconds", "Seconds a node spent processing batches.", labels=labels
        )
        for s in stats:
            busy.add_metric([graph, s.node_id, s.kind, s.type], s.busy_seconds)
        yield busy
        now = r.clock()
        stalled = GaugeMetricFamily(
            "streamdag_node_stalled_seconds",
            "Seconds a node has been retrying one batch because a service is unavailable (or an error of "
            "unknown kind); 0 when it is not. docs/errors.md",
            labels=["graph", "node", "class"],
        )
        by_class = CounterMetricFamily(
            "streamdag_node_failed_attempts",
            "Failed attempts of a batch, by the error's class: unavailable (retried until the service is "
            "back), unknown (retried), message (sent to errors).",
            labels=["graph", "node", "class"],
        )
        for s in stats:
            stalled.add_metric([graph, s.node_id, s.stall_class], s.stalled_seconds(now))
            for kind, n in list(s.retries_by_class.items()):
                by_class.add_metric([graph, s.node_id, kind], n)
        yield stalled
        yield by_class
        yield _histogram(
            "streamdag_node_batch_seconds",
            "Processing time of one batch (all attempts).",
            [([graph, s.node_id], s.batch_seconds) for s in stats if s.kind != "source"],
            ["graph", "node"],
        )
        yield _histogram(
            "streamdag_node_batch_size",
            "Messages per processed batch.",
            [([graph, s.node_id], s.batch_sizes) for s in stats if s.kind != "source"],
            ["graph", "node"],
        )
        yield _histogram(
            "streamdag_end_to_end_latency_seconds",
            "Seconds from a message's source timestamp (meta.timestamp) to its commit by this sink.",
            [([graph, s.node_id], s.end_to_end) for s in stats if s.kind == "sink"],
            ["graph", "sink"],
        )

    def _edges(self, r: Any, graph: str) -> Iterator[Metric]:
        labels = ["graph", "node"]
        depth = GaugeMetricFamily(
            "streamdag_edge_queue_depth",
            "Messages waiting in a node's input channel (all its input edges).",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "streamdag_edge_queue_bytes", "Bytes waiting in a node's input channel.", labels=labels
        )
        cap = GaugeMetricFamily(
            "streamdag_edge_queue_capacity", "Capacity of a node's input channel, in messages.", labels=labels
        )
        cap_b = GaugeMetricFamily(
            "streamdag_edge_queue_capacity_bytes",
            "Capacity of a node's input channel, in bytes.",
            labels=labels,
        )
        high = GaugeMetricFamily(
            "streamdag_edge_queue_high_water", "Most messages a node's input channel has held.", labels=labels
        )
        high_b = GaugeMetricFamily(
            "streamdag_edge_queue_high_water_bytes",
            "Most bytes a node's input channel has held.",
            labels=labels,
        )
        for node_id, ch in r.channels.items():
            lv = [graph, node_id]
            depth.add_metric(lv, ch.count)
            size.add_metric(lv, ch.bytes)
            cap.add_metric(lv, ch.capacity)
            cap_b.add_metric(lv, ch.capacity_bytes)
            high.add_metric(lv, ch.high_water)
            high_b.add_metric(lv, ch.high_water_bytes)
        yield from (depth, size, cap, cap_b, high, high_b)

    def _sources(self, r: Any, graph: str) -> Iterator[Metric]:
        labels = ["graph", "source"]
        entered = CounterMetricFamily(
            "streamdag_source_messages", "Messages a source emitted (acks created).", labels=labels
        )
        settled = CounterMetricFamily(
            "streamdag_source_settled",
            "Messages of a source settled, by outcome (failed: not acknowledged).",
            labels=[*labels, "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "streamdag_source_in_flight", "Messages of a source not yet settled.", labels=labels
        )
        unaccounted = GaugeMetricFamily(
            "streamdag_integrity_unaccounted",
            "in - (delivered + filtered + dead-lettered + failed + in flight) per source; 0 when whole.",
            labels=labels,
        )
        alert = GaugeMetricFamily(
            "streamdag_integrity_mismatch", "1 when a source's ledger does not balance.", labels=labels
        )
        for source, tracker in list(r.trackers.items()):
            led = reconcile(source, tracker)
            lv = [graph, source]
            entered.add_metric(lv, led.entered)
            for outcome in ("delivered", "filtered", "dead_lettered", "failed"):
                settled.add_metric([*lv, outcome], getattr(led, outcome))
            in_flight.add_metric(lv, led.in_flight)
            unaccounted.add_metric(lv, led.unaccounted)
            alert.add_metric(lv, 0 if led.balanced else 1)
        yield from (entered, settled, in_flight, unaccounted, alert)
        lag = GaugeMetricFamily(
            "streamdag_source_lag_messages",
            "Messages waiting upstream of a source (JetStream pending, Redis group lag, "
            "PostgreSQL backlog), from the source's lag() hook.",
            labels=labels,
        )
        conn = GaugeMetricFamily(
            "streamdag_connection_up",
            "1 when a connection is up: a node's connection_state() hook, or a shared client (node \"\").",
            labels=["graph", "node", "connection"],
        )
        stalled = GaugeMetricFamily(
            "streamdag_source_stalled_seconds",
            "Seconds a source has had messages in flight without any settling (0 when idle or moving).",
            labels=labels,
        )
        if self.monitor is not None:
            for source, secs in list(self.monitor.stalled.items()):
                stalled.add_metric([graph, source], secs)
            for source, value in list(self.monitor.lag.items()):
                lag.add_metric([graph, source], value)
            for (node_id, name), up in list(self.monitor.connections.items()):
                conn.add_metric([graph, node_id, name], 1 if up else 0)
        yield lag
        yield conn
        yield stalled
        extra = CounterMetricFamily(
            "streamdag_node_events",
            "A node type's own counters from its metrics() hook (e.g. jetstream_sink duplicates dropped "
            "by the server's Nats-Msg-Id window).",
            labels=["graph", "node", "event"],
        )
        levels = GaugeMetricFamily(
            "streamdag_node_level",
            "A node type's own levels from its levels() hook, values that go up and down (e.g. http_source "
            "requests in flight and open connections).",
            labels=["graph", "node", "level"],
        )
        for node_id, node in list(r.nodes.items()):
            for hook, family, fn in ((HasMetrics, extra, "metrics"), (HasLevels, levels, "levels")):
                if isinstance(node, hook):
                    try:
                        for name, value in getattr(node, fn)().items():
                            family.add_metric([graph, node_id, name], value)
                    except Exception:  # noqa: BLE001 - a scrape must not fail because one node's hook did
                        continue
        yield extra
        yield levels


def _histogram(name: str, doc: str, items: list[tuple[list[str], Histogram]], labels: list[str]) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for lv, h in items:
        buckets: list[Any] = h.cumulative()
        if h.exemplars:  # a traced run: the bucket's latest trace (OpenMetrics exposition only)
            buckets = [(le, n, Exemplar({"trace_id": ex[0]}, ex[1], ex[2])) if (ex := h.exemplars.get(i)) else (le, n)
                       for i, (le, n) in enumerate(buckets)]
        fam.add_metric(lv, buckets, h.sum)
    return fam


def make_registry(runner: Any, monitor: Monitor | None = None, process: bool = True) -> CollectorRegistry:
    """A registry of its own (never the global one), so several runs in one process don't clash."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(GraphCollector(runner, monitor))
    if process:
        ProcessCollector(registry=reg)
    return reg


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `registry`."""
    return generate_latest(registry)


def render_openmetrics(registry: CollectorRegistry) -> tuple[str, bytes]:
    """(content type, body) in OpenMetrics, the format that carries exemplars (the trace ids on the
    latency histograms of a traced run); Prometheus asks for it when its exemplar storage is on."""
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    return CONTENT_TYPE_LATEST, generate_openmetrics(registry)
