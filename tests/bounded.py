"""Run the `streamdag` CLI in a child process with bounded address space, measuring time and memory.

For the hostile-input tests: the child sets RLIMIT_AS before importing anything, so a blow-up is a
MemoryError (which the tests reject) rather than a machine swapping, and reports its own peak RSS
from `VmHWM` (`ru_maxrss` would report the parent's: Linux keeps it across exec).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

__all__ = ["AS_LIMIT", "run_cli_bounded"]

ROOT = Path(__file__).resolve().parents[1]
AS_LIMIT = 1 << 30  # 1 GiB of address space (the interpreter and pydantic need about half)

_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from engine.cli import main
    code = main(sys.argv[1:])
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
    print("MAXRSS", hwm)
    sys.exit(code)
""")


def run_cli_bounded(args: list[str]) -> tuple[int, str, float, int]:
    """(exit code, stdout + stderr, wall seconds, peak RSS in KB) of `streamdag *args` in a child.
    Fails the test when the child crashed with a traceback or did not report its memory."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(limit=AS_LIMIT), *args],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    seconds = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "MemoryError" not in out, out[-3000:]
    assert "MAXRSS " in out, out[-3000:]
    return proc.returncode, out, seconds, int(out.split("MAXRSS ")[1].split()[0])
