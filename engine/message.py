"""Messages and the end-to-end acknowledgement contract.

A `Msg` is what flows on an edge: the body (any JSON value), `meta` (source, subject or key,
timestamps, headers, delivery attempt) and an `Ack`. Edges carry *lists* of messages.

The ack contract (connectors build on it):

* A source gives every message it emits an `Ack` owned by the source's `AckTracker`, with one
  pending reference.
* When a node sends a message to k > 1 places (fan-out, multicast), it calls `ack.retain(k - 1)`.
* A reference is released (`ack.release()`) when a sink has committed the message, when an
  operator filtered it out, or when a dead-letter sink committed it. A message that replaces
  another one (map) keeps its ack; one that replaces many (batch, window) gets a `CompositeAck`
  that releases all of them when it is released itself.
* A reference that cannot be honoured (a sink gave up after retries, the graph stopped with an
  unwired error) is released with `ack.fail(reason)`. The owner then sees a failed outcome.
* When the last reference is gone the owner is told once: `AckTracker` collects the tokens of
  completed and failed messages; the runtime hands them to the source in batches
  (`Source.commit(tokens)` / `Source.reject(failures)`), so upstream acks are batched too.

No await happens per message: releasing is a counter decrement and, at zero, a list append.

Batch acks: a source whose messages need no token of their own (a file, a generator: nothing to
acknowledge upstream per message) gives a whole batch one `BatchAck` with one pending reference
per message (`AckTracker.new_batch`). Releasing one reference is one message settled: counted
under its outcome and out of `in_flight` at once; the batch's token goes to `commit` with the
last. A message whose ack is to be held more than once (fan-out, multicast, sliding windows)
first gets an ack of its own with `own_ack(msg)`; `BatchAck.retain` refuses.

Bodies: a source whose batch shares one `meta`, one `BatchAck` and one size may send it as a
`Bodies` (the bodies alone, and runs of `(count, meta, ack, size)`) instead of a `Msg` per body. The
runtime hands a `Bodies` only to a node that says it takes one (`takes_bodies`: filter, map, validate,
file_sink, stdout) and turns it into `Msg` objects (`Bodies.msgs()`) for any other, for more than one target,
for taps and tracing: what such nodes see is unchanged. A `Bodies` has one holder, like a `Msg`.

Ownership: a `Msg` object has one holder at a time. The node that receives it may rewrite its
`body` in place and pass it on (map does); a node that sends one message to several places sends
a copy to each further place (the runtime does so for an edge fan-out, route for multicast). Bodies
and `meta` dicts themselves are shared between copies and are never mutated in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import compress, groupby, repeat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where awaited: node types import this module, and `validate` loads no asyncio
    import asyncio

__all__ = [
    "DEAD_LETTERED",
    "DELIVERED",
    "FILTERED",
    "NOOP_ACK",
    "Ack",
    "AckTracker",
    "BatchAck",
    "Bodies",
    "CompositeAck",
    "DeadLetter",
    "Msg",
    "finish_all",
    "materialize",
    "own_ack",
]

# Outcome flags a releaser sets on an ack before releasing it; the tracker classifies a settled
# message as delivered if any branch delivered it, else dead-lettered, else filtered.
DELIVERED = 1
FILTERED = 2
DEAD_LETTERED = 4


class Msg:
    """One message: body, metadata, ack and an approximate size in bytes."""

    __slots__ = ("ack", "body", "meta", "size")

    def __init__(self, body: Any, meta: dict[str, Any] | None = None, ack: Ack | None = None, size: int = 0):
        self.body = body
        self.meta = meta if meta is not None else {}
        self.ack = ack if ack is not None else NOOP_ACK
        self.size = size

    @classmethod
    def many(cls, bodies: list[Any], meta: dict[str, Any], ack: Ack, size: int = 0) -> list[Msg]:
        """One message per body, all with the same `meta`, `ack` and `size` (a source's batch under
        one `BatchAck`): about a quarter cheaper than calling `Msg(...)` per body, since no
        `__init__` frame is entered per message, and the objects are allocated by a C-level `map`."""
        out = list(map(cls.__new__, repeat(cls, len(bodies))))  # allocated in C: no bytecode per message
        for m, body in zip(out, bodies):
            m.body = body
            m.meta = meta
            m.ack = ack
            m.size = size
        return out

    def derive(self, body: Any) -> Msg:
        """A new message with another body that stands for this one (same meta, ack and size)."""
        return Msg(body, self.meta, self.ack, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.body!r}, meta={self.meta!r})"


class Bodies:
    """Messages carried as their bodies alone: `bodies`, and `runs` of `(count, meta, ack, size)`
    that say whose they are, in order (message i of a run has that run's meta, ack and size). Every
    run's ack is a `BatchAck` holding one reference per message of the run (see the module
    docstring): settling k of them is one `finish_many`, not k calls. `len()` counts messages; a
    `Bodies` is not iterable (a node that wants messages asks for `msgs()`)."""

    __slots__ = ("bodies", "runs")

    def __init__(self, bodies: list[Any], runs: list[tuple[int, dict[str, Any], BatchAck, int]]):
        self.bodies = bodies
        self.runs = runs

    @classmethod
    def of(cls, bodies: list[Any], meta: dict[str, Any], ack: BatchAck, size: int = 0) -> Bodies:
        """One source batch: every body under one meta, ack and size."""
        return cls(bodies, [(len(bodies), meta, ack, size)])

    def __len__(self) -> int:
        return len(self.bodies)

    def msgs(self) -> list[Msg]:
        """The same messages as `Msg` objects (what a node that does not take bodies gets)."""
        runs = self.runs
        if len(runs) == 1:
            _, meta, ack, size = runs[0]
            return Msg.many(self.bodies, meta, ack, size)
        out: list[Msg] = []
        i = 0
        for n, meta, ack, size in runs:
            out += Msg.many(self.bodies[i:i + n], meta, ack, size)
            i += n
        return out

    def metas(self) -> list[dict[str, Any]]:
        """Each message's meta, in order (shared dicts: never changed in place)."""
        runs = self.runs
        if len(runs) == 1:
            return [runs[0][1]] * runs[0][0]
        out: list[dict[str, Any]] = []
        for n, meta, _, _ in runs:
            out += [meta] * n
        return out

    def total_size(self) -> int:
        return sum([n * size for n, _, _, size in self.runs])

    def with_bodies(self, bodies: list[Any]) -> Bodies:
        """The same messages with new bodies (one per message, in order): a map's output."""
        return Bodies(bodies, self.runs)

    def concat(self, other: Bodies) -> Bodies:
        return Bodies(self.bodies + other.bodies, self.runs + other.runs)

    def split(self, k: int) -> tuple[Bodies, Bodies]:
        """The first `k` messages and the rest (0 < k < len)."""
        head: list[tuple[int, dict[str, Any], BatchAck, int]] = []
        runs = self.runs
        left = k
        for i, run in enumerate(runs):
            n = run[0]
            if n < left:
                head.append(run)
                left -= n
                continue
            _, meta, ack, size = run
            head.append((left, meta, ack, size))
            tail = ([(n - left, meta, ack, size)] if n > left else []) + runs[i + 1:]
            return Bodies(self.bodies[:k], head), Bodies(self.bodies[k:], tail)
        raise ValueError(f"split at {k} of {len(self.bodies)}")

    def keep(self, keep: list[bool], outcome: int) -> Bodies:
        """The messages whose `keep` is true (one bool per message); the others are finished with
        `outcome` (a filter's FILTERED), one `finish_many` per run."""
        bodies = list(compress(self.bodies, keep))
        runs = self.runs
        if len(runs) == 1:
            n, meta, ack, size = runs[0]
            k = len(bodies)
            if k < n:
                ack.finish_many(outcome, n - k)
            return Bodies(bodies, [(k, meta, ack, size)] if k else [])
        kept = []
        i = 0
        for n, meta, ack, size in runs:
            k = keep[i:i + n].count(True)
            i += n
            if k < n:
                ack.finish_many(outcome, n - k)
            if k:
                kept.append((k, meta, ack, size))
        return Bodies(bodies, kept)

    def finish(self, outcome: int) -> None:
        """Every message finished with `outcome` (a sink committed them all)."""
        for n, _, ack, _ in self.runs:
            ack.finish_many(outcome, n)

    def __repr__(self) -> str:
        return f"Bodies({len(self.bodies)} message(s) in {len(self.runs)} run(s))"


