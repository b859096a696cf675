"""The execution plan: every edge explicit, inline chains, channel writers, frozen."""

from __future__ import annotations

import dataclasses

import networkx as nx
import pytest

from engine.compile.plan import Edge, build_plan
from engine.compile.render import to_networkx
from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner

GRAPH = """
    version: 1
    name: planned
    defaults: {dead_letter: dead}
    nodes:
      src: {type: generate, config: {count: 10}}
      keep: {type: filter, inputs: [src], config: {expr: 'msg.i % 2 == 0'}}
      shape: {type: map, inputs: [keep], config: {expr: '{"i": msg.i}'}}
      split: {type: route, inputs: [shape], config: {routes: {low: 'msg.i < 5', high: 'true'}}}
      low: {type: file_sink, inputs: [split.low], config: {path: low.ndjson}}
      high: {type: file_sink, inputs: [split.high, shape.errors], config: {path: high.ndjson}}
      dead: {type: file_sink, config: {path: dead.ndjson}, inputs: [low.errors]}
"""


@pytest.fixture
def plan(write_graph):
    return build_plan(load_graph(str(write_graph(GRAPH))))


def test_every_edge_is_explicit_dead_letter_edges_included(plan) -> None:
    written = {Edge("src", "out", "keep"), Edge("keep", "out", "shape"), Edge("shape", "out", "split"),
               Edge("split", "low", "low"), Edge("split", "high", "high"), Edge("shape", "errors", "high"),
               Edge("low", "errors", "dead")}
    assert {e for e in plan.edges if not e.implicit} == written
    # every node whose errors port the file leaves unwired gets an implicit edge to defaults.dead_letter
    implicit = {(e.source, e.target) for e in plan.edges if e.implicit}
    assert implicit == {("src", "dead"), ("keep", "dead"), ("split", "dead"), ("high", "dead")}
    assert all(e.port == "errors" for e in plan.edges if e.implicit)
    assert plan.targets("shape", "errors") == ("high",) and plan.targets("src", "errors") == ("dead",)


def test_channel_writers_count_explicit_and_implicit_edges(plan) -> None:
    # dead: low.errors (written) + src, keep, split, high (implicit); high: split.high + shape.errors
    assert plan.writers["dead"] == 5 and plan.writers["high"] == 2 and plan.writers["low"] == 1
    assert "src" not in plan.writers


def test_inline_chains_run_in_their_first_upstreams_task(plan) -> None:
    # keep -> shape are inline (sole consumers of one input); split is fed by shape alone too, but
    # shape's errors go to `high`, which does not make split any less the sole consumer of shape.out
    assert plan.inline == {"keep": "src", "shape": "src", "split": "src"}
    # src's task writes the channels of everything its inline chain feeds, once per edge
    assert sorted(plan.closes["src"]) == sorted(["low", "high", "high", "dead", "dead", "dead"])
    assert "keep" not in plan.closes and sorted(plan.closes["high"]) == ["dead"]


def test_start_order_is_sinks_then_operators_then_sources(plan) -> None:
    kinds = [plan.nodes[n].kind for n in plan.start_order]
    assert kinds == sorted(kinds, key=["sink", "operator", "source"].index)


def test_the_plan_is_frozen(plan) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.edges = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.routes[("x", "out")] = ("y",)  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.writers["dead"] = 1  # type: ignore[index]
    with pytest.raises(nx.NetworkXError):
        plan.dag.add_edge("a", "b")


def test_the_picture_and_the_runner_read_the_same_plan(plan) -> None:
    g = to_networkx(plan)
    assert g is plan.dag
    assert {(u, v, d["port"], d["implicit"]) for u, v, d in g.edges(data=True)} == {
        (e.source, e.target, e.port, e.implicit) for e in plan.edges}
    runner = Runner(plan)
    assert runner.plan is plan and runner.routes is plan.routes
    assert set(runner.inline) == set(plan.inline) and set(runner.channels) == {"low", "high", "dead"}
    assert runner.channels["dead"]._writers == 5


