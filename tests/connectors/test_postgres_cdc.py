"""postgres_cdc_source against a private PostgreSQL with wal_level=logical (one per module; the shared
server keeps its wal_level): changes in commit order with their types, a multi-table transaction,
a rolled-back one, DDL, one message per transaction, the snapshot, a server restart mid-run, kill -9
of `streamdag run` between receiving and acking, the example graph into Redis, and the clear errors
for a server without logical decoding and a role without REPLICATION."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aredis

from engine.compile.validate import load_graph
from engine.runtime.context import NodeContext, Resources
from engine.runtime.scheduler import Runner
from operators.connectors.postgres.cdc import PostgresCdcSource, PostgresCdcSourceConfig, XidFilter
from operators.connectors.redis.consistency import check_consistency
from tests.connectors.postgres_harness import DSN, PrivatePostgres

pytestmark = pytest.mark.services
ROOT = Path(__file__).parents[2]
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    if not PrivatePostgres.available():
        pytest.skip("needs PostgreSQL server binaries and root (to run them as the postgres user)")
    pg = PrivatePostgres(wal_level="logical", max_replication_slots="20")
    try:
        pg.create()
        yield pg
    finally:
        pg.cleanup()


async def _sql(dsn: str, *statements: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        out: list[Any] = []
        for s in statements:
            out = await conn.fetch(s)
        return out
    finally:
        await conn.close()


def sql(dsn: str, *statements: str) -> list[Any]:
    return asyncio.run(_sql(dsn, *statements))


def graph(dsn: str, slot: str, tables: list[str], **extra: Any) -> str:
    cfg = {"connection": "pg", "slot": slot, "tables": tables, "stop_at_end": True, "poll_interval": 0.05,
           "retry": {"initial_backoff": 0.05, "max_backoff": 0.2}, **extra}
    return f"""
version: 1
name: cdc_test
connections:
  pg: {{type: postgres, dsn: "{dsn}"}}
nodes:
  changes:
    type: postgres_cdc_source
    config: {json.dumps(cfg)}
  out:
    type: file_sink
    inputs: [changes]
    config: {{path: {slot}.ndjson, with_meta: true, mode: append}}
