"""A layered drawing of the DAG (Sugiyama style): pure geometry for `streamdag graph --format svg`
when Graphviz is not installed. No I/O, no randomness: the same graph gives the same picture.

1. Layers: the longest path from a source, so every edge goes one or more layers to the right.
2. An edge spanning k > 1 layers gets k - 1 waypoints, one in each layer it crosses. A waypoint takes
   a slot in its layer as a node does (a thin one), so no box stands where the edge passes.
3. Order in each layer: barycenter sweeps, down then up, keeping the order with fewest crossings.
4. Coordinates: layer i at x = MARGIN + i * (box width + gap); the slots of a layer stacked top to
   bottom `GAP_Y` apart, each column centered on the tallest.
5. Routes: a polyline from the right side of the upstream box through its waypoints (a horizontal run
   across each crossed layer, inside its own slot) to the left side of the downstream box; the runs
   between layers lie in the gap between two columns, where there are no boxes. Edges leaving or
   entering one box are spread along its side, ordered by where they go, so they do not coincide.
6. Labels (port names) sit on a route's runs between layers (the gaps are sized for the longest),
   slid along them, then down, until they overlap no other label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

import networkx as nx

__all__ = ["Box", "Label", "Layout", "Route", "layered"]

MARGIN, GAP_Y, LANE, BOX_H, CHAR_W = 20.0, 24.0, 12.0, 44.0, 7.0
LABEL_H = 14.0
Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    id: str
    kind: str
    type: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Label:
    text: str
    x: float  # top-left corner
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Route:
    up: str
    down: str
    port: str
    points: tuple[Point, ...]
    label: Label | None


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    boxes: dict[str, Box]
    routes: tuple[Route, ...]


def label_width(text: str) -> float:
    return CHAR_W * len(text) + 8


def layered(g: nx.MultiDiGraph) -> Layout:
    """The drawing of `g` (nodes with `kind` and `type`, edges with `port`)."""
    layer: dict[str, int] = {}
    for n in nx.topological_sort(nx.DiGraph(g)):
        layer[n] = 1 + max((layer[p] for p in g.predecessors(n)), default=-1)
    edges = [(u, v, d["port"]) for u, v, d in g.edges(data=True)]
    # items of each layer: node ids, and waypoints ("edge index", layer) of long edges
    layers: list[list[Any]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for n in g.nodes:
        layers[layer[n]].append(n)
    chains: list[list[Any]] = []
    for i, (u, v, _) in enumerate(edges):
        chain: list[Any] = [u]
        for k in range(layer[u] + 1, layer[v]):
            wp = (i, k)
            layers[k].append(wp)
            chain.append(wp)
        chains.append([*chain, v])
    _order(layers, chains)

    box_w = max([150.0, *(CHAR_W * max(len(n), len(str(g.nodes[n]["type"]))) + 24 for n in g.nodes)])
    gap_x = max([80.0, *(label_width(p) + 40 for _, _, p in edges if p != "out")])
    height_of = {id(col): sum(BOX_H if isinstance(it, str) else LANE for it in col) + GAP_Y * (len(col) - 1)
                 for col in layers}
    tallest = max(height_of.values(), default=BOX_H)
    top: dict[Any, float] = {}
    for col in layers:
        y = MARGIN + (tallest - height_of[id(col)]) / 2
        for it in col:
            top[it] = y
            y += (BOX_H if isinstance(it, str) else LANE) + GAP_Y
    x_of = [MARGIN + i * (box_w + gap_x) for i in range(len(layers))]
    boxes = {n: Box(n, g.nodes[n]["kind"], str(g.nodes[n]["type"]), x_of[layer[n]], top[n], box_w, BOX_H)
             for n in g.nodes}

    # where each edge leaves and enters its boxes: spread along the side, by the other end's height
    def centre(it: Any) -> float:
        return top[it] + (BOX_H if isinstance(it, str) else LANE) / 2

    leave: dict[int, float] = {}
    enter: dict[int, float] = {}
    for n, b in boxes.items():
        outs = sorted((i for i, c in enumerate(chains) if c[0] == n), key=lambda i: (centre(chains[i][1]), i))
        ins = sorted((i for i, c in enumerate(chains) if c[-1] == n), key=lambda i: (centre(chains[i][-2]), i))
        for side, ids in ((leave, outs), (enter, ins)):
            for j, i in enumerate(ids):
                side[i] = b.y + b.h * (j + 1) / (len(ids) + 1)

    placed: list[Label] = []
    routes = []
    for i, (chain, (u, v, port)) in enumerate(zip(chains, edges, strict=True)):
        pts: list[Point] = [(boxes[u].x + box_w, leave[i])]
        for wp in chain[1:-1]:
            y = centre(wp)
            pts += [(x_of[wp[1]], y), (x_of[wp[1]] + box_w, y)]
        pts.append((boxes[v].x, enter[i]))
        label = None if port == "out" else _place_label(port, pts, placed)
        if label is not None:
            placed.append(label)
        routes.append(Route(u, v, port, tuple(pts), label))
    width = MARGIN * 2 + len(layers) * box_w + max(0, len(layers) - 1) * gap_x
    bottom = max([MARGIN + tallest, *(lb.y + lb.h for lb in placed)])
    return Layout(width, bottom + MARGIN, boxes, tuple(routes))


def _order(layers: list[list[Any]], chains: list[list[Any]]) -> None:
    """Barycenter sweeps over the layers (in place), keeping the order with the fewest crossings."""
    ups: dict[Any, list[Any]] = {}
    downs: dict[Any, list[Any]] = {}
    for chain in chains:
        for a, b in pairwise(chain):
            downs.setdefault(a, []).append(b)
            ups.setdefault(b, []).append(a)
    best = [list(col) for col in layers]
    best_crossings = _crossings(layers, downs)
    for sweep in range(8):
        rng = range(1, len(layers)) if sweep % 2 == 0 else range(len(layers) - 2, -1, -1)
        near = ups if sweep % 2 == 0 else downs
        for i in rng:
            other = layers[i - 1] if sweep % 2 == 0 else layers[i + 1]
            pos = {it: k for k, it in enumerate(other)}
            current = {it: k for k, it in enumerate(layers[i])}

            layers[i].sort(key=partial(_barycenter, pos=pos, current=current, near=near))
        crossings = _crossings(layers, downs)
        if crossings < best_crossings:
            best, best_crossings = [list(col) for col in layers], crossings
    layers[:] = best


def _barycenter(it: Any, pos: dict[Any, int], current: dict[Any, int], near: dict[Any, list[Any]]) -> float:
    """Mean position of `it`'s neighbours in the other layer; its own position when it has none."""
    ks = [pos[n] for n in near.get(it, ()) if n in pos]
    return sum(ks) / len(ks) if ks else float(current[it])


