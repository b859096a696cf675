"""A partition lane's duplicate filter (`_Seqs`): a copy of a message the lane acked is acked again
and dropped, a copy of one it still holds waits for the first and is acked with it, a message the
lane naked itself is processed again, and anything new passes."""

from __future__ import annotations

import pytest

from operators.connectors.jetstream.source import _Seqs


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


def test_the_memory_of_acked_sequences_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Seqs, "KEEP", 10)
    seqs = _Seqs()
    for i in range(1, 31):
        seqs.filter([_frame(i)])
        seqs.acked(i)
    assert len(seqs.done) == 10 and 30 in seqs.done and 1 not in seqs.done
