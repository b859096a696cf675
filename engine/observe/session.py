"""What `streamdag run` starts beside a runner: the monitor always, the HTTP server on request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.observe.events import dead_letter_policy
from engine.observe.monitor import Monitor

if TYPE_CHECKING:  # imported when a port is given: prometheus_client costs a run's start-up otherwise
    from engine.observe.server import MetricsServer

__all__ = ["Observers"]

log = logging.getLogger("streamdag.observe")


@dataclass
class Observers:
    monitor: Monitor
    server: MetricsServer | None = None

    @classmethod
    async def start(
        cls, runner: Any, metrics_port: int | None = None, host: str = "127.0.0.1", interval: float = 1.0,
        tap: bool = False,
    ) -> Observers:
        """Start watching `runner`; with `metrics_port` (0: any free port), serve it over HTTP (with
        `tap`, `streamdag tap` may read payloads there)."""
        dead_letter_policy.reset()
        monitor = Monitor(runner, interval=interval)
        monitor.start()
        server = None
        if metrics_port is not None:
            from engine.observe.server import MetricsServer

            server = MetricsServer(runner, monitor, host, metrics_port, tap=tap)
            try:
                await server.start()
            except OSError as exc:
                await monitor.stop()
                raise OSError(
                    f"cannot serve metrics on {host}:{metrics_port}: {exc.strerror or exc}"
                ) from exc
        return cls(monitor, server)

    async def close(self) -> None:
        """Stop the server and the monitor (which makes a last integrity pass)."""
        if self.server is not None:
            await self.server.close()
        await self.monitor.stop()
        dead_letter_policy.flush()
