"""`streamdag docs`: the committed reference pages are what it generates, and every example works.

Each page comes from its node type (config model, ports, delivery, `example`), so a test that
regenerates them catches a field added without its page; each example validates with no
diagnostic at all, and those that need no service run to completion, every message accounted for.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from engine import registry
from engine.cli import main
from engine.compile.docs import node_pages
from engine.compile.validate import check_text
from tests.conftest import run_graph

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "nodes"
TYPES = registry.names(installed_only=True)
# finite and service-free: run for real below
RUNNABLE = ["batch", "compress", "decompress", "drop", "file_sink", "file_source", "filter", "generate", "map",
            "rate_limit", "route", "stdout", "validate", "window"]


def test_committed_pages_are_what_streamdag_docs_generates() -> None:
    pages = node_pages()
    assert set(pages) == {f"{t}.md" for t in TYPES} | {"README.md"}
    committed = {p.name for p in PAGES.glob("*.md")}
    assert committed == set(pages), "stale or missing pages: run `streamdag docs`"
    stale = [name for name, text in pages.items() if (PAGES / name).read_text(encoding="utf-8") != text]
    assert stale == [], "run: streamdag docs"


def test_the_pages_named_in_the_issue_exist_and_the_index_links_every_type() -> None:
    index = (PAGES / "README.md").read_text(encoding="utf-8")
    for t in TYPES:
        assert f"[`{t}`]({t}.md)" in index
    for t in ("generate", "file_source", "file_sink", "stdout", "drop", "map", "filter", "rate_limit",
              "circuit_breaker"):
        page = (PAGES / f"{t}.md").read_text(encoding="utf-8")
        assert page.startswith(f"# `{t}` (") and "## Settings" in page and "## Ports" in page and "```yaml" in page


def _models(model: type[BaseModel]) -> typing.Iterator[type[BaseModel]]:
    yield model
    for info in model.model_fields.values():
        stack = [info.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield from _models(ann)
            stack += typing.get_args(ann)


@pytest.mark.parametrize("type_name", TYPES)
def test_every_field_is_described_and_on_the_page(type_name: str) -> None:
    cls = registry.load(type_name)
    assert cls is not None
    page = (PAGES / f"{type_name}.md").read_text(encoding="utf-8")
    for model in _models(cls.Config):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert f"| `{info.alias or name}` |" in page, f"{type_name}: {name} missing from the page"


@pytest.mark.parametrize("type_name", TYPES)
def test_every_example_is_a_whole_graph_that_validates_cleanly(type_name: str, tmp_path: Path) -> None:
    cls = registry.load(type_name)
    assert cls is not None and cls.example, f"{type_name} has no example"
    data = yaml.safe_load(cls.example)
    assert type_name in {n["type"] for n in data["nodes"].values()} | {
        n.get("config", {}).get("operator", {}).get("type") for n in data["nodes"].values()}
    graph, diags = check_text(cls.example, str(tmp_path / "example.yaml"))
    assert graph is not None and [d.format() for d in diags] == []
    # the named ports the page documents exist on the node the example uses
    node = next(n for n in graph.nodes.values() if n.type == type_name)
    # (a sink's documented ports exist only under some configs: postgres_sink's `conflicts`)
    documented = [p for p in cls.port_docs if not p.startswith("<") and cls.kind != "sink"]
    assert set(documented) <= set(node.ports), (documented, node.ports)
    if "output_ports" in vars(cls):  # ports that depend on the config must be described
        assert cls.port_docs, f"{type_name}: config-dependent ports without port_docs"


@pytest.mark.parametrize("type_name", RUNNABLE)
def test_service_free_examples_run_and_account_for_every_message(type_name: str, tmp_path: Path) -> None:
    cls = registry.load(type_name)
    assert cls is not None
    path = tmp_path / "example.yaml"
    path.write_text(cls.example)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "orders.ndjson").write_text('{"id": 1}\n{"id": 2}\nnot json\n')
    report = run_graph(path)
    assert report.error is None and report.balanced
    totals = report.totals()
    assert totals["entered"] > 0 and totals["nacked"] == 0
    if type_name == "file_source":  # the line that is not JSON went to the dead-letter file
        assert totals["dead_lettered"] == 1
        dead = json.loads((tmp_path / "out" / "dead.ndjson").read_text())
        assert dead["payload"] == "not json" and "line 3" in dead["error"] and dead["node"] == "read"


def test_cli_docs_writes_the_pages_and_check_reports_a_stale_one(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nodes"
    assert main(["docs", "-o", str(out)]) == 0
    assert (out / "map.md").read_text(encoding="utf-8") == node_pages()["map.md"]
    assert main(["docs", "--check", "-o", str(out)]) == 0
    (out / "map.md").write_text("edited by hand\n")
    capsys.readouterr()
    assert main(["docs", "--check", "-o", str(out)]) == 1
    assert "map.md" in capsys.readouterr().err
    assert (out / "map.md").read_text() == "edited by hand\n"  # --check writes nothing


USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_readme_table_links_every_node_type_to_its_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Node types"):readme.index("## Choices, measured")]
    for t in TYPES:
        assert f"[`{t}`](docs/nodes/{t}.md)" in table, f"{t} missing from the README's node table"


@pytest.mark.parametrize("path", USER_DOCS, ids=[str(p.relative_to(ROOT)) for p in USER_DOCS])
def test_user_docs_name_no_machine_path_or_issue_and_their_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"/work/|/home/|/root/|/tmp/\w", text), "a machine path in user docs"
    assert not re.search(r"\bissues? #?\d+|\bsession \d+", text, re.I), "an issue or session number in user docs"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"\w+:", target):  # relative: a file of the repository
            assert (path.parent / target).exists(), f"broken link {target}"
