"""The in-memory hot path: file_source, filter, map and the sinks' batched acknowledgement.

These nodes take fast paths (one comprehension per batch, map rewriting a message in place, one
`settle_many` per committed batch); each test here would fail if a fast path changed a result.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.message import (
    DEAD_LETTERED,
    DELIVERED,
    FILTERED,
    AckTracker,
    CompositeAck,
    Msg,
    _settle_runs,
    finish_all,
    own_ack,
)
from engine.runtime.memory import tune_malloc


def _lines(path: Path) -> list[Any]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _graph(write_graph: Any, nodes: dict[str, str], read_config: str = "") -> Path:
    """file_source `read` (in.ndjson) -> `nodes` -> ..., with every errors port to dead.ndjson."""
    extra = f", {read_config}" if read_config else ""
    lines = ["version: 1", "name: hot", "nodes:", f"  read: {{type: file_source, config: {{path: in.ndjson{extra}}}}}"]
    lines += [f"  {name}: {spec}" for name, spec in nodes.items()]
    errors = ", ".join(f"{n}.errors" for n in ["read", *nodes])
    lines.append(f"  dead: {{type: file_sink, inputs: [{errors}], config: {{path: dead.ndjson}}}}")
    return write_graph("\n".join(lines) + "\n")


def test_fan_out_into_two_maps_gives_each_branch_its_own_message(write_graph: Any, run: Any, tmp_path: Path) -> None:
    # map rewrites a message in place; an edge fan-out must hand the second branch copies, or the
    # second map would see the first map's output (or the reverse)
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(2500)))
    g = _graph(write_graph, {
        "double": "{type: map, inputs: [read], config: {expr: '{\"d\": msg.n * 2}'}}",
        "square": "{type: map, inputs: [read], config: {expr: '{\"s\": msg.n * msg.n}'}}",
        "a": "{type: file_sink, inputs: [double], config: {path: a.ndjson}}",
        "b": "{type: file_sink, inputs: [square], config: {path: b.ndjson}}",
    })
    report = run(g)
    assert report.error is None and report.balanced
    assert _lines(tmp_path / "a.ndjson") == [{"d": 2 * i} for i in range(2500)]
    assert _lines(tmp_path / "b.ndjson") == [{"s": i * i} for i in range(2500)]
    assert report.totals()["delivered"] == 2500


def test_map_and_filter_send_failures_to_errors_and_pass_the_rest(write_graph: Any, run: Any, tmp_path: Path) -> None:
    rows = [{"n": i, "x": i} if i % 10 else {"n": i} for i in range(100)]  # every 10th has no x
    rows[5] = {"n": 5, "x": "text"}  # the filter gives an error (string > int is no overload)
    rows[7] = {"n": 7, "x": 1, "flag": 1}  # kept: x > 0 is a bool
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    g = _graph(write_graph, {
        "some": "{type: filter, inputs: [read], config: {expr: 'msg.n < 50 ? msg.x > 3 : msg.n % 2 == 0'}}",
        "shape": "{type: map, inputs: [some], config: {expr: '{\"n\": msg.n, \"x\": msg.x}'}}",
        "out": "{type: file_sink, inputs: [shape], config: {path: out.ndjson}}",
    })
    report = run(g)
    assert report.error is None and report.balanced
    out = _lines(tmp_path / "out.ndjson")
    dead = _lines(tmp_path / "dead.ndjson")
    # n < 50: kept when x > 3 (no x: filter error; x text: filter error); n >= 50: even n kept,
    # and then every 10th (no x) fails in map
    want = [r for r in rows if r["n"] < 50 and isinstance(r.get("x"), int) and r["x"] > 3]
    want += [r for r in rows if r["n"] >= 50 and r["n"] % 2 == 0 and "x" in r]
    assert out == [{"n": r["n"], "x": r["x"]} for r in want]
    failed = sorted((d["node"], d["payload"]["n"]) for d in dead)
    assert failed == sorted([("some", n) for n in (0, 5, 10, 20, 30, 40)] + [("shape", n) for n in (50, 60, 70, 80, 90)])
    totals = report.totals()
    assert totals["delivered"] == len(want) and totals["dead_lettered"] == 11
    assert totals["filtered"] == 100 - len(want) - 11


def test_non_bool_filter_result_is_an_error_not_a_keep(write_graph: Any, run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'{"v": 1}\n{"v": 0}\n{"v": true}\n')
    g = _graph(write_graph, {
        "keep": "{type: filter, inputs: [read], config: {expr: 'msg.v'}}",
        "out": "{type: file_sink, inputs: [keep], config: {path: out.ndjson}}",
    })
    report = run(g)
    assert report.balanced
    assert _lines(tmp_path / "out.ndjson") == [{"v": True}]
    assert [d["error"] for d in _lines(tmp_path / "dead.ndjson")] == ["filter: expression gave int, not bool"] * 2


def test_file_source_bad_lines_go_to_errors_and_json_strings_are_messages(
        write_graph: Any, run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'"a string"\n{"ok": 1}\n{broken\n\n[1, 2]\r\n"x"')
    g = _graph(write_graph, {
        "out": "{type: file_sink, inputs: [read], config: {path: out.ndjson, with_meta: true}}",
    }, read_config="line_numbers: true")
    report = run(g)
    assert report.balanced
    out = _lines(tmp_path / "out.ndjson")
    assert [(o["body"], o["meta"]["line"]) for o in out] == [("a string", 1), ({"ok": 1}, 2), ([1, 2], 5), ("x", 6)]
    (dead,) = _lines(tmp_path / "dead.ndjson")
    assert dead["payload"] == "{broken" and dead["error"].startswith("line 3 column 2: invalid JSON")
    assert report.totals() == {"entered": 5, "delivered": 4, "filtered": 0, "dead_lettered": 1, "nacked": 0,
                               "in_flight": 0}


def test_file_source_shares_one_meta_per_batch_unless_line_numbers_are_asked_for(
        write_graph: Any, run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'{"n": 1}\n{"n": 2}\n')
    g = _graph(write_graph, {
        "out": "{type: file_sink, inputs: [read], config: {path: out.ndjson, with_meta: true}}",
    })
    assert run(g).balanced
    assert [o["meta"] for o in _lines(tmp_path / "out.ndjson")] == [{"source": "read", "path": "in.ndjson"}] * 2


def test_file_sink_writes_maps_with_int_keys_as_json_objects(write_graph: Any, run: Any, tmp_path: Path) -> None:
    (tmp_path / "in.ndjson").write_bytes(b'{"n": 1}\n{"n": 2}\n')
    g = _graph(write_graph, {
        "keyed": "{type: map, inputs: [read], config: {expr: '{msg.n: \"v\", 10: true}'}}",
        "out": "{type: file_sink, inputs: [keyed], config: {path: out.ndjson}}",
    })
    report = run(g)
    assert report.balanced and report.totals()["delivered"] == 2
    assert _lines(tmp_path / "out.ndjson") == [{"1": "v", "10": True}, {"2": "v", "10": True}]


def _commit_msgs(msgs, outcome):
    finish_all([m.ack for m in msgs], outcome)


def test_settle_many_classifies_like_settle() -> None:
    one, many = AckTracker(), AckTracker()
    outcomes = [DELIVERED, FILTERED, DEAD_LETTERED, DELIVERED | FILTERED, 0, DELIVERED, DEAD_LETTERED | FILTERED]
    a1, a2 = one.new_many(list(range(7))), many.new_many(list(range(7)))
    for a, b, o in zip(a1, a2, outcomes):
        a.outcome = b.outcome = o
        a.pending = b.pending = 0
    for a in a1:
        one.settle(a)
    many.settle_many(a2)
    fields = ("in_flight", "delivered", "filtered", "dead_lettered", "nacked", "completed", "failed")
    assert [getattr(many, f) for f in fields] == [getattr(one, f) for f in fields]
    assert (many.delivered, many.filtered, many.dead_lettered) == (3, 2, 2)

    # a failed ack in the batch keeps its reason; the rest complete
    t = AckTracker()
    acks = t.new_many(["a", "b", "c"])
    acks[1].error = "sink gave up"
    for a in acks:
        a.outcome, a.pending = DELIVERED, 0
    t.settle_many(acks)
    assert t.completed == ["a", "c"] and t.failed == [("b", "sink gave up")] and t.in_flight == 0


def test_sink_settle_groups_by_owner_and_releases_composites() -> None:
    t1, t2 = AckTracker(), AckTracker()
    x = t1.new_many([1, 2])
    y = t2.new_many([3])
    inner = t1.new_many([4, 5])
    comp = CompositeAck(inner)
    acks = [x[0], y[0], comp, x[1]]
    for a in acks:
        a.outcome, a.pending = DELIVERED, 0
    _settle_runs(acks)
    assert sorted(t1.completed) == [1, 2, 4, 5] and t2.completed == [3]
    assert t1.in_flight == 0 and t2.in_flight == 0 and t1.delivered == 4


def test_malloc_tuning_applies_once_and_can_be_turned_off() -> None:
    if sys.platform != "linux":
        return
    assert tune_malloc() is True and tune_malloc() is True
    code = "from engine.runtime.memory import tune_malloc; print(tune_malloc())"
    env = {**os.environ, "STREAMDAG_MALLOC": "default"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.stdout.strip() == "False"


def test_batch_ack_counts_each_message_under_its_outcome() -> None:
    t = AckTracker()
    ack = t.new_batch(6, "b1")
    msgs = [Msg({"i": i}, {}, ack) for i in range(6)]
    assert t.in_flight == 6 and t.entered == 6
    with pytest.raises(TypeError, match="own_ack"):
        ack.retain(1)
    msgs[0].ack.finish(FILTERED)
    msgs[1].ack.fail("sink gave up")
    child = own_ack(msgs[2])  # held twice (fan-out): one message, settled once, delivered wins
    assert child is msgs[2].ack and child is not ack and own_ack(msgs[2]) is child
    child.retain(1)
    child.finish(FILTERED)
    child.finish(DELIVERED)
    _commit_msgs([msgs[3], msgs[4]], DELIVERED)  # a sink's run of one source batch
    assert t.completed == [] and t.in_flight == 1  # each message settles as it goes; the token at the end
    _commit_msgs([msgs[5]], DEAD_LETTERED)
    assert (t.delivered, t.filtered, t.dead_lettered, t.nacked, t.in_flight) == (3, 1, 1, 1, 0)
    assert t.completed == ["b1"] and t.failed == [("b1", "sink gave up")]
    assert t.entered == t.delivered + t.filtered + t.dead_lettered + t.nacked


def test_sink_commit_handles_runs_of_batch_acks_and_plain_acks_mixed() -> None:
    t = AckTracker()
    b1, b2 = t.new_batch(3, 1), t.new_batch(2, 2)
    plain = t.new_many(["p"])
    msgs = [Msg(0, {}, b1), Msg(1, {}, b1), Msg(2, {}, plain[0]), Msg(3, {}, b1), Msg(4, {}, b2), Msg(5, {}, b2)]
    _commit_msgs(msgs, DELIVERED)
    assert t.delivered == 6 and t.in_flight == 0 and sorted(map(str, t.completed)) == ["1", "2", "p"]
    t2 = AckTracker()
    p2, b3 = t2.new_many(["x"])[0], t2.new_batch(2, 3)
    _commit_msgs([Msg(0, {}, p2), Msg(1, {}, b3), Msg(2, {}, b3)], DELIVERED)  # plain first: the other branch
    assert t2.delivered == 3 and t2.in_flight == 0


def test_file_source_batch_acks_through_fan_out_multicast_and_sliding_windows(
        write_graph: Any, run: Any, tmp_path: Path) -> None:
    rows = [{"n": i, "ts": f"2024-01-01T00:00:{i % 60:02d}Z"} for i in range(300)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    g = _graph(write_graph, {
        "odd": "{type: filter, inputs: [read], config: {expr: 'msg.n % 2 == 1'}}",
        "all": "{type: file_sink, inputs: [read], config: {path: all.ndjson}}",
        "spread": "{type: route, inputs: [odd], config: {mode: multicast, ports: [x, y]}}",
        "x": "{type: file_sink, inputs: [spread.x], config: {path: x.ndjson}}",
        "y": "{type: drop, inputs: [spread.y]}",
        "win": "{type: window, inputs: [read], config: {kind: sliding, size: 10s, slide: 5s, "
               "aggregates: {c: {op: count}}}}",
        "counts": "{type: drop, inputs: [win]}",
    })
    report = run(g)
    assert report.error is None and report.balanced
    # every message reached `all`: each counts once, as delivered, whatever its other branches did
    assert report.totals() == {"entered": 300, "delivered": 300, "filtered": 0, "dead_lettered": 0,
                               "nacked": 0, "in_flight": 0}
    assert len(_lines(tmp_path / "all.ndjson")) == 300 and len(_lines(tmp_path / "x.ndjson")) == 150


def test_filter_with_error_absorption_in_a_batch(write_graph: Any, run: Any, tmp_path: Path) -> None:
    # `a || b`: an error in `a` is absorbed when `b` is true (CEL's commutative || ); the batch's
    # one-comprehension path raises on it and the batch goes message by message, with CEL's result
    rows = [{"n": i, "flag": i % 4 == 0} if i % 3 else {"n": i} for i in range(30)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    g = _graph(write_graph, {
        "keep": "{type: filter, inputs: [read], config: {expr: 'msg.flag || msg.n > 20'}}",
        "out": "{type: file_sink, inputs: [keep], config: {path: out.ndjson}}",
    })
    report = run(g)
    assert report.balanced
    kept = [r["n"] for r in _lines(tmp_path / "out.ndjson")]
    assert kept == [i for i in range(30) if (i % 3 and i % 4 == 0) or i > 20]
    failed = sorted(d["payload"]["n"] for d in _lines(tmp_path / "dead.ndjson"))
    assert failed == [i for i in range(30) if i % 3 == 0 and i <= 20]  # no flag, and n > 20 is false


def test_route_first_condition_by_condition_over_a_batch(write_graph: Any, run: Any, tmp_path: Path) -> None:
    # 1st condition for every message at once, the 2nd for what is left...; a message that makes
    # the 2nd fail (no field v) sends what is left message by message from the 2nd condition on
    rows = [{"n": i, "v": i % 7} if i % 11 else {"n": i} for i in range(1, 200)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    g = _graph(write_graph, {
        "split": "{type: route, inputs: [read], config: {routes: {low: 'msg.n < 50', odd: 'msg.v % 2 == 1'}}}",
        "low": "{type: file_sink, inputs: [split.low], config: {path: low.ndjson}}",
        "odd": "{type: file_sink, inputs: [split.odd], config: {path: odd.ndjson}}",
        "rest": "{type: file_sink, inputs: [split.unmatched], config: {path: rest.ndjson}}",
    })
    report = run(g)
    assert report.error is None and report.balanced
    ns = lambda name: [r["n"] for r in _lines(tmp_path / name)]
    assert ns("low.ndjson") == [r["n"] for r in rows if r["n"] < 50]
    assert ns("odd.ndjson") == [r["n"] for r in rows if r["n"] >= 50 and "v" in r and r["v"] % 2 == 1]
    assert ns("rest.ndjson") == [r["n"] for r in rows if r["n"] >= 50 and "v" in r and r["v"] % 2 == 0]
    failed = [d["payload"]["n"] for d in _lines(tmp_path / "dead.ndjson")]
    assert failed == [r["n"] for r in rows if r["n"] >= 50 and "v" not in r]
    assert report.totals()["delivered"] == len(rows) - len(failed)


def test_map_retried_batch_is_mapped_once(write_graph: Any, run: Any, tmp_path: Path) -> None:
    # map rewrites messages in place, but only once the whole batch has mapped: a batch whose
    # evaluation raises part way (not a CEL error: a bug, a lost resource) is retried unchanged
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(10)))
    g = _graph(write_graph, {
        "inc": "{type: map, inputs: [read], config: {expr: '{\"n\": msg.n + 1}'}, "
               "retry: {max_attempts: 2, initial_backoff: 0.001}}",
        "out": "{type: file_sink, inputs: [inc], config: {path: out.ndjson}}",
    })
    calls = {"n": 0}

    def hook(runner: Any) -> None:
        expr = runner.nodes["inc"].expr
        exact = expr.fn

        class Flaky:  # no batch path; the 6th evaluation of the first attempt fails
            source = expr.source

            @staticmethod
            def many(msgs: list[Any]) -> None:
                return None

            @staticmethod
            def fn(body: Any, meta: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 6:
                    raise RuntimeError("lost a resource")
                return exact(body, meta)

        runner.nodes["inc"].expr = Flaky

    from tests.conftest import run_graph

    report = run_graph(g, runner_hook=hook)
    assert report.balanced and report.stats["inc"].retries == 1
    assert [r["n"] for r in _lines(tmp_path / "out.ndjson")] == list(range(1, 11))


def test_route_all_and_consistent_hash_over_a_batch(write_graph: Any, run: Any, tmp_path: Path) -> None:
    rows = [{"n": i, "k": f"user-{i % 5}"} if i % 13 else {"n": i} for i in range(1, 120)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    g = _graph(write_graph, {
        "tag": "{type: route, inputs: [read], config: {mode: all, routes: {even: 'msg.n % 2 == 0', "
               "named: 'msg.k != \"\"'}}}",
        "even": "{type: file_sink, inputs: [tag.even], config: {path: even.ndjson}}",
        "named": "{type: file_sink, inputs: [tag.named], config: {path: named.ndjson}}",
        "none": "{type: file_sink, inputs: [tag.unmatched], config: {path: none.ndjson}}",
        "spread": "{type: route, inputs: [read], config: {mode: consistent_hash, key: msg.k, ports: [a, b, c]}}",
        "a": "{type: file_sink, inputs: [spread.a], config: {path: a.ndjson}}",
        "b": "{type: file_sink, inputs: [spread.b], config: {path: b.ndjson}}",
        "c": "{type: file_sink, inputs: [spread.c], config: {path: c.ndjson}}",
    })
    report = run(g)
    assert report.error is None and report.balanced
    ns = lambda name: [r["n"] for r in _lines(tmp_path / name)] if (tmp_path / name).exists() else []
    with_k = [r for r in rows if "k" in r]
    # mode all: a row without k fails the second condition: to errors, whatever the first said
    assert ns("even.ndjson") == [r["n"] for r in with_k if r["n"] % 2 == 0]
    assert ns("named.ndjson") == [r["n"] for r in with_k]
    assert ns("none.ndjson") == []
    # consistent hash: each key on one port, every row with a key on some port, in order
    spread = {p: ns(f"{p}.ndjson") for p in "abc"}
    assert sorted(n for v in spread.values() for n in v) == [r["n"] for r in with_k]
    by_key = {r["n"]: r["k"] for r in with_k}
    assert all(len({by_key[n] for n in v} & {by_key[n] for n in w}) == 0
               for p, v in spread.items() for q, w in spread.items() if p < q)
    dead = sorted((d["node"], d["payload"]["n"]) for d in _lines(tmp_path / "dead.ndjson"))
    assert dead == sorted([("tag", r["n"]) for r in rows if "k" not in r] + [("spread", r["n"]) for r in rows if "k" not in r])


def test_max_in_flight_counts_held_messages_not_their_batches(write_graph: Any, tmp_path: Path) -> None:
    # a session window holds 2 messages of every 100-line batch until the input ends; the other 98
    # settle at once. If a batch counted in flight until its last message settled, 5 batches would
    # fill max_in_flight (500), the source would wait for room the window never gives back: a hang.
    import asyncio

    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    rows = [{"n": i, "k": "stay" if i % 50 == 0 else f"k{i}"} for i in range(1, 3001)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    path = write_graph("""
        version: 1
        name: held
        defaults: {max_in_flight: 500, capacity: 200, batch_size: 100}
        nodes:
          read: {type: file_source, config: {path: in.ndjson, batch: 100}}
          keep: {type: filter, inputs: [read], config: {expr: 'msg.k == "stay"'}}
          rest: {type: filter, inputs: [read], config: {expr: 'msg.k != "stay"'}}
          win: {type: window, inputs: [keep], config: {kind: session, gap: 1h, key: msg.k,
                aggregates: {c: {op: count}}}}
          counts: {type: file_sink, inputs: [win], config: {path: counts.ndjson}}
          others: {type: drop, inputs: [rest]}
          dead: {type: drop, inputs: [read.errors, keep.errors, rest.errors, win.errors, counts.errors]}
    """)

    async def go() -> Any:
        return await asyncio.wait_for(Runner(load_graph(str(path))).run(), 30)

    report = asyncio.run(go())
    assert report.error is None and report.balanced
    assert [(r["key"], r["aggregates"]["c"]) for r in _lines(tmp_path / "counts.ndjson")] == [("stay", 60)]


def test_compress_and_decompress_run_inline_and_round_trip(write_graph: Any, tmp_path: Path) -> None:
    import asyncio

    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    rows = [{"n": i, "s": "x" * (i % 50)} for i in range(500)]
    (tmp_path / "in.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    path = _graph(write_graph, {
        "pack": "{type: compress, inputs: [read], config: {codec: zstd}}",
        "unpack": "{type: decompress, inputs: [pack], config: {parse: json}}",
        "out": "{type: file_sink, inputs: [unpack], config: {path: out.ndjson}}",
    })
    runner = Runner(load_graph(str(path)))
    assert set(runner.inline) == {"pack", "unpack"}
    report = asyncio.run(runner.run())
    assert report.error is None and report.balanced
    assert _lines(tmp_path / "out.ndjson") == rows
