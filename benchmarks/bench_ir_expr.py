"""Instructions (valgrind callgrind `Ir`) of one CEL expression's batch path, per message, for one or more trees.

    python benchmarks/bench_ir_expr.py [--boolean] EXPR TREE [TREE...]
    e.g. python benchmarks/bench_ir_expr.py '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}' /tmp/before .

`Expr.many` over a batch of 600 of benchmarks/bench_whole.py's orders, 20 times, less one time (the
imports, the compilation and the data): the cost of the generated code alone, exactly (docs/perf.md).
Run from outside the trees (the child puts TREE first on sys.path). Needs valgrind. Not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
import orjson
from engine.expr import compile_expr
from engine.message import Msg
assert compile_expr.__code__.co_filename.startswith(sys.argv[1])
expr = compile_expr(sys.argv[3], boolean=sys.argv[4] == "1")
rows = [orjson.loads(orjson.dumps({"id": i, "user": f"u{i % 7}", "amount": float(i % 250),
                                   "tags": ["a", "b"] if i % 3 else ["c"]})) for i in range(600)]
msgs = [Msg(r) for r in rows]
for _ in range(int(sys.argv[2])):
    assert expr.many(msgs) is not None
"""


def instructions(tree: str, times: int, expr: str, boolean: bool) -> int:
    env = os.environ | {"PYTHONHASHSEED": "0"}
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                          CHILD, os.path.abspath(tree), str(times), expr, "1" if boolean else "0"],
                         capture_output=True, text=True, env=env, cwd="/")
    found = re.search(r"Collected : (\d+)", out.stderr)
    assert out.returncode == 0 and found, out.stderr[-2000:]
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("expr")
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--boolean", action="store_true", help="compile as a filter's expression")
    args = ap.parse_args()
    for tree in args.trees:
        per = (instructions(tree, 21, args.expr, args.boolean) - instructions(tree, 1, args.expr, args.boolean)) / 20
        print(f"{tree}: {per / 600:,.0f} instructions a message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
