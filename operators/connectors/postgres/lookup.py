"""`pg_lookup`: enrich each message with the row of a table found by key.

One query per batch for the keys not in the cache (`WHERE key_column = ANY($1)`), so a batch of a
thousand messages costs one round trip at most. Found rows and misses are cached for `cache_ttl`
seconds (time from the node's injected clock). The row goes into the body under `into`; a message
whose key has no row goes to the `missing` port (`on_miss: missing`) or on with `into: null`.
Keys travel as text and are cast to the key column's type by the database. A lost connection
fails the batch, which the runtime retries (the node's `retry`) until the server is back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from pydantic import Field

from engine import (
    CelExpr,
    CheckContext,
    CheckIssue,
    EvalError,
    MessageError,
    Msg,
    NodeConfig,
    Operator,
    connection_field,
)
from operators.connectors.postgres.client import (
    check_all,
    identifier_issues,
    json_value,
    plain_text,
    pool_for,
    quote_ident,
    quote_qualified,
    value_getter,
)

__all__ = ["PgLookup", "PgLookupConfig"]

_KEY = "__streamdag_key"


class PgLookupConfig(NodeConfig):
    """Add a table row, found by key, to each message."""

    connection: str = connection_field("postgres", "pg")
    table: str = Field(description="Table to look in (`name` or `schema.name`).", examples=["customers"])
    key_column: str = Field(description="Column matched against the key (should be unique).", examples=["id"])
    key: CelExpr = Field(description="CEL giving the key of a message.", examples=["msg.customer_id"])
    columns: list[str] | None = Field(None, description="Columns to fetch; all if unset.", examples=[["name", "tier"]])
    into: str = Field("lookup", min_length=1, description="Body field that receives the row (an object).")
    on_miss: Literal["missing", "pass"] = Field("pass", description="missing: send to the `missing` port; "
                                                "pass: send on with `into` set to null.")
    cache_ttl: float = Field(30.0, ge=0, description="Seconds a row (or a miss) is remembered; 0 = no cache.")
    cache_size: int = Field(10_000, ge=0, description="Most keys remembered (oldest dropped first).")


class PgLookup(Operator):
    """One query per batch for the keys not in the cache; found rows and misses are cached for
    `cache_ttl` seconds. A lost connection fails the batch, retried until the server is back."""

    Config: ClassVar[type[NodeConfig]] = PgLookupConfig
    example = """\
