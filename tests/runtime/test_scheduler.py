"""The runtime's contracts: bounded edges, end-to-end acks, errors ports, retries, drain on stop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
from tests.conftest import run_graph
from tests.runtime.test_nodes import GATES, RECORD


@pytest.fixture(autouse=True)
def _clean() -> None:
    RECORD.clear()
    GATES.clear()


def test_slow_sink_bounds_memory(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: bp
        defaults: {capacity: 200, max_in_flight: 100000}
        nodes:
          src: {type: test_source, config: {count: 5000, batch: 50}}
          m: {type: map, inputs: [src], config: {expr: 'msg'}}
          slow: {type: test_sink, inputs: [m], config: {delay: 0.001}, batch_size: 50}
          dead: {type: file_sink, inputs: [src.errors, m.errors, slow.errors], config: {path: dead.ndjson}}
    """)
    graph = load_graph(str(path))
    runner = Runner(graph)
    report = asyncio.run(runner.run())
    assert report.error is None and report.balanced
    assert len(RECORD["slow"]["bodies"]) == 5000
    assert runner.plan.inline == {"m": "src"} and "m" not in runner.channels  # map runs in src's task: no queue
    assert runner.channels["slow"].high_water <= 200
    # the bound: each node's input (200) + what each node holds (a batch: map 200, sink 50) + a source batch
    assert RECORD["src"]["max_in_flight"] <= (200 + 200) + (200 + 50) + 50


