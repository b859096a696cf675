"""W342 and W360: warnings about what a replay after a crash does, and their absence when safe.

Both need the graph's reachability: a sink is warned about a redelivering source anywhere upstream,
through an `errors` edge or the implicit `defaults.dead_letter` wiring too.
"""

from __future__ import annotations

import textwrap

import pytest

from engine.compile.validate import check_text

JETSTREAM = """\
version: 1
name: js
connections:
  nats:
    type: nats
    streams:
      IN: {{subjects: ["in.>"]}}
      OUT: {{subjects: ["out.>"], duplicate_window: {window}}}
defaults: {{dead_letter: {dead_letter}}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: IN, durable: d, {source}}}
  price: {{type: map, inputs: [read], config: {{expr: 'msg'}}}}
  write: {{type: jetstream_sink, inputs: [{write_input}], config: {{connection: nats, subject: out.x}}}}
  other: {{type: file_sink, inputs: [{other_input}], config: {{path: o.ndjson}}}}
"""


def _codes(text: str) -> list[str]:
    graph, diags = check_text(textwrap.dedent(text), "g.yaml", env={})
    assert graph is not None, [d.format() for d in diags]
    return [d.code for d in diags]


def _js(window: str, source: str = "ack_wait: 10s, max_deliver: 5", write_input: str = "price",
        other_input: str = "read.errors", dead_letter: str = "other") -> str:
    return JETSTREAM.format(window=window, source=source, write_input=write_input, other_input=other_input,
                            dead_letter=dead_letter)


@pytest.mark.parametrize(("window", "source", "warned"), [
    ("2s", "ack_wait: 10s, max_deliver: 5", True),  # 50 s of redelivery against 2 s
    ("49s", "ack_wait: 10s, max_deliver: 5", True),
    ("50s", "ack_wait: 10s, max_deliver: 5", False),  # exactly the horizon
    ("2m", "ack_wait: 30s, max_deliver: 4", False),
    ("2m", "ack_wait: 30s, max_deliver: 5", True),  # the old jetstream_etl example
    ("10s", "max_deliver: 3, backoff: [1s, 2s]", False),  # 1 + 2 + 2 s
    ("4s", "max_deliver: 3, backoff: [1s, 2s]", True),
])
def test_w342_compares_duplicate_window_with_ack_wait_times_max_deliver(window: str, source: str, warned: bool) -> None:
    assert ("W342" in _codes(_js(window, source))) is warned


def test_w342_follows_the_errors_edges_and_the_dead_letter_wiring() -> None:
    # the sink is fed only by the source's errors port
    assert "W342" in _codes(_js("2s", write_input="read.errors", other_input="price", dead_letter="other"))
    # the sink is the dead-letter sink: every unconsumed errors port feeds it
    assert "W342" in _codes(_js("2s", write_input="price", other_input="price", dead_letter="write"))


def test_w342_message_names_the_stream_the_source_and_the_fix() -> None:
    _, diags = check_text(_js("2s"), "g.yaml", env={})
    (d,) = [d for d in diags if d.code == "W342"]
    assert d.severity == "warning" and (d.line, d.col) == (15, 86)  # the subject
    assert "'OUT'" in d.message and "'read'" in d.message and "at least 50s" in d.message


POSTGRES = """\
version: 1
name: pg
connections:
  redis: {{type: redis}}
  pg: {{type: postgres, dsn: "postgresql://root@127.0.0.1:5432/test"}}
defaults: {{dead_letter: dead}}
nodes:
  read: {read}
  shape: {{type: map, inputs: [read], config: {{expr: 'msg'}}}}
  store:
    type: postgres_sink
    inputs: [shape]
    config: {{connection: pg, table: t, mode: {mode}, columns: {{id: msg.id}}}}
  dead: {{type: file_sink, inputs: [store.errors], config: {{path: d.ndjson}}}}
"""
REDIS = "{type: redis_stream_source, config: {connection: redis, stream: s, group: g}}"
FILE = "{type: file_source, config: {path: in.ndjson}}"


@pytest.mark.parametrize(("read", "mode", "warned"), [
    (REDIS, "insert", True),
    (REDIS, "insert_ignore, key: [id]", False),
    (REDIS, "upsert, key: [id]", False),
    (FILE, "insert", False),  # a file source does not redeliver
])
def test_w360_insert_behind_a_redelivering_source(read: str, mode: str, warned: bool) -> None:
    codes = _codes(POSTGRES.format(read=read, mode=mode))
    assert ("W360" in codes) is warned


def test_w360_points_at_mode_and_suggests_the_idempotent_modes() -> None:
    _, diags = check_text(POSTGRES.format(read=REDIS, mode="insert"), "g.yaml", env={})
    (d,) = [d for d in diags if d.code == "W360"]
    assert d.severity == "warning" and d.line == 13
    assert "insert_ignore" in d.message and "upsert" in d.message and "'read'" in d.message
