"""`consistency_monitor`: a source that, every `interval`, samples keys of a PostgreSQL table (the
primary) and compares them with the replica fed from it, as `check-consistency` does once: a Redis
cache (`replica` names a `type: redis` connection) or a JetStream KV bucket (a `type: nats`
connection and `bucket`; operators/connectors/jetstream/kv_replica.py). Both replicas offer the
same two calls, compare and repair, so scoring, alerts, metrics and reports are one code path.

Each round sends one report on `out` (score, mismatches, lag, repaired) and, when the score is
below `threshold`, the same report on `alerts` and a warning in the log. The latest figures are the
node's metrics (`streamdag_node_events_total{event=...}`; the score as parts per million, since the
metrics are integers). With `repair`, each divergent key is rewritten from the primary through the
cache sink's own compare-and-set script (KV: the bucket's compare-and-set on the entry's revision),
so a repair never overwrites a newer version that a writer stored meanwhile (such a key counts as
`repair_skipped`).

Lag is in versions: the largest (primary version - replica version) over the sampled keys whose
replica holds an older version (missing keys are counted as mismatches, not lag; 0 without
`version_column`). A round samples `sample` random rows (`ORDER BY
random()`: a scan of the table; 0 samples every row).
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import Field

from engine import (
    CheckContext,
    CheckIssue,
    Msg,
    NodeConfig,
    PositiveDuration,
    Source,
    SourceSender,
    connection_field,
)
from operators.connectors.postgres.client import identifier_issues, pool_for, quote_ident, quote_qualified
from operators.connectors.redis.cache import CAS_SCRIPT
from operators.connectors.redis.connection import redis_client
from operators.connectors.redis.consistency import ConsistencyReport, compare_rows

__all__ = ["ConsistencyMonitor", "ConsistencyMonitorConfig"]


class ConsistencyMonitorConfig(NodeConfig):
    """Sample a PostgreSQL table and its Redis cache every `interval`; score, alert, optionally repair."""

    connection: str = connection_field("postgres", "pg")
    replica: str = Field(description="Name of the replica's connection: `type: redis` (a cache) or `type: nats` "
                         "(a JetStream KV bucket, with `bucket`).", examples=["cache"])
    bucket: str | None = Field(None, description="Replica of type nats: the KV bucket; entries are JSON documents "
                               "holding their version in `version_field`.", examples=["users"])
    table: str = Field(description="The primary table, `name` or `schema.name`.", examples=["users"])
    key_column: str = Field(description="Column whose value makes the cache key.", examples=["id"])
    key_prefix: str = Field(description="Cache key = prefix + key.", examples=["user:"])
    version_column: str | None = Field(None, description="Column compared with the cached version.")
    value_column: str | None = Field(None, description="Column written to the cache by repair (jsonb or text); "
                                     "the whole row as JSON if unset.")
    mode: Literal["value", "hash"] = Field("value", description="How redis_cache_sink stores entries (its `mode`).")
    version_field: str = Field("_version", description="Hash field of the version (mode hash); the JSON "
                               "document's field of the version (KV).")
    version_suffix: str = Field(":version", description="Suffix of the version key (mode value).")
    interval: PositiveDuration = Field(30.0, description="Time between rounds.", examples=["30s"])
    sample: int = Field(100, ge=0, description="Rows compared per round (random); 0: all.")
    threshold: float = Field(0.92, ge=0, le=1, description="Alert when a round scores below this.")
    repair: bool = Field(False, description="Rewrite divergent keys from the primary (version-safe).")
    rounds: int | None = Field(None, ge=1, description="Stop after this many rounds (unset: run until stopped).")


class ConsistencyMonitor(Source):
    """A round every `interval`: a report on `out`, on `alerts` below the threshold."""

    Config: ClassVar[type[NodeConfig]] = ConsistencyMonitorConfig
    ports: ClassVar[tuple[str, ...]] = ("out", "alerts")
    port_docs: ClassVar[dict[str, str]] = {"out": "one report per round", "alerts": "the report of a round "
                                           "that scored below `threshold`"}
    connection_types: ClassVar[tuple[str, ...]] = ("postgres",)
    example = """\
