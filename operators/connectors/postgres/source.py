"""`postgres_source`: read a table or query incrementally by a monotonically increasing column.

The outbox pattern: rows are read in order of `cursor` (`WHERE cursor > position ORDER BY cursor
LIMIT batch_size`), and the position is kept in a table of its own (`position_table`, one row per
`position_key`). The stored position advances only over rows whose acks completed, in order: a row
acked early waits for every row before it. A restart (even after kill -9) resumes after the stored
position, so rows in flight at the crash are read again (at-least-once; pair it with an idempotent
sink). Rows whose acks failed are read again: the source waits for the rest in flight to settle and
rewinds to the stored position. `delete_acked` deletes the rows up to the stored position in the
transaction that stores it (outbox clean-up). With `listen`, a NOTIFY on that channel wakes the reader at once;
`poll_interval` stays the fallback.

The cursor must be unique and increase in commit order (a bigserial filled by one writer, or an
outbox whose writers serialize): rows committed late with a smaller value are skipped.

Under `--workers N`, worker i reads only the rows whose `hashtext(cursor::text)` falls in its
range (mod N = i), and stores its own position (`<key>#i/N`): no row is read by two workers and
no lock or claim is written per row. A worker with no stored position of its own (first run, or
N changed) starts after the smallest position stored by a run of one worker or of another worker
count, so nothing is skipped (some rows may be read again: at-least-once). A dead worker's range waits for its
restart (the supervisor restarts it); docs/scale.md.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field, model_validator

from engine import (
    CheckContext,
    CheckIssue,
    MessageError,
    Msg,
    NodeConfig,
    RetryPolicy,
    Source,
    StopRetrying,
    connection_field,
)
from operators.connectors.postgres.client import (
    check_all,
    connect_args,
    db_message,
    identifier_issues,
    is_transient,
    json_value,
    pool_for,
    quote_ident,
    quote_qualified,
    undecoded_row,
)

__all__ = ["PostgresSource", "PostgresSourceConfig"]

_POS = "__streamdag_pos"


class PostgresSourceConfig(NodeConfig):
    """Read rows in order of an increasing column, remembering the position across restarts."""

    connection: str = connection_field("postgres", "pg")
    table: str | None = Field(None, description="Table to read (`name` or `schema.name`).", examples=["outbox"])
    query: str | None = Field(None, description="Or a SELECT to read from (run as a subquery; trusted config "
                              "text, not message content).", examples=["SELECT id, payload FROM outbox WHERE kind = 'order'"])
    columns: list[str] | None = Field(None, description="Columns of `table` to read; all if unset.")
    cursor: str = Field(description="The unique, increasing column rows are read in order of.", examples=["id"])
    batch_size: int = Field(500, ge=1, le=100_000, description="Rows per read.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between reads when caught up.")
    listen: str | None = Field(None, description="NOTIFY channel that wakes the reader (optional).",
                               examples=["outbox_new"])
    position_table: str = Field("streamdag_positions", description="Table holding positions (created if missing).")
    position_key: str | None = Field(None, description="Row of `position_table` for this source; the node id if unset.")
    start_after: str | None = Field(None, description="Position to start after when none is stored (text of a cursor "
                                    "value); from the beginning if unset.")
    delete_acked: bool = Field(False, description="Delete rows of `table` up to the stored position once acked "
                               "(outbox clean-up), in the transaction that stores the position.")
    stop_at_end: bool = Field(False, description="Finish once caught up (a batch job) instead of waiting for rows.")
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy.model_validate({"initial_backoff": 0.2, "max_backoff": 5.0}),
        description="Backoff between reads after a lost connection (until the server answers, unless "
        "`max_attempts` is set).")

    @model_validator(mode="after")
    def _one_source(self) -> PostgresSourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        if self.delete_acked and self.table is None:
            raise ValueError("`delete_acked` needs `table` (rows of a query cannot be deleted)")
        if self.columns is not None and self.table is None:
            raise ValueError("`columns` goes with `table`; write the select list into `query`")
        return self


class PostgresSource(Source):
    """Emits rows as messages (body: column → JSON value); see the module docstring."""

    Config: ClassVar[type[NodeConfig]] = PostgresSourceConfig
    connection_types: ClassVar[tuple[str, ...]] = ("postgres",)
    durable_positions: ClassVar[bool] = True  # its saved cursor moves on as rows are acked
    shared_by: ClassVar[str] = "hash ranges of the cursor: worker i of N reads rows with hashtext(cursor) mod N = i"
    config: PostgresSourceConfig

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """E220: table, column, cursor and position table names must be plain identifiers."""
        issues = identifier_issues(("cursor",), config.cursor, "cursor column")
        issues += identifier_issues(("position_table",), config.position_table, "position table", qualified=True)
        if config.table is not None:
            issues += identifier_issues(("table",), config.table, "table", qualified=True)
        for i, c in enumerate(config.columns or []):
            issues += identifier_issues(("columns", i), c, "column")
        if config.listen is not None:
            issues += identifier_issues(("listen",), config.listen, "channel")
        return issues

    def __init__(self, node_id: str, config: PostgresSourceConfig, ctx: Any):
        import asyncio

        super().__init__(node_id, config, ctx)
        self.key = config.position_key or node_id
        self.pool: Any = None
        self.position: str | None = None      # stored: every row up to here is acked
        self._read_after: str | None = None   # the last row emitted
        self._seq = 0
        self._pending: collections.deque[tuple[int, str]] = collections.deque()  # emitted, in order
        self._done: set[int] = set()
        self._failed: set[int] = set()
        self._dirty = False
        self._settled = asyncio.Event()
        self._wake = asyncio.Event()
        self._listener: Any = None

    async def start(self) -> None:
        check_all(self.check(self.config, CheckContext()))
        cfg = self.config
        self.pool = await pool_for(self.ctx, cfg.connection)
        cursor = quote_ident(cfg.cursor)
        if cfg.table is not None:
            cols = ", ".join(map(quote_ident, cfg.columns)) if cfg.columns else "*"
            base = f"SELECT {cols} FROM {quote_qualified(cfg.table)}"
        else:
            base = cfg.query or ""
        ptable = quote_qualified(cfg.position_table)
        w = self.ctx.worker
        shard = ""
        if w.count > 1:  # this worker's hash range of the cursor, and a position of its own
            shard = f"mod(hashtext(q.{cursor}::text)::bigint + 2147483648, {w.count}) = {w.index}"
            base_key, self.key = self.key, f"{self.key}#{w.index}/{w.count}"
        async with self.pool.acquire() as conn:
            if cfg.table is not None and await conn.fetchval("SELECT to_regclass($1)", quote_qualified(cfg.table)) is None:
                raise RuntimeError(f"postgres_source {self.id}: table {cfg.table!r} does not exist")
            attrs = (await conn.prepare(f"SELECT * FROM ({base}) AS q LIMIT 0")).get_attributes()
            types = {a.name: a.type for a in attrs}
            if cfg.cursor not in types:
                raise RuntimeError(f"postgres_source {self.id}: cursor column {cfg.cursor!r} is not among the "
                                   f"columns read ({', '.join(types)})")
            ctype = f"{quote_ident(types[cfg.cursor].schema)}.{quote_ident(types[cfg.cursor].name)}"
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {ptable} (name text PRIMARY KEY, position text, "
                               "updated_at timestamptz NOT NULL DEFAULT now())")
            self.position = await conn.fetchval(f"SELECT position FROM {ptable} WHERE name = $1", self.key)
            if self.position is None and shard:
                self.position = await self._earlier_position(conn, ptable, ctype, base_key)
        if self.position is None:
            self.position = cfg.start_after
        self._read_after = self.position
        select = f"SELECT q.*, q.{cursor}::text AS {_POS} FROM ({base}) AS q"
        mine, and_mine = (f" WHERE {shard}", f" AND {shard}") if shard else ("", "")
        self._first_sql = f"{select}{mine} ORDER BY q.{cursor} LIMIT $1"
        self._next_sql = f"{select} WHERE q.{cursor} > $1::text::{ctype}{and_mine} ORDER BY q.{cursor} LIMIT $2"
        self._delete_sql = (f"DELETE FROM {quote_qualified(cfg.table)} AS q WHERE q.{cursor} <= $1::text::{ctype}"
                            f"{and_mine}" if cfg.delete_acked and cfg.table else None)
        self._lag_sql = (f"SELECT count(*) FROM ({base}) AS q WHERE ($1::text IS NULL OR q.{cursor} > $1::text::{ctype})"
                         f"{and_mine}")
        self._save_sql = (f"INSERT INTO {ptable} (name, position) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
                          "SET position = EXCLUDED.position, updated_at = now()")
        self.ctx.log.info("postgres_source %s: starting after position %r", self.id, self.position)

    async def _earlier_position(self, conn: Any, ptable: str, ctype: str, base_key: str) -> str | None:
        """Where a worker of a new layout (no position of its own) starts: after the slowest position
        stored by a run of one worker or of another worker count, so no row is skipped; None (the
        start) if some earlier layout's range never stored one. Other ranges of this layout say
        nothing about this one's rows (they may have started earlier), so they are not consulted."""
        count = self.ctx.worker.count
        rows = await conn.fetch(f"SELECT name FROM {ptable} WHERE name = $1 OR left(name, length($2)) = $2",
                                base_key, base_key + "#")
        layouts: dict[int, int] = {}
        names = []
        for r in rows:
            name = r["name"]
            if name != base_key:
                _, _, of = name.rpartition("/")
                if not of.isdigit() or int(of) == count:
                    continue
                layouts[int(of)] = layouts.get(int(of), 0) + 1
            names.append(name)
        if not names or any(n < of for of, n in layouts.items()):
            return self.config.start_after
        return await conn.fetchval(f"SELECT min(position::{ctype})::text FROM {ptable} WHERE name = ANY($1::text[])",
                                   names)

    async def lag(self) -> int | None:
        """Rows after the stored position: the backlog not yet acknowledged by the graph."""
        if self.pool is None:
            return None
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(self._lag_sql, self.position))

    async def run(self, out: Any) -> None:
        cfg = self.config
        if cfg.listen:
            await self._listen()
        while not out.stopping.is_set():
            if self._failed:
                await self._rewind(out)
                continue
            await out.wait_room()
            self._wake.clear()  # before the read: a NOTIFY during it wakes the next wait
            try:  # a lost connection: read again with the policy's backoff until the server answers
                rows = await cfg.retry.call(self._read, what=f"postgres_source {self.id}: read",
                                            log=self.ctx.log, retry_if=is_transient, stopping=out.stopping)
            except StopRetrying:
                return
            if rows:
                await out.send(*self._messages(rows, out))
                if len(rows) == cfg.batch_size:
                    continue
            if cfg.stop_at_end:
                return
            if cfg.listen and (self._listener is None or self._listener.is_closed()):
                await self._listen()
            await self._wait(out, cfg.poll_interval)

    async def _read(self) -> list[Any]:
        async with self.pool.acquire() as conn:
            if self._read_after is None:
                return await conn.fetch(self._first_sql, self.config.batch_size)
            return await conn.fetch(self._next_sql, self._read_after, self.config.batch_size)

    def _messages(self, rows: list[Any], out: Any) -> tuple[list[Msg], list[Msg]]:
        """The rows as messages, and as dead letters those with a json value beyond the payload limits."""
        msgs = []
        errors = []
        new = out.tracker.new
        source = self.config.table or "query"
        for row in rows:
            pos = row[_POS]
            self._seq += 1
            self._pending.append((self._seq, pos))
            meta = {"source": self.id, "table": source, "position": pos}
            try:
                body = {k: json_value(v) for k, v in row.items() if k != _POS}
            except MessageError as exc:
                errors.append(out.error(Msg(undecoded_row(row, _POS), meta, new(self._seq)), str(exc)))
                continue
            msgs.append(Msg(body, meta, new(self._seq)))
        self._read_after = rows[-1][_POS]
        return msgs, errors

    async def _wait(self, out: Any, timeout: float) -> None:
        """Until a NOTIFY, a stop request or `timeout` seconds, whichever comes first."""
        import asyncio

        waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(out.stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _listen(self) -> None:
        import asyncpg

        dsn, server_settings = connect_args(self.ctx.connection(self.config.connection))
        try:
            self._listener = await asyncpg.connect(dsn, server_settings=server_settings)
            await self._listener.add_listener(self.config.listen, lambda *_: self._wake.set())
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._listener = None
            self.ctx.log.warning("postgres_source %s: LISTEN failed (%s); polling", self.id, db_message(exc))

    async def _rewind(self, out: Any) -> None:
        """Some rows failed downstream: once nothing is in flight, read again from the stored position."""
        while len(self._done) + len(self._failed) < len(self._pending) and not out.stopping.is_set():
            self._settled.clear()
            await self._settled.wait()
        self.ctx.log.warning("postgres_source %s: %d row(s) failed downstream; reading again after %r",
                             self.id, len(self._failed), self.position)
        self._pending.clear()
        self._done.clear()
        self._failed.clear()
        self._read_after = self.position

    async def commit(self, tokens: list[Any]) -> None:
        """Advance over the acked prefix of what was emitted, and store the new position."""
        self._done.update(tokens)
        pending, done = self._pending, self._done
        while pending and pending[0][0] in done:
            seq, self.position = pending.popleft()
            done.discard(seq)
            self._dirty = True
        self._settled.set()
        await self._save()

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        for token, reason in failures:
            self._failed.add(token)
            self.ctx.log.warning("postgres_source %s: row %s failed downstream: %s", self.id, token, reason)
        self._settled.set()

    async def _save(self) -> None:
        if not self._dirty:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(self._save_sql, self.key, self.position)
                if self._delete_sql is not None:
                    await conn.execute(self._delete_sql, self.position)
            self._dirty = False
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.ctx.log.warning("postgres_source %s: storing position failed (%s); will retry", self.id,
                                 db_message(exc))

    async def stop(self) -> None:
        if self.pool is not None:
            await self._save()
        if self._listener is not None:
            try:
                await self._listener.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                self.ctx.log.debug("postgres_source %s: closing the listener failed: %s", self.id, exc)
