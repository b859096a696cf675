"""`Msg.many`: a source's batch of messages under one meta, ack and size, as `Msg(...)` would make them."""

from __future__ import annotations

from engine.message import AckTracker, Msg, finish_all


def test_many_makes_the_same_messages_as_one_by_one() -> None:
    tracker = AckTracker()
    ack = tracker.new_batch(3, "t")
    meta = {"source": "s"}
    msgs = Msg.many([{"a": 1}, 2, None], meta, ack, 7)
    assert [(m.body, m.meta, m.ack, m.size) for m in msgs] == [
        ({"a": 1}, meta, ack, 7),
        (2, meta, ack, 7),
        (None, meta, ack, 7),
    ]
    assert type(msgs[0]) is Msg and msgs[0] is not msgs[1]
    msgs[0].body = "changed"  # each message is its own holder
    assert msgs[1].body == 2
    finish_all([m.ack for m in msgs], 1)
    assert tracker.take() == (["t"], []) and tracker.delivered == 3
    assert Msg.many([], meta, ack) == []
