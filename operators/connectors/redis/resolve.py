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
  a no-op); a concurrent one is left out and returned with the stored document and vector, and the
  sink sends it to its `conflicts` port.

Documents travel as JSON and are re-encoded by Redis' cjson: numbers beyond 2^53 lose precision and
an empty array comes back as `{}`; keep documents in that range (docs/consistency.md).
"""

from __future__ import annotations

from typing import Any

from operators.connectors.version_vector import vector_issue

__all__ = ["RESOLVE_SCRIPT", "vector_json"]

# KEYS: key, vector key. ARGV: strategy ('m' | 'vv'), ttl ms (0: none), document JSON, field
# versions field ('' none), vector JSON (vv), CRDT fields JSON {field: kind} (m; '' none). Returns 1 written, 0 dropped, {2, doc, vector} conflict.
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
  if not (ge and gt) then return {2, redis.call('GET', KEYS[1]) or '', curv} end
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
