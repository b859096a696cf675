"""Checkpoints of the `window` operator's state (`acks: checkpoint`): save, restore, release acks.

Per partition of the input (`meta.partition`; "-" when unpartitioned) the checkpoint holds key
chunk records and a meta record. A chunk record packs up to 32 keys' windows (aggregate states,
counts, earlier emissions; record name: the chunk number in hex): a key joins the open chunk at
the first save that sees it and stays in that chunk while it holds state, so a save rewrites only
the chunks of the keys that changed (keys new since the last save fill new chunks) and a restore
reads and unpickles few large records, not one per key. The meta record holds the window's
definition, the watermark, the **covered source sequences** (per stream, exactly which
`meta.seq` of `meta.stream` the state folded: a floor and the sequences above it,
`operators.window_coverage`), the windows emitted but not yet committed downstream (the outbox),
and how many chunks and keys there are. A save writes the
changed chunks and the meta record in one atomic write (`engine.CheckpointStore`); then, and only
then, the acks of the items it covers are released (counted as delivered). Format version 2
(`engine.CHECKPOINT_VERSION`); a checkpoint of version 1 (one record per key) is refused with
`CheckpointCorrupt` naming both versions: drop it (the source replays what it covered) or drain the
old version first.

Restore (at start for the unpartitioned input; for a partition at the first tick after it is
assigned, or at its first message if that comes first) reads
the records back, checks each (`engine.unseal`: version, CRC-32), checks that the definition matches
and that no chunk record or key is missing, and re-emits the outbox (sinks are idempotent). A replayed item
whose sequence the checkpoint covers is skipped and its ack released, so restore + replay gives the
state of one uninterrupted run, in whatever order the replay comes (a redelivery behind newer items
folds). A checkpoint written before exact coverage holds the highest sequence per stream
(`positions`, still written for older readers): it is restored as the floor.

A save that fails (store down, `max_bytes` exceeded) is logged as an error and retried at the next
interval; the state and the unreleased acks stay, so nothing is lost (the source stops at
`max_in_flight`). A checkpoint that fails its checks is `CheckpointCorrupt`: at start it stops the
run; for a partition it stalls the window with that error (nothing is processed with wrong state).
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from engine import (
    DELIVERED,
    Ack,
    CheckpointCorrupt,
    CheckpointFenced,
    CheckpointTooLarge,
    Msg,
    Output,
    PositiveDuration,
    Size,
    seal,
    unseal,
)
from operators.window_coverage import Covered

if TYPE_CHECKING:
    from operators.window import Window, _Part

__all__ = ["CheckpointConfig", "Checkpointer", "KeyChunks", "Outbox"]


class CheckpointConfig(BaseModel):
    """Where and how often a window checkpoints its state (docs/window.md: checkpoints)."""

    model_config = ConfigDict(extra="forbid")
    connection: str = Field(
        description="Name of a `type: postgres` entry in `connections`: the checkpoint store.", examples=["pg"]
    )
    interval: PositiveDuration = Field(
        2.0, description="Seconds between checkpoints (and the most an item's ack waits for one).", examples=["2s"]
    )
    max_bytes: Size = Field(
        256 * 1024 * 1024,
        description="Most bytes one partition's checkpoint may take; beyond it saves fail with an error.",
        examples=["64MiB"],
    )
    max_tracked: int = Field(
        100_000, ge=1_000, le=100_000_000,
        description="Most source sequences per partition and stream the checkpoint records one by one above "
        "its floor (every sequence at or below the floor counts as covered; 8 bytes each in memory). Beyond "
        "it the floor moves past the oldest half: a redelivery that comes after more than half this many "
        "newer items of its partition is then taken as covered (docs/window.md, Limits).",
        examples=[100_000],
    )
    table: str = Field("streamdag_checkpoints", description="Table of the checkpoints (created if missing).")
    name: str | None = Field(
        None, description="Name of this window's checkpoints in the table; default: the node id.",
        examples=["orders.counts"],
    )


class Outbox:
    """Windows emitted and not yet committed downstream: owner of their acks, part of the checkpoint."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[Any, dict[str, Any], int]] = {}
        self._next = 0
        self.changed = False  # since the last save

    def add(self, body: Any, meta: dict[str, Any], size: int) -> Ack:
        self._next += 1
        self.entries[self._next] = (body, meta, size)
        self.changed = True
        ack = Ack(None, self._next)
        ack.owner = self  # type: ignore[assignment]  # an ack owner is anything with settle(ack)
        return ack

    def settle(self, ack: Ack) -> None:
        """Committed downstream: out of the next checkpoint. Failed: kept, emitted after a restart."""
        if ack.error is None and self.entries.pop(ack.token, None) is not None:
            self.changed = True


