"""`engine.spec` and `engine.compile` import no asyncio and no client library (issue 20).

Validating a graph needs its node types' config models, so it imports their modules: those too
must leave asyncio and the client libraries to the functions that run a graph. Each check runs
in a fresh interpreter, since this test process has all of them loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "graphs").glob("*.yaml"))

# What `validate` must never load: the event loop and the clients of the services.
FORBIDDEN = ("asyncio", "redis", "nats", "asyncpg", "uvloop", "aiohttp")
# What it need not load either, and each costs a large part of the start-up budget
# (benchmarks/bench_startup.py): graph algorithms, metrics, terminal rendering.
SLOW = ("networkx", "prometheus_client", "rich")

_CHILD = """
import contextlib, io, json, sys
WATCH = {watch!r}

def loaded():
    return sorted({{m.partition(".")[0] for m in sys.modules}} & set(WATCH))

{body}
"""


def _child(body: str, watch: tuple[str, ...] = FORBIDDEN + SLOW) -> object:
    """Run `body` in a fresh interpreter; it prints one JSON value as its last line."""
    code = _CHILD.format(watch=watch, body=body)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_validating_every_graph_loads_no_asyncio_and_no_client() -> None:
    """`streamdag validate` of each file in graphs/, one after the other in one process: after each,
    what it has loaded so far (the first graph to load a module is the one named)."""
    assert len(GRAPHS) >= 5
    report = _child(f"""
from engine.cli import main
after = {{}}
for path in {GRAPHS!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = main(["validate", path])
    after[path] = [status, out.getvalue().strip(), loaded()]
print(json.dumps(after))
""")
    assert isinstance(report, dict)
    for path in GRAPHS:
        status, output, modules = report[path]
        assert status == 0 and f"{path}: ok" in output, (path, output)
        assert not set(modules) & set(FORBIDDEN), f"validating {path} imported {modules}"
        assert not set(modules) & set(SLOW), f"validating {path} imported {modules}: see bench_startup.py"


@pytest.mark.parametrize("command", [["schema"], ["graph", "graphs/orders.yaml"]])
def test_every_node_type_loads_without_asyncio(command: list[str]) -> None:
    """Every registered node type's class (what `validate` and `schema` load), with no client library."""
    report = _child(f"""
from engine import registry
from engine.cli import main
types = registry.names(installed_only=True)
for name in types:
    assert registry.load(name) is not None, name
with contextlib.redirect_stdout(io.StringIO()):
    status = main({command!r})
print(json.dumps([status, len(types), loaded()]))
""", watch=FORBIDDEN)
    assert isinstance(report, list)
    status, count, modules = report
    assert status == 0
    assert count >= 25  # every type in pyproject.toml, not an empty registry
    assert modules == []


def test_the_check_sees_what_run_loads() -> None:
    """The same check does see the runtime's imports (it is not vacuous)."""
    modules = _child("import engine.runtime.scheduler\nprint(json.dumps(loaded()))")
    assert "asyncio" in modules  # type: ignore[operator]


def test_validating_the_example_graphs_loads_no_cel_runtime() -> None:
    """Their CEL is of the kinds `validate` types itself (engine/compile/celcheck.py): the CEL runtime
    (cel-expr-python, protobuf) is not loaded. Graphs with a node inside a node (`parallel`,
    `circuit_breaker`) are left out: those node types check their inner node's CEL themselves."""
    graphs = [g for g in GRAPHS if not any(f"type: {t}" in (ROOT / g).read_text() for t in ("parallel", "circuit_breaker"))]
    assert len(graphs) >= 5 and "graphs/demo.yaml" in graphs
    report = _child(f"""
from engine.cli import main
after = {{}}
for path in {graphs!r}:
    with contextlib.redirect_stdout(io.StringIO()):
        after[path] = [main(["validate", path]), loaded()]
print(json.dumps(after))
""", watch=("cel_expr_python", "google"))
    assert report == {g: [0, []] for g in graphs}
