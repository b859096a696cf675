"""`streamdag alerts`: the generated rules pass `promtool check rules`, each fires on synthetic series
in `promtool test rules` (and none fires on healthy ones), and they read only exported metrics."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.compile.validate import load_graph
from engine.observe.alerts import RULE_NAMES, Thresholds, alert_rules
from tests.observe.exported import exported, unknown_names

SHOP = """
    version: 1
    name: shop
    connections:
      nats: {type: nats, url: "nats://127.0.0.1:4222"}
      pg: {type: postgres, dsn: "postgresql://root@127.0.0.1:5432/test"}
      cache: {type: redis, url: "redis://127.0.0.1:6379/0"}
    defaults: {dead_letter: dead}
    nodes:
      orders:
        type: jetstream_source
        config: {connection: nats, stream: ORDERS, subjects: ["orders.>"], durable: shop}
      price:
        type: map
        inputs: [orders]
        config: {expr: '{"id": msg.id, "total": double(msg.amount) * 1.2}'}
      rows:
        type: postgres_sink
        inputs: [price]
        config: {connection: pg, table: orders_demo, columns: {id: {expr: msg.id, type: bigint}}}
      cache:
        type: redis_cache_sink
        inputs: [price]
        config: {connection: cache, key: '"order:" + string(msg.id)'}
      dead: {type: file_sink, inputs: [orders.errors], config: {path: dead.ndjson}}
