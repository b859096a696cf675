"""What a new user gets wrong on the command line gets a one-line error and an exit code, never a
traceback; and a slow `generate` shows its first messages at once (the first-hour QA of today's main)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.observe.tap import follow

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "graphs" / "demo.yaml")


@pytest.mark.parametrize("command", [
    ["graph", DEMO, "--format", "mermaid"],
    ["alerts", DEMO],
    ["dashboard", DEMO],
])
def test_an_output_file_in_a_missing_folder_is_an_error_line(command: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "no-such-folder" / "out.txt"
    assert main([*command, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out}: No such file or directory\n"


def test_a_metrics_port_out_of_range_is_refused(capsys) -> None:
    # the event loop bound 99999 % 65536 = 34463 and the run went on with the metrics somewhere else
    with pytest.raises(SystemExit) as exc:
        main(["run", DEMO, "--metrics-port", "99999"])
    assert exc.value.code == 2
    assert "--metrics-port: must be a TCP port from 0 to 65535, not 99999" in capsys.readouterr().err


def test_top_with_a_missing_graph_file_prints_its_diagnostic(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["top", "--once", "--graph", str(missing)]) == 1
    assert "E001 cannot read graph file: No such file or directory" in capsys.readouterr().err


def test_tap_takes_host_port_without_a_scheme(capsys) -> None:
    # urllib raised ValueError("unknown url type") for `127.0.0.1:1`; `top` already takes host:port
    assert follow("127.0.0.1:1", "g", 10.0, None, 1, "text", io.StringIO()) == 2
    assert "127.0.0.1:1: [Errno 111] Connection refused" in capsys.readouterr().err


def test_a_slow_generate_sends_its_first_messages_at_once(write_graph, tmp_path: Path) -> None:
    # with `batch: 500` and `rate: 20`, all 10 messages left together after 0.5 s (a `rate: 1` source: 500 s of nothing)
    path = write_graph("""
        version: 1
        name: slow
        defaults: {dead_letter: out}
        nodes:
          g: {type: generate, config: {count: 10, rate: 20}}
          out: {type: file_sink, inputs: [g], config: {path: out.ndjson}}
    """)
    assert main(["run", "-q", str(path)]) == 0
    stamps = [json.loads(x)["ts"] for x in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert len(stamps) == 10
    assert len(set(stamps)) == 5  # batches of 2 (a tenth of a second at 20/s), each stamped when it left
    assert stamps[-1] - stamps[0] >= 0.3


def test_test_k_that_selects_no_case_fails(capsys) -> None:
    # 0 cases run and exit 0: a typo in `-k` passed CI silently
    tests = str(ROOT / "graphs" / "tests" / "demo.test.yaml")
    assert main(["test", tests, "-k", "no case is named like this"]) == 1
    assert "error: no case name contains 'no case is named like this' in 1 test file(s)" in capsys.readouterr().err


def test_alerts_consistency_above_one_is_refused(capsys) -> None:
    # the score is a share of keys (0..1): `--consistency 92` made a rule that fires on a perfect score
    assert main(["alerts", DEMO, "--consistency", "92"]) == 1
    assert "error: --consistency 92: a score is a share from 0 to 1 (e.g. 0.92)" in capsys.readouterr().err


def test_a_signal_between_two_runs_of_a_reload_stops_the_next_one(write_graph, capsys) -> None:
    # SIGTERM after a reload drained the old graph, while the new one started (its metrics server
    # binding): the old run's handler took it, the new graph ran on and the next SIGTERM exited 2
    import asyncio

    from engine.cli import _run_once, build_parser
    from engine.compile.validate import load_graph

    path = write_graph("""
        version: 1
        name: endless
        defaults: {dead_letter: out}
        nodes:
          g: {type: generate, config: {rate: 1000}}
          out: {type: drop, inputs: [g]}
    """)
    args = build_parser().parse_args(["run", "-q", str(path)])
    args.argv = []

    async def next_run() -> tuple[int, object]:
        return await asyncio.wait_for(_run_once(args, load_graph(str(path)), None, [1]), 10)

    assert asyncio.run(next_run()) == (0, None)
