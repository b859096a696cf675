"""`Bodies`: a source batch carried as its bodies alone (engine.message), and the runtime that hands
one only to nodes that take it (filter, map, file_sink, stdout) and `Msg` objects to every other.

Each end-to-end test runs a graph twice, once as it runs and once with the bodies path turned off
(every `Bodies` made into messages at the source), and compares everything observable: output
bytes, dead letters, every node's counters and the sources' ack counts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.message import DELIVERED, FILTERED, AckTracker, Bodies, Msg
from engine.runtime.channel import Channel
from engine.runtime.scheduler import Runner, RunReport
from tests.conftest import run_graph

COUNTERS = ("received", "emitted", "errors", "filtered", "committed", "dead_lettered")


def _runs(tracker: AckTracker, sizes: list[int]) -> Bodies:
    """A `Bodies` of len(sizes) source batches (tokens 0, 1, ...), bodies numbered from 0."""
    b = None
    start = 0
    for i, n in enumerate(sizes):
        one = Bodies.of(list(range(start, start + n)), {"source": "s", "batch": i}, tracker.new_batch(n, i), 10 + i)
        b = one if b is None else b.concat(one)
        start += n
    assert b is not None
    return b


def test_bodies_stand_for_the_messages_they_carry() -> None:
    tracker = AckTracker()
    b = _runs(tracker, [3, 2])
    msgs = b.msgs()
    assert [(m.body, m.meta["batch"], m.size) for m in msgs] == [(0, 0, 10), (1, 0, 10), (2, 0, 10), (3, 1, 11), (4, 1, 11)]
    assert all(type(m) is Msg for m in msgs) and msgs[0].ack is msgs[2].ack and msgs[2].ack is not msgs[3].ack
    assert [m["batch"] for m in b.metas()] == [0, 0, 0, 1, 1]
    assert len(b) == 5 and b.total_size() == 3 * 10 + 2 * 11


def test_split_cuts_a_run_and_keeps_every_message_once() -> None:
    tracker = AckTracker()
    b = _runs(tracker, [3, 2, 4])
    for k in range(1, len(b)):
        head, tail = b.split(k)
        assert head.bodies + tail.bodies == b.bodies
        assert [m.meta["batch"] for m in head.msgs() + tail.msgs()] == [m["batch"] for m in b.metas()]
        assert head.total_size() + tail.total_size() == b.total_size()
        assert sum(n for n, *_ in head.runs) == k and sum(n for n, *_ in tail.runs) == len(b) - k
    with pytest.raises(ValueError):
        b.split(len(b) + 1)


def test_keep_settles_what_it_drops_per_run_and_finish_the_rest() -> None:
    tracker = AckTracker()
    b = _runs(tracker, [3, 2, 4])
    keep = [True, False, True, False, False, True, True, False, True]
    kept = b.keep(keep, FILTERED)
    assert kept.bodies == [0, 2, 5, 6, 8]
    assert [n for n, *_ in kept.runs] == [2, 3]  # the second batch dropped whole: no run left for it
    assert tracker.filtered == 4 and tracker.in_flight == 5
    assert tracker.take() == ([1], [])  # batch 1 was all dropped: its token is done
    kept.finish(DELIVERED)
    assert tracker.delivered == 5 and tracker.in_flight == 0
    assert sorted(tracker.take()[0]) == [0, 2]
    one = _runs(AckTracker(), [2])
    assert one.keep([True, True], FILTERED).bodies == [0, 1]
    assert len(one.keep([False, False], FILTERED)) == 0


def test_a_channel_splits_bodies_and_merges_them_only_with_bodies() -> None:
    async def go() -> None:
        tracker = AckTracker()
        ch = Channel(capacity=100, capacity_bytes=10_000, writers=1)
        await ch.put(_runs(tracker, [3]))
        await ch.put(_runs(tracker, [2]))
        await ch.put([Msg("x", size=5), Msg("y", size=5)])
        await ch.put(_runs(tracker, [4]))
        assert ch.count == 11 and ch.bytes == 3 * 10 + 2 * 10 + 10 + 4 * 10
        first = await ch.get(4)  # the next Bodies would not fit whole: not merged (as with lists)
        assert isinstance(first, Bodies) and first.bodies == [0, 1, 2]
        second = await ch.get(100)  # not merged with the list behind it
        assert isinstance(second, Bodies) and second.bodies == [0, 1]
        third = await ch.get(100)  # the list, not merged with the Bodies behind it
        assert isinstance(third, list) and [m.body for m in third] == ["x", "y"]
        fourth = await ch.get(3)  # split: the rest stays first in line
        assert isinstance(fourth, Bodies) and fourth.bodies == [0, 1, 2] and ch.count == 1 and ch.bytes == 10
        fifth = await ch.get(100)
        assert isinstance(fifth, Bodies) and fifth.bodies == [3]
        assert ch.count == 0 and ch.bytes == 0
        ch.close_writer()
        assert await ch.get(10) is None

    asyncio.run(go())


def _write(tmp_path: Path, rows: list[Any], extra: list[bytes] = ()) -> None:  # type: ignore[assignment]
    lines = [orjson.dumps(r) + b"\n" for r in rows]
    for i, raw in enumerate(extra):  # spread bad lines over the file
        lines.insert((i + 1) * len(lines) // (len(extra) + 1), raw)
    (tmp_path / "in.ndjson").write_bytes(b"".join(lines))


def _graph(write_graph: Any, nodes: str, batch: int = 100) -> Path:
    return write_graph(f"""
        version: 1
        name: bodies
        defaults: {{dead_letter: dead}}
        nodes:
          read: {{type: file_source, config: {{path: in.ndjson, batch: {batch}}}}}
        {nodes}
          dead: {{type: file_sink, config: {{path: dead.ndjson}}}}
        """)


def _both(path: Path, tmp_path: Path, outputs: list[str]) -> tuple[dict[str, Any], int]:
    """Run `path` with the bodies path and without; assert they agree; what the first run saw and
    how many `Bodies` it made into messages."""
    made = []
    original = Bodies.msgs

    def counted(self: Bodies) -> list[Msg]:
        made.append(len(self))
        return original(self)

    def observed(report: RunReport) -> dict[str, Any]:
        assert report.error is None and report.balanced
        return {
            "files": {name: (tmp_path / name).read_bytes() for name in outputs},
            "stats": {n: tuple(getattr(st, c) for c in COUNTERS) for n, st in report.stats.items()},
            "totals": report.totals(),
        }

    Bodies.msgs = counted  # type: ignore[method-assign]
    try:
        fast = observed(run_graph(path))
    finally:
        Bodies.msgs = original  # type: ignore[method-assign]

    def off(runner: Runner) -> None:  # no node takes bodies: every Bodies becomes messages at its source
        runner.router.takes_bodies = frozenset()

    slow = observed(run_graph(path, runner_hook=off))
    assert fast == slow
    return fast, sum(made)


def test_filter_map_file_sink_with_failures_agree_with_the_message_path(write_graph: Any, tmp_path: Path) -> None:
    rows: list[Any] = []
    for i in range(2000):
        row: dict[str, Any] = {"id": i, "amount": float(i % 250), "tags": ["a"] if i % 3 else ["b"]}
        if i % 97 == 0:
            row["amount"] = "text"  # the filter fails: string > double has no overload
        elif i % 89 == 0:
            row["amount"] = i  # an int: the filter passes it, the map fails (int * double)
        elif i % 83 == 0:
            del row["tags"]  # the filter fails: no such key
        rows.append(row)
    _write(tmp_path, rows, [b"{not json\n", b"\n", b"[1, 2\n"])
    path = _graph(write_graph, """
          big: {type: filter, inputs: [read], config: {expr: 'msg.amount > 10.0 || (type(msg.amount) == int && "a" in msg.tags)'}}
          price: {type: map, inputs: [big], config: {expr: '{"id": msg.id, "total": msg.amount * 1.5}'}}
          out: {type: file_sink, inputs: [price], config: {path: out.ndjson}}
        """)
    seen, made = _both(path, tmp_path, ["out.ndjson", "dead.ndjson"])
    out = [orjson.loads(line) for line in seen["files"]["out.ndjson"].splitlines()]
    assert out and all(set(r) == {"id", "total"} for r in out)
    dead = [orjson.loads(line) for line in seen["files"]["dead.ndjson"].splitlines()]
    assert {d["node"] for d in dead} == {"read", "big", "price"}
    # only the batches with a failure went as messages (a batch with a bad line never was a Bodies)
    assert 0 < made < 2000


def test_a_clean_run_makes_no_message_objects(write_graph: Any, tmp_path: Path) -> None:
    _write(tmp_path, [{"id": i, "amount": float(i)} for i in range(3000)])
    path = _graph(write_graph, """
          big: {type: filter, inputs: [read], config: {expr: 'msg.amount > 10.0'}}
          price: {type: map, inputs: [big], config: {expr: '{"id": msg.id, "total": msg.amount * 2.0}'}}
          out: {type: file_sink, inputs: [price], batch_size: 250, config: {path: out.ndjson}}
        """, batch=700)
    seen, made = _both(path, tmp_path, ["out.ndjson"])
    assert made == 0
    assert [orjson.loads(x)["id"] for x in seen["files"]["out.ndjson"].splitlines()] == list(range(11, 3000))
    assert seen["stats"]["big"] == (3000, 2989, 0, 11, 0, 0) and seen["totals"]["delivered"] == 2989


def test_what_does_not_take_bodies_gets_messages(write_graph: Any, tmp_path: Path) -> None:
    # a fan-out (two targets), a sink writing meta, an operator without a bodies path (route), a map
    # result the bodies path of file_sink cannot encode (an int key): each gets messages, results unchanged
    _write(tmp_path, [{"id": i, "v": float(i)} for i in range(1500)])
    path = _graph(write_graph, """
          a: {type: filter, inputs: [read], config: {expr: 'msg.id % 2 == 0'}}
          b: {type: map, inputs: [read], config: {expr: '{"id": msg.id}'}}
          again: {type: file_source, config: {path: in.ndjson}}
          keyed: {type: map, inputs: [again], config: {expr: 'msg.id % 2 == 0 ? dyn({1: msg.id}) : dyn({"k": msg.id})'}}
          ints: {type: file_sink, inputs: [keyed], config: {path: ints.ndjson}}
          split: {type: route, inputs: [b], config: {mode: first, routes: {low: 'msg.id < 700'}}}
          meta: {type: file_sink, inputs: [split.low], config: {path: meta.ndjson, with_meta: true}}
        """)
    seen, made = _both(path, tmp_path, ["ints.ndjson", "meta.ndjson"])
    assert seen["files"]["ints.ndjson"].splitlines()[:3] == [b'{"1":0}', b'{"k":1}', b'{"1":2}']
    assert len(seen["files"]["meta.ndjson"].splitlines()) == 700
    assert made == 1500 + 1500  # the fan-out at `read`, and `keyed`'s output at its sink
    assert seen["stats"]["a"][:2] == (1500, 750)


def test_a_sink_whose_bodies_write_raises_goes_through_write_and_its_retries(
    write_graph: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from operators.connectors.file import FileSink

    calls = {"bodies": 0, "write": 0}
    original = FileSink.write

    async def failing(self: FileSink, batch: Bodies) -> bool:
        calls["bodies"] += 1
        raise OSError("disk on fire")

    async def write(self: FileSink, batch: list[Msg]) -> Any:
        calls["write"] += 1
        if calls["write"] == 1:
            raise ConnectionError("once")  # retried by the node's policy
        return await original(self, batch)

    monkeypatch.setattr(FileSink, "write_bodies", failing)
    monkeypatch.setattr(FileSink, "write", write)
    _write(tmp_path, [{"id": i} for i in range(250)])
    path = _graph(write_graph, """
          out: {type: file_sink, inputs: [read], config: {path: out.ndjson}, retry: {initial_backoff: 0.01}}
        """)
    report = run_graph(path)
    assert report.error is None and report.balanced and report.totals()["delivered"] == 250
    assert [orjson.loads(x)["id"] for x in (tmp_path / "out.ndjson").read_bytes().splitlines()] == list(range(250))
    assert calls["bodies"] >= 1 and calls["write"] == calls["bodies"] + 1
    assert report.stats["out"].retries == 1


def test_validate_passes_valid_batches_as_bodies_and_sends_invalid_ones_to_errors(
    write_graph: Any, tmp_path: Path
) -> None:
    rows: list[Any] = [{"id": i, "amount": float(i)} for i in range(1200)]
    rows[950] = {"id": 950, "amount": "lots"}  # invalid: its batch goes as messages
    _write(tmp_path, rows)
    path = write_graph("""
        version: 1
        name: bodies
        defaults: {dead_letter: dead}
        schemas:
          order: {type: object, required: [id, amount], properties: {amount: {type: number}}}
        nodes:
          read: {type: file_source, config: {path: in.ndjson, batch: 100}}
          check: {type: validate, inputs: [read], config: {schema: order}}
          out: {type: file_sink, inputs: [check], config: {path: out.ndjson}}
          dead: {type: file_sink, config: {path: dead.ndjson}}
        """)
    seen, made = _both(path, tmp_path, ["out.ndjson", "dead.ndjson"])
    assert [orjson.loads(x)["id"] for x in seen["files"]["out.ndjson"].splitlines()] == [i for i in range(1200) if i != 950]
    dead = [orjson.loads(x) for x in seen["files"]["dead.ndjson"].splitlines()]
    assert [(d["node"], d["payload"]["id"]) for d in dead] == [("check", 950)]
    assert 0 < made < 600  # only the batch with the invalid order (one of 3) was made into messages
