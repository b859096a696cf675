"""`window` with `acks: checkpoint` against the real PostgreSQL: save, restore + replay, corruption,
the size limit, revocation. The window is driven directly (a test clock); the store is real."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine import CheckpointCorrupt
from engine.message import AckTracker, Msg
from engine.partitions import PartitionEvents
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig
from tests.connectors.postgres_harness import DSN, sql


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """Windows over one checkpoint table (unique per test), dropped at the end."""

    def __init__(self) -> None:
        self.table = f"ck_{uuid.uuid4().hex[:10]}"
        self.clock = Clock()
        self.resources: list[Resources] = []

    def window(self, events: PartitionEvents | None = None, **extra: Any) -> Window:
        resources = Resources()
        self.resources.append(resources)
        ctx = NodeContext("win", {"pg": {"type": "postgres", "dsn": DSN}}, {}, resources, clock=self.clock,
                          partitions=events)
        config: dict[str, Any] = {
            "kind": "tumbling", "size": 10, "time": "event", "timestamp": "msg.t", "key": "msg.k",
            "aggregates": {"n": {"op": "count"}, "s": {"op": "sum", "expr": "msg.v"}},
            "checkpoint": {"connection": "pg", "interval": 2, "table": self.table},
        }
        config["checkpoint"].update(extra)
        return Window("win", WindowConfig(**config), ctx)

    async def close(self) -> None:
        for r in self.resources:
            await r.close()
        await sql(f'DROP TABLE IF EXISTS "{self.table}"')


def run(body: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        rig = Rig()
        try:
            await body(rig)
        finally:
            await rig.close()

    asyncio.run(main())


def items(tracker: AckTracker, rows: list[tuple[int, str, float, int]], partition: int | None = None) -> list[Msg]:
    """rows: (stream sequence, key, event time, value); tokens are the sequences."""
    meta: dict[str, Any] = {"stream": "S"} if partition is None else {"stream": "S", "partition": partition}
    return [Msg({"k": k, "t": t, "v": v}, {**meta, "seq": seq}, tracker.new(seq)) for seq, k, t, v in rows]


async def feed(op: Window, msgs: list[Msg]) -> dict[str, list[Msg]]:
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    r = op.process(msgs, out)
    if r is not None:
        await r
    return out.take()


async def flush(op: Window) -> list[Msg]:
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    r = op.flush(out)
    if r is not None:
        await r
    return out.take().get("out", [])


def windows(msgs: list[Msg]) -> list[tuple[str, str, int, int]]:
    return sorted((m.body["key"], m.body["start"], m.body["count"], m.body["aggregates"]["s"]) for m in msgs)


INPUT = [(i + 1, f"k{i % 7}", i * 0.5, i) for i in range(60)]  # 30 s of event time, 7 keys


def test_restore_and_replay_give_the_windows_of_one_uninterrupted_run() -> None:
    async def body(rig: Rig) -> None:
        # the reference: one window, everything, end of input
        ref = rig.window(name="ref")
        await ref.start()
        expected = windows((await feed(ref, items(AckTracker(), INPUT)))["out"] + await flush(ref))

        first = rig.window()
        await first.start()
        tracker = AckTracker()
        sent = (await feed(first, items(tracker, INPUT[:25])))["out"]  # [0,10) of every key closed
        assert sent and tracker.in_flight == 25  # nothing released before a checkpoint covers it
        sent[0].ack.release()  # one window committed downstream; the others are not
        rig.clock.now += 2
        await feed(first, items(tracker, INPUT[25:30]))  # the interval passed: a checkpoint
        assert tracker.in_flight == 0 and tracker.delivered == 30
        assert first.metrics()["checkpoint_saves"] == 1 and first.metrics()["checkpoint_bytes"] > 0
        await feed(first, items(tracker, INPUT[30:40]))  # folded, not covered: lost with the process

        # a restart: the checkpoint comes back, the uncommitted windows are emitted again, and the
        # source replays from its last acknowledged position (here: everything after 30, and 12..20 again)
        second = rig.window()
        await second.start()
        again = AckTracker()
        res = await feed(second, items(again, INPUT[11:20] + INPUT[30:]))
        assert second.metrics()["checkpoint_replayed_skipped"] == 9 and again.delivered == 9
        resent = [m for m in res["out"] if m.body["start"].endswith(":00Z") and m.body["end"].endswith(":10Z")]
        assert windows(resent) == windows(sent[1:])  # all but the committed one
        final = [m for m in res["out"] if m not in resent] + await flush(second)
        assert windows(sent[:1] + resent + final) == expected
        assert again.in_flight == 0  # the end-of-input checkpoint released the rest

    run(body)


def test_a_damaged_or_incomplete_checkpoint_is_a_clear_error_at_start() -> None:
    async def body(rig: Rig) -> None:
        op = rig.window()
        await op.start()
        await feed(op, items(AckTracker(), INPUT[:12]))
        rig.clock.now += 2
        await feed(op, items(AckTracker(), INPUT[12:13]))
        assert op.metrics()["checkpoint_saves"] == 1
        chunks = [r["key"] for r in await sql(f'SELECT key FROM "{rig.table}" WHERE key NOT IN (\'\', \'#epoch\')')]
        assert len(chunks) == 1  # 7 keys, packed in one chunk record
        key = chunks[0]
        await sql(f'UPDATE "{rig.table}" SET data = overlay(data placing \'\\xff\'::bytea from 20 for 1) '
                  "WHERE key = $1", key)
        with pytest.raises(CheckpointCorrupt, match=rf"checkpoint 'win' partition - key chunk '{key}': checksum mismatch"):
            await rig.window().start()
        await sql(f'DELETE FROM "{rig.table}" WHERE key = $1', key)
        with pytest.raises(CheckpointCorrupt, match=rf"{len(chunks) - 1} key record\(s\), the meta record says {len(chunks)}"):
            await rig.window().start()
        # a checkpoint of another window definition is refused, not read as this one's
        await sql(f'DELETE FROM "{rig.table}" WHERE key <> \'\'')
        await sql(f"UPDATE \"{rig.table}\" SET data = $1 WHERE key = ''", _meta_with(await _meta(rig), keys=0, size=99))
        with pytest.raises(CheckpointCorrupt, match="another definition"):
            await rig.window().start()

    run(body)


async def _meta(rig: Rig, part: str = "-") -> Any:
    from engine import unseal

    (row,) = await sql(f"SELECT data FROM \"{rig.table}\" WHERE key = '' AND part = $1", part)
    return unseal(bytes(row["data"]), "meta")


def _meta_with(meta: Any, keys: int, size: int) -> bytes:
    from engine import seal

    meta["keys"] = meta["chunks"] = keys
    meta["definition"][1] = size
    return seal(meta)


def test_a_checkpoint_beyond_max_bytes_fails_with_a_clear_error_and_keeps_the_acks(caplog: Any) -> None:
    async def body(rig: Rig) -> None:
        op = rig.window(max_bytes=300)
        await op.start()
        tracker = AckTracker()
        await feed(op, items(tracker, INPUT[:20]))
        rig.clock.now += 2
        with caplog.at_level("ERROR"):
            await feed(op, items(tracker, INPUT[20:21]))
        assert "beyond checkpoint.max_bytes (300)" in caplog.text
        assert op.metrics()["checkpoint_failures"] == 1 and op.metrics()["checkpoint_saves"] == 0
        assert tracker.in_flight == 21 and tracker.take() == ([], [])  # nothing released, nothing lost

    run(body)


def test_revoking_a_partition_fails_the_acks_no_checkpoint_covers_yet() -> None:
    async def body(rig: Rig) -> None:
        events = PartitionEvents()
        op = rig.window(events)
        await op.start()
        events.assigned("src", 0)
        events.assigned("src", 1)
        tracker = AckTracker()
        await feed(op, items(tracker, INPUT[:4], partition=0) + items(tracker, INPUT[4:8], partition=1))
        rig.clock.now += 2
        await feed(op, items(tracker, INPUT[8:9], partition=0))  # checkpoint: 1..9 covered, released
        assert sorted(tracker.take()[0]) == list(range(1, 10))
        await feed(op, items(tracker, INPUT[9:12], partition=1) + items(tracker, INPUT[12:13], partition=0))
        events.revoked("src", 1)
        done, failed = tracker.take()
        assert done == [] and sorted(t for t, _ in failed) == [10, 11, 12]  # partition 1's uncovered items
        # the new owner of partition 1 restores its checkpoint when assigned: items 5..8 are covered
        theirs = PartitionEvents()
        other = rig.window(theirs)
        await other.start()
        restored = other.metrics()["checkpoint_restores"]
        theirs.assigned("src", 1)
        out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
        await other.tick(rig.clock.now, out)
        assert other.parts[1].store.open_windows == 4 and other.metrics()["checkpoint_restores"] == restored + 1
        replay = AckTracker()
        await feed(other, items(replay, INPUT[4:12], partition=1))
        assert other.metrics()["checkpoint_replayed_skipped"] == 4 and replay.delivered == 4

    run(body)


def test_the_checkpoint_store_and_ack_mode_are_checked_offline() -> None:
    from engine.compile.validate import check_text

    graph = """version: 1
