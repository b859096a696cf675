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
    code = subprocess.call([sys.executable, "-m", "pytest", str(HERE / "bench_suite.py"), "-p", "no:randomly",
                            "-q", "-s", f"--benchmark-json={raw}", *extra], cwd=HERE.parent)
    if code != 0:
        print("benchmark run failed; no tables written", file=sys.stderr)
        return code
    from benchmarks.report import main as report

    report([str(raw)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
