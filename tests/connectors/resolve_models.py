"""Reference models of the conflict strategies (resolve.py of postgres and redis), for property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


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


WRITERS = ("w1", "w2", "w3")
# one operation of a writer: its step number (its own counters grow with it), a field it sets with a
# version, a tag it adds and maybe one it removes (observed-remove of its own earlier add)
crdt_op = st.tuples(st.sampled_from(WRITERS), st.integers(1, 6), st.sampled_from("abc"), st.integers(0, 9),
               st.sampled_from(["x", "y", "z"]), st.booleans())


def crdt_body(key: int, w: str, step: int, field: str, value: int, elem: str, remove: bool) -> dict:
    tag = f"{w}-{step}"
    tags: dict[str, Any] = {"a": {elem: {tag: True}}}
    if remove and step > 1:
        tags["r"] = {f"{w}-{step - 1}": True}
    return {"id": key, "doc": {field: value, "_v": {field: step * 10 + WRITERS.index(w)}},
            "views": {w: step}, "balance": {"p": {w: step * 2}, "n": {w: step}}, "tags": tags,
            "hi": value, "lo": value}


def crdt_reference(bodies: list[dict]) -> dict[str, Any]:
    """Order-independent model of the merged row (values: counters summed, the OR-set's elements)."""
    views: dict[str, int] = {}
    pos: dict[str, int] = {}
    neg: dict[str, int] = {}
    fields: dict[str, tuple[int, int]] = {}
    adds: dict[str, set[str]] = {}
    removed: set[str] = set()
    for b in bodies:
        for w, n in b["views"].items():
            views[w] = max(views.get(w, 0), n)
        for w, n in b["balance"]["p"].items():
            pos[w] = max(pos.get(w, 0), n)
        for w, n in b["balance"]["n"].items():
            neg[w] = max(neg.get(w, 0), n)
        for f, v in b["doc"].items():
            if f != "_v":
                fields[f] = max(fields.get(f, (-1, -1)), (b["doc"]["_v"][f], v))
        for e, tags in b["tags"]["a"].items():
            adds.setdefault(e, set()).update(tags)
        removed.update(b["tags"].get("r", {}))
    return {"views": sum(views.values()), "balance": sum(pos.values()) - sum(neg.values()),
            "doc": {f: v for f, (_, v) in fields.items()},
            "tags": sorted(e for e, ts in adds.items() if ts - removed),
            "hi": max(b["hi"] for b in bodies), "lo": min(b["lo"] for b in bodies)}
