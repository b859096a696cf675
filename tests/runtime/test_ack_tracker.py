"""The ack contract of `engine.message` on its own: `AckTracker`, `Ack`, `BatchAck`,
`CompositeAck`, `own_ack`, outcomes, failures, `take`, `settle_many` and the `max_in_flight` wait."""

from __future__ import annotations

import asyncio

import pytest

from engine.message import (
    DEAD_LETTERED,
    DELIVERED,
    FILTERED,
    NOOP_ACK,
    Ack,
    AckTracker,
    BatchAck,
    CompositeAck,
    Msg,
    finish_all,
    own_ack,
)


def counts(t: AckTracker) -> dict[str, int]:
    return {"entered": t.entered, "in_flight": t.in_flight, "delivered": t.delivered, "filtered": t.filtered,
            "dead_lettered": t.dead_lettered, "nacked": t.nacked}


def test_an_ack_settles_once_when_its_last_reference_is_released() -> None:
    t = AckTracker()
    ack = t.new("tok")
    ack.retain(2)  # fan-out to three places
    assert counts(t) == {"entered": 1, "in_flight": 1, "delivered": 0, "filtered": 0, "dead_lettered": 0,
                         "nacked": 0}
    ack.finish(DELIVERED)
    ack.finish(FILTERED)
    assert t.in_flight == 1 and t.completed == [] and not ack.settled
    ack.finish(FILTERED)
    assert ack.settled and t.completed == ["tok"] and t.failed == []
    assert counts(t) == {"entered": 1, "in_flight": 0, "delivered": 1, "filtered": 0, "dead_lettered": 0,
                         "nacked": 0}


@pytest.mark.parametrize("outcomes,counted", [
    ([DELIVERED], "delivered"),
    ([FILTERED], "filtered"),
    ([DEAD_LETTERED], "dead_lettered"),
    ([0], "filtered"),  # released without an outcome: nobody delivered it
    ([FILTERED, DELIVERED], "delivered"),  # delivered by any branch wins
    ([FILTERED, DEAD_LETTERED], "dead_lettered"),  # then dead-lettered
    ([DEAD_LETTERED, DELIVERED], "delivered"),
])
def test_a_settled_message_is_counted_under_one_outcome(outcomes: list[int], counted: str) -> None:
    t = AckTracker()
    ack = t.new()
    ack.retain(len(outcomes) - 1)
    for outcome in outcomes:
        ack.finish(outcome)
    got = counts(t)
    assert got[counted] == 1
    assert got["delivered"] + got["filtered"] + got["dead_lettered"] == 1 and got["in_flight"] == 0


def test_a_failed_reference_fails_the_message_with_the_first_reason() -> None:
    t = AckTracker()
    ack = t.new(7)
    ack.retain(2)
    ack.fail("sink gave up")
    ack.finish(DELIVERED)  # another branch delivered it: still a failure for the source
    ack.fail("second reason")
    assert t.failed == [(7, "sink gave up")] and t.completed == []
    assert t.nacked == 1 and t.delivered == 0 and t.in_flight == 0


def test_take_hands_over_what_settled_and_starts_again() -> None:
    t = AckTracker()
    a, b, c = t.new_many(["a", "b", "c"])
    assert (t.entered, t.in_flight) == (3, 3)
    a.release()
    b.fail("bad")
    assert t.take() == (["a"], [("b", "bad")])
    assert t.take() == ([], [])
    c.release()
    assert t.take() == (["c"], [])
    assert t.in_flight == 0


def test_settle_many_counts_like_settling_one_by_one() -> None:
    def settle(one_by_one: bool) -> tuple[dict[str, int], list[object], list[tuple[object, str]]]:
        t = AckTracker()
        acks = t.new_many(list(range(6)))
        for a, outcome in zip(acks, [DELIVERED, DELIVERED, FILTERED, DEAD_LETTERED, DELIVERED, 0]):
            a.outcome = outcome
            a.pending = 0
        if one_by_one:
            for a in acks:
                t.settle(a)
        else:
            t.settle_many(acks)
        return counts(t), *t.take()

    assert settle(False) == settle(True)
    got, completed, failed = settle(False)
    assert (got["delivered"], got["filtered"], got["dead_lettered"], got["in_flight"]) == (3, 2, 1, 0)
    assert completed == [0, 1, 2, 3, 4, 5] and failed == []