name: ck_offline
connections:
  pg: {type: postgres}
  cache: {type: redis}
nodes:
  gen: {type: generate, config: {count: 1, template: '{"t": 0}'}}
  win:
    type: window
    inputs: [gen]
    config: {kind: tumbling, size: 1m, time: event, timestamp: msg.t, idle_timeout: 1s, CHECKPOINT}
  out: {type: stdout, inputs: [win, win.late, gen.errors, win.errors]}
"""

    def codes(checkpoint: str) -> list[str]:
        _, diags = check_text(graph.replace("CHECKPOINT", checkpoint))
        return [f"{d.code} {d.message}" for d in diags if d.severity == "error"]

    assert codes("checkpoint: {connection: pg}") == []
    (e215,) = codes("checkpoint: {connection: pgg}")
    assert e215.startswith("E215") and "unknown connection 'pgg'" in e215
    (e216,) = codes("checkpoint: {connection: cache}")
    assert e216.startswith("E216") and "checkpoints need postgres" in e216
    (e202,) = codes("acks: checkpoint")
    assert e202.startswith("E202") and "acks: checkpoint needs a 'checkpoint' store" in e202
    (e202,) = codes("acks: hold, checkpoint: {connection: pg}")
    assert "'checkpoint' applies with acks: checkpoint" in e202
    (e202,) = codes("on_drain: redeliver, acks: release")
    assert "on_drain: redeliver" in e202 and "needs acks: hold" in e202


def test_a_restored_partition_closes_its_last_windows_on_idle_timeout() -> None:
    """A partition restored after its input ended (a takeover at the end of a stream) must still
    close its open windows when `idle_timeout` passes, with no further item to move its watermark."""
    async def body(rig: Rig) -> None:
        def window() -> Window:
            resources = Resources()
            rig.resources.append(resources)
            ctx = NodeContext("win", {"pg": {"type": "postgres", "dsn": DSN}}, {}, resources, clock=rig.clock)
            return Window("win", WindowConfig(
                kind="tumbling", size=10, time="event", timestamp="msg.t", key="msg.k", idle_timeout=5,
                aggregates={"n": {"op": "count"}}, checkpoint={"connection": "pg", "interval": 2, "table": rig.table},
            ), ctx)

        first = window()
        await first.start()
        tracker = AckTracker()
        await feed(first, items(tracker, INPUT[:10]))  # event time 0..4.5 s: windows [0, 10) open
        rig.clock.now += 2
        await feed(first, items(tracker, INPUT[10:12]))  # checkpointed; the process then dies
        assert tracker.in_flight == 0

        second = window()
        await second.start()  # restores the open windows; no item ever comes again
        out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
        rig.clock.now += 6  # past idle_timeout, counted from the restore
        r = second.tick(rig.clock.now, out)
        if r is not None:
            await r
        closed = out.take().get("out", [])
        assert sorted(m.body["key"] for m in closed) == sorted({k for _, k, _, _ in INPUT[:12]})
        assert sum(m.body["count"] for m in closed) == 12

    run(body)


def test_a_superseded_owner_cannot_overwrite_the_new_owners_checkpoint() -> None:
    """Fencing: a process that lost a partition (paused past its lease, a zombie) restored it under an
    older epoch; its next save writes nothing, and the acks its state holds fail (redelivered to the
    owner that claimed it since)."""
    async def body(rig: Rig) -> None:
        old_events, new_events = PartitionEvents(), PartitionEvents()
        old = rig.window(old_events)
        await old.start()
        old_events.assigned("src", 0)
        tracker = AckTracker()
        await feed(old, items(tracker, INPUT[:10], partition=0))  # restores (claims) partition 0 first
        rig.clock.now += 2
        await feed(old, items(tracker, INPUT[10:11], partition=0))
        assert tracker.in_flight == 0  # covered by the checkpoint

        new = rig.window(new_events)  # the takeover: claims partition 0, restores the checkpoint
        await new.start()
        new_events.assigned("src", 0)
        again = AckTracker()
        await feed(new, items(again, INPUT[11:12], partition=0))
        before = await _meta(rig, part="0")

        await feed(old, items(tracker, INPUT[12:20], partition=0))  # the old owner goes on...
        rig.clock.now += 2
        await feed(old, items(tracker, INPUT[20:21], partition=0))  # ...and its save is refused
        assert await _meta(rig, part="0") == before
        assert 0 not in old.parts and tracker.in_flight == 0
        failed = tracker.take()[1]
        assert sorted(t for t, _ in failed) == list(range(13, 22))
        assert all("claimed by another owner" in reason for _, reason in failed)

    run(body)


def test_keys_are_packed_in_chunks_a_save_rewrites_only_the_changed_ones_and_restore_is_exact() -> None:
    """640 keys, then 320 new ones, then one key updated: 20 chunks of 32 keys, then 10 more (the
    first 20 untouched), then one rewritten; a restore gives back every key's window."""
    first = [(i + 1, f"u{i}", 1.0, i % 97) for i in range(640)]
    new = [(641 + i, f"v{i}", 2.0, i) for i in range(320)]

    async def chunks(rig: Rig) -> dict[str, bytes]:
        return {r["key"]: bytes(r["data"]) for r in await sql(
            f'SELECT key, data FROM "{rig.table}" WHERE key NOT IN (\'\', \'#epoch\')')}

    async def body(rig: Rig) -> None:
        op = rig.window()
        await op.start()
        tracker = AckTracker()
        await feed(op, items(tracker, first))
        rig.clock.now += 2
        await feed(op, items(tracker, new[:1]))  # a save: u0..u639 and v0
        saved = await chunks(rig)
        assert len(saved) == 21
        rig.clock.now += 2
        await feed(op, items(tracker, new[1:]))  # v1..v319 join v0's chunk, then fill new ones
        now = await chunks(rig)
        assert len(now) == 30 and {k: v for k, v in now.items() if k in saved and k != max(saved)} == \
            {k: v for k, v in saved.items() if k != max(saved)}  # the 20 full chunks were not rewritten
        written = op.metrics()["checkpoint_bytes_written"]
        rig.clock.now += 2
        await feed(op, items(tracker, [(961, "u5", 3.0, 1000)]))
        assert len(await chunks(rig)) == 30 and op.metrics()["checkpoint_bytes_written"] - written < 4096  # one chunk
        assert tracker.in_flight == 0 and op.metrics()["checkpoint_saves"] == 3
        again = rig.window()
        await again.start()
        assert again.metrics()["checkpoint_restores"] == 1
        assert windows(await flush(again)) == windows(await flush(op))

    run(body)


