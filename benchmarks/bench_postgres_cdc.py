"""Reading a logical slot (pgoutput): the SQL peek functions over asyncpg (what `postgres_cdc_source`
does) against the streaming replication protocol (psycopg2's `LogicalReplicationConnection` in a
thread), on a private PostgreSQL with wal_level=logical, alternating in one run.

    .venv/bin/pip install psycopg2-binary   # only for this comparison; the source does not use it
    .venv/bin/python benchmarks/bench_postgres_cdc.py [changes [rounds [batch]]]

Per round, two fresh slots see the same `changes` inserts (transactions of 100 rows of 4 columns);
each path then reads every change, decodes it with `pgoutput.Decoder` and confirms the position
after each batch (SQL: `pg_replication_slot_advance` per `batch` rows, default 1,000 as the source's
`batch_size`; stream: `send_feedback` per commit). Warm, in-process; wall time of the read only (the writes are done before). `graph` is the
whole source in a running graph (postgres_cdc_source with `batch_size` = `batch`, stop_at_end ->
file_sink to /dev/null): messages built, acked, the slot advanced; start-up of the run included. Latency: 50
single-row transactions 20 ms apart, commit → decoded, with the source's default poll interval
(0.2 s) for the SQL path and a blocking read for the stream.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from operators.connectors.postgres.pgoutput import Change, Commit, Decoder, lsn_text
from tests.connectors.postgres_harness import PrivatePostgres

OPTS = {"proto_version": "1", "publication_names": "bench"}


async def read_sql(dsn: str, slot: str, changes: int, batch: int = 1000) -> float:
    conn = await asyncpg.connect(dsn)
    dec, seen, t0 = Decoder(), 0, time.perf_counter()
    try:
        while seen < changes:
            rows = await conn.fetch("SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, "
                                    "'proto_version', '1', 'publication_names', 'bench')", slot, batch)
            end = 0
            for r in rows:
                item = dec.decode(r["data"])
                if isinstance(item, Change):
                    seen += 1
                elif isinstance(item, Commit):
                    end = item.end_lsn
            if end:
                await conn.execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", slot, lsn_text(end))
        return time.perf_counter() - t0
    finally:
        await conn.close()


def read_stream(dsn: str, slot: str, changes: int) -> float:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    dec, seen = Decoder(), 0
    t0 = time.perf_counter()
    cur.start_replication(slot_name=slot, decode=False, options=OPTS)

    class Done(Exception):
        pass

    def consume(msg: Any) -> None:
        nonlocal seen
        item = dec.decode(msg.payload)
        if isinstance(item, Change):
            seen += 1
        elif isinstance(item, Commit):
            msg.cursor.send_feedback(flush_lsn=item.end_lsn)
            if seen >= changes:
                raise Done

    try:
        cur.consume_stream(consume)
    except Done:
        pass
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


async def latency_sql(dsn: str, slot: str, n: int, poll: float = 0.2) -> list[float]:
    conn, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    committed: dict[int, float] = {}
    out: list[float] = []
    dec = Decoder()

    async def write() -> None:
        for i in range(n):  # the time before the statement, then after it (a reader may be faster)
            committed[10_000_000 + i] = time.perf_counter()
            await writer.execute("INSERT INTO bench_t (id, name) VALUES ($1, 'x')", 10_000_000 + i)
            committed[10_000_000 + i] = time.perf_counter()
            await asyncio.sleep(0.02)

    task = asyncio.create_task(write())
    while len(out) < n:
        rows = await conn.fetch("SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, "
                                "'proto_version', '1', 'publication_names', 'bench')", slot)
        now = time.perf_counter()
        for r in rows:
            item = dec.decode(r["data"])
            if isinstance(item, Change) and item.new and item.new["id"] in committed:
                out.append(max(0.0, now - committed[item.new["id"]]))
        if not rows:
            await asyncio.sleep(poll)
    await task
    await conn.close()
    await writer.close()
    return out


def latency_stream(dsn: str, slot: str, n: int) -> list[float]:
    import psycopg2
    import psycopg2.extras

    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(slot_name=slot, decode=False, options=OPTS)
    committed: dict[int, float] = {}
    out: list[float] = []
    dec = Decoder()

    def write() -> None:
        w = psycopg2.connect(dsn)
        w.autocommit = True
        for i in range(n):
            committed[20_000_000 + i] = time.perf_counter()
            with w.cursor() as c:
                c.execute("INSERT INTO bench_t (id, name) VALUES (%s, 'x')", (20_000_000 + i,))
            committed[20_000_000 + i] = time.perf_counter()
            time.sleep(0.02)
        w.close()

    class Done(Exception):
        pass

    def consume(msg: Any) -> None:
        item = dec.decode(msg.payload)
        if isinstance(item, Change) and item.new and item.new["id"] in committed:
            out.append(max(0.0, time.perf_counter() - committed[item.new["id"]]))
        if isinstance(item, Commit):
            msg.cursor.send_feedback(flush_lsn=item.end_lsn)
        if len(out) >= n:
            raise Done

    t = threading.Thread(target=write)
    t.start()
    try:
        cur.consume_stream(consume)
    except Done:
        pass
    t.join()
    conn.close()
    return out


def read_graph(dsn: str, slot: str, changes: int, batch: int) -> float:
    """The whole source in a graph: postgres_cdc_source (stop_at_end) -> file_sink to /dev/null."""
    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    text = f"""