"""


def run_file(path: Path, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    report = asyncio.run(Runner(load_graph(str(path), overrides=overrides)).run())
    assert report.error is None and report.balanced, report.error
    out = path.parent / f"{path.stem}.ndjson"
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_changes_in_commit_order_with_types_transactions_and_ddl(server: PrivatePostgres, tmp_path: Path) -> None:
    a, b, slot = unique("cdc_a"), unique("cdc_b"), unique("s")
    sql(server.dsn, f"CREATE TABLE {a} (id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz, "
        "doc jsonb, raw bytea, f float8)", f"CREATE TABLE {b} (id int PRIMARY KEY, v text)",
        f"ALTER TABLE {b} REPLICA IDENTITY FULL")
    per_change = tmp_path / f"{slot}.yaml"
    per_change.write_text(graph(server.dsn, slot, [a, b]))
    per_txn = tmp_path / f"{slot}_t.yaml"
    per_txn.write_text(graph(server.dsn, f"{slot}_t", [a, b], per_transaction=True,
                             publication=slot))  # the same publication, a slot of its own
    assert run_file(per_change) == [] and run_file(per_txn) == []  # slots and publication created: nothing yet

    async def write() -> None:
        conn = await asyncpg.connect(server.dsn)
        try:
            await conn.execute(f"INSERT INTO {a} VALUES (1, 'a', 12345678.91, '2024-05-01 12:00:00.25+02', "
                               """'{"x": [1, 2.5, null]}', '\\x00ff', 1.5)""")
            await conn.execute(f"INSERT INTO {a} (id, name) VALUES (2, 'b')")
            await conn.execute(f"UPDATE {a} SET name = 'bb' WHERE id = 2")
            await conn.execute(f"DELETE FROM {a} WHERE id = 1")
            async with conn.transaction():  # several tables, one transaction
                await conn.execute(f"INSERT INTO {a} (id) VALUES (3)")
                await conn.execute(f"INSERT INTO {b} VALUES (10, 'x')")
                await conn.execute(f"UPDATE {b} SET v = 'y' WHERE id = 10")
            with pytest.raises(RuntimeError):
                async with conn.transaction():  # rolled back: nothing of it is emitted
                    await conn.execute(f"INSERT INTO {a} (id) VALUES (4)")
                    raise RuntimeError
            await conn.execute(f"ALTER TABLE {a} ADD COLUMN extra int")
            await conn.execute(f"INSERT INTO {a} (id, extra) VALUES (5, 7)")
            await conn.execute(f"DELETE FROM {b} WHERE id = 10")
        finally:
            await conn.close()

    asyncio.run(write())
    got = run_file(per_change)
    ta, tb = f"public.{a}", f"public.{b}"
    assert [(m["body"]["op"], m["body"]["table"], m["body"]["key"]) for m in got] == [
        ("insert", ta, {"id": 1}), ("insert", ta, {"id": 2}), ("update", ta, {"id": 2}), ("delete", ta, {"id": 1}),
        ("insert", ta, {"id": 3}), ("insert", tb, {"id": 10}), ("update", tb, {"id": 10}),
        ("insert", ta, {"id": 5}), ("delete", tb, {"id": 10})]
    first = got[0]["body"]["new"]
    assert first == {"id": 1, "name": "a", "amount": "12345678.91", "at": "2024-05-01T10:00:00.25+00:00",
                     "doc": {"x": [1, 2.5, None]}, "raw": "AP8=", "f": 1.5}  # exact numeric, RFC 3339, base64
    assert got[3]["body"]["old"] == {"id": 1} and got[3]["body"]["new"] is None  # default identity: the key
    assert got[6]["body"]["old"] == {"id": 10, "v": "x"}  # replica identity full: the whole old row
    assert got[8]["body"]["old"] == {"id": 10, "v": "y"}
    assert "extra" not in got[4]["body"]["new"] and got[7]["body"]["new"]["extra"] == 7  # DDL: the new column
    multi = got[4:7]
    assert len({m["meta"]["xid"] for m in multi}) == 1 and len({m["meta"]["lsn"] for m in multi}) == 1
    lsns = [m["meta"]["lsn"] for m in got]
    assert lsns == sorted(lsns) and len(set(lsns)) == 7  # 7 committed transactions, in commit order
    assert all(m["meta"]["commit_time"].endswith("+00:00") for m in got)
    txns = run_file(per_txn)
    assert [len(m["body"]["changes"]) for m in txns] == [1, 1, 1, 1, 3, 1, 1]  # the ALTER has no change
    assert [c["op"] for c in txns[4]["body"]["changes"]] == ["insert", "insert", "update"]
    # everything was acked: the slot moved past it, and the next run reads nothing again
    assert run_file(per_change) == got
    (confirmed,) = sql(server.dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = "
                       f"'{slot}'")
    from operators.connectors.postgres.pgoutput import lsn_int

    assert lsn_int(confirmed[0]) >= lsns[-1]


def test_snapshot_then_stream_without_duplicates(server: PrivatePostgres, tmp_path: Path) -> None:
    """Rows committed after the slot but before the snapshot are in both the slot and the snapshot:
    they come once, as snapshot rows. A later change streams; the snapshot is not taken again."""
    t, slot = unique("cdc_snap"), unique("s")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY, v int)",
        f"INSERT INTO {t} SELECT g, g FROM generate_series(1, 40) g",
        f"CREATE PUBLICATION {slot} FOR TABLE {t}",
        f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
        f"INSERT INTO {t} SELECT g, g FROM generate_series(41, 60) g",  # in the slot and in the snapshot
        f"UPDATE {t} SET v = -1 WHERE id = 1")
    path = tmp_path / f"{slot}.yaml"
    path.write_text(graph(server.dsn, slot, [t], snapshot=True))
    got = run_file(path)
    assert [m["body"]["op"] for m in got] == ["snapshot"] * 60
    rows = {m["body"]["key"]["id"]: m["body"]["new"]["v"] for m in got}
    assert rows == {i: (-1 if i == 1 else i) for i in range(1, 61)}
    sql(server.dsn, f"UPDATE {t} SET v = 100 WHERE id = 2")
    more = run_file(path)[len(got):]
    assert [(m["body"]["op"], m["body"]["key"], m["body"]["new"]["v"]) for m in more] == [("update", {"id": 2}, 100)]
    assert more[0]["meta"]["lsn"] >= got[0]["meta"]["lsn"]  # snapshot rows never outrank later changes


def test_xid_filter_sees_what_the_snapshot_saw() -> None:
    f = XidFilter("100:110:103,107")
    assert f.saw(99) and f.saw(104) and not f.saw(103) and not f.saw(110) and not f.saw(500)
    wrapped = XidFilter(f"{(1 << 32) + 5}:{(1 << 32) + 9}:")  # after wraparound: 32-bit xids near xmax
    assert wrapped.saw(4) and wrapped.saw(0xFFFFFFF0) and not wrapped.saw(9) and not wrapped.saw(12)
    before = XidFilter(f"{(1 << 32) - 20}:{(1 << 32) - 10}:")  # just before wraparound: xid 3 comes later
    assert before.saw((1 << 32) - 30) and not before.saw(3) and not before.saw((1 << 32) - 5)


def test_server_restart_mid_run_loses_nothing(server: PrivatePostgres, tmp_path: Path) -> None:
    t, slot = unique("cdc_rs"), unique("s")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    path = tmp_path / f"{slot}.yaml"
    path.write_text(graph(server.dsn, slot, [t], stop_at_end=False))
    out = tmp_path / f"{slot}.ndjson"

    def ids() -> list[int]:
        return [json.loads(x)["body"]["key"]["id"] for x in out.read_text().splitlines()] if out.exists() else []

    async def main() -> None:
        runner = Runner(load_graph(str(path)))
        task = asyncio.create_task(runner.run())

        async def until(n: int) -> None:
            for _ in range(400):
                if len(set(ids())) >= n:
                    return
                assert not task.done(), task.result().error
                await asyncio.sleep(0.025)
            raise AssertionError(f"only {ids()} of {n}")

        for _ in range(100):  # the slot exists once the source started
            if sql_rows := await _sql(server.dsn, f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}'"):
                break
            await asyncio.sleep(0.05)
        assert sql_rows
        await _sql(server.dsn, f"INSERT INTO {t} SELECT generate_series(1, 5)")
        await until(5)
        await asyncio.to_thread(server.stop)  # a crash: immediate shutdown, WAL recovery on start
        await asyncio.sleep(0.3)  # the source's reads fail meanwhile and are retried
        await asyncio.to_thread(server.start)
        await _sql(server.dsn, f"INSERT INTO {t} SELECT generate_series(6, 10)")
        await until(10)
        runner.stop()
        report = await asyncio.wait_for(task, 10)
        assert report.error is None and report.balanced

    asyncio.run(main())
    seen = ids()
    assert sorted(set(seen)) == list(range(1, 11))
    assert [i for i in dict.fromkeys(seen)] == list(range(1, 11))  # in commit order (replays repeat a prefix)


CRASH_GRAPH = """
version: 1
name: cdc_crash
defaults: {max_in_flight: 100, batch_size: 50}
connections:
  pg: {type: postgres, dsn: "%(dsn)s"}
  cache: {type: redis, url: "%(redis)s"}
