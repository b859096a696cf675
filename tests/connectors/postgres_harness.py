"""What the PostgreSQL tests share: the test database's DSN, a one-shot query helper, and a private
server (initdb in a temporary folder) for tests that stop and restart PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

import asyncpg

__all__ = ["DSN", "PrivatePostgres", "sql"]

DSN = "postgresql://root@127.0.0.1:5432/test"


async def sql(query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (set-up and checks outside the code under test)."""
    conn = await asyncpg.connect(DSN)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [""]


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free loopback port (trust auth, user root, database postgres),
    run as the postgres user. `stop()` crashes it (`pg_ctl stop -m immediate`: no checkpoint, WAL
    recovery on the next start); the data folder survives until `cleanup()`."""

    pg_ctl = os.path.join(_BIN[0], "pg_ctl")

    def __init__(self, **settings: str) -> None:
        """`settings`: extra server settings (`wal_level="logical"`), as `-c name=value`."""
        self.settings = settings
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.root = ""
        self.ctl: list[str] = []

    @classmethod
    def available(cls) -> bool:
        """Server binaries, runuser and root (to run them as the postgres user) are all here."""
        return os.path.exists(cls.pg_ctl) and shutil.which("runuser") is not None and os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/postgres"

    def create(self) -> None:
        """initdb and start."""
        self.root = tempfile.mkdtemp(prefix="postgres_private_")
        shutil.chown(self.root, "postgres", "postgres")
        data = os.path.join(self.root, "data")
        subprocess.run(_as_postgres(os.path.join(_BIN[0], "initdb"), "-D", data, "-A", "trust", "-U", "root",
                                    "--no-sync", "-E", "UTF8"), check=True, capture_output=True)
        extra = "".join(f" -c {k}={v}" for k, v in self.settings.items())
        self.ctl = _as_postgres(
            self.pg_ctl, "-D", data, "-l", os.path.join(self.root, "log"), "-w", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=20{extra}")
        self.start()

    def start(self) -> None:
        subprocess.run([*self.ctl, "start"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.ctl, "-m", "immediate", "stop"], check=True, capture_output=True)

    def cleanup(self) -> None:
        if self.ctl:
            subprocess.run([*self.ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


async def write_retrying(sink: Any, batch: list[Any], max_backoff: float = 0.05) -> Any:
    """`sink.write(batch)` retried as the runtime retries a sink's batch (the same list each time,
    until the error is the message's fault): for tests that drive a sink without a Runner."""
    import logging

    from engine import MESSAGE, RetryPolicy, classify

    policy = RetryPolicy(initial_backoff=0.005, max_backoff=max_backoff)
    return await policy.call(lambda: sink.write(batch), what="test write", log=logging.getLogger("test"),
                             retry_if=lambda exc: classify(exc) != MESSAGE)
