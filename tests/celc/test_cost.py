"""CEL cost limits: the offline estimate (E204) and the run-time budget, compiled and on the runtime.

The hostile expression is issue 14's: ten nested maps over a ten-element literal list (10**10
elements), which passed `validate` and grew past 5 GB on one message.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.celc import try_compile, try_compile_batch
from engine.celc.cost import estimate, largest_size, max_assumed_size
from engine.compile.validate import check_text
from engine.expr import EvalError, compile_expr
from tests.bounded import run_cli_bounded

TEN = "[0,1,2,3,4,5,6,7,8,9]"
NESTED = "".join(f"{TEN}.map({v}, " for v in "abcdefghij") + "j" + ")" * 10  # 10**10 elements


def nested(depth: int, body: str, kind: str = "map") -> str:
    return "".join(f"{TEN}.{kind}(v{i}, " for i in range(depth)) + body + ")" * depth


# -- the estimate -------------------------------------------------------------------------------

def test_estimate_multiplies_nested_comprehensions_by_their_range() -> None:
    assert estimate(NESTED, 100) > 10**10
    one, two = estimate(nested(1, "1"), 100), estimate(nested(2, "1"), 100)
    assert 10 <= one < 100 and 10 * one <= two < 100 * one


def test_unknown_sizes_take_the_assumed_size() -> None:
    src = "msg.items.map(i, msg.items.map(j, j))"
    small, big = estimate(src, 10), estimate(src, 100)
    assert 100 <= small < 1000 and 10_000 <= big < 100_000  # quadratic in the assumed size
    assert estimate("msg.items.exists(i, i.price > 2.0)", 100) < 1000  # linear


@pytest.mark.parametrize("src", [
    "msg.a + msg.b",  # a concatenation costs the size it builds
    "'x' in msg.tags",  # a search costs the size searched
    "msg.a == msg.b",
])
def test_operations_on_unknown_values_cost_their_size(src: str) -> None:
    assert estimate(src, 1000) >= 1000 > 10 * estimate(src, 10)


def test_size_costs_the_same_whatever_the_size() -> None:
    assert estimate("size(msg.items)", 1000) == estimate("size(msg.items)", 10) < 5


def test_map_results_carry_their_size_into_an_outer_comprehension() -> None:
    # the inner map builds a 10-element list; iterating it costs 10 steps a time
    assert estimate(f"{TEN}.map(x, {TEN}).map(l, l.map(y, y))", 1) > 100


def test_unparsed_syntax_gets_a_crude_bound_by_counting_macros() -> None:
    src = ".msg.items.map(a, .msg.items.map(b, .msg.items.map(c, c)))"  # leading dots: the compiler declines
    assert estimate(src, 100) >= 100**3


def test_max_assumed_size_is_the_largest_size_within_the_bound() -> None:
    src = "msg.items.map(i, msg.items.map(j, j))"
    most = max_assumed_size(src, 10**6)
    assert estimate(src, most) <= 10**6 < estimate(src, most + 1)
    assert max_assumed_size("size(msg.a) + 1", 10**6) >= 2**40  # no size reaches the bound
    assert max_assumed_size(NESTED, 10**6) == -1  # too dear whatever the message


def test_largest_size_walks_the_message() -> None:
    msg = {"a": [1, {"b": "x" * 50}], "k" * 7: 1}
    assert largest_size(msg, 1000) == 50
    assert largest_size(msg, 10) > 10  # stops at the first one above


# -- E204 offline -------------------------------------------------------------------------------

GRAPH = """\
version: 1
name: cost
defaults: {{dead_letter: dead}}
nodes:
  read: {{type: file_source, config: {{path: in.ndjson}}}}
  blow:
    type: map
    inputs: [read]
    config: {{expr: "{expr}"}}
  out: {{type: file_sink, inputs: [blow], config: {{path: out.ndjson}}}}
  dead: {{type: file_sink, inputs: [read.errors], config: {{path: dead.ndjson}}}}