def _part_name(partition: int | None) -> str:
    return "-" if partition is None else str(partition)


_KEYS_PER_CHUNK = 32
_YIELD_CHUNKS = 64  # restore and save give the event loop a turn every 64 chunks (~2,000 keys)


def _chunk_name(chunk: int) -> str:
    return f"{chunk:05x}"


class KeyChunks:
    """Which chunk record each key of a partition is in, as last saved (see the module docstring)."""

    __slots__ = ("chunk_of", "members", "next", "open", "sizes")

    def __init__(self) -> None:
        self.chunk_of: dict[str, int] = {}  # key's JSON -> its chunk
        self.members: dict[int, dict[str, Any]] = {}  # chunk -> {key's JSON: key}
        self.sizes: dict[str, int] = {}  # chunk record -> its size, as last saved
        self.open = 0  # the chunk keys new to the checkpoint join, while it has room
        self.next = 1

    def place(self, rk: str, key: Any) -> int:
        chunk = self.chunk_of.get(rk)
        if chunk is None:
            members = self.members.get(self.open)
            if members is not None and len(members) >= _KEYS_PER_CHUNK:
                self.open, self.next = self.next, self.next + 1
            chunk = self.chunk_of[rk] = self.open
            self.members.setdefault(chunk, {})[rk] = key
        return chunk

    def restored(self, chunk: int, members: dict[str, Any]) -> None:
        self.members[chunk] = members
        self.chunk_of.update(dict.fromkeys(members, chunk))
        self.next = max(self.next, chunk + 1)
        self.open = self.next  # new keys go to fresh chunks

    def remove(self, chunk: int, rk: str) -> None:
        members = self.members[chunk]
        del members[rk]
        del self.chunk_of[rk]
        if not members:
            del self.members[chunk]

    @property
    def keys(self) -> int:
        return len(self.chunk_of)


def _row_key(key: Any) -> str:
    if isinstance(key, float) and key.is_integer():  # 1 and 1.0 are one window key
        key = int(key)
    return orjson.dumps(key).decode()


