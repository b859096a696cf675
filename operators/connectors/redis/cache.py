"""`redis_cache_sink`: each message as a value or a hash under a key from CEL, with a TTL.

With `version`, writes go through one Lua compare-and-set script: an entry whose stored version is
newer than the message's is left alone, so replays and out-of-order deliveries converge to the
same state as a PostgreSQL table written with last-write-wins on the same version (equal versions
overwrite). The version lives in the hash (`version_field`) or, for plain values, in a sibling key
`<key><version_suffix>`, which gets the same TTL.

With `delete`, a message whose condition is true deletes its key instead (CDC deletes: `msg.op ==
"delete"`). Versioned deletes go through the same script: a stored newer version wins, and in mode
`value` the version key stays behind as a tombstone (with the TTL, if any), so an older write
replayed later cannot bring the entry back; in mode `hash` the version goes with the hash.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from engine import (
    CelExpr,
    ConnectionLost,
    EvalError,
    Msg,
    NodeConfig,
    PositiveDuration,
    Sink,
    Unavailable,
    compile_expr,
    connection_field,
    encode_failure,
)
from operators.connectors.crdt import Crdt, crdt_issue
from operators.connectors.redis.connection import (
    connection_errors,
    first_refusal,
    raise_if_cancelled,
    redis_client,
)
from operators.connectors.redis.resolve import RESOLVE_SCRIPT, Settler, vector_json

__all__ = ["CAS_SCRIPT", "RedisCacheSink", "RedisCacheSinkConfig", "encode_value"]

# KEYS: key, version key. ARGV: mode ('v'|'h', or 'dv'|'dh' to delete), ttl ms (0: none), version ('': none), version field,
# then the value (mode v) or field/value pairs (mode h). Returns 1 when written, 0 when stale.
CAS_SCRIPT = """
local mode, ttl, ver = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local hash = mode == 'h' or mode == 'dh'
if ver ~= '' then
  local cur
  if hash then cur = redis.call('HGET', KEYS[1], ARGV[4]) else cur = redis.call('GET', KEYS[2]) end
  if cur and tonumber(cur) and tonumber(cur) > tonumber(ver) then return 0 end
end
if mode == 'dv' or mode == 'dh' then
  redis.call('DEL', KEYS[1])
  if ver ~= '' and mode == 'dv' then
    redis.call('SET', KEYS[2], ver)
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  end
  return 1
end
if mode == 'h' then
  redis.call('DEL', KEYS[1])
  if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
  if ver ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ver) end
