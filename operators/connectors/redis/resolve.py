"""`redis_cache_sink` strategies `merge` and `version_vector`: one Lua script per message, so the
read, the decision and the write happen inside Redis with nothing in between (no other client's
command runs while a script does).

- `merge`: the stored JSON document and the new one are deep-merged (objects key by key, anything
  else replaced by the new value); with `field_versions`, top-level fields named in the documents'
  version map are last-write-wins by version (the map itself merged by max), as in postgres_sink.
  With `crdt`, the top-level fields it names merge as CRDTs (operators/connectors/crdt.py: per-writer
  max for counters, union for OR-sets, max/min registers), so any order, duplicates and replays
  of writers' contributions converge; a field absent from (or null in) a write keeps its state.
- `version_vector`: the vector lives in the sibling key `<key><version_suffix>` (JSON). A vector
  that dominates replaces document and vector; a dominated or equal one is dropped (so a replay is
  a no-op); a concurrent one is, by `conflict`:
  - `port` (default): left out and returned with the stored document and vector; the sink sends it
    to its `conflicts` port.
  - `stream`: left out and recorded, in the same script, in a Redis stream (`conflicts_stream`,
    capped by `XADD MAXLEN ~`) with both documents and both vectors; the message is then done.
  - `resolver`: a CEL expression over `msg.old`, `msg.new`, `msg.old_vector`, `msg.new_vector`
    returns the document to keep, stored with the pointwise maximum of both vectors (which dominates
    both, so a replay of either write is then dropped). CEL runs in Python, so this is optimistic
    concurrency in the manner of WATCH/MULTI/EXEC, without a connection held per key: the commit is
    the same script in mode `vr`, which writes only if the stored document and vector are still
    exactly the ones the resolver read, and otherwise decides the write against what is stored now
    (dominated: dropped; dominating: written; concurrent: the resolver runs again on the new state).
    At most `resolver_attempts` rounds; then the message goes to `errors` with the reason and the key
    keeps whatever the other writers stored (nothing half-written). A batch is written in rounds (the
    n-th message of each key in the n-th round), so one worker's writes of a key are resolved in
    arrival order.

Documents travel as JSON and are re-encoded by Redis' cjson: numbers beyond 2^53 lose precision and
an empty array comes back as `{}`; keep documents in that range (docs/consistency.md).
"""

from __future__ import annotations

from typing import Any

from engine import EvalError, Msg, Unavailable, compile_expr, encode_failure
from operators.connectors.redis.connection import first_refusal, raise_if_cancelled
from operators.connectors.version_vector import vector_issue

__all__ = ["RESOLVE_SCRIPT", "Settler", "vector_json"]

