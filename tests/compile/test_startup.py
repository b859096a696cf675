"""What `streamdag validate` and `run` load before they work (issue 20; figures: benchmarks/bench_startup.py).

The registry reads the entry points itself (no `importlib.metadata`), a built-in command builds only
its own subparser and loads no plugin command, and validating loads the CEL compiler only when asked
whether an expression compiles."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from engine import registry
from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_entry_point_scan_finds_what_importlib_metadata_finds() -> None:
    for group in (registry.GROUP, registry.COMMANDS):
        ours = {name: ep.value for name, ep in registry._scan()[group].items()}
        theirs = {ep.name: ep.value for ep in entry_points(group=group)}
        assert ours == theirs and ours, group
    assert registry.load("map").__name__ == "Map"


def test_the_entry_point_scan_reads_distributions_in_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for where, value in ((first, "json:dumps"), (second, "json:loads")):
        info = where / "Demo_Plugin-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "entry_points.txt").write_text(
            f"# a comment\n[streamdag.nodes]\ndemo = {value}\nother = os.path:join [extra]\n\n[console_scripts]\nx = y:z\n")
    # the same distribution (normalised name) later on the path is hidden, as importlib.metadata does
    (second / "demo.plugin-2.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(first), str(second / "missing"), str(second)])
    eps = {(ep.group, ep.name): ep for ep in registry._installed_entry_points()}
    assert {k: ep.value for k, ep in eps.items()} == {
        ("streamdag.nodes", "demo"): "json:dumps", ("streamdag.nodes", "other"): "os.path:join [extra]",
        ("console_scripts", "x"): "y:z"}
    assert eps[("streamdag.nodes", "demo")].load() is json.dumps
    assert eps[("streamdag.nodes", "other")].load().__name__ == "join"


def _loaded_after(argv: list[str]) -> list[str]:
    code = f"""
