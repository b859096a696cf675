"""postgres_sink inside a running graph: rejected rows reach the dead-letter sink with the database's
message and their acks complete as dead-lettered; the rest is delivered and committed."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.services
DSN = "postgresql://root@127.0.0.1:5432/test"


async def _sql(query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(DSN)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


def test_bad_rows_dead_letter_with_the_database_message(write_graph, run, tmp_path: Path) -> None:
    table = f"postgres_g_{uuid.uuid4().hex[:10]}"
    asyncio.run(_sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, total bigint CHECK (total >= 0), body jsonb)'))
    try:
        path = write_graph(f"""
            version: 1
            name: pg_bad_rows
            defaults: {{dead_letter: dead}}
            connections:
              pg: {{type: postgres, dsn: "{DSN}", application_name: {table}}}
            nodes:
              orders:
                type: generate
                config: {{count: 100, batch: 25, template: '{{"id": msg.i, "total": msg.i % 10 == 3 ? -1 : msg.i}}'}}
              store:
                type: postgres_sink
                inputs: [orders]
                config:
                  connection: pg
                  table: {table}
                  mode: upsert
                  key: [id]
                  columns: {{id: msg.id, total: msg.total, body: msg}}
              dead:
                type: file_sink
                inputs: [store.errors]
                config: {{path: dead.ndjson}}
        """)
        report = run(path)
        assert report.error is None and report.balanced
        t = report.totals()
        assert (t["entered"], t["delivered"], t["dead_lettered"], t["nacked"]) == (100, 90, 10, 0)
        dead = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
        assert sorted(d["payload"]["id"] for d in dead) == [i for i in range(100) if i % 10 == 3]
        assert all(d["node"] == "store" and "23514" in d["error"] and "check constraint" in d["error"] for d in dead)
        rows = asyncio.run(_sql(f'SELECT count(*) AS n, min(total) AS lo FROM "{table}"'))[0]
        assert (rows["n"], rows["lo"]) == (90, 0)
    finally:
        asyncio.run(_sql(f'DROP TABLE IF EXISTS "{table}"'))


def test_lookup_enriches_in_a_graph_and_routes_misses(write_graph, run, tmp_path: Path) -> None:
    table = f"postgres_g_{uuid.uuid4().hex[:10]}"
    asyncio.run(_sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, tier text)'))
    asyncio.run(_sql(f"INSERT INTO \"{table}\" SELECT g, 'gold' FROM generate_series(0, 39) AS g"))
    try:
        path = write_graph(f"""
            version: 1
            name: pg_lookup_graph
            connections:
              pg: {{type: postgres, dsn: "{DSN}", application_name: {table}}}
            nodes:
              orders:
                type: generate
                config: {{count: 300, batch: 50, template: '{{"id": msg.i, "customer": msg.i % 60}}'}}
              enrich:
                type: pg_lookup
                inputs: [orders]
                config: {{connection: pg, table: {table}, key_column: id, key: msg.customer, columns: [tier],
                          into: customer_row, on_miss: missing}}
              found: {{type: file_sink, inputs: [enrich], config: {{path: found.ndjson}}}}
              unknown: {{type: file_sink, inputs: [enrich.missing], config: {{path: missing.ndjson}}}}
        """)
        report = run(path)
        assert report.error is None and report.balanced
        found = [json.loads(x) for x in (tmp_path / "found.ndjson").read_text().splitlines()]
        missing = [json.loads(x) for x in (tmp_path / "missing.ndjson").read_text().splitlines()]
        assert len(found) == 200 and all(f["customer_row"] == {"tier": "gold"} and f["customer"] < 40 for f in found)
        assert len(missing) == 100 and all(m["customer"] >= 40 and "customer_row" not in m for m in missing)
    finally:
        asyncio.run(_sql(f'DROP TABLE IF EXISTS "{table}"'))
