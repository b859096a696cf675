"""Benchmarks run outside the default test command: `python -m pytest benchmarks` (see README)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
