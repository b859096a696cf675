"""postgres_source against the real server: order, acked-prefix positions, resume, rewind, NOTIFY."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from engine.api import CheckContext
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.stats import NodeStats
from operators.connectors.postgres.source import PostgresSource, PostgresSourceConfig
from tests.connectors.postgres_harness import DSN, sql

pytestmark = pytest.mark.services


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:10]
    table, positions = f"postgres_outbox_{suffix}", f"postgres_pos_{suffix}"
    asyncio.run(sql(f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, kind text, payload jsonb, '
                    f'amount numeric, at timestamptz DEFAULT now())'))
    yield table, positions
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}", "{positions}"'))


async def insert(table: str, n: int, kind: str = "order") -> None:
    await sql(f'INSERT INTO "{table}" (kind, payload, amount) SELECT $1, jsonb_build_object(\'n\', g), g * 1.5 '
              f'FROM generate_series(1, $2) AS g', kind, n)


class Harness:
    """A source wired to a real AckTracker and SourceOutput; batches land in `received`."""

    def __init__(self, table: str, positions: str, **config: Any):
        cfg = PostgresSourceConfig.model_validate({"connection": "pg", "table": table, "cursor": "id",
                                                   "position_table": positions, "position_key": "k",
                                                   "batch_size": 10, **config})
        self.res = Resources()
        self.app = f"postgres_test_src_{uuid.uuid4().hex[:8]}"
        ctx = NodeContext("src", {"pg": {"dsn": DSN, "application_name": self.app}}, {}, self.res)
        self.source = PostgresSource("src", cfg, ctx)
        self.tracker = AckTracker()
        self.received: list[Msg] = []
        self.arrived = asyncio.Event()

        async def send(lists: dict[str, list[Msg]]) -> None:
            self.received += lists["out"]
            self.arrived.set()

        self.out = SourceOutput("src", self.tracker, send, NodeStats("src", "source", "postgres_source"))

    async def until(self, n: int) -> list[Msg]:
        async with asyncio.timeout(10):
            while len(self.received) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received

    async def settle(self) -> None:
        done, failed = self.tracker.take()
        if done:
            await self.source.commit(done)
        if failed:
            await self.source.reject(failed)

    async def close(self) -> None:
        await self.source.stop()
        await self.res.close()


async def stored(positions: str) -> str | None:
    rows = await sql(f'SELECT position FROM "{positions}" WHERE name = $1', "k")
    return rows[0]["position"] if rows else None


def test_reads_in_order_and_position_follows_the_acked_prefix(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 25)
        h = Harness(table, positions, stop_at_end=True)
        await h.source.start()
        await h.source.run(h.out)
        msgs = h.received
        assert [m.body["id"] for m in msgs] == list(range(1, 26))
        assert msgs[0].body["payload"] == {"n": 1} and msgs[0].body["amount"] == 1.5
        assert isinstance(msgs[0].body["at"], str) and msgs[0].meta["position"] == "1"
        for m in msgs[5:12]:  # acked out of order: nothing before 1..5 is done yet
            m.ack.release()
        await h.settle()
        assert await stored(positions) is None
        for m in msgs[:5]:
            m.ack.release()
        await h.settle()
        assert await stored(positions) == "12"
        await h.close()

    asyncio.run(main())


def test_resume_after_a_crash_reads_the_unacked_rows_again(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 30)
        h = Harness(table, positions)
        await h.source.start()
        task = asyncio.create_task(h.source.run(h.out))
        msgs = await h.until(30)
        for m in msgs[:17]:
            m.ack.release()
        await h.settle()
        task.cancel()  # a crash: no stop(), nothing flushed beyond what commit stored
        await asyncio.gather(task, return_exceptions=True)
        await h.res.close()
        await insert(table, 5)
        h2 = Harness(table, positions, stop_at_end=True)
        await h2.source.start()
        await h2.source.run(h2.out)
        assert [m.body["id"] for m in h2.received] == list(range(18, 36))
        await h2.close()

    asyncio.run(main())


def test_failed_rows_are_read_again(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 6)
        h = Harness(table, positions, poll_interval=0.05)
        await h.source.start()
        task = asyncio.create_task(h.source.run(h.out))
        first = await h.until(6)
        first[0].ack.release()
        first[1].ack.fail("sink gave up")
        for m in first[2:]:
            m.ack.release()
        await h.settle()
        again = await h.until(11)
        assert [m.body["id"] for m in again[6:]] == [2, 3, 4, 5, 6]
        for m in again[6:]:
            m.ack.release()
        await h.settle()
        assert await stored(positions) == "6"
        h.out.stopping.set()
        await task
        await h.close()

    asyncio.run(main())


def test_notify_wakes_the_reader(names: tuple[str, str]) -> None:
    table, positions = names
    channel = f"postgres_ch_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        h = Harness(table, positions, listen=channel, poll_interval=60)
        await h.source.start()
        task = asyncio.create_task(h.source.run(h.out))
        await insert(table, 1)
        # Wait for the reader's LISTEN, then notify: with a 60 s poll only the NOTIFY can deliver in time.
        async with asyncio.timeout(10):
            while not await sql("SELECT 1 FROM pg_stat_activity WHERE application_name = $1 "
                                "AND query ILIKE $2", h.app, f"%LISTEN%{channel}%"):
                await asyncio.sleep(0.01)
        await sql(f'NOTIFY "{channel}"')
        msgs = await h.until(1)
        assert msgs[0].body["id"] == 1
        h.out.stopping.set()
        await task
        await h.close()

    asyncio.run(main())


def test_query_mode_and_start_after(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 4, "order")
        await insert(table, 4, "refund")
        h = Harness(table, positions)
        cfg = PostgresSourceConfig.model_validate({
            "connection": "pg", "query": f"SELECT id, amount FROM \"{table}\" WHERE kind = 'refund'", "cursor": "id",
            "position_table": positions, "start_after": "6", "stop_at_end": True})
        h.source = PostgresSource("src", cfg, h.source.ctx)
        await h.source.start()
        await h.source.run(h.out)
        assert [m.body for m in h.received] == [{"id": 7, "amount": 4.5}, {"id": 8, "amount": 6}]
        await h.close()

    asyncio.run(main())


def test_startup_errors_name_the_problem(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        h = Harness(table + "_nope", positions)
        with pytest.raises(RuntimeError, match=f"table '{table}_nope' does not exist"):
            await h.source.start()
        await h.close()
        h = Harness(table, positions, cursor="seq")
        with pytest.raises(RuntimeError, match="cursor column 'seq' is not among"):
            await h.source.start()
        await h.close()

    asyncio.run(main())


def test_config_rules_and_identifiers() -> None:
    with pytest.raises(ValidationError, match="exactly one of `table` or `query`"):
        PostgresSourceConfig.model_validate({"connection": "pg", "cursor": "id"})
    cfg = PostgresSourceConfig.model_validate({"connection": "pg", "table": "x y", "cursor": "id;", "listen": "a-b"})
    assert {i.loc for i in PostgresSource.check(cfg, CheckContext())} == {("table",), ("cursor",), ("listen",)}


def test_reader_survives_its_sessions_being_cut(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 5)
        h = Harness(table, positions, poll_interval=0.02,
                    retry={"max_attempts": 100, "initial_backoff": 0.01, "max_backoff": 0.05})
        await h.source.start()
        task = asyncio.create_task(h.source.run(h.out))
        first = await h.until(5)
        killed = await sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                           h.app)
        assert killed
        await insert(table, 5)
        msgs = await h.until(10)
        assert [m.body["id"] for m in msgs] == list(range(1, 11))
        for m in first + msgs[5:]:
            m.ack.release()
        await h.settle()
        assert await stored(positions) == "10"
        h.out.stopping.set()
        await task
        await h.close()

    asyncio.run(main())


def test_delete_acked_cleans_the_outbox_up_to_the_position(names: tuple[str, str]) -> None:
    table, positions = names

    async def main() -> None:
        await insert(table, 12)
        h = Harness(table, positions, stop_at_end=True, delete_acked=True)
        await h.source.start()
        await h.source.run(h.out)
        for m in h.received[:7] + h.received[9:]:
            m.ack.release()
        await h.settle()
        left = [r["id"] for r in await sql(f'SELECT id FROM "{table}" ORDER BY id')]
        assert left == [8, 9, 10, 11, 12] and await stored(positions) == "7"
        await h.close()

    asyncio.run(main())
    with pytest.raises(ValidationError, match="`delete_acked` needs `table`"):
        PostgresSourceConfig.model_validate({"connection": "pg", "query": "SELECT 1 AS id", "cursor": "id",
                                             "delete_acked": True})
