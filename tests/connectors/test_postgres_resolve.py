"""postgres_sink modes merge and version_vector against the real server: random interleavings,
duplicates and replays from several writers converge to a reference model; version-vector
conflicts are found exactly; bad vectors go to `errors`; conflicts reach a port in a graph."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from tests.connectors.postgres_harness import DSN, sql
from tests.connectors.resolve_models import WRITERS, crdt_body, crdt_op, crdt_reference, vv_reference

pytestmark = pytest.mark.services
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Live:
    """One started sink on a loop of its own, kept across hypothesis examples (keys differ per example)."""

    def __init__(self, **config: Any):
        self.table = f"resolve_{uuid.uuid4().hex[:10]}"
        self.loop = asyncio.new_event_loop()
        cfg = PostgresSinkConfig.model_validate({"connection": "pg", "table": self.table, "key": ["id"],
                                                 "create_table": True, **config})
        self.res = Resources()
        self.sink = PostgresSink("store", cfg, NodeContext("store", {"pg": {"dsn": DSN}}, {}, self.res))
        try:
            self.run(self.sink.start())
        except BaseException:
            self.close()
            raise
        self.next_id = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def key(self) -> int:
        self.next_id += 1
        return self.next_id

    def write(self, bodies: list[dict], batch: int) -> list[tuple[Msg, str]]:
        failed = []
        for i in range(0, len(bodies), batch):
            failed += self.run(self.sink.write([Msg(b) for b in bodies[i:i + batch]]))
        return failed

    def rows(self, query: str) -> list[Any]:
        return self.run(sql(query.replace("{t}", f'"{self.table}"')))

    def close(self) -> None:
        self.run(self.sink.stop())
        self.run(self.res.close())
        self.run(sql(f'DROP TABLE IF EXISTS "{self.table}", "{self.table}_conflicts"'))
        self.loop.close()


@pytest.fixture
def crdt() -> Iterator[Live]:
    live = Live(mode="merge", field_versions="_v", crdt={"views": "gcounter", "balance": "pncounter",
                                                          "tags": "orset", "hi": "max", "lo": "min"},
                columns={"id": {"expr": "msg.id", "type": "bigint"}, "doc": {"expr": "msg.doc", "type": "jsonb"},
                         "views": {"expr": "msg.views", "type": "jsonb"},
                         "balance": {"expr": "msg.balance", "type": "jsonb"},
                         "tags": {"expr": "msg.tags", "type": "jsonb"},
                         "hi": {"expr": "msg.hi", "type": "bigint"}, "lo": {"expr": "msg.lo", "type": "bigint"}})
    yield live
    live.close()


@SETTINGS
@given(ops=st.lists(crdt_op, min_size=1, max_size=12), data=st.data())
def test_crdt_and_field_versions_converge_under_any_order_duplicates_and_replays(crdt: Live, ops, data) -> None:
    key = crdt.key()
    # each writer's steps are its own history: a writer's step n is unique (a replay repeats it whole)
    history = {(w, step): crdt_body(key, w, step, f, v, e, r) for w, step, f, v, e, r in ops}
    bodies = list(history.values())
    replays = data.draw(st.lists(st.sampled_from(bodies), max_size=6))
    order = data.draw(st.permutations(bodies + replays))
    batch = data.draw(st.integers(1, 5))
    assert crdt.write(order, batch) == []
    row = crdt.rows(f"SELECT doc, streamdag_counter_v1(views) AS views, streamdag_counter_v1(balance) AS balance, "
                    f"streamdag_orset_v1(tags) AS tags, hi, lo FROM {{t}} WHERE id = {key}")[0]
    want = crdt_reference(bodies)
    doc = json.loads(row["doc"])
    assert {k: v for k, v in doc.items() if k != "_v"} == want["doc"]
    assert (row["views"], row["balance"], json.loads(row["tags"]), row["hi"], row["lo"]) == (
        want["views"], want["balance"], want["tags"], want["hi"], want["lo"])


@pytest.fixture
def vector() -> Iterator[Live]:
    live = Live(mode="version_vector", version="vv", conflict="port",
                columns={"id": {"expr": "msg.id", "type": "bigint"}, "vv": {"expr": "msg.vv", "type": "jsonb"},
                         "val": {"expr": "msg.val", "type": "text"}})
    yield live
    live.close()


vv = st.dictionaries(st.sampled_from(WRITERS), st.integers(0, 3), max_size=3)


@SETTINGS
@given(vectors=st.lists(vv, min_size=1, max_size=10), data=st.data())
def test_version_vector_conflicts_are_detected_exactly(vector: Live, vectors, data) -> None:
    key = vector.key()
    bodies = [{"id": key, "vv": v, "val": f"v{i}"} for i, v in enumerate(vectors)]
    replays = data.draw(st.lists(st.sampled_from(bodies), max_size=4))
    sequence = bodies + replays
    batch = data.draw(st.integers(1, 4))
    before = vector.sink.resolver.conflicts if vector.sink.resolver else 0
    routed: list[Any] = []
    for i in range(0, len(sequence), batch):
        assert vector.run(vector.sink.write([Msg(b) for b in sequence[i:i + batch]])) == []
        routed += vector.sink.routed().get("conflicts", [])
    stored, conflicts = vv_reference(sequence)
    assert stored is not None
    row = vector.rows(f"SELECT vv, val FROM {{t}} WHERE id = {key}")[0]
    assert (json.loads(row["vv"]), row["val"]) == (stored["vv"], stored["val"])
    assert [m.body for m, _ in routed] == [sequence[i] for i in conflicts]
    assert all(c["old"]["id"] == key and c["new"] == m.body for m, c in routed)
    assert vector.sink.resolver is not None and vector.sink.resolver.conflicts - before == len(conflicts)
    assert vector.sink.metrics()["conflicts"] == vector.sink.resolver.conflicts


def test_malformed_vectors_go_to_errors_with_the_reason_and_nothing_is_written(vector: Live) -> None:
    key = vector.key()
    bad = [{"id": key, "vv": [1, 2], "val": "a"}, {"id": key, "vv": {"w1": -1}, "val": "b"},
           {"id": key, "vv": {"w1": "3"}, "val": "c"}, {"id": key, "vv": {"": 1}, "val": "d"}, {"id": key, "val": "e"}]
    failed = vector.write([*bad, {"id": key + 1000, "vv": {"w1": 1}, "val": "ok"}], batch=10)
    reasons = [r for _, r in failed]
    assert [m.body["val"] for m, _ in failed] == ["a", "b", "c", "d", "e"]
    assert "expected a map" in reasons[0] and "non-negative integer" in reasons[1] and "'3'" in reasons[2]
    assert "non-empty string" in reasons[3] and reasons[4].startswith("version vector:")
    assert vector.rows(f"SELECT count(*) AS n FROM {{t}} WHERE id = {key}")[0]["n"] == 0
    assert vector.rows(f"SELECT val FROM {{t}} WHERE id = {key + 1000}")[0]["val"] == "ok"


def test_conflicts_table_holds_both_versions(tmp_path: Path) -> None:
    live = Live(mode="version_vector", version="vv", conflict="table",
                columns={"id": {"expr": "msg.id", "type": "bigint"}, "vv": {"expr": "msg.vv", "type": "jsonb"},
                         "val": {"expr": "msg.val", "type": "text"}})
    try:
        live.write([{"id": 1, "vv": {"w1": 1}, "val": "a"}, {"id": 1, "vv": {"w2": 1}, "val": "b"}], batch=2)
        assert live.sink.routed() == {}
        rows = live.run(sql(f'SELECT key, old, new FROM "{live.table}_conflicts"'))
        assert [(json.loads(r["key"]), json.loads(r["old"])["val"], json.loads(r["new"])["val"]) for r in rows] == [
            ({"id": 1}, "a", "b")]
        assert live.rows("SELECT val FROM {t}")[0]["val"] == "a"
    finally:
        live.close()


def test_conflicts_port_in_a_graph_reaches_its_sink_and_acks(write_graph, run, tmp_path: Path) -> None:
    table = f"resolve_g_{uuid.uuid4().hex[:10]}"
    path = write_graph(f"""
        version: 1
        name: vv_conflicts
        connections:
          pg: {{type: postgres, dsn: "{DSN}"}}
        nodes:
          writes:
            type: generate
            config: {{count: 40, batch: 10, template: '{{"id": msg.i % 10, "vv": msg.i < 10 ? {{"a": 1}} : (msg.i < 20 ? {{"b": 1}} : {{"a": 2, "b": 2}}), "val": msg.i}}'}}
          store:
            type: postgres_sink
            inputs: [writes]
            config:
              connection: pg
              table: {table}
              mode: version_vector
              key: [id]
              version: vv
              columns: {{id: {{expr: msg.id, type: bigint}}, vv: {{expr: msg.vv, type: jsonb}}, val: {{expr: msg.val, type: bigint}}}}
              create_table: true
          review:
            type: file_sink
            inputs: [store.conflicts]
            config: {{path: conflicts.ndjson}}
    """)
    try:
        report = run(path)
        assert report.error is None and report.balanced
        conflicts = [json.loads(x) for x in (tmp_path / "conflicts.ndjson").read_text().splitlines()]
        # i in 10..19 ({"b": 1}) is concurrent with the stored {"a": 1}; i in 20..29 dominates both;
        # i in 30..39 carries an equal vector: dropped
        assert sorted(c["new"]["val"] for c in conflicts) == list(range(10, 20))
        assert all(c["old"]["vv"] == {"a": 1} for c in conflicts)
        rows = asyncio.run(sql(f'SELECT id, val FROM "{table}" ORDER BY id'))
        assert [(r["id"], r["val"]) for r in rows] == [(i, 20 + i) for i in range(10)]
    finally:
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}"'))
        asyncio.run(sql(f'DROP FUNCTION IF EXISTS "{table}_fwd"()'))


def test_concurrent_graph_processes_converge_in_postgres_and_redis(tmp_path: Path) -> None:
    """Three `streamdag run` processes write the same keys at once: every writer's contribution lands
    (no lost update) in the G-counter column and in the merged Redis documents."""
    import os
    import subprocess
    import sys

    import redis

    table = f"resolve_c_{uuid.uuid4().hex[:10]}"
    prefix = f"resolve-c-{uuid.uuid4().hex[:8]}:"
    asyncio.run(sql(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, views jsonb, doc jsonb)'))
    graph = tmp_path / "graph.yaml"
    graph.write_text(f"""