def _crossings(layers: list[list[Any]], downs: dict[Any, list[Any]]) -> int:
    total = 0
    for a, b in pairwise(layers):
        pb = {it: k for k, it in enumerate(b)}
        segs = [(i, pb[t]) for i, it in enumerate(a) for t in downs.get(it, ()) if t in pb]
        total += sum(1 for (a1, b1), (a2, b2) in _pairs(segs) if (a1 - a2) * (b1 - b2) < 0)
    return total


def _pairs(items: list[Any]) -> Any:
    return ((items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items)))


def _place_label(text: str, pts: list[Point], placed: list[Label]) -> Label:
    """The label on the route's runs between layers (even-indexed segments: a box side to the next
    column), at the first spot that overlaps no placed label."""
    w, h = label_width(text), LABEL_H
    gaps = [(pts[k], pts[k + 1]) for k in range(0, len(pts) - 1, 2)]
    for shift in range(0, 40):
        for (x1, y1), (x2, y2) in gaps:
            for t in (0.5, 0.3, 0.7, 0.15, 0.85):
                cx, cy = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
                if cx - w / 2 < x1 + 4 or cx + w / 2 > x2 - 4:
                    continue
                cand = Label(text, cx - w / 2, cy - h - 2 + shift * (h + 2), w, h)
                if not any(_overlap(cand, other) for other in placed):
                    return cand
    (x1, y1), (x2, y2) = gaps[0]
    return Label(text, (x1 + x2 - w) / 2, y1, w, h)  # not reached: 40 rows down there is room


def _overlap(a: Label, b: Label) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h