version: 1
name: pg_lookup_example
connections:
  pg: {type: postgres, dsn: "${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  customer:
    type: pg_lookup
    inputs: [orders]
    config:
      connection: pg
      table: customers
      key_column: id
      key: msg.user
      columns: [name, tier]
      into: customer
      on_miss: missing
      cache_ttl: 60
  show: {type: stdout, inputs: [customer]}
  unknown: {type: file_sink, inputs: [customer.missing], config: {path: out/unknown.ndjson}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "out": "every message, with the row under `into` (`null` when there is none and `on_miss: pass`)",
        "missing": "with `on_miss: missing` only: messages whose key has no row, unchanged",
    }
    connection_types: ClassVar[tuple[str, ...]] = ("postgres",)
    config: PgLookupConfig

    @classmethod
    def output_ports(cls, config: Any) -> tuple[str, ...]:
        return ("out", "missing") if config.on_miss == "missing" else ("out",)

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """E220: table and column names must be plain identifiers."""
        issues = identifier_issues(("table",), config.table, "table", qualified=True)
        issues += identifier_issues(("key_column",), config.key_column, "key column")
        for i, c in enumerate(config.columns or []):
            issues += identifier_issues(("columns", i), c, "column")
        return issues

    def __init__(self, node_id: str, config: PgLookupConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.get_key = value_getter(config.key)
        self.cache: dict[str, tuple[float, dict[str, Any] | MessageError | None]] = {}
        self.pool: Any = None
        self.queries = 0  # round trips made (for tests and stats)

    async def start(self) -> None:
        check_all(self.check(self.config, CheckContext()))
        cfg = self.config
        self.pool = await pool_for(self.ctx, cfg.connection)
        table = quote_qualified(cfg.table)
        async with self.pool.acquire() as conn:
            found = {r[0]: r[1] for r in await conn.fetch(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass($1) "
                "AND attnum > 0 AND NOT attisdropped", table)}
        if not found:
            raise RuntimeError(f"pg_lookup {self.id}: table {cfg.table!r} does not exist")
        missing = [c for c in [cfg.key_column, *(cfg.columns or [])] if c not in found]
        if missing:
            raise RuntimeError(f"pg_lookup {self.id}: table {cfg.table!r} has no column(s) {', '.join(missing)}")
        cols = ", ".join(map(quote_ident, cfg.columns)) if cfg.columns else "t.*"
        k = quote_ident(cfg.key_column)
        self._sql = (f"SELECT {cols}, t.{k}::text AS {_KEY} FROM {table} AS t "
                     f"WHERE t.{k} = ANY($1::text[]::{found[cfg.key_column]}[])")

    async def process(self, batch: list[Msg], out: Any) -> None:
        cfg = self.config
        now = self.ctx.clock()
        cache = self.cache
        keys: list[str | None] = []
        # this batch's answers (cache hits, then fetched)
        rows: dict[str, dict[str, Any] | MessageError | None] = {}
        wanted: dict[str, None] = {}  # in order of first appearance
        failed = object()
        for msg in batch:
            try:
                key = plain_text(self.get_key(msg.body, msg.meta))
            except EvalError as exc:
                out.error(msg, f"key: {exc}")
                keys.append(failed)  # type: ignore[arg-type]
                continue
            keys.append(key)
            if key is not None and key not in rows:
                hit = cache.get(key)
                if hit is not None and hit[0] > now:
                    rows[key] = hit[1]
                else:
                    wanted[key] = None
        if wanted:
            rows.update(await self._fetch(list(wanted), now))
        send, missing = out.port("out"), (out.port("missing") if cfg.on_miss == "missing" else None)
        into = cfg.into
        for msg, key in zip(batch, keys):
            if key is failed:
                continue
            row = rows.get(key) if key is not None else None
            if isinstance(row, MessageError):  # the looked-up row holds a json value beyond the limits
                out.error(msg, f"row {key!r}: {row}")
            elif not isinstance(msg.body, dict):
                out.error(msg, f"body is not an object: cannot set {into!r}")
            elif row is None and missing is not None:
                missing.append(msg)
            else:
                send.append(msg.derive({**msg.body, into: row}))

    async def _fetch(self, keys: list[str], now: float) -> dict[str, dict[str, Any] | MessageError | None]:
        """Look the keys up (one query); remember rows and misses until now + cache_ttl."""
        # a lost connection raises: the runtime retries the batch with the node's `retry` until the
        # server is back (classify_postgres), with the stall in the metrics; no second loop here
        async with self.pool.acquire() as conn:
            records = await conn.fetch(self._sql, keys)
        self.queries += 1
        found: dict[str, dict[str, Any] | MessageError | None] = dict.fromkeys(keys)
        for r in records:
            if found.get(r[_KEY]) is None:  # a non-unique key column: the first row wins
                try:
                    found[r[_KEY]] = {k: json_value(v) for k, v in r.items() if k != _KEY}
                except MessageError as exc:  # its messages go to errors (cached like a row)
                    found[r[_KEY]] = exc
        if self.config.cache_ttl > 0 and self.config.cache_size > 0:
            cache, expires = self.cache, now + self.config.cache_ttl
            for key, row in found.items():
                cache.pop(key, None)  # re-inserted at the end: the oldest entries are dropped first
                cache[key] = (expires, row)
            while len(cache) > self.config.cache_size:
                del cache[next(iter(cache))]
        return found
