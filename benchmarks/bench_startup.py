"""Start-up time of the CLI, as a whole process, against `python -c pass` (issue 20).

    python benchmarks/bench_startup.py [-n ROUNDS] [--compare GIT_REF]

Each round runs every command once, in turn (so a burst of load on the shared machine hits all of
them alike); a command's figure is its best (minimum) wall time over the rounds, the usual way to
read a noisy machine: the minimum is the run that waited least for the CPU. CPU time (user + sys of
the child) is shown beside it: it moves less with the load. The `+` column is the best minus the
best of `python -c pass` (the interpreter's own start, which no change of ours can remove).

`--compare REF` also measures the tree of a git commit (extracted to a temporary directory and put
first on PYTHONPATH, with the same interpreter and packages), interleaved with the working tree,
so a before/after pair sees the same load. Modules run from .pyc files, as an installed package
does (PYTHONDONTWRITEBYTECODE is dropped for the children). Not part of the default test run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["COMMANDS", "main", "measure"]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
_SCRIPT = Path(PY).parent / "streamdag"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "engine.cli"]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    # the floor of any validate built on YAML and pydantic models: import both, build one model
    "import yaml, pydantic (+1 model)": [PY, "-c", "import yaml, pydantic\nclass M(pydantic.BaseModel): x: int = 0"],
    "import engine.compile.validate": [PY, "-c", "import engine.compile.validate"],
    "streamdag validate graphs/demo.yaml": [*CLI, "validate", "graphs/demo.yaml"],
    "streamdag run (generate 1 -> drop)": [*CLI, "run", "-q", "benchmarks/startup.yaml"],
}
_GRAPH = (ROOT / "benchmarks" / "startup.yaml").read_text()


def _once(argv: list[str], root: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `argv` with the code of `root`."""
    # as installed code runs: from .pyc files (the warm-up run writes them; this machine's shell
    # sets PYTHONDONTWRITEBYTECODE, which would make every run compile the package from source)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(rounds: int, roots: dict[str, Path]) -> dict[tuple[str, str], tuple[float, float]]:
    """Best wall and best CPU seconds per (tree, command) over `rounds` interleaved rounds."""
    best = {(tree, name): (float("inf"), float("inf")) for tree in roots for name in COMMANDS}
    for root in roots.values():  # warm the file cache, .pyc files and the entry-point cache
        for argv in COMMANDS.values():
            _once(argv, root)
    for _ in range(rounds):
        for tree, root in roots.items():
            for name, argv in COMMANDS.items():
                wall, cpu = _once(argv, root)
                w, c = best[(tree, name)]
                best[(tree, name)] = (min(w, wall), min(c, cpu))
    return best


def _extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    graph = into / "benchmarks" / "startup.yaml"
    if not graph.exists():  # a commit from before this benchmark
        graph.parent.mkdir(parents=True, exist_ok=True)
        graph.write_text(_GRAPH)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("-n", "--rounds", type=int, default=20, help="rounds (default 20); the best of them counts")
    p.add_argument("--compare", metavar="GIT_REF", help="also measure this commit, interleaved")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="streamdag-startup-") as tmp:
        roots = {"working tree": ROOT}
        if args.compare:
            roots = {args.compare: _extract(args.compare, Path(tmp)), **roots}
        load_before = os.getloadavg()
        best = measure(args.rounds, roots)
    print(f"best of {args.rounds} rounds; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    width = max(map(len, COMMANDS))
    for tree in roots:
        base_wall, base_cpu = best[(tree, "python -c pass")]
        print(f"\n{tree}:{'':{width - len(tree) - 1}}    wall (best)      +pass    cpu (best)     +pass")
        for name in COMMANDS:
            wall, cpu = best[(tree, name)]
            extra = "" if name == "python -c pass" else (
                f"  {(wall - base_wall) * 1000:+7.1f} ms    {cpu * 1000:6.1f} ms  {(cpu - base_cpu) * 1000:+7.1f} ms")
            if not extra:
                extra = f"               {cpu * 1000:6.1f} ms"
            print(f"  {name.ljust(width)}  {wall * 1000:7.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