def test_settle_many_with_a_failure_keeps_the_order_and_the_reasons() -> None:
    t = AckTracker()
    acks = t.new_many(["a", "b", "c"])
    for a in acks:
        a.outcome, a.pending = DELIVERED, 0
    acks[1].error = "refused"
    t.settle_many(acks)
    assert t.take() == (["a", "c"], [("b", "refused")])
    assert (t.delivered, t.nacked, t.in_flight) == (2, 1, 0)


def test_a_batch_ack_settles_message_by_message_and_commits_its_token_with_the_last() -> None:
    t = AckTracker()
    ack = t.new_batch(3, "offset-42")
    assert isinstance(ack, BatchAck) and (t.entered, t.in_flight) == (3, 3)
    ack.finish(DELIVERED)
    assert (t.in_flight, t.delivered, t.completed) == (2, 1, [])  # counted at once; the token waits
    ack.release()
    assert (t.in_flight, t.filtered, t.completed) == (1, 1, [])
    ack.finish(DEAD_LETTERED)
    assert t.completed == ["offset-42"] and t.failed == []
    assert counts(t) == {"entered": 3, "in_flight": 0, "delivered": 1, "filtered": 1, "dead_lettered": 1,
                         "nacked": 0}


def test_finish_many_settles_k_messages_of_a_batch() -> None:
    t = AckTracker()
    ack = t.new_batch(5, "tok")
    ack.finish_many(DELIVERED, 4)
    assert (t.in_flight, t.delivered, t.completed) == (1, 4, [])
    ack.finish_many(DELIVERED, 1)
    assert (t.in_flight, t.delivered, t.completed) == (0, 5, ["tok"])


def test_a_batch_with_failed_messages_is_rejected_once_per_failure() -> None:
    t = AckTracker()
    ack = t.new_batch(3, "tok")
    ack.fail("bad 1")
    ack.finish(DELIVERED)
    ack.fail("bad 2")
    # the token goes to reject for each failed message, and to commit for the ones that went through
    assert t.failed == [("tok", "bad 1"), ("tok", "bad 2")] and t.completed == ["tok"]
    assert (t.nacked, t.delivered, t.in_flight) == (2, 1, 0)

    all_failed = AckTracker()
    whole = all_failed.new_batch(2, "t2")
    whole.fail("x")
    whole.fail("y")
    assert all_failed.completed == [] and all_failed.failed == [("t2", "x"), ("t2", "y")]


def test_a_batch_ack_refuses_retain() -> None:
    t = AckTracker()
    with pytest.raises(TypeError, match="own_ack"):
        t.new_batch(2).retain()


def test_own_ack_gives_a_message_of_a_batch_an_ack_it_can_hold_twice() -> None:
    t = AckTracker()
    shared = t.new_batch(2, "tok")
    m1, m2 = Msg(1, ack=shared), Msg(2, ack=shared)
    own = own_ack(m1)
    assert own is m1.ack and type(own) is Ack and own.owner is shared
    assert own_ack(m1) is own  # already its own: the same ack
    assert m2.ack is shared
    own.retain(1)  # sent to two places
    own.finish(FILTERED)
    assert t.in_flight == 2
    own.finish(DELIVERED)
    assert (t.in_flight, t.delivered, t.filtered) == (1, 1, 0)  # one message, once, under its best outcome
    m2.ack.finish(DELIVERED)
    assert t.completed == ["tok"] and t.in_flight == 0


def test_own_ack_of_a_failed_branch_fails_the_message_in_its_batch() -> None:
    t = AckTracker()
    shared = t.new_batch(1, "tok")
    own = own_ack(Msg(1, ack=shared))
    own.retain(1)
    own.fail("branch failed")
    own.finish(DELIVERED)
    assert t.failed == [("tok", "branch failed")] and t.completed == [] and t.nacked == 1


def test_own_ack_of_a_plain_ack_is_that_ack() -> None:
    t = AckTracker()
    msg = Msg(1, ack=t.new())
    assert own_ack(msg) is msg.ack


def test_a_composite_ack_passes_its_outcome_or_its_failure_to_every_child() -> None:
    t = AckTracker()
    children = t.new_many(["a", "b"])
    window = CompositeAck(children)
    window.retain(1)  # the window's output went to two sinks
    window.finish(DELIVERED)
    assert t.completed == []
    window.release()
    assert t.completed == ["a", "b"] and t.delivered == 2

    t2 = AckTracker()
    failed = CompositeAck(t2.new_many(["c", "d"]))
    failed.fail("window sink gave up")
    assert t2.failed == [("c", "window sink gave up"), ("d", "window sink gave up")] and t2.completed == []