class Checkpointer:
    """The checkpoints of one `window` node (see the module docstring)."""

    # connection type -> "module:class" of its `CheckpointStore`
    backends: ClassVar[dict[str, str]] = {"postgres": "operators.connectors.postgres.checkpoint:PostgresCheckpoints"}

    def __init__(self, window: Window, config: CheckpointConfig):
        self.w = window
        self.config = config
        self.name = config.name or window.id
        self.store: Any = None
        self.next_at = 0.0
        c = window.config
        self.definition = [
            c.kind, c.size, c.slide, c.gap, c.offset, c.allowed_lateness,
            [(n, a.op, a.limit) for n, a in c.aggregates.items()],
        ]
        self.failing = ""  # the last save error, while saves fail
        self.to_restore: set[int] = set()  # assigned partitions not restored yet (next tick)
        self.revocations: dict[int, int] = {}  # partition -> times revoked (a restore spanning one is void)
        self.epochs: dict[int | None, int] = {}  # partition -> the epoch this process claimed it with
        # metrics
        self.saves = self.restores = self.failures = self.replayed = 0
        self.bytes_written = self.save_us = self.last_save_us = 0
        self.sizes: dict[int | None, int] = {}  # partition -> bytes of its checkpoint

    async def start(self) -> None:
        ctx = self.w.ctx
        kind = ctx.connection(self.config.connection).get("type", "")
        module, cls = self.backends[kind].split(":")
        self.store = getattr(importlib.import_module(module), cls)(ctx, self.config.connection, self.config.table)
        upstream = getattr(ctx, "upstream", None)
        if not upstream or not all(u.cls.partitioned(u.config) for u in upstream):
            # the unpartitioned input: a damaged checkpoint stops the run here. Behind partitioned
            # sources only, every worker would claim (and fence) the unpartitioned one in turn:
            # it is restored at its first message, if one ever comes
            await self.restore(None)
        self.next_at = ctx.clock() + self.config.interval

    def metrics(self) -> dict[str, int]:
        return {
            "checkpoint_saves": self.saves,
            "checkpoint_failures": self.failures,
            "checkpoint_restores": self.restores,
            "checkpoint_bytes": sum(self.sizes.values()),
            "checkpoint_bytes_written": self.bytes_written,
            "checkpoint_save_us": self.save_us,
            "checkpoint_last_save_us": self.last_save_us,
            "checkpoint_replayed_skipped": self.replayed,
            "checkpoint_tracked_seqs": sum(p.covered.tracked for p in self.w.parts.values()),
            "checkpoint_coverage_trimmed": sum(p.covered.trimmed for p in self.w.parts.values()),
            "checkpoint_pending_acks": sum(len(p.pending) for p in self.w.parts.values()),
        }

    # ----- the operator's calls ---------------------------------------------------------------

    async def process(self, batch: list[Msg], out: Output) -> None:
        parts = self.w.parts
        for p in {m.meta.get("partition") for m in batch} - parts.keys() - self.w.gone:
            await self.restore(p)  # raises before anything is folded: a retry folds nothing twice
        self._resend(out)
        self.w.fold(batch, out)
        if self.w.ctx.clock() >= self.next_at:
            await self.save_all()

    async def tick(self, out: Output) -> None:
        for p in sorted(self.to_restore - self.w.parts.keys()):
            try:
                await self.restore(p)
            except Exception as exc:  # noqa: BLE001 - retried at the partition's first message, which stalls on it
                self.w.ctx.log.error("window %s: restoring partition %s failed: %s: %s", self.w.id, p,
                                     type(exc).__name__, exc)
        self.to_restore.clear()
        self._resend(out)
        if self.w.ctx.clock() >= self.next_at:
            await self.save_all()

    async def flush(self, out: Output) -> None:
        """End of input: emit every window, then save. A stop (drain): save only; the restart restores."""
        if not self.w.ctx.draining:
            self.w.flush_windows(out)
        self._resend(out)
        if not await self.save_all() and self.w.ctx.draining:
            reason = f"window {self.w.id}: stopped before a checkpoint covered the item ({self.failing})"
            for part in self.w.parts.values():
                acks, part.pending = part.pending, []
                for ack in acks:
                    ack.fail(reason)

    def assigned(self, partition: int) -> None:
        """Restore it at the next tick (or its first message, whichever comes first): the windows it
        emitted and nobody committed go out again even if no new item comes."""
        self.to_restore.add(partition)

    def redelivery_wait(self) -> float:
        """Seconds after a restart before the upstream sources redeliver what an earlier run left
        unacknowledged (`Source.redelivery_wait`: JetStream `ack_wait`, Redis `min_idle`)."""
        return max((u.cls.redelivery_wait(u.config) for u in getattr(self.w.ctx, "upstream", None) or ()),
                   default=0.0)

    def fenced(self, partition: int | None, part: _Part) -> None:
        """Another process claimed the partition since this one restored it: drop it here, failing
        the acks its state holds (the new owner restored the last checkpoint and gets them again)."""
        if self.w.parts.get(partition) is part:
            del self.w.parts[partition]
        self.sizes.pop(partition, None)
        held = part.store.discard() + part.pending
        part.pending = []
        reason = f"window {self.w.id}: partition {_part_name(partition)} was claimed by another owner"
        for ack in held:
            ack.fail(reason)

    def revoked(self, partition: int) -> None:
        self.revocations[partition] = self.revocations.get(partition, 0) + 1
        self.sizes.pop(partition, None)
        self.to_restore.discard(partition)

    # ----- restore ----------------------------------------------------------------------------

    async def restore(self, partition: int | None) -> None:
        pname = _part_name(partition)
        revoked = self.revocations.get(partition, 0) if partition is not None else 0
        epoch = await self.store.claim(self.name, pname)  # fences the saves of any earlier owner
        records = await self.store.load(self.name, pname)
        part = self.w.new_part()
        if records:
            await self._load(part, records, f"window {self.w.id}: checkpoint {self.name!r} partition {pname}")
        if partition is not None and self.revocations.get(partition, 0) != revoked:
            return  # revoked while loading: the new owner restores it; saving it here would overwrite theirs
        if records:
            self.restores += 1
            self.sizes[partition] = sum(part.chunks.sizes.values()) + len(records.get("", b""))  # type: ignore[union-attr]
            self.w.ctx.log.info("window %s: restored partition %s: %d key(s), %d window(s) to re-emit",
                                self.w.id, pname, part.chunks.keys, len(part.resend))  # type: ignore[union-attr]
        self.epochs[partition] = epoch
        self.w.parts[partition] = part

    async def _load(self, part: _Part, records: dict[str, bytes], what: str) -> None:
        import asyncio

        records = dict(records)
        meta_record = records.pop("", None)
        if meta_record is None:
            raise CheckpointCorrupt(f"{what}: {len(records)} key record(s) without their meta record")
        meta = unseal(meta_record, what)
        if meta["definition"] != self.definition:
            raise CheckpointCorrupt(f"{what}: written by a window of another definition ({meta['definition']}); "
                                    "give this one another checkpoint name, or drop the checkpoint")
        if meta["chunks"] != len(records):
            raise CheckpointCorrupt(f"{what}: {len(records)} key record(s), the meta record says {meta['chunks']}")
        store = part.store
        store.restore_meta(meta["store"])
        part.watermark.max_event, part.watermark.value = meta["watermark"]
        # idle time counts from when the earlier run's unacknowledged items can be back (the restore
        # + the upstream sources' redelivery wait: the source waits that long before it pulls), not
        # from the last item: a partition restored after its input ended still closes its last windows
        # on `idle_timeout`, and one whose old items are on their way does not close them without those
        part.watermark.last_arrival = self.w.ctx.clock() + self.redelivery_wait()
        restore_keys, loads = store.restore_keys, orjson.loads
        chunks = part.chunks
        assert chunks is not None
        for i, (name, record) in enumerate(records.items(), 1):
            if not i % _YIELD_CHUNKS:  # a large restore must not starve the loop (partition renewals)
                await asyncio.sleep(0)
            try:
                chunk = int(name, 16)
                if name != _chunk_name(chunk):
                    raise ValueError(name)
                rows = unseal(record, what)
            except CheckpointCorrupt as exc:  # name the record
                raise CheckpointCorrupt(str(exc).replace(what, f"{what} key chunk {name!r}", 1)) from None
            except ValueError:
                raise CheckpointCorrupt(f"{what}: a record named {name!r} is no key chunk") from None
            members = {rk: loads(rk) for rk in rows}
            restore_keys(zip(members.values(), rows.values()))
            chunks.restored(chunk, members)
            chunks.sizes[name] = len(record)
        if chunks.keys != meta["keys"]:
            raise CheckpointCorrupt(f"{what}: {chunks.keys} key(s) in the chunks, the meta record says {meta['keys']}")
        try:  # exact coverage; a checkpoint written before it has the highest sequence per stream only
            part.covered = Covered.restore(self.config.max_tracked, meta.get("coverage"), meta["positions"])
        except (ValueError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{what}: its covered sequences are damaged ({exc})") from None
        part.resend = list(meta["outbox"])

    def _resend(self, out: Output) -> None:
        emit = None
        for part in self.w.parts.values():
            if part.resend and part.outbox is not None:
                emit = emit if emit is not None else out.port("out")
                for body, meta, size in part.resend:
                    emit.append(Msg(body, meta, part.outbox.add(body, meta, size), size))
                part.resend = []

    # ----- save -------------------------------------------------------------------------------

    async def save_all(self) -> bool:
        """Save every partition that changed; False if a save failed (logged; retried next time)."""
        self.next_at = self.w.ctx.clock() + self.config.interval
        ok = True
        for partition, part in list(self.w.parts.items()):
            try:
                await self._save(partition, part)
            except CheckpointFenced as exc:  # dropped here (`fenced`): not a failure to retry
                self.w.ctx.log.warning("window %s: %s; its items go back to the source", self.w.id, exc)
            except Exception as exc:  # noqa: BLE001 - state and acks stay; the next interval retries
                ok = False
                self.failures += 1
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self.failing:
                    self.w.ctx.log.error("window %s: checkpoint of partition %s failed: %s; state and "
                                         "unreleased acks kept, retried every %ss", self.w.id,
                                         _part_name(partition), reason, self.config.interval)
                self.failing = reason
        if ok and self.failing:
            self.w.ctx.log.warning("window %s: checkpoints succeed again", self.w.id)
            self.failing = ""
        return ok

    async def _save(self, partition: int | None, part: _Part) -> None:
        import asyncio

        if self.w.parts.get(partition) is not part:
            return  # revoked meanwhile (its acks were failed): the new owner's checkpoint now
        store, outbox = part.store, part.outbox
        assert store.dirty is not None and outbox is not None
        if not (store.dirty or part.pending or part.resend or outbox.changed) and partition in self.sizes:
            return  # nothing changed since the last save
        dirty, store.dirty = store.dirty, set()
        chunks = part.chunks
        assert chunks is not None
        touched = {chunks.place(_row_key(key), key) for key in dirty}
        upserts: dict[str, bytes] = {}
        deletes: list[str] = []
        removed: list[tuple[int, str]] = []  # keys holding nothing any more: out of their chunk once saved
        export = store.export_key
        sizes = dict(chunks.sizes)
        for i, chunk in enumerate(touched, 1):
            if not i % _YIELD_CHUNKS:
                await asyncio.sleep(0)
                if self.w.parts.get(partition) is not part:  # revoked meanwhile: its state is gone
                    return
            name = _chunk_name(chunk)
            rows: dict[str, Any] = {}
            for rk, key in chunks.members[chunk].items():
                row = export(key)
                if row is None:
                    removed.append((chunk, rk))
                else:
                    rows[rk] = row
            if rows:
                upserts[name] = record = seal(rows)
                sizes[name] = len(record)
            elif sizes.pop(name, None) is not None:
                deletes.append(name)
        keys = chunks.keys - len(removed)
        meta: dict[str, Any] = {
            "definition": self.definition,
            "chunks": len(sizes),
            "keys": keys,
            "store": store.export_meta(),
            "watermark": (part.watermark.max_event, part.watermark.value),
            "coverage": part.covered.export(),
            "positions": part.covered.highest(),  # what a streamdag before exact coverage reads
            "outbox": list(outbox.entries.values()) + part.resend,
        }
        upserts[""] = seal(meta)
        outbox.changed = False  # what settles during the save is in the next one
        total = sum(sizes.values()) + len(upserts[""])
        if total > self.config.max_bytes:
            store.dirty |= dirty
            outbox.changed = True
            raise CheckpointTooLarge(f"window {self.w.id}: the checkpoint of partition {_part_name(partition)} "
                                     f"would take {total} bytes, beyond checkpoint.max_bytes "
                                     f"({self.config.max_bytes}); raise it, or shorten the windows / fewer keys")
        acks, part.pending = part.pending, []
        t0 = time.perf_counter()
        try:
            await self.store.save(self.name, _part_name(partition), upserts, deletes, self.epochs.get(partition))
        except CheckpointFenced:
            part.pending = acks + part.pending
            self.fenced(partition, part)
            raise
        except BaseException:
            store.dirty |= dirty
            outbox.changed = True
            part.pending = acks + part.pending
            raise
        us = int((time.perf_counter() - t0) * 1e6)
        chunks.sizes = sizes
        for chunk, rk in removed:
            chunks.remove(chunk, rk)
        self.saves += 1
        self.last_save_us = us
        self.save_us += us
        self.bytes_written += sum(len(r) for r in upserts.values())
        if self.w.parts.get(partition) is part:
            self.sizes[partition] = total
            for ack in acks:  # covered by a durable checkpoint: released
                ack.finish(DELIVERED)
        else:  # revoked during the save: the new owner replays them (or skips those it sees covered)
            for ack in acks:
                ack.fail(f"window {self.w.id}: partition {_part_name(partition)} revoked during a checkpoint")

