"""Decoding of PostgreSQL's built-in `pgoutput` logical replication messages (protocol version 1).

Pure and synchronous: bytes in, plain dicts out. The message formats are PostgreSQL's ("Logical
Replication Message Formats" in the protocol chapter): Begin `B`, Commit `C`, Origin `O`, Relation
`R`, Type `Y`, Insert `I`, Update `U`, Delete `D`, Truncate `T`; tuple data in text format.
Integers are big-endian; strings are NUL-terminated; timestamps are microseconds since 2000-01-01.

`Decoder` keeps the relation cache (`R` messages come before the first change of a table in every
decoding session and again after DDL, so a new column shows in the next change) and turns each
change into `Change(op, table, key, new, old)`. Column values are converted from their text form by
type OID to JSON values (`json_of`): integers and booleans as such, numeric as its exact text,
float4/8 as floats (NaN and infinities as text), json/jsonb decoded, bytea as base64, timestamptz as
RFC 3339 (the session runs with TimeZone UTC and DateStyle ISO), timestamp as ISO 8601 without an
offset, everything else (dates, uuids, arrays, enums...) as PostgreSQL's own text.
"""

from __future__ import annotations

import base64
import datetime as _dt
import struct
from dataclasses import dataclass, field
from typing import Any

from engine import MessageError, codec

__all__ = ["Begin", "Change", "Commit", "Decoder", "Relation", "json_of", "lsn_int", "lsn_text"]

_PG_EPOCH = _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC)
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_I32 = struct.Struct(">I")
_I16 = struct.Struct(">H")
_COLUMN = struct.Struct(">Ii")

# type OIDs (pg_type.dat): what gets a JSON value other than its text
_BOOL, _BYTEA, _INT8, _INT2, _INT4, _OID, _JSON = 16, 17, 20, 21, 23, 26, 114
_FLOAT4, _FLOAT8, _TIMESTAMP, _TIMESTAMPTZ, _NUMERIC, _JSONB = 700, 701, 1114, 1184, 1700, 3802
_INTS = frozenset((_INT2, _INT4, _INT8, _OID))


def lsn_int(text: str) -> int:
    """`16/B374D848` → the 64-bit position."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def lsn_text(value: int) -> str:
    """The 64-bit position as PostgreSQL writes it (`16/B374D848`)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def pg_time(micros: int) -> str:
    """Microseconds since 2000-01-01 UTC as RFC 3339."""
    return (_PG_EPOCH + _dt.timedelta(microseconds=micros)).isoformat()


def _rfc3339(text: str) -> str:
    """`2024-05-01 12:00:00.5+00` (ISO DateStyle) → `2024-05-01T12:00:00.5+00:00`; `infinity` stays."""
    if len(text) < 19 or text[10] != " ":
        return text  # infinity, -infinity, or a BC date: PostgreSQL's text
    out = text[:10] + "T" + text[11:]
    sign = max(out.rfind("+"), out.rfind("-"))
    if sign > 18 and len(out) - sign == 3:  # +HH → +HH:00
        out += ":00"
    return out


def json_of(type_oid: int, text: str) -> Any:
    """One column's text form as a JSON value (see the module docstring)."""
    if type_oid in _INTS:
        return int(text)
    if type_oid == _BOOL:
        return text == "t"
    if type_oid in (_FLOAT8, _FLOAT4):
        value = float(text)
        return value if value == value and value not in (float("inf"), float("-inf")) else text
    if type_oid in (_JSONB, _JSON):
        return codec.loads(text)
    if type_oid == _BYTEA:
        return base64.b64encode(bytes.fromhex(text[2:]) if text.startswith("\\x") else text.encode()).decode()
    if type_oid == _TIMESTAMPTZ:
        return _rfc3339(text)
    if type_oid == _TIMESTAMP:
        return text[:10] + "T" + text[11:] if len(text) >= 19 and text[10] == " " else text
    return text  # numeric (exact), text, varchar, uuid, date, time, interval, arrays, enums...


@dataclass
class Relation:
    """A table as the `R` message describes it: columns (name, type OID, part of the key)."""

    oid: int
    schema: str
    name: str
    replica_identity: str  # d(efault: primary key), n(othing), f(ull), i(ndex)
    columns: list[tuple[str, int, bool]] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema or 'pg_catalog'}.{self.name}"


@dataclass
class Begin:
    final_lsn: int
    commit_time: str
    xid: int


@dataclass
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_time: str  # RFC 3339
    unix_time: float


@dataclass
class Change:
    """An insert, update, delete or truncate. `key`: the key columns' values (new row, else the old
    key or row): the replica identity's columns, or the primary key's under replica identity full;
    `old`: the old key (`K`) or row (`O`, replica identity full) when sent."""

    op: str
    table: str
    key: dict[str, Any] | None
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    unchanged: list[str] = field(default_factory=list)  # TOASTed columns the update did not send

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "table": self.table, "key": self.key, "new": self.new, "old": self.old}
        if self.unchanged:
            out["unchanged_toast"] = self.unchanged
        return out


