"""Run the targeted mutations (`mutations.py`) and report which the tests catch.

    .venv/bin/python -m tests.mutation.run              # all of them (about 4 minutes, services up)
    .venv/bin/python -m tests.mutation.run -k http -k route   # names containing any of these
    .venv/bin/python -m tests.mutation.run --list

The tree (git's tracked and untracked, non-ignored files: uncommitted edits included) is copied to
a temporary folder once; each mutation is written into that copy, its tests run there
(`python -m pytest -x` with the copy first on PYTHONPATH, so the copy is what gets imported), and
the original line is put back. The working tree is never written, so an interrupted run leaves
nothing behind; the copy is removed at exit. The tests first run once unmutated: a failing
baseline aborts the run, as a mutation "caught" by a test that fails anyway means nothing.

Outcomes: `caught` (a named test failed), `timeout` (the tests hung: caught too), `SURVIVED` (every
named test passed: the invariant is unguarded), `stale` (the line is not found once: update
`mutations.py`), `invalid` (the mutant does not compile), `error` (pytest itself failed: collection,
usage, internal error). Exit status 0 when every mutation was caught, 1 when one survived, 2 for a
stale, invalid or error one, or a failing baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.mutations import MUTATIONS, Mutation

__all__ = ["Outcome", "apply", "main"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    mutation: Mutation
    status: str  # caught, timeout, SURVIVED, stale, invalid, error
    lineno: int
    seconds: float
    detail: str = ""


def apply(source: str, m: Mutation) -> tuple[str, int]:
    """`source` with the mutation applied, and the 1-based line number; ValueError when the line
    is not found exactly once (after `m.after`, when given)."""
    lines = source.splitlines(keepends=True)
    hits = [i for i, text in enumerate(lines) if text.strip() == m.line]
    if m.after is not None:
        anchor = next((i for i, text in enumerate(lines) if m.after in text), None)
        if anchor is None:
            raise ValueError(f"anchor {m.after!r} not found")
        hits = [i for i in hits if i > anchor][:1]
    if len(hits) != 1:
        raise ValueError(f"line found {len(hits)} times, expected once: {m.line!r}")
    i = hits[0]
    text = lines[i]
    indent = text[: len(text) - len(text.lstrip())]
    lines[i] = indent + m.mutant + ("\n" if text.endswith("\n") else "")
    return "".join(lines), i + 1


def copy_tree(dest: Path) -> None:
    """The files git would commit (tracked and untracked, not ignored), as they are on disk."""
    names = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def test_env(tree: Path) -> dict[str, str]:
    """The environment of the tests in the copy: the copy first on the import path, and the data the
    tests find beside the checkout (`shared/`) found from the checkout, not from the copy."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    for shared in (ROOT.parent / "shared", ROOT.parent.parent / "shared"):
        if "CEL_CONFORMANCE_DIR" not in env and (shared / "cel-conformance").is_dir():
            env["CEL_CONFORMANCE_DIR"] = str(shared / "cel-conformance")
    return env


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """('passed' | 'failed' | 'timeout' | 'error', last lines of output) of pytest on `tests` in
    `tree`; 'error' is pytest's own trouble (collection, usage, internal error), not a failed test."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", "60", *tests]
    proc = subprocess.Popen(
        cmd,
        cwd=tree,
        env=test_env(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this run started: pytest and its children
        proc.communicate()
        return "timeout", ""
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    tail = " | ".join(out.decode(errors="replace").strip().splitlines()[-3:])
    return {0: "passed", 1: "failed"}.get(proc.returncode, "error"), tail


def check_imports(tree: Path) -> None:
    """The copy, not the editable install, is what the tests import."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = "import engine, operators; print(engine.__file__); print(operators.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True)
    for path in out.stdout.decode().split():
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"the tests would import {path}, not the copy in {tree}")


def run_one(tree: Path, m: Mutation, timeout: float) -> Outcome:
    target = tree / m.path
    t0 = time.monotonic()
    try:
        original = target.read_text()
        mutated, lineno = apply(original, m)
    except (OSError, ValueError) as exc:
        return Outcome(m, "stale", 0, 0.0, str(exc))
    try:
        compile(mutated, str(target), "exec")
    except SyntaxError as exc:
        return Outcome(m, "invalid", lineno, 0.0, str(exc))
    target.write_text(mutated)
    try:
        result, tail = run_tests(tree, m.tests, timeout)
    finally:
        target.write_text(original)
    status = {"failed": "caught", "passed": "SURVIVED", "timeout": "timeout", "error": "error"}[result]
    return Outcome(m, status, lineno, time.monotonic() - t0, tail)


def report(outcomes: list[Outcome], seconds: float) -> str:
    rows = [("mutation", "where", "outcome", "s", "tests")]
    for o in outcomes:
        tests = ", ".join(Path(t).name for t in o.mutation.tests)
        rows.append((o.mutation.name, f"{o.mutation.path}:{o.lineno}", o.status, f"{o.seconds:.1f}", tests))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    caught = sum(o.status in ("caught", "timeout") for o in outcomes)
    lines.append(f"{caught}/{len(outcomes)} caught in {seconds:.0f} s")
    for o in outcomes:
        if o.status not in ("caught", "timeout"):
            lines.append(f"{o.status}: {o.mutation.name} ({o.mutation.invariant}): {o.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-k", action="append", default=[], help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for one mutation's tests")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.k or any(k in m.name for k in args.k)]
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.path:42} {m.invariant}")
        return 0
    if not chosen:
        print("no mutation matches", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamdag-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        check_imports(tree)
        every_test = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        result, tail = run_tests(tree, every_test, args.timeout * 2)
        if result != "passed":
            print(f"baseline: the tests fail without any mutation ({result}): {tail}", file=sys.stderr)
            return 2
        summary = tail.rsplit(" | ", 1)[-1]  # pytest's last line: look for skips there
        print(
            f"baseline passed in {time.monotonic() - t0:.0f} s ({summary}); {len(chosen)} mutation(s)",
            flush=True,
        )
        outcomes = []
        for m in chosen:
            o = run_one(tree, m, args.timeout)
            print(f"  {o.status:8} {m.name} ({o.seconds:.1f} s)", flush=True)
            outcomes.append(o)
    print(report(outcomes, time.monotonic() - t0))
    if any(o.status in ("stale", "invalid", "error") for o in outcomes):
        return 2
    return 1 if any(o.status == "SURVIVED" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
