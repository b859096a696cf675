"""A minimal driver for the Redis tests: source -> sink callable, with the real ack contract.

It stands in for the scheduler so the connector's own behaviour (what is read, what is acked
when) can be tested precisely: delivered messages are finished DELIVERED after the sink returns,
failed ones are failed, `errors` go to a dead-letter list and are finished DEAD_LETTERED, and a
committer task hands settled tokens back to the source in batches, like the runtime does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine.message import DEAD_LETTERED, DELIVERED, AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import SourceOutput
from engine.runtime.stats import NodeStats

REDIS_URL = "redis://127.0.0.1:6379/0"
SinkFn = Callable[[list[Msg]], Awaitable[list[tuple[Msg, str]] | None]]


def aio(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Run an async test in a fresh event loop (the project has no pytest-asyncio)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def redis_keys() -> Any:
    """Body of a fixture: a list to put test keys in, deleted from the shared Redis afterwards."""
    import redis

    keys: list[str] = []
    yield keys
    if keys:
        c = redis.Redis.from_url(REDIS_URL)
        c.delete(*keys)
        c.close()


def group_exists(stream: str, url: str = REDIS_URL) -> bool:
    import redis

    c = redis.Redis.from_url(url)
    try:
        return bool(c.xinfo_groups(stream))
    except redis.ResponseError:
        return False
    finally:
        c.close()


def unique(prefix: str = "redis") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_ctx(node_id: str, resources: Resources, url: str = REDIS_URL, **settings: Any) -> NodeContext:
    return NodeContext(node_id, {"cache": {"type": "redis", "url": url, **settings}}, {}, resources)


class Run:
    """Drives one source: `await run.start(sink)`, then `await run.finish()`."""

    def __init__(self, source: Any, max_in_flight: int = 0):
        self.source = source
        self.tracker = AckTracker(max_in_flight)
        self.stats = NodeStats(source.id, "source", "redis_stream_source")
        self.out = SourceOutput(source.id, self.tracker, self._send, self.stats)
        self.delivered: list[Msg] = []
        self.hold = False  # when set, delivered messages stay unsettled in `held` (a slow downstream)
        self.held: list[Msg] = []
        self.dead: list[Msg] = []
        self.changed = asyncio.Event()
        self._sink: SinkFn | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def _send(self, lists: dict[str, list[Msg]]) -> None:
        msgs, errors = lists.get("out", []), lists.get("errors", [])
        failed: dict[int, str] = {}
        if msgs and self._sink is not None:
            for m, reason in await self._sink(msgs) or []:
                failed[id(m)] = reason
        for m in msgs:
            if id(m) in failed:
                m.ack.fail(failed[id(m)])
            elif self.hold:
                self.held.append(m)
            else:
                self.delivered.append(m)
                m.ack.finish(DELIVERED)
        for m in errors:
            self.dead.append(m)
            m.ack.finish(DEAD_LETTERED)
        self.changed.set()

    def release_held(self) -> None:
        held, self.held = self.held, []
        for m in held:
            self.delivered.append(m)
            m.ack.finish(DELIVERED)
        self.changed.set()

    async def _commit_loop(self) -> None:
        while True:
            await self.tracker.wait_settled()
            done, failed = self.tracker.take()
            if done:
                await self.source.commit(done)
            if failed:
                await self.source.reject(failed)

    async def start(self, sink: SinkFn | None = None) -> asyncio.Task[Any]:
        self._sink = sink
        await self.source.start()
        self._tasks.append(asyncio.create_task(self._commit_loop()))
        task = asyncio.create_task(self.source.run(self.out))
        self._tasks.append(task)
        return task

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait (on sink activity, with a deadline) until `cond()` holds."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"condition not met in {timeout}s: delivered={len(self.delivered)} "
                                     f"dead={len(self.dead)}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))

    async def finish(self, timeout: float = 10.0) -> None:
        """Stop the source, wait for every ack to reach it, stop it."""
        self.out.stopping.set()
        run_task = self._tasks[1]
        await asyncio.wait_for(asyncio.shield(run_task), timeout)
        deadline = time.monotonic() + timeout
        while self.tracker.in_flight or self.tracker.completed or self.tracker.failed:
            if time.monotonic() > deadline:
                raise AssertionError("acks did not settle")
            await asyncio.sleep(0.01)
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[0]
        await self.source.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on a free loopback port (AOF on, so a restart keeps the data)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="streamdag-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """SIGTERM: Redis shuts down as on `redis-cli shutdown` (AOF flushed); start() brings it back."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
