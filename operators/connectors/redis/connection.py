"""One redis-py asyncio client per named connection, shared through `ctx.resources`."""

from __future__ import annotations

import re
from functools import cache
from typing import TYPE_CHECKING, Any

from engine import MESSAGE, UNAVAILABLE, ConnectorError, ErrorClass, register_classifier

if TYPE_CHECKING:
    from engine import Context

__all__ = ["classify_redis", "connection_errors", "first_refusal", "raise_if_cancelled", "redis_client"]


@cache
def connection_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused connection raises. A function, for `except connection_errors():`
    (evaluated only when something is raised): importing a Redis node type, as `validate` does,
    must not import redis-py (which imports asyncio)."""
    from redis import exceptions as rex

    return (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, ConnectionError, OSError)

# Replies of a Redis that is up but cannot serve now (loading its data set, a replica, a cluster
# slot moving, a script running, memory full under a noeviction policy): retried until it can.
_UNAVAILABLE_REPLIES = ("LOADING", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "BUSY", "OOM",
                        "NOREPLICAS", "MISCONF")


def classify_redis(exc: BaseException) -> ErrorClass | None:
    """Redis errors for `engine.errors.classify`: connection, timeout and the not-now replies
    above are a service's fault; any other reply (WRONGTYPE, a bad argument) is left unknown.

    redis-py strips the code from the replies it has a class for (`ReadOnlyError` reads "You can't
    write against a read only replica."), so the code is taken from `status_code` when it is there."""
    from redis import exceptions as rex

    if isinstance(exc, connection_errors()):
        return UNAVAILABLE
    if isinstance(exc, rex.ResponseError):
        code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
        if str(code).upper() in _UNAVAILABLE_REPLIES or isinstance(exc, _unavailable_classes()):
            return UNAVAILABLE
    if isinstance(exc, rex.DataError):  # a value redis-py cannot encode: the message's fault
        return MESSAGE
    return None


register_classifier(classify_redis)


@cache
def _unavailable_classes() -> tuple[type[BaseException], ...]:
    from redis import exceptions as rex

    return (rex.ReadOnlyError, rex.OutOfMemoryError, rex.TryAgainError, rex.ClusterDownError)


def first_refusal(results: list[Any]) -> BaseException | None:
    """The first reply of a pipeline (`raise_on_error=False`) in which the server refused for now
    (read-only replica, out of memory, loading...): not the message's fault, so not a per-message
    failure; the caller retries instead. None when there is none."""
    for res in results:
        if isinstance(res, BaseException) and classify_redis(res) == UNAVAILABLE:
            return res
    return None


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that the client swallowed.

    With uvloop, redis-py 8 can return normally from a pipeline whose task was cancelled meanwhile
    (seen in `Runner` shutdown: the ack task then waited forever). Called after each batch's I/O."""
    import asyncio

    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


async def redis_client(ctx: Context, name: str) -> Any:
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
        # redis-py would otherwise retry a failed command itself (10 times, up to ~5 s) and hide that
        # a reply was lost: an XREADGROUP that ran (its entries now pending on this consumer, never
        # seen) or an XADD run twice. Every node retries on its own, knowing what is safe to redo.
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs["retry"] = Retry(NoBackoff(), 0)
        # no await in here: two nodes starting at once must not both create a client
        return aredis.Redis.from_url(url, **kwargs)

    async def close(client: Any) -> None:
        await client.aclose()

    client = await ctx.resources.get(f"redis:{name}", factory, close)
    try:
        await client.ping()
    except connection_errors() as exc:
        raise ConnectorError(f"redis connection {name!r} ({_safe(url)}): cannot connect: {exc}") from exc
    return client
