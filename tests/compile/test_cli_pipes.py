"""`streamdag schema | head -1` and `validate --format json ... | head`: a reader that stops early ends
the command quietly (status 141, as a shell reports SIGPIPE), with no BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _piped_into_head(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = " ".join([sys.executable, "-m", "engine.cli", *args])
    return subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 20 >/dev/null"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_schema_into_head_ends_quietly() -> None:
    done = _piped_into_head("schema")  # 170 KB: more than a pipe holds
    assert done.stderr == "" and done.returncode == 141, done.stderr


def test_validate_json_into_head_ends_quietly() -> None:
    graphs = sorted(str(p) for p in (ROOT / "graphs").glob("*.yaml"))
    done = _piped_into_head("validate", "--format", "json", *(graphs * 8))
    assert done.stderr == "" and done.returncode == 141, done.stderr
