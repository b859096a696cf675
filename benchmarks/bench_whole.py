"""file -> parse -> filter -> map -> file: streamdag, Bytewax 0.21 and a plain loop, alternating in one run.

    .venv/bin/pip install bytewax==0.21.1   # optional: the Bytewax rows are skipped without it
    .venv/bin/python benchmarks/bench_whole.py [-n 1000000] [--rounds 5] [--warm-rounds 5] [--only whole|warm]

Two measures (issue 24), each a round-robin over the three so a burst of load hits all alike:

* **whole process** (start-up included, as a user runs it): `streamdag run graph.yaml`, `python
  bytewax_flow.py`, `python plain.py`, each a fresh process; wall time and the child's CPU time
  (user + sys, from `wait4`).
* **warm, in-process**: the same three in this process after one warm-up run each: the engine via
  `Runner(load_graph(...)).run()`, Bytewax via `run_main`, the loop as a function; wall time and
  this process's CPU time (`time.process_time`).

The input is N NDJSON orders (the issue-10 data of benchmarks/bench_pipeline.py); the filter keeps
`amount > 10 && "a" in tags`, the map writes `{id, user, total}`. Every run's output is checked
(line count and first line). Printed: per row the median and min of each measure, then the ratios
of medians (streamdag / plain loop time; streamdag's speed as a multiple of Bytewax's), and the
load average (`uptime`) before and after. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
PY = sys.executable
_SCRIPT = Path(PY).parent / "streamdag"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "engine.cli"]

FILTER = 'msg.amount > 10.0 && "a" in msg.tags'
MAP = '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}'

GRAPH = f"""
version: 1
name: bench
defaults: {{dead_letter: dead}}
nodes:
  read: {{type: file_source, config: {{path: in.ndjson}}}}
  big: {{type: filter, inputs: [read], config: {{expr: {json.dumps(FILTER)}}}}}
  price: {{type: map, inputs: [big], config: {{expr: {json.dumps(MAP)}}}}}
  out: {{type: file_sink, inputs: [price], config: {{path: out.ndjson}}}}
  dead: {{type: drop, inputs: [read.errors, big.errors, price.errors, out.errors]}}
"""

# the loop a user would write by hand (the script run as a whole process, and the warm function)
PLAIN = """
import sys
from orjson import loads, dumps

def run(src_path, dst_path):
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        out = []
        for line in src:
            m = loads(line)
            if m["amount"] > 10.0 and "a" in m["tags"]:
                out.append(dumps({"id": m["id"], "user": m["user"], "total": m["amount"] * 1.2}) + b"\\n")
                if len(out) >= 1000:
                    dst.write(b"".join(out))
                    out.clear()
        dst.write(b"".join(out))

if __name__ == "__main__":
    run("in.ndjson", "plain.ndjson")
"""

# the same dataflow in Bytewax (one worker, run_main)
BYTEWAX = """
import orjson
import bytewax.operators as op
from bytewax.connectors.files import FileSink, FileSource
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

def run(src_path, dst_path):
    flow = Dataflow("bench")
    lines = op.input("in", flow, FileSource(src_path, batch_size=1000))
    parsed = op.map("parse", lines, orjson.loads)
    kept = op.filter("filter", parsed, lambda m: m["amount"] > 10.0 and "a" in m["tags"])
    out = op.map("map", kept, lambda m: (
        "all", orjson.dumps({"id": m["id"], "user": m["user"], "total": m["amount"] * 1.2}).decode()))
    op.output("out", out, FileSink(dst_path))  # a keyed sink: one key, one file
    run_main(flow)

if __name__ == "__main__":
    run("in.ndjson", "bytewax.ndjson")
