"""Which source sequences a window's state has folded, per stream: exact, in bounded memory.

A window with checkpoints (`acks: checkpoint`) skips a replayed item whose state is in already. It
recognises it by its exact sequence (`meta.seq`, a JetStream stream sequence), not by position: a
redelivery can reach the window after newer items of its partition were folded (JetStream hands
naked and timed-out messages out in the order they were naked or ran out, and only once its timer
fired), and it must then fold, not be skipped.

`Coverage` holds one stream's covered sequences in one partition as a **floor** (every sequence at
or below it counts as covered) and the sorted sequences folded **above** it (an `array('q')`: 8
bytes each; the common case, newer sequences in order, appends a whole run in C). The floor moves:

* over a run: the sequences folded from `floor+1` on without a gap become the floor (an
  unpartitioned, unfiltered stream keeps nothing above it once a gap closes). Nothing is lost. The
  floor starts at -1 (nothing covered); a stream's first sequence is 0 or 1 (JetStream's is 1), so
  a run from 1 counts from the start too (0 is then covered);
* past gaps, by the bound: with more than `limit` sequences above it (a partition's sequences
  interleave with the other partitions' and never close up; a message dead-lettered or filtered
  upstream, or sent to `errors` / `late`, leaves a gap for good) the floor moves past the oldest
  until half the limit is left (`trimmed` counts them). A gap below the floor then counts as
  covered: a redelivery that comes after more than `limit // 2` newer items of its partition and
  stream were folded is skipped, as the old high-water mark skipped any that came after one.

Pure and synchronous. `export` / `restore` give plain data for the checkpoint's meta record: the
floor and the deltas between the sequences above it (zlib; regular interleavings compress to little).
"""

from __future__ import annotations

import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate, chain
from operator import sub
from typing import Any

__all__ = ["Coverage", "Covered"]

_BIG = sys.byteorder == "big"  # exported deltas are little-endian
_I64 = 1 << 63  # sequences kept are within 64 bits (JetStream's are)


class Coverage:
    """One stream's covered sequences in one partition (see the module docstring)."""

    __slots__ = ("floor", "limit", "seqs", "top", "trimmed")

    def __init__(self, limit: int, floor: int = -1) -> None:
        self.limit = max(limit, 2)
        self.floor = floor  # every sequence <= floor is covered
        self.seqs = array("q")  # sorted, all > floor: folded
        self.top = floor  # the highest covered sequence
        self.trimmed = 0  # sequences the bound moved under the floor with gaps among them

    def covers(self, seq: int) -> bool:
        if seq <= self.floor:
            return True
        if seq > self.top:
            return False
        seqs = self.seqs
        return seqs[bisect_left(seqs, seq)] == seq

    def add(self, seq: int) -> None:
        """`seq` was folded."""
        seqs = self.seqs
        if seq > self.top:
            seqs.append(seq)
            self.top = seq
        elif seq > self.floor:
            i = bisect_left(seqs, seq)
            if seqs[i] == seq:
                return
            seqs.insert(i, seq)
        else:
            return
        self._settle()

    def extend(self, seqs: list[int]) -> None:
        """A run folded: `seqs` strictly increasing, the first above `top`, all within 64 bits."""
        first, top = seqs[0], seqs[-1]
        self.top = top
        if not self.seqs and first == self._base(first) + 1 and top - first == len(seqs) - 1:
            self.floor = top  # a run from the floor on (an unpartitioned stream): nothing to keep
            return
        self.seqs += array("q", seqs)  # `array(list)` converts faster than `extend(list)`
        self._settle()

    def _base(self, first: int) -> int:
        """The floor, for runs starting at `first`: a stream starts at 0 or 1 (JetStream: 1), so
        before anything was folded a run from 1 counts from the start too."""
        floor = self.floor
        return 0 if floor == -1 and first == 1 else floor

    def _settle(self) -> None:
        seqs = self.seqs
        base = self._base(seqs[0])
        if seqs[0] == base + 1:  # a run above the floor: the floor takes it (seqs[i] - i rises)
            if seqs[-1] - base == len(seqs):
                run = len(seqs)
            else:
                run = bisect_right(range(len(seqs)), base + 1, key=lambda i: seqs[i] - i)
            self.floor = seqs[run - 1]
            del seqs[:run]
        if len(seqs) > self.limit:
            self._trim()

    def _trim(self) -> None:
        """Past the oldest gaps, to half the limit."""
        seqs = self.seqs
        cut = len(seqs) - self.limit // 2
        self.trimmed += cut
        self.floor = seqs[cut - 1]
        del seqs[:cut]

    def export(self) -> tuple[int, bytes]:
        """(floor, zlib of the little-endian int64 deltas of the sequences above it)."""
        deltas = array("q", map(sub, self.seqs, chain((self.floor,), self.seqs)))
        if _BIG:
            deltas.byteswap()
        return self.floor, zlib.compress(deltas.tobytes(), 1)

    @classmethod
    def restore(cls, limit: int, floor: int, data: bytes) -> Coverage:
        """From `export`'s data; ValueError if it is not that."""
        if type(floor) is not int or type(data) is not bytes:
            raise ValueError("not a floor and its deltas")
        deltas = array("q")
        try:
            deltas.frombytes(zlib.decompress(data))
            if _BIG:
                deltas.byteswap()
            if deltas and min(deltas) <= 0:
                raise ValueError("sequences not increasing")
            seqs = array("q", accumulate(deltas, initial=floor))[1:]
        except (zlib.error, OverflowError) as exc:
            raise ValueError(str(exc)) from None
        cov = cls(limit, floor)
        cov.seqs = seqs
        cov.top = seqs[-1] if seqs else floor
        if seqs:
            cov._settle()  # written under a larger limit: trimmed to this one
        return cov

    def __len__(self) -> int:
        """Sequences kept above the floor."""
        return len(self.seqs)


