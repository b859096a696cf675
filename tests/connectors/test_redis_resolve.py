"""redis_cache_sink strategies merge and version_vector against the real Redis: shuffled, duplicated
and replayed writes from several writers converge to the reference model; concurrent vectors are
reported exactly; bad vectors go to `errors`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.message import Msg
from engine.runtime.context import Resources
from operators.connectors.crdt import crdt_value
from operators.connectors.redis.cache import RedisCacheSink, RedisCacheSinkConfig
from tests.connectors.redis_harness import REDIS_URL, make_ctx
from tests.connectors.resolve_models import (
    WRITERS,
    crdt_body,
    crdt_op,
    crdt_reference,
    field_lww_reference,
    vv_reference,
)

pytestmark = pytest.mark.services
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Live:
    """One started sink on its own loop, kept across hypothesis examples (keys differ per example)."""

    def __init__(self, **config: Any):
        self.prefix = f"resolve-{uuid.uuid4().hex[:10]}:"
        self.loop = asyncio.new_event_loop()
        self.res = Resources()
        cfg = RedisCacheSinkConfig(connection="cache", key=f'"{self.prefix}" + string(msg.id)', **config)
        self.sink = RedisCacheSink("cache", cfg, make_ctx("cache", self.res))
        self.loop.run_until_complete(self.sink.start())
        self.r = redis.Redis.from_url(REDIS_URL)
        self.n = 0

    def write(self, bodies: list[dict], batch: int) -> tuple[list[tuple[Msg, str]], list[tuple[Msg, Any]]]:
        failed: list[tuple[Msg, str]] = []
        routed: list[tuple[Msg, Any]] = []
        for i in range(0, len(bodies), batch):
            failed += self.loop.run_until_complete(self.sink.write([Msg(b) for b in bodies[i:i + batch]])) or []
            routed += self.sink.routed().get("conflicts", [])
        return failed, routed

    def get(self, key: int, suffix: str = "") -> Any:
        raw = self.r.get(f"{self.prefix}{key}{suffix}")
        return None if raw is None else orjson.loads(raw)

    def close(self) -> None:
        self.loop.run_until_complete(self.sink.stop())
        self.loop.run_until_complete(self.res.close())
        self.loop.close()
        keys = list(self.r.scan_iter(match=self.prefix + "*"))
        if keys:
            self.r.delete(*keys)
        self.r.close()


@pytest.fixture
def merge() -> Iterator[Live]:
    live = Live(strategy="merge", field_versions="_v", ttl="10m")
    yield live
    live.close()


@pytest.fixture
def vector() -> Iterator[Live]:
    live = Live(strategy="version_vector", vector="msg.vv")
    yield live
    live.close()


op = st.tuples(st.sampled_from(WRITERS), st.integers(1, 6), st.sampled_from("abc"), st.integers(0, 9),
               st.sampled_from(["x", "y"]))


@SETTINGS
@given(ops=st.lists(op, min_size=1, max_size=12), data=st.data())
def test_merge_with_field_versions_converges(merge: Live, ops, data) -> None:
    merge.n += 1
    key = merge.n
    history = {(w, s): {"id": key, f: v, "nested": {e: s}, "_v": {f: s * 10 + WRITERS.index(w)}}
               for w, s, f, v, e in ops}
    bodies = list(history.values())
    order = data.draw(st.permutations(bodies + data.draw(st.lists(st.sampled_from(bodies), max_size=5))))
    failed, routed = merge.write(order, data.draw(st.integers(1, 5)))
    assert failed == [] and routed == []
    got = merge.get(key)
    want = field_lww_reference([{k: v for k, v in b.items() if k not in ("id", "nested")} for b in bodies], "_v")
    assert {k: v for k, v in got.items() if k not in ("id", "nested", "_v")} == want
    # fields without versions deep-merge: every nested key any write set is there
    assert set(got["nested"]) == {e for b in bodies for e in b["nested"]}
    assert got["_v"] == {f: max(b["_v"][f] for b in bodies if f in b["_v"]) for f in want}
    assert 0 < merge.r.pttl(f"{merge.prefix}{key}") <= 600_000


CRDT = {"views": "gcounter", "balance": "pncounter", "tags": "orset", "hi": "max", "lo": "min"}


@pytest.fixture
def crdt() -> Iterator[Live]:
    live = Live(strategy="merge", field_versions="_v", crdt=CRDT)
    yield live
    live.close()


@SETTINGS
@given(ops=st.lists(crdt_op, min_size=1, max_size=12), data=st.data())
def test_crdt_fields_converge_like_postgres_reference(crdt: Live, ops, data) -> None:
    crdt.n += 1
    key = crdt.n
    # the same writers' histories as the postgres test, the document's fields flattened into one JSON value
    history = {(w, step): crdt_body(key, w, step, f, v, e, r) for w, step, f, v, e, r in ops}
    bodies = list(history.values())
    flat = [{"id": key, **b["doc"], **{f: b[f] for f in CRDT}} for b in bodies]
    order = data.draw(st.permutations(flat + data.draw(st.lists(st.sampled_from(flat), max_size=6))))
    failed, routed = crdt.write(order, data.draw(st.integers(1, 5)))
    assert failed == [] and routed == []
    got = crdt.get(key)
    want = crdt_reference(bodies)
    assert {k: v for k, v in got.items() if k not in ("id", "_v", *CRDT)} == want["doc"]
    assert {f: crdt_value(kind, got[f]) for f, kind in CRDT.items()} == {f: want[f] for f in CRDT}


def test_malformed_crdt_states_go_to_errors_and_nothing_is_written(crdt: Live) -> None:
    crdt.write([{"id": 1, "views": {"w1": 2}, "hi": 5}], batch=1)
    failed, _ = crdt.write([{"id": 1, "views": {"w1": -1}}, {"id": 1, "views": [3]},
                            {"id": 1, "balance": {"p": {"w1": 1}, "x": {}}}, {"id": 1, "tags": {"a": {"e": ["t"]}}},
                            {"id": 1, "hi": [1]}, {"id": 1, "views": {"w2": 1}, "hi": 9}], batch=6)
    assert [r.split(":")[0] for _, r in failed] == ["views", "views", "balance", "tags", "hi"]
    assert "non-negative" in failed[0][1] and "register" in failed[4][1]
    assert crdt.get(1) == {"id": 1, "views": {"w1": 2, "w2": 1}, "hi": 9}
    with pytest.raises(ValueError, match="`crdt`"):
        RedisCacheSinkConfig(connection="c", key="msg.id", crdt={"n": "gcounter"})


vv = st.dictionaries(st.sampled_from(WRITERS), st.integers(0, 3), max_size=3)


@SETTINGS
@given(vectors=st.lists(vv, min_size=1, max_size=10), data=st.data())
def test_version_vector_conflicts_are_detected_exactly(vector: Live, vectors, data) -> None:
    vector.n += 1
    key = vector.n
    bodies = [{"id": key, "vv": v, "val": f"v{i}"} for i, v in enumerate(vectors)]
    sequence = bodies + data.draw(st.lists(st.sampled_from(bodies), max_size=4))
    failed, routed = vector.write(sequence, data.draw(st.integers(1, 4)))
    stored, conflicts = vv_reference(sequence)
    assert failed == [] and stored is not None
    assert vector.get(key) == stored and vector.get(key, ":version") == stored["vv"]
    assert [m.body for m, _ in routed] == [sequence[i] for i in conflicts]
    assert all(c["key"] == f"{vector.prefix}{key}" and c["new"] == m.body for m, c in routed)


def test_malformed_vectors_go_to_errors_and_nothing_is_written(vector: Live) -> None:
    failed, _ = vector.write([{"id": 1, "vv": [1], "val": "a"}, {"id": 1, "vv": {"w1": 1.5}, "val": "b"},
                              {"id": 1, "val": "c"}, {"id": 2, "vv": {"w1": 1}, "val": "ok"}], batch=4)
    assert [(m.body["val"], r.split(":")[0]) for m, r in failed] == [("a", "version vector"), ("b", "version vector"),
                                                                     ("c", "version vector")]
    assert "non-negative integer" in failed[1][1]
    assert vector.get(1) is None and vector.get(2)["val"] == "ok"


def test_strategy_rules_are_checked_offline() -> None:
    with pytest.raises(ValueError, match="needs mode value"):
        RedisCacheSinkConfig(connection="c", key="msg.id", strategy="merge", mode="hash")
    with pytest.raises(ValueError, match="`vector`"):
        RedisCacheSinkConfig(connection="c", key="msg.id", strategy="version_vector")
    with pytest.raises(ValueError, match="`conflict` is used by strategy version_vector"):
        RedisCacheSinkConfig(connection="c", key="msg.id", conflict="stream")
    with pytest.raises(ValueError, match="`resolver` is needed by"):
        RedisCacheSinkConfig(connection="c", key="msg.id", strategy="version_vector", vector="msg.vv",
                             conflict="resolver")
    with pytest.raises(ValueError, match="`conflicts_stream` is used by conflict: stream"):
        RedisCacheSinkConfig(connection="c", key="msg.id", strategy="version_vector", vector="msg.vv",
                             conflicts_stream="s")
    with pytest.raises(ValueError, match="`delete` works with strategy replace"):
        RedisCacheSinkConfig(connection="c", key="msg.id", strategy="merge", crdt={"n": "gcounter"},
                             delete='msg.op == "delete"')
    ports = RedisCacheSink.output_ports
    assert ports(RedisCacheSinkConfig(connection="c", key="msg.id", strategy="version_vector", vector="msg.vv",
                                      conflict="resolver", resolver="msg.new")) == ()
    assert ports(RedisCacheSinkConfig(connection="c", key="msg.id", strategy="version_vector",
                                      vector="msg.vv")) == ("conflicts",)


RESOLVER = "msg.new.val > msg.old.val ? msg.new : (msg.new.val == 13 ? msg.old.nope : msg.old)"


@pytest.fixture
def resolved() -> Iterator[Live]:
    live = Live(strategy="version_vector", vector="msg.vv", conflict="resolver", resolver=RESOLVER)
    yield live
    live.close()


@SETTINGS
@given(vectors=st.lists(vv, min_size=1, max_size=8), data=st.data())
def test_resolver_settles_conflicts_like_the_reference(resolved: Live, vectors, data) -> None:
    resolved.n += 1
    key = resolved.n
    bodies = [{"id": key, "vv": v, "val": data.draw(st.integers(0, 9))} for v in vectors]
    sequence = bodies + data.draw(st.lists(st.sampled_from(bodies), max_size=3))
    failed, routed = resolved.write(sequence, data.draw(st.integers(1, 4)))
    stored, _ = vv_reference(sequence, lambda old, new: new if new["val"] > old["val"] else old)
    assert failed == [] and routed == [] and stored is not None
    assert resolved.get(key)["val"] == stored["val"] and resolved.get(key, ":version") == stored["vv"]


def test_a_failing_resolver_sends_the_message_to_errors_and_leaves_the_key(resolved: Live) -> None:
    failed, _ = resolved.write([{"id": 1, "vv": {"w1": 1}, "val": 20}, {"id": 1, "vv": {"w2": 1}, "val": 13},
                                {"id": 1, "vv": {"w3": 1}, "val": 30}], batch=3)
    assert [(m.body["val"], r.split(":")[0]) for m, r in failed] == [(13, "resolver")] and "nope" in failed[0][1]
    assert resolved.get(1)["val"] == 30 and resolved.get(1, ":version") == {"w1": 1, "w3": 1}
    assert resolved.sink.metrics()["resolved"] == 1


def _race(prefix: str, writers: int, attempts: int) -> tuple[list[RedisCacheSink], list[list[tuple[Msg, str]]]]:
    """`writers` sinks (each its own client) each write one vector concurrent with all the others to
    one key, at once; the resolver keeps the union of what both sides saw."""

    async def main() -> tuple[list[RedisCacheSink], list[Any]]:
        sinks = []
        for i in range(writers):
            cfg = RedisCacheSinkConfig(connection="cache", key=f'"{prefix}k"', strategy="version_vector",
                                       vector="msg.vv", conflict="resolver", resolver_attempts=attempts,
                                       resolver='{"seen": msg.old.seen + msg.new.seen}')
            sinks.append(RedisCacheSink(f"s{i}", cfg, make_ctx(f"s{i}", Resources())))
        try:
            for s in sinks:
                await s.start()
            failed = await asyncio.gather(*(s.write([Msg({"vv": {f"w{i}": 1}, "seen": [f"w{i}"]})])
                                            for i, s in enumerate(sinks)))
        finally:
            for s in sinks:
                await s.stop()
                await s.ctx.resources.close()
        return sinks, [f or [] for f in failed]

    return asyncio.run(main())


def test_concurrent_resolvers_lose_no_update_and_give_up_with_a_clear_error() -> None:
    prefix = f"race-{uuid.uuid4().hex[:8]}:"
    r = redis.Redis.from_url(REDIS_URL)
    try:
        sinks, failed = _race(prefix, 8, attempts=8)
        assert failed == [[]] * 8
        assert sorted(orjson.loads(r.get(prefix + "k"))["seen"]) == [f"w{i}" for i in range(8)]
        assert orjson.loads(r.get(prefix + "k:version")) == {f"w{i}": 1 for i in range(8)}
        # they all read the first write at once: commits found the key changed and resolved again
        assert sum(s.metrics()["resolve_retries"] for s in sinks) > 0
        assert sum(s.metrics()["resolved"] for s in sinks) == 7
        r.delete(prefix + "k", prefix + "k:version")
        sinks, failed = _race(prefix, 8, attempts=1)
        reasons = [reason for f in failed for _, reason in f]
        assert reasons and all("changed under 1 attempt(s) in a row" in x for x in reasons)
        gave_up = {m.body["seen"][0] for f in failed for m, _ in f}
        stored = orjson.loads(r.get(prefix + "k"))["seen"]
        assert sorted(stored) == sorted({f"w{i}" for i in range(8)} - gave_up)  # nothing half-written
    finally:
        r.delete(prefix + "k", prefix + "k:version")
        r.close()


def test_conflicts_stream_holds_both_versions() -> None:
    live = Live(strategy="version_vector", vector="msg.vv", conflict="stream",
                conflicts_stream=f"resolve-{uuid.uuid4().hex[:8]}:conflicts", conflicts_maxlen=1000)
    stream = live.sink.config.conflicts_stream
    try:
        failed, routed = live.write([{"id": 1, "vv": {"w1": 1}, "val": "a"}, {"id": 1, "vv": {"w2": 1}, "val": "b"},
                                     {"id": 1, "vv": {"w2": 1}, "val": "b"}, {"id": 1, "vv": {"w1": 2}, "val": "c"}],
                                    batch=4)
        assert failed == [] and routed == [] and RedisCacheSink.output_ports(live.sink.config) == ()
        entries = [{k.decode(): v.decode() for k, v in e.items()} for _, e in live.r.xrange(stream)]
        assert [(e["key"], orjson.loads(e["old"])["val"], orjson.loads(e["old_vector"]), orjson.loads(e["new"])["val"],
                 orjson.loads(e["new_vector"]), e["node"]) for e in entries] == [
            (f"{live.prefix}1", "a", {"w1": 1}, "b", {"w2": 1}, "cache"),
            (f"{live.prefix}1", "a", {"w1": 1}, "b", {"w2": 1}, "cache")]
        assert live.get(1)["val"] == "c" and live.sink.metrics()["conflicts"] == 2
    finally:
        live.r.delete(stream)
        live.close()
