"""pg_lookup against the real server: batched lookups, TTL cache, missing port, pass-through."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from engine.api import CheckContext
from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.connectors.postgres.lookup import PgLookup, PgLookupConfig
from tests.connectors.postgres_harness import DSN, sql

pytestmark = pytest.mark.services


@pytest.fixture
def table() -> Iterator[str]:
    name = f"postgres_customers_{uuid.uuid4().hex[:10]}"
    asyncio.run(sql(f'CREATE TABLE "{name}" (id bigint PRIMARY KEY, name text, tier text, since date)'))
    asyncio.run(sql(f"INSERT INTO \"{name}\" SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'gold' ELSE 'basic' END, "
                    f"date '2024-01-01' + g FROM generate_series(1, 50) AS g"))
    yield name
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{name}"'))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(table: str, clock: Clock, **config: Any) -> tuple[PgLookup, Resources]:
    cfg = PgLookupConfig.model_validate({"connection": "pg", "table": table, "key_column": "id",
                                         "key": "msg.customer", "columns": ["name", "tier", "since"], **config})
    res = Resources()
    ctx = NodeContext("enrich", {"pg": {"dsn": DSN, "application_name": "postgres_test_lookup"}}, {}, res, clock=clock)
    return PgLookup("enrich", cfg, ctx), res


async def process(op: PgLookup, bodies: list[Any]) -> dict[str, list[Msg]]:
    out = Outputs("enrich", PgLookup.output_ports(op.config), NodeStats("enrich", "operator", "pg_lookup"))
    await op.process([Msg(b) for b in bodies], out)
    return out.take()


def test_enriches_a_batch_with_one_query_and_routes_misses(table: str) -> None:
    async def main() -> None:
        op, res = make(table, Clock(), on_miss="missing", into="customer")
        await op.start()
        got = await process(op, [{"o": 1, "customer": 2}, {"o": 2, "customer": 3}, {"o": 3, "customer": 999},
                                 {"o": 4, "customer": 2}, {"o": 5}, {"o": 6, "customer": "2"}])
        assert op.queries == 1
        assert [m.body for m in got["out"]] == [
            {"o": 1, "customer": {"name": "c2", "tier": "gold", "since": "2024-01-03"}},
            {"o": 2, "customer": {"name": "c3", "tier": "basic", "since": "2024-01-04"}},
            {"o": 4, "customer": {"name": "c2", "tier": "gold", "since": "2024-01-03"}},
            {"o": 6, "customer": {"name": "c2", "tier": "gold", "since": "2024-01-03"}},
        ]
        assert [m.body["o"] for m in got["missing"]] == [3]
        assert [(m.body["payload"]["o"], "no such key" in m.body["error"]) for m in got["errors"]] == [(5, True)]
        await res.close()

    asyncio.run(main())


def test_pass_through_and_the_ttl_cache(table: str) -> None:
    clock = Clock()

    async def main() -> None:
        op, res = make(table, clock, cache_ttl=10, columns=None)
        await op.start()
        got = await process(op, [{"customer": 1}, {"customer": 777}])
        assert got["out"][0].body["lookup"]["name"] == "c1" and got["out"][0].body["lookup"]["id"] == 1
        assert got["out"][1].body == {"customer": 777, "lookup": None}
        await sql(f"UPDATE \"{table}\" SET name = 'renamed' WHERE id = 1")
        await sql(f"INSERT INTO \"{table}\" (id, name) VALUES (777, 'late')")
        clock.now += 5  # cached: row and miss both remembered
        got = await process(op, [{"customer": 1}, {"customer": 777}])
        assert op.queries == 1
        assert [m.body["lookup"] and m.body["lookup"]["name"] for m in got["out"]] == ["c1", None]
        clock.now += 6  # expired: read again
        got = await process(op, [{"customer": 1}, {"customer": 777}])
        assert op.queries == 2
        assert [m.body["lookup"]["name"] for m in got["out"]] == ["renamed", "late"]
        await res.close()

    asyncio.run(main())


def test_cache_size_is_bounded(table: str) -> None:
    async def main() -> None:
        op, res = make(table, Clock(), cache_size=5)
        await op.start()
        got = await process(op, [{"customer": i} for i in range(1, 21)])
        assert len(got["out"]) == 20 and all(m.body["lookup"]["name"] == f"c{i}" for i, m in enumerate(got["out"], 1))
        assert sorted(op.cache, key=int) == ["16", "17", "18", "19", "20"]
        await res.close()

    asyncio.run(main())


def test_startup_errors_and_identifiers(table: str) -> None:
    async def main() -> None:
        op, res = make(table, Clock(), columns=["name", "nope"])
        with pytest.raises(RuntimeError, match="has no column\\(s\\) nope"):
            await op.start()
        await res.close()

    asyncio.run(main())
    cfg = PgLookupConfig.model_validate({"connection": "pg", "table": "t;", "key_column": "id", "key": "msg.c",
                                         "columns": ["ok", "1bad"], "on_miss": "missing"})
    assert {i.loc for i in PgLookup.check(cfg, CheckContext())} == {("table",), ("columns", 1)}
    assert PgLookup.output_ports(cfg) == ("out", "missing")