class Decoder:
    """Decodes one `pgoutput` message at a time, keeping the relations seen."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}
        # key columns by relation, where the flags do not say (replica identity full flags every column)
        self.key_columns: dict[int, list[str]] = {}

    def decode(self, data: bytes) -> Begin | Commit | Change | Relation | list[Change] | None:
        """One message: a Begin, Commit, Relation, Change, the Changes of a Truncate, or None (Origin,
        Type, logical decoding messages: nothing to emit). Malformed data raises `MessageError`."""
        try:
            return self._decode(memoryview(data))
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, MessageError):
                raise
            raise MessageError(f"pgoutput message {bytes(data[:1])!r} does not decode: {exc}") from exc

    def _decode(self, m: memoryview) -> Any:
        kind = m[0]
        if kind == 0x42:  # B
            final, ts, xid = _BEGIN.unpack_from(m, 1)
            return Begin(final, pg_time(ts), xid)
        if kind == 0x43:  # C
            _, commit, end, ts = _COMMIT.unpack_from(m, 1)
            return Commit(commit, end, pg_time(ts), 946684800 + ts / 1e6)
        if kind == 0x52:  # R
            return self._relation(m)
        if kind in (0x49, 0x55, 0x44):  # I U D
            return self._change(m)
        if kind == 0x54:  # T
            (n,) = _I32.unpack_from(m, 1)
            oids = struct.unpack_from(f">{n}I", m, 6)
            return [Change("truncate", self._rel(oid).qualified, None, None, None) for oid in oids]
        if kind in (0x4F, 0x59, 0x4D):  # O(rigin), Y (type), M (logical decoding message)
            return None
        raise MessageError(f"unknown pgoutput message type {chr(kind)!r}")

    def _relation(self, m: memoryview) -> Relation:
        (oid,) = _I32.unpack_from(m, 1)
        pos = 5
        schema, pos = _string(m, pos)
        name, pos = _string(m, pos)
        ident = chr(m[pos])
        (ncols,) = _I16.unpack_from(m, pos + 1)
        pos += 3
        rel = Relation(oid, schema, name, ident)
        for _ in range(ncols):
            flags = m[pos]
            col, pos = _string(m, pos + 1)
            type_oid, _typmod = _COLUMN.unpack_from(m, pos)
            pos += 8
            rel.columns.append((col, type_oid, bool(flags & 1)))
        self.relations[oid] = rel
        return rel

    def _rel(self, oid: int) -> Relation:
        rel = self.relations.get(oid)
        if rel is None:
            raise MessageError(f"pgoutput change for relation {oid} before its Relation message")
        return rel

    def _change(self, m: memoryview) -> Change:
        kind = m[0]
        (oid,) = _I32.unpack_from(m, 1)
        rel = self._rel(oid)
        pos = 5
        old: dict[str, Any] | None = None
        new: dict[str, Any] | None = None
        unchanged: list[str] = []
        old_is_key = False
        while pos < len(m):
            part = m[pos]
            row, pos, missing = self._tuple(rel, m, pos + 1)
            if part == 0x4E:  # N
                new, unchanged = row, missing
            else:  # K (the key only) or O (the whole old row)
                old, old_is_key = row, part == 0x4B
        if old is not None and old_is_key:
            old = {name: old[name] for name, _, is_key in rel.columns if is_key and name in old}
        src = new if new is not None else old
        keys = self.key_columns.get(oid) or [name for name, _, is_key in rel.columns if is_key]
        key = {k: src.get(k) for k in keys} if src is not None and keys else None
        op = {0x49: "insert", 0x55: "update", 0x44: "delete"}[kind]
        return Change(op, rel.qualified, key, new, old, unchanged)

    @staticmethod
    def _tuple(rel: Relation, m: memoryview, pos: int) -> tuple[dict[str, Any], int, list[str]]:
        (n,) = _I16.unpack_from(m, pos)
        pos += 2
        row: dict[str, Any] = {}
        missing: list[str] = []
        cols = rel.columns
        for i in range(n):
            kind = m[pos]
            pos += 1
            name, type_oid, _ = cols[i] if i < len(cols) else (f"col{i}", 25, False)
            if kind == 0x74:  # t: text
                (size,) = _I32.unpack_from(m, pos)
                pos += 4
                try:
                    row[name] = json_of(type_oid, str(m[pos:pos + size], "utf-8"))
                except (ValueError, MessageError) as exc:  # bad text, or a value beyond the codec's limits
                    raise MessageError(f"{rel.qualified} column {name}: {exc}") from exc
                pos += size
            elif kind == 0x6E:  # n: null
                row[name] = None
            elif kind == 0x75:  # u: unchanged TOASTed value, not sent
                missing.append(name)
            else:
                raise MessageError(f"tuple column kind {chr(kind)!r} is not text (binary mode is not used)")
        return row, pos, missing


def _string(m: memoryview, pos: int) -> tuple[str, int]:
    end = bytes(m[pos:]).index(0) + pos
    return str(m[pos:end], "utf-8"), end + 1
