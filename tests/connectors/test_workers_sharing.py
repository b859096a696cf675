"""`run --workers N` against the real services: the work is split across workers and every message
is processed once (JetStream durable, Redis consumer group, postgres_source hash ranges); a worker
killed with kill -9 loses nothing, its messages are taken over by the others (takeover timed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis

from tests.connectors.jetstream_fixtures import NATS_URL
from tests.connectors.postgres_harness import DSN, sql
from tests.connectors.redis_harness import REDIS_URL
from tests.workers_harness import Supervised, id_table
from tests.workers_harness import rows as _rows

pytestmark = pytest.mark.services

SINK = """\
  store:
    type: postgres_sink
    inputs: [pace]
    config: {{connection: pg, table: {table}, mode: {mode}, key: [id], columns: {{id: msg.id}}}}
"""


@pytest.fixture
def table() -> Iterator[str]:
    """The sink's table: one row per message id; a second write of an id would break `insert`."""
    yield from id_table("workers")


def _graph(tmp_path: Path, name: str, connections: str, source: str, table: str, rate: int, mode: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
version: 1
name: {name}
defaults: {{max_in_flight: 200}}
connections:
  pg: {{type: postgres, dsn: "{DSN}"}}
{connections}
nodes:
  read:
{source}
  pace: {{type: rate_limit, inputs: [read], config: {{rate: {rate}, burst: 10}}}}
""" + SINK.format(table=table, mode=mode))
    return path


def _assert_split(workers: dict[int, dict[str, int]], n: int, total: int) -> None:
    assert set(workers) == set(range(n)), workers
    assert all(w["delivered"] > 0 for w in workers.values()), workers  # each worker had its share
    assert sum(w["delivered"] for w in workers.values()) == total  # and nothing was processed twice
    assert all(w["dead_lettered"] == 0 and w["exit"] == 0 for w in workers.values()), workers


# --- JetStream --------------------------------------------------------------------------------

async def _add_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    await nc.jetstream().add_stream(name=stream, subjects=[f"{stream}.>"])
    await nc.close()


async def _publish(stream: str, n: int) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for start in range(0, n, 500):
        await asyncio.gather(*(js.publish(f"{stream}.e", b'{"id": %d}' % i) for i in range(start, min(n, start + 500))))
    await nc.close()


async def _consumer(stream: str, durable: str) -> tuple[int, int]:
    """(the last stream sequence delivered to any worker, pull requests waiting); (0, 0) before it exists."""
    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.delivered.stream_seq), int(info.num_waiting or 0)
    except nats.js.errors.NotFoundError:
        return 0, 0
    finally:
        await nc.close()


def _start_jetstream(tmp_path: Path, stream: str, table: str, workers: int, n: int, rate: int, mode: str,
                     extra: str = "") -> Supervised:
    """The workers first, then the messages: each worker has its pull requests waiting before any arrives."""
    asyncio.run(_add_stream(stream))
    run = Supervised(_jetstream_graph(tmp_path, stream, table, rate, mode, extra), workers)
    run.wait_until(lambda: asyncio.run(_consumer(stream, "etl"))[1] >= 2 * workers, 60, "every worker pulling")
    asyncio.run(_publish(stream, n))
    return run


async def _delete_stream(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def _jetstream_graph(tmp_path: Path, stream: str, table: str, rate: int, mode: str, extra: str = "") -> Path:
    source = (f"    type: jetstream_source\n    config: {{connection: nats, stream: {stream}, durable: etl, "
              f"subjects: ['{stream}.>'], batch: 100{extra}}}")
    return _graph(tmp_path, "workers_js", f"  nats: {{type: nats, url: \"{NATS_URL}\"}}", source, table, rate, mode)


def test_a_jetstream_durable_is_shared_by_three_workers(tmp_path: Path, table: str) -> None:
    stream, n = f"workers_{uuid.uuid4().hex[:10]}", 6000
    try:
        run = _start_jetstream(tmp_path, stream, table, 3, n, 2000, "insert")
        run.wait_until(lambda: _rows(table) == n, 60, f"{n} rows")
        run.signal()  # SIGTERM under load: all drain
        code, workers, integrity = run.finish()
    finally:
        asyncio.run(_delete_stream(stream))
    assert code == 0, run.text
    _assert_split(workers, 3, n)
    assert integrity.startswith(f"integrity OK: {n} in = {n} delivered") and "3 workers" in integrity


def test_a_killed_jetstream_worker_loses_nothing_and_is_taken_over_within_ack_wait(tmp_path: Path, table: str) -> None:
    stream, n, ack_wait = f"workers_{uuid.uuid4().hex[:10]}", 3000, 2.0
    try:
        run = _start_jetstream(tmp_path, stream, table, 2, n, 1000, "insert_ignore", f", ack_wait: {ack_wait}s")
        run.wait_until(lambda: _rows(table) >= 800, 60, "800 rows")
        takeover, held = run.takeover(1, lambda: asyncio.run(_consumer(stream, "etl"))[0],  # ids below: delivered
                                      lambda k: k - _rows(table, below=k))
        run.wait_until(lambda: _rows(table) == n, 60, f"{n} rows")
        run.signal()
        code, workers, integrity = run.finish()
    finally:
        asyncio.run(_delete_stream(stream))
    print(f"\njetstream takeover after kill -9: {takeover:.2f}s, {held} messages (ack_wait {ack_wait}s)")
    assert code == 0, run.text
    assert _rows(table) == n  # nothing lost; the sink's key keeps each id once
    assert workers[1]["runs"] == 2 and workers[1]["killed"] == 1  # restarted by the supervisor
    # at most ack_wait after the kill (less when the dead worker's messages were old: in-progress
    # signals restart the server's timer, so there is no lower bound to check)
    assert held > 0 and takeover < ack_wait + 3, (held, takeover)
    assert integrity.startswith("integrity OK") and "1 run(s) killed without a report" in integrity


# --- Redis streams ----------------------------------------------------------------------------

def _redis_graph(tmp_path: Path, stream: str, table: str, rate: int, mode: str, extra: str = "") -> Path:
    source = (f"    type: redis_stream_source\n    config: {{connection: r, stream: {stream}, group: etl, start: '0', "
              f"batch: 100, block: 50ms{extra}}}")
    return _graph(tmp_path, "workers_redis", f"  r: {{type: redis, url: \"{REDIS_URL}\"}}", source, table, rate, mode)


@pytest.fixture
def stream() -> Iterator[str]:
    name = f"workers-{uuid.uuid4().hex[:10]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _xadd(stream: str, n: int) -> None:
    c = redis.Redis.from_url(REDIS_URL)
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": b'{"id": %d}' % i})
    pipe.execute()
    c.close()


def _start_redis(tmp_path: Path, stream: str, table: str, workers: int, n: int, rate: int, mode: str,
                 extra: str = "") -> Supervised:
    """The entries first (a consumer that has read nothing is not listed by the group, so there is no
    waiting for the workers); each worker holds at most 200 in flight, so one that starts late still
    finds its share (each is paced at `rate`)."""
    _xadd(stream, n)
    return Supervised(_redis_graph(tmp_path, stream, table, rate, mode, extra), workers)


def test_a_redis_consumer_group_is_shared_by_three_workers(tmp_path: Path, table: str, stream: str) -> None:
    n = 6000
    run = _start_redis(tmp_path, stream, table, 3, n, 1000, "insert")
    run.wait_until(lambda: _rows(table) == n, 60, f"{n} rows")
    run.signal()
    code, workers, integrity = run.finish()
    assert code == 0, run.text
    assert _rows(table) == n
    _assert_split(workers, 3, n)
    assert integrity.startswith(f"integrity OK: {n} in = {n} delivered")


def test_a_killed_redis_worker_loses_nothing_and_its_entries_are_claimed(tmp_path: Path, table: str,
                                                                        stream: str) -> None:
    n, min_idle, interval = 3000, 2.0, 0.5
    run = _start_redis(tmp_path, stream, table, 2, n, 1000, "insert_ignore",
                       f", min_idle: {min_idle}s, claim_interval: {interval}s")
    run.wait_until(lambda: _rows(table) >= 800, 60, "800 rows")
    c = redis.Redis.from_url(REDIS_URL)

    def delivered() -> int:  # entries with an id below it went to some worker
        return len(c.xrange(stream, "-", c.xinfo_groups(stream)[0]["last-delivered-id"]))

    takeover, held = run.takeover(1, delivered, lambda k: k - _rows(table, below=k))
    c.close()
    run.wait_until(lambda: _rows(table) == n, 60, f"{n} rows")
    run.signal()
    code, workers, integrity = run.finish()
    print(f"\nredis takeover after kill -9: {takeover:.2f}s, {held} entries (min_idle {min_idle}s, "
          f"claim_interval {interval}s)")
    assert code == 0, run.text
    assert _rows(table) == n
    assert workers[1]["runs"] == 2 and workers[1]["killed"] == 1
    assert held > 0 and takeover < min_idle + interval + 3, (held, takeover)
    assert integrity.startswith("integrity OK")


# --- postgres_source ---------------------------------------------------------------------------

def test_postgres_source_rows_are_shared_by_hash_range_and_read_once(tmp_path: Path, table: str) -> None:
    src, n = f"workers_src_{uuid.uuid4().hex[:10]}", 3000
    positions = f"workers_pos_{uuid.uuid4().hex[:10]}"
    asyncio.run(sql(f'CREATE TABLE "{src}" (id bigserial PRIMARY KEY, note text)'))
    asyncio.run(sql(f'INSERT INTO "{src}" (note) SELECT \'n\' || g FROM generate_series(1, {n}) AS g'))
    source = (f"    type: postgres_source\n    config: {{connection: pg, table: {src}, cursor: id, batch_size: 200, "
              f"stop_at_end: true, position_table: {positions}}}")
    try:
        path = _graph(tmp_path, "workers_pg", "", source, table, 100_000, "insert")
        run = Supervised(path, 3)
        code, workers, integrity = run.finish()
        assert code == 0, run.text
        assert _rows(table) == n and _rows(table, below=1) == 0, run.text  # ids 1..n, each once (insert: no conflict)
        _assert_split(workers, 3, n)
        assert integrity.startswith(f"integrity OK: {n} in = {n} delivered")
        stored = asyncio.run(sql(f'SELECT name FROM "{positions}" ORDER BY name'))
        assert [r["name"] for r in stored] == ["read#0/3", "read#1/3", "read#2/3"]
        # more rows, and two workers now: nothing skipped (they start after the slowest range's position)
        asyncio.run(sql(f'INSERT INTO "{src}" (note) SELECT \'m\' || g FROM generate_series(1, 300) AS g'))
        path = _graph(tmp_path, "workers_pg", "", source, table, 100_000, "insert_ignore")
        again = Supervised(path, 2)
        code, workers, _ = again.finish()
        assert code == 0, again.text
        assert _rows(table) == n + 300
        assert sum(w["delivered"] for w in workers.values()) >= 300
    finally:
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{src}"'))
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{positions}"'))
