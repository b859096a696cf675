"""The DAG as a picture: Mermaid, Graphviz DOT, or a self-contained SVG (no graphviz needed)."""

from __future__ import annotations

import html

import networkx as nx

from engine.compile.plan import Plan, build_plan
from engine.compile.validate import Graph

__all__ = ["to_dot", "to_mermaid", "to_networkx", "to_svg"]

_SHAPES = {"source": ("([", "])"), "operator": ("[", "]"), "sink": ("[(", ")]")}


def to_networkx(graph: Graph | Plan) -> nx.MultiDiGraph:
    """The plan's DAG (frozen): nodes carry kind and type; edges carry the upstream port, and
    `implicit` for the dead-letter edges of `defaults.dead_letter`."""
    return (graph if isinstance(graph, Plan) else build_plan(graph)).dag


def to_mermaid(graph: Graph) -> str:
    """A Mermaid flowchart. Node ids are `n0`, `n1`... (a node may be named `end`, `graph`, `class`
    or `o1`, which Mermaid reads as keywords or edge syntax); each node's name is its quoted label."""
    g = to_networkx(graph)
    ids = {node_id: f"n{i}" for i, node_id in enumerate(g.nodes)}
    lines = ["flowchart LR"]
    for node_id, data in g.nodes(data=True):
        left, right = _SHAPES[data["kind"]]
        lines.append(f'  {ids[node_id]}{left}"{_mermaid_text(node_id)}<br/><small>{_mermaid_text(data["type"])}'
                     f'</small>"{right}')
    for up, down, data in g.edges(data=True):
        port, a, b = data["port"], ids[up], ids[down]
        if port == "errors":
            lines.append(f"  {a} -. errors .-> {b}")
        elif port == "out":
            lines.append(f"  {a} --> {b}")
        else:
            lines.append(f'  {a} -- "{_mermaid_text(port)}" --> {b}')
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: quotes and markup as entity codes."""
    return "".join(f"#{ord(ch)};" if ch in '"<>&#' else ch for ch in text)


def to_dot(graph: Graph) -> str:
    g = to_networkx(graph)
    shapes = {"source": "cds", "operator": "box", "sink": "cylinder"}
    lines = [f'digraph "{graph.spec.name}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for node_id, data in g.nodes(data=True):
        lines.append(f'  "{node_id}" [shape={shapes[data["kind"]]}, label="{node_id}\\n{data["type"]}"];')
    for up, down, data in g.edges(data=True):
        port = data["port"]
        attrs = ['style=dashed', 'color=red', 'label="errors"'] if port == "errors" else (
            [] if port == "out" else [f'label="{port}"'])
        lines.append(f'  "{up}" -> "{down}"' + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(graph: Graph) -> str:
    """A layered left-to-right drawing: one column per longest-path depth."""
    g = to_networkx(graph)
    depth: dict[str, int] = {}
    for node_id in nx.topological_sort(nx.DiGraph(g)):
        preds = list(g.predecessors(node_id))
        depth[node_id] = 1 + max((depth[p] for p in preds), default=-1)
    columns: dict[int, list[str]] = {}
    for node_id, d in depth.items():
        columns.setdefault(d, []).append(node_id)
    w, h, gap_x, gap_y = 150, 44, 80, 30
    pos = {}
    for d, ids in columns.items():
        for i, node_id in enumerate(ids):
            pos[node_id] = (20 + d * (w + gap_x), 20 + i * (h + gap_y))
    width = 40 + (max(columns) + 1) * (w + gap_x)
    height = 40 + max(len(v) for v in columns.values()) * (h + gap_y)
    fills = {"source": "#dbeafe", "operator": "#f3f4f6", "sink": "#dcfce7"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica" font-size="12">',
           ('<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>')]
    for up, down, data in g.edges(data=True):
        (x1, y1), (x2, y2) = pos[up], pos[down]
        style = ' stroke="#dc2626" stroke-dasharray="5,3"' if data["port"] == "errors" else ' stroke="#374151"'
        out.append(f'<line x1="{x1 + w}" y1="{y1 + h / 2}" x2="{x2}" y2="{y2 + h / 2}"{style} marker-end="url(#a)"/>')
        if data["port"] != "out":
            out.append(f'<text x="{(x1 + w + x2) / 2}" y="{(y1 + y2 + h) / 2 - 4}" text-anchor="middle" '
                       f'fill="#6b7280">{html.escape(data["port"])}</text>')
    for node_id, data in g.nodes(data=True):
        x, y = pos[node_id]
        out.append(f'<g class="node" id="node-{html.escape(node_id)}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" '
                   f'fill="{fills[data["kind"]]}" stroke="#374151"/>'
                   f'<text x="{x + w / 2}" y="{y + 18}" text-anchor="middle" font-weight="bold">{html.escape(node_id)}</text>'
                   f'<text x="{x + w / 2}" y="{y + 34}" text-anchor="middle" fill="#4b5563">{html.escape(data["type"])}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
