"""`streamdag top [URL]`: a live terminal view of a running graph, from its `/metrics` (like `vector top`).

Each refresh scrapes the Prometheus text once; rates and p99s come from the difference between
two scrapes, so the view shows the last interval, not the average since the start."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.observe.histogram import LATENCY_BUCKETS, quantile

__all__ = ["Scrape", "build_view", "merge", "metrics_url", "parse_metrics", "run_top"]

_SOURCE_GAUGES = {
    "streamdag_source_in_flight": "in_flight",
    "streamdag_integrity_mismatch": "mismatch",
    "streamdag_source_lag_messages": "lag",
    "streamdag_source_stalled_seconds": "stalled",
}
_COUNTERS = {
    "messages_in": "in",
    "messages_out": "out",
    "errors": "errors",
    "filtered": "filtered",
    "committed": "committed",
    "dead_lettered": "dead_lettered",
    "retries": "retries",
}


@dataclass
class Scrape:
    """What one scrape of `/metrics` says, by node and by source."""

    time: float
    graph: str = "?"
    draining: bool = False
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    connections: dict[tuple[str, str], bool] = field(default_factory=dict)


def metrics_url(url: str) -> str:
    """Accept `host:port`, `http://host:port` or a full `/metrics` URL."""
    if "://" not in url:
        url = "http://" + url
    rest = url.split("://", 1)[1]
    if "/" not in rest or rest.endswith("/"):
        url = url.rstrip("/") + "/metrics"
    return url


def parse_metrics(text: str, now: float | None = None) -> Scrape:
    """Parse the Prometheus text of a streamdag run into a `Scrape`."""
    s = Scrape(time.time() if now is None else now)
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            name, lab, value = sample.name, sample.labels, sample.value
            if not name.startswith("streamdag_"):
                continue
            if name == "streamdag_run_info":
                s.graph = lab.get("graph", "?")
            elif name == "streamdag_run_draining":
                s.draining = value > 0
            elif name.startswith("streamdag_node_") and name.endswith("_total"):
                key = _COUNTERS.get(name[len("streamdag_node_") : -len("_total")])
                if key:
                    node = s.nodes.setdefault(
                        lab["node"], {"type": lab.get("type", ""), "kind": lab.get("kind", "")}
                    )
                    node[key] = value
            elif name == "streamdag_node_batch_seconds_bucket":
                _bucket(s.nodes.setdefault(lab["node"], {}), "batch_buckets", lab["le"], value)
            elif name == "streamdag_end_to_end_latency_seconds_bucket":
                _bucket(s.nodes.setdefault(lab["sink"], {}), "e2e_buckets", lab["le"], value)
            elif name in ("streamdag_edge_queue_depth", "streamdag_edge_queue_capacity"):
                s.nodes.setdefault(lab["node"], {})["queue" if name.endswith("depth") else "capacity"] = value
            elif name == "streamdag_source_messages_total":
                s.sources.setdefault(lab["source"], {})["entered"] = value
            elif name == "streamdag_source_settled_total":
                s.sources.setdefault(lab["source"], {})[lab["outcome"]] = value
            elif name in _SOURCE_GAUGES:
                key = _SOURCE_GAUGES[name]
                s.sources.setdefault(lab["source"], {})[key] = value
            elif name == "streamdag_node_stalled_seconds":
                s.nodes.setdefault(lab["node"], {})["stalled"] = value
            elif name == "streamdag_connection_up":
                s.connections[(lab["node"], lab["connection"])] = value > 0
    return s


def merge(scrapes: list[Scrape]) -> Scrape:
    """The workers of one graph as one (`top` with several URLs): counters, gauges and histogram
    buckets add up; a stall is the longest; a connection is up only if it is up in every worker."""
    if len(scrapes) == 1:
        return scrapes[0]
    out = Scrape(max(s.time for s in scrapes), scrapes[0].graph, any(s.draining for s in scrapes))
    for s in scrapes:
        for table, into in ((s.nodes, out.nodes), (s.sources, out.sources)):
            for name, values in table.items():
                acc = into.setdefault(name, {})
                for k, v in values.items():
                    if isinstance(v, list):  # histogram buckets (le, count)
                        summed = dict(acc.get(k, []))
                        for le, n in v:
                            summed[le] = summed.get(le, 0.0) + n
                        acc[k] = sorted(summed.items())
                    elif isinstance(v, float | int) and not isinstance(v, bool):
                        acc[k] = max(acc.get(k, 0.0), v) if k == "stalled" else acc.get(k, 0.0) + v
                    else:
                        acc.setdefault(k, v)
        for key, up in s.connections.items():
            out.connections[key] = out.connections.get(key, True) and up
    return out


def _bucket(node: dict[str, Any], key: str, le: str, value: float) -> None:
    node.setdefault(key, []).append((float(le), value))


def _p99(prev: dict[str, Any] | None, cur: dict[str, Any], key: str) -> float | None:
    """p99 over the last interval (bucket differences); since the start if nothing new."""
    now = cur.get(key)
    if not now:
        return None
    if prev and prev.get(key) and len(prev[key]) == len(now):
        delta = [(b, c - pc) for (b, c), (_, pc) in zip(now, prev[key], strict=True)]
        if delta[-1][1] > 0:
            return quantile(0.99, delta)
    return quantile(0.99, now)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds == float("inf"):  # above the largest bucket
        return f">{LATENCY_BUCKETS[-1]:g}s"
    return f"{seconds * 1000:.2f}ms" if seconds < 0.01 else f"{seconds * 1000:.0f}ms"


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _fill_bar(depth: float, cap: float, width: int = 6) -> Text:
    frac = 0.0 if cap <= 0 else min(1.0, depth / cap)
    full = round(frac * width)
    style = "red" if frac > 0.8 else "yellow" if frac > 0.5 else "green"
    t = Text("█" * full, style=style)
    t.append("░" * (width - full), style="dim")
    t.append(f" {frac:4.0%}")
    return t


def build_view(prev: Scrape | None, cur: Scrape, url: str = "") -> Group:
    """The renderable of one refresh: a header, one row per node, one per source."""
    dt = max(1e-6, cur.time - prev.time) if prev else None
    nodes = Table(expand=False, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (
        ("node", "left"),
        ("type", "left"),
        ("in/s", "right"),
        ("out/s", "right"),
        ("queue", "left"),
        ("p99", "right"),
        ("e2e p99", "right"),
        ("err", "right"),
        ("retry", "right"),
        ("dlq", "right"),
    ):
        nodes.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for node_id, n in cur.nodes.items():
        p = prev.nodes.get(node_id) if prev else None
        rin = (n.get("in", 0) - p.get("in", 0)) / dt if p and dt else 0.0
        out_key = "committed" if n.get("kind") == "sink" else "out"  # a sink's output is what it commits
        rout = (n.get(out_key, 0) - p.get(out_key, 0)) / dt if p and dt else 0.0
        queue: Text | str = _fill_bar(n.get("queue", 0), n["capacity"]) if "capacity" in n else "-"
        errors = int(n.get("errors", 0))
        nodes.add_row(
            node_id,
            n.get("type", ""),
            _rate(rin) if n.get("kind") != "source" else "-",
            _rate(rout),
            queue,
            _ms(_p99(p, n, "batch_buckets")),
            _ms(_p99(p, n, "e2e_buckets")),
            Text(str(errors), style="red" if errors else ""),
            Text(f"{int(n.get('retries', 0))} stalled {n['stalled']:.0f}s", style="bold red")
            if n.get("stalled") else str(int(n.get("retries", 0))),
            str(int(n.get("dead_lettered", 0))),
        )
    sources = Table(expand=False, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in (
        "source",
        "in",
        "delivered",
        "filtered",
        "dlq",
        "failed",
        "in flight",
        "stalled",
        "lag",
        "integrity",
    ):
        sources.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
    for source, s in cur.sources.items():
        ok = not s.get("mismatch")
        sources.add_row(
            source,
            *(
                str(int(s.get(k, 0)))
                for k in ("entered", "delivered", "filtered", "dead_lettered", "failed", "in_flight")
            ),
            f"{s['stalled']:.0f}s" if s.get("stalled") else "-",
            str(int(s["lag"])) if "lag" in s else "-",
            Text("ok" if ok else "MISMATCH", style="green" if ok else "bold red"),
        )
    state = "draining" if cur.draining else "running"
    head = Text(
        f"streamdag top  {cur.graph}  {state}  {url}  {time.strftime('%H:%M:%S', time.localtime(cur.time))}",
        style="bold",
    )
    down = [f"{n}/{c}" for (n, c), up in cur.connections.items() if not up]
    parts: list[Any] = [head, nodes, sources]
    if down:
        parts.insert(1, Text("connections down: " + ", ".join(down), style="bold red"))
    return Group(*parts)


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


def _scrape(urls: list[str]) -> Scrape:
    return merge([parse_metrics(fetch(u)) for u in urls])


def run_top(url: str | list[str], interval: float = 1.0, once: bool = False, console: Console | None = None) -> int:
    """Refresh until Ctrl-C; `once` prints a single view (two scrapes `interval` apart) and returns.
    Several URLs (the workers of one graph) show as one graph: their sum."""
    urls = [metrics_url(u) for u in ([url] if isinstance(url, str) else url)]
    url = urls[0] if len(urls) == 1 else f"{len(urls)} workers"
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 110))
    prev: Scrape | None = None
    if once:
        try:
            prev = _scrape(urls)
            time.sleep(interval)
            cur = _scrape(urls)
        except (urllib.error.URLError, OSError) as exc:
            console.print(f"error: cannot scrape {url}: {exc}", style="red")
            return 2
        console.print(build_view(prev, cur, url))
        return 0
    with Live(Text(f"waiting for {url} ..."), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                try:
                    cur = _scrape(urls)
                    live.update(build_view(prev, cur, url))
                    prev = cur
                except (urllib.error.URLError, OSError) as exc:
                    live.update(Text(f"waiting for {url}: {exc}", style="yellow"))
                    prev = None
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
