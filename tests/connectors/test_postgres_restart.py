"""postgres_sink across a real server restart, on a private PostgreSQL instance (never the shared one).

The instance is made with initdb in a temporary folder, listens on 127.0.0.1 on a free port, and is
stopped with `pg_ctl stop -m immediate` (a crash: no checkpoint, recovery from WAL on start) while
batches are being written."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from tests.connectors.postgres_harness import PrivatePostgres, write_retrying

pytestmark = pytest.mark.services


@pytest.fixture
def private_server() -> Iterator[tuple[str, list[str]]]:
    """(dsn, the pg_ctl command prefix) of a throwaway server; removed afterwards."""
    if not PrivatePostgres.available():
        pytest.skip("needs PostgreSQL server binaries and root (to run them as the postgres user)")
    server = PrivatePostgres()
    try:
        server.create()
        yield server.dsn, server.ctl
    finally:
        server.cleanup()


def test_server_crash_and_restart_mid_run_loses_nothing_and_duplicates_nothing(
        private_server: tuple[str, list[str]]) -> None:
    dsn, ctl = private_server
    cfg = PostgresSinkConfig.model_validate({
        "connection": "pg", "table": "orders", "mode": "insert", "key": ["id"], "create_table": True,
        "columns": {"id": {"expr": "msg.id", "type": "bigint"}, "body": "msg"},
        "retry": {"max_attempts": 200, "initial_backoff": 0.02, "max_backoff": 0.3}})
    res = Resources()
    sink = PostgresSink("store", cfg, NodeContext("store", {"pg": {"dsn": dsn}}, {}, res))
    n_batches, size = 30, 200

    async def main() -> list[list[tuple[Msg, str]]]:
        await sink.start()
        restarted = asyncio.Event()

        async def crash_and_restart() -> None:
            for mode_args in (["-m", "immediate", "stop"], ["start"]):
                proc = await asyncio.create_subprocess_exec(*ctl, *mode_args, stdout=asyncio.subprocess.DEVNULL,
                                                            stderr=asyncio.subprocess.DEVNULL)
                assert await proc.wait() == 0
            restarted.set()

        task = None
        results = []
        try:
            for b in range(n_batches):
                if b == 10:  # the crash lands while batch 10 onwards are being written
                    task = asyncio.create_task(crash_and_restart())
                results.append(await write_retrying(sink, [Msg({"id": b * size + i}) for i in range(size)], 0.3))
            if task is not None:
                await task
            assert restarted.is_set()
            return results
        finally:
            await res.close()

    results = asyncio.run(main())
    assert [r for r in results if r] == []  # a batch committed twice would fail on the primary key

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d FROM orders")
            return row["n"], row["d"]
        finally:
            await conn.close()

    assert asyncio.run(count()) == (n_batches * size, n_batches * size)
