"""`Coverage` (operators/window_coverage.py) against a plain set of the folded sequences: random
interleavings, gaps that close late or never, runs and single adds, export/restore, the bound."""

from __future__ import annotations

import random

import pytest

from operators.window_coverage import Coverage, Covered


def _check(cov: Coverage, folded: set[int], universe: range) -> None:
    """Every folded sequence is covered; an unfolded one only at or below the floor."""
    assert list(cov.seqs) == sorted(cov.seqs) and len(set(cov.seqs)) == len(cov.seqs)
    assert all(s > cov.floor for s in cov.seqs) and len(cov) <= cov.limit
    assert cov.top == max([cov.floor, *folded])
    for s in universe:
        assert cov.covers(s) == (s in folded or s <= cov.floor), s


@pytest.mark.parametrize("seed", range(30))
def test_coverage_equals_the_set_of_folded_sequences_above_its_floor(seed: int) -> None:
    rng = random.Random(seed)
    partitions = rng.choice([1, 1, 3, 8])
    mine = rng.randrange(partitions)
    seqs = [s for s in range(1, 400) if s % partitions == mine]  # this partition's sequences
    late = set(rng.sample(seqs, k=len(seqs) // 10))  # redelivered later, out of order
    lost = set(rng.sample(sorted(set(seqs) - late), k=len(seqs) // 20))  # never come (dead-lettered)
    limit = rng.choice([1000, 60])
    cov, folded = Coverage(limit), set()
    order = [s for s in seqs if s not in late and s not in lost]
    pending = sorted(late)
    i = 0
    while i < len(order) or pending:
        if pending and (i >= len(order) or rng.random() < 0.1):
            s = pending.pop(rng.randrange(len(pending)))  # a redelivery: below newer ones
            if not cov.covers(s):
                cov.add(s)
            folded.add(s)
        else:
            run = order[i : i + rng.randrange(1, 20)]
            i += len(run)
            if run[0] > cov.top and rng.random() < 0.5:  # as the window's batch path calls it
                cov.extend(run)
            else:
                for s in run:
                    cov.add(s)
            folded.update(run)
        if limit == 1000:  # never reached: exact
            _check(cov, folded, range(-2, 402))
        else:  # the bound may have moved the floor past gaps: those count as covered
            assert all(cov.covers(s) for s in folded) and len(cov) <= limit
    back = Coverage.restore(limit, *cov.export())
    assert (back.floor, back.seqs, back.top) == (cov.floor, cov.seqs, cov.top)
    if limit == 1000 and partitions == 1 and not lost:  # every gap closed: nothing kept above the floor
        assert (cov.floor, len(cov)) == (399, 0)


def test_runs_from_the_floor_keep_nothing_and_the_bound_trims_the_oldest() -> None:
    cov = Coverage(1000)
    cov.extend(list(range(1, 501)))  # a stream starts at 1: a run from the start
    assert (cov.floor, len(cov), cov.covers(0), cov.covers(501)) == (500, 0, True, False)
    cov.extend([502, 503])  # 501 missing
    cov.add(501)  # came late: the run closes
    assert (cov.floor, len(cov)) == (503, 0)
    sparse = Coverage(1000)
    sparse.extend(list(range(10, 30_000, 8)))
    assert 500 <= len(sparse) <= 1000 and sparse.trimmed == 3749 - len(sparse)
    assert sparse.covers(11) and not sparse.covers(29_999) and sparse.covers(29_994)
    zero = Coverage(100)  # a stream from 0 (generate)
    zero.extend([0, 1, 2])
    assert (zero.floor, len(zero)) == (2, 0)


def test_covered_restores_an_old_checkpoints_positions_as_floors_and_refuses_damage() -> None:
    covered = Covered.restore(100, None, {"A": 7, "": 3})
    assert covered.covers("A", 7) and not covered.covers("A", 8) and covered.covers("", 3)
    assert not covered.covers("B", 0) and covered.covers("B", -1)  # a stream not seen: nothing covered
    for bad in [(5, b"not zlib"), (5, __import__("zlib").compress(b"\x00" * 8)), ("5", b"")]:
        with pytest.raises(ValueError):
            Coverage.restore(100, *bad)
