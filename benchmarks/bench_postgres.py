"""postgres_sink throughput beside plain asyncpg doing the same writes, in the same run.

Run as a script for the table of figures (`python benchmarks/bench_postgres.py [rows [rounds [batch]]]`), or with
pytest-benchmark (`pytest benchmarks/bench_postgres.py --benchmark-only`). The machine is shared
(2 cores, other helpers' tests): figures are noisy, compare within one run only.

What is measured, per mode (insert / insert_ignore / upsert / last_write_wins) and per write path
(values / unnest / copy): messages are generated as dicts, mapped (a CEL column expression per
column, `msg` whole into jsonb), and written by `PostgresSink.write` in batches of 1,000, each
batch one transaction. Beside it, plain asyncpg writes the same rows with typed parameters:
`INSERT … SELECT unnest($1::bigint[], …) ON CONFLICT …` per batch, and COPY per batch.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.postgres.sink import PostgresSink, PostgresSinkConfig

DSN = "postgresql://root@127.0.0.1:5432/test"
BATCH = 1000
COLUMNS = {"id": {"expr": "msg.id", "type": "bigint"}, "version": {"expr": "msg.version", "type": "bigint"},
           "total": {"expr": "msg.total", "type": "double precision"}, "customer": {"expr": "msg.customer", "type": "text"},
           "body": "msg"}
DDL = "(id bigint PRIMARY KEY, version bigint, total double precision, customer text, body jsonb)"


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds used so far by this process, or by server backend `pid` (read from /proc)."""
    if pid is None:
        return time.process_time()
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and CPU time (client + server backend) of one measured stretch."""

    def __init__(self, pid: int):
        self.pid = pid
        self.t0, self.c0, self.s0 = time.perf_counter(), cpu_seconds(), cpu_seconds(pid)

    def stop(self, rows: int) -> Figure:
        wall = time.perf_counter() - self.t0
        return Figure(rows / wall, (cpu_seconds() - self.c0) / rows * 1e6, (cpu_seconds(self.pid) - self.s0) / rows * 1e6)


class Figure(NamedTuple):
    rate: float        # rows per second (wall clock)
    client_us: float   # client CPU microseconds per row
    server_us: float   # server backend CPU microseconds per row


def generate(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "version": 1, "total": i * 0.5, "customer": f"c{i % 97}", "lines": [i, i + 1]} for i in range(n)]


async def bench_sink(bodies: list[dict], mode: str, path: str) -> Figure:
    """Rows/s through PostgresSink (map included: column expressions evaluated per message)."""
    table = f"postgres_bench_{uuid.uuid4().hex[:8]}"
    res = Resources()
    ctx = NodeContext("bench", {"pg": {"dsn": DSN, "application_name": "postgres_bench", "max_size": 1}}, {}, res)
    cfg = PostgresSinkConfig.model_validate({
        "connection": "pg", "table": table, "mode": mode, "key": ["id"], "columns": COLUMNS, "create_table": True,
        "version": "version" if mode == "last_write_wins" else None, "write_path": path})
    sink = PostgresSink("bench", cfg, ctx)
    await sink.start()
    try:
        async with sink.pool.acquire() as conn:
            pid = conn.get_server_pid()
        meter = Meter(pid)
        for i in range(0, len(bodies), BATCH):
            failed = await sink.write([Msg(b) for b in bodies[i:i + BATCH]])
            assert not failed, failed[:1]
        figure = meter.stop(len(bodies))
        async with sink.pool.acquire() as conn:
            assert await conn.fetchval(f'SELECT count(*) FROM "{table}"') == len(bodies)
            await conn.execute(f'DROP TABLE "{table}"')
    finally:
        await res.close()
    return figure


async def bench_plain(bodies: list[dict], how: str) -> Figure:
    """Rows/s of hand-written asyncpg: typed unnest upsert or COPY, one transaction per batch."""
    import orjson

    table = f"postgres_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(DSN)
    await conn.execute(f'CREATE TABLE "{table}" {DDL}')
    sql = (f'INSERT INTO "{table}" (id, version, total, customer, body) SELECT * FROM unnest($1::bigint[], '
           f'$2::bigint[], $3::float8[], $4::text[], $5::jsonb[]) ON CONFLICT (id) DO UPDATE SET version = '
           'EXCLUDED.version, total = EXCLUDED.total, customer = EXCLUDED.customer, body = EXCLUDED.body')
    try:
        meter = Meter(conn.get_server_pid())
        for i in range(0, len(bodies), BATCH):
            chunk = bodies[i:i + BATCH]
            async with conn.transaction():
                if how == "copy":
                    await conn.copy_records_to_table(table, records=[
                        (b["id"], b["version"], b["total"], b["customer"], orjson.dumps(b).decode()) for b in chunk],
                        columns=["id", "version", "total", "customer", "body"])
                else:
                    await conn.execute(sql, [b["id"] for b in chunk], [b["version"] for b in chunk],
                                       [b["total"] for b in chunk], [b["customer"] for b in chunk],
                                       [orjson.dumps(b).decode() for b in chunk])
        figure = meter.stop(len(bodies))
        assert await conn.fetchval(f'SELECT count(*) FROM "{table}"') == len(bodies)
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
    return figure


GRAPH = """
version: 1
name: bench_postgres
connections:
  pg: {{type: postgres, dsn: "{dsn}", application_name: postgres_bench}}
