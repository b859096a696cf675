"""Reload under load: `streamdag run --watch`, JetStream -> PostgreSQL, the graph file changed twice
(once invalid) while messages flow. Every message is stored exactly once; the invalid file is
refused with line:col and the running graph goes on; each valid change takes over."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from tests.connectors.jetstream_fixtures import NATS_URL, add_stream, connect, unique
from tests.connectors.postgres_harness import DSN, sql
from tests.observe.conftest import start_run, wait_for

pytestmark = pytest.mark.services

N = 3000

GRAPH = """\
    version: 1
    name: reload_test
    connections:
      nats: {{type: nats, url: "{nats}"}}
      pg: {{type: postgres, dsn: "{dsn}"}}
    defaults: {{dead_letter: dead}}
    nodes:
      src:
        type: jetstream_source
        config: {{connection: nats, stream: {stream}, subjects: ["{stream}.>"], durable: d, batch: 100, ack_wait: 30s}}
      tag:
        type: map
        inputs: [src]
        config: {{expr: '{expr}'}}
      store:
        type: postgres_sink
        inputs: [tag]
        config:
          connection: pg
          table: {table}
          columns: {{id: {{expr: msg.id, type: bigint}}, gen: {{expr: msg.gen, type: int}}}}
      dead: {{type: file_sink, inputs: [src.errors, store.errors], config: {{path: dead.ndjson}}}}
"""


def test_reload_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    stream, table = unique("reload"), unique("reload")
    text = lambda expr: textwrap.dedent(GRAPH.format(nats=NATS_URL, dsn=DSN, stream=stream, table=table, expr=expr))
    gen = lambda g: f'{{"id": msg.id, "gen": {g}}}'

    async def setup() -> None:
        nc = await connect()
        await add_stream(nc.jetstream(), stream)
        await nc.close()
        await sql(f"CREATE TABLE {table} (id bigint, gen int)")

    asyncio.run(setup())
    run = start_run(tmp_path, text(gen(1)), "--watch")
    path = tmp_path / "graph.yaml"

    def reloads(event: str) -> int:
        return sum(ev.get("event") == event for ev in run.events())

    async def publish() -> None:
        nc = await connect()
        js = nc.jetstream()
        try:
            for chunk in range(10):
                await asyncio.gather(*(js.publish(f"{stream}.x", f'{{"id": {i}}}'.encode())
                                       for i in range(chunk * N // 10, (chunk + 1) * N // 10)))
                if chunk == 2:
                    path.write_text(text(gen(2)))
                    await asyncio.to_thread(wait_for, lambda: reloads("reload") == 1, 15, "the first reload")
                if chunk == 5:
                    path.write_text(text(gen(3)).replace("batch: 100", "batch: -1").replace("msg.gen", "msg.gen +"))
                    await asyncio.to_thread(wait_for, lambda: reloads("reload_refused") == 1, 15, "the refusal")
                if chunk == 7:
                    path.write_text(text(gen(3)))
                    await asyncio.to_thread(wait_for, lambda: reloads("reload") == 2, 15, "the second reload")
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def stored() -> tuple[int, int, list[tuple[int, int]]]:
        rows = await sql(f"SELECT count(*) AS n, count(DISTINCT id) AS d FROM {table}")
        gens = await sql(f"SELECT gen, count(*) AS n FROM {table} GROUP BY gen ORDER BY gen")
        return rows[0]["n"], rows[0]["d"], [(r["gen"], r["n"]) for r in gens]

    try:
        asyncio.run(publish())
        wait_for(lambda: asyncio.run(stored())[0] >= N, 30, "every message stored")
        assert run.stop() == 0, "\n".join(run.lines[-30:])
        n, distinct, gens = asyncio.run(stored())
        assert (n, distinct) == (N, N)  # nothing lost, nothing doubled
        assert [g for g, _ in gens] == [1, 2, 3] and all(c > 0 for _, c in gens)
        errors = [ev for ev in run.events() if ev.get("event") == "reload_error"]
        # the invalid file: both errors, each with its line:col, and the graph went on (gen 2 rows after it)
        assert {e["code"] for e in errors} == {"E202", "E203"}
        assert any("graph.yaml:10:" in e["msg"] and "E202" in e["msg"] for e in errors)
        change = next(ev for ev in run.events() if ev.get("event") == "reload")
        assert change["changed"] == ["tag"] and change["added"] == change["removed"] == []
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)

        async def cleanup() -> None:
            nc = await connect()
            try:
                await nc.jetstream().delete_stream(stream)
            finally:
                await nc.close()
            await sql(f"DROP TABLE IF EXISTS {table}")

        asyncio.run(cleanup())
