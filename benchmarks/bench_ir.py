"""Instructions (valgrind callgrind `Ir`) of the in-memory pipeline, for one or more source trees.

    python benchmarks/bench_ir.py [-n 100000] [--runs 1] [--plain] TREE [TREE...]
    e.g. git archive <commit> | tar -x -C /tmp/before && python benchmarks/bench_ir.py /tmp/before .

Each tree is put first on PYTHONPATH; one process imports the engine and runs file -> parse ->
filter -> map -> file (benchmarks/bench_whole.py's graph and data) `--runs` times, and once with 0
runs for the start-up alone (imports, graph check, nodes built: the graph is loaded in both).
`--plain` also counts bench_whole.py's hand-written loop the same way (`runs` calls of its `run`
after importing it, less a process that only imports it). Instruction counts are exact where time on a shared machine is not,
so they show a change's effect on the work done; they do not see cache misses (docs/perf.md, issue
24). Needs valgrind; about a minute per count. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_whole import prepare

CHILD = """
import asyncio, sys
from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
import operators.connectors.file as f
assert f.__file__.startswith(sys.argv[1]), f.__file__
runner = Runner(load_graph("graph.yaml"))  # start-up: imports, checks, node types, CEL compiled
for i in range(int(sys.argv[2])):
    if i:
        runner = Runner(load_graph("graph.yaml"))
    assert asyncio.run(runner.run()).balanced
"""


def instructions(tree: str, runs: int, cwd: Path) -> int:
    tree = os.path.abspath(tree)
    # modules run from .pyc files, as installed: a tree without them would count their compilation
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": tree}
    subprocess.run([sys.executable, "-c", CHILD, tree, "0"], cwd=cwd, env=env, check=True)
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          "-c", CHILD, tree, str(runs)], cwd=cwd, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", out.stderr)
    assert out.returncode == 0 and found, out.stderr[-2000:]
    return int(found.group(1))


PLAIN_CHILD = """
import sys
ns = {}
exec(compile(open("plain.py").read(), "plain.py", "exec"), ns)
for _ in range(int(sys.argv[1])):
    ns["run"]("in.ndjson", "plain.ndjson")
"""


def plain_instructions(runs: int, cwd: Path) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          "-c", PLAIN_CHILD, str(runs)], cwd=cwd, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    assert out.returncode == 0 and found, out.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--plain", action="store_true", help="also count the plain loop")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ir-") as tmp:
        d = Path(tmp)
        prepare(d, args.n)
        for tree in args.trees:
            start = instructions(tree, 0, d)
            total = instructions(tree, args.runs, d)
            per = (total - start) / args.runs
            print(f"{tree}: {total / 1e9:.3f} G in all, start-up {start / 1e9:.3f} G, "
                  f"one run {per / 1e9:.3f} G ({per / args.n:,.0f} a message)")
        if args.plain:
            start, total = plain_instructions(0, d), plain_instructions(args.runs, d)
            per = (total - start) / args.runs
            print(f"plain loop: {total / 1e9:.3f} G in all, start-up {start / 1e9:.3f} G, "
                  f"one run {per / 1e9:.3f} G ({per / args.n:,.0f} a message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
