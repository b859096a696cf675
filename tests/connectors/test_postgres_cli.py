"""End to end through `streamdag`: kill -9 and resume of postgres_source → postgres_sink, the example
graph, and E220 from `streamdag validate`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

pytestmark = pytest.mark.services
DSN = "postgresql://root@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[2]
STREAMDAG = [sys.executable, "-m", "engine.cli"]


def sql(query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(DSN)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    s = uuid.uuid4().hex[:10]
    n = {"outbox": f"postgres_ob_{s}", "target": f"postgres_tg_{s}", "pos": f"postgres_pos_{s}", "app": f"postgres_cli_{s}"}
    yield n
    sql(f'DROP TABLE IF EXISTS "{n["outbox"]}", "{n["target"]}", "{n["pos"]}"')


GRAPH = """
version: 1
name: resume
connections:
  pg: {{type: postgres, dsn: "{dsn}", application_name: {app}}}
nodes:
  read:
    type: postgres_source
    config: {{connection: pg, table: {outbox}, cursor: id, batch_size: 200, position_table: {pos},
             position_key: resume, poll_interval: 0.2}}
  pace:  # so the kill lands mid-stream however fast the machine is (30,000 rows take >= 3 s)
    type: rate_limit
    inputs: [read]
    config: {{rate: 10000, burst: 1000}}
  store:
    type: postgres_sink
    inputs: [pace]
    config: {{connection: pg, table: {target}, mode: insert_ignore, key: [id], create_table: true,
             columns: {{id: {{expr: msg.id, type: bigint}}, n: {{expr: msg.n, type: bigint}}}}}}
"""


def test_source_resumes_after_kill_9(names: dict[str, str], tmp_path: Path) -> None:
    total = 30_000
    sql(f'CREATE TABLE "{names["outbox"]}" (id bigserial PRIMARY KEY, n bigint)')
    sql(f'INSERT INTO "{names["outbox"]}" (n) SELECT g FROM generate_series(1, {total}) AS g')
    graph = tmp_path / "resume.yaml"
    graph.write_text(GRAPH.format(dsn=DSN, **names))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*STREAMDAG, "run", "-q", str(graph)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # kill once a few batches are in, mid-stream
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            rows = sql("SELECT to_regclass($1) IS NOT NULL AS ok", names["target"])
            if rows[0]["ok"] and sql(f'SELECT count(*) AS c FROM "{names["target"]}"')[0]["c"] >= 2000:
                break
            assert time.monotonic() < deadline, "the run wrote nothing within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (pos,) = sql(f'SELECT position FROM "{names["pos"]}" WHERE name = $1', "resume")
    stored = int(pos["position"])
    written = sql(f'SELECT count(*) AS c, count(*) FILTER (WHERE id <= $1) AS upto FROM "{names["target"]}"', stored)[0]
    assert 0 < stored < total
    assert written["upto"] == stored          # every row up to the stored position was committed
    assert written["c"] >= stored             # rows past it may be committed but not yet acked

    done = subprocess.run(check=False, args=[*STREAMDAG, "run", "--set", "nodes.read.config.stop_at_end=true",
                                                 "--set", "nodes.pace.config.rate=1000000", str(graph)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    entered = int(re.search(r"integrity OK: (\d+) in", done.stderr).group(1))  # type: ignore[union-attr]
    assert entered == total - stored          # the second run read exactly what was not acknowledged
    final = sql(f'SELECT count(*) AS c, count(DISTINCT id) AS d, sum(n) AS s FROM "{names["target"]}"')[0]
    assert (final["c"], final["d"], final["s"]) == (total, total, total * (total + 1) // 2)
    assert sql(f'SELECT position FROM "{names["pos"]}"')[0]["position"] == str(total)


def test_example_graph_validates_and_runs(tmp_path: Path) -> None:
    table = f"postgres_ex_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    path = str(ROOT / "graphs" / "orders_to_postgres.yaml")
    assert subprocess.run(check=False, args=[*STREAMDAG, "validate", path], cwd=ROOT, env=env, capture_output=True).returncode == 0
    try:
        done = subprocess.run(check=False, args=[*STREAMDAG, "run", "--set", f"nodes.store.config.table={table}",
                               "--set", f"nodes.dead.config.path={tmp_path / 'dead.ndjson'}", path],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "integrity OK: 20000 in = 20000 delivered" in done.stderr
        row = sql(f'SELECT count(*) AS c, min(version) AS lo, sum(version) AS s FROM "{table}"')[0]
        # 5000 orders, each kept at its highest of four out-of-order versions (15000..19999).
        assert (row["c"], row["lo"], row["s"]) == (5000, 15000, sum(range(15000, 20000)))
    finally:
        sql(f'DROP TABLE IF EXISTS "{table}"')


def test_validate_reports_unsafe_identifiers_with_position(tmp_path: Path) -> None:
    graph = tmp_path / "bad.yaml"
    graph.write_text(GRAPH.format(dsn=DSN, app="x", outbox="outbox", pos="pos", target='"orders; drop"'))
    out = subprocess.run(check=False, args=[*STREAMDAG, "validate", str(graph)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0
    assert re.search(r"bad\.yaml:\d+:\d+: E220 .*table 'orders; drop' is not a safe SQL identifier", out.stdout + out.stderr)


LOOKUP_GRAPH = """
version: 1
name: lookup
connections:
  pg: {{type: postgres}}
nodes:
  orders:
    type: generate
    config: {{count: 3, template: '{{"customer": msg.i}}'}}
  enrich:
    type: pg_lookup
    inputs: [orders]
    config: {{connection: pg, table: customers, key_column: id, key: msg.customer, on_miss: {on_miss}}}
  out:
    type: stdout
    inputs: [enrich, enrich.missing]
"""


@pytest.mark.parametrize("on_miss, ok", [("missing", True), ("pass", False)])
def test_lookup_missing_port_exists_only_when_configured(tmp_path: Path, on_miss: str, ok: bool) -> None:
    graph = tmp_path / "lookup.yaml"
    graph.write_text(LOOKUP_GRAPH.format(on_miss=on_miss))
    out = subprocess.run(check=False, args=[*STREAMDAG, "validate", str(graph)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    if not ok:
        assert "E211" in out.stdout + out.stderr and "missing" in out.stdout + out.stderr
