"""What a graph must not do under `streamdag run --workers N` (N > 1): checked offline, with the rest.

N worker processes each run the whole graph. That is safe for a node whose result does not
depend on which process saw which message, and for a source whose input the workers share
without reading an item twice. Two things are refused, each at the node's `type`:

E260 an operator that keeps state across messages in its process (`Node.per_process_state`
     says why: a window's open windows, for one). Under N workers each process would see only
     part of a key's messages and give a partial, wrong result. Accepted when every source that
     feeds it is partitioned (`Source.partitioned`, `jetstream_source` with `partitions`): a
     partition is read by one worker at a time, so a key's messages meet in one place as long as
     the key decides the partition (docs/scale.md).
E261 a source that does not say how workers share its input (`Source.shared_by` is empty): N
     processes would each read all of it. The built-in sources all say; a plugin source opts in.
E262 a sink that N processes cannot write at once with its config (`Sink.shared_write_issue`):
     `file_sink` in mode overwrite, which each worker would truncate and write over.
W263 a partitioned source with fewer partitions than workers: the workers beyond the partition
     count own none and stay idle.
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
        unpartitioned = [s for s in _sources(nodes, node_id) if not nodes[s].cls.partitioned(nodes[s].config)]
        if why and unpartitioned:
            why += (f"; of its sources, {', '.join(repr(s) for s in unpartitioned)} "
                    f"{'is' if len(unpartitioned) == 1 else 'are'} not partitioned (jetstream_source `partitions`)")
            add(at, "E260", f"nodes.{node_id}: {rn.type} cannot run under --workers {workers}: it {why}; each "
                "worker would hold part of it and give a partial result (run it with one worker, or keep the "
                "state in a shared store)", value=True)
        issue = rn.cls.shared_write_issue(rn.config) if rn.kind == "sink" else ""
        if issue:
            add(at, "E262", f"nodes.{node_id}: {rn.type} cannot be written by {workers} workers at once: {issue}",
                value=True)
        parts = rn.cls.partitioned(rn.config) if rn.kind == "source" else None
        if parts is not None and parts < workers:
            add(("nodes", node_id, "config", "partitions"), "W263", f"nodes.{node_id}: {parts} partition(s) for "
                f"{workers} workers: {workers - parts} worker(s) will own none and stay idle", value=True,
                severity="warning")
        if rn.kind == "source" and not getattr(rn.cls, "shared_by", ""):
            add(at, "E261", f"nodes.{node_id}: source type '{rn.type}' does not say how {workers} workers share "
                "its input (Source.shared_by), so each would read all of it; run it with one worker", value=True)


def _sources(nodes: Mapping[str, Any], node_id: str) -> list[str]:
    """The sources from which messages reach `node_id` (itself, if it is one)."""
    seen: set[str] = set()
    todo = [node_id]
    found: list[str] = []
    while todo:
        n = todo.pop()
        if n in seen or n not in nodes:
            continue
        seen.add(n)
        if nodes[n].kind == "source":
            found.append(n)
        todo.extend(up for up, _port in nodes[n].inputs)
    return sorted(found)
