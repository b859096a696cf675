"""The built-in SVG drawing (engine.compile.layout) checked as a picture: no edge segment crosses a
node box (its own included, other than where it starts and ends), no label overlaps another label
or a box, and every edge of the plan is drawn."""

from __future__ import annotations

import re
import textwrap
from itertools import pairwise
from pathlib import Path

import pytest

from engine.compile import render
from engine.compile.validate import check_text, load_graph

ROOT = Path(__file__).resolve().parents[2]
Rect = tuple[float, float, float, float]  # x, y, w, h

TANGLE = textwrap.dedent("""\
    version: 1
    name: tangle
    defaults: {dead_letter: dead}
    nodes:
      a: {type: generate, config: {count: 1}}
      b: {type: generate, config: {count: 1}}
      m1: {type: map, inputs: [a], config: {expr: 'msg'}}
      m2: {type: map, inputs: [m1, b], config: {expr: 'msg'}}
      m3: {type: filter, inputs: [m2], config: {expr: 'true'}}
      split: {type: route, inputs: [m3], config: {routes: {first_choice: 'msg.i > 1', second_choice: 'msg.i > 0'}}}
      late: {type: map, inputs: [split.first_choice, a], config: {expr: 'msg'}}
      sink1: {type: stdout, inputs: [late, split.second_choice, split.unmatched, m1]}
      sink2: {type: file_sink, inputs: [b, m3, split.second_choice], config: {path: x.ndjson}}
      dead: {type: file_sink, config: {path: dead.ndjson}}
""")


def _graphs() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = [(p.name, load_graph(str(p))) for p in sorted((ROOT / "graphs").glob("*.yaml"))]
    graph, diags = check_text(TANGLE, str(ROOT / "graphs" / "tangle.yaml"), {})
    assert graph is not None, [d.format() for d in diags]
    return [*out, ("tangle", graph)]


def _floats(tag: str, *names: str) -> list[float]:
    return [float(re.search(rf'\b{n}="([-\d.]+)"', tag).group(1)) for n in names]  # type: ignore[union-attr]


def _parse(svg: str) -> tuple[dict[str, Rect], list[tuple[str, str, list[tuple[float, float]]]], list[Rect]]:
    boxes = {m.group(1): tuple(_floats(m.group(2), "x", "y", "width", "height"))
             for m in re.finditer(r'<g class="node" id="node-([^"]+)">(<rect [^>]*>)', svg)}
    edges = [(m.group(1), m.group(2), [tuple(map(float, p.split(","))) for p in m.group(3).split()])
             for m in re.finditer(r'<polyline class="edge" data-from="([^"]+)" data-to="([^"]+)"[^>]*points="([^"]+)"', svg)]
    labels = [tuple(_floats(m.group(1), "x", "y", "width", "height"))
              for m in re.finditer(r'<g class="label">(<rect [^>]*>)', svg)]
    return boxes, edges, labels  # type: ignore[return-value]


def _crosses(p: tuple[float, float], q: tuple[float, float], r: Rect) -> bool:
    """Does segment p-q enter the inside of r (shrunk by half a pixel: touching a side is fine)?"""
    x, y, w, h = r[0] + 0.5, r[1] + 0.5, r[2] - 1, r[3] - 1
    t0, t1 = 0.0, 1.0
    dx, dy = q[0] - p[0], q[1] - p[1]
    for edge_p, edge_q in ((-dx, p[0] - x), (dx, x + w - p[0]), (-dy, p[1] - y), (dy, y + h - p[1])):
        if edge_p == 0:
            if edge_q < 0:
                return False
        else:
            t = edge_q / edge_p
            if edge_p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    return t0 < t1


def _overlap(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize(("name", "graph"), _graphs(), ids=[n for n, _ in _graphs()])
def test_edges_go_around_boxes_and_labels_do_not_overlap(name: str, graph) -> None:
    boxes, edges, labels = _parse(render.to_svg(graph))
    dag = render.to_networkx(graph)
    assert set(boxes) == set(dag.nodes)
    assert sorted((u, v) for u, v, _ in edges) == sorted((u, v) for u, v in dag.edges())
    for up, down, pts in edges:
        assert pts[0][0] == pytest.approx(boxes[up][0] + boxes[up][2])  # leaves its box's right side
        assert pts[-1][0] == pytest.approx(boxes[down][0])  # enters its target's left side
        for p, q in pairwise(pts):
            hit = [n for n, r in boxes.items() if _crosses(p, q, r)]
            assert not hit, f"{name}: edge {up}->{down} segment {p}->{q} crosses {hit}"
    named = sum(1 for _, _, d in dag.edges(data=True) if d["port"] != "out")
    assert len(labels) == named
    for i, a in enumerate(labels):
        assert not any(_overlap(a, b) for b in labels[i + 1:]), f"{name}: labels overlap at {a}"
        assert not any(_overlap(a, r) for r in boxes.values()), f"{name}: a label covers a box at {a}"


def test_the_check_catches_an_edge_through_a_box() -> None:
    """The geometry check is not vacuous: a straight line through a box is caught."""
    assert _crosses((0, 50), (300, 50), (100, 20, 150, 44))
    assert not _crosses((0, 10), (300, 10), (100, 20, 150, 44))
    assert not _crosses((250, 42), (400, 42), (100, 20, 150, 44))  # starting on its right side


def test_cli_svg_uses_graphviz_when_installed_else_the_layered_layout(capsys) -> None:
    import shutil

    from engine.cli import main

    assert main(["graph", str(ROOT / "graphs" / "demo.yaml"), "--format", "svg"]) == 0
    out = capsys.readouterr().out
    if shutil.which("dot"):
        assert "graphviz" in out.lower()
    else:
        assert out == render.to_svg(load_graph(str(ROOT / "graphs" / "demo.yaml")))
