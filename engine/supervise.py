"""`streamdag run G --workers N`: N worker processes of one graph, supervised by this one.

The parent runs no node. It starts N children (`python -m engine.cli ... run G --workers N
--worker-index i --worker-report FILE`), each a whole `Runner` of the graph that knows it is
worker i of N (`WorkerInfo`); the sources share the work among them (JetStream durables, Redis
consumer groups, `postgres_source` hash ranges, finite sources split by index: docs/scale.md).

Contract:
- A worker that dies (a signal, exit code 2 or 3) is restarted after a backoff (0.5 s doubling to
  30 s; reset after it ran 30 s). One that fails `MAX_QUICK_FAILURES` times in a row within
  `QUICK` seconds of its start stays down (a crash loop), and the run's exit code says so. Exit 0
  (its finite sources drained, or a stop) and exit 1 (an invalid graph) are final.
- SIGTERM or SIGINT to the parent is forwarded to every worker: they drain and exit; no restart
  after that. A second signal is forwarded too, which makes the workers abort. A worker still
  starting (no handler yet, so nothing read) dies of the SIGTERM: that counts as a clean stop.
- Children get SIGTERM when the parent dies (Linux `PR_SET_PDEATHSIG`), and their own session,
  so a Ctrl-C in the terminal reaches them once, through the parent.
- Each worker writes its totals as one JSON object to its report file when its run ends; the
  parent sums them into one integrity line. A worker killed with kill -9 writes none: its
  unacknowledged messages are the source's to redeliver, and the summary counts it as killed.
- SIGHUP (a reload, for a single process: engine.reload) is logged and ignored: no reload here.
- Exit code: 0 when every worker's last run exited 0; else the worst of their codes (1 invalid,
  2 run error or a crash loop, 3 integrity).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

from engine import stopsignals

__all__ = ["Slot", "supervise", "worker_argv", "write_report"]

log = logging.getLogger("streamdag.supervise")

BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
QUICK = 30.0  # a run shorter than this counts towards a crash loop, and does not reset the backoff
MAX_QUICK_FAILURES = 5
FINAL_CODES = (0, 1)  # done: drained or stopped, or an invalid graph (a restart cannot help)


@dataclass
class Slot:
    """Worker slot `index`: its current process and what its past runs reported."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    runs: int = 0
    quick_failures: int = 0
    last_code: int | None = None
    killed: int = 0  # runs that ended by a signal, with no report
    reports: list[dict[str, Any]] = field(default_factory=list)
    gave_up: bool = False


def worker_argv(argv: list[str], index: int, report: str) -> list[str]:
    """The command line of worker `index`: this run's arguments plus the worker's slot and report file."""
    return [sys.executable, "-m", "engine.cli", *argv, "--worker-index", str(index), "--worker-report", report]


def _prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a child outlives a parent killed with -9
        return None