def test_a_multi_consumer_or_a_timer_keeps_an_operator_off_the_inline_path(write_graph) -> None:
    plan = build_plan(load_graph(str(write_graph("""
        version: 1
        name: notinline
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {count: 10}}
          a: {type: map, inputs: [src], config: {expr: 'msg'}}
          b: {type: map, inputs: [src], config: {expr: 'msg'}}
          w: {type: window, inputs: [a], config: {kind: tumbling, size: 1s, aggregates: {n: {op: count}}}}
          out: {type: drop, inputs: [b, w]}
          dead: {type: drop, inputs: [out.errors]}
    """))))
    assert "a" not in plan.inline and "b" not in plan.inline and "w" not in plan.inline


def test_sinks_fed_by_errors_edges_alone_or_with_other_edges(plan) -> None:
    """`dead` takes only errors edges (its own, and the implicit ones of defaults.dead_letter): every commit
    there is a dead letter. `high` takes `split.high` and `shape.errors`: each message counts by its edge."""
    assert plan.dead_letter_sinks == frozenset({"dead"})
    assert plan.mixed_sinks == frozenset({"high"})


JSON_GRAPH = """
    version: 1
    name: json_inputs
    connections:
      nats: {type: nats, url: "nats://127.0.0.1:4222", streams: {S: {subjects: ["s.>"]}}}
    defaults: {dead_letter: dead}
    nodes:
      read: {type: file_source, config: {path: in.ndjson}}
      keep: {type: filter, inputs: [read], config: {expr: 'msg.a > 1'}}
      split: {type: route, inputs: [keep], config: {routes: {x: 'msg.a > 2', y: 'true'}}}
      first: {type: map, inputs: [split.x], config: {expr: '{"a": msg.a}'}}
      second: {type: map, inputs: [first], config: {expr: 'msg.a'}}
      slow: {type: rate_limit, inputs: [split.y], config: {rate: 1000}}
      after_slow: {type: map, inputs: [slow], config: {expr: 'msg.a'}}
      gen: {type: generate, config: {count: 3}}
      from_gen: {type: map, inputs: [gen], config: {expr: 'msg.i'}}
      mixed: {type: map, inputs: [keep, gen], config: {expr: 'msg'}}
      from_errors: {type: map, inputs: [read.errors], config: {expr: 'msg'}}
      raw: {type: jetstream_source, config: {connection: nats, stream: S, durable: d1, codec: bytes}}
      from_raw: {type: filter, inputs: [raw], config: {expr: 'true'}}
      text: {type: jetstream_source, config: {connection: nats, stream: S, durable: d2, codec: text}}
      from_text: {type: filter, inputs: [text], config: {expr: 'true'}}
      mapped_filter: {type: filter, inputs: [second], config: {expr: 'true'}}
      out: {type: file_sink, inputs: [after_slow, from_gen, mixed, from_errors, from_raw, from_text, mapped_filter],
            config: {path: out.ndjson}}
      direct: {type: file_sink, inputs: [read], config: {path: direct.ndjson}}
      dead: {type: file_sink, config: {path: dead.ndjson}}
"""


def test_json_inputs_follow_json_sources_through_body_preserving_operators(write_graph) -> None:
    plan = build_plan(load_graph(str(write_graph(JSON_GRAPH))))
    # file_source -> filter -> route -> map / rate_limit -> map: JSON bodies all the way; a text codec is str
    assert plan.json_inputs == {"keep", "split", "first", "slow", "after_slow", "direct", "from_text"}
    # not: a map after a map, anything after it; a generate source; a node one of whose inputs is not
    # JSON; an errors port; a bytes codec; a sink fed by maps; the dead letters
    for n in ("second", "mapped_filter", "from_gen", "mixed", "from_errors", "from_raw", "out", "dead"):
        assert n not in plan.json_inputs, n
    runner = Runner(plan)  # what a node sees of it
    assert runner.nodes["first"].ctx.json_bodies and not runner.nodes["second"].ctx.json_bodies
    # ... and which compiled variant its map picks: the unchecked one hands a copied list on as it is
    # (no conversion to plain values, which copies a container), the checked one converts
    from engine.message import Msg

    body = {"a": [1, 2]}
    [unchecked] = runner.nodes["first"].expr.many([Msg(body, {})])
    [checked] = runner.nodes["second"].expr.many([Msg(body, {})])
    assert unchecked == {"a": [1, 2]} and unchecked["a"] is body["a"]
    assert checked == [1, 2] and checked is not body["a"]
