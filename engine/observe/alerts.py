"""Prometheus alert rules for one graph (`streamdag alerts G`), from the checked graph alone.

Every expression reads only metric families that `engine/observe/metrics.py` exports (a test parses
them out and compares), restricted to the graph by its `graph` label and aggregated `by (graph, ...)`
so that the `worker` label of `run --workers N` and Prometheus' `instance` label fold away: one
alert per source, node or connection of the graph, however many processes run it.

Rules are emitted only for what the graph has: lag for sources with a `lag()` hook, connections for
nodes with a `connection_state()` hook or a named connection, dead letters when something receives
an `errors` port, consistency when a `redis_cache_sink` is fed (its score comes from
`streamdag check-consistency --metrics-file`, run on a timer into node_exporter's textfile
collector). Timings aim at an alert within 2 minutes of the condition at a 15 s scrape/evaluation
interval; every threshold is a `Thresholds` field and a CLI option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from engine.compile.plan import build_plan
from engine.hooks import HasConnectionState, HasLag

__all__ = ["RULE_NAMES", "Thresholds", "alert_rules", "render_rules"]

RULE_NAMES = (
    "StreamdagDown",
    "StreamdagIntegrityMismatch",
    "StreamdagDeadLetters",
    "StreamdagSourceLagGrowing",
    "StreamdagConnectionDown",
    "StreamdagConsistencyLow",
    "StreamdagNoProgress",
    "StreamdagNodeStalled",
)


@dataclass(frozen=True)
class Thresholds:
    """What fires an alert; the defaults follow the plan (consistency below 0.92, response < 2 min)."""

    dead_letter_rate: float = 0.0  # dead letters per second (5 min average) above which to alert
    lag_messages: int = 1000  # lag must also exceed this for "lag growing"
    consistency: float = 0.92
    stall_seconds: float = 60.0  # a source with messages in flight and none settling this long
    pending: str = "1m"  # `for:` of the fast alerts

    def __post_init__(self) -> None:
        if not _DURATION.fullmatch(self.pending):
            raise ValueError(f"--for {self.pending!r}: not a Prometheus duration such as 30s, 1m or 1h30m")
        for field, value in (("consistency", self.consistency), ("dead-letter-rate", self.dead_letter_rate),
                             ("stall", self.stall_seconds), ("lag", self.lag_messages)):
            if not value >= 0:
                raise ValueError(f"--{field} {value}: must be a number >= 0")
        if self.consistency > 1:  # a share of keys: above 1 the alert would fire on a perfect score
            raise ValueError(f"--consistency {self.consistency:g}: a score is a share from 0 to 1 (e.g. 0.92)")


_DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def _sel(graph: str, **labels: str) -> str:
    parts = [f'graph="{_esc(graph)}"'] + [f'{k}=~"{v}"' for k, v in labels.items()]
    return "{" + ", ".join(parts) + "}"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _alt(ids: list[str]) -> str:
    """A PromQL regex matching exactly these ids (RE2, anchored by Prometheus)."""
    return _esc("|".join(re.escape(i) for i in sorted(ids)))


def _rule(name: str, expr: str, pending: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": pending,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def alert_rules(graph: Any, th: Thresholds | None = None) -> dict[str, Any]:
    """The rules file (as data) for a checked `Graph`: one group named after the graph."""
    th = th or Thresholds()
    name = graph.spec.name
    nodes = list(graph.nodes.values())
    sources = [rn.id for rn in nodes if rn.kind == "source"]
    lagging = [rn.id for rn in nodes if rn.kind == "source" and isinstance(rn.cls, type) and issubclass(rn.cls, HasLag)]
    connected = [rn.id for rn in nodes if _has_connection(rn)]
    plan = build_plan(graph)
    dead_letter_sinks = sorted(plan.dead_letter_sinks | plan.mixed_sinks)
    g = _sel(name)
    rules: list[dict[str, Any]] = [
        _rule("StreamdagDown", f"absent(streamdag_run_info{g})", th.pending, "critical",
              f"graph {name} is not running",
              f"No process of graph {name} has been scraped for {th.pending}."),
        _rule("StreamdagIntegrityMismatch",
              f"max by (graph, source) (streamdag_integrity_mismatch{g}) > 0", th.pending, "critical",
              "{{ $labels.graph }}: ledger of source {{ $labels.source }} does not balance",
              "Messages in != delivered + filtered + dead-lettered + failed + in flight; "
              "see streamdag_integrity_unaccounted and the run's integrity line."),
    ]
    if dead_letter_sinks:
        sel = _sel(name, node=_alt(dead_letter_sinks))
        rules.append(_rule(
            "StreamdagDeadLetters",
            f"sum by (graph, node) (rate(streamdag_node_dead_lettered_total{sel}[5m])) > {th.dead_letter_rate:g}",
            "0m", "warning",
            "{{ $labels.graph }}: dead letters reach {{ $labels.node }}",
            "{{ $value | humanize }} dead letters per second (5 min average) above "
            f"{th.dead_letter_rate:g}."))
    if lagging:
        sel = _sel(name, source=_alt(lagging))
        lag = f"sum by (graph, source) (streamdag_source_lag_messages{sel})"
        rules.append(_rule(
            "StreamdagSourceLagGrowing",
            f"(sum by (graph, source) (deriv(streamdag_source_lag_messages{sel}[5m])) > 0) "
            f"and ({lag} > {th.lag_messages})",
            "5m", "warning",
            "{{ $labels.graph }}: lag of {{ $labels.source }} keeps growing",
            f"The backlog upstream of the source has grown for 5 minutes and is above {th.lag_messages} "
            "messages: the graph does not keep up."))
    if connected:
        sel = _sel(name, node=_alt(["", *connected]))
        rules.append(_rule(
            "StreamdagConnectionDown",
            f"min by (graph, node, connection) (streamdag_connection_up{sel}) == 0", th.pending, "critical",
            "{{ $labels.graph }}: connection {{ $labels.connection }} of {{ $labels.node }} is down",
            "A node (or a shared client, node \"\") has lost its connection; its batches are retried "
            "until it is back (docs/errors.md)."))
    if any(rn.type == "redis_cache_sink" for rn in nodes):
        rules.append(_rule(
            "StreamdagConsistencyLow",
            f"min by (table, key_prefix) (streamdag_consistency_score) < {th.consistency:g}", "0m", "critical",
            "consistency of {{ $labels.table }} with cache {{ $labels.key_prefix }} is low",
            f"Score {{{{ $value }}}} below {th.consistency:g} (streamdag check-consistency --metrics-file)."))
    if sources:
        sel = _sel(name, source=_alt(sources))
        rules.append(_rule(
            "StreamdagNoProgress",
            f"max by (graph, source) (streamdag_source_stalled_seconds{sel}) > {th.stall_seconds:g}",
            "0m", "critical",
            "{{ $labels.graph }}: source {{ $labels.source }} makes no progress",
            f"Messages in flight and none settled for over {th.stall_seconds:g} s."))
    rules.append(_rule(
        "StreamdagNodeStalled",
        f"max by (graph, node, class) (streamdag_node_stalled_seconds{g}) > {th.stall_seconds:g}",
        "0m", "warning",
        "{{ $labels.graph }}: node {{ $labels.node }} retries one batch ({{ $labels.class }})",
        f"A batch has been retried for over {th.stall_seconds:g} s, usually a service that is unavailable."))
    return {"groups": [{"name": f"streamdag-{name}", "interval": "15s", "rules": rules}]}


def _has_connection(rn: Any) -> bool:
    cls = rn.cls
    return (isinstance(cls, type) and issubclass(cls, HasConnectionState)) or bool(
        getattr(rn.config, "connection", None))


def render_rules(rules: dict[str, Any]) -> str:
    """The rules file as YAML text, keys in the order Prometheus' docs write them."""
    header = "# generated by `streamdag alerts`; check with `promtool check rules`\n"
    return header + yaml.safe_dump(rules, sort_keys=False, allow_unicode=True, width=4096)
