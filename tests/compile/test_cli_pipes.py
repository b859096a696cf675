"""`streamdag schema | head -1` and `validate --format json ... | head`: a reader that goes away
ends the command quietly (status 141, as a shell reports SIGPIPE), with no BrokenPipeError traceback.

The reader here closes its end before the command writes anything, so every write fails: the same
error as `| head` gives, without depending on how much a pipe buffers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _into_a_closed_pipe(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first write
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_schema_into_a_closed_pipe_ends_quietly() -> None:
    code, err = _into_a_closed_pipe("schema")
    assert (code, err) == (141, "")


def test_validate_json_into_a_closed_pipe_ends_quietly() -> None:
    code, err = _into_a_closed_pipe("validate", "--format", "json", str(ROOT / "graphs" / "demo.yaml"))
    assert (code, err) == (141, "")
