"""`postgres_cdc_source`: every committed insert, update and delete of some tables, in commit order,
from a logical replication slot with the built-in `pgoutput` plugin (docs/postgres.md, "CDC").

Reading. The slot is read with `pg_logical_slot_peek_binary_changes` over an ordinary asyncpg
connection (asyncpg has no replication protocol; the measurement behind this choice is in the
docs), and the `pgoutput` messages are decoded by `pgoutput.Decoder`. A peek never consumes: each
one decodes from the slot's confirmed position and returns whole transactions, so the source skips
the transactions it has already emitted (by their end LSN; only their Relation messages are
decoded again) and asks for that many rows more; beyond `read_ahead` such rows it waits for acks.

Acks. Every message carries its transaction's end LSN as its token. A transaction is done when all
of its messages are acked (one, with `per_transaction`; none for a transaction of tables outside
the publication); the slot is advanced (`pg_replication_slot_advance`) to the end LSN of the last
transaction of the done prefix, so only at transaction boundaries and only past what every sink
committed. After a crash the next run peeks from there again: at-least-once, replayed in commit
order; a sink keyed by row key and versioned by `meta.lsn` converges (`redis_cache_sink` with
`version: meta.lsn` and `delete`). A rejected message makes the source wait for the rest in flight,
then read again from the confirmed position.

Snapshot. With `snapshot: true` the tables' rows are emitted first (`op: snapshot`), read in one
REPEATABLE READ transaction whose `pg_current_snapshot()` is kept; afterwards the stream skips the
transactions that snapshot saw (xid visible in it) and emits the rest. This is exact whenever the
snapshot is taken after the slot's confirmed position (every transaction the slot no longer holds
committed long before), which is why a snapshot interrupted by a crash is simply taken again. The
snapshot is recorded as done (with its xid horizon, kept for filtering) in `state_table` once all of
its rows are acked. Snapshot rows carry `meta.lsn` = the slot's confirmed position when it was taken,
at or below the LSN of every change the stream emits afterwards.

Health. `levels()` has the WAL the slot holds back, in bytes (`pg_current_wal_lsn() -
confirmed_flush_lsn`, refreshed by `lag()` and every 10 s), and the seconds since the oldest commit
read but not yet confirmed; `lag()` itself returns None (messages waiting upstream are not counted).
A slot above `lag_warning` logs a warning: a stalled slot keeps WAL until the disk fills, unless
the server caps it with `max_slot_wal_keep_size` (then the slot is invalidated instead).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from engine import (
    CheckContext,
    CheckIssue,
    ConfigError,
    MessageError,
    Msg,
    NodeConfig,
    RetryPolicy,
    Size,
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
    pool_for,
    quote_ident,
    quote_qualified,
)
from operators.connectors.postgres.pgoutput import Begin, Change, Commit, Decoder, Relation, lsn_int, lsn_text

__all__ = ["PostgresCdcSource", "PostgresCdcSourceConfig", "XidFilter"]

_SNAPSHOT = -1  # the token of snapshot rows


class PostgresCdcSourceConfig(NodeConfig):
    """Stream the committed changes of tables from a logical replication slot (pgoutput)."""

    connection: str = connection_field("postgres", "pg")
    slot: str = Field(description="Logical replication slot (created with plugin pgoutput if missing).",
                      examples=["orders_cdc"])
    publication: str | None = Field(None, description="Publication to stream; the slot's name if unset. "
                                    "Created FOR TABLE `tables` if missing.", examples=["orders_pub"])
    tables: list[str] = Field(default_factory=list, description="Tables to capture (`name` or `schema.name`): "
                              "the new publication's tables and the snapshot's. May stay empty when the "
                              "publication exists and `snapshot` is off.", examples=[["orders", "customers"]])
    snapshot: bool = Field(False, description="Emit the tables' rows first (`op: snapshot`), consistent with "
                           "the stream that follows; again after a crash until all are acked.")
    per_transaction: bool = Field(False, description="One message per transaction (body: `changes`, a list) "
                                  "instead of one per change.")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="pgoutput messages per read (whole "
                            "transactions are always read).")
    read_ahead: int = Field(50_000, ge=1, description="pgoutput messages read but not yet confirmed (acked) "
                            "before the source waits for acks: every read returns them again.")
    poll_interval: float = Field(0.2, gt=0, description="Seconds between reads when caught up.")
    lag_warning: Size = Field(1 << 30, description="Warn when the slot holds back more WAL than this.",
                              examples=["1GiB"])
    stop_at_end: bool = Field(False, description="Finish once caught up and everything emitted is acked "
                              "(a batch job, tests) instead of waiting for changes.")
    state_table: str = Field("streamdag_cdc_state", description="Table recording finished snapshots "
                             "(created if missing, with `snapshot`).")
    retry: RetryPolicy = Field(
        default_factory=lambda: RetryPolicy.model_validate({"initial_backoff": 0.2, "max_backoff": 5.0}),
        description="Backoff between reads after a lost connection (until the server answers).")


class XidFilter:
    """The transactions a `pg_current_snapshot()` saw (`xmin:xmax:xip,...`), for 32-bit xids from pgoutput."""

    def __init__(self, text: str):
        xmin, xmax, xip = text.split(":")
        self.xmin, self.xmax = int(xmin), int(xmax)
        self.xip = {int(x) for x in xip.split(",") if x}

    def saw(self, xid32: int) -> bool:
        """True when the transaction committed before the snapshot (its changes are in it)."""
        full = (self.xmax & ~0xFFFFFFFF) | xid32  # widen to the 64-bit xid nearest xmax
        if full > self.xmax + (1 << 31):
            full -= 1 << 32
        elif full < self.xmax - (1 << 31):
            full += 1 << 32
        return full < self.xmin or (full < self.xmax and full not in self.xip)


class _Txn:
    """A transaction emitted and not yet confirmed: its end LSN, messages not yet acked, rows it
    takes in a peek (read again by every peek until the slot passes it)."""

    __slots__ = ("commit_time", "end", "left", "rows")

    def __init__(self, end: int, left: int, commit_time: float, rows: int):
        self.end, self.left, self.commit_time, self.rows = end, left, commit_time, rows


class PostgresCdcSource(Source):
    """Changes as messages: body {op, table, key, new, old}; meta {lsn, commit_lsn, commit_time, xid}."""

    Config: ClassVar[type[NodeConfig]] = PostgresCdcSourceConfig
    example: ClassVar[str] = """\
