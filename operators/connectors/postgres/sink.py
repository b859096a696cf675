"""`postgres_sink`: each batch in one transaction, idempotent modes, bad rows isolated, reconnects.

Values travel as text and are cast by PostgreSQL to the column's type in the statement, so a bad
value fails with the database's own message and message content never becomes SQL text. On the
`unnest` path, integer, float and boolean columns travel as typed arrays instead when every value
of the batch has the column's Python type (asyncpg encodes them in C, the server parses no text);
any other value sends the batch as text, and a row error on the typed statement writes the whole
batch again as text (then halves as usual), so results and messages are the text path's. A batch
is written in one statement (multi-row VALUES, `unnest` of text arrays, or COPY into a temporary
staging table + INSERT … SELECT; see docs/postgres.md for the figures behind `write_path: auto`).
If the statement fails because of some row, the transaction is retried with the batch split in
halves under savepoints until the bad rows are isolated; the rest commits in the same transaction.
A lost connection retries the whole batch with backoff; a commit whose outcome was lost is resolved
with `pg_xact_status`, so a batch is committed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine import (
    CelExpr,
    CheckContext,
    CheckIssue,
    EvalError,
    Msg,
    NodeConfig,
    OutcomeUnknown,
    RetryPolicy,
    Sink,
    connection_field,
    encode_failure,
)
from operators.connectors.postgres import resolve
from operators.connectors.postgres.client import (
    check_all,
    column_values,
    db_message,
    identifier_issues,
    is_row_error,
    is_transient,
    json_text,
    plain_text,
    pool_for,
    quote_ident,
    quote_qualified,
    type_issues,
    value_getter,
)

__all__ = ["ColumnSpec", "PostgresSink", "PostgresSinkConfig"]

Mode = Literal["insert", "insert_ignore", "upsert", "last_write_wins", "merge", "version_vector"]
Columns = list[list[str | None]]  # a batch as text values, one list per column
WritePath = Literal["auto", "values", "unnest", "copy"]
_MAX_PARAMS = 32767
# Batches at least this large go through COPY under `write_path: auto` (below it, unnest is faster).
COPY_THRESHOLD = 2000
# Columns whose values may travel as typed arrays (asyncpg encodes them in C, the server parses no
# text): the column's type -> the array parameter's element type. The SELECT's cast does the rest.
# (real/float4 goes as text: a float8 rounded again to float4 can differ from the text's single rounding)
_NATIVE = {"int8": "int8", "int4": "int8", "int2": "int8", "float8": "float8", "bool": "bool"}
_INT64 = (-(2**63), 2**63 - 1)
_NONE = type(None)


class ColumnSpec(BaseModel):
    """One column: the CEL expression giving its value and, for `create_table`, its SQL type."""

    model_config = ConfigDict(extra="forbid")
    expr: CelExpr = Field(description="CEL over `msg` and `meta`.", examples=["msg.id", "msg"])
    type: str | None = Field(None, description="SQL type used by `create_table` (else inferred).",
                             examples=["bigint", "numeric(12,2)", "jsonb"])


def _expand_column(value: Any) -> Any:
    return {"expr": value} if isinstance(value, str) else value


Column = Annotated[ColumnSpec, BeforeValidator(_expand_column, json_schema_input_type=str | ColumnSpec)]


class PostgresSinkConfig(NodeConfig):
    """Write messages as rows of a PostgreSQL table, one transaction per batch."""

    connection: str = connection_field("postgres", "pg")
    table: str = Field(description="Target table, `name` or `schema.name`.", examples=["orders"])
    mode: Mode = Field("insert", description="insert: a conflict is an error; insert_ignore: ON CONFLICT DO "
                       "NOTHING; upsert: ON CONFLICT DO UPDATE (last message wins); last_write_wins: update "
                       "only when `version` is greater than the stored one; merge: JSON deep merge, `crdt` "
                       "columns merged (docs/consistency.md); version_vector: `version` is a jsonb vector, a "
                       "dominating write replaces, a dominated one is dropped, a concurrent one is a conflict.")
    key: list[str] = Field(default_factory=list, description="Conflict columns (a primary key or unique index).",
                           examples=[["id"]])
    version: str | None = Field(None, description="Column compared by last_write_wins (a number) or "
                                "version_vector (a jsonb map writer -> counter).", examples=["version"])
    crdt: dict[str, resolve.Crdt] = Field(default_factory=dict, description="mode merge: columns merged as "
                                          "CRDTs (gcounter/pncounter: jsonb per-writer counts; orset: jsonb add-wins "
                                          "set; max/min: registers).", examples=[{"views": "gcounter"}])
    field_versions: str | None = Field(None, description="mode merge: the key of a jsonb document holding "
                                       "per-field versions (`{field: version}`); such fields are last-write-wins "
                                       "by version.", examples=["_v"])
    conflict: Literal["port", "table", "resolver"] | None = Field(
        None, description="mode version_vector: concurrent writes go to the `conflicts` port (default), to a "
        "table with both versions, or to `resolver`.")
    resolver: CelExpr | None = Field(None, description="conflict: resolver: CEL over `msg.old` and `msg.new` (the "
                                     "rows as maps) giving the row to keep; written with both vectors merged.",
                                     examples=["msg.new.total > msg.old.total ? msg.new : msg.old"])
    conflicts_table: str | None = Field(None, description="conflict: table: its name (default "
                                        "`<table>_conflicts`, created if missing).")
    columns: dict[str, Column] = Field(
        min_length=1, description="column: CEL expression, or {expr, type}. `msg` alone stores the whole "
        "message (jsonb).", examples=[{"id": "msg.id", "total": {"expr": "msg.total", "type": "numeric"}}])
    create_table: bool = Field(False, description="Create the table if missing (types from `type`, else "
                               "inferred: `msg`/`meta` → jsonb, else from the first batch's values).")
    write_path: WritePath = Field("auto", description="How a batch is sent; auto picks by batch size.")
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy.model_validate({"max_attempts": 3, "max_backoff": 1.0}),
        description="How often one write asks the server (pg_xact_status) what became of a COMMIT whose "
        "answer was lost, before the batch's outcome counts as unknown and the node retries it (asking "
        "again first). A lost connection itself is retried by the node's own `retry` (docs/errors.md).")

    @model_validator(mode="after")
    def _rules(self) -> PostgresSinkConfig:
        if self.mode != "insert" and not self.key:
            raise ValueError(f"mode {self.mode} needs `key` (the conflict columns)")
        if self.mode == "last_write_wins" and not self.version:
            raise ValueError("mode last_write_wins needs `version` (the column compared)")
        if self.version and self.mode not in ("last_write_wins", "version_vector"):
            raise ValueError("`version` is only used by modes last_write_wins and version_vector")
        resolve.rules(self.mode, self.version, self.key, self.crdt, self.field_versions, self.conflict,
                      self.resolver)
        unknown_crdt = [c for c in self.crdt if c not in self.columns]
        if unknown_crdt:
            raise ValueError(f"crdt column(s) {unknown_crdt} are not in `columns`")
        unknown = [k for k in [*self.key, *([self.version] if self.version else [])] if k not in self.columns]
        if unknown:
            raise ValueError(f"key/version column(s) {unknown} are not in `columns`")
        if self.version in self.key:
            raise ValueError("`version` cannot be part of `key`")
        return self


class _StillInProgress(Exception):
    """pg_xact_status still says "in progress" (the server has not finished the lost COMMIT yet)."""


class _LostCommit(Exception):
    """COMMIT's answer was lost and the server could not be asked what came of it."""

    def __init__(self, xid: str, failed: list[tuple[Msg, str]], cause: BaseException):
        super().__init__(xid)
        self.xid, self.failed, self.cause = xid, failed, cause


