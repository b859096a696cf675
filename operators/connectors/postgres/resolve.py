"""Conflict resolution of `postgres_sink` beyond last-write-wins: `merge` (JSON deep merge, per-field
versions, CRDT columns) and `version_vector` (dominates, dominated, concurrent).

Every decision is made by the database under the row's lock, never by reading a row into Python and
writing it back, so two workers writing the same key cannot lose each other's update:
- `merge` is one `INSERT … ON CONFLICT DO UPDATE SET c = merge(t.c, EXCLUDED.c)` statement: the
  merge reads the locked, latest row.
- `version_vector` is two statements in one transaction: `INSERT … ON CONFLICT DO NOTHING` for new
  keys, then, for the rest, one statement that locks the rows (`SELECT … FOR UPDATE`, which in READ
  COMMITTED returns the latest committed version), compares the vectors, updates the dominated rows
  and (with `conflict: table`) records concurrent ones with both versions. The second statement
  needs a fresh snapshot to see keys another worker inserted meanwhile, hence two statements.
  With `conflict: resolver`, a CEL expression over `msg.old` and `msg.new` (the rows as maps)
  chooses the row to keep for each concurrent write, evaluated while the transaction still holds
  the row's lock from that `FOR UPDATE` (so no other worker can change it in between); the kept row
  is written with the pointwise maximum of both vectors, which dominates both, so a replay of either
  write is then dropped. A resolver that fails or returns something other than a map sends the
  message to `errors` with the reason and leaves the row as it was.

Before its statements a batch takes a transaction-level advisory lock per key, in one global order
(by the key's hash), so writers of this table in these modes never deadlock on each other's rows
whatever order their batches list the keys in (the row locks then come free of contention).

Messages with the same key in one batch are written in rounds (the n-th message of each key in the
n-th statement, all in the batch's transaction), in arrival order, so each sees the previous one.

Every merge here is idempotent (deep merge of the same document, max, set union, a vector equal to
the stored one is dropped), so a batch whose COMMIT answer was lost is simply written again: no
`pg_xact_status` round. The SQL functions the statements use are created once per database, under
an advisory lock (several workers start at once), with a version in their names.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

from engine import EvalError, Msg, compile_expr, encode_failure
from operators.connectors.crdt import CRDT_KINDS, Crdt
from operators.connectors.postgres.client import (
    db_message,
    is_row_error,
    json_text,
    plain_text,
    quote_ident,
    quote_qualified,
)
from operators.connectors.version_vector import vector_issue

__all__ = ["CRDT_KINDS", "FUNCTIONS_SQL", "Crdt", "Resolver", "rules"]

_LOCK = 0x5D_18_C0  # pg_advisory_xact_lock key while the functions and conflicts tables are created

# The functions, one statement each. plpgsql: its bodies are resolved at call time (they recurse).
FUNCTIONS_SQL = [
    # per-key max of two JSON number trees (G-counter, PN-counter, per-field version maps)
    """CREATE OR REPLACE FUNCTION streamdag_jmax_v1(a jsonb, b jsonb) RETURNS jsonb LANGUAGE plpgsql
    IMMUTABLE AS $f$ BEGIN
      IF a IS NULL OR jsonb_typeof(a) = 'null' THEN RETURN b; END IF;
      IF b IS NULL OR jsonb_typeof(b) = 'null' THEN RETURN a; END IF;
      IF jsonb_typeof(a) = 'object' AND jsonb_typeof(b) = 'object' THEN
        RETURN (SELECT coalesce(jsonb_object_agg(coalesce(x.key, y.key), streamdag_jmax_v1(x.value, y.value)),
                                '{}'::jsonb)
                FROM jsonb_each(a) x FULL JOIN jsonb_each(b) y ON x.key = y.key);
      END IF;
      IF jsonb_typeof(a) = 'number' AND jsonb_typeof(b) = 'number' THEN
        RETURN CASE WHEN a::text::numeric >= b::text::numeric THEN a ELSE b END;
      END IF;
      RETURN CASE WHEN a >= b THEN a ELSE b END;
    END $f$""",
    # deep merge of b into a; with vf, the top-level fields named in a->vf / b->vf are per-field LWW
    # (higher version wins, equal versions: the greater value, so the order of arrival does not matter)
    """CREATE OR REPLACE FUNCTION streamdag_merge_v1(a jsonb, b jsonb, vf text) RETURNS jsonb LANGUAGE plpgsql
    IMMUTABLE AS $f$ BEGIN
      IF a IS NULL OR b IS NULL THEN RETURN coalesce(b, a); END IF;
      IF jsonb_typeof(a) <> 'object' OR jsonb_typeof(b) <> 'object' THEN RETURN b; END IF;
      RETURN (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM (
        SELECT coalesce(x.key, y.key) AS k, CASE
          WHEN y.key IS NULL THEN x.value
          WHEN x.key IS NULL THEN y.value
          WHEN vf IS NOT NULL AND x.key = vf THEN streamdag_jmax_v1(x.value, y.value)
          WHEN vf IS NOT NULL AND (a->vf->x.key IS NOT NULL OR b->vf->x.key IS NOT NULL) THEN
            CASE WHEN coalesce((b->vf->>x.key)::numeric, -1e300) > coalesce((a->vf->>x.key)::numeric, -1e300)
                   THEN y.value
                 WHEN coalesce((b->vf->>x.key)::numeric, -1e300) < coalesce((a->vf->>x.key)::numeric, -1e300)
                   THEN x.value
                 WHEN y.value > x.value THEN y.value ELSE x.value END
          ELSE streamdag_merge_v1(x.value, y.value, NULL) END AS v
        FROM jsonb_each(a) x FULL JOIN jsonb_each(b) y ON x.key = y.key) m);
    END $f$""",
    # version vectors: 'new' (b dominates), 'old' (a dominates or equal: drop b), 'concurrent'
    """CREATE OR REPLACE FUNCTION streamdag_vv_cmp_v1(a jsonb, b jsonb) RETURNS text LANGUAGE plpgsql
    IMMUTABLE AS $f$ BEGIN
      IF a IS NULL THEN RETURN 'new'; END IF;
      RETURN (SELECT CASE
        WHEN coalesce(bool_and(n >= o), true) AND coalesce(bool_or(n > o), false) THEN 'new'
        WHEN coalesce(bool_and(o >= n), true) THEN 'old' ELSE 'concurrent' END
        FROM (SELECT coalesce(x.value::numeric, 0) AS o, coalesce(y.value::numeric, 0) AS n
              FROM jsonb_each_text(a) x FULL JOIN jsonb_each_text(b) y ON x.key = y.key) c);
    END $f$""",
    # readers: a counter's value ({w: n} or {"p": {w: n}, "n": {w: n}}), an OR-set's elements
    """CREATE OR REPLACE FUNCTION streamdag_counter_v1(c jsonb) RETURNS numeric LANGUAGE sql IMMUTABLE AS $f$
      SELECT CASE WHEN c ? 'p' OR c ? 'n' THEN
        coalesce((SELECT sum(value::numeric) FROM jsonb_each_text(coalesce(c->'p', '{}'))), 0)
        - coalesce((SELECT sum(value::numeric) FROM jsonb_each_text(coalesce(c->'n', '{}'))), 0)
      ELSE coalesce((SELECT sum(value::numeric) FROM jsonb_each_text(c)), 0) END $f$""",
    """CREATE OR REPLACE FUNCTION streamdag_orset_v1(s jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $f$
      SELECT coalesce(jsonb_agg(e.key ORDER BY e.key), '[]'::jsonb) FROM jsonb_each(coalesce(s->'a', '{}')) e
      WHERE EXISTS (SELECT 1 FROM jsonb_object_keys(e.value) tag
                    WHERE NOT coalesce(s->'r', '{}') ? tag) $f$""",
]


def rules(mode: str, version: str | None, key: list[str], crdt: Mapping[str, str], field_versions: str | None,
          conflict: str | None, resolver: str | None = None) -> None:
    """Cross-field rules of the resolution settings; raises ValueError."""
    if crdt and mode != "merge":
        raise ValueError("`crdt` columns are merged by mode merge")
    if field_versions and mode != "merge":
        raise ValueError("`field_versions` is used by mode merge")
    if mode == "version_vector" and not version:
        raise ValueError("mode version_vector needs `version` (the jsonb column holding the vector)")
    if conflict and mode != "version_vector":
        raise ValueError("`conflict` is used by mode version_vector")
    if (conflict == "resolver") != (resolver is not None):
        raise ValueError("`resolver` is needed by, and only used by, conflict: resolver")
    bad = [c for c in crdt if c in key]
    if bad:
        raise ValueError(f"key column(s) {bad} cannot be crdt columns")


class Resolver:
    """The statements of one sink for mode merge or version_vector, and its write."""

    def __init__(self, sink: Any):
        self.sink = sink
        cfg = sink.config
        self.mode: str = cfg.mode
        self.conflict: str = cfg.conflict or "port"
        self.conflicts_table = quote_qualified(cfg.conflicts_table or f"{cfg.table}_conflicts")
        self.dropped = 0  # dominated or equal vectors
        self.conflicts = 0
        self.resolved = 0  # conflicts settled by the resolver
        self._routed: list[tuple[Msg, Any]] = []
        self._vector_index = sink.names.index(cfg.version) if cfg.version else -1
        self._resolver = compile_expr(cfg.resolver) if cfg.resolver else None

    def routed(self) -> dict[str, list[tuple[Msg, Any]]]:
        routed, self._routed = self._routed, []
        return {"conflicts": routed} if routed else {}

    async def prepare(self, conn: Any) -> None:
        """Create the functions (and the conflicts table) once, whoever starts first."""
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            have = await conn.fetchval("SELECT count(*) FROM pg_proc WHERE proname = ANY($1::text[])",
                                       ["streamdag_jmax_v1", "streamdag_merge_v1", "streamdag_vv_cmp_v1",
                                        "streamdag_counter_v1", "streamdag_orset_v1"])
            if have < len(FUNCTIONS_SQL):
                for stmt in FUNCTIONS_SQL:
                    await conn.execute(stmt)
            if self.mode == "version_vector" and self.conflict == "table":
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.conflicts_table} (id bigserial PRIMARY KEY, "
                                   "key jsonb NOT NULL, old jsonb, new jsonb NOT NULL, "
                                   "at timestamptz NOT NULL DEFAULT now())")

    def build(self, types: dict[str, str], json_cols: list[bool]) -> None:
        """The statements, once the table's column types are known."""
        cfg, names = self.sink.config, self.sink.names
        tid = zlib.crc32(f"streamdag/{cfg.table}".encode()) - (1 << 31)  # an int4 for the lock space
        self.lock_sql = (f"SELECT count(pg_advisory_xact_lock({tid}, hashtext(k))) FROM "
                         "(SELECT k FROM unnest($1::text[]) k ORDER BY hashtext(k), k OFFSET 0) x")
        cols = [quote_ident(c) for c in names]
        col_list = ", ".join(cols)
        keys = [quote_ident(k) for k in cfg.key]
        params = ", ".join(f"${i + 1}::text[]" for i in range(len(cols)))
        casts = ", ".join(f"s.{q}::{types[c]} AS {q}" for q, c in zip(cols, names))
        src = f"SELECT {casts}, s.__ord FROM unnest({params}) WITH ORDINALITY AS s({col_list}, __ord)"
        table = self.sink.table
        on_keys = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        if self.mode == "merge":
            not_jsonb = [c for c, kind in cfg.crdt.items() if kind not in ("max", "min") and types[c] != "jsonb"]
            if not_jsonb:
                raise RuntimeError(f"postgres_sink {self.sink.id}: crdt column(s) {', '.join(not_jsonb)} must be jsonb")
            fv = "NULL" if not cfg.field_versions else "'" + cfg.field_versions.replace("'", "''") + "'"
            sets = []
            for q, c, js in zip(cols, names, json_cols):
                if c in cfg.key:
                    continue
                kind = cfg.crdt.get(c)
                if kind in ("gcounter", "pncounter"):
                    expr = f"streamdag_jmax_v1(t.{q}, EXCLUDED.{q})"
                elif kind == "orset":
                    expr = f"streamdag_merge_v1(t.{q}, EXCLUDED.{q}, NULL)"
                elif kind == "max":
                    expr = f"GREATEST(t.{q}, EXCLUDED.{q})"
                elif kind == "min":
                    expr = f"LEAST(t.{q}, EXCLUDED.{q})"
                elif js:
                    expr = f"streamdag_merge_v1(t.{q}::jsonb, EXCLUDED.{q}::jsonb, {fv})::{types[c]}"
                else:
                    expr = f"coalesce(EXCLUDED.{q}, t.{q})"
                sets.append(f"{q} = {expr}")
            action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
            self.merge_sql = (f"WITH s AS ({src}), w AS (INSERT INTO {table} AS t ({col_list}) SELECT {col_list} "
                              f"FROM s ON CONFLICT ({', '.join(keys)}) {action}) SELECT 0")
            return
        if types[cfg.version] not in ("jsonb", "json"):
            raise RuntimeError(f"postgres_sink {self.sink.id}: the version vector column {cfg.version!r} must be "
                               f"jsonb, not {types[cfg.version]}")
        v = quote_ident(cfg.version)
        self.insert_sql = (f"WITH s AS ({src}), i AS (INSERT INTO {table} AS t ({col_list}) SELECT {col_list} FROM s "
                           f"ON CONFLICT ({', '.join(keys)}) DO NOTHING RETURNING {', '.join(keys)}) "
                           f"SELECT coalesce(array_agg(s.__ord), '{{}}') FROM s JOIN i AS t ON {on_keys}")
        new_row = "jsonb_build_object(" + ", ".join(f"'{c}', c.{q}" for q, c in zip(cols, names)) + ")"
        key_obj = "jsonb_build_object(" + ", ".join(f"'{k}', c.{quote_ident(k)}" for k in cfg.key) + ")"
        updates = ", ".join(f"{q} = c.{q}" for q, c in zip(cols, names) if c not in cfg.key)
        record = ""
        if self.conflict == "table":
            record = (f", x AS (INSERT INTO {self.conflicts_table} (key, old, new) SELECT {key_obj}, c.__old, "
                      f"{new_row} FROM c WHERE c.__rel = 'concurrent')")
        on_c = " AND ".join(f"t.{k} = c.{k}" for k in keys)
        self.vector_sql = (
            f"WITH s AS ({src}), o AS (SELECT t.* FROM {table} AS t JOIN s ON {on_keys} FOR UPDATE OF t), "
            f"c AS (SELECT s.*, streamdag_vv_cmp_v1(o.{v}::jsonb, s.{v}::jsonb) AS __rel, to_jsonb(o.*) AS __old "
            f"FROM s JOIN o ON {' AND '.join(f'o.{k} = s.{k}' for k in keys)}), "
            f"u AS (UPDATE {table} AS t SET {updates} FROM c WHERE {on_c} AND c.__rel = 'new')"
            f"{record} SELECT c.__ord, c.__rel, c.__old::text, {new_row}::text FROM c")
        if self._resolver is not None:
            assigns = ", ".join(f"{q} = ${i + 1}::text::{types[c]}" for i, (q, c) in enumerate(zip(cols, names)))
            where = " AND ".join(f"{quote_ident(k)} = ${len(cols) + i + 1}::text::{types[k]}"
                                 for i, k in enumerate(cfg.key))
            self.resolved_sql = f"UPDATE {table} SET {assigns} WHERE {where}"
            self._convs = [json_text if js else plain_text for js in json_cols]

    # ---- write -----------------------------------------------------------------------------------

    def _screen(self, batch: list[Msg]) -> tuple[list[Msg], list[tuple[Msg, str]]]:
        """The messages whose version vector is well-formed, and the others with the reason."""
        if self.mode != "version_vector":
            return batch, []
        get = self.sink.getters[self._vector_index]
        ok: list[Msg] = []
        bad: list[tuple[Msg, str]] = []
        for m in batch:
            try:
                issue = vector_issue(get(m.body, m.meta))
            except Exception as exc:  # noqa: BLE001 - an expression error is this message's reason
                issue = f"version vector: {encode_failure(exc)}"
            if issue is None:
                ok.append(m)
            else:
                bad.append((m, issue))
        return ok, bad

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]]:
        msgs, failed = self._screen(batch)
        columns, msgs, bad = self.sink._columns(msgs)
        failed += bad
        if not msgs:
            return failed
        conn = await self.sink.pool.acquire()
        try:
            try:
                async with conn.transaction():
                    outcome = await self._rounds(conn, columns, msgs)
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                outcome = await self._one_by_one(conn, columns, msgs)
        finally:
            try:
                await self.sink.pool.release(conn)
            except Exception as exc:  # noqa: BLE001 - the pool drops a broken connection; the outcome stands
                self.sink.ctx.log.debug("postgres_sink %s: releasing a connection failed: %s", self.sink.id, exc)
        errors, routed = outcome
        self._routed += routed
        return failed + errors

    async def _one_by_one(self, conn: Any, columns: list[list[Any]], msgs: list[Msg]
                          ) -> tuple[list[tuple[Msg, str]], list[tuple[Msg, Any]]]:
        """After a row error: each message under its own savepoint; the bad ones go to `errors`."""
        errors: list[tuple[Msg, str]] = []
        routed: list[tuple[Msg, Any]] = []
        async with conn.transaction():
            for i, m in enumerate(msgs):
                try:
                    async with conn.transaction():
                        e, r = await self._rounds(conn, [[c[i]] for c in columns], [m])
                        routed += r
                        errors += e
                except Exception as exc:
                    if not is_row_error(exc):
                        raise
                    errors.append((m, db_message(exc)))
        return errors, routed

    async def _rounds(self, conn: Any, columns: list[list[Any]], msgs: list[Msg]
                      ) -> tuple[list[tuple[Msg, str]], list[tuple[Msg, Any]]]:
        """The batch in rounds: the n-th message of each key goes in the n-th statement."""
        key_idx = [self.sink.names.index(k) for k in self.sink.config.key]
        await conn.execute(self.lock_sql, sorted({"\x1f".join(str(columns[j][i]) for j in key_idx)
                                                  for i in range(len(msgs))}))
        seen: dict[tuple[Any, ...], int] = {}
        rounds: list[list[int]] = []
        for i in range(len(msgs)):
            k = tuple(columns[j][i] for j in key_idx)
            n = seen.get(k, 0)
            seen[k] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(i)
        routed: list[tuple[Msg, Any]] = []
        errors: list[tuple[Msg, str]] = []
        for idx in rounds:
            part = [[c[i] for i in idx] for c in columns]
            if self.mode == "merge":
                await conn.execute(self.merge_sql, *part)
                continue
            await self._vector(conn, part, [msgs[i] for i in idx], routed, errors)
        return errors, routed

    async def _vector(self, conn: Any, part: list[list[Any]], msgs: list[Msg], routed: list[tuple[Msg, Any]],
                      errors: list[tuple[Msg, str]]) -> None:
        inserted = set(await conn.fetchval(self.insert_sql, *part))
        rest = [i for i in range(len(msgs)) if i + 1 not in inserted]
        if not rest:
            return
        import orjson

        rows = await conn.fetch(self.vector_sql, *[[c[i] for i in rest] for c in part])
        for ord_, rel, old, new in rows:
            if rel == "old":
                self.dropped += 1
            elif rel == "concurrent":
                self.conflicts += 1
                msg = msgs[rest[ord_ - 1]]
                if self.conflict == "port":
                    routed.append((msg, {"conflict": "concurrent version vectors", "node": self.sink.id,
                                         "table": self.sink.config.table, "old": orjson.loads(old),
                                         "new": msg.body}))
                elif self.conflict == "resolver":
                    issue = await self._resolve(conn, orjson.loads(old), orjson.loads(new))
                    if issue is not None:
                        errors.append((msg, issue))

    async def _resolve(self, conn: Any, old: dict[str, Any], new: dict[str, Any]) -> str | None:
        """Write the row the resolver keeps (the row is locked by this transaction); the reason if it fails."""
        assert self._resolver is not None
        cfg, names = self.sink.config, self.sink.names
        try:
            kept = self._resolver({"old": old, "new": new}, {})
        except (EvalError, TypeError, ValueError) as exc:
            return f"resolver: {encode_failure(exc)}"
        if not isinstance(kept, dict):
            return f"resolver: expected a map (the row to keep), got {type(kept).__name__}"
        unknown = sorted(set(kept) - set(names))
        if unknown:
            return f"resolver: the row has no column(s) {', '.join(map(str, unknown))}"
        row = {**old, **kept}
        v = cfg.version
        row[v] = {w: max(old[v].get(w, 0), new[v].get(w, 0)) for w in {*old[v], *new[v]}}
        try:
            values = [conv(row.get(c)) for conv, c in zip(self._convs, names)]
        except (TypeError, ValueError) as exc:
            return f"resolver: {encode_failure(exc)}"
        keys = [plain_text(old[k]) for k in cfg.key]
        await conn.execute(self.resolved_sql, *values, *keys)
        self.resolved += 1
        return None