else
  redis.call('SET', KEYS[1], ARGV[5])
  if ver ~= '' then redis.call('SET', KEYS[2], ver) end
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if ver ~= '' and mode == 'v' then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
"""


def encode_value(value: Any) -> bytes | str:
    """How a value is stored: strings and bytes as they are, anything else as JSON (orjson)."""
    if isinstance(value, (str, bytes)):
        return value
    return orjson.dumps(value)


class RedisCacheSinkConfig(NodeConfig):
    """Write each message under a key built by CEL, as a value or a hash, with a TTL and optional version."""

    connection: str = connection_field("redis", "cache")
    key: CelExpr = Field(description="CEL expression giving the key.", examples=['"user:" + msg.user'])
    value: CelExpr | None = Field(None, description="CEL expression of what to store; the whole body if unset.",
                                  examples=["msg.profile"])
    mode: Literal["value", "hash"] = Field(
        "value", description="`value`: SET (strings as is, other values as JSON); `hash`: the map's fields "
        "as a hash (replacing the previous hash; non-string field values as JSON).")
    ttl: PositiveDuration | None = Field(None, description="Expiry of each key; none if unset.", examples=["1h", 600])
    version: CelExpr | None = Field(None, description="CEL expression giving a numeric version: an older "
                                    "version never overwrites a newer one.", examples=["msg.version"])
    delete: CelExpr | None = Field(None, description="CEL condition: when true, the message deletes its key "
                                   "instead of writing it (versioned like a write).",
                                   examples=['msg.op == "delete"'])
    version_field: str = Field("_version", description="Hash field holding the version (mode hash).")
    version_suffix: str = Field(":version", description="Suffix of the sibling key holding the version "
                                "(mode value) or the version vector.")
    strategy: Literal["replace", "merge", "version_vector"] = Field(
        "replace", description="replace: SET (last write, or newest `version`, wins); merge: JSON deep merge "
        "into the stored document; version_vector: `vector` decides, concurrent writes go to `conflicts` "
        "(docs/consistency.md). merge and version_vector need mode value.")
    vector: CelExpr | None = Field(None, description="strategy version_vector: CEL giving the version vector "
                                   "(a map writer -> counter).", examples=["msg.vv"])
    field_versions: str | None = Field(None, description="strategy merge: the document key holding per-field "
                                       "versions (`{field: version}`).", examples=["_v"])
    conflict: Literal["port", "stream", "resolver"] | None = Field(
        None, description="strategy version_vector: concurrent writes go to the `conflicts` port (default), to "
        "a Redis stream with both versions (`conflicts_stream`), or to `resolver`.")
    resolver: CelExpr | None = Field(None, description="conflict: resolver: CEL over `msg.old`, `msg.new` (the "
                                     "documents) and `msg.old_vector`, `msg.new_vector` returning the document to "
                                     "keep (stored with both vectors merged).",
                                     examples=["msg.new.updated_at > msg.old.updated_at ? msg.new : msg.old"])
    resolver_attempts: int = Field(8, ge=1, le=100, description="conflict: resolver: commits tried while other "
                                   "writers change the key; then the message goes to `errors`.")
    conflicts_stream: str | None = Field(None, description="conflict: stream: the stream's key (default "
                                         "`streamdag:conflicts:<node id>`).", examples=["conflicts:users"])
    conflicts_maxlen: int = Field(100_000, ge=1, description="conflict: stream: entries kept (XADD MAXLEN ~).")
    crdt: dict[str, Crdt] = Field(default_factory=dict, description="strategy merge: top-level document fields "
                                  "merged as CRDTs (gcounter/pncounter: per-writer counts; orset: add-wins set; "
                                  "max/min: registers), as postgres_sink's `crdt` columns.",
                                  examples=[{"views": "gcounter", "tags": "orset"}])

    @model_validator(mode="after")
    def _check(self) -> RedisCacheSinkConfig:
        if not self.version_suffix:
            raise ValueError("version_suffix must not be empty")
        if self.strategy != "replace" and (self.mode != "value" or self.version is not None):
            raise ValueError(f"strategy {self.strategy} needs mode value and no `version`")
        if (self.strategy == "version_vector") != (self.vector is not None):
            raise ValueError("`vector` is needed by, and only used by, strategy version_vector")
        if (self.field_versions or self.crdt) and self.strategy != "merge":
            raise ValueError("`field_versions` and `crdt` are used by strategy merge")
        if self.field_versions and self.field_versions in self.crdt:
            raise ValueError(f"{self.field_versions!r} is the field versions map, not a crdt field")
        if self.conflict is not None and self.strategy != "version_vector":
            raise ValueError("`conflict` is used by strategy version_vector")
        if (self.conflict == "resolver") != (self.resolver is not None):
            raise ValueError("`resolver` is needed by, and only used by, conflict: resolver")
        if self.conflicts_stream is not None and self.conflict != "stream":
            raise ValueError("`conflicts_stream` is used by conflict: stream")
        if self.delete is not None and self.strategy != "replace":
            raise ValueError(f"`delete` works with strategy replace, not {self.strategy}")
        return self


class RedisCacheSink(Sink):
    """One pipeline per batch: SET ... PX, or the compare-and-set script for hashes and versions."""

    Config: ClassVar[type[NodeConfig]] = RedisCacheSinkConfig
    example = """\
