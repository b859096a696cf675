"""Version vectors as both stores take them: a map writer -> non-negative integer counter.

Shared by postgres_sink and redis_cache_sink (mode/strategy `version_vector`), which compare them
inside the store (SQL, Lua); this module only checks their shape before a write, so a malformed
vector goes to `errors` with the reason and is never half-written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["vector_issue"]


def vector_issue(v: Any) -> str | None:
    """Why `v` is not a version vector (a map of writer -> non-negative integer), or None."""
    if not isinstance(v, dict):
        return f"version vector: expected a map of writer -> counter, got {type(v).__name__}"
    for k, n in v.items():
        if not isinstance(k, str) or not k:
            return f"version vector: writer {k!r} is not a non-empty string"
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return f"version vector: counter of {k!r} must be a non-negative integer, got {n!r}"
    return None
