"""Every diagnostic code has an invalid-graph fixture whose first line says where it is reported.

A fixture in tests/fixtures/invalid/ starts with `# expect: CODE at LINE:COL`; the checker must report
that code at exactly that position (other diagnostics may come with it, as they would for a user).
`# expect: CODE at LINE:COL with --workers N` checks it as `run --workers N` does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import Field

from engine import registry
from engine.api import NodeConfig, Sink, Source
from engine.compile import diagnostics
from engine.compile.validate import check_file, check_text
from engine.message import Msg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "invalid"
EXPECT = re.compile(r"^# expect: ([EW]\d{3}) at (\d+):(\d+)(?: with --workers (\d+))?\s*$")
# E230+ are connector-specific and tested with each connector (not listed one by one in diagnostics.py).
# test-file codes (engine/testing/spec.py): each has its case in tests/testing/test_spec.py instead
NOT_HERE: set[str] = {"E401", "E402", "E403", "E404", "E405"}


class _ConnSinkConfig(NodeConfig):
    connection: str = Field(description="A redis connection.")


class ConnSink(Sink):
    """A sink that names a redis connection, so E215/E216 can be shown without a real connector."""

    Config = _ConnSinkConfig
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)

    async def write(self, batch: list[Msg]) -> None:
        raise AssertionError("offline checks only")


registry.register("ops_conn_sink", ConnSink)


class PlainSource(Source):
    """A source that does not say how workers share it (`shared_by` unset): E261 under --workers."""

    async def run(self, out: Any) -> None:
        raise AssertionError("offline checks only")


registry.register("ops_plain_source", PlainSource)


def _fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.yaml"))


def _expected(path: Path) -> tuple[str, int, int]:
    return _expectation(path)[:3]


def _expectation(path: Path) -> tuple[str, int, int, int]:
    first = path.read_text().splitlines()[0]
    m = EXPECT.match(first)
    assert m, f"{path.name}: first line must be '# expect: CODE at LINE:COL', got {first!r}"
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4) or 1)


LIMITS = re.compile(r"^# limits: (.*)$")


@pytest.mark.parametrize("path", _fixtures(), ids=[p.stem for p in _fixtures()])
def test_fixture_reports_its_code_at_its_position(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second line `# limits: name=value ...` lowers limits for that fixture (keeps E003 small)."""
    code, line, col, workers = _expectation(path)
    m = LIMITS.match(path.read_text().splitlines()[1])
    for assignment in m.group(1).split() if m else ():
        name, _, value = assignment.partition("=")
        monkeypatch.setenv(f"STREAMDAG_LIMIT_{name.upper()}", value)
    graph, diags = check_file(str(path), env={}, workers=workers)
    found = [(d.code, d.line, d.col) for d in diags]
    assert (code, line, col) in found, "\n".join(d.format() for d in diags)
    if code.startswith("E"):
        assert graph is None
        # each fixture shows one problem: no other error comes with it (warnings may)
        assert {d.code for d in diags if d.severity == "error"} == {code}, "\n".join(
            d.format() for d in diags
        )
    else:  # a warning alone leaves the graph runnable
        assert graph is not None and [d.code for d in diags] == [code]
    assert diags == sorted(diags)
    assert all(d.file == str(path) and d.message for d in diags)


def _codes_in_source() -> set[str]:
    """Codes the checker and node types emit: every `"E123"`/`"W123"` literal in engine/ and operators/."""
    root = FIXTURES.parents[2]
    found: set[str] = set()
    for folder in ("engine", "operators"):
        for path in (root / folder).rglob("*.py"):
            found.update(re.findall(r"[\"']([EW]\d{3})[\"']", path.read_text(encoding="utf-8")))
    return found


def test_every_code_in_the_source_has_a_fixture() -> None:
    """Connector codes (E230+, E8xx, W3xx...) too: a node type that adds a code adds its fixture."""
    codes = _codes_in_source() - NOT_HERE
    covered = {_expected(p)[0] for p in _fixtures()}
    assert len(codes) > 20
    assert codes - covered == set(), f"codes without a fixture in {FIXTURES}: {sorted(codes - covered)}"


def test_every_code_has_a_fixture() -> None:
    documented = set(re.findall(r"^([EW]\d{3}) |\s{2,}([EW]\d{3}) ", diagnostics.__doc__ or "", re.MULTILINE))
    codes = {c for pair in documented for c in pair if c} - NOT_HERE
    covered = {_expected(p)[0] for p in _fixtures()}
    assert codes, "no codes found in engine/compile/diagnostics.py"
    assert codes - covered == set(), f"codes without a fixture: {sorted(codes - covered)}"


MANY = """\
version: 1
name: many
defaults: {dead_letter: out}
nodes:
  gen: {type: generate, config: {count: -1}}
  price:
    type: map
    inputs: [gen, ghost]
    config: {expr: 'msg.i *'}
  split:
    type: route
    inputs: [price]
    config: {routes: {a: 'true'}, mode: any}
  out: {type: stdout, inputs: [price.nope, split]}
  zz: {type: generat}
"""


def test_several_errors_are_all_reported_sorted_by_position() -> None:
    graph, diags = check_text(MANY, "many.yaml")
    assert graph is None
    got = [(d.line, d.col, d.code) for d in diags]
    assert got == [
        (5, 41, "E202"),  # generate count: -1
        (8, 19, "E210"),  # unknown input node 'ghost'
        (9, 28, "E203"),  # CEL ends after '*'
        (13, 41, "E202"),  # route mode 'any'
        (14, 32, "E211"),  # no port 'nope' on price
        (15, 14, "E200"),  # type 'generat'
    ], "\n".join(d.format() for d in diags)
    assert got == sorted(got)
    assert "did you mean 'generate'" in diags[-1].message and "unknown node 'ghost'" in diags[1].message
