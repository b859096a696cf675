"""`redis_lookup`: cache-aside enrichment: look each message's key up in Redis, batched.

Values (mode `value`) come with one MGET per batch, hashes (mode `hash`) with one pipeline of
HGETALL. A found value is put under `into` in the message body. Misses follow `on_miss`: keep the
message with `null`, drop it (acked, counted), send it to `errors`, or send it to the `miss` port,
where the graph can load it from the database and write it back with `redis_cache_sink` (the
"aside" of cache-aside).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from engine import (
    CelExpr,
    ConnectionLost,
    EvalError,
    Msg,
    NodeConfig,
    Operator,
    Output,
    PayloadTooLarge,
    codec,
    compile_expr,
    connection_field,
)
from operators.connectors.redis.connection import connection_errors, raise_if_cancelled, redis_client

__all__ = ["RedisLookup", "RedisLookupConfig"]


class RedisLookupConfig(NodeConfig):
    """Enrich each message with the value stored in Redis under a key built by CEL."""

    connection: str = connection_field("redis", "cache")
    key: CelExpr = Field(description="CEL expression giving the key to read.", examples=['"user:" + msg.user'])
    into: str = Field("lookup", description="Body field that receives the value (the body must be a map).",
                      examples=["user"])
    mode: Literal["value", "hash"] = Field("value", description="`value`: GET (MGET); `hash`: HGETALL.")
    format: Literal["json", "text"] = Field(
        "json", description="How stored values decode: JSON, falling back to the text when it is not JSON "
        "(what `redis_cache_sink` writes), or always text.")
    on_miss: Literal["null", "drop", "error", "port"] = Field(
        "null", description="A key with no value: set `into` to null, drop the message, send it to "
        "`errors`, or send it to the `miss` port.")


class RedisLookup(Operator):
    """One MGET (or one HGETALL pipeline) per batch."""

    Config: ClassVar[type[NodeConfig]] = RedisLookupConfig
    example = """\
version: 1
name: redis_lookup_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  profile:
    type: redis_lookup
    inputs: [orders]
    config: {connection: cache, key: '"user:" + msg.user', into: profile, on_miss: port}
  show: {type: stdout, inputs: [profile]}
  unknown: {type: file_sink, inputs: [profile.miss], config: {path: out/unknown_users.ndjson}}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    port_docs: ClassVar[dict[str, str]] = {
        "out": "every message, enriched under `into` (or as `on_miss` says when the key is missing)",
        "miss": "with `on_miss: port` only: messages whose key is not in Redis, unchanged",
    }
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)
    config: RedisLookupConfig

    def __init__(self, node_id: str, config: RedisLookupConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self._key = compile_expr(config.key)
        self._client: Any = None
        self.hits = 0
        self.misses = 0

    @classmethod
    def output_ports(cls, config: Any) -> tuple[str, ...]:
        return ("out", "miss") if config.on_miss == "port" else ("out",)

    async def start(self) -> None:
        self._client = await redis_client(self.ctx, self.config.connection)

    def _decode(self, raw: bytes) -> Any:
        """JSON if it parses, else text; raises `PayloadTooLarge` beyond the payload limits."""
        if self.config.format == "text":
            return raw.decode("utf-8", "replace")
        try:
            return codec.loads(raw)
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace")

    async def process(self, batch: list[Msg], out: Output) -> None:
        keyed: list[tuple[Msg, str]] = []
        for msg in batch:
            if not isinstance(msg.body, dict):
                out.error(msg, f"redis_lookup needs a map body to set {self.config.into!r}")
                continue
            try:
                key = self._key(msg.body, msg.meta)
            except EvalError as exc:
                out.error(msg, f"lookup key: {exc}")
                continue
            keyed.append((msg, str(key)))
        if not keyed:
            return
        try:
            if self.config.mode == "value":
                values: list[Any] = await self._client.mget([k for _, k in keyed])
            else:
                pipe = self._client.pipeline(transaction=False)
                for _, k in keyed:
                    pipe.hgetall(k)
                values = await pipe.execute()
        except connection_errors() as exc:
            raise ConnectionLost(f"redis {self.config.connection}: lookup failed: {exc}") from exc
        raise_if_cancelled()
        on_miss, into = self.config.on_miss, self.config.into
        send = out.port("out").append
        for (msg, key), raw in zip(keyed, values):
            if raw is not None and raw != {}:  # None (no key) or {} (no hash) is a miss
                self.hits += 1
                try:
                    if isinstance(raw, dict):
                        value = {k.decode(): self._decode(v) for k, v in raw.items()}
                    else:
                        value = self._decode(raw)
                except PayloadTooLarge as exc:
                    out.error(msg, f"value under {key!r}: {exc}")
                    continue
                send(msg.derive({**msg.body, into: value}))
                continue
            self.misses += 1
            if on_miss == "null":
                send(msg.derive({**msg.body, into: None}))
            elif on_miss == "drop":
                out.drop(msg)
            elif on_miss == "error":
                out.error(msg, f"no value in redis under {key!r}")
            else:
                out.send(msg, "miss")