_PRCTL = _prctl()  # looked up here, so the child only calls it (no dlopen, no lock, between fork and exec)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, argv: list[str], workers: int, out: IO[str]):
        self.argv = argv
        self.slots = [Slot(i) for i in range(workers)]
        self.out = out
        self.signals = 0
        self.stopping = asyncio.Event()
        self.dir = tempfile.mkdtemp(prefix="streamdag-workers-")

    async def start(self, slot: Slot) -> None:
        slot.runs += 1
        report = os.path.join(self.dir, f"w{slot.index}-{slot.runs}.json")
        slot.proc = await asyncio.create_subprocess_exec(
            *worker_argv(self.argv, slot.index, report), stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent, start_new_session=True)
        slot.started = time.monotonic()
        if self.stopping.is_set():  # a signal came before it existed (on_signal missed it): it starts and drains
            slot.proc.send_signal(signal.SIGTERM)
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid,
                 extra={"event": "worker_started", "worker_index": slot.index, "pid": slot.proc.pid})

    async def watch(self, slot: Slot) -> None:
        """Run slot's worker until it ends for good: restart it after a backoff while it dies."""
        delay = BACKOFF_FIRST
        while True:
            await self.start(slot)
            assert slot.proc is not None
            code = await slot.proc.wait()
            ran = time.monotonic() - slot.started
            if code == -signal.SIGTERM and self.stopping.is_set():
                code = 0  # our SIGTERM came before it set its handler: it had not started reading
            slot.last_code = code
            report = os.path.join(self.dir, f"w{slot.index}-{slot.runs}.json")
            self._collect(slot, report)
            if code < 0:
                slot.killed += 1
            if code in FINAL_CODES or self.stopping.is_set():
                return
            slot.quick_failures = slot.quick_failures + 1 if ran < QUICK else 0
            if ran >= QUICK:
                delay = BACKOFF_FIRST
            if slot.quick_failures >= MAX_QUICK_FAILURES:
                slot.gave_up = True
                log.error("worker %d failed %d times in a row within %.0fs of starting: not restarted",
                          slot.index, slot.quick_failures, QUICK,
                          extra={"event": "worker_gave_up", "worker_index": slot.index})
                return
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log.warning("worker %d (pid %d) %s after %.1fs; restarting in %.1fs", slot.index, slot.proc.pid, how,
                        ran, delay, extra={"event": "worker_restart", "worker_index": slot.index, "code": code})
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            delay = min(BACKOFF_MAX, delay * 2)

    def _collect(self, slot: Slot, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as fh:
                slot.reports.append(json.load(fh))
            os.unlink(path)
        except (OSError, ValueError):
            pass  # killed before it could write one

    def on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning("signal received: workers drain their in-flight messages (again to abort)")
            self.stopping.set()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                try:
                    slot.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stopsignals.on_loop(loop, self.on_signal, signal.SIGTERM)  # with those that came while it started
        loop.add_signal_handler(signal.SIGHUP, _no_reload)
        t0 = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as tg:
                for slot in self.slots:
                    tg.create_task(self.watch(slot), name=f"worker:{slot.index}")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            try:
                os.rmdir(self.dir)
            except OSError:
                pass
        return self.summarize(time.perf_counter() - t0)

    def summarize(self, seconds: float) -> int:
        """Print one line per worker and the integrity line summed over all their runs; the exit code."""
        keys = ("entered", "delivered", "filtered", "dead_lettered", "nacked", "in_flight")
        total = dict.fromkeys(keys, 0)
        balanced = True
        for slot in self.slots:
            mine = dict.fromkeys(keys, 0)
            for r in slot.reports:
                for k in keys:
                    mine[k] += int(r["totals"].get(k, 0))
                balanced = balanced and bool(r.get("balanced"))
            for k in keys:
                total[k] += mine[k]
            notes = [f"{slot.runs} run(s)"] + ([f"{slot.killed} killed"] if slot.killed else [])
            notes += ["gave up (crash loop)"] if slot.gave_up else []
            print(f"worker {slot.index}: {mine['entered']} in, {mine['delivered']} delivered, "
                  f"{mine['filtered']} filtered, {mine['dead_lettered']} dead-lettered, exit {slot.last_code}"
                  f" ({', '.join(notes)})", file=self.out)
        killed = sum(s.killed for s in self.slots)
        rate = total["entered"] / seconds if seconds > 0 else 0.0
        verdict = "OK" if balanced else "MISMATCH"
        print(f"integrity {verdict}: {total['entered']} in = {total['delivered']} delivered + {total['filtered']} "
              f"filtered + {total['dead_lettered']} dead-lettered + {total['nacked']} failed (not acknowledged) + "
              f"{total['in_flight']} in flight  [{len(self.slots)} workers"
              + (f", {killed} run(s) killed without a report: their unacknowledged messages are redelivered"
                 if killed else "") + f", {seconds:.2f}s, {rate:,.0f} msg/s]", file=self.out)
        return exit_code(self.slots)


def _no_reload() -> None:
    """SIGHUP reloads a single-process run (engine.reload); a supervisor does not reload its workers."""
    log.warning("SIGHUP ignored: a run with --workers > 1 does not reload; stop it (SIGTERM drains every "
                "worker) and start it with the new graph", extra={"event": "reload_refused"})


def exit_code(slots: list[Slot]) -> int:
    """0 when every worker's last run exited 0; a crash loop or a last run killed is 2; else the worst."""
    codes = []
    for s in slots:
        c = s.last_code if s.last_code is not None else 2
        codes.append(2 if s.gave_up or c < 0 else c)
    if all(c == 0 for c in codes):
        return 0
    return 1 if 1 in codes else max(codes)


def write_report(path: str | None, index: int, report: Any) -> int:
    """A worker's side of the contract: its totals as one JSON object in `path` (written whole, then
    renamed, so the supervisor never reads half of one); returns the worker's exit code."""
    code = 2 if report.error is not None else 0 if report.balanced else 3  # engine.cli: EXIT_RUN_ERROR, EXIT_INTEGRITY
    if path:
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump({"index": index, "totals": report.totals(), "balanced": report.balanced,
                       "seconds": report.seconds, "error": None if report.error is None else str(report.error),
                       "exit": code}, fh)
        os.replace(path + ".tmp", path)
    return code


def supervise(argv: list[str], workers: int, out: IO[str] = sys.stderr) -> int:
    """Run `workers` worker processes of the graph `argv` (the `run` arguments) until they are done."""

    async def main() -> int:
        return await Supervisor(argv, workers, out).run()

    return asyncio.run(main())
