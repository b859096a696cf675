"""PNG pictures of a graph through Graphviz `dot` (an optional system tool, not a Python dependency)."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["GraphvizMissing", "dot_to_png", "dot_to_svg"]


class GraphvizMissing(RuntimeError):
    """`dot` is not on PATH."""


def dot_to_png(dot_text: str, timeout: float = 30.0) -> bytes:
    """Lay out DOT text with Graphviz and return the PNG bytes."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing(
            "PNG output needs Graphviz's `dot` on PATH (Debian: apt-get install graphviz); "
            "`--format svg` needs nothing"
        )
    proc = subprocess.run(
        [exe, "-Tpng"], input=dot_text.encode(), capture_output=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def dot_to_svg(dot_text: str, timeout: float = 30.0) -> str | None:
    """Lay out DOT text with Graphviz as SVG; None when `dot` is not installed or fails (the caller
    then draws its own layout)."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode() if proc.returncode == 0 else None
