"""`validate`'s cycle search (E214) reports the cycle networkx would, without importing networkx."""

from __future__ import annotations

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.compile.validate import _find_cycle


def _both(n: int, edges: list[tuple[int, int]]) -> tuple[list[str] | None, list[str] | None]:
    names = [f"n{i}" for i in range(n)]
    successors: dict[str, list[str]] = {name: [] for name in names}
    dag = nx.DiGraph()
    dag.add_nodes_from(names)
    for u, v in edges:
        a, b = names[u % n], names[v % n]
        if b not in successors[a]:
            successors[a].append(b)
        dag.add_edge(a, b)
    try:
        cycle = nx.find_cycle(dag)
        expected: list[str] | None = [u for u, _ in cycle] + [cycle[0][0]]
    except nx.NetworkXNoCycle:
        expected = None
    return _find_cycle(successors), expected


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 9), st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=20))
def test_same_cycle_as_networkx(n: int, edges: list[tuple[int, int]]) -> None:
    ours, expected = _both(n, edges)
    assert ours == expected


def test_examples() -> None:
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert _find_cycle({"a": ["a"]}) == ["a", "a"]
    # entered at `a`, the cycle found is b -> c -> d -> b (a is not on it)
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["d"], "d": ["b"]}) == ["b", "c", "d", "b"]
    # a long chain does not hit the recursion limit
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(5000)} | {"n5000": ["n0"]}
    found = _find_cycle(chain)
    assert found is not None and len(found) == 5002 and found[0] == found[-1] == "n0"