def test_a_checkpoint_of_an_older_format_is_refused_with_a_clear_error() -> None:
    async def body(rig: Rig) -> None:
        op = rig.window()
        await op.start()
        await feed(op, items(AckTracker(), INPUT[:12]))
        rig.clock.now += 2
        await feed(op, items(AckTracker(), INPUT[12:13]))
        await sql(f"UPDATE \"{rig.table}\" SET data = overlay(data placing '\\x01'::bytea from 5 for 1) WHERE key = ''")
        with pytest.raises(CheckpointCorrupt, match="checkpoint format version 1, this streamdag reads version 2"):
            await rig.window().start()

    run(body)


def test_a_restored_partition_waits_the_upstream_redelivery_before_it_counts_idle_time() -> None:
    """Each source says how long after a crash it redelivers (`Source.redelivery_wait`); the window
    waits the longest of its upstream sources before idle time starts counting."""
    from engine.api import Upstream
    from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig
    from operators.connectors.redis.streams import RedisStreamSource, RedisStreamSourceConfig

    js = JetStreamSourceConfig(connection="n", stream="S", durable="d", ack_wait=4, backoff=[1, 7])
    rs = RedisStreamSourceConfig.model_validate({"connection": "r", "stream": "s", "group": "g", "min_idle": 6})
    assert JetStreamSource.redelivery_wait(js) == 7.0 and RedisStreamSource.redelivery_wait(rs) == 6.0
    ctx = NodeContext("win", {"pg": {"type": "postgres", "dsn": DSN}}, {}, Resources(), clock=lambda: 0.0,
                      upstream=(Upstream("a", JetStreamSource, js), Upstream("b", RedisStreamSource, rs)))
    op = Window("win", WindowConfig(kind="tumbling", size=10, time="event", timestamp="msg.t", key="msg.k",
                                    idle_timeout=5, aggregates={"n": {"op": "count"}},
                                    checkpoint={"connection": "pg"}), ctx)
    assert op.checkpoints is not None and op.checkpoints.redelivery_wait() == 7.0


