"""A server that is down or never answers: `streamdag run` fails in bounded time with an error naming
the connection and URL, and a signal stops it at once while it is still trying (no second signal)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _graph(tmp_path: Path, url: str, start_timeout: float) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: unreachable
        connections:
          bus: {{type: nats, url: "{url}", connect_timeout: 0.3, reconnect_wait: 0.1, start_timeout: {start_timeout}}}
        nodes:
          src: {{type: jetstream_source, config: {{connection: bus, stream: S, durable: d}}}}
          out: {{type: file_sink, inputs: [src], config: {{path: out.ndjson}}}}
    """))
    return path


def _start(path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "-q", str(path), *extra], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class _BlackHole:
    """A TCP server that accepts connections and never says a word (a NATS server that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def test_refused_nats_fails_within_start_timeout_naming_connection_and_url(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = _start(_graph(tmp_path, "nats://127.0.0.1:1", 1.0), "--registry", "off")
    _, err = proc.communicate(timeout=20)
    took = time.monotonic() - t0
    assert proc.returncode == 2, err  # EXIT_RUN_ERROR
    assert "nats connection 'bus' (nats://127.0.0.1:1): no server reachable within start_timeout 1s" in err
    assert "Traceback" not in err
    assert took < 6, took
    assert not (tmp_path / "out.ndjson").exists() or (tmp_path / "out.ndjson").read_text() == ""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_one_signal_stops_a_run_stuck_connecting_to_a_server_that_never_answers(tmp_path: Path, sig) -> None:
    hole = _BlackHole()
    try:
        proc = _start(_graph(tmp_path, f"nats://127.0.0.1:{hole.port}", 600))
        assert hole.accepted.wait(15), "the run never connected"
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
        took = time.monotonic() - t0
    finally:
        hole.close()
    assert took < 5, (took, err)
    assert proc.returncode == 0, err
    assert "stopped while node src was starting" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("connection", "node", "expected"), [
    ('{type: postgres, dsn: "postgresql://root:secret@127.0.0.1:1/test", connect_timeout: 1}',
     "{type: postgres_sink, inputs: [g], config: {connection: db, table: t, columns: {id: msg.i}}}",
     "postgres connection 'db' (127.0.0.1:1, database test): cannot connect: "),
    ('{type: redis, url: "redis://:secret@127.0.0.1:1/0", connect_timeout: 1}',
     "{type: redis_cache_sink, inputs: [g], config: {connection: db, key: 'string(msg.i)'}}",
     "redis connection 'db' (redis://:***@127.0.0.1:1/0): cannot connect: "),
])
def test_a_refused_connection_error_names_the_connection_host_and_port(write_graph, run, connection, node,
                                                                        expected) -> None:
    report = run(write_graph(f"""
        version: 1
        name: refused
        defaults: {{dead_letter: out}}
        connections:
          db: {connection}
        nodes:
          g: {{type: generate, config: {{count: 1}}}}
          out: {node}
    """))
    assert expected in str(report.error), report.error
    assert "secret" not in str(report.error)
