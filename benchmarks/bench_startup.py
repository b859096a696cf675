"""Start-up time of the CLI, as a whole process, against `python -c pass` (issue 20).

    python benchmarks/bench_startup.py [-n ROUNDS]

Each round runs every command once, in turn (so a burst of load on the shared machine hits all of
them alike); a command's figure is its best (minimum) wall time over the rounds, the usual way to
read a noisy machine: the minimum is the run that waited least for the CPU. The extra column is
that best minus the best of `python -c pass` (the interpreter's own start, which no change of ours
can remove). Not part of the default test run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["COMMANDS", "main", "measure"]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "engine.cli"] if not (Path(PY).parent / "streamdag").exists() else [str(Path(PY).parent / "streamdag")]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    "import engine.compile.validate": [PY, "-c", "import engine.compile.validate"],
    "streamdag validate graphs/demo.yaml": [*CLI, "validate", "graphs/demo.yaml"],
    "streamdag run benchmarks/startup.yaml": [*CLI, "run", "-q", "benchmarks/startup.yaml"],
}


def _once(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def measure(rounds: int) -> dict[str, float]:
    """Best wall time in seconds of each command over `rounds` interleaved rounds."""
    best = {name: float("inf") for name in COMMANDS}
    for name, argv in COMMANDS.items():  # warm the file cache and .pyc files first
        _once(argv)
    for _ in range(rounds):
        for name, argv in COMMANDS.items():
            best[name] = min(best[name], _once(argv))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--rounds", type=int, default=20, help="rounds (default 20); the best of them counts")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    best = measure(args.rounds)
    base = best["python -c pass"]
    print(f"best of {args.rounds} rounds; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs; {sys.version.split()[0]}")
    width = max(map(len, best))
    for name, seconds in best.items():
        extra = "" if name == "python -c pass" else f"   +{(seconds - base) * 1000:6.1f} ms over python -c pass"
        print(f"{name.ljust(width)}  {seconds * 1000:7.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