version: 1
name: postgres_cdc_source_example
connections:
  pg: {type: postgres, dsn: "${PG_DSN:-postgresql://root@127.0.0.1:5432/test}"}   # wal_level = logical
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}
nodes:
  changes:
    type: postgres_cdc_source
    config: {connection: pg, slot: accounts_cdc, tables: [accounts], snapshot: true}
  accounts:                                # upserts and deletes, versioned by the commit LSN
    type: redis_cache_sink
    inputs: [changes]
    config: {connection: cache, key: '"account:" + string(msg.key.id)', value: msg.new, version: meta.lsn,
             delete: msg.op == "delete"}
  dead: {type: file_sink, inputs: [changes.errors, accounts.errors], config: {path: out/dead.ndjson}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("postgres",)
    redelivers: ClassVar[bool] = True
    config: PostgresCdcSourceConfig

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """E220: slot, publication, table and state table names must be plain identifiers."""
        issues = identifier_issues(("slot",), config.slot, "slot")
        if config.publication is not None:
            issues += identifier_issues(("publication",), config.publication, "publication")
        for i, t in enumerate(config.tables):
            issues += identifier_issues(("tables", i), t, "table", qualified=True)
        issues += identifier_issues(("state_table",), config.state_table, "state table", qualified=True)
        if config.snapshot and not config.tables:
            issues.append(CheckIssue(("snapshot",), "E220", "`snapshot` needs `tables` (the tables to read)"))
        return issues

    def __init__(self, node_id: str, config: PostgresCdcSourceConfig, ctx: Any):
        import asyncio

        super().__init__(node_id, config, ctx)
        self.publication = config.publication or config.slot
        self.pool: Any = None
        self.conn: Any = None  # the slot's session: peeks and advances, one at a time
        self._lock = asyncio.Lock()
        self.decoder = Decoder()
        self._pk_known: set[int] = set()
        self.confirmed = 0          # the slot's confirmed flush position
        self._emitted = 0           # end LSN of the last transaction emitted
        self._behind = 0            # peek rows of the pending transactions (each peek returns them again)
        self._pending: collections.deque[_Txn] = collections.deque()
        self._by_end: dict[int, _Txn] = {}
        self._failed = 0
        self._settled = asyncio.Event()
        self._filter: XidFilter | None = None
        self._snapshot_left = -1    # snapshot rows not yet acked; -1: no snapshot under way
        self._snapshot_text = ""
        self._need_snapshot = False
        self._idle_at = 0           # a WAL position with nothing of ours below it left to read
        self.lag_bytes: int | None = None
        self._warned = False
        self._lag_checked = 0.0
        self.changes = 0
        self.transactions = 0

    # -- start: checks, publication, slot ---------------------------------------------------------

    async def start(self) -> None:
        check_all(self.check(self.config, CheckContext()))
        cfg = self.config
        self.pool = await pool_for(self.ctx, cfg.connection)
        await self._session()
        await self._preflight()
        state = quote_qualified(cfg.state_table)
        async with self.pool.acquire() as conn:
            if cfg.snapshot:
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {state} (slot text PRIMARY KEY, snapshot text, "
                                   "done_at timestamptz NOT NULL DEFAULT now())")
            if not await conn.fetchval("SELECT 1 FROM pg_publication WHERE pubname = $1", self.publication):
                if not cfg.tables:
                    raise ConfigError(f"postgres_cdc_source {self.id}: publication {self.publication!r} does not "
                                      "exist and no `tables` are given to create it with")
                tables = ", ".join(map(quote_qualified, cfg.tables))
                await conn.execute(f"CREATE PUBLICATION {quote_ident(self.publication)} FOR TABLE {tables}")
                self.ctx.log.info("postgres_cdc_source %s: created publication %s for %s", self.id,
                                  self.publication, tables)
            # the publication first: pgoutput looks it up as of each change, so it must predate the slot
            slot = await conn.fetchrow("SELECT plugin, database, confirmed_flush_lsn::text AS lsn FROM "
                                       "pg_replication_slots WHERE slot_name = $1", cfg.slot)
            created = slot is None
            if created:
                await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.slot)
                slot = await conn.fetchrow("SELECT plugin, database, confirmed_flush_lsn::text AS lsn FROM "
                                           "pg_replication_slots WHERE slot_name = $1", cfg.slot)
                self.ctx.log.info("postgres_cdc_source %s: created slot %s at %s", self.id, cfg.slot, slot["lsn"])
            if slot["plugin"] != "pgoutput" or slot["database"] != await conn.fetchval("SELECT current_database()"):
                raise ConfigError(f"postgres_cdc_source {self.id}: slot {cfg.slot!r} exists with plugin "
                                  f"{slot['plugin']!r} in database {slot['database']!r}; it needs plugin pgoutput "
                                  "in this database (drop it or name another slot)")
            done = None  # a finished snapshot's horizon: its filter holds whether or not `snapshot` still does
            if await conn.fetchval("SELECT to_regclass($1)", state) is not None:
                done = await conn.fetchval(f"SELECT snapshot FROM {state} WHERE slot = $1", cfg.slot)
        self.confirmed = self._emitted = lsn_int(slot["lsn"])
        if done is not None:
            self._filter = XidFilter(done)
        self._need_snapshot = cfg.snapshot and (created or done is None)
        self.ctx.log.info("postgres_cdc_source %s: slot %s at %s", self.id, cfg.slot, slot["lsn"])

    async def _session(self) -> Any:
        """The slot's own session (TimeZone UTC, DateStyle ISO: the text pgoutput sends), opened
        again after the server dropped it."""
        import asyncpg

        if self.conn is None or self.conn.is_closed():
            dsn, settings = connect_args(self.ctx.connection(self.config.connection))
            self.conn = await asyncpg.connect(dsn, timeout=self.ctx.connection(self.config.connection).get(
                "connect_timeout", 5.0), server_settings={**settings, "TimeZone": "UTC", "DateStyle": "ISO, YMD"})
        return self.conn

    async def _preflight(self) -> None:
        """Clear errors for a server or role that cannot do logical decoding, saying what to change."""
        conn = self.conn
        level = await conn.fetchval("SHOW wal_level")
        if level != "logical":
            raise ConfigError(
                f"postgres_cdc_source {self.id}: the server's wal_level is {level!r}; logical decoding needs "
                "wal_level = logical. Set it (ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) and "
                "restart PostgreSQL; max_replication_slots must leave a slot free.")
        role, allowed = await conn.fetchrow(
            "SELECT rolname, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user")
        if not allowed:
            raise ConfigError(
                f"postgres_cdc_source {self.id}: role {role!r} lacks the REPLICATION attribute needed to use a "
                f"replication slot. As a superuser: ALTER ROLE {quote_ident(role)} REPLICATION; (it also needs "
                "SELECT on the tables, and CREATE on the database to create the publication).")

    # -- reading ----------------------------------------------------------------------------------

    async def run(self, out: Any) -> None:
        cfg = self.config
        while not out.stopping.is_set():
            if self._failed:
                await self._rewind(out)
                continue
            if self._need_snapshot:
                try:
                    await cfg.retry.call(lambda: self._snapshot(out), what=f"postgres_cdc_source {self.id}: snapshot",
                                         log=self.ctx.log, retry_if=is_transient, stopping=out.stopping)
                except StopRetrying:
                    return
                continue
            if self._behind >= cfg.read_ahead and self._pending:  # let the acks catch up first
                self._settled.clear()
                await self._wait(out, cfg.poll_interval, self._settled)
                continue
            await out.wait_room()
            try:
                rows, complete, wal = await cfg.retry.call(
                    self._peek, what=f"postgres_cdc_source {self.id}: read", log=self.ctx.log,
                    retry_if=is_transient, stopping=out.stopping)
            except StopRetrying:
                return
            sent = await self._emit(rows, out)
            if time.monotonic() - self._lag_checked > 10:  # the warning without a monitor asking too
                self._lag_checked = time.monotonic()
                try:
                    await self.slot_lag()
                except Exception as exc:  # noqa: BLE001 - best effort, as for the monitor
                    self.ctx.log.debug("postgres_cdc_source %s: slot lag: %s", self.id, exc)
            if complete and not sent:
                self._idle_at = wal
                await self._advance()
                if cfg.stop_at_end and not self._pending and self._snapshot_left <= 0:
                    return
                await self._wait(out, cfg.poll_interval)

    async def _peek(self) -> tuple[list[Any], bool, int]:
        """The next rows (whole transactions), whether they reach the end of the WAL, and a WAL
        position read before them (nothing of ours committed below it is missing from the rows)."""
        want = self._behind + self.config.batch_size
        async with self._lock:
            conn = await self._session()
            # the flush position, not the write one: a peek decodes up to the flushed WAL
            wal = lsn_int(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
            rows = await conn.fetch(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, 'proto_version', '1', "
                "'publication_names', $3)", self.config.slot, want, self.publication)
        return rows, len(rows) < want, wal

    async def _emit(self, rows: list[Any], out: Any) -> int:
        """Decode, skip what was emitted, send the rest; the number of messages sent. A message that
        does not decode becomes a dead letter of its transaction (raw bytes as hex), acked with it."""
        new = out.tracker.new
        msgs: list[Msg] = []
        errors: list[Msg] = []
        changes: list[Change] = []
        bad: list[tuple[bytes, str]] = []
        begin: Begin | None = None
        skip = seen = True
        start = 0
        for i, row in enumerate(rows):
            data = row["data"]
            if seen and begin is not None and data[0] != 0x52 and data[0] != 0x43:
                continue  # a change of a transaction emitted before: only its Relation messages matter
            try:
                item = self.decoder.decode(data)
            except MessageError as exc:  # pgoutput we cannot read: a dead letter, never a stalled slot
                if begin is None:
                    raise
                if not skip:
                    bad.append((bytes(row["data"]), str(exc)))
                continue
            if isinstance(item, Begin):
                begin, changes, bad, start = item, [], [], i
                seen = item.final_lsn < self._emitted  # its commit comes before the end of one emitted
                skip = seen or (self._filter is not None and self._filter.saw(item.xid))
            elif isinstance(item, Commit) and begin is not None:
                if item.end_lsn <= self._emitted:
                    begin = None
                    continue
                self._emitted = item.end_lsn
                txn_msgs = [] if skip else self._messages(begin, item, changes)
                txn = _Txn(item.end_lsn, len(txn_msgs) + len(bad), item.unix_time, i + 1 - start)
                self._behind += txn.rows
                self._pending.append(txn)
                self._by_end[item.end_lsn] = txn
                for m in txn_msgs:
                    m.ack = new(item.end_lsn)
                msgs += txn_msgs
                meta = {"source": self.id, "lsn": item.end_lsn, "xid": begin.xid}
                errors += [out.error(Msg({"pgoutput": data.hex()}, meta, new(item.end_lsn)), reason)
                           for data, reason in bad]
                self.transactions += 1
                begin = None
            elif isinstance(item, Relation) and item.replica_identity == "f" and item.oid not in self._pk_known:
                await self._primary_key(item.oid)  # before the first change of the table
            elif skip or begin is None:
                continue
            elif isinstance(item, Change):
                changes.append(item)
            elif isinstance(item, list):
                changes += item
        if msgs or errors:
            await out.send(msgs, errors)
        if self._pending and self._pending[0].left == 0:
            await self._advance()
        return len(msgs) + len(errors)

    async def _primary_key(self, oid: int) -> None:
        """Under replica identity full pgoutput flags every column as key: `key` is the primary key."""
        async with self.pool.acquire() as conn:
            cols = await conn.fetch(
                "SELECT a.attname FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) JOIN "
                "pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum WHERE i.indrelid = $1 AND i.indisprimary "
                "ORDER BY k.n", oid)
        self._pk_known.add(oid)
        if cols:
            self.decoder.key_columns[oid] = [c[0] for c in cols]

    def _messages(self, begin: Begin, commit: Commit, changes: list[Change]) -> list[Msg]:
        meta = {"source": self.id, "lsn": commit.end_lsn, "commit_lsn": lsn_text(commit.commit_lsn),
                "commit_time": commit.commit_time, "xid": begin.xid}
        self.changes += len(changes)
        if self.config.per_transaction:
            return [Msg({"xid": begin.xid, "changes": [c.body() for c in changes]}, meta)] if changes else []
        return [Msg(c.body(), {**meta, "table": c.table, "op": c.op}) for c in changes]

    async def _snapshot(self, out: Any) -> None:
        """Every row of `tables` in one snapshot, kept to skip what it saw from the stream."""
        await self._settle(out)
        batch = min(self.config.batch_size, 5000)
        self._snapshot_left = max(self._snapshot_left, 0)  # a retried attempt counts on: earlier rows may be in flight
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            at = await conn.fetchval("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                                     self.config.slot)
            self._snapshot_text = await conn.fetchval("SELECT pg_current_snapshot()::text")
            self._filter = XidFilter(self._snapshot_text)
            meta = {"source": self.id, "lsn": lsn_int(at), "commit_lsn": at, "commit_time": None, "xid": None}
            await conn.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'")
            for table in self.config.tables:
                name = quote_qualified(table)
                rel = await conn.fetchval("SELECT $1::regclass::oid", name)
                keys = [r[0] for r in await conn.fetch(  # the replica identity index, else the primary key
                    "SELECT a.attname FROM (SELECT indrelid, indkey FROM pg_index WHERE indrelid = $1 AND "
                    "(indisreplident OR indisprimary) ORDER BY indisreplident DESC LIMIT 1) i, "
                    "unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) JOIN pg_attribute a ON a.attrelid = $1 "
                    "AND a.attnum = k.attnum ORDER BY k.n", rel)]
                qualified = await conn.fetchval("SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c "
                                                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1", rel)
                # rows as text by column type oid, decoded as the stream decodes them
                types = [(r[0], r[1]) for r in await conn.fetch(
                    "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT "
                    "attisdropped ORDER BY attnum", rel)]
                cols = ", ".join(f"{quote_ident(n)}::text" for n, _ in types)
                chunk: list[Msg] = []
                async for row in conn.cursor(f"SELECT {cols} FROM {name}", prefetch=batch):
                    body = self._snapshot_row(qualified, types, keys, row)
                    chunk.append(Msg(body, {**meta, "table": qualified, "op": "snapshot"}, out.tracker.new(_SNAPSHOT)))
                    if len(chunk) >= batch:
                        self._snapshot_left += len(chunk)
                        await out.send(chunk)
                        chunk = []
                        await out.wait_room()
                if chunk:
                    self._snapshot_left += len(chunk)
                    await out.send(chunk)
        self._need_snapshot = False
        self.ctx.log.info("postgres_cdc_source %s: snapshot of %s emitted (at %s)", self.id,
                          ", ".join(self.config.tables), at)
        if self._snapshot_left == 0:
            await self._snapshot_done()

    @staticmethod
    def _snapshot_row(table: str, types: list[tuple[str, int]], keys: list[str], row: Any) -> dict[str, Any]:
        from operators.connectors.postgres.pgoutput import json_of

        new = {n: None if v is None else json_of(t, v) for (n, t), v in zip(types, row.values())}
        key = {k: new.get(k) for k in keys} if keys else None
        return {"op": "snapshot", "table": table, "key": key, "new": new, "old": None}

    async def _snapshot_done(self) -> None:
        self._snapshot_left = -1
        state = quote_qualified(self.config.state_table)
        async with self.pool.acquire() as conn:
            await conn.execute(f"INSERT INTO {state} (slot, snapshot) VALUES ($1, $2) ON CONFLICT (slot) DO UPDATE "
                               "SET snapshot = EXCLUDED.snapshot, done_at = now()", self.config.slot,
                               self._snapshot_text)
        self.ctx.log.info("postgres_cdc_source %s: snapshot acked", self.id)

    # -- acks -------------------------------------------------------------------------------------

    async def commit(self, tokens: list[Any]) -> None:
        """Count the acks per transaction; advance the slot over the done prefix."""
        snap = 0
        for t in tokens:
            if t == _SNAPSHOT:
                snap += 1
            else:
                txn = self._by_end.get(t)
                if txn is not None:
                    txn.left -= 1
        self._settled.set()
        if snap:
            self._snapshot_left -= snap
            if self._snapshot_left == 0 and not self._need_snapshot:
                await self._snapshot_done()
        await self._advance()

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        for token, reason in failures:
            self._failed += 1
            if token == _SNAPSHOT:
                self._snapshot_left -= 1
                self._need_snapshot = True
            else:
                txn = self._by_end.get(token)
                if txn is not None:
                    txn.left -= 1
            self.ctx.log.warning("postgres_cdc_source %s: change at %s failed downstream: %s", self.id,
                                 lsn_text(token) if token != _SNAPSHOT else "snapshot", reason)
        self._settled.set()

    async def _advance(self) -> None:
        """Move the slot's confirmed position to the end of the last fully acked transaction (or to
        the idle position when nothing is pending)."""
        target = self.confirmed
        while self._pending and self._pending[0].left <= 0 and not self._failed:
            txn = self._pending.popleft()
            del self._by_end[txn.end]
            self._behind -= txn.rows
            target = txn.end
        if not self._pending and not self._failed and self._idle_at > target:
            target = self._idle_at
        if target <= self.confirmed or self.conn is None:
            return
        try:
            async with self._lock:
                await (await self._session()).execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                                        self.config.slot, lsn_text(target))
            self.confirmed = target
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.ctx.log.warning("postgres_cdc_source %s: advancing the slot failed (%s); will retry", self.id,
                                 db_message(exc))

    async def _settle(self, out: Any) -> None:
        """Until every message in flight is acked or rejected."""
        def busy() -> bool:
            return any(t.left > 0 for t in self._pending) or self._snapshot_left > 0

        while busy() and not out.stopping.is_set():
            self._settled.clear()
            await self._settled.wait()

    async def _rewind(self, out: Any) -> None:
        """Some messages failed downstream: once nothing is in flight, read again from the slot's position."""
        await self._settle(out)
        self.ctx.log.warning("postgres_cdc_source %s: %d message(s) failed downstream; reading again from %s",
                             self.id, self._failed, lsn_text(self.confirmed))
        self._pending.clear()
        self._by_end.clear()
        self._failed = 0
        self._emitted = self.confirmed
        self._behind = 0
        if self._snapshot_left != -1 and self._need_snapshot:
            self._snapshot_left = 0

    async def _wait(self, out: Any, timeout: float, wake: Any = None) -> None:
        """Until a stop request, `wake` (an event) or `timeout` seconds."""
        import asyncio

        waits = [asyncio.ensure_future(out.stopping.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # -- health -----------------------------------------------------------------------------------

    async def lag(self) -> int | None:
        """Messages waiting upstream: unknown (None). Refreshes the slot's lag in WAL bytes (a gauge)
        and warns above `lag_warning`; the monitor calls it periodically, `run` every 10 s."""
        await self.slot_lag()
        return None

    async def slot_lag(self) -> int | None:
        """WAL bytes the slot holds back (warns above `lag_warning`)."""
        if self.pool is None:
            return None
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM "
                                        "pg_replication_slots WHERE slot_name = $1", self.config.slot)
        self.lag_bytes = None if value is None else int(value)
        if self.lag_bytes is not None and self.lag_bytes > self.config.lag_warning:
            if not self._warned:
                self.ctx.log.warning(
                    "postgres_cdc_source %s: slot %s holds back %d bytes of WAL (above %d): the server keeps it "
                    "until the slot advances; set max_slot_wal_keep_size to cap it", self.id, self.config.slot,
                    self.lag_bytes, self.config.lag_warning)
            self._warned = True
        else:
            self._warned = False
        return self.lag_bytes

    def lag_seconds(self) -> float:
        """Seconds since the commit of the oldest transaction read but not yet confirmed (0 when none)."""
        return time.time() - self._pending[0].commit_time if self._pending else 0.0

    def metrics(self) -> dict[str, int]:
        return {"changes": self.changes, "transactions": self.transactions}

    def levels(self) -> dict[str, float]:
        """Levels that go up and down (the `HasLevels` hook: `streamdag_node_level{level}`)."""
        return {"slot_lag_bytes": float(self.lag_bytes or 0), "slot_lag_seconds": self.lag_seconds()}

    async def stop(self) -> None:
        if self.conn is not None:
            try:
                if not self._failed:
                    await self._advance()
            finally:
                await self.conn.close()
                self.conn = None