version: 1
name: redis_cache_sink_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  latest:
    type: redis_cache_sink
    inputs: [orders]
    config: {connection: cache, key: '"order:" + string(msg.id)', ttl: 1h}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)
    port_docs: ClassVar[dict[str, str]] = {
        "conflicts": "version_vector with conflict: port: a write concurrent with the stored one, as "
                     "{conflict, node, key, old, old_vector, new}, "
                     "with the message's ack (committed when that port's consumer commits it)"}
    config: RedisCacheSinkConfig
    _routed: list[tuple[Msg, Any]]  # conflicts of the last write, for the `conflicts` port

    @classmethod
    def output_ports(cls, config: Any) -> tuple[str, ...]:
        """`conflicts` under strategy version_vector with conflict: port."""
        if config is not None and config.strategy == "version_vector" and config.conflict in (None, "port"):
            return ("conflicts",)
        return ()

    def routed(self) -> dict[str, list[tuple[Msg, Any]]]:
        routed, self._routed = self._routed, []
        return {"conflicts": routed} if routed else {}

    def metrics(self) -> dict[str, int]:
        """Entries written, skipped as older than the cache's (or dominated), conflicts; with a resolver,
        conflicts resolved and commits retried because another writer changed the key meanwhile."""
        counts = {"written": self.written, "stale": self.stale, "conflicts": self.conflicts}
        if self._settler is not None:
            counts |= {"resolved": self._settler.resolved, "resolve_retries": self._settler.retries}
        return counts

    def __init__(self, node_id: str, config: RedisCacheSinkConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self._key = compile_expr(config.key)
        self._value = compile_expr(config.value) if config.value else None
        self._version = compile_expr(config.version) if config.version else None
        self._delete = compile_expr(config.delete) if config.delete else None
        self._ttl_ms = int(config.ttl * 1000) if config.ttl else 0
        self._client: Any = None
        self._vector = compile_expr(config.vector) if config.vector else None
        self._sha = ""
        self._resolve_sha = ""
        self._crdt = orjson.dumps(config.crdt).decode() if config.crdt else ""
        self._stream = config.conflicts_stream or f"streamdag:conflicts:{node_id}"
        self._settler = (Settler(config.resolver, config.resolver_attempts, self._ttl_ms, config.version_suffix)
                         if config.resolver else None)
        self._routed = []
        self.conflicts = 0
        self.stale = 0  # messages skipped because the cache held a newer version
        self.written = 0

    async def start(self) -> None:
        self._client = await redis_client(self.ctx, self.config.connection)
        await self._load_scripts()

    async def _load_scripts(self) -> None:
        self._sha = await self._client.script_load(CAS_SCRIPT)
        if self.config.strategy != "replace":
            self._resolve_sha = await self._client.script_load(RESOLVE_SCRIPT)

    def _entry(self, msg: Msg) -> tuple[str, list[Any] | None, str]:
        """(key, value args or None to delete, version) of one message; raises ValueError with the reason."""
        body, meta = msg.body, msg.meta
        try:
            key = self._key(body, meta)
        except EvalError as exc:
            raise ValueError(f"key: {exc}") from None
        if not isinstance(key, (str, int)) or isinstance(key, bool) or key == "":
            raise ValueError(f"key: expected a non-empty string, got {key!r}")
        deleting = False
        if self._delete is not None:
            try:
                deleting = self._delete(body, meta)
            except EvalError as exc:
                raise ValueError(f"delete: {exc}") from None
            if not isinstance(deleting, bool):
                raise ValueError(f"delete: expected a bool, got {deleting!r}")
        try:
            value = self._value(body, meta) if self._value is not None else body
        except EvalError as exc:
            raise ValueError(f"value: {exc}") from None
        version = ""
        if self._version is not None:
            try:
                v = self._version(body, meta)
            except EvalError as exc:
                raise ValueError(f"version: {exc}") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"version: expected a number, got {v!r}")
            version = repr(v)
        if self._vector is not None:
            try:
                version = vector_json(self._vector(body, meta)).decode()
            except EvalError as exc:
                raise ValueError(f"version vector: {exc}") from None
        if deleting:
            return str(key), None, version
        if self.config.mode == "hash":
            if not isinstance(value, dict):
                raise ValueError(f"mode hash needs a map, got {type(value).__name__}")
            args = [part for k, v in value.items() if k != self.config.version_field
                    for part in (str(k), encode_value(v))]
        else:
            if self.config.crdt:
                if not isinstance(value, dict):
                    raise ValueError(f"crdt fields need a map document, got {type(value).__name__}")
                issue = next((f"{f}: {i}" for f, kind in self.config.crdt.items()
                              if (i := crdt_issue(kind, value.get(f))) is not None), None)
                if issue is not None:
                    raise ValueError(issue)
            try:
                # merge and version_vector store JSON documents (a string too, for the script to decode)
                args = [encode_value(value) if self.config.strategy == "replace" else orjson.dumps(value)]
            except TypeError as exc:
                raise ValueError(f"value does not encode as JSON: {encode_failure(exc)}") from None
        return str(key), args, version

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        if self._settler is None:
            return await self._write_round(batch)
        failed: list[tuple[Msg, str]] = []
        for part in self._rounds(batch):  # the resolver reads each key's previous write of this batch
            failed += await self._write_round(part)
        return failed

    def _rounds(self, batch: list[Msg]) -> list[list[Msg]]:
        """The n-th message of each key in the n-th round (a message whose key fails in the first)."""
        seen: dict[Any, int] = {}
        rounds: list[list[Msg]] = [[]]
        for msg in batch:
            try:
                key = self._key(msg.body, msg.meta)
            except EvalError:
                key = None
            n = seen.get(key, 0) if isinstance(key, (str, int)) else 0
            if isinstance(key, (str, int)):
                seen[key] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(msg)
        return rounds

    async def _write_round(self, batch: list[Msg]) -> list[tuple[Msg, str]]:
        failed, noscript = await self._write(batch)
        if noscript:  # the server lost its script cache (restart, SCRIPT FLUSH): load it and redo those
            await self._load_scripts()
            again, noscript = await self._write(noscript)
            failed += again + [(m, "redis: NOSCRIPT") for m in noscript]
        return failed

    async def _write(self, batch: list[Msg]) -> tuple[list[tuple[Msg, str]], list[Msg]]:
        from redis.exceptions import NoScriptError

        failed: list[tuple[Msg, str]] = []
        sent: list[Msg] = []
        pipe = self._client.pipeline(transaction=False)
        mode = "h" if self.config.mode == "hash" else "v"
        ttl = self._ttl_ms
        plain = mode == "v" and self._version is None
        for msg in batch:
            try:
                key, args, version = self._entry(msg)
            except (ValueError, TypeError) as exc:  # TypeError: a hash field JSON cannot encode
                failed.append((msg, encode_failure(exc)))
                continue
            if args is None:  # a delete: through the script, versioned or not
                pipe.execute_command("EVALSHA", self._sha, 2, key, key + self.config.version_suffix,
                                     "d" + mode, ttl, version, self.config.version_field)
                sent.append(msg)
                continue
            if self._resolve_sha and self.config.conflict == "stream":
                pipe.execute_command("EVALSHA", self._resolve_sha, 3, key, key + self.config.version_suffix,
                                     self._stream, "vs", ttl, args[0], "", version, "", self.config.conflicts_maxlen,
                                     self.id)
            elif self._resolve_sha:
                pipe.execute_command("EVALSHA", self._resolve_sha, 2, key, key + self.config.version_suffix,
                                     "vv" if self._vector is not None else "m", ttl, args[0],
                                     self.config.field_versions or "", version, self._crdt)
            elif plain:
                if ttl:
                    pipe.execute_command("SET", key, args[0], "PX", ttl)
                else:
                    pipe.execute_command("SET", key, args[0])
            else:
                pipe.execute_command("EVALSHA", self._sha, 2, key, key + self.config.version_suffix,
                                     mode, ttl, version, self.config.version_field, *args)
            sent.append(msg)
        if not sent:
            return failed, []
        try:
            results = await pipe.execute(raise_on_error=False)
        except connection_errors() as exc:
            raise ConnectionLost(f"redis {self.config.connection}: cache write failed: {exc}") from exc
        raise_if_cancelled()
        refused = first_refusal(results)
        if refused is not None:  # the server's state (read-only, out of memory): the whole batch again
            raise Unavailable(f"redis {self.config.connection}: cache write refused: {refused}") from refused
        noscript: list[Msg] = []
        pending: list[tuple[Msg, str, bytes, str, Any]] = []  # conflicts for the resolver
        for msg, res in zip(sent, results):
            if isinstance(res, NoScriptError):
                noscript.append(msg)
            elif isinstance(res, Exception):
                failed.append((msg, f"redis: {res}"))
            elif res == 0:
                self.stale += 1
            elif res == 3:  # recorded in the conflicts stream
                self.conflicts += 1
            elif isinstance(res, list) and self._settler is not None:
                self.conflicts += 1
                key, args, version = self._entry(msg)
                pending.append((msg, key, args[0] if args else b"", version, res))
            elif isinstance(res, list):  # a concurrent version vector: the stored one with it
                self.conflicts += 1
                self._routed.append((msg, {"conflict": "concurrent version vectors", "node": self.id,
                                           "key": self._entry(msg)[0], "old": _loads(res[1]),
                                           "old_vector": _loads(res[2]), "new": msg.body}))
            else:
                self.written += 1
        if pending:
            assert self._settler is not None
            try:
                again, written, dropped = await self._settler.settle(self._client, self._resolve_sha, pending)
            except connection_errors() as exc:
                raise ConnectionLost(f"redis {self.config.connection}: cache write failed: {exc}") from exc
            failed += again
            self.written += written
            self.stale += dropped
        return failed, noscript


def _loads(raw: Any) -> Any:
    """A stored JSON value, or its text when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