def _infer_type(source: str, values: Iterable[Any]) -> str:
    """SQL type of an undeclared column for create_table: from the expression, else the first value."""
    if source.strip() in ("msg", "meta"):
        return "jsonb"
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int):
            return "bigint"
        if isinstance(v, float):
            return "double precision"
        if isinstance(v, (dict, list)):
            return "jsonb"
        return "text"
    return "text"


class PostgresSink(Sink):
    """One transaction per batch; a row the database rejects goes to `errors` alone and the rest of its
    batch is committed; see docs/postgres.md."""

    Config: ClassVar[type[NodeConfig]] = PostgresSinkConfig
    example = """\
version: 1
name: postgres_sink_example
connections:
  pg: {type: postgres, dsn: "${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  store:
    type: postgres_sink
    inputs: [orders]
    config:
      connection: pg
      table: orders_example
      mode: upsert
      key: [id]
      columns:
        id: {expr: msg.id, type: bigint}
        user_id: {expr: msg.user, type: text}
        amount: {expr: msg.amount, type: "numeric(12,2)"}
        body: msg
      create_table: true
  dead: {type: file_sink, inputs: [store.errors], config: {path: out/dead.ndjson}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("postgres",)
    port_docs: ClassVar[dict[str, str]] = {
        "conflicts": "version_vector only: a write concurrent with the stored one, as {conflict, node, old, new}, "
                     "with the message's ack (committed when that port's consumer commits it)"}
    config: PostgresSinkConfig

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """E220: table, column, key, version names and column types must be plain identifiers/types."""
        issues = identifier_issues(("table",), config.table, "table", qualified=True)
        for name, col in config.columns.items():
            issues += identifier_issues(("columns", name), name, "column")
            if col.type is not None:
                issues += type_issues(("columns", name, "type"), col.type)
        for i, k in enumerate(config.key):
            issues += identifier_issues(("key", i), k, "key column")
        if config.version:
            issues += identifier_issues(("version",), config.version, "version column")
        if config.conflicts_table:
            issues += identifier_issues(("conflicts_table",), config.conflicts_table, "table", qualified=True)
        return issues

    @classmethod
    def output_ports(cls, config: Any) -> tuple[str, ...]:
        """`conflicts` under mode version_vector with conflict: port."""
        if config is not None and config.mode == "version_vector" and config.conflict in (None, "port"):
            return ("conflicts",)
        return ()

    def routed(self) -> dict[str, list[tuple[Msg, Any]]]:
        return self.resolver.routed() if self.resolver is not None else {}

    def metrics(self) -> dict[str, int]:
        """Modes merge/version_vector: writes dropped as dominated, conflicts, conflicts resolved."""
        r = self.resolver
        return {} if r is None else {"dropped": r.dropped, "conflicts": r.conflicts, "resolved": r.resolved}

    @classmethod
    def check_upstream(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """W360: mode insert behind a source that redelivers: a row replayed after a crash is a
        duplicate key (23505) and goes to errors instead of being skipped."""
        redelivering = [up.node for up in ctx.upstream if up.cls.redelivers]
        if config.mode != "insert" or not redelivering:
            return ()
        return [CheckIssue(
            ("mode",), "W360",
            f"mode insert behind {', '.join(repr(n) for n in redelivering)}, which can deliver a message again "
            "after a crash: the replayed row fails with a duplicate key (23505) and is dead-lettered; use "
            "mode insert_ignore (keep the first) or upsert (keep the last), with `key`",
            "warning")]

    def __init__(self, node_id: str, config: PostgresSinkConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.names = list(config.columns)
        self.getters = [value_getter(c.expr) for c in config.columns.values()]
        self.table = quote_qualified(config.table)
        digest = hashlib.sha1(f"{node_id}/{config.table}".encode()).hexdigest()[:12]
        self.stage = f"streamdag_stage_{digest}"
        self.types: dict[str, str] = {}
        self.json_cols: list[bool] = []
        self.native: list[str | None] = []  # per column: the typed array's element type, or None (text)
        self._unnest_typed_sql = ""  # set once the table's types are known
        self.typed_batches = 0  # batches written as typed arrays (the rest went as text)
        self.pool: Any = None
        self._staged: set[int] = set()  # server pids whose session has the staging table
        # (batch key, xid, its row failures) of a batch whose COMMIT answer was lost, until known
        self._unresolved: tuple[tuple[int, int], str, list[tuple[Msg, str]]] | None = None
        # modes merge and version_vector: their statements and write (resolve.py)
        self.resolver = resolve.Resolver(self) if config.mode in ("merge", "version_vector") else None

    # ---- start: introspect or create the table, build the statements ---------------------------

    async def start(self) -> None:
        check_all(self.check(self.config, CheckContext()))
        self.pool = await pool_for(self.ctx, self.config.connection)
        async with self.pool.acquire() as conn:
            if self.resolver is not None:
                await self.resolver.prepare(conn)
            found = await self._introspect(conn)
            if found is None:
                if not self.config.create_table:
                    raise RuntimeError(f"postgres_sink {self.id}: table {self.config.table!r} does not exist "
                                       "(create it, or set create_table: true)")
                if all(c.type or c.expr.strip() in ("msg", "meta") for c in self.config.columns.values()):
                    await self._create(conn, [])
            else:
                await self._check_table(conn, found)

    async def _introspect(self, conn: Any) -> dict[str, tuple[str, str]] | None:
        rows = await conn.fetch(
            # The type without its modifier: an explicit cast to varchar(3) would cut a longer value
            # silently, while the assignment of the INSERT rejects it (that row goes to `errors`).
            "SELECT a.attname, format_type(a.atttypid, NULL), t.typname FROM pg_attribute a "
            "JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 "
            "AND NOT a.attisdropped", self.table)
        if not rows:
            return None
        return {r[0]: (r[1], r[2]) for r in rows}

    async def _check_table(self, conn: Any, found: dict[str, tuple[str, str]]) -> None:
        missing = [c for c in self.names if c not in found]
        if missing:
            raise RuntimeError(f"postgres_sink {self.id}: table {self.config.table!r} has no column(s) "
                               f"{', '.join(missing)} (has: {', '.join(sorted(found))})")
        if self.config.mode != "insert":
            ok = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique "
                "AND i.indpred IS NULL AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY "
                "a.attname::text) FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey))"
                " = $2::text[])", self.table, sorted(self.config.key))
            if not ok:
                raise RuntimeError(f"postgres_sink {self.id}: mode {self.config.mode} needs a primary key or "
                                   f"unique index on ({', '.join(self.config.key)}) of {self.config.table!r}")
        self.types = {c: found[c][0] for c in self.names}
        self.json_cols = [found[c][1] in ("json", "jsonb") for c in self.names]
        self.native = [_NATIVE.get(found[c][1]) for c in self.names]
        self._build_sql()
        if self.resolver is not None:
            self.resolver.build(self.types, self.json_cols)

    async def _create(self, conn: Any, rows: list[tuple[Any, ...]]) -> None:
        decl = []
        for i, (name, col) in enumerate(self.config.columns.items()):
            sql_type = col.type or _infer_type(col.expr, (r[i] for r in rows))
            decl.append(f"{quote_ident(name)} {sql_type}")
        if self.config.key:
            decl.append(f"PRIMARY KEY ({', '.join(map(quote_ident, self.config.key))})")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(decl)})")
        self.ctx.log.info("created table %s", self.config.table)
        found = await self._introspect(conn)
        assert found is not None
        await self._check_table(conn, found)

    def _build_sql(self) -> None:
        """The INSERT … SELECT around a row source, for this table and mode."""
        cfg = self.config
        cols = [quote_ident(c) for c in self.names]
        col_list = ", ".join(cols)
        casts = ", ".join(f"s.{q}::{self.types[c]} AS {q}" for q, c in zip(cols, self.names))
        keys = [quote_ident(k) for k in cfg.key]
        if cfg.mode in ("upsert", "last_write_wins"):
            # ON CONFLICT DO UPDATE may touch a row once per statement: keep one row per key.
            order = [*keys]
            if cfg.mode == "last_write_wins":
                order += [f"{quote_ident(cfg.version or '')} DESC NULLS LAST", "__ord"]  # ties: first arrival
            else:
                order.append("__ord DESC")  # upsert: the last message of the batch wins
            select = (f"SELECT DISTINCT ON ({', '.join(keys)}) {col_list} FROM (SELECT {casts}, s.__ord FROM {{src}})"
                      f" AS d ORDER BY {', '.join(order)}")
        else:
            select = f"SELECT {casts} FROM {{src}}"
        conflict = ""
        if cfg.mode != "insert":
            updates = [f"{q} = EXCLUDED.{q}" for q, c in zip(cols, self.names) if c not in cfg.key]
            if cfg.mode == "insert_ignore" or not updates:
                conflict = f" ON CONFLICT ({', '.join(keys)}) DO NOTHING"
            else:
                conflict = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
                if cfg.mode == "last_write_wins":
                    v = quote_ident(cfg.version or "")
                    conflict += f" WHERE EXCLUDED.{v} IS NOT NULL AND (t.{v} IS NULL OR t.{v} < EXCLUDED.{v})"
        # The transaction id comes back with the write (one round trip less): a data-modifying WITH
        # runs whether or not the outer query reads it.
        self._insert = (f"WITH w AS (INSERT INTO {self.table} AS t ({col_list}) {select}{conflict}) "
                        "SELECT pg_current_xact_id()::text")
        n = len(cols)
        params = ", ".join(f"${i + 1}::text[]" for i in range(n))
        self._unnest_sql = self._insert.format(src=f"unnest({params}) WITH ORDINALITY AS s({col_list}, __ord)")
        typed = ", ".join(f"${i + 1}::{t or 'text'}[]" for i, t in enumerate(self.native))
        self._unnest_typed_sql = (self._insert.format(src=f"unnest({typed}) WITH ORDINALITY AS s({col_list}, __ord)")
                                  if any(self.native) else "")
        self._copy_sql = self._insert.format(src=f"{quote_ident(self.stage)} AS s")
        self._stage_ddl = (f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(self.stage)} "
                           f"({', '.join(f'{q} text' for q in cols)}, __ord bigint) ON COMMIT DELETE ROWS")
        self._values_chunk = max(1, _MAX_PARAMS // n)

    # ---- write ------------------------------------------------------------------------------------

    def connection_state(self) -> dict[str, bool]:
        """Up/down of the sink's PostgreSQL connection, from its last transaction (no I/O)."""
        up = getattr(self, "_up", None)
        return {} if up is None else {self.config.connection: up}

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]]:
        if self.resolver is not None:
            return await self._resolved_write(batch)
        typed = self._typed_columns(batch)
        failed: list[tuple[Msg, str]] = []
        if typed is not None:
            columns, msgs = typed, batch
        else:
            columns, msgs, failed = self._columns(batch)
        if not msgs:
            return failed
        if not self.types:  # create_table with inferred types: decided by the first batch
            async with self.pool.acquire() as conn:
                await self._create(conn, [tuple(self._raw(m)) for m in msgs])
            columns, msgs, failed = self._columns(batch)
        key = (id(batch[0]), len(batch))  # the runtime retries a batch with the same list
        if self._unresolved is not None:
            earlier = await self._resolve_earlier(key)
            if earlier is not None:
                return earlier
        for fresh_stage in (False, True):
            try:
                result = failed + await self._transaction(columns, msgs, typed is not None)
                self._up = True
                return result
            except _LostCommit as lost:
                # COMMIT was sent but its answer lost, and the server could not be asked yet: the
                # next attempt of this batch asks again before writing anything (never twice)
                self._up = False
                self._unresolved = (key, lost.xid, failed + lost.failed)
                raise OutcomeUnknown(f"postgres_sink {self.id}: the outcome of transaction {lost.xid} is "
                                     f"unknown until the server answers: {db_message(lost.cause)}") from lost.cause
            except Exception as exc:
                if is_transient(exc):
                    # the runtime retries the batch with the node's `retry`, until the server is back,
                    # with the stall in the metrics: no second retry loop in here
                    self._up = False
                    raise
                if self.stage in str(exc) and not fresh_stage:
                    # a new session behind a reused pid has no staging table: make it, try once more
                    self._staged.clear()
                    continue
                raise
        raise AssertionError("unreachable")

    async def _resolved_write(self, batch: list[Msg]) -> list[tuple[Msg, str]]:
        """Modes merge and version_vector (resolve.py): idempotent, so a lost COMMIT is written again."""
        assert self.resolver is not None
        if not self.types:  # create_table with inferred types: decided by the first batch
            async with self.pool.acquire() as conn:
                await self._create(conn, [tuple(self._raw(m)) for m in batch])
        try:
            result = await self.resolver.write(batch)
        except Exception as exc:
            if is_transient(exc):
                self._up = False
            raise
        self._up = True
        return result

    async def _resolve_earlier(self, key: tuple[int, int]) -> list[tuple[Msg, str]] | None:
        """A batch whose commit's outcome was lost: what came of it? Its failures if it committed,
        None if it did not (write it); raises OutcomeUnknown while the server cannot say."""
        assert self._unresolved is not None
        ukey, xid, failed = self._unresolved
        if ukey != key:  # another batch: the lost one was handed back to its source (a drain)
            self._unresolved = None
            return None
        committed = await self._committed(xid)
        self._unresolved = None
        return failed if committed else None

    def _raw(self, msg: Msg) -> list[Any]:
        out = []
        for get in self.getters:
            try:
                out.append(get(msg.body, msg.meta))
            except EvalError:
                out.append(None)
        return out

    def _typed_columns(self, batch: list[Msg]) -> list[list[Any]] | None:
        """The batch as one list per column, each a whole column at once, with int, float and bool
        columns as Python values for typed arrays and the others as text; None when the batch
        should take the text path: no typed statement or not the unnest path, some message fails
        an expression, or a value does not have its column's Python type (text gives the
        database's own message for it)."""
        if not self._unnest_typed_sql or self._path(len(batch), top=True) != "unnest":
            return None
        columns: list[list[Any]] = []
        for get, native, js in zip(self.getters, self.native, self.json_cols):
            values = column_values(get, batch)
            if values is None:
                return None
            kinds = set(map(type, values))
            kinds.discard(_NONE)
            if native is None:
                try:
                    columns.append(values if kinds <= {str} and not js else
                                   list(map(json_text if js else plain_text, values)))
                except (TypeError, ValueError):
                    return None
                continue
            if native == "bool":
                ok = kinds <= {bool}
            else:
                ok = kinds <= ({int} if native == "int8" else {int, float})
                if ok and int in kinds:
                    ints = values if kinds == {int} and None not in values else [v for v in values if type(v) is int]
                    ok = _INT64[0] <= min(ints) and max(ints) <= _INT64[1]
            if not ok:
                return None
            columns.append(values)
        return columns

    def _columns(self, batch: list[Msg]) -> tuple[Columns, list[Msg], list[tuple[Msg, str]]]:
        """Evaluate the column expressions: text values column by column, their messages, and the
        messages that failed.

        Column by column in tight loops; if any expression fails, again message by message to
        single out the failing messages (they go to `errors` naming the column)."""
        convs = [json_text if js else plain_text for js in (self.json_cols or [False] * len(self.names))]
        try:
            columns = [[conv(get(m.body, m.meta)) for m in batch] for get, conv in zip(self.getters, convs)]
            return columns, batch, []
        except (EvalError, TypeError, ValueError):  # ValueError/TypeError: a value JSON cannot encode
            pass
        rows: list[tuple[str | None, ...]] = []
        msgs: list[Msg] = []
        failed: list[tuple[Msg, str]] = []
        for msg in batch:
            row = []
            for name, get, conv in zip(self.names, self.getters, convs):
                try:
                    row.append(conv(get(msg.body, msg.meta)))
                except (EvalError, TypeError, ValueError) as exc:
                    failed.append((msg, f"column {name}: {encode_failure(exc)}"))
                    break
            else:
                rows.append(tuple(row))
                msgs.append(msg)
        return [list(c) for c in zip(*rows)] or [[] for _ in self.names], msgs, failed

    async def _transaction(self, rows: Columns, msgs: list[Msg], typed: bool = False) -> list[tuple[Msg, str]]:
        """One transaction: the whole batch, or (after a row error) its halves under savepoints."""
        conn = await self.pool.acquire()
        try:
            return await self._in_transaction(conn, rows, msgs, typed)
        finally:
            try:
                await self.pool.release(conn)
            except Exception as exc:  # noqa: BLE001 - the pool drops a broken connection; the outcome stands
                self.ctx.log.debug("postgres_sink %s: releasing a connection failed: %s", self.id, exc)

    async def _in_transaction(self, conn: Any, rows: Columns, msgs: list[Msg], typed: bool = False
                              ) -> list[tuple[Msg, str]]:
        if self._path(len(msgs), top=True) == "copy":
            pid = conn.get_server_pid()
            if pid not in self._staged:  # outside the transaction, so a rollback keeps it
                await conn.execute(self._stage_ddl)
                self._staged.add(pid)
        tx = conn.transaction()
        await tx.start()
        try:
            unconvertible: list[tuple[Msg, str]] = []
            done = False
            if typed:
                try:
                    xid = await conn.fetchval(self._unnest_typed_sql, *rows)
                    self.typed_batches += 1
                    done = True
                except Exception as exc:
                    if not is_row_error(exc):
                        raise
                    # some row failed as a typed value: the whole batch again as text, exactly as the
                    # text path would write it (the database's own message for a bad row)
                    tx = await _restart(conn, tx)
                    rows, msgs, unconvertible = self._columns(msgs)
            failed: list[tuple[Msg, str]] = unconvertible
            if not done and msgs:
                try:
                    xid = await self._execute(conn, rows, top=True)
                except Exception as exc:
                    if not is_row_error(exc):
                        raise
                    tx = await _restart(conn, tx)
                    xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
                    failed = unconvertible + await self._isolate(conn, rows, msgs, exc)
            elif not done:
                xid = await conn.fetchval("SELECT pg_current_xact_id()::text")
        except BaseException:
            try:
                await tx.rollback()
            except Exception as err:  # noqa: BLE001 - the connection is gone; the server rolls back
                self.ctx.log.debug("postgres_sink %s: rollback failed: %s", self.id, err)
            raise
        try:
            await tx.commit()
        except Exception as exc:
            # The answer to COMMIT was lost: ask the server what became of the transaction.
            if not is_transient(exc):
                raise
            try:
                committed = await self._committed(xid)
            except OutcomeUnknown:
                raise _LostCommit(xid, failed, exc) from exc
            if not committed:
                raise
        return failed

    async def _committed(self, xid: str) -> bool:
        """After a commit whose answer was lost: did it commit? Asks on another connection, a few
        times (`retry`); `OutcomeUnknown` while the server cannot say (the next attempt asks again)."""

        async def ask() -> str:
            async with self.pool.acquire() as conn:
                status = await conn.fetchval("SELECT pg_xact_status($1::text::xid8)", xid)
            if status == "in progress":
                raise _StillInProgress(xid)
            return str(status)

        try:
            status = await self.config.retry.call(
                ask, what=f"postgres_sink {self.id}: asking for transaction {xid}", log=self.ctx.log,
                retry_if=lambda exc: isinstance(exc, _StillInProgress) or is_transient(exc))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == "22023":  # "transaction ID … is in the future"
                # After a crash the server's xid counter restarts below ours: the transaction left
                # no commit record (replaying one would have advanced the counter), so it did not commit.
                self.ctx.log.warning("postgres_sink %s: lost commit of xact %s resolved: not committed "
                                     "(server recovered before it)", self.id, xid)
                return False
            if isinstance(exc, _StillInProgress) or is_transient(exc):
                raise OutcomeUnknown(f"postgres_sink {self.id}: could not learn whether transaction {xid} "
                                     f"committed") from exc
            raise
        self.ctx.log.warning("postgres_sink %s: lost commit of xact %s resolved: %s", self.id, xid, status)
        return status == "committed"

    async def _isolate(self, conn: Any, rows: Columns, msgs: list[Msg],
                       exc: BaseException) -> list[tuple[Msg, str]]:
        """Write `rows` in halves under savepoints; a single row that fails is reported, not written."""
        if len(msgs) == 1:
            return [(msgs[0], db_message(exc))]
        mid = len(msgs) // 2
        failed: list[tuple[Msg, str]] = []
        for part, part_msgs in (([c[:mid] for c in rows], msgs[:mid]), ([c[mid:] for c in rows], msgs[mid:])):
            try:
                async with conn.transaction():
                    await self._execute(conn, part, top=False)
            except Exception as err:
                if not is_row_error(err):
                    raise
                failed += await self._isolate(conn, part, part_msgs, err)
        return failed

    def _path(self, n: int, top: bool) -> str:
        """The write path for `n` rows; halves of a split batch always go through unnest."""
        path = self.config.write_path
        if not top:
            return "unnest"
        if path == "auto":
            return "copy" if n >= COPY_THRESHOLD else "unnest"
        return path

    async def _execute(self, conn: Any, columns: Columns, top: bool) -> str:
        """Write the rows; returns the id of the transaction they were written in."""
        path = self._path(len(columns[0]), top)
        if path == "unnest":
            return await conn.fetchval(self._unnest_sql, *columns)
        if path == "copy":
            return await self._copy(conn, columns)
        rows = list(zip(*columns))
        n = self._values_chunk
        xid = ""
        for start in range(0, len(rows), n):
            xid = await self._values(conn, rows[start:start + n])
        return xid

    async def _copy(self, conn: Any, columns: Columns) -> str:
        records = list(zip(*columns, range(1, len(columns[0]) + 1)))
        await conn.copy_records_to_table(self.stage, records=records, columns=[*self.names, "__ord"])
        return await conn.fetchval(self._copy_sql)

    async def _values(self, conn: Any, rows: list[tuple[str | None, ...]]) -> str:
        n = len(self.names)
        tuples = []
        for i in range(len(rows)):
            base = i * n
            tuples.append("(" + ", ".join(f"${base + j + 1}::text" for j in range(n)) + f", {i + 1})")
        src = f"(VALUES {', '.join(tuples)}) AS s({', '.join(map(quote_ident, self.names))}, __ord)"
        return await conn.fetchval(self._insert.format(src=src), *[v for r in rows for v in r])


async def _restart(conn: Any, tx: Any) -> Any:
    """Roll back `tx` and start a new transaction on `conn` (after a row error)."""
    await tx.rollback()
    tx = conn.transaction()
    await tx.start()
    return tx
