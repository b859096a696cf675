"""One redis-py asyncio client per named connection, shared through `ctx.resources`, and durations.

`parse_duration` / `Duration` live here (pure, no I/O) so every Redis node reads `ttl: 1h` the same
way; the engine may adopt them later.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from engine.errors import ConnectorError

if TYPE_CHECKING:
    from engine.runtime.context import NodeContext

__all__ = ["CONNECTION_ERRORS", "Duration", "parse_duration", "redis_client"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string like `250ms`, `30s`, `5m`, `1h`, `7d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m, 1h, 7d")  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError(f"invalid duration {value!r}: use seconds or a string like 250ms, 30s, 5m, 1h, 7d")


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


# A positive duration in config models: seconds or a string; JSON Schema accepts both forms.
Duration = Annotated[
    float,
    BeforeValidator(_positive_duration),
    WithJsonSchema({"anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$", "examples": ["30s", "5m", "1h", "7d"]},
    ]}),
]


def _connection_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions as rex

    return (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, ConnectionError, OSError)


CONNECTION_ERRORS = _connection_errors()


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


async def redis_client(ctx: NodeContext, name: str) -> Any:
    """The shared `redis.asyncio.Redis` of connection `name`: created and pinged on first use (a clear
    `ConnectorError` if Redis cannot be reached), closed with the run's resources."""
    import redis.asyncio as aredis

    settings = ctx.connection(name)
    if settings.get("type", "redis") != "redis":
        raise ValueError(f"connection {name!r} is a {settings.get('type')!r} connection, not redis")

    url = settings.get("url", "redis://127.0.0.1:6379/0")

    async def factory() -> Any:
        kwargs: dict[str, Any] = {}
        if settings.get("socket_timeout") is not None:
            kwargs["socket_timeout"] = settings["socket_timeout"]
        if settings.get("connect_timeout") is not None:
            kwargs["socket_connect_timeout"] = settings["connect_timeout"]
        if settings.get("client_name"):
            kwargs["client_name"] = settings["client_name"]
        if settings.get("max_connections"):
            kwargs["max_connections"] = settings["max_connections"]
        # no await in here: two nodes starting at once must not both create a client
        return aredis.Redis.from_url(url, **kwargs)

    async def close(client: Any) -> None:
        await client.aclose()

    client = await ctx.resources.get(f"redis:{name}", factory, close)
    try:
        await client.ping()
    except CONNECTION_ERRORS as exc:
        raise ConnectorError(f"redis connection {name!r} ({_safe(url)}): cannot connect: {exc}") from exc
    return client
