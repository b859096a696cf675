"""`streamdag top`: its view rendered from real scrapes, `--once`, and the live screen under tmux."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid

import pytest
from rich.console import Console

from engine.observe.top import build_view, metrics_url, parse_metrics
from tests.observe.conftest import LiveRun, get, wait_for


def render(view: object, width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None, file=open("/dev/null", "w"))
    console.print(view)
    return console.export_text()


def test_metrics_url_forms() -> None:
    assert metrics_url("127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1/metrics") == "http://h:1/metrics"


def test_view_from_two_scrapes(live_run: LiveRun) -> None:
    first = parse_metrics(get(live_run.url + "/metrics").decode())
    second = wait_for(
        lambda: (
            (s := parse_metrics(get(live_run.url + "/metrics").decode()))
            and s.nodes["out"]["committed"] > first.nodes["out"]["committed"] + 200
            and s
        ),
        what="200 more commits",
    )
    assert second.graph == "observed" and second.nodes["out"]["capacity"] == 4000
    text = render(build_view(first, second, live_run.url))
    assert "streamdag top  observed  running" in text
    node_part, source_part = text.split(" source ", 1)
    rows = {line.split()[0]: line.split() for line in node_part.splitlines() if line.strip()}
    sources = {line.split()[0]: line.split() for line in source_part.splitlines() if line.strip()}
    # node, type, in/s, out/s, queue bar, fill %, p99, e2e p99, err, retry, dlq
    assert rows["price"][1] == "map" and rows["out"][1] == "file_sink" and rows["gen"][1] == "generate"
    rate = rows["out"][3]
    assert (
        re.fullmatch(r"[\d.]+k?", rate) and float(rate.rstrip("k")) * (1000 if rate.endswith("k") else 1) > 0
    )
    assert re.search(r"\d+%", " ".join(rows["out"])) and rows["price"][4] == "-"  # queue fill; price runs inline
    assert re.search(r"[\d.]+ms", " ".join(rows["out"]))  # p99 batch and end-to-end
    assert rows["price"][-3:] == ["0", "0", "0"]  # errors, retries, dead-lettered
    assert sources["gen"][-1] == "ok" and sources["gen"][-2] == "-"  # integrity ok, no lag hook


def test_view_shows_integrity_mismatch_and_lost_connection() -> None:
    text = """streamdag_run_info{graph="g"} 1.0
streamdag_node_messages_out_total{graph="g",kind="source",node="s",type="t"} 10.0
streamdag_source_messages_total{graph="g",source="s"} 10.0
streamdag_integrity_mismatch{graph="g",source="s"} 1.0
streamdag_source_lag_messages{graph="g",source="s"} 42.0
streamdag_connection_up{graph="g",node="s",connection="nats"} 0.0
"""
    out = render(build_view(None, parse_metrics(text)))
    assert "MISMATCH" in out and "connections down: s/nats" in out and "42" in out


def test_top_once_against_a_live_run(live_run: LiveRun) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "top", "--once", "--interval", "0.5", live_run.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "observed" in proc.stdout and "price" in proc.stdout and "file_sink" in proc.stdout


def test_top_once_unreachable_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "top", "--once", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "cannot scrape http://127.0.0.1:9/metrics" in proc.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_under_tmux(live_run: LiveRun) -> None:
    sock = f"operate-{uuid.uuid4().hex[:8]}"  # a private tmux server: kill-server only ends ours
    subprocess.run(
        [
            "tmux",
            "-L",
            sock,
            "new-session",
            "-d",
            "-x",
            "130",
            "-y",
            "30",
            f"env -u COLUMNS -u LINES {sys.executable} -m engine.cli top {live_run.url}",
        ],
        check=True,
    )
    try:

        def screen() -> str:
            return subprocess.run(
                ["tmux", "-L", sock, "capture-pane", "-p"], capture_output=True, text=True, check=False
            ).stdout

        def shows_rates() -> str | None:
            s = screen()
            row = next((ln for ln in s.splitlines() if ln.strip().startswith("out ")), "")
            parts = row.split()
            return s if len(parts) > 3 and parts[3] not in ("0", "-") else None

        s = wait_for(shows_rates, 20, "top to show the sink's rate")
        assert "streamdag top  observed  running" in s and "price" in s and "integrity" in s
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, check=False)


def test_the_workers_of_a_graph_add_up_in_one_view() -> None:
    """`top` with several URLs (or --graph): counters, gauges and buckets add; a stall is the longest;
    a connection is up only where it is up in every worker."""
    from engine.observe.top import Scrape, merge

    a = Scrape(1.0, "g", nodes={"map": {"in": 10.0, "stalled": 2.0, "batch_buckets": [(0.1, 3.0), (1.0, 4.0)],
                                        "type": "map"}},
               sources={"src": {"entered": 10.0, "in_flight": 1.0}}, connections={("src", "nats"): True})
    b = Scrape(2.0, "g", draining=True, nodes={"map": {"in": 5.0, "stalled": 7.0, "batch_buckets": [(0.1, 1.0)],
                                                       "type": "map"}},
               sources={"src": {"entered": 4.0, "in_flight": 2.0}}, connections={("src", "nats"): False})
    m = merge([a, b])
    assert (m.time, m.graph, m.draining) == (2.0, "g", True)
    assert m.nodes["map"] == {"in": 15.0, "stalled": 7.0, "batch_buckets": [(0.1, 4.0), (1.0, 4.0)], "type": "map"}
    assert m.sources["src"] == {"entered": 14.0, "in_flight": 3.0}
    assert m.connections == {("src", "nats"): False}
    assert merge([a]) is a