def materialize(lists: dict[str, Any]) -> dict[str, list[Msg]]:
    """A node's output with every `Bodies` turned into `Msg` objects (for taps and tracing)."""
    return {port: v.msgs() if type(v) is Bodies else v for port, v in lists.items()}


class DeadLetter(Msg):
    """A message that came to a sink by an `errors` edge, where that sink also takes messages by
    other edges (`Plan.mixed_sinks`): its commit counts as dead-lettered, the others' as delivered."""

    __slots__ = ()


class Ack:
    """A reference-counted acknowledgement owned by a tracker (or a composite)."""

    __slots__ = ("error", "outcome", "owner", "pending", "token")

    def __init__(self, owner: AckTracker | CompositeAck | BatchAck | None, token: Any = None, pending: int = 1):
        self.pending = pending
        self.owner = owner
        self.token = token
        self.error: str | None = None
        self.outcome = 0

    def retain(self, n: int = 1) -> None:
        self.pending += n

    def release(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.owner is not None:
            self.owner.settle(self)

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.release()

    def finish(self, outcome: int) -> None:
        """Release with an outcome flag (DELIVERED, FILTERED or DEAD_LETTERED)."""
        self.outcome |= outcome
        self.release()

    @property
    def settled(self) -> bool:
        return self.pending <= 0


class _NoopAck(Ack):
    """For messages nobody waits for (tests, generated ad hoc)."""

    __slots__ = ()

    def retain(self, n: int = 1) -> None:
        pass

    def release(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def finish(self, outcome: int) -> None:
        pass


NOOP_ACK = _NoopAck(None)


class CompositeAck(Ack):
    """An ack that stands for many (the output of batch and window): settles all of them."""

    __slots__ = ("children",)

    def __init__(self, children: Iterable[Ack]):
        super().__init__(None)
        self.owner = self  # type: ignore[assignment]
        self.children = list(children)

    def settle(self, ack: Ack) -> None:
        if self.error is None:
            for child in self.children:
                child.finish(self.outcome)
        else:
            for child in self.children:
                child.fail(self.error)


class BatchAck(Ack):
    """One ack for a batch of `n` messages of one source (see the module docstring): `pending`
    counts the messages still unsettled. Each release settles one message with the tracker at once
    (its outcome counted, `in_flight` down by one, so `max_in_flight` counts messages, not batches:
    a window holding a few messages of many batches holds only those); the token goes to `commit`
    when the last one settles."""

    __slots__ = ("n", "reasons")

    def __init__(self, owner: AckTracker, token: Any, n: int):
        super().__init__(owner, token, n)
        self.n = n
        self.reasons: list[str] | None = None  # one per failed message

    def retain(self, n: int = 1) -> None:
        raise TypeError("a BatchAck stands for many messages: hold one message more than once with "
                        "engine.message.own_ack(msg).retain(n)")

    def release(self) -> None:
        self.finish(0)

    def finish(self, outcome: int) -> None:
        self.finish_many(outcome, 1)

    def finish_many(self, outcome: int, k: int) -> None:
        """`finish(outcome)` for `k` messages of this batch at once (a sink's committed run)."""
        tracker: AckTracker = self.owner  # type: ignore[assignment]
        _count(tracker, outcome, k)
        self._settled(tracker, k)

    def fail(self, reason: str) -> None:
        tracker: AckTracker = self.owner  # type: ignore[assignment]
        if self.reasons is None:
            self.reasons = []
        self.reasons.append(reason)
        tracker.nacked += 1
        self._settled(tracker, 1)

    def _settled(self, tracker: AckTracker, k: int) -> None:
        tracker.in_flight -= k
        self.pending -= k
        if self.pending == 0:
            tracker.batch_done(self)
        elif tracker._signal:
            tracker._notify()

    def settle(self, child: Ack) -> None:
        """Owner of the per-message acks `own_ack` made: one message, settled once."""
        if child.error is None:
            self.finish(child.outcome)
        else:
            self.fail(child.error)


def _count(counts: AckTracker, outcome: int, k: int) -> None:
    """Count `k` settled messages under their outcome: delivered if any branch delivered them, else
    dead-lettered if any branch did, else filtered."""
    if outcome & DELIVERED:
        counts.delivered += k
    elif outcome & DEAD_LETTERED:
        counts.dead_lettered += k
    else:
        counts.filtered += k


def own_ack(msg: Msg) -> Ack:
    """`msg`'s ack, made its own first if its batch shares one (`BatchAck`): call this before
    holding a message more than once (`retain`)."""
    ack = msg.ack
    if type(ack) is BatchAck:
        ack = msg.ack = Ack(ack)
    return ack


class AckTracker:
    """Collects settled acks of one source, and counts what is still in flight."""

    __slots__ = (
        "_room",
        "_signal",
        "_wake",
        "completed",
        "dead_lettered",
        "delivered",
        "entered",
        "failed",
        "filtered",
        "in_flight",
        "limit",
        "nacked",
        "redelivers",
    )

    def __init__(self, limit: int = 0):
        self.completed: list[Any] = []
        self.failed: list[tuple[Any, str]] = []
        self.in_flight = 0
        self.limit = limit  # max unsettled messages; 0 means no limit
        self.entered = 0
        self.delivered = 0
        self.filtered = 0
        self.dead_lettered = 0
        self.nacked = 0
        self.redelivers = False  # the source can redeliver a failed message (JetStream nak, Redis pending)
        self._wake: asyncio.Event | None = None
        self._room: asyncio.Event | None = None
        self._signal = False  # an event may be cleared (someone may wait): settle must look at them

    def new(self, token: Any = None) -> Ack:
        self.in_flight += 1
        self.entered += 1
        return Ack(self, token)

    def new_many(self, tokens: list[Any]) -> list[Ack]:
        """Acks for a whole batch at once (cheaper than `new` in a loop)."""
        n = len(tokens)
        self.in_flight += n
        self.entered += n
        return [Ack(self, t) for t in tokens]

    def new_batch(self, n: int, token: Any = None) -> BatchAck:
        """One ack for `n` messages (see `BatchAck`); `commit` gets `token` once they all settle."""
        self.in_flight += n
        self.entered += n
        return BatchAck(self, token, n)

    def batch_done(self, ack: BatchAck) -> None:
        """The last message of a `BatchAck` settled (each was counted as it settled): hand its
        token to `commit`, and to `reject` once per failed message."""
        if ack.reasons:
            self.failed += [(ack.token, reason) for reason in ack.reasons]
        if len(ack.reasons or ()) < ack.n:
            self.completed.append(ack.token)
        if self._signal:
            self._notify()

    def settle(self, ack: Ack) -> None:
        self.in_flight -= 1
        if ack.error is None:
            self.completed.append(ack.token)
            _count(self, ack.outcome, 1)
        else:
            self.nacked += 1
            self.failed.append((ack.token, ack.error))
        if self._signal:  # one flag test per message; the events only when someone may wait
            self._notify()

    def settle_many(self, acks: list[Ack]) -> None:
        """`settle` for many acks of this tracker at once (a sink's committed batch): the same
        bookkeeping, with the per-message work in C-level comprehensions and counts."""
        n = len(acks)
        if [a.error for a in acks].count(None) != n:
            for a in acks:  # rare: some failed; one by one, in order
                self.settle(a)
            return
        self.in_flight -= n
        self.completed += [a.token for a in acks]
        outcomes = [a.outcome for a in acks]
        plain = outcomes.count(DELIVERED)  # the common case, counted in C; the rest as in `settle`
        self.delivered += plain
        if plain != n:
            for outcome in outcomes:
                if outcome != DELIVERED:
                    _count(self, outcome, 1)
        if self._signal:
            self._notify()

    def _notify(self) -> None:
        wake, room = self._wake, self._room
        if wake is not None and not wake.is_set():
            wake.set()
        if room is not None and not room.is_set() and self.has_room():
            room.set()
        self._signal = (wake is not None and not wake.is_set()) or (room is not None and not room.is_set())

    def has_room(self) -> bool:
        return self.limit <= 0 or self.in_flight < self.limit

    def take(self) -> tuple[list[Any], list[tuple[Any, str]]]:
        done, failed = self.completed, self.failed
        self.completed, self.failed = [], []
        return done, failed

    async def wait_settled(self) -> None:
        """Wait until something has settled since the last `take`."""
        if self.completed or self.failed:
            return
        if self._wake is None:
            import asyncio

            self._wake = asyncio.Event()
        self._wake.clear()
        self._signal = True
        await self._wake.wait()

    async def wait_room(self) -> None:
        """Wait until fewer than `limit` messages are in flight."""
        while not self.has_room():
            if self._room is None:
                import asyncio

                self._room = asyncio.Event()
            self._room.clear()
            self._signal = True
            await self._room.wait()


def finish_all(acks: list[Ack], outcome: int) -> None:
    """`ack.finish(outcome)` for each of `acks` (a sink's committed batch), with the per-message
    work in C where it can be: runs of one source batch's `BatchAck` in one `finish_many` each,
    plain acks counted down inline, and those that settle handed to their trackers in runs
    (`settle_many`)."""
    settled: list[Ack] = []
    if type(acks[0]) is BatchAck:
        for a, run in groupby(acks):  # C-level runs: consecutive messages of one source batch
            k = len(list(run))
            if type(a) is BatchAck:
                a.finish_many(outcome, k)
                continue
            if a is NOOP_ACK:  # shared by every message nobody waits for: never counted down
                continue
            for _ in range(k):
                a.outcome |= outcome
                a.pending -= 1
                if a.pending == 0:
                    settled.append(a)
    else:
        for a in acks:
            if type(a) is BatchAck or a is NOOP_ACK:
                a.finish(outcome)
                continue
            a.outcome |= outcome
            a.pending -= 1
            if a.pending == 0:
                settled.append(a)
    if settled:
        _settle_runs(settled)


def _settle_runs(acks: list[Ack]) -> None:
    """Hand settled acks to their owners: runs with the same tracker (the usual batch) in one
    `settle_many`, anything else (a composite, a BatchAck over `own_ack`s) one by one."""
    first = acks[0].owner
    n = len(acks)
    if type(first) is AckTracker and [a.owner for a in acks].count(first) == n:  # C-level check
        first.settle_many(acks)
        return
    i = 0
    while i < n:
        owner = acks[i].owner
        j = i + 1
        while j < n and acks[j].owner is owner:
            j += 1
        if owner is None:
            pass
        elif type(owner) is AckTracker:
            owner.settle_many(acks[i:j])
        else:
            for a in acks[i:j]:
                owner.settle(a)
        i = j

