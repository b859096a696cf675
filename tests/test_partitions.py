"""The run's partition ownership events (engine.partitions)."""

from engine import PartitionEvents


def test_listeners_hear_assignments_and_revocations_in_order():
    events = PartitionEvents()
    heard: list[tuple[str, int, bool]] = []
    events.assigned("src", 1)
    events.subscribe(lambda s, p, owned: heard.append((s, p, owned)))
    assert heard == [("src", 1, True)]  # what is owned already is told at once
    events.assigned("src", 3)
    events.assigned("src", 3)  # twice: told once
    assert events.owned("src") == {1, 3}
    events.revoked("src", 1)
    events.revoked("src", 7)  # never owned: nothing to tell
    assert heard == [("src", 1, True), ("src", 3, True), ("src", 1, False)]
    assert not events.owns("src", 1) and events.owns("src", 3)


def test_a_listener_still_sees_the_partition_owned_while_it_is_revoked():
    events = PartitionEvents()
    seen: list[bool] = []
    events.subscribe(lambda s, p, owned: seen.append(events.owns(s, p)))
    events.assigned("src", 0)
    events.revoked("src", 0)
    assert seen == [True, True]
    assert not events.owns("src", 0)
