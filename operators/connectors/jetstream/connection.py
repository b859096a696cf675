"""One NATS client per named connection, shared by every JetStream node of a run.

The first connection is bounded by `start_timeout` (a server that is down or never answers stops
the run with an error naming the connection and URL: nats-py alone would retry it forever); after
that the client reconnects without limit; nodes register a callback to redo their own state (pull
requests) after a reconnect. The first node to ask for a connection also creates the streams
declared under it (`streams:`), so a conflict stops the run before any data flows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from engine import UNAVAILABLE, ConnectorError, ErrorClass, NatsConnection, register_classifier

from .streams import ensure_streams
from .wire import Tap

if TYPE_CHECKING:
    from engine import Context

__all__ = ["JetStreamConnectionError", "NatsHandle", "classify_nats", "nats_handle"]

log = logging.getLogger("streamdag.jetstream")


def _safe(url: str) -> str:
    """The URL(s) without passwords or tokens, for messages."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", re.sub(r"//[^:@/]*@", "//***@", url))


def classify_nats(exc: BaseException) -> ErrorClass | None:
    """NATS errors for `engine.errors.classify`: a closed, reconnecting or stale connection, no
    responders (a stream whose leader is being elected), a full outbound buffer while reconnecting
    and a 503 from the JetStream API are a service's fault. (nats' TimeoutError is an OSError.)"""
    from nats import errors as ne
    from nats.js import errors as je

    if isinstance(exc, (ne.ConnectionClosedError, ne.ConnectionReconnectingError, ne.StaleConnectionError,
                        ne.NoServersError, ne.NoRespondersError, ne.OutboundBufferLimitError,
                        je.ServiceUnavailableError, ne.TimeoutError)):
        return UNAVAILABLE
    if isinstance(exc, je.APIError) and getattr(exc, "code", None) in (408, 503):
        return UNAVAILABLE
    return None


register_classifier(classify_nats)


class JetStreamConnectionError(ConnectorError):
    """The NATS server could not be reached or refused a JetStream request at start."""


class NatsHandle:
    """A connected client (`nc`), its JetStream context (`js`), its raw `tap` and reconnect listeners."""

    def __init__(self, name: str, settings: NatsConnection):
        self.name = name
        self.settings = settings
        self.nc: Any = None
        self.js: Any = None
        self.tap: Tap | None = None
        self.listeners: list[Callable[[], Awaitable[None]]] = []
        self.on_disconnect: list[Callable[[], None]] = []  # called at once when the connection drops
        self.closing = False
        self.last_error = ""

    async def _reconnected(self) -> None:
        url = self.nc.connected_url
        log.warning("nats connection %r reconnected to %s", self.name, url.netloc if url else "?")
        for listener in list(self.listeners):
            try:
                await listener()
            except Exception:
                log.exception("reconnect handler failed")

    async def _disconnected(self) -> None:
        if not self.closing:
            log.warning("nats connection %r lost; reconnecting", self.name)
        for fn in list(self.on_disconnect):
            fn()

    async def _error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if text != self.last_error:  # not once per attempt while a server stays down
            log.warning("nats connection %r: %s", self.name, text)
        self.last_error = text

    async def connect(self) -> NatsHandle:
        import asyncio

        from nats.aio.client import Client

        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.user is not None:
            kwargs["user"], kwargs["password"] = s.user, s.password
        if s.token is not None:
            kwargs["token"] = s.token
        if s.creds_file is not None:
            kwargs["user_credentials"] = s.creds_file
        self.nc = Client()
        attempt = asyncio.ensure_future(self.nc.connect(
                servers=[u.strip() for u in s.url.split(",") if u.strip()],
                name=s.name or "streamdag",
                connect_timeout=s.connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=s.reconnect_wait,
                reconnected_cb=self._reconnected,
                disconnected_cb=self._disconnected,
                error_cb=self._error,
                **kwargs,
            ))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=s.start_timeout)
        finally:  # a timeout, or the run stopped (cancelled) while connecting
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                await self._abandon()
        if not done:
            last = f" (last error: {self.last_error})" if self.last_error else ""
            raise JetStreamConnectionError(
                f"nats connection {self.name!r} ({_safe(s.url)}): no server reachable within "
                f"start_timeout {s.start_timeout:g}s{last}")
        if attempt.exception() is not None:
            await self._abandon()
            raise JetStreamConnectionError(
                f"nats connection {self.name!r} ({_safe(s.url)}): cannot connect: {attempt.exception()!r}"
            ) from attempt.exception()
        self.js = self.nc.jetstream()
        self.tap = Tap(self.nc)
        try:
            await ensure_streams(self.js, s.streams)
        except Exception:
            self.closing = True
            await self.nc.close()
            raise
        return self

    async def _abandon(self) -> None:
        """Close a client whose first connection never completed (its reconnect loop and socket)."""
        self.closing = True
        try:
            await self.nc.close()
        except Exception as exc:  # noqa: BLE001 - nothing was connected: nothing to flush
            log.debug("nats connection %r: closing an unconnected client: %r", self.name, exc)

    async def close(self) -> None:
        self.closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - draining a broken connection (the server is down)
                try:
                    await self.nc.close()
                except Exception as exc:  # noqa: BLE001 - its socket is already gone: nothing to flush
                    log.warning("nats connection %r closed uncleanly: %r", self.name, exc)


async def nats_handle(ctx: Context, connection: str) -> NatsHandle:
    """The shared client of `connection` (connected, its streams provisioned)."""
    settings = NatsConnection.model_validate(ctx.connection(connection))

    async def factory() -> NatsHandle:
        return await NatsHandle(connection, settings).connect()

    async def close(handle: NatsHandle) -> None:
        await handle.close()

    return await ctx.resources.get(f"nats:{connection}", factory, close)