"""

OUTPUTS = {"streamdag": "out.ndjson", "plain-loop": "plain.ndjson", "bytewax-0.21": "bytewax.ndjson"}


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def prepare(d: Path, n: int) -> int:
    """Write the input, the graph and the two scripts; the number of lines the filter keeps."""
    with open(d / "in.ndjson", "wb") as fh:
        for i in range(n):
            tags = ["a", "b"] if i % 3 else ["c"]
            fh.write(
                orjson.dumps({"id": i, "user": f"u{i % 7}", "amount": float(i % 250), "tags": tags}) + b"\n"
            )
    (d / "graph.yaml").write_text(GRAPH)
    (d / "plain.py").write_text(PLAIN)
    (d / "bytewax_flow.py").write_text(BYTEWAX)
    return sum(1 for i in range(n) if i % 250 > 10 and i % 3)


def check(d: Path, name: str, expected: int) -> None:
    path = d / OUTPUTS[name]
    with open(path, "rb") as fh:
        first = orjson.loads(fh.readline())
        count = 1 + sum(1 for _ in fh)
    assert count == expected, f"{name}: {count} lines, expected {expected}"
    assert first["id"] == 11 and abs(first["total"] - 13.2) < 1e-9, f"{name}: first line {first}"
    path.unlink()


def have_bytewax() -> bool:
    try:
        import bytewax  # noqa: F401
    except ImportError:
        return False
    return True


def whole(d: Path, names: list[str], rounds: int, expected: int) -> dict[str, list[tuple[float, float]]]:
    commands = {
        "streamdag": [*CLI, "run", "graph.yaml"],
        "plain-loop": [PY, "plain.py"],
        "bytewax-0.21": [PY, "bytewax_flow.py"],
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    got: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms the page cache and the .pyc files: not counted
        for name in names:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                commands[name], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            err = proc.stderr.read().decode() if proc.stderr else ""
            proc.stderr.close() if proc.stderr else None
            assert os.waitstatus_to_exitcode(status) == 0, f"{name} failed: {err[-2000:]}"
            check(d, name, expected)
            if r:
                got[name].append((wall, usage.ru_utime + usage.ru_stime))
    return got


def warm(d: Path, names: list[str], rounds: int, expected: int) -> dict[str, list[tuple[float, float]]]:
    from engine.compile.validate import load_graph
    from engine.runtime.scheduler import Runner

    ns: dict[str, Any] = {}
    exec(compile(PLAIN, "plain.py", "exec"), ns)
    bw: dict[str, Any] = {}
    if "bytewax-0.21" in names:
        exec(compile(BYTEWAX, "bytewax_flow.py", "exec"), bw)
    cwd = os.getcwd()

    def engine() -> None:
        report = asyncio.run(Runner(load_graph(str(d / "graph.yaml"))).run())
        assert report.balanced and report.error is None

    fns: dict[str, Callable[[], None]] = {
        "streamdag": engine,
        "plain-loop": lambda: ns["run"](str(d / "in.ndjson"), str(d / "plain.ndjson")),
        "bytewax-0.21": lambda: bw["run"](d / "in.ndjson", d / "bytewax.ndjson"),
    }
    got: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    os.chdir(d)
    try:
        for r in range(rounds + 1):  # round 0: warm-up
            for name in names:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[name]()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                check(d, name, expected)
                if r:
                    got[name].append((wall, cpu))
    finally:
        os.chdir(cwd)
    return got


def report(title: str, got: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    med = {
        n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for n, v in got.items()
    }
    print(f"\n{title}: median (min) over {len(next(iter(got.values())))} rounds")
    print(f"  {'':14} {'wall s':>16} {'cpu s':>16}")
    for n, v in got.items():
        print(
            f"  {n:14} {med[n][0]:7.3f} ({min(w for w, _ in v):6.3f}) {med[n][1]:7.3f} ({min(c for _, c in v):6.3f})"
        )
    ratios: dict[str, float] = {}
    s = med["streamdag"]
    ratios["streamdag/plain wall"] = s[0] / med["plain-loop"][0]
    ratios["streamdag/plain cpu"] = s[1] / med["plain-loop"][1]
    if "bytewax-0.21" in med:
        ratios["speed vs bytewax (wall)"] = med["bytewax-0.21"][0] / s[0]
        ratios["speed vs bytewax (cpu)"] = med["bytewax-0.21"][1] / s[1]
    for k, v in ratios.items():
        print(f"  {k:26} {v:5.2f}x")
    return {"median": med, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages (default 1,000,000)")
    ap.add_argument("--rounds", type=int, default=5, help="whole-process rounds (after one warm-up round)")
    ap.add_argument("--warm-rounds", type=int, default=5, help="in-process rounds (after one warm-up round)")
    ap.add_argument("--only", choices=["whole", "warm"], help="one of the two measures")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    names = ["streamdag", "plain-loop"] + (["bytewax-0.21"] if have_bytewax() else [])
    if len(names) == 2:
        print("bytewax not installed: its rows are skipped (pip install bytewax==0.21.1)")
    out: dict[str, Any] = {"n": args.n, "load_before": load()}
    print(f"N = {args.n:,}; {out['load_before']}")
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp:
        d = Path(tmp)
        expected = prepare(d, args.n)
        if args.only != "warm":
            out["whole"] = report("whole process (start-up included)", whole(d, names, args.rounds, expected))
        if args.only != "whole":
            out["warm"] = report("warm, in-process", warm(d, names, args.warm_rounds, expected))
    out["load_after"] = load()
    print(f"\n{out['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