def test_max_in_flight_caps_unacknowledged_messages(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: cap
        defaults: {capacity: 10000, max_in_flight: 120}
        nodes:
          src: {type: test_source, config: {count: 3000, batch: 40}}
          slow: {type: test_sink, inputs: [src], config: {delay: 0.0005}, batch_size: 40}
          dead: {type: file_sink, inputs: [src.errors, slow.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced and len(RECORD["slow"]["bodies"]) == 3000
    assert RECORD["src"]["max_in_flight"] <= 120 + 40 - 1


def test_fan_out_acks_only_after_every_branch_commits(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: fan
        defaults: {dead_letter: dead}
        nodes:
          src: {type: test_source, config: {count: 40, batch: 10}}
          fast: {type: test_sink, inputs: [src]}
          gated: {type: test_sink, inputs: [src], config: {gate: g}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)

    async def scenario() -> None:
        GATES["g"] = asyncio.Event()
        runner = Runner(load_graph(str(path)))
        task = asyncio.create_task(runner.run())
        while len(RECORD.get("fast", {}).get("bodies", [])) < 40:
            await asyncio.sleep(0)
        for _ in range(50):  # let the ack loop run: nothing may be committed yet
            await asyncio.sleep(0)
        assert RECORD["src"]["committed"] == []
        assert runner.trackers["src"].in_flight == 40
        GATES["g"].set()
        report = await task
        assert report.balanced and report.totals()["delivered"] == 40

    asyncio.run(scenario())
    assert sorted(RECORD["src"]["committed"]) == list(range(40))


def test_filtered_and_dead_lettered_messages_are_acknowledged(write_graph, tmp_path) -> None:
    path = write_graph("""
        version: 1
        name: acks
        defaults: {dead_letter: dead}
        nodes:
          src: {type: test_source, config: {count: 30, batch: 7}}
          pick: {type: filter, inputs: [src], config: {expr: 'msg.i % 3 != 0'}}
          boom: {type: map, inputs: [pick], config: {expr: 'msg.i % 2 == 0 ? msg : msg.nope'}}
          out: {type: test_sink, inputs: [boom]}
          dead: {type: file_sink, inputs: [boom.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    t = report.totals()
    assert report.balanced
    assert (t["entered"], t["filtered"], t["delivered"], t["dead_lettered"]) == (30, 10, 10, 10)
    assert sorted(RECORD["src"]["committed"]) == list(range(30))
    lines = (tmp_path / "dead.ndjson").read_text().splitlines()
    assert len(lines) == 10
    import json

    first = json.loads(lines[0])
    assert first["node"] == "boom" and first["attempt"] == 1 and "nope" in first["error"]
    assert first["payload"]["i"] % 2 == 1


def test_unconsumed_errors_port_stops_the_graph_without_acking(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: stop
        nodes:
          src: {type: test_source, config: {count: 20, batch: 5}}
          boom: {type: map, inputs: [src], config: {expr: 'msg.i == 7 ? msg.nope : msg'}}
          out: {type: test_sink, inputs: [boom]}
    """)
    report = run_graph(path)
    assert report.error is not None and "boom" in str(report.error)
    assert 7 not in RECORD["src"]["committed"]
    assert [tok for tok, _ in RECORD["src"]["rejected"]] == [7]


def test_sink_retries_then_commits_once(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: retry
        defaults: {dead_letter: dead, retry: {max_attempts: 3, initial_backoff: 0.001}}
        nodes:
          src: {type: test_source, config: {count: 10, batch: 10}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 2}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced and report.stats["out"].retries == 2
    assert [b["i"] for b in RECORD["out"]["bodies"]] == list(range(10))


def test_retries_exhausted_go_to_dead_letter_with_attempts(write_graph, tmp_path) -> None:
    # an error of unknown kind is retried up to max_attempts, then dead-lettered
    path = write_graph("""
        version: 1
        name: retry2
        defaults: {dead_letter: dead, retry: {max_attempts: 2, initial_backoff: 0.001}}
        nodes:
          src: {type: test_source, config: {count: 4, batch: 4}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 5, fail_with: unknown}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced and report.totals()["dead_lettered"] == 4
    import json

    rows = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert {r["attempt"] for r in rows} == {2} and {r["node"] for r in rows} == {"out"}
    assert report.stats["out"].retries_by_class == {"unknown": 2}


def test_an_unavailable_service_is_retried_past_max_attempts_and_never_dead_lettered(write_graph, tmp_path, caplog) -> None:
    # a connection error is never the message's fault: max_attempts does not apply to it
    path = write_graph("""
        version: 1
        name: outage
        defaults: {dead_letter: dead, retry: {max_attempts: 2, initial_backoff: 0.001, max_backoff: 0.002}}
        nodes:
          src: {type: test_source, config: {count: 4, batch: 4}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 25}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    with caplog.at_level("WARNING", logger="streamdag.runtime"):
        report = run_graph(path)
    assert report.balanced and report.totals()["dead_lettered"] == 0 and report.totals()["delivered"] == 4
    assert [b["i"] for b in RECORD["out"]["bodies"]] == [0, 1, 2, 3]
    assert report.stats["out"].retries_by_class == {"unavailable": 25}
    assert report.stats["out"].stalled_since is None  # recovered
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("node_stalled") == 1 and events.count("node_recovered") == 1  # one line per change
    assert not (tmp_path / "dead.ndjson").exists() or (tmp_path / "dead.ndjson").read_text() == ""


def test_a_stalled_batch_is_retried_at_once_when_its_connector_sees_the_service_back(write_graph) -> None:
    # a backoff of a minute, cut short by ctx.retry_now (what jetstream_sink sets when NATS reconnects)
    path = write_graph("""
        version: 1
        name: wake
        defaults: {dead_letter: dead, retry: {initial_backoff: 60, max_backoff: 60}}
        nodes:
          src: {type: test_source, config: {count: 4, batch: 4}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 1}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    runner = Runner(load_graph(str(path)))

    async def main() -> Any:
        run = asyncio.create_task(runner.run())
        while runner.stats["out"].stalled_since is None:
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        runner.nodes["out"].ctx.retry_now.set()
        report = await asyncio.wait_for(run, 10)
        return report, time.monotonic() - t0

    report, took = asyncio.run(main())
    assert report.balanced and report.totals()["delivered"] == 4 and took < 5
    assert not runner.nodes["out"].ctx.retry_now.is_set()  # used up


def test_a_message_error_goes_to_errors_at_once(write_graph, tmp_path) -> None:
    path = write_graph("""
        version: 1
        name: msgerr
        defaults: {dead_letter: dead, retry: {initial_backoff: 0.001}}
        nodes:
          src: {type: test_source, config: {count: 4, batch: 4}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 1, fail_with: message}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced and report.totals()["dead_lettered"] == 4 and report.stats["out"].retries == 0
    import json

    rows = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert {r["attempt"] for r in rows} == {1} and all("rejects the message" in r["error"] for r in rows)


def test_a_drain_gives_up_on_a_stalled_sink_after_stop_timeout_without_dead_lettering(write_graph) -> None:
    # the service never comes back: SIGTERM must still end the run, handing the messages back
    path = write_graph("""
        version: 1
        name: stuck
        defaults: {dead_letter: dead, stop_timeout: 0.3, retry: {initial_backoff: 0.01, max_backoff: 0.05}}
        nodes:
          src: {type: test_source, config: {count: 6, batch: 3}}
          out: {type: test_sink, inputs: [src], config: {fail_first: 1000000}}
          dead: {type: drop, inputs: [src.errors]}
    """)
    async def main() -> Any:
        runner = Runner(load_graph(path))
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(0.3)
        assert runner.stats["out"].stalled_since is not None and runner.stats["out"].stall_class == "unavailable"
        # the stall is in the metrics and the status page's snapshot while it lasts
        from prometheus_client.parser import text_string_to_metric_families

        from engine.observe.metrics import make_registry, render_metrics
        from engine.observe.snapshot import stats_snapshot

        text = render_metrics(make_registry(runner, process=False)).decode()
        stalled = {s.labels["node"]: (s.labels["class"], s.value) for f in text_string_to_metric_families(text)
                   for s in f.samples if s.name == "streamdag_node_stalled_seconds"}
        assert stalled["out"][0] == "unavailable" and stalled["out"][1] > 0.1 and stalled["src"] == ("", 0.0)
        snap = stats_snapshot(runner)["nodes"]["out"]
        assert snap["stall"]["class"] == "unavailable" and "store unavailable" in snap["stall"]["reason"]
        t0 = time.monotonic()
        runner.stop()
        report = await asyncio.wait_for(task, 5)
        return report, time.monotonic() - t0

    report, took = asyncio.run(main())
    assert took < 2.0
    t = report.totals()
    assert t["dead_lettered"] == 0 and t["delivered"] == 0 and t["nacked"] == 6 and report.balanced
    assert sorted(tok for tok, _ in RECORD["src"]["rejected"]) == list(range(6))


def test_after_giving_up_a_drain_does_not_try_the_batches_still_queued(write_graph) -> None:
    # each attempt takes 0.2 s to fail (a connect timeout, say): trying the 9 queued batches one
    # last time each would hold the end of the run up for 1.8 s more
    path = write_graph("""
        version: 1
        name: stuck_queue
        defaults: {dead_letter: dead, stop_timeout: 0.3, retry: {initial_backoff: 0.01, max_backoff: 0.05}}
        nodes:
          src: {type: test_source, config: {count: 30, batch: 3}}
          out: {type: test_sink, inputs: [src], batch_size: 3, config: {fail_first: 1000000, delay: 0.2}}
          dead: {type: drop, inputs: [src.errors]}
    """)

    async def main() -> Any:
        runner = Runner(load_graph(path))
        task = asyncio.create_task(runner.run())
        while runner.stats["out"].stalled_since is None:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        runner.stop()
        report = await asyncio.wait_for(task, 5)
        return report, time.monotonic() - t0

    report, took = asyncio.run(main())
    assert took < 0.9, took
    t = report.totals()
    assert t["dead_lettered"] == 0 and t["nacked"] == 30 and report.balanced


def test_per_message_sink_failures_go_to_errors_and_the_rest_commits(write_graph, tmp_path) -> None:
    path = write_graph("""
        version: 1
        name: partial
        nodes:
          src: {type: test_source, config: {count: 10, batch: 10}}
          out: {type: test_sink, inputs: [src], config: {reject_if_odd: true}}
          dead: {type: file_sink, inputs: [out.errors, src.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced
    assert [b["i"] for b in RECORD["out"]["bodies"]] == [0, 2, 4, 6, 8]
    assert report.totals()["dead_lettered"] == 5


def test_stop_drains_in_flight_and_acks_everything(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: drain
        defaults: {dead_letter: dead}
        nodes:
          src: {type: generate, config: {batch: 100}}
          out: {type: test_sink, inputs: [src], config: {delay: 0.0005}}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)

    async def scenario():
        runner = Runner(load_graph(str(path)))
        task = asyncio.create_task(runner.run())
        while len(RECORD.get("out", {}).get("bodies", [])) < 1000:
            await asyncio.sleep(0.001)
        runner.stop()
        return await task

    report = asyncio.run(scenario())
    t = report.totals()
    assert report.error is None and report.balanced and report.stopped_by_signal
    assert t["in_flight"] == 0 and t["delivered"] == t["entered"] == len(RECORD["out"]["bodies"])


def test_single_consumer_operators_run_inline_in_their_upstream_task(write_graph) -> None:
    path = write_graph("""
        version: 1
        name: inline
        defaults: {dead_letter: dead}
        nodes:
          src: {type: test_source, config: {count: 300, batch: 30}}
          a: {type: test_inline, inputs: [src]}
          b: {type: map, inputs: [a], config: {expr: '{"i": msg.i, "sq": msg.i * msg.i}'}}
          c: {type: filter, inputs: [b], config: {expr: 'msg.i % 3 != 0'}}
          fan1: {type: test_sink, inputs: [c]}
          fan2: {type: test_inline, inputs: [c]}
          other: {type: test_source, config: {count: 30, batch: 30}}
          both: {type: test_inline, inputs: [fan2, other]}
          out: {type: test_sink, inputs: [both]}
          dead: {type: drop, inputs: [src.errors]}
    """)
    runner = Runner(load_graph(str(path)))
    # a, b, c: sole consumers of a single input; fan2 shares c.out with fan1; both has two inputs
    assert set(runner.inline) == {"a", "b", "c"}
    report = asyncio.run(runner.run())
    assert report.error is None and report.balanced
    assert RECORD["a"]["tasks"] == {"node:src"}  # no task, no queue of its own
    assert RECORD["fan2"]["tasks"] == {"node:fan2"} and RECORD["both"]["tasks"] == {"node:both"}
    kept = [i for i in range(300) if i % 3]
    assert [b["i"] for b in RECORD["fan1"]["bodies"]] == kept
    assert sorted(b["i"] for b in RECORD["out"]["bodies"]) == sorted(kept + list(range(30)))
    assert report.stats["b"].received == 300 and report.stats["c"].filtered == 100
    assert report.totals()["delivered"] == 200 + 30 and report.totals()["filtered"] == 100


def test_inline_operator_retries_in_place_and_dead_letters_when_exhausted(write_graph, tmp_path) -> None:
    path = write_graph("""
        version: 1
        name: inline_retry
        defaults: {dead_letter: dead, retry: {max_attempts: 3, initial_backoff: 0.001}}
        nodes:
          src: {type: test_source, config: {count: 40, batch: 10}}
          flaky: {type: test_inline, inputs: [src], config: {fail_first: 2, fail_with: unknown}}
          out: {type: test_sink, inputs: [flaky]}
          dead: {type: file_sink, inputs: [src.errors], config: {path: dead.ndjson}}
    """)
    report = run_graph(path)
    assert report.balanced and report.stats["flaky"].retries == 2
    assert [b["i"] for b in RECORD["out"]["bodies"]] == list(range(40))  # once each, in order

    RECORD.clear()
    path.write_text(path.read_text().replace("fail_first: 2", "fail_first: 3").replace("count: 40", "count: 10"))
    report = run_graph(path)
    assert report.balanced and report.totals()["dead_lettered"] == 10
    import json

    rows = [json.loads(x) for x in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert {r["attempt"] for r in rows} == {3} and {r["node"] for r in rows} == {"flaky"}
    assert "out" not in RECORD or RECORD["out"]["bodies"] == []


def test_an_upstream_ack_in_progress_when_the_run_ends_is_not_cut_short(write_graph) -> None:
    # the source's commit takes a while (an XACK round trip): the run's end must wait for a commit
    # already in progress rather than cancel it, or the tokens it took are never acknowledged
    path = write_graph("""
        version: 1
        name: ack_end
        nodes:
          src: {type: test_source, config: {count: 400, batch: 20, commit_delay: 0.02}}
          out: {type: test_sink, inputs: [src]}
          dead: {type: drop, inputs: [src.errors, out.errors]}
    """)
    report = run_graph(path)
    assert report.balanced and report.totals()["delivered"] == 400
    assert sorted(RECORD["src"]["committed"]) == list(range(400))


def test_a_stop_ends_the_run_within_stop_timeout_even_if_a_sink_never_returns(write_graph) -> None:
    """A write that hangs (a connector stuck on a socket that never answers) cannot keep a stopped
    run alive: past `stop_timeout` (+ STOP_GRACE) what still runs is cancelled and the run ends."""
    from engine.runtime.scheduler import STOP_GRACE

    path = write_graph("""
        version: 1
        name: hung
        defaults: {dead_letter: dead, stop_timeout: 0.3}
        nodes:
          src: {type: test_source, config: {count: 6, batch: 3}}
          out: {type: test_sink, inputs: [src], config: {gate: never}}
          dead: {type: drop, inputs: [src.errors]}
    """)

    async def main() -> Any:
        GATES["never"] = asyncio.Event()  # never set
        RECORD.pop("out", None)
        runner = Runner(load_graph(path))
        task = asyncio.create_task(runner.run())
        while not RECORD.get("out", {}).get("calls"):
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        runner.stop()
        report = await asyncio.wait_for(task, 10)
        return report, time.monotonic() - t0

    report, took = asyncio.run(main())
    assert 0.3 <= took < 0.3 + STOP_GRACE + 1.0, took
    assert report.totals()["delivered"] == 0