nodes:
  changes:
    type: postgres_cdc_source
    config: {connection: pg, slot: %(slot)s, tables: [%(table)s], poll_interval: 0.05}
  pace:  # the first run reads ahead of what it has written, so the kill -9 finds changes read, not acked
    type: rate_limit
    inputs: [changes]
    config: {rate: 1500, burst: 50}
  cache:
    type: redis_cache_sink
    inputs: [pace]
    config: {connection: cache, key: '"%(p)s:" + string(msg.key.id)', value: msg.new, version: meta.lsn,
             delete: msg.op == "delete"}
  tag:
    type: map
    inputs: [pace]
    config: {expr: '{"lsn": meta.lsn, "op": msg.op, "id": msg.key.id}'}
  log:
    type: redis_stream_sink
    inputs: [tag]
    config: {connection: cache, stream: "%(p)s.log", maxlen: null}
"""


def test_kill_9_between_receiving_and_acking_replays_and_the_cache_is_correct(
        server: PrivatePostgres, tmp_path: Path) -> None:
    t, slot = unique("cdc_k"), unique("s")
    p = unique("cdck")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY, v int)", f"CREATE PUBLICATION {slot} FOR TABLE {t}",
        f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    # 300 transactions: inserts, updates and deletes of 600 keys
    sql(server.dsn, f"""DO $$ BEGIN FOR i IN 0..299 LOOP
        INSERT INTO {t} SELECT g, 0 FROM generate_series(i * 2, i * 2 + 1) g;
        UPDATE {t} SET v = v + 1 WHERE id = i;
        IF i % 3 = 0 THEN DELETE FROM {t} WHERE id = i * 2 + 1; END IF;
        COMMIT; END LOOP; END $$""")
    deleted = {i * 2 + 1 for i in range(0, 300, 3)}
    changes = 600 + sum(1 for i in range(300) if not (i % 2 and (i - 1) // 2 % 3 == 0 and (i - 1) // 2 < i)) + 100
    assert changes == 950 and len(deleted) == 100  # an update of a row deleted before changes nothing
    path = tmp_path / "crash.yaml"
    path.write_text(CRASH_GRAPH % {"dsn": server.dsn, "redis": REDIS, "slot": slot, "table": t, "p": p})
    cli = [sys.executable, "-m", "engine.cli", "run", str(path), "-q"]
    r = aredis.Redis.from_url(REDIS)

    async def main() -> None:
        try:
            proc = await asyncio.create_subprocess_exec(*cli, cwd=ROOT, stderr=subprocess.PIPE)
            for _ in range(600):
                if await r.xlen(f"{p}.log") > 0:
                    break
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            first = await r.xlen(f"{p}.log")
            assert 0 < first < changes, "the run ended before the kill: make it longer"
            (confirmed,) = await _sql(server.dsn, "SELECT confirmed_flush_lsn - '0/0' AS c FROM pg_replication_slots "
                                      f"WHERE slot_name = '{slot}'")
            proc = await asyncio.create_subprocess_exec(
                *cli, "--set", "nodes.pace.config.rate=1000000", "--set", "nodes.changes.config.stop_at_end=true",
                cwd=ROOT, stderr=subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err.decode()[-2000:]
            log = [orjson.loads(f[b"body"]) for _, f in await r.xrange(f"{p}.log")]
            done = {(e["lsn"], e["op"], e["id"]) for e in log}
            assert len(done) == changes  # every change reached the sinks (some twice: replayed after the kill)
            before, after = log[:first], log[first:]
            unconfirmed = [e for e in before if e["lsn"] > int(confirmed["c"])]
            assert unconfirmed  # the kill landed between receiving and acking
            assert all(e in after for e in unconfirmed)  # ... and those changes came again
            assert [e for e in after if e["lsn"] <= int(confirmed["c"])] == []  # nothing below the slot's position
            rows = {r_["id"]: r_["v"] for r_ in await _sql(server.dsn, f"SELECT id, v FROM {t}")}
            for k, v in rows.items():
                assert orjson.loads(await r.get(f"{p}:{k}")) == {"id": k, "v": v}
            report = await check_consistency(server.dsn, t, "id", REDIS, f"{p}:")
            assert report.score == 1.0 and report.rows == len(rows) == 500
        finally:
            keys = [k async for k in r.scan_iter(match=f"{p}*", count=1000)]
            if keys:
                await r.delete(*keys)
            await r.aclose()

    asyncio.run(main())


def test_example_graph_keeps_redis_consistent(server: PrivatePostgres, tmp_path: Path) -> None:
    """graphs/postgres_cdc.yaml: snapshot, then upserts and deletes; check-consistency scores 1.0."""
    t, slot, p = unique("accounts"), unique("s"), unique("acct")
    sql(server.dsn, f"CREATE TABLE {t} (id bigint PRIMARY KEY, owner text, balance numeric(12,2))",
        f"INSERT INTO {t} SELECT g, 'o' || g, g * 1.5 FROM generate_series(1, 50) g")
    sets = [f"connections.pg.dsn={server.dsn}", f"connections.cache.url={REDIS}",
            f"nodes.changes.config.slot={slot}", f"nodes.changes.config.tables=[{t}]",
            "nodes.changes.config.stop_at_end=true", f"nodes.accounts.config.key='\"{p}:\" + string(msg.key.id)'",
            f"nodes.dead.config.path={tmp_path / 'dead.ndjson'}"]
    example = str(ROOT / "graphs" / "postgres_cdc.yaml")

    async def main() -> None:
        r = aredis.Redis.from_url(REDIS)
        try:
            for step in (None, f"UPDATE {t} SET balance = balance + 1 WHERE id % 2 = 0",
                         f"DELETE FROM {t} WHERE id % 5 = 0", f"INSERT INTO {t} VALUES (51, 'new', 0)"):
                if step:
                    await _sql(server.dsn, step)
                runner = Runner(load_graph(example, overrides=sets))
                report = await runner.run()
                assert report.error is None and report.balanced
            result = await check_consistency(server.dsn, t, "id", REDIS, f"{p}:")
            assert result.score == 1.0 and result.rows == 41
            source = runner.nodes["changes"]
            assert source.levels()["slot_lag_bytes"] >= 0 and source.levels()["slot_lag_seconds"] == 0  # confirmed
            assert source.metrics()["changes"] == 1  # the last run: one insert
            for row in await _sql(server.dsn, f"SELECT id, owner, balance::text AS balance FROM {t}"):
                assert orjson.loads(await r.get(f"{p}:{row['id']}")) == dict(row)
            assert not (tmp_path / "dead.ndjson").exists() or (tmp_path / "dead.ndjson").read_text() == ""
        finally:
            keys = [k async for k in r.scan_iter(match=f"{p}*", count=1000)]
            if keys:
                await r.delete(*keys)
            await r.aclose()

    asyncio.run(main())


def _source(dsn: str) -> PostgresCdcSource:
    cfg = PostgresCdcSourceConfig.model_validate({"connection": "pg", "slot": unique("s"), "tables": ["x"]})
    return PostgresCdcSource("cdc", cfg, NodeContext("cdc", {"pg": {"dsn": dsn}}, {}, Resources()))


def test_server_without_logical_decoding_is_a_clear_error() -> None:
    (level,) = sql(DSN, "SHOW wal_level")
    if level[0] == "logical":
        pytest.skip("the shared server already runs with wal_level = logical")
    src = _source(DSN)

    async def main() -> None:
        try:
            await src.start()
        finally:
            if src.conn is not None:
                await src.conn.close()
            await src.ctx.resources.close()

    with pytest.raises(Exception, match=r"wal_level is 'replica'.*wal_level = logical.*restart PostgreSQL"):
        asyncio.run(main())


def test_role_without_replication_is_a_clear_error(server: PrivatePostgres) -> None:
    role = unique("plain")
    sql(server.dsn, f"CREATE ROLE {role} LOGIN")
    src = _source(server.dsn.replace("root@", f"{role}@"))

    async def main() -> None:
        try:
            await src.start()
        finally:
            if src.conn is not None:
                await src.conn.close()
            await src.ctx.resources.close()

    with pytest.raises(Exception, match=rf"role '{role}' lacks the REPLICATION attribute.*ALTER ROLE \"{role}\" "
                                        "REPLICATION"):
        asyncio.run(main())



def test_a_change_that_does_not_decode_is_a_dead_letter_and_the_slot_moves_on(
        server: PrivatePostgres, tmp_path: Path) -> None:
    """A jsonb value deeper than the codec's limits: that change goes to `errors` with the reason
    and its raw pgoutput bytes; the changes around it are delivered and the slot advances past it."""
    t, slot = unique("cdc_bad"), unique("s")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY, doc jsonb)")
    path = tmp_path / f"{slot}.yaml"
    text = graph(server.dsn, slot, [t]).replace("nodes:", "defaults: {dead_letter: dead}\nnodes:")
    path.write_text(text + "  dead:\n    type: file_sink\n    inputs: [changes.errors]\n"
                    "    config: {path: dead.ndjson}\n")
    assert run_file(path) == []
    deep = "[" * 300 + "]" * 300
    sql(server.dsn, f"INSERT INTO {t} VALUES (1, '[1]')", f"INSERT INTO {t} VALUES (2, '{deep}')",
        f"INSERT INTO {t} VALUES (3, '{{}}')")
    got = run_file(path)
    assert [m["body"]["key"]["id"] for m in got] == [1, 3]
    (dead,) = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert dead["node"] == "changes" \
        and dead["error"] == f"public.{t} column doc: nesting deeper than 254 levels" \
        and dead["payload"]["pgoutput"].startswith("49")
    assert run_file(path) == got  # acked, dead letter included: nothing comes again


def test_slot_lag_in_bytes_and_seconds_with_a_warning(server: PrivatePostgres, caplog: pytest.LogCaptureFixture) -> None:
    slot, t = unique("s"), unique("cdc_lag")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY, pad text)")
    cfg = PostgresCdcSourceConfig.model_validate({"connection": "pg", "slot": slot, "tables": [t],
                                                  "lag_warning": 1000})
    src = PostgresCdcSource("cdc", cfg, NodeContext("cdc", {"pg": {"dsn": server.dsn}}, {}, Resources()))

    async def main() -> tuple[int | None, dict[str, float]]:
        try:
            await src.start()
            await _sql(server.dsn, f"INSERT INTO {t} SELECT g, repeat('x', 100) FROM generate_series(1, 200) g")
            assert await src.lag() is None  # messages waiting upstream: not known; it refreshes the gauge
            return src.lag_bytes, src.levels()
        finally:
            await src.stop()
            await src.ctx.resources.close()

    with caplog.at_level("WARNING"):
        lag, metrics = asyncio.run(main())
    assert lag is not None and lag > 20_000 and metrics["slot_lag_bytes"] == lag
    assert metrics["slot_lag_seconds"] == 0.0  # nothing read and unconfirmed
    assert any("max_slot_wal_keep_size" in r.getMessage() for r in caplog.records)


def test_pgoutput_decoder_refuses_malformed_messages() -> None:
    from engine import MessageError
    from operators.connectors.postgres.pgoutput import Decoder, json_of, lsn_int, lsn_text

    d = Decoder()
    with pytest.raises(MessageError, match="before its Relation"):
        d.decode(b"I\x00\x00\x00\x07N\x00\x00")
    with pytest.raises(MessageError, match="unknown pgoutput message type 'Z'"):
        d.decode(b"Z")
    with pytest.raises(MessageError, match="does not decode"):
        d.decode(b"B\x00\x01")  # truncated
    assert lsn_text(lsn_int("16/B374D848")) == "16/B374D848"
    assert json_of(1700, "1e-20") == "1e-20" and json_of(701, "Infinity") == "Infinity"
    assert json_of(1184, "infinity") == "infinity" and json_of(1184, "2024-01-01 00:00:00+05:30") == \
        "2024-01-01T00:00:00+05:30"
    assert json_of(1114, "2024-01-01 10:11:12.5") == "2024-01-01T10:11:12.5"


def test_slot_advances_over_the_acked_prefix_only_and_a_failure_reads_again(server: PrivatePostgres) -> None:
    """Driven by hand with a real AckTracker: acks out of order move the slot only at the end of the
    last transaction whose messages (and all before it) are acked; a failed ack makes the source
    read again from the slot's position, in order."""
    from engine.message import AckTracker
    from engine.runtime.outputs import SourceOutput
    from engine.runtime.stats import NodeStats

    t, slot = unique("cdc_ack"), unique("s")
    sql(server.dsn, f"CREATE TABLE {t} (id int PRIMARY KEY)")
    cfg = PostgresCdcSourceConfig.model_validate({"connection": "pg", "slot": slot, "tables": [t],
                                                  "poll_interval": 0.02})
    src = PostgresCdcSource("cdc", cfg, NodeContext("cdc", {"pg": {"dsn": server.dsn}}, {}, Resources()))
    tracker = AckTracker()
    received: list[Any] = []
    arrived = asyncio.Event()

    async def send(lists: dict[str, list[Any]]) -> None:
        received.extend(lists["out"])
        arrived.set()

    out = SourceOutput("cdc", tracker, send, NodeStats("cdc", "source", "postgres_cdc_source"))

    async def until(n: int) -> None:
        async with asyncio.timeout(10):
            while len(received) < n:
                arrived.clear()
                await arrived.wait()

    async def settle() -> None:
        done, failed = tracker.take()
        if done:
            await src.commit(done)
        if failed:
            await src.reject(failed)

    async def confirmed() -> int:
        (row,) = await _sql(server.dsn, "SELECT confirmed_flush_lsn - '0/0' AS c FROM pg_replication_slots "
                            f"WHERE slot_name = '{slot}'")
        return int(row["c"])

    async def main() -> None:
        await src.start()
        task = asyncio.create_task(src.run(out))
        try:
            start = await confirmed()
            for k in range(3):  # three transactions of two rows
                await _sql(server.dsn, f"INSERT INTO {t} VALUES ({2 * k}), ({2 * k + 1})")
            await until(6)
            ends = [m.meta["lsn"] for m in received]
            assert [m.body["key"]["id"] for m in received] == list(range(6))
            received[2].ack.release()  # the second transaction's first half, and all of the third
            received[4].ack.release()
            received[5].ack.release()
            await settle()
            assert await confirmed() == start
            received[0].ack.release()
            received[1].ack.release()
            await settle()
            assert await confirmed() == ends[1]  # the first transaction only: the second is half acked
            received[3].ack.fail("sink refused")
            await settle()
            await until(6 + 4)  # the second and third transactions again, in order
            assert [m.body["key"]["id"] for m in received[6:]] == [2, 3, 4, 5]
            for m in received[6:]:
                m.ack.release()
            await settle()
            assert await confirmed() == ends[5]
        finally:
            out.stopping.set()
            await asyncio.wait_for(task, 5)
            await src.stop()
            await src.ctx.resources.close()

    asyncio.run(main())


def test_config_checks_names_and_snapshot_needs_tables() -> None:
    from engine.api import CheckContext

    cfg = PostgresCdcSourceConfig.model_validate({"connection": "pg", "slot": "bad-slot", "publication": "p;x",
                                                  "tables": ["ok", "a.b.c"], "snapshot": False})
    issues = list(PostgresCdcSource.check(cfg, CheckContext()))
    assert [(i.loc, i.code) for i in issues] == [(("slot",), "E220"), (("publication",), "E220"),
                                                 (("tables", 1), "E220")]
    cfg = PostgresCdcSourceConfig.model_validate({"connection": "pg", "slot": "s", "snapshot": True})
    assert [i.message for i in PostgresCdcSource.check(cfg, CheckContext())] == [
        "`snapshot` needs `tables` (the tables to read)"]
