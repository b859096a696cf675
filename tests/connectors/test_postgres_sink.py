"""postgres_sink against the real server: modes, write paths, bad rows, startup errors, lost connections."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from engine.api import CheckContext
from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from tests.connectors.postgres_harness import DSN, sql, write_retrying

pytestmark = pytest.mark.services
PATHS = ["values", "unnest", "copy"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def table() -> Iterator[str]:
    name = f"postgres_{uuid.uuid4().hex[:10]}"
    yield name
    run(sql(f'DROP TABLE IF EXISTS "{name}"'))


@pytest.fixture
def app() -> str:
    return f"postgres_test_{uuid.uuid4().hex[:8]}"


def make(table: str, app: str, **config: Any) -> tuple[PostgresSink, Resources]:
    config.setdefault("columns", {"id": {"expr": "msg.id", "type": "bigint"},
                                  "version": {"expr": "msg.version", "type": "bigint"},
                                  "total": {"expr": "msg.total", "type": "numeric"}, "body": "msg"})
    config.setdefault("create_table", True)
    cfg = PostgresSinkConfig.model_validate({"connection": "pg", "table": table, **config})
    res = Resources()
    ctx = NodeContext("store", {"pg": {"dsn": DSN, "application_name": app}}, {}, res)
    return PostgresSink("store", cfg, ctx), res


async def write_all(sink: PostgresSink, res: Resources, *batches: list[dict]) -> list[list[tuple[Msg, str]]]:
    await sink.start()
    try:
        return [await sink.write([Msg(b) for b in batch]) for batch in batches]
    finally:
        await sink.stop()
        await res.close()


def rows(table: str) -> dict[int, tuple]:
    return {r["id"]: (r["version"], float(r["total"]), r["body"])
            for r in run(sql(f'SELECT id, version, total, body::text AS body FROM "{table}"'))}


@pytest.mark.parametrize("path", PATHS)
def test_insert_commits_and_reports_conflicts(table: str, app: str, path: str) -> None:
    sink, res = make(table, app, mode="insert", key=["id"], write_path=path)
    batch = [{"id": i, "version": 1, "total": i} for i in range(50)] + [{"id": 7, "version": 2, "total": 0}]
    (failed,) = run(write_all(sink, res, batch))
    assert [(m.body["id"], "23505" in r and "Key (id)=(7)" in r) for m, r in failed] == [(7, True)]
    got = rows(table)
    assert len(got) == 50 and got[7][0] == 1


@pytest.mark.parametrize("path", PATHS)
def test_insert_ignore_keeps_the_first(table: str, app: str, path: str) -> None:
    sink, res = make(table, app, mode="insert_ignore", key=["id"], write_path=path)
    out = run(write_all(sink, res, [{"id": 1, "version": 1, "total": 1}, {"id": 1, "version": 2, "total": 2}],
                        [{"id": 1, "version": 3, "total": 3}, {"id": 2, "version": 1, "total": 5}]))
    assert out == [[], []]
    assert {k: v[:2] for k, v in rows(table).items()} == {1: (1, 1.0), 2: (1, 5.0)}


@pytest.mark.parametrize("path", PATHS)
def test_upsert_last_message_wins(table: str, app: str, path: str) -> None:
    sink, res = make(table, app, mode="upsert", key=["id"], write_path=path)
    run(write_all(sink, res, [{"id": 1, "version": 5, "total": 1}, {"id": 1, "version": 2, "total": 2}],
                  [{"id": 2, "version": 9, "total": 3}, {"id": 2, "version": 1, "total": 4}, {"id": 1, "version": 0, "total": 6}]))
    assert {k: v[:2] for k, v in rows(table).items()} == {1: (0, 6.0), 2: (1, 4.0)}


LWW_EVENTS = [{"id": k, "version": v, "total": k * 100 + v} for k in range(1, 6) for v in range(1, 5)]


@pytest.mark.parametrize("path", PATHS)
def test_last_write_wins_converges_in_any_order(app: str, path: str) -> None:
    results = []
    for seed in (1, 2, 3):
        name = f"postgres_{uuid.uuid4().hex[:10]}"
        try:
            events = LWW_EVENTS[:]
            random.Random(seed).shuffle(events)
            batches = [events[i:i + 3] for i in range(0, len(events), 3)]  # out of order within and across
            sink, res = make(name, app, mode="last_write_wins", key=["id"], version="version", write_path=path)
            assert run(write_all(sink, res, *batches)) == [[] for _ in batches]
            results.append(rows(name))
        finally:
            run(sql(f'DROP TABLE IF EXISTS "{name}"'))
    assert results[0] == results[1] == results[2]
    assert {k: v[:2] for k, v in results[0].items()} == {k: (4, k * 100.0 + 4) for k in range(1, 6)}


def test_last_write_wins_replay_changes_nothing(table: str, app: str) -> None:
    sink, res = make(table, app, mode="last_write_wins", key=["id"], version="version")
    first = [{"id": i, "version": 3, "total": i} for i in range(20)]
    older = [{"id": i, "version": 2, "total": -1} for i in range(20)]
    run(write_all(sink, res, first))
    before = run(sql(f'SELECT id, xmin::text AS x, total FROM "{table}" ORDER BY id'))
    sink, res = make(table, app, mode="last_write_wins", key=["id"], version="version")
    run(write_all(sink, res, first, older, first[::-1]))
    after = run(sql(f'SELECT id, xmin::text AS x, total FROM "{table}" ORDER BY id'))
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # same rows, not even rewritten


@pytest.mark.parametrize("path", PATHS)
def test_bad_rows_are_isolated_and_the_rest_commits(table: str, app: str, path: str) -> None:
    run(sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, version bigint, total numeric NOT NULL, '
            f'body jsonb, CHECK (total >= 0))'))
    sink, res = make(table, app, mode="upsert", key=["id"], write_path=path, create_table=False)
    batch = [{"id": i, "version": 1, "total": i} for i in range(300)]
    batch[10] = {"id": "ten", "version": 1, "total": 1}         # type error
    batch[150] = {"id": 150, "version": 1, "total": None}       # NOT NULL
    batch[299] = {"id": 299, "version": 1, "total": -5}         # CHECK
    batch[42] = {"id": 42, "version": 1}                        # no such field: never reaches the database
    (failed,) = run(write_all(sink, res, batch))
    reasons = {str(m.body["id"]): r for m, r in failed}
    assert set(reasons) == {"ten", "150", "299", "42"}
    assert 'invalid input syntax for type bigint: "ten"' in reasons["ten"]
    assert "23502" in reasons["150"] and "23514" in reasons["299"]
    assert reasons["42"].startswith("column total:") and "total" in reasons["42"]
    got = rows(table)
    assert len(got) == 296 and 10 not in got and 150 not in got and 42 not in got


def test_create_table_infers_types_from_the_first_batch(table: str, app: str) -> None:
    sink, res = make(table, app, mode="insert", columns={"id": "msg.id", "name": "msg.name", "ok": "msg.ok",
                                                         "score": "msg.score", "tags": "msg.tags", "doc": "msg"})
    body = {"id": 1, "name": "a", "ok": True, "score": 1.5, "tags": ["x"]}
    run(write_all(sink, res, [body]))
    types = {r[0]: r[1] for r in run(sql(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", table))}
    assert types == {"id": "bigint", "name": "text", "ok": "boolean", "score": "double precision",
                     "tags": "jsonb", "doc": "jsonb"}
    (rec,) = run(sql(f'SELECT * FROM "{table}"'))
    assert (rec["id"], rec["name"], rec["ok"], rec["score"]) == (1, "a", True, 1.5)


def test_missing_table_or_column_is_a_startup_error(table: str, app: str) -> None:
    sink, res = make(table, app, mode="insert", create_table=False)
    with pytest.raises(RuntimeError, match=f"table '{table}' does not exist"):
        run(write_all(sink, res))
    run(sql(f'CREATE TABLE "{table}" (id bigint, version bigint, total numeric)'))
    sink, res = make(table, app, mode="insert", create_table=False)
    with pytest.raises(RuntimeError, match="has no column\\(s\\) body"):
        run(write_all(sink, res))
    sink, res = make(table, app, mode="upsert", key=["id"], create_table=False,
                     columns={"id": "msg.id", "total": "msg.total"})
    with pytest.raises(RuntimeError, match="unique index on \\(id\\)"):
        run(write_all(sink, res))


def test_identifiers_are_checked_offline() -> None:
    cfg = PostgresSinkConfig.model_validate({
        "connection": "pg", "table": "orders; drop table x", "mode": "upsert", "key": ["id"],
        "columns": {"id": "msg.id", 'bad"col': "msg.x", "t": {"expr": "msg.t", "type": "int); drop"}}})
    issues = list(PostgresSink.check(cfg, CheckContext()))
    assert {(i.code, i.loc) for i in issues} == {("E220", ("table",)), ("E220", ("columns", 'bad"col')),
                                                  ("E220", ("columns", "t", "type"))}
    ok = PostgresSinkConfig.model_validate({"connection": "pg", "table": "public.orders", "columns": {
        "id": {"expr": "msg.id", "type": "numeric(12, 2)"}, "at": {"expr": "msg.at", "type": "timestamp with time zone"}}})
    assert list(PostgresSink.check(ok, CheckContext())) == []


@pytest.mark.parametrize("config, words", [
    ({"mode": "upsert"}, "needs `key`"),
    ({"mode": "last_write_wins", "key": ["id"]}, "needs `version`"),
    ({"mode": "upsert", "key": ["nope"]}, "not in `columns`"),
    ({"mode": "insert", "columns": {}}, "at least 1"),
])
def test_config_rules(config: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        PostgresSinkConfig.model_validate({"connection": "pg", "table": "t", "columns": {"id": "msg.id"}, **config})


def test_cel_columns_are_found_for_offline_compilation() -> None:
    from engine.api import cel_fields

    cfg = PostgresSinkConfig.model_validate({"connection": "pg", "table": "t", "columns": {
        "id": "msg.id", "total": {"expr": "double(msg.qty) * msg.price", "type": "numeric"}}})
    assert list(cel_fields(cfg)) == [(("columns", "id", "expr"), "msg.id"),
                                     (("columns", "total", "expr"), "double(msg.qty) * msg.price")]


@pytest.mark.parametrize("path", PATHS)
def test_connection_loss_loses_nothing_and_duplicates_nothing(table: str, app: str, path: str) -> None:
    """Another connection terminates the sink's sessions again and again while batches are written."""
    sink, res = make(table, app, mode="insert", key=["id"], write_path=path)
    n_batches, size = 40, 250
    kills = 0
    done = asyncio.Event()
    progress = asyncio.Event()
    rng = random.Random(7)

    async def killer() -> None:
        # One kill per written batch, at a random point of the next one (before, during or at commit).
        nonlocal kills
        conn = await asyncpg.connect(DSN)
        try:
            while not done.is_set():
                await progress.wait()
                progress.clear()
                await asyncio.sleep(rng.uniform(0, 0.004))  # where in the batch the cut lands
                kills += len(await conn.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app))
        finally:
            await conn.close()

    async def main() -> list[list[tuple[Msg, str]]]:
        await sink.start()
        task = asyncio.create_task(killer())
        out = []
        try:
            for b in range(n_batches):
                batch = [Msg({"id": b * size + i, "version": 1, "total": i}) for i in range(size)]
                out.append(await write_retrying(sink, batch))
                progress.set()
            return out
        finally:
            done.set()
            progress.set()
            await task
            await res.close()

    results = run(main())
    assert kills > 0
    assert [r for r in results if r] == []  # a retried insert of a committed batch would conflict here
    (count,) = run(sql(f'SELECT count(*) AS n, count(DISTINCT id) AS d FROM "{table}"'))
    assert (count["n"], count["d"]) == (n_batches * size, n_batches * size)


