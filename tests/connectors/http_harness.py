"""A running `http_source` whose SourceOutput feeds an NDJSON file sink that the test can hold shut.

The sink appends each batch to a file, flushes, then finishes the acks (DELIVERED), or fails the
messages the test marks as poison. `gate` is the graph's room: while it is clear, `send` waits,
exactly as a full edge makes a real source wait. The ack loop hands settled tokens back through
`commit` / `reject`, as the runtime does.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import orjson

from engine.message import DELIVERED, AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.stats import NodeStats
from operators.connectors.http.config import HttpSourceConfig
from operators.connectors.http.source import HttpSource

__all__ = ["Gateway", "aio", "post"]


class Gateway:
    """`async with Gateway(tmp_path, **config) as gw:` → `gw.url`, `gw.lines()`, `gw.gate`."""

    def __init__(self, tmp_path: Any, connections: dict[str, dict[str, Any]] | None = None,
                 schemas: dict[str, Any] | None = None, poison: str | None = None, sink_delay: float = 0.0,
                 **config: Any):
        config.setdefault("port", 0)
        self.cfg = HttpSourceConfig.model_validate(config)
        self.sink_path = os.path.join(str(tmp_path), "sink.ndjson")
        self.ctx = NodeContext("ingest", connections or {}, schemas or {}, Resources(), str(tmp_path))
        self.source = HttpSource("ingest", self.cfg, self.ctx)
        self.gate = asyncio.Event()
        self.gate.set()
        self.poison = poison  # items whose body has this key are failed by the sink
        self.sink_delay = sink_delay  # seconds each batch takes to commit (a slow sink)
        self.batches: list[int] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def _send(self, lists: dict[str, list[Msg]]) -> None:
        await self.gate.wait()
        if self.sink_delay:
            await asyncio.sleep(self.sink_delay)
        msgs = lists["out"]
        self.batches.append(len(msgs))
        good = [m for m in msgs if not (self.poison and isinstance(m.body, dict) and self.poison in m.body)]
        with open(self.sink_path, "ab") as fh:
            fh.write(b"".join(orjson.dumps({"body": m.body, "meta": m.meta}) + b"\n" for m in good))
            fh.flush()
        for m in msgs:
            if self.poison and isinstance(m.body, dict) and self.poison in m.body:
                m.ack.fail("poison item refused by the sink")
            else:
                m.ack.finish(DELIVERED)

    async def _acks(self) -> None:
        tracker = self.out.tracker
        while True:
            await tracker.wait_settled()
            done, failed = tracker.take()
            if done:
                await self.source.commit(done)
            if failed:
                await self.source.reject(failed)

    async def __aenter__(self) -> Gateway:
        await self.source.start()
        self.out = SourceOutput("ingest", AckTracker(), self._send, NodeStats("ingest", "source", "http_source"))
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.source.run(self.out)), loop.create_task(self._acks())]
        await self.source.listening.wait()
        host, port = self.source.address  # type: ignore[misc]
        self.url = f"http://{host}:{port}"
        self.ingest_url = self.url + self.cfg.path
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.set()
        self.out.stopping.set()
        await asyncio.wait_for(self.tasks[0], 10)
        self.tasks[1].cancel()
        await self.source.stop()

    def lines(self) -> list[dict[str, Any]]:
        """What the sink committed, in order."""
        if not os.path.exists(self.sink_path):
            return []
        with open(self.sink_path, "rb") as fh:
            return [orjson.loads(line) for line in fh if line.strip()]


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop event loop (as the runtime does), with a 30 s cap."""
    import uvloop

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        uvloop.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


async def post(session: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, Any, Any]:
    """POST `body` (JSON unless a Content_Type says otherwise): (status, JSON reply, headers)."""
    hdrs = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with session.post(url, data=body, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def serve_post(path: str, handler: Callable[[Any], Awaitable[Any]], port: int = 0) -> tuple[Any, int]:
    """An aiohttp server on 127.0.0.1 answering POST `path` with `handler`: (its runner, to `cleanup()`; port)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
