"""A JetStream KV bucket as the replica of `consistency_monitor` (the same interface as its Redis one).

Each sampled row's key maps to the KV key `<key_prefix><key>` (KV keys allow `[-/_=.a-zA-Z0-9]`,
so a prefix like `user.`). An entry is a JSON document; with `version_column` its version is the
document's `version_field` (default `_version`), compared as a number. A missing or deleted key is a
mismatch; a version that differs (or is absent) is one too.

Repair is version-safe without any lock, by the bucket's own compare-and-set: an entry is written
with `update(key, value, last=revision)` (the revision read while comparing) or `create` when the
key has none, so a writer that changed the key meanwhile wins and the repair counts as skipped, as
does an entry whose version is newer than the primary's. The repaired document is the primary's
value with `version_field` set to the row's version (when the value is a map).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from engine import ConnectorError
from operators.connectors.jetstream.connection import nats_handle
from operators.connectors.redis.consistency import ConsistencyReport, number

__all__ = ["KvReplica"]

_CONCURRENCY = 64  # KV gets in flight at once in one round


class KvReplica:
    """Compare rows with a KV bucket and repair it; built by `consistency_monitor` for a nats replica."""

    def __init__(self, ctx: Any, connection: str, bucket: str, prefix: str, version_column: str | None,
                 version_field: str):
        self.ctx, self.connection, self.bucket, self.prefix = ctx, connection, bucket, prefix
        self.versioned = version_column is not None
        self.version_field = version_field
        self.kv: Any = None

    async def open(self) -> None:
        from nats.js.errors import BucketNotFoundError

        handle = await nats_handle(self.ctx, self.connection)
        try:
            self.kv = await handle.js.key_value(self.bucket)
        except BucketNotFoundError as exc:
            raise ConnectorError(f"nats connection {self.connection!r}: no JetStream KV bucket {self.bucket!r}") from exc

    async def _get(self, key: str) -> Any:
        """The entry of `key`, or None when it has none (never written, deleted or purged)."""
        from nats.js.errors import KeyNotFoundError

        try:
            return await self.kv.get(key)
        except KeyNotFoundError:  # KeyDeletedError too
            return None

    async def _entries(self, keys: list[str]) -> list[Any]:
        import asyncio

        out: list[Any] = []
        for i in range(0, len(keys), _CONCURRENCY):
            out += await asyncio.gather(*(self._get(k) for k in keys[i:i + _CONCURRENCY]))
        return out

    def _version(self, entry: Any) -> Decimal | None:
        import orjson

        try:
            doc = orjson.loads(entry.value or b"null")
        except orjson.JSONDecodeError:
            return None
        return number(doc.get(self.version_field)) if isinstance(doc, dict) else None

    async def compare(self, rows: list[Any], report: ConsistencyReport, note: Any,
                      bad: list[tuple[Any, Decimal | None]]) -> None:
        """Count `rows` (key, version…) against the bucket; append each row that differs to `bad`
        with the replica's version (None: missing or no number)."""
        entries = await self._entries([f"{self.prefix}{row[0]}" for row in rows])
        for row, entry in zip(rows, entries):
            key = f"{self.prefix}{row[0]}"
            report.rows += 1
            if entry is None:
                report.missing_in_redis += 1
                note("missing_in_redis", key)
                bad.append((row, None))
                continue
            if self.versioned:
                cached = self._version(entry)
                if cached is None or cached != number(row[1]):
                    report.version_mismatch += 1
                    note("version_mismatch", f"{key} (postgres {row[1]}, kv {cached})")
                    bad.append((row, cached))
                    continue
            report.matched += 1

    async def repair(self, rows: list[Any]) -> tuple[int, int]:
        """Rewrite the entries of `rows` from the primary by compare-and-set; (written, skipped)."""
        import orjson
        from nats.js.errors import KeyWrongLastSequenceError

        written = skipped = 0
        entries = await self._entries([f"{self.prefix}{row[0]}" for row in rows])
        for row, entry in zip(rows, entries):
            key = f"{self.prefix}{row[0]}"
            version = number(row[1]) if self.versioned else None
            if entry is not None and version is not None:
                cached = self._version(entry)
                if cached is not None and cached > version:  # a writer stored a newer version: leave it
                    skipped += 1
                    continue
            doc = orjson.loads(row[-1]) if row[-1] is not None else None
            if isinstance(doc, dict) and version is not None:
                doc[self.version_field] = int(version) if version == version.to_integral_value() else float(version)
            payload = orjson.dumps(doc)
            try:
                if entry is None:
                    await self.kv.create(key, payload)
                else:
                    await self.kv.update(key, payload, last=entry.revision)
            except KeyWrongLastSequenceError:  # changed since it was read: the writer wins
                skipped += 1
                continue
            written += 1
        return written, skipped
