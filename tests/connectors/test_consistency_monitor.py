"""consistency_monitor against the real PostgreSQL and Redis: it finds injected divergence, scores
it, alerts on its port, repairs from the primary (never over a newer replica), and the next round
scores 1.0; `check-consistency` writes its JSON and HTML reports."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from engine.cli import main
from tests.connectors.postgres_harness import DSN, sql

pytestmark = pytest.mark.services
REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"


@pytest.fixture
def store() -> Iterator[tuple[str, str, redis.Redis]]:
    """A table of 20 rows at version 5 and its cache in sync, under fresh names."""
    table = f"mon_{uuid.uuid4().hex[:10]}"
    prefix = f"mon-{uuid.uuid4().hex[:8]}:"
    asyncio.run(sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, version bigint, body jsonb)'))
    asyncio.run(sql(f'INSERT INTO "{table}" SELECT i, 5, jsonb_build_object(\'id\', i, \'v\', 5) '
                    "FROM generate_series(0, 19) i"))
    r = redis.Redis.from_url(REDIS)
    for i in range(20):
        r.set(f"{prefix}{i}", orjson.dumps({"id": i, "v": 5}))
        r.set(f"{prefix}{i}:version", 5)
    yield table, prefix, r
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}"'))


def _graph(write_graph, table: str, prefix: str, **extra: object) -> Path:
    config = {"connection": "pg", "replica": "cache", "table": table, "key_column": "id", "key_prefix": prefix,
              "version_column": "version", "value_column": "body", "interval": 0.05, "sample": 0,
              "threshold": 0.92, "rounds": 2, **extra}
    return write_graph(f"""
        version: 1
        name: monitor
        connections:
          pg: {{type: postgres, dsn: "{DSN}"}}
          cache: {{type: redis, url: "{REDIS}"}}
          kv: {{type: nats, url: "{NATS}"}}
        nodes:
          monitor: {{type: consistency_monitor, config: {json.dumps(config)}}}
          reports: {{type: file_sink, inputs: [monitor], config: {{path: reports.ndjson}}}}
          alerts: {{type: file_sink, inputs: [monitor.alerts], config: {{path: alerts.ndjson}}}}
    """)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_monitor_finds_divergence_alerts_and_repair_restores_score_one(store, write_graph, run, tmp_path) -> None:
    table, prefix, r = store
    r.delete(f"{prefix}3", f"{prefix}4", f"{prefix}5")  # missing in the replica
    r.set(f"{prefix}7:version", 2)  # stale: 3 versions behind
    r.set(f"{prefix}7", orjson.dumps({"id": 7, "v": 2}))
    r.set(f"{prefix}8:version", 4)
    runners = []
    report = run(_graph(write_graph, table, prefix, repair=True), runner_hook=runners.append)
    assert report.error is None and report.balanced
    assert runners[0].nodes["monitor"].metrics() == {
        "rounds": 2, "sampled": 40, "mismatches": 5, "repaired": 5, "repair_skipped": 0, "alerts": 1,
        "failed_rounds": 0, "score_ppm": 1_000_000, "lag": 0}
    rounds = _lines(tmp_path / "reports.ndjson")
    assert [x["score"] for x in rounds] == [pytest.approx(15 / 20), 1.0]
    first = rounds[0]
    assert (first["sampled"], first["mismatches"], first["missing_in_replica"], first["version_mismatch"],
            first["lag"], first["repaired"], first["repair_skipped"]) == (20, 5, 3, 2, 3, 5, 0)
    assert _lines(tmp_path / "alerts.ndjson") == [first]
    for i in (3, 4, 5, 7, 8):
        assert orjson.loads(r.get(f"{prefix}{i}")) == {"id": i, "v": 5} and r.get(f"{prefix}{i}:version") == b"5"


def test_monitor_without_repair_keeps_alerting_and_never_overwrites_a_newer_replica(store, write_graph, run,
                                                                                    tmp_path) -> None:
    table, prefix, r = store
    r.set(f"{prefix}1:version", 9)  # the replica is ahead: repair must leave it
    r.set(f"{prefix}2:version", 1)
    report = run(_graph(write_graph, table, prefix, repair=False, threshold=0.95))
    assert report.error is None
    rounds = _lines(tmp_path / "reports.ndjson")
    assert [x["score"] for x in rounds] == [pytest.approx(18 / 20)] * 2
    assert len(_lines(tmp_path / "alerts.ndjson")) == 2 and r.get(f"{prefix}2:version") == b"1"
    report = run(_graph(write_graph, table, prefix, repair=True, rounds=1, threshold=0.5))
    last = _lines(tmp_path / "reports.ndjson")[-1]
    assert (last["repaired"], last["repair_skipped"]) == (1, 1)
    assert r.get(f"{prefix}1:version") == b"9" and r.get(f"{prefix}2:version") == b"5"


def test_monitor_samples_at_most_sample_rows(store, write_graph, run, tmp_path) -> None:
    table, prefix, _ = store
    report = run(_graph(write_graph, table, prefix, sample=7, rounds=1))
    assert report.error is None
    assert [(x["sampled"], x["score"]) for x in _lines(tmp_path / "reports.ndjson")] == [(7, 1.0)]


def test_monitor_replica_must_be_a_redis_connection(write_graph, capsys) -> None:
    path = write_graph("""
        version: 1
        name: monitor_bad
        connections:
          pg: {type: postgres, dsn: "postgresql://x"}
        nodes:
          monitor: {type: consistency_monitor, config: {connection: pg, replica: pg, table: t, key_column: id,
                                                        key_prefix: "k:"}}
          out: {type: file_sink, inputs: [monitor], config: {path: o.ndjson}}
    """)
    assert main(["validate", str(path)]) != 0
    assert "E216 nodes.monitor.config.replica: connection 'pg' is of type postgres" in capsys.readouterr().out


def test_check_consistency_writes_json_and_html_reports(store, tmp_path, capsys) -> None:
    table, prefix, r = store
    r.delete(f"{prefix}0")
    r.set(f"{prefix}1:version", 1)
    args = ["check-consistency", "--dsn", DSN, "--table", table, "--key-column", "id", "--version-column", "version",
            "--redis-url", REDIS, "--key-prefix", prefix, "--min-score", "0.95",
            "--report-json", str(tmp_path / "r.json"), "--report-html", str(tmp_path / "r.html")]
    assert main(args) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["matched"], report["missing_in_redis"], report["version_mismatch"], report["score"]) == (
        18, 1, 1, pytest.approx(0.9))
    html = (tmp_path / "r.html").read_text()
    assert "<b>0.9000</b>" in html and "below 0.95" in html and f"{prefix}0" in html


def test_a_stop_ends_a_monitor_waiting_for_its_next_round(store, write_graph, tmp_path) -> None:
    import time

    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner, RunReport

    table, prefix, _ = store
    runner = Runner(load_graph(str(_graph(write_graph, table, prefix, interval=3600, rounds=None))))

    async def main() -> RunReport:
        task = asyncio.ensure_future(runner.run())
        out = tmp_path / "reports.ndjson"
        while not (out.exists() and out.read_text().endswith("\n")):  # the first round is written
            await asyncio.sleep(0.02)
        runner.stop()
        return await asyncio.wait_for(task, 5)

    t0 = time.monotonic()
    report = asyncio.run(main())
    assert report.error is None and time.monotonic() - t0 < 5
    assert len(_lines(tmp_path / "reports.ndjson")) == 1


def test_a_failing_round_is_counted_and_logged_and_the_monitor_goes_on(write_graph, run, tmp_path, caplog) -> None:
    runners: list = []
    report = run(_graph(write_graph, f"mon_missing_{uuid.uuid4().hex[:8]}", "mon-x:", rounds=3),
                 runner_hook=runners.append)
    assert report.error is None and report.balanced
    metrics = runners[0].nodes["monitor"].metrics()
    assert (metrics["rounds"], metrics["failed_rounds"], metrics["sampled"]) == (3, 3, 0)
    assert not (tmp_path / "reports.ndjson").exists() or _lines(tmp_path / "reports.ndjson") == []
    assert sum("round failed" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records) == 3


@pytest.fixture
def kv_store() -> Iterator[tuple[str, str, str]]:
    """A table of 20 rows at version 5 and a JetStream KV bucket in sync, under fresh names."""
    import nats

    table, bucket = f"mon_{uuid.uuid4().hex[:10]}", f"mon_{uuid.uuid4().hex[:10]}"
    asyncio.run(sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, version bigint, body jsonb)'))
    asyncio.run(sql(f'INSERT INTO "{table}" SELECT i, 5, jsonb_build_object(\'id\', i, \'v\', 5) '
                    "FROM generate_series(0, 19) i"))

    async def setup() -> None:
        nc = await nats.connect(NATS)
        kv = await nc.jetstream().create_key_value(bucket=bucket, history=1)
        for i in range(20):
            await kv.put(f"user.{i}", orjson.dumps({"id": i, "v": 5, "_version": 5}))
        await nc.close()

    asyncio.run(setup())
    yield table, bucket, "user."
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}"'))

    async def teardown() -> None:
        nc = await nats.connect(NATS)
        await nc.jetstream().delete_key_value(bucket)
        await nc.close()

    asyncio.run(teardown())


async def _kv(bucket: str, fn: Any) -> Any:
    import nats

    nc = await nats.connect(NATS)
    try:
        return await fn(await nc.jetstream().key_value(bucket))
    finally:
        await nc.close()


def test_monitor_of_a_jetstream_kv_replica_scores_alerts_and_repairs(kv_store, write_graph, run, tmp_path) -> None:
    table, bucket, prefix = kv_store

    async def diverge(kv: Any) -> None:
        await kv.delete("user.3")  # missing (deleted) in the replica
        await kv.purge("user.4")  # missing (purged)
        await kv.put("user.7", orjson.dumps({"id": 7, "v": 2, "_version": 2}))  # 3 versions behind
        await kv.put("user.8", orjson.dumps({"id": 8, "v": 9, "_version": 9}))  # ahead: repair leaves it

    asyncio.run(_kv(bucket, diverge))
    runners: list = []
    report = run(_graph(write_graph, table, prefix, replica="kv", bucket=bucket, repair=True),
                 runner_hook=runners.append)
    assert report.error is None and report.balanced
    rounds = _lines(tmp_path / "reports.ndjson")
    assert [(x["score"], x["mismatches"], x["missing_in_replica"], x["version_mismatch"], x["lag"], x["repaired"],
             x["repair_skipped"]) for x in rounds] == [(pytest.approx(16 / 20), 4, 2, 2, 3, 3, 1),
                                                       (pytest.approx(19 / 20), 1, 0, 1, 0, 0, 1)]
    assert len(_lines(tmp_path / "alerts.ndjson")) == 1 and "user.8 (postgres 5, kv 9)" in str(rounds[1]["examples"])
    assert runners[0].nodes["monitor"].metrics()["score_ppm"] == 950_000

    async def values(kv: Any) -> dict[int, Any]:
        return {i: orjson.loads((await kv.get(f"user.{i}")).value) for i in (3, 4, 7, 8)}

    assert asyncio.run(_kv(bucket, values)) == {3: {"id": 3, "v": 5, "_version": 5}, 4: {"id": 4, "v": 5, "_version": 5},
                                                7: {"id": 7, "v": 5, "_version": 5}, 8: {"id": 8, "v": 9, "_version": 9}}


def test_monitor_kv_replica_needs_a_bucket_and_the_bucket_must_exist(write_graph, run, capsys) -> None:
    path = _graph(write_graph, "t", "user.", replica="kv")
    assert main(["validate", str(path)]) != 0
    assert "E216 nodes.monitor.config.bucket: `bucket` is needed by" in capsys.readouterr().out
    assert main(["validate", str(_graph(write_graph, "t", "user:", replica="kv", bucket="b"))]) != 0
    assert "E216 nodes.monitor.config.key_prefix: 'user:' cannot start a JetStream KV key" in capsys.readouterr().out
    report = run(_graph(write_graph, "t", "user.", replica="kv", bucket=f"nope_{uuid.uuid4().hex[:8]}"))
    assert report.error is not None and "no JetStream KV bucket 'nope_" in str(report.error)
