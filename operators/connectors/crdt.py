"""CRDT values as both stores take them (postgres_sink `crdt` columns, redis_cache_sink `crdt` fields).

The state of each kind, and how two states merge (commutative, associative, idempotent, so any
interleaving of writers with duplicates and replays converges):

| kind | state | merge | value |
| --- | --- | --- | --- |
| gcounter | `{writer: count}` | per-writer max | the sum |
| pncounter | `{"p": {writer: n}, "n": {writer: n}}` | per-writer max of each | sum(p) - sum(n) |
| orset | `{"a": {elem: {tag: true}}, "r": {tag: true}}` | union | elements with an add tag not removed |
| max, min | a number or a string | the greater / smaller (numbers before strings) | the state |

A writer sends its own running total (not an increment), so a replay carries a total the stored
maximum already covers. The stores merge inside their atomic write (SQL, Lua); this module checks a
state's shape before a write (so a malformed one goes to `errors` with the reason and is never
half-written) and reads a state's value in Python (the Redis side has no SQL readers).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["CRDT_KINDS", "Crdt", "crdt_issue", "crdt_value"]

Crdt = Literal["gcounter", "pncounter", "orset", "max", "min"]
CRDT_KINDS: tuple[str, ...] = ("gcounter", "pncounter", "orset", "max", "min")


def _counts_issue(v: Any) -> str | None:
    if not isinstance(v, dict):
        return f"expected a map writer -> count, got {type(v).__name__}"
    for w, n in v.items():
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0:
            return f"count of {w!r} must be a non-negative number, got {n!r}"
    return None


def _tags_issue(v: Any, what: str) -> str | None:
    if not isinstance(v, dict) or not all(t is True for t in v.values()):
        return f"{what} must be a map tag -> true"
    return None


def crdt_issue(kind: str, v: Any) -> str | None:
    """Why `v` is not a state of CRDT `kind` (None and absent are fine: nothing to merge), or None."""
    if v is None:
        return None
    issue: str | None = None
    if kind == "gcounter":
        issue = _counts_issue(v)
    elif kind == "pncounter":
        if not isinstance(v, dict) or set(v) - {"p", "n"}:
            issue = 'expected {"p": {writer: n}, "n": {writer: n}}'
        else:
            issue = next((i for i in (_counts_issue(v[s]) for s in v) if i), None)
    elif kind == "orset":
        if not isinstance(v, dict) or set(v) - {"a", "r"} or not isinstance(v.get("a", {}), dict):
            issue = 'expected {"a": {elem: {tag: true}}, "r": {tag: true}}'
        else:
            issue = next((i for i in (_tags_issue(t, f"adds of {e!r}") for e, t in v.get("a", {}).items()) if i),
                         None) or (_tags_issue(v["r"], "removes") if "r" in v else None)
    elif isinstance(v, bool) or not isinstance(v, (int, float, str)):
        issue = f"a {kind} register takes a number or a string, got {type(v).__name__}"
    return None if issue is None else f"crdt {kind}: {issue}"


def crdt_value(kind: str, state: Any) -> Any:
    """The value a state stands for: a counter's total, an OR-set's sorted elements, a register itself."""
    if state is None:
        return None
    if kind == "gcounter":
        return sum(state.values())
    if kind == "pncounter":
        return sum(state.get("p", {}).values()) - sum(state.get("n", {}).values())
    if kind == "orset":
        removed = state.get("r", {})
        return sorted(e for e, tags in state.get("a", {}).items() if any(t not in removed for t in tags))
    return state
