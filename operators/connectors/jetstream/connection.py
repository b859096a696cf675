"""One NATS client per named connection, shared by every JetStream node of a run.

The client reconnects without limit; nodes register a callback to redo their own state (pull
requests) after a reconnect. The first node to ask for a connection also creates the streams
declared under it (`streams:`), so a conflict stops the run before any data flows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from engine import UNAVAILABLE, ConnectorError, ErrorClass, NatsConnection, register_classifier

from .streams import ensure_streams
from .wire import Tap

if TYPE_CHECKING:
    from engine import Context

__all__ = ["JetStreamConnectionError", "NatsHandle", "classify_nats", "nats_handle"]

log = logging.getLogger("streamdag.jetstream")


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
        log.warning("nats connection %r: %s", self.name, exc)

    async def connect(self) -> NatsHandle:
        import nats

        s = self.settings
        kwargs: dict[str, Any] = {}
        if s.user is not None:
            kwargs["user"], kwargs["password"] = s.user, s.password
        if s.token is not None:
            kwargs["token"] = s.token
        if s.creds_file is not None:
            kwargs["user_credentials"] = s.creds_file
        try:
            self.nc = await nats.connect(
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
            )
        except Exception as exc:
            raise JetStreamConnectionError(
                f"connection {self.name!r}: cannot connect to {s.url}: {exc!r}"
            ) from exc
        self.js = self.nc.jetstream()
        self.tap = Tap(self.nc)
        try:
            await ensure_streams(self.js, s.streams)
        except Exception:
            self.closing = True
            await self.nc.close()
            raise
        return self

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