version: 1
name: consistency_monitor_example
connections:
  pg: {type: postgres, dsn: "${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"}
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  monitor:
    type: consistency_monitor
    config: {connection: pg, replica: cache, table: users, key_column: id, key_prefix: "user:",
             version_column: version, value_column: body, interval: 30s, threshold: 0.92, repair: true, rounds: 1}
  reports: {type: file_sink, inputs: [monitor], config: {path: out/consistency.ndjson}}
  alerts: {type: file_sink, inputs: [monitor.alerts], config: {path: out/alerts.ndjson}}
  dead: {type: file_sink, inputs: [monitor.errors], config: {path: out/dead.ndjson}}
"""
    config: ConsistencyMonitorConfig

    def __init__(self, node_id: str, config: ConsistencyMonitorConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.counts = {"rounds": 0, "sampled": 0, "mismatches": 0, "repaired": 0, "repair_skipped": 0,
                       "alerts": 0, "failed_rounds": 0, "score_ppm": 1_000_000, "lag": 0}
        self._pool: Any = None
        self._replica: Any = None  # RedisReplica or KvReplica

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> list[CheckIssue]:
        """E220: table and column names are plain identifiers; E216: `replica` names a redis connection."""
        issues = identifier_issues(("table",), config.table, "table", qualified=True)
        for name in ("key_column", "version_column", "value_column"):
            if getattr(config, name):
                issues += identifier_issues((name,), getattr(config, name), "column")
        kind = ctx.connections.get(config.replica, {}).get("type")
        if kind not in ("redis", "nats"):
            issues.append(CheckIssue(("replica",), "E216", f"connection {config.replica!r} is "
                                     f"{'not declared' if kind is None else 'of type ' + str(kind)}; "
                                     "consistency_monitor needs redis or nats (JetStream KV)"))
        elif kind == "nats" and not re.fullmatch(r"[-/_=.a-zA-Z0-9]*", config.key_prefix):
            issues.append(CheckIssue(("key_prefix",), "E216", f"{config.key_prefix!r} cannot start a JetStream KV "
                                     "key (letters, digits and -/_=. only; e.g. 'user.')"))
        elif (kind == "nats") != (config.bucket is not None):
            issues.append(CheckIssue(("bucket",), "E216", "`bucket` is needed by, and only used by, a replica of "
                                     f"type nats (connection {config.replica!r} is {kind})"))
        return issues

    def metrics(self) -> dict[str, int]:
        return dict(self.counts)

    async def start(self) -> None:
        self._pool = await pool_for(self.ctx, self.config.connection)
        cfg = self.config
        if cfg.bucket is not None:
            from operators.connectors.jetstream.kv_replica import KvReplica

            self._replica = KvReplica(self.ctx, cfg.replica, cfg.bucket, cfg.key_prefix, cfg.version_column,
                                      cfg.version_field)
        else:
            self._replica = RedisReplica(self.ctx, cfg)
        await self._replica.open()
        cols = [quote_ident(cfg.key_column)]
        if cfg.version_column:
            cols.append(quote_ident(cfg.version_column))
        cols.append(f"{quote_ident(cfg.value_column)}::text" if cfg.value_column else "to_jsonb(t)::text")
        order = " ORDER BY random() LIMIT $1" if cfg.sample else ""
        self._query = f"SELECT {', '.join(cols)} FROM {quote_qualified(cfg.table)} AS t{order}"

    async def run(self, out: SourceSender) -> None:
        import asyncio

        cfg = self.config
        while not out.stopping.is_set():
            try:
                report: dict[str, Any] | None = await self.round()
            except Exception as exc:  # noqa: BLE001 - a store down: counted and logged, next round as usual
                self.counts["rounds"] += 1
                self.counts["failed_rounds"] += 1
                self.ctx.log.warning("consistency_monitor %s: round failed: %s", self.id, exc)
                report = None
            if report is not None:
                await out.send_ports(self._messages(report, out))
            if cfg.rounds is not None and self.counts["rounds"] >= cfg.rounds:
                return
            try:
                await asyncio.wait_for(out.stopping.wait(), cfg.interval)
            except TimeoutError:
                pass

    def _messages(self, report: dict[str, Any], out: SourceSender) -> dict[str, list[Msg]]:
        """The round's report on `out`, and on `alerts` (with a warning) below the threshold."""
        cfg = self.config
        meta = {"source": self.id, "timestamp": time.time()}
        lists = {"out": [Msg(report, meta, out.tracker.new(None), 256)]}
        if report["score"] < cfg.threshold:
            self.counts["alerts"] += 1
            self.ctx.log.warning("consistency_monitor %s: score %.4f below %s (%d mismatches of %d sampled)",
                                 self.id, report["score"], cfg.threshold, report["mismatches"], report["sampled"])
            lists["alerts"] = [Msg(report, meta, out.tracker.new(None), 256)]
        return lists

    async def round(self) -> dict[str, Any]:
        """One sample: compare, repair if asked, update the metrics; the round's report."""
        cfg = self.config
        async with self._pool.acquire() as conn:
            rows = await (conn.fetch(self._query, cfg.sample) if cfg.sample else conn.fetch(self._query))
        report = ConsistencyReport(cfg.table, cfg.key_prefix)
        bad: list[tuple[Any, Decimal | None]] = []

        def note(kind: str, item: Any) -> None:
            if len(report.examples[kind]) < 10:
                report.examples[kind].append(item)

        await self._replica.compare(rows, report, note, bad)
        lag = 0
        for row, cached in bad:
            if cfg.version_column and row[1] is not None and cached is not None:
                behind = Decimal(str(row[1])) - (cached if cached is not None else 0)
                lag = max(lag, int(behind))
        repaired = skipped = 0
        if cfg.repair and bad:
            repaired, skipped = await self._replica.repair([row for row, _ in bad])
        c = self.counts
        c["rounds"] += 1
        c["sampled"] += report.rows
        c["mismatches"] += len(bad)
        c["repaired"] += repaired
        c["repair_skipped"] += skipped
        c["score_ppm"] = round(report.score * 1_000_000)
        c["lag"] = lag
        return {"table": cfg.table, "key_prefix": cfg.key_prefix, "score": report.score, "sampled": report.rows,
                "mismatches": len(bad), "missing_in_replica": report.missing_in_redis,
                "version_mismatch": report.version_mismatch, "lag": lag, "repaired": repaired,
                "repair_skipped": skipped, "examples": report.examples}


