"""The window core: assigners, watermark and window state. Pure and synchronous (no I/O, no asyncio).

All times are integer microseconds since the Unix epoch, so window edges are exact. Windows are
half-open `[start, end)`: an item exactly at `end` belongs to the next window.

* tumbling: `start = t - (t - offset) mod size`.
* sliding: every `[s, s + size)` with `s ≡ offset (mod slide)` that contains `t` (size/slide windows).
* session: items closer than `gap` (strictly) belong together; a session is
  `[first item, last item + gap)`, and an item that bridges two sessions merges them.

A window fires when the watermark reaches its end (`wm >= end`): with `wm = max event time −
max_out_of_orderness`, no on-time item can still fall in it. It is kept `allowed_lateness` longer
(purged once `wm >= end + allowed_lateness`); a late item that reaches a kept window updates it
and the window is emitted again as an update. An item with a window no longer kept is too late
there (`WindowStore.check` says so; the operator sends it to `late`). A session item is too late
when its own session `[t, t + gap)` is past lateness (`t + gap + lateness <= wm`), even if it would
merge into a kept session, and when it falls before the end of a purged session of its key, since
it would have merged with it: that keeps sessions the same for every arrival order within the
lateness, and makes the rule independent of other keys (a purge horizon is needed only until
`wm >= horizon + gap + lateness`, after which the first rule covers it, so it is then forgotten).

Use: `check(key, t, values)` (nothing changes; says where the item goes, or why it cannot), then
`add(...)`; `advance(wm)`, `take_updates()` and `flush()` return `Emission`s to send.

Batches (the common case, `plan_batch` / `fold_batch`): items whose values are already known to
fold (numbers for sum/avg/min/max), none of them late, and a watermark that closes nothing while
the batch goes in. Then folding them all at once is the same as `check` + `add` one by one (same
windows, states, seq numbers, heaps and acks): windows are looked up in one pass and the states
updated by a loop generated for the declared aggregates (count, sum, avg, min, max only).
`plan_batch` says None when a batch is not such a case, and nothing has changed.

Acks: `add` holds the item's ack in each of its windows (an emission carries them). An item added
with ack None holds nothing (the `window` operator's `release` and `checkpoint` modes): a window
then only remembers that it has items not yet carried by an emission.

Checkpoints: with `track_keys()` the store records which keys changed (`dirty`); `export_key(key)` /
`restore_key(key, row)` and `export_meta()` / `restore_meta(meta)` turn its state into plain data
and back (the `window` operator packs them in chunk records; `restore_keys` puts a chunk back:
tumbling and sliding keys lazily, as rows built into windows on first use or when the watermark
reaches one of their ends).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from itertools import compress, repeat
from operator import add, not_
from typing import Any, NamedTuple

from operators.window_aggregates import _PLAIN, Aggregate, json_safe

__all__ = ["NEG_INF", "Emission", "Watermark", "WindowStore"]

NEG_INF = -(1 << 62)
_NO_ROOM = 1 << 63  # above every time: an empty heap closes nothing
_NUMBERS = (int, float)
_new_tuple = tuple.__new__
_NONE_EMITTED: list[tuple[int, int]] = []  # `_Window.emitted` of a window not emitted yet: never changed

# state updates of the batch fold, per op (`st[i]`: the state, `v`: the value, known to be a
# number; `|` separates lines)
_FOLD_OPS = {
    "count": "if v{i} is not None: st[{i}] += 1",
    "sum": "s = st[{i}]; st[{i}] = v{i} if s is None else s + v{i}",
    "avg": "s = st[{i}]; st[{i}] = (v{i}, 1) if s is None else (s[0] + v{i}, s[1] + 1)",
    "min": "s = st[{i}]|if s is None or v{i} < s: st[{i}] = v{i}",
    "max": "s = st[{i}]|if s is None or v{i} > s: st[{i}] = v{i}",
}


def _make_batch_fold(aggregates: list[Aggregate]) -> Callable[..., None] | None:
    """`fold(windows, acks, *columns)`: fold item i into windows[i] as `WindowStore._fold` does, for
    aggregates all among `_FOLD_OPS` (else None); a bare count adds 1 (no column)."""
    if any(a.op not in _FOLD_OPS for a in aggregates):
        return None
    names = [f"v{i}" for i, a in enumerate(aggregates) if a.uses_value]
    lines = []
    for i, a in enumerate(aggregates):
        lines += (_FOLD_OPS[a.op].format(i=i) if a.uses_value else f"st[{i}] += 1").split("|")
    body = "\n        ".join(lines) or "pass"
    body12 = "\n            ".join(lines) or "pass"
    src = (  # acks None: the items hold none; the caller marks their windows as holding unemitted
        # items (`WindowStore._fold`), once per window rather than per item
        f"def fold(wins, acks, {', '.join(names)}):\n"
        f"    if acks is None:\n"
        f"        for w, {''.join(n + ', ' for n in names)} in zip(wins, {', '.join(names)}):\n"
        f"            st = w.states\n"
        f"            {body12}\n"
        f"            w.count += 1\n"
        f"        return\n"
        f"    for w, a, {''.join(n + ', ' for n in names)} in zip(wins, acks, {', '.join(names)}):\n"
        f"        st = w.states\n"
        f"        {body}\n"
        f"        w.count += 1\n"
        f"        held = w.acks\n"
        f"        if a is not None or not held: held.append(a)\n"
    )
    scope: dict[str, Any] = {}
    exec(compile(src, "<window batch fold>", "exec"), scope)
    return scope["fold"]  # type: ignore[no-any-return]


class Emission(NamedTuple):
    """One window to send downstream: what it holds and the acks it releases when committed."""

    key: Any
    start: int
    end: int
    items: int
    results: dict[str, Any]
    replaces: list[tuple[int, int]]  # earlier emissions this one supersedes; empty = first emission
    acks: list[Any]


class _Window:
    """State of one window (or session) of one key."""

    __slots__ = ("acks", "alive", "count", "emitted", "end", "key", "seq", "start", "states")

    def __init__(self, key: Any, start: int, end: int, states: list[Any], seq: int):
        self.key = key
        self.start = start
        self.end = end
        self.count = 0
        self.states = states
        self.acks: list[Any] = []  # acks of items not yet carried by an emission
        # [start, end) of earlier emissions it replaces; none yet: one shared empty list (never
        # changed in place: a window's list is replaced, so open windows cost the collector less)
        self.emitted: list[tuple[int, int]] = _NONE_EMITTED
        self.alive = True
        self.seq = seq  # tie-breaker for heaps


class Watermark:
    """Event-time watermark: max event time − out-of-orderness, pushed on by wall-clock idleness.

    After `idle_timeout` seconds of wall clock without items, event time is assumed to advance
    with the wall clock from the last item: `wm = max_event + idle − out_of_orderness`."""

    __slots__ = ("idle_timeout", "last_arrival", "max_event", "ooo", "value")

    def __init__(self, ooo: int, idle_timeout: float | None):
        self.ooo = ooo
        self.idle_timeout = idle_timeout
        self.max_event = NEG_INF
        self.value = NEG_INF
        self.last_arrival: float | None = None

    def observe(self, t: int) -> bool:
        """An item at event time `t`; True when the watermark moved."""
        if t > self.max_event:
            self.max_event = t
            if t - self.ooo > self.value:
                self.value = t - self.ooo
                return True
        return False

    def on_idle(self, now: float) -> bool:
        """Wall-clock check (tick); True when idleness moved the watermark."""
        if self.idle_timeout is None or self.last_arrival is None or self.max_event == NEG_INF:
            return False
        idle = now - self.last_arrival
        if idle < self.idle_timeout:
            return False
        candidate = self.max_event + int(idle * 1_000_000) - self.ooo
        if candidate > self.value:
            self.value = candidate
            return True
        return False


class WindowStore:
    """Windows of every key for one window definition; `add` items, `advance` the watermark."""

    def __init__(
        self,
        kind: str,
        aggregates: list[Aggregate],
        size: int = 0,
        slide: int = 0,
        gap: int = 0,
        offset: int = 0,
        lateness: int = 0,
    ):
        self.kind = kind
        self.aggregates = aggregates
        self.size = size
        self.slide = slide if kind == "sliding" else size
        self.gap = gap
        self.offset = offset
        self.lateness = lateness
        self._checked = [i for i, a in enumerate(aggregates) if a.checks_value]
        self._batch_fold = _make_batch_fold(aggregates)
        # a new window's states, copied when every aggregate starts from an immutable value
        fresh = [a.new() for a in aggregates]
        self._fresh = fresh if all(type(v) in (int, type(None)) for v in fresh) else None
        self._names = [a.name for a in aggregates]
        self._plain = all(a.op in ("count", "sum", "min", "max") for a in aggregates)  # result: json_safe
        # min/max hold numbers only (the batch fold compares numbers without checking the state)
        self._ordered = [i for i, a in enumerate(aggregates) if a.checks_state]
        self.mixed = False  # some min/max state may hold a non-number: no batch fold
        self.dirty: set[Hashable] | None = None  # keys changed since the last checkpoint (track_keys)
        self._starts: dict[Hashable, set[int]] | None = None  # tumbling/sliding: window starts per key
        self._reset()

    def track_keys(self) -> None:
        """Record the keys whose state changes (`dirty`), for incremental checkpoints."""
        self.dirty = set()
        self._starts = {}
        for key, start in self._windows:
            self._starts.setdefault(key, set()).add(start)

    def _reset(self) -> None:
        if self.dirty is not None:  # every key goes: the checkpoint forgets them all
            self.dirty.update(self._starts or ())
            self.dirty.update(self._sessions)
            self.dirty.update(self._purged_until)
            self.dirty.update(self._lazy)
            self._starts = {}
        self.wm = NEG_INF
        self._seq = 0
        self._dirty: dict[int, _Window] = {}  # fired windows with new items, by id()
        # tumbling / sliding: windows by (key, start), and by start and key (the batch fold's
        # lookups); fire and purge by end
        self._windows: dict[tuple[Hashable, int], _Window] = {}
        self._by_start: dict[int, dict[Hashable, _Window]] = {}
        self._by_end: dict[int, list[_Window]] = {}
        self._fire: list[int] = []
        self._purge: list[int] = []
        # sessions: per key a short list; heaps of (time, seq, window, end) checked lazily
        self._sessions: dict[Hashable, list[_Window]] = {}
        # tumbling / sliding keys restored from a checkpoint and not touched since: their rows, built
        # into windows on first use (`check`), when the watermark reaches one of their ends, or a flush
        self._lazy: dict[Hashable, dict[str, Any]] = {}
        self._lazy_at: dict[int, list[Hashable]] = {}
        self._purged_until: dict[Hashable, int] = {}
        self._prune_at = 1024
        self._session_fire: list[tuple[int, int, _Window, int]] = []
        self._session_purge: list[tuple[int, int, _Window, int]] = []

    # ----- adding items -----------------------------------------------------------------------

    def check(
        self, key: Hashable, t: int, values: list[Any]
    ) -> tuple[list[_Window | tuple[int, int]], bool, str | None]:
        """Where an item goes, before anything changes: (targets, too_late_somewhere, error)."""
        if self._lazy and key in self._lazy:
            self._wake(key)
        if self.kind == "session":
            return self._check_session(key, t, values)
        wm, lateness, size = self.wm, self.lateness, self.size
        if self.kind == "tumbling":  # the hot path: one window
            start = t - (t - self.offset) % size
            if start + size + lateness <= wm:
                return [], True, None
            window = self._windows.get((key, start))
            one: list[_Window | tuple[int, int]] = [window if window is not None else (start, start + size)]
            return one, False, self._check_values(one, values) if self._checked else None
        targets: list[_Window | tuple[int, int]] = []
        late = False
        start = t - (t - self.offset) % self.slide
        while start > t - size:
            end = start + size
            if end + lateness <= wm:
                late = True
            else:
                window = self._windows.get((key, start))
                targets.append(window if window is not None else (start, end))
            start -= self.slide
        error = self._check_values(targets, values)
        return targets, late, error

    def _check_values(self, targets: list[Any], values: list[Any]) -> str | None:
        aggregates = self.aggregates
        for i in self._checked:
            value = values[i]
            if value is None:
                continue
            agg = aggregates[i]
            if agg.checks_state and type(value) not in _NUMBERS:
                self.mixed = True
            reason = agg.check(None, value)
            if reason is None and agg.checks_state:
                for window in targets:
                    if isinstance(window, _Window):
                        reason = agg.check(window.states[i], value)
                        if reason:
                            break
            if reason:
                return reason
        return None

    def add(
        self, key: Hashable, t: int, values: list[Any], ack: Any, targets: list[_Window | tuple[int, int]]
    ) -> None:
        """Fold an item (already `check`ed) into its windows; its ack is held once per window."""
        self._seq += 1
        seq = self._seq
        if self.dirty is not None:
            self.dirty.add(key)
        if self.kind == "session":
            self._add_session(key, t, values, ack, targets, seq)
            return
        if len(targets) > 1 and ack is not None:
            ack.retain(len(targets) - 1)
        for target in targets:
            window = target if isinstance(target, _Window) else self._open(key, *target)
            self._fold(window, values, ack, t, seq)
            if window.end <= self.wm:
                self._dirty[id(window)] = window

    def _new(self) -> list[Any]:
        return [a.new() for a in self.aggregates]

    def _open(self, key: Hashable, start: int, end: int) -> _Window:
        fresh = self._fresh
        states = fresh.copy() if fresh is not None else [a.new() for a in self.aggregates]
        return self._reopen(key, start, end, states, self._seq)

    def _reopen(self, key: Hashable, start: int, end: int, states: list[Any], seq: int) -> _Window:
        window = _Window(key, start, end, states, seq)
        self._windows[(key, start)] = window
        of_start = self._by_start.get(start)
        if of_start is None:
            self._by_start[start] = of_start = {}
        of_start[key] = window
        if self._starts is not None:
            self._starts.setdefault(key, set()).add(start)
        bucket = self._by_end.get(end)
        if bucket is None:
            self._by_end[end] = bucket = []
            heapq.heappush(self._fire if end > self.wm else self._purge, end)
        bucket.append(window)
        return window

    def _fold(self, window: _Window, values: list[Any], ack: Any, t: int, seq: int) -> None:
        states = window.states
        for i, agg in enumerate(self.aggregates):
            states[i] = agg.add(states[i], values[i], t, seq)
        window.count += 1
        acks = window.acks
        if ack is not None or not acks:  # None: holds no ack, only marks unemitted items
            acks.append(ack)

    # ----- sessions -----------------------------------------------------------------------------

    def _check_session(self, key: Hashable, t: int, values: list[Any]) -> tuple[list[Any], bool, str | None]:
        end = t + self.gap
        # too late: the item's own session [t, t + gap) is past lateness (even if it would merge
        # into a kept session), or it falls before the end of a purged session of its key
        if end + self.lateness <= self.wm or t < self._purged_until.get(key, NEG_INF):
            return [], True, None
        targets = [s for s in self._sessions.get(key, ()) if s.start < end and t < s.end]
        return targets, False, self._check_values(targets, values)

    def _add_session(
        self, key: Hashable, t: int, values: list[Any], ack: Any, targets: list[Any], seq: int
    ) -> None:
        sessions = self._sessions.setdefault(key, [])
        if not targets:
            window = _Window(key, t, t + self.gap, [a.new() for a in self.aggregates], seq)
            sessions.append(window)
            old_end = None  # a new session: schedule it
        else:
            window = targets[0]
            old_end = window.end  # its fire/purge entries are for this end: any change reschedules
            for other in targets[1:]:
                self._absorb(window, other)
                sessions.remove(other)
        window.start = min(window.start, t)
        window.end = max(window.end, t + self.gap)
        self._fold(window, values, ack, t, seq)
        if window.end != old_end:
            self._schedule_session(window)
        if window.end <= self.wm:
            self._dirty[id(window)] = window

    def _absorb(self, window: _Window, other: _Window) -> None:
        for i, agg in enumerate(self.aggregates):
            window.states[i] = agg.merge(window.states[i], other.states[i])
        window.count += other.count
        window.acks.extend(other.acks)
        if other.emitted:
            window.emitted = [*window.emitted, *other.emitted]  # not in place (`_NONE_EMITTED`)
        window.start = min(window.start, other.start)
        window.end = max(window.end, other.end)
        other.alive = False
        self._dirty.pop(id(other), None)

    def _schedule_session(self, window: _Window) -> None:
        entry = (window.end, window.seq, window, window.end)
        if window.end > self.wm:
            heapq.heappush(self._session_fire, entry)
        else:
            heapq.heappush(self._session_purge, (window.end + self.lateness, *entry[1:]))

    # ----- batches (see the module docstring) ---------------------------------------------------

    @property
    def batch_ready(self) -> bool:
        """True when `plan_batch` can take batches (aggregates it folds, no lazily restored keys)."""
        return self._batch_fold is not None and self.kind != "sliding" and not self.mixed and not self._lazy

    def next_close(self) -> int:
        """The watermark at which `advance` would next emit or purge something (a bound: it may do
        nothing there)."""
        if self.kind == "session":
            fire, purge = self._session_fire, self._session_purge
            return min(fire[0][0] if fire else _NO_ROOM, purge[0][0] if purge else _NO_ROOM)
        return min(self._fire[0] if self._fire else _NO_ROOM,
                   self._purge[0] + self.lateness if self._purge else _NO_ROOM)

    def plan_batch(self, keys: list[Hashable], times: list[int]) -> tuple[list[int], list[int]] | None:
        """(plan, ends) for items to `fold_batch`, or None for a kind it does not take (sliding):
        ends[i] is the end of item i's window (its own session). An item whose end is at or before
        the watermark when it comes is late, or updates a fired window: it goes through `check`."""
        if self.kind == "session":
            gap = self.gap
            return times, [t + gap for t in times]
        if self.kind != "tumbling":
            return None
        size, offset = self.size, self.offset
        starts = [t - (t - offset) % size for t in times]
        return starts, list(map(add, starts, repeat(size)))

    def first_purged(self, keys: list[Hashable], times: list[int], start: int, stop: int) -> int:
        """The first item of start..stop-1 that is too late as it falls before a purged session of
        its key (sessions; it goes through `check`), else stop."""
        purged = self._purged_until
        if purged and not purged.keys().isdisjoint(keys[start:stop]):
            for i in range(start, stop):
                if times[i] < purged.get(keys[i], NEG_INF):
                    return i
        return stop

    def fold_batch(self, keys: list[Hashable], plan: Any, columns: list[list[Any] | None],
                   acks: list[Any] | None) -> None:
        """Fold items as `check` + `add` would, given their plan (`plan_batch`): item i has key
        keys[i], value columns[j][i] for each aggregate j (None for a bare count) and ack acks[i]
        (acks None: the items hold none). The caller makes sure that no item is late or updates a
        fired window and that the watermark closes nothing before the last item is in."""
        seq0 = self._seq
        if self.dirty is not None:
            self.dirty.update(keys)
        cols = [c for c in columns if c is not None]
        if self.kind == "session":
            self._fold_sessions(keys, plan, cols, acks)
            return
        windows, by_start = self._windows, self._by_start
        first = plan[0]
        if min(plan) == first == max(plan):  # one window start (most batches): look up by key alone
            of_first = by_start.get(first)
            wins: list[Any] = list(map(of_first.get, keys)) if of_first is not None else [None] * len(keys)
        else:
            wins = list(map(windows.get, zip(keys, plan)))
        if not all(wins):  # new windows (a `_Window` is always true): `_open`, inline
            size, by_end, fresh, starts_of, wm = self.size, self._by_end, self._fresh, self._starts, self.wm
            for i in compress(range(len(wins)), map(not_, wins)):
                key, start = keys[i], plan[i]
                of_start = by_start.get(start)
                if of_start is None:
                    by_start[start] = of_start = {}
                w = of_start.get(key)
                if w is None:
                    end = start + size
                    # the window's seq: its first item's
                    w = _Window(key, start, end, fresh.copy() if fresh is not None else self._new(), seq0 + i + 1)
                    windows[(key, start)] = w
                    of_start[key] = w
                    if starts_of is not None:
                        starts_of.setdefault(key, set()).add(start)
                    bucket = by_end.get(end)
                    if bucket is None:
                        by_end[end] = bucket = []
                        heapq.heappush(self._fire if end > wm else self._purge, end)
                    bucket.append(w)
                    if acks is None:  # it holds unemitted items (the batch fold marks none)
                        w.acks.append(None)
                wins[i] = w
        # acks None: every other window is open and not fired (no item updates a fired one), so it
        # holds unemitted items already: its `acks` is not empty
        self._seq = seq0 + len(keys)
        self._batch_fold(wins, acks, *cols)  # type: ignore[misc]

    def _fold_sessions(self, keys: list[Hashable], times: list[int], cols: list[list[Any]],
                       acks: list[Any] | None) -> None:
        """`_add_session` item by item, the folds deferred and done in runs (before each merge, so
        merged states add up in the same order)."""
        gap, sessions_of, fold, fresh = self.gap, self._sessions, self._batch_fold, self._fresh
        assert fold is not None  # batch_ready
        seq = self._seq
        wins: list[Any] = []
        done = 0  # items before this one are folded
        mark = acks is None  # the items hold no ack: mark their windows as holding unemitted items
        for i, (key, t) in enumerate(zip(keys, times)):
            seq += 1
            end = t + gap
            sessions = sessions_of.get(key)
            if sessions is None:
                window = _Window(key, t, end, fresh.copy() if fresh is not None else self._new(), seq)
                sessions_of[key] = [window]
                self._schedule_session(window)
                if mark:
                    window.acks.append(None)
                wins.append(window)
                continue
            targets = [s for s in sessions if s.start < end and t < s.end]
            if not targets:
                window = _Window(key, t, end, fresh.copy() if fresh is not None else self._new(), seq)
                sessions.append(window)
                self._schedule_session(window)
                if mark:
                    window.acks.append(None)
                wins.append(window)
                continue
            window = targets[0]
            old_end = window.end
            if len(targets) > 1:
                self._fold_run(fold, wins, acks, cols, done, i)
                wins, done = [], i
                for other in targets[1:]:
                    self._absorb(window, other)
                    sessions.remove(other)
            if t < window.start:
                window.start = t
            if end > window.end:
                window.end = end
            if window.end != old_end:
                self._schedule_session(window)
            if mark and not window.acks:  # emitted already (a session that fired, now extended)
                window.acks.append(None)
            wins.append(window)
        if done == 0:  # no merge: no copies
            fold(wins, acks, *cols)
        else:
            self._fold_run(fold, wins, acks, cols, done, len(times))
        self._seq = seq

    @staticmethod
    def _fold_run(fold: Any, wins: list[Any], acks: list[Any] | None, cols: list[list[Any]],
                  start: int, stop: int) -> None:
        """Fold items start..stop-1 (`wins` holds their windows)."""
        if wins:
            fold(wins, None if acks is None else acks[start:stop], *(c[start:stop] for c in cols))

    # ----- time -------------------------------------------------------------------------------

    def advance(self, wm: int) -> list[Emission]:
        """Move the watermark to `wm`: emit the windows it closes, purge those past lateness."""
        if wm <= self.wm:
            return []
        self.wm = wm
        out: list[Emission] = []
        if self.kind == "session":
            self._advance_sessions(wm, out)
        else:
            fire, purge = self._fire, self._purge
            while fire and fire[0] <= wm:
                end = heapq.heappop(fire)
                self._wake_end(end)
                self._emit_all(self._by_end[end], out)
                heapq.heappush(purge, end)
            while purge and purge[0] + self.lateness <= wm:
                end = heapq.heappop(purge)
                self._wake_end(end)
                self._by_start.pop(end - self.size, None)  # every window ending there starts there
                windows, dirty = self._windows, self._dirty
                for window in self._by_end.pop(end):
                    del windows[(window.key, window.start)]
                    if self._starts is not None:
                        self._forget_start(window.key, window.start)
                    if dirty and dirty.pop(id(window), None) is not None:
                        self._emit(window, out)  # a pending update goes out before the state does
        return out

    def _advance_sessions(self, wm: int, out: list[Emission]) -> None:
        fire, purge = self._session_fire, self._session_purge
        while fire and fire[0][0] <= wm:
            _, seq, window, end = heapq.heappop(fire)
            if window.alive and window.end == end:
                self._emit(window, out)
                heapq.heappush(purge, (end + self.lateness, seq, window, end))
        while purge and purge[0][0] <= wm:
            _, _, window, end = heapq.heappop(purge)
            if window.alive and window.end == end:
                window.alive = False
                if self._dirty.pop(id(window), None) is not None:
                    self._emit(window, out)
                sessions = self._sessions[window.key]
                sessions.remove(window)
                if not sessions:
                    del self._sessions[window.key]
                key = window.key
                if self.dirty is not None:
                    self.dirty.add(key)
                if end > self._purged_until.get(key, NEG_INF):
                    self._purged_until[key] = end
        # forget the horizons at or before wm - gap - lateness: an item before one of them has its
        # own session past lateness, so it is too late without it. Which horizons are kept depends
        # on the watermark only, never on how many keys exist; the map holds the keys purged in
        # the last gap + lateness of event time (amortised: pruned once it has doubled)
        if len(self._purged_until) > self._prune_at:
            horizon = wm - self.gap - self.lateness
            self._purged_until = {k: v for k, v in self._purged_until.items() if v > horizon}
            self._prune_at = 2 * len(self._purged_until) + 1024

    def take_updates(self) -> list[Emission]:
        """Windows that fired already and received (allowed) late items since: emit them again."""
        if not self._dirty:
            return []
        out: list[Emission] = []
        wm = self.wm
        for window in sorted(self._dirty.values(), key=lambda w: (w.end, w.seq)):
            if window.end <= wm:  # a session a late item extended past the watermark waits for it
                self._emit(window, out)
        self._dirty.clear()
        return out

    def flush(self) -> list[Emission]:
        """End of input: emit every window still holding unemitted items, then forget all state."""
        self._wake_all()
        out = self.take_updates()
        if self.kind == "session":
            pending = [w for ws in self._sessions.values() for w in ws]
        else:
            pending = list(self._windows.values())
        self._emit_all(sorted(pending, key=lambda w: (w.end, w.seq)), out)
        self._reset()
        return out

    def discard(self) -> list[Any]:
        """Forget every window; the acks they held that no emission carries (one per hold). Keys still
        lazily restored hold none: they are dropped unbuilt."""
        if self.kind == "session":
            held = [w for ws in self._sessions.values() for w in ws]
        else:
            held = list(self._windows.values())
        acks = [ack for window in held for ack in window.acks if ack is not None]
        self._reset()
        return acks

    def _emit(self, window: _Window, out: list[Emission]) -> None:
        self._emit_all((window,), out)

    def _emit_all(self, windows: Iterable[_Window], out: list[Emission]) -> None:
        """An emission for each of `windows` that holds unemitted items, in order."""
        dirty, plain, names, aggregates, append = self.dirty, self._plain, self._names, self.aggregates, out.append
        for window in windows:
            if not window.acks:
                continue
            if dirty is not None:
                dirty.add(window.key)
            if plain:
                states = window.states
                results = dict(zip(names, states if _PLAIN.issuperset(map(type, states)) else map(json_safe, states)))
            else:
                results = {a.name: a.result(s) for a, s in zip(aggregates, window.states)}
            start, end = window.start, window.end
            # `Emission(...)` without its Python-level `__new__`
            append(_new_tuple(Emission, (window.key, start, end, window.count, results, window.emitted,
                                         window.acks)))
            window.acks = []
            window.emitted = [(start, end)]

    @property
    def open_windows(self) -> int:
        """Windows (or sessions) held in memory."""
        if self.kind == "session":
            return sum(len(ws) for ws in self._sessions.values())
        return len(self._windows) + sum(len(row["w"]) for row in self._lazy.values())

    # ----- checkpoints (plain data out and in; see the module docstring) ------------------------

    def _forget_start(self, key: Hashable, start: int) -> None:
        starts = self._starts[key]  # type: ignore[index]
        starts.discard(start)
        if not starts:
            del self._starts[key]  # type: ignore[union-attr]
        self.dirty.add(key)  # type: ignore[union-attr]

    def export_meta(self) -> dict[str, Any]:
        return {"wm": self.wm, "seq": self._seq}

    def restore_meta(self, meta: dict[str, Any]) -> None:
        self.wm = meta["wm"]
        self._seq = meta["seq"]

    def export_key(self, key: Hashable) -> dict[str, Any] | None:
        """A key's windows as plain data, or None when the key holds nothing."""
        if key in self._lazy:
            return self._lazy[key]  # untouched since the restore
        if self.kind == "session":
            windows = self._sessions.get(key, [])
            horizon = self._purged_until.get(key)
        else:
            windows = [self._windows[(key, s)] for s in sorted((self._starts or {}).get(key, ()))]
            horizon = None
        if not windows and horizon is None:
            return None
        rows = [(w.start, w.end, w.count, w.states, w.emitted, bool(w.acks), w.seq) for w in windows]
        return {"w": rows, "p": horizon}

    def restore_keys(self, rows: Iterable[tuple[Hashable, dict[str, Any]]]) -> None:
        """`restore_key` of many keys (a checkpoint's chunk). Tumbling / sliding keys are kept as rows
        and built into windows on first use (a takeover restores a large state without building
        every window first); their ends are scheduled now, so the watermark still fires them."""
        if self.kind == "session":
            for key, row in rows:
                self.restore_key(key, row)
            return
        lazy, lazy_at, by_end, wm = self._lazy, self._lazy_at, self._by_end, self.wm
        for key, row in rows:
            eager = False
            for window in row["w"]:
                end = window[1]
                at = lazy_at.get(end)
                if at is None:
                    lazy_at[end] = at = []
                    if end not in by_end:
                        by_end[end] = []
                        heapq.heappush(self._fire if end > wm else self._purge, end)
                at.append(key)
                eager = eager or (window[5] and end <= wm)  # fired, with late items not yet re-emitted
            lazy[key] = row
            if eager:
                self._wake(key)

    def _wake(self, key: Hashable) -> None:
        """Build a lazily restored key's windows."""
        row = self._lazy.pop(key)
        for start, end, count, states, emitted, pending, seq in row["w"]:
            self._note_states(states)
            window = self._reopen(key, start, end, states, seq)
            window.count = count
            if emitted:  # pickled tuples come back as tuples
                window.emitted = emitted
            if pending:
                window.acks = [None]
                if end <= self.wm:
                    self._dirty[id(window)] = window

    def _note_states(self, states: list[Any]) -> None:
        """A restored window: does some min/max state hold a non-number (see `mixed`)?"""
        for i in self._ordered:
            if states[i] is not None and type(states[i]) not in _NUMBERS:
                self.mixed = True

    def _wake_end(self, end: int) -> None:
        keys = self._lazy_at.pop(end, None) if self._lazy_at else None
        if keys:
            lazy = self._lazy
            for key in keys:
                if key in lazy:
                    self._wake(key)

    def _wake_all(self) -> None:
        for key in list(self._lazy):
            self._wake(key)
        self._lazy_at.clear()

    def restore_key(self, key: Hashable, row: dict[str, Any]) -> None:
        """Put back a key's windows (after `restore_meta`): scheduled to fire and purge as before."""
        if row["p"] is not None:
            self._purged_until[key] = row["p"]
        for start, end, count, states, emitted, pending, seq in row["w"]:
            self._note_states(states)
            if self.kind == "session":
                window = _Window(key, start, end, states, seq)
                self._sessions.setdefault(key, []).append(window)
                self._schedule_session(window)
            else:
                window = self._reopen(key, start, end, states, seq)
            window.count, window.emitted = count, [tuple(e) for e in emitted]
            window.acks = [None] if pending else []
            if pending and end <= self.wm:  # fired, with late items not yet re-emitted
                self._dirty[id(window)] = window