def test_lost_commit_is_resolved_by_transaction_status(table: str, app: str) -> None:
    sink, res = make(table, app, mode="insert")

    async def main() -> tuple[bool, bool]:
        await sink.start()
        conn = await asyncpg.connect(DSN)
        try:
            tx = conn.transaction()
            await tx.start()
            committed = await conn.fetchval("SELECT pg_current_xact_id()::text")
            await tx.commit()
            tx = conn.transaction()
            await tx.start()
            aborted = await conn.fetchval("SELECT pg_current_xact_id()::text")
            await tx.rollback()
            return await sink._committed(committed), await sink._committed(aborted)
        finally:
            await conn.close()
            await res.close()

    assert run(main()) == (True, False)


def test_copy_path_recreates_a_lost_staging_table(table: str, app: str) -> None:
    sink, res = make(table, app, mode="upsert", key=["id"], write_path="copy")

    async def main() -> None:
        await sink.start()
        try:
            assert await sink.write([Msg({"id": 1, "version": 1, "total": 1})]) == []
            async with sink.pool.acquire() as conn:  # the session loses its temp table behind our back
                await conn.execute(f'DROP TABLE "{sink.stage}"')
            assert await sink.write([Msg({"id": 2, "version": 1, "total": 2})]) == []
        finally:
            await res.close()

    run(main())
    assert sorted(rows(table)) == [1, 2]