class RedisReplica:
    """The Redis cache written by `redis_cache_sink`, as the monitor's replica: compare and repair."""

    def __init__(self, ctx: Any, config: ConsistencyMonitorConfig):
        self.ctx, self.config = ctx, config
        self._redis: Any = None
        self._sha = ""

    async def open(self) -> None:
        self._redis = await redis_client(self.ctx, self.config.replica)
        self._sha = await self._redis.script_load(CAS_SCRIPT)

    async def compare(self, rows: list[Any], report: ConsistencyReport, note: Any,
                      bad: list[tuple[Any, Decimal | None]]) -> None:
        cfg = self.config
        await compare_rows(self._redis, rows, report, set(), note, cfg.key_prefix, cfg.version_column, cfg.mode,
                           cfg.version_field, cfg.version_suffix, bad)

    async def repair(self, rows: list[Any]) -> tuple[int, int]:
        """Rewrite the replica's entries of `rows` from the primary; (written, refused as newer)."""
        import orjson

        cfg = self.config
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            key = f"{cfg.key_prefix}{row[0]}"
            value = row[-1]
            version = repr(row[1]) if cfg.version_column and row[1] is not None else ""
            if isinstance(row[1] if cfg.version_column else None, Decimal):
                version = str(row[1])
            if cfg.mode == "hash":
                doc = orjson.loads(value) if value is not None else {}
                args = [p for k, v in (doc.items() if isinstance(doc, dict) else ()) if k != cfg.version_field
                        for p in (str(k), v if isinstance(v, str) else orjson.dumps(v))]
                pipe.execute_command("EVALSHA", self._sha, 2, key, key + cfg.version_suffix, "h", 0, version,
                                     cfg.version_field, *args)
            else:
                pipe.execute_command("EVALSHA", self._sha, 2, key, key + cfg.version_suffix, "v", 0, version,
                                     cfg.version_field, value if value is not None else "null")
        results = await pipe.execute(raise_on_error=False)
        written = sum(1 for r in results if r == 1)
        return written, sum(1 for r in results if r == 0)