def test_a_redelivery_below_a_newer_folded_sequence_folds_exactly_once() -> None:
    """Exact coverage: 1..10 but 5 folded, then 11; a checkpoint; restore. The redelivered 1..4 and
    6..11 are skipped, 5 (it comes after 11, as JetStream hands out a naked or timed-out message)
    folds, once: a second copy of it is skipped too. A high-water mark skipped 5 (data lost)."""
    rows = [(i + 1, f"k{i % 3}", i * 0.5, 10 * (i + 1)) for i in range(11)]  # 5.5 s: one window per key

    async def body(rig: Rig) -> None:
        ref = rig.window(name="ref")
        await ref.start()
        expected = windows((await feed(ref, items(AckTracker(), rows)))["out"] + await flush(ref))

        first = rig.window()
        await first.start()
        tracker = AckTracker()
        await feed(first, items(tracker, rows[:4] + rows[5:10]))
        rig.clock.now += 2
        await feed(first, items(tracker, rows[10:]))  # 11 folded, then the interval's checkpoint
        assert first.metrics()["checkpoint_saves"] == 1 and tracker.delivered == 10
        (cov,) = first.parts[None].covered.values()
        assert (cov.floor, list(cov.seqs)) == (4, [6, 7, 8, 9, 10, 11])

        second = rig.window()  # a restart
        await second.start()
        again = AckTracker()
        await feed(second, items(again, rows[:4] + rows[5:]))  # the earlier run's items come again
        assert second.metrics()["checkpoint_replayed_skipped"] == 10 and again.delivered == 10
        await feed(second, items(again, rows[4:5]))  # 5 at last: new to the state
        assert second.metrics()["checkpoint_replayed_skipped"] == 10
        assert again.in_flight == 1  # folded: released by the next checkpoint
        await feed(second, items(again, rows[4:5]))  # a copy of 5: covered now
        assert second.metrics()["checkpoint_replayed_skipped"] == 11
        assert windows(await flush(second)) == expected  # each item once
        assert again.in_flight == 0
        (cov,) = second.parts[None].covered.values()
        assert (cov.floor, list(cov.seqs)) == (11, [])  # the gap closed: the floor took the run

    run(body)