"""


def test_e204_names_the_estimate_the_bound_and_the_position() -> None:
    start = time.perf_counter()
    graph, diags = check_text(GRAPH.format(expr=NESTED), "g.yaml")
    assert time.perf_counter() - start < 5
    assert graph is None
    (d,) = [d for d in diags if d.code == "E204"]
    assert (d.line, d.col) == (9, 21)  # the expression's first character, inside the quotes
    assert "cost estimate" in d.message and "1,000,000" in d.message and "limit cel_cost" in d.message
    assert f"{estimate(NESTED, 100):,}" in d.message


def test_e204_bound_and_assumed_size_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    src = "msg.items.map(i, msg.items.map(j, msg.items.map(k, k)))"  # ~2 * 10**6 at size 100
    assert [d.code for d in check_text(GRAPH.format(expr=src), "g.yaml")[1]] == ["E204"]
    monkeypatch.setenv("STREAMDAG_LIMIT_CEL_COST", "10000000")
    assert check_text(GRAPH.format(expr=src), "g.yaml")[1] == []
    monkeypatch.setenv("STREAMDAG_LIMIT_CEL_ASSUMED_SIZE", "1000")
    assert [d.code for d in check_text(GRAPH.format(expr=src), "g.yaml")[1]] == ["E204"]


# -- the run-time budget ------------------------------------------------------------------------

def test_compiled_budget_stops_the_nested_maps_with_an_eval_error() -> None:
    fn = try_compile(NESTED)
    assert fn is not None
    start = time.perf_counter()
    with pytest.raises(EvalError, match="cost limit.*limit cel_iterations"):
        fn({}, {})
    assert time.perf_counter() - start < 5


def test_whole_batch_paths_give_each_message_its_error() -> None:
    batch = try_compile_batch(NESTED)
    assert batch is not None
    got = batch([{}, {}], [{}, {}])
    assert [type(g) for g in got] == [EvalError, EvalError] and "cost limit" in str(got[0])
    expr = compile_expr(NESTED)

    class M:
        def __init__(self) -> None:
            self.body: Any = {}
            self.meta: Any = {}

    assert expr.compiled and expr.many([M(), M()]) is None  # the caller then goes one by one


def test_a_filter_over_budget_defers_the_strict_batch_to_one_by_one() -> None:
    src = "msg.items.exists(i, msg.items.exists(j, i + j < 0))"
    expr = compile_expr(src, boolean=True)

    class M:
        def __init__(self, n: int):
            self.body: dict[str, Any] = {"items": list(range(n))}
            self.meta: dict[str, Any] = {}

    assert expr.many([M(10), M(10)]) == [False, False]
    assert expr.many([M(10), M(2000)]) is None  # 2000 * 2000 iterations: the big one fails alone
    assert expr.fn({"items": list(range(10))}, {}) is False
    with pytest.raises(EvalError, match="cost limit"):
        expr.fn({"items": list(range(2000))}, {})


def test_under_the_budget_results_are_the_runtimes() -> None:
    src = "msg.items.map(i, msg.items.map(j, i * j))"
    body = {"items": list(range(30))}
    want = compile_expr(src, allow_compiler=False).fn(body, {})
    assert compile_expr(src).fn(body, {}) == want == [[i * j for j in range(30)] for i in range(30)]


def test_the_budget_error_is_not_absorbed_by_logic(monkeypatch: pytest.MonkeyPatch) -> None:
    # CEL absorbs an error in `e || true`; a cut-short evaluation must not produce a value
    monkeypatch.setenv("STREAMDAG_LIMIT_CEL_ITERATIONS", "1000")
    src = f"{nested(4, 'false', 'exists')} || true"
    fn = try_compile(src)
    assert fn is not None
    with pytest.raises(EvalError, match="cost limit"):
        fn({}, {})
    monkeypatch.setenv("STREAMDAG_LIMIT_CEL_ITERATIONS", "20000")
    fn = try_compile(src)
    assert fn is not None and fn({}, {}) is True


def test_a_concatenation_in_a_loop_is_charged_and_capped() -> None:
    src = "msg.items.map(x, msg.s + msg.s)"
    fn = try_compile(src)
    assert fn is not None
    assert fn({"items": [1, 2], "s": "ab"}, {}) == ["abab", "abab"]
    with pytest.raises(EvalError, match="limit cel_value_size"):
        fn({"items": [1], "s": "x" * 600_000}, {})
    with pytest.raises(EvalError, match="limit cel_iterations"):  # 1000 copies of 2000 characters
        fn({"items": list(range(1000)), "s": "x" * 1000}, {})


def test_a_search_in_a_loop_is_charged_its_size() -> None:
    fn = try_compile("msg.items.exists(i, i in msg.big)")
    assert fn is not None
    assert fn({"items": [5, 6], "big": list(range(10))}, {}) is True
    with pytest.raises(EvalError, match="limit cel_iterations"):  # 1000 searches of 2000 elements
        fn({"items": list(range(-1000, 0)), "big": list(range(2000))}, {})


def test_an_outermost_comprehension_is_not_charged_and_generates_the_code_it_did() -> None:
    from engine.celc import python_source

    src = "msg.items.exists(i, i.price > 2.0)"
    assert "_t0" not in python_source(src)  # the hot path: no budget variable at all
    fn = try_compile("msg.items.exists(x, x < 0)")
    assert fn is not None and fn({"items": list(range(2_000_000))}, {}) is False  # linear in the message
    assert "_t0" in python_source(nested(2, "v1"))


def test_runtime_guards_only_expressions_with_comprehensions() -> None:
    from engine.celc.cost import has_loops

    assert not has_loops("msg.a + msg.b == 'x' ? [msg.c] : {'k': msg.d}")
    assert has_loops("[msg.a].exists(x, x)") and has_loops(".msg.a")  # unread syntax: maybe
    flat = compile_expr("msg.a + 1", allow_compiler=False)
    assert flat.fn({"a": 1, "big": list(range(2_000_000))}, {}) == 2


def test_runtime_refuses_before_evaluating_and_its_own_budget_is_an_eval_error() -> None:
    expr = compile_expr(NESTED, allow_compiler=False)
    assert not expr.compiled
    start = time.perf_counter()
    with pytest.raises(EvalError, match="cost limit"):
        expr.fn({}, {})
    assert time.perf_counter() - start < 1
    cubic = compile_expr("msg.items.map(a, msg.items.map(b, msg.items.map(c, c)))", allow_compiler=False)
    assert cubic.fn({"items": [1, 2]}, {}) == [[[1, 2]] * 2] * 2
    with pytest.raises(EvalError, match="cost limit.*200 elements"):
        cubic.fn({"items": list(range(200))}, {})
    with pytest.raises(EvalError, match="Iteration budget exceeded"):  # cel-expr-python's fixed 10,000
        cubic.fn({"items": list(range(30))}, {})


def test_run_with_the_offline_check_raised_sends_the_message_to_errors(tmp_path: Path) -> None:
    """End to end, bounded: the map's message goes to the dead-letter file with the reason."""
    (tmp_path / "in.ndjson").write_bytes(b'{"n": 1}\n{"n": 2}\n')
    graph = tmp_path / "g.yaml"
    graph.write_text(GRAPH.format(expr=NESTED).replace("[read.errors]", "[read.errors, blow.errors]"))
    code, out, seconds, rss = run_cli_bounded(["--limit", f"cel_cost={10**30}", "run", "-q", str(graph)])
    assert code == 0, out  # the graph ran to the end; only the messages failed
    dead = [orjson.loads(line) for line in (tmp_path / "dead.ndjson").read_bytes().splitlines()]
    assert [(d["node"], d["payload"]) for d in dead] == [("blow", {"n": 1}), ("blow", {"n": 2})]
    assert all("cost limit" in d["error"] for d in dead), dead
    assert seconds < 20 and rss < 300 * 1024, (seconds, rss)
