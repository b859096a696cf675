"""`streamdag check-consistency`: compare a PostgreSQL table with the Redis cache fed from the same stream.

Every row's key (`key_column`) maps to the Redis key `<key_prefix><key>`; the check reports keys
missing on either side and, with `version_column`, keys whose versions differ (read from the hash
field or the sibling version key that `redis_cache_sink` writes). The score is the share of keys,
over the union of both sides, that are present on both with equal versions: 1.0 means consistent.

Rows stream through a server-side cursor and Redis is read with one pipeline per `batch` rows; the
keys of the table are held in memory to find the Redis keys that have no row (about 100 bytes a key).
The CLI entry points are `add_arguments(parser)` and `main(args)`, for the lead to wire in as a
subcommand of `streamdag`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

__all__ = ["ConsistencyReport", "add_arguments", "check_consistency", "main", "quote_table", "write_metrics_file"]


@dataclass
class ConsistencyReport:
    """Counts of a check plus a few example keys of each kind of difference."""

    table: str
    key_prefix: str
    rows: int = 0  # rows in the table
    cached: int = 0  # cache keys under the prefix (version keys excluded)
    matched: int = 0
    missing_in_redis: int = 0
    missing_in_postgres: int = 0
    version_mismatch: int = 0
    examples: dict[str, list[Any]] = field(default_factory=lambda: {
        "missing_in_redis": [], "missing_in_postgres": [], "version_mismatch": []})

    @property
    def score(self) -> float:
        union = self.rows + self.missing_in_postgres
        return 1.0 if union == 0 else self.matched / union

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": self.score}

    def render(self) -> str:
        lines = [
            f"table {self.table}: {self.rows} rows; redis {self.key_prefix}*: {self.cached} keys",
            f"  matched            {self.matched}",
            f"  missing in redis   {self.missing_in_redis}",
            f"  missing in pg      {self.missing_in_postgres}",
            f"  version mismatch   {self.version_mismatch}",
            f"consistency score {self.score:.4f}",
        ]
        for kind, sample in self.examples.items():
            if sample:
                lines.append(f"  e.g. {kind.replace('_', ' ')}: " + ", ".join(map(str, sample)))
        return "\n".join(lines)


def quote_table(name: str) -> str:
    """`schema.table` or `table` as a quoted SQL identifier (no injection through the name)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"invalid table name {name!r}: use table or schema.table")
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _number(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


async def check_consistency(
    dsn: str, table: str, key_column: str, redis_url: str, key_prefix: str, *,
    version_column: str | None = None, mode: Literal["hash", "value"] = "value",
    version_field: str = "_version", version_suffix: str = ":version", batch: int = 1000, examples: int = 10,
) -> ConsistencyReport:
    """Compare `table` with the Redis keys `<key_prefix><key>` and return the report."""
    import asyncpg
    import redis.asyncio as aredis

    report = ConsistencyReport(table, key_prefix)

    def note(kind: str, item: Any) -> None:
        if len(report.examples[kind]) < examples:
            report.examples[kind].append(item)

    cols = '"' + key_column.replace('"', '""') + '"'
    if version_column:
        cols += ', "' + version_column.replace('"', '""') + '"'
    query = f"SELECT {cols} FROM {quote_table(table)}"
    seen: set[str] = set()
    r = aredis.Redis.from_url(redis_url)
    pg = await asyncpg.connect(dsn)
    try:
        async with pg.transaction(readonly=True):
            rows: list[Any] = []
            async for row in pg.cursor(query, prefetch=batch):
                rows.append(row)
                if len(rows) >= batch:
                    await _compare(r, rows, report, seen, note, key_prefix, version_column, mode, version_field,
                                   version_suffix)
                    rows = []
            await _compare(r, rows, report, seen, note, key_prefix, version_column, mode, version_field,
                           version_suffix)
        match = key_prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?").replace("[", "\\[") + "*"
        async for raw in r.scan_iter(match=match, count=batch):
            key = raw.decode("utf-8", "replace")
            if mode == "value" and key.endswith(version_suffix):
                continue
            report.cached += 1
            if key[len(key_prefix):] not in seen:
                report.missing_in_postgres += 1
                note("missing_in_postgres", key)
    finally:
        await pg.close()
        await r.aclose()
    return report


async def _compare(r: Any, rows: list[Any], report: ConsistencyReport, seen: set[str], note: Any, prefix: str,
                   version_column: str | None, mode: str, version_field: str, version_suffix: str) -> None:
    if not rows:
        return
    pipe = r.pipeline(transaction=False)
    for row in rows:
        key = prefix + str(row[0])
        if version_column is None:
            pipe.exists(key)
        elif mode == "hash":
            pipe.exists(key)
            pipe.hget(key, version_field)
        else:
            pipe.exists(key)
            pipe.get(key + version_suffix)
    results = await pipe.execute()
    step = 1 if version_column is None else 2
    for i, row in enumerate(rows):
        k = str(row[0])
        seen.add(k)
        report.rows += 1
        if not results[i * step]:
            report.missing_in_redis += 1
            note("missing_in_redis", prefix + k)
            continue
        if version_column is not None:
            cached = _number(results[i * step + 1])
            if cached is None or cached != _number(row[1]):
                report.version_mismatch += 1
                note("version_mismatch", f"{prefix}{k} (postgres {row[1]}, redis {cached})")
                continue
        report.matched += 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `streamdag check-consistency`."""
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/test", help="PostgreSQL DSN")
    parser.add_argument("--table", required=True, help="table or schema.table")
    parser.add_argument("--key-column", required=True, help="column whose value makes the cache key")
    parser.add_argument("--version-column", help="column compared with the cached version")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--key-prefix", required=True, help='cache key = prefix + key, e.g. "user:"')
    parser.add_argument("--mode", choices=("hash", "value"), default="value",
                        help="how redis_cache_sink stored it (its `mode`)")
    parser.add_argument("--version-field", default="_version")
    parser.add_argument("--version-suffix", default=":version")
    parser.add_argument("--min-score", type=float, default=1.0, help="exit 1 below this score")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--metrics-file", metavar="PATH",
                        help="also write the score as Prometheus text (node_exporter's textfile collector; "
                        "`streamdag alerts` fires StreamdagConsistencyLow from it)")


def write_metrics_file(report: ConsistencyReport, path: str) -> None:
    """`streamdag_consistency_score{table, key_prefix}` and the check's time, written atomically
    (a temporary file renamed over `path`) so a scrape never reads half a file."""
    import os
    import time

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    labels = f'table="{esc(report.table)}",key_prefix="{esc(report.key_prefix)}"'
    text = (
        "# HELP streamdag_consistency_score Share of keys equal in PostgreSQL and the Redis cache (1: consistent).\n"
        "# TYPE streamdag_consistency_score gauge\n"
        f"streamdag_consistency_score{{{labels}}} {report.score!r}\n"
        "# HELP streamdag_consistency_checked_seconds Unix time of the last consistency check.\n"
        "# TYPE streamdag_consistency_checked_seconds gauge\n"
        f"streamdag_consistency_checked_seconds{{{labels}}} {time.time():.3f}\n"
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(args: argparse.Namespace) -> int:
    """Run the check, print the report; 0 when the score reaches `--min-score`, else 1."""
    import asyncio

    import orjson

    report = asyncio.run(check_consistency(
        args.dsn, args.table, args.key_column, args.redis_url, args.key_prefix,
        version_column=args.version_column, mode=args.mode, version_field=args.version_field,
        version_suffix=args.version_suffix))
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(report.render() + "\n")
    if args.metrics_file:
        write_metrics_file(report, args.metrics_file)
    return 0 if report.score >= args.min_score else 1


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="streamdag check-consistency", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