class Covered(dict[str, Coverage]):
    """A partition's coverage: stream (`meta.stream`, "" without one) -> `Coverage`. A sequence of a
    stream not seen yet is covered at or below -1, as before anything was folded."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __missing__(self, stream: str) -> Coverage:
        cov = self[stream] = Coverage(self.limit)
        return cov

    def covers(self, stream: str, seq: int) -> bool:
        cov = self.get(stream)
        return seq <= -1 if cov is None else cov.covers(seq)

    def add(self, stream: str, seq: int) -> None:
        if -_I64 <= seq < _I64:
            self[stream].add(seq)

    def add_metas(self, metas: list[dict[str, Any]]) -> None:
        """Items folded one by one: their `meta.seq` (ints only) of their `meta.stream`."""
        for meta in metas:
            seq = meta.get("seq")
            if type(seq) is int and -_I64 <= seq < _I64:
                self[meta.get("stream") or ""].add(seq)

    def top(self, stream: str) -> int:
        cov = self.get(stream)
        return -1 if cov is None else cov.top

    @property
    def tracked(self) -> int:
        """Sequences kept above the floors."""
        return sum(map(len, self.values()))

    @property
    def trimmed(self) -> int:
        return sum(c.trimmed for c in self.values())

    def export(self) -> dict[str, tuple[int, bytes]]:
        return {stream: cov.export() for stream, cov in self.items()}

    def highest(self) -> dict[str, int]:
        """stream -> the highest covered sequence (the checkpoint format before exact coverage)."""
        return {stream: cov.top for stream, cov in self.items()}

    @classmethod
    def restore(cls, limit: int, exported: dict[str, tuple[int, bytes]] | None, highest: dict[str, int]) -> Covered:
        """From `export`'s data; a checkpoint written before exact coverage has only the highest
        sequence per stream (`highest`): it becomes the floor. ValueError if the data is not that."""
        covered = cls(limit)
        if exported is None:
            for stream, top in highest.items():
                if type(top) is not int:
                    raise ValueError(f"position {top!r} of stream {stream!r} is no sequence")
                covered[stream] = Coverage(limit, top)
            return covered
        for stream, (floor, data) in exported.items():
            covered[stream] = Coverage.restore(limit, floor, data)
        return covered
