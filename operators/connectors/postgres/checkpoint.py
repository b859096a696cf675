"""Checkpoints of operator state in PostgreSQL (`engine.CheckpointStore`).

One table (default `streamdag_checkpoints`, created if missing) holds every checkpoint:
`(name, part, key) -> data bytea`, `name` being the node's checkpoint namespace, `part` its
partition and `key` a key's record ("" for the partition's meta record). A save is one transaction:
the dirty keys are upserted, gone keys deleted and the meta record (with the covered source
positions) replaced together, so a crash leaves the previous checkpoint or the new one, never a mix.
PostgreSQL writes it to its WAL before the commit returns: it survives a crash of this process
and of the server.

Fencing: the record under key `#epoch` is the checkpoint's owner generation. An owner `claim`s it
(+1) before it loads; each of its saves first locks that record and writes only if it still holds
its epoch, so a process that lost the partition (a takeover after a pause, a zombie) cannot overwrite
the new owner's checkpoint: its save raises `CheckpointFenced` and writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import CheckpointFenced
from operators.connectors.postgres.client import pool_for, quote_qualified

if TYPE_CHECKING:
    from engine import Context

__all__ = ["PostgresCheckpoints"]


_EPOCH = "#epoch"  # the owner generation's record (a key record's name is JSON: never this)


class PostgresCheckpoints:
    """`CheckpointStore` over the pool of a named `postgres` connection."""

    def __init__(self, ctx: Context, connection: str, table: str):
        self.ctx = ctx
        self.connection = connection
        self.table = quote_qualified(table)
        self._pool: Any = None

    async def _ready(self) -> Any:
        if self._pool is None:
            pool = await pool_for(self.ctx, self.connection)
            # workers starting together would race in CREATE TABLE IF NOT EXISTS (a unique violation
            # in pg_type): one at a time, under a transaction-scoped advisory lock on the table name
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.table)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (name text NOT NULL, part text NOT NULL, "
                    "key text NOT NULL, data bytea NOT NULL, PRIMARY KEY (name, part, key))"
                )
            self._pool = pool
        return self._pool

    async def load(self, name: str, part: str) -> dict[str, bytes]:
        pool = await self._ready()
        rows = await pool.fetch(f"SELECT key, data FROM {self.table} WHERE name = $1 AND part = $2 AND key <> $3",
                                name, part, _EPOCH)
        return {r["key"]: bytes(r["data"]) for r in rows}

    async def claim(self, name: str, part: str) -> int:
        pool = await self._ready()
        value = await pool.fetchval(
            f"INSERT INTO {self.table} AS t (name, part, key, data) VALUES ($1, $2, $3, '1') "
            "ON CONFLICT (name, part, key) DO UPDATE "
            "SET data = convert_to((convert_from(t.data, 'UTF8')::bigint + 1)::text, 'UTF8') "
            "RETURNING convert_from(data, 'UTF8')::bigint", name, part, _EPOCH)
        return int(value)

    async def save(self, name: str, part: str, upserts: dict[str, bytes], deletes: list[str],
                   epoch: int | None = None) -> None:
        pool = await self._ready()
        async with pool.acquire() as conn, conn.transaction():
            if epoch is not None:
                current = await conn.fetchval(
                    f"SELECT convert_from(data, 'UTF8')::bigint FROM {self.table} "
                    "WHERE name = $1 AND part = $2 AND key = $3 FOR UPDATE", name, part, _EPOCH)
                if current != epoch:
                    raise CheckpointFenced(f"checkpoint {name!r} partition {part}: claimed by another owner "
                                           f"(epoch {current}, this process holds {epoch}); nothing written")
            if deletes:
                await conn.execute(
                    f"DELETE FROM {self.table} WHERE name = $1 AND part = $2 AND key = ANY($3::text[])",
                    name, part, deletes,
                )
            if upserts:
                keys = list(upserts)
                await conn.execute(
                    f"INSERT INTO {self.table} (name, part, key, data) "
                    "SELECT $1, $2, k, d FROM unnest($3::text[], $4::bytea[]) AS u(k, d) "
                    "ON CONFLICT (name, part, key) DO UPDATE SET data = EXCLUDED.data",
                    name, part, keys, [upserts[k] for k in keys],
                )

    async def drop(self, name: str, part: str) -> None:
        pool = await self._ready()
        await pool.execute(f"DELETE FROM {self.table} WHERE name = $1 AND part = $2", name, part)
