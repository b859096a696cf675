"""A partition lane's duplicate filter (`_Seqs`): a copy of a message the lane acked is acked again
and dropped, a copy of one it still holds waits for the first and is acked with it, a message the
lane naked itself is processed again, and anything new passes."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.context import Resources
from operators.connectors.jetstream.source import JetStreamSource, JetStreamSourceConfig, _CatchUp, _Seqs


async def _fetch(sub: Any, n: int) -> list[Any]:
    """`n` messages of a pull subscription: one fetch may return fewer (what was ready then)."""
    msgs: list[Any] = []
    while len(msgs) < n:
        msgs += await sub.fetch(n - len(msgs), timeout=5)
    return msgs

def _frame(seq: int, delivered: int = 1) -> tuple[str, str, bytes, None]:
    return ("s.0", f"$JS.ACK.S.d-p0.{delivered}.{seq}.{seq}.1700000000000000000.0", b"{}", None)


def test_new_messages_pass_and_copies_of_acked_ones_are_acked_again_and_dropped() -> None:
    seqs = _Seqs()
    assert [f[1] for f in seqs.filter([_frame(1), _frame(2), _frame(3)])] == [_frame(i)[1] for i in (1, 2, 3)]
    assert seqs.acked(1) == [] and seqs.acked(2) == []
    again = seqs.filter([_frame(1, 2), _frame(2, 2), _frame(4)])  # a leader change resent 1 and 2
    assert [f[1] for f in again] == [_frame(4)[1]]
    assert seqs.acks == [(_frame(1, 2)[1], b"+ACK"), (_frame(2, 2)[1], b"+ACK")]
    assert seqs.dropped == 2


def test_a_copy_of_a_held_message_waits_for_the_first_and_is_acked_with_it() -> None:
    seqs = _Seqs()
    seqs.filter([_frame(7)])
    assert seqs.filter([_frame(7, 2), _frame(7, 3)]) == []  # held by a window: not processed twice
    assert seqs.acked(7) == [_frame(7, 2)[1], _frame(7, 3)[1]]
    assert seqs.filter([_frame(7, 4)]) == [] and seqs.acks[-1] == (_frame(7, 4)[1], b"+ACK")


def test_a_message_the_lane_naked_comes_back_and_is_processed_again() -> None:
    seqs = _Seqs()
    seqs.filter([_frame(5)])
    seqs.naked(5)
    assert [f[1] for f in seqs.filter([_frame(5, 2)])] == [_frame(5, 2)[1]]
    assert seqs.filter([_frame(5, 3)]) == []  # but a copy of that second delivery is held back again


def test_a_new_message_below_one_passed_on_is_counted_as_out_of_order() -> None:
    seqs = _Seqs()
    seqs.filter([_frame(5), _frame(9)])
    seqs.naked(5)
    seqs.filter([_frame(5, 2), _frame(9, 2)])  # our own nak, and a copy: in order as far as a window goes
    assert seqs.behind == 0
    seqs.filter([_frame(7, 2)])  # never seen, below 9: a window that folded 9 would skip it
    assert seqs.behind == 1


def test_the_memory_of_acked_sequences_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Seqs, "KEEP", 10)
    seqs = _Seqs()
    for i in range(1, 31):
        seqs.filter([_frame(i)])
        seqs.acked(i)
    assert len(seqs.done) == 10 and 30 in seqs.done and 1 not in seqs.done


def _seq(frame: tuple[str, str, bytes, None]) -> int:
    return int(frame[1].split(".")[5])


def test_catch_up_holds_earlier_owners_messages_and_sends_them_in_stream_order() -> None:
    catchup = _CatchUp(pending=4, last=40)
    assert catchup.take([_frame(30, 2), _frame(10, 2)]) is None  # still holding: 2 of 4 came
    ready = catchup.take([_frame(40, 2), _frame(20, 3)])
    assert ready is not None and [_seq(f) for f in ready] == [10, 20, 30, 40]


def test_catch_up_ends_at_a_newer_message_or_an_unfilled_pull() -> None:
    catchup = _CatchUp(pending=5, last=40)
    ready = catchup.take([_frame(30, 2), _frame(41), _frame(10, 2)])  # 41: the server had no redelivery left
    assert ready is not None and [_seq(f) for f in ready] == [10, 30, 41]
    catchup = _CatchUp(pending=5, last=40)
    assert catchup.take([_frame(30, 2)]) is None
    catchup.unfilled = True  # a pull request ended with its 408: nothing more was due
    assert [_seq(f) for f in catchup.take([]) or []] == [30]


@pytest.mark.services
def test_a_lane_sends_redeliveries_in_stream_order_though_the_server_does_not() -> None:
    """The server hands naked messages out in the order they were naked: a lane that takes over
    the partition sends them on in stream order (a checkpointing window skips a sequence below one
    it folded)."""
    import asyncio

    from nats.js.api import ConsumerConfig

    from tests.connectors.jetstream_fixtures import NATS_URL, temporary_stream
    from tests.connectors.jetstream_pipe import Pipe, make_ctx

    async def dead_owner(js: Any, stream: str, durable: str, config: Any) -> list[int]:
        """Pull all 8 like an owner, nak the newer half first, then the older: (the server's) redelivery order."""
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(durable, stream)
        msgs = await _fetch(sub, 8)
        for m in msgs[4:] + msgs[:4]:
            await m.nak()
        await sub.unsubscribe()
        return [m.metadata.sequence.stream for m in msgs[4:] + msgs[:4]]

    async def main() -> None:
        async with temporary_stream("lane_order") as (stream, js):
            for i in range(8):
                await js.publish(f"{stream}.e.0", b'{"i": %d}' % i)
            nakked = await dead_owner(js, stream, "ctl", ConsumerConfig(durable_name="ctl", ack_wait=30))
            control = await js.pull_subscribe_bind("ctl", stream)
            again = [m.metadata.sequence.stream for m in await _fetch(control, 8)]
            assert again == nakked == [5, 6, 7, 8, 1, 2, 3, 4]  # the server's order: not stream order
            resources = Resources()
            cfg = JetStreamSourceConfig(connection="nats", stream=stream, durable="d-p0", subjects=[f"{stream}.e.0"],
                                        ack_wait=30, expires=0.5)
            lane = JetStreamSource("read", cfg, make_ctx("read", NATS_URL, resources))
            lane._seqs = _Seqs()
            await dead_owner(js, stream, "d-p0", lane._consumer_config())
            seen: list[int] = []
            pipe = Pipe(lane, None, lambda body, meta: seen.append(meta["seq"]))
            info = await js.consumer_info(stream, "d-p0")
            lane.catch_up(info.num_ack_pending, info.delivered.stream_seq)
            try:
                await pipe.run(lambda: len(seen) >= 8, timeout=10)
            finally:
                await resources.close()
            assert seen == [1, 2, 3, 4, 5, 6, 7, 8]

    asyncio.run(main())


@pytest.mark.services
def test_a_restarted_source_sends_the_redeliveries_it_starts_with_in_stream_order() -> None:
    """Unpartitioned: a run that died holding naked messages; the next run of the same durable gets them
    back in the server's order and sends them on in stream order, then the new ones."""
    import asyncio

    from tests.connectors.jetstream_fixtures import NATS_URL, temporary_stream
    from tests.connectors.jetstream_pipe import Pipe, make_ctx

    async def main() -> None:
        async with temporary_stream("restart_order") as (stream, js):
            for i in range(8):
                await js.publish(f"{stream}.e", b'{"i": %d}' % i)
            resources = Resources()
            cfg = JetStreamSourceConfig(connection="nats", stream=stream, durable="d", ack_wait=30, expires=0.5)
            source = JetStreamSource("read", cfg, make_ctx("read", NATS_URL, resources))
            await js.add_consumer(stream, source._consumer_config())
            sub = await js.pull_subscribe_bind("d", stream)
            msgs = await _fetch(sub, 8)
            for m in msgs[4:] + msgs[:4]:  # the earlier run's end: the newer half naked first
                await m.nak()
            await sub.unsubscribe()
            for i in range(8, 10):  # and new messages behind them
                await js.publish(f"{stream}.e", b'{"i": %d}' % i)
            seen: list[int] = []
            pipe = Pipe(source, None, lambda body, meta: seen.append(meta["seq"]))
            try:
                await pipe.run(lambda: len(seen) >= 10, timeout=10)
            finally:
                await resources.close()
            assert seen == list(range(1, 11))  # the server hands out 5..8 before 1..4

    asyncio.run(main())


@pytest.mark.services
def test_a_worker_does_not_take_a_partition_again_while_its_old_lanes_messages_are_in_its_graph() -> None:
    """Handed back with naked messages still queued before the window: taken again here, they would be
    folded as the partition's new items, ahead of lower sequences the server still has to redeliver."""
    import asyncio
    from types import SimpleNamespace

    from engine.message import DELIVERED, AckTracker, Msg
    from operators.connectors.jetstream.partitions import Lane, LaneSender, Ownership, bucket_name
    from tests.connectors.jetstream_fixtures import connect, unique

    async def main() -> None:
        nc = await connect()
        js = nc.jetstream()
        stream = unique("stale")
        worker = SimpleNamespace(id="w0", host="h", pid=1)
        node = SimpleNamespace(id="read", config=SimpleNamespace(stream=stream, durable="d"),
                               ctx=SimpleNamespace(worker=worker))
        owner = Ownership(node, None, 2, 3.0, 1)
        await owner.open(js)
        taken: list[int] = []

        async def take(p: int, revision: int, out: Any, released: bool) -> None:
            taken.append(p)
            owner.lanes[p] = Lane(None, LaneSender(out, p), revision)

        owner.take = take  # type: ignore[method-assign]
        out = SimpleNamespace(tracker=AckTracker(0))
        old = LaneSender(out, 0)  # type: ignore[arg-type]
        old.sent = [Msg({}, {}, out.tracker.new())]  # naked, still on its way to the window
        owner.stale[0] = [old]
        try:
            await owner.tick(out)  # type: ignore[arg-type]
            assert taken == [1]  # its fair share is both, but not partition 0 yet
            old.sent[0].ack.finish(DELIVERED)  # the window failed or folded it: settled
            await owner.tick(out)  # type: ignore[arg-type]
            assert taken == [1, 0] and owner.stale == {}
        finally:
            await js.delete_key_value(bucket_name(stream, "d"))
            await nc.close()

    asyncio.run(main())