def test_a_checkpoint_with_positions_only_restores_them_as_the_floor() -> None:
    """A checkpoint written before exact coverage holds per stream the highest sequence folded: it
    becomes the floor (what it covered then, it covers now); sequences above it fold."""
    async def body(rig: Rig) -> None:
        ref = rig.window(name="ref")
        await ref.start()
        expected = windows((await feed(ref, items(AckTracker(), INPUT[:20])))["out"] + await flush(ref))

        op = rig.window()
        await op.start()
        await feed(op, items(AckTracker(), INPUT[:12]))
        rig.clock.now += 2
        await feed(op, items(AckTracker(), INPUT[12:13]))
        meta = await _win_meta(rig)
        assert meta["positions"] == {"S": 13} and set(meta["coverage"]) == {"S"}
        del meta["coverage"]  # the meta record as the earlier format wrote it
        await sql(f"UPDATE \"{rig.table}\" SET data = $1 WHERE key = '' AND name = 'win'", _seal(meta))

        again = rig.window()
        await again.start()
        (cov,) = again.parts[None].covered.values()
        assert (cov.floor, list(cov.seqs)) == (13, [])
        tracker = AckTracker()
        await feed(again, items(tracker, INPUT[5:20]))  # 6..13 covered, 14..20 new
        assert again.metrics()["checkpoint_replayed_skipped"] == 8
        assert windows(await flush(again)) == expected

    run(body)