nodes:
  orders:
    type: generate
    config: {{count: {n}, batch: {batch}, template: '{{"id": msg.i, "version": 1, "qty": msg.i % 9 + 1, "price": 0.5}}'}}
  price:
    type: map
    inputs: [orders]
    config: {{expr: '{{"id": msg.id, "version": msg.version, "total": double(msg.qty) * msg.price, "customer": "c" + string(msg.id % 97)}}'}}
  store:
    type: postgres_sink
    inputs: [price]
    batch_size: {batch}
    config:
      connection: pg
      table: {table}
      mode: {mode}
      key: [id]
      columns: {{id: {{expr: msg.id, type: bigint}}, version: {{expr: msg.version, type: bigint}},
                total: {{expr: msg.total, type: double precision}}, customer: {{expr: msg.customer, type: text}}, body: msg}}
      create_table: true
"""


NULL_SINK = """
  store:
    type: file_sink
    inputs: [price]
    config: {path: /dev/null}
"""


def load_bench_graph(n: int, mode: str, table: str, null_sink: bool) -> Any:
    """The benchmark graph, written to a temporary file and loaded (validated) like `streamdag run` does."""
    import tempfile

    from engine.compile.validate import load_graph

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        text = GRAPH.format(dsn=DSN, n=n, batch=BATCH, table=table, mode=mode)
        if null_sink:
            text = text[:text.index("  store:")] + NULL_SINK
        path.write_text(text)
        return load_graph(str(path))


async def bench_graph(n: int, mode: str, null_sink: bool = False) -> float:
    """Rows/s of the whole graph generate → map → postgres_sink, run by the real scheduler.

    `null_sink` swaps the sink for a file sink into /dev/null: the ceiling set by generate and map."""
    from engine.runtime.scheduler import Runner

    table = f"postgres_bench_{uuid.uuid4().hex[:8]}"
    graph = load_bench_graph(n, mode, table, null_sink)
    try:
        report = await Runner(graph).run()
        assert report.error is None and report.balanced, report.error
        assert report.stats["store"].committed == n
    finally:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
    return n / report.seconds


async def graph_figures(n: int, rounds: int) -> list[tuple[str, float]]:
    """The graph beside plain asyncpg writing the same rows (typed unnest upsert, same batches)."""
    bodies = [{"id": i, "version": 1, "total": (i % 9 + 1) * 0.5, "customer": f"c{i % 97}"} for i in range(n)]
    best = {"graph generate -> map -> postgres_sink (upsert)": 0.0, "plain asyncpg unnest upsert": 0.0,
            "graph generate -> map -> /dev/null (ceiling)": 0.0}
    for _ in range(rounds):
        best["graph generate -> map -> /dev/null (ceiling)"] = max(
            best["graph generate -> map -> /dev/null (ceiling)"], await bench_graph(n, "upsert", null_sink=True))
        best["graph generate -> map -> postgres_sink (upsert)"] = max(
            best["graph generate -> map -> postgres_sink (upsert)"], await bench_graph(n, "upsert"))
        best["plain asyncpg unnest upsert"] = max(best["plain asyncpg unnest upsert"],
                                                  (await bench_plain(bodies, "unnest")).rate)
    return list(best.items())


async def table_of_figures(n: int, rounds: int = 3) -> list[tuple[str, Figure]]:
    """Every configuration `rounds` times, interleaved (so load from others spreads evenly); best kept.

    CPU per row (client process + server backend, from /proc) is the figure that load from other
    work disturbs least; rows/s is what a user sees."""
    bodies = generate(n)
    runs: list[tuple[str, Any]] = [("plain asyncpg unnest upsert", lambda: bench_plain(bodies, "unnest")),
                                   ("plain asyncpg COPY", lambda: bench_plain(bodies, "copy"))]
    for mode in ("insert", "insert_ignore", "upsert", "last_write_wins"):
        for path in ("values", "unnest", "copy", "auto"):
            runs.append((f"sink {mode:<15} {path}", lambda m=mode, p=path: bench_sink(bodies, m, p)))
    best: dict[str, Figure] = {}
    for _ in range(rounds):
        for name, fn in runs:
            fig = await fn()
            old = best.get(name)
            best[name] = Figure(max(fig.rate, old.rate), min(fig.client_us, old.client_us),
                                min(fig.server_us, old.server_us)) if old else fig
    return list(best.items())


def test_sink_upsert_auto(benchmark: Any) -> None:
    bodies = generate(20_000)
    fig = benchmark.pedantic(lambda: asyncio.run(bench_sink(bodies, "upsert", "auto")), rounds=3)
    assert fig.rate > 0


def test_graph_upsert(benchmark: Any) -> None:
    rate = benchmark.pedantic(lambda: asyncio.run(bench_graph(20_000, "upsert")), rounds=3)
    assert rate > 0


def test_plain_asyncpg_upsert(benchmark: Any) -> None:
    bodies = generate(20_000)
    fig = benchmark.pedantic(lambda: asyncio.run(bench_plain(bodies, "unnest")), rounds=3)
    assert fig.rate > 0


if __name__ == "__main__":
    import uvloop

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else BATCH
    for name, rate in uvloop.run(graph_figures(rows, rounds)):
        print(f"{name:<50} {rate:>10,.0f} rows/s")
    if "--graph-only" in sys.argv:
        sys.exit(0)
    figures = uvloop.run(table_of_figures(rows, rounds))
    base = figures[0][1].rate
    print(f"{'':<36} {'rows/s':>10}  {'vs plain':>8}  {'client µs/row':>13}  {'server µs/row':>13}")
    for name, f in figures:
        print(f"{name:<36} {f.rate:>10,.0f}  {f.rate / base:>7.2f}x  {f.client_us:>13.1f}  {f.server_us:>13.1f}")
