"""Reference models of the conflict strategies (resolve.py of postgres and redis), for property tests."""

from __future__ import annotations

from typing import Any


def vv_reference(bodies: list[dict], resolver: Any = None) -> tuple[dict | None, list[int]]:
    """Sequential model: the stored row after each write in order, and the indexes that conflict.
    With `resolver(old, new) -> row`, a conflict stores its row with both vectors merged."""
    stored: dict | None = None
    conflicts = []
    for i, b in enumerate(bodies):
        if stored is None:
            stored = b
            continue
        ws = set(stored["vv"]) | set(b["vv"])
        ge = all(b["vv"].get(w, 0) >= stored["vv"].get(w, 0) for w in ws)
        le = all(b["vv"].get(w, 0) <= stored["vv"].get(w, 0) for w in ws)
        if ge and not le:
            stored = b
        elif not le:
            conflicts.append(i)
            if resolver is not None:
                stored = {**resolver(stored, b), "vv": {w: max(stored["vv"].get(w, 0), b["vv"].get(w, 0)) for w in ws}}
    return stored, conflicts


def field_lww_reference(docs: list[dict[str, Any]], vf: str) -> dict[str, Any]:
    """Order-independent model of merge with per-field versions: per field, the value of the highest
    (version, value); the document's version map left out."""
    fields: dict[str, tuple[Any, Any]] = {}
    for d in docs:
        for f, v in d.items():
            if f != vf:
                fields[f] = max(fields.get(f, (-1, -1)), (d[vf][f], v))
    return {f: v for f, (_, v) in fields.items()}