def test_a_composite_of_messages_of_one_batch_settles_each_of_them() -> None:
    t = AckTracker()
    shared = t.new_batch(3, "tok")
    CompositeAck([shared, shared]).finish(DELIVERED)  # two messages of the batch in one output
    assert (t.in_flight, t.delivered, t.completed) == (1, 2, [])


def test_the_noop_ack_and_msg_defaults() -> None:
    NOOP_ACK.retain(5)
    NOOP_ACK.release()
    NOOP_ACK.fail("ignored")
    NOOP_ACK.finish(DELIVERED)
    assert NOOP_ACK.pending == 1 and NOOP_ACK.error is None
    msg = Msg({"a": 1})
    assert msg.ack is NOOP_ACK and msg.meta == {} and msg.size == 0
    t = AckTracker()
    src = Msg({"a": 1}, {"k": "v"}, t.new("tok"), 12)
    out = src.derive({"b": 2})
    assert (out.body, out.meta, out.ack, out.size) == ({"b": 2}, src.meta, src.ack, 12)


def test_the_in_flight_limit() -> None:
    t = AckTracker(limit=2)
    assert t.has_room()
    a = t.new()
    assert t.has_room()
    t.new()
    assert not t.has_room()
    a.release()
    assert t.has_room()
    assert AckTracker(limit=0).has_room()  # 0: no limit
    unlimited = AckTracker()
    unlimited.new_batch(10_000)
    assert unlimited.has_room()


def test_wait_room_returns_when_settling_brings_in_flight_under_the_limit() -> None:
    async def go() -> None:
        t = AckTracker(limit=3)
        batch = t.new_batch(3, "tok")
        waiter = asyncio.ensure_future(t.wait_room())
        await asyncio.sleep(0)
        assert not waiter.done()
        batch.finish(DELIVERED)  # in_flight 2 < 3: room
        await asyncio.wait_for(waiter, 5)
        await t.wait_room()  # room already: returns at once

        t2 = AckTracker(limit=1)
        ack = t2.new()
        waiter2 = asyncio.ensure_future(t2.wait_room())
        await asyncio.sleep(0)
        assert not waiter2.done()
        ack.fail("nacked")  # a failure frees room too
        await asyncio.wait_for(waiter2, 5)

    asyncio.run(go())


def test_wait_settled_returns_when_something_settles_since_the_last_take() -> None:
    async def go() -> None:
        t = AckTracker()
        a, b = t.new_many(["a", "b"])
        waiter = asyncio.ensure_future(t.wait_settled())
        await asyncio.sleep(0)
        assert not waiter.done()
        a.release()
        await asyncio.wait_for(waiter, 5)
        await t.wait_settled()  # "a" not taken yet: returns at once
        assert t.take() == (["a"], [])
        waiter = asyncio.ensure_future(t.wait_settled())
        await asyncio.sleep(0)
        assert not waiter.done()
        b.fail("no")
        await asyncio.wait_for(waiter, 5)
        assert t.take() == ([], [("b", "no")])

    asyncio.run(go())


def test_a_batch_ack_wakes_a_room_waiter_message_by_message() -> None:
    async def go() -> None:
        t = AckTracker(limit=4)
        batch = t.new_batch(4, "tok")
        waiter = asyncio.ensure_future(t.wait_room())
        await asyncio.sleep(0)
        batch.finish(FILTERED)  # one of four: no commit yet, but room for one more message
        await asyncio.wait_for(waiter, 5)
        assert t.completed == [] and t.in_flight == 3

    asyncio.run(go())


def test_finish_all_leaves_the_shared_noop_ack_alone() -> None:
    """A sink's committed batch may hold messages nobody waits for (a window's output in release
    mode): the shared NOOP_ACK must not be counted down, or every later use of it is corrupt."""
    t = AckTracker()
    a = t.new("a")
    finish_all([NOOP_ACK, a, NOOP_ACK], DELIVERED)
    finish_all([NOOP_ACK], DELIVERED)
    assert NOOP_ACK.pending == 1 and NOOP_ACK.outcome == 0
    assert t.completed == ["a"] and t.delivered == 1
