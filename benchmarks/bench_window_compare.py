"""Keyed event-time windows: streamdag's `window`, a plain dict loop and Bytewax 0.21, in one run.

    .venv/bin/pip install bytewax==0.21.1   # optional: the Bytewax rows are skipped without it
    .venv/bin/python benchmarks/bench_window_compare.py [-n 1000000] [--rounds 3] [--only tumbling|session]
        [--bytewax-batches 100,1000,10000] [--no-graph]

One in-memory input, made once: N dicts `{user: u<0..9999>, ts: event seconds, amount: 0..99}`,
10,000 events per second of event time, each `ts` up to 0.5 s behind its place (light disorder).
Per key: count, sum and max of `amount` in 10 s tumbling windows (or sessions with a 3 s gap),
event time, watermark = highest event time - 1 s (`max_out_of_orderness: 1s`, more than the
disorder, so no item is late), no allowed lateness. Contenders, alternating in rounds (round 0
warms up and is not counted; all warm, in this process):

* plain: the loop a competent user writes: aggregate into `dict[(key, window_start)]` (sessions:
  a list per key, merged when an item bridges two; one heap entry per session, moved to its new
  end when popped after the session grew), close windows when the watermark passes their end, emit
  each as a dict.
* streamdag: the `window` operator fed lists of 500 `Msg` as the runtime does (`acks: release`,
  the mode an in-memory source gets); the messages are made before the clock starts.
* streamdag-graph: the whole graph `file_source` (NDJSON) -> `window` -> `file_sink`, run by
  `Runner` in this process (decoding and encoding included; its input file is written once).
* bytewax-<b>: Bytewax 0.21 `fold_window` with `EventClock` (wall clock frozen, so its watermark is
  the same) and `TumblingWindower` / `SessionWindower`, `TestingSource` batch size b.

Every run's result is checked against plain's: number of windows and the sum of their sums (and
of their counts). Printed: per row median and min of wall and CPU time (`time.process_time`),
ratios of medians (streamdag / plain; streamdag's speed as a multiple of the best Bytewax row's),
and `uptime` before and after. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEYS = 10_000
RATE = 10_000  # events per second of event time
DISORDER = 0.5  # seconds an event may come after a later one
OOO = 1  # max_out_of_orderness, seconds
SIZE = 10  # tumbling window, seconds
GAP = 3.0005  # session gap, seconds: off the 1 ms grid of the times, so no two items are exactly
# a gap apart (Bytewax joins those into one session, streamdag and the plain loop do not)
BATCH = 500  # messages per batch fed to the operator
Result = tuple[int, int, int]  # windows, sum of counts, sum of sums


def make_events(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"user": f"u{rng.randrange(KEYS)}", "ts": round(i / RATE + rng.random() * DISORDER, 3),
         "amount": rng.randrange(100)}
        for i in range(n)
    ]


# ----- plain: what a user writes by hand -------------------------------------------------------


def plain_tumbling(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    size, ooo = SIZE * 1_000_000, OOO * 1_000_000
    windows: dict[tuple[str, int], list[int]] = {}
    keys_by_end: dict[int, list[tuple[str, int]]] = {}
    ends: list[int] = []  # heap of ends with open windows
    out: list[dict[str, Any]] = []
    max_t = wm = -(1 << 62)
    late = 0
    for e in events:
        t = round(e["ts"] * 1_000_000)
        start = t - t % size
        if start + size <= wm:
            late += 1
            continue
        k = (e["user"], start)
        amount = e["amount"]
        acc = windows.get(k)
        if acc is None:
            windows[k] = [1, amount, amount]
            end = start + size
            bucket = keys_by_end.get(end)
            if bucket is None:
                keys_by_end[end] = bucket = []
                heapq.heappush(ends, end)
            bucket.append(k)
        else:
            acc[0] += 1
            acc[1] += amount
            if amount > acc[2]:
                acc[2] = amount
        if t > max_t:
            max_t, wm = t, t - ooo
            while ends and ends[0] <= wm:
                _close(heapq.heappop(ends), keys_by_end, windows, out)
    while ends:
        _close(heapq.heappop(ends), keys_by_end, windows, out)
    return out


def _close(end: int, keys_by_end: dict[int, list[Any]], windows: dict[Any, list[int]], out: list[Any]) -> None:
    for k in keys_by_end.pop(end):
        n, total, hi = windows.pop(k)
        out.append({"key": k[0], "start": k[1], "end": end, "count": n, "sum": total, "max": hi})


def plain_session(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gap, ooo = round(GAP * 1_000_000), OOO * 1_000_000
    sessions: dict[str, list[list[Any]]] = {}  # key -> [start, end, count, sum, max, alive]
    heap: list[tuple[int, int, list[Any], str]] = []  # (end, tie, session, key), checked when popped
    out: list[dict[str, Any]] = []
    max_t = wm = -(1 << 62)
    late = tie = 0
    for e in events:
        t = round(e["ts"] * 1_000_000)
        end = t + gap
        if end <= wm:
            late += 1
            continue
        key, amount = e["user"], e["amount"]
        mine = sessions.get(key)
        if mine is None:
            mine = sessions[key] = []
        hits = [s for s in mine if s[0] < end and t < s[1]]
        if not hits:
            s = [t, end, 1, amount, amount, True]
            mine.append(s)
            old_end = 0
        else:
            s = hits[0]
            old_end = s[1]
            for other in hits[1:]:  # the item bridges sessions: merge them
                s[0], s[1] = min(s[0], other[0]), max(s[1], other[1])
                s[2] += other[2]
                s[3] += other[3]
                s[4] = max(s[4], other[4])
                other[5] = False
                mine.remove(other)
            s[0], s[2], s[3] = min(s[0], t), s[2] + 1, s[3] + amount
            if amount > s[4]:
                s[4] = amount
            if end > s[1]:
                s[1] = end
        if not old_end:  # a new session: one heap entry; an extension moves it lazily (when popped)
            tie += 1
            heapq.heappush(heap, (s[1], tie, s, key))
        if t > max_t:
            max_t, wm = t, t - ooo
            while heap and heap[0][0] <= wm:
                entry = heapq.heappop(heap)
                s = entry[2]
                if s[5] and s[1] != entry[0]:  # extended since it was pushed: back at its new end
                    tie += 1
                    heapq.heappush(heap, (s[1], tie, s, entry[3]))
                    continue
                _close_session(entry, sessions, out)
    while heap:
        entry = heapq.heappop(heap)
        s = entry[2]
        if s[5] and s[1] != entry[0]:
            tie += 1
            heapq.heappush(heap, (s[1], tie, s, entry[3]))
            continue
        _close_session(entry, sessions, out)
    return out


def _close_session(entry: tuple[int, int, list[Any], str], sessions: dict[str, list[Any]], out: list[Any]) -> None:
    end, _, s, key = entry
    if not s[5]:  # merged away
        return
    s[5] = False
    mine = sessions[key]
    mine.remove(s)
    if not mine:
        del sessions[key]
    out.append({"key": key, "start": s[0], "end": end, "count": s[2], "sum": s[3], "max": s[4]})


def plain_result(rows: list[dict[str, Any]]) -> Result:
    return len(rows), sum(r["count"] for r in rows), sum(r["sum"] for r in rows)


# ----- streamdag ------------------------------------------------------------------------------


def window_config(kind: str) -> dict[str, Any]:
    shape: dict[str, Any] = {"kind": "tumbling", "size": SIZE} if kind == "tumbling" else {"kind": "session", "gap": GAP}
    return {
        **shape,
        "key": "msg.user",
        "time": "event",
        "timestamp": "msg.ts",
        "max_out_of_orderness": OOO,
        "acks": "release",
        "aggregates": {
            "n": {"op": "count"},
            "total": {"op": "sum", "expr": "msg.amount"},
            "hi": {"op": "max", "expr": "msg.amount"},
        },
    }


def operator_run(kind: str) -> tuple[Callable[[list[list[Any]]], Result], Callable[[list[dict[str, Any]]], Any]]:
    """(run, prepare): prepare makes the message batches (untimed), run feeds them and flushes."""
    from engine.message import AckTracker, Msg
    from engine.runtime.context import NodeContext, Resources
    from engine.runtime.outputs import Outputs
    from engine.runtime.stats import NodeStats
    from operators.window import Window, WindowConfig

    config = WindowConfig(**window_config(kind))

    def prepare(events: list[dict[str, Any]]) -> list[list[Any]]:
        tracker = AckTracker()  # as a source does: one `BatchAck` per batch
        return [Msg.many(events[i : i + BATCH], {}, tracker.new_batch(min(BATCH, len(events) - i)))
                for i in range(0, len(events), BATCH)]

    def run(batches: list[list[Any]]) -> Result:
        ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 0.0)
        op = Window("win", config, ctx)
        out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
        windows = counts = sums = 0
        for batch in [*batches, None]:
            if batch is None:
                op.flush(out)
            else:
                op.process(batch, out)
            ports = out.take()
            assert not ports["late"] and not ports.get("errors")
            for m in ports["out"]:
                windows += 1
                counts += m.body["count"]
                sums += m.body["aggregates"]["total"]
        return windows, counts, sums

    return run, prepare


GRAPH = """
version: 1
name: window_compare
defaults: {dead_letter: dead}
nodes:
  events: {type: file_source, config: {path: in.ndjson}}
  per_user: {type: window, inputs: [events], config: CONFIG}
  out: {type: file_sink, inputs: [per_user], config: {path: windows.ndjson}}
  dead: {type: file_sink, inputs: [events.errors, per_user.errors, per_user.late], config: {path: dead.ndjson}}