def test_too_long_value_is_an_error_not_a_silent_cut(table: str, app: str) -> None:
    run(sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, code varchar(3), amount numeric(5,2))'))
    sink, res = make(table, app, mode="upsert", key=["id"], create_table=False,
                     columns={"id": "msg.id", "code": "msg.code", "amount": "msg.amount"})
    (failed,) = run(write_all(sink, res, [{"id": 1, "code": "abc", "amount": 1.234},
                                          {"id": 2, "code": "abcdef", "amount": 1},
                                          {"id": 3, "code": "x", "amount": 12345}]))
    assert sorted((m.body["id"], r.split(":")[0]) for m, r in failed) == [(2, "postgres 22001"), (3, "postgres 22003")]
    got = run(sql(f'SELECT id, code, amount::text AS a FROM "{table}"'))
    assert [tuple(r) for r in got] == [(1, "abc", "1.23")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("with_json", [True, False])
def test_unstorable_strings_are_row_errors(table: str, app: str, path: str, with_json: bool) -> None:
    columns = {"id": {"expr": "msg.id", "type": "bigint"}, "name": {"expr": "msg.name", "type": "text"}}
    if with_json:
        columns["body"] = "msg"
    sink, res = make(table, app, mode="upsert", key=["id"], write_path=path, columns=columns)
    (failed,) = run(write_all(sink, res, [{"id": 1, "name": "ok"}, {"id": 2, "name": "a\x00b"},
                                          {"id": 3, "name": "\ud800"}]))
    reasons = {m.body["id"]: r for m, r in failed}
    assert sorted(reasons) == [2, 3]
    assert "22021" in reasons[2] and "0x00" in reasons[2]
    assert "surrogates not allowed" in reasons[3]
    assert [tuple(r) for r in run(sql(f'SELECT id, name FROM "{table}"'))] == [(1, "ok")]


# -- the typed path: int, float and bool columns travel as typed arrays when every value of the batch
# -- has its column's Python type; anything else takes the text path, with the database's own message

TYPED_DDL = ('CREATE TABLE "{t}" (id bigint PRIMARY KEY, n integer, x double precision, r real, ok boolean, '
             "name text, doc jsonb)")
TYPED_COLUMNS = {"id": "msg.id", "n": "msg.n", "x": "msg.x", "r": "msg.r", "ok": "msg.ok", "name": "msg.name",
                 "doc": "msg.doc"}


def _typed_sink(table: str, app: str) -> Any:
    run(sql(TYPED_DDL.format(t=table)))
    return make(table, app, mode="upsert", key=["id"], columns=TYPED_COLUMNS, create_table=False)


def _typed_rows(table: str) -> dict[int, dict[str, Any]]:
    return {r["id"]: dict(r) for r in run(sql(f'SELECT id, n, x, r, ok, name, doc::text AS doc FROM "{table}"'))}


def test_typed_arrays_carry_ints_floats_bools_nulls_and_special_floats(table: str, app: str) -> None:
    sink, res = _typed_sink(table, app)
    batch = [{"id": i, "n": i * 3, "x": i / 7, "r": 0.1 * i, "ok": i % 2 == 0, "name": f"n{i}", "doc": {"i": i}}
             for i in range(200)]
    batch[5].update(x=math.inf, r=None, ok=None, name=None, n=None)
    batch[6].update(x=-math.inf)
    batch[7].update(x=math.nan, n=2**31 - 1)
    batch[8].update(x=3)  # an int in a double precision column
    (failed,) = run(write_all(sink, res, batch))
    assert failed == [] and sink.typed_batches == 1
    got = _typed_rows(table)
    assert len(got) == 200
    assert got[10] == {"id": 10, "n": 30, "x": 10 / 7, "r": pytest.approx(1.0), "ok": True, "name": "n10",
                       "doc": '{"i": 10}'}
    assert (got[5]["x"], got[5]["r"], got[5]["ok"], got[5]["name"], got[5]["n"]) == (math.inf, None, None, None, None)
    assert got[6]["x"] == -math.inf and math.isnan(got[7]["x"]) and got[7]["n"] == 2**31 - 1 and got[8]["x"] == 3.0


@pytest.mark.parametrize("bad, message", [
    ({"n": "12x"}, "invalid input syntax for type integer"),          # a string in an int column
    ({"n": 1.5}, "invalid input syntax for type integer"),            # a float in an int column
    ({"ok": 1}, None),                                                  # an int in a bool column: '1' is true
    ({"x": "abc"}, "invalid input syntax for type double precision"),
    ({"id": 2**70}, "out of range for type bigint"),                    # beyond int64: text path
])
def test_a_value_of_another_type_sends_the_batch_as_text(table: str, app: str, bad: dict, message: str | None) -> None:
    sink, res = _typed_sink(table, app)
    batch = [{"id": i, "n": i, "x": 1.5, "r": 2.5, "ok": True, "name": "a", "doc": None} for i in range(20)]
    batch[3].update(bad)
    (failed,) = run(write_all(sink, res, batch))
    assert sink.typed_batches == 0
    got = _typed_rows(table)
    if message is None:
        assert failed == [] and got[3]["ok"] is True and len(got) == 20
    else:
        assert [(m.body["id"] if "id" not in bad else "big", message in reason) for m, reason in failed] == [
            (3 if "id" not in bad else "big", True)]
        assert len(got) == 19


def test_a_row_error_on_the_typed_path_isolates_the_row_with_the_database_message(table: str, app: str) -> None:
    sink, res = _typed_sink(table, app)
    batch = [{"id": i, "n": i, "x": 1.0, "r": 1.0, "ok": False, "name": "a", "doc": [i]} for i in range(50)]
    batch[17]["n"] = 2**40  # fits int64 (typed array), not the integer column: the cast fails in the server
    (failed,) = run(write_all(sink, res, batch))
    assert [(m.body["id"], "out of range for type integer" in reason) for m, reason in failed] == [(17, True)]
    assert sink.typed_batches == 0  # the typed statement failed; the halves went as text
    got = _typed_rows(table)
    assert len(got) == 49 and 17 not in got and got[18]["doc"] == "[18]"


def test_typed_path_writes_what_the_text_path_writes_for_real_and_single_bad_rows(table: str, app: str) -> None:
    # real (float4) columns go as text: a float8 rounded again to float4 can differ from the text's
    # one rounding; and a one-row batch that fails typed is written (or refused) as text too
    sink, res = _typed_sink(table, app)
    tricky = 1 + 2**-24
    first = [{"id": 1, "n": 1, "x": 1.0, "r": tricky, "ok": True, "name": "a", "doc": None}]
    single_bad = [{"id": 2, "n": 2**40, "x": 1.0, "r": 1.0, "ok": True, "name": "b", "doc": None}]
    out = run(write_all(sink, res, first, single_bad))
    assert out[0] == [] and sink.typed_batches == 1
    (want,) = run(sql(f"SELECT '{tricky!r}'::real AS r"))
    assert _typed_rows(table)[1]["r"] == want["r"]
    ((msg, reason),) = out[1]
    assert msg.body["id"] == 2 and 'value "1099511627776" is out of range for type integer' in reason
