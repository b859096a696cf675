"""`streamdag test`: unit tests for graphs, run with no services (docs/testing.md).

`spec` reads and checks a test file (offline, line:col, like a graph); `runner` runs its cases on
the graph's plan with in-memory doubles for the connectors (`doubles`); `report` prints the
results as text or JUnit XML. `find_test_files` is the file convention: `*.test.yaml`, searched
recursively under each directory given (hidden folders and virtualenvs skipped).
"""

from __future__ import annotations

import os

__all__ = ["SUFFIX", "find_test_files"]

SUFFIX = ".test.yaml"
_SKIP = {"node_modules", "__pycache__", "venv"}


def find_test_files(paths: list[str]) -> list[str]:
    """The test files named, and those under the directories named, in a stable order."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP)
            found.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(SUFFIX))
    return list(dict.fromkeys(found))