version: 1
name: bench_cdc
connections:
  pg: {{type: postgres, dsn: "{dsn}"}}
nodes:
  changes:
    type: postgres_cdc_source
    config: {{connection: pg, slot: {slot}, publication: bench, stop_at_end: true, batch_size: {batch}}}
  out:
    type: file_sink
    inputs: [changes]
    config: {{path: /dev/null}}
"""
    graph, diags = check_text(text)
    assert graph is not None, diags
    t0 = time.perf_counter()
    report = asyncio.run(Runner(graph).run())
    elapsed = time.perf_counter() - t0
    assert report.error is None and report.totals()["delivered"] == changes, report.totals()
    return elapsed


async def sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


def main() -> None:
    changes = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    pg = PrivatePostgres(wal_level="logical", max_replication_slots="10", max_wal_senders="10")
    pg.create()
    dsn = pg.dsn
    try:
        asyncio.run(sql(dsn, "CREATE TABLE bench_t (id int PRIMARY KEY, name text, amount numeric(12,2), "
                             "at timestamptz)", "CREATE PUBLICATION bench FOR TABLE bench_t"))
        times: dict[str, list[float]] = {"sql": [], "stream": [], "graph": []}
        for r in range(rounds):
            slots = {"sql": f"b_sql_{r}", "stream": f"b_stream_{r}", "graph": f"b_graph_{r}"}
            asyncio.run(sql(dsn, "TRUNCATE bench_t", *(f"SELECT pg_create_logical_replication_slot('{s}', 'pgoutput')"
                                                       for s in slots.values())))
            asyncio.run(sql(dsn, f"""DO $$ BEGIN FOR i IN 0..{changes // 100 - 1} LOOP
                INSERT INTO bench_t SELECT g, 'name ' || g, g * 1.25, now() FROM generate_series(i * 100, i * 100 + 99) g;
                COMMIT; END LOOP; END $$"""))
            order = ("sql", "stream", "graph") if r % 2 == 0 else ("graph", "stream", "sql")
            for path in order:
                if path == "sql":
                    times[path].append(asyncio.run(read_sql(dsn, slots[path], changes, batch)))
                elif path == "graph":
                    times[path].append(read_graph(dsn, slots[path], changes, batch))
                else:
                    times[path].append(read_stream(dsn, slots[path], changes))
            asyncio.run(sql(dsn, *(f"SELECT pg_drop_replication_slot('{s}')" for s in slots.values())))
        for path, ts in times.items():
            print(f"{path:7s} {changes} changes: median {statistics.median(ts):.3f}s "
                  f"({changes / statistics.median(ts):,.0f} changes/s), runs {', '.join(f'{t:.3f}' for t in ts)}")
        ratios = [s / t for s, t in zip(times["sql"], times["stream"])]
        print(f"sql/stream time ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}")
        asyncio.run(sql(dsn, "SELECT pg_create_logical_replication_slot('lat_sql', 'pgoutput')",
                        "SELECT pg_create_logical_replication_slot('lat_stream', 'pgoutput')"))
        lat_sql = asyncio.run(latency_sql(dsn, "lat_sql", 50))
        lat_stream = latency_stream(dsn, "lat_stream", 50)
        for name, lat in (("sql (poll 0.2s)", lat_sql), ("stream", lat_stream)):
            lat.sort()
            print(f"latency {name}: median {statistics.median(lat) * 1000:.1f} ms, "
                  f"p90 {lat[int(len(lat) * 0.9)] * 1000:.1f} ms")
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()
