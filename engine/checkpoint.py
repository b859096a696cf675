"""Checkpoints of operator state: the store a stateful node writes to, and the sealed record format.

A stateful node (`window`) keeps per partition one *checkpoint*: a `meta` record (what the whole
partition's state needs: watermark, covered source positions, outputs not yet committed, how many
key records there are) and one record per key (that key's windows). A save writes the records of
the keys that changed since the last save (per-key dirty, so the cost follows the traffic, not the
state's size), deletes those of keys that are gone, and replaces `meta`, **in one atomic write**:
a restore never sees state from one save with positions from another.

Every record is sealed: a magic and version, a CRC-32 of the payload, then the payload (pickle,
read back with an unpickler that admits plain data only: containers, numbers, strings, datetime).
`unseal` raises `CheckpointCorrupt` on anything else, so a damaged checkpoint is a clear error,
never silently wrong state.

Backends implement `CheckpointStore`; they live with their system's connector
(`operators/connectors/postgres/checkpoint.py`) and are chosen by the type of the named connection.
"""

from __future__ import annotations

import io
import pickle
import re
import zlib
from typing import Any, Protocol

from engine.errors import ConfigError

__all__ = ["CHECKPOINT_VERSION", "CheckpointCorrupt", "CheckpointFenced", "CheckpointStore", "CheckpointTooLarge", "seal", "unseal"]

CHECKPOINT_VERSION = 2  # 2: window keys packed in chunk records
_MAGIC = b"SDCK"
_HEADER = len(_MAGIC) + 1 + 4  # magic, version byte, crc32


class CheckpointCorrupt(ConfigError):
    """A checkpoint record fails its checks (version, checksum, shape, a record missing)."""


class CheckpointTooLarge(ConfigError):
    """A checkpoint save would exceed the node's `checkpoint.max_bytes`."""


class CheckpointFenced(ConfigError):
    """A save by an owner whose claim on the checkpoint was superseded: another process claimed the
    partition (a takeover) since this one restored it. Nothing was written."""


class CheckpointStore(Protocol):
    """Where a node's checkpoints live: one namespace (`name`) per node, one checkpoint per partition
    (`part`, a string: "-" for an unpartitioned input), keys within it ("" is the meta record)."""

    async def load(self, name: str, part: str) -> dict[str, bytes]:
        """Every record of the checkpoint ({} when there is none)."""
        ...

    async def claim(self, name: str, part: str) -> int:
        """Take the checkpoint over: a new epoch, higher than any before (call it before `load`).
        Saves made under an older epoch fail from now on (`CheckpointFenced`)."""
        ...

    async def save(self, name: str, part: str, upserts: dict[str, bytes], deletes: list[str],
                   epoch: int | None = None) -> None:
        """Write `upserts` (meta included) and delete `deletes`, atomically; with `epoch`, only while
        it is still the checkpoint's epoch (else raise `CheckpointFenced` and write nothing)."""
        ...

    async def drop(self, name: str, part: str) -> None:
        """Forget the checkpoint (tests, `streamdag` tooling)."""
        ...


_SAFE = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
    ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "timezone"), ("datetime", "date"),
    ("decimal", "Decimal"),
}


# the opcodes that name a callable (GLOBAL, INST, STACK_GLOBAL, EXT1/2/4): a payload with none of
# these bytes anywhere builds plain containers and scalars only, so the C `pickle.loads` is safe on it
# (most records: counts and sums); any other payload goes through the restricted unpickler
_NAMING = re.compile(rb"[ci\x93\x82\x83\x84]")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE:
            raise pickle.UnpicklingError(f"a checkpoint record may hold plain data only, not {module}.{name}")
        return super().find_class(module, name)


def seal(value: Any) -> bytes:
    """A record: header (magic, version, CRC-32) + pickled `value` (plain data)."""
    payload = pickle.dumps(value, protocol=5)
    return _MAGIC + bytes((CHECKPOINT_VERSION,)) + zlib.crc32(payload).to_bytes(4, "big") + payload


def unseal(record: bytes, what: str) -> Any:
    """The value of a sealed record; `CheckpointCorrupt` (naming `what`) if it fails a check."""
    if len(record) < _HEADER or record[:4] != _MAGIC:
        raise CheckpointCorrupt(f"{what}: not a streamdag checkpoint record")
    if record[4] != CHECKPOINT_VERSION:
        raise CheckpointCorrupt(f"{what}: checkpoint format version {record[4]}, this streamdag reads "
                                f"version {CHECKPOINT_VERSION}")
    payload = memoryview(record)[_HEADER:]
    if zlib.crc32(payload) != int.from_bytes(record[5:9], "big"):
        raise CheckpointCorrupt(f"{what}: checksum mismatch (the record was damaged)")
    try:
        if _NAMING.search(payload) is None:
            return pickle.loads(payload)
        return _DataUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:
        raise CheckpointCorrupt(f"{what}: cannot decode ({exc})") from exc
