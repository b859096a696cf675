"""What a graph must not do under `streamdag run --workers N` (N > 1): checked offline, with the rest.

N worker processes each run the whole graph. That is safe for a node whose result does not
depend on which process saw which message, and for a source whose input the workers share
without reading an item twice. Two things are refused, each at the node's `type`:

E260 an operator that keeps state across messages in its process (`Node.per_process_state`
     says why: a window's open windows, for one). Under N workers each process would see only
     part of a key's messages and give a partial, wrong result. (Keyed partitions and
     checkpointed state, which make them safe, are a later step.)
E261 a source that does not say how workers share its input (`Source.shared_by` is empty): N
     processes would each read all of it. The built-in sources all say; a plugin source opts in.
E262 a sink that N processes cannot write at once with its config (`Sink.shared_write_issue`):
     `file_sink` in mode overwrite, which each worker would truncate and write over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["check_workers"]


def check_workers(nodes: Mapping[str, Any], workers: int, add: Callable[..., None]) -> None:
    """Report E260/E261 through `add(path, code, message, value=True)` for each node of `nodes`
    (node id -> ResolvedNode) that cannot run in `workers` processes at once."""
    if workers <= 1:
        return
    for node_id, rn in nodes.items():
        at = ("nodes", node_id, "type")
        why = getattr(rn.cls, "per_process_state", "")
        if why:
            add(at, "E260", f"nodes.{node_id}: {rn.type} cannot run under --workers {workers}: it {why}; each "
                "worker would hold part of it and give a partial result (run it with one worker, or keep the "
                "state in a shared store)", value=True)
        issue = rn.cls.shared_write_issue(rn.config) if rn.kind == "sink" else ""
        if issue:
            add(at, "E262", f"nodes.{node_id}: {rn.type} cannot be written by {workers} workers at once: {issue}",
                value=True)
        if rn.kind == "source" and not getattr(rn.cls, "shared_by", ""):
            add(at, "E261", f"nodes.{node_id}: source type '{rn.type}' does not say how {workers} workers share "
                "its input (Source.shared_by), so each would read all of it; run it with one worker", value=True)