"""


def graph_run(kind: str, d: Path) -> Callable[[], Result]:
    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    config = window_config(kind)
    del config["acks"]  # the default for a file_source: release
    (d / f"{kind}.yaml").write_text(GRAPH.replace("CONFIG", json.dumps(config)))

    def run() -> Result:
        cwd = os.getcwd()
        os.chdir(d)
        try:
            report = asyncio.run(Runner(load_graph(f"{kind}.yaml")).run())
            assert report.balanced and report.error is None
            assert (d / "dead.ndjson").read_text() == ""
            rows = [json.loads(line) for line in (d / "windows.ndjson").read_text().splitlines()]
        finally:
            os.chdir(cwd)
        return len(rows), sum(r["count"] for r in rows), sum(r["aggregates"]["total"] for r in rows)

    return run


# ----- Bytewax 0.21 -----------------------------------------------------------------------------


def bytewax_run(kind: str, batch_size: int) -> Callable[[list[dict[str, Any]]], Result]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, SessionWindower, TumblingWindower, fold_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    frozen = datetime(2000, 1, 1, tzinfo=UTC)  # the wall clock, frozen: the watermark follows events only

    def ts(e: dict[str, Any]) -> datetime:
        return epoch + timedelta(seconds=e["ts"])

    def folder(acc: list[int], e: dict[str, Any]) -> list[int]:
        amount = e["amount"]
        acc[0] += 1
        acc[1] += amount
        if amount > acc[2]:
            acc[2] = amount
        return acc

    def merger(a: list[int], b: list[int]) -> list[int]:
        return [a[0] + b[0], a[1] + b[1], max(a[2], b[2])]

    def run(events: list[dict[str, Any]]) -> Result:
        rows: list[Any] = []
        late: list[Any] = []
        flow = Dataflow("window_compare")
        stream = op.input("in", flow, TestingSource(events, batch_size))
        keyed = op.key_on("key", stream, lambda e: e["user"])
        clock = EventClock(ts, wait_for_system_duration=timedelta(seconds=OOO), now_getter=lambda: frozen)
        windower: Any = (
            TumblingWindower(length=timedelta(seconds=SIZE), align_to=epoch)
            if kind == "tumbling"
            else SessionWindower(gap=timedelta(seconds=GAP))
        )
        w = fold_window("fold", keyed, clock, windower, lambda: [0, 0, -1], folder, merger, ordered=False)
        op.output("out", w.down, TestingSink(rows))
        op.output("late", w.late, TestingSink(late))
        run_main(flow)
        assert not late
        return len(rows), sum(r[1][1][0] for r in rows), sum(r[1][1][1] for r in rows)

    return run


# ----- the run ----------------------------------------------------------------------------------


def contenders(kind: str, events: list[dict[str, Any]], tmp: Path, bytewax_batches: list[int],
               graph: bool) -> tuple[dict[str, Callable[[], Result]], Callable[[], None]]:
    """The rows of one kind, and what to call (untimed) before each `streamdag` row."""
    plain = plain_tumbling if kind == "tumbling" else plain_session
    op_run, make_batches = operator_run(kind)
    prepared: list[Any] = []
    rows: dict[str, Callable[[], Result]] = {
        "plain": lambda: plain_result(plain(events)),
        "streamdag": lambda: op_run(prepared.pop()),
    }
    if graph:
        rows["streamdag-graph"] = graph_run(kind, tmp)
    for b in bytewax_batches:
        bytewax = bytewax_run(kind, b)
        rows[f"bytewax-{b}"] = lambda run=bytewax: run(events)  # type: ignore[misc]
    return rows, lambda: prepared.append(make_batches(events))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(fn: Callable[[], Result]) -> tuple[Result, float, float]:
    gc.collect()
    gc.freeze()  # the input (and the prepared messages) live throughout: no collection walks them
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        return result, time.perf_counter() - t0, time.process_time() - c0
    finally:
        gc.unfreeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["tumbling", "session"])
    parser.add_argument("--bytewax-batches", default="100,1000,10000")
    parser.add_argument("--no-graph", action="store_true", help="skip the whole-graph row")
    args = parser.parse_args()
    try:
        import bytewax.operators  # noqa: F401
        bytewax_batches = [int(b) for b in args.bytewax_batches.split(",") if b]
    except ImportError:
        print("bytewax not installed: its rows are skipped")
        bytewax_batches = []

    print(f"before: {uptime()}")
    print(f"python {sys.version.split()[0]}, {args.n:,} events, {KEYS:,} keys, {RATE:,}/s of event time, "
          f"rounds {args.rounds} (+1 warm-up), warm in-process")
    events = make_events(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="bench_window_"))
    if not args.no_graph:
        with (tmp / "in.ndjson").open("w") as f:
            for e in events:
                f.write(json.dumps(e) + "\n")
    for kind in ["tumbling", "session"] if args.only is None else [args.only]:
        rows, prepare = contenders(kind, events, tmp, bytewax_batches, graph=not args.no_graph)
        got: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
        expected: Result | None = None
        for r in range(args.rounds + 1):
            for name, fn in rows.items():
                if name == "streamdag":
                    prepare()  # untimed: the runtime makes the messages upstream
                result, wall, cpu = timed(fn)
                if expected is None:
                    expected = result
                assert result == expected, f"{kind} {name}: {result} != {expected} (windows, counts, sums)"
                if r:
                    got[name].append((wall, cpu))
        print(f"\n{kind}: {expected[0]:,} windows, {expected[1]:,} items, sum {expected[2]:,} (all rows agree)")
        print(f"  {'row':<16} {'wall med':>9} {'wall min':>9} {'cpu med':>9} {'cpu min':>9} {'us/event (cpu med)':>19}")
        med: dict[str, tuple[float, float]] = {}
        for name, runs in got.items():
            walls, cpus = [w for w, _ in runs], [c for _, c in runs]
            med[name] = (statistics.median(walls), statistics.median(cpus))
            print(f"  {name:<16} {med[name][0]:9.3f} {min(walls):9.3f} {med[name][1]:9.3f} {min(cpus):9.3f} "
                  f"{med[name][1] / args.n * 1e6:19.2f}")
        for label, i in (("wall", 0), ("cpu", 1)):
            line = f"  {label}: streamdag / plain = {med['streamdag'][i] / med['plain'][i]:.2f}x"
            if "streamdag-graph" in med:
                line += f", streamdag-graph / plain = {med['streamdag-graph'][i] / med['plain'][i]:.2f}x"
            bw = [n for n in med if n.startswith("bytewax")]
            if bw:
                best = min(bw, key=lambda n: med[n][i])
                line += f", streamdag speed / {best} = {med[best][i] / med['streamdag'][i]:.2f}x"
            print(line)
    print(f"\nafter: {uptime()}")


if __name__ == "__main__":
    main()
