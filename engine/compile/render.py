"""The DAG as a picture: Mermaid, Graphviz DOT, or a self-contained SVG (engine.compile.layout; no\nGraphviz needed: `streamdag graph --format svg` uses `dot` when it is installed, this otherwise)."""

from __future__ import annotations

import html

import networkx as nx

from engine.compile.layout import layered
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
    """A self-contained SVG laid out by `engine.compile.layout` (layers left to right, long edges
    routed around the boxes, labels that do not overlap). Each node is `<g class="node"
    id="node-ID">` (the status page colours them), each edge a `<polyline class="edge">`, each port
    label a `<g class="label">` with its background `<rect>`."""
    lay = layered(to_networkx(graph))
    fills = {"source": "#dbeafe", "operator": "#f3f4f6", "sink": "#dcfce7"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width:.0f}" height="{lay.height:.0f}" '
           'font-family="Helvetica" font-size="12">',
           ('<defs><marker id="a" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>')]
    for r in lay.routes:
        style = ' stroke="#dc2626" stroke-dasharray="5,3"' if r.port == "errors" else ' stroke="#374151"'
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in r.points)
        out.append(f'<polyline class="edge" data-from="{html.escape(r.up)}" data-to="{html.escape(r.down)}" '
                   f'data-port="{html.escape(r.port)}" points="{points}" fill="none"{style} marker-end="url(#a)"/>')
    for r in lay.routes:
        if r.label is not None:
            lb = r.label
            out.append(f'<g class="label"><rect x="{lb.x:.1f}" y="{lb.y:.1f}" width="{lb.w:.1f}" height="{lb.h:.1f}" '
                       f'fill="white" fill-opacity="0.9"/><text x="{lb.x + lb.w / 2:.1f}" y="{lb.y + lb.h - 3:.1f}" '
                       f'text-anchor="middle" font-size="11" fill="#6b7280">{html.escape(lb.text)}</text></g>')
    for b in lay.boxes.values():
        out.append(f'<g class="node" id="node-{html.escape(b.id)}"><rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" '
                   f'height="{b.h:.1f}" rx="8" fill="{fills[b.kind]}" stroke="#374151"/>'
                   f'<text x="{b.x + b.w / 2:.1f}" y="{b.y + 18:.1f}" text-anchor="middle" font-weight="bold">'
                   f'{html.escape(b.id)}</text><text x="{b.x + b.w / 2:.1f}" y="{b.y + 34:.1f}" text-anchor="middle" '
                   f'fill="#4b5563">{html.escape(b.type)}</text></g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
