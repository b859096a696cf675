"""One command for the whole suite: `python -m benchmarks.run [pytest args...]`.

Runs `benchmarks/bench_suite.py` under pytest-benchmark, then writes `benchmarks/results/results.json`
and `results.md` (see `benchmarks.report`). Smaller runs: BENCH_MEMORY_N, BENCH_JS_N,
BENCH_LATENCY_SECONDS, BENCH_REDIS_N, BENCH_HTTP_SECONDS; one scenario: `-k 1a`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(extra: list[str]) -> int:
    raw = HERE / "results" / "raw-pytest-benchmark.json"
    raw.parent.mkdir(exist_ok=True)
    raw.unlink(missing_ok=True)
    code = subprocess.call([sys.executable, "-m", "pytest", str(HERE / "bench_suite.py"), "-p", "no:randomly",
                            "-q", "-s", f"--benchmark-json={raw}", *extra], cwd=HERE.parent)
    if not raw.exists():
        print("benchmark run failed before any figure; no tables written", file=sys.stderr)
        return code or 1
    if code != 0:  # the scenarios that passed are still reported; the exit code says some failed
        print("some scenarios failed (see above); the tables hold the others", file=sys.stderr)
    from benchmarks.report import main as report

    report([str(raw)])
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
