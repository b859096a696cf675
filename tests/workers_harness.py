"""`streamdag run --workers N` as a user runs it: the supervisor in a subprocess, its JSON log lines
read as they come (worker starts and restarts, with pids), its summary parsed at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["WORKER_LINE", "Supervised", "id_table", "rows"]

WORKER_LINE = re.compile(r"^worker (\d+): (\d+) in, (\d+) delivered, (\d+) filtered, (\d+) dead-lettered, exit (-?\d+) "
                         r"\((\d+) run\(s\)(?:, (\d+) killed)?")


class Supervised:
    """A supervisor process; `events` holds its JSON log records (and its workers'), `text` the rest."""

    def __init__(self, graph: Path | str, workers: int, *extra: str, stdout: Any = subprocess.DEVNULL):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", str(graph), "--workers", str(workers), "--log-format", "json",
             *extra], stdout=stdout, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            with self._lock:
                if isinstance(record, dict):
                    self.events.append(record)
                else:
                    self.text.append(line.rstrip("\n"))

    def started(self) -> list[tuple[int, int]]:
        """(worker index, pid) of every worker start so far, in order."""
        with self._lock:
            return [(e["worker_index"], e["pid"]) for e in self.events if e.get("event") == "worker_started"]

    def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; stderr:\n" + "\n".join(self.text)
                                     + "\nlast warnings:\n" + "\n".join(self.warnings()[-30:]))
            if self.proc.poll() is not None and not cond():
                self._reader.join(2)
                if not cond():
                    raise AssertionError(f"supervisor exited {self.proc.returncode} before {what}:\n"
                                         + "\n".join(self.text))
            time.sleep(0.02)

    def warnings(self) -> list[str]:
        """The workers' and the supervisor's warning and error lines, for failure messages."""
        with self._lock:
            return [f"{e.get('worker', 'supervisor')}: {e.get('msg')}" for e in self.events
                    if e.get("level") in ("warning", "error", "critical")]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def kill_worker(self, index: int) -> int:
        """kill -9 the current process of worker `index`; its pid."""
        pid = [p for i, p in self.started() if i == index][-1]
        os.kill(pid, signal.SIGKILL)
        return pid

    def takeover(self, index: int, delivered: Callable[[], int], missing: Callable[[int], int],
                 timeout: float = 30) -> tuple[float, int]:
        """kill -9 worker `index`; (seconds until `missing(k) == 0`, `missing(k)` at the kill), k = `delivered()`
        read just after the kill: every message handed to any worker by then (the dead one's included)."""
        self.kill_worker(index)
        killed_at = time.monotonic()
        k = delivered()
        held = missing(k)
        self.wait_until(lambda: missing(k) == 0, timeout, f"worker {index}'s messages taken over")
        return time.monotonic() - killed_at, held

    def finish(self, timeout: float = 60) -> tuple[int, dict[int, dict[str, int]], str]:
        """Wait for the end: exit code, per worker {in, delivered, filtered, dead_lettered, exit, runs, killed},
        and the integrity line."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(5)
        workers: dict[int, dict[str, int]] = {}
        integrity = ""
        for line in self.text:
            m = WORKER_LINE.match(line)
            if m:
                keys = ("in", "delivered", "filtered", "dead_lettered", "exit", "runs", "killed")
                workers[int(m.group(1))] = {k: int(v or 0) for k, v in zip(keys, m.groups()[1:])}
            if line.startswith("integrity "):
                integrity = line
        return code, workers, integrity


def id_table(prefix: str) -> Iterator[str]:
    """Body of a fixture: an idempotent sink's table (one row per message id), dropped afterwards."""
    import asyncio
    import uuid

    from tests.connectors.postgres_harness import sql

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(sql(f'CREATE TABLE "{name}" (id bigint PRIMARY KEY)'))
    yield name
    asyncio.run(sql(f'DROP TABLE IF EXISTS "{name}"'))


def rows(table: str, below: int | None = None) -> int:
    """Rows of `table` (with an id below `below`, if given)."""
    import asyncio

    from tests.connectors.postgres_harness import sql

    where = "" if below is None else f" WHERE id < {below}"
    return int(asyncio.run(sql(f'SELECT count(*) AS n FROM "{table}"{where}'))[0]["n"])