version: 1
name: concurrent_${{WRITER}}
connections:
  pg: {{type: postgres, dsn: "{DSN}"}}
  cache: {{type: redis, url: "redis://127.0.0.1:6379/0"}}
nodes:
  writes:
    type: generate
    config: {{count: 600, batch: 20, template: '{{"id": msg.i % 5, "views": {{"${{WRITER}}": msg.i}}, "doc": {{"by": {{"${{WRITER}}": msg.i}}}}}}'}}
  store:
    type: postgres_sink
    inputs: [writes]
    config: {{connection: pg, table: {table}, mode: merge, key: [id], crdt: {{views: gcounter}},
              columns: {{id: msg.id, views: msg.views, doc: msg.doc}}}}
  cache:
    type: redis_cache_sink
    inputs: [writes]
    config: {{connection: cache, key: '"{prefix}" + string(msg.id)', strategy: merge, crdt: {{views: gcounter}},
              value: '{{"by": msg.doc.by, "views": msg.views}}'}}
""")
    exe = Path(sys.executable).with_name("streamdag")
    try:
        procs = [subprocess.Popen([str(exe), "run", str(graph)], env={**os.environ, "WRITER": w},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for w in WRITERS]
        outs = [p.communicate(timeout=60)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        rows = asyncio.run(sql(f'SELECT id, views, streamdag_counter_v1(views) AS n, doc FROM "{table}" ORDER BY id'))
        assert [json.loads(r["views"]) for r in rows] == [{w: 595 + k for w in WRITERS} for k in range(5)]
        assert [r["n"] for r in rows] == [3 * (595 + k) for k in range(5)]
        assert [json.loads(r["doc"]) for r in rows] == [{"by": {w: 595 + k for w in WRITERS}} for k in range(5)]
        r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            assert [json.loads(r.get(f"{prefix}{k}")) for k in range(5)] == [
                {"by": {w: 595 + k for w in WRITERS}, "views": {w: 595 + k for w in WRITERS}} for k in range(5)]
        finally:
            r.delete(*[f"{prefix}{k}" for k in range(5)])
            r.close()
    finally:
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}"'))
        asyncio.run(sql(f'DROP FUNCTION IF EXISTS "{table}_fwd"()'))


@pytest.fixture
def resolved() -> Iterator[Live]:
    live = Live(mode="version_vector", version="vv", conflict="resolver",
                resolver="msg.new.val > msg.old.val ? msg.new : (msg.new.val == 13 ? msg.old.nope : msg.old)",
                columns={"id": {"expr": "msg.id", "type": "bigint"}, "vv": {"expr": "msg.vv", "type": "jsonb"},
                         "val": {"expr": "msg.val", "type": "bigint"}})
    yield live
    live.close()


@SETTINGS
@given(vectors=st.lists(vv, min_size=1, max_size=8), data=st.data())
def test_resolver_settles_conflicts_like_the_reference(resolved: Live, vectors, data) -> None:
    key = resolved.key()
    bodies = [{"id": key, "vv": v, "val": data.draw(st.integers(0, 9))} for v in vectors]
    sequence = bodies + data.draw(st.lists(st.sampled_from(bodies), max_size=3))
    failed = resolved.write(sequence, data.draw(st.integers(1, 4)))
    stored, _ = vv_reference(sequence, lambda old, new: new if new["val"] > old["val"] else old)
    assert failed == [] and resolved.sink.routed() == {}
    row = resolved.rows(f"SELECT vv, val FROM {{t}} WHERE id = {key}")[0]
    assert stored is not None and (json.loads(row["vv"]), row["val"]) == (stored["vv"], stored["val"])


def test_a_failing_resolver_sends_the_message_to_errors_and_leaves_the_row(resolved: Live) -> None:
    key = resolved.key()
    failed = resolved.write([{"id": key, "vv": {"w1": 1}, "val": 20}, {"id": key, "vv": {"w2": 1}, "val": 13},
                             {"id": key, "vv": {"w3": 1}, "val": 30}], batch=3)
    assert [(m.body["val"], r.split(":")[0]) for m, r in failed] == [(13, "resolver")] and "nope" in failed[0][1]
    row = resolved.rows(f"SELECT vv, val FROM {{t}} WHERE id = {key}")[0]
    assert (json.loads(row["vv"]), row["val"]) == ({"w1": 1, "w3": 1}, 30)
    with pytest.raises(ValueError, match="`resolver`"):
        PostgresSinkConfig.model_validate({"connection": "pg", "table": "t", "key": ["id"], "mode": "version_vector",
                                           "version": "vv", "conflict": "resolver",
                                           "columns": {"id": "msg.id", "vv": "msg.vv"}})


def test_start_refuses_a_crdt_counter_that_is_not_jsonb_and_a_vector_that_is_not_json() -> None:
    for config, message in (
        ({"mode": "merge", "crdt": {"n": "gcounter"}, "columns": {"id": {"expr": "msg.id", "type": "bigint"},
                                                                  "n": {"expr": "msg.n", "type": "bigint"}}},
         "crdt column.s. n must be jsonb"),
        ({"mode": "version_vector", "version": "vv", "columns": {"id": {"expr": "msg.id", "type": "bigint"},
                                                                  "vv": {"expr": "msg.vv", "type": "text"}}},
         "'vv' must be jsonb, not text"),
    ):
        with pytest.raises(RuntimeError, match=message):
            Live(**config)


def test_concurrent_writers_of_one_version_chain_never_go_back() -> None:
    """Three sinks with pools of their own write the same chain of vectors ({"c": 1} … {"c": 30} on ten
    keys), each in its own shuffled order, at once: a decision made outside the row lock would let a
    stale reader store an older vector; here every key ends at the top of the chain, no conflict."""
    import random

    table = f"resolve_chain_{uuid.uuid4().hex[:8]}"
    cfg = {"connection": "pg", "table": table, "key": ["id"], "create_table": True, "mode": "version_vector",
           "version": "vv", "columns": {"id": {"expr": "msg.id", "type": "bigint"},
                                        "vv": {"expr": "msg.vv", "type": "jsonb"},
                                        "val": {"expr": "msg.val", "type": "bigint"}}}
    chain = [{"id": k, "vv": {"c": n}, "val": n} for k in range(10) for n in range(1, 31)]

    async def writer(seed: int) -> PostgresSink:
        res = Resources()
        sink = PostgresSink(f"w{seed}", PostgresSinkConfig.model_validate(cfg),
                            NodeContext(f"w{seed}", {"pg": {"dsn": DSN}}, {}, res))
        await sink.start()
        order = chain[:]
        random.Random(seed).shuffle(order)
        try:
            for i in range(0, len(order), 5):
                assert await sink.write([Msg(b) for b in order[i:i + 5]]) == []
        finally:
            await sink.stop()
            await res.close()
        return sink

    async def main() -> list[PostgresSink]:
        first = await writer(0)  # creates the table; then three at once
        await sql(f'UPDATE "{table}" SET vv = \'{{"c": 0}}\', val = 0')
        # the witness: an update that moves the chain back fails (and would reach `errors`)
        await sql(f'CREATE FUNCTION "{table}_fwd"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
                  "IF (NEW.vv->>'c')::int < (OLD.vv->>'c')::int THEN RAISE EXCEPTION 'went back from % to %', "
                  "OLD.vv, NEW.vv; END IF; RETURN NEW; END $$")
        await sql(f'CREATE TRIGGER fwd BEFORE UPDATE ON "{table}" FOR EACH ROW EXECUTE FUNCTION "{table}_fwd"()')
        return [first, *await asyncio.gather(*(writer(s) for s in (1, 2, 3)))]

    try:
        sinks = asyncio.run(main())
        rows = asyncio.run(sql(f'SELECT id, vv, val FROM "{table}" ORDER BY id'))
        assert [(r["id"], json.loads(r["vv"]), r["val"]) for r in rows] == [(k, {"c": 30}, 30) for k in range(10)]
        assert [s.metrics()["conflicts"] for s in sinks] == [0, 0, 0, 0]
        assert sinks[0].metrics()["dropped"] > 0 and sum(s.metrics()["dropped"] for s in sinks[1:]) > 0
    finally:
        asyncio.run(sql(f'DROP TABLE IF EXISTS "{table}"'))
        asyncio.run(sql(f'DROP FUNCTION IF EXISTS "{table}_fwd"()'))
