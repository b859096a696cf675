"""`streamdag graph --format png` through Graphviz, and a clear error without it."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = str(Path(__file__).resolve().parents[2] / "graphs" / "demo.yaml")


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="graphviz is not installed (apt-get install graphviz)"
)
def test_png(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "graph", DEMO, "--format", "png", "-o", str(out)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > height > 50  # five nodes laid out left to right


def test_png_without_graphviz_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "graph", DEMO, "--format", "png", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2
    assert "needs Graphviz's `dot`" in proc.stderr and "apt-get install graphviz" in proc.stderr
    assert not out.exists()