"""

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)")


def _fires(name: str, at: str, labels: dict[str, str], summary: str, severity: str = "critical",
           value: str | None = None) -> dict:
    """An alert expected at `at` with these labels and summary (the description is the rule's, its
    `$labels` filled in and `$value` as `value`)."""
    return {"eval_time": at, "alertname": name, "summary": summary, "value": value,
            "exp_alerts": [{"exp_labels": {"severity": severity, **labels}}]}


def _annotate(case: dict, rules: dict[str, dict]) -> dict:
    """The promtool case of `case`, with the expected annotations."""
    summary, value = case.pop("summary", None), case.pop("value", None)
    for alert in case["exp_alerts"]:
        text = rules[case["alertname"]]["annotations"]["description"]
        for k, v in alert["exp_labels"].items():
            text = text.replace(f"{{{{ $labels.{k} }}}}", v)
        if value is not None:
            text = text.replace("{{ $value | humanize }}", value).replace("{{ $value }}", value)
        alert["exp_annotations"] = {"summary": summary, "description": text}
    return case


def _quiet(name: str, at: str) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": []}


def _series(name: str, labels: dict[str, str], values: str) -> dict:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


SHOP_L = {"graph": "shop"}
# one group per rule: the series that should fire it, when it must not fire yet, and when it must
FIRING = [
    ([], [_fires("StreamdagDown", "2m", SHOP_L, "graph shop is not running")]),
    ([_series("streamdag_run_info", SHOP_L, "1x20"),
      _series("streamdag_integrity_mismatch", {**SHOP_L, "source": "orders", "worker": "a"}, "0 0 1x20"),
      _series("streamdag_integrity_mismatch", {**SHOP_L, "source": "orders", "worker": "b"}, "0x22")],
     [_quiet("StreamdagIntegrityMismatch", "1m"), _quiet("StreamdagDown", "2m"),
      _fires("StreamdagIntegrityMismatch", "2m", {**SHOP_L, "source": "orders"},
             "shop: ledger of source orders does not balance")]),
    ([_series("streamdag_node_dead_lettered_total", {**SHOP_L, "node": "dead", "kind": "sink"}, "0x10 1+1x20"),
      _series("streamdag_node_errors_total", {**SHOP_L, "node": "price", "kind": "operator"}, "0+5x30")],
     [_quiet("StreamdagDeadLetters", "2m"),
      _fires("StreamdagDeadLetters", "5m", {**SHOP_L, "node": "dead"}, "shop: dead letters reach dead", "warning",
             value="33.33m")]),  # 10 dead letters in the 5 min window
    ([_series("streamdag_source_lag_messages", {**SHOP_L, "source": "orders"}, "2000+100x80")],
     [_quiet("StreamdagSourceLagGrowing", "4m"),
      _fires("StreamdagSourceLagGrowing", "11m", {**SHOP_L, "source": "orders"},
             "shop: lag of orders keeps growing", "warning")]),
    ([_series("streamdag_connection_up", {**SHOP_L, "node": "rows", "connection": "pg"}, "1 1 0x20"),
      _series("streamdag_connection_up", {**SHOP_L, "node": "", "connection": "nats"}, "1x22")],
     [_quiet("StreamdagConnectionDown", "1m"),
      _fires("StreamdagConnectionDown", "2m", {**SHOP_L, "node": "rows", "connection": "pg"},
             "shop: connection pg of rows is down")]),
    ([_series("streamdag_consistency_score", {"table": "orders_demo", "key_prefix": "order:"}, "0.95 0.9x4")],
     [_quiet("StreamdagConsistencyLow", "0s"),
      _fires("StreamdagConsistencyLow", "30s", {"table": "orders_demo", "key_prefix": "order:"},
             "consistency of orders_demo with cache order: is low", value="0.9")]),
    ([_series("streamdag_source_stalled_seconds", {**SHOP_L, "source": "orders"}, "0+15x10")],
     [_quiet("StreamdagNoProgress", "1m"),
      _fires("StreamdagNoProgress", "90s", {**SHOP_L, "source": "orders"}, "shop: source orders makes no progress")]),
    ([_series("streamdag_node_stalled_seconds", {**SHOP_L, "node": "rows", "class": "unavailable"}, "0+15x10")],
     [_quiet("StreamdagNodeStalled", "1m"),
      _fires("StreamdagNodeStalled", "90s", {**SHOP_L, "node": "rows", "class": "unavailable"},
             "shop: node rows retries one batch (unavailable)", "warning")]),
]
# a healthy run of `shop` beside a broken run of another graph: nothing fires for `shop`
HEALTHY = [
    _series("streamdag_run_info", SHOP_L, "1x60"),
    _series("streamdag_integrity_mismatch", {**SHOP_L, "source": "orders"}, "0x60"),
    _series("streamdag_integrity_mismatch", {"graph": "other", "source": "orders"}, "1x60"),
    _series("streamdag_node_dead_lettered_total", {**SHOP_L, "node": "dead"}, "7x60"),
    _series("streamdag_source_lag_messages", {**SHOP_L, "source": "orders"}, "50000-100x60"),
    _series("streamdag_source_lag_messages", {**SHOP_L, "source": "orders", "worker": "b"}, "10+1x60"),
    _series("streamdag_connection_up", {**SHOP_L, "node": "rows", "connection": "pg"}, "1x60"),
    _series("streamdag_connection_up", {"graph": "other", "node": "rows", "connection": "pg"}, "0x60"),
    _series("streamdag_consistency_score", {"table": "orders_demo", "key_prefix": "order:"}, "0.97x60"),
    _series("streamdag_source_stalled_seconds", {**SHOP_L, "source": "orders"}, "0 15 30 0x57"),
    _series("streamdag_node_stalled_seconds", {**SHOP_L, "node": "rows", "class": "unavailable"}, "0x60"),
]


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(textwrap.dedent(SHOP))
    return path


@needs_promtool
def test_rules_pass_promtool_and_fire_on_synthetic_series(shop: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    assert main(["alerts", str(shop), "-o", str(rules)]) == 0
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(RULE_NAMES)} rules found" in check.stdout
    generated = {r["alert"]: r for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    assert set(generated) == set(RULE_NAMES)
    fired = {c["alertname"] for _, cases in FIRING for c in cases if c["exp_alerts"]}
    assert fired == set(RULE_NAMES)  # every rule is shown to fire
    tests = [{"interval": "15s", "input_series": series,
              "alert_rule_test": [_annotate(dict(c), generated) for c in cases]} for series, cases in FIRING]
    tests.append({"interval": "15s", "input_series": HEALTHY,
                  "alert_rule_test": [_quiet(name, t) for name in RULE_NAMES for t in ("3m", "14m")]})
    spec = tmp_path / "rules.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "15s", "tests": tests}))
    res = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_read_only_exported_metrics(shop: Path) -> None:
    graph = load_graph(str(shop))
    known = exported(graph)
    for rule in alert_rules(graph)["groups"][0]["rules"]:
        assert unknown_names(rule["expr"], known) == [], rule["alert"]
    assert unknown_names("rate(streamdag_node_mesages_in_total[1m])", known) == ["metric streamdag_node_mesages_in_total"]
    assert unknown_names('streamdag_source_lag_messages{node="x"}', known) == ["label node of streamdag_source_lag_messages"]


def test_rules_follow_the_graph(write_graph) -> None:
    """A file-to-file graph has no lag, connection, consistency or dead-letter rule; node ids are escaped."""
    path = write_graph("""
        version: 1
        name: plain
        nodes:
          read: {type: generate, config: {count: 3}}
          out: {type: file_sink, inputs: [read], config: {path: out.ndjson}}
    """)
    rules = alert_rules(load_graph(str(path)), Thresholds(stall_seconds=30, pending="2m"))["groups"][0]["rules"]
    names = [r["alert"] for r in rules]
    assert names == ["StreamdagDown", "StreamdagIntegrityMismatch", "StreamdagNoProgress", "StreamdagNodeStalled"]
    assert rules[0]["for"] == "2m" and rules[2]["expr"].endswith("> 30")
    assert 'source=~"read"' in rules[2]["expr"]


def test_alerts_command_rejects_bad_input(shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", str(shop), "--for", "soon"]) == 1
    assert "--for 'soon': not a Prometheus duration" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\nnodes: {x: {type: nope}}\n")
    assert main(["alerts", str(bad)]) == 1
    assert "nope" in capsys.readouterr().err
