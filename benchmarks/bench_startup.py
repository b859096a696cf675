"""Start-up time of the CLI, as a whole process, against `python -c pass` (issue 20).

    python benchmarks/bench_startup.py [-n ROUNDS] [--compare GIT_REF]

Each round runs every command once, in turn (so a burst of load on the shared machine hits all of
them alike); a command's figures are its best (minimum) and median wall time over the rounds (the
minimum is the run that waited least for the CPU, the usual way to read a noisy machine), and the
same two of its CPU time (user + sys of the child), which moves less with the load. The `+` columns
are the best minus the best of `python -c pass` (the interpreter's own start, which no change of
ours can remove).

The floors: `import yaml, pydantic` and the same building one model (pydantic's first model loads
its plugin machinery, `importlib.metadata` included), then "deps of validate" / "deps of run", an
empty program that imports only what those commands cannot do without (yaml, pydantic and one
model, argparse, logging and json for the CLI; the CEL runtime for CEL that `validate` cannot type
itself, which the demo graph no longer needs; asyncio with uvloop and orjson for the run's logs),
and "pydantic as used": the same with three small models that use the pydantic features ours do.
What a command costs above its floor is ours to cut.

`--compare REF` also measures the tree of a git commit (extracted to a temporary directory and put
first on PYTHONPATH, with the same interpreter and packages), interleaved with the working tree,
so a before/after pair sees the same load. Modules run from .pyc files, as an installed package
does (PYTHONDONTWRITEBYTECODE is dropped for the children). Not part of the default test run.

`--ir` counts instructions instead (valgrind callgrind `Ir`, one run of each command after a
warm-up run; `--only WORD[,WORD...]` keeps the commands whose name contains one of the words):
exact and the same under any load, where a time on the shared machine is not; blind to cache
misses, which are much of a start's time (`python -c pass` runs ~90 M instructions in ~20 ms, a
start of ours ~5-6 M per ms). About 10 s of CPU per count.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
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

_MODEL = "class M(pydantic.BaseModel): x: int = 0"
_CLI_DEPS = "import argparse, json, logging"
# the pydantic features our models use (constraints, patterns, Literal, an after-validator, a
# discriminated union in a dict), in three small models, validated once: a first use of each loads
# more of pydantic (annotated_types, pydantic.types, functional_validators...) than a bare model does
_PYDANTIC_AS_USED = """
from typing import Annotated, Any, Literal
from pydantic import BaseModel, ConfigDict, Field, model_validator
class A(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["a"]
    n: int = Field(1, ge=1, description="n")
    @model_validator(mode="after")
    def _c(self) -> "A":
        return self
class B(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["b"]
    s: str | None = Field(None, pattern=r"^x$", description="s")
class G(BaseModel):
    model_config = ConfigDict(extra="forbid")
    c: dict[str, Annotated[A | B, Field(discriminator="type")]] = Field(default_factory=dict)
    d: dict[str, Any] = Field(default_factory=dict)
G.model_validate({"c": {"x": {"type": "a"}}})
"""
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [PY, "-c", "pass"],
    "import yaml, pydantic": [PY, "-c", "import yaml, pydantic"],
    # the floor of any validate built on YAML and pydantic models: import both, build one model
    "import yaml, pydantic (+1 model)": [PY, "-c", f"import yaml, pydantic\n{_MODEL}"],
    "deps of validate (no CEL)": [PY, "-c", f"import yaml, pydantic, {_CLI_DEPS[7:]}\n{_MODEL}"],
    "deps of validate (CEL)": [PY, "-c", f"import yaml, pydantic, {_CLI_DEPS[7:]}\n{_MODEL}\n"
                               "from cel_expr_python import cel\ncel.NewEnv(variables={'msg': cel.Type.DYN})"],
    "deps of validate, pydantic as used": [PY, "-c", f"import yaml, pydantic, {_CLI_DEPS[7:]}\n{_PYDANTIC_AS_USED}"],
    "deps of run (no CEL)": [PY, "-c", f"import yaml, pydantic, {_CLI_DEPS[7:]}, orjson, uvloop, asyncio\n{_MODEL}\n"
                             "async def f(): pass\nuvloop.run(f())"],
    "import engine.compile.validate": [PY, "-c", "import engine.compile.validate"],
    "streamdag validate benchmarks/startup.yaml": [*CLI, "validate", "benchmarks/startup.yaml"],
    "streamdag validate graphs/demo.yaml": [*CLI, "validate", "graphs/demo.yaml"],
    "streamdag run (generate 1 -> drop)": [*CLI, "run", "-q", "benchmarks/startup.yaml"],
    "streamdag run, CEL (generate 1 -> map -> filter -> drop)": [*CLI, "run", "-q", "benchmarks/startup_cel.yaml"],
}
_GRAPHS = {name: (ROOT / "benchmarks" / name).read_text() for name in ("startup.yaml", "startup_cel.yaml")}


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


Samples = dict[tuple[str, str], list[tuple[float, float]]]


def measure(rounds: int, roots: dict[str, Path]) -> Samples:
    """Wall and CPU seconds of every run per (tree, command), over `rounds` interleaved rounds."""
    samples: Samples = {(tree, name): [] for tree in roots for name in COMMANDS}
    for root in roots.values():  # warm the file cache and the .pyc files
        for argv in COMMANDS.values():
            _once(argv, root)
    for _ in range(rounds):
        for tree, root in roots.items():
            for name, argv in COMMANDS.items():
                samples[(tree, name)].append(_once(argv, root))
    return samples


def instructions(argv: list[str], root: Path) -> int:
    """Instructions (callgrind `Ir`) of one run of `argv` with the code of `root` (after a warm-up run)."""
    _once(argv, root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv], cwd=root,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return int(re.findall(r"Collected : (\d+)", done.stderr)[-1])


def _stats(runs: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Best and median wall, best and median CPU, in ms."""
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return (min(walls) * 1e3, statistics.median(walls) * 1e3, min(cpus) * 1e3, statistics.median(cpus) * 1e3)


def _extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name, text in _GRAPHS.items():
        graph = into / "benchmarks" / name
        if not graph.exists():  # a commit from before this benchmark
            graph.parent.mkdir(parents=True, exist_ok=True)
            graph.write_text(text)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("-n", "--rounds", type=int, default=20, help="rounds (default 20); the best of them counts")
    p.add_argument("--compare", metavar="GIT_REF", help="also measure this commit, interleaved")
    p.add_argument("--ir", action="store_true", help="count instructions (valgrind) instead of timing")
    p.add_argument("--only", metavar="WORD", default="", help="with --ir: the commands whose name contains one of these comma-separated words")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="streamdag-startup-") as tmp:
        roots = {"working tree": ROOT}
        if args.compare:
            roots = {args.compare: _extract(args.compare, Path(tmp)), **roots}
        if args.ir:
            return _print_instructions(roots, args.only)
        uptime_before = _uptime()
        samples = measure(args.rounds, roots)
    print(f"{args.rounds} rounds; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; whole process, "
          f"from .pyc\nuptime before: {uptime_before}\nuptime after:  {_uptime()}")
    width = max(map(len, COMMANDS))
    for tree in roots:
        base_wall, _, base_cpu, _ = _stats(samples[(tree, "python -c pass")])
        print(f"\n{tree}:{'':{width - len(tree) - 1}}   wall best  median     +pass    cpu best  median     +pass")
        for name in COMMANDS:
            wall, wall_med, cpu, cpu_med = _stats(samples[(tree, name)])
            print(f"  {name.ljust(width)}  {wall:7.1f} {wall_med:7.1f} {wall - base_wall:+9.1f}    "
                  f"{cpu:7.1f} {cpu_med:7.1f} {cpu - base_cpu:+9.1f}  ms")
    return 0


def _print_instructions(roots: dict[str, Path], only: str) -> int:
    names = [name for name in COMMANDS if any(word in name for word in only.split(","))]
    width = max(map(len, names))
    print(f"instructions (callgrind Ir), millions; whole process, from .pyc; Python {sys.version.split()[0]}")
    print(f"  {'':{width}}  " + "".join(f"{tree[:14]:>16}" for tree in roots))
    for name in names:
        counts = [instructions(COMMANDS[name], root) / 1e6 for root in roots.values()]
        change = f"  {100 * (counts[-1] / counts[0] - 1):+.1f}%" if len(counts) == 2 else ""
        print(f"  {name.ljust(width)}  " + "".join(f"{c:16.1f}" for c in counts) + change, flush=True)
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
