"""Structured logs: JSON lines off a terminal, per-node levels, dead-letter lines without payloads."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from engine.observe.events import dead_letter_policy
from engine.observe.logs import parse_levels, setup_logging
from tests.conftest import run_graph


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = setup_logging(["INFO"], "auto", buf)
    try:
        yield buf
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("streamdag").setLevel(logging.NOTSET)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_parse_levels() -> None:
    default, nodes, loggers = parse_levels(["WARNING", "node.price=debug,streamdag.monitor=ERROR"])
    assert default == logging.WARNING and nodes == {"price": logging.DEBUG}
    assert loggers == {"streamdag.monitor": logging.ERROR}
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        parse_levels(["node.x=LOUD"])


def test_json_when_not_a_terminal_with_extra_fields(stream: io.StringIO) -> None:
    logging.getLogger("streamdag.runtime").warning(
        "node %s: giving up", "price", extra={"event": "retries_exhausted", "node": "price"}
    )
    (line,) = lines(stream)
    assert line["level"] == "warning" and line["logger"] == "streamdag.runtime"
    assert (
        line["msg"] == "node price: giving up"
        and line["event"] == "retries_exhausted"
        and line["node"] == "price"
    )
    assert isinstance(line["ts"], float)


def test_per_node_levels() -> None:
    buf = io.StringIO()
    handler = setup_logging(["WARNING", "node.price=DEBUG"], "json", buf)
    try:
        logging.getLogger("streamdag.node.price").debug("price detail")
        logging.getLogger("streamdag.node.other").debug("other detail")
        logging.getLogger("streamdag.node.other").info("other info")
        logging.getLogger("streamdag.runtime").info("about price", extra={"node": "price"})
        logging.getLogger("streamdag.runtime").info("about other", extra={"node": "other"})
        logging.getLogger("streamdag.runtime").warning("general")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("streamdag").setLevel(logging.NOTSET)
    assert [x["msg"] for x in lines(buf)] == ["price detail", "about price", "general"]


DEAD = """
    version: 1
    name: dl
    defaults: {dead_letter: dead}
    nodes:
      gen: {type: generate, config: {count: 20, batch: 20}}
      price: {type: map, inputs: [gen], config: {expr: '{"x": 10 / (msg.i % 5), "secret": "s3cr3t"}'}}
      out: {type: file_sink, inputs: [price], config: {path: out.ndjson}}
      dead: {type: file_sink, config: {path: dead.ndjson}, inputs: [price.errors]}
"""


def test_dead_letter_lines_name_node_and_reason_not_payload(write_graph, stream: io.StringIO) -> None:
    dead_letter_policy.reset()
    report = run_graph(write_graph(DEAD))
    assert report.balanced and report.totals()["dead_lettered"] == 4
    dl = [x for x in lines(stream) if x.get("event") == "dead_lettered"]
    assert sorted(x["seq"] for x in dl) == [0, 5, 10, 15]
    for x in dl:
        assert x["node"] == "price" and "divide by zero" in x["reason"] and x["dead_letter_sink"] == "dead"
        assert x["source"] == "gen" and "payload" not in x and "s3cr3t" not in json.dumps(x)


def test_dead_letter_payload_when_asked_and_rate_limit(write_graph, stream: io.StringIO) -> None:
    saved = (dead_letter_policy.include_payload, dead_letter_policy.limit_per_second)
    dead_letter_policy.include_payload, dead_letter_policy.limit_per_second = True, 2
    dead_letter_policy.reset()
    try:
        run_graph(write_graph(DEAD))
        dead_letter_policy.flush()
    finally:
        dead_letter_policy.include_payload, dead_letter_policy.limit_per_second = saved
    got = lines(stream)
    dl = [x for x in got if x.get("event") == "dead_lettered"]
    assert len(dl) == 2 and dl[0]["payload"] == {"i": 0, "ts": dl[0]["payload"]["ts"]}
    (summary,) = [x for x in got if x.get("event") == "dead_lettered_suppressed"]
    assert summary["count"] == 2


def test_bad_log_level_is_a_clear_cli_error(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--log-level", "LOUD", "schema"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1 and "unknown log level 'LOUD'" in proc.stderr


def test_run_log_level_per_node_on_the_cli(write_graph) -> None:
    path = write_graph(DEAD)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(path),
            "--log-level",
            "ERROR",
            "--log-level",
            "node.price=WARNING",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert [e["event"] for e in events] == ["dead_lettered"] * 4  # price's warnings pass, INFO lines do not