import contextlib, io, json, sys
from engine.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main({argv!r})
print(json.dumps([status, sorted(sys.modules)]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    status, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 0, done.stderr
    return list(modules)


def test_validate_loads_no_plugin_command_and_no_cel_compiler(tmp_path: Path) -> None:
    # CEL the quick check types (engine.compile.celcheck): neither the runtime nor the compiler
    modules = _loaded_after(["validate", "graphs/demo.yaml"])
    assert "engine.celc.cost" in modules
    assert not {"cel_expr_python", "engine.celc.compiler", "engine.celc.codegen", "engine.celc.library",
                "operators.connectors.redis.consistency"} & set(modules)
    unsure = tmp_path / "unsure.yaml"  # CEL the quick check leaves to the runtime
    unsure.write_text((ROOT / "benchmarks" / "startup.yaml").read_text().replace(
        "config: {count: 1}", "config: {count: 1, template: '{\"a\": \"x\".lowerAscii()}'}"))
    modules = _loaded_after(["validate", str(unsure)])
    assert "cel_expr_python" in modules and not {"engine.celc.compiler", "engine.celc.codegen"} & set(modules)
    modules = _loaded_after(["validate", "benchmarks/startup.yaml"])  # no CEL: no CEL runtime either
    assert not {"cel_expr_python", "engine.celc", "orjson"} & set(modules)


def test_a_misused_command_gets_the_usage_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "graphs/demo.yaml", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus" in err and "check-consistency" in err and "workers" in err


def test_a_graph_builds_the_models_of_the_connection_types_it_names_only(tmp_path: Path) -> None:
    graph = tmp_path / "g.yaml"
    graph.write_text((ROOT / "benchmarks" / "startup.yaml").read_text() + "connections:\n  bus: {type: redis}\n")
    code = f"""
import json
from engine.compile.validate import check_file
from engine.spec import connections as c
built = lambda: sorted(m.__name__ for m in c._BY_TYPE.values() if m.__pydantic_complete__)
graph, diags = check_file("benchmarks/startup.yaml")
first = built()
graph, diags = check_file({str(graph)!r})
print(json.dumps([first, built(), graph.connections["bus"]["url"]]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [[], ["RedisConnection"], "redis://127.0.0.1:6379/0"]


@pytest.mark.parametrize("entry", [
    {"type": "nats", "url": 5, "nats": 1, "streams": {"S.x": {"subjects": []}}}, {"type": "redis", "urll": "x"},
    {"type": "postgres", "min_size": -1}, {"type": "kafka"}, {"url": "x"}, 5, None, {"type": ["nats"]},
    {"type": "nats", "streams": {"S": {"subjects": ["a..b"], "max_age": 1, "duplicate_window": 5}}},
])
def test_one_connection_is_checked_as_the_union_checks_it(entry: object) -> None:
    from pydantic import TypeAdapter, ValidationError

    from engine.spec.connections import Connection, validate_connection

    with pytest.raises(ValidationError) as exc:
        TypeAdapter(Connection).validate_python(entry)
    model, errors = validate_connection(entry)
    assert model is None
    assert [(e["loc"], e["msg"], e["type"]) for e in errors] == [(e["loc"], e["msg"], e["type"]) for e in exc.value.errors()]


@pytest.mark.parametrize("argv", [["validate", "benchmarks/startup.yaml", "graphs/demo.yaml"],
                                  ["run", "-q", "benchmarks/startup.yaml"]])
def test_the_command_line_starts_without_collecting_garbage(argv: list[str]) -> None:
    """From the process's own command line, no collection runs before the start is over; then what
    the start built is frozen and collection is back on. Called with an argv (as tests do), no pause."""
    code = f"""
import contextlib, gc, io, json, sys
early, started = [], []
gc.callbacks.append(lambda phase, info: early.append(info["generation"])
                    if phase == "start" and started and not gc.get_freeze_count() else None)
sys.argv = ["streamdag", *{argv!r}]
from engine.cli import main
started.append(True)
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    status = main()
frozen = gc.get_freeze_count()
started.clear()
gc.unfreeze()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    again = main({argv!r})
print(json.dumps([status, again, gc.isenabled(), frozen > 10000, early, gc.get_freeze_count()]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, 0, True, True, [], 0]


def test_a_supervisor_collects_garbage_while_its_workers_run() -> None:
    code = """
import gc, json, sys
import engine.supervise
seen = []
engine.supervise.supervise = lambda argv, workers: seen.append(gc.isenabled()) or 0
sys.argv = ["streamdag", "run", "-q", "--workers", "2", "benchmarks/startup.yaml"]
from engine.cli import main
print(json.dumps([main(), seen]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, [True]]


_PLUGIN = '''
import os

class Plugin:
    """A pydantic plugin that notes each model (schema) it is asked about."""

    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind, config, plugin_settings):
        with open(os.environ["PLUGIN_NOTES"], "a") as fh:
            fh.write(schema_type_path.name + "\\n")
        return None, None, None

plugin = Plugin()
'''


def _started(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    """What the command line (`main()` reading sys.argv, as the `streamdag` script) left in place."""
    code = f"""
import contextlib, io, json, sys
sys.argv = ["streamdag", *{argv!r}]
from engine.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main()
loader = sys.modules.get("pydantic.plugin._loader")
print(json.dumps({{"status": status, "metadata": "importlib.metadata" in sys.modules,
                  "pydantic_loader": hasattr(loader, "PYDANTIC_ENTRY_POINT_GROUP")}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_with_no_pydantic_plugin_installed_nobody_looks_for_one(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    for argv in (["validate", "graphs/demo.yaml"], ["run", "-q", "benchmarks/startup.yaml"]):
        assert _started(argv, env) == {"status": 0, "metadata": False, "pydantic_loader": False}
    # pydantic's own switch: pydantic's own loader reads it
    assert _started(["validate", "graphs/demo.yaml"], env | {"PYDANTIC_DISABLE_PLUGINS": "1"})["pydantic_loader"]


def test_an_installed_pydantic_plugin_is_still_loaded(tmp_path: Path) -> None:
    import os

    site = tmp_path / "site"
    info = site / "notes_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: notes-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nnotes = notes_plugin:plugin\n")
    (site / "notes_plugin.py").write_text(_PLUGIN)
    notes = tmp_path / "notes.txt"
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env |= {"PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), "PLUGIN_NOTES": str(notes)}
    started = _started(["validate", "graphs/demo.yaml"], env)
    assert started["status"] == 0 and started["pydantic_loader"]
    assert {"GraphSpec", "MapConfig"} <= set(notes.read_text().split())  # it saw the models the check built
