"""`jetstream_source` with `partitions: N`: which worker reads which partition, held in NATS KV.

Partition p of a source reading subject S with durable D is the subject `S.p`, read through its own
durable pull consumer `D-p<p>` (one lane: a plain `JetStreamSource` of that subject). One worker
pulls a partition at a time; who it is lives in a KV bucket `streamdag_parts_<stream>_<D>`
(created if missing, `max_age` = `partition_ttl`, as many replicas as the stream):

* `m.<member>`: each worker's partitioned source puts its membership every `partition_ttl / 3`.
* `o.<p>`: the owner of partition p, taken with `create` (only if absent) or with `update` on the
  revision of a handed-back entry (member ""), and renewed with `update` on the revision it holds
  (compare-and-set). A renewal that finds another revision means the partition was taken: it is
  revoked here at once. A partition not renewed for 0.8 x `partition_ttl` (NATS away) is revoked
  before its key can expire; every KV call is bounded by `partition_ttl / 3`. A worker killed with
  kill -9 stops renewing: its keys expire and the others take the partitions at their next tick,
  then wait `ack_wait` before pulling, so the messages the dead owner held come back first. The
  server hands those out in the order they were naked or timed out, not in stream order: a new
  lane holds them until all came and sends them on in stream order (`source._CatchUp`), since a
  checkpointing window skips a sequence below one it has folded.

Every tick a worker computes its fair share, ceil(N / live members). Above it, it hands back its
highest partitions (in the background: the tick goes on renewing the others); below it, it takes
free ones, starting at an offset of its own so two workers do not race for the same one. Handing
back p: stop pulling (the lane's open pull requests end, what they bring still goes through the
graph), wait until p's messages in flight stop moving (at most `partition_ttl / 2`: what is on its
way reaches the window), `ctx.partitions.revoked` (a window drops p's state and fails its held
acks, which naks them), wait up to `partition_ttl` for the rest to settle, nak what has not (the
new owner gets it at once rather than after `ack_wait`), then mark `o.<p>` handed back. What was
naked and is still on its way (in a queue before the window) stays with its old lane: this worker
does not take p again until all of it settled (the window fails it), or it would be folded as p's
new items, ahead of lower sequences the server still has to redeliver. A stop of the graph hands
back every partition the same way. Why KV and not priority groups: the machine's
nats-server is 2.9 (no pinned consumers), and a KV entry per partition works from 2.6 on and is
readable with `nats kv` on any server (docs/scale.md).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import zlib
from typing import Any

import orjson

from engine import Msg, SourceSender

from .wire import write_lines

__all__ = ["Lane", "LaneSender", "Ownership", "bucket_name", "lane_durable"]

log = logging.getLogger("streamdag.jetstream")


def bucket_name(stream: str, durable: str) -> str:
    return "streamdag_parts_" + re.sub(r"[^-_a-zA-Z0-9]", "_", f"{stream}_{durable}")


def lane_durable(durable: str, p: int) -> str:
    return f"{durable}-p{p}"


def _wrong_revision(exc: BaseException) -> bool:
    """A compare-and-set that lost: the key has another revision (nats-py raises either class)."""
    from nats.js.errors import KeyWrongLastSequenceError

    return isinstance(exc, KeyWrongLastSequenceError) or getattr(exc, "err_code", None) == 10071


class LaneSender:
    """What one lane's `run` sends to: the source's sender, with `meta.partition` set, its own
    `stopping` (the graph stops or the partition goes), and the messages it sent, until settled."""

    def __init__(self, out: SourceSender, partition: int):
        import asyncio

        self._out = out
        self.partition = partition
        self.stopping = asyncio.Event()
        self.sent: list[Msg] = []

    @property
    def node_id(self) -> str:
        return self._out.node_id

    @property
    def tracker(self) -> Any:
        return self._out.tracker

    def error(self, msg: Msg, reason: str, attempt: int = 1) -> Msg:
        msg.meta["partition"] = self.partition
        return self._out.error(msg, reason, attempt)

    async def send(self, msgs: list[Msg], errors: list[Msg] | None = None) -> None:
        p = self.partition
        for m in msgs:
            m.meta["partition"] = p
        sent = self.sent
        sent.extend(msgs)
        if len(sent) > 4096 and len(sent) > 2 * getattr(self._out.tracker, "limit", 0):
            self.sent = [m for m in sent if not m.ack.settled]
        await self._out.send(msgs, errors)

    async def send_ports(self, lists: dict[str, list[Msg]]) -> None:
        await self._out.send_ports(lists)

    async def wait_room(self) -> None:
        await self._out.wait_room()

    def unsettled(self) -> list[Msg]:
        self.sent = [m for m in self.sent if not m.ack.settled]
        return self.sent


class Lane:
    """One owned partition: its consumer (a `JetStreamSource`), its run task and its KV revision."""

    def __init__(self, source: Any, sender: LaneSender, revision: int):
        self.source = source
        self.sender = sender
        self.revision = revision
        self.renewed = time.monotonic()
        self.task: Any = None
        self.lost = False  # another worker holds its key now: do not hand it back


class Ownership:
    """The partitions of one source this process owns (see the module docstring)."""

    def __init__(self, node: Any, make_lane: Any, count: int, ttl: float, replicas: int):
        self.node = node
        self.make_lane = make_lane  # p -> JetStreamSource of partition p (not started)
        self.count = count
        self.ttl = ttl
        self.replicas = replicas
        self.lanes: dict[int, Lane] = {}
        self.releasing: dict[int, Lane] = {}  # given up, still settling: renewed until handed back
        self.stale: dict[int, list[LaneSender]] = {}  # handed back with messages still in the graph
        self._tasks: set[Any] = set()
        self.member = re.sub(r"[^-_a-zA-Z0-9]", "_", f"{node.ctx.worker.id}-{random.getrandbits(24):06x}")
        self.members = 1
        self.kv: Any = None
        self.takeovers = 0  # partitions taken
        self.releases = 0  # partitions given up (rebalance, lost, stop)
        self.dropped = 0  # duplicates dropped by lanes since released

    async def open(self, js: Any) -> None:
        from nats.js.api import KeyValueConfig
        from nats.js.errors import BucketNotFoundError

        cfg = self.node.config
        name = bucket_name(cfg.stream, cfg.durable)
        try:
            self.kv = await js.key_value(name)
        except BucketNotFoundError:
            self.kv = await js.create_key_value(KeyValueConfig(
                bucket=name, history=1, ttl=self.ttl, replicas=self.replicas,
                description=f"streamdag: owners of the partitions of {cfg.stream}/{cfg.durable}"))

    def _value(self) -> bytes:
        w = self.node.ctx.worker
        return orjson.dumps({"member": self.member, "worker": w.id, "host": w.host, "pid": w.pid, "at": time.time()})

    async def _state(self) -> tuple[int, dict[int, tuple[str, int]]]:
        """(live members, {partition: (owning member, revision)}) as the bucket holds them now."""
        watcher = await self.kv.watch(">", include_history=False, ignore_deletes=True)
        members: set[str] = {self.member}
        owners: dict[int, tuple[str, int]] = {}  # partition -> (member, revision); member "" once released
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if not entry.value or entry.operation is not None:
                    continue
                kind, _, name = entry.key.partition(".")
                if kind == "m":
                    members.add(name)
                elif kind == "o" and name.isdigit():
                    owners[int(name)] = (orjson.loads(entry.value).get("member", ""), entry.revision)
        finally:
            await watcher.stop()
        return len(members), owners

    async def _kv(self, op: Any, *args: Any, **kw: Any) -> Any:
        """One KV call, bounded by a third of the ttl (the client's own timeout is 5 s): a renewal
        must fail in time for this worker to stop pulling before its key expires."""
        import asyncio

        async with asyncio.timeout(self.ttl / 3):
            return await op(*args, **kw)

    async def tick(self, out: SourceSender) -> None:
        """Renew, then release above the fair share or take free partitions below it."""
        kv, now = self.kv, time.monotonic()
        for p, lane in list(self.lanes.items()):  # not renewed lately (NATS away, a slow tick): stop pulling
            if now - lane.renewed > self.ttl * 0.8:
                log.warning("node %s: partition %d not renewed for %.1fs; giving it up", self.node.id, p,
                            now - lane.renewed)
                lane.lost = True
                self._release_soon([p])
        try:
            await self._kv(kv.put, f"m.{self.member}", self._value())
        except Exception as exc:  # noqa: BLE001 - NATS away: renewals below decide what is lost
            log.warning("node %s: partition membership not renewed: %s", self.node.id, exc)
        for p, lane in [*self.lanes.items(), *self.releasing.items()]:
            try:
                lane.revision = await self._kv(kv.update, f"o.{p}", self._value(), last=lane.revision)
                lane.renewed = now
            except Exception as exc:  # noqa: BLE001
                if not _wrong_revision(exc):
                    log.warning("node %s: partition %d not renewed: %s", self.node.id, p, exc)
                    continue
                lane.lost = True
                if p in self.lanes:
                    log.warning("node %s: partition %d was taken by another worker; giving it up", self.node.id, p)
                    self._release_soon([p])
        try:
            self.members, owners = await self._kv(self._state)
        except Exception as exc:  # noqa: BLE001
            log.warning("node %s: cannot read partition owners: %s", self.node.id, exc)
            return
        share = math.ceil(self.count / self.members)
        self._release_soon(sorted(self.lanes, reverse=True)[: max(0, len(self.lanes) - share)])
        self.stale = {p: left for p, senders in self.stale.items() if (left := [s for s in senders if s.unsettled()])}
        if len(self.lanes) >= share:
            return
        start = zlib.crc32(self.member.encode()) % self.count
        for i in range(self.count):
            p = (start + i) % self.count
            if p in self.lanes or p in self.releasing or p in self.stale or (p in owners and owners[p][0]):
                continue
            released = p in owners  # handed back cleanly; absent: never owned, or its owner died
            try:
                if released:
                    revision = await self._kv(kv.update, f"o.{p}", self._value(), last=owners[p][1])
                else:
                    revision = await self._kv(kv.create, f"o.{p}", self._value())
            except Exception as exc:  # noqa: BLE001
                if _wrong_revision(exc):
                    continue  # another worker was first
                log.warning("node %s: cannot take partition %d: %s", self.node.id, p, exc)
                return
            await self.take(p, revision, out, released)
            if len(self.lanes) >= share:
                return

    async def take(self, p: int, revision: int, out: SourceSender, released: bool) -> None:
        import asyncio

        source = self.make_lane(p)
        try:
            await source.start()
            wait = 0.0
            info = await source._h.js.consumer_info(source.config.stream, source.config.durable)
            if info.num_ack_pending:  # earlier owners' messages: they come back first, put in order
                source.catch_up(info.num_ack_pending, getattr(info.delivered, "stream_seq", 0) or 0)
                if not released:  # its last owner may have died holding them: wait until they are due
                    wait = source.redelivery_wait(source.config)
        except Exception:
            await self.kv.delete(f"o.{p}", last=revision)
            raise
        lane = self.lanes[p] = Lane(source, LaneSender(out, p), revision)
        self.node.ctx.partitions.assigned(self.node.id, p)  # before the first pull of p
        lane.task = asyncio.ensure_future(self._pull(lane, wait))
        self.takeovers += 1
        log.info("node %s: took partition %d (%d owned, %d workers)", self.node.id, p, len(self.lanes), self.members)

    async def _pull(self, lane: Lane, wait: float) -> None:
        """Run the lane; after a dead owner, first wait `wait` (its ack_wait) so the messages it held
        are due again and the server hands them out before newer ones: a window then sees p's items
        in order, as the dead owner would have."""
        import asyncio

        if wait > 0:
            log.info("node %s: partition %d: waiting %.1fs for the messages its last owner held", self.node.id,
                     lane.sender.partition, wait)
            try:
                async with asyncio.timeout(wait):
                    await lane.sender.stopping.wait()
            except TimeoutError:
                pass
        if not lane.sender.stopping.is_set():
            await lane.source.run(lane.sender)

    def _release_soon(self, parts: list[int]) -> None:
        """Release in the background: the tick goes on renewing the other partitions meanwhile."""
        import asyncio

        for p in parts:
            self.releasing[p] = self.lanes.pop(p)
            task = asyncio.ensure_future(self.release(p))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def release(self, p: int) -> None:
        """Stop pulling p, revoke it, settle or nak what is in flight of it, then give up the key."""
        lane = self.releasing.get(p) or self.lanes.pop(p)
        self.releasing[p] = lane
        try:
            await self._release(p, lane)
        except Exception as exc:  # noqa: BLE001 - NATS away: its key expires, its messages come back
            log.warning("node %s: releasing partition %d failed: %s", self.node.id, p, exc)
        finally:
            self.releasing.pop(p, None)
            if lane.sender.unsettled():  # still on their way (naked): p is not taken here again before they settle
                self.stale.setdefault(p, []).append(lane.sender)

    async def _release(self, p: int, lane: Lane) -> None:
        import asyncio

        lane.sender.stopping.set()
        lane.source._wake.set()
        try:
            await lane.task
        except Exception as exc:  # noqa: BLE001 - the lane's own failure: it stops all the same
            log.warning("node %s: partition %d ended with %s", self.node.id, p, exc)
        # let what is on its way reach the nodes that hold messages (a window), so the revocation finds
        # it there: wait until p's unsettled count stops moving (or half the ttl)
        deadline, last, quiet = time.monotonic() + self.ttl / 2, -1, 0
        while quiet < 3 and time.monotonic() < deadline:
            left_n = len(lane.sender.unsettled())
            if left_n == 0:
                break
            quiet, last = (quiet + 1 if left_n == last else 0), left_n
            await asyncio.sleep(0.05)
        self.node.ctx.partitions.revoked(self.node.id, p)
        deadline = time.monotonic() + self.ttl
        while lane.sender.unsettled() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = [m.ack.token[0] for m in lane.sender.unsettled() if m.ack.token]
        h = lane.source._h
        if left and h is not None and not h.nc.is_closed:
            await write_lines(h.nc, [(r, b"-NAK") for r in left])
            log.info("node %s: partition %d released with %d messages in flight (nak)", self.node.id, p, len(left))
        if h is not None and not h.nc.is_closed:
            await asyncio.sleep(0.05)  # the naks of the failed acks (the ack pump) go out first
            await h.nc.flush()
        await lane.source.stop()
        if lane.source._seqs is not None:
            self.dropped += lane.source._seqs.dropped
        if not lane.lost:  # handed back cleanly: the next owner need not wait for anything held
            try:
                await self._kv(self.kv.update, f"o.{p}", orjson.dumps({"member": "", "released": time.time()}),
                               last=lane.revision)
            except Exception as exc:  # noqa: BLE001 - it expires after partition_ttl anyway
                log.warning("node %s: partition %d not released in KV (%s); it expires", self.node.id, p, exc)
        self.releases += 1
        log.info("node %s: released partition %d", self.node.id, p)

    async def close(self) -> None:
        """Release every partition and leave (a stop of the graph)."""
        import asyncio

        self._release_soon(sorted(self.lanes))
        for result in await asyncio.gather(*list(self._tasks), return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("node %s: releasing a partition failed: %s", self.node.id, result)
        if self.kv is not None:
            try:
                await self.kv.delete(f"m.{self.member}")
            except Exception:  # noqa: BLE001 - it expires
                pass