# KEYS: key, vector key (, conflicts stream for 'vs'). ARGV: strategy ('m' merge | 'vv' version vector |
# 'vs' the same, conflicts to the stream | 'vr' commit a resolved conflict), ttl ms (0: none), document
# JSON, field versions field ('' none), vector JSON, CRDT fields JSON {field: kind} ('' none), then for
# 'vs': stream MAXLEN, node id; for 'vr': the document and vector the resolver read, the document it
# kept, the merged vector. 'vr' writes only when the stored pair is still the one read; otherwise it
# decides the original write against the new state as 'vv' does.
# Returns 1 written, 0 dropped, {2, doc, vector} conflict, 3 conflict recorded in the stream, 4 resolved.
RESOLVE_SCRIPT = """
local function is_obj(t) return type(t) == 'table' and t[1] == nil end
local function jmax(a, b)
  if a == nil or a == cjson.null then return b end
  if b == nil or b == cjson.null then return a end
  if is_obj(a) and is_obj(b) then
    local out = {}
    for k, v in pairs(a) do out[k] = v end
    for k, v in pairs(b) do out[k] = jmax(out[k], v) end
    return out
  end
  if type(a) == 'number' and type(b) == 'number' then if a >= b then return a else return b end end
  return b
end
local function rank(x) if type(x) == 'number' then return 0 elseif type(x) == 'string' then return 1 end return 2 end
local function less(x, y)
  if rank(x) ~= rank(y) then return rank(x) < rank(y) end
  if rank(x) == 2 then return cjson.encode(x) < cjson.encode(y) end
  return x < y
end
local merge
local function crdt(kind, a, b)
  if a == nil or a == cjson.null then return b end
  if b == cjson.null then return a end
  if kind == 'gcounter' or kind == 'pncounter' then return jmax(a, b) end
  if kind == 'orset' then return merge(a, b, nil, nil) end
  if (kind == 'max') == less(a, b) then return b end
  return a
end
merge = function(a, b, vf, kinds)
  if not (is_obj(a) and is_obj(b)) then return b end
  local out = {}
  for k, v in pairs(a) do out[k] = v end
  local va = (vf and is_obj(a[vf])) and a[vf] or {}
  local vb = (vf and is_obj(b[vf])) and b[vf] or {}
  for k, v in pairs(b) do
    if kinds and kinds[k] then out[k] = crdt(kinds[k], out[k], v)
    elseif out[k] == nil then out[k] = v
    elseif vf and k == vf then out[k] = jmax(out[k], v)
    elseif vf and (va[k] ~= nil or vb[k] ~= nil) then
      local x, y = tonumber(va[k]) or -1e300, tonumber(vb[k]) or -1e300
      if y > x or (y == x and cjson.encode(v) > cjson.encode(out[k])) then out[k] = v end
    else out[k] = merge(out[k], v, nil, nil) end
  end
  return out
end
local ttl, doc = tonumber(ARGV[2]), ARGV[3]
if ARGV[1] == 'm' then
  local cur = redis.call('GET', KEYS[1])
  if cur then
    local ok, old = pcall(cjson.decode, cur)
    if ok then
      local vf, kinds = ARGV[4], nil
      if vf == '' then vf = nil end
      if ARGV[6] ~= '' then kinds = cjson.decode(ARGV[6]) end
      doc = cjson.encode(merge(old, cjson.decode(doc), vf, kinds))
    end
  end
  redis.call('SET', KEYS[1], doc)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
  return 1
end
if ARGV[1] == 'vr' then
  local cur, now = redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or ''
  if cur == ARGV[7] and now == ARGV[8] then
    redis.call('SET', KEYS[1], ARGV[9])
    redis.call('SET', KEYS[2], ARGV[10])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', KEYS[2], ttl) end
    return 4
  end
end
local curv = redis.call('GET', KEYS[2])
if curv then
  local o, n = cjson.decode(curv), cjson.decode(ARGV[5])
  local ge, gt, le = true, false, true
  local keys = {}
  for k in pairs(o) do keys[k] = true end
  for k in pairs(n) do keys[k] = true end
  for k in pairs(keys) do
    local x, y = tonumber(o[k]) or 0, tonumber(n[k]) or 0
    if y < x then ge = false end
    if y > x then gt = true; le = false end
  end
  if le then return 0 end
  if not (ge and gt) then
    local cur = redis.call('GET', KEYS[1]) or ''
    if ARGV[1] == 'vs' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'key', KEYS[1], 'old', cur, 'old_vector', curv,
                 'new', doc, 'new_vector', ARGV[5], 'node', ARGV[8])
      return 3
    end
    return {2, cur, curv}
  end
end
redis.call('SET', KEYS[1], doc)
redis.call('SET', KEYS[2], ARGV[5])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl); redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""


def vector_json(v: Any) -> bytes:
    """A checked version vector as JSON; raises ValueError with the reason when malformed."""
    import orjson

    issue = vector_issue(v)
    if issue is not None:
        raise ValueError(issue)
    return orjson.dumps(v)


class Settler:
    """`conflict: resolver`: runs the resolver over the conflicts of a round and commits each kept
    document with the script's mode `vr`, again while another writer changed the key meanwhile."""

    def __init__(self, resolver: str, attempts: int, ttl_ms: int, suffix: str):
        self._resolver = compile_expr(resolver)
        self.attempts = attempts
        self._ttl = ttl_ms
        self._suffix = suffix
        self.resolved = 0
        self.retries = 0  # commits that found the key changed since the resolver read it

    def _kept(self, old: bytes, old_vector: bytes, doc: bytes, vector: str) -> tuple[bytes, bytes]:
        """The resolver's document and the merged vector; raises ValueError with the reason."""
        import orjson

        ov, nv = orjson.loads(old_vector), orjson.loads(vector)
        try:
            kept = self._resolver({"old": orjson.loads(old) if old else None, "new": orjson.loads(doc),
                                   "old_vector": ov, "new_vector": nv}, {})
        except (EvalError, TypeError, ValueError) as exc:
            raise ValueError(f"resolver: {encode_failure(exc)}") from None
        if kept is None:
            raise ValueError("resolver: returned null (return the document to keep)")
        try:
            kept_json = orjson.dumps(kept)
        except TypeError as exc:
            raise ValueError(f"resolver: the kept document does not encode as JSON: {encode_failure(exc)}") from None
        return kept_json, orjson.dumps({w: max(ov.get(w, 0), nv.get(w, 0)) for w in {*ov, *nv}})

    async def settle(self, client: Any, sha: str, pending: list[tuple[Msg, str, bytes, str, Any]]
                     ) -> tuple[list[tuple[Msg, str]], int, int]:
        """Resolve `pending` (message, key, document, vector, the script's conflict answer); the
        failures with their reasons, and how many were instead written as dominating or dropped as
        dominated (the key changed meanwhile)."""
        failed: list[tuple[Msg, str]] = []
        written = dropped = 0
        for attempt in range(self.attempts):
            if not pending:
                break
            if attempt:
                self.retries += len(pending)
            pipe = client.pipeline(transaction=False)
            sent = []
            for msg, key, doc, vector, answer in pending:
                old, old_vector = answer[1], answer[2]
                try:
                    kept, merged = self._kept(old, old_vector, doc, vector)
                except ValueError as exc:
                    failed.append((msg, str(exc)))
                    continue
                pipe.execute_command("EVALSHA", sha, 2, key, key + self._suffix, "vr", self._ttl, doc, "", vector, "",
                                     old, old_vector, kept, merged)
                sent.append((msg, key, doc, vector))
            results = await pipe.execute(raise_on_error=False) if sent else []
            raise_if_cancelled()
            refused = first_refusal(results)
            if refused is not None:  # the server's state (read-only, out of memory): the whole batch again
                raise Unavailable(f"redis: resolved write refused: {refused}") from refused
            pending = []
            for (msg, key, doc, vector), res in zip(sent, results):
                if isinstance(res, Exception):
                    failed.append((msg, f"redis: {res}"))
                elif isinstance(res, list):
                    pending.append((msg, key, doc, vector, res))
                elif res == 4:
                    self.resolved += 1
                elif res == 1:
                    written += 1
                else:
                    dropped += 1
        failed += [(msg, f"resolver: key {key!r} changed under {self.attempts} attempt(s) in a row (concurrent "
                         "writers); nothing written") for msg, key, *_ in pending]
        return failed, written, dropped