def test_damaged_coverage_is_a_clear_error_and_coverage_stays_bounded() -> None:
    async def body(rig: Rig) -> None:
        op = rig.window(max_tracked=1000)
        await op.start()
        tracker = AckTracker()
        # every third sequence (a partition of a stream shared with two others): no run closes
        rows = [(3 * i + 1, f"k{i % 5}", i * 0.01, i) for i in range(2500)]
        for i in range(0, 2500, 100):
            await feed(op, items(tracker, rows[i : i + 100]))
        (cov,) = op.parts[None].covered.values()
        assert 500 <= len(cov) <= 1000 and cov.trimmed == 2499 - len(cov)  # 1 was a run from the start
        assert cov.covers(rows[-1][0]) and not cov.covers(rows[-1][0] - 1) and cov.covers(1)  # below the floor
        assert op.metrics()["checkpoint_tracked_seqs"] == len(cov)
        rig.clock.now += 2
        await feed(op, [])
        assert op.metrics()["checkpoint_saves"] == 1
        meta = await _win_meta(rig)
        floor, data = meta["coverage"]["S"]
        assert floor == cov.floor and len(data) < len(cov)  # the deltas compress
        again = rig.window(max_tracked=1000)
        await again.start()
        (back,) = again.parts[None].covered.values()
        assert (back.floor, back.seqs, back.top) == (cov.floor, cov.seqs, cov.top)
        meta["coverage"]["S"] = (floor, data[:-3])
        await sql(f"UPDATE \"{rig.table}\" SET data = $1 WHERE key = '' AND name = 'win'", _seal(meta))
        with pytest.raises(CheckpointCorrupt, match="its covered sequences are damaged"):
            await rig.window(max_tracked=1000).start()

    run(body)


def _seal(meta: Any) -> bytes:
    from engine import seal

    return seal(meta)


async def _win_meta(rig: Rig) -> Any:
    """The meta record of the window named 'win' (not the reference's)."""
    from engine import unseal

    (row,) = await sql(f"SELECT data FROM \"{rig.table}\" WHERE key = '' AND name = 'win'")
    return unseal(bytes(row["data"]), "meta")
