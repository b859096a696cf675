"""postgres_sink's typed path: int, float and bool columns travel as typed arrays when every value of
the batch has its column's Python type; anything else takes the text path, with the same results and
the database's own message for a bad row."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.connectors.postgres_harness import sql
from tests.connectors.test_postgres_sink import app, make, run, table, write_all  # noqa: F401 - fixtures

pytestmark = pytest.mark.services

DDL = ('CREATE TABLE "{t}" (id bigint PRIMARY KEY, n integer, x double precision, r real, ok boolean, '
       "name text, doc jsonb)")
COLUMNS = {"id": "msg.id", "n": "msg.n", "x": "msg.x", "r": "msg.r", "ok": "msg.ok", "name": "msg.name",
           "doc": "msg.doc"}


def _sink(table: str, app: str) -> Any:
    run(sql(DDL.format(t=table)))
    return make(table, app, mode="upsert", key=["id"], columns=COLUMNS, create_table=False)


def _rows(table: str) -> dict[int, dict[str, Any]]:
    return {r["id"]: dict(r) for r in run(sql(f'SELECT id, n, x, r, ok, name, doc::text AS doc FROM "{table}"'))}


def test_typed_arrays_carry_ints_floats_bools_nulls_and_special_floats(table: str, app: str) -> None:
    sink, res = _sink(table, app)
    batch = [{"id": i, "n": i * 3, "x": i / 7, "r": 0.1 * i, "ok": i % 2 == 0, "name": f"n{i}", "doc": {"i": i}}
             for i in range(200)]
    batch[5].update(x=math.inf, r=None, ok=None, name=None, n=None)
    batch[6].update(x=-math.inf)
    batch[7].update(x=math.nan, n=2**31 - 1)
    batch[8].update(x=3)  # an int in a double precision column
    (failed,) = run(write_all(sink, res, batch))
    assert failed == [] and sink.typed_batches == 1
    got = _rows(table)
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
    sink, res = _sink(table, app)
    batch = [{"id": i, "n": i, "x": 1.5, "r": 2.5, "ok": True, "name": "a", "doc": None} for i in range(20)]
    batch[3].update(bad)
    (failed,) = run(write_all(sink, res, batch))
    assert sink.typed_batches == 0
    got = _rows(table)
    if message is None:
        assert failed == [] and got[3]["ok"] is True and len(got) == 20
    else:
        assert [(m.body["id"] if "id" not in bad else "big", message in reason) for m, reason in failed] == [
            (3 if "id" not in bad else "big", True)]
        assert len(got) == 19


def test_a_row_error_on_the_typed_path_isolates_the_row_with_the_database_message(table: str, app: str) -> None:
    sink, res = _sink(table, app)
    batch = [{"id": i, "n": i, "x": 1.0, "r": 1.0, "ok": False, "name": "a", "doc": [i]} for i in range(50)]
    batch[17]["n"] = 2**40  # fits int64 (typed array), not the integer column: the cast fails in the server
    (failed,) = run(write_all(sink, res, batch))
    assert [(m.body["id"], "out of range for type integer" in reason) for m, reason in failed] == [(17, True)]
    assert sink.typed_batches == 0  # the typed statement failed; the halves went as text
    got = _rows(table)
    assert len(got) == 49 and 17 not in got and got[18]["doc"] == "[18]"
