"""Test file -> checked `TestFile`, or every problem at once with line:col (pure: no asyncio, no I/O
beyond reading the test file and its graph).

A test file (`*.test.yaml`, docs/testing.md) names a graph and lists cases: input messages per
source, stubs for lookups, a fixed clock, and expectations per sink or `node.port` and on dead
letters. It is read with the graph's own machinery (engine.spec.source_map for positions, pydantic
models with `extra="forbid"`, `Diagnostic` for output), so its errors read like a graph's:
`graphs/tests/orders.test.yaml:12:9: E402 cases[0].inputs.reed: no source 'reed' in the graph
(did you mean 'read'?)`. The graph's own errors are reported at their place in the graph file.

Codes (each has a test in tests/testing/test_spec.py):

E001-E005 YAML (as for a graph)    E100 unknown field    E101 wrong type or value    E102 missing field
E401 the graph file does not load (its own diagnostics follow)
E402 inputs name a node that is not a source of the graph
E403 an expectation names an unknown node, or a port the node does not have
E404 a stub names a node that is not a lookup (pg_lookup, redis_lookup)
E405 a CEL condition (`each`) does not compile
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine import registry
from engine.compile.diagnostics import Diagnostic
from engine.compile.validate import Graph, _Checker, _read_text, check_file
from engine.expr import CelError, compile_expr
from engine.limits import Limits
from engine.spec.source_map import Loaded, YamlError, load_yaml

__all__ = ["LOOKUPS", "Case", "DeadLetter", "Expectation", "InputMessage", "TestFile", "TestFileSpec", "check_test_file"]

LOOKUPS = ("pg_lookup", "redis_lookup")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputMessage(_Model):
    """One message a source emits: a body (any JSON value) with optional meta, or a raw line that
    the source decodes as JSON (a line that is not JSON goes to the source's errors port)."""

    body: Any = Field(None, description="The message body.")
    meta: dict[str, Any] = Field(default_factory=dict, description="The message's meta (subject, key, line...).")
    raw: str | None = Field(None, description="Text decoded as JSON by the source, instead of `body`.")

    @model_validator(mode="after")
    def _one_body(self) -> InputMessage:
        if self.raw is not None and self.body is not None:
            raise ValueError("give `body` or `raw`, not both")
        return self


class Expectation(_Model):
    """What one sink (or one `node.port`) must have received, in one case."""

    bodies: list[Any] | None = Field(None, description="Exactly these bodies (and no others).")
    ordered: bool = Field(True, description="Whether `bodies` must arrive in this order.")
    count: int | None = Field(None, ge=0, description="Exactly this many messages.")
    each: str | None = Field(None, description="A CEL condition every message must meet (`msg`, `meta`).")
    contains: Any = Field(None, description="Every body contains this (JSON subset: an object's fields, recursively).")
    meta: dict[str, Any] | None = Field(None, description="Every message's meta has these keys with these values.")


class DeadLetter(_Model):
    """One expected dead letter: the node that failed it and (a substring of) its reason."""

    node: str | None = Field(None, description="The node whose errors port it left from.")
    reason: str | None = Field(None, description="A substring of the reason.")
    payload: Any = Field(None, description="The original body, when given.")


class Case(_Model):
    name: str = Field(description="Shown in the report.")
    clock: float | None = Field(None, description="Fixed time (epoch seconds) for every node's clock.")
    inputs: dict[str, list[InputMessage]] = Field(default_factory=dict, description="Source id -> its messages.")
    stubs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Lookup node id -> key -> the value found (a key not listed is a miss).")
    expect: dict[str, Expectation] = Field(default_factory=dict, description="Sink id or `node.port` -> expectation.")
    dead_letters: list[DeadLetter] | None = Field(
        None, description="Exactly these dead letters (in any order); unset: none is expected.")
    timeout: float = Field(10.0, gt=0, description="Seconds the case may run.")


class TestFileSpec(_Model):
    graph: str = Field(description="The graph file, relative to this test file.")
    set: list[str] = Field(default_factory=list, description="Overrides, as `streamdag run --set`.")
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class TestFile:
    path: str
    spec: TestFileSpec
    graph: Graph
    loaded: Loaded  # positions of every key, for the report

    def line(self, *where: str | int) -> int:
        return self.loaded.pos(tuple(where)).line


def check_test_file(path: str) -> tuple[TestFile | None, list[Diagnostic]]:
    """The checked test file (None when it has errors) and every diagnostic, sorted."""
    try:
        text = _read_text(path, Limits.from_env().graph_bytes)
        loaded = load_yaml(text)
    except OSError as exc:
        return None, [Diagnostic(1, 1, "E001", f"cannot read test file: {exc.strerror}", path)]
    except YamlError as exc:
        return None, [Diagnostic(exc.line, exc.col, exc.code, exc.message, path)]
    c = _Checker(path, loaded)
    for dpath, pos in loaded.duplicates:
        c.add(dpath, "E002", f"duplicate key '{dpath[-1]}'", pos=pos)
    try:
        spec = TestFileSpec.model_validate(loaded.data)
    except ValidationError as exc:
        if not isinstance(loaded.data, dict):
            c.add((), "E101", "a test file is a mapping with graph and cases")
        else:
            c.pydantic_errors(exc, (), loaded.data, TestFileSpec)
        return None, sorted(c.diags)
    graph_path = os.path.join(os.path.dirname(path), spec.graph)
    graph, graph_diags = check_file(graph_path, overrides=spec.set)
    if graph is None:
        c.add(("graph",), "E401", f"graph: {spec.graph} does not load (its errors follow)", value=True)
        return None, sorted(c.diags) + [d for d in graph_diags if d.severity == "error"]
    for i, case in enumerate(spec.cases):
        _check_case(c, graph, i, case)
    errors = [d for d in c.diags if d.severity == "error"]
    return (None if errors else TestFile(path, spec, graph, loaded)), sorted(c.diags)


def _check_case(c: _Checker, graph: Graph, i: int, case: Case) -> None:
    nodes = graph.nodes
    base: tuple[str | int, ...] = ("cases", i)
    sources = [n for n, rn in nodes.items() if rn.kind == "source"]
    for name in case.inputs:
        if name not in sources:
            hint = registry.closest(name, sources)
            c.add((*base, "inputs", name), "E402", f"cases[{i}].inputs.{name}: no source '{name}' in the graph"
                  + (f" (did you mean '{hint}'?)" if hint else f" (sources: {', '.join(sources)})"))
    lookups = [n for n, rn in nodes.items() if rn.type in LOOKUPS]
    for name in case.stubs:
        if name not in lookups:
            c.add((*base, "stubs", name), "E404", f"cases[{i}].stubs.{name}: not a lookup node of the graph "
                  f"({', '.join(LOOKUPS)}" + (f": {', '.join(lookups)})" if lookups else "; the graph has none)"))
    for target, exp in case.expect.items():
        problem = target_problem(graph, target)
        if problem:
            c.add((*base, "expect", target), "E403", f"cases[{i}].expect.{target}: {problem}")
        if exp.each is not None:
            try:
                compile_expr(exp.each)
            except CelError as exc:
                c.add((*base, "expect", target, "each"), "E405", f"cases[{i}].expect.{target}.each: CEL: {exc.message}",
                      value=True)
    for j, dl in enumerate(case.dead_letters or ()):
        if dl.node is not None and dl.node not in nodes:
            c.add((*base, "dead_letters", j, "node"), "E403", f"cases[{i}].dead_letters[{j}].node: unknown node "
                  f"'{dl.node}'", value=True)


def split_target(graph: Graph, target: str) -> tuple[str, str | None]:
    """`sink` -> (sink, None): what it committed; `node` -> (node, 'out'); `node.port` -> as written."""
    node, _, port = target.partition(".")
    rn = graph.nodes.get(node)
    if not port:
        return node, None if rn is not None and rn.kind == "sink" else "out"
    return node, port


def target_problem(graph: Graph, target: str) -> str | None:
    node, port = split_target(graph, target)
    rn = graph.nodes.get(node)
    if rn is None:
        hint = registry.closest(node, list(graph.nodes))
        return f"unknown node '{node}'" + (f" (did you mean '{hint}'?)" if hint else "")
    if port is not None and port not in rn.ports:
        hint = registry.closest(port, list(rn.ports))
        return f"node '{node}' has no port '{port}' (ports: {', '.join(rn.ports) or 'none'})" + (
            f"; did you mean '{hint}'?" if hint else "")
    return None
