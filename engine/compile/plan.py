"""The execution plan: how messages move through a checked `Graph`, worked out once.

`build_plan` makes every edge explicit (the implicit dead-letter edges of `defaults.dead_letter`
included), decides which operators run inline in their upstream's task, counts each channel's
writers, and orders the start. The runtime, `streamdag graph` and the observe layer only read it:
a `Plan` is frozen, its mappings are read-only, its networkx graph is frozen.

Inline operators: an operator whose class says `inline = True`, with no `flush`, no `tick` and no
`tick_interval`, that is the only consumer of its one input, runs in the task of the node that
feeds it (no queue, no task switch between them), so a batch goes source -> filter -> map while it
is still in the CPU's cache. Its `host` is the node whose task runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.compile.validate import Graph, ResolvedNode

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["ERRORS", "Edge", "Plan", "build_plan"]

ERRORS = "errors"
_START_RANK = {"sink": 0, "operator": 1, "source": 2}


@dataclass(frozen=True, slots=True)
class Edge:
    """Messages of `source`'s `port` go to `target`'s input."""

    source: str
    port: str
    target: str
    implicit: bool = False  # added by defaults.dead_letter, not written in the file


@dataclass(frozen=True)
class Plan:
    graph: Graph
    edges: tuple[Edge, ...]
    routes: Mapping[tuple[str, str], tuple[str, ...]]  # (node, port) -> targets, in file order
    writers: Mapping[str, int]  # writers of each non-source node's input channel
    inline: Mapping[str, str]  # inline operator -> the node whose task runs it
    dead_letter_sinks: frozenset[str]  # sinks fed only by errors ports: their commits count as dead-lettered
    # sinks fed by errors ports and by other ports (`defaults.dead_letter` that is also a normal sink): a
    # message that came by an errors edge (`DeadLetter`) counts as dead-lettered, the others as delivered
    mixed_sinks: frozenset[str]
    start_order: tuple[str, ...]  # sinks first, then operators, then sources
    closes: Mapping[str, tuple[str, ...]] = field(repr=False)  # channels a node's task closes when it ends
    # sources whose messages reach each node, through any port (`errors` too), sorted
    upstream: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    # nodes every message of which arrives with a body as a JSON decoder gave it: each input edge is
    # the `out` of a source whose `json_bodies(config)` is true, or a non-`errors` port of an operator
    # that `preserves_bodies` and is itself in the set (the node's `ctx.json_bodies`)
    json_inputs: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.graph.spec.name

    @property
    def nodes(self) -> Mapping[str, ResolvedNode]:
        return self.graph.nodes

    def targets(self, node_id: str, port: str) -> tuple[str, ...]:
        return self.routes.get((node_id, port), ())

    @cached_property
    def dag(self) -> nx.MultiDiGraph:
        """The graph as networkx sees it (frozen): nodes carry `kind` and `type`, edges `port` and
        `implicit`."""
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for node_id, rn in self.nodes.items():
            g.add_node(node_id, kind=rn.kind, type=rn.type, inline=node_id in self.inline)
        for e in self.edges:
            g.add_edge(e.source, e.target, port=e.port, implicit=e.implicit)
        return nx.freeze(g)


def build_plan(graph: Graph) -> Plan:
    """The plan of a checked graph (pure: instantiates no node)."""
    nodes = graph.nodes
    edges: list[Edge] = []
    routes: dict[tuple[str, str], list[str]] = {}
    writers: dict[str, int] = {}
    for node_id, rn in nodes.items():
        if rn.kind != "source":
            writers[node_id] = len(rn.inputs)
        for up, port in rn.inputs:
            routes.setdefault((up, port), []).append(node_id)
            edges.append(Edge(up, port, node_id))
    dl = graph.spec.defaults.dead_letter
    if dl is not None:
        for node_id in nodes:
            if node_id != dl and (node_id, ERRORS) not in routes:
                routes[(node_id, ERRORS)] = [dl]
                edges.append(Edge(node_id, ERRORS, dl, implicit=True))
                writers[dl] += 1
    fed_by: dict[str, set[bool]] = {}  # sink -> {came by an errors edge?} over its input edges
    for e in edges:
        if nodes[e.target].kind == "sink":
            fed_by.setdefault(e.target, set()).add(e.port == ERRORS)
    dead_letter_sinks = frozenset(n for n, kinds in fed_by.items() if kinds == {True}) | (
        {dl} if dl is not None and nodes[dl].kind == "sink" and dl not in fed_by else set())
    mixed_sinks = frozenset(n for n, kinds in fed_by.items() if len(kinds) == 2)
    frozen_routes = {key: tuple(targets) for key, targets in routes.items()}
    inline = {n: nodes[n].inputs[0][0] for n in nodes if _can_inline(nodes[n], frozen_routes)}
    for n, host in list(inline.items()):  # a chain of inline operators runs in its first upstream's task
        while host in inline:
            host = inline[host]
        inline[n] = host
    closes = {n: _closes(n, frozen_routes, inline) for n in nodes if n not in inline}
    return Plan(
        graph=graph,
        edges=tuple(edges),
        routes=MappingProxyType(frozen_routes),
        writers=MappingProxyType(writers),
        inline=MappingProxyType(inline),
        dead_letter_sinks=dead_letter_sinks,
        mixed_sinks=mixed_sinks,
        start_order=tuple(sorted(nodes, key=lambda n: _START_RANK[nodes[n].kind])),
        closes=MappingProxyType(closes),
        upstream=MappingProxyType(_upstream(nodes, frozen_routes)),
        json_inputs=_json_inputs(nodes, edges),
    )


def _json_inputs(nodes: Mapping[str, ResolvedNode], edges: list[Edge]) -> frozenset[str]:
    """The nodes all of whose input edges carry JSON-decoded bodies (see `Plan.json_inputs`)."""
    inputs: dict[str, list[Edge]] = {}
    for e in edges:
        inputs.setdefault(e.target, []).append(e)
    from engine.api import Source

    json_out = {n for n, rn in nodes.items() if issubclass(rn.cls, Source) and rn.cls.json_bodies(rn.config)}
    found: set[str] = set()
    grew = True
    while grew:  # to a fixed point: a chain of body-preserving operators passes the property on
        grew = False
        for n, ins in inputs.items():
            if n not in found and all(_json_edge(e, nodes, json_out, found) for e in ins):
                found.add(n)
                grew = True
    return frozenset(found)


def _json_edge(e: Edge, nodes: Mapping[str, ResolvedNode], json_out: set[str], found: set[str]) -> bool:
    if e.port == ERRORS:
        return False
    if e.source in json_out:
        return e.port == "out"
    return e.source in found and getattr(nodes[e.source].cls, "preserves_bodies", False)


def _upstream(nodes: Mapping[str, ResolvedNode], routes: Mapping[tuple[str, str], tuple[str, ...]]
              ) -> dict[str, tuple[str, ...]]:
    """Node -> the sources that reach it (through any port)."""
    successors: dict[str, set[str]] = {}
    for (up, _port), targets in routes.items():
        successors.setdefault(up, set()).update(targets)
    reach: dict[str, set[str]] = {n: set() for n in nodes}
    for source in (n for n, rn in nodes.items() if rn.kind == "source"):
        seen: set[str] = set()
        todo = [source]
        while todo:
            for nxt in successors.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
                    reach[nxt].add(source)
    return {n: tuple(sorted(s)) for n, s in reach.items()}


def _can_inline(rn: ResolvedNode, routes: Mapping[tuple[str, str], tuple[str, ...]]) -> bool:
    from engine.api import Operator

    cls: Any = rn.cls
    if rn.kind != "operator" or not getattr(cls, "inline", False) or len(rn.inputs) != 1:
        return False
    if cls.flush is not Operator.flush or cls.tick is not Operator.tick or cls.tick_interval:
        return False
    feeds = [key for key, targets in routes.items() if rn.id in targets]
    return feeds == [rn.inputs[0]] and routes[rn.inputs[0]] == (rn.id,)


def _closes(node_id: str, routes: Mapping[tuple[str, str], tuple[str, ...]], inline: Mapping[str, str]
            ) -> tuple[str, ...]:
    """The channels whose writer `node_id`'s task is, looking through the inline operators it runs
    (once per edge: a node feeding a channel through two ports is two of its writers)."""
    out: list[str] = []
    for (up, _port), targets in routes.items():
        if up == node_id:
            for t in targets:
                out.extend(_closes(t, routes, inline) if t in inline else [t])
    return tuple(out)
