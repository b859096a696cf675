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
import re
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal

from engine import ConnectorError

__all__ = ["ConsistencyReport", "add_arguments", "check_consistency", "compare_rows", "main", "quote_table",
           "render_html", "write_metrics_file"]


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


def number(value: Any) -> Decimal | None:
    """A stored version as a Decimal; None when absent or not a number."""
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
    connect_timeout: float = 5.0,
) -> ConsistencyReport:
    """Compare `table` with the Redis keys `<key_prefix><key>` and return the report; a `ConnectorError`
    naming the store when one cannot be reached or the table (or a column) is missing."""
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
    r = aredis.Redis.from_url(redis_url, socket_connect_timeout=connect_timeout)
    try:
        await r.ping()
    except Exception as exc:
        await r.aclose()
        raise ConnectorError(f"redis ({_safe(redis_url)}): cannot connect: {exc}") from exc
    try:
        pg = await asyncpg.connect(dsn, timeout=connect_timeout)
    except Exception as exc:
        await r.aclose()
        raise ConnectorError(f"postgres ({_safe(dsn)}): cannot connect: {str(exc) or type(exc).__name__}") from exc
    try:
        async with pg.transaction(readonly=True):
            try:
                await pg.fetch(f"{query} LIMIT 0")
            except asyncpg.PostgresError as exc:
                raise ConnectorError(f"postgres table {table}: {exc}") from exc
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
                   version_column: str | None, mode: str, version_field: str, version_suffix: str,
                   bad: list[tuple[Any, Decimal | None]] | None = None) -> None:
    """Count `rows` (key, version…) against Redis; with `bad`, append each row that differs with the
    replica's version (None: missing or not a number)."""
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
            if bad is not None:
                bad.append((row, None))
            continue
        if version_column is not None:
            cached = number(results[i * step + 1])
            if cached is None or cached != number(row[1]):
                report.version_mismatch += 1
                note("version_mismatch", f"{prefix}{k} (postgres {row[1]}, redis {cached})")
                if bad is not None:
                    bad.append((row, cached))
                continue
        report.matched += 1


compare_rows = _compare  # for the continuous monitor (monitor.py)


def render_html(report: ConsistencyReport, min_score: float = 1.0) -> str:
    """The report as one self-contained HTML page (counts, score against `min_score`, examples)."""
    from html import escape

    ok = report.score >= min_score
    counts = "".join(f"<tr><th>{escape(k.replace('_', ' '))}</th><td>{getattr(report, k)}</td></tr>"
                     for k in ("rows", "cached", "matched", "missing_in_redis", "missing_in_postgres",
                               "version_mismatch"))
    examples = "".join(f"<h3>{escape(kind.replace('_', ' '))}</h3><ul>" + "".join(
        f"<li><code>{escape(str(x))}</code></li>" for x in sample) + "</ul>"
        for kind, sample in report.examples.items() if sample)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>consistency {escape(report.table)}</title>"
            "<style>body{font-family:sans-serif}td,th{text-align:left;padding:2px 12px}.bad{color:#b00}"
            ".ok{color:#070}</style></head><body>"
            f"<h1>Consistency of {escape(report.table)} and redis {escape(report.key_prefix)}*</h1>"
            f"<p class=\"{'ok' if ok else 'bad'}\">score <b>{report.score:.4f}</b> "
            f"({'at or above' if ok else 'below'} {min_score})</p><table>{counts}</table>{examples}</body></html>\n")


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
    parser.add_argument("--min-score", type=float, default=1.0,
                        help="exit 1 below this score (exit 2: cannot check, a store or the table missing)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach each store")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--report-json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--report-html", metavar="FILE", help="also write the report as an HTML page to FILE")
    parser.add_argument("--metrics-file", metavar="PATH",
                        help="also write the score as Prometheus text (node_exporter's textfile collector; "
                        "`streamdag alerts` fires StreamdagConsistencyLow from it)")


def _safe(url: str) -> str:
    """The URL or DSN without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


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
    """Run the check, print the report; 0 when the score reaches `--min-score`, 1 below it, 2 when it
    cannot check (a store unreachable, the table or a column missing: one line, no traceback)."""
    import asyncio

    import orjson

    try:
        report = asyncio.run(check_consistency(
            args.dsn, args.table, args.key_column, args.redis_url, args.key_prefix,
            version_column=args.version_column, mode=args.mode, version_field=args.version_field,
            version_suffix=args.version_suffix, connect_timeout=args.connect_timeout))
    except ConnectorError as exc:
        print(f"error: check-consistency: {exc}", file=sys.stderr)
        return 2
    if args.report_json:
        with open(args.report_json, "wb") as f:
            f.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    if args.report_html:
        with open(args.report_html, "w", encoding="utf-8") as f:
            f.write(render_html(report, args.min_score))
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
