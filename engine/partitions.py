"""Which partitions of a partitioned source this process owns, and who wants to know.

A partitioned source (`jetstream_source` with `partitions: N`) owns some of its N partitions at a
time; ownership moves between workers as they join and leave. Every message it emits carries
`meta["partition"]` (an int in 0..N-1). Nodes that keep per-key state downstream (`window`) keep it
per partition, and subscribe here to hear when a partition comes or goes:

* `assigned(source, p)`: this process now owns partition `p` of `source` (restore its checkpoint
  before the first message of `p` is processed: the source calls this before it pulls from `p`).
* `revoked(source, p)`: this process no longer owns `p`. Listeners drop what they hold for `p`
  (state, held acks, which they fail so the source redelivers them to the new owner) before the
  source gives up ownership; the source has already stopped pulling `p`.

Listeners run synchronously, in subscription order, on the event loop; they must not block.
One `PartitionEvents` exists per run (`ctx.partitions`).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["PartitionEvents", "PartitionListener", "fnv1a32", "key_text", "partition_of"]

# listener(source node id, partition, owned): owned True on assignment, False on revocation
PartitionListener = Callable[[str, int, bool], None]


class PartitionEvents:
    """The run's partition ownership, as sources report it, and its listeners."""

    def __init__(self) -> None:
        self._listeners: list[PartitionListener] = []
        self._owned: dict[str, set[int]] = {}

    def subscribe(self, listener: PartitionListener) -> None:
        """Hear every later assignment and revocation (and, at once, the partitions owned now)."""
        self._listeners.append(listener)
        for source, parts in self._owned.items():
            for p in sorted(parts):
                listener(source, p, True)

    def assigned(self, source: str, partition: int) -> None:
        parts = self._owned.setdefault(source, set())
        if partition in parts:
            return
        parts.add(partition)
        for listener in self._listeners:
            listener(source, partition, True)

    def revoked(self, source: str, partition: int) -> None:
        parts = self._owned.get(source)
        if not parts or partition not in parts:
            return
        for listener in self._listeners:
            listener(source, partition, False)
        parts.discard(partition)

    def owned(self, source: str) -> frozenset[int]:
        """The partitions of `source` this process owns now."""
        return frozenset(self._owned.get(source, ()))

    def owns(self, source: str, partition: int) -> bool:
        return partition in self._owned.get(source, ())


# -- which partition a key belongs to ------------------------------------------------------------------------

_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


def key_text(key: object) -> str:
    """A partition key as the text that is hashed: a string as is, an integer in decimal, true/false,
    anything else (float, list, map) as compact JSON with sorted keys. Producers in other languages
    hash the same text (docs/jetstream.md)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, bytes):
        return key.decode("utf-8", "surrogateescape")
    if key is None:
        return "null"
    import orjson

    return orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bits: the hash of nats-server's `partition()` subject mapping."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(key: object, count: int) -> int:
    """The partition (0..count-1) of `key`: FNV-1a 32 of its UTF-8 text (`key_text`) modulo `count`.

    The same number as nats-server's subject mapping `{{partition(count, i)}}` gives a subject whose
    token i is that text, so a server-side mapping, `jetstream_sink` with `partition` and any other
    producer agree on where a key goes."""
    return fnv1a32(key_text(key).encode("utf-8", "surrogateescape")) % count
